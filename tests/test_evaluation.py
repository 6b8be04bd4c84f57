"""YouTube-VIS scoring: hand-computed cases for each rule of the protocol, a randomised agreement check against
a straightforward reference written here (decoded masks, the official loops), the samples and the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

import avis.evaluation.ytvis_eval as ye
from avis.evaluation.samples import instance_samples
from avis.evaluation.ytvis_eval import STAT_KEYS, evaluate, video_iou
from avis.io import masks as mask_io
from avis.io.ytvis import load_annotations, load_results

H, W = 20, 30


def box(y0, x0, y1, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return mask_io.encode(m)


def gt_file(videos, anns, n_cats=2, h=H, w=W):
    """videos: {id: T}; anns: list of (video, category, [rle or None], iscrowd[, areas])."""
    out = {"videos": [{"id": v, "width": w, "height": h, "length": t, "file_names": [f"{v}/{i}.jpg" for i in range(t)]}
                      for v, t in videos.items()],
           "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)], "annotations": []}
    for i, a in enumerate(anns):
        v, c, segs, crowd = a[:4]
        areas = a[4] if len(a) > 4 else [None if s is None else mask_io.area(s) for s in segs]
        out["annotations"].append({"id": i + 1, "video_id": v, "category_id": c, "iscrowd": crowd,
                                   "segmentations": segs, "areas": areas, "bboxes": [None] * len(segs)})
    return out


def res(v, c, score, segs):
    return {"video_id": v, "category_id": c, "score": score, "segmentations": segs}


def stats(gt, results, **kw):
    return evaluate(gt, results, **kw).stats


# ------------------------------------------------------------------------------------------- video IoU
def test_video_iou_frames_with_one_side_and_both_empty():
    a = box(0, 0, 10, 10)  # 100 px
    b = box(5, 0, 15, 10)  # 100 px, 50 overlap with a
    c = box(0, 0, 2, 5)  # 10 px
    det = [a, a, None, None, c]
    gt = [b, None, c, None, None]
    # frame 0: I 50, U 150; frame 1: det only U 100; frame 2: gt only U 10; frame 3: nothing; frame 4: det only 10
    assert video_iou([det], [gt])[0, 0] == 50 / 270
    assert video_iou([[None, None]], [[None, None]])[0, 0] == 0.0  # U = 0 -> 0
    empty = mask_io.encode(np.zeros((H, W), np.uint8))
    assert video_iou([[empty, a]], [[None, a]])[0, 0] == 1.0  # an empty mask counts as absent
    # frames beyond the shorter sequence are ignored (the official zip)
    assert video_iou([[a, a, a]], [[a]])[0, 0] == 1.0


def test_mask_size_mismatch_is_an_input_error():
    from avis.errors import InputError

    gt = gt_file({1: 1}, [(1, 1, [box(0, 0, 5, 5)], 0)])
    with pytest.raises(InputError, match="size"):
        evaluate(gt, [res(1, 1, 0.9, [box(0, 0, 5, 5, h=H + 1)])])
    with pytest.raises(InputError, match="video_id 7"):
        evaluate(gt, [res(7, 1, 0.9, [box(0, 0, 5, 5)])])


# ------------------------------------------------------------------------------------------- AP rules
def test_perfect_and_empty_results():
    g = [box(0, 0, 10, 10), box(2, 2, 12, 12)]
    gt = gt_file({1: 2}, [(1, 1, g, 0)], n_cats=1)
    s = stats(gt, [res(1, 1, 0.5, g)])
    # precision is tp / (tp + fp + eps), so a perfect AP is 1 - 2e-16 as in the official code
    assert all(s[k] == pytest.approx(1.0, abs=1e-12) for k in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100"))
    assert s["APm"] == s["APl"] == s["ARm"] == s["ARl"] == -1.0  # no medium / large ground truth
    s = stats(gt, [])
    assert s["AP"] == 0.0 and s["AR100"] == 0.0


def test_iou_thresholds_and_precision_interpolation():
    # IoU 0.6 -> matched at 0.50, 0.55 and 0.60 (IoU >= threshold): AP = 3/10, AP50 = 1, AP75 = 0
    g = box(0, 0, 10, 10)
    d = box(0, 0, 6, 10)
    gt = gt_file({1: 1}, [(1, 1, [g], 0)], n_cats=1)
    s = stats(gt, [res(1, 1, 0.9, [d])])
    assert s["AP50"] == pytest.approx(1) and s["AP75"] == 0.0 and s["AP"] == pytest.approx(0.3, abs=1e-12)
    # a false positive ranked above the true positive: precision 1/2 at every recall point
    s = stats(gt, [res(1, 1, 0.9, [box(12, 12, 18, 18)]), res(1, 1, 0.8, [g])])
    assert s["AP"] == pytest.approx(0.5, abs=1e-12) and s["AR1"] == 0.0 and s["AR10"] == 1.0


def test_crowd_ground_truth_absorbs_and_ignores():
    g = box(0, 0, 10, 10)
    crowd = box(10, 10, 20, 30)
    gt = gt_file({1: 1}, [(1, 1, [g], 0), (1, 1, [crowd], 1)], n_cats=1)
    on_crowd = [res(1, 1, 0.95, [crowd]), res(1, 1, 0.94, [crowd])]
    # two detections on the crowd region rank first; both are ignored, so the TP keeps precision 1
    s = stats(gt, [*on_crowd, res(1, 1, 0.5, [g])])
    assert s["AP"] == pytest.approx(1.0, abs=1e-12) and s["AR100"] == 1.0
    # IoU 0.9 with the crowd: ignored up to threshold 0.90, two false positives at 0.95 (precision 1/3)
    near = [res(1, 1, 0.95, [box(10, 10, 20, 28)]), res(1, 1, 0.94, [box(10, 12, 20, 30)])]
    assert stats(gt, [*near, res(1, 1, 0.5, [g])])["AP"] == pytest.approx((9 + 1 / 3) / 10)
    # without the crowd flag they would be false positives
    gt2 = gt_file({1: 1}, [(1, 1, [g], 0), (1, 1, [crowd], 0)], n_cats=1)
    s2 = stats(gt2, [*on_crowd, res(1, 1, 0.5, [g])])
    assert s2["AP"] < 1.0


def test_crowd_uses_plain_video_iou():
    # detection covers a quarter of a crowd region: IoU 0.25 (COCO's images would use I / det area = 1)
    crowd = box(0, 0, 20, 20)
    gt = gt_file({1: 1}, [(1, 1, [box(0, 25, 4, 30)], 0), (1, 1, [crowd], 1)], n_cats=1)
    s = stats(gt, [res(1, 1, 0.9, [box(0, 0, 10, 10)]), res(1, 1, 0.5, [box(0, 25, 4, 30)])])
    assert s["AP"] == pytest.approx(0.5, abs=1e-12)  # the crowd does not absorb it: a false positive first


def test_area_ranges_use_average_nonempty_area():
    h, w = 400, 400
    small = box(0, 0, 100, 100, h, w)  # 10000 < 128^2
    med = box(0, 0, 150, 150, h, w)  # 22500
    large = box(0, 0, 300, 300, h, w)  # 90000 > 256^2
    # average over non-null, non-zero frames: (22500 + 22500) / 2 even with a None and a zero-area frame
    gt = gt_file({1: 4, 2: 1, 3: 1}, [
        (1, 1, [med, None, med, mask_io.encode(np.zeros((h, w), np.uint8))], 0),
        (2, 1, [small], 0),
        (3, 1, [large], 0)], n_cats=1, h=h, w=w)
    results = [res(1, 1, 0.9, [med, None, med, None]), res(2, 1, 0.8, [small])]
    s = stats(gt, results)
    assert s["APs"] == pytest.approx(1) and s["APm"] == pytest.approx(1) and s["APl"] == 0.0 and s["ARl"] == 0.0
    assert s["AR100"] == pytest.approx(2 / 3)
    # an unmatched detection outside the range is ignored in that range; inside it is a false positive
    fp_small = res(1, 1, 0.95, [box(350, 350, 360, 360, h, w)] + [None] * 3)
    s2 = stats(gt, [fp_small, *results])
    assert s2["APm"] == pytest.approx(1) and s2["APs"] < 0.99
    # a prediction's average skips zero-area frames too: 22500 (medium, a false positive there), not 11250
    empty = mask_io.encode(np.zeros((h, w), np.uint8))
    fp_med = res(1, 1, 0.95, [box(200, 200, 350, 350, h, w), empty, None, None])
    s3 = stats(gt, [fp_med, *results])
    assert s3["APm"] < 0.99 and s3["APs"] == pytest.approx(1)
    # the ground truth's average comes from its 'areas' field, not from its masks
    gt["annotations"][1]["areas"] = [30000]
    assert stats(gt, results)["APm"] == pytest.approx(1.0) and stats(gt, results)["APs"] == -1.0


def test_ties_in_score_keep_results_file_order():
    g = box(0, 0, 10, 10)
    fp = box(12, 12, 18, 18)
    gt = gt_file({1: 1}, [(1, 1, [g], 0)], n_cats=1)
    # same score: the file order decides which ranks first
    assert stats(gt, [res(1, 1, 0.5, [g]), res(1, 1, 0.5, [fp])])["AP"] == pytest.approx(1)
    assert stats(gt, [res(1, 1, 0.5, [fp]), res(1, 1, 0.5, [g])])["AP"] == pytest.approx(0.5)
    # across videos: ascending video id, then a stable sort; video 2's TP ties video 1's FP and comes after it
    gt2 = gt_file({1: 1, 2: 1}, [(1, 1, [g], 0), (2, 1, [g], 0)], n_cats=1)
    a = stats(gt2, [res(2, 1, 0.5, [g]), res(1, 1, 0.5, [fp]), res(1, 1, 0.4, [g])])
    # order: v1 fp (0.5), v2 tp (0.5), v1 tp (0.4) -> precision 1/2 at recall 1/2, 2/3 at recall 1
    expected = (51 * (2 / 3) + 50 * (2 / 3)) / 101
    assert a["AP50"] == pytest.approx(expected, abs=1e-12)


def test_more_than_100_predictions_keeps_top_100():
    g = box(0, 0, 10, 10)
    gt = gt_file({1: 1}, [(1, 1, [g], 0)], n_cats=1)
    fps = [res(1, 1, 0.9, [box(12, 12, 18, 18)]) for _ in range(100)]
    assert stats(gt, [*fps, res(1, 1, 0.1, [g])])["AR100"] == 0.0  # the 101st is cut
    assert stats(gt, [*fps[:99], res(1, 1, 0.1, [g])])["AR100"] == 1.0


def test_video_without_ground_truth_and_category_never_predicted():
    g = box(0, 0, 10, 10)
    gt = gt_file({1: 1, 2: 1}, [(1, 1, [g], 0), (1, 2, [g], 0)], n_cats=3)
    perfect = [res(1, 1, 0.5, [g]), res(1, 2, 0.5, [g])]
    assert stats(gt, perfect)["AP"] == pytest.approx(1)  # category 3 has no ground truth: undefined, not averaged
    # category 2 never predicted: its AP is 0, the mean over categories 1 and 2 halves
    ev = evaluate(gt, perfect[:1])
    assert ev.stats["AP"] == pytest.approx(0.5)
    per = {r["category_id"]: r["AP"] for r in ev.per_category()}
    assert per == pytest.approx({1: 1.0, 2: 0.0, 3: -1.0})
    # a detection in a video without ground truth is a false positive (ranked first here)
    s = stats(gt, [res(2, 1, 0.9, [g]), *perfect])
    assert s["AP"] == pytest.approx(0.75)  # category 1: precision 1/2; category 2: 1


# ------------------------------------------------------------------------------------------- reference
def reference(gt, results):
    """Straightforward YouTube-VIS evaluation on decoded masks, following the official loops."""
    thrs, recs = np.linspace(0.5, 0.95, 10), np.linspace(0, 1, 101)
    rngs = [[0, 1e10], [0, 128**2], [128**2, 256**2], [256**2, 1e10]]
    vids = sorted(v["id"] for v in gt["videos"])
    cats = sorted(c["id"] for c in gt["categories"])

    def avg(areas):
        a = [x for x in areas if x]
        return np.mean(a) if a else 0

    def dec(s):
        return None if s is None else mask_io.decode(s).astype(bool)

    dts = []
    for i, r in enumerate(results):
        dts.append(dict(r, id=i + 1, iscrowd=0, m=[dec(s) for s in r["segmentations"]],
                        avg=avg([None if s is None else mask_io.area(s) for s in r["segmentations"]])))
    gts = [dict(g, m=[dec(s) for s in g["segmentations"]], avg=avg(g["areas"])) for g in gt["annotations"]]

    def viou(d, g):
        i = u = 0
        for a, b in zip(d["m"], g["m"]):
            if a is not None and b is not None:
                i += (a & b).sum()
                u += (a | b).sum()
            elif a is not None or b is not None:
                u += (a if a is not None else b).sum()
        return i / u if u else 0.0

    E = {}
    for c in cats:
        for ai, rng in enumerate(rngs):
            for v in vids:
                g = [x for x in gts if x["video_id"] == v and x["category_id"] == c]
                d = [x for x in dts if x["video_id"] == v and x["category_id"] == c]
                if not g and not d:
                    continue
                ig = [int(x["iscrowd"] or not rng[0] <= x["avg"] <= rng[1]) for x in g]
                go = np.argsort(ig, kind="mergesort")
                g, ig = [g[i] for i in go], [ig[i] for i in go]
                d = [d[i] for i in np.argsort([-x["score"] for x in d], kind="mergesort")][:100]
                dtm, dig, gtm = np.zeros((10, len(d))), np.zeros((10, len(d)), bool), np.zeros((10, len(g)))
                for ti, t in enumerate(thrs):
                    for di, dd in enumerate(d):
                        best, m = t, -1
                        for gi, gg in enumerate(g):
                            if gtm[ti, gi] and not gg["iscrowd"]:
                                continue
                            if m > -1 and ig[m] == 0 and ig[gi] == 1:
                                break
                            o = viou(dd, gg)
                            if o < best:
                                continue
                            best, m = o, gi
                        if m > -1:
                            dtm[ti, di], dig[ti, di], gtm[ti, m] = g[m]["id"], ig[m], dd["id"]
                out = np.array([not rng[0] <= x["avg"] <= rng[1] for x in d], bool)
                dig |= (dtm == 0) & out[None, :]
                E[c, ai, v] = (np.array([x["score"] for x in d]), dtm, dig, np.array(ig))
    P, R = -np.ones((10, 101, len(cats), 4, 3)), -np.ones((10, len(cats), 4, 3))
    for k, c in enumerate(cats):
        for a in range(4):
            for m, md in enumerate([1, 10, 100]):
                es = [E[c, a, v] for v in vids if (c, a, v) in E]
                if not es:
                    continue
                sc = np.concatenate([e[0][:md] for e in es])
                o = np.argsort(-sc, kind="mergesort")
                dtm = np.concatenate([e[1][:, :md] for e in es], 1)[:, o]
                dig = np.concatenate([e[2][:, :md] for e in es], 1)[:, o]
                npig = sum(int((e[3] == 0).sum()) for e in es)
                if npig == 0:
                    continue
                for t in range(10):
                    tp = np.cumsum((dtm[t] != 0) & ~dig[t]).astype(float)
                    fp = np.cumsum((dtm[t] == 0) & ~dig[t]).astype(float)
                    rc, pr = tp / npig, list(tp / (fp + tp + np.spacing(1)))
                    R[t, k, a, m] = rc[-1] if len(tp) else 0
                    for i in range(len(pr) - 1, 0, -1):
                        pr[i - 1] = max(pr[i - 1], pr[i])
                    P[t, :, k, a, m] = [pr[i] if i < len(pr) else 0 for i in np.searchsorted(rc, recs, "left")]

    def s(arr):
        return np.mean(arr[arr > -1]) if (arr > -1).any() else -1

    return [s(P[:, :, :, 0, 2]), s(P[0, :, :, 0, 2]), s(P[5, :, :, 0, 2]), s(P[..., 1, 2]), s(P[..., 2, 2]),
            s(P[..., 3, 2]), s(R[:, :, 0, 0]), s(R[:, :, 0, 1]), s(R[:, :, 0, 2]), s(R[:, :, 1, 2]),
            s(R[:, :, 2, 2]), s(R[:, :, 3, 2])]


def random_case(rng, n_videos=4, T=4, n_cats=3):
    """Blobs that overlap a lot (many IoUs near the thresholds), null frames, crowds, tied scores, and ground
    truth 'areas' scaled so that all three area ranges occur."""
    def blob(base=None):
        if base is not None and rng.random() < 0.8:
            m = base.copy()
            ys, xs = rng.integers(0, H, 6), rng.integers(0, W, 6)
            m[ys, xs] ^= 1
            m = np.roll(m, rng.integers(-1, 2), axis=int(rng.integers(0, 2)))
        else:
            y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
            m = np.zeros((H, W), np.uint8)
            m[y : y + rng.integers(3, H - y + 1), x : x + rng.integers(3, W - x + 1)] = 1
        return m

    anns, results, gmasks = [], [], {}
    for v in range(1, n_videos + 1):
        for _ in range(rng.integers(0, 4)):
            c = int(rng.integers(1, n_cats + 1))
            ms = [blob() for _ in range(T)]
            segs = [None if rng.random() < 0.2 else mask_io.encode(m) for m in ms]
            scale = rng.choice([1, 60, 300])
            areas = [None if s is None else mask_io.area(s) * scale for s in segs]
            anns.append((v, c, segs, int(rng.random() < 0.15), areas))
            gmasks.setdefault(v, []).append((c, ms))
        for _ in range(rng.integers(0, 9)):
            base = gmasks.get(v)
            if base and rng.random() < 0.7:
                c, ms = base[rng.integers(len(base))]
                c = c if rng.random() < 0.8 else int(rng.integers(1, n_cats + 1))
                ms = [blob(m) for m in ms]
            else:
                c, ms = int(rng.integers(1, n_cats + 1)), [blob() for _ in range(T)]
            ms = [m * (rng.random() > 0.05) for m in ms]  # some empty (zero-area) frames
            segs = [None if rng.random() < 0.15 else mask_io.encode(m) for m in ms]
            results.append(res(v, c, float(rng.integers(1, 6)) / 5, segs))  # few distinct scores -> ties
    return gt_file({v: T for v in range(1, n_videos + 1)}, anns, n_cats=n_cats), results


@pytest.mark.parametrize("seed", range(12))
def test_random_cases_agree_with_reference(seed, monkeypatch):
    gt, results = random_case(np.random.default_rng(seed))
    ref = [float(x) for x in reference(gt, results)]
    backends = ["numba", "pycocotools"] if ye.rle_kernels.AVAILABLE else ["pycocotools"]
    for backend in backends:  # both video IoU paths: compiled RLE kernels and batched pycocotools calls
        monkeypatch.setattr(ye, "BACKEND", backend)
        got = stats(gt, results)
        assert [got[k] for k in STAT_KEYS] == ref, backend


@pytest.mark.skipif(not ye.rle_kernels.AVAILABLE, reason="numba not installed")
def test_rle_kernels_match_pycocotools():
    from pycocotools import mask as mask_utils

    from avis.evaluation.rle_kernels import RleTable

    rng = np.random.default_rng(0)
    masks = (rng.random((40, 37, 23)) < rng.random((40, 1, 1))).astype(np.uint8)  # empty to full, many runs
    masks[0] = 0
    masks[1] = 1
    rles = mask_io.encode_many(masks)
    counts = [r["counts"] for r in rles]
    counts[3] = counts[3].encode("ascii")  # bytes counts are accepted too
    table = RleTable(counts)
    assert table.areas.tolist() == [int(m.sum()) for m in masks]
    assert set(table.totals.tolist()) == {37 * 23}
    a, b = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    inter = table.intersections(a.ravel(), b.ravel())
    expected = [int(mask_utils.area(mask_utils.merge([rles[i], rles[j]], intersect=True)))
                for i, j in zip(a.ravel(), b.ravel())]
    assert inter.tolist() == expected


def test_workers_give_identical_results():
    gt, results = random_case(np.random.default_rng(100), n_videos=6)
    assert stats(gt, results, workers=2) == stats(gt, results)


# ------------------------------------------------------------------------------------------- samples
def test_instance_samples_greedy_by_score():
    g1, g2 = box(0, 0, 10, 10), box(0, 12, 10, 22)
    crowd = box(12, 0, 20, 30)
    gt = gt_file({1: 1, 2: 1}, [(1, 1, [g1], 0), (1, 1, [g2], 0), (1, 1, [crowd], 1), (2, 2, [g1], 0)])
    d_hi = box(0, 0, 10, 8)  # IoU 0.8 with g1
    d_lo = box(0, 0, 10, 10)  # IoU 1.0 with g1, but lower score: g1 is taken, it gets nothing else
    d_g2 = box(0, 12, 5, 22)  # IoU 0.5 with g2
    results = [res(1, 1, 0.3, [d_lo]), res(1, 1, 0.9, [d_hi]), res(1, 1, 0.5, [d_g2]), res(1, 2, 0.9, [g1])]
    rows = instance_samples(gt, results)
    assert [(r["video_id"], r["category_id"], r["instance_id"]) for r in rows] == [(1, 1, 1), (1, 1, 2), (2, 2, 4)]
    assert rows[0]["iou"] == pytest.approx(0.8) and rows[0]["score"] == 0.9
    assert rows[1]["iou"] == pytest.approx(0.5) and rows[1]["score"] == 0.5
    assert math.isnan(rows[2]["iou"]) and math.isnan(rows[2]["score"])  # predicted in another video only
    # at threshold 0.9 the top detection (0.8) cannot take g1; the exact one can
    rows = instance_samples(gt, results, iou_threshold=0.9)
    assert rows[0]["iou"] == 1.0 and rows[0]["score"] == 0.3 and math.isnan(rows[1]["iou"])


# ------------------------------------------------------------------------------------------- CLI
def test_cli_score_outputs(tmp_path, cli):
    g = box(0, 0, 10, 10)
    gt = gt_file({1: 2}, [(1, 1, [g, g], 0), (1, 2, [g, None], 0)])
    results = [res(1, 1, 0.9, [g, box(0, 0, 10, 5)]), res(1, 2, 0.4, [box(10, 10, 20, 20), None])]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    p = cli("score", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json", "--out", tmp_path / "m.json",
            "--samples", tmp_path / "s.csv", "--per-category", "--pr-curves", tmp_path / "pr")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert list(m) == [*STAT_KEYS, "per_category"]  # --per-category adds its rows
    ev = evaluate(load_annotations(tmp_path / "gt.json"), load_results(tmp_path / "res.json"))
    assert {k: m[k] for k in STAT_KEYS} == ev.stats and m["AP50"] == pytest.approx(0.5)
    assert m["per_category"] == ev.per_category()
    assert "AP50" in p.stdout and "c2" in p.stdout
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [(r["instance_id"], r["score"]) for r in rows] == [("1", "0.9"), ("2", "")]
    assert float(rows[0]["iou"]) == pytest.approx(150 / 200)
    assert (tmp_path / "pr" / "pr_all.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "pr" / "pr_cat1.png").exists()


def test_cli_score_bad_input(tmp_path, cli):
    gt = gt_file({1: 1}, [(1, 1, [box(0, 0, 5, 5)], 0)])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([res(9, 1, 0.5, [box(0, 0, 5, 5)])]))
    p = cli("score", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json")
    assert p.returncode == 2 and "video 9: unknown video_id" in p.stderr and "Traceback" not in p.stderr
