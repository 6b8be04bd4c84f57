"""The recipe-level verdict (avis.evaluation.recipes): its two variance parts against scipy on cases where each
is the whole story, its direction, the model-level labelling, the jackknife of real metrics, calibration on a
small simulated A/A study, and the ``avis ttest --runs-a/--runs-b --json`` output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from avis.evaluation.recipes import RunEval, RunScore, compare_recipes, metric, two_way_test

from .test_ttest import box, case, iou


def scores(per_instance: np.ndarray, video: np.ndarray) -> list[RunScore]:
    """RunScores (mean over instances) of runs x instances samples, ``video[i]`` the video of instance i."""
    nv = video.max() + 1
    out = []
    for y in per_instance:
        out.append(RunScore.from_video_sums(np.bincount(video, y, nv), np.bincount(video, minlength=nv)))
    return out


VIDEO = np.repeat(np.arange(6), 3)  # 6 videos of 3 instances


def test_seed_part_alone_is_the_t_test_over_seeds():
    # every instance of a run has the run's value: the videos add nothing, only the seeds vary
    va, vb = [0.61, 0.55, 0.70], [0.50, 0.58, 0.47]
    row = two_way_test(scores(np.repeat(np.array(va)[:, None], 18, 1), VIDEO),
                       scores(np.repeat(np.array(vb)[:, None], 18, 1), VIDEO))
    ref = sps.ttest_ind(va, vb)  # equal seed counts: Student's pooled variance
    assert row["level"] == "recipe" and row["variant"] == "student" and row["var_test"] == 0
    assert row["diff"] == pytest.approx(np.mean(va) - np.mean(vb)) and row["diff"] > 0
    assert row["statistic"] == pytest.approx(ref.statistic) and row["df"] == pytest.approx(4)
    assert row["p_value"] == pytest.approx(ref.pvalue)
    assert row["p_one_sided"] == pytest.approx(sps.ttest_ind(va, vb, alternative="greater").pvalue)
    lo, hi = ref.confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # unequal seed counts: Welch
    row = two_way_test(scores(np.repeat(np.array(va)[:, None], 18, 1), VIDEO),
                       scores(np.repeat(np.array(vb[:2])[:, None], 18, 1), VIDEO))
    ref = sps.ttest_ind(va, vb[:2], equal_var=False)
    assert row["variant"] == "welch" and row["p_value"] == pytest.approx(ref.pvalue)
    assert row["df"] == pytest.approx(ref.df)


def test_test_set_part_alone_is_the_paired_test_over_videos():
    # identical seeds within each arm: only the sampling of videos is left, a paired t over video means
    rng = np.random.default_rng(3)
    ya, yb = rng.random(18), rng.random(18)
    row = two_way_test(scores(np.array([ya] * 3), VIDEO), scores(np.array([yb] * 3), VIDEO))
    ma, mb = ya.reshape(6, 3).mean(1), yb.reshape(6, 3).mean(1)
    ref = sps.ttest_rel(ma, mb)
    assert row["level"] == "recipe" and row["var_seeds"] == 0
    assert row["p_value"] == pytest.approx(ref.pvalue) and row["df"] == pytest.approx(5)
    # one run per arm: the same test, labelled model level
    one = two_way_test(scores(np.array([ya]), VIDEO), scores(np.array([yb]), VIDEO))
    assert one["level"] == "model" and one["test"] == "paired videos" and math.isnan(one["var_seeds"])
    assert one["p_value"] == pytest.approx(ref.pvalue)
    assert one["p_one_sided"] == pytest.approx(sps.ttest_rel(ma, mb, alternative="greater").pvalue)


def test_both_parts_add_and_the_seed_x_video_noise_is_counted_once():
    rng = np.random.default_rng(4)
    seed_a, seed_b = rng.normal(0, 0.05, 3), rng.normal(0, 0.05, 3)
    inst_a, inst_b = rng.random(18), rng.random(18)
    # additive: seed effects + instance effects, no interaction
    ya = inst_a[None] + seed_a[:, None]
    yb = inst_b[None] + seed_b[:, None]
    row = two_way_test(scores(ya, VIDEO), scores(yb, VIDEO))
    pooled = (np.var(ya.mean(1), ddof=1) + np.var(yb.mean(1), ddof=1)) / 2
    d = (inst_a - inst_b).reshape(6, 3).mean(1)
    assert row["var_seeds"] == pytest.approx(pooled * 2 / 3)
    assert row["var_test"] == pytest.approx(np.var(d, ddof=1) / 6)
    assert row["se"] ** 2 == pytest.approx(row["var_seeds"] + row["var_test"])

    def scaled(k):  # the seed effects times k
        return two_way_test(scores(inst_a[None] + k * seed_a[:, None], VIDEO),
                            scores(inst_b[None] + k * seed_b[:, None], VIDEO))

    # Satterthwaite's df when the videos dominate; capped at the seed part's own 2 x (3 - 1) = 4 when it does
    small, big = scaled(0.1), scaled(10)
    assert small["var_test"] > small["var_seeds"] and small["df"] > 4
    assert big["var_seeds"] > big["var_test"] > 0 and big["df"] == pytest.approx(4)
    # pure seed x video noise: it is in the seed part (run-to-run variance on this test set) and must not be
    # counted again in the test-set part, whose expectation is then 0
    var_test = [two_way_test(scores(rng.normal(0, 1, (3, 18)), VIDEO),
                             scores(rng.normal(0, 1, (3, 18)), VIDEO))["var_test"] for _ in range(300)]
    d_only = np.var(rng.normal(0, 1, (300, 6)) * math.sqrt(2 / 9), ddof=1, axis=1).mean() / 6  # uncorrected
    assert np.mean(var_test) < 0.5 * d_only


def test_direction_swapping_the_arms():
    rng = np.random.default_rng(5)
    ya, yb = rng.random((3, 18)) + 0.1, rng.random((3, 18))
    ab, ba = two_way_test(scores(ya, VIDEO), scores(yb, VIDEO)), two_way_test(scores(yb, VIDEO), scores(ya, VIDEO))
    assert ab["diff"] == pytest.approx(-ba["diff"]) and ab["p_value"] == pytest.approx(ba["p_value"])
    assert ab["p_one_sided"] == pytest.approx(1 - ba["p_one_sided"])
    better, worse = (ab, ba) if ab["diff"] > 0 else (ba, ab)
    assert better["p_one_sided"] == pytest.approx(better["p_value"] / 2)
    assert worse["p_one_sided"] == pytest.approx(1 - worse["p_value"] / 2) and worse["one_sided"] == "A > B"


def test_undefined_cases_give_nan_not_a_verdict():
    flat = scores(np.full((2, 18), 0.5), VIDEO)
    assert math.isnan(two_way_test(flat, flat)["p_value"])            # no variance at all
    nan = [RunScore(math.nan, np.full(6, math.nan))] * 2
    assert math.isnan(two_way_test(nan, flat)["p_value"])
    with pytest.raises(ValueError):
        two_way_test([], flat)
    with pytest.raises(ValueError):
        two_way_test(flat, scores(np.full((2, 4), 0.5), np.arange(4)))  # different videos


def simulate(rng, seeds, seed_sd=0.06, n_videos=30, per_video=3):
    """A/A: both arms from the same recipe. A run's per-instance sample: instance difficulty (shared by all
    runs, clustered by video) + the run's seed effect + seed x instance noise, clipped to [0, 1]."""
    video = np.repeat(np.arange(n_videos), per_video)
    base = 0.5 + rng.normal(0, 0.15, n_videos)[video] + rng.normal(0, 0.15, len(video))

    def arm():
        y = base[None] + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, 0.25, (seeds, len(video)))
        return np.clip(y, 0, 1)

    return arm(), arm(), video


def test_simulated_a_a_comparisons_are_not_anti_conservative():
    rng = np.random.default_rng(0)
    p_new, p_old = [], []
    for _ in range(300):
        ya, yb, video = simulate(rng, 3)
        p_new.append(two_way_test(scores(ya, video), scores(yb, video))["p_value"])
        p_old.append(sps.ttest_rel(ya.mean(0), yb.mean(0)).pvalue)  # the old headline: seeds averaged per instance
    p_new, p_old = np.array(p_new), np.array(p_old)
    assert np.isfinite(p_new).all() and np.mean(p_new < 0.05) <= 0.08 and np.mean(p_new < 0.2) <= 0.25
    # the old headline ignores the seed effects: it finds "differences" between runs of one recipe
    assert np.mean(p_old < 0.05) > 0.3


# ------------------------------------------------------------------------------------- on YTVIS results
def test_jackknife_of_real_metrics():
    from avis.evaluation.ytvis_eval import evaluate

    gt, a, _ = case([10, 9, 7, 8, 6, 10, 9, 8], [None] * 8, videos=4)
    a[2]["category_id"] = 2  # a wrong label (an unknown category: dropped, as by the scorer)
    a.append({"video_id": 3, "category_id": 1, "score": 0.95, "segmentations": [box(300, 10)]})  # a false positive
    run = RunEval(gt, a)
    ap = metric("AP")(run)
    ap50 = metric("AP@0.5")(run)
    top1 = metric("top1@0.75")(run)
    assert ap.value == pytest.approx(evaluate(gt, a).stats["AP"])
    assert ap50.value == pytest.approx(evaluate(gt, a).stats["AP50"])
    x = np.array([iou(r) if iou(r) >= 0.75 else 0.0 for r in (10, 9, 7, 8, 6, 10, 9, 8)])
    x[2] = 0.0
    assert top1.value == pytest.approx(x.mean())
    for k, v in enumerate(run.video_ids):
        keep = {**gt, "videos": [x for x in gt["videos"] if x["id"] != v],
                "annotations": [x for x in gt["annotations"] if x["video_id"] != v]}
        rest = [r for r in a if r["video_id"] != v]
        assert ap.loo[k] == pytest.approx(evaluate(keep, rest).stats["AP"])
        assert ap50.loo[k] == pytest.approx(evaluate(keep, rest).stats["AP50"])
        assert top1.loo[k] == pytest.approx(x[[i for i in range(8) if i % 4 + 1 != v]].mean())
    for bad in ("mAP", "top1", "top1@2", "AP@0.52", "iou@x", 3):
        with pytest.raises(ValueError):
            metric(bad)


def test_compare_recipes_rows_and_a_plugged_in_metric():
    gt, a1, b1 = case([10, 9, 9, 8, 7, 6, 9, 8], [8, 9, 6, 6, 5, 7, 8, 7], videos=4)
    _, a2, b2 = case([9, 9, 8, 8, 8, 7, 9, 9], [7, 8, 7, 6, 6, 6, 8, 8], videos=4)

    class Found:
        """Share of instances with a prediction of IoU >= 0.5 in their category (a plugged-in metric)."""

        name = "found"

        def __call__(self, run: RunEval) -> RunScore:
            from avis.evaluation.samples import samples_from_entries

            rows = samples_from_entries(run.evaluation.entries, 0.5)
            return run.instance_score(rows, lambda r: 0.0 if math.isnan(r["iou"]) else 1.0)

    out = compare_recipes(gt, [a1, a2], [b1, b2], metrics=["top1@0.5", "AP", Found()])
    assert [r["metric"] for r in out["rows"]] == ["top1@0.5", "AP", "found"] and out["headline"] is out["rows"][0]
    h = out["headline"]
    assert h["level"] == "recipe" and (h["n_a"], h["n_b"], h["n_videos"]) == (2, 2, 4) and h["iou"] == 0.5
    assert h["diff"] > 0 and h["p_one_sided"] < h["p_value"] and "equally good" in h["note"]
    assert out["rows"][1]["iou"] == "0.50:0.95" and out["rows"][2]["values_a"] == [1.0, 1.0]
    json.dumps(out)  # JSON-ready (NaN aside)
    assert compare_recipes(gt, [a1], [b1, b2])["headline"]["level"] == "model"


def test_cli_runs_json_shape(tmp_path, cli):
    gt, a1, b1 = case([10, 9, 9, 8, 7, 6, 9, 8], [8, 9, 6, 6, 5, 7, 8, 7], videos=4)
    _, a2, b2 = case([9, 9, 8, 8, 8, 7, 9, 9], [7, 8, 7, 6, 6, 6, 8, 8], videos=4)
    files = {"gt": gt, "a1": a1, "a2": a2, "b1": b1, "b2": b2}
    for k, v in files.items():
        (tmp_path / f"{k}.json").write_text(json.dumps(v))
    p = cli("ttest", "--gt", tmp_path / "gt.json", "--runs-a", tmp_path / "a1.json", tmp_path / "a2.json",
            "--runs-b", tmp_path / "b1.json", tmp_path / "b2.json", "--bootstrap", "0", "--json", tmp_path / "o.json")
    assert p.returncode == 0, p.stderr
    assert "headline: top1@0.5 (recipe level, 2 vs 2 seeds x 4 videos)" in p.stdout
    j = json.loads((tmp_path / "o.json").read_text())
    ref = compare_recipes(gt, [a1, a2], [b1, b2])
    h = j["headline"]
    assert {"test", "diff", "p_value", "p_one_sided", "level", "metric", "ci_low", "ci_high"} <= set(h)
    assert h["level"] == "recipe" and h["test"] == "seeds x videos"
    assert h["diff"] == pytest.approx(ref["headline"]["diff"]) and h["p_value"] == pytest.approx(ref["headline"]["p_value"])
    verdict = [r for r in j["rows"] if r["level"] == "recipe"]
    assert [r["metric"] for r in verdict] == ["top1@0.5", "top1@0.75", "AP", "AP@0.5", "AP@0.75"]
    # then the per-model diagnostics of the first run of each arm
    assert j["rows"][len(verdict)]["level"] == "model" and j["rows"][len(verdict)]["test"] == "paired-instance-top1"
