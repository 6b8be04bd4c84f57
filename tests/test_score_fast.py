"""The C fast path of the scorer (``avis.evaluation._rlec`` through ``avis.evaluation.rle_c``) against its
fallbacks: the decoder against pycocotools' integers (plain-Python ``rleFrString``), the C matching and
accumulation entry for entry against the pycocotools path (and numba's), the packed results loader against the
general loader (same entries, same numbers; every uncertain form refused so that the general path names its
problems), ``avis score`` with and without the C scorer, and the column-at-a-time annotation checks against the
per-frame ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import avis.evaluation.ytvis_eval as ye
from avis.errors import InputError
from avis.evaluation import rle_c
from avis.io import masks as mask_io
from avis.io import ytvis
from tests.test_score_kernels import FIELDS, _case, _py_decode, _shapes

REPO = Path(__file__).resolve().parents[1]
needs_c = pytest.mark.skipif(not rle_c.AVAILABLE, reason="the C extension is not built (pip install -e . with a C "
                             "compiler)")


def _table(counts, need):
    return rle_c.Table([rle_c.strings_part(counts, need)], reuse=False)


def _intervals(table, k):
    lo, hi = table.iv_offsets[k], table.iv_offsets[k + 1]
    return list(zip(table.starts[lo:hi].tolist(), table.ends[lo:hi].tolist()))


# ------------------------------------------------------------------------------------------------ decoder
@needs_c
def test_c_decode_equals_pycocotools_integers():
    rng = np.random.default_rng(3)
    masks = _shapes(rng, 61, 47, 80)
    counts = [r["counts"] for r in mask_io.encode_many(np.stack(masks))]
    alphabet = [chr(c) for c in range(48, 112)]
    for _ in range(300):  # any string: wrapping counts, dangling continuations, characters outside the code
        n = int(rng.integers(0, 60))
        s = "".join(rng.choice(alphabet[:32] if rng.random() < 0.4 else alphabet + ["!", "p", "~"], n))
        if max((len(run) for run in "".join(c if c >= "P" or c in "!p~" else " " for c in s).split()), default=0) < 12:
            counts.append(s)
    counts.append("0" * 9 + "1" * 13)
    need = rng.random(len(counts)) < 0.7
    # two parts (the scorer decodes the ground truth and the predictions from two buffers into one table)
    half = len(counts) // 2
    table = rle_c.Table([rle_c.strings_part(counts[:half], need[:half]),
                         rle_c.strings_part(counts[half:], need[half:])], reuse=False)
    ref = [_py_decode(s) for s in counts]
    assert table.areas.tolist() == [r[0] for r in ref]
    assert table.totals.tolist() == [r[1] for r in ref]
    for k, r in enumerate(ref):
        expected = [iv for iv in r[2] if iv[1] < 2**31] if need[k] else []
        assert _intervals(table, k) == expected, counts[k]
    assert [int(m.sum()) for m in masks] == table.areas[: len(masks)].tolist()


@needs_c
def test_c_decode_of_a_mask_beyond_int32_keeps_its_total():
    """A mask past 2^31 pixels keeps no intervals (int32) but its area and total, which the scorer refuses as
    not covering the frame."""
    from pycocotools import mask as mask_utils

    h = w = 1 << 16
    big = mask_utils.frPyObjects({"size": [h, w], "counts": [2**31 + 5, 10, h * w - 2**31 - 15]}, h, w)
    small = mask_io.encode(np.eye(5, dtype=np.uint8))
    table = _table([big["counts"].decode(), small["counts"]], np.ones(2, bool))
    assert table.areas.tolist() == [10, 5] and table.totals.tolist() == [h * w, 25]
    assert _intervals(table, 0) == [] and len(_intervals(table, 1)) == 5


# ------------------------------------------------------------------------------------ matching, accumulation
def _evaluate(monkeypatch, backend, gt, results):
    monkeypatch.setattr(ye, "BACKEND", backend)
    return ye.evaluate(gt, results)


def _assert_same(a, b):
    assert len(a.entries) == len(b.entries)
    for ea, eb in zip(a.entries, b.entries):
        for f in FIELDS:
            x, y = getattr(ea, f), getattr(eb, f)
            assert np.shape(x) == np.shape(y) and np.array_equal(x, y), (f, ea.video_id, ea.category_id)
    assert np.array_equal(a.precision, b.precision) and np.array_equal(a.recall, b.recall)
    assert a.stats == b.stats


@needs_c
@pytest.mark.parametrize("seed", range(6))
def test_c_path_equals_the_fallbacks_entry_for_entry(seed, monkeypatch):
    gt, results = _case(np.random.default_rng(seed))
    c = _evaluate(monkeypatch, "c", gt, results)
    _assert_same(c, _evaluate(monkeypatch, "pycocotools", gt, results))
    if ye.NUMBA:
        _assert_same(c, _evaluate(monkeypatch, "numba", gt, results))
    assert sum(len(e.scores) == 100 for e in c.entries) > 0  # the top-100 cut happened
    monkeypatch.setattr(ye, "BACKEND", "c")
    p, r = ye.accumulate(c.entries, c.category_ids, area_idx=[0], maxdet_idx=[2])
    assert np.array_equal(p[..., 0, 2], c.precision[..., 0, 2]) and (p[..., 1:, :] == -1).all()


@needs_c
def test_c_greedy_matches_numpy_lanes(monkeypatch):
    rng = np.random.default_rng(5)
    for _ in range(200):
        D, G = int(rng.integers(0, 12)), int(rng.integers(0, 6))
        ious = rng.choice([0.0, 0.3, 0.5, 0.55, 0.75, 0.9, 1.0], (D, G)) if rng.random() < 0.5 else rng.random((D, G))
        crowd = rng.random(G) < 0.2
        ignore = crowd[None, :] | (rng.random((4, G)) < 0.3)
        got = {}
        for backend in ("c", "pycocotools"):
            monkeypatch.setattr(ye, "BACKEND", backend)
            got[backend] = ye.greedy_match(ious, np.arange(1, G + 1), crowd, ignore, ye.IOU_THRS)
        for x, y in zip(got["c"], got["pycocotools"]):
            assert np.array_equal(x, y)


@needs_c
def test_c_bad_counts_are_input_errors(monkeypatch):
    monkeypatch.setattr(ye, "BACKEND", "c")
    g = mask_io.encode(np.ones((4, 5), np.uint8))
    gt = {"videos": [{"id": 1, "height": 4, "width": 5, "length": 1}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [g],
                           "areas": [20]}]}
    for seg, match in [({"size": [4, 5], "counts": "0é"}, "compressed RLE"), ({"size": [4, 5]}, "compressed RLE"),
                       ({"size": [4, 5], "counts": "04"}, "does not cover"),
                       ({"size": [5, 4], "counts": g["counts"]}, "video 1: predictions: a mask of size")]:
        with pytest.raises(InputError, match=match):
            ye.evaluate(gt, [{"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [seg]}])


# ------------------------------------------------------------------------------------------ packed results
def _files(tmp_path, seed=0, n_videos=6, edit=None):
    """A ground truth and results pair written as JSON (every result one mask or null per frame, as the
    loaders require); ``edit(results)`` changes the results' JSON objects before writing."""
    gt, results = _case(np.random.default_rng(seed), n_videos=n_videos)
    for c in gt["categories"]:
        c["name"] = f"class {c['id']}"
    T = gt["videos"][0]["length"]
    for r in results:
        r["segmentations"] = (r["segmentations"] + [None] * T)[:T]
    if edit is not None:
        edit(results)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    return tmp_path / "gt.json", tmp_path / "res.json"


def _packed(gt_p, res_p, in_place=False):
    """The ground truth and the packed results (``in_place``: compacted in the array the file was read into, as
    ``avis score`` does; else copied from ``bytes``)."""
    gt = ytvis.load_annotations(gt_p)
    raw = ytvis.read_results_buffer(res_p) if in_place else ytvis.read_results_bytes(res_p)
    if in_place:
        assert isinstance(raw, np.ndarray)
    packed = rle_c.load_packed_results(raw, gt)
    if in_place and packed is not None:
        assert np.shares_memory(packed.mask_pack.buf, raw)  # no second buffer
    return gt, packed


@needs_c
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("in_place", [False, True])
def test_packed_results_score_as_the_general_loader(tmp_path, seed, in_place, monkeypatch):
    gt_p, res_p = _files(tmp_path, seed)
    gt, packed = _packed(gt_p, res_p, in_place)
    assert packed is not None and packed.mask_pack is not None
    general = ytvis.load_results(res_p, gt=gt)
    assert packed.materialize() == general  # same entries, same scores, same masks
    c = _evaluate(monkeypatch, "c", gt, packed)
    assert len(packed.mask_pack.offsets) - 1 == sum(s is not None for r in general for s in r["segmentations"])
    _assert_same(c, _evaluate(monkeypatch, "pycocotools", gt, general))
    # a score threshold keeps the entries and their masks together
    keep = [r["score"] > 0.5 for r in packed]
    monkeypatch.setattr(ye, "BACKEND", "c")
    _assert_same(ye.evaluate(gt, packed.filter(keep)),
                 _evaluate(monkeypatch, "pycocotools", gt, [r for r, k in zip(general, keep) if k]))


@needs_c
@pytest.mark.parametrize("in_place", [False, True])
def test_packed_results_read_escaped_backslashes(tmp_path, in_place):
    """'\\' is one of pycocotools' characters; JSON writes it escaped, and the scanner copies it unescaped."""
    gt_p, res_p = _files(tmp_path)
    data = json.loads(res_p.read_text())
    odd = {"size": [24, 32], "counts": "\\0\\"}  # well-formed for the loader (the scorer would refuse its total)
    first = data[0]["segmentations"].index(None) if None in data[0]["segmentations"] else 0
    data[0]["segmentations"][first] = odd
    res_p.write_text(json.dumps(data))
    assert '"\\\\0\\\\"' in res_p.read_text()
    gt, packed = _packed(gt_p, res_p, in_place)
    assert packed is not None
    assert packed.materialize() == ytvis.load_results(res_p, gt=gt)
    pack = packed.mask_pack
    k = pack.frame_mask[pack.starts[0] + first]
    assert bytes(pack.buf[pack.offsets[k] : pack.offsets[k + 1]]) == b"\\0\\"


def _set(key, value, where=lambda r: r):
    def edit(results):
        where(results[1])[key] = value
    return edit


def _seg0(r):
    return next(s for s in r["segmentations"] if s is not None)


@needs_c
@pytest.mark.parametrize("edit", [
    _set("score", float("nan")),
    _set("score", True),
    _set("video_id", 999),
    _set("category_id", 999),
    _set("video_id", 1.0),
    _set("segmentations", [None]),
    _set("counts", [5, 5], _seg0),
    _set("counts", "0é", _seg0),
    _set("counts", "a b", _seg0),
    _set("size", [24.0, 32], _seg0),
    _set("size", [32, 24], _seg0),
    _set("extra", 1, _seg0),
    lambda results: results[1]["segmentations"].__setitem__(0, [[1, 1, 5, 1, 5, 5]]),
], ids=["nan", "bool-score", "unknown-video", "unknown-category", "float-id", "frames", "uncompressed",
        "non-ascii", "space", "float-size", "other-size", "extra-key", "polygon"])
def test_packed_loader_leaves_every_uncertain_file_to_the_general_path(tmp_path, edit):
    gt_p, res_p = _files(tmp_path, edit=edit)
    gt = ytvis.load_annotations(gt_p)
    assert rle_c.load_packed_results(ytvis.read_results_bytes(res_p), gt) is None
    assert rle_c.load_packed_results(ytvis.read_results_buffer(res_p), gt) is None
    # (the general loader reads the valid ones, names the problems of the others)


@needs_c
def test_packed_loader_leaves_wrapped_results_to_the_general_path(tmp_path):
    gt_p, res_p = _files(tmp_path)
    res_p.write_text(json.dumps({"annotations": json.loads(res_p.read_text())}))
    gt = ytvis.load_annotations(gt_p)
    assert rle_c.load_packed_results(ytvis.read_results_bytes(res_p), gt) is None


@needs_c
def test_packed_loader_reads_unicode_escapes_only_through_the_general_path(tmp_path):
    gt_p, res_p = _files(tmp_path)
    text = res_p.read_text()
    i = text.index('"counts": "') + len('"counts": "')
    res_p.write_text(text[:i] + "\\u0030" + text[i + 1 :] if text[i] == "0" else text[:i] + "\\u00" +
                     f"{ord(text[i]):02x}" + text[i + 1 :])
    gt = ytvis.load_annotations(gt_p)
    assert rle_c.load_packed_results(ytvis.read_results_bytes(res_p), gt) is None
    assert ytvis.load_results(res_p, gt=gt)  # valid: the general loader reads it


def _score(gt_p, res_p, out, env_extra=None, code=None):
    env = {k: v for k, v in os.environ.items() if k != "AVIS_NO_C_SCORER"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})})
    args = ["score", "--gt", str(gt_p), "--results", str(res_p), "--out", str(out), "--score-threshold", "0.2"]
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "avis", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(Path(out).read_text()), p


@needs_c
def test_avis_score_with_and_without_the_c_scorer(tmp_path):
    """The whole command: the same JSON with the C scorer and with it switched off, and the C process imports
    neither numba nor SciPy (their start-up was half of the command's time)."""
    gt_p, res_p = _files(tmp_path, n_videos=4)
    probe = ("import sys, runpy; sys.argv = ['avis', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('avis', run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "print('MODULES', 'numba' in sys.modules, 'scipy' in sys.modules, 'tqdm' in sys.modules)\n")
    fast, p = _score(gt_p, res_p, tmp_path / "c.json", code=probe)
    assert "MODULES False False False" in p.stdout
    slow, _ = _score(gt_p, res_p, tmp_path / "n.json", {"AVIS_NO_C_SCORER": "1"})
    assert fast == slow and fast["AP"] > 0


def test_c_extension_is_declared_in_pyproject():
    """pyproject.toml declares the extension, optional, from the project's own C file (built by pip install with a
    compiler)."""
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["ext-modules"] == [{"name": "avis.evaluation._rlec", "sources": ["avis/evaluation/_rlec.c"],
                                    "optional": True}]
    assert (REPO / "avis" / "evaluation" / "_rlec.c").is_file()


# ---------------------------------------------------------------------------- annotations, a column at a time
def _gt_dict(seed=0):
    gt, _ = _case(np.random.default_rng(seed), n_videos=4)
    for c in gt["categories"]:
        c["name"] = f"class {c['id']}"
    for a in gt["annotations"]:
        a["bboxes"] = [None if s is None else mask_io.bbox(s) for s in a["segmentations"]]
        a["areas"] = [None if s is None else float(x) for s, x in zip(a["segmentations"], a["areas"])]
        a["sounding"] = [None if s is None else bool(i % 2) for i, s in enumerate(a["segmentations"])]
    return gt


def _per_frame_problems(data, monkeypatch):
    monkeypatch.setattr(ytvis, "_frames_certainly_valid", lambda *a: False)
    out = ytvis.validate_annotations(data)
    monkeypatch.undo()
    return out


def test_annotation_columns_certainly_valid_for_the_common_file():
    gt = _gt_dict()
    videos = {v["id"]: {"height": v["height"], "width": v["width"], "length": v["length"]} for v in gt["videos"]}
    assert ytvis._frames_certainly_valid(gt["annotations"], videos)
    assert ytvis.validate_annotations(gt) == []


@pytest.mark.parametrize("change", [
    ("segmentations", lambda s: s[:-1]),
    ("segmentations", lambda s: [{"size": [24.0, 32], "counts": "0"} if x else x for x in s]),
    ("segmentations", lambda s: [{"size": [32, 24], "counts": x["counts"]} if x else x for x in s]),
    ("segmentations", lambda s: [{**x, "counts": "0 é"} if x else x for x in s]),
    ("segmentations", lambda s: [{**x, "more": 1} if x else x for x in s], False),  # valid, not the common form
    ("areas", lambda a: [-1 if x is not None else x for x in a]),
    ("areas", lambda a: [True if x is not None else x for x in a]),
    ("areas", lambda a: [float("inf") if x is not None else x for x in a]),
    ("areas", lambda a: [10**400 if x is not None else x for x in a]),
    ("areas", lambda a: a + [1]),
    ("bboxes", lambda b: [[0, 0, -1, 2] if x is not None else x for x in b]),
    ("bboxes", lambda b: [[0, 0, 1] if x is not None else x for x in b]),
    ("bboxes", lambda b: [[-1e308, 0, 1, 1] if x is not None else x for x in b], False),  # a finite float
    ("sounding", lambda f: [1 if x is not None else x for x in f]),
    ("segmentations", lambda s: "nope"),
])
def test_annotation_columns_never_pass_what_the_per_frame_checks_refuse(change, monkeypatch):
    gt = _gt_dict(1)
    key, fn, *problem = change
    for a in gt["annotations"][1:3]:
        a[key] = fn(a[key])
    expected = _per_frame_problems(gt, monkeypatch)
    assert bool(expected) == (problem != [False])  # the change is a problem (or valid in another form)
    assert ytvis.validate_annotations(gt) == expected


@pytest.mark.parametrize("p", ["a/b.jpg", "a\\b.jpg", "/a.jpg", "\\a.jpg", "C:\\a.jpg", "C:a.jpg", "..", "a/../b",
                               "a/..b", "..a/b", "\\\\srv\\share\\a", "a:b", " x", "a//b", "./a"])
def test_relpath_fast_check_agrees_with_the_path_objects(p):
    import re
    from pathlib import PurePosixPath, PureWindowsPath

    bad = PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or ".." in re.split(r"[\\/]", p)
    assert (ytvis.check_relpath(p) is not None) == bad


@needs_c
def test_in_place_scan_refuses_a_text_before_what_it_wrote():
    """Compacting in place is safe only when each text comes after the bytes already written: texts out of
    buffer order make the scanner give up (the caller then reads the file again with the general loader)."""
    one, two = b'[{"size": [1, 4], "counts": "0200"}]', b'[{"counts": "13", "size": [1, 4]}]'
    buf = np.frombuffer(bytearray(one + two), np.uint8)
    view = memoryview(buf)

    def scan(raws):
        n = len(raws)
        offsets, frame_mask = np.empty(n + 1, np.int64), np.empty(n, np.int64)
        ones = np.ones(n, np.int64)
        return rle_c._rlec.scan_segmentations(raws, ones, ones, ones * 4, buf, 0, offsets, 0, frame_mask), offsets

    assert scan([view[len(one) :], view[: len(one)]])[0] is None  # the second text was overwritten
    buf[:] = np.frombuffer(one + two, np.uint8)
    (n_masks, used), offsets = scan([view[: len(one)], view[len(one) :]])
    assert (n_masks, used) == (2, 6) and buf[:used].tobytes() == b"020013" and offsets.tolist() == [0, 4, 6]


@needs_c
def test_masks_with_one_interval_per_column_are_marked_for_the_column_sum():
    """``Table.cols``: the first column of a mask whose intervals are one per column over consecutive columns (the
    IoU kernel then sums overlaps column by column); -1 for any other mask, and without the frame height."""
    h, w = 6, 5
    rect = np.zeros((h, w), np.uint8)
    rect[1:4, 1:3] = 1
    two_runs = rect.copy()
    two_runs[5, 1] = 1
    crossing = np.zeros((h, w), np.uint8)
    crossing[2:, 1] = 1
    crossing[:3, 2] = 1  # column 1's run continues into column 2: one interval over two columns
    gap = np.zeros((h, w), np.uint8)
    gap[1:3, [0, 2]] = 1  # columns 0 and 2, not consecutive
    full = np.ones((h, w), np.uint8)
    masks = [rect, two_runs, crossing, gap, full, np.zeros((h, w), np.uint8), rect]
    counts = [mask_io.encode(m)["counts"] for m in masks]
    need = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    table = rle_c.Table([rle_c.strings_part(counts, need)], reuse=False, height=h)
    assert table.cols.tolist() == [1, -1, -1, -1, -1, -1, -1]
    assert rle_c.Table([rle_c.strings_part(counts, need)], reuse=False).cols.tolist() == [-1] * 7
    # the full frame merges into one interval over every column: not one per column, and still exact
    assert table.areas.tolist() == [int(m.sum()) for m in masks]


@needs_c
def test_column_sum_and_merge_give_the_same_video_iou(monkeypatch):
    """The same random videos with the column sum switched off (every mask merged): identical entries."""
    gt, results = _case(np.random.default_rng(11))
    fast = _evaluate(monkeypatch, "c", gt, results)
    plain = rle_c.video_match
    monkeypatch.setattr(rle_c, "video_match", lambda *a, cols=None: plain(*a))
    _assert_same(fast, ye.evaluate(gt, results))
