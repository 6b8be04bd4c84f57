"""Benchmark: ``avis.evaluation`` against a straightforward per-frame pycocotools scorer, side by side.

Builds a YouTube-VIS-sized case (default 300 videos of 36 frames at 640x360, 5 instances and 100 predictions
per video; ellipse masks jittered over time, random scores rounded to 3 decimals so that ties occur), caches it
as JSON in the temp folder, then times

* ``reference``: the official evaluator's loop structure re-implemented (video IoU by per-frame
  ``merge``/``area`` per pair, the per-threshold/per-detection/per-ground-truth matching loop, the accumulate
  and summarize loops), and
* ``avis``: :func:`avis.evaluation.ytvis_eval.evaluate` (1 process, and ``--workers`` processes),

asserts that all give the same 12 numbers, and prints the timings and ratios.

    python scripts/bench_score.py [--videos 300] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avis, not an installed one

H, W, T = 360, 640, 36
N_CATS = 40


# ------------------------------------------------------------------------------------------ data generation
def ellipse_rle(cx: float, cy: float, a: float, b: float) -> dict:
    """Compressed RLE of a filled axis-aligned ellipse, built from per-column runs (no H x W raster)."""
    x = np.arange(max(0, int(np.floor(cx - a))), min(W, int(np.ceil(cx + a)) + 1))
    hh = b * np.sqrt(np.clip(1 - ((x - cx) / a) ** 2, 0, None))
    y0 = np.clip(np.ceil(cy - hh), 0, H).astype(np.int64)
    y1 = np.clip(np.floor(cy + hh) + 1, 0, H).astype(np.int64)
    keep = y1 > y0
    starts, ends = x[keep] * H + y0[keep], x[keep] * H + y1[keep]
    if len(starts):  # merge runs that touch across a column boundary
        join = starts[1:] == ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][~join]])
        ends = np.concatenate([ends[:-1][~join], ends[-1:]])
    edges = np.concatenate([[0], np.stack([starts, ends], 1).ravel(), [H * W]])
    counts = np.diff(edges).tolist()
    rle = mask_utils.frPyObjects({"size": [H, W], "counts": counts}, H, W)
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def track(rng, cx, cy, a, b, first, last, jitter=0.0):
    """Per-frame RLEs (None outside [first, last]) of an ellipse drifting over time."""
    vx, vy = rng.normal(0, 2, 2)
    segs = []
    for t in range(T):
        if t < first or t > last:
            segs.append(None)
            continue
        j = rng.normal(0, jitter, 4) if jitter else np.zeros(4)
        segs.append(ellipse_rle(cx + vx * t + j[0], cy + vy * t + j[1], max(3.0, a * (1 + j[2] / 20)),
                                max(3.0, b * (1 + j[3] / 20))))
    return segs


def make_case(n_videos: int, seed: int = 0, n_inst: int = 5, n_pred: int = 100):
    rng = np.random.default_rng(seed)
    videos, anns, results = [], [], []
    for v in range(1, n_videos + 1):
        videos.append({"id": v, "width": W, "height": H, "length": T,
                       "file_names": [f"v{v}/{t:05d}.jpg" for t in range(T)]})
        insts = []
        for _ in range(n_inst):
            p = dict(cx=rng.uniform(80, W - 80), cy=rng.uniform(60, H - 60), a=rng.uniform(8, 230),
                     b=rng.uniform(8, 170))
            first = int(rng.integers(0, 8)) if rng.random() < 0.5 else 0
            last = T - 1 - (int(rng.integers(0, 8)) if rng.random() < 0.5 else 0)
            cat = int(rng.integers(1, N_CATS + 1))
            segs = track(np.random.default_rng(rng.integers(1 << 31)), **p, first=first, last=last)
            areas = [None if s is None else int(mask_utils.area(s)) for s in segs]
            anns.append({"id": len(anns) + 1, "video_id": v, "category_id": cat, "iscrowd": int(rng.random() < 0.03),
                         "segmentations": segs, "areas": areas,
                         "bboxes": [None if s is None else mask_utils.toBbox(s).tolist() for s in segs]})
            insts.append((p, first, last, cat))
        for k in range(n_pred):
            if k < 60:  # noisy copies of the ground truth, sometimes with the wrong class
                p, first, last, cat = insts[k % n_inst]
                q = {key: val * (1 + rng.normal(0, 0.05)) for key, val in p.items()}
                cat = cat if rng.random() < 0.7 else int(rng.integers(1, N_CATS + 1))
                segs = track(np.random.default_rng(rng.integers(1 << 31)), **q, first=first, last=last,
                             jitter=float(rng.uniform(0.5, 8)))
            else:  # background false positives
                q = dict(cx=rng.uniform(40, W - 40), cy=rng.uniform(40, H - 40), a=rng.uniform(6, 120),
                         b=rng.uniform(6, 90))
                first = int(rng.integers(0, T // 2))
                segs = track(np.random.default_rng(rng.integers(1 << 31)), **q, first=first, last=T - 1)
                cat = int(rng.integers(1, N_CATS + 1))
            results.append({"video_id": v, "category_id": cat, "score": round(float(rng.random()), 3),
                            "segmentations": segs})
    gt = {"videos": videos, "annotations": anns,
          "categories": [{"id": c, "name": f"class{c}"} for c in range(1, N_CATS + 1)]}
    return gt, results


def cached_case(n_videos: int, seed: int) -> tuple[Path, Path]:
    d = Path(tempfile.gettempdir()) / f"avis_bench_score2_v{n_videos}_s{seed}"
    gt_p, res_p = d / "gt.json", d / "results.json"
    if not (gt_p.exists() and res_p.exists()):
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        gt, res = make_case(n_videos, seed)
        gt_p.write_text(json.dumps(gt))
        res_p.write_text(json.dumps(res))
        print(f"generated the case in {time.perf_counter() - t0:.1f} s -> {d}")
    return gt_p, res_p


# --------------------------------------------------------------------- the reference (official loop structure)
def reference_evaluate(gt: dict, results: list[dict]) -> np.ndarray:
    """The official ytvoseval algorithm, loop for loop (per pair, per frame pycocotools merges)."""
    iou_thrs = np.linspace(0.5, 0.95, 10)
    rec_thrs = np.linspace(0.0, 1.0, 101)
    max_dets = [1, 10, 100]
    area_rng = [[0, 1e10], [0, 128**2], [128**2, 256**2], [256**2, 1e10]]
    vid_ids = sorted(v["id"] for v in gt["videos"])
    cat_ids = sorted(c["id"] for c in gt["categories"])

    def avg(areas):
        kept = [a for a in areas if a]
        return np.array(kept).mean() if kept else 0

    for i, r in enumerate(results):
        r["areas"] = [mask_utils.area(s) if s else None for s in r["segmentations"]]  # one mask per call
        r["id"], r["avg_area"], r["iscrowd"] = i + 1, avg(r["areas"]), 0
    for g in gt["annotations"]:
        g["avg_area"] = avg(g["areas"])
        g["ignore"] = bool(g["iscrowd"])
    gts, dts = defaultdict(list), defaultdict(list)
    for g in gt["annotations"]:
        gts[g["video_id"], g["category_id"]].append(g)
    for r in results:
        dts[r["video_id"], r["category_id"]].append(r)

    def iou_seq(ds, gs):
        i = u = 0.0
        for d, g in zip(ds, gs):
            if d and g:
                i += mask_utils.area(mask_utils.merge([d, g], True))
                u += mask_utils.area(mask_utils.merge([d, g], False))
            elif not d and g:
                u += mask_utils.area(g)
            elif d and not g:
                u += mask_utils.area(d)
        return i / u if u > 0 else 0.0

    ious = {}
    for v in vid_ids:
        for c in cat_ids:
            g, d = gts[v, c], dts[v, c]
            d = [d[i] for i in np.argsort([-x["score"] for x in d], kind="mergesort")][:100]
            m = np.zeros((len(d), len(g)))
            for i, j in np.ndindex(m.shape):
                m[i, j] = iou_seq(d[i]["segmentations"], g[j]["segmentations"])
            ious[v, c] = m

    def evaluate_vid(v, c, rng):
        g, d = gts[v, c], dts[v, c]
        if not g and not d:
            return None
        for x in g:
            x["_ignore"] = int(x["ignore"] or x["avg_area"] < rng[0] or x["avg_area"] > rng[1])
        gi = np.argsort([x["_ignore"] for x in g], kind="mergesort")
        g = [g[i] for i in gi]
        di = np.argsort([-x["score"] for x in d], kind="mergesort")
        d = [d[i] for i in di[:100]]
        crowd = [int(x["iscrowd"]) for x in g]
        iou = ious[v, c][:, gi] if len(ious[v, c]) else ious[v, c]
        nt = len(iou_thrs)
        gtm, dtm = np.zeros((nt, len(g))), np.zeros((nt, len(d)))
        gt_ig = np.array([x["_ignore"] for x in g])
        dt_ig = np.zeros((nt, len(d)))
        if len(iou):
            for ti, t in enumerate(iou_thrs):
                for dind, dd in enumerate(d):
                    best, m = min([t, 1 - 1e-10]), -1
                    for gind in range(len(g)):
                        if gtm[ti, gind] > 0 and not crowd[gind]:
                            continue
                        if m > -1 and gt_ig[m] == 0 and gt_ig[gind] == 1:
                            break
                        if iou[dind, gind] < best:
                            continue
                        best, m = iou[dind, gind], gind
                    if m == -1:
                        continue
                    dt_ig[ti, dind] = gt_ig[m]
                    dtm[ti, dind] = g[m]["id"]
                    gtm[ti, m] = dd["id"]
        out = np.array([x["avg_area"] < rng[0] or x["avg_area"] > rng[1] for x in d]).reshape((1, len(d)))
        dt_ig = np.logical_or(dt_ig, np.logical_and(dtm == 0, np.repeat(out, nt, 0)))
        return {"dtScores": [x["score"] for x in d], "dtMatches": dtm, "dtIgnore": dt_ig, "gtIgnore": gt_ig}

    ev = {(c, a, v): evaluate_vid(v, c, rng) for c in cat_ids for a, rng in enumerate(area_rng) for v in vid_ids}
    T_, R, K, A, M = len(iou_thrs), len(rec_thrs), len(cat_ids), len(area_rng), len(max_dets)
    precision, recall = -np.ones((T_, R, K, A, M)), -np.ones((T_, K, A, M))
    for k, c in enumerate(cat_ids):
        for a in range(A):
            for m, md in enumerate(max_dets):
                E = [ev[c, a, v] for v in vid_ids if ev[c, a, v] is not None]
                if not E:
                    continue
                scores = np.concatenate([e["dtScores"][:md] for e in E])
                inds = np.argsort(-scores, kind="mergesort")
                dtm = np.concatenate([e["dtMatches"][:, :md] for e in E], axis=1)[:, inds]
                dt_ig = np.concatenate([e["dtIgnore"][:, :md] for e in E], axis=1)[:, inds]
                gt_ig = np.concatenate([e["gtIgnore"] for e in E])
                npig = np.count_nonzero(gt_ig == 0)
                if npig == 0:
                    continue
                tps = np.logical_and(dtm, np.logical_not(dt_ig))
                fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
                tp_sum = np.cumsum(tps, axis=1).astype(float)
                fp_sum = np.cumsum(fps, axis=1).astype(float)
                for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
                    nd = len(tp)
                    rc = tp / npig
                    pr = (tp / (fp + tp + np.spacing(1))).tolist()
                    q = [0.0] * R
                    recall[t, k, a, m] = rc[-1] if nd else 0
                    for i in range(nd - 1, 0, -1):
                        if pr[i] > pr[i - 1]:
                            pr[i - 1] = pr[i]
                    for ri, pi in enumerate(np.searchsorted(rc, rec_thrs, side="left")):
                        if pi >= nd:
                            break
                        q[ri] = pr[pi]
                    precision[t, :, k, a, m] = np.array(q)

    def summ(ap, thr=None, a=0, m=2):
        s = precision if ap else recall
        if thr is not None:
            s = s[np.where(thr == iou_thrs)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        return -1 if len(s[s > -1]) == 0 else np.mean(s[s > -1])

    return np.array([summ(1), summ(1, 0.5), summ(1, 0.75), summ(1, a=1), summ(1, a=2), summ(1, a=3),
                     summ(0, m=0), summ(0, m=1), summ(0), summ(0, a=1), summ(0, a=2), summ(0, a=3)])


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from avis.evaluation.ytvis_eval import STAT_KEYS, evaluate  # noqa: I001
    from avis.io.ytvis import load_annotations, load_results

    gt_p, res_p = cached_case(args.videos, args.seed)
    # the generated results file (about 1.3 MB per video) passes the loader's default 256 MiB JSON limit
    os.environ.setdefault("AVIS_MAX_JSON_BYTES", str(max(256 << 20, 2 * (gt_p.stat().st_size + res_p.stat().st_size))))
    gt, res = load_annotations(gt_p), load_results(res_p)
    print(f"case: {args.videos} videos x {T} frames at {W}x{H}, {len(gt['annotations'])} instances, "
          f"{len(res)} predictions")

    import avis.evaluation.ytvis_eval as ye

    t0 = time.perf_counter()  # the first video with its ground truth and results: every kernel runs once
    v1 = gt["videos"][0]["id"]
    evaluate({**gt, "videos": gt["videos"][:1], "annotations": [a for a in gt["annotations"] if a["video_id"] == v1]},
             [r for r in res if r["video_id"] == v1])
    print(f"numba kernels: compiled or loaded from cache in {time.perf_counter() - t0:.2f} s (not timed below)")

    def timed(name, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        timings[name] = (time.perf_counter() - w0, time.process_time() - c0)
        return out

    timings, stats = {}, {}
    for backend in ("numba", "pycocotools") if ye.rle_kernels.AVAILABLE else ("pycocotools",):
        ye.BACKEND = backend
        s = timed(f"avis, {backend} (1 process)", lambda: evaluate(gt, res).stats)
        stats[backend] = np.array([s[k] for k in STAT_KEYS])
    ye.BACKEND = "numba" if ye.rle_kernels.AVAILABLE else "pycocotools"
    if args.workers > 1:
        s = timed(f"avis, {ye.BACKEND} ({args.workers} processes)", lambda: evaluate(gt, res, workers=args.workers).stats)
        stats["avis_mp"] = np.array([s[k] for k in STAT_KEYS])
    gt_ref, res_ref = copy.deepcopy(gt), copy.deepcopy(res)
    ref_name = "reference (per-frame pycocotools)"
    stats["reference"] = timed(ref_name, lambda: reference_evaluate(gt_ref, res_ref))

    for name, s in stats.items():
        assert np.array_equal(s, stats["reference"]), f"{name} differs from the reference:\n{s}\n{stats['reference']}"
    print("the 12 numbers agree exactly:", dict(zip(STAT_KEYS, np.round(stats["reference"], 4).tolist())))
    rw, rc = timings[ref_name]
    print(f"{'scorer':<40} {'wall s':>8} {'CPU s':>8} {'speed-up wall':>14} {'speed-up CPU':>13}")
    for name, (w, c) in timings.items():
        print(f"{name:<40} {w:8.2f} {c:8.2f} {rw / w:13.1f}x {rc / c:12.1f}x")
    print("(CPU = this process's CPU time; worker processes are not included in it)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
