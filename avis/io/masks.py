"""Binary masks <-> COCO run-length encoding, through pycocotools.

Everything in the toolkit stores masks as *compressed* RLE dicts ``{"size": [H, W], "counts": str}``
(counts decoded to ``str`` so that they serialise to JSON). Polygons and uncompressed RLE (``counts`` a list)
are accepted on input and converted.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict  # {"size": [h, w], "counts": str}


def encode(mask: np.ndarray) -> RLE:
    """Encode one H x W mask (bool or 0/1) as compressed RLE with ``str`` counts."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    if m.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {m.shape}")
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_many(masks: np.ndarray) -> list[RLE]:
    """Encode N x H x W masks in one pycocotools call."""
    m = np.asarray(masks, dtype=np.uint8)
    if m.ndim != 3:
        raise ValueError(f"expected N x H x W masks, got shape {m.shape}")
    rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def _as_bytes_rle(rle: RLE) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode(rle: RLE) -> np.ndarray:
    """Compressed RLE -> H x W uint8 mask."""
    return mask_utils.decode(_as_bytes_rle(rle))


def area(rle: RLE) -> int:
    return int(mask_utils.area(_as_bytes_rle(rle)))


def to_rle(segmentation, height: int, width: int) -> RLE:
    """Polygon list, uncompressed RLE (``counts`` a list) or compressed RLE -> compressed RLE (str counts).

    Raises ``ValueError`` when the segmentation's size does not match ``height`` x ``width``.
    """
    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} does not match the video's {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            return {"size": size, "counts": segmentation["counts"] if isinstance(segmentation["counts"], str)
                    else segmentation["counts"].decode("ascii")}
    else:
        raise ValueError(f"not a polygon list or an RLE dict: {type(segmentation).__name__}")
    rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    return rle


def bbox(rle: RLE) -> list[float]:
    """[x, y, w, h] of the mask (zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_as_bytes_rle(rle))]


def decode_many(rles: list[RLE]) -> np.ndarray:
    """Compressed RLEs of one size -> N x H x W uint8 masks in one pycocotools call."""
    if not rles:
        raise ValueError("decode_many needs at least one RLE (the size comes from them)")
    return np.ascontiguousarray(mask_utils.decode([_as_bytes_rle(r) for r in rles]).transpose(2, 0, 1))


def to_uncompressed(mask_or_rle) -> dict:
    """H x W mask or compressed RLE -> uncompressed RLE ``{"size": [H, W], "counts": [int, ...]}``.

    Counts are column-major run lengths starting with a (possibly empty) run of zeros, as COCO defines them.
    """
    m = decode(mask_or_rle) if isinstance(mask_or_rle, dict) else np.asarray(mask_or_rle, dtype=np.uint8)
    flat = (m.ravel(order="F") != 0).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(r) for r in runs]}
