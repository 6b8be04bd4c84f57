"""``avis eval``: run a checkpoint online over shards -> results JSON, the 12 YTVIS metrics, per-instance IoU
samples and timing.

    avis eval --checkpoint runs/av/checkpoints/last.pt --shards 'shards/val-*.tar' --out runs/av/eval
    avis eval --checkpoint CKPT --out DIR data.test_size=480        # overrides of the checkpoint's config

The ground truth is the annotations carried in the shards (written to ``gt.json``) unless ``--gt`` names a
YTVIS JSON; masks are written at the ground truth's video size.
"""

from __future__ import annotations

import argparse
import json
import logging

from avis.errors import ConfigError, InputError

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
    from avis.engine.data import ShardSource, iter_eval_videos
    from avis.engine.loop import build_val_source
    from avis.engine.predict import predict_videos, write_evaluation
    from avis.engine.session import load_trained
    from avis.io.ytvis import load_annotations

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a number of videos >= 1, got {args.limit}")
    trained = load_trained(args.checkpoint, args.device, args.overrides)
    cfg = trained.cfg
    if args.shards:
        source = ShardSource(args.shards, categories=trained.categories)
    elif build_val_source(cfg.data) is not None:
        source = build_val_source(cfg.data)
    else:
        raise ConfigError("no shards to evaluate: give --shards (the checkpoint's config has no data.val)")
    gt = load_annotations(args.gt) if args.gt else None
    check = None
    if gt is not None:
        _check_gt_categories(gt, trained.categories, args.gt, args.checkpoint)
    else:  # the ground truth comes from the shards: their categories must be the checkpoint's
        _check_manifest_categories(source, trained.categories, args.checkpoint)
        check = _video_categories_check(trained.categories, args.checkpoint)
    videos = iter_eval_videos(source, args.limit, check)
    pred = predict_videos(trained.model, videos, trained.categories, trained.device,
                          short=cfg.data.get("test_size"), max_size=cfg.data.get("test_max_size"),
                          eta=float(cfg.data.get("eta", 0.96)), amp=not args.no_amp, with_gt=gt is None,
                          sizes=_gt_sizes(gt))
    summary = write_evaluation(args.out, pred, gt,
                               extra={"checkpoint": {"path": str(args.checkpoint), "step": trained.step}})
    print(json.dumps(summary))
    return 0


def _names(cats, ids) -> str:
    by_id = {c["id"]: c.get("name", "") for c in cats}
    shown = ", ".join(f"{i} {by_id.get(i, '')!r}" for i in sorted(ids)[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _check_gt_categories(gt: dict, cats: list[dict], gt_path, ckpt) -> None:
    """The model can only predict the checkpoint's categories: each must be in the ground truth (else its
    results could not be scored); categories only the ground truth has score 0 (a warning)."""
    mine, theirs = {c["id"] for c in cats}, {c["id"] for c in gt["categories"]}
    if mine - theirs:
        raise InputError(f"categories of the checkpoint {ckpt} are not in this ground truth: "
                         f"{_names(cats, mine - theirs)}", gt_path)
    if theirs - mine:
        log.warning("%s: categories the checkpoint %s cannot predict (they score 0): %s", gt_path, ckpt,
                    _names(gt["categories"], theirs - mine))


def _check_manifest_categories(source, cats: list[dict], ckpt) -> None:
    from pathlib import Path

    from avis.data.shards import load_manifest

    files = getattr(source, "files", None)
    manifest = load_manifest(files) if files else None
    if not manifest or not isinstance(manifest.get("categories"), list):
        return
    mine = {c["id"] for c in cats}
    extra = {c.get("id") for c in manifest["categories"] if isinstance(c, dict)} - mine
    if extra:
        raise InputError(f"the shards' categories {_names(manifest['categories'], extra)} are not among the "
                         f"categories of the checkpoint {ckpt} ({_names(cats, mine)})",
                         Path(files[0]).parent / "manifest.json")


def _video_categories_check(cats: list[dict], ckpt):
    mine = {c["id"] for c in cats}

    def check(unit, video) -> None:
        for inst in getattr(video, "instances", None) or []:
            cid = getattr(inst, "category_id", None)
            if cid is not None and cid not in mine:
                raise InputError(f"sample {getattr(video, 'key', '')} (video {video.video_id}): category id {cid} "
                                 f"is not among the categories of the checkpoint {ckpt} ({_names(cats, mine)})",
                                 unit if isinstance(unit, str) else None)

    return check


def _gt_sizes(gt: dict | None) -> dict | None:
    if gt is None:
        return None
    return {int(v["id"]): (int(v["height"]), int(v["width"]), int(v.get("length") or 0)) for v in gt["videos"]}
