"""The trainer: ``train(cfg, hooks=())``, called by the hydra app on every rank.

In the manner of detectron2's ``train_loop``: :class:`Trainer` builds the run from the config (data, model,
optimizer, schedule, resume) and loops :meth:`Trainer.run_step` (one batch: forward, backward, optimizer and
schedule step); everything around the steps is a hook (:class:`HookBase`) called before training, after
every step and after training. The default hooks (:func:`avis.engine.hooks.default_hooks`) log scalars,
write checkpoints and evaluate periodically; callers add their own (tests inject faults and trace what each
rank saw). Rank 0 owns the run's scalar log (``trainer.log``: metrics.jsonl, TensorBoard), which the hooks
write to. Hooks must not draw from the global random generators (evaluation saves and restores them), so that
a resumed run repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from avis.data.clips import ClipStream, Position, per_rank_batch
from avis.engine import checkpoint as ckpt_io
from avis.engine import dist as D
from avis.engine.logs import ScalarLog
from avis.engine.optim import build_optimizer
from avis.errors import ConfigError

log = logging.getLogger("avis.train")


class HookBase:
    """Code the trainer runs around its steps. ``self.trainer`` is set when the hook is registered; read the
    state from it (``step``, ``max_steps``, ``model``, ``last``, ``info``, ``log``, ...)."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        """Runs also when training stops with an error: release resources here, do not start work."""


@dataclass
class StepOutput:
    """What the last :meth:`Trainer.run_step` did, for the hooks."""

    losses: dict[str, torch.Tensor]  # the model's losses (this rank)
    loss: torch.Tensor  # their sum
    grad_norm: torch.Tensor | None  # before clipping (None without clip_grad_norm)
    clips: int  # clips in this rank's batch
    video_ids: list
    info: dict  # the data stream's: epoch, units (shards) of the batch, position


class Trainer:
    """One rank's training run, built from the composed config (see :func:`train`)."""

    def __init__(self, cfg: DictConfig, info: D.DistInfo):
        tc, device = cfg.trainer, info.device
        self.cfg, self.info, self.device = cfg, info, device
        self.out_dir = Path(D.broadcast_object(info, str(Path(tc.out_dir).resolve())))
        set_deterministic(bool(tc.deterministic))
        self.amp = bool(tc.amp) and device.type == "cuda"

        absolute_data_paths(cfg)  # the saved config must work from any folder (avis eval elsewhere)
        train_source = instantiate(cfg.data.train)
        self.categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in train_source.categories]
        self.data_fps = data_fps(train_source) if info.is_main else None  # avis infer's default rate
        set_num_classes(cfg, len(self.categories))

        seed_all(int(cfg.seed))  # the same initial weights on every rank
        self.model = model = instantiate(cfg.model).to(device)
        # audio.pretrain: the audio network's pretraining stage, before the optimizer sees which parameters
        # train (it may freeze the network); the global RNGs are left as they were (avis.engine.audio_pretrain)
        from avis.engine.audio_pretrain import run_audio_pretraining

        self.audio_pretrain = run_audio_pretraining(cfg, model, train_source, self.out_dir, info,
                                                    progress=bool(tc.progress) and info.is_main)
        oc = cfg.optim
        self.optimizer = build_optimizer(model, instantiate(oc.optimizer), backbone_lr_mult=oc.backbone_lr_mult,
                                         backbone_weight_decay=oc.get("backbone_weight_decay"),
                                         backbone_prefixes=tuple(oc.get("backbone_prefixes", ["backbone"])),
                                         no_decay_norm_bias=bool(oc.get("no_decay_norm_bias", False)))
        self.scheduler = instantiate(oc.scheduler)(self.optimizer, total_steps=int(tc.max_steps))
        self.clip_grad_norm = oc.get("clip_grad_norm")
        self.max_steps = int(tc.max_steps)

        self.step, positions, rngs = 0, None, None
        self.resumed_from = resume_path(tc.resume, self.out_dir)
        if self.resumed_from is not None:
            positions, rngs = self._load(self.resumed_from)

        dc = cfg.data
        self.stream = ClipStream(train_source, model.clip_length, per_rank_batch(int(dc.batch_size), info.world_size),
                                 seed=int(cfg.seed), rank=info.rank, world_size=info.world_size,
                                 num_workers=int(dc.num_workers), clips_per_video=int(dc.clips_per_video),
                                 shuffle_buffer=int(dc.shuffle_buffer), scales=list(dc.scales or []),
                                 max_size=dc.get("max_size"), eta=float(dc.eta),
                                 size_divisibility=int(dc.get("size_divisibility") or 1),
                                 sampler=model.clip_sampler)
        self.position = Position(**positions[info.rank]) if positions else Position()
        if rngs:
            ckpt_io.set_rng_state(rngs[info.rank])
        else:
            seed_all(int(cfg.seed) * 1000 + 1 + info.rank)  # per-rank streams (dropout, augmentation in the model)

        self.net = model
        if info.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(tc.find_unused_parameters))
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)  # standalone: no interpolations left
        self.hooks: list[HookBase] = []
        self.log: ScalarLog | None = None  # rank 0's scalar log, open during train()
        self.last: StepOutput | None = None  # the last step's output
        self.scalars: dict | None = None  # the last logged training scalars (avis.engine.hooks.LogScalars)
        self.last_eval: dict | None = None  # the last periodic evaluation's scalars (avis.engine.hooks.PeriodicEval)
        self.last_eval_step: int | None = None  # ... and its step
        self.best: dict | None = None  # the best evaluation so far (avis.engine.hooks.BestCheckpoint)
        self.completed = False  # the loop reached max_steps (hooks' after_train also runs after an error)

    def _load(self, path: Path):
        state = ckpt_io.load(path, require=("step", "model", "optimizer", "scheduler"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        positions = rngs = None
        if int(state.get("world_size", 1)) == self.info.world_size:
            positions, rngs = state["data"], state["rng"]
        else:
            log.warning("checkpoint from %s process(es), now %s: the data stream and RNGs restart (the run "
                        "continues, but not bit-identically)", state.get("world_size"), self.info.world_size)
        if self.info.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return positions, rngs

    def register_hooks(self, hooks) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def checkpoint_state(self) -> dict:
        """The checkpoint of this moment (every rank's RNG states and data position gathered: call it on all
        ranks)."""
        gathered = D.gather_objects(self.info, {"rng": ckpt_io.rng_state(), "data": self.position.__dict__.copy()})
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": [g["rng"] for g in gathered],
                "data": [g["data"] for g in gathered], "world_size": self.info.world_size,
                "config": self.config_yaml, "categories": self.categories, "data_fps": self.data_fps}

    def train(self) -> None:
        if self.step >= self.max_steps:
            log.info("nothing to do: the checkpoint is at step %d >= trainer.max_steps=%d", self.step,
                     self.max_steps)
        if self.info.is_main:
            # on resume, records after the checkpoint (written by the run that died) are dropped
            self.log = ScalarLog(self.out_dir, resume_step=self.step if self.resumed_from is not None else None,
                                 tensorboard=bool(self.cfg.trainer.tensorboard))
            (self.out_dir / "config.yaml").write_text(self.config_yaml)
        self._batches = self.stream.batches(self.position)
        try:
            for h in self.hooks:
                h.before_train()
            self.model.train()
            while self.step < self.max_steps:
                self.run_step()
                for h in self.hooks:
                    h.after_step()
            self.completed = True
        finally:
            self._batches.close()
            for h in self.hooks:
                h.after_train()
            if self.log is not None:
                self.log.close()

    def run_step(self) -> None:
        """One optimisation step on the next batch of this rank."""
        batch, binfo = next(self._batches)
        self.position = binfo["position"]
        batch = to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            losses = self.net(batch)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.clip_grad_norm))
                     if self.clip_grad_norm else None)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.last = StepOutput(losses, loss, grad_norm, int(batch["frames"].shape[0]), batch["video_ids"], binfo)


def train(cfg: DictConfig, hooks=()) -> dict:
    """Train ``cfg.model`` on ``cfg.data.train`` for ``cfg.trainer.max_steps`` steps with the default hooks
    (logging, checkpoints, periodic evaluation) followed by ``hooks``. Returns a summary."""
    from avis.engine.hooks import default_hooks

    info = D.setup(cfg.trainer.device, cfg.trainer.dist_backend)
    try:
        trainer = Trainer(cfg, info)
        trainer.register_hooks([*default_hooks(cfg.trainer), *hooks])
        trainer.train()
        return {"step": trainer.step, "loss": (trainer.scalars or {}).get("loss"), "out_dir": str(trainer.out_dir)}
    finally:
        D.teardown(info)


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


def resume_path(resume, out_dir: Path) -> Path | None:
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        return ckpt_io.latest(out_dir / "checkpoints")  # none yet: start fresh (handy for preemptible jobs)
    return Path(str(resume))


def set_num_classes(cfg: DictConfig, n: int) -> None:
    """``data.num_classes`` (which the model config interpolates) from the training data's categories."""
    given = OmegaConf.select(cfg, "data.num_classes", throw_on_missing=False)
    if given is None or OmegaConf.is_missing(cfg.data, "num_classes"):
        with open_dict(cfg):
            cfg.data.num_classes = n
    elif int(given) != n:
        raise ConfigError(f"data.num_classes={given} but the training data has {n} categories")


def data_fps(source) -> float | None:
    """The frame rate of a training source (``source.fps``: :attr:`avis.data.shards.ShardSource.fps`), if it
    knows one."""
    try:
        fps = getattr(source, "fps", None)
        return float(fps) if fps else None
    except (TypeError, ValueError):
        return None


def _absolute(path):
    """A local path made absolute (``~`` expanded); URLs (``https:``, ``s3:``, ``pipe:``, ``file:``), lists
    of paths and anything else as given. Globs and brace patterns keep their pattern part."""
    from avis.data.shards import is_url

    if isinstance(path, str) and path and not is_url(path):
        return os.path.abspath(os.path.expanduser(path))
    return path


def absolute_data_paths(cfg: DictConfig) -> None:
    """The data paths of ``cfg`` (``data.train`` / ``data.val``'s ``pattern`` and ``categories``,
    ``data.val_pattern``) made absolute in place: the run's saved config and checkpoints name the shards
    wherever ``avis eval`` later runs from. Interpolations (``data.val.pattern: ${data.val_pattern}``) are
    left to follow their source."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return
    with open_dict(cfg):
        if isinstance(data.get("val_pattern"), str):
            data.val_pattern = _absolute(data.val_pattern)
        for name in ("train", "val"):
            node = data.get(name)
            if not isinstance(node, DictConfig):
                continue
            for key in ("pattern", "categories"):
                if key not in node or OmegaConf.is_interpolation(node, key):
                    continue
                value = node[key]
                if isinstance(value, str):
                    node[key] = _absolute(value)
                elif OmegaConf.is_list(value):
                    node[key] = [_absolute(v) for v in value]


def check_config(cfg: DictConfig) -> None:
    for key in ("model", "data", "optim", "trainer"):
        if cfg.get(key) is None:
            raise ConfigError(f"the config has no '{key}' section (pick one, e.g. experiment=rcf_av_tiny)")
