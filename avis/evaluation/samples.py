"""Per-instance samples: for every ground-truth instance, the video IoU and score of the prediction that the
greedy score-ordered matching gives it. These are the inputs of the significance tests (``avis ttest``).

The matching is the one of the YouTube-VIS AP at a single IoU threshold: per (video, category), the top 100
predictions by score (stable) take, in turn, the unmatched ground truth with the highest IoU >= threshold
(and > 0); a crowd ground truth absorbs predictions but gets no row. With ``iou_threshold=0`` each instance
gets its best greedy overlap; at 0.5 the matched instances are exactly the true positives of AP50.

The "top-1" samples (:func:`top1_samples`) match class-agnostically instead: per video, the top 100
predictions of any category by score take, in turn, the unmatched ground truth of any category with the highest
IoU >= threshold (the same greedy matching, run by the scorer on a copy of the inputs with every category
relabelled to one); the instance's sample is the IoU when the matched prediction has the instance's category,
0 when it has another one or there is no match. A model that hedges between look-alike categories (one mask,
both labels) is scored by its most confident hypothesis, as AP's precision would penalize the other one.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from avis.evaluation.ytvis_eval import VideoCategoryEval, greedy_match, match_all
from avis.io.atomic import atomic_open

COLUMNS = ("video_id", "category_id", "instance_id", "iou", "score")
_AGNOSTIC = 0  # the one category of the class-agnostic copy


def _matches(entries: list[VideoCategoryEval], iou_threshold: float):
    """(entry, ground-truth column, its id, matched detection index or -1) for every non-crowd ground truth."""
    thr = np.array([max(float(iou_threshold), np.nextafter(0.0, 1.0))])
    for e in entries:
        if len(e.gt_ids) == 0:
            continue
        _, _, gt_det = greedy_match(e.ious, e.gt_ids, e.gt_crowd, e.gt_crowd[None, :], thr)
        for j, gid in enumerate(e.gt_ids):
            if not e.gt_crowd[j]:
                yield e, j, int(gid), int(gt_det[0, 0, j])


def samples_from_entries(entries: list[VideoCategoryEval], iou_threshold: float = 0.0) -> list[dict]:
    """One row per non-crowd ground truth: ``iou`` / ``score`` of its match, NaN when unmatched."""
    return [{c: r[c] for c in COLUMNS} for r in matched_samples_from_entries(entries, iou_threshold)]


def matched_samples_from_entries(entries: list[VideoCategoryEval], iou_threshold: float = 0.0) -> list[dict]:
    """:func:`samples_from_entries` rows plus ``result_index``: the matched prediction's index in the results
    list (None when unmatched), for tools that show which prediction each instance got (``avis view``)."""
    return [{"video_id": e.video_id, "category_id": e.category_id, "instance_id": gid,
             "iou": float(e.ious[d, j]) if d >= 0 else math.nan,
             "score": float(e.scores[d]) if d >= 0 else math.nan,
             "result_index": int(e.det_index[d]) if d >= 0 else None}
            for e, j, gid, d in _matches(entries, iou_threshold)]


def instance_samples(gt: dict, results: list[dict], iou_threshold: float = 0.0, workers: int = 1) -> list[dict]:
    """Rows ``{video_id, category_id, instance_id, iou, score}`` (see module docstring)."""
    _, _, entries = match_all(gt, results, workers=workers)
    return samples_from_entries(entries, iou_threshold)


def top1_context(gt: dict, results: list[dict], workers: int = 1):
    """Class-agnostic matchings (one entry per video, top 100 predictions of any category by score, their IoUs
    with every ground truth) and the categories needed to label them: ``(entries, gt_category, det_category)``
    with ``gt_category`` {annotation id: category} and ``det_category`` the category of each result."""
    known = {c["id"] for c in gt["categories"]}
    kept = [a for a in gt["annotations"] if a["category_id"] in known]
    one = {**gt, "categories": [{"id": _AGNOSTIC, "name": "object"}],
           "annotations": [{**a, "category_id": _AGNOSTIC} for a in kept]}
    # unknown categories stay out (None is no category), as in the per-category scorer; indices are kept
    res = [{**r, "category_id": _AGNOSTIC if r["category_id"] in known else None} for r in results]
    _, _, entries = match_all(one, res, workers=workers)
    return entries, {a["id"]: a["category_id"] for a in kept}, [r["category_id"] for r in results]


def top1_samples(context, iou_threshold: float) -> list[dict]:
    """One row per non-crowd ground truth from :func:`top1_context`: ``iou`` / ``score`` /
    ``pred_category_id`` of its class-agnostic match at the threshold (NaN / NaN / None when unmatched)."""
    entries, gt_category, det_category = context
    return [{"video_id": e.video_id, "category_id": gt_category[gid], "instance_id": gid,
             "iou": float(e.ious[d, j]) if d >= 0 else math.nan,
             "score": float(e.scores[d]) if d >= 0 else math.nan,
             "pred_category_id": det_category[int(e.det_index[d])] if d >= 0 else None}
            for e, j, gid, d in _matches(entries, iou_threshold)]


def top1_scores(rows: list[dict]) -> dict[tuple, float]:
    """(video, category, instance) -> the top-1 sample: IoU of the match if its category is right, else 0."""
    return {(r["video_id"], r["category_id"], r["instance_id"]):
            (r["iou"] if r["pred_category_id"] == r["category_id"] else 0.0) for r in rows}


def write_samples_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Atomic CSV write; unmatched instances have empty ``iou`` and ``score`` cells."""
    with atomic_open(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if isinstance(r[c], float) and math.isnan(r[c]) else
                        (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in COLUMNS])
