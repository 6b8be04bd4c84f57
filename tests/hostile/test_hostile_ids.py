"""Integers no reader can hold: an id (or any number) of 5000 digits, and ids beyond 64 bits, in the ground truth
or the results of every command that reads them (score, ttest, export, build). One line naming the file, exit 2,
earlier outputs kept (issue 21; the shared loader, ``avis.io.ytvis.load_json``, refuses them)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.hostile import jsons
from tests.hostile.conftest import call, error_line

LONG = "7" * 5000  # Python refuses to convert more than 4300 digits; json.load raised, and nothing caught it
BIG = 10**29  # decodes, but no id column (int64) can hold it


def _with_long_int(obj, old: str, path) -> object:
    """``obj`` dumped with the first occurrence of ``old`` (a JSON fragment ending in a number) given a number
    of 5000 digits instead."""
    text = json.dumps(obj)
    assert old in text
    path.write_text(text.replace(old, old.rstrip("0123456789.") + LONG, 1))
    return path


# the first occurrence of each fragment (in the files' key order: videos, annotations, categories)
GT_LONG = {"video-id": '"id": 1', "annotation-video-id": '"video_id": 1', "category-id": '"category_id": 1',
           "rle-size": '"size": [16', "length": '"length": 3'}
RES_LONG = {"video-id": '"video_id": 1', "category-id": '"category_id": 1', "score": '"score": 0.9',
            "rle-size": '"size": [16'}


def _outputs(command, gt, results, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    if command == "score":
        return ["score", "--gt", gt, "--results", results, "--out", out / "m.json", "--metrics", "ytvis", "hota"], out
    if command == "ttest":
        return ["ttest", "--gt", gt, "--a", results, "--b", results, "--bootstrap", "0", "--json", out / "t.json"], out
    return ["export", "--gt", gt, "--results", results, "--format", "ytvis", "--out", out], out


@pytest.mark.parametrize("command", ["score", "ttest", "export"])
@pytest.mark.parametrize("case", sorted(GT_LONG))
def test_5000_digit_number_in_ground_truth(command, case, json_corpus, tmp_path, capsys):
    bad = _with_long_int(jsons.valid_gt(), GT_LONG[case], tmp_path / "gt.json")
    argv, out = _outputs(command, bad, json_corpus["results"], tmp_path)
    (out / "earlier.txt").write_text("kept")
    rc, _, err = call(capsys, *argv)
    error_line(rc, err, command, bad, r"an integer longer than 4300 digits \(5000 digits\) at line 1 column \d+")
    assert rc == 2 and sorted(p.name for p in out.iterdir()) == ["earlier.txt"]


@pytest.mark.parametrize("command", ["score", "ttest", "export"])
@pytest.mark.parametrize("case", sorted(RES_LONG))
def test_5000_digit_number_in_results(command, case, json_corpus, tmp_path, capsys):
    bad = _with_long_int(jsons.valid_results(), RES_LONG[case], tmp_path / "res.json")
    argv, out = _outputs(command, json_corpus["gt"], bad, tmp_path)
    rc, _, err = call(capsys, *argv)
    error_line(rc, err, command, bad, r"an integer longer than 4300 digits \(5000 digits\)")
    assert rc == 2 and not list(out.iterdir())


@pytest.mark.parametrize("command", ["score", "ttest", "export"])
@pytest.mark.parametrize("where", ["gt-annotation-id", "gt-video-id", "gt-category-id", "results-video-id",
                                   "results-category-id"])
def test_ids_beyond_64_bits(command, where, json_corpus, tmp_path, capsys):
    gt, results = jsons.valid_gt(), jsons.valid_results()
    if where == "gt-annotation-id":
        gt["annotations"][0]["id"] = BIG
    elif where == "gt-video-id":
        gt["videos"][0]["id"] = BIG
    elif where == "gt-category-id":
        gt["categories"][0]["id"] = BIG
    elif where == "results-video-id":
        results[0]["video_id"] = BIG
    else:
        results[0]["category_id"] = -BIG
    gt_p, res_p = tmp_path / "gt.json", tmp_path / "res.json"
    gt_p.write_text(json.dumps(gt))
    res_p.write_text(json.dumps(results))
    bad = gt_p if where.startswith("gt") else res_p
    argv, out = _outputs(command, gt_p, res_p, tmp_path)
    rc, _, err = call(capsys, *argv)
    line = error_line(rc, err, command, bad, r"must be an integer, got -?100000000000\.\.\. \(30 digits, beyond 64 bits\)")
    assert rc == 2 and len(line) < 400 and not list(out.iterdir())


def test_build_refuses_a_5000_digit_id(media, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(media["good"], videos / "a.mp4")
    shutil.copy(media["good"], videos / "b.mp4")
    bad = _with_long_int(jsons.valid_gt(media=True), '"id": 1', tmp_path / "gt.json")
    rc, _, err = call(capsys, "build", "--videos", videos, "--annotations", bad, "--out", tmp_path / "out")
    error_line(rc, err, "build", bad, r"an integer longer than 4300 digits \(5000 digits\) at line 1")
    assert rc == 2 and not (tmp_path / "out" / "manifest.json").exists()
