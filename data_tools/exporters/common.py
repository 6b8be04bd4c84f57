"""What every exporter shares: choosing the tracks to export, naming videos, the DAVIS palette.

A *track* here is one YTVIS result with a ``track_id`` that is unique within its video::

    {"video_id": int, "category_id": int, "score": float, "track_id": int,
     "segmentations": [T compressed RLE (str counts) or None]}
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from pathlib import PurePosixPath

import numpy as np

from avis.io import masks as mask_io

log = logging.getLogger(__name__)


def select_tracks(results: list[dict], gt: dict, score_threshold: float = 0.0, min_frames: int = 1,
                  max_per_video: int | None = None) -> list[dict]:
    """Filter validated, normalised results and give each a ``track_id`` unique within its video.

    Keeps results with ``score >= score_threshold`` and at least ``min_frames`` frames with a non-empty mask
    (empty masks become ``None``), then the ``max_per_video`` best per video. A result's own integer
    ``track_id`` is kept when it is unique in its video; otherwise ids are 1, 2, ... in the results order.
    Output order: videos in ascending id, then descending score (stable).
    """
    videos = {v["id"]: v for v in gt["videos"]}
    by_video: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        if r["score"] < score_threshold or r["video_id"] not in videos:
            continue
        segs = [None if s is None or mask_io.area(s) == 0 else s for s in r["segmentations"]]
        if sum(s is not None for s in segs) < max(min_frames, 0):
            continue
        t = {"video_id": r["video_id"], "category_id": r["category_id"], "score": float(r["score"]),
             "segmentations": segs}
        if "track_id" in r:
            t["track_id"] = r["track_id"]
        by_video[r["video_id"]].append(t)
    out = []
    for vid in sorted(by_video):
        tracks = by_video[vid]
        own = [t.get("track_id") for t in tracks]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in own) or len(set(own)) != len(own):
            for k, t in enumerate(tracks, start=1):
                t["track_id"] = k
        tracks = sorted(tracks, key=lambda t: -t["score"])
        if max_per_video is not None and len(tracks) > max_per_video:
            tracks = tracks[:max_per_video]
        out.extend(tracks)
    return out


def tracks_by_video(tracks: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for t in tracks:
        out[t["video_id"]].append(t)
    return out


MAX_NAME = 100  # characters of a file or folder name taken from an input (file systems allow 255 bytes)
# Names Windows reserves whatever the extension: exported folders are often copied there.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def _safe(name: str, fallback: str = "video") -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:MAX_NAME].rstrip("._")
    if name.lower() in _RESERVED:
        name = f"{name}_"
    return name or fallback


def _suffix(vid) -> str:
    text = _safe(str(vid), "x")
    return text if len(text) <= 20 else hashlib.sha1(text.encode()).hexdigest()[:12]


def unique_names(base: dict, max_rounds: int = 8) -> dict:
    """key -> a name unique among all, compared case-insensitively (macOS and Windows file systems): a name
    shared by several keys gets ``_<key>`` appended on each of them, again if that collides with another
    name. The result depends only on the set of (key, base name) pairs, not on their order."""
    names = dict(base)
    for _ in range(max_rounds):
        groups: dict[str, list] = defaultdict(list)
        for k, n in names.items():
            groups[n.casefold()].append(k)
        clash = {k for ks in groups.values() if len(ks) > 1 for k in ks}
        if not clash:
            return names
        names = {k: (f"{n}_{_suffix(k)}" if k in clash else n) for k, n in names.items()}
    raise AssertionError("names still collide")  # unreachable: keys are distinct, so suffixes separate them


def video_names(gt: dict) -> dict[int, str]:
    """video id -> a file-system-safe name, unique (case-insensitively) and stable (the same input gives the
    same names, in any order): the stem of ``video_file``, else the folder of the first ``file_names`` entry
    (YTVIS: ``<name>/00000.jpg``), else ``video_<id>``; names that collide (``x/a.mp4`` and ``y/a.mp4``, or
    ``A.mp4`` and ``a.mp4``) all get ``_<id>`` appended, so no export overwrites another video's files."""
    names: dict[int, str] = {}
    for v in gt["videos"]:
        if v.get("video_file"):
            n = PurePosixPath(v["video_file"].replace("\\", "/")).stem
        elif v.get("file_names") and "/" in v["file_names"][0].replace("\\", "/"):
            n = PurePosixPath(v["file_names"][0].replace("\\", "/")).parent.name
        else:
            n = f"video_{v['id']}"
        names[v["id"]] = _safe(n)
    return unique_names(names)


def frame_stems(video: dict) -> list[str]:
    """One file stem per annotated frame: the ``file_names`` stems when they are unique (case-insensitively),
    else 00000, 00001..."""
    n = video["length"]
    fn = video.get("file_names") or []
    stems = [_safe(PurePosixPath(f.replace("\\", "/")).stem, "") for f in fn]
    if len(stems) == n and all(stems) and len({st.casefold() for st in stems}) == n:
        return stems
    return [f"{t:05d}" for t in range(n)]


def davis_palette() -> np.ndarray:
    """The 256-colour palette of DAVIS / PASCAL VOC index PNGs (uint8 256 x 3): colour i spreads the bits
    of i over the high bits of R, G and B, so 0 is black, 1 dark red, 2 dark green, ..."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def category_names(gt: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in gt["categories"]}
