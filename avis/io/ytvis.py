"""YouTube-VIS annotation and result JSON: load, normalise, validate, save.

Formats (see ``annotations/schemas/`` and ``../shared/specs/metrics.md``):

* annotations: ``{"videos": [...], "annotations": [...], "categories": [...]}``; a video has ``id, width,
  height, length, file_names`` and optionally the builder extensions ``fps`` / ``frame_times`` /
  ``video_file`` / ``audio_file``; an annotation has ``id, video_id, category_id, iscrowd,
  segmentations [T], bboxes [T], areas [T]`` with ``None`` where the instance is absent.
* results: a list of ``{"video_id", "category_id", "score", "segmentations": [T RLE or None]}``.

After :func:`load_annotations` every segmentation is compressed RLE with ``str`` counts, ``areas`` and
``bboxes`` are filled in where missing, and ``length`` is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from avis.errors import InputError
from avis.io import masks as mask_io
from avis.io.atomic import atomic_write_json

MAX_JSON_BYTES = 2 << 30  # refuse absurd files before reading them


def load_json(path: str | os.PathLike):
    """Read a JSON file; any problem becomes an :class:`InputError` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None
    if size > MAX_JSON_BYTES:
        raise InputError(f"file is {size} bytes, larger than the {MAX_JSON_BYTES} byte limit", path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", path) from None


def save_json(obj, path: str | os.PathLike, indent: int | None = None) -> None:
    """Atomic JSON write."""
    atomic_write_json(obj, path, indent=indent)


def normalize_annotations(data: dict, path: str | None = None) -> dict:
    """Convert every segmentation to compressed RLE and fill ``areas``/``bboxes``/``length`` in place."""
    if not isinstance(data, dict) or not all(k in data for k in ("videos", "annotations", "categories")):
        raise InputError("not a YTVIS annotation file (needs 'videos', 'annotations', 'categories')", path)
    videos = {}
    for v in data["videos"]:
        if "length" not in v and "file_names" in v:
            v["length"] = len(v["file_names"])
        videos[v["id"]] = v
    for a in data["annotations"]:
        v = videos.get(a.get("video_id"))
        if v is None:
            raise InputError(f"annotation {a.get('id')}: unknown video_id {a.get('video_id')}", path)
        segs = []
        for t, s in enumerate(a.get("segmentations", [])):
            if s is None:
                segs.append(None)
                continue
            try:
                segs.append(mask_io.to_rle(s, v["height"], v["width"]))
            except (ValueError, TypeError, KeyError) as e:
                raise InputError(f"video {v['id']} annotation {a.get('id')} frame {t}: {e}", path) from None
        a["segmentations"] = segs
        if not a.get("areas") or len(a["areas"]) != len(segs):
            a["areas"] = [None if s is None else mask_io.area(s) for s in segs]
        if not a.get("bboxes") or len(a["bboxes"]) != len(segs):
            a["bboxes"] = [None if s is None else mask_io.bbox(s) for s in segs]
        a.setdefault("iscrowd", 0)
    return data


def load_annotations(path: str | os.PathLike) -> dict:
    """Load a YTVIS annotation JSON and normalise it (see module docstring)."""
    return normalize_annotations(load_json(path), os.fspath(path))


def load_results(path: str | os.PathLike) -> list[dict]:
    """Load a YTVIS results JSON (a list, or ``{"annotations": [...]}`` as some tools write it)."""
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise InputError("not a YTVIS results file (expected a list of predictions)", path)
    for i, r in enumerate(data):
        if not isinstance(r, dict) or not all(k in r for k in ("video_id", "category_id", "score", "segmentations")):
            raise InputError(f"result {i}: needs video_id, category_id, score, segmentations", path)
    return data
