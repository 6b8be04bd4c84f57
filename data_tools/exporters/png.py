"""Per-frame PNG index masks, DAVIS style.

``OUT/png/<video>/<frame>.png``: one 8-bit palette PNG per annotated frame, pixel value = instance index
(0 background, 1..255 instances), the DAVIS palette. An instance keeps its index in every frame of the video;
indices go to tracks in descending score, and where masks overlap the higher score wins (painted last).
``OUT/png/<video>/instances.json`` maps each index to its track id, category and score, and lists the frame
files in order, so the folder can be read back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from avis.errors import InputError
from avis.io import masks as mask_io
from avis.io import ytvis
from avis.io.atomic import atomic_open
from avis.io.files import regular_file

from .common import category_names, davis_palette, frame_stems, tracks_by_video, video_names

log = logging.getLogger(__name__)
MAX_INSTANCES = 255


def index_masks(vtracks: list[dict], height: int, width: int, length: int) -> np.ndarray:
    """Tracks of one video (best first; track k gets index k + 1) -> uint8 T x H x W index maps."""
    out = np.zeros((length, height, width), np.uint8)
    n = len(vtracks)
    for t in range(length):
        ks = [k for k in range(n) if vtracks[k]["segmentations"][t] is not None]
        if not ks:
            continue
        masks = mask_io.decode_many([vtracks[k]["segmentations"][t] for k in ks])  # one call, C order
        # priority n - k: the best track (k = 0) has the highest, so the max picks it where masks overlap
        pri = np.asarray([n - k for k in ks], np.uint8)[:, None, None]
        top = (masks * pri).max(axis=0)
        out[t] = np.where(top > 0, n + 1 - top, 0)
    return out


def write_png(tracks: list[dict], gt: dict, out_dir: str | os.PathLike) -> Path:
    root = Path(out_dir) / "png"
    names, cats = video_names(gt), category_names(gt)
    by_video = tracks_by_video(tracks)
    palette = davis_palette().ravel().tolist()
    for v in gt["videos"]:
        vtracks = sorted(by_video.get(v["id"], []), key=lambda t: -t["score"])
        if len(vtracks) > MAX_INSTANCES:
            log.warning("video %s: %d tracks, PNG index masks hold %d; keeping the best by score",
                        v["id"], len(vtracks), MAX_INSTANCES)
            vtracks = vtracks[:MAX_INSTANCES]
        folder = root / names[v["id"]]
        stems = frame_stems(v)
        maps = index_masks(vtracks, v["height"], v["width"], v["length"])
        for t, stem in enumerate(stems):
            img = Image.frombytes("P", (v["width"], v["height"]), maps[t].tobytes())
            img.putpalette(palette)
            with atomic_open(folder / f"{stem}.png", "wb") as f:
                img.save(f, format="PNG")
        ytvis.save_json({"video_id": v["id"], "width": v["width"], "height": v["height"],
                         "frames": [f"{s}.png" for s in stems],
                         "instances": [{"index": k + 1, "track_id": t["track_id"], "category_id": t["category_id"],
                                        "category": cats.get(t["category_id"], ""), "score": t["score"]}
                                       for k, t in enumerate(vtracks)]},
                        folder / "instances.json", indent=1)
    return root


def read_png(root: str | os.PathLike, gt: dict) -> list[dict]:
    """``OUT/png`` -> tracks (one per instance index of each video folder)."""
    root = Path(root)
    tracks = []
    for meta_path in sorted(root.glob("*/instances.json")):
        meta = ytvis.load_json(meta_path)
        frames = []
        for name in meta["frames"]:
            if "/" in name or "\\" in name or name.startswith("."):
                raise InputError(f"frame name {name!r} is not a plain file name", meta_path)
            with Image.open(regular_file(meta_path.parent / name)) as im:
                frames.append(np.asarray(im))
        maps = np.stack(frames)
        for inst in meta["instances"]:
            m = maps == inst["index"]
            segs = [mask_io.encode(m[t]) if m[t].any() else None for t in range(len(m))]
            tracks.append({"video_id": meta["video_id"], "category_id": inst["category_id"],
                           "score": inst["score"], "track_id": inst["track_id"], "segmentations": segs})
    return sorted(tracks, key=lambda t: t["video_id"])
