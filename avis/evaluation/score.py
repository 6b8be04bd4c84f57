"""``avis score``: YouTube-VIS metrics of a results JSON against ground truth.

Prints the 12 official numbers; ``--out`` writes them as JSON (fractions in [0, 1], -1 where undefined),
``--samples`` the per-instance IoU samples (CSV), ``--per-category`` a per-category table, ``--pr-curves`` one
precision/recall PNG per category plus the overall curve.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np

from avis.errors import ConfigError
from avis.evaluation.samples import samples_from_entries, write_samples_csv
from avis.evaluation.ytvis_eval import AREA_LBL, IOU_THRS, REC_THRS, STAT_KEYS, Evaluation, evaluate
from avis.io.atomic import atomic_open
from avis.io.ytvis import load_annotations, load_results, save_json

_LABELS = {
    "AP": "AP  @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "AP50": "AP  @[IoU=0.50      | area=   all | maxDets=100]",
    "AP75": "AP  @[IoU=0.75      | area=   all | maxDets=100]",
    "APs": "AP  @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "APm": "AP  @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "APl": "AP  @[IoU=0.50:0.95 | area= large | maxDets=100]",
    "AR1": "AR  @[IoU=0.50:0.95 | area=   all | maxDets=  1]",
    "AR10": "AR  @[IoU=0.50:0.95 | area=   all | maxDets= 10]",
    "AR100": "AR  @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "ARs": "AR  @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "ARm": "AR  @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "ARl": "AR  @[IoU=0.50:0.95 | area= large | maxDets=100]",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="ground-truth annotations (YouTube-VIS JSON)")
    parser.add_argument("--results", required=True, help="predictions (YouTube-VIS results JSON)")
    parser.add_argument("--out", help="write the 12 numbers here as JSON")
    parser.add_argument("--samples", help="write one CSV row per ground-truth instance: video_id, category_id, "
                        "instance_id, iou and score of its greedy match (empty when none)")
    parser.add_argument("--samples-iou", type=float, default=0.0, metavar="THR",
                        help="minimum IoU for a match in --samples (default 0: best greedy overlap)")
    parser.add_argument("--per-category", action="store_true", help="print AP / AP50 / AP75 / AR100 per category")
    parser.add_argument("--pr-curves", metavar="DIR", help="write precision/recall PNGs (overall + per category)")
    parser.add_argument("--workers", type=int, default=1, help="processes over videos (default 1)")


def format_table(stats: dict[str, float]) -> str:
    return "\n".join(f"{_LABELS[k]} = {stats[k]:.3f}   {k}" for k in STAT_KEYS)


def format_per_category(ev: Evaluation) -> str:
    rows = ev.per_category()
    w = max([len(r["name"]) for r in rows] + [8])
    lines = [f"{'category':<{w}}  {'id':>4}  {'inst':>5}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}  {'AR100':>6}   (in %)"]
    for r in rows:
        vals = "  ".join(f"{r[k] * 100:6.1f}" if r[k] >= 0 else f"{'-':>6}" for k in ("AP", "AP50", "AP75", "AR100"))
        lines.append(f"{r['name']:<{w}}  {r['category_id']:>4}  {r['instances']:>5}  {vals}")
    return "\n".join(lines)


def write_pr_curves(ev: Evaluation, out_dir: str | os.PathLike) -> list[Path]:
    """Precision vs recall at IoU 0.50 / 0.75 / mean over thresholds (area all, 100 detections)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    sets = [("all categories", None)] + [(ev.category_names.get(c, str(c)), k) for k, c in enumerate(ev.category_ids)]
    for name, k in sets:
        p = ev.precision[:, :, :, AREA_LBL.index("all"), -1]  # (T, R, K)
        p = p if k is None else p[:, :, k : k + 1]
        if not (p > -1).any():
            continue
        fig, ax = plt.subplots(figsize=(5, 4))
        for label, t in (("IoU=0.50", [0]), ("IoU=0.75", [int(np.where(IOU_THRS == 0.75)[0][0])]),
                         ("mean 0.50:0.95", list(range(len(IOU_THRS))))):
            q = p[t]  # (t, R, K)
            q = np.where(q > -1, q, np.nan)
            ax.plot(REC_THRS, np.nanmean(q, axis=(0, 2)), label=label)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=f"PR: {name}")
        ax.legend(loc="lower left")
        fig.tight_layout()
        fname = "pr_all.png" if k is None else f"pr_cat{ev.category_ids[k]}.png"
        with atomic_open(out_dir / fname, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        paths.append(out_dir / fname)
    return paths


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    gt = load_annotations(args.gt)
    results = load_results(args.results, gt=gt)  # unknown videos / categories, frame counts: the file's error
    ev = evaluate(gt, results, workers=args.workers, progress=True, path=os.fspath(args.results))
    print(format_table(ev.stats))
    if args.per_category:
        print()
        print(format_per_category(ev))
    if args.out:
        save_json({k: (v if math.isfinite(v) else -1.0) for k, v in ev.stats.items()}, args.out, indent=2)
    if args.samples:
        write_samples_csv(samples_from_entries(ev.entries, args.samples_iou), args.samples)
    if args.pr_curves:
        write_pr_curves(ev, args.pr_curves)
    return 0
