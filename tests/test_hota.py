"""HOTA and FSLA (``avis.evaluation.hota``): TrackEval as the oracle of HOTA on random cases (crowds, empty frames
and masks, id switches, fragmented tracks, duplicate predictions, many tracks of one class), hand-computed cases
for both metrics, the compiled building blocks against scipy / numpy, an independent per-frame reference of
FSLA, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment as scipy_lsa

from avis.evaluation import hota as ht
from avis.evaluation.hota import ALPHAS, ARRAY_FIELDS, evaluate_tracking
from avis.io import masks as mask_io

H, W = 12, 10


def box(y0, x0, y1, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return mask_io.encode(m)


EMPTY = box(0, 0, 0, 0)


def gt_file(videos: dict, anns: list, n_cats: int = 2) -> dict:
    """videos: {id: T}; anns: (video, category, segmentations[, sounding[, iscrowd]])."""
    out = {"videos": [{"id": v, "width": W, "height": H, "length": t, "file_names": [f"v{v}/{i}.jpg" for i in range(t)]}
                      for v, t in videos.items()],
           "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)], "annotations": []}
    for i, a in enumerate(anns):
        v, c, segs = a[:3]
        ann = {"id": i + 1, "video_id": v, "category_id": c, "iscrowd": a[4] if len(a) > 4 else 0,
               "segmentations": segs, "areas": [None if s is None else mask_io.area(s) for s in segs]}
        if len(a) > 3:
            ann["sounding"] = a[3]
        out["annotations"].append(ann)
    return out


def res(v, c, segs, score=0.5):
    return {"video_id": v, "category_id": c, "score": score, "segmentations": segs}


# ----------------------------------------------------------------------------------- compiled building blocks
def test_linear_sum_assignment_is_scipys_including_ties():
    rng = np.random.default_rng(0)
    for trial in range(600):
        r, c = rng.integers(1, 9, 2)
        kind = trial % 3
        if kind == 0:
            m = rng.random((r, c))
        elif kind == 1:  # few distinct values: ties everywhere
            m = rng.integers(0, 3, (r, c)) * 0.25
        else:  # duplicate columns (two identical predictions) and zeros
            m = rng.random((r, c)) * (rng.random((r, c)) < 0.6)
            m[:, rng.integers(0, c)] = m[:, 0]
        rows, cols = scipy_lsa(-m)
        expected = np.full(r, -1)
        expected[rows] = cols
        assert np.array_equal(ht.linear_sum_assignment(np.ascontiguousarray(-m)), expected), (trial, m)
    assert len(ht.linear_sum_assignment(np.zeros((0, 3)))) == 0


def test_pairwise_sum_is_numpys():
    rng = np.random.default_rng(1)
    for n in [0, 1, 7, 8, 9, 16, 127, 128, 129, 300, 1000, 4099]:
        x = rng.random(n)
        assert ht._pairwise_sum(x, 0, n) == np.sum(x)  # bit for bit (ties of the Hungarian step depend on it)
    x = rng.random(50)
    assert ht._pairwise_sum(x, 10, 30) == np.sum(x[10:40])


# ------------------------------------------------------------------------------------------- HOTA by hand
def test_hota_perfect_and_id_switch_by_hand():
    a = [box(0, 0, 4, 4), box(0, 0, 4, 5), box(1, 1, 5, 5), box(2, 2, 6, 6)]
    gt = gt_file({1: 4}, [(1, 1, a)], n_cats=1)
    h, _ = evaluate_tracking(gt, [res(1, 1, a)])
    assert h.stats["HOTA"] == 1.0 and h.stats["DetA"] == 1.0 and h.stats["AssA"] == 1.0 and h.stats["LocA"] == 1.0
    # one ground-truth track covered by two predictions, two frames each: every detection is right (DetA 1);
    # each pair matches in 2 of the 4 + 2 - 2 frames of its tracks, AssA = (2 * 1/2 + 2 * 1/2) / 4
    h, _ = evaluate_tracking(gt, [res(1, 1, a[:2] + [None, None]), res(1, 1, [None, None] + a[2:])])
    assert h.stats["DetA"] == 1.0 and h.stats["AssA"] == 0.5 and h.stats["HOTA"] == pytest.approx(0.5 ** 0.5)
    assert h.stats["AssRe"] == 0.5 and h.stats["AssPr"] == 1.0


def test_hota_class_average_counts_empty_categories_and_empty_masks_are_detections():
    a = [box(0, 0, 4, 4), box(0, 0, 4, 4)]
    gt = gt_file({1: 2}, [(1, 1, a)], n_cats=2)  # category 2 has neither ground truth nor predictions
    h, _ = evaluate_tracking(gt, [res(1, 1, a)])
    assert h.per_category[1]["HOTA"].tolist() == [1.0] * len(ALPHAS)
    assert h.per_category[2]["HOTA"].tolist() == [0.0] * len(ALPHAS) and h.per_category[2]["LocA"][0] == 1.0
    assert h.stats["HOTA"] == 0.5 and h.stats["LocA"] == 1.0  # TrackEval's class average: both categories
    assert h.det_averaged["HOTA"][0] == 1.0
    # an empty mask is a detection (a false positive here), a null one is not
    h, _ = evaluate_tracking(gt, [res(1, 1, a), res(1, 1, [EMPTY, None])])
    assert h.per_category[1]["HOTA_FP"][0] == 1 and h.per_category[1]["DetA"][0] == 2 / 3


def test_hota_localisation_and_alpha():
    g = box(0, 0, 4, 4)  # 16 px
    p = box(0, 0, 4, 2)  # 8 px inside: IoU 0.5
    gt = gt_file({1: 1}, [(1, 1, [g])], n_cats=1)
    h, _ = evaluate_tracking(gt, [res(1, 1, [p])])
    tp = h.per_category[1]["HOTA_TP"]
    assert tp.tolist() == [1.0 if a <= 0.5 + 1e-12 else 0.0 for a in ALPHAS]  # IoU >= alpha (minus eps)
    assert h.per_category[1]["LocA"][0] == 0.5 and h.stats["LocA(0)"] == 0.5
    assert h.stats["HOTA"] == pytest.approx(10 / 19)


# ------------------------------------------------------------------------------------ HOTA against TrackEval
def _blob(rng):
    m = np.zeros((H, W), bool)
    y, x = rng.integers(0, H), rng.integers(0, W)
    m[y : y + rng.integers(1, H // 2 + 2), x : x + rng.integers(1, W // 2 + 2)] = True
    return m


def random_case(seed: int):
    """Ground truth and results with crowds, frames without detections, empty and null masks, fragmented tracks,
    id switches (a prediction following one instance, then another), duplicates, wrong categories, videos
    without predictions, and now and then many tracks of one category in a frame."""
    rng = np.random.default_rng(seed)
    cat_ids = rng.permutation(np.arange(1, 9))[: rng.integers(1, 5)].tolist()
    enc = mask_io.encode
    videos, anns, results = [], [], []
    for v in range(1, int(rng.integers(1, 5)) + 1):
        T = int(rng.integers(1, 7))
        videos.append({"id": v, "width": W, "height": H, "length": T, "file_names": [f"v{v}/{t}.jpg" for t in range(T)]})
        inst = []
        for _ in range(int(rng.integers(0, 12 if rng.random() < 0.2 else 5))):
            ms = [None if rng.random() < 0.25 else _blob(rng) for _ in range(T)]
            c = int(rng.choice(cat_ids))
            segs = [None if m is None else enc(m) for m in ms]
            anns.append({"id": len(anns) + 1, "video_id": v, "category_id": c, "iscrowd": int(rng.random() < 0.15),
                         "segmentations": segs, "areas": [None if s is None else mask_io.area(s) for s in segs],
                         "sounding": [bool(rng.random() < 0.6) for _ in range(T)]})
            inst.append((ms, c))
        if rng.random() < 0.15:
            continue
        for _ in range(int(rng.integers(0, 14 if rng.random() < 0.2 else 6))):
            if results and results[-1]["video_id"] == v and rng.random() < 0.1:  # an exact duplicate
                results.append(dict(results[-1], score=float(rng.random())))
                continue
            src = [inst[i] for i in rng.integers(0, len(inst), 2)] if inst and rng.random() < 0.7 else None
            switch = int(rng.integers(0, T + 1))
            segs = []
            for t in range(T):
                u = rng.random()
                if u < 0.2:
                    segs.append(None)
                elif u < 0.27:
                    segs.append(enc(np.zeros((H, W), bool)))
                else:
                    m = None if src is None else src[0 if t < switch else 1][0][t]
                    segs.append(enc(_blob(rng) if m is None else m ^ (rng.random((H, W)) < 0.1)))
            c = src[0][1] if src is not None and rng.random() < 0.8 else int(rng.choice(cat_ids))
            results.append(res(v, c, segs, float(rng.random())))
    return {"videos": videos, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}, results


@pytest.fixture(scope="module")
def trackeval_oracle():
    pytest.importorskip("trackeval")  # the dev extra
    from tests.trackeval_oracle import trackeval_hota

    return trackeval_hota


@pytest.mark.parametrize("block", range(4))
def test_hota_equals_trackeval_on_random_cases(block, trackeval_oracle):
    for seed in range(block * 15, block * 15 + 15):
        gt, results = random_case(seed)
        te = trackeval_oracle(gt, results)
        h, _ = evaluate_tracking(gt, results)
        mine = {"cls_comb_cls_av": h.class_averaged, "cls_comb_det_av": h.det_averaged,
                **{c["name"]: h.per_category[c["id"]] for c in gt["categories"]}}
        assert set(mine) == set(te)
        for key, ref in te.items():
            for f in (*ARRAY_FIELDS, "HOTA_TP", "HOTA_FN", "HOTA_FP", "HOTA(0)", "LocA(0)", "HOTALocA(0)"):
                np.testing.assert_allclose(mine[key][f], ref[f], rtol=0, atol=1e-12, err_msg=f"{seed} {key} {f}")
        assert h.stats["HOTA"] == pytest.approx(float(np.mean(te["cls_comb_cls_av"]["HOTA"])), abs=1e-12)


# ------------------------------------------------------------------------------------------- FSLA by hand
def _fsla(gt, results):
    return evaluate_tracking(gt, results, hota=False, fsla=True)[1]


def test_fsla_frame_kinds_and_alpha_by_hand():
    a, b = box(0, 0, 4, 4), box(6, 5, 10, 9)  # 16 px each, disjoint
    a6 = box(0, 0, 4, 3)  # 12 px inside a: IoU 0.75
    b4 = box(6, 5, 10, 7)  # 8 px inside b: IoU 0.5
    # frame 0: nothing sounds; 1: only A sounds; 2: A and B sound
    gt = gt_file({1: 3}, [(1, 1, [a, a, a], [False, True, True]), (1, 2, [None, b, b], [False, False, True])])
    f = _fsla(gt, [res(1, 1, [None, a6, a6]), res(1, 2, [None, None, b4])])
    n_ok = np.ones(19)
    s_ok = (0.75 > ALPHAS).astype(float)
    m_ok = (0.5 > ALPHAS).astype(float)  # every pair above alpha: the lower IoU decides
    assert (f["FSLAn_frames"], f["FSLAs_frames"], f["FSLAm_frames"]) == (1, 1, 1)
    assert f["FSLAn"] == 1.0 and f["FSLAs"] == pytest.approx(s_ok.mean()) and f["FSLAm"] == pytest.approx(m_ok.mean())
    assert f["FSLA"] == pytest.approx(((n_ok + s_ok + m_ok) / 3).mean())


def test_fsla_counts_classes_and_empty_masks():
    a, b = box(0, 0, 4, 4), box(6, 5, 10, 9)
    gt = gt_file({1: 1}, [(1, 1, [a], [True])])
    assert _fsla(gt, [res(1, 1, [a])])["FSLA"] == 1.0
    assert _fsla(gt, [res(1, 2, [a])])["FSLA"] == 0.0  # the wrong class
    assert _fsla(gt, [res(1, 1, [a]), res(1, 2, [b])])["FSLA"] == 0.0  # one mask too many
    assert _fsla(gt, [res(1, 1, [a]), res(1, 2, [EMPTY])])["FSLA"] == 1.0  # an empty mask is no sound source
    silent = gt_file({1: 1}, [(1, 1, [a], [False])])  # a visible object that does not sound
    f = _fsla(silent, [res(1, 1, [a])])
    assert f["FSLAn_frames"] == 1 and f["FSLA"] == 0.0 and f["FSLAs"] == -1.0 and f["FSLAm"] == -1.0
    assert _fsla(silent, [res(1, 1, [EMPTY])])["FSLA"] == 1.0
    assert _fsla(silent, [])["FSLA"] == 1.0


def test_fsla_pairs_tracks_over_the_video():
    a, b = box(0, 0, 4, 4), box(6, 5, 10, 9)
    # two objects of categories 1 and 2 sound together; the prediction swaps their labels: the class sets are
    # equal and so are the counts, but each track is paired with the prediction that follows it
    gt = gt_file({1: 2}, [(1, 1, [a, a], [True, True]), (1, 2, [b, b], [True, True])])
    assert _fsla(gt, [res(1, 1, [a, a]), res(1, 2, [b, b])])["FSLA"] == 1.0
    assert _fsla(gt, [res(1, 2, [a, a]), res(1, 1, [b, b])])["FSLA"] == 0.0
    # a pairing is for the whole video: a prediction that jumps to the other object in frame 1 is wrong there
    gt1 = gt_file({1: 2}, [(1, 1, [a, a], [True, True]), (1, 1, [b, b], [True, True])], n_cats=1)
    f = _fsla(gt1, [res(1, 1, [a, b]), res(1, 1, [b, a])])
    assert f["FSLAm_frames"] == 2 and f["FSLA"] == 0.5


def test_fsla_needs_sounding_flags():
    from avis.errors import InputError

    a = box(0, 0, 4, 4)
    with pytest.raises(InputError, match="has none"):
        _fsla(gt_file({1: 1}, [(1, 1, [a])]), [])
    with pytest.raises(InputError, match="annotation 2"):
        _fsla(gt_file({1: 1}, [(1, 1, [a], [True]), (1, 1, [a])]), [])


# ---------------------------------------------------------------------------- FSLA against a per-frame reference
def fsla_reference(gt, results):
    """The definition of docs/evaluation.md written out per frame with pycocotools and scipy."""
    counts = np.zeros((6, len(ALPHAS)))
    eps = np.finfo("float").eps
    for v in sorted(gt["videos"], key=lambda v: v["id"]):
        T = v["length"]
        G = [a for a in gt["annotations"] if a["video_id"] == v["id"]]
        D = [r for r in results if r["video_id"] == v["id"]]
        on = [[s is not None and bool(a["sounding"][t]) for t, s in enumerate(a["segmentations"])] for a in G]
        gi = sorted((a["id"], i) for i, a in enumerate(G) if any(on[i]))
        g_rank = {i: k for k, (_, i) in enumerate(gi)}
        d_list = [j for j, r in enumerate(D) if any(s is not None for s in r["segmentations"])]
        d_rank = {j: k for k, j in enumerate(d_list)}
        pmc = np.zeros((len(gi), len(d_list)))
        gc, dc = np.zeros((len(gi), 1)), np.zeros((1, len(d_list)))
        for t in range(T):
            rows = [i for i in range(len(G)) if on[i][t]]
            cols = [j for j in range(len(D)) if D[j]["segmentations"][t] is not None]
            sim = np.asarray(mask_utils.iou([G[i]["segmentations"][t] for i in rows],
                                            [D[j]["segmentations"][t] for j in cols], [0] * len(cols)))
            sim = sim.reshape(len(rows), len(cols))
            den = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
            s = np.where(den > eps, sim / np.where(den > eps, den, 1), 0)
            for a_, i in enumerate(rows):
                for b_, j in enumerate(cols):
                    pmc[g_rank[i], d_rank[j]] += s[a_, b_]
            for i in rows:
                gc[g_rank[i]] += 1
            for j in cols:
                dc[0, d_rank[j]] += 1
        pairs = list(zip(*scipy_lsa(-(pmc / (gc + dc - pmc))))) if pmc.size else []
        pair = {gi[r][1]: d_list[c] for r, c in pairs}

        def iou(i, j, t, G=G, D=D):
            d = D[j]["segmentations"][t]
            return 0.0 if d is None else float(mask_utils.iou([G[i]["segmentations"][t]], [d], [0])[0, 0])

        for t in range(T):
            present = [i for i in range(len(G)) if on[i][t]]
            preds = [j for j in range(len(D)) if D[j]["segmentations"][t] is not None
                     and mask_utils.area(D[j]["segmentations"][t]) > 0]
            kind = min(len(present), 2)
            counts[2 * kind] += 1
            if len(present) != len(preds) or {G[i]["category_id"] for i in present} != {D[j]["category_id"] for j in preds}:
                continue
            for k, alpha in enumerate(ALPHAS):
                if kind == 0:
                    ok = True
                elif kind == 1:
                    i = present[0]
                    ok = i in pair and iou(i, pair[i], t) > alpha
                else:
                    ok = all(G[i]["category_id"] == D[j]["category_id"] and
                             (iou(i, j, t) > alpha if on[i][t] else
                              D[j]["segmentations"][t] is None or mask_utils.area(D[j]["segmentations"][t]) == 0)
                             for i, j in pair.items())
                counts[2 * kind + 1, k] += ok
    return ht._fsla_numbers(counts.astype(np.int64))


def test_fsla_equals_the_per_frame_reference_on_random_cases():
    for seed in range(40):
        gt, results = random_case(seed)
        assert _fsla(gt, results) == pytest.approx(fsla_reference(gt, results), abs=1e-12), seed


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_score_hota_fsla(tmp_path, cli):
    gt, results = random_case(3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    p = cli("score", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json", "--metrics", "ytvis", "hota",
            "fsla", "--out", tmp_path / "m.json", "--per-category")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    h, f = evaluate_tracking(gt, results, fsla=True)
    assert {k: m[k] for k in ht.HOTA_KEYS} == h.stats and {k: m[k] for k in ht.FSLA_KEYS} == pytest.approx(
        {k: f[k] for k in ht.FSLA_KEYS})
    assert "AP" in m and m["HOTA_alpha"]["alpha"] == ALPHAS.tolist()
    assert [r["HOTA"] for r in m["per_category"]] == pytest.approx([float(np.mean(h.per_category[c]["HOTA"]))
                                                                    for c in h.category_ids])
    assert "HOTA  @[alpha=0.05:0.95" in p.stdout and "FSLA" in p.stdout and "AssA" in p.stdout
    # HOTA alone; a score threshold drops predictions before every metric
    p = cli("score", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json", "--metrics", "hota",
            "--score-threshold", "0.5", "--out", tmp_path / "h.json")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "h.json").read_text())
    assert "AP" not in m and m["HOTA"] == evaluate_tracking(gt, [r for r in results if r["score"] > 0.5])[0].stats["HOTA"]


def test_cli_fsla_without_sounding_flags_is_one_line(tmp_path, cli):
    gt = gt_file({1: 1}, [(1, 1, [box(0, 0, 4, 4)])])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text("[]")
    p = cli("score", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json", "--metrics", "fsla")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "gt.json: FSLA needs per-frame 'sounding' flags" in p.stderr
