"""CVAT for video 1.1 XML: one file per video, ``OUT/cvat/<video>.xml``, importable into a CVAT video task.

Follows CVAT's documented "XML annotation format", version 1.1, interpolation mode
(docs.cvat.ai, "XML annotation format"): ``<annotations><version>1.1</version><meta><task>...``, then one
``<track id label source>`` per predicted object with one shape per frame. Shapes are

* ``mask`` (default, exact): ``rle`` = comma-separated run lengths of the mask cropped to its box
  (``left``, ``top``, ``width``, ``height``), row-major, starting with a run of background, as CVAT writes it.
  CVAT has no mask tracks (its importer keeps only the first shape of one), so each (object, frame) mask is a
  single-frame track, as CVAT exports mask shapes, and ``group_id`` ties an object's frames together;
* ``polygon`` (``--cvat-shape polygon``): one real track per object, the outline of the largest connected part
  per frame, ``points="x0,y0;x1,y1;..."`` (lossy: one shape per track and frame, no holes), which CVAT can
  interpolate and edit as a track.

Every visible frame is a keyframe; when an object disappears, a shape with ``outside="1"`` closes the run, as
CVAT itself exports tracks. Each ``<track>`` has ``group_id`` = the object's track id, and each shape carries
the prediction's score as a ``score`` attribute, declared in the label's attributes.
"""

from __future__ import annotations

import datetime as _dt
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from avis.errors import InputError
from avis.io import masks as mask_io
from avis.io.atomic import atomic_open
from avis.io.files import regular_file
from avis.io.text import xml_text

from .common import category_names, tracks_by_video, video_names

SHAPES = ("mask", "polygon")


def _runs(flat: np.ndarray) -> list[int]:
    """Run lengths of a 0/1 vector, the first run being background (possibly 0 long)."""
    flat = flat.astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def mask_to_cvat(mask: np.ndarray) -> dict[str, str] | None:
    """H x W mask -> CVAT mask attributes (rle, left, top, width, height), or None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))  # much faster than nonzero
    if rows.size == 0:
        return None
    top, left, bottom, right = int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])
    crop = mask[top:bottom + 1, left:right + 1]
    return {"rle": ", ".join(map(str, _runs(crop.ravel()))), "left": str(left), "top": str(top),
            "width": str(right - left + 1), "height": str(bottom - top + 1)}


def cvat_to_mask(attrs: dict, height: int, width: int) -> np.ndarray:
    """CVAT mask attributes -> H x W uint8 mask."""
    runs = [int(v) for v in attrs["rle"].replace(" ", "").split(",") if v]
    left, top, w, h = (int(attrs[k]) for k in ("left", "top", "width", "height"))
    if sum(runs) != w * h or min(runs, default=0) < 0:
        raise ValueError(f"mask rle sums to {sum(runs)}, not width*height = {w * h}")
    if left < 0 or top < 0 or left + w > width or top + h > height:
        raise ValueError(f"mask box {left},{top} {w}x{h} is outside the {width}x{height} frame")
    values = np.zeros(len(runs), np.uint8)
    values[1::2] = 1
    crop = np.repeat(values, runs).reshape(h, w)
    out = np.zeros((height, width), np.uint8)
    out[top:top + h, left:left + w] = crop
    return out


def mask_to_polygon(mask: np.ndarray) -> list[float] | None:
    """Outline of the largest connected part of a mask as [x0, y0, x1, y1, ...] in pixel-edge coordinates
    (a pixel (x, y) covers [x, x+1) x [y, y+1), the COCO / CVAT convention)."""
    import contourpy  # a matplotlib dependency

    if not mask.any():
        return None
    z = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate).lines(0.5)
    best, best_area = None, -1.0
    for ln in lines:
        if len(ln) < 3:
            continue
        x, y = ln[:, 0], ln[:, 1]
        a = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        if a > best_area:
            best, best_area = ln, a
    if best is None:
        return None
    pts = best[:-1] if np.allclose(best[0], best[-1]) else best
    # marching squares puts a point on every pixel edge: keep only the corners (direction changes)
    d_in, d_out = pts - np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0) - pts
    turn = np.abs(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]) > 1e-9
    if turn.sum() >= 3:
        pts = pts[turn]
    # padded grid index i is pixel i - 1; its centre is at i - 1 + 0.5 in edge coordinates
    return [float(c) for xy in (pts - 0.5) for c in xy]


def _text(parent: ET.Element, tag: str, text: str = "") -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = text
    return el


def _meta(root: ET.Element, v: dict, name: str, cat_names: list[str], shape: str) -> None:
    now = str(_dt.datetime.now(_dt.UTC))  # CVAT writes "2018-09-25 11:34:24.617558+03:00"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    for tag, text in (("id", str(v["id"])), ("name", name), ("size", str(v["length"])), ("mode", "interpolation"),
                      ("overlap", "0"), ("bugtracker", ""), ("flipped", "False"), ("created", now),
                      ("updated", now)):
        _text(task, tag, text)
    labels = ET.SubElement(task, "labels")
    for n in cat_names:
        label = ET.SubElement(labels, "label")
        _text(label, "name", n)
        _text(label, "type", shape)
        attrs = ET.SubElement(label, "attributes")
        a = ET.SubElement(attrs, "attribute")
        for tag, text in (("name", "score"), ("mutable", "False"), ("input_type", "text"),
                          ("default_value", ""), ("values", "")):
            _text(a, tag, text)
    seg = ET.SubElement(ET.SubElement(task, "segments"), "segment")
    for tag, text in (("id", "0"), ("start", "0"), ("stop", str(max(v["length"] - 1, 0))), ("url", "")):
        _text(seg, tag, text)
    owner = ET.SubElement(task, "owner")
    _text(owner, "username", "avis")
    _text(owner, "email", "")
    size = ET.SubElement(task, "original_size")
    _text(size, "width", str(v["width"]))
    _text(size, "height", str(v["height"]))
    _text(meta, "dumped", now)


def _shape(track: ET.Element, kind: str, t: int, outside: bool, geom: dict, score: float) -> None:
    attrs = {"frame": str(t), "keyframe": "1", "outside": str(int(outside)), "occluded": "0", **geom,
             "z_order": "0"}
    el = ET.SubElement(track, kind, attrs)
    _text(el, "attribute", f"{score:.6f}").set("name", "score")


def _geometry(s, kind: str) -> dict | None:
    m = mask_io.decode(s)
    if kind == "mask":
        return mask_to_cvat(m)
    poly = mask_to_polygon(m)
    return None if poly is None else {
        "points": ";".join(f"{poly[i]:.2f},{poly[i + 1]:.2f}" for i in range(0, len(poly), 2))}


def video_xml(v: dict, vtracks: list[dict], name: str, cats: dict[int, str], shape: str = "mask") -> ET.ElementTree:
    """One video's CVAT for video 1.1 document. Every ``<track>`` carries ``group_id`` = the object's track id.

    Polygons form one CVAT track per object. CVAT has no mask *tracks* (its importer keeps only the first
    shape of a mask track), so masks are written as CVAT itself exports mask shapes: one single-frame track per
    (object, frame), closed by an ``outside`` shape on the next frame, the object's frames tied by
    ``group_id``.
    """
    if shape not in SHAPES:
        raise ValueError(f"CVAT shape must be one of {SHAPES}, got {shape!r}")
    cats = {k: xml_text(n) for k, n in cats.items()}  # a control character would make the file invalid XML
    root = ET.Element("annotations")
    _text(root, "version", "1.1")
    _meta(root, v, name, [cats[c] for c in sorted(cats)], shape)
    T = v["length"]
    counter = 0

    def new_track(tr):
        nonlocal counter
        el = ET.SubElement(root, "track", {"id": str(counter), "label": cats[tr["category_id"]], "source": "auto",
                                           "group_id": str(tr["track_id"])})
        counter += 1
        return el

    for tr in vtracks:
        if shape == "mask":
            for t, s in enumerate(tr["segmentations"]):
                geom = None if s is None else _geometry(s, shape)
                if geom is None:
                    continue
                track = new_track(tr)
                _shape(track, shape, t, False, geom, tr["score"])
                if t + 1 < T:
                    _shape(track, shape, t + 1, True, geom, tr["score"])
            continue
        track, last = None, None  # last: geometry of the previous visible frame, repeated when it disappears
        for t, s in enumerate(tr["segmentations"]):
            geom = None if s is None else _geometry(s, shape)
            if geom is None and last is None:
                continue
            track = track if track is not None else new_track(tr)
            _shape(track, shape, t, geom is None, last if geom is None else geom, tr["score"])
            last = geom
    ET.indent(root, space="  ")
    return ET.ElementTree(root)


def write_cvat(tracks: list[dict], gt: dict, out_dir: str | os.PathLike, shape: str = "mask") -> Path:
    root = Path(out_dir) / "cvat"
    names, cats = video_names(gt), category_names(gt)
    by_video = tracks_by_video(tracks)
    for v in gt["videos"]:
        tree = video_xml(v, by_video.get(v["id"], []), names[v["id"]], cats, shape)
        with atomic_open(root / f"{names[v['id']]}.xml", "wb") as f:
            tree.write(f, encoding="utf-8", xml_declaration=True)
    return root


def read_cvat(path: str | os.PathLike, gt: dict) -> list[dict]:
    """One CVAT for video 1.1 XML written by :func:`write_cvat` -> tracks (category by label name)."""
    path = regular_file(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(f"invalid XML: {e}", path) from None
    try:
        vid = int(root.findtext("meta/task/id"))
        v = next(x for x in gt["videos"] if x["id"] == vid)
        by_name = {xml_text(c["name"]): c["id"] for c in gt["categories"]}  # as written
        objects: dict[int, dict] = {}  # group_id (the object's track id) -> track
        for tr in root.iter("track"):
            oid = int(tr.get("group_id") or tr.get("id"))
            if oid not in objects:
                objects[oid] = {"video_id": vid, "category_id": by_name[tr.get("label")], "score": None,
                                "track_id": oid, "segmentations": [None] * v["length"]}
            obj = objects[oid]
            segs = obj["segmentations"]
            for el in tr:
                if el.get("outside") == "1":
                    continue
                t = int(el.get("frame"))
                if el.tag == "mask":
                    m = cvat_to_mask(el.attrib, v["height"], v["width"])
                elif el.tag == "polygon":
                    xy = [float(c) for p in el.get("points").split(";") for c in p.split(",")]
                    rle = coco_mask.merge(coco_mask.frPyObjects([xy], v["height"], v["width"]))
                    m = coco_mask.decode(rle)
                else:
                    raise ValueError(f"unsupported shape <{el.tag}>")
                segs[t] = mask_io.encode(m)
                a = el.find("attribute[@name='score']")
                if a is not None and obj["score"] is None:
                    obj["score"] = float(a.text)
        tracks = list(objects.values())
        for t in tracks:
            t["score"] = 1.0 if t["score"] is None else t["score"]
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError, IndexError) as e:
        raise InputError(f"not a CVAT for video 1.1 file avis can read ({type(e).__name__}: {e})", path) from None
    return tracks
