"""``avis score``: metrics of a results JSON against ground truth.

``--metrics`` picks any of ``ytvis`` (the 12 YouTube-VIS numbers, the default), ``hota`` (HOTA, DetA, AssA,
DetRe, DetPr, AssRe, AssPr, LocA, ... as TrackEval computes them) and ``fsla`` (AVISeg's frame-level sound
localisation accuracy, needs ``sounding`` flags in the ground truth); all go to one table and, with ``--out``,
one JSON (fractions in [0, 1], -1 where undefined). ``--samples`` writes the per-instance IoU samples (CSV),
``--per-category`` a per-category table, ``--pr-curves`` one precision/recall PNG per category plus the
overall curve.

The scorers (numba kernels) are imported when the command runs, not when ``avis`` builds its parser.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
from pathlib import Path

from avis.errors import ConfigError

METRICS = ("ytvis", "hota", "fsla")
_LABELS = {
    "AP": "AP  @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "AP50": "AP  @[IoU=0.50      | area=   all | maxDets=100]",
    "AP75": "AP  @[IoU=0.75      | area=   all | maxDets=100]",
    "APs": "AP  @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "APm": "AP  @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "APl": "AP  @[IoU=0.50:0.95 | area= large | maxDets=100]",
    "AR1": "AR  @[IoU=0.50:0.95 | area=   all | maxDets=  1]",
    "AR10": "AR  @[IoU=0.50:0.95 | area=   all | maxDets= 10]",
    "AR100": "AR  @[IoU=0.50:0.95 | area=   all | maxDets=100]",
    "ARs": "AR  @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "ARm": "AR  @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "ARl": "AR  @[IoU=0.50:0.95 | area= large | maxDets=100]",
}
_HOTA_LABELS = {k: f"{k:<5} @[alpha=0.05:0.95 | class-averaged ]" for k in
                ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA")}
_HOTA_LABELS.update({"HOTA(0)": "HOTA  @[alpha=0.05      | class-averaged ]",
                     "LocA(0)": "LocA  @[alpha=0.05      | class-averaged ]",
                     "HOTALocA(0)": "HOTA x LocA @[alpha=0.05 | class-avg.]"})
_FSLA_LABELS = {"FSLA": "FSLA  @[alpha=0.05:0.95 | all frames     ]",
                "FSLAn": "FSLA  @[alpha=0.05:0.95 | no sound source]",
                "FSLAs": "FSLA  @[alpha=0.05:0.95 | one source     ]",
                "FSLAm": "FSLA  @[alpha=0.05:0.95 | several sources]"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="ground-truth annotations (YouTube-VIS JSON)")
    parser.add_argument("--results", required=True, help="predictions (YouTube-VIS results JSON)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=["ytvis"], metavar="M",
                        help="any of: ytvis (AP/AR, default), hota (HOTA, DetA, AssA, LocA, ... as TrackEval), "
                             "fsla (AVISeg's frame-level sound localisation accuracy; needs 'sounding' flags)")
    parser.add_argument("--out", help="write the requested numbers here as one JSON")
    parser.add_argument("--score-threshold", type=float, default=None, metavar="T",
                        help="score only the predictions with score > T (AVISM writes only those above 0.3; "
                             "default: all)")
    parser.add_argument("--samples", help="write one CSV row per ground-truth instance: video_id, category_id, "
                        "instance_id, iou and score of its greedy match (empty when none)")
    parser.add_argument("--samples-iou", type=float, default=0.0, metavar="THR",
                        help="minimum IoU for a match in --samples (default 0: best greedy overlap)")
    parser.add_argument("--per-category", action="store_true",
                        help="print AP / AP50 / AP75 / AR100 (ytvis) and HOTA / DetA / AssA / LocA (hota) per "
                             "category; with --out they go to the JSON's 'per_category'")
    parser.add_argument("--pr-curves", metavar="DIR", help="write precision/recall PNGs (overall + per category)")
    parser.add_argument("--workers", type=int, default=1, help="processes over videos (default 1)")


def format_table(stats: dict[str, float]) -> str:
    """The requested numbers, one line each, in the official layout (ytvis first, then HOTA, then FSLA)."""
    labels = {**_LABELS, **_HOTA_LABELS, **_FSLA_LABELS}
    return "\n".join(f"{labels[k]} = {stats[k]:.3f}   {k}" for k in labels if k in stats)


COMPACT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "HOTA", "DetA", "AssA", "LocA")


def format_compact(stats: dict[str, float], keys=COMPACT_KEYS) -> str:
    """Two lines, names over values in % (``-`` where undefined): the metrics table of a training run's
    periodic evaluation."""
    keys = [k for k in keys if k in stats]
    w = [max(len(k), 5) for k in keys]
    head = "  ".join(f"{k:>{n}}" for k, n in zip(keys, w))
    vals = "  ".join((f"{stats[k] * 100:>{n}.1f}" if stats[k] >= 0 else f"{'-':>{n}}") for k, n in zip(keys, w))
    return f"{head}\n{vals}"


def per_category_rows(ev=None, hota_ev=None) -> list[dict]:
    """One row per category: AP, AP50, AP75, AR100 and instances (from the YouTube-VIS evaluation ``ev``) and
    HOTA, DetA, AssA, LocA (from ``hota_ev``), as available."""
    rows: dict[int, dict] = {}
    for r in ev.per_category() if ev is not None else []:
        rows[r["category_id"]] = dict(r)
    for r in hota_ev.per_category_rows() if hota_ev is not None else []:
        rows.setdefault(r["category_id"], {}).update(r)
    return [rows[c] for c in sorted(rows)]


def format_per_category(rows: list[dict]) -> str:
    keys = [k for k in ("AP", "AP50", "AP75", "AR100", "HOTA", "DetA", "AssA", "LocA") if rows and k in rows[0]]
    w = max([len(r["name"]) for r in rows] + [8])
    inst = bool(rows) and "instances" in rows[0]
    head = f"{'category':<{w}}  {'id':>4}" + (f"  {'inst':>5}" if inst else "")
    lines = [head + "".join(f"  {k:>6}" for k in keys) + "   (in %)"]
    for r in rows:
        vals = "".join(f"  {r[k] * 100:6.1f}" if r[k] >= 0 else f"  {'-':>6}" for k in keys)
        lines.append(f"{r['name']:<{w}}  {r['category_id']:>4}" + (f"  {r['instances']:>5}" if inst else "") + vals)
    return "\n".join(lines)


def write_pr_curves(ev, out_dir: str | os.PathLike) -> list[Path]:
    """Precision vs recall at IoU 0.50 / 0.75 / mean over thresholds (area all, 100 detections)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avis.evaluation.ytvis_eval import AREA_LBL, IOU_THRS, REC_THRS
    from avis.io.atomic import atomic_open

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    sets = [("all categories", None)] + [(ev.category_names.get(c, str(c)), k) for k, c in enumerate(ev.category_ids)]
    for name, k in sets:
        p = ev.precision[:, :, :, AREA_LBL.index("all"), -1]  # (T, R, K)
        p = p if k is None else p[:, :, k : k + 1]
        if not (p > -1).any():
            continue
        fig, ax = plt.subplots(figsize=(5, 4))
        for label, t in (("IoU=0.50", [0]), ("IoU=0.75", [int(np.where(IOU_THRS == 0.75)[0][0])]),
                         ("mean 0.50:0.95", list(range(len(IOU_THRS))))):
            q = p[t]  # (t, R, K)
            q = np.where(q > -1, q, np.nan)
            ax.plot(REC_THRS, np.nanmean(q, axis=(0, 2)), label=label)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=f"PR: {name}")
        ax.legend(loc="lower left")
        fig.tight_layout()
        fname = "pr_all.png" if k is None else f"pr_cat{ev.category_ids[k]}.png"
        with atomic_open(out_dir / fname, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        paths.append(out_dir / fname)
    return paths


def compute(gt: dict, results: list[dict], metrics=("ytvis",), workers: int = 1, progress: bool = False,
            gt_path=None, results_path=None):
    """The requested metrics: ``(numbers, ytvis Evaluation or None, HotaEvaluation or None)``; ``numbers`` has
    the 12 YouTube-VIS keys, :data:`avis.evaluation.hota.HOTA_KEYS` and the FSLA keys, as requested."""
    numbers: dict = {}
    ev = hota_ev = None
    if "ytvis" in metrics:
        from avis.evaluation.ytvis_eval import evaluate

        ev = evaluate(gt, results, workers=workers, progress=progress,
                      path=None if results_path is None else os.fspath(results_path))
        numbers.update({k: (v if math.isfinite(v) else -1.0) for k, v in ev.stats.items()})
    if "hota" in metrics or "fsla" in metrics:
        from avis.evaluation.hota import evaluate_tracking

        hota_ev, fsla = evaluate_tracking(gt, results, hota="hota" in metrics, fsla="fsla" in metrics,
                                          workers=workers, progress=progress, gt_path=gt_path)
        if hota_ev is not None:
            numbers.update(hota_ev.stats)
        if fsla is not None:
            numbers.update(fsla)
    return numbers, ev, hota_ev


def _load_packed(path, gt: dict):
    """The results for the C scorer (:func:`avis.evaluation.rle_c.load_packed_results`: no Python object per
    mask), or ``None`` when it is not built or the file is not in the common, certainly valid form (then
    :func:`avis.io.ytvis.load_results` reads it and names its problems)."""
    from avis.evaluation import rle_c, ytvis_eval

    if ytvis_eval.BACKEND != "c":
        return None
    from avis.io.ytvis import read_results_buffer

    return rle_c.load_packed_results(read_results_buffer(path), gt)


def run(args: argparse.Namespace) -> int:
    from avis.io.ytvis import load_annotations, load_results, save_json

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    metrics = [m for m in METRICS if m in args.metrics]
    if (args.samples or args.pr_curves) and "ytvis" not in metrics:
        raise ConfigError("--samples and --pr-curves need the ytvis metrics (add 'ytvis' to --metrics)")
    if args.score_threshold is not None and not math.isfinite(args.score_threshold):
        raise ConfigError("--score-threshold must be a finite number")
    gt = load_annotations(args.gt)
    if "fsla" in metrics:
        from avis.evaluation.hota import check_sounding

        check_sounding(gt, args.gt)  # before reading a large results file
    results = _load_packed(args.results, gt) if metrics == ["ytvis"] else None
    if results is None:  # unknown videos / categories, frame counts: the file's error
        results = load_results(args.results, gt=gt)
    if args.score_threshold is not None:
        keep = [r["score"] > args.score_threshold for r in results]
        results = results.filter(keep) if hasattr(results, "filter") else [r for r, k in zip(results, keep) if k]
    # the loaded files live until the process ends: their millions of objects stay out of the cyclic
    # collector's walks, which would otherwise cost more than the scoring (JSON data makes no cycles)
    gc.freeze()
    from avis.evaluation import ytvis_eval

    if ytvis_eval.BACKEND == "numba" or metrics != ["ytvis"]:
        from avis.evaluation.rle_kernels import skip_blas_probe

        skip_blas_probe()  # this process only scores: no SciPy import for numba's BLAS probe
    numbers, ev, hota_ev = compute(gt, results, metrics, workers=args.workers, progress=True, gt_path=args.gt,
                                   results_path=args.results)
    from avis.evaluation.pairing import check_results_belong

    # results made on other videos: a warning for videos without predictions; an error when no mask touches
    # an object (only looked at when nothing matched: a single match proves overlap)
    matched = any(numbers.get(k, 0) > 0 for k in ("AR100", "DetRe"))
    check_results_belong(gt, results, args.results, args.gt, check_overlap=not matched)
    print(format_table(numbers))
    rows = per_category_rows(ev, hota_ev) if args.per_category else None
    if rows is not None:
        print()
        print(format_per_category(rows))
    if args.out:
        out = dict(numbers)
        if hota_ev is not None:
            out["HOTA_alpha"] = hota_ev.curves()
        if rows is not None:
            out["per_category"] = rows
        save_json(out, args.out, indent=2)
    if args.samples:
        from avis.evaluation.samples import samples_from_entries, write_samples_csv

        write_samples_csv(samples_from_entries(ev.entries, args.samples_iou), args.samples)
    if args.pr_curves:
        write_pr_curves(ev, args.pr_curves)
    return 0
