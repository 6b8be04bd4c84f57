"""Scalar logs of rank 0: a JSONL file (one object per record) and TensorBoard."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from avis.io.atomic import atomic_open


class ScalarLog:
    """``log(step, {"loss": ..., "lr": ...})`` -> ``metrics.jsonl`` and TensorBoard (``tb/``).

    On resume from ``step``, records after ``step`` (written by the run that died after its last checkpoint)
    are dropped, from the JSONL and (``purge_step``) from TensorBoard, so each step appears once.
    """

    def __init__(self, out_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if (rec := _record(line)) is not None and rec.get("step", 0) <= resume_step]
            with atomic_open(self.path, "w") as f:
                f.write("".join(line + "\n" for line in keep))
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(out_dir) / "tb"),
                                    purge_step=None if resume_step is None else resume_step + 1)
        self._f = open(self.path, "a")

    def log(self, step: int, scalars: dict, kind: str = "train") -> None:
        rec = {"step": int(step), "kind": kind}
        for k, v in scalars.items():
            rec[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "kind") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()


def _record(line: str) -> dict | None:
    """One JSONL record, or None for a blank line or a last line torn by a kill mid-write."""
    try:
        rec = json.loads(line) if line.strip() else None
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def read_jsonl(path: str | os.PathLike, kind: str | None = "train") -> list[dict]:
    recs = [r for line in Path(path).read_text().splitlines() if (r := _record(line)) is not None]
    return [r for r in recs if kind is None or r.get("kind") == kind]


# ------------------------------------------------------------------------------------------ console output
class ConsoleFormatter(logging.Formatter):
    """The console of ``avis train`` (``configs/hydra/job_logging/avis.yaml``): messages as they are; warnings
    and errors with their level and logger, as the other commands print them. ``train.log`` keeps hydra's
    format with the time of every line."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno < logging.WARNING else f"{record.levelname} {record.name}: {msg}"


def _console_handlers() -> list[logging.StreamHandler]:
    return [h for h in logging.getLogger().handlers
            if type(h) is logging.StreamHandler and getattr(h, "stream", None) in (sys.stdout, sys.stderr)]


class _AboveBars:
    """A console stream whose lines are written above tqdm's progress bars (``tqdm.write`` clears and redraws
    them), so that log lines do not cut a bar in two."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        if text.strip():
            tqdm.write(text.rstrip("\n"), file=self._stream)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _not_step_line(record: logging.LogRecord) -> bool:
    return getattr(record, "console", True)


@contextmanager
def console_above_bars(step_lines: bool):
    """While training: the console's log lines go above the progress bar; with ``step_lines`` False the
    per-step scalar lines (``extra={"console": False}``) go to ``train.log`` only (the bar shows them)."""
    handlers = _console_handlers()
    saved = [h.stream for h in handlers]
    for h in handlers:
        h.setStream(_AboveBars(h.stream))
        if not step_lines:
            h.addFilter(_not_step_line)
    try:
        yield
    finally:
        for h, s in zip(handlers, saved):
            h.setStream(s)
            h.removeFilter(_not_step_line)


def duration(seconds: float) -> str:
    """``1h 02m``, ``3m 05s``, ``12.3s``."""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"
