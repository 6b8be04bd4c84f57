"""Hooks the engine's tests give the trainer (:class:`avis.engine.loop.HookBase`): a fault injected after a
step, and a per-rank trace of what each step saw; and ``python -m tests.engine_hooks [--kill-at N] [--trace DIR]
OVERRIDES...``, which is ``avis train OVERRIDES...`` with them (for subprocesses and torchrun)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

from avis.engine.loop import HookBase


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.state_dict().values():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class KillAt(HookBase):
    """SIGKILL this process after step ``step`` (after that step's checkpoint and evaluation)."""

    def __init__(self, step: int):
        self.step = int(step)

    def after_step(self) -> None:
        if self.trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class Trace(HookBase):
    """``DIR/trace_rank{r}.jsonl``: per step, the epoch, shards and videos of this rank's batch, its loss and
    a digest of the parameters after the step (appended to, so a resumed run continues the file)."""

    def __init__(self, directory):
        self.dir = Path(directory)

    def before_train(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.f = open(self.dir / f"trace_rank{self.trainer.info.rank}.jsonl", "a")

    def after_step(self) -> None:
        t = self.trainer
        self.f.write(json.dumps({"step": t.step, "epoch": t.last.info["epoch"], "units": t.last.info["units"],
                                 "video_ids": t.last.video_ids, "params": param_digest(t.model),
                                 "loss": float(t.last.loss.detach())}) + "\n")
        self.f.flush()

    def after_train(self) -> None:
        self.f.close()


def main(argv=None) -> int:
    from avis import cli
    from avis.engine import train

    p = argparse.ArgumentParser()
    p.add_argument("--kill-at", type=int)
    p.add_argument("--trace")
    known, rest = p.parse_known_args(argv)
    hooks = ([Trace(known.trace)] if known.trace else []) + ([KillAt(known.kill_at)] if known.kill_at else [])
    train.run = functools.partial(train.run, hooks=hooks)  # the CLI's `avis train`, with the hooks
    return cli.main(["train", *rest])


if __name__ == "__main__":
    sys.exit(main())
