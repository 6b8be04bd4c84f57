"""``avis train [hydra overrides]``: the hydra app that trains a method.

Examples::

    avis train experiment=rcf_av_tiny data.train.pattern='shards/train-*.tar'
    avis train experiment=rcf_visual trainer.max_steps=1000 hydra.run.dir=runs/vis
    avis train -m experiment=rcf_av,rcf_visual seed=0,1,2          # a hydra multirun sweep
    torchrun --nproc-per-node 4 -m avis train experiment=rcf_av     # DDP, one process per GPU

The config groups live in ``configs/`` (see :mod:`avis.engine.config`). From Python,
:func:`train_experiment` trains one preset into a folder (the demo and ``scripts/train_av_vs_visual.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from avis.engine.config import config_path
from avis.errors import AvisError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--multirun", action="store_true", help="hydra multirun: sweep over a,b,c values")
    parser.add_argument("--cfg", choices=["job", "hydra", "all"], help="print the composed config and exit")
    parser.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="hydra overrides (key=value, group=option, -m for a multirun sweep, --cfg job to "
                             "print the config)")


def run(args: argparse.Namespace, hooks=()) -> int:
    """``avis train``; ``hooks`` (:class:`avis.engine.loop.HookBase`) run after the standard ones."""
    overrides = list(args.overrides)
    if args.multirun:
        overrides.insert(0, "--multirun")
    if args.cfg:
        overrides += ["--cfg", args.cfg] + (["--resolve"] if args.resolve else [])
    if int(os.environ.get("RANK", "0")) != 0:
        # Only rank 0 writes hydra's output folder and logs.
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
        if not any(o.startswith("hydra.run.dir=") for o in overrides):
            overrides.append("hydra.run.dir=.")  # its own timestamp would name a second, empty folder
    errors: list[BaseException] = []
    results: list[dict] = []

    @hydra.main(config_path=config_path(), config_name="train", version_base=None)
    def _main(cfg: DictConfig) -> None:
        from avis.engine.loop import check_config, train
        try:
            check_config(cfg)
            results.append(train(cfg, hooks))
        except (AvisError, OSError) as e:  # hand one-line errors (ours, a full disk) to the CLI, not hydra's report
            errors.append(e)

    saved = sys.argv
    sys.argv = ["avis train", *overrides]
    try:
        _main()
    except SystemExit as e:  # hydra exits on bad overrides / failed jobs after printing the reason
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    if errors:
        raise errors[0]
    return 0


def train_experiment(experiment: str, run_dir: str | os.PathLike, train_pattern, seed: int, steps: int,
                     overrides=(), progress: bool = True) -> Path:
    """Train one preset of ``configs/experiment`` (``rcf_av_tiny``, ``rcf_visual``, ...) on ``train_pattern``
    for ``steps`` steps into ``run_dir``, without periodic evaluation; returns the last checkpoint.

    The same as ``avis train experiment=... hydra.run.dir=RUN_DIR`` through hydra's compose API; ``overrides``
    are further hydra overrides (``model.delta=3``, ``optim.optimizer.lr=1e-3``, ``trainer.resume=true``)."""
    from avis.engine.config import compose
    from avis.engine.loop import check_config, train

    run_dir = Path(run_dir).resolve()
    cfg = compose([f"experiment={experiment}", f"data.train.pattern={train_pattern}", "data.val_pattern=null",
                   f"seed={seed}", f"trainer.max_steps={steps}", "trainer.eval_every=0",
                   f"trainer.ckpt_every={steps}", f"trainer.log_every={min(10, steps)}", "trainer.tensorboard=false",
                   f"trainer.progress={str(progress).lower()}", *overrides], out_dir=run_dir)
    check_config(cfg)
    train(cfg)
    return run_dir / "checkpoints" / "last.pt"
