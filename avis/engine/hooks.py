"""The trainer's standard hooks (see :class:`avis.engine.loop.HookBase`): scalar logging with a progress bar,
checkpoints, periodic evaluation with its metrics table, the best checkpoint, and the run's report (what runs
at the start, where everything went at the end). :func:`default_hooks` builds them from ``cfg.trainer``; they
run in that order after every step.

What a run prints (rank 0; the console and ``train.log``, hydra's job log, which also gets every step's
scalars and the time of each line) is described in docs/training.md, "What a run prints".
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from avis.engine import checkpoint as ckpt_io
from avis.engine import dist as D
from avis.engine.logs import console_above_bars, duration
from avis.engine.loop import HookBase
from avis.errors import ConfigError

log = logging.getLogger("avis.train")


def default_hooks(tc: DictConfig) -> list[HookBase]:
    best = tc.get("best_metric", "AP")
    return [LogScalars(int(tc.log_every), progress=bool(tc.progress)),
            Checkpointer(int(tc.ckpt_every), int(tc.keep_checkpoints)),
            PeriodicEval(int(tc.eval_every)),
            *([BestCheckpoint(str(best), int(tc.eval_every))] if best not in (None, "", "null", "none") else []),
            RunReport()]


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
        self.t0, self.step0 = self.t_last, t.step
        self._console = ExitStack()  # log lines above the bar; step lines in train.log only while it shows
        self._console.enter_context(console_above_bars(step_lines=self.bar.disable))

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
                log.info("%s", self.step_line(scalars, now), extra={"console": False})
        self.bar.update(1)

    def step_line(self, scalars: dict, now: float) -> str:
        """``step 20/60  loss 5.6610 (loss_ce 2.0794, ...)  clips/s 53.0  lr 6.0e-04  eta 1m 20s``."""
        t = self.trainer
        parts = [k for k in scalars if k not in ("loss", "clips_per_s", "grad_norm") and not k.startswith("lr/")]
        line = f"step {t.step}/{t.max_steps}  loss {scalars['loss']:.4f}"
        if parts:
            line += " (" + ", ".join(f"{k} {scalars[k]:.4f}" for k in parts) + ")"
        line += f"  clips/s {scalars['clips_per_s']:.1f}"
        lrs = [v for k, v in scalars.items() if k.startswith("lr/")]
        if lrs:
            line += f"  lr {max(lrs):.2e}"
        if "grad_norm" in scalars:
            line += f"  grad_norm {scalars['grad_norm']:.3g}"
        done = t.step - self.step0
        if done and t.step < t.max_steps:
            line += f"  eta {duration((now - self.t0) / done * (t.max_steps - t.step))}"
        return line

    def after_train(self) -> None:
        self.bar.close()
        self._console.close()


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
            from avis.engine.evaluate import count_videos
            from avis.evaluation.score import format_compact

            limit = dc.get("val_limit")
            out = t.out_dir / "eval" / f"step_{t.step:08d}"
            n = count_videos(self.source, limit)
            log.info("evaluating at step %d%s ...", t.step, f" on {n} videos" if n is not None else "")
            # no second progress bar: a nested bar moves the cursor with escape sequences, which the CLI's
            # output filter shows as text; the line above and the table below say what happens
            summary = evaluate_model(t.model, iter_eval_videos(self.source, limit), self.source.categories, t.device,
                                     dc, out, amp=t.amp, progress=False)
            scalars = dict(summary["metrics"] or {})
            scalars["fps"] = summary["timing"]["fps"]
            t.log.log(t.step, scalars, kind="eval")
            t.last_eval = scalars
            t.last_eval_step = t.step
            tm = summary["timing"]
            fps = f", {tm['fps']:.1f} frames/s" if tm.get("fps") else ""
            log.info("evaluation at step %d (%d videos, %d frames%s) -> %s\n%s", t.step, tm["videos"], tm["frames"],
                     fps, out, format_compact(scalars) if summary["metrics"] else "(no ground truth to score)")
            ckpt_io.set_rng_state(saved)
            t.model.train()
        D.barrier(t.info)


class BestCheckpoint(HookBase):
    """After each periodic evaluation that improves ``metric`` (a key of the metrics table, higher is better;
    undefined values, -1, never count): ``checkpoints/best.pt`` (a hard link to the step's checkpoint when
    there is one, else written) and ``checkpoints/best.json`` (``{"metric", "value", "step"}``), also kept as
    ``trainer.best``. A resumed run continues from ``best.json`` (an entry written after the checkpoint it
    resumes from, by the run that died, is redone). Every rank takes part when a checkpoint is written."""

    def __init__(self, metric: str = "AP", every: int = 0):
        self.metric, self.every = metric, every  # every: PeriodicEval's (the steps that have an evaluation)

    def before_train(self) -> None:
        from avis.evaluation.hota import HOTA_KEYS
        from avis.evaluation.score import _LABELS

        known = [*_LABELS, *HOTA_KEYS]
        if self.metric not in known:
            import difflib

            close = difflib.get_close_matches(self.metric, known, n=3, cutoff=0.5)
            raise ConfigError(f"trainer.best_metric={self.metric!r} is not a metric of the evaluation"
                              + (f"; closest: {', '.join(close)}" if close else "") + f" (metrics: {', '.join(known)})")
        t = self.trainer
        self.dir = t.out_dir / "checkpoints"
        t.best = None
        if not t.info.is_main:
            return
        record = None
        if t.resumed_from is not None:
            try:
                record = json.loads((self.dir / "best.json").read_text())
            except (OSError, ValueError):
                record = None
        if (isinstance(record, dict) and record.get("metric") == self.metric and isinstance(record.get("step"), int)
                and record["step"] <= t.step and isinstance(record.get("value"), (int, float))):
            t.best = {**record, "path": str(self.dir / "best.pt")}
        else:  # a fresh run (or another metric) in a folder with an older best: it is not this run's
            for name in ("best.pt", "best.json"):
                (self.dir / name).unlink(missing_ok=True)

    def after_step(self) -> None:
        t = self.trainer
        if not (self.every and _due(t.step, self.every, t.max_steps)):
            return  # every rank knows this without talking: no collective on other steps
        decision = None
        if t.info.is_main and t.last_eval_step == t.step:
            value = (t.last_eval or {}).get(self.metric)
            if isinstance(value, (int, float)) and value >= 0 and (t.best is None or value > t.best["value"]):
                step_file = self.dir / f"step_{t.step:08d}.pt"
                decision = {"value": float(value), "link": str(step_file) if step_file.exists() else None}
        decision = D.broadcast_object(t.info, decision)
        if decision is None:
            return
        state = t.checkpoint_state() if decision["link"] is None else None  # collective: every rank
        if t.info.is_main:
            self.save(decision, state)
        D.barrier(t.info)

    def save(self, decision: dict, state: dict | None) -> None:
        from avis.io.atomic import atomic_write_json

        t = self.trainer
        best = self.dir / "best.pt"
        self.dir.mkdir(parents=True, exist_ok=True)
        linked = False
        if decision["link"] is not None:
            tmp = self.dir / f".best.pt.tmp-{os.getpid()}"
            try:
                tmp.unlink(missing_ok=True)
                os.link(decision["link"], tmp)
                os.replace(tmp, best)
                linked = True
            except OSError:
                tmp.unlink(missing_ok=True)
        if not linked:
            ckpt_io.save(best, state if state is not None else ckpt_io.load(decision["link"]))
        t.best = {"metric": self.metric, "value": decision["value"], "step": t.step}
        atomic_write_json(t.best, self.dir / "best.json")
        t.best["path"] = str(best)
        log.info("new best %s %.1f at step %d -> %s", self.metric, decision["value"] * 100, t.step, best)


class RunReport(HookBase):
    """Rank 0's console report: at the start the run folder and one line of model / data / steps; at the end
    (a run that completed) the time it took, the best evaluation and where the checkpoints, evaluations and
    logs are."""

    def before_train(self) -> None:
        t = self.trainer
        self.t0 = time.perf_counter()
        if t.info.is_main:
            log.info("run folder %s", t.out_dir)
            log.info("%s", summary_line(t))

    def after_train(self) -> None:
        t = self.trainer
        if not (t.info.is_main and t.completed):
            return
        secs = time.perf_counter() - self.t0
        ck = t.out_dir / "checkpoints"
        lines = [f"done: step {t.step}/{t.max_steps} in {duration(secs)}"]
        best = getattr(t, "best", None)
        if best:
            lines.append(f"best {best['metric']} {best['value'] * 100:.1f} at step {best['step']}: {best['path']}")
        elif t.last_eval:
            lines.append(f"last evaluation (step {t.last_eval_step}): AP {t.last_eval.get('AP', -1) * 100:.1f}")
        else:
            lines.append("no evaluation (set data.val_pattern and trainer.eval_every to evaluate while training)")
        last = ck / "last.pt"
        lines.append(f"checkpoints: {ck}" + (f" (last.pt = step {t.step})" if last.exists() else ""))
        if (t.out_dir / "eval").is_dir():
            lines.append(f"evaluations: {t.out_dir / 'eval'}")
        lines.append(f"logs: {t.out_dir / 'train.log'}, {t.out_dir / 'metrics.jsonl'}"
                     + (f", TensorBoard {t.out_dir / 'tb'}" if t.cfg.trainer.get("tensorboard") else ""))
        log.info("%s", "\n".join(lines))


def summary_line(t) -> str:
    """``model rcf_tiny (1.23M parameters, audio on) | data shards/train (8 categories, 12 fps) | steps 0 -> 60,
    batch 4 | eval every 30 on shards/val | cpu``."""
    cfg = t.cfg
    target = str(cfg.model.get("_target_", type(t.model).__name__))
    n = sum(p.numel() for p in t.model.parameters())
    audio = "audio on" if getattr(t.model, "uses_audio", False) else "visual only"
    model = f"model {target.rsplit('.', 1)[-1]} ({n / 1e6:.2f}M parameters, {audio})"
    train = cfg.data.get("train") or {}
    where = train.get("pattern") if "pattern" in train else str(train.get("_target_", "?")).rsplit(".", 1)[-1]
    fps = f", {t.data_fps:g} fps" if getattr(t, "data_fps", None) else ""
    data = f"data {where} ({len(t.categories)} categories{fps})"
    start = f"resumed at step {t.step}" if t.resumed_from is not None else f"steps {t.step}"
    steps = f"{start} -> {t.max_steps}, batch {cfg.data.get('batch_size')}"
    tc = cfg.trainer
    val = cfg.data.get("val")
    val_where = None if val is None else (val.get("pattern") if "pattern" in val else
                                          str(val.get("_target_", "?")).rsplit(".", 1)[-1])
    if int(tc.eval_every) and val_where:
        evals = f"eval every {int(tc.eval_every)} on {val_where}"
        if tc.get("best_metric"):
            evals += f", best by {tc.best_metric}"
    else:
        evals = "no evaluation"
    world = f" x {t.info.world_size} processes" if t.info.world_size > 1 else ""
    return " | ".join([model, data, steps, evals, f"{t.device}{world}"])
