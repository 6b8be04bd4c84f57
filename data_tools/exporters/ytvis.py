"""YTVIS exports: the results JSON (plain and zipped for evaluation servers) and an annotation JSON made from
predictions (pseudo-labels that ``avis build`` reads like any ground truth)."""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path

from avis.io import masks as mask_io
from avis.io import ytvis
from avis.io.atomic import atomic_open


def _result(t: dict) -> dict:
    return {"video_id": t["video_id"], "category_id": t["category_id"], "score": t["score"],
            "track_id": t["track_id"], "segmentations": t["segmentations"]}


def write_results(tracks: list[dict], gt: dict, out_dir: str | os.PathLike) -> Path:
    """``OUT/results.json``: the YTVIS results list (with each prediction's ``track_id``)."""
    path = Path(out_dir) / "results.json"
    ytvis.save_results([_result(t) for t in tracks], path)
    return path


def write_results_zip(tracks: list[dict], gt: dict, out_dir: str | os.PathLike) -> Path:
    """``OUT/results.zip`` holding ``results.json`` at its root, the layout the YouTube-VIS servers expect."""
    path = Path(out_dir) / "results.zip"
    results = [_result(t) for t in tracks]
    problems = ytvis.validate_results(results, gt)
    if problems:  # we made these: a problem here is a bug, not bad input
        raise ValueError(f"refusing to write invalid results to {path}: {problems[0]}")
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("results.json", json.dumps(results))
    return path


def write_annotations(tracks: list[dict], gt: dict, out_dir: str | os.PathLike) -> Path:
    """``OUT/ytvis_annotations.json``: the predictions as a YTVIS annotation file (pseudo-labels).

    Videos (with ``fps`` / ``frame_times`` / ``video_file`` / ``audio_file``) and categories come from the
    ground truth so that ``avis build --annotations`` can use the file; each track becomes an annotation
    with ``areas`` and ``bboxes`` computed from its masks, keeping ``score`` and ``track_id``.
    """
    path = Path(out_dir) / "ytvis_annotations.json"
    anns = []
    for k, t in enumerate(tracks, start=1):
        segs = t["segmentations"]
        anns.append({"id": k, "video_id": t["video_id"], "category_id": t["category_id"], "iscrowd": 0,
                     "segmentations": segs,
                     "areas": [None if s is None else mask_io.area(s) for s in segs],
                     "bboxes": [None if s is None else mask_io.bbox(s) for s in segs],
                     "score": t["score"], "track_id": t["track_id"]})
    data = {"info": {"description": "pseudo-labels exported by avis from predictions"},
            "videos": copy.deepcopy(gt["videos"]), "annotations": anns, "categories": copy.deepcopy(gt["categories"])}
    if "licenses" in gt:
        data["licenses"] = gt["licenses"]
    ytvis.save_annotations(data, path)
    return path


def read_results(path: str | os.PathLike, gt: dict) -> list[dict]:
    """Read ``results.json``, ``results.zip`` (:func:`avis.io.ytvis.load_results` reads both) or
    ``ytvis_annotations.json`` back as tracks."""
    path = Path(path)
    if path.name == "ytvis_annotations.json":
        ann = ytvis.load_annotations(path)
        return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": a.get("score", 1.0),
                 "track_id": a.get("track_id", a["id"]), "segmentations": a["segmentations"]}
                for a in ann["annotations"]]
    return ytvis.load_results(path, gt=gt)
