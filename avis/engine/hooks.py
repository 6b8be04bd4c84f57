"""The trainer's standard hooks (see :class:`avis.engine.loop.HookBase`): scalar logging with a progress bar,
checkpoints, periodic evaluation. :func:`default_hooks` builds them from ``cfg.trainer``; they run in that
order after every step."""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from avis.engine import checkpoint as ckpt_io
from avis.engine import dist as D
from avis.engine.loop import HookBase


def default_hooks(tc: DictConfig) -> list[HookBase]:
    return [LogScalars(int(tc.log_every), progress=bool(tc.progress)),
            Checkpointer(int(tc.ckpt_every), int(tc.keep_checkpoints)),
            PeriodicEval(int(tc.eval_every))]


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


class LogScalars(HookBase):
    """Every ``every`` steps and at the last: the losses (mean over ranks), clips per second, the learning rates
    and the gradient norm -> rank 0's scalar log (``kind="train"``) and the progress bar."""

    def __init__(self, every: int, progress: bool = True):
        self.every, self.progress = every, progress

    def before_train(self) -> None:
        t = self.trainer
        self.bar = tqdm(total=t.max_steps, initial=t.step, desc="train", unit="step",
                        disable=not (t.info.is_main and self.progress), dynamic_ncols=True)
        self.t_last, self.clips = time.perf_counter(), 0

    def after_step(self) -> None:
        t, out = self.trainer, self.trainer.last
        self.clips += out.clips * t.info.world_size
        if _due(t.step, self.every, t.max_steps):
            scalars = {k: D.mean_scalar(t.info, v) for k, v in out.losses.items()}
            scalars["loss"] = D.mean_scalar(t.info, out.loss)
            now = time.perf_counter()
            scalars["clips_per_s"] = self.clips / max(now - self.t_last, 1e-9)
            self.t_last, self.clips = now, 0
            for g in t.optimizer.param_groups:
                scalars[f"lr/{g.get('name', 'group')}"] = g["lr"]
            if out.grad_norm is not None:
                scalars["grad_norm"] = D.mean_scalar(t.info, out.grad_norm)
            t.scalars = scalars
            if t.log is not None:
                t.log.log(t.step, scalars)
                self.bar.set_postfix(loss=f"{scalars['loss']:.4f}", clips_s=f"{scalars['clips_per_s']:.1f}")
        self.bar.update(1)

    def after_train(self) -> None:
        self.bar.close()


class Checkpointer(HookBase):
    """Every ``every`` steps and at the last: ``checkpoints/step_XXXXXXXX.pt`` (atomic) and ``last.pt``, keeping
    the newest ``keep``. Every rank takes part (their RNG states and data positions go into it)."""

    def __init__(self, every: int, keep: int = 2):
        self.every, self.keep = every, max(1, int(keep))

    def after_step(self) -> None:
        t = self.trainer
        if _due(t.step, self.every, t.max_steps):
            state = t.checkpoint_state()
            if t.info.is_main:
                self.save(t.out_dir / "checkpoints", t.step, state)
            D.barrier(t.info)

    def save(self, directory: Path, step: int, state: dict) -> Path:
        path = directory / f"step_{step:08d}.pt"
        ckpt_io.save(path, state)
        last = directory / "last.pt"
        tmp = directory / f".last.pt.tmp-{os.getpid()}"
        try:  # last.pt: an atomic hard link to the newest checkpoint (no second copy of the bytes)
            tmp.unlink(missing_ok=True)
            os.link(path, tmp)
            os.replace(tmp, last)
        except OSError:
            ckpt_io.save(last, state)
        for p in sorted(directory.glob("step_*.pt"))[:-self.keep]:
            p.unlink(missing_ok=True)
        return path


class PeriodicEval(HookBase):
    """Every ``every`` steps and at the last (0: never), on rank 0: the model online over ``data.val`` (the
    first ``data.val_limit`` videos) -> ``eval/step_XXXXXXXX/`` and the scalar log (``kind="eval"``: the 12
    YTVIS numbers and fps), also kept as ``trainer.last_eval``. The training random streams are saved and
    restored around it."""

    def __init__(self, every: int):
        self.every = every

    def before_train(self) -> None:
        from avis.engine.evaluate import build_val_source

        self.source = build_val_source(self.trainer.cfg.data) if self.every else None

    def after_step(self) -> None:
        t = self.trainer
        if self.source is None or not _due(t.step, self.every, t.max_steps):
            return
        if t.info.is_main:
            from avis.engine.evaluate import evaluate_model, iter_eval_videos

            saved = ckpt_io.rng_state()  # evaluation must not shift the training random streams
            dc = t.cfg.data
            summary = evaluate_model(t.model, iter_eval_videos(self.source, dc.get("val_limit")),
                                     self.source.categories, t.device, dc, t.out_dir / "eval" / f"step_{t.step:08d}",
                                     amp=t.amp, progress=False)
            scalars = dict(summary["metrics"] or {})
            scalars["fps"] = summary["timing"]["fps"]
            t.log.log(t.step, scalars, kind="eval")
            t.last_eval = scalars
            ckpt_io.set_rng_state(saved)
            t.model.train()
        D.barrier(t.info)
