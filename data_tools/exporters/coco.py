"""COCO per-frame instance JSON: one image per annotated frame, one annotation per (track, frame).

Each annotation carries the COCO fields (``segmentation`` as compressed RLE, ``area``, ``bbox``,
``iscrowd``) plus ``score`` and, as COCO tools such as CVAT read them, ``attributes: {"track_id": ...}``.
Images carry ``video_id`` and ``frame_index`` so the file can be read back into video tracks.
"""

from __future__ import annotations

import copy
import os
from collections import defaultdict
from pathlib import Path

from avis.errors import InputError
from avis.io import masks as mask_io
from avis.io import ytvis

from .common import tracks_by_video


def write_coco(tracks: list[dict], gt: dict, out_dir: str | os.PathLike) -> Path:
    path = Path(out_dir) / "coco_instances.json"
    images, annotations = [], []
    image_id: dict[tuple[int, int], int] = {}
    for v in gt["videos"]:
        names = v.get("file_names") or []
        for t in range(v["length"]):
            image_id[(v["id"], t)] = len(images) + 1
            images.append({"id": len(images) + 1, "width": v["width"], "height": v["height"],
                           "file_name": names[t] if t < len(names) else f"video_{v['id']}/{t:05d}.jpg",
                           "video_id": v["id"], "frame_index": t})
    for vid, vtracks in sorted(tracks_by_video(tracks).items()):
        for tr in vtracks:
            for t, s in enumerate(tr["segmentations"]):
                if s is None:
                    continue
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id[(vid, t)], "category_id": tr["category_id"],
                    "segmentation": s, "area": mask_io.area(s), "bbox": mask_io.bbox(s), "iscrowd": 0,
                    "score": tr["score"], "attributes": {"track_id": tr["track_id"]}})
    data = {"info": {"description": "per-frame instances exported by avis"},
            "images": images, "annotations": annotations, "categories": copy.deepcopy(gt["categories"]),
            "videos": [{"id": v["id"], "width": v["width"], "height": v["height"], "length": v["length"]}
                       for v in gt["videos"]]}
    ytvis.save_json(data, path)
    return path


def read_coco(path: str | os.PathLike, gt: dict) -> list[dict]:
    """Per-frame COCO instances -> tracks (grouped by ``video_id`` and ``attributes.track_id``)."""
    data = ytvis.load_json(path)
    try:
        images = {im["id"]: im for im in data["images"]}
        lengths = {v["id"]: v["length"] for v in gt["videos"]}
        sizes = {v["id"]: (v["height"], v["width"]) for v in gt["videos"]}
        tracks: dict[tuple[int, int], dict] = {}
        order: dict[int, list] = defaultdict(list)
        for a in data["annotations"]:
            im = images[a["image_id"]]
            vid, t = im["video_id"], im["frame_index"]
            key = (vid, a["attributes"]["track_id"])
            if key not in tracks:
                tracks[key] = {"video_id": vid, "category_id": a["category_id"], "score": float(a.get("score", 1.0)),
                               "track_id": key[1], "segmentations": [None] * lengths[vid]}
                order[vid].append(key)
            tracks[key]["segmentations"][t] = mask_io.to_rle(a["segmentation"], *sizes[vid])
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise InputError(f"not an avis COCO export ({type(e).__name__}: {e})", path) from None
    return [tracks[k] for vid in sorted(order) for k in order[vid]]
