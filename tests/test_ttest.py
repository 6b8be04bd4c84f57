"""avis ttest: the samples each per-model test is built from (matching, thresholds, pairing), with scipy as the
oracle for the formulas; the CLI (verdict + diagnostics). The verdict's statistics: tests/test_recipes.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from avis.evaluation.ttest import cohen_d, cohen_dz, compare
from avis.io import masks as mask_io

H, W = 10, 400


def box(x0, rows, h=H, w=W):
    """10 x 10 block at column x0 with only its first ``rows`` rows: IoU rows / 10 with the full block."""
    m = np.zeros((h, w), np.uint8)
    m[:rows, x0 : x0 + 10] = 1
    return mask_io.encode(m)


def case(rows_a, rows_b, videos=2):
    """Instance i (in video i % videos + 1) is the full block at column 12 i; A / B predict it with rows_a[i]
    / rows_b[i] rows (None: no prediction), so their IoUs are rows / 10."""
    n = len(rows_a)
    gt = {"videos": [{"id": v, "width": W, "height": H, "length": 1, "file_names": ["x.jpg"]} for v in range(1, videos + 1)],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": i + 1, "video_id": i % videos + 1, "category_id": 1, "iscrowd": 0,
                           "segmentations": [box(12 * i, 10)], "areas": [100], "bboxes": [None]} for i in range(n)]}

    def results(rows, rev):
        out = [{"video_id": i % videos + 1, "category_id": 1, "score": 0.5 + 0.01 * i,
                "segmentations": [box(12 * i, r)]} for i, r in enumerate(rows) if r is not None]
        return out[::-1] if rev else out

    return gt, results(rows_a, False), results(rows_b, True)  # B in another file order: pairing is by instance


ROWS_A = [10, 9, 9, 8, 7, 6, 9, 4, None, 8]
ROWS_B = [8, 9, 6, 6, 5, 7, 8, None, 3, 6]


def iou(r):
    return 0.0 if r is None else r / 10


def by(rows, test, variant, tau):
    return next(r for r in rows if r["test"] == test and r["variant"] == variant and r["iou"] == tau)


def test_paper_test_uses_matched_ious_above_threshold():
    gt, a, b = case(ROWS_A, ROWS_B)
    out = compare(gt, a, b, ious=(0.5, 0.75), bootstrap=0)
    for tau in (0.5, 0.75):
        xa = [iou(r) for r in ROWS_A if r is not None and iou(r) >= tau]
        xb = [iou(r) for r in ROWS_B if r is not None and iou(r) >= tau]
        assert sorted(out["ious_a"][tau]) == pytest.approx(sorted(xa))
        assert sorted(out["ious_b"][tau]) == pytest.approx(sorted(xb))
        for variant, eq in (("student", True), ("welch", False)):
            row = by(out["rows"], "paper", variant, tau)
            ref = sps.ttest_ind(xa, xb, equal_var=eq)
            assert row["p_value"] == pytest.approx(ref.pvalue) and row["statistic"] == pytest.approx(ref.statistic)
            assert (row["n_a"], row["n_b"]) == (len(xa), len(xb))
            assert row["effect"] == pytest.approx(cohen_d(xa, xb))


def test_paired_tests_pair_by_instance_and_count_misses_as_zero():
    gt, a, b = case(ROWS_A, ROWS_B)
    out = compare(gt, a, b, ious=(0.5, 0.75), bootstrap=0)
    for tau in (0.5, 0.75):
        xa = np.array([iou(r) if iou(r) >= tau else 0.0 for r in ROWS_A])
        xb = np.array([iou(r) if iou(r) >= tau else 0.0 for r in ROWS_B])
        row = by(out["rows"], "paired-instance", "paired", tau)
        ref = sps.ttest_rel(xa, xb)
        assert row["n_a"] == 10 and row["p_value"] == pytest.approx(ref.pvalue)
        assert row["effect"] == pytest.approx(cohen_dz(xa - xb))
        # per video: instances 0, 2, 4, ... in video 1, the others in video 2
        va, vb = [xa[0::2].mean(), xa[1::2].mean()], [xb[0::2].mean(), xb[1::2].mean()]
        row = by(out["rows"], "paired-video", "paired", tau)
        assert row["mean_a"] == pytest.approx(np.mean(va)) and row["p_value"] == pytest.approx(sps.ttest_rel(va, vb).pvalue)
        # every p carries its direction: the one-sided p of "A better" is the upper tail of the same t
        assert row["diff"] == pytest.approx(np.mean(va) - np.mean(vb)) and row["level"] == "model"
        assert row["p_one_sided"] == pytest.approx(sps.ttest_rel(va, vb, alternative="greater").pvalue)


def test_matching_is_greedy_by_score_at_the_threshold():
    # two predictions for instance 0: the higher-scored one has IoU 0.6, the other 1.0. At 0.5 the greedy
    # matching gives the instance 0.6; at 0.75 the 0.6 one cannot match, so it gets 1.0.
    gt, a, b = case([6, 10], [10, 10])
    a.append({"video_id": 1, "category_id": 1, "score": 0.1, "segmentations": [box(0, 10)]})
    a[0]["score"] = 0.99
    out = compare(gt, a, b, ious=(0.5, 0.75), bootstrap=0)
    assert sorted(out["ious_a"][0.5]) == pytest.approx([0.6, 1.0])
    assert sorted(out["ious_a"][0.75]) == pytest.approx([1.0, 1.0])


def test_bootstrap_and_the_cli_with_one_run_per_arm(tmp_path, cli):
    gt, a, b = case(ROWS_A, ROWS_B)
    out = compare(gt, a, b, ious=(0.5,), bootstrap=50)
    from avis.evaluation.ytvis_eval import evaluate

    boot = by(out["rows"], "bootstrap-AP", "videos", "0.50:0.95")
    d = evaluate(gt, a).stats["AP"] - evaluate(gt, b).stats["AP"]
    assert boot["diff"] == pytest.approx(d) and boot["ci_low"] <= boot["ci_high"]
    assert not math.isnan(boot["ci_low"])

    # CLI: table, markdown, CSV, JSON, plot
    for name, data in (("gt.json", gt), ("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(data))
    p = cli("ttest", "--gt", tmp_path / "gt.json", "--a", tmp_path / "a.json", "--b", tmp_path / "b.json",
            "--bootstrap", "20", "--markdown", tmp_path / "t.md", "--csv", tmp_path / "t.csv", "--json",
            tmp_path / "t.json", "--plot", tmp_path / "t.png")
    assert p.returncode == 0, p.stderr
    assert "headline: top1@0.5 (MODEL level" in p.stdout and "says nothing about the recipes" in p.stdout
    j = json.loads((tmp_path / "t.json").read_text())
    # one run per arm: the verdict is a paired t-test over the 2 videos (equal sizes: jackknife = video means)
    xa = np.array([iou(r) if iou(r) >= 0.5 else 0 for r in ROWS_A])
    xb = np.array([iou(r) if iou(r) >= 0.5 else 0 for r in ROWS_B])
    va, vb = [xa[0::2].mean(), xa[1::2].mean()], [xb[0::2].mean(), xb[1::2].mean()]
    h = j["headline"]
    assert h["level"] == "model" and "says nothing about the recipes" in h["note"]
    assert h["p_value"] == pytest.approx(sps.ttest_rel(va, vb).pvalue)
    assert h["p_one_sided"] == pytest.approx(sps.ttest_rel(va, vb, alternative="greater").pvalue)
    assert h["diff"] == pytest.approx(xa.mean() - xb.mean()) and h == j["rows"][0]
    # the per-model diagnostics follow the verdict rows, labelled as such
    diag = [r for r in j["rows"] if r["test"] == "paired-instance-top1"]
    assert diag[0]["level"] == "model" and diag[0]["p_value"] == pytest.approx(sps.ttest_rel(xa, xb).pvalue)
    assert (tmp_path / "t.md").read_text().startswith("| level | metric | test |")
    assert (tmp_path / "t.csv").read_text().startswith("level,metric,test,variant,iou")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    for args in (["--runs-a", tmp_path / "a.json"], [], ["--a", tmp_path / "a.json"],
                 ["--runs-a", tmp_path / "a.json", "--runs-b", tmp_path / "b.json", "--metrics", "mAP"]):
        bad = cli("ttest", "--gt", tmp_path / "gt.json", *args)
        assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------ class-aware top-1 (the headline test)
TWIN_CATS = [1, 2, 2, 1, 1, 2, 1, 2]  # look-alike twins: category 1 and 2 alternate
ROWS_A1 = [10, 9, 8, 10, 7, 9, 6, 8]
ROWS_B1 = [10, 8, 9, 9, 8, 10, 7, 9]
WRONG_FIRST = [True, False, True, False, True, False, True, False]  # B's wrong label scored higher


def twins_case():
    """8 instances (categories TWIN_CATS) in 2 videos. A predicts each with its right label; B hedges: the same
    mask twice, once per twin category, its wrong label scored higher for half of the objects."""
    gt, _, _ = case([10] * 8, [10] * 8)
    gt["categories"] = [{"id": 1, "name": "bell"}, {"id": 2, "name": "siren"}]
    for ann, c in zip(gt["annotations"], TWIN_CATS):
        ann["category_id"] = c
    a = [{"video_id": i % 2 + 1, "category_id": c, "score": 0.9 - 0.01 * i, "segmentations": [box(12 * i, r)]}
         for i, (r, c) in enumerate(zip(ROWS_A1, TWIN_CATS))]
    b = []
    for i, (r, c, wrong_first) in enumerate(zip(ROWS_B1, TWIN_CATS, WRONG_FIRST)):
        hi, lo = 0.9 - 0.01 * i, 0.5 - 0.01 * i
        b += [{"video_id": i % 2 + 1, "category_id": c, "score": lo if wrong_first else hi,
               "segmentations": [box(12 * i, r)]},
              {"video_id": i % 2 + 1, "category_id": 3 - c, "score": hi if wrong_first else lo,
               "segmentations": [box(12 * i, r)]}]
    return gt, a, b


def test_top1_scores_the_most_confident_label_so_hedging_does_not_pay():
    from avis.evaluation.samples import top1_context, top1_samples, top1_scores

    gt, a, b = twins_case()
    for tau in (0.5, 0.75):
        xa = [r / 10 if r / 10 >= tau else 0.0 for r in ROWS_A1]
        xb = [0.0 if w or r / 10 < tau else r / 10 for r, w in zip(ROWS_B1, WRONG_FIRST)]
        sb = top1_samples(top1_context(gt, b), tau)
        assert len(sb) == 8
        # the matched prediction is the higher-scored one, whatever its label
        for row, r, c, w in zip(sorted(sb, key=lambda r: r["instance_id"]), ROWS_B1, TWIN_CATS, WRONG_FIRST):
            assert row["category_id"] == c
            assert row["pred_category_id"] == (None if r / 10 < tau else 3 - c if w else c)
        sa = top1_scores(top1_samples(top1_context(gt, a), tau))
        sb = top1_scores(sb)
        keys = sorted(sa, key=lambda k: k[2])  # (video, category, instance) in instance order
        assert [sa[k] for k in keys] == pytest.approx(xa) and [sb[k] for k in keys] == pytest.approx(xb)

        out = compare(gt, a, b, ious=(tau,), bootstrap=0)
        row = by(out["rows"], "paired-instance-top1", "paired", tau)
        ref = sps.ttest_rel(xa, xb)
        assert row["n_a"] == 8 and row["p_value"] == pytest.approx(ref.pvalue)
        assert row["statistic"] == pytest.approx(ref.statistic)
        assert row["effect"] == pytest.approx(cohen_dz(np.array(xa) - np.array(xb)))
        # the per-category test gives B every object through its right-label prediction: the hedge is free
        per_cat = by(out["rows"], "paired-instance", "paired", tau)
        assert per_cat["mean_b"] == pytest.approx(np.mean([r / 10 if r / 10 >= tau else 0.0 for r in ROWS_B1]))


def overlap_case(score_p, score_q):
    """Two instances at the same place: g1 (category 1, the full block) and g2 (category 2, its first 8 rows).
    p (category 1, the full block: IoU 1.0 with g1, 0.8 with g2) and q (category 2, 9 rows: IoU 0.9 with g1,
    8/9 with g2) both prefer g1."""
    gt, _, _ = case([10, 10], [10, 10], videos=1)
    gt["categories"] = [{"id": 1, "name": "bell"}, {"id": 2, "name": "siren"}]
    g1, g2 = gt["annotations"]
    g2.update(category_id=2, segmentations=[box(0, 8)], areas=[80])
    res = [{"video_id": 1, "category_id": 1, "score": score_p, "segmentations": [box(0, 10)]},
           {"video_id": 1, "category_id": 2, "score": score_q, "segmentations": [box(0, 9)]}]
    return gt, res


def test_top1_matching_is_greedy_class_agnostic_and_one_to_one():
    from avis.evaluation.samples import top1_context, top1_samples, top1_scores

    # p first: p takes g1 (IoU 1.0, right label); q, with g1 taken, takes g2 across categories (8/9, right)
    gt, res = overlap_case(0.9, 0.8)
    rows = {r["instance_id"]: r for r in top1_samples(top1_context(gt, res), 0.5)}
    assert rows[1]["iou"] == pytest.approx(1.0) and rows[1]["score"] == pytest.approx(0.9)
    assert rows[2]["iou"] == pytest.approx(8 / 9) and rows[2]["pred_category_id"] == 2
    assert sorted(top1_scores(rows.values()).values()) == pytest.approx([8 / 9, 1.0])
    # q first: q takes g1 (0.9 > 8/9) with the wrong label; p cannot also take g1, takes g2 (0.8), wrong label
    gt, res = overlap_case(0.8, 0.9)
    rows = {r["instance_id"]: r for r in top1_samples(top1_context(gt, res), 0.5)}
    assert rows[1]["iou"] == pytest.approx(0.9) and rows[1]["pred_category_id"] == 2
    assert rows[2]["iou"] == pytest.approx(0.8) and rows[2]["pred_category_id"] == 1
    assert list(top1_scores(rows.values()).values()) == [0.0, 0.0]
    # at 0.85 p cannot take g2 (0.8): unmatched, NaN iou, sample 0
    rows = {r["instance_id"]: r for r in top1_samples(top1_context(gt, res), 0.85)}
    assert math.isnan(rows[2]["iou"]) and rows[2]["pred_category_id"] is None
    # only the top 100 predictions of a video count: 100 wrong-label ones scored above p push it out
    gt, res = overlap_case(0.5, 0.0)
    res = res[:1] + [{"video_id": 1, "category_id": 2, "score": 0.9, "segmentations": [box(100, 10)]}] * 100
    rows = top1_samples(top1_context(gt, res), 0.5)
    assert all(math.isnan(r["iou"]) for r in rows)


def test_top1_excludes_crowd_instances():
    from avis.evaluation.samples import top1_context, top1_samples

    gt, a, b = twins_case()
    gt["annotations"][3]["iscrowd"] = 1  # instance 4 (video 2)
    rows = top1_samples(top1_context(gt, b), 0.5)
    assert sorted(r["instance_id"] for r in rows) == [1, 2, 3, 5, 6, 7, 8]
    out = compare(gt, a, b, ious=(0.5,), bootstrap=0)
    keep = [i for i in range(8) if i != 3]
    xa = [ROWS_A1[i] / 10 for i in keep]
    xb = [0.0 if WRONG_FIRST[i] else ROWS_B1[i] / 10 for i in keep]
    row = by(out["rows"], "paired-instance-top1", "paired", 0.5)
    assert row["n_a"] == 7 and row["p_value"] == pytest.approx(sps.ttest_rel(xa, xb).pvalue)
