"""``avis ttest``: is arm A (e.g. audio-visual) better than arm B (e.g. visual-only) on the same ground truth?

The verdict (the HEADLINE) is :func:`compare_recipes` (:mod:`avis.evaluation.recipes`):

* with >= 2 runs (training seeds) per arm (``--runs-a`` / ``--runs-b``): a **recipe-level** test whose null is
  "the two recipes are equally good on this data distribution": ``diff = mean over seeds of the metric of A -
  that of B``, its variance from the seeds (per-run metric values) plus the sampling of the test videos
  (delete-one-video jackknife, seed x video noise counted once), Satterthwaite degrees of freedom;
* with one run per arm (``--a`` / ``--b``): the same test over videos only, labelled **model level**: it compares
  the two trained models and says nothing about the recipes.

The headline metric is the mean top-1 sample at the first ``--iou`` (``top1@0.5``; see
:mod:`avis.evaluation.samples`): per ground-truth instance, predictions are matched class-agnostically (greedy by
score over a video's top 100); the sample is the IoU of the match when its category is right, 0 when wrong or
missed. Further verdict rows: ``top1`` at the other thresholds, ``AP`` and ``AP@T``. Every row carries the signed
difference ``diff`` (A - B), the two-sided ``p_value`` and ``p_one_sided`` for "A better than B".

Python API::

    from avis.evaluation.ttest import compare_recipes
    out = compare_recipes(gt, runs_a, runs_b, ious=(0.5, 0.75), metrics=None, alpha=0.05)
    # runs_a / runs_b: lists of YouTube-VIS results lists, one per seed (one each: model level)
    # out == {"headline": row, "rows": [row per metric]} with, per row:
    #   metric ("top1@0.5", "AP", ...), iou, level ("recipe" | "model"), test, variant, note,
    #   n_a / n_b (runs), n_videos, mean_a / mean_b (means over runs), diff (A - B), se, statistic, df,
    #   p_value (two-sided), p_one_sided (A > B), one_sided ("A > B"), ci_low / ci_high (1 - alpha),
    #   var_seeds / var_test (the two parts of se^2), values_a / values_b (per-run values), alpha

``metrics`` takes names (``top1@T``, ``iou@T``, ``AP``, ``AP@T``) or any callable ``run -> RunScore`` with a
``name`` (see :mod:`avis.evaluation.recipes`); the first is the headline. ``avis ttest --json OUT`` writes that
dict, with the per-model diagnostics below appended to ``rows`` (``level: "model"``).

Per-model diagnostics (:func:`compare`, on one result set per arm: ``--a`` / ``--b``, default the first run of
each arm), at each IoU threshold tau of ``--iou`` (samples from :mod:`avis.evaluation.samples`); instances are
treated as independent, so read them as descriptions of the two models, not as the verdict:

* ``paired-instance-top1``: the top-1 samples above, paired t-test over instances.
* ``paired-instance``: per instance, the IoU of its match in the SAME category (the greedy score-ordered
  matching of AP at tau), 0 when it has none; paired t-test over instances. Blind to wrong-label predictions.
* ``paired-video``: the ``paired-instance`` score averaged per video, paired t-test over videos.
* ``paper``: the test of the RCF paper (Tables X / XII): the IoUs of the matched predictions above tau for A
  and for B as two independent samples (Student and Welch). It ignores misses and the pairing.
* ``bootstrap``: percentile confidence interval of AP(A) - AP(B) and AP@tau(A) - AP@tau(B), resampling
  videos with replacement (the same videos for both arms).

Effect sizes: Cohen's d (pooled SD) for two-sample tests, d_z (mean difference / SD of differences) for paired
ones. scipy.stats does the t-tests; ``p_one_sided`` is the upper tail of the same t (A > B).
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
from avis.evaluation.recipes import compare_recipes, default_metrics, metric
from avis.evaluation.samples import samples_from_entries, top1_context, top1_samples, top1_scores
from avis.evaluation.ytvis_eval import IOU_THRS, accumulate, evaluate
from avis.io.atomic import atomic_open
from avis.io.ytvis import load_annotations, load_results, save_json

__all__ = ["compare_recipes", "compare", "format_table", "to_csv", "plot_distributions"]

COLUMNS = ("level", "metric", "test", "variant", "iou", "n_a", "n_b", "mean_a", "mean_b", "diff", "statistic",
           "df", "p_value", "p_one_sided", "effect", "ci_low", "ci_high")
METRIC_OF = {"paired-instance-top1": "top1", "paired-instance": "iou", "paired-video": "iou",
             "paper": "matched IoU", "bootstrap-AP@iou": "AP", "bootstrap-AP": "AP"}


def _row(test, variant, iou, a, b, res=None, effect=math.nan, ci=(math.nan, math.nan), diff=None):
    a, b = np.asarray(a, float), np.asarray(b, float)
    mean_a = float(a.mean()) if len(a) else math.nan
    mean_b = float(b.mean()) if len(b) else math.nan
    stat = float(res.statistic) if res is not None else math.nan
    p = float(res.pvalue) if res is not None else math.nan
    df = float(getattr(res, "df", math.nan)) if res is not None else math.nan
    # the t statistics are of A - B, so the upper tail is the one-sided p of "A better than B"
    p1 = float(sps.t.sf(stat, df)) if res is not None and not math.isnan(stat) else math.nan
    name = METRIC_OF.get(test, test) + (f"@{iou:g}" if isinstance(iou, float) else "")
    return {"level": "model", "metric": name, "test": test, "variant": variant, "iou": iou, "n_a": len(a),
            "n_b": len(b), "mean_a": mean_a, "mean_b": mean_b, "diff": (mean_a - mean_b) if diff is None else diff,
            "statistic": stat, "df": df, "p_value": p, "p_one_sided": p1, "effect": float(effect),
            "ci_low": float(ci[0]), "ci_high": float(ci[1])}


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


def compare(gt: dict, results_a: list[dict], results_b: list[dict], ious=(0.5, 0.75), bootstrap: int = 1000,
            seed: int = 0, workers: int = 1) -> dict:
    """The per-model diagnostics of two result sets (module docstring); returns ``{"rows": [...], "ious_a":
    {tau: matched IoUs}, "ious_b": {...}}`` (the IoU arrays for :func:`plot_distributions`)."""
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
    return {"rows": rows, "ious_a": dist_a, "ious_b": dist_b}


# ------------------------------------------------------------------------------------------------ output
def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) < 1e-3 and v != 0:
            return f"{v:+.3g}" if signed else f"{v:.3g}"
        return f"{v:+.4f}" if signed else f"{v:.4f}"
    return str(v)


_SIGNED = {"diff", "statistic", "ci_low", "ci_high"}


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The rows (verdict and diagnostics) as an aligned text table, or markdown."""
    cols = list(COLUMNS)
    cells = [[_fmt(r.get(c), c in _SIGNED) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols))]
    return "\n".join(lines + ["  ".join(x[i].ljust(w[i]) for i in range(len(cols))) for x in cells])


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None or (isinstance(r.get(c), float) and math.isnan(r[c])) else r[c])
                    for c in COLUMNS})
    return buf.getvalue()


def verdict(row: dict, labels=("A", "B")) -> str:
    """The conclusion of a verdict row at its ``alpha``: A better (one-sided p), B better (two-sided p and a
    negative difference), or no significant difference; "recipe" or "model" as its level says."""
    a, b = labels
    unit = "recipe" if row["level"] == "recipe" else "model"
    alpha = row.get("alpha", 0.05)
    p1, p2 = row.get("p_one_sided"), row.get("p_value")
    if p2 is None or math.isnan(p2):
        return "no test possible (no variance, or the metric is undefined)"
    if p1 < alpha:
        return f"the {a} {unit} is significantly better (one-sided p < {alpha:g})"
    if p2 < alpha and row["diff"] < 0:
        return f"the {b} {unit} is significantly better (two-sided p < {alpha:g})"
    return f"no significant difference between the {unit}s (p >= {alpha:g})"


def headline_text(h: dict, labels=("A", "B")) -> str:
    """One sentence: the row's metric and level, the signed difference with its CI, both p-values, verdict."""
    a, b = labels
    what = (f"recipe level, {h['n_a']} vs {h['n_b']} seeds x {h['n_videos']} videos" if h["level"] == "recipe" else
            "MODEL level: one run per arm, compares two trained models and says nothing about the recipes")
    return (f"{h['metric']} ({what}): {a} {_fmt(h['mean_a'])} vs {b} {_fmt(h['mean_b'])}, "
            f"{a} - {b} = {_fmt(h['diff'], True)} [{100 * (1 - h['alpha']):g} % CI {_fmt(h['ci_low'], True)}, "
            f"{_fmt(h['ci_high'], True)}], p({a} better) = {_fmt(h['p_one_sided'])} (one-sided), "
            f"two-sided p = {_fmt(h['p_value'])}: {verdict(h, labels)}")


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


def jsonable(x):
    """NaN -> None, numpy scalars -> Python, recursively (for JSON)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    return None if isinstance(x, float) and math.isnan(x) else x


# --------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Is arm A (e.g. audio-visual) better than arm B (e.g. visual-only) on the same ground truth?\n\n"
        "HEADLINE (the verdict): with --runs-a/--runs-b (>= 2 training seeds per arm) a recipe-level test, null\n"
        "'the two recipes are equally good on this data distribution': the difference of the arms' mean metric\n"
        "over seeds, its variance from the seeds plus the sampling of test videos (jackknife over videos),\n"
        "Satterthwaite df. With one run per arm (--a/--b) the same test over videos only, labelled MODEL level:\n"
        "it compares two trained models and says nothing about the recipes. The headline metric is the mean\n"
        "top-1 sample at the first --iou (class-agnostic greedy matching; the match's IoU if its category is\n"
        "right, else 0; 0 when missed); the other verdict rows: top-1 at the other thresholds, AP and AP@T.\n"
        "--metric hota: the verdict on HOTA (headline), DetA and AssA instead, by the same test.\n"
        "Each row: diff = A - B, p_value (two-sided) and p_one_sided (A better than B).\n\n"
        "Below the verdict, per-model diagnostics of one result set per arm (--a/--b, default the first run of\n"
        "each): paired t-tests over instances and videos, the RCF paper's unpaired test on matched IoUs, and a\n"
        "bootstrap CI of the AP difference.")
    parser.add_argument("--gt", required=True, help="ground-truth annotations (YouTube-VIS JSON)")
    parser.add_argument("--a", help="results of arm A (e.g. audio-visual); one run")
    parser.add_argument("--b", help="results of arm B (e.g. visual-only); one run")
    parser.add_argument("--runs-a", nargs="+", default=[], help="results of A, one file per training seed")
    parser.add_argument("--runs-b", nargs="+", default=[], help="results of B, one file per training seed")
    parser.add_argument("--iou", type=float, nargs="+", default=[0.5, 0.75], help="IoU thresholds (0.5 0.75)")
    parser.add_argument("--metric", choices=("ap", "hota"), default="ap",
                        help="the verdict's family: ap (default: top1@T for each --iou, the headline, then AP, "
                             "AP@T) or hota (HOTA, the headline, DetA, AssA: class-averaged as avis score "
                             "--metrics hota, jackknifed over videos like AP)")
    parser.add_argument("--metrics", nargs="+",
                        help="verdict metrics, the first is the headline (default: see --metric; names: top1@T, "
                             "iou@T, AP, AP@T, HOTA, DetA, AssA, LocA)")
    parser.add_argument("--alpha", type=float, default=0.05, help="1 - confidence of the intervals (0.05)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of videos (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    parser.add_argument("--markdown", help="write the table as markdown here")
    parser.add_argument("--csv", help="write the table as CSV here")
    parser.add_argument("--json", help="write {headline, rows} as JSON here")
    parser.add_argument("--plot", help="write a PNG of both IoU distributions here")
    parser.add_argument("--labels", nargs=2, default=["A", "B"], help="names of the arms in the plot")
    parser.add_argument("--workers", type=int, default=1, help="processes over videos for scoring")


def run(args: argparse.Namespace) -> int:
    if not all(0 < t < 1 for t in args.iou):
        raise ConfigError("--iou thresholds must lie in (0, 1)")
    if not 0 < args.alpha < 1:
        raise ConfigError("--alpha must lie in (0, 1)")
    if bool(args.runs_a) != bool(args.runs_b):
        raise ConfigError("--runs-a and --runs-b go together (one results file per seed in each)")
    if bool(args.a) != bool(args.b) or not (args.a or args.runs_a):
        raise ConfigError("give --a and --b (one run each), or --runs-a and --runs-b (one file per seed)")
    metrics = args.metrics or default_metrics(args.iou, "hota" if args.metric == "hota" else "top1")
    for m in metrics:
        try:
            metric(m)
        except ValueError as e:
            raise ConfigError(f"--metrics: {e}") from None
    gt = load_annotations(args.gt)
    runs_a = [load_results(p, gt=gt) for p in args.runs_a]
    runs_b = [load_results(p, gt=gt) for p in args.runs_b]
    ra = load_results(args.a, gt=gt) if args.a else runs_a[0]
    rb = load_results(args.b, gt=gt) if args.b else runs_b[0]
    from avis.evaluation.pairing import check_results_belong

    named = [*zip(args.runs_a, runs_a), *zip(args.runs_b, runs_b)]
    named += [(p, r) for p, r in ((args.a, ra if args.a else None), (args.b, rb if args.b else None)) if p]
    for path, res in named:  # results of other videos would make a test of nothing
        check_results_belong(gt, res, path, args.gt)
    verdict = compare_recipes(gt, runs_a or [ra], runs_b or [rb], args.iou, metrics, args.alpha, args.workers)
    diag = compare(gt, ra, rb, args.iou, args.bootstrap, args.seed, args.workers)
    rows = verdict["rows"] + diag["rows"]
    print(format_table(verdict["rows"]))
    print("\nheadline: " + headline_text(verdict["headline"], tuple(args.labels)))
    print("\nper-model diagnostics (one run per arm; these compare two trained models):")
    print(format_table(diag["rows"]))
    if args.markdown:
        with atomic_open(args.markdown, "w") as f:
            f.write(format_table(rows, markdown=True) + "\n")
    if args.csv:
        with atomic_open(args.csv, "w") as f:
            f.write(to_csv(rows))
    if args.json:
        save_json(jsonable({"headline": verdict["headline"], "rows": rows}), args.json, indent=2)
    if args.plot:
        Path(os.fspath(args.plot)).parent.mkdir(parents=True, exist_ok=True)
        plot_distributions(diag["ious_a"], diag["ious_b"], args.plot, tuple(args.labels))
    return 0
