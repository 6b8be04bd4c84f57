"""Compiled (numba) kernels on COCO compressed RLE: decode every mask string once, then areas and pairwise
intersections by merging foreground intervals.

pycocotools re-decodes each string in every call and computes bounding boxes (two integer divisions per run) for
every mask of an ``iou`` call; for the YouTube-VIS case (36 frames x 100 predictions per video) that is most of
the scorer's time. These kernels follow pycocotools' decoding (``rleFrString``) exactly, so areas and
intersections are the same integers. numba is already installed with librosa; without it the scorer falls back
to pycocotools (:data:`AVAILABLE`).
"""

from __future__ import annotations

import numpy as np

try:
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba comes with librosa
    AVAILABLE = False


def _jit(f):
    """numba-compile ``f``, cached on disk when some cache folder is writable (else compiled per process)."""
    if not AVAILABLE:  # pragma: no cover
        return f
    try:
        return numba.njit(cache=True, nogil=True)(f)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install, no home)
        return numba.njit(nogil=True)(f)


@_jit
def _decode(buf, offsets, need, starts, ends, iv_offsets, areas, totals):  # pragma: no cover - compiled
    """Decode each string ``buf[offsets[k]:offsets[k+1]]`` (pycocotools' ``rleFrString``: 5-bit groups with a
    continuation bit, sign-extended, each count after the third a delta against the count two places back)
    into its foreground intervals [start, end) in column-major pixel order (kept where ``need[k]``)."""
    n_iv = 0
    for k in range(len(offsets) - 1):
        iv_offsets[k] = n_iv
        p, stop = offsets[k], offsets[k + 1]
        m, pos, area, prev1, prev2 = 0, 0, 0, 0, 0  # prev1 / prev2: the counts one / two places back
        keep = need[k]
        while p < stop:
            x, sh = 0, 0
            while p < stop:
                c = np.int64(buf[p]) - 48
                p += 1
                x |= (c & 0x1F) << sh
                sh += 5
                if not (c & 0x20):
                    if c & 0x10:
                        x |= np.int64(-1) << sh
                    break
            if m > 2:
                x += prev2
            x &= 0xFFFFFFFF  # pycocotools stores counts as uint32
            prev2, prev1 = prev1, x
            if m & 1:
                area += x
                if keep and x > 0:
                    starts[n_iv] = pos
                    ends[n_iv] = pos + x
                    n_iv += 1
            pos += x
            m += 1
        areas[k] = area
        totals[k] = pos
    iv_offsets[len(offsets) - 1] = n_iv


@_jit
def _pair_intersections(starts, ends, iv_offsets, pa, pb, out):  # pragma: no cover - compiled
    for k in range(len(pa)):
        i, ie = iv_offsets[pa[k]], iv_offsets[pa[k] + 1]
        j, je = iv_offsets[pb[k]], iv_offsets[pb[k] + 1]
        s = 0
        if i < ie and j < je and starts[i] < ends[je - 1] and starts[j] < ends[ie - 1]:
            # skip the intervals that end before the other mask begins, and stop past its end
            j = j + np.searchsorted(ends[j:je], starts[i], side="right")
            i = i + np.searchsorted(ends[i:ie], starts[j], side="right")
            last = min(ends[ie - 1], ends[je - 1])
            while i < ie and j < je and starts[i] < last and starts[j] < last:
                lo = max(starts[i], starts[j])
                hi = min(ends[i], ends[j])
                if hi > lo:
                    s += hi - lo
                if ends[i] < ends[j]:
                    i += 1
                else:
                    j += 1
        out[k] = s


class RleTable:
    """Many compressed RLE ``counts`` (str or bytes) decoded at once: ``areas`` and ``totals`` (pixels
    covered, h * w for a well-formed mask) per mask, and :meth:`intersections` of mask pairs (of masks whose
    ``need_intervals`` is true; default all)."""

    def __init__(self, counts: list, need_intervals: np.ndarray | None = None):
        try:
            joined = "".join(counts).encode("ascii")  # one call; ASCII, so lengths are byte lengths
        except TypeError:  # some counts are bytes
            counts = [c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts]
            joined = b"".join(counts)
        n = len(counts)
        lens = np.array(list(map(len, counts)), dtype=np.int64)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=self.offsets[1:])
        buf = np.frombuffer(joined, dtype=np.uint8) if n else np.zeros(0, np.uint8)
        raw = counts
        need = np.ones(n, dtype=np.bool_) if need_intervals is None else np.asarray(need_intervals, np.bool_)
        cap = int(lens[need].sum()) // 2 + n + 1
        self.starts = np.empty(cap, dtype=np.int64)
        self.ends = np.empty(cap, dtype=np.int64)
        self.iv_offsets = np.empty(len(raw) + 1, dtype=np.int64)
        self.areas = np.empty(len(raw), dtype=np.int64)
        self.totals = np.empty(len(raw), dtype=np.int64)
        _decode(buf, self.offsets, need, self.starts, self.ends, self.iv_offsets, self.areas, self.totals)

    def intersections(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Foreground pixels shared by masks ``a[k]`` and ``b[k]`` (int64 per pair)."""
        out = np.empty(len(a), dtype=np.int64)
        _pair_intersections(self.starts, self.ends, self.iv_offsets, np.ascontiguousarray(a, np.int64),
                            np.ascontiguousarray(b, np.int64), out)
        return out


@_jit
def greedy_match_kernel(ious, gt_ids, gt_crowd, gt_ignore, thresholds, dt_match, dt_ignore,
                        gt_match_det):  # pragma: no cover - compiled
    """The official matching loop, literally, for each lane (area range) and threshold; fills the outputs
    (see :func:`avis.evaluation.ytvis_eval.greedy_match`)."""
    D, G = ious.shape
    L, T = gt_ignore.shape[0], len(thresholds)
    order = np.empty(G, dtype=np.int64)
    for lane in range(L):
        n = 0
        for g in range(G):  # ground truth sorted ignore-last, stable
            if not gt_ignore[lane, g]:
                order[n] = g
                n += 1
        for g in range(G):
            if gt_ignore[lane, g]:
                order[n] = g
                n += 1
        for t in range(T):
            for d in range(D):
                best = min(thresholds[t], 1 - 1e-10)
                m = -1
                for k in range(G):
                    g = order[k]
                    if gt_match_det[lane, t, g] >= 0 and not gt_crowd[g]:
                        continue
                    if m > -1 and not gt_ignore[lane, m] and gt_ignore[lane, g]:
                        break
                    if ious[d, g] < best:
                        continue
                    best = ious[d, g]
                    m = g
                if m == -1:
                    continue
                dt_ignore[lane, t, d] = gt_ignore[lane, m]
                dt_match[lane, t, d] = gt_ids[m]
                gt_match_det[lane, t, m] = d
