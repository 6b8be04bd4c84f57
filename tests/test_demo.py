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


def video_means(x):
    """Instances 0, 2, 4 are in video 1, the others in video 2."""
    return [np.mean(x[0::2]), np.mean(x[1::2])]


def test_table_row_values_and_p_against_scipy():
    gt = gt_json()
    row, verdict = av_table.compare_arms(gt, [results(A_ROWS)], [results(B_ROWS, B_CATS)], ref=1)
    assert row["ref"] == 1 and row["seeds"] == "1/1" and row["level"] == "model"
    # A finds every instance with IoU >= 0.8 -> AP50 = 100 %. B calls all six "bell": in category 1 the ranks
    # go TP FP TP FP TP FP -> interpolated precision 1 (recall <= 1/3), 2/3 (<= 2/3), 3/5 (to 1) on the 101
    # recall points = 76.4 / 101; category 2 has no prediction: 0. AP50 = mean of the two.
    ap50_b = 100 * (34 * 1 + 33 * 2 / 3 + 34 * 3 / 5) / 101 / 2
    assert row["AP50_av"] == pytest.approx(100.0) and row["AP50_visual"] == pytest.approx(ap50_b)
    assert row["dAP50"] == pytest.approx(100.0 - ap50_b)
    assert row["dAP"] == pytest.approx(row["AP_av"] - row["AP_visual"])
    # one seed per arm: a paired test over the (equal-sized) videos, one-sided for "audio-visual better"
    for tau, key in zip((0.5, 0.75), ("iou50", "iou75")):
        a, b = iou_at(A_ROWS, CATS, tau), iou_at(B_ROWS, B_CATS, tau)
        t = next(r for r in verdict["rows"] if r["metric"] == f"top1@{tau:g}")
        assert t["mean_a"] == pytest.approx(np.mean(a)) and t["mean_b"] == pytest.approx(np.mean(b))
        assert row[f"d_{key}"] == pytest.approx(100 * (np.mean(a) - np.mean(b)))
        ref = sps.ttest_rel(video_means(a), video_means(b), alternative="greater")
        assert row[f"p_{key}"] == pytest.approx(ref.pvalue) and row[f"p2_{key}"] == pytest.approx(2 * ref.pvalue)
    # at IoU > 0.9 the 8- and 9-row predictions no longer match: only the 10-row ones count
    row90, verdict90 = av_table.compare_arms(gt, [results(A_ROWS)], [results(B_ROWS, B_CATS)], 1, ious=(0.95,))
    assert verdict90["headline"]["mean_a"] == pytest.approx(np.mean(iou_at(A_ROWS, CATS, 0.95)))
    assert math.isnan(row90["p_iou50"])


def test_a_difference_favouring_visual_only_is_reported_as_such():
    # the reported bug: an unsigned two-sided p printed for a difference that favoured the visual-only arm.
    # Swap the arms: the differences turn negative and the one-sided p of "audio-visual better" goes above 0.5.
    gt = gt_json()
    row, _ = av_table.compare_arms(gt, [results(B_ROWS, B_CATS)], [results(A_ROWS)], ref=1)
    assert row["dAP"] < 0 and row["d_iou50"] < 0 and row["p_iou50"] > 0.5
    assert row["p_iou50"] == pytest.approx(1 - row["p2_iou50"] / 2)
    md = av_table.to_markdown([row])
    assert "| -" in md and "one-sided, 'audio-visual better than visual-only'" in md
    assert "model level: " in md and "says nothing about the recipes" in md


def test_seeds_make_the_row_recipe_level():
    gt = gt_json()
    b1 = results([10, 9, 10, 8, 9, 10], B_CATS)
    b2 = results([6, 9, 7, 8, 9, 10], CATS)          # a second seed that gets the twins right
    a_runs = [results(A_ROWS), results([9, 9, 9, 9, 9, 9])]
    row, verdict = av_table.compare_arms(gt, a_runs, [b1, b2], ref="x")
    h = verdict["headline"]
    assert row["seeds"] == "2/2" and row["level"] == h["level"] == "recipe" and h["variant"] == "student"
    # the per-seed values are each run's mean top-1 sample; the difference is of their means
    assert h["values_a"] == pytest.approx([np.mean(iou_at(A_ROWS, CATS, 0.5)), 0.9])
    assert h["values_b"] == pytest.approx([np.mean(iou_at([10, 9, 10, 8, 9, 10], B_CATS, 0.5)),
                                           np.mean(iou_at([6, 9, 7, 8, 9, 10], CATS, 0.5))])
    assert row["d_iou50"] == pytest.approx(100 * (np.mean(h["values_a"]) - np.mean(h["values_b"])))
    assert row["p_iou50"] == pytest.approx(h["p_one_sided"]) and row["p2_iou50"] == pytest.approx(h["p_value"])
    assert "recipe level: " in av_table.to_markdown([row])
    row_iou, v_iou = av_table.compare_arms(gt, a_runs, [b1, b2], ref="x", metric="iou")
    assert v_iou["headline"]["metric"] == "iou@0.5" and row_iou["metric"] == "iou"
    with pytest.raises(ValueError):
        av_table.compare_arms(gt, a_runs, [b1], ref=1, metric="nope")


def test_ap_verdict_sees_what_the_iou_samples_cannot():
    from avis.evaluation.ytvis_eval import evaluate

    # 6 videos, each with a bell (column 0) and a siren (column 20); A labels both right; B hedges in videos
    # 1-4: the same mask again with the other label and the same score, after the right one in file order
    gt = {"videos": [{"id": v, "width": W, "height": H, "length": 1, "file_names": ["x.jpg"]} for v in range(1, 7)],
          "categories": [{"id": 1, "name": "bell"}, {"id": 2, "name": "siren"}],
          "annotations": [{"id": 2 * v + c, "video_id": v, "category_id": c + 1, "iscrowd": 0,
                           "segmentations": [box(20 * c, 10)], "areas": [100], "bboxes": [None]}
                          for v in range(1, 7) for c in (0, 1)]}
    a = [{"video_id": v, "category_id": c + 1, "score": 0.9, "segmentations": [box(20 * c, 10)]}
         for v in range(1, 7) for c in (0, 1)]
    b = a + [{**r, "category_id": 3 - r["category_id"]} for r in a if r["video_id"] <= 4]
    row, verdict = av_table.compare_arms(gt, [a], [b], ref=1)
    ap = next(r for r in verdict["rows"] if r["metric"] == "AP")
    assert ap["mean_a"] == pytest.approx(evaluate(gt, a).stats["AP"]) == pytest.approx(1.0)
    assert ap["mean_b"] == pytest.approx(evaluate(gt, b).stats["AP"]) and ap["diff"] > 0
    assert row["dAP"] > 0 and 0 < row["p_ap"] < 0.5
    # the top-1 samples: on a tie the first in file order, B's right label, wins: they cannot tell A and B apart
    assert row["d_iou50"] == 0 and math.isnan(row["p_iou50"])


def test_markdown_and_csv_of_the_table():
    def verdict(level, n, rows):
        out = [{"metric": m, "level": level, "n_a": n, "n_b": n, "mean_a": ma, "mean_b": mb, "diff": ma - mb,
                "p_value": p2, "p_one_sided": p1, "ci_low": ma - mb - 0.1, "ci_high": ma - mb + 0.1}
               for m, ma, mb, p2, p1 in rows]
        return {"headline": out[0], "rows": out}

    rows = [av_table.table_row(1, verdict("recipe", 3, [("top1@0.5", 0.60, 0.50, 0.04, 0.02),
                                                        ("top1@0.75", 0.40, 0.42, 0.6, 0.7),
                                                        ("AP", 0.448, 0.429, 0.3, 0.15),
                                                        ("AP@0.5", 0.603, 0.602, 0.9, 0.45)])),
            av_table.table_row(4, verdict("model", 1, [("top1@0.5", 0.5, 0.5, math.nan, math.nan),
                                                       ("AP", 0.457, 0.456, math.nan, math.nan)]))]
    md = av_table.to_markdown(rows).splitlines()
    assert md[0].startswith("| Ref. number | seeds (AV / visual) | AP w/o audio | AP50 w/o audio | AP with audio")
    assert md[2] == "| 1 | 3/3 | 42.9 | 60.2 | 44.8 | 60.3 | +1.9 | 0.150 | +10.0 | 0.020 | -2.0 | 0.700 | recipe |"
    assert md[3] == "| 4 | 1/1 | 45.6 | - | 45.7 | - | +0.1 | - | +0.0 | - | - | - | model |"
    assert any(line.startswith("model level: ") for line in md) and any(line.startswith("recipe level: ") for line in md)
    parsed = list(csv.DictReader(av_table.to_csv(rows).splitlines()))
    assert float(parsed[0]["dAP"]) == pytest.approx(1.9) and parsed[1]["p_iou50"] == ""
    assert float(parsed[0]["p2_iou50"]) == pytest.approx(0.04) and float(parsed[0]["ci_iou50_low"]) == pytest.approx(0)


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
    assert rows[0]["level"] == "model" and "says nothing about the recipes" in (out / "table.md").read_text()
    assert json.loads((out / "verdict_ref2.json").read_text())["headline"]["metric"] == "top1@0.5"
    assert (out / "tests_ref2.md").read_text().startswith("| level | metric | test |")
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
    assert "QUICK smoke run" in report and "| Ref. number | seeds (AV / visual) | AP w/o audio" in report
    # the p columns and the report's verdict come from the verdict of avis ttest: one seed per arm, model level
    h = summary["headline"]
    assert h["metric"] == "top1@0.5" and h["level"] == "model" and "{h[" not in report
    assert "compares two trained models and says nothing about the recipes" in report
    assert f"audio-visual - visual-only = {h['diff']:+.4f}" in report and "(one-sided)" in report
    assert json.loads((out / "ttest.json").read_text())["headline"]["diff"] == pytest.approx(h["diff"])
    for key in ("av", "visual"):
        m = json.loads((out / "eval" / key / "metrics.json").read_text())["metrics"]
        assert summary["metrics"][key] == m
    row = next(csv.DictReader((out / "table.csv").read_text().splitlines()))
    assert float(row["AP_av"]) == pytest.approx(100 * summary["metrics"]["av"]["AP"])
    assert float(row["AP_visual"]) == pytest.approx(100 * summary["metrics"]["visual"]["AP"])
    # the two arms differ only in audio; the audio arm's run pretrained its log-mel network (the engine's stage,
    # on the training split's per-frame tags), trained with the tagging loss, and kept the network frozen
    ck = {k: (out / "runs" / k / "config.yaml").read_text() for k in ("av", "visual")}
    assert "supervision:" in ck["av"] and "audio_encoder: null" in ck["visual"] and "supervision" not in ck["visual"]
    pre = torch.load(out / "runs" / "av" / "audio_pretrain.pt", weights_only=True)
    model = torch.load(out / "runs" / "av" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert pre and all(torch.equal(model[f"fusion.audio_tokens.encoder.extractor.backbone.{k}"], v)
                       for k, v in pre.items())
    assert any(k.startswith("fusion.audio_tokens.encoder.tagger.") for k in model)
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
