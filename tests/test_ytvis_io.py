"""YTVIS annotation / result I/O: every validation problem one by one, segmentation round trips, the shipped
taxonomies, schemas and samples."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from avis.errors import InputError
from avis.io import masks as mask_io
from avis.io import ytvis
from tests.conftest import REPO

ANN = REPO / "annotations"
H, W, T = 12, 16, 3


def _mask(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _gt() -> dict:
    """A valid annotation dict: two videos of 3 frames, two annotations, two categories."""
    segs = [mask_io.encode(_mask(2, 6, 3 + t, 8 + t)) for t in range(T)]
    return {
        "videos": [
            {"id": 1, "width": W, "height": H, "length": T, "file_names": [f"a/{i}.jpg" for i in range(T)],
             "fps": 5.0, "video_file": "a.mp4"},
            {"id": 2, "width": W, "height": H, "length": T, "file_names": [f"b/{i}.jpg" for i in range(T)],
             "frame_times": [0.0, 0.2, 0.4]},
        ],
        "annotations": [
            {"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": segs,
             "areas": [mask_io.area(s) for s in segs], "bboxes": [mask_io.bbox(s) for s in segs]},
            {"id": 2, "video_id": 2, "category_id": 2, "iscrowd": 0, "segmentations": [None, segs[1], segs[2]],
             "areas": [None, 20, 20], "bboxes": [None, [4, 2, 5, 4], [5, 2, 5, 4]]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _results() -> list[dict]:
    segs = [mask_io.encode(_mask(2, 6, 3 + t, 9 + t)) for t in range(T)]
    return [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": segs},
            {"video_id": 2, "category_id": 2, "score": 0.4, "segmentations": [None, segs[1], None]}]


def test_valid_inputs_have_no_problems():
    assert ytvis.validate_annotations(_gt()) == []
    assert ytvis.validate_results(_results(), _gt()) == []
    assert ytvis.validate_results(_results()) == []


def _edit_gt(fn):
    d = _gt()
    fn(d)
    return ytvis.validate_annotations(d)


def _ann(d, i=0):
    return d["annotations"][i]


# (edit, substrings that the single message must contain)
GT_CASES = {
    "segmentations_too_short": (lambda d: _ann(d)["segmentations"].pop(),
                                ["video 1 annotation 1", "frame count mismatch", "2 segmentations", "3 frames"]),
    "areas_too_long": (lambda d: _ann(d)["areas"].append(5), ["video 1 annotation 1", "4 areas", "3 frames"]),
    "bboxes_too_short": (lambda d: _ann(d, 1)["bboxes"].pop(), ["video 2 annotation 2", "2 bboxes", "3 frames"]),
    "length_vs_file_names": (lambda d: d["videos"][0]["file_names"].pop(),
                             ["video 1", "frame count mismatch", "length 3", "2 file_names"]),
    "frame_times_vs_length": (lambda d: d["videos"][1]["frame_times"].append(0.6),
                              ["video 2", "frame count mismatch", "4 frame_times"]),
    "unknown_category": (lambda d: _ann(d).update(category_id=7), ["video 1 annotation 1", "unknown category_id 7"]),
    "rle_size": (lambda d: _ann(d)["segmentations"].__setitem__(1, mask_io.encode(np.zeros((H, W + 1), np.uint8))),
                 ["video 1 annotation 1 frame 1", "RLE size [12, 17]", "[12, 16]"]),
    "duplicate_video": (lambda d: d["videos"].append(dict(d["videos"][0])), ["video 1", "duplicate video id"]),
    "duplicate_annotation": (lambda d: _ann(d, 1).update(id=1), ["annotation 1", "duplicate annotation id"]),
    "duplicate_category": (lambda d: d["categories"].append({"id": 1, "name": "cow"}), ["category 1", "duplicate category id"]),
    "unknown_video": (lambda d: _ann(d).update(video_id=9), ["annotation 1", "unknown video_id 9"]),
    "missing_height": (lambda d: d["videos"][0].pop("height"), ["video 1", "missing 'height'"]),
    "string_width": (lambda d: d["videos"][0].update(width="16"), ["video 1", "'width' must be a positive integer"]),
    "missing_segmentations": (lambda d: _ann(d).pop("segmentations"), ["video 1 annotation 1", "missing 'segmentations'"]),
    "missing_category_id": (lambda d: _ann(d).pop("category_id"), ["annotation 1", "missing 'category_id'"]),
    "string_annotation_id": (lambda d: _ann(d).update(id="1"), ["annotations[0]", "'id' must be an integer"]),
    "missing_video_id": (lambda d: _ann(d).pop("video_id"), ["annotation 1", "missing 'video_id'"]),
    "bad_iscrowd": (lambda d: _ann(d).update(iscrowd=2), ["annotation 1", "'iscrowd' must be 0 or 1"]),
    "nan_area": (lambda d: _ann(d)["areas"].__setitem__(2, float("nan")), ["annotation 1 frame 2", "area must be"]),
    "short_bbox": (lambda d: _ann(d)["bboxes"].__setitem__(0, [1, 2, 3]), ["annotation 1 frame 0", "bbox must be"]),
    "bad_fps": (lambda d: d["videos"][0].update(fps=0), ["video 1", "'fps' must be a positive number"]),
    "frame_times_not_increasing": (lambda d: d["videos"][1].update(frame_times=[0.0, 0.4, 0.2]),
                                   ["video 2 frame 2", "frame_times must increase"]),
    "absolute_video_file": (lambda d: d["videos"][0].update(video_file="/etc/passwd"),
                            ["video 1", "'video_file'", "relative"]),
    "dotdot_audio_file": (lambda d: d["videos"][0].update(audio_file="../x.wav"), ["video 1", "'audio_file'"]),
    "no_frames_info": (lambda d: [d["videos"][0].pop(k) for k in ("length", "file_names")],
                       ["video 1", "needs 'file_names'"]),
    "short_polygon": (lambda d: _ann(d)["segmentations"].__setitem__(0, [[1.0, 2.0, 3.0, 4.0]]),
                      ["video 1 annotation 1 frame 0", "polygon 0", "got 4"]),
    "empty_polygon_list": (lambda d: _ann(d)["segmentations"].__setitem__(0, []),
                           ["annotation 1 frame 0", "empty polygon list"]),
    "uncompressed_bad_sum": (lambda d: _ann(d)["segmentations"].__setitem__(0, {"size": [H, W], "counts": [5, 5]}),
                             ["annotation 1 frame 0", "sum to 10", "192"]),
    "bad_counts_chars": (lambda d: _ann(d)["segmentations"].__setitem__(0, {"size": [H, W], "counts": "ab~"}),
                         ["annotation 1 frame 0", "characters"]),
    "segmentation_wrong_type": (lambda d: _ann(d)["segmentations"].__setitem__(0, "mask.png"),
                                ["annotation 1 frame 0", "segmentation is str"]),
    "rle_missing_counts": (lambda d: _ann(d)["segmentations"].__setitem__(0, {"size": [H, W]}),
                           ["annotation 1 frame 0", "needs 'size' and 'counts'"]),
    "category_without_name": (lambda d: d["categories"][0].pop("name"), ["category 1", "'name' must be a string"]),
    "missing_top_level": (lambda d: d.pop("categories"), ["missing top-level 'categories'"]),
}


@pytest.mark.parametrize("case", sorted(GT_CASES))
def test_each_annotation_problem_gives_one_clear_message(case):
    edit, parts = GT_CASES[case]
    problems = _edit_gt(edit)
    assert len(problems) == 1, problems
    for p in parts:
        assert p in problems[0], (p, problems[0])


def _edit_res(fn, with_gt=True):
    r = _results()
    fn(r)
    return ytvis.validate_results(r, _gt() if with_gt else None)


RES_CASES = {
    "unknown_video": (lambda r: r[0].update(video_id=5), ["result 0 video 5", "unknown video_id"]),
    "unknown_category": (lambda r: r[1].update(category_id=3), ["result 1 video 2", "unknown category_id 3"]),
    "nan_score": (lambda r: r[0].update(score=float("nan")), ["result 0 video 1", "'score' must be a finite number"]),
    "inf_score": (lambda r: r[0].update(score=float("inf")), ["result 0", "finite"]),
    "string_score": (lambda r: r[0].update(score="0.9"), ["result 0", "'score'"]),
    "missing_score": (lambda r: r[1].pop("score"), ["result 1", "missing 'score'"]),
    "frame_count": (lambda r: r[0]["segmentations"].append(None),
                    ["result 0 video 1", "frame count mismatch", "4 segmentations", "3 frames"]),
    "rle_size": (lambda r: r[1]["segmentations"].__setitem__(1, mask_io.encode(np.zeros((H + 2, W), np.uint8))),
                 ["result 1 video 2 frame 1", "does not match"]),
    "video_id_type": (lambda r: r[0].update(video_id="1"), ["result 0", "'video_id' must be an integer"]),
    "not_an_object": (lambda r: r.append([1, 2]), ["result 2", "must be an object"]),
}


@pytest.mark.parametrize("case", sorted(RES_CASES))
def test_each_result_problem_gives_one_clear_message(case):
    edit, parts = RES_CASES[case]
    problems = _edit_res(edit)
    assert len(problems) == 1, problems
    for p in parts:
        assert p in problems[0], (p, problems[0])


# the column-at-a-time check that lets a valid results file skip the per-entry validation: it may only say
# "valid" when the full validation finds nothing
FAST_EXTRA_CASES = {
    "float_size": lambda r: r[0]["segmentations"][0].update(size=[float(H), float(W)]),
    "bool_category": lambda r: r[0].update(category_id=True),
    "bad_rle_char": lambda r: r[0]["segmentations"][0].update(counts="ab~"),
    "list_counts": lambda r: r[0]["segmentations"].__setitem__(0, mask_io.to_uncompressed(r[0]["segmentations"][0])),
    "polygon": lambda r: r[0]["segmentations"].__setitem__(0, [[1, 1, 5, 1, 5, 5]]),
    "extra_key": lambda r: r[0]["segmentations"][0].update(extra=1),
    "huge_int_score": lambda r: r[0].update(score=10**400),
    "huge_video_id": lambda r: r[0].update(video_id=2**64 + 1),
    "not_unicode_ascii": lambda r: r[0]["segmentations"][0].update(counts="é"),
    "size_missing": lambda r: r[0]["segmentations"][0].pop("size"),
}


@pytest.mark.parametrize("case", sorted(set(RES_CASES) | set(FAST_EXTRA_CASES)))
def test_fast_results_check_never_passes_what_validation_refuses(case):
    r = _results()
    (RES_CASES[case][0] if case in RES_CASES else FAST_EXTRA_CASES[case])(r)
    if ytvis.results_certainly_valid(r, _gt()):
        assert ytvis.validate_results(r, _gt()) == []
    else:
        assert case in ("list_counts", "polygon", "extra_key") or ytvis.validate_results(r, _gt()) != []


def test_fast_results_path_loads_what_the_full_path_loads(tmp_path, monkeypatch):
    gtp, rp = tmp_path / "gt.json", tmp_path / "res.json"
    gtp.write_text(json.dumps(_gt()))
    r = _results()
    r[0]["score"] = 1  # an int score becomes a float either way
    rp.write_text(json.dumps(r))
    assert ytvis.results_certainly_valid(json.loads(rp.read_text()), _gt())
    fast = ytvis.load_results(rp, gt=gtp)
    monkeypatch.setattr(ytvis, "results_certainly_valid", lambda *a, **k: False)
    full = ytvis.load_results(rp, gt=gtp)
    assert fast == full and isinstance(fast[0]["score"], float)
    # what the typed decoder refuses (a polygon, a list-valued extra key) goes the general way, and loads
    r[0]["segmentations"][0] = [[1, 1, 5, 1, 5, 5]]
    r[1]["bboxes"] = [[1, 2, 3, 4]]
    rp.write_text(json.dumps(r))
    assert ytvis._decode_results_typed(rp.read_bytes()) is None
    assert ytvis.load_results(rp, gt=gtp)[0]["segmentations"][0]["size"] == [H, W]


def test_json_decoding_errors_and_integer_bounds(tmp_path):
    p = tmp_path / "x.json"
    for text, msg in [('{"a": [1, 2,\n ]}', "invalid JSON at line 2 column 2"), ("[1] x", "invalid JSON at line 1"),
                      ('{"a": [1,\n ' + "9" * 5000 + "]}", "an integer longer than 4300 digits \\(5000 digits\\) at "
                                                             "line 2 column 2"),
                      ("[NaN, -" + "9" * 4301 + "]", r"\(4301 digits\) at line 1 column 7")]:
        p.write_text(text)
        with pytest.raises(InputError, match=msg):
            ytvis.load_json(p)
    p.write_bytes(b'["\xff"]')
    with pytest.raises(InputError, match="not UTF-8"):
        ytvis.load_json(p)
    p.write_text('[NaN, 1.5, {"a": null}]')  # Python's parser reads what strict JSON does not, for the validators
    assert str(ytvis.load_json(p)) == "[nan, 1.5, {'a': None}]"
    d = _gt()
    d["annotations"][0]["id"] = 10**30
    problems = ytvis.validate_annotations(d)
    assert problems == ["annotations[0]: 'id' must be an integer, got 100000000000... (31 digits, beyond 64 bits)"]


def test_results_without_gt_check_structure_and_size_consistency():
    assert _edit_res(lambda r: r[0].update(video_id=5), with_gt=False) == []  # unknowable without the gt
    problems = _edit_res(lambda r: r[0]["segmentations"].__setitem__(1, mask_io.encode(np.zeros((4, 4)))),
                         with_gt=False)
    assert len(problems) == 1 and "RLE sizes differ" in problems[0]
    assert ytvis.validate_results({"not": "a list"}) != []


def test_several_problems_are_all_reported():
    d = _gt()
    d["annotations"][0]["category_id"] = 99
    d["annotations"][1]["segmentations"].pop()
    d["videos"].append(dict(d["videos"][1]))
    problems = ytvis.validate_annotations(d)
    assert len(problems) == 3, problems
    assert any("unknown category_id 99" in p for p in problems)
    assert any("duplicate video id" in p for p in problems)
    assert any("annotation 2" in p and "frame count mismatch" in p for p in problems)


def test_load_annotations_raises_naming_the_file_and_counting_problems(tmp_path):
    d = _gt()
    for a in d["annotations"]:
        a["category_id"] = 50
    d["annotations"].extend(copy.deepcopy(d["annotations"][0]) | {"id": 10 + k} for k in range(6))
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        ytvis.load_annotations(p)
    msg = str(e.value)
    assert str(p) in msg and "8 problems" in msg and "(and 3 more problems)" in msg
    assert "video 1 annotation 1: unknown category_id 50" in msg
    assert "\n" not in msg


def test_load_results_checks_against_gt(tmp_path):
    gtp, rp = tmp_path / "gt.json", tmp_path / "res.json"
    gtp.write_text(json.dumps(_gt()))
    r = _results()
    r[0]["video_id"] = 77
    rp.write_text(json.dumps(r))
    assert len(ytvis.load_results(rp)) == 2  # structurally fine
    with pytest.raises(InputError, match=r"res\.json: 1 problem: result 0 video 77: unknown video_id"):
        ytvis.load_results(rp, gt=gtp)
    rp.write_text(json.dumps({"annotations": _results()}))  # the wrapped form some tools write
    assert [x["score"] for x in ytvis.load_results(rp, gt=ytvis.load_annotations(gtp))] == [0.9, 0.4]


def test_load_json_errors_are_input_errors(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{\"videos\": [")
    with pytest.raises(InputError, match="invalid JSON at line 1"):
        ytvis.load_annotations(p)
    with pytest.raises(InputError, match="cannot read"):
        ytvis.load_annotations(tmp_path / "missing.json")
    p.write_text("[]")
    with pytest.raises(InputError, match="not a YTVIS annotation file"):
        ytvis.load_annotations(p)


# ------------------------------------------------------------------------------------------ round trips
def _rand_masks(n, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros((n, H, W), np.uint8)
    for k in range(n):
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        m[k, y:y + rng.integers(2, 5), x:x + rng.integers(2, 5)] = 1
        m[k] |= (rng.random((H, W)) < 0.05).astype(np.uint8)  # scattered pixels: many runs
    return m


@pytest.mark.parametrize("kind", ["compressed", "uncompressed", "polygon"])
def test_segmentation_round_trip(tmp_path, kind):
    masks = _rand_masks(T)
    if kind == "compressed":
        segs = [mask_io.encode(m) for m in masks]
    elif kind == "uncompressed":
        segs = [mask_io.to_uncompressed(m) for m in masks]
        assert all(isinstance(s["counts"], list) and sum(s["counts"]) == H * W for s in segs)
    else:
        # axis-aligned squares as polygons; pycocotools rasterises the square [x0, x1] x [y0, y1]
        # to the pixels x0..x1-1, y0..y1-1
        boxes = [(1, 5, 2, 9), (3, 9, 0, 4), (0, 12, 10, 16)]
        segs = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for (y0, y1, x0, x1) in boxes]
        masks = np.stack([_mask(*b) for b in boxes])
    d = _gt()
    d["annotations"][0]["segmentations"] = segs
    for key in ("areas", "bboxes"):
        d["annotations"][0].pop(key)
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(d))
    loaded = ytvis.load_annotations(p)
    out = loaded["annotations"][0]
    assert all(isinstance(s["counts"], str) for s in out["segmentations"])
    np.testing.assert_array_equal(mask_io.decode_many(out["segmentations"]), masks)
    assert out["areas"] == [int(m.sum()) for m in masks]
    # save -> load again gives identical JSON
    ytvis.save_annotations(loaded, tmp_path / "again.json")
    again = ytvis.load_annotations(tmp_path / "again.json")
    assert again == json.loads(json.dumps(loaded))


def test_results_round_trip_with_uncompressed_and_polygon_inputs(tmp_path):
    r = _results()
    masks = mask_io.decode_many(r[0]["segmentations"])
    r[0]["segmentations"][1] = mask_io.to_uncompressed(masks[1])
    r[1]["segmentations"][1] = [[2, 2, 6, 2, 6, 5, 2, 5]]
    p = tmp_path / "res.json"
    p.write_text(json.dumps(r))
    gt = _gt()
    loaded = ytvis.load_results(p, gt=gt)
    np.testing.assert_array_equal(mask_io.decode_many(loaded[0]["segmentations"]), masks)
    np.testing.assert_array_equal(mask_io.decode(loaded[1]["segmentations"][1]), _mask(2, 5, 2, 6))
    with pytest.raises(InputError, match="polygon needs the frame size"):
        ytvis.load_results(p)  # a polygon-only result without the gt has no size
    ytvis.save_results(loaded, tmp_path / "out.json")
    assert ytvis.load_results(tmp_path / "out.json", gt=gt) == loaded


def test_save_refuses_invalid_data(tmp_path):
    d = _gt()
    d["annotations"][0]["category_id"] = 42
    with pytest.raises(ValueError, match="unknown category_id 42"):
        ytvis.save_annotations(d, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_to_uncompressed_matches_coco_definition():
    m = np.zeros((2, 3), np.uint8)
    m[0, 0] = m[1, 0] = m[1, 2] = 1  # column-major: 1 1 0 0 0 1
    assert mask_io.to_uncompressed(m) == {"size": [2, 3], "counts": [0, 2, 3, 1]}
    assert mask_io.to_uncompressed(np.zeros((2, 2))) == {"size": [2, 2], "counts": [4]}


def test_frame_times_from_fps_or_list():
    d = _gt()
    assert ytvis.frame_times(d["videos"][0]) == [0.0, 0.2, 0.4]
    assert ytvis.frame_times(d["videos"][1]) == [0.0, 0.2, 0.4]
    assert ytvis.frame_times({"length": 2}) is None
    assert ytvis.frame_times({"length": 2}, fps=2) == [0.0, 0.5]


# ---------------------------------------------------------------------------- taxonomies, schemas, samples
@pytest.mark.parametrize("name,first,last,has", [("ytvis2019", "person", "tennis_racket", "sedan"),
                                                 ("ytvis2021", "airplane", "zebra", "flying_disc")])
def test_taxonomies(name, first, last, has):
    tax = json.loads((ANN / "taxonomies" / f"{name}.json").read_text())
    cats = tax["categories"]
    assert [c["id"] for c in cats] == list(range(1, 41))
    assert len({c["name"] for c in cats}) == 40
    assert cats[0]["name"] == first and cats[-1]["name"] == last
    assert has in {c["name"] for c in cats}


def test_samples_pass_the_validator_and_load():
    gt = ytvis.load_annotations(ANN / "samples" / "ytvis_annotations.sample.json")
    kinds = {type(s["counts"]).__name__ for a in json.loads(
        (ANN / "samples" / "ytvis_annotations.sample.json").read_text())["annotations"]
        for s in a["segmentations"] if isinstance(s, dict)}
    assert kinds == {"str", "list"}  # the sample shows both RLE forms (and a polygon)
    res = ytvis.load_results(ANN / "samples" / "ytvis_results.sample.json", gt=gt)
    assert len(res) == 3


def _schema_validator(name):
    jsonschema = pytest.importorskip("jsonschema")  # in the dev extra
    schema = json.loads((ANN / "schemas" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_samples_pass_the_json_schemas():
    v = _schema_validator("ytvis_annotations")
    v.validate(json.loads((ANN / "samples" / "ytvis_annotations.sample.json").read_text()))
    v.validate(_gt())
    r = _schema_validator("ytvis_results")
    r.validate(json.loads((ANN / "samples" / "ytvis_results.sample.json").read_text()))
    r.validate(_results())


@pytest.mark.parametrize("case", ["short_polygon", "string_width", "missing_segmentations", "bad_iscrowd",
                                  "absolute_video_file", "bad_counts_chars"])
def test_json_schema_rejects_what_the_validator_rejects(case):
    v = _schema_validator("ytvis_annotations")
    d = _gt()
    GT_CASES[case][0](d)
    assert not v.is_valid(d)


def test_results_schema_rejects_missing_score():
    r = _schema_validator("ytvis_results")
    bad = _results()
    bad[0].pop("score")
    assert not r.is_valid(bad)
