"""``avis train [hydra overrides]``: the hydra app that trains a method.

Examples::

    avis train experiment=rcf_av_tiny data.train.pattern='shards/train-*.tar'
    avis train experiment=rcf_visual trainer.max_steps=1000 hydra.run.dir=runs/vis
    avis train -m experiment=rcf_av,rcf_visual seed=0,1,2          # a hydra multirun sweep
    torchrun --nproc-per-node 4 -m avis train experiment=rcf_av     # DDP, one process per GPU

The config groups live in ``configs/`` (see :func:`avis.engine.config.config_dir`).
"""

from __future__ import annotations

import argparse
import os
import sys

import hydra
from omegaconf import DictConfig

from avis.engine.config import config_dir
from avis.errors import AvisError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--multirun", action="store_true", help="hydra multirun: sweep over a,b,c values")
    parser.add_argument("--cfg", choices=["job", "hydra", "all"], help="print the composed config and exit")
    parser.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="hydra overrides (key=value, group=option, -m for a multirun sweep, --cfg job to "
                             "print the config)")


def run(args: argparse.Namespace) -> int:
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

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base=None)
    def _main(cfg: DictConfig) -> None:
        from avis.engine.loop import check_config, train
        try:
            check_config(cfg)
            results.append(train(cfg))
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
