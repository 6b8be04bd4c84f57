"""Do these results belong to this ground truth?

Results scored against the wrong annotation file (val results against ``train.json``, a run of another
dataset) pass every format check when the video ids and frame counts happen to exist there, and score AP 0
without a word. The loaders already refuse results for videos the ground truth does not have and frame counts
or mask sizes that differ (:func:`avis.io.ytvis.load_results`); this module adds what only the masks tell:

* :func:`coverage_warnings`: the results leave ground-truth videos without a single prediction (a partial
  run, or results of a subset), said as a warning: those videos count as misses.
* :func:`any_overlap`: whether any predicted mask shares a pixel with any ground-truth mask in the same
  frame, whatever the categories. When none does, the results are not about these objects:
  :func:`check_results_belong` raises, naming the results file (``avis score`` and ``avis ttest`` exit 2).

The overlap test stops at the first frame where masks meet, so results that do belong cost about one
frame's worth of mask arithmetic; ``avis score`` only runs it when the scores found no match at all.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from avis.errors import InputError

log = logging.getLogger(__name__)


def _ids_text(ids) -> str:
    """``1-12`` for a run of consecutive ids, else the first few and a count."""
    ids = sorted(ids)
    if not ids:
        return "none"
    if ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 2:
        return f"{ids[0]}-{ids[-1]}"
    shown = ", ".join(map(str, ids[:5]))
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")


def coverage_warnings(gt: dict, results: list[dict]) -> list[str]:
    """Sentences about ground-truth videos with objects that the results never mention (empty when every
    annotated video has a prediction)."""
    annotated = {a["video_id"] for a in gt["annotations"]}
    predicted = {r["video_id"] for r in results}
    if not results:
        return ["the results hold no predictions: every ground-truth object counts as missed"]
    missing = annotated - predicted
    if not missing:
        return []
    return [f"the results have predictions for {len(annotated & predicted)} of the {len(annotated)} annotated "
            f"ground-truth videos; videos {_ids_text(missing)} have none (their objects count as missed)"]


def any_overlap(gt: dict, results: list[dict]) -> bool:
    """Whether some predicted mask and some ground-truth mask share a pixel in the same frame of a video
    (categories ignored). Stops at the first such frame."""
    from pycocotools import mask as mask_utils

    gt_by_video: dict = defaultdict(list)
    for a in gt["annotations"]:
        gt_by_video[a["video_id"]].append(a["segmentations"])
    dt_by_video: dict = defaultdict(list)
    for r in results:
        if r["video_id"] in gt_by_video:
            dt_by_video[r["video_id"]].append(r["segmentations"])
    for vid, dts in dt_by_video.items():
        gts = gt_by_video[vid]
        frames = max(map(len, gts + dts))
        for t in range(frames):
            g = [s[t] for s in gts if t < len(s) and s[t] is not None]
            d = [s[t] for s in dts if t < len(s) and s[t] is not None]
            if not g or not d:
                continue
            gu = g[0] if len(g) == 1 else mask_utils.merge(g)
            du = d[0] if len(d) == 1 else mask_utils.merge(d)
            if mask_utils.area(mask_utils.merge([gu, du], intersect=True)) > 0:
                return True
    return False


def check_results_belong(gt: dict, results: list[dict], results_path=None, gt_path=None,
                         check_overlap: bool = True) -> None:
    """Warn (log) about ground-truth videos the results leave out; with ``check_overlap``, raise
    :class:`~avis.errors.InputError` naming ``results_path`` when the results and the ground truth have
    objects but no predicted mask touches any ground-truth mask."""
    for w in coverage_warnings(gt, results):
        log.warning("%s: %s", os.fspath(results_path) if results_path else "results", w)
    if not check_overlap or not results or not gt["annotations"]:
        return
    if any_overlap(gt, results):
        return
    where = f" {os.fspath(gt_path)}" if gt_path else ""
    raise InputError(f"no predicted mask overlaps any object of the ground truth{where} in any frame (IoU 0 "
                     f"everywhere): these results do not belong to these videos (results: videos "
                     f"{_ids_text({r['video_id'] for r in results})}; ground truth: videos "
                     f"{_ids_text({v['id'] for v in gt['videos']})}). Score them against the annotations of the "
                     "videos they were made on", results_path)
