"""The C fast path of the YouTube-VIS scorer (``avis score``), and its packed results.

``avis score`` used to spend most of its time before and around the scoring: building a Python ``dict`` and
``str`` for each of the ~400,000 masks of a YouTube-VIS-sized results file, validating them one by one, and
starting numba (its import, its CPU target and its cache loads: about half a second of CPU before the first
mask is decoded). The C extension ``avis.evaluation._rlec`` (``avis/evaluation/_rlec.c``, built by
``pip install``; plain CPython API) removes all three:

* :func:`load_packed_results`: msgspec decodes the results file with each entry's ``segmentations`` left as raw
  JSON text (a ``msgspec.Raw`` view, no object per mask), and the C scanner checks those texts while copying
  the RLE strings into one byte buffer (:class:`MaskPack`). It accepts only what the general loader certainly
  accepts unchanged (every mask null or ``{"size": [h, w], "counts": "..."}`` of the video's size and
  pycocotools' characters, one per frame); for anything else it returns ``None`` and the caller takes
  :func:`avis.io.ytvis.load_results`, which names the problems.
* ports of the numba kernels of :mod:`avis.evaluation.rle_kernels` (the RLE decoding, the video IoU and
  greedy matching of all categories of a video, the accumulation), the same integers and floats; importing this
  module imports neither numba nor SciPy. One addition: masks with one foreground interval per column (marked
  while decoding, :attr:`Table.cols`) intersect by a sum over their shared columns instead of a merge.

Without the extension (no C compiler at install time) :data:`AVAILABLE` is false and the scorer uses the numba
kernels, or pycocotools without numba; ``tests/test_score_fast.py`` compares the paths.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

try:
    from avis.evaluation import _rlec
except ImportError:  # built without a C compiler: the numba / pycocotools paths
    _rlec = None

AVAILABLE = _rlec is not None and not os.environ.get("AVIS_NO_C_SCORER")


class MaskPack:
    """Many per-frame RLE sequences with their ``counts`` strings in one byte buffer.

    ``buf`` (uint8) holds the strings, mask ``k`` at ``buf[offsets[k]:offsets[k + 1]]``; sequence ``i`` has
    ``lengths[i]`` frames, frame ``t`` being mask ``frame_mask[starts[i] + t]`` (-1: null)."""

    def __init__(self, buf, offsets, frame_mask, starts, lengths):
        self.buf, self.offsets, self.frame_mask = buf, offsets, frame_mask
        self.starts, self.lengths = starts, lengths

    def rows(self, seqs) -> tuple[np.ndarray, np.ndarray]:
        """(N, T) mask numbers of the sequences ``seqs`` (-1 where null or past a sequence's end), (N,) lengths."""
        seqs = np.asarray(seqs, dtype=np.int64)
        lengths = self.lengths[seqs]
        T = int(lengths.max()) if len(seqs) else 0
        t = np.arange(T)
        inside = t[None, :] < lengths[:, None]
        idx = np.where(inside, self.starts[seqs][:, None] + t[None, :], 0)
        rows = np.where(inside, self.frame_mask[idx] if len(self.frame_mask) else -1, -1)
        return rows, lengths

    def subset(self, keep: np.ndarray) -> MaskPack:
        """The sequences ``keep`` (an index or boolean array), sharing the buffers."""
        return MaskPack(self.buf, self.offsets, self.frame_mask, self.starts[keep], self.lengths[keep])


class LazySegmentations(Sequence):
    """A result's ``segmentations`` as the general loader would give them (a list of ``{"size": [h, w],
    "counts": str}`` / None), made from the :class:`MaskPack` on first use (the scorer's C path reads the pack
    itself; the pairing check and :meth:`PackedResults.materialize` read these)."""

    __slots__ = ("_pack", "_start", "_length", "_size", "_value")

    def __init__(self, pack: MaskPack, start: int, length: int, size: list[int]):
        self._pack, self._start, self._length, self._size, self._value = pack, start, length, size, None

    def _get(self) -> list:
        if self._value is None:
            p = self._pack
            ks = p.frame_mask[self._start : self._start + self._length].tolist()
            self._value = [None if k < 0 else
                           {"size": list(self._size), "counts": p.buf[p.offsets[k] : p.offsets[k + 1]].tobytes().decode()}
                           for k in ks]
        return self._value

    def __len__(self) -> int:
        return len(self._get())

    def __getitem__(self, i):
        return self._get()[i]

    def __eq__(self, other):
        return list(self._get()) == (list(other) if isinstance(other, Sequence) else other)

    def __repr__(self) -> str:
        return repr(self._get())


class PackedResults(list):
    """The results list of :func:`load_packed_results`: the usual dicts (``segmentations`` decoded lazily) plus
    ``mask_pack``, whose sequence ``i`` is entry ``i``'s masks."""

    mask_pack: MaskPack

    def filter(self, keep) -> PackedResults:
        """The entries where ``keep`` (booleans, one per entry) is true, with their masks."""
        keep = np.asarray(keep, dtype=bool)
        out = PackedResults(r for r, k in zip(self, keep) if k)
        out.mask_pack = self.mask_pack.subset(keep)
        return out

    def materialize(self) -> list[dict]:
        """Plain dicts with list ``segmentations`` (for writers and JSON)."""
        return [{**r, "segmentations": list(r["segmentations"])} for r in self]


@lru_cache(maxsize=1)
def _entry_decoder():
    import msgspec

    # a results entry; other keys are ignored (the general loader does not look at them either)
    entry = msgspec.defstruct("Entry", [("video_id", int), ("category_id", int), ("score", float),
                                        ("segmentations", msgspec.Raw)])
    return msgspec.json.Decoder(list[entry])


def load_packed_results(raw, gt: dict) -> PackedResults | None:
    """The results JSON text ``raw`` checked against the normalised ground truth ``gt`` and packed, or ``None``
    when the C extension is missing or the file is not certainly valid in the common form (then
    :func:`avis.io.ytvis.load_results` loads it, or names its problems). Gives the numbers
    :func:`avis.io.ytvis.load_results` would: same entries, same scores, same masks.

    ``raw``: ``bytes`` (the RLE strings are copied to a new buffer), or a writable uint8 array that becomes the
    pack's buffer (the strings are compacted to its start, in place: no second copy of a file of a hundred MB;
    the array's text is then gone, also when ``None`` is returned)."""
    if not AVAILABLE:
        return None
    import msgspec

    from avis.io.ytvis import _gc_paused, _gt_index

    try:
        with _gc_paused():
            entries = _entry_decoder().decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    videos, cats = _gt_index(gt)
    n = len(entries)
    try:
        vids = [e.video_id for e in entries]
        cids = [e.category_id for e in entries]
        if not (set(vids) <= videos.keys() and set(cids) <= cats):
            return None
        shape = [videos[v] for v in vids]
        heights = np.fromiter((s[0] for s in shape), np.int64, n)
        widths = np.fromiter((s[1] for s in shape), np.int64, n)
        lengths = np.fromiter((s[2] for s in shape), np.int64, n)
    except (TypeError, OverflowError):  # a video without a known size or length
        return None
    scores = np.fromiter((e.score for e in entries), np.float64, n)
    if not (np.abs(scores) < 1e308).all():  # finite and within the general check's range
        return None
    raws = [e.segmentations for e in entries]
    del entries
    frames = int(lengths.sum())
    if isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.flags.writeable and raw.flags.c_contiguous:
        buf = raw  # compacted in place
    else:
        buf = np.empty(sum(map(len, raws)), np.uint8)  # the strings are shorter than their JSON text
    offsets = np.empty(frames + 1, np.int64)
    frame_mask = np.empty(frames, np.int64)
    scanned = _rlec.scan_segmentations(raws, lengths, heights, widths, buf, 0, offsets, 0, frame_mask)
    if scanned is None:
        return None
    n_masks, used = scanned
    del raws  # views of the text, which is now overwritten where compacted in place
    starts = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    pack = MaskPack(buf[:used], offsets[: n_masks + 1], frame_mask, starts, lengths)
    out = PackedResults({"video_id": v, "category_id": c, "score": s,
                         "segmentations": LazySegmentations(pack, st, ln, [h, w])}
                        for v, c, s, st, ln, h, w in zip(vids, cids, scores.tolist(), starts.tolist(),
                                                        lengths.tolist(), heights.tolist(), widths.tolist()))
    out.mask_pack = pack
    return out


# ------------------------------------------------------------------------------------------------ kernels
_SCRATCH = threading.local()
class Table:
    """Decoded masks (as :class:`avis.evaluation.rle_kernels.RleTable`): ``areas``, ``totals`` (pixels covered,
    h * w when well-formed), ``starts`` / ``ends`` / ``iv_offsets`` (foreground intervals of the masks whose
    intervals were asked for)."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], reuse: bool = True,
                 height: int = 0):
        """``parts``: (uint8 buffer, lo, hi, need) per source; the masks of all parts in order. ``reuse``: the
        intervals go to per-thread buffers that the next such table of the thread overwrites (a video's table,
        used and dropped at once: allocating several MB per video costs more in page faults than decoding).
        ``height``: the frames' height, for ``cols``: per mask, the first column of its intervals when it has
        exactly one per column over consecutive columns (then :func:`video_match` sums the overlaps column by
        column instead of merging), else -1 (always -1 without ``height``)."""
        n = sum(len(lo) for _, lo, _, _ in parts)
        # a kept interval takes two codes of one character at least: a bound on the intervals of each mask
        cap = sum(int((hi - lo)[need].sum()) // 2 + len(lo) for _, lo, hi, need in parts) + 1
        if reuse:
            starts, ends = getattr(_SCRATCH, "intervals", (np.empty(0, np.int32), np.empty(0, np.int32)))
            if len(starts) < cap:
                starts, ends = np.empty(cap + cap // 2, np.int32), np.empty(cap + cap // 2, np.int32)
                _SCRATCH.intervals = (starts, ends)
            self.starts, self.ends = starts, ends
        else:
            self.starts, self.ends = np.empty(cap, np.int32), np.empty(cap, np.int32)
        self.iv_offsets = np.empty(n + 1, np.int64)
        self.areas, self.totals = np.empty(n, np.int64), np.empty(n, np.int64)
        self.cols = np.empty(n, np.int64)
        k = n_iv = 0
        for buf, lo, hi, need in parts:
            m = len(lo)
            n_iv = _rlec.decode(buf, lo, hi, need, self.starts, self.ends, self.iv_offsets[k : k + m + 1],
                                self.areas[k : k + m], self.totals[k : k + m], n_iv, self.cols[k : k + m],
                                int(height))
            if n_iv < 0:  # pragma: no cover - the bound above holds for any string
                raise RuntimeError("RLE interval capacity exceeded")
            k += m
        if not parts:
            self.iv_offsets[0] = 0


def strings_part(counts: list, need) -> tuple:
    """A :class:`Table` part from ``counts`` strings (str or bytes)."""
    try:
        joined = "".join(counts).encode("ascii")
    except TypeError:  # some counts are bytes
        joined = b"".join(c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts)
        lens = [len(c) for c in counts]
    else:
        lens = list(map(len, counts))
    hi = np.cumsum(np.asarray(lens, np.int64)) if counts else np.zeros(0, np.int64)
    lo = hi - np.asarray(lens, np.int64) if counts else np.zeros(0, np.int64)
    buf = np.frombuffer(joined, np.uint8) if joined else np.zeros(1, np.uint8)
    return buf, lo, hi, np.ascontiguousarray(need, np.bool_)


def pack_part(pack: MaskPack, masks: np.ndarray, need) -> tuple:
    """A :class:`Table` part from the masks ``masks`` of ``pack``."""
    return pack.buf, pack.offsets[masks], pack.offsets[masks + 1], np.ascontiguousarray(need, np.bool_)


def video_match(d_idx, d_len, g_idx, g_len, areas, starts, ends, iv_offsets, d_lo, d_hi, g_lo, g_hi, iou_off,
                gt_ids, gt_crowd, gt_ignore, thresholds, ious, dt_match, dt_ignore, gt_match_det, cols=None) -> None:
    """:func:`avis.evaluation.rle_kernels.video_match_kernel` in C (same arguments; ``areas`` and the intervals
    of a :class:`Table`, and its ``cols``: without them every intersection is a merge of intervals)."""
    cols = np.full(len(areas), -1, np.int64) if cols is None else np.ascontiguousarray(cols, np.int64)
    d_idx, g_idx = np.ascontiguousarray(d_idx, np.int64), np.ascontiguousarray(g_idx, np.int64)
    D, Td = d_idx.shape
    G, Tg = g_idx.shape
    A, T = dt_match.shape[:2]
    i64 = [np.ascontiguousarray(x, np.int64) for x in (d_lo, d_hi, g_lo, g_hi, iou_off)]
    _rlec.video_match(d_idx, np.ascontiguousarray(d_len, np.int64), g_idx, np.ascontiguousarray(g_len, np.int64),
                      np.ascontiguousarray(areas, np.int64), _positions(starts), _positions(ends),
                      np.ascontiguousarray(iv_offsets, np.int64), *i64,
                      np.ascontiguousarray(gt_ids, np.float64), np.ascontiguousarray(gt_crowd, np.bool_),
                      np.ascontiguousarray(gt_ignore, np.bool_), np.ascontiguousarray(thresholds, np.float64),
                      _out(ious, np.float64), _out(dt_match, np.float64), _out(dt_ignore, np.bool_),
                      _out(gt_match_det, np.int64), cols, D, Td, G, Tg, len(i64[0]), A, T, len(areas))


def greedy_match(ious, gt_ids, gt_crowd, gt_ignore, thresholds, dt_match, dt_ignore, gt_match_det) -> None:
    """:func:`avis.evaluation.rle_kernels.greedy_match_kernel` in C."""
    ious = np.ascontiguousarray(ious, np.float64)
    D, G = ious.shape
    L, T = gt_ignore.shape[0], len(thresholds)
    _rlec.greedy_match(ious, np.ascontiguousarray(gt_ids, np.float64), np.ascontiguousarray(gt_crowd, np.bool_),
                       np.ascontiguousarray(gt_ignore, np.bool_), np.ascontiguousarray(thresholds, np.float64),
                       _out(dt_match, np.float64), _out(dt_ignore, np.bool_), _out(gt_match_det, np.int64),
                       D, G, L, T)


def accumulate(lo_k, hi_k, dt_matched, dt_ignore, npig, rec_thrs, precision, recall, m, areas) -> None:
    """:func:`avis.evaluation.rle_kernels.accumulate_kernel` in C."""
    dt_matched = np.ascontiguousarray(dt_matched, np.bool_)
    A, T, N = dt_matched.shape
    K = len(lo_k)
    _rlec.accumulate(np.ascontiguousarray(lo_k, np.int64), np.ascontiguousarray(hi_k, np.int64), dt_matched,
                     np.ascontiguousarray(dt_ignore, np.bool_), np.ascontiguousarray(npig, np.int64),
                     np.ascontiguousarray(rec_thrs, np.float64), _out(precision, np.float64),
                     _out(recall, np.float64), np.ascontiguousarray(areas, np.int64), m, K, A, T, N, len(rec_thrs),
                     precision.shape[-1])


def _positions(a: np.ndarray) -> np.ndarray:
    """Interval bounds as the C kernels take them (int32: see ``decode_masks`` in _rlec.c)."""
    if a.dtype != np.int32 and len(a) and (a.max() > np.iinfo(np.int32).max or a.min() < 0):
        raise ValueError("interval positions beyond int32")
    return np.ascontiguousarray(a, np.int32)


def _out(a: np.ndarray, dtype) -> np.ndarray:
    """An output array must be written in place: C-contiguous and of the kernel's type, or it is a caller's bug."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"output array must be C-contiguous {np.dtype(dtype).name}, got {a.dtype}")
    return a
