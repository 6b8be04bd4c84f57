"""Per-instance samples: for every ground-truth instance, the video IoU and score of the prediction that the
greedy score-ordered matching gives it. These are the inputs of the significance tests (``avis ttest``).

The matching is the one of the YouTube-VIS AP at a single IoU threshold: per (video, category), the top 100
predictions by score (stable) take, in turn, the unmatched ground truth with the highest IoU >= threshold
(and > 0); a crowd ground truth absorbs predictions but gets no row. With ``iou_threshold=0`` each instance
gets its best greedy overlap; at 0.5 the matched instances are exactly the true positives of AP50.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from avis.evaluation.ytvis_eval import VideoCategoryEval, greedy_match, match_all
from avis.io.atomic import atomic_open

COLUMNS = ("video_id", "category_id", "instance_id", "iou", "score")


def samples_from_entries(entries: list[VideoCategoryEval], iou_threshold: float = 0.0) -> list[dict]:
    """One row per non-crowd ground truth: ``iou`` / ``score`` of its match, NaN when unmatched."""
    thr = np.array([max(float(iou_threshold), np.nextafter(0.0, 1.0))])
    rows = []
    for e in entries:
        if len(e.gt_ids) == 0:
            continue
        _, _, gt_det = greedy_match(e.ious, e.gt_ids, e.gt_crowd, e.gt_crowd[None, :], thr)
        for j, gid in enumerate(e.gt_ids):
            if e.gt_crowd[j]:
                continue
            d = int(gt_det[0, 0, j])
            rows.append({"video_id": e.video_id, "category_id": e.category_id, "instance_id": int(gid),
                         "iou": float(e.ious[d, j]) if d >= 0 else math.nan,
                         "score": float(e.scores[d]) if d >= 0 else math.nan})
    return rows


def instance_samples(gt: dict, results: list[dict], iou_threshold: float = 0.0, workers: int = 1) -> list[dict]:
    """Rows ``{video_id, category_id, instance_id, iou, score}`` (see module docstring)."""
    _, _, entries = match_all(gt, results, workers=workers)
    return samples_from_entries(entries, iou_threshold)


def write_samples_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Atomic CSV write; unmatched instances have empty ``iou`` and ``score`` cells."""
    with atomic_open(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if isinstance(r[c], float) and math.isnan(r[c]) else
                        (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in COLUMNS])
