"""The joins between commands (issue 23): what one command writes, the next one reads.

infer -> export (videos.json, overlays without --videos), export ytvis-zip -> score / ttest, results that do
not belong to the ground truth, the synthetic splits' video ids, a run's config used from another folder,
infer on a JPEG frame folder and at the checkpoint's frame rate."""

from __future__ import annotations

import copy
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from avis import cli as avis_cli
from avis.io import masks as mask_io
from avis.io import ytvis


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    from data_tools.synth import generate

    generate(root, num_videos=6, seed=2, size=(64, 48), frames=6, fps=6.0, progress=False)
    return root


def _perfect_results(gt: dict) -> list[dict]:
    """Each annotation as a prediction (score 0.9): AP 1."""
    return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 0.9,
             "segmentations": a["segmentations"]} for a in gt["annotations"]]


def test_synthetic_splits_do_not_share_video_ids(synth):
    train = ytvis.load_annotations(synth / "train.json")
    val = ytvis.load_annotations(synth / "val.json")
    t_ids, v_ids = [v["id"] for v in train["videos"]], [v["id"] for v in val["videos"]]
    assert t_ids == list(range(1, len(t_ids) + 1))
    assert v_ids == list(range(len(t_ids) + 1, len(t_ids) + len(v_ids) + 1))
    assert {a["video_id"] for a in val["annotations"]} <= set(v_ids)


def test_score_and_ttest_read_the_results_zip_of_export(synth, tmp_path, capsys):
    gt = ytvis.load_annotations(synth / "val.json")
    res = tmp_path / "res.json"
    ytvis.save_json(_perfect_results(gt), res)
    assert avis_cli.main(["export", "--results", str(res), "--gt", str(synth / "val.json"), "--format",
                          "ytvis-zip", "--out", str(tmp_path / "exp")]) == 0
    zipped = tmp_path / "exp" / "results.zip"
    assert zipfile.ZipFile(zipped).namelist() == ["results.json"]
    capsys.readouterr()
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(zipped),
                          "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(1.0)
    # the zip gives what the JSON gives
    def key(r):
        return r["video_id"], r["category_id"], r["score"], json.dumps(r["segmentations"])

    assert sorted(map(key, ytvis.load_results(zipped, gt))) == sorted(map(key, ytvis.load_results(res, gt)))
    assert avis_cli.main(["ttest", "--gt", str(synth / "val.json"), "--a", str(zipped), "--b", str(res),
                          "--json", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["headline"]["diff"] == pytest.approx(0.0)
    # a zip without results.json at its root is one line naming it
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("sub/results.json", "[]")
    capsys.readouterr()
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(other)]) == 2
    err = capsys.readouterr().err
    assert "other.zip: the zip has no results.json at its root (it holds 'sub/results.json')" in err


def test_results_of_the_other_split_are_refused(synth, tmp_path, capsys):
    val = ytvis.load_annotations(synth / "val.json")
    res = tmp_path / "val_res.json"
    ytvis.save_json(_perfect_results(val), res)
    assert avis_cli.main(["score", "--gt", str(synth / "train.json"), "--results", str(res)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "these results are for other videos" in err and "val_res.json" in err


def _shift_away(rle: dict | None) -> dict | None:
    """The mask moved to where it cannot touch the objects: the complement of every object is not
    available per frame here, so a 2x2 square in a corner no synthetic object reaches is used."""
    if rle is None:
        return None
    h, w = rle["size"]
    m = np.zeros((h, w), np.uint8)
    m[:2, :2] = 1
    return mask_io.encode(m)


def test_results_that_overlap_nothing_are_an_error_and_partial_ones_a_warning(synth, tmp_path, capsys, caplog):
    gt = ytvis.load_annotations(synth / "val.json")
    objects = np.zeros((gt["videos"][0]["height"], gt["videos"][0]["width"]), bool)
    for a in gt["annotations"]:
        for s in a["segmentations"]:
            if s is not None:
                objects |= mask_io.decode(s).astype(bool)
    assert not objects[:2, :2].any()  # the corner the moved masks take is free of objects
    # same video ids and frame counts as the ground truth, masks nowhere near its objects
    wrong = [{**r, "segmentations": [_shift_away(s) for s in r["segmentations"]]} for r in _perfect_results(gt)]
    path = tmp_path / "wrong.json"
    ytvis.save_json(wrong, path)
    capsys.readouterr()
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(path)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("avis score: error: ") and "wrong.json: no predicted mask overlaps any object" in last
    assert avis_cli.main(["ttest", "--gt", str(synth / "val.json"), "--a", str(path), "--b", str(path)]) == 2
    assert "no predicted mask overlaps any object" in capsys.readouterr().err
    # results for one of the two val videos: scored, with a warning naming the video left out
    vids = sorted(v["id"] for v in gt["videos"])
    part = [r for r in _perfect_results(gt) if r["video_id"] == vids[0]]
    path = tmp_path / "part.json"
    ytvis.save_json(part, path)
    with caplog.at_level(logging.WARNING):
        assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(path)]) == 0
    assert f"part.json: the results have predictions for 1 of the 2 annotated ground-truth videos; videos {vids[1]} " \
           "have none" in caplog.text


def test_results_with_other_frame_counts_say_so(synth, tmp_path, capsys):
    gt = ytvis.load_annotations(synth / "val.json")
    res = copy.deepcopy(_perfect_results(gt))
    for r in res:
        r["segmentations"] = r["segmentations"][:-1]
    path = tmp_path / "short.json"
    ytvis.save_json(res, path)
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(path)]) == 2
    assert "these results are for other videos: 2 of their 2 videos have another number of frames than the " \
           "ground truth's" in capsys.readouterr().err
