"""``avis eval``: run a checkpoint online over shards -> results JSON, the 12 YTVIS metrics, per-instance IoU
samples and timing.

    avis eval --checkpoint runs/av/checkpoints/last.pt --shards 'shards/val-*.tar' --out runs/av/eval
    avis eval --checkpoint CKPT --out DIR data.test_size=480        # overrides of the checkpoint's config
    torchrun --nproc-per-node 4 -m avis eval --checkpoint CKPT ...  # videos split over 4 GPUs (eval_split.py)

The ground truth is the annotations carried in the shards (written to ``gt.json``) unless ``--gt`` names a
YTVIS JSON; masks are written at the ground truth's video size.
"""

from __future__ import annotations

import argparse
import json
import logging

from avis.errors import ConfigError

log = logging.getLogger("avis.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by avis train")
    parser.add_argument("--shards", nargs="+", help="shards to run on (default: the config's data.val)")
    parser.add_argument("--gt", help="ground-truth YTVIS JSON (default: the annotations in the shards)")
    parser.add_argument("--out", required=True, help="output folder (results.json, metrics.json, ...)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--limit", type=int, help="only the first N videos")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config")


def run(args: argparse.Namespace) -> int:
    from avis.engine import eval_split
    from avis.engine.data import ShardSource, iter_eval_videos
    from avis.engine.loop import build_val_source
    from avis.engine.predict import predict_videos, write_evaluation
    from avis.engine.session import load_trained
    from avis.io.ytvis import load_annotations

    trained = load_trained(args.checkpoint, eval_split.rank_device(args.device), args.overrides)
    cfg = trained.cfg
    if args.shards:
        source = ShardSource(args.shards, categories=trained.categories)
    elif build_val_source(cfg.data) is not None:
        source = build_val_source(cfg.data)
    else:
        raise ConfigError("no shards to evaluate: give --shards (the checkpoint's config has no data.val)")
    gt = load_annotations(args.gt) if args.gt else None
    kw = {"short": cfg.data.get("test_size"), "max_size": cfg.data.get("test_max_size"),
          "eta": float(cfg.data.get("eta", 0.96)), "amp": not args.no_amp, "with_gt": gt is None,
          "sizes": _gt_sizes(gt)}
    if eval_split.world_size() > 1:  # under torchrun: this rank's videos; rank 0 merges and writes
        pred = eval_split.predict_split(trained.model, source, args.limit, trained.categories, trained.device, **kw)
        if pred is None:
            return 0
    else:
        pred = predict_videos(trained.model, iter_eval_videos(source, args.limit), trained.categories,
                              trained.device, **kw)
    summary = write_evaluation(args.out, pred, gt,
                               extra={"checkpoint": {"path": str(args.checkpoint), "step": trained.step}})
    print(json.dumps(summary))
    return 0


def _gt_sizes(gt: dict | None) -> dict | None:
    if gt is None:
        return None
    return {int(v["id"]): (int(v["height"]), int(v["width"]), int(v.get("length") or 0)) for v in gt["videos"]}
