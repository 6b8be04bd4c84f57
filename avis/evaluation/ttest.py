"""``avis ttest``: is the difference between two result sets (A, e.g. audio-visual, and B, e.g. visual-only)
on the same ground truth statistically significant?

Tests, at each IoU threshold tau of ``--iou`` (samples from :mod:`avis.evaluation.samples`):

* ``paired-instance-top1`` (HEADLINE): per non-crowd ground-truth instance, predictions are matched to ground
  truth class-agnostically (per video, greedy by score over the top 100 predictions of any category, each
  taking the unmatched instance with the highest IoU >= tau); the sample is the IoU when the matched
  prediction has the instance's category, 0 when it has another one or none matched. Paired t-test over
  instances (A vs B on the same objects, so per-object difficulty cancels). It asks "is the object found by
  the method's most confident hypothesis, with the right label and a good mask", which is what AP rewards.
  Why it is the headline: a model that cannot tell two look-alike categories apart can hedge, predicting
  both labels for one mask; the per-category matching of ``paired-instance`` then gives every object its
  right-label prediction and the hedge costs nothing, while AP pays for the wrong-label one in precision.
  Here the higher-scored of the two labels is the one that counts, as in AP's ranking.
* ``paired-instance``: per instance, the IoU of its match in the SAME category (the greedy score-ordered
  matching of AP at tau, the true positives of AP at tau), 0 when it has none; paired t-test over instances.
  It does not see wrong-label predictions (see above).
* ``paired-video``: the ``paired-instance`` score averaged per video, paired t-test over videos (the
  conservative unit when instances of one video are correlated).
* ``paper``: the test of the RCF paper (Tables X / XII): the IoUs of the matched predictions above tau for A
  and for B as two independent samples (Student and Welch). Kept for comparability with the paper; it ignores
  misses and the pairing, so it answers "are the matched masks better", not "is the method better".
* ``seeds``: with ``--runs-a``/``--runs-b`` (several training seeds per arm), AP and AP@tau per run as two
  samples (Student and Welch): the only test that includes training variance.
* ``bootstrap``: percentile confidence interval of AP(A) - AP(B) and AP@tau(A) - AP@tau(B), resampling
  videos with replacement (the same videos for both arms).

Effect sizes: Cohen's d (pooled SD) for two-sample tests, d_z (mean difference / SD of differences) for paired
ones. scipy.stats does the tests.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats as sps

from avis.errors import ConfigError
from avis.evaluation.samples import samples_from_entries, top1_context, top1_samples, top1_scores
from avis.evaluation.ytvis_eval import IOU_THRS, accumulate, evaluate
from avis.io.atomic import atomic_open
from avis.io.ytvis import load_annotations, load_results, save_json

HEADLINE = "paired-instance-top1"
COLUMNS = ("test", "variant", "iou", "n_a", "n_b", "mean_a", "mean_b", "diff", "statistic", "df", "p_value",
           "effect", "ci_low", "ci_high")


def _row(test, variant, iou, a, b, res=None, effect=math.nan, ci=(math.nan, math.nan), diff=None):
    a, b = np.asarray(a, float), np.asarray(b, float)
    mean_a = float(a.mean()) if len(a) else math.nan
    mean_b = float(b.mean()) if len(b) else math.nan
    stat = float(res.statistic) if res is not None else math.nan
    p = float(res.pvalue) if res is not None else math.nan
    df = float(getattr(res, "df", math.nan)) if res is not None else math.nan
    return {"test": test, "variant": variant, "iou": iou, "n_a": len(a), "n_b": len(b), "mean_a": mean_a,
            "mean_b": mean_b, "diff": (mean_a - mean_b) if diff is None else diff, "statistic": stat, "df": df,
            "p_value": p, "effect": float(effect), "ci_low": float(ci[0]), "ci_high": float(ci[1])}


def cohen_d(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    return float((a.mean() - b.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


def cohen_dz(diff) -> float:
    diff = np.asarray(diff, float)
    if len(diff) < 2:
        return math.nan
    sd = diff.std(ddof=1)
    return float(diff.mean() / sd) if sd > 0 else math.nan


def two_sample_rows(test, iou, a, b) -> list[dict]:
    """Student and Welch t-tests of two independent samples (NaN when a side has fewer than 2 values)."""
    rows = []
    for variant, equal_var in (("student", True), ("welch", False)):
        res = sps.ttest_ind(a, b, equal_var=equal_var) if len(a) >= 2 and len(b) >= 2 else None
        rows.append(_row(test, variant, iou, a, b, res, cohen_d(a, b)))
    return rows


def paired_row(test, iou, a, b) -> dict:
    a, b = np.asarray(a, float), np.asarray(b, float)
    res = sps.ttest_rel(a, b) if len(a) >= 2 and np.any(a != b) else None
    return _row(test, "paired", iou, a, b, res, cohen_dz(a - b))


def instance_scores(rows: list[dict]) -> dict[tuple, float]:
    """(video, category, instance) -> IoU of the match, 0 when none."""
    return {(r["video_id"], r["category_id"], r["instance_id"]): (0.0 if math.isnan(r["iou"]) else r["iou"])
            for r in rows}


def paired_samples(rows_a: list[dict], rows_b: list[dict], scores=instance_scores):
    """Aligned per-instance scores of A and B (``scores``: rows -> {instance key: score}), and the video of
    each instance."""
    sa, sb = scores(rows_a), scores(rows_b)
    keys = sorted(sa)
    if set(keys) != set(sb):
        raise ValueError("A and B were scored against different ground truth")
    return np.array([sa[k] for k in keys]), np.array([sb[k] for k in keys]), [k[0] for k in keys]


def matched_ious(rows: list[dict]) -> np.ndarray:
    return np.array([r["iou"] for r in rows if not math.isnan(r["iou"])])


def _ap_values(entries, cat_ids, taus) -> np.ndarray:
    """[AP, AP@tau...] over area all, 100 detections (the official accumulate, restricted)."""
    precision, _ = accumulate(entries, cat_ids, area_idx=[0], maxdet_idx=[2])
    p = precision[:, :, :, 0, 2]
    out = []
    for sel in [slice(None)] + [np.where(np.isclose(IOU_THRS, t))[0] for t in taus]:
        s = p[sel]
        out.append(float(np.mean(s[s > -1])) if (s > -1).any() else math.nan)
    return np.array(out)


def bootstrap_ap_diff(ev_a, ev_b, taus, n: int, seed: int = 0, alpha: float = 0.05):
    """Percentile CI of AP(A) - AP(B) (and AP@tau) over videos resampled with replacement."""
    by_a, by_b = defaultdict(list), defaultdict(list)
    for e in ev_a.entries:
        by_a[e.video_id].append(e)
    for e in ev_b.entries:
        by_b[e.video_id].append(e)
    vids = np.array(ev_a.video_ids)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        pick = np.sort(rng.integers(0, len(vids), len(vids)))  # ascending video order, as the scorer
        ea = [e for i in pick for e in by_a[vids[i]]]
        eb = [e for i in pick for e in by_b[vids[i]]]
        diffs.append(_ap_values(ea, ev_a.category_ids, taus) - _ap_values(eb, ev_b.category_ids, taus))
    diffs = np.array(diffs)
    lo = np.nanpercentile(diffs, 100 * alpha / 2, axis=0)
    hi = np.nanpercentile(diffs, 100 * (1 - alpha / 2), axis=0)
    return lo, hi


def compare(gt: dict, results_a: list[dict], results_b: list[dict], ious=(0.5, 0.75), runs_a=None, runs_b=None,
            bootstrap: int = 1000, seed: int = 0, workers: int = 1) -> dict:
    """All tests; returns ``{"rows": [...], "headline": row, "ious_a": {tau: array}, "ious_b": {...}}``."""
    ev_a = evaluate(gt, results_a, workers=workers)
    ev_b = evaluate(gt, results_b, workers=workers)
    rows, dist_a, dist_b = [], {}, {}
    ap_a = _ap_values(ev_a.entries, ev_a.category_ids, ious)
    ap_b = _ap_values(ev_b.entries, ev_b.category_ids, ious)
    ci = bootstrap_ap_diff(ev_a, ev_b, ious, bootstrap, seed) if bootstrap > 0 else None
    ctx_a, ctx_b = top1_context(gt, results_a, workers), top1_context(gt, results_b, workers)
    for i, tau in enumerate(ious):
        xa, xb, _ = paired_samples(top1_samples(ctx_a, tau), top1_samples(ctx_b, tau), top1_scores)
        rows.append(paired_row("paired-instance-top1", tau, xa, xb))
        sa = samples_from_entries(ev_a.entries, tau)
        sb = samples_from_entries(ev_b.entries, tau)
        xa, xb, vids = paired_samples(sa, sb)
        rows.append(paired_row("paired-instance", tau, xa, xb))
        per_v = defaultdict(lambda: ([], []))
        for a, b, v in zip(xa, xb, vids):
            per_v[v][0].append(a)
            per_v[v][1].append(b)
        va = [float(np.mean(per_v[v][0])) for v in sorted(per_v)]
        vb = [float(np.mean(per_v[v][1])) for v in sorted(per_v)]
        rows.append(paired_row("paired-video", tau, va, vb))
        dist_a[tau], dist_b[tau] = matched_ious(sa), matched_ious(sb)
        rows += two_sample_rows("paper", tau, dist_a[tau], dist_b[tau])
        if ci is not None:
            rows.append(_row("bootstrap-AP@iou", "videos", tau, [ap_a[i + 1]], [ap_b[i + 1]],
                             ci=(ci[0][i + 1], ci[1][i + 1])))
    if ci is not None:
        rows.append(_row("bootstrap-AP", "videos", "0.50:0.95", [ap_a[0]], [ap_b[0]], ci=(ci[0][0], ci[1][0])))
        for r in rows:
            if r["test"].startswith("bootstrap"):
                r["n_a"] = r["n_b"] = len(ev_a.video_ids)  # the resampled units
    if runs_a and runs_b:
        per_a = np.array([_ap_values(evaluate(gt, r, workers=workers).entries, ev_a.category_ids, ious)
                          for r in runs_a])
        per_b = np.array([_ap_values(evaluate(gt, r, workers=workers).entries, ev_b.category_ids, ious)
                          for r in runs_b])
        rows += two_sample_rows("seeds-AP", "0.50:0.95", per_a[:, 0], per_b[:, 0])
        for i, tau in enumerate(ious):
            rows += two_sample_rows("seeds-AP@iou", tau, per_a[:, i + 1], per_b[:, i + 1])
    headline = next(r for r in rows if r["test"] == HEADLINE)
    return {"rows": rows, "headline": headline, "ious_a": dist_a, "ious_b": dist_b}


# ------------------------------------------------------------------------------------------------ output
def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}")
    return str(v)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    cols = list(COLUMNS)
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols))]
    return "\n".join(lines + ["  ".join(x[i].ljust(w[i]) for i in range(len(cols))) for x in cells])


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot_distributions(ious_a: dict, ious_b: dict, path, labels=("A", "B")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = sorted(ious_a)
    fig, axes = plt.subplots(1, len(taus), figsize=(5 * len(taus), 3.6), squeeze=False)
    for ax, tau in zip(axes[0], taus):
        bins = np.linspace(tau, 1, 21)
        ax.hist(ious_a[tau], bins=bins, alpha=0.55, label=f"{labels[0]} (n={len(ious_a[tau])})")
        ax.hist(ious_b[tau], bins=bins, alpha=0.55, label=f"{labels[1]} (n={len(ious_b[tau])})")
        ax.set(xlabel="video IoU of matched predictions", ylabel="instances", title=f"IoU > {tau:g}")
        ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _jsonable(rows):
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


# --------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Significance of the difference between two result sets A and B on the same ground truth.\n\n"
        "HEADLINE: 'paired-instance-top1' at the first --iou: a paired t-test over ground-truth instances.\n"
        "Predictions are matched to instances ignoring the category (per video, greedy by score, top 100);\n"
        "an instance scores the IoU of its match if the match has the right category, else 0 (also 0 when\n"
        "missed). Both arms score the same objects, so per-object difficulty cancels; misses count; and a\n"
        "model that hedges between look-alike categories (one mask, both labels) is judged by its most\n"
        "confident label, as AP judges it. Also reported: 'paired-instance' (the IoU of the match in the same\n"
        "category, blind to wrong-label predictions), the same paired over videos, the paper's unpaired test on\n"
        "matched IoUs above the threshold (Student and Welch), a test over seeds (--runs-a/--runs-b: AP per\n"
        "run, Student and Welch), and a bootstrap CI of the AP difference.")
    parser.add_argument("--gt", required=True, help="ground-truth annotations (YouTube-VIS JSON)")
    parser.add_argument("--a", required=True, help="results of arm A (e.g. audio-visual)")
    parser.add_argument("--b", required=True, help="results of arm B (e.g. visual-only)")
    parser.add_argument("--iou", type=float, nargs="+", default=[0.5, 0.75], help="IoU thresholds (0.5 0.75)")
    parser.add_argument("--runs-a", nargs="+", default=[], help="results of A for several seeds")
    parser.add_argument("--runs-b", nargs="+", default=[], help="results of B for several seeds")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of videos (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    parser.add_argument("--markdown", help="write the table as markdown here")
    parser.add_argument("--csv", help="write the table as CSV here")
    parser.add_argument("--json", help="write the rows (and the headline) as JSON here")
    parser.add_argument("--plot", help="write a PNG of both IoU distributions here")
    parser.add_argument("--labels", nargs=2, default=["A", "B"], help="names of the arms in the plot")
    parser.add_argument("--workers", type=int, default=1, help="processes over videos for scoring")


def run(args: argparse.Namespace) -> int:
    if not all(0 < t < 1 for t in args.iou):
        raise ConfigError("--iou thresholds must lie in (0, 1)")
    if bool(args.runs_a) != bool(args.runs_b) or (args.runs_a and min(len(args.runs_a), len(args.runs_b)) < 2):
        raise ConfigError("--runs-a and --runs-b need at least 2 result files each")
    gt = load_annotations(args.gt)
    ra, rb = load_results(args.a, gt=gt), load_results(args.b, gt=gt)
    runs_a = [load_results(p, gt=gt) for p in args.runs_a]
    runs_b = [load_results(p, gt=gt) for p in args.runs_b]
    out = compare(gt, ra, rb, args.iou, runs_a, runs_b, args.bootstrap, args.seed, args.workers)
    print(format_table(out["rows"]))
    h = out["headline"]
    print(f"\nheadline ({HEADLINE}, IoU {h['iou']:g}): mean A {h['mean_a']:.4f} vs B {h['mean_b']:.4f}, "
          f"p = {_fmt(h['p_value'])}, d_z = {_fmt(h['effect'])}")
    if args.markdown:
        with atomic_open(args.markdown, "w") as f:
            f.write(format_table(out["rows"], markdown=True) + "\n")
    if args.csv:
        with atomic_open(args.csv, "w") as f:
            f.write(to_csv(out["rows"]))
    if args.json:
        save_json({"headline": _jsonable([h])[0], "rows": _jsonable(out["rows"])}, args.json, indent=2)
    if args.plot:
        Path(os.fspath(args.plot)).parent.mkdir(parents=True, exist_ok=True)
        plot_distributions(out["ious_a"], out["ious_b"], args.plot, tuple(args.labels))
    return 0

