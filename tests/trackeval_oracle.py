"""TrackEval (the ``trackeval`` package, a dev dependency) as the oracle of ``avis.evaluation.hota``: runs its
YouTube-VIS dataset class and HOTA metric on in-memory ground truth and results, through the files and
folders it expects. Also used by ``scripts/bench_score.py``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile

import numpy as np
from pycocotools import mask as mask_utils


def _numpy2_shims() -> None:
    """Older TrackEval releases call aliases that NumPy 2 removed; the package is a test oracle, so the aliases
    are restored here (for it), never in avis."""
    for name, value in (("float", float), ("int", int), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, value)


def uncompressed(rle: dict) -> dict:
    """Compressed RLE -> uncompressed (``counts`` a list), the form TrackEval's YouTube-VIS loader reads."""
    counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
    flat = mask_utils.decode({"size": list(rle["size"]), "counts": counts}).ravel(order="F")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(edges).tolist()
    return {"size": list(rle["size"]), "counts": ([0] if flat.size and flat[0] else []) + runs}


def write_trackeval_layout(gt: dict, results: list[dict], root: str | os.PathLike) -> None:
    """``root/gt/youtube_vis_x/gt.json`` (ground truth with the per-annotation ``height`` / ``width`` and
    uncompressed masks TrackEval expects) and ``root/trackers/youtube_vis_x/avis/data/results.json``."""
    gt = json.loads(json.dumps(gt))
    size = {v["id"]: (v["height"], v["width"]) for v in gt["videos"]}
    for a in gt["annotations"]:
        a["height"], a["width"] = size[a["video_id"]]
        a["segmentations"] = [None if s is None else uncompressed(s) for s in a["segmentations"]]
    os.makedirs(os.path.join(root, "gt", "youtube_vis_x"), exist_ok=True)
    os.makedirs(os.path.join(root, "trackers", "youtube_vis_x", "avis", "data"), exist_ok=True)
    with open(os.path.join(root, "gt", "youtube_vis_x", "gt.json"), "w") as f:
        json.dump(gt, f)
    with open(os.path.join(root, "trackers", "youtube_vis_x", "avis", "data", "results.json"), "w") as f:
        json.dump(results, f)


def run_trackeval(root: str | os.PathLike) -> dict:
    """TrackEval's ``COMBINED_SEQ`` HOTA results (class name or ``cls_comb_cls_av`` / ``cls_comb_det_av`` ->
    field -> value) for the layout under ``root``."""
    _numpy2_shims()
    import trackeval

    root = os.fspath(root)
    eval_cfg = dict(trackeval.Evaluator.get_default_eval_config(), PRINT_RESULTS=False, PRINT_CONFIG=False,
                    TIME_PROGRESS=False, OUTPUT_SUMMARY=False, OUTPUT_DETAILED=False, PLOT_CURVES=False,
                    LOG_ON_ERROR=None)
    ds_cfg = dict(trackeval.datasets.YouTubeVIS.get_default_dataset_config(),
                  GT_FOLDER=os.path.join(root, "gt", ""), TRACKERS_FOLDER=os.path.join(root, "trackers", ""),
                  OUTPUT_FOLDER=os.path.join(root, "out"), SPLIT_TO_EVAL="x", PRINT_CONFIG=False)
    with contextlib.redirect_stdout(io.StringIO()):
        out, msg = trackeval.Evaluator(eval_cfg).evaluate([trackeval.datasets.YouTubeVIS(ds_cfg)],
                                                          [trackeval.metrics.HOTA()])
    res = out["YouTubeVIS"]["avis"]
    if res is None:
        raise RuntimeError(f"TrackEval failed: {msg}")
    return {k: v["HOTA"] for k, v in res["COMBINED_SEQ"].items()}


def trackeval_hota(gt: dict, results: list[dict]) -> dict:
    """:func:`run_trackeval` on ``gt`` / ``results`` (normalised: compressed RLE with str counts)."""
    with tempfile.TemporaryDirectory() as d:
        write_trackeval_layout(gt, results, d)
        return run_trackeval(d)
