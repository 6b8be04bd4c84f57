"""avis demo (quick mode end to end), the Table X / XII assembly (avis.evaluation.av_table) on constructed
results, and the two scripts around it (significance_test.py, train_av_vs_visual.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy import stats as sps

from avis.evaluation import av_table
from avis.io import masks as mask_io

REPO = Path(__file__).resolve().parents[1]
H, W = 10, 200


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def box(x0: int, rows: int):
    """10 x 10 block at column x0 with only its first ``rows`` rows: IoU rows / 10 with the full block."""
    m = np.zeros((H, W), np.uint8)
    m[:rows, x0:x0 + 10] = 1
    return mask_io.encode(m)


# Six instances in two videos, categories 1 and 2 (look-alike twins in the story).
CATS = [1, 2, 1, 2, 1, 2]


def gt_json() -> dict:
    return {"videos": [{"id": v, "width": W, "height": H, "length": 1, "file_names": ["x.jpg"]} for v in (1, 2)],
            "categories": [{"id": 1, "name": "bell"}, {"id": 2, "name": "siren"}],
            "annotations": [{"id": i + 1, "video_id": i % 2 + 1, "category_id": c, "iscrowd": 0,
                             "segmentations": [box(12 * i, 10)], "areas": [100], "bboxes": [None]}
                            for i, c in enumerate(CATS)]}


def results(rows, cats=CATS) -> list[dict]:
    """Instance i predicted with rows[i] of its block (None: not predicted) as category cats[i]."""
    return [{"video_id": i % 2 + 1, "category_id": c, "score": 0.9 - 0.01 * i, "segmentations": [box(12 * i, r)]}
            for i, (r, c) in enumerate(zip(rows, cats)) if r is not None]


A_ROWS = [10, 9, 10, 8, 9, 10]
B_ROWS = [10, 9, 10, 8, 9, 10]
B_CATS = [1, 1, 1, 1, 1, 1]      # visual-only: every twin called "bell": the siren instances are missed


def iou_at(rows, cats, tau):
    return [r / 10 if (r is not None and c == g and r / 10 >= tau) else 0.0 for r, c, g in zip(rows, cats, CATS)]


def test_table_row_values_and_p_against_scipy():
    gt = gt_json()
    row, tests = av_table.compare_arms(gt, [results(A_ROWS)], [results(B_ROWS, B_CATS)], ref=1)
    assert row["ref"] == 1 and row["seeds"] == 1
    # A finds every instance with IoU >= 0.8 -> AP50 = 100 %. B calls all six "bell": in category 1 the ranks
    # go TP FP TP FP TP FP -> interpolated precision 1 (recall <= 1/3), 2/3 (<= 2/3), 3/5 (to 1) on the 101
    # recall points = 76.4 / 101; category 2 has no prediction: 0. AP50 = mean of the two.
    ap50_b = 100 * (34 * 1 + 33 * 2 / 3 + 34 * 3 / 5) / 101 / 2
    assert row["AP50_av"] == pytest.approx(100.0) and row["AP50_visual"] == pytest.approx(ap50_b)
    assert row["dAP50"] == pytest.approx(100.0 - ap50_b)
    assert row["dAP"] == pytest.approx(row["AP_av"] - row["AP_visual"])
    for tau, key, t in zip((0.5, 0.75), ("p_iou50", "p_iou75"), tests):
        a, b = iou_at(A_ROWS, CATS, tau), iou_at(B_ROWS, B_CATS, tau)
        assert t["n_a"] == 6 and t["mean_a"] == pytest.approx(np.mean(a)) and t["mean_b"] == pytest.approx(np.mean(b))
        assert row[key] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    # at IoU > 0.9 the 8- and 9-row predictions no longer match: only the 10-row ones count
    row90, (t90,) = av_table.compare_arms(gt, [results(A_ROWS)], [results(B_ROWS, B_CATS)], 1, ious=(0.95,))
    assert t90["mean_a"] == pytest.approx(np.mean(iou_at(A_ROWS, CATS, 0.95)))
    assert math.isnan(row90["p_iou50"])


def test_seeds_are_averaged_per_instance_and_paper_test_pools_matched_ious():
    gt = gt_json()
    b1 = results([10, 9, 10, 8, 9, 10], B_CATS)
    b2 = results([6, 9, 7, 8, 9, 10], CATS)          # a second seed that gets the twins right
    a_runs = [results(A_ROWS), results([9, 9, 9, 9, 9, 9])]
    row, tests = av_table.compare_arms(gt, a_runs, [b1, b2], ref="x")
    a = np.mean([iou_at(A_ROWS, CATS, 0.5), iou_at([9] * 6, CATS, 0.5)], axis=0)
    b = np.mean([iou_at([10, 9, 10, 8, 9, 10], B_CATS, 0.5), iou_at([6, 9, 7, 8, 9, 10], CATS, 0.5)], axis=0)
    assert row["seeds"] == 2 and row["p_iou50"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    # the paper's test: matched IoUs above the threshold of every run pooled, Welch
    row_p, tests_p = av_table.compare_arms(gt, a_runs, [b1, b2], ref="x", test="paper")
    pa = [x for rows in (A_ROWS, [9] * 6) for x in iou_at(rows, CATS, 0.75) if x > 0]
    pb = [x for rows, cats in (([10, 9, 10, 8, 9, 10], B_CATS), ([6, 9, 7, 8, 9, 10], CATS))
          for x in iou_at(rows, cats, 0.75) if x > 0]
    assert tests_p[1]["n_a"] == len(pa) == 12 and tests_p[1]["n_b"] == len(pb) == 7
    assert row_p["p_iou75"] == pytest.approx(sps.ttest_ind(pa, pb, equal_var=False).pvalue)
    with pytest.raises(ValueError):
        av_table.compare_arms(gt, a_runs, [b1], ref=1, test="nope")


def test_bootstrap_p_of_the_ap_difference():
    from avis.evaluation.ytvis_eval import evaluate

    # 4 videos, each with a bell (column 0) and a siren (column 20); A labels both right, B calls both "bell"
    gt = {"videos": [{"id": v, "width": W, "height": H, "length": 1, "file_names": ["x.jpg"]} for v in range(1, 5)],
          "categories": [{"id": 1, "name": "bell"}, {"id": 2, "name": "siren"}],
          "annotations": [{"id": 2 * v + c, "video_id": v, "category_id": c + 1, "iscrowd": 0,
                           "segmentations": [box(20 * c, 10)], "areas": [100], "bboxes": [None]}
                          for v in range(1, 5) for c in (0, 1)]}
    a = [{"video_id": v, "category_id": c + 1, "score": 0.9, "segmentations": [box(20 * c, 10)]}
         for v in range(1, 5) for c in (0, 1)]
    b = [{**r, "category_id": 1} for r in a]
    ev_a, ev_b = evaluate(gt, a), evaluate(gt, b)
    # every resample has the siren category, which B never gets right: AP(A) - AP(B) > 0 in all 200
    assert av_table.bootstrap_ap_p(ev_a, ev_b, n=200) == pytest.approx(2 / 201)
    assert av_table.bootstrap_ap_p(ev_a, ev_a, n=50) == 1.0
    # the IoU t-test cannot see it the other way round: B's hedge (both labels) would match every instance
    row, _ = av_table.compare_arms(gt, [a], [a + b], ref=1, bootstrap=100)
    assert math.isnan(row["p_iou50"]) and row["dAP"] > 0 and row["p_ap"] < 0.05


def test_markdown_and_csv_of_the_table():
    rows = [av_table.table_row(1, 0.429, 0.602, 0.448, 0.603, 0.30, 0.24),
            av_table.table_row(4, 0.456, 0.622, 0.457, 0.627, float("nan"), float("nan"))]
    md = av_table.to_markdown(rows).splitlines()
    assert md[0].startswith("| Ref. number | AP w/o audio | AP50 w/o audio | AP with audio")
    assert md[2] == "| 1 | 42.9 | 60.2 | 44.8 | 60.3 | +1.9 | +0.1 | 0.300 | 0.240 | - | 1 |"
    assert md[3].endswith("| +0.1 | +0.5 | - | - | - | 1 |")
    parsed = list(csv.DictReader(av_table.to_csv(rows).splitlines()))
    assert float(parsed[0]["dAP"]) == pytest.approx(1.9) and parsed[1]["p_iou50"] == ""


def _write_runs(root: Path, layout: dict) -> None:
    for (group, arm, seed), res in layout.items():
        d = root / group / arm / seed / "eval"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(res))


def test_significance_script_on_a_folder_of_runs(tmp_path):
    gt = gt_json()
    runs = tmp_path / "runs"
    _write_runs(runs, {("ref2", "av", "seed0"): results(A_ROWS), ("ref2", "visual", "seed0"): results(B_ROWS, B_CATS),
                       ("ref10", "av", "seed0"): results(A_ROWS), ("ref10", "visual", "seed0"): results(A_ROWS),
                       ("ref1", "av", "seed0"): results(A_ROWS)})          # ref1 lacks an arm: left out
    (runs / "ref2" / "av" / "seed0" / "eval" / "gt.json").write_text(json.dumps(gt))
    found = av_table.collect_runs(runs)
    assert list(found) == ["ref2", "ref10"]                                  # natural order, complete groups
    mod = _script("significance_test")
    assert mod.main(["--runs", str(runs), "--bootstrap", "20"]) == 0        # gt.json found beside the results
    out = runs / "tables"
    rows = list(csv.DictReader((out / "table.csv").read_text().splitlines()))
    assert [r["ref"] for r in rows] == ["2", "10"]
    assert float(rows[0]["dAP50"]) == pytest.approx(100 - 100 * (34 + 22 + 20.4) / 202)
    assert rows[1]["p_iou50"] == "" and float(rows[1]["dAP"]) == 0.0      # identical arms: no test possible
    assert (out / "tests_ref2.md").read_text().startswith("| test |")
    assert (out / "iou_ref2.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2 | " in (out / "table.md").read_text()
    assert mod.main(["--runs", str(tmp_path / "nothing")]) == 2
    assert mod.main(["--runs", str(tmp_path), "--gt", str(runs / "ref2/av/seed0/eval/gt.json")]) == 2  # no runs


def test_sweep_plan_and_bad_input(tmp_path, capsys):
    mod = _script("train_av_vs_visual")
    assert mod.plan([1, 2], [0, 1])[:3] == [(1, "av", 0), (1, "visual", 0), (1, "av", 1)]
    assert len(mod.plan([1, 2, 3, 4, 5], [0, 1, 2])) == 30
    (tmp_path / "s" / "train").mkdir(parents=True)
    (tmp_path / "s" / "val").mkdir()
    assert mod.main(["--shards", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--refs", "1", "3",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and str(tmp_path / "o" / "ref3" / "visual" / "seed0") in out
    assert mod.main(["--shards", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_quick_demo_end_to_end(tmp_path):
    from avis import cli

    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert "QUICK smoke run" in report and "| Ref. number | AP w/o audio" in report
    # the p columns and the report's verdict come from the headline test of avis ttest
    assert summary["headline"]["test"] == "paired-instance-top1" and "{h[" not in report
    assert f"mean {summary['headline']['mean_a']:.3f} (audio-visual)" in report
    for key in ("av", "visual"):
        m = json.loads((out / "eval" / key / "metrics.json").read_text())["metrics"]
        assert summary["metrics"][key] == m
    row = next(csv.DictReader((out / "table.csv").read_text().splitlines()))
    assert float(row["AP_av"]) == pytest.approx(100 * summary["metrics"]["av"]["AP"])
    assert float(row["AP_visual"]) == pytest.approx(100 * summary["metrics"]["visual"]["AP"])
    # the two arms differ only in audio; the audio arm starts from the pretrained log-mel network, frozen
    ck = {k: (out / "runs" / k / "config.yaml").read_text() for k in ("av", "visual")}
    assert "pretrained_audio_tokens" in ck["av"] and "audio_encoder: null" in ck["visual"]
    pre = torch.load(out / "runs" / "audio_pretrained.pt", weights_only=True)
    model = torch.load(out / "runs" / "av" / "checkpoints" / "last.pt", weights_only=True)["model"]
    backbone = {k: v for k, v in pre.items() if k.startswith("extractor.backbone.")}
    assert backbone and all(torch.equal(model[f"fusion.audio_tokens.encoder.{k}"], v) for k, v in backbone.items())
    visual_ckpt = out / "runs" / "visual" / "checkpoints" / "last.pt"
    visual = torch.load(visual_ckpt, weights_only=True)["model"]
    assert not any(k.startswith("fusion.audio") for k in visual)
    assert summary["audio_pretrain"]["windows"] == 12  # two training videos of 6 frames
    assert (out / "iou_distributions.png").read_bytes()[:4] == b"\x89PNG"
    assert "iou_distributions.png" in report and "ttest.csv" in report
    # one overlay video with the val video's sound, linked from the report
    overlay = Path(summary["exports"]["av"]["overlay"])
    assert overlay.is_file() and overlay.name in report
    with av.open(str(overlay)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        frames = sum(1 for _ in c.decode(video=0))
    gt = json.loads((out / "synth" / "val.json").read_text())
    assert frames == next(v["length"] for v in gt["videos"] if v["id"] == summary["overlay_video"])
    for key in ("av", "visual"):
        assert isinstance(json.loads(Path(summary["exports"][key]["ytvis"]).read_text()), list)
    assert summary["seconds"]["total"] > 0 and set(summary["seconds"]) >= {"synthesize", "build", "train_av",
                                                                            "train_visual", "ttest", "export"}


def test_demo_rejects_bad_options(tmp_path, capsys):
    from avis import cli

    assert cli.main(["demo", "--quick", "--out", str(tmp_path), "--audio-dependence", "2"]) == 2
    assert "audio-dependence" in capsys.readouterr().err
