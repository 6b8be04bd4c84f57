"""``avis ttest`` on HOTA (issue 24 item 4): HOTA / DetA / AssA rows by the recipe-level machinery of AP, the
leave-one-video-out HOTA of the jackknife against recomputing without the video, hand-computed values (which AP
samples would not give), and the CLI's ``--metric hota``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avis.evaluation.hota import evaluate_tracking
from avis.evaluation.recipes import RunEval, compare_recipes, default_metrics, metric, two_way_test

from .test_hota import box, gt_file, res

A = [box(0, 0, 4, 4), box(0, 0, 4, 5), box(1, 1, 5, 5), box(2, 2, 6, 6)]  # one 4-frame track
B = [box(6, 5, 10, 9), box(6, 5, 10, 10), box(7, 4, 11, 9), box(8, 5, 12, 9)]  # another, elsewhere


def _gt():
    """Three videos of 4 frames, one track of category 1 each."""
    return gt_file({1: 4, 2: 4, 3: 4}, [(v, 1, A) for v in (1, 2, 3)], n_cats=1)


def _perfect(v, score=0.9):
    return res(v, 1, A, score)


def _split(v, score=0.9):
    """The track of video v covered by two predictions, two frames each (an identity switch): every detection
    right, AssA 1/2 for the track."""
    return [res(v, 1, A[:2] + [None, None], score), res(v, 1, [None, None] + A[2:], score)]


def _without(gt, results, v):
    keep = {**gt, "videos": [x for x in gt["videos"] if x["id"] != v],
            "annotations": [x for x in gt["annotations"] if x["video_id"] != v]}
    return keep, [r for r in results if r["video_id"] != v]


def test_hota_rows_by_hand_and_not_ap():
    """Arm B switches identity in video 2: TP 12 per alpha, AssA (4 + 4 / 2 + 4) / 12 = 10/12, HOTA its square
    root; without video 2 everything is perfect, without video 1 or 3 AssA = (2 + 4) / 8."""
    gt = _gt()
    b = [_perfect(1), *_split(2), _perfect(3)]
    run = RunEval(gt, b)
    hota, deta, assa = (metric(k)(run) for k in ("HOTA", "DetA", "AssA"))
    assert hota.value == pytest.approx(math.sqrt(10 / 12), abs=1e-12)
    assert deta.value == 1.0 and assa.value == pytest.approx(10 / 12, abs=1e-12)
    assert np.allclose(hota.loo, [math.sqrt(0.75), 1.0, math.sqrt(0.75)], atol=1e-12, rtol=0)
    assert np.allclose(assa.loo, [0.75, 1.0, 0.75], atol=1e-12, rtol=0) and np.array_equal(deta.loo, [1.0] * 3)
    # the AP samples of the same run are other numbers: a row made of them would not pass the lines above
    ap = metric("AP")(run)
    assert abs(ap.value - hota.value) > 0.05 and not np.allclose(ap.loo, hota.loo, atol=0.05)


def test_leave_one_video_out_equals_recomputing_without_the_video():
    """On a case with two categories, crowds, empty categories per video, id switches, false positives and a
    missed track: the jackknife values equal HOTA computed from scratch on the other videos."""
    gt = gt_file({1: 4, 2: 4, 3: 4, 4: 4},
                 [(1, 1, A), (1, 2, B), (2, 1, A), (3, 2, B), (3, 1, A, None, 1), (4, 1, B), (4, 2, A)], n_cats=3)
    results = [_perfect(1, 0.8), res(1, 2, B[:3] + [None], 0.6), *_split(2), res(2, 2, B, 0.3),
               res(3, 2, A, 0.5), res(3, 1, A, 0.7), res(4, 1, B[:2] + [None, None], 0.9), res(4, 1, A, 0.2)]
    run = RunEval(gt, results)
    for key in ("HOTA", "DetA", "AssA", "LocA"):
        s = metric(key)(run)
        full = evaluate_tracking(gt, results)[0]
        assert s.value == float(np.mean(full.class_averaged[key]))
        for k, v in enumerate(run.video_ids):
            h = evaluate_tracking(*_without(gt, results, v))[0]
            assert s.loo[k] == pytest.approx(float(np.mean(h.class_averaged[key])), abs=1e-12), (key, v)


def test_compare_recipes_on_hota_is_the_two_way_test_of_the_hota_scores():
    gt = _gt()
    a1 = [_perfect(1), _perfect(2), _perfect(3)]
    a2 = [_perfect(1), *_split(2), _perfect(3)]
    b1 = [*_split(1), *_split(2), _perfect(3)]
    b2 = [*_split(1), _perfect(2), *_split(3)]
    out = compare_recipes(gt, [a1, a2], [b1, b2], metrics=default_metrics(family="hota"))
    assert [r["metric"] for r in out["rows"]] == ["HOTA", "DetA", "AssA"] and out["headline"] is out["rows"][0]
    h = out["headline"]
    assert h["level"] == "recipe" and (h["n_a"], h["n_b"], h["n_videos"]) == (2, 2, 3) and h["iou"] == "0.05:0.95"
    # by hand: A's runs have HOTA 1 and sqrt(10/12), B's both sqrt(8/12); A is better
    assert h["values_a"] == pytest.approx([1.0, math.sqrt(10 / 12)], abs=1e-12)
    assert h["values_b"] == pytest.approx([math.sqrt(8 / 12)] * 2, abs=1e-12)
    assert h["diff"] == pytest.approx((1 + math.sqrt(10 / 12)) / 2 - math.sqrt(8 / 12), abs=1e-12) and h["diff"] > 0
    ref = two_way_test([metric("HOTA")(RunEval(gt, r)) for r in (a1, a2)],
                       [metric("HOTA")(RunEval(gt, r)) for r in (b1, b2)])
    assert {k: h[k] for k in ref} == ref  # the same machinery as AP, on the HOTA scores
    assert 0 < h["p_one_sided"] < h["p_value"] < 1
    # swapping the arms flips the sign and the one-sided p
    s = compare_recipes(gt, [b1, b2], [a1, a2], metrics=["HOTA"])["headline"]
    assert s["diff"] == pytest.approx(-h["diff"]) and s["p_one_sided"] == pytest.approx(1 - h["p_one_sided"])
    det = out["rows"][1]
    assert det["diff"] == 0 and math.isnan(det["p_value"])  # every detection right in both arms: no test
    json.dumps(out)


def test_hota_metric_names():
    assert default_metrics((0.5,)) == ["top1@0.5", "AP", "AP@0.5"]  # the default family is unchanged
    for bad in ("hota", "HOTA@0.5", "AssRe"):
        with pytest.raises(ValueError):
            metric(bad)


def test_cli_ttest_metric_hota(tmp_path, cli):
    gt = _gt()
    files = {"gt": gt, "a1": [_perfect(1), _perfect(2), _perfect(3)], "a2": [_perfect(1), *_split(2), _perfect(3)],
             "b1": [*_split(1), *_split(2), _perfect(3)], "b2": [*_split(1), _perfect(2), *_split(3)]}
    for k, v in files.items():
        (tmp_path / f"{k}.json").write_text(json.dumps(v))
    p = cli("ttest", "--gt", tmp_path / "gt.json", "--runs-a", tmp_path / "a1.json", tmp_path / "a2.json",
            "--runs-b", tmp_path / "b1.json", tmp_path / "b2.json", "--metric", "hota", "--bootstrap", "0",
            "--json", tmp_path / "o.json")
    assert p.returncode == 0, p.stderr
    assert "headline: HOTA (recipe level, 2 vs 2 seeds x 3 videos)" in p.stdout
    j = json.loads((tmp_path / "o.json").read_text())
    assert [r["metric"] for r in j["rows"] if r["level"] == "recipe"] == ["HOTA", "DetA", "AssA"]
    ref = compare_recipes(gt, [files["a1"], files["a2"]], [files["b1"], files["b2"]], metrics=["HOTA"])["headline"]
    assert j["headline"]["diff"] == pytest.approx(ref["diff"]) and j["headline"]["p_one_sided"] == pytest.approx(
        ref["p_one_sided"])
