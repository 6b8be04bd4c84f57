"""``avis eval``: run a checkpoint online over shards -> results JSON, the 12 YTVIS metrics and HOTA,
per-instance IoU samples and timing.

    avis eval --checkpoint runs/av/checkpoints/last.pt --shards 'shards/val-*.tar' --out runs/av/eval
    avis eval --checkpoint CKPT --out DIR data.test_size=480        # overrides of the checkpoint's config

The ground truth is the annotations carried in the shards (written to ``gt.json``) unless ``--gt`` names a
YTVIS JSON; masks are written at the ground truth's video size.

From Python, :func:`evaluate_checkpoint` does the same (the demo and ``scripts/train_av_vs_visual.py`` call
it), and :func:`evaluate_model` is its second half for a model in memory (the trainer's periodic evaluation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from avis.errors import ConfigError
from avis.models.audio.windows import DEFAULT_ETA

log = logging.getLogger("avis.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by avis train")
    parser.add_argument("--shards", nargs="+", help="shards to run on (default: the config's data.val)")
    parser.add_argument("--gt", help="ground-truth YTVIS JSON (default: the annotations in the shards)")
    parser.add_argument("--out", required=True, help="output folder (results.json, metrics.json, ...)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--limit", type=int, help="only the first N videos")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--keep-attention", action="store_true",
                        help="also write attention.npz, RCF's attention maps of every frame, for avis view")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config")


def run(args: argparse.Namespace) -> int:
    summary = evaluate_checkpoint(args.checkpoint, args.out, shards=args.shards, gt=args.gt, device=args.device,
                                  limit=args.limit, amp=not args.no_amp, overrides=args.overrides,
                                  keep_attention=args.keep_attention)
    summary.pop("results")
    print(json.dumps(summary))
    return 0


def evaluate_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, shards=None,
                        gt: dict | str | os.PathLike | None = None, device: str = "auto", limit: int | None = None,
                        amp: bool = True, overrides=(), progress: bool = True,
                        keep_attention: bool = False) -> dict:
    """A checkpoint online over ``shards`` (default: its config's ``data.val``), scored against ``gt`` (a YTVIS
    dict or file; None: the annotations in the shards) -> ``out_dir``/results.json, metrics.json,
    samples.csv (+ gt.json). ``overrides``: ``key=value`` changes of the checkpoint's config.
    ``keep_attention``: also write ``attention.npz`` (RCF's attention maps, for ``avis view``). Returns the
    summary written to metrics.json plus ``results`` (the YTVIS results)."""
    from avis.data.shards import ShardSource
    from avis.engine.session import load_trained
    from avis.io.ytvis import load_annotations

    trained = load_trained(checkpoint, device, list(overrides))
    cfg = trained.cfg
    if shards:
        source = ShardSource(shards if isinstance(shards, (list, tuple)) else str(shards),
                             categories=trained.categories)
    else:
        source = build_val_source(cfg.data)
        if source is None:
            raise ConfigError("no shards to evaluate: give --shards (the checkpoint's config has no data.val)")
    if gt is not None and not isinstance(gt, dict):
        gt = load_annotations(gt)
    videos, recorder = iter_eval_videos(source, limit), None
    if keep_attention:  # its copies to the host count in the timing
        from avis.view.attention import AttentionRecorder

        recorder = AttentionRecorder(trained.model)
        videos = recorder.videos(videos)
    summary = evaluate_model(trained.model, videos, trained.categories, trained.device, cfg.data, out_dir, gt=gt,
                             amp=amp, progress=progress,
                             extra={"checkpoint": {"path": str(checkpoint), "step": trained.step}})
    if recorder is not None:
        recorder.save(Path(out_dir) / "attention.npz")
    return summary


def evaluate_model(model, videos, categories: list[dict], device, data_cfg: DictConfig, out_dir, *,
                   gt: dict | None = None, amp: bool = False, progress: bool = True, extra: dict | None = None) -> dict:
    """``model`` online over ``videos`` at the test size of ``data_cfg`` (``test_size``, ``test_max_size``,
    ``eta``) -> ``out_dir`` (see :func:`evaluate_checkpoint`). Returns the summary plus ``results``."""
    from avis.engine.predict import predict_videos, write_evaluation

    pred = predict_videos(model, videos, categories, device, short=data_cfg.get("test_size"),
                          max_size=data_cfg.get("test_max_size"), eta=float(data_cfg.get("eta", DEFAULT_ETA)), amp=amp,
                          progress=progress, with_gt=gt is None, sizes=_gt_sizes(gt))
    summary = write_evaluation(Path(out_dir), pred, gt, extra=extra)
    return {**summary, "results": pred["results"]}


def build_val_source(data_cfg: DictConfig):
    """``data.val``, or None when there is none (no node, or a node whose ``pattern`` is null)."""
    val = data_cfg.get("val")
    if val is None or ("pattern" in val and val.pattern is None):
        return None
    return instantiate(val)


def iter_eval_videos(source, limit: int | None = None):
    """All videos of a source (:class:`avis.data.VideoSource`), decoded, in unit order; an unreadable video
    stops the evaluation (strict)."""
    n = 0
    for unit in source.units():
        for v in source.videos(unit, strict=True):
            yield v.load()
            n += 1
            if limit is not None and n >= limit:
                return


def _gt_sizes(gt: dict | None) -> dict | None:
    if gt is None:
        return None
    return {int(v["id"]): (int(v["height"]), int(v["width"]), int(v.get("length") or 0)) for v in gt["videos"]}
