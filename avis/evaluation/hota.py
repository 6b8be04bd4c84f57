"""HOTA (as TrackEval computes it for its YouTube-VIS dataset class) and FSLA (AVISeg's frame-level sound
source localisation accuracy) for video instance segmentation with masks.

HOTA follows TrackEval (``trackeval.datasets.YouTubeVIS`` + ``trackeval.metrics.HOTA``) step for step:

* a *detection* is a non-null per-frame mask (an empty RLE is a detection, as there); ground-truth tracks are
  annotations, predicted tracks are results; crowd ground truth counts as any other (the YouTube-VIS preprocessing
  removes nothing); a result whose category is not in the ground truth is in no class;
* per category and video: per-frame mask IoU of the category's ground truth and predictions, the global
  alignment score of every (ground truth, prediction) track pair (sum over frames of the per-frame similarity
  normalised by its row and column sums, over |gt dets| + |pred dets| - that sum), then per frame a Hungarian
  matching (scipy's ``linear_sum_assignment``, ported literally so that ties fall the same way) maximising
  alignment x IoU; for each alpha in 0.05:0.05:0.95 the matched pairs with IoU >= alpha are TPs;
* DetA / DetRe / DetPr from TP, FN, FP; AssA / AssRe / AssPr from the per-alpha match counts of each track pair;
  LocA the mean IoU of the TPs; summed (weighted by TP) over videos per category, then averaged over all the
  ground truth's categories (TrackEval's ``cls_comb_cls_av``, the average AVISeg reports) and reported as the
  mean over the 19 alphas.

The float arithmetic (summation orders included) is TrackEval's, so the numbers agree to the last bits.

FSLA follows AVISeg's ``aviseval`` (``compute_av_loc``), see ``docs/evaluation.md`` for the definition and the
places where its public code is read rather than copied.

Per video, every mask is decoded once (:func:`avis.evaluation.ytvis_eval.decode_video_masks`) and one compiled
call per metric does the rest (numba; without numba the same functions run as Python).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from avis.errors import InputError
from avis.evaluation.rle_kernels import _intersection, _jit
from avis.evaluation.ytvis_eval import _frame_index, decode_video_masks, map_videos

ALPHAS = np.arange(0.05, 0.99, 0.05)  # TrackEval's array_labels, built the same way (identical floats)
EPS = float(np.finfo("float").eps)
# what `avis score` reports: TrackEval's class-averaged fields, the arrays as their mean over the alphas
HOTA_KEYS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA",
             "HOTA(0)", "LocA(0)", "HOTALocA(0)")
ARRAY_FIELDS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA")
FSLA_KEYS = ("FSLA", "FSLAn", "FSLAs", "FSLAm")
_TP, _FN, _FP, _ASSA, _ASSRE, _ASSPR, _LOCA = range(7)  # rows of a (video, category)'s raw HOTA fields


# ------------------------------------------------------------------------------------------- compiled parts
@_jit
def _block_sum(x, lo, n):  # pragma: no cover - compiled
    """numpy's pairwise summation of ``x[lo:lo + n]`` for n <= 128: below 8 a plain loop, else eight
    accumulators."""
    if n < 8:
        s = 0.0
        for i in range(lo, lo + n):
            s += x[i]
        return s
    r0, r1, r2, r3 = x[lo], x[lo + 1], x[lo + 2], x[lo + 3]
    r4, r5, r6, r7 = x[lo + 4], x[lo + 5], x[lo + 6], x[lo + 7]
    i = 8
    while i + 8 <= n:
        r0 += x[lo + i]
        r1 += x[lo + i + 1]
        r2 += x[lo + i + 2]
        r3 += x[lo + i + 3]
        r4 += x[lo + i + 4]
        r5 += x[lo + i + 5]
        r6 += x[lo + i + 6]
        r7 += x[lo + i + 7]
        i += 8
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        s += x[lo + i]
        i += 1
    return s


@_jit
def _pairwise_sum(x, lo, n):  # pragma: no cover - compiled
    """numpy's pairwise summation of ``x[lo:lo + n]`` (what ``np.sum`` does along a contiguous axis): blocks of
    up to 128 (:func:`_block_sum`), larger ranges as the sum of their two halves (the first a multiple of 8).
    The recursion runs on an explicit stack: numba's on-disk cache does not reload recursive functions safely."""
    if n <= 128:
        return _block_sum(x, lo, n)
    s_lo = np.empty(64, np.int64)
    s_n = np.empty(64, np.int64)
    s_state = np.zeros(64, np.int64)  # 0: left half next, 1: right half next, 2: both done
    vals = np.empty(64)
    top, nv = 0, 0
    s_lo[0], s_n[0] = lo, n
    while top >= 0:
        a, m = s_lo[top], s_n[top]
        if m <= 128:
            vals[nv] = _block_sum(x, a, m)
            nv += 1
            top -= 1
            continue
        half = m // 2
        half -= half % 8
        state = s_state[top]
        s_state[top] = state + 1
        if state == 2:
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            top -= 1
            continue
        top += 1
        s_lo[top] = a if state == 0 else a + half
        s_n[top] = half if state == 0 else m - half
        s_state[top] = 0
    return vals[0]


@_jit
def linear_sum_assignment(cost):  # pragma: no cover - compiled
    """scipy's ``linear_sum_assignment(cost)`` (minimisation; the shortest augmenting path algorithm of
    Crouse, 2016, as scipy's ``rectangular_lsap.cpp`` implements it, a tall matrix transposed first), so that
    ties resolve exactly as there. Returns ``col4row``: the column assigned to each row, -1 for none."""
    nr0, nc0 = cost.shape
    out = np.full(nr0, -1, np.int64)
    if nr0 == 0 or nc0 == 0:
        return out
    transpose = nc0 < nr0
    c = np.ascontiguousarray(cost.T) if transpose else cost
    nr, nc = c.shape
    u = np.zeros(nr)
    v = np.zeros(nc)
    spc = np.empty(nc)
    path = np.full(nc, -1, np.int64)
    col4row = np.full(nr, -1, np.int64)
    row4col = np.full(nc, -1, np.int64)
    sr = np.zeros(nr, np.bool_)
    sc = np.zeros(nc, np.bool_)
    remaining = np.empty(nc, np.int64)
    for cur in range(nr):
        # shortest augmenting path from row `cur`
        min_val = 0.0
        for it in range(nc):
            remaining[it] = nc - it - 1  # reverse order: a constant matrix gives the identity (scipy #11602)
        num_remaining = nc
        sr[:] = False
        sc[:] = False
        spc[:] = np.inf
        sink = -1
        i = cur
        while sink == -1:
            index = -1
            lowest = np.inf
            sr[i] = True
            for it in range(num_remaining):
                j = remaining[it]
                r = min_val + c[i, j] - u[i] - v[j]
                if r < spc[j]:
                    path[j] = i
                    spc[j] = r
                if spc[j] < lowest or (spc[j] == lowest and row4col[j] == -1):
                    lowest = spc[j]
                    index = it
            min_val = lowest
            if min_val == np.inf:  # infeasible: not for finite costs
                return out
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            sc[j] = True
            num_remaining -= 1
            remaining[index] = remaining[num_remaining]
        # dual variables
        u[cur] += min_val
        for i in range(nr):
            if sr[i] and i != cur:
                u[i] += min_val - spc[col4row[i]]
        for j in range(nc):
            if sc[j]:
                v[j] -= min_val - spc[j]
        # augment
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            prev = col4row[i]
            col4row[i] = j
            j = prev
            if i == cur:
                break
    if transpose:
        for i in range(nr):
            out[col4row[i]] = i
    else:
        out[:] = col4row
    return out


@_jit
def _mask_iou(a, b, areas, starts, ends, iv_offsets):  # pragma: no cover - compiled
    """pycocotools' ``iou`` of decoded masks ``a`` and ``b`` (non-crowd): I / U as doubles, 0 without overlap."""
    inter = _intersection(starts, ends, iv_offsets, a, b)
    if inter == 0:
        return 0.0
    return inter / (areas[a] + areas[b] - inter)


@_jit
def _alignment(gs, ds, g_idx, g_on, g_rank, n_g, d_idx, d_rank, n_d, areas, starts, ends,
               iv_offsets):  # pragma: no cover - compiled
    """HOTA's first pass over the frames for the ground-truth tracks ``gs`` and predicted tracks ``ds`` (rows of
    ``g_idx`` / ``d_idx``, in frame-matrix order): per frame the present rows / columns and their IoU matrix
    (kept, flat, for the second pass), and the global alignment score (n_g, n_d) of the tracks by their rank.

    ``g_on[g, t]``: ground truth ``g`` is a detection at ``t``; predictions are detections where ``d_idx >= 0``.
    The sums are numpy's as TrackEval meets them: its per-frame matrix is Fortran-ordered (pycocotools), so a
    column sum is pairwise, a row sum sequential unless the matrix has one row (then contiguous, pairwise)."""
    T = g_idx.shape[1]
    f_rows = np.zeros(T + 1, np.int64)
    f_cols = np.zeros(T + 1, np.int64)
    f_sims = np.zeros(T + 1, np.int64)
    for t in range(T):
        r = 0
        for g in gs:
            r += g_on[g, t]
        c = 0
        for d in ds:
            c += d_idx[d, t] >= 0
        f_rows[t + 1] = f_rows[t] + r
        f_cols[t + 1] = f_cols[t] + c
        f_sims[t + 1] = f_sims[t] + r * c
    rows = np.empty(f_rows[T], np.int64)
    cols = np.empty(f_cols[T], np.int64)
    sims = np.empty(f_sims[T])
    pmc = np.zeros((n_g, n_d))
    g_count = np.zeros(n_g)
    d_count = np.zeros(n_d)
    col_sum = np.empty(len(ds))
    column = np.empty(len(gs))
    for t in range(T):
        k = f_rows[t]
        for g in gs:
            if g_on[g, t]:
                rows[k] = g
                k += 1
        k = f_cols[t]
        for d in ds:
            if d_idx[d, t] >= 0:
                cols[k] = d
                k += 1
        r0, r = f_rows[t], f_rows[t + 1] - f_rows[t]
        c0, c = f_cols[t], f_cols[t + 1] - f_cols[t]
        s0 = f_sims[t]
        for i in range(r):
            for j in range(c):
                sims[s0 + i * c + j] = _mask_iou(g_idx[rows[r0 + i], t], d_idx[cols[c0 + j], t], areas, starts,
                                                 ends, iv_offsets)
        if r > 0 and c > 0:
            for j in range(c):
                for i in range(r):
                    column[i] = sims[s0 + i * c + j]
                col_sum[j] = _pairwise_sum(column, 0, r)
            for i in range(r):
                if r == 1:
                    row_sum = _pairwise_sum(sims, s0, c)
                else:
                    row_sum = 0.0
                    for j in range(c):
                        row_sum += sims[s0 + i * c + j]
                gi = g_rank[rows[r0 + i]]
                for j in range(c):
                    s = sims[s0 + i * c + j]
                    denom = (col_sum[j] + row_sum) - s
                    if denom > EPS:
                        pmc[gi, d_rank[cols[c0 + j]]] += s / denom
        for i in range(r):
            g_count[g_rank[rows[r0 + i]]] += 1
        for j in range(c):
            d_count[d_rank[cols[c0 + j]]] += 1
    gas = np.empty((n_g, n_d))
    for i in range(n_g):
        for j in range(n_d):
            gas[i, j] = pmc[i, j] / ((g_count[i] + d_count[j]) - pmc[i, j])
    return rows, f_rows, cols, f_cols, sims, f_sims, gas, g_count, d_count


@_jit
def hota_video_kernel(g_idx, g_lo, g_hi, g_rank, n_g, d_idx, d_lo, d_hi, d_rank, n_d, areas, starts, ends,
                      iv_offsets, alphas, out):  # pragma: no cover - compiled
    """TrackEval's ``HOTA.eval_sequence`` for every category of one video.

    Ground-truth (predicted) tracks of category ``c`` are rows ``g_lo[c]:g_hi[c]`` (``d_lo[c]:d_hi[c]``) of
    ``g_idx`` (``d_idx``), per frame the mask's row in the decoded table or -1, in file order; ``g_rank`` /
    ``d_rank`` a track's index after TrackEval's relabelling (ground truth by annotation id, predictions in file
    order, among the category's tracks with a detection), ``n_g[c]`` / ``n_d[c]`` their numbers. Fills
    ``out[c]`` (7, A): TP, FN, FP, AssA, AssRe, AssPr, LocA per alpha."""
    A = len(alphas)
    T = g_idx.shape[1]
    g_on = g_idx >= 0
    for c in range(len(g_lo)):
        res = out[c]
        res[:] = 0.0
        gs = np.arange(g_lo[c], g_hi[c])
        ds = np.arange(d_lo[c], d_hi[c])
        n_gt_dets = 0
        for g in gs:
            for t in range(T):
                n_gt_dets += g_on[g, t]
        n_dt_dets = 0
        for d in ds:
            for t in range(T):
                n_dt_dets += d_idx[d, t] >= 0
        if n_dt_dets == 0:  # the early returns of eval_sequence
            res[_FN, :] = n_gt_dets
            res[_LOCA, :] = 1.0
            continue
        if n_gt_dets == 0:
            res[_FP, :] = n_dt_dets
            res[_LOCA, :] = 1.0
            continue
        ng, nd = n_g[c], n_d[c]
        rows, f_rows, cols, f_cols, sims, f_sims, gas, g_count, d_count = _alignment(
            gs, ds, g_idx, g_on, g_rank, ng, d_idx, d_rank, nd, areas, starts, ends, iv_offsets)
        matches = np.zeros((A, ng, nd))
        for t in range(T):
            r0, r = f_rows[t], f_rows[t + 1] - f_rows[t]
            c0, cc = f_cols[t], f_cols[t + 1] - f_cols[t]
            if r == 0:
                res[_FP, :] += cc
                continue
            if cc == 0:
                res[_FN, :] += r
                continue
            s0 = f_sims[t]
            cost = np.empty((r, cc))
            for i in range(r):
                gi = g_rank[rows[r0 + i]]
                for j in range(cc):
                    cost[i, j] = -(gas[gi, d_rank[cols[c0 + j]]] * sims[s0 + i * cc + j])
            col4row = linear_sum_assignment(cost)
            for a in range(A):
                thr = alphas[a] - EPS
                n = 0
                loc = 0.0
                for i in range(r):
                    j = col4row[i]
                    if j < 0:
                        continue
                    s = sims[s0 + i * cc + j]
                    if s >= thr:
                        n += 1
                        loc += s
                        matches[a, g_rank[rows[r0 + i]], d_rank[cols[c0 + j]]] += 1
                res[_TP, a] += n
                res[_FN, a] += r - n
                res[_FP, a] += cc - n
                if n > 0:
                    res[_LOCA, a] += loc
        buf = np.empty(ng * nd)
        for a in range(A):
            tp = max(1.0, res[_TP, a])
            for kind in range(3):  # AssA, AssRe, AssPr
                for i in range(ng):
                    for j in range(nd):
                        m = matches[a, i, j]
                        if kind == 0:
                            den = max(1.0, (g_count[i] + d_count[j]) - m)
                        elif kind == 1:
                            den = max(1.0, g_count[i])
                        else:
                            den = max(1.0, d_count[j])
                        buf[i * nd + j] = m * (m / den)
                res[_ASSA + kind, a] = _pairwise_sum(buf, 0, ng * nd) / tp
            res[_LOCA, a] = max(1e-10, res[_LOCA, a]) / max(1e-10, res[_TP, a])


@_jit
def fsla_video_kernel(g_idx, g_on, g_cls, g_rank, n_g, d_idx, d_cls, d_rank, n_d, areas, starts, ends, iv_offsets,
                      alphas, out):  # pragma: no cover - compiled
    """AVISeg's frame-level sound-source localisation counts of one video (see ``docs/evaluation.md``).

    ``g_on[g, t]``: ground-truth track ``g`` is sounding and has a mask at ``t``; predictions are present where
    ``d_idx >= 0`` and count (class set, number) where their mask is non-empty. Tracks are paired once by the
    Hungarian algorithm on HOTA's global alignment score over all categories. Adds to ``out`` (6, A): frames
    without / with one / with several sounding ground truths (all, correct) per alpha."""
    G, T = g_idx.shape
    D = d_idx.shape[0]
    A = len(alphas)
    gs = np.arange(G)
    ds = np.arange(D)
    rows, f_rows, cols, f_cols, sims, f_sims, gas, g_count, d_count = _alignment(
        gs, ds, g_idx, g_on, g_rank, n_g, d_idx, d_rank, n_d, areas, starts, ends, iv_offsets)
    cost = np.empty((n_g, n_d))
    for i in range(n_g):
        for j in range(n_d):
            cost[i, j] = -gas[i, j]
    col4row = linear_sum_assignment(cost)
    # ranks back to tracks
    g_of = np.full(n_g, -1, np.int64)
    for g in range(G):
        if g_rank[g] >= 0:
            g_of[g_rank[g]] = g
    d_of = np.full(n_d, -1, np.int64)
    for d in range(D):
        if d_rank[d] >= 0:
            d_of[d_rank[d]] = d
    for t in range(T):
        n_gt = 0
        for g in range(G):
            n_gt += g_on[g, t]
        n_pr = 0
        for d in range(D):
            n_pr += d_idx[d, t] >= 0 and areas[d_idx[d, t]] > 0
        kind = 0 if n_gt == 0 else (1 if n_gt == 1 else 2)
        out[2 * kind, :] += 1
        if n_gt != n_pr:
            continue
        # the set of sounding ground-truth classes equals the set of classes of the non-empty predictions
        gcl = np.empty(n_gt, np.int64)
        k = 0
        for g in range(G):
            if g_on[g, t]:
                gcl[k] = g_cls[g]
                k += 1
        pcl = np.empty(n_pr, np.int64)
        k = 0
        for d in range(D):
            if d_idx[d, t] >= 0 and areas[d_idx[d, t]] > 0:
                pcl[k] = d_cls[d]
                k += 1
        ug = np.unique(gcl)
        up = np.unique(pcl)
        if len(ug) != len(up) or (ug != up).any():
            continue
        if kind == 0:
            out[1, :] += 1
            continue
        # the lowest IoU that the frame needs above alpha (inf: none), or the frame is wrong at every alpha
        need = np.inf
        ok = True
        if kind == 1:
            g = -1
            for gg in range(G):
                if g_on[gg, t]:
                    g = gg
            p = col4row[g_rank[g]]
            if p < 0:
                ok = False
            else:
                d = d_of[p]
                need = 0.0 if d_idx[d, t] < 0 else _mask_iou(g_idx[g, t], d_idx[d, t], areas, starts, ends,
                                                               iv_offsets)
        else:
            for i in range(n_g):
                p = col4row[i]
                if p < 0:
                    continue
                g, d = g_of[i], d_of[p]
                if g_cls[g] != d_cls[d]:
                    ok = False
                    break
                if not g_on[g, t]:  # right only if the prediction is empty or absent here too
                    if d_idx[d, t] >= 0 and areas[d_idx[d, t]] > 0:
                        ok = False
                        break
                    continue
                iou = 0.0 if d_idx[d, t] < 0 else _mask_iou(g_idx[g, t], d_idx[d, t], areas, starts, ends,
                                                              iv_offsets)
                need = min(need, iou)
        if not ok:
            continue
        for a in range(A):
            if need > alphas[a]:
                out[2 * kind + 1, a] += 1


# ------------------------------------------------------------------------------------------------ per video
def _ranks(present: np.ndarray, group: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per track, its index among the present tracks of its group ordered by ``key`` (-1 if not present), and
    the number of present tracks per group (groups 0..max)."""
    rank = np.full(len(present), -1, np.int64)
    n = np.zeros(int(group.max()) + 1 if len(group) else 0, np.int64)
    p = np.flatnonzero(present)
    if len(p):
        order = p[np.lexsort((key[p], group[p]))]
        g_sorted = group[order]
        first = np.searchsorted(g_sorted, g_sorted, "left")
        rank[order] = np.arange(len(order)) - first
        n[: int(g_sorted.max()) + 1] = np.bincount(g_sorted)
    return rank, n


def _video(task):
    """HOTA fields per category and FSLA counts of one video. ``task`` = (video_id, (height, width), T, ground
    truth dicts, result dicts (file order), {category id: index}, want_hota, want_fsla)."""
    video_id, shape, T, gts, dts, cat_pos, want_hota, want_fsla = task
    G, D = len(gts), len(dts)
    index, _, masks = _frame_index([g["segmentations"] for g in gts] + [r["segmentations"] for r in dts])
    idx = np.full((G + D, T), -1, np.int64)  # frames past the video's length are ignored, as by TrackEval
    idx[:, : min(T, index.shape[1])] = index[:, :T]
    n_gm = int((index[:G] >= 0).sum())
    table = decode_video_masks(video_id, shape, masks, n_gm)
    g_idx, d_idx = idx[:G], idx[G:]
    g_cls = np.array([cat_pos[g["category_id"]] for g in gts], np.int64)
    d_cls = np.array([cat_pos.get(r["category_id"], -1) for r in dts], np.int64)
    g_ids = np.array([g["id"] for g in gts], np.int64)
    tables = (table.areas, table.starts, table.ends, table.iv_offsets)
    hota = fsla = None
    if want_hota:
        keep = d_cls >= 0  # results of categories the ground truth does not have are in no class
        cats = np.unique(np.concatenate([g_cls, d_cls[keep]]))
        go = np.argsort(g_cls, kind="stable")
        do = np.flatnonzero(keep)[np.argsort(d_cls[keep], kind="stable")]
        gc, dc = g_cls[go], d_cls[do]
        g_rank, n_g = _ranks((g_idx[go] >= 0).any(1), np.searchsorted(cats, gc), g_ids[go])
        d_rank, n_d = _ranks((d_idx[do] >= 0).any(1), np.searchsorted(cats, dc), np.arange(len(do)))
        n_g = np.pad(n_g, (0, len(cats) - len(n_g)))
        n_d = np.pad(n_d, (0, len(cats) - len(n_d)))
        out = np.empty((len(cats), 7, len(ALPHAS)))
        hota_video_kernel(np.ascontiguousarray(g_idx[go]), np.searchsorted(gc, cats, "left"),
                          np.searchsorted(gc, cats, "right"), g_rank, n_g, np.ascontiguousarray(d_idx[do]),
                          np.searchsorted(dc, cats, "left"), np.searchsorted(dc, cats, "right"), d_rank, n_d,
                          *tables, ALPHAS, out)
        hota = (cats, out)
    if want_fsla:
        sounding = np.zeros((G, T), np.bool_)
        for i, g in enumerate(gts):
            flags = g["sounding"][:T]
            sounding[i, : len(flags)] = [bool(f) for f in flags]
        g_on = (g_idx >= 0) & sounding
        zero = np.zeros(max(G, D), np.int64)
        g_rank, n_g = _ranks(g_on.any(1), zero[:G], g_ids)
        d_rank, n_d = _ranks((d_idx >= 0).any(1), zero[:D], np.arange(D))
        fsla = np.zeros((6, len(ALPHAS)), np.int64)
        fsla_video_kernel(g_idx, g_on, g_cls, g_rank, int(n_g[0]) if len(n_g) else 0, d_idx, d_cls, d_rank,
                          int(n_d[0]) if len(n_d) else 0, *tables, ALPHAS, fsla)
    return hota, fsla


# ------------------------------------------------------------------------------------------------- results
@dataclass
class HotaEvaluation:
    """TrackEval's HOTA results: ``per_category`` (category id -> field -> (A,) array, combined over videos),
    ``class_averaged`` (TrackEval's ``cls_comb_cls_av``, what AVISeg reports), ``det_averaged``
    (``cls_comb_det_av``), and ``stats``: the :data:`HOTA_KEYS` numbers (arrays as their mean over alphas)."""

    category_ids: list[int]
    category_names: dict[int, str]
    per_category: dict[int, dict[str, np.ndarray]]
    class_averaged: dict[str, np.ndarray]
    det_averaged: dict[str, np.ndarray]
    stats: dict[str, float] = field(default_factory=dict)
    # per video (ground-truth videos sorted by id): (category positions, (n, 7, A) raw fields), as combined above
    video_parts: list = field(default_factory=list, repr=False)

    def leave_one_video_out(self, key: str) -> np.ndarray:
        """(V,) the class-averaged ``key`` (one of :data:`ARRAY_FIELDS`, mean over alphas) of the evaluation
        without each video in turn (videos as :attr:`video_parts`), by TrackEval's combination of the
        remaining videos (counts summed, AssA / AssRe / AssPr / LocA weighted by TP; every category counts).
        The jackknife of ``avis ttest``'s HOTA rows (:mod:`avis.evaluation.recipes`)."""
        V, K, A = len(self.video_parts), len(self.category_ids), len(ALPHAS)
        raw = np.zeros((V, K, 7, A))
        for v, (cats, out) in enumerate(self.video_parts):
            raw[v, cats] = out
            raw[v, cats, _ASSA : _LOCA + 1] *= out[:, _TP : _TP + 1]  # TP-weighted sums
        rest = raw.sum(0, keepdims=True) - raw  # (V, K, 7, A): each video's complement
        tp, fn, fp = rest[:, :, _TP], rest[:, :, _FN], rest[:, :, _FP]
        f = {"AssA": rest[:, :, _ASSA] / np.maximum(1.0, tp), "AssRe": rest[:, :, _ASSRE] / np.maximum(1.0, tp),
             "AssPr": rest[:, :, _ASSPR] / np.maximum(1.0, tp),
             "LocA": np.maximum(1e-10, rest[:, :, _LOCA]) / np.maximum(1e-10, tp),
             "DetRe": tp / np.maximum(1, tp + fn), "DetPr": tp / np.maximum(1, tp + fp),
             "DetA": tp / np.maximum(1, tp + fn + fp)}
        f["HOTA"] = np.sqrt(f["DetA"] * f["AssA"])
        f["OWTA"] = np.sqrt(f["DetRe"] * f["AssA"])
        if key not in f:
            raise KeyError(f"{key!r} is not one of {ARRAY_FIELDS}")
        if K == 0:
            return np.full(V, np.nan)
        return f[key].mean(1).mean(1)  # over categories (class-averaged), then over alphas

    def per_category_rows(self) -> list[dict]:
        """HOTA / DetA / AssA / LocA per category (means over alphas)."""
        return [{"category_id": c, "name": self.category_names.get(c, str(c)),
                 **{k: float(np.mean(self.per_category[c][k])) for k in ("HOTA", "DetA", "AssA", "LocA")}}
                for c in self.category_ids]

    def curves(self) -> dict[str, list[float]]:
        """The class-averaged fields per alpha (``alpha`` first)."""
        return {"alpha": ALPHAS.tolist(), **{k: self.class_averaged[k].tolist() for k in ARRAY_FIELDS}}


def _final_fields(res: dict) -> dict:
    """TrackEval's ``HOTA._compute_final_fields``."""
    tp, fn, fp = res["HOTA_TP"], res["HOTA_FN"], res["HOTA_FP"]
    res["DetRe"] = tp / np.maximum(1, tp + fn)
    res["DetPr"] = tp / np.maximum(1, tp + fp)
    res["DetA"] = tp / np.maximum(1, tp + fn + fp)
    res["HOTA"] = np.sqrt(res["DetA"] * res["AssA"])
    res["OWTA"] = np.sqrt(res["DetRe"] * res["AssA"])
    res["HOTA(0)"] = res["HOTA"][0]
    res["LocA(0)"] = res["LocA"][0]
    res["HOTALocA(0)"] = res["HOTA(0)"] * res["LocA(0)"]
    return res


def _combine(parts: list[dict]) -> dict:
    """TrackEval's ``combine_sequences`` / ``combine_classes_det_averaged``: counts summed, AssA / AssRe /
    AssPr and LocA weighted by TP."""
    A = len(ALPHAS)
    res = {k: sum((p[k] for p in parts), np.zeros(A)) for k in ("HOTA_TP", "HOTA_FN", "HOTA_FP")}
    for k in ("AssRe", "AssPr", "AssA"):
        res[k] = sum((p[k] * p["HOTA_TP"] for p in parts), np.zeros(A)) / np.maximum(1.0, res["HOTA_TP"])
    loc = sum((p["LocA"] * p["HOTA_TP"] for p in parts), np.zeros(A))
    res["LocA"] = np.maximum(1e-10, loc) / np.maximum(1e-10, res["HOTA_TP"])
    return _final_fields(res)


def _class_averaged(per_cat: list[dict]) -> dict:
    """TrackEval's ``combine_classes_class_averaged`` (every category, also those without any detection)."""
    res = {k: sum((v[k] for v in per_cat), np.zeros(len(ALPHAS))) for k in ("HOTA_TP", "HOTA_FN", "HOTA_FP")}
    for k in ARRAY_FIELDS + ("HOTA(0)", "LocA(0)", "HOTALocA(0)"):
        res[k] = np.mean([v[k] for v in per_cat], axis=0) if per_cat else np.full(len(ALPHAS), np.nan)
    return res


def _fsla_numbers(counts: np.ndarray) -> dict[str, float | int]:
    """FSLA numbers from the summed (6, A) counts: means over alphas, -1 where a kind of frame never occurs."""
    n_all, n_tp, s_all, s_tp, m_all, m_tp = counts.astype(np.float64)
    total = n_all + s_all + m_all

    def mean(tp, n):
        return float(np.mean(tp / n[0])) if n[0] > 0 else -1.0

    return {"FSLA": mean(n_tp + s_tp + m_tp, total), "FSLAn": mean(n_tp, n_all), "FSLAs": mean(s_tp, s_all),
            "FSLAm": mean(m_tp, m_all), "FSLAn_frames": int(n_all[0]), "FSLAs_frames": int(s_all[0]),
            "FSLAm_frames": int(m_all[0])}


def check_sounding(gt: dict, path=None) -> None:
    """Refuse FSLA (one :class:`InputError` line naming ``path``) unless every annotation has ``sounding``."""
    anns = gt["annotations"]
    missing = [a for a in anns if a.get("sounding") is None]
    if anns and len(missing) == len(anns):
        raise InputError("FSLA needs per-frame 'sounding' flags in the ground truth (one list per annotation); "
                         "this file has none", path)
    if missing:
        a = missing[0]
        raise InputError(f"FSLA needs per-frame 'sounding' flags on every annotation; annotation {a['id']} "
                         f"(video {a['video_id']}) has none", path)


def evaluate_tracking(gt: dict, results: list[dict], hota: bool = True, fsla: bool = False, workers: int = 1,
                      progress: bool = False, gt_path=None) -> tuple[HotaEvaluation | None, dict | None]:
    """HOTA (:class:`HotaEvaluation`) and / or FSLA (dict: FSLA, FSLAn, FSLAs, FSLAm as fractions, -1 where
    undefined, and the frame counts) of ``results`` against ``gt`` (both as the :mod:`avis.io.ytvis` loaders
    return them). Every video of the ground truth counts, with or without predictions."""
    if fsla:
        check_sounding(gt, gt_path)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    cat_pos = {c: k for k, c in enumerate(cat_ids)}
    gts, dts = defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        gts[a["video_id"]].append(a)
    for r in results:
        dts[r["video_id"]].append(r)
    videos = sorted(gt["videos"], key=lambda v: v["id"])
    tasks = [(v["id"], (int(v["height"]), int(v["width"])), int(v["length"]), gts.get(v["id"], []),
              dts.get(v["id"], []), cat_pos, hota, fsla) for v in videos]
    per_video = map_videos(_video, tasks, workers, progress, desc="hota/fsla")
    hota_ev = fsla_res = None
    if hota:
        parts = defaultdict(list)
        for h, _ in per_video:
            cats, out = h
            for k, o in zip(cats.tolist(), out):
                parts[k].append({"HOTA_TP": o[_TP], "HOTA_FN": o[_FN], "HOTA_FP": o[_FP], "AssA": o[_ASSA],
                                 "AssRe": o[_ASSRE], "AssPr": o[_ASSPR], "LocA": o[_LOCA]})
        per_cat = {c: _combine(parts.get(k, [])) for k, c in enumerate(cat_ids)}
        names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
        cls_av = _class_averaged(list(per_cat.values()))
        det_av = _combine(list(per_cat.values()))
        stats = {k: float(np.mean(cls_av[k])) for k in HOTA_KEYS}
        hota_ev = HotaEvaluation(cat_ids, names, per_cat, cls_av, det_av,
                                 {k: (v if np.isfinite(v) else -1.0) for k, v in stats.items()},
                                 [h for h, _ in per_video])
    if fsla:
        counts = sum((f for _, f in per_video), np.zeros((6, len(ALPHAS)), np.int64))
        fsla_res = _fsla_numbers(np.asarray(counts))
    return hota_ev, fsla_res
