"""The training loop: one function, ``train(cfg)``, called by the hydra app on every rank."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from avis.engine import checkpoint as ckpt_io
from avis.engine import dist as D
from avis.engine.data import ClipStream, Position, iter_eval_videos, per_rank_batch
from avis.engine.logs import ScalarLog
from avis.engine.optim import build_optimizer
from avis.engine.predict import predict_videos, write_evaluation
from avis.errors import ConfigError

log = logging.getLogger("avis.train")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if on or torch.are_deterministic_algorithms_enabled():  # the call imports torch._dynamo (seconds)
        torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list):
        return [to_device(v, device) for v in x]
    return x


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.state_dict().values():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Checkpointer:
    def __init__(self, out_dir: Path, keep: int):
        self.dir, self.keep = out_dir / "checkpoints", max(1, int(keep))

    def save(self, step: int, state: dict) -> Path:
        path = self.dir / f"step_{step:08d}.pt"
        ckpt_io.save(path, state)
        last = self.dir / "last.pt"
        tmp = self.dir / f".last.pt.tmp-{os.getpid()}"
        try:  # last.pt: an atomic hard link to the newest checkpoint (no second copy of the bytes)
            tmp.unlink(missing_ok=True)
            os.link(path, tmp)
            os.replace(tmp, last)
        except OSError:
            ckpt_io.save(last, state)
        old = sorted(self.dir.glob("step_*.pt"))[:-self.keep]
        for p in old:
            p.unlink(missing_ok=True)
        return path


def _resume_path(resume, out_dir: Path) -> Path | None:
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        return ckpt_io.latest(out_dir / "checkpoints")  # none yet: start fresh (handy for preemptible jobs)
    return Path(str(resume))


def train(cfg: DictConfig) -> dict:
    """Train ``cfg.model`` on ``cfg.data.train`` for ``cfg.trainer.max_steps`` steps. Returns a summary."""
    tc = cfg.trainer
    info = D.setup(tc.device, tc.dist_backend)
    try:
        return _train(cfg, info)
    finally:
        D.teardown(info)


def _train(cfg: DictConfig, info: D.DistInfo) -> dict:
    tc, device = cfg.trainer, info.device
    out_dir = Path(D.broadcast_object(info, str(Path(tc.out_dir).resolve())))
    set_deterministic(bool(tc.deterministic))
    amp = bool(tc.amp) and device.type == "cuda"

    train_source = instantiate(cfg.data.train)
    categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in train_source.categories]
    set_num_classes(cfg, len(categories))

    seed_all(int(cfg.seed))  # the same initial weights on every rank
    model = instantiate(cfg.model).to(device)
    oc = cfg.optim
    optimizer = build_optimizer(model, instantiate(oc.optimizer), backbone_lr_mult=oc.backbone_lr_mult,
                                backbone_weight_decay=oc.get("backbone_weight_decay"),
                                backbone_prefixes=tuple(oc.get("backbone_prefixes", ["backbone"])),
                                no_decay_norm_bias=bool(oc.get("no_decay_norm_bias", False)))
    scheduler = instantiate(oc.scheduler)(optimizer, total_steps=int(tc.max_steps))

    step, positions, rngs = 0, None, None
    rpath = _resume_path(tc.resume, out_dir)
    if rpath is not None:
        state = ckpt_io.load(rpath)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        if int(state.get("world_size", 1)) == info.world_size:
            positions, rngs = state["data"], state["rng"]
        else:
            log.warning("checkpoint from %s process(es), now %s: the data stream and RNGs restart (the run "
                        "continues, but not bit-identically)", state.get("world_size"), info.world_size)
        if info.is_main:
            log.info("resumed from %s at step %d", rpath, step)

    dc = cfg.data
    stream = ClipStream(train_source, model.clip_length, per_rank_batch(int(dc.batch_size), info.world_size),
                        seed=int(cfg.seed), rank=info.rank, world_size=info.world_size,
                        num_workers=int(dc.num_workers), clips_per_video=int(dc.clips_per_video),
                        shuffle_buffer=int(dc.shuffle_buffer), scales=list(dc.scales or []),
                        max_size=dc.get("max_size"), eta=float(dc.eta),
                        size_divisibility=int(dc.get("size_divisibility") or 1), sampler=model.clip_sampler)
    pos = Position(**positions[info.rank]) if positions else Position()
    if rngs:
        ckpt_io.set_rng_state(rngs[info.rank])
    else:
        seed_all(int(cfg.seed) * 1000 + 1 + info.rank)  # per-rank streams (dropout, augmentation in the model)

    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(tc.find_unused_parameters))

    logger = ScalarLog(out_dir, resume_step=step if rpath is not None else None,
                       tensorboard=bool(tc.tensorboard)) if info.is_main else None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ckpts = _Checkpointer(out_dir, tc.keep_checkpoints)
    trace = None
    if tc.get("trace_dir"):  # test hook: what each rank saw and its parameters after each step
        Path(tc.trace_dir).mkdir(parents=True, exist_ok=True)
        trace = open(Path(tc.trace_dir) / f"trace_rank{info.rank}.jsonl", "a")
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)  # standalone: no interpolations left
    val_source = build_val_source(dc) if tc.eval_every else None

    def checkpoint():
        gathered = D.gather_objects(info, {"rng": ckpt_io.rng_state(), "data": pos.__dict__.copy()})
        if info.is_main:
            ckpts.save(step, {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "rng": [g["rng"] for g in gathered],
                              "data": [g["data"] for g in gathered], "world_size": info.world_size,
                              "config": config_yaml, "categories": categories})
        D.barrier(info)

    def evaluate():
        if info.is_main:
            saved = ckpt_io.rng_state()  # evaluation must not shift the training random streams
            pred = predict_videos(model, iter_eval_videos(val_source, dc.get("val_limit")),
                                  val_source.categories, device, short=dc.get("test_size"),
                                  max_size=dc.get("test_max_size"), eta=float(dc.eta), amp=amp, progress=False)
            summary = write_evaluation(out_dir / "eval" / f"step_{step:08d}", pred)
            scalars = dict(summary["metrics"] or {})
            scalars["fps"] = summary["timing"]["fps"]
            logger.log(step, scalars, kind="eval")
            ckpt_io.set_rng_state(saved)
            model.train()
        D.barrier(info)

    max_steps = int(tc.max_steps)
    if step >= max_steps:
        log.info("nothing to do: the checkpoint is at step %d >= trainer.max_steps=%d", step, max_steps)
    bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", disable=not (info.is_main and tc.progress),
               dynamic_ncols=True)
    clip_norm = oc.get("clip_grad_norm")
    batches = stream.batches(pos)
    model.train()
    last_loss, t_last, clips_since = None, time.perf_counter(), 0
    while step < max_steps:
        batch, binfo = next(batches)
        pos = binfo["position"]
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = net(batch)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip_norm)) if clip_norm
                     else None)
        optimizer.step()
        scheduler.step()
        step += 1
        clips_since += batch["frames"].shape[0] * info.world_size

        if step % int(tc.log_every) == 0 or step == max_steps:
            scalars = {k: D.mean_scalar(info, v) for k, v in losses.items()}
            scalars["loss"] = D.mean_scalar(info, loss)
            now = time.perf_counter()
            scalars["clips_per_s"] = clips_since / max(now - t_last, 1e-9)
            t_last, clips_since = now, 0
            for g in optimizer.param_groups:
                scalars[f"lr/{g.get('name', 'group')}"] = g["lr"]
            if grad_norm is not None:
                scalars["grad_norm"] = D.mean_scalar(info, grad_norm)
            last_loss = scalars["loss"]
            if logger is not None:
                logger.log(step, scalars)
                bar.set_postfix(loss=f"{last_loss:.4f}", clips_s=f"{scalars['clips_per_s']:.1f}")
        bar.update(1)
        if trace is not None:
            trace.write(json.dumps({"step": step, "epoch": binfo["epoch"], "units": binfo["units"],
                                    "video_ids": batch["video_ids"], "params": param_digest(model),
                                    "loss": float(loss.detach())}) + "\n")
            trace.flush()
        if step % int(tc.ckpt_every) == 0 or step == max_steps:
            checkpoint()
        if val_source is not None and (step % int(tc.eval_every) == 0 or step == max_steps):
            evaluate()
        if tc.get("fault_at_step") is not None and step == int(tc.fault_at_step):
            os.kill(os.getpid(), signal.SIGKILL)  # fault-injection for the kill-and-resume test
    batches.close()
    bar.close()
    if logger is not None:
        logger.close()
    if trace is not None:
        trace.close()
    return {"step": step, "loss": last_loss, "out_dir": str(out_dir)}


def build_val_source(dc: DictConfig):
    """``data.val``, or None when there is none (no node, or a node whose ``pattern`` is null)."""
    val = dc.get("val")
    if val is None or ("pattern" in val and val.pattern is None):
        return None
    return instantiate(val)


def set_num_classes(cfg: DictConfig, n: int) -> None:
    """``data.num_classes`` (which the model config interpolates) from the training data's categories."""
    given = OmegaConf.select(cfg, "data.num_classes", throw_on_missing=False)
    if given is None or OmegaConf.is_missing(cfg.data, "num_classes"):
        with open_dict(cfg):
            cfg.data.num_classes = n
    elif int(given) != n:
        raise ConfigError(f"data.num_classes={given} but the training data has {n} categories")


def check_config(cfg: DictConfig) -> None:
    for key in ("model", "data", "optim", "trainer"):
        if cfg.get(key) is None:
            raise ConfigError(f"the config has no '{key}' section (pick one, e.g. experiment=rcf_av_tiny)")
