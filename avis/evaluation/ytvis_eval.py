"""The YouTube-VIS evaluation protocol (AP/AR over videos), exact to the official evaluator and fast.

The official evaluator (the ``ytvos``/``ytvoseval`` fork of the COCO API) defines the numbers every VIS paper
reports; this module reproduces its results to the last digit (see ``docs/evaluation.md``) while replacing its
per-pair, per-frame Python loops:

* in C (default when the extension ``avis.evaluation._rlec`` is built, :data:`BACKEND` ``"c"``): the numba
  kernels below ported to C (:mod:`avis.evaluation.rle_c`), without numba's start-up; with the packed results of
  :func:`avis.evaluation.rle_c.load_packed_results` (``avis score``) the masks are read from one byte buffer.
* with numba (:data:`BACKEND` ``"numba"``): per video, one compiled call decodes every mask string
  (areas; foreground intervals where a same-category pair needs them) and one computes the video IoU blocks
  (interval merges, exact integer I and U) and the greedy matching of all categories; the accumulation is one
  compiled call over all categories (:mod:`avis.evaluation.rle_kernels`).
* without numba (``"pycocotools"``): video IoU per (video, category) from batched pycocotools ``iou`` calls
  (the crowd form returns intersection / prediction area, from which the integer intersection is recovered
  exactly); the greedy COCO matching for the 4 area ranges x 10 IoU thresholds at once (numpy lanes), only for
  the detections that reach the lowest threshold; accumulation vectorised over thresholds.

Both give the same arrays and, the reductions being the official ones, bit-identical floats.

Entry point: :func:`evaluate` (``gt`` as returned by :func:`avis.io.ytvis.load_annotations`, ``results`` by
:func:`avis.io.ytvis.load_results`) -> :class:`Evaluation`.
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import accumulate as running_sum
from itertools import chain, repeat
from operator import is_not, itemgetter

import numpy as np
from pycocotools import mask as mask_utils

from avis.errors import InputError
from avis.evaluation import rle_c

# numba is imported when its kernels are first used (``rle_kernels``): its start-up (import, CPU target, cache
# loads) costs more CPU than scoring a 100-video case in C
NUMBA = importlib.util.find_spec("numba") is not None


def _nb():
    """The numba kernels module (imported on first use)."""
    from avis.evaluation import rle_kernels

    return rle_kernels


def __getattr__(name):  # ``ye.rle_kernels`` / ``ye.RleTable`` as before, imported when asked for
    if name == "rle_kernels":
        return _nb()
    if name == "RleTable":
        return _nb().RleTable
    raise AttributeError(name)


# Parameters of the official evaluator (Params.setDetParams), built the same way so the floats are identical.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RNG = ((0**2, 1e5**2), (0**2, 128**2), (128**2, 256**2), (256**2, 1e5**2))
AREA_LBL = ("all", "small", "medium", "large")
# "c": the C kernels (avis.evaluation.rle_c); "numba": decode each mask once (avis.evaluation.rle_kernels);
# "pycocotools": batched pycocotools calls only
BACKEND = "c" if rle_c.AVAILABLE else "numba" if NUMBA else "pycocotools"
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def average_area(areas) -> float:
    """Mean of the per-frame areas that are neither null nor zero (the official ``if a`` filter); 0 if none."""
    kept = [a for a in areas if a]
    return float(np.array(kept).mean()) if kept else 0.0


@dataclass
class VideoCategoryEval:
    """Matching of one (video, category): D detections (top 100 by score, stable) and G ground truths."""

    video_id: int
    category_id: int
    scores: np.ndarray  # (D,) sorted descending, stable
    det_index: np.ndarray  # (D,) index of each detection in the results list
    gt_ids: np.ndarray  # (G,) annotation ids, ground-truth file order
    gt_crowd: np.ndarray  # (G,) bool
    ious: np.ndarray  # (D, G) video IoU
    dt_match: np.ndarray  # (A, T, D) matched ground-truth id, 0 = unmatched (the official marker)
    dt_ignore: np.ndarray  # (A, T, D) bool
    gt_ignore: np.ndarray  # (A, G) bool
    gt_match_det: np.ndarray = field(repr=False, default=None)  # (A, T, G) index into the D detections or -1


# ----------------------------------------------------------------------------------------------- video IoU
class Tubes:
    """Per-frame RLE sequences of N instances of one video, with their (N, T) areas computed once.

    ``rles`` (N, T) object array (``None`` where absent or past the sequence's end), ``lengths`` (N,) the
    sequence lengths (frames are paired as ``zip`` does, up to the shorter sequence), ``areas`` (N, T) int64.
    """

    def __init__(self, seqs: list[list], shape: tuple[int, int] | None = None):
        N = len(seqs)
        self.shape = shape
        self.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        T = int(self.lengths.max()) if N else 0
        self.rles = np.full((N, T), None, dtype=object)
        for i, s in enumerate(seqs):
            self.rles[i, : len(s)] = s
        self.present = np.not_equal(self.rles, None)
        if shape is not None and self.present.any():
            sizes = {tuple(r["size"]) for r in self.rles[self.present]}
            if sizes != {tuple(shape)}:
                bad = sorted(sizes - {tuple(shape)})[0]
                raise InputError(f"a mask of size {list(bad)} in a video of size {list(shape)}")
        self.areas = np.zeros(self.rles.shape, dtype=np.int64)
        if self.present.any():
            self.areas[self.present] = rle_areas(list(self.rles[self.present]))
        self.cum_areas = np.concatenate([np.zeros((len(self.areas), 1), np.int64), np.cumsum(self.areas, 1)], 1)

    def __len__(self) -> int:
        return len(self.lengths)


def rle_areas(rles: list) -> np.ndarray:
    """int64 areas of many RLEs. pycocotools' ``area`` fails on more than 255 masks with NumPy 2 (it sizes its
    output with a uint8 array), hence the chunks."""
    return np.concatenate([np.asarray(mask_utils.area(rles[i : i + 255]), dtype=np.int64)
                           for i in range(0, len(rles), 255)])


def _frame_shapes(h: int, w: int) -> list[list[int]]:
    """Distinct [h', w'] with h' * w' = h * w, starting with [h, w].

    A compressed RLE is a run-length code of the h * w pixels in column order, so reading it with another shape
    of the same pixel count leaves every intersection and area unchanged, while pycocotools' ``iou`` skips the
    run merge of any pair whose shapes differ (it returns -1 after a bounding-box test). Giving each frame its own
    shape therefore lets one ``iou`` call cover many frames and compute only the same-frame pairs.
    """
    n = h * w
    divs = [k for k in range(1, int(np.sqrt(n)) + 1) if n % k == 0]
    pairs = [[k, n // k] for k in divs] + [[n // k, k] for k in divs if k * k != n]
    pairs.remove([h, w])
    return [[h, w]] + pairs


_PAIR_BUDGET = 200_000  # (detection frames) x (ground-truth frames) per pycocotools call


def intersections(d: Tubes, g: Tubes, d_rows=None, g_cols=None) -> np.ndarray:
    """(D', G') summed per-frame intersection areas of the tubes ``d_rows`` of ``d`` and ``g_cols`` of ``g``
    (default all).

    pycocotools' ``iou`` in its crowd form gives intersection / detection area, from which the integer
    intersection is recovered exactly (rounding a quotient of integers < 2^32). Frames are batched into one call
    by giving each frame its own RLE shape (see :func:`_frame_shapes`); the call's fixed cost (about 20 us)
    would otherwise dominate.
    """
    rows = np.arange(len(d)) if d_rows is None else np.asarray(d_rows, dtype=np.int64)
    cols = np.arange(len(g)) if g_cols is None else np.asarray(g_cols, dtype=np.int64)
    inter = np.zeros((len(rows), len(cols)), dtype=np.int64)
    T = min(d.rles.shape[1], g.rles.shape[1])
    if len(rows) == 0 or len(cols) == 0 or T == 0:
        return inter
    dp = d.present[rows, :T]
    gp = g.present[cols, :T]
    frames = np.flatnonzero(dp.any(0) & gp.any(0))
    if len(frames) == 0:
        return inter
    shapes = _frame_shapes(*d.shape) if d.shape else [None]
    per_call = max(1, min(len(shapes), int(np.sqrt(_PAIR_BUDGET / (len(rows) * len(cols))))))
    for c0 in range(0, len(frames), per_call):
        fr = frames[c0 : c0 + per_call]
        di, dt = np.nonzero(dp[:, fr].T)[::-1]  # frame-major order: rows di at local frame dt
        gi, gt = np.nonzero(gp[:, fr].T)[::-1]
        if len(di) == 0 or len(gi) == 0:
            continue
        d_rles = [{"size": shapes[k], "counts": r["counts"]} for r, k in zip(d.rles[rows[di], fr[dt]], dt)]
        g_rles = [{"size": shapes[k], "counts": r["counts"]} for r, k in zip(g.rles[cols[gi], fr[gt]], gt)]
        o = np.asarray(mask_utils.iou(d_rles, g_rles, [1] * len(g_rles)))
        same = dt[:, None] == gt[None, :]
        a, b = np.nonzero(same)
        vals = np.rint(o[a, b] * d.areas[rows[di[a]], fr[dt[a]]]).astype(np.int64)
        np.add.at(inter, (di[a], gi[b]), vals)
    return inter


def tube_iou(d: Tubes, g: Tubes, inter: np.ndarray, d_rows=None, g_cols=None) -> np.ndarray:
    """IoU = I / U with U = both areas summed over the shared frames minus I (0 where U = 0), as the official
    ``iou_seq`` whose I and U are sums of exact integer areas."""
    rows = np.arange(len(d)) if d_rows is None else np.asarray(d_rows, dtype=np.int64)
    cols = np.arange(len(g)) if g_cols is None else np.asarray(g_cols, dtype=np.int64)
    n = np.minimum(d.lengths[rows][:, None], g.lengths[cols][None, :])
    union = d.cum_areas[rows[:, None], n] + g.cum_areas[cols[None, :], n] - inter
    out = np.zeros(inter.shape)
    pos = union > 0
    out[pos] = inter[pos].astype(np.float64) / union[pos].astype(np.float64)
    return out


def video_iou(dets: list[list], gts: list[list], shape: tuple[int, int] | None = None) -> np.ndarray:
    """(D, G) video IoU of per-frame RLE sequences (``None`` where absent), as the official ``iou_seq``.
    ``shape`` (height, width) of the frames, taken from the masks when not given."""
    if shape is None:
        first = next((r for s in (*dets, *gts) for r in s if r is not None), None)
        shape = None if first is None else tuple(first["size"])
    d, g = Tubes(dets, shape), Tubes(gts, shape)
    return tube_iou(d, g, intersections(d, g))

# ------------------------------------------------------------------------------------------------ matching
def greedy_match(ious: np.ndarray, gt_ids: np.ndarray, gt_crowd: np.ndarray, gt_ignore: np.ndarray,
                 thresholds: np.ndarray):
    """The official greedy matching for L lanes (area ranges) x T thresholds at once.

    ``ious`` (D, G) with detections sorted by score; ``gt_ignore`` (L, G). Per detection in order, per lane:
    the eligible (unmatched or crowd) non-ignored ground truth with the highest IoU >= threshold wins, ties
    to the later one in file order; only if none, the same among ignored ones (the official loop visits
    ground truths sorted ignore-last, keeps the running best with ``>=``, and stops at the first ignored one
    once a regular match exists).

    Returns ``dt_match`` (L, T, D) matched gt id (0 = none), ``dt_ignore`` (L, T, D) bool (matched to an
    ignored gt), ``gt_match_det`` (L, T, G) detection index or -1.
    """
    D, G = ious.shape
    L, T = gt_ignore.shape[0], len(thresholds)
    dt_match = np.zeros((L, T, D))
    dt_ignore = np.zeros((L, T, D), dtype=bool)
    gt_match_det = np.full((L, T, G), -1, dtype=np.int64)
    if D == 0 or G == 0:
        return dt_match, dt_ignore, gt_match_det
    if BACKEND in ("numba", "c"):
        kernel = rle_c.greedy_match if BACKEND == "c" else _nb().greedy_match_kernel
        kernel(np.ascontiguousarray(ious, np.float64), gt_ids.astype(np.float64),
               np.ascontiguousarray(gt_crowd, np.bool_), np.ascontiguousarray(gt_ignore, np.bool_),
               np.asarray(thresholds, np.float64), dt_match, dt_ignore, gt_match_det)
        return dt_match, dt_ignore, gt_match_det
    thr = np.minimum(thresholds, 1 - 1e-10)[None, :, None]  # (1, T, 1)
    regular = ~gt_ignore[:, None, :]  # (L, 1, G)
    rev = np.arange(G)[::-1]
    gt_ids_f = gt_ids.astype(np.float64)
    lanes_l, lanes_t = np.meshgrid(np.arange(L), np.arange(T), indexing="ij")
    for d in np.flatnonzero(ious.max(1) >= thr.min()):  # the others reach no threshold
        v = ious[d]
        ok = ((gt_match_det < 0) | gt_crowd) & (v >= thr)  # (L, T, G)
        found = None
        for group in (ok & regular, ok & ~regular):
            has = group.any(-1)
            if not has.any():
                continue
            vals = np.where(group, v, -np.inf)[..., ::-1]
            idx = rev[np.argmax(vals, axis=-1)]  # last index among equal maxima
            if found is None:
                found, m = has, idx
            else:
                m = np.where(found, m, idx)
                found = found | has
        if found is None:
            continue
        li, ti, gi = lanes_l[found], lanes_t[found], m[found]
        dt_match[li, ti, d] = gt_ids_f[gi]
        dt_ignore[li, ti, d] = ~regular[li, 0, gi]
        gt_match_det[li, ti, gi] = d
    return dt_match, dt_ignore, gt_match_det


def _out_of(area: np.ndarray) -> np.ndarray:
    """(A, N) bool: area outside each range (bounds inclusive, as the official test)."""
    lo = np.array([r[0] for r in AREA_RNG], dtype=np.float64)[:, None]
    hi = np.array([r[1] for r in AREA_RNG], dtype=np.float64)[:, None]
    return (area[None, :] < lo) | (area[None, :] > hi)


# --------------------------------------------------------------------------------------- per-video work
def _evaluate_video(task) -> list[VideoCategoryEval]:
    """All categories of one video. ``task`` = (video_id, (height, width), {cat: [gt dicts]},
    {cat: [(index in the results, result dict)]})."""
    if BACKEND == "c" or len(task) > 4:  # packed results (a fifth element) are read by the C path only
        return _evaluate_video_compiled(task, c=True)
    return _evaluate_video_compiled(task) if BACKEND == "numba" else _evaluate_video_pycocotools(task)


def _order_detections(cats, dts_by_cat):
    """Detections of the video, category by category (ascending), each category's top 100 by score (stable):
    list of (index, result), (D,) scores, and the number kept per category."""
    n = [len(dts_by_cat.get(c, ())) for c in cats]
    dl = [x for cat in cats for x in dts_by_cat.get(cat, ())]
    if not dl:
        return [], np.zeros(0), n
    cat = np.repeat(np.arange(len(cats)), n)
    scores = np.array([r["score"] for _, r in dl], dtype=np.float64)
    order = np.lexsort((-scores, cat))  # stable: per category, as np.argsort(-scores, kind="mergesort")
    if max(n) > MAX_DETS[-1]:
        order = order[np.arange(len(order)) - np.repeat(np.cumsum(n) - n, n) < MAX_DETS[-1]]
        n = [min(k, MAX_DETS[-1]) for k in n]
    return [dl[i] for i in order], scores[order], n


def _size_error(masks: list, shape) -> str | None:
    """The message for the first mask (in sorted order of sizes) whose ``size`` differs from the video's."""
    bad = sorted({tuple(m["size"]) for m in masks} - {tuple(shape)})
    return f"a mask of size {list(bad[0])} in a video of size {list(shape)}" if bad else None


def _frame_index(seqs: list[list]):
    """Per-frame masks of N sequences: (N, T) int64 index of each present mask in ``masks`` (-1 where ``None``
    or past the sequence's end), (N,) lengths, and the present masks in row-major order."""
    lengths = np.fromiter(map(len, seqs), np.int64, len(seqs))
    T = int(lengths.max()) if len(seqs) else 0
    flat = list(chain.from_iterable(seqs))
    present = np.frombuffer(bytes(map(is_not, flat, repeat(None))), dtype=np.bool_)
    masks = [x for x in flat if x is not None]
    index = np.full((len(seqs), T), -1, dtype=np.int64)
    if len(masks):
        if len(flat) == len(seqs) * T:  # all sequences of the same length
            index.ravel()[present] = np.arange(len(masks))
        else:
            row = np.repeat(np.arange(len(seqs)), lengths)
            col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            index[row[present], col[present]] = np.arange(len(masks))
    return index, lengths, masks


def decode_video_masks(video_id, shape, masks: list, n_gt_masks: int, need=None, c: bool = False):
    """Every mask of a video (``masks``: RLE dicts, the ``n_gt_masks`` ground-truth masks first) decoded in one
    compiled call (see :class:`RleTable`; ``need``: which masks keep their intervals, default all), after
    checking that each is a compressed RLE of the video's ``shape`` (height, width) covering all its pixels.
    ``c``: decoded by the C kernels (:class:`avis.evaluation.rle_c.Table`, same fields)."""
    table = _decode_checked(video_id, shape, masks, n_gt_masks, need, c)
    _check_totals(video_id, shape, table)
    return table


def _check_totals(video_id, shape, table) -> None:
    if shape is not None and len(table.totals) and (table.totals != shape[0] * shape[1]).any():
        raise InputError(f"video {video_id}: an RLE does not cover {shape[0]}x{shape[1]} pixels")


def _decode_checked(video_id, shape, masks: list, n_gt_masks: int, need, c: bool):
    counts = _mask_counts(video_id, shape, masks, n_gt_masks)
    try:
        if c:
            return rle_c.Table([rle_c.strings_part(counts, np.ones(len(counts), np.bool_) if need is None else need)],
                               height=shape[0] if shape is not None else 0)
        return _nb().RleTable(counts, need, reuse=True)
    except (UnicodeEncodeError, TypeError):
        raise InputError(f"video {video_id}: a mask's RLE counts are not a compressed RLE string") from None


def _mask_counts(video_id, shape, masks: list, n_gt_masks: int) -> list:
    """The ``counts`` of ``masks``, after checking that each has them and the video's ``size``."""
    not_rle = f"video {video_id}: a mask's RLE counts are not a compressed RLE string"
    try:
        counts = list(map(itemgetter("counts"), masks))
    except (KeyError, TypeError):
        raise InputError(not_rle) from None
    if shape is not None:
        try:
            ok = list(map(itemgetter("size"), masks)).count(list(shape)) == len(masks)
        except (KeyError, TypeError):
            raise InputError(f"video {video_id}: a mask has no size") from None
        if not ok:
            if msg := _size_error(masks[:n_gt_masks], shape):
                raise InputError(msg)
            if msg := _size_error(masks[n_gt_masks:], shape):
                raise InputError(f"video {video_id}: predictions: {msg}")
    return counts


def _evaluate_video_compiled(task, c: bool = False) -> list[VideoCategoryEval]:
    """:func:`_evaluate_video` with the numba kernels (the C ones with ``c``): every mask string of the video
    decoded in one call, then one call for the IoU blocks and the matching of all categories; per category, the
    entries are views. A fifth element of ``task``, the results' :class:`~avis.evaluation.rle_c.MaskPack`: the
    detections' masks come from it (detections are then (index, result) with index the pack's sequence)."""
    video_id, shape, gts_by_cat, dts_by_cat = task[:4]
    pack = task[4] if len(task) > 4 else None
    cats = sorted(set(gts_by_cat) | set(dts_by_cat))
    n_gc = [len(gts_by_cat.get(c, ())) for c in cats]
    gts = [g for cat in cats for g in gts_by_cat.get(cat, ())]
    dts, d_scores, n_dc = _order_detections(cats, dts_by_cat)
    G, D = len(gts), len(dts)
    # ground truth then detections, category by category: slices [lo, hi) per category
    g_hi = list(running_sum(n_gc))
    d_hi = list(running_sum(n_dc))
    g_lo = [h - k for h, k in zip(g_hi, n_gc)]
    d_lo = [h - k for h, k in zip(d_hi, n_dc)]
    # intervals only for ground truth and detections of a category that has ground truth here
    d_need = np.repeat(np.array(n_gc, dtype=np.int64) > 0, n_dc)
    if pack is None:
        index, lengths, masks = _frame_index([g["segmentations"] for g in gts] + [r["segmentations"] for _, r in dts])
        g_idx, d_idx = index[:G], index[G:]  # rows of the decoded table: ground-truth masks first
        n_gm = int((g_idx >= 0).sum())
        need = np.concatenate([np.ones(n_gm, np.bool_), np.repeat(d_need, (d_idx >= 0).sum(1))])
        table = decode_video_masks(video_id, shape, masks, n_gm, need, c=c)
    else:
        g_idx, g_len, masks = _frame_index([g["segmentations"] for g in gts])
        n_gm = len(masks)
        rows, d_len = pack.rows(np.array([i for i, _ in dts], dtype=np.int64))
        present = rows >= 0
        d_idx = np.full(rows.shape, -1, dtype=np.int64)
        d_idx[present] = n_gm + np.arange(int(present.sum()))  # table rows after the ground truth's
        lengths = np.concatenate([g_len, d_len])
        try:
            g_part = rle_c.strings_part(_mask_counts(video_id, shape, masks, n_gm), np.ones(n_gm, np.bool_))
        except (UnicodeEncodeError, TypeError):
            raise InputError(f"video {video_id}: a mask's RLE counts are not a compressed RLE string") from None
        table = rle_c.Table([g_part, rle_c.pack_part(pack, rows[present], np.repeat(d_need, present.sum(1)))],
                            height=shape[0])
        _check_totals(video_id, shape, table)
    # average area over non-empty frames (the official ``if a`` filter)
    dt_out = _dt_out_of_range(np.append(table.areas, 0)[d_idx])  # -1 (absent) reads the appended 0
    gt_ids, gt_crowd, gt_ignore = _gt_arrays(gts)
    det_index = np.array([i for i, _ in dts], dtype=np.int64)
    iou_off = [0, *running_sum(a * b for a, b in zip(n_dc, n_gc))]
    A, T = len(AREA_RNG), len(IOU_THRS)
    ious = np.zeros(iou_off[-1])
    dt_match = np.zeros((A, T, D))
    dt_ignore = np.zeros((A, T, D), dtype=bool)
    gt_match_det = np.full((A, T, G), -1, dtype=np.int64)
    if len(ious):
        args = (d_idx, lengths[G:], g_idx, lengths[:G], table.areas, table.starts, table.ends, table.iv_offsets,
                np.array(d_lo), np.array(d_hi), np.array(g_lo), np.array(g_hi), np.array(iou_off),
                gt_ids.astype(np.float64), gt_crowd, np.ascontiguousarray(gt_ignore), IOU_THRS, ious, dt_match,
                dt_ignore, gt_match_det)
        if c:
            rle_c.video_match(*args, cols=table.cols)
        else:
            _nb().video_match_kernel(*args)
    dt_ignore |= (dt_match == 0) & dt_out[:, None, :]
    return [VideoCategoryEval(video_id, cat, d_scores[dl:dh], det_index[dl:dh], gt_ids[gl:gh], gt_crowd[gl:gh],
                              ious[o : o + (dh - dl) * (gh - gl)].reshape(dh - dl, gh - gl), dt_match[:, :, dl:dh],
                              dt_ignore[:, :, dl:dh], gt_ignore[:, gl:gh], gt_match_det[:, :, gl:gh])
            for cat, dl, dh, gl, gh, o in zip(cats, d_lo, d_hi, g_lo, g_hi, iou_off)]


def _dt_out_of_range(areas: np.ndarray) -> np.ndarray:
    """Per-frame areas (D, T) -> (A, D): the detection's average area over its non-empty frames (the official
    ``if a`` filter) is outside each area range."""
    n_frames = (areas > 0).sum(1)
    return _out_of(np.where(n_frames > 0, areas.sum(1) / np.maximum(n_frames, 1), 0.0))


def _gt_arrays(gts: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> ground-truth ids (G,), crowd flags (G,), ignored per area range (A, G): crowd or outside the range."""
    ids = np.array([g["id"] for g in gts], dtype=np.int64)
    crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], dtype=bool)
    area = np.array([average_area(g.get("areas") or []) for g in gts], dtype=np.float64)
    return ids, crowd, crowd[None, :] | _out_of(area)


def _evaluate_video_pycocotools(task) -> list[VideoCategoryEval]:
    """:func:`_evaluate_video` without numba: areas and intersections by batched pycocotools calls."""
    video_id, shape, gts_by_cat, dts_by_cat = task
    cats = sorted(set(gts_by_cat) | set(dts_by_cat))
    gts, g_cat, dts, d_cat, d_scores = [], [], [], [], []
    for cat in cats:
        gl = gts_by_cat.get(cat, [])
        gts += gl
        g_cat += [cat] * len(gl)
        dl = dts_by_cat.get(cat, [])
        scores = np.array([r["score"] for _, r in dl], dtype=np.float64)
        order = np.argsort(-scores, kind="mergesort")[: MAX_DETS[-1]]
        dts += [dl[i] for i in order]
        d_cat += [cat] * len(order)
        d_scores.append(scores[order])
    g_cat, d_cat = np.array(g_cat, dtype=np.int64), np.array(d_cat, dtype=np.int64)
    d_scores = np.concatenate(d_scores) if d_scores else np.zeros(0)
    gtub = Tubes([g["segmentations"] for g in gts], shape)
    try:
        dtub = Tubes([r["segmentations"] for _, r in dts], shape)
    except InputError as e:
        raise InputError(f"video {video_id}: predictions: {e}") from None
    dt_out = _dt_out_of_range(dtub.areas)
    gt_ids_all, gt_crowd_all, gt_ignore_all = _gt_arrays(gts)
    det_index = np.array([i for i, _ in dts], dtype=np.int64)
    out = []
    # detections and ground truth were listed category by category (ascending): slices, not masks
    d_lo, d_hi = np.searchsorted(d_cat, cats, "left"), np.searchsorted(d_cat, cats, "right")
    g_lo, g_hi = np.searchsorted(g_cat, cats, "left"), np.searchsorted(g_cat, cats, "right")
    A, T = len(AREA_RNG), len(IOU_THRS)
    # categories with detections only: all unmatched, ignored where outside the area range (read-only views)
    no_match = np.zeros((A, T, len(d_cat)))
    out_ignore = np.repeat(dt_out[:, None, :], T, axis=1)
    no_ious, no_gt_ig, no_gt_det = np.zeros((len(d_cat), 0)), np.zeros((A, 0), bool), np.zeros((A, T, 0), np.int64)
    for ci, cat in enumerate(cats):
        if g_lo[ci] == g_hi[ci]:
            sl = slice(d_lo[ci], d_hi[ci])
            out.append(VideoCategoryEval(video_id, cat, d_scores[sl], det_index[sl], gt_ids_all[:0],
                                         gt_crowd_all[:0], no_ious[sl], no_match[:, :, sl], out_ignore[:, :, sl],
                                         no_gt_ig, no_gt_det))
            continue
        dr, gc = np.arange(d_lo[ci], d_hi[ci]), np.arange(g_lo[ci], g_hi[ci])
        inter = intersections(dtub, gtub, dr, gc)
        ious = tube_iou(dtub, gtub, inter, dr, gc)
        gt_ids, gt_crowd, gt_ignore = gt_ids_all[gc], gt_crowd_all[gc], gt_ignore_all[:, gc]
        dt_match, dt_ignore, gt_match_det = greedy_match(ious, gt_ids, gt_crowd, gt_ignore, IOU_THRS)
        dt_ignore |= (dt_match == 0) & dt_out[:, None, dr]
        out.append(VideoCategoryEval(video_id, cat, d_scores[dr], det_index[dr], gt_ids, gt_crowd, ious,
                                     dt_match, dt_ignore, gt_ignore, gt_match_det))
    return out

# ------------------------------------------------------------------------------------------- preparation
def group_inputs(gt: dict, results: list[dict], path: str | None = None):
    """Video ids (sorted), category ids (sorted) and per-video tasks in the official order."""
    vid_ids = sorted({v["id"] for v in gt["videos"]})
    cat_ids = sorted({c["id"] for c in gt["categories"]})
    known_v, known_c = set(vid_ids), set(cat_ids)
    gts = defaultdict(lambda: defaultdict(list))
    for a in gt["annotations"]:
        if a["video_id"] in known_v and a["category_id"] in known_c:
            gts[a["video_id"]][a["category_id"]].append(a)
    dts = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(results):
        if r["video_id"] not in known_v:
            raise InputError(f"result {i}: video_id {r['video_id']} is not in the ground truth", path)
        if r["category_id"] in known_c:  # the official loader drops unknown categories silently
            dts[r["video_id"]][r["category_id"]].append((i, r))
    shapes = {v["id"]: (int(v["height"]), int(v["width"])) for v in gt["videos"]}
    tasks = [(v, shapes[v], dict(gts[v]), dict(dts[v])) for v in vid_ids if v in gts or v in dts]
    return vid_ids, cat_ids, tasks


# ------------------------------------------------------------------------------------------- accumulation
@dataclass
class Evaluation:
    """Everything the scorer computed: the official ``precision`` (T, R, K, A, M) and ``recall``
    (T, K, A, M) arrays, the 12 summary numbers, and the per-(video, category) matchings."""

    video_ids: list[int]
    category_ids: list[int]
    category_names: dict[int, str]
    entries: list[VideoCategoryEval]
    precision: np.ndarray
    recall: np.ndarray
    stats: dict[str, float]

    def per_category(self) -> list[dict]:
        """AP / AP50 / AP75 / AR100 per category (area all, 100 detections), -1 where undefined."""
        rows = []
        for k, cat in enumerate(self.category_ids):
            p = self.precision[:, :, k, 0, -1]
            r = self.recall[:, k, 0, -1]
            rows.append({
                "category_id": cat, "name": self.category_names.get(cat, str(cat)),
                "AP": _mean_defined(p), "AP50": _mean_defined(p[0]), "AP75": _mean_defined(p[5]),
                "AR100": _mean_defined(r),
                "instances": int(sum(int((~e.gt_ignore[0]).sum()) for e in self.entries if e.category_id == cat)),
            })
        return rows


def _mean_defined(s: np.ndarray) -> float:
    s = s[s > -1]
    return -1.0 if len(s) == 0 else float(np.mean(s))


def accumulate(entries: list[VideoCategoryEval], cat_ids: list[int], area_idx=None, maxdet_idx=None):
    """The official ``accumulate``: precision (T, R, K, A, M), recall (T, K, A, M); entries in video order."""
    T, R, K, A, M = len(IOU_THRS), len(REC_THRS), len(cat_ids), len(AREA_RNG), len(MAX_DETS)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    if BACKEND in ("numba", "c"):
        _accumulate_compiled(entries, cat_ids, range(A) if area_idx is None else area_idx,
                             range(M) if maxdet_idx is None else maxdet_idx, precision, recall)
        return precision, recall
    by_cat = defaultdict(list)
    for e in entries:
        by_cat[e.category_id].append(e)
    area_idx = range(A) if area_idx is None else area_idx
    maxdet_idx = range(M) if maxdet_idx is None else maxdet_idx
    for k, cat in enumerate(cat_ids):
        E = by_cat.get(cat)
        if not E:
            continue
        npig = np.count_nonzero(np.concatenate([e.gt_ignore for e in E], axis=1) == 0, axis=1)  # (A,)
        for m in maxdet_idx:
            max_det = MAX_DETS[m]
            scores = np.concatenate([e.scores[:max_det] for e in E])
            inds = np.argsort(-scores, kind="mergesort")
            dtm_all = np.concatenate([e.dt_match[:, :, :max_det] for e in E], axis=2)[:, :, inds]  # (A, T, N)
            dt_ig_all = np.concatenate([e.dt_ignore[:, :, :max_det] for e in E], axis=2)[:, :, inds]
            for a in area_idx:
                if npig[a] == 0:
                    continue
                precision[:, :, k, a, m], recall[:, k, a, m] = _pr_curve(dtm_all[a], dt_ig_all[a], int(npig[a]))
    return precision, recall


def _accumulate_compiled(entries, cat_ids, area_idx, maxdet_idx, precision, recall) -> None:
    """:func:`accumulate` in one pass: the detections of all entries concatenated (entries order), sorted by
    (category, descending score) with a stable sort, which within a category is the official order; the
    curves by :func:`rle_kernels.accumulate_kernel` (or its C port)."""
    kpos = {c: k for k, c in enumerate(cat_ids)}
    E = [e for e in entries if e.category_id in kpos]
    K = len(cat_ids)
    if not E:
        return
    ek = np.array([kpos[e.category_id] for e in E], dtype=np.int64)
    nd = np.array([len(e.scores) for e in E], dtype=np.int64)
    ng = np.array([len(e.gt_ids) for e in E], dtype=np.int64)
    scores = np.concatenate([e.scores for e in E])
    matched = np.concatenate([e.dt_match for e in E], axis=2) != 0  # (A, T, N)
    ignored = np.concatenate([e.dt_ignore for e in E], axis=2)
    regular = ~np.concatenate([e.gt_ignore for e in E], axis=1)  # (A, sum G)
    gk = np.repeat(ek, ng)
    npig = np.stack([np.bincount(gk, weights=regular[a], minlength=K) for a in range(len(regular))], 1)
    npig = npig.astype(np.int64)  # (K, A), counts: exact
    has_entry = np.zeros(K, dtype=bool)
    has_entry[ek] = True
    det_k = np.repeat(ek, nd)
    rank = np.arange(len(scores)) - np.repeat(np.cumsum(nd) - nd, nd)  # position within its entry
    areas = np.asarray(list(area_idx), dtype=np.int64)
    ks = np.arange(K)
    for m in maxdet_idx:
        sel = np.flatnonzero(rank < MAX_DETS[m])
        order = sel[np.lexsort((-scores[sel], det_k[sel]))]
        sorted_k = det_k[order]
        lo = np.where(has_entry, np.searchsorted(sorted_k, ks, "left"), -1)
        hi = np.searchsorted(sorted_k, ks, "right")
        kernel = rle_c.accumulate if BACKEND == "c" else _nb().accumulate_kernel
        kernel(lo, hi, np.ascontiguousarray(matched[:, :, order]), np.ascontiguousarray(ignored[:, :, order]), npig,
               REC_THRS, precision, recall, m, areas)


def _pr_curve(dtm: np.ndarray, dt_ig: np.ndarray, npig: int):
    """(T, R) interpolated precision and (T,) final recall from sorted matches, as the official loop."""
    T, nd = dtm.shape
    tps = np.logical_and(dtm, np.logical_not(dt_ig))
    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
    tp_sum = np.cumsum(tps, axis=1).astype(dtype=np.float64)
    fp_sum = np.cumsum(fps, axis=1).astype(dtype=np.float64)
    q = np.zeros((T, len(REC_THRS)))
    if nd == 0:
        return q, np.zeros(T)
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # monotone from the right
    for t in range(T):
        inds = np.searchsorted(rc[t], REC_THRS, side="left")
        ok = inds < nd
        q[t, ok] = pr[t, inds[ok]]
    return q, rc[:, -1].copy()


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """The 12 official summary numbers (mean over defined entries, -1 if none)."""

    def one(ap, iou_thr=None, area="all", max_dets=100):
        a = AREA_LBL.index(area)
        m = MAX_DETS.index(max_dets)
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRS)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    vals = [one(1), one(1, iou_thr=0.5), one(1, iou_thr=0.75), one(1, area="small"), one(1, area="medium"),
            one(1, area="large"), one(0, max_dets=1), one(0, max_dets=10), one(0), one(0, area="small"),
            one(0, area="medium"), one(0, area="large")]
    return dict(zip(STAT_KEYS, vals))


# ------------------------------------------------------------------------------------------------ driver
_TASKS = None


class _Progress:
    """``desc: k/N videos`` on stderr, redrawn at most 5 times a second, the last state kept on its line.

    (tqdm's import alone, with its ``importlib.metadata`` version lookup, is a tenth of ``avis score``'s CPU time
    on a 100-video case.)"""

    def __init__(self, total: int, desc: str, enabled: bool):
        import sys
        import time

        self.total, self.desc, self.n, self.enabled = total, desc, 0, enabled
        self._clock, self._stream, self._shown = time.monotonic, sys.stderr, -1.0
        self.t0 = self._clock()

    def update(self) -> None:
        self.n += 1
        if self.enabled and (self.n == self.total or self._clock() - self._shown >= 0.2):
            self._draw()

    def _draw(self) -> None:
        self._shown = now = self._clock()
        rate = self.n / max(now - self.t0, 1e-9)
        self._stream.write(f"\r{self.desc}: {self.n}/{self.total} videos ({rate:.1f} videos/s)")
        self._stream.flush()

    def close(self) -> None:
        if self.enabled:
            if self._shown < 0:
                self._draw()
            self._stream.write("\n")
            self._stream.flush()


def _run_task_index(i: int):
    fn, tasks = _TASKS
    return fn(tasks[i])


def map_videos(fn, tasks: list, workers: int = 1, progress: bool = False, desc: str = "score") -> list:
    """``[fn(task) for task in tasks]``, in ``workers`` forked processes when more than one (each task a
    video); a progress bar when ``progress``."""
    workers = max(1, min(workers, os.cpu_count() or 1, len(tasks) or 1))
    bar = _Progress(len(tasks), desc, progress)
    out = []
    if workers == 1:
        for task in tasks:
            out.append(fn(task))
            bar.update()
    else:
        # fork: the workers inherit the grouped inputs instead of receiving them pickled
        global _TASKS
        _TASKS = (fn, tasks)
        try:
            import multiprocessing as mp  # here: a single-process run does not pay for its import
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                chunk = max(1, len(tasks) // (4 * workers))
                for res in pool.map(_run_task_index, range(len(tasks)), chunksize=chunk):
                    out.append(res)
                    bar.update()
        finally:
            _TASKS = None
    bar.close()
    return out


def match_all(gt: dict, results: list[dict], workers: int = 1, progress: bool = False,
              path: str | None = None):
    """Per-(video, category) matchings in video-id order (parallel over videos when ``workers`` > 1)."""
    vid_ids, cat_ids, tasks = group_inputs(gt, results, path)
    pack = getattr(results, "mask_pack", None)
    if pack is not None and BACKEND == "c":  # packed results: the masks from their byte buffer
        tasks = [(*t, pack) for t in tasks]
    entries = [e for video in map_videos(_evaluate_video, tasks, workers, progress) for e in video]
    return vid_ids, cat_ids, entries


def evaluate(gt: dict, results: list[dict], workers: int = 1, progress: bool = False,
             path: str | None = None) -> Evaluation:
    """Score ``results`` against ``gt`` with the YouTube-VIS protocol."""
    vid_ids, cat_ids, entries = match_all(gt, results, workers, progress, path)
    precision, recall = accumulate(entries, cat_ids)
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
    return Evaluation(vid_ids, cat_ids, names, entries, precision, recall, summarize(precision, recall))
