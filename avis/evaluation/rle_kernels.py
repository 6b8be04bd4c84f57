"""Compiled (numba) kernels of the YouTube-VIS scorer: decode every COCO compressed-RLE mask string of a video
once (areas, foreground intervals), the video IoU blocks and greedy matching of all categories of a video in
one call, and the precision / recall accumulation of all categories in one call.

pycocotools re-decodes each string in every call and computes bounding boxes (two integer divisions per run) for
every mask of an ``iou`` call; for the YouTube-VIS case (36 frames x 100 predictions per video) that is most of
the scorer's time. These kernels follow pycocotools' decoding (``rleFrString``) exactly, so areas and
intersections are the same integers, and the official matching and accumulation arithmetic, so the floats are
the same. numba is already installed with librosa; without it the scorer falls back to pycocotools
(:data:`AVAILABLE`).
"""

from __future__ import annotations

import threading

import numpy as np

try:
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba comes with librosa
    AVAILABLE = False


_U = np.uint64  # array indices known to be >= 0


def skip_blas_probe() -> None:
    """Let numba initialise its CPU target without importing SciPy.

    The first kernel call of a process (compiled or loaded from the cache) initialises numba's target, whose
    ``numba.np.arraymath`` probes for BLAS by importing ``scipy.linalg`` (with NumPy's f2py and more: about
    0.3 s of CPU, as much as decoding every mask of a 100-video case). These kernels use no BLAS. For a process
    that only scores (``avis score``), the probe is answered "no BLAS", so numba's ``np.dot`` & co. are
    unavailable to numba functions compiled later in it. Does nothing once numba's target or SciPy's linalg is
    loaded."""
    import sys

    if not AVAILABLE or "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    sys.modules["scipy.linalg.cython_blas"] = None  # `import` of it raises ImportError at once
    try:
        import numba.np.arraymath  # noqa: F401  (runs the probe)
    except Exception:  # noqa: BLE001 - an optimisation only: numba then probes on first use as usual
        pass
    finally:
        del sys.modules["scipy.linalg.cython_blas"]


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
    into its foreground intervals [start, end) in column-major pixel order (kept where ``need[k]``).

    ``starts`` / ``ends`` need one slot more than the intervals kept: each foreground count is written
    unconditionally and the slot advanced only when it is kept and non-empty (no branch). Most counts of real
    masks are one-character deltas (a run length changes little from one column to the next), so after the
    first three counts, (background, foreground) pairs of one-character codes take a fast path, two pairs at a
    time; any other code goes through the general loop, which is pycocotools' code. Array indices are cast to
    unsigned (``_U``), so that numba does not emit its negative-index wraparound on every access."""
    n_iv = 0
    M = np.int64(0xFFFFFFFF)  # pycocotools stores counts as uint32
    for k in range(len(offsets) - 1):
        iv_offsets[k] = n_iv
        p, stop = offsets[k], offsets[k + 1]
        m, pos, area, prev1, prev2 = 0, 0, 0, 0, 0  # prev1 / prev2: the counts one / two places back
        keep = np.int64(need[k])
        while p < stop:
            if m > 2 and not (m & 1):  # at a background count, deltas from here on
                # one-character codes (0 <= c < 32: no continuation bit): 5 bits, sign-extended from bit 4 as
                # (c ^ 16) - 16; masks whose intervals are not needed take a loop without the stores
                while p + 3 < stop and not keep:
                    c0 = np.int64(buf[_U(p)]) - 48
                    c1 = np.int64(buf[_U(p + 1)]) - 48
                    c2 = np.int64(buf[_U(p + 2)]) - 48
                    c3 = np.int64(buf[_U(p + 3)]) - 48
                    if (c0 | c1 | c2 | c3) & -32:
                        break
                    bg = (((c0 ^ 16) - 16) + prev2) & M
                    fg = (((c1 ^ 16) - 16) + prev1) & M
                    bg2 = (((c2 ^ 16) - 16) + bg) & M
                    fg2 = (((c3 ^ 16) - 16) + fg) & M
                    prev2 = bg2
                    prev1 = fg2
                    pos += bg
                    pos += fg
                    pos += bg2
                    pos += fg2
                    area += fg + fg2
                    p += 4
                    m += 4
                while p + 3 < stop and keep:
                    c0 = np.int64(buf[_U(p)]) - 48
                    c1 = np.int64(buf[_U(p + 1)]) - 48
                    c2 = np.int64(buf[_U(p + 2)]) - 48
                    c3 = np.int64(buf[_U(p + 3)]) - 48
                    if (c0 | c1 | c2 | c3) & -32:
                        break
                    bg = (((c0 ^ 16) - 16) + prev2) & M
                    fg = (((c1 ^ 16) - 16) + prev1) & M
                    bg2 = (((c2 ^ 16) - 16) + bg) & M
                    fg2 = (((c3 ^ 16) - 16) + fg) & M
                    prev2 = bg2
                    prev1 = fg2
                    pos += bg
                    starts[_U(n_iv)] = pos
                    pos += fg
                    ends[_U(n_iv)] = pos
                    n_iv += fg > 0
                    pos += bg2
                    starts[_U(n_iv)] = pos
                    pos += fg2
                    ends[_U(n_iv)] = pos
                    n_iv += fg2 > 0
                    area += fg + fg2
                    p += 4
                    m += 4
                while p + 1 < stop:
                    c0 = np.int64(buf[_U(p)]) - 48
                    c1 = np.int64(buf[_U(p + 1)]) - 48
                    if (c0 | c1) & -32:
                        break
                    bg = (((c0 ^ 16) - 16) + prev2) & M
                    fg = (((c1 ^ 16) - 16) + prev1) & M
                    prev2 = bg
                    prev1 = fg
                    pos += bg
                    starts[_U(n_iv)] = pos
                    pos += fg
                    ends[_U(n_iv)] = pos
                    n_iv += keep & (fg > 0)
                    area += fg
                    p += 2
                    m += 2
                if p >= stop:
                    break
            # general code: 5-bit groups, continuation bit 0x20, sign bit 0x10 of the last group
            c = np.int64(buf[_U(p)]) - 48
            p += 1
            x = c & 0x1F
            sh = 5
            if c & 0x20:
                while p < stop:
                    c = np.int64(buf[_U(p)]) - 48
                    p += 1
                    x |= (c & 0x1F) << sh
                    sh += 5
                    if not (c & 0x20):
                        break
            if not (c & 0x20):  # sign-extended unless the string ended inside a code (pycocotools)
                x -= ((c >> 4) & 1) << sh  # x | (-1 << sh) when the sign bit is set (x < 2^sh)
            if m > 2:
                x += prev2
            x &= M
            prev2 = prev1
            prev1 = x
            if m & 1:
                area += x
                starts[_U(n_iv)] = pos
                ends[_U(n_iv)] = pos + x
                n_iv += keep & (x > 0)
            pos += x
            m += 1
        areas[k] = area
        totals[k] = pos
    iv_offsets[len(offsets) - 1] = n_iv


@_jit
def _intersection(starts, ends, iv_offsets, a, b):  # pragma: no cover - compiled
    """Foreground pixels shared by decoded masks ``a`` and ``b``: a merge of their sorted, disjoint intervals,
    restricted to where both masks can overlap."""
    i, ie = iv_offsets[a], iv_offsets[a + 1]
    j, je = iv_offsets[b], iv_offsets[b + 1]
    if i == ie or j == je or starts[i] >= ends[je - 1] or starts[j] >= ends[ie - 1]:
        return 0
    # skip the intervals that end before the other mask begins, and those that start after it ends
    j += np.searchsorted(ends[j:je], starts[i], side="right")
    i += np.searchsorted(ends[i:ie], starts[j], side="right")
    if i >= ie:
        return 0
    ie = i + np.searchsorted(starts[i:ie], ends[je - 1], side="left")
    if i >= ie:
        return 0
    je = j + np.searchsorted(starts[j:je], ends[ie - 1], side="left")
    if j >= je:
        return 0
    s = 0
    si, ei, sj, ej = starts[_U(i)], ends[_U(i)], starts[_U(j)], ends[_U(j)]
    while True:
        lo = si if si > sj else sj
        hi = ei if ei < ej else ej
        if hi > lo:
            s += hi - lo
        if ei <= ej:
            i += 1
            if i == ie:
                break
            si, ei = starts[_U(i)], ends[_U(i)]
        else:
            j += 1
            if j == je:
                break
            sj, ej = starts[_U(j)], ends[_U(j)]
    return s


@_jit
def _pair_intersections(starts, ends, iv_offsets, pa, pb, out):  # pragma: no cover - compiled
    for k in range(len(pa)):
        out[k] = _intersection(starts, ends, iv_offsets, pa[k], pb[k])


_SCRATCH = threading.local()  # per thread: interval buffers reused by tables built with ``reuse=True``


class RleTable:
    """Many compressed RLE ``counts`` (str or bytes) decoded at once: ``areas`` and ``totals`` (pixels
    covered, h * w for a well-formed mask) per mask, and :meth:`intersections` of mask pairs (of masks whose
    ``need_intervals`` is true; default all).

    ``reuse=True`` keeps the intervals in per-thread buffers that the next such table of the thread overwrites
    (for a table used and dropped at once: a video's masks in the scorer), sparing the allocation and the page
    faults of several MB per table."""

    def __init__(self, counts: list, need_intervals: np.ndarray | None = None, reuse: bool = False):
        try:
            joined = "".join(counts).encode("ascii")  # one call; ASCII, so lengths are byte lengths
        except TypeError:  # some counts are bytes
            counts = [c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts]
            joined = b"".join(counts)
        if reuse:
            # held until the next such table: freeing a buffer of a MB right after the joined string lets the
            # allocator hand both back to the system, and the next video pays page faults for them (~1 ms)
            _SCRATCH.joined = joined
        n = len(counts)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, counts), np.int64, n), out=self.offsets[1:])
        buf = np.frombuffer(joined, dtype=np.uint8) if n else np.zeros(0, np.uint8)
        need = np.ones(n, dtype=np.bool_) if need_intervals is None else np.asarray(need_intervals, np.bool_)
        lens = np.diff(self.offsets)
        # a kept interval takes two codes of one character at least, plus one slot for the unconditional write
        cap = int(lens[need].sum()) // 2 + n + 1
        self.iv_offsets = np.empty(n + 1, dtype=np.int64)
        self.areas = np.empty(n, dtype=np.int64)
        self.totals = np.empty(n, dtype=np.int64)
        # int32 positions (half the memory traffic) unless a mask covers 2^31 pixels or more: then again, int64
        for dtype in (np.int32, np.int64):
            if reuse:
                key = np.dtype(dtype).name
                starts, ends = getattr(_SCRATCH, key, (np.empty(0, dtype), np.empty(0, dtype)))
                if len(starts) < cap:
                    starts, ends = np.empty(cap + cap // 2, dtype), np.empty(cap + cap // 2, dtype)
                    setattr(_SCRATCH, key, (starts, ends))
            else:
                starts, ends = np.empty(cap, dtype), np.empty(cap, dtype)
            self.starts, self.ends = starts, ends
            _decode(buf, self.offsets, need, starts, ends, self.iv_offsets, self.areas, self.totals)
            if not n or self.totals.max() <= np.iinfo(np.int32).max:
                break

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
    lowest = np.inf  # detections below the lowest threshold with every ground truth match nothing
    for t in range(T):
        lowest = min(lowest, min(thresholds[t], 1 - 1e-10))
    reach = np.zeros(D, dtype=np.bool_)
    for d in range(D):
        for g in range(G):
            if ious[d, g] >= lowest:
                reach[d] = True
                break
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
                if not reach[d]:
                    continue
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


@_jit
def video_match_kernel(d_idx, d_len, g_idx, g_len, areas, starts, ends, iv_offsets, d_lo, d_hi, g_lo, g_hi,
                       iou_off, gt_ids, gt_crowd, gt_ignore, thresholds, ious, dt_match, dt_ignore,
                       gt_match_det):  # pragma: no cover - compiled
    """Video IoU and matching of every category of one video, in one call.

    Detections (ground truths) of category ``c`` are rows ``d_lo[c]:d_hi[c]`` (``g_lo[c]:g_hi[c]``) of
    ``d_idx`` (``g_idx``): per frame the mask's row in the decoded table (``areas``, intervals), -1 where absent;
    ``d_len`` / ``g_len`` the sequence lengths (frames paired up to the shorter one, as ``zip``). Fills
    ``ious[iou_off[c]:]`` with the (D_c, G_c) IoU block, row-major (I / U with I the summed intersections and U
    both areas summed over the paired frames minus I, 0 where U = 0, as the official ``iou_seq``), then runs
    :func:`greedy_match_kernel` on it, writing the category's columns of ``dt_match`` / ``dt_ignore`` (A, T,
    all detections) and ``gt_match_det`` (A, T, all ground truths; detection index within the category)."""
    for c in range(len(d_lo)):
        D, G = d_hi[c] - d_lo[c], g_hi[c] - g_lo[c]
        if D == 0 or G == 0:
            continue
        block = ious[iou_off[c] : iou_off[c] + D * G].reshape((D, G))
        for di in range(D):
            d = d_lo[c] + di
            for gj in range(G):
                g = g_lo[c] + gj
                inter, total = 0, 0
                for t in range(min(d_len[d], g_len[g])):
                    a, b = d_idx[d, t], g_idx[g, t]
                    if a >= 0:
                        total += areas[a]
                        if b >= 0:
                            inter += _intersection(starts, ends, iv_offsets, a, b)
                    if b >= 0:
                        total += areas[b]
                union = total - inter
                block[di, gj] = inter / union if union > 0 else 0.0
        greedy_match_kernel(block, gt_ids[g_lo[c] : g_hi[c]], gt_crowd[g_lo[c] : g_hi[c]],
                            gt_ignore[:, g_lo[c] : g_hi[c]], thresholds, dt_match[:, :, d_lo[c] : d_hi[c]],
                            dt_ignore[:, :, d_lo[c] : d_hi[c]], gt_match_det[:, :, g_lo[c] : g_hi[c]])


@_jit
def accumulate_kernel(lo_k, hi_k, dt_matched, dt_ignore, npig, rec_thrs, precision, recall, m,
                      areas):  # pragma: no cover - compiled
    """The official per (category, area range) precision / recall curves for one max-detections index ``m``.

    Detections sorted by category, then as the official stable sort within each; category ``k`` holds
    ``lo_k[k]:hi_k[k]`` (``lo_k[k] = -1``: no entry, left undefined). ``dt_matched`` / ``dt_ignore`` (A, T, N)
    bool, ``npig`` (K, A) non-ignored ground truths; only the area indices in ``areas``. The arithmetic is the
    official one element for element (float64 cumulative sums, tp / (tp + fp + eps), monotone from the right,
    a left search of the recall points), so the floats are identical."""
    T = dt_matched.shape[1]
    R = len(rec_thrs)
    eps = np.spacing(1.0)
    for k in range(len(lo_k)):
        lo, hi = lo_k[k], hi_k[k]
        if lo < 0:
            continue
        nd = hi - lo
        rc = np.empty(nd)
        pr = np.empty(nd)
        for a in areas:
            if npig[k, a] == 0:
                continue
            n_pos = np.float64(npig[k, a])
            for t in range(T):
                tp, fp = 0, 0
                for i in range(nd):
                    if not dt_ignore[a, t, lo + i]:
                        if dt_matched[a, t, lo + i]:
                            tp += 1
                        else:
                            fp += 1
                    tpf = np.float64(tp)
                    rc[i] = tpf / n_pos
                    pr[i] = tpf / (np.float64(fp) + tpf + eps)
                for i in range(nd - 1, 0, -1):
                    if pr[i] > pr[i - 1]:
                        pr[i - 1] = pr[i]
                i = 0
                for r in range(R):
                    while i < nd and rc[i] < rec_thrs[r]:
                        i += 1
                    precision[t, r, k, a, m] = pr[i] if i < nd else 0.0
                recall[t, k, a, m] = rc[nd - 1] if nd else 0.0
