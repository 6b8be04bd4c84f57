"""The compiled scorer path (``avis.evaluation.rle_kernels`` and the numba branch of ``ytvis_eval``) against
pycocotools and against the pycocotools fallback: the RLE decode kernel (fast and general code paths, masks
whose intervals are not kept, the int64 retry, invalid strings), and the fused per-video matching and the
accumulation kernel entry for entry on random cases with ties, crowds, null and empty frames, more than 100
predictions and sequences of different lengths."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import avis.evaluation.ytvis_eval as ye
from avis.errors import InputError
from avis.io import masks as mask_io

pytestmark = pytest.mark.skipif(not ye.rle_kernels.AVAILABLE, reason="numba not installed")


# ------------------------------------------------------------------------------------------------ decode
def _py_decode(s: str):
    """pycocotools' ``rleFrString`` in plain Python (uint32 counts) -> (area, total, [(start, end)])."""
    counts, p, m = [], 0, 0
    while p < len(s):
        x, sh, more = 0, 0, True
        while more and p < len(s):
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << sh
            more = bool(c & 0x20)
            p += 1
            sh += 5
            if not more and c & 0x10:
                x |= -1 << sh
        if m > 2:
            x += counts[m - 2]
        counts.append(x & 0xFFFFFFFF)
        m += 1
    pos, area, iv = 0, 0, []
    for k, x in enumerate(counts):
        if k & 1:
            area += x
            if x:
                iv.append((pos, pos + x))
        pos += x
    return area, pos, iv


def _intervals(table, k):
    lo, hi = table.iv_offsets[k], table.iv_offsets[k + 1]
    return list(zip(table.starts[lo:hi].tolist(), table.ends[lo:hi].tolist()))


def _shapes(rng, h, w, n):
    """Masks that exercise both decode paths: smooth shapes (one-character deltas), noise (short runs), big
    blocks and far-apart blobs (long codes in the middle), empty and full."""
    yy, xx = np.mgrid[:h, :w]
    out = [np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8)]
    while len(out) < n:
        kind = rng.integers(4)
        if kind == 0:  # ellipse, jittered borders
            cy, cx, a, b = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, h), rng.uniform(2, w)
            m = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 < 1 + rng.normal(0, 0.05, (h, w))
        elif kind == 1:  # noise
            m = rng.random((h, w)) < rng.random()
        elif kind == 2:  # two far-apart blocks
            m = np.zeros((h, w), bool)
            for _ in range(2):
                y, x = rng.integers(0, h), rng.integers(0, w)
                m[y : y + rng.integers(1, h), x : x + rng.integers(1, w)] = True
        else:  # thin stripes
            m = (yy + rng.integers(0, 7) * xx) % rng.integers(2, 9) == 0
        out.append(m.astype(np.uint8))
    return out


@pytest.mark.parametrize("reuse", [False, True])
def test_decode_matches_pycocotools(reuse):
    from avis.evaluation.rle_kernels import RleTable

    rng = np.random.default_rng(1)
    masks = _shapes(rng, 61, 47, 120)
    rles = mask_io.encode_many(np.stack(masks))
    counts = [r["counts"] for r in rles]
    need = rng.random(len(counts)) < 0.6
    for _ in range(2):  # twice: with reuse, the second table overwrites the first one's buffers
        table = RleTable(counts, need, reuse=reuse)
    assert table.areas.tolist() == [int(m.sum()) for m in masks]
    assert set(table.totals.tolist()) == {61 * 47}
    assert table.starts.dtype == np.int32
    for k, m in enumerate(masks):
        flat = np.concatenate([[0], m.ravel(order="F"), [0]])  # column-major pixel order
        d = np.flatnonzero(np.diff(flat))
        expected = list(zip(d[0::2].tolist(), d[1::2].tolist())) if need[k] else []
        assert _intervals(table, k) == expected, k
    kept = np.flatnonzero(need)
    a, b = np.meshgrid(kept, kept, indexing="ij")
    inter = table.intersections(a.ravel(), b.ravel())
    expected = [int(mask_utils.area(mask_utils.merge([rles[i], rles[j]], intersect=True)))
                for i, j in zip(a.ravel(), b.ravel())]
    assert inter.tolist() == expected


def test_decode_random_strings_as_pycocotools():
    """Any string, valid or not (wrapping counts, dangling continuation, characters outside '0'..'o'), decodes
    to pycocotools' integers; totals of 2^31 and more take the int64 retry. (Codes of more than 12 characters
    shift past 64 bits, undefined in pycocotools' C: left out.)"""
    from avis.evaluation.rle_kernels import RleTable

    rng = np.random.default_rng(2)
    alphabet = [chr(c) for c in range(48, 112)]
    counts = []
    for _ in range(300):
        n = int(rng.integers(0, 60))
        kind = rng.integers(3)
        if kind == 0:  # mostly one-character deltas ('0'..'O': no continuation bit)
            s = "".join(rng.choice(alphabet[:32], n))
        elif kind == 1:
            s = "".join(rng.choice(alphabet, n))
        else:  # some characters outside the code too
            s = "".join(rng.choice(alphabet + ["!", "/", "p", "z", "~"], n))
        if max(map(len, re.findall(r"[P-o!/]+", s)), default=0) < 12:  # continuation characters
            counts.append(s)
    counts.append("0" * 9 + "1" * 13)  # many deltas, fast path to the end
    need = rng.random(len(counts)) < 0.7
    table = RleTable(counts, need)
    ref = [_py_decode(s) for s in counts]
    assert table.areas.tolist() == [r[0] for r in ref]
    assert table.totals.tolist() == [r[1] for r in ref]
    assert table.starts.dtype == (np.int64 if max(r[1] for r in ref) >= 2**31 else np.int32)
    for k, r in enumerate(ref):
        assert _intervals(table, k) == (r[2] if need[k] else []), counts[k]


def test_decode_int64_retry_for_huge_masks():
    from avis.evaluation.rle_kernels import RleTable

    h = w = 1 << 16  # 2^32 pixels
    big = mask_utils.frPyObjects({"size": [h, w], "counts": [2**31 + 5, 10, h * w - 2**31 - 15]}, h, w)
    small = mask_io.encode(np.eye(5, dtype=np.uint8))
    table = RleTable([big["counts"], small["counts"]])
    assert table.starts.dtype == np.int64
    assert table.areas.tolist() == [10, 5] and table.totals.tolist() == [h * w, 25]
    assert _intervals(table, 0) == [(2**31 + 5, 2**31 + 15)]
    assert table.intersections(np.array([0, 1]), np.array([0, 1])).tolist() == [10, 5]


def test_bad_counts_are_input_errors():
    g = mask_io.encode(np.ones((4, 5), np.uint8))
    gt = {"videos": [{"id": 1, "height": 4, "width": 5, "length": 1}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [g],
                           "areas": [20]}]}
    for seg, match in [({"size": [4, 5], "counts": "0é"}, "compressed RLE"), ({"size": [4, 5]}, "compressed RLE"),
                       ({"size": [4, 5], "counts": "04"}, "does not cover"),
                       ({"size": [5, 4], "counts": g["counts"]}, "video 1: predictions: a mask of size")]:
        with pytest.raises(InputError, match=match):
            ye.evaluate(gt, [{"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [seg]}])
    bad_gt = {**gt, "annotations": [{**gt["annotations"][0], "segmentations": [{**g, "size": [2, 10]}]}]}
    with pytest.raises(InputError, match=r"^a mask of size \[2, 10\] in a video of size \[4, 5\]"):
        ye.evaluate(bad_gt, [])


def test_videos_without_any_mask(monkeypatch):
    gt = {"videos": [{"id": 1, "height": 4, "width": 5, "length": 2}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [None, None],
                           "areas": [None, None]}]}
    results = [{"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": s} for s in ([None, None], [])]
    for backend in ("numba", "pycocotools"):
        monkeypatch.setattr(ye, "BACKEND", backend)
        ev = ye.evaluate(gt, results)
        assert ev.stats["AP"] == 0.0 and ev.entries[0].ious.tolist() == [[0.0], [0.0]]
        assert ye.evaluate(gt, []).stats["AP"] == 0.0


# --------------------------------------------------------------------------------- matching, accumulation
H, W = 24, 32


def _case(rng, n_videos=5, n_cats=3, T=6):
    """Random videos: ground truth with crowds, null and empty frames, GT areas over all ranges; predictions
    (up to 130 in a category of a video) copying ground truth or not, tied scores, sequences shorter or longer
    than the video."""
    def blob(base=None):
        if base is not None:
            m = np.roll(base, tuple(rng.integers(-2, 3, 2)), (0, 1)).copy()
            m[rng.integers(0, H, 8), rng.integers(0, W, 8)] ^= 1
            return m
        m = np.zeros((H, W), np.uint8)
        y, x = rng.integers(0, H - 3), rng.integers(0, W - 3)
        m[y : y + rng.integers(2, H - y + 1), x : x + rng.integers(2, W - x + 1)] = 1
        return m

    videos = [{"id": v, "height": H, "width": W, "length": T} for v in range(1, n_videos + 1)]
    anns, results = [], []
    for v in range(1, n_videos + 1):
        inst = []
        for _ in range(rng.integers(0, 5)):
            c = int(rng.integers(1, n_cats + 1))
            ms = [blob() if rng.random() > 0.1 else np.zeros((H, W), np.uint8) for _ in range(T)]
            segs = [None if rng.random() < 0.2 else mask_io.encode(m) for m in ms]
            scale = float(rng.choice([1, 60, 300]))
            anns.append({"id": len(anns) + 1, "video_id": v, "category_id": c, "iscrowd": int(rng.random() < 0.15),
                         "segmentations": segs,
                         "areas": [None if s is None else mask_io.area(s) * scale for s in segs]})
            inst.append((c, ms))
        big = v == 1 or rng.random() < 0.3  # more than 100 predictions, most in category 1
        for _ in range(130 if big else int(rng.choice([3, 20]))):
            if big and rng.random() < 0.85:
                c, ms = 1, [blob(m) for m in inst[0][1]] if inst else [blob() for _ in range(T)]
            elif inst and rng.random() < 0.7:
                c, ms = inst[rng.integers(len(inst))]
                c = c if rng.random() < 0.8 else int(rng.integers(1, n_cats + 1))
                ms = [blob(m) for m in ms]
            else:
                c, ms = int(rng.integers(1, n_cats + 1)), [blob() for _ in range(T)]
            ms = [m * (rng.random() > 0.05) for m in ms]  # empty frames
            segs = [None if rng.random() < 0.15 else mask_io.encode(m) for m in ms]
            segs = segs[: rng.integers(T - 2, T + 1)] if rng.random() < 0.2 else segs  # shorter sequences
            results.append({"video_id": v, "category_id": c, "score": float(rng.integers(1, 8)) / 7,
                            "segmentations": segs})
    gt = {"videos": videos, "annotations": anns, "categories": [{"id": c} for c in range(1, n_cats + 1)]}
    return gt, results


FIELDS = ("video_id", "category_id", "scores", "det_index", "gt_ids", "gt_crowd", "ious", "dt_match",
          "dt_ignore", "gt_ignore", "gt_match_det")


@pytest.mark.parametrize("seed", range(6))
def test_compiled_path_equals_fallback_entry_for_entry(seed, monkeypatch):
    gt, results = _case(np.random.default_rng(seed))
    out = {}
    for backend in ("numba", "pycocotools"):
        monkeypatch.setattr(ye, "BACKEND", backend)
        out[backend] = ye.evaluate(gt, results)
    a, b = out["numba"], out["pycocotools"]
    assert len(a.entries) == len(b.entries)
    for ea, eb in zip(a.entries, b.entries):
        for f in FIELDS:
            x, y = getattr(ea, f), getattr(eb, f)
            assert np.shape(x) == np.shape(y) and np.array_equal(x, y), (f, ea.video_id, ea.category_id)
    assert np.array_equal(a.precision, b.precision) and np.array_equal(a.recall, b.recall)
    assert a.stats == b.stats
    assert sum(len(e.scores) == 100 for e in a.entries) > 0  # the top-100 cut happened
    # the restricted accumulation (as the t-test uses it) equals the slice of the full one, in both paths
    for backend, ev in out.items():
        monkeypatch.setattr(ye, "BACKEND", backend)
        p, r = ye.accumulate(ev.entries, ev.category_ids, area_idx=[0], maxdet_idx=[2])
        assert np.array_equal(p[..., 0, 2], ev.precision[..., 0, 2])
        assert (p[..., 1:, :] == -1).all() and (p[..., :2] == -1).all()


def test_greedy_kernel_matches_numpy_lanes(monkeypatch):
    """The greedy matching kernel against the numpy lanes of the fallback on random IoU matrices with ties,
    crowds and ignored ground truth."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        D, G = int(rng.integers(0, 12)), int(rng.integers(0, 6))
        ious = rng.choice([0.0, 0.3, 0.5, 0.55, 0.75, 0.9, 1.0], (D, G)) if rng.random() < 0.5 else rng.random((D, G))
        gt_ids = np.arange(1, G + 1)
        crowd = rng.random(G) < 0.2
        ignore = crowd[None, :] | (rng.random((4, G)) < 0.3)
        got = {}
        for backend in ("numba", "pycocotools"):
            monkeypatch.setattr(ye, "BACKEND", backend)
            got[backend] = ye.greedy_match(ious, gt_ids, crowd, ignore, ye.IOU_THRS)
        for x, y in zip(got["numba"], got["pycocotools"]):
            assert np.array_equal(x, y)
