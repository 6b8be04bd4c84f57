"""Benchmark: avis's scorers side by side with the references they must equal.

Builds a YouTube-VIS-sized case (default 300 videos of 36 frames at 640x360, 5 instances and 100 predictions
per video; ellipse masks jittered over time, random scores rounded to 3 decimals so that ties occur), caches it
as JSON in the temp folder, then, as selected by ``--parts``:

* ``ap``: :func:`avis.evaluation.ytvis_eval.evaluate` (each backend: C, numba, pycocotools; 1 process, and
  ``--workers`` processes) against
  ``reference``, the official evaluator's loop structure re-implemented (video IoU by per-frame
  ``merge``/``area`` per pair, the per-threshold/per-detection/per-ground-truth matching loop, the accumulate
  and summarize loops); the 12 numbers must be identical.
* ``hota``: :func:`avis.evaluation.hota.evaluate_tracking` against TrackEval (the ``trackeval`` package, its
  YouTube-VIS dataset class and HOTA metric), both from the JSON files and, for avis, the scoring alone; every
  class-averaged HOTA field must agree to 1e-9. FSLA is timed on the same case with random ``sounding`` flags.
* ``e2e``: the whole ``avis score`` process against the official evaluator's process (``ytvis.py`` /
  ``ytviseval.py`` from the mmdet 3.3.0 wheel, fetched with ``pip download`` into a cache folder on first use,
  ``np.float`` replaced by ``float``: load + evaluate + accumulate + summarize) on the ``--e2e-videos`` case;
  the 12 numbers must be identical. ``--repeat`` rounds, each running every process once, back to back; the
  medians of wall and CPU time (user + system) and of the per-round ratios, and the load average.
  ``--e2e-numba`` adds ``avis score`` with the C scorer switched off, ``--e2e-before DIR`` another checkout's.
* ``phases``: where the CPU time of ``avis score`` goes: its steps in a fresh process, CPU seconds per phase,
  median of ``--repeat`` processes.

    python scripts/bench_score.py [--videos 300] [--e2e-videos 100] [--parts ap hota e2e phases] [--workers 2]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
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


# ------------------------------------------------------------------------------------------------------ parts
def _timed(timings: dict, name: str, fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    timings[name] = (time.perf_counter() - w0, time.process_time() - c0)
    return out


def _print_timings(timings: dict, ref_name: str) -> None:
    rw, rc = timings[ref_name]
    print(f"{'variant':<52} {'wall s':>8} {'CPU s':>8} {'speed-up wall':>14} {'speed-up CPU':>13}")
    for name, (w, c) in timings.items():
        print(f"{name:<52} {w:8.2f} {c:8.2f} {rw / w:13.1f}x {rc / c:12.1f}x")


def _warm_up(gt: dict, res: list[dict], fn) -> float:
    """Run ``fn`` on the first video alone (every kernel compiled or loaded from numba's cache); its seconds."""
    t0 = time.perf_counter()
    v1 = gt["videos"][0]["id"]
    fn({**gt, "videos": gt["videos"][:1], "annotations": [a for a in gt["annotations"] if a["video_id"] == v1]},
       [r for r in res if r["video_id"] == v1])
    return time.perf_counter() - t0


def bench_ap(args, gt: dict, res: list[dict]) -> None:
    import avis.evaluation.ytvis_eval as ye
    from avis.evaluation.ytvis_eval import STAT_KEYS, evaluate

    print(f"\n== AP: avis vs the official loop structure ({len(gt['videos'])} videos)")
    timings, stats = {}, {}
    default = ye.BACKEND
    backends = (["c"] if ye.rle_c.AVAILABLE else []) + (["numba"] if ye.NUMBA else []) + ["pycocotools"]
    for backend in backends:
        ye.BACKEND = backend
        print(f"{backend}: first video (numba: kernels compiled or loaded from its cache) in "
              f"{_warm_up(gt, res, evaluate):.2f} s (not timed below)")
        s = _timed(timings, f"avis, {backend} (1 process)", lambda: evaluate(gt, res).stats)
        stats[backend] = np.array([s[k] for k in STAT_KEYS])
    ye.BACKEND = default
    if args.workers > 1:
        s = _timed(timings, f"avis, {ye.BACKEND} ({args.workers} processes)",
                   lambda: evaluate(gt, res, workers=args.workers).stats)
        stats["avis_mp"] = np.array([s[k] for k in STAT_KEYS])
    gt_ref, res_ref = copy.deepcopy(gt), copy.deepcopy(res)
    ref_name = "reference (per-frame pycocotools)"
    stats["reference"] = _timed(timings, ref_name, lambda: reference_evaluate(gt_ref, res_ref))
    for name, s in stats.items():
        assert np.array_equal(s, stats["reference"]), f"{name} differs from the reference:\n{s}\n{stats['reference']}"
    print("the 12 numbers agree exactly:", dict(zip(STAT_KEYS, np.round(stats["reference"], 4).tolist())))
    timings = {ref_name: timings.pop(ref_name), **timings}
    _print_timings(timings, ref_name)
    print("(CPU = this process's CPU time; worker processes are not included in it)")


def bench_hota(args, gt_p: Path, res_p: Path) -> None:
    from avis.evaluation.hota import ARRAY_FIELDS, evaluate_tracking
    from avis.io.ytvis import load_annotations, load_results
    from tests.trackeval_oracle import run_trackeval, write_trackeval_layout

    def load():
        gt = load_annotations(gt_p)
        return gt, load_results(res_p, gt=gt)

    gt, res = load()
    print(f"\n== HOTA: avis vs TrackEval ({len(gt['videos'])} videos)")
    print(f"numba kernels: compiled or loaded from cache in {_warm_up(gt, res, evaluate_tracking):.2f} s "
          "(not timed below)")
    layout = Path(tempfile.mkdtemp(prefix="avis_bench_trackeval_"))
    write_trackeval_layout(gt, res, layout)  # TrackEval's folders and its GT form (not timed)
    del gt, res  # TrackEval runs alone in the process (the cyclic GC would also walk our objects)
    gc.collect()
    timings = {}
    te = _timed(timings, "TrackEval: read its JSON files + evaluate", lambda: run_trackeval(layout))
    gc.collect()
    ours = _timed(timings, "avis: load + validate the JSON files + HOTA",
                  lambda: evaluate_tracking(*load())[0])
    gt, res = load()
    gc.freeze()  # as avis score does after loading
    ours_only = _timed(timings, "avis: HOTA on the loaded files (scoring alone)", lambda: evaluate_tracking(gt, res)[0])
    if args.workers > 1:
        _timed(timings, f"avis: HOTA, {args.workers} processes", lambda: evaluate_tracking(gt, res, workers=args.workers))
    rng = np.random.default_rng(args.seed)
    for a in gt["annotations"]:
        a["sounding"] = (rng.random(len(a["segmentations"])) < 0.7).tolist()
    fsla = _timed(timings, "avis: FSLA on the loaded files (random 'sounding')",
                  lambda: evaluate_tracking(gt, res, hota=False, fsla=True)[1])
    gc.unfreeze()
    ref = te["cls_comb_cls_av"]
    for h in (ours, ours_only):
        worst = max(float(np.max(np.abs(np.asarray(h.class_averaged[f]) - ref[f]))) for f in ARRAY_FIELDS)
        assert worst < 1e-9, f"HOTA differs from TrackEval by {worst}"
    print(f"class-averaged fields equal TrackEval's (largest difference {worst:.1e}):",
          {k: round(v, 4) for k, v in ours.stats.items()})
    print("FSLA:", {k: round(v, 4) for k, v in fsla.items()})
    _print_timings(timings, "TrackEval: read its JSON files + evaluate")
    shutil.rmtree(layout, ignore_errors=True)


def official_evaluator(cache: Path) -> Path:
    """A folder with the official ``ytvis.py`` / ``ytviseval.py`` (from the mmdet 3.3.0 wheel, fetched with pip
    on first use; ``np.float`` -> ``float``, which NumPy 1.24 removed) and ``run_official.py``."""
    folder = cache / "ytvis_official"
    if (folder / "run_official.py").exists():
        return folder
    wheel_dir = cache / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if not list(wheel_dir.glob("mmdet-3.3.0-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "mmdet==3.3.0", "--no-deps", "-d", str(wheel_dir),
                        "-q"], check=True)
    wheel = next(wheel_dir.glob("mmdet-3.3.0-*.whl"))
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in ("ytvis.py", "ytviseval.py"):
            src = z.read(f"mmdet/evaluation/functional/{name}").decode()
            (folder / name).write_text(re.sub(r"\bnp\.float\b", "float", src))
    (folder / "run_official.py").write_text(
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[4])\n"
        "from ytvis import YTVIS\n"
        "from ytviseval import YTVISeval\n"
        "gt = YTVIS(sys.argv[1])\n"
        "ev = YTVISeval(gt, gt.loadRes(sys.argv[2]), 'segm')\n"
        "ev.evaluate(); ev.accumulate(); ev.summarize()\n"
        "json.dump([float(x) for x in ev.stats], open(sys.argv[3], 'w'))\n")
    return folder


def _process_once(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system of the child) seconds of one run of ``cmd``."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - w0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def _interleaved(cmds: dict[str, list[str]], repeat: int) -> dict[str, list[tuple[float, float]]]:
    """``repeat`` rounds, each running every command once in turn (so that a change of the machine's load hits
    all of them alike): per command, the (wall, CPU) of each run."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            runs[name].append(_process_once(cmd))
    return runs


def bench_e2e(args) -> None:
    from avis.evaluation.ytvis_eval import STAT_KEYS

    gt_p, res_p = cached_case(args.e2e_videos, args.seed)
    print(f"\n== whole process: avis score vs the official evaluator ({args.e2e_videos} videos, results file "
          f"{res_p.stat().st_size / 1e6:.0f} MB), {args.repeat} interleaved rounds")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "avis" / "bench_score"
    official = official_evaluator(cache)
    out = Path(tempfile.mkdtemp(prefix="avis_bench_e2e_"))
    env_py = [sys.executable]
    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")
    avis_cmd = [*env_py, "-m", "avis", "score", "--gt", str(gt_p), "--results", str(res_p), "--out", str(out / "a.json")]
    official_cmd = [*env_py, str(official / "run_official.py"), str(gt_p), str(res_p), str(out / "o.json"),
                    str(official)]
    cmds = {"official evaluator (load + evaluate + accumulate)": official_cmd, "avis score (whole process)": avis_cmd}
    if args.e2e_numba:  # the same command with the C scorer switched off: numba's kernels (and start-up)
        cmds["avis score, numba kernels (AVIS_NO_C_SCORER=1)"] = ["env", "AVIS_NO_C_SCORER=1", *avis_cmd[:-1],
                                                                 str(out / "numba.json")]
    if args.e2e_before:  # another checkout's avis score (e.g. the state before a change), same files; run from
        # its root, as `python -m` puts the working folder first on sys.path
        import shlex

        before = [*avis_cmd[:-1], str(out / "before.json")]
        cmds[f"avis score of {args.e2e_before}"] = [
            "sh", "-c", f"cd {shlex.quote(args.e2e_before)} && PYTHONPATH={shlex.quote(args.e2e_before)} exec "
            + " ".join(map(shlex.quote, before))]
    for cmd in cmds.values():  # warm the page cache (and numba's cache)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load0 = os.getloadavg()[0]
    runs = _interleaved(cmds, args.repeat)
    load1 = os.getloadavg()[0]
    theirs = json.loads((out / "o.json").read_text())
    for name in ("a", "numba", "before"):
        if (out / f"{name}.json").exists():
            ours = json.loads((out / f"{name}.json").read_text())
            assert [ours[k] for k in STAT_KEYS] == theirs, f"{name} differs from the official evaluator:\n{ours}\n{theirs}"
    print("the 12 numbers are identical:", dict(zip(STAT_KEYS, np.round(theirs, 4).tolist())))
    print(f"{args.repeat} interleaved rounds; load average {load0:.1f} before, {load1:.1f} after")
    ref = "official evaluator (load + evaluate + accumulate)"
    med = {name: (float(np.median([w for w, _ in r])), float(np.median([c for _, c in r]))) for name, r in runs.items()}
    # the ratio of each round (both processes ran back to back), then their median
    ratio = {name: (float(np.median([a[0] / b[0] for a, b in zip(runs[ref], r)])),
                    float(np.median([a[1] / b[1] for a, b in zip(runs[ref], r)]))) for name, r in runs.items()}
    print(f"{'process':<52} {'wall s (median)':>15} {'CPU s (median)':>15} {'ratio wall':>11} {'ratio CPU':>10}"
          f"   runs (wall / CPU s)")
    for name, (w, c) in med.items():
        each = " ".join(f"{a:.2f}/{b:.2f}" for a, b in runs[name])
        print(f"{name:<52} {w:15.2f} {c:15.2f} {ratio[name][0]:10.1f}x {ratio[name][1]:9.1f}x   {each}")
    print("(ratio = median over the rounds of official / this, each round's processes run back to back)")
    shutil.rmtree(out, ignore_errors=True)


_PHASES = r"""
import sys, time
clock = time.process_time
marks = [("interpreter start (to the first line)", clock())]
def lap(name):
    marks.append((name, clock()))
import gc
import numpy
lap("import numpy")
import avis.cli
from avis.evaluation import rle_c, score
from avis.evaluation import ytvis_eval as ye
from avis.io import ytvis
lap("import avis (cli, loaders, scorer)")
gt_p, res_p, out_p = sys.argv[1:4]
gt = ytvis.load_annotations(gt_p)
lap("ground truth: read, decode, validate, normalise")
if rle_c.AVAILABLE:
    raw = ytvis.read_results_buffer(res_p)
    lap("results: read the file into an array")
    results = rle_c.load_packed_results(raw, gt)
    lap("results: decode + validate + pack in place (msgspec Raw + C scanner)")
else:
    raw = ytvis.read_results_bytes(res_p)
    lap("results: read the bytes")
    results = ytvis.load_results(res_p, gt=gt)
    lap("results: read again + decode + validate (general loader)")
gc.freeze()
if ye.BACKEND == "numba":
    from avis.evaluation.rle_kernels import skip_blas_probe
    skip_blas_probe()
    lap("numba import + CPU target")
vid_ids, cat_ids, tasks = ye.group_inputs(gt, results)
if getattr(results, "mask_pack", None) is not None and ye.BACKEND == "c":
    tasks = [(*t, results.mask_pack) for t in tasks]
lap("group by video")
entries = [e for t in tasks for e in ye._evaluate_video(t)]
lap(f"per video: decode masks, video IoU, matching ({ye.BACKEND})")
precision, recall = ye.accumulate(entries, cat_ids)
lap("accumulate")
stats = ye.summarize(precision, recall)
from avis.evaluation.pairing import check_results_belong
check_results_belong(gt, results, check_overlap=False)
print(score.format_table(stats))
ytvis.save_json(stats, out_p, indent=2)
lap("summarize, table, JSON")
for (_, a), (name, b) in zip(marks, marks[1:]):
    print(f"PHASE\t{name}\t{b - a:.4f}", file=sys.stderr)
print(f"PHASE\tstart\t{marks[0][1]:.4f}", file=sys.stderr)
"""


def bench_phases(args) -> None:
    """Where the CPU time of the ``avis score`` path goes: the same steps as ``avis score`` in a fresh process,
    each phase's CPU seconds (``time.process_time``), median over ``--repeat`` processes."""
    gt_p, res_p = cached_case(args.e2e_videos, args.seed)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    out = Path(tempfile.mkdtemp(prefix="avis_bench_phases_"))
    variants = {"C scorer (default)": {}}
    if args.e2e_numba:
        variants["numba kernels (AVIS_NO_C_SCORER=1)"] = {"AVIS_NO_C_SCORER": "1"}
    for label, extra in variants.items():
        per: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.repeat):
            p = subprocess.run([sys.executable, "-c", _PHASES, str(gt_p), str(res_p), str(out / "m.json")],
                               env={**env, **extra}, check=True, capture_output=True, text=True)
            for line in p.stderr.splitlines():
                if line.startswith("PHASE\t"):
                    _, name, sec = line.split("\t")
                    per[name].append(float(sec))
        print(f"\n== where the CPU time of avis score goes, {label} ({args.e2e_videos} videos; median of "
              f"{args.repeat} processes, load average {os.getloadavg()[0]:.1f})")
        print(f"{'interpreter start (CPU at the first line of the script)':<64} {np.median(per['start']):7.3f}")
        for name, secs in per.items():
            if name != "start":
                print(f"{name:<64} {np.median(secs):7.3f}")
        print(f"{'total (process CPU time at exit, without the interpreter teardown)':<64} "
              f"{np.median(per['start']) + sum(np.median(v) for k, v in per.items() if k != 'start'):7.3f}")
    shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=300, help="videos of the in-process comparisons (ap, hota)")
    ap.add_argument("--e2e-videos", type=int, default=100, help="videos of the whole-process comparison")
    ap.add_argument("--parts", nargs="+", choices=("ap", "hota", "e2e", "phases"), default=["ap", "hota", "e2e"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5,
                    help="interleaved rounds of the e2e part (each process once per round; medians reported)")
    ap.add_argument("--e2e-before", metavar="DIR",
                    help="e2e: also time the avis score of another checkout (its root put first on PYTHONPATH)")
    ap.add_argument("--e2e-numba", action="store_true",
                    help="e2e: also time avis score with the C scorer switched off (numba kernels)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from importlib.metadata import version

    import numba

    from avis.io.ytvis import load_annotations, load_results

    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, pycocotools "
          f"{version('pycocotools')}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    if "ap" in args.parts or "hota" in args.parts:
        gt_p, res_p = cached_case(args.videos, args.seed)
        # the generated results file (about 1.3 MB per video) may exceed the loader's default 256 MiB JSON limit
        os.environ.setdefault("AVIS_MAX_JSON_BYTES", str(max(256 << 20, 2 * (gt_p.stat().st_size + res_p.stat().st_size))))
        gt = load_annotations(gt_p)
        res = load_results(res_p, gt=gt)
        print(f"case: {args.videos} videos x {T} frames at {W}x{H}, {len(gt['annotations'])} instances, "
              f"{len(res)} predictions")
        if "ap" in args.parts:
            gc.freeze()  # the inputs of every variant: out of the cyclic GC's walks, as in avis score
            bench_ap(args, gt, res)
            gc.unfreeze()
        del gt, res
        gc.collect()
        if "hota" in args.parts:
            bench_hota(args, gt_p, res_p)
    if "e2e" in args.parts:
        bench_e2e(args)
    if "phases" in args.parts:
        bench_phases(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
