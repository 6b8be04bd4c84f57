"""Recipe-level comparison: is training recipe A better than recipe B on this data distribution?

Each arm is trained with several seeds; every run is scored on the same test videos. The difference of the
arms' mean metric, ``diff = mean_s m(A_s) - mean_s m(B_s)``, varies for two reasons: the training seeds
(another seed gives another model) and the test videos (another sample of videos from the same
distribution gives other numbers). The test below has the null "the two recipes are equally good on this data
distribution" and accounts for both.

The statistic (:func:`two_way_test`): a t statistic ``diff / se`` with

    se^2 = seed part + test-set part
    seed part     = s^2_seeds (1/S_A + 1/S_B)      per-run metric values, Student's pooled variance when
                                                   S_A = S_B, else each arm's own (Welch)
    test-set part = max(0, s^2_d / V - MS_A / (S_A V) - MS_B / (S_B V))

computed from delete-one-video jackknife pseudo-values ``p[s, v] = V m_s - (V - 1) m_s(without video v)`` of
every run (for a mean over instances, p is essentially the video's mean, weighted by its instance count; for
AP or any other metric it is its linearisation). ``s^2_d`` is the variance over videos of the difference of
the arms' seed-averaged pseudo-values, ``MS`` the seed x video interaction mean square of an arm (two-way
residuals of its S x V table of pseudo-values). By the law of total variance, Var(diff) = E[Var(diff | test
set)] + Var(E[diff | test set]): the seed part is the first (the run-to-run variance of the metric on this test
set, seed x video noise included), the test-set part the second (how much the infinitely-seeded difference
would move with another sample of videos); the seed x video noise is in both ``s^2_seeds`` and ``s^2_d``,
hence subtracted once. Degrees of freedom: Satterthwaite over the mean squares involved, capped at the seed
part's own (S_A + S_B - 2, or Welch's) when the seed part is the larger one. The p-values are from Student's t
with those degrees of freedom: two-sided, and one-sided for "A better than B".

Calibration: ``scripts/bench_calibration.py`` (docs/benchmarks.md) runs A/A comparisons simulated from
variance components fitted on real runs: the false-positive rate at alpha = 0.05 stays at or below the nominal
level for 2 to 5 seeds per arm.

With one run in an arm (or one seed per arm) there is no seed variance to estimate: the test is then over
videos only (``level = "model"``, ``se^2 = s^2_d / V``, V - 1 df), i.e. it compares the trained models that
were given, and says nothing about the recipes.

Metrics: a metric maps a scored run (:class:`RunEval`) to a :class:`RunScore`, its value on the whole test
set and on the test set without each video. Built in (:func:`metric`): ``top1@T`` (the mean of the top-1
per-instance samples at IoU threshold T, see :mod:`avis.evaluation.samples`; the headline), ``iou@T`` (the
mean IoU of the per-category greedy match, 0 when missed), ``AP`` and ``AP@T`` (YouTube-VIS AP, area all,
100 detections), and ``HOTA``, ``DetA``, ``AssA``, ``LocA`` (class-averaged, mean over alpha 0.05:0.95, as
``avis score --metrics hota`` and TrackEval; :func:`default_metrics` with ``family="hota"``). AP and the HOTA
numbers are not means over instances: like AP, a HOTA value without video ``v`` is the whole computation on the
other videos (TrackEval's combination of their counts), so the jackknife pseudo-values are the per-video
linearisation of HOTA. Any other per-run metric plugs in as a callable with a ``name``, e.g.::

    class MyMetric:
        name = "mine"
        def __call__(self, run: RunEval) -> RunScore:
            ...  # the value on all videos, and with each video of run.video_ids left out
            return RunScore(value, loo)

    compare_recipes(gt, runs_a, runs_b, metrics=["top1@0.5", MyMetric()])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import stats as sps

ONE_SIDED = "A > B"
NOTES = {
    "recipe": "recipe level: null 'the two recipes are equally good on this data distribution' (training seeds "
              "and test videos both random)",
    "model": "model level: fewer than 2 runs in an arm; this compares the trained models given (test videos "
             "random) and says nothing about the recipes",
}


@dataclass(frozen=True)
class RunScore:
    """One run's metric: ``value`` on the whole test set, ``loo[v]`` without video ``v`` (videos in the order
    of :attr:`RunEval.video_ids`); NaN where undefined."""

    value: float
    loo: np.ndarray

    @classmethod
    def from_video_sums(cls, sums, counts) -> RunScore:
        """The mean of a per-instance quantity, from its per-video sums and instance counts."""
        sums, counts = np.asarray(sums, float), np.asarray(counts, float)
        total, n = sums.sum(), counts.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            return cls(float(total / n) if n else math.nan, (total - sums) / (n - counts))


class RunEval:
    """One run (YouTube-VIS results) scored against the ground truth, computed on first use and kept, so that
    several metrics share the matchings."""

    def __init__(self, gt: dict, results: list[dict], workers: int = 1):
        self.gt, self.results, self.workers = gt, results, workers
        self.video_ids = sorted({int(v["id"]) for v in gt["videos"]})
        self._index = {v: i for i, v in enumerate(self.video_ids)}

    def video_index(self, video_id) -> int:
        return self._index[int(video_id)]

    @cached_property
    def evaluation(self):
        from avis.evaluation.ytvis_eval import evaluate

        return evaluate(self.gt, self.results, workers=self.workers)

    @cached_property
    def hota(self):
        """TrackEval's HOTA of the run (:class:`avis.evaluation.hota.HotaEvaluation`)."""
        from avis.evaluation.hota import evaluate_tracking

        return evaluate_tracking(self.gt, self.results, workers=self.workers)[0]

    @cached_property
    def top1_context(self):
        from avis.evaluation.samples import top1_context

        return top1_context(self.gt, self.results, self.workers)

    @cached_property
    def ap_table(self) -> np.ndarray:
        """(1 + V, 1 + 10): AP and AP at each of the 10 IoU thresholds (area all, 100 detections), on all
        videos (row 0) and without each video (row 1 + v)."""
        from avis.evaluation.ytvis_eval import accumulate

        ev = self.evaluation
        by_video: dict[int, list] = {}
        for e in ev.entries:
            by_video.setdefault(int(e.video_id), []).append(e)

        def values(skip) -> list[float]:
            entries = [e for v in self.video_ids if v != skip for e in by_video.get(v, ())]
            p = accumulate(entries, ev.category_ids, area_idx=[0], maxdet_idx=[2])[0][:, :, :, 0, 2]
            return [_mean_defined(p)] + [_mean_defined(p[t]) for t in range(p.shape[0])]

        return np.array([values(None)] + [values(v) for v in self.video_ids])

    def instance_score(self, rows: list[dict], score) -> RunScore:
        """Mean of ``score(row)`` over per-instance sample rows (one per non-crowd ground truth)."""
        sums, counts = np.zeros(len(self.video_ids)), np.zeros(len(self.video_ids))
        for r in rows:
            i = self.video_index(r["video_id"])
            sums[i] += score(r)
            counts[i] += 1
        return RunScore.from_video_sums(sums, counts)


def _mean_defined(s: np.ndarray) -> float:
    s = s[s > -1]
    return float(s.mean()) if s.size else math.nan


# ------------------------------------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class Metric:
    """A named per-run metric: ``fn(run) -> RunScore``."""

    name: str
    fn: Callable[[RunEval], RunScore]

    def __call__(self, run: RunEval) -> RunScore:
        return self.fn(run)


def top1_metric(tau: float) -> Metric:
    """Mean top-1 sample at IoU ``tau``: per ground-truth instance, the IoU of its class-agnostic greedy match
    if that prediction has the instance's category, else 0 (0 when missed)."""
    from avis.evaluation.samples import top1_samples

    def fn(run: RunEval) -> RunScore:
        rows = top1_samples(run.top1_context, tau)
        return run.instance_score(rows, lambda r: r["iou"] if r["pred_category_id"] == r["category_id"] else 0.0)

    return Metric(f"top1@{tau:g}", fn)


def iou_metric(tau: float) -> Metric:
    """Mean per-category sample at IoU ``tau``: the IoU of the instance's greedy match in its own category
    (AP's true positive at ``tau``), 0 when it has none. Blind to wrong-label predictions."""
    from avis.evaluation.samples import samples_from_entries

    def fn(run: RunEval) -> RunScore:
        rows = samples_from_entries(run.evaluation.entries, tau)
        return run.instance_score(rows, lambda r: 0.0 if math.isnan(r["iou"]) else r["iou"])

    return Metric(f"iou@{tau:g}", fn)


def ap_metric(tau: float | None = None) -> Metric:
    """YouTube-VIS AP (averaged over IoU 0.50:0.95) or AP at one of its thresholds (``AP@0.5`` = AP50)."""
    from avis.evaluation.ytvis_eval import IOU_THRS

    col = 0
    if tau is not None:
        hit = np.where(np.isclose(IOU_THRS, tau))[0]
        if not len(hit):
            raise ValueError(f"AP@{tau:g}: AP is defined at the thresholds 0.50:0.05:0.95 only")
        col = 1 + int(hit[0])

    def fn(run: RunEval) -> RunScore:
        t = run.ap_table
        return RunScore(float(t[0, col]), t[1:, col].copy())

    return Metric("AP" if tau is None else f"AP@{tau:g}", fn)


HOTA_METRICS = ("HOTA", "DetA", "AssA", "LocA")


def hota_metric(key: str = "HOTA") -> Metric:
    """A class-averaged HOTA field (``HOTA``, ``DetA``, ``AssA``, ``LocA``; mean over alphas, as
    ``avis score --metrics hota``): its value on all videos and, for the jackknife, on all videos but one
    (:meth:`avis.evaluation.hota.HotaEvaluation.leave_one_video_out`). NaN where undefined (no category)."""
    if key not in HOTA_METRICS:
        raise ValueError(f"unknown HOTA metric {key!r} ({', '.join(HOTA_METRICS)})")

    def fn(run: RunEval) -> RunScore:
        ev = run.hota
        value = float(np.mean(ev.class_averaged[key])) if ev.category_ids else math.nan
        return RunScore(value if math.isfinite(value) else math.nan, ev.leave_one_video_out(key))

    return Metric(key, fn)


def metric(name) -> Metric:
    """A built-in metric by name (``top1@0.5``, ``iou@0.75``, ``AP``, ``AP@0.5``, ``HOTA``, ``DetA``, ``AssA``,
    ``LocA``), or ``name`` itself when it is already a metric (any callable with a ``name``)."""
    if not isinstance(name, str):
        if not callable(name) or not hasattr(name, "name"):
            raise ValueError(f"a metric is a name or a callable with a .name, got {name!r}")
        return name
    if name in HOTA_METRICS:
        return hota_metric(name)
    kind, _, tau = name.partition("@")
    try:
        t = float(tau) if tau else None
    except ValueError:
        t = -1.0
    if kind == "AP" and (t is None or 0 < t < 1):
        return ap_metric(t)
    if kind in ("top1", "iou") and t is not None and 0 < t < 1:
        return (top1_metric if kind == "top1" else iou_metric)(t)
    raise ValueError(f"unknown metric {name!r} (top1@T, iou@T, AP, AP@T with 0 < T < 1; HOTA, DetA, AssA, "
                     "LocA)")


# --------------------------------------------------------------------------------------------- statistics
def _satterthwaite(terms: list[tuple[float, float]]) -> float:
    """Degrees of freedom of sum(c_k MS_k) from its terms (c_k MS_k, df_k)."""
    total = sum(t for t, _ in terms)
    den = sum(t * t / df for t, df in terms if t != 0 and df > 0)
    return total * total / den if den > 0 else math.inf


def _interaction_ms(p: np.ndarray) -> float:
    """Seed x video mean square of an S x V table (residuals of the additive two-way fit)."""
    s, v = p.shape
    r = p - p.mean(0) - p.mean(1, keepdims=True) + p.mean()
    return float((r * r).sum() / ((s - 1) * (v - 1)))


def two_way_test(scores_a: Sequence[RunScore], scores_b: Sequence[RunScore], alpha: float = 0.05) -> dict:
    """The recipe-level test (module docstring) of the runs of arm A against those of arm B; with fewer than 2
    runs in an arm, the model-level test over videos only. Returns a row: ``level``, ``test``, ``variant``,
    ``n_a`` / ``n_b`` (runs), ``n_videos``, ``mean_a`` / ``mean_b`` (means over runs), ``diff`` (A - B),
    ``se``, ``statistic``, ``df``, ``p_value`` (two-sided), ``p_one_sided`` (A > B), ``ci_low`` /
    ``ci_high`` (two-sided 1 - alpha), ``var_seeds`` / ``var_test`` (the two parts of se^2), ``values_a`` /
    ``values_b`` (the per-run values). NaN where undefined (a NaN metric, or zero variance)."""
    sa, sb = len(scores_a), len(scores_b)
    if not sa or not sb:
        raise ValueError("each arm needs at least one run")
    va = np.array([s.value for s in scores_a], float)
    vb = np.array([s.value for s in scores_b], float)
    la = np.array([np.asarray(s.loo, float) for s in scores_a])
    lb = np.array([np.asarray(s.loo, float) for s in scores_b])
    if la.shape[1] != lb.shape[1]:
        raise ValueError("A and B were scored on different videos")
    nv = la.shape[1]
    level = "recipe" if min(sa, sb) >= 2 else "model"
    row = {"level": level, "test": "seeds x videos" if level == "recipe" else "paired videos",
           "variant": "videos", "n_a": sa, "n_b": sb, "n_videos": nv, "mean_a": float(va.mean()),
           "mean_b": float(vb.mean()), "diff": float(va.mean() - vb.mean()), "se": math.nan,
           "statistic": math.nan, "df": math.nan, "p_value": math.nan, "p_one_sided": math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "var_seeds": math.nan, "var_test": math.nan,
           "values_a": va.tolist(), "values_b": vb.tolist(), "one_sided": ONE_SIDED}
    if nv < 2 or not (np.isfinite(va).all() and np.isfinite(vb).all() and np.isfinite(la).all()
                      and np.isfinite(lb).all()):
        return row
    pa = nv * va[:, None] - (nv - 1) * la  # jackknife pseudo-values, runs x videos
    pb = nv * vb[:, None] - (nv - 1) * lb
    d = pa.mean(0) - pb.mean(0)
    test_terms = [(float(d.var(ddof=1)) / nv, nv - 1)]
    seed_terms: list[tuple[float, float]] = []
    if level == "recipe":
        for p, s in ((pa, sa), (pb, sb)):
            test_terms.append((-_interaction_ms(p) / (s * nv), (s - 1) * (nv - 1)))
        if sa == sb:  # Student's pooled variance: robust to unequal variances when the arms are the same size
            pooled = ((sa - 1) * va.var(ddof=1) + (sb - 1) * vb.var(ddof=1)) / (sa + sb - 2)
            seed_terms = [(float(pooled) * (1 / sa + 1 / sb), sa + sb - 2)]
            row["variant"] = "student"
        else:
            seed_terms = [(float(va.var(ddof=1)) / sa, sa - 1), (float(vb.var(ddof=1)) / sb, sb - 1)]
            row["variant"] = "welch"
    var_test = sum(t for t, _ in test_terms)
    if var_test <= 0:
        test_terms, var_test = [], 0.0
    var_seeds = sum(t for t, _ in seed_terms)
    var = var_seeds + var_test
    row.update(var_seeds=var_seeds if level == "recipe" else math.nan, var_test=var_test)
    if var <= 0:
        return row
    df = _satterthwaite(seed_terms + test_terms)
    if seed_terms and var_seeds >= var_test:
        # Satterthwaite's df comes from the same noisy estimates: when a few-seed part that happens to be small
        # dominates, it over-trusts it (6 % false positives at 2 seeds). Cap at the dominant part's own df.
        df = min(df, _satterthwaite(seed_terms))
    se = math.sqrt(var)
    t = row["diff"] / se
    half = float(sps.t.ppf(1 - alpha / 2, df)) * se
    row.update(se=se, statistic=t, df=df, p_value=float(2 * sps.t.sf(abs(t), df)),
               p_one_sided=float(sps.t.sf(t, df)), ci_low=row["diff"] - half, ci_high=row["diff"] + half)
    return row


# ------------------------------------------------------------------------------------------------- the API
def _threshold(name: str):
    """The IoU threshold in a metric's name (``top1@0.5`` -> 0.5), "0.50:0.95" for AP, HOTA's localisation
    thresholds (alpha) "0.05:0.95" for the HOTA fields, else ""."""
    _, _, tau = name.partition("@")
    try:
        return float(tau) if tau else ("0.50:0.95" if name == "AP" else "0.05:0.95" if name in HOTA_METRICS else "")
    except ValueError:
        return tau


def default_metrics(ious=(0.5, 0.75), family: str = "top1") -> list[str]:
    """``family@T`` for each threshold (the first is the headline), then AP and AP at each threshold; with
    ``family="hota"``: HOTA (the headline), DetA and AssA (``ious`` unused)."""
    if family == "hota":
        return ["HOTA", "DetA", "AssA"]
    return [f"{family}@{t:g}" for t in ious] + ["AP"] + [f"AP@{t:g}" for t in ious]


def compare_recipes(gt: dict, runs_a: Sequence[list[dict]], runs_b: Sequence[list[dict]], ious=(0.5, 0.75),
                    metrics: Sequence | None = None, alpha: float = 0.05, workers: int = 1) -> dict:
    """Compare arm A (``runs_a``: the results of each seed) with arm B on the ground truth ``gt``.

    ``metrics``: names or metric callables (see :func:`metric`); default :func:`default_metrics` of ``ious``;
    the first is the headline. Returns ``{"headline": row, "rows": [row per metric]}``, each row from
    :func:`two_way_test` plus ``metric``, ``iou`` (the metric's threshold, or "0.50:0.95" for AP), ``alpha``
    and ``note`` (what the level means); the headline is ``rows[0]``. JSON-ready apart from NaN floats.
    """
    if not runs_a or not runs_b:
        raise ValueError("each arm needs at least one run")
    ms = [metric(m) for m in (default_metrics(ious) if metrics is None else metrics)]
    if not ms:
        raise ValueError("no metric to compare")
    evals_a = [RunEval(gt, r, workers) for r in runs_a]
    evals_b = [RunEval(gt, r, workers) for r in runs_b]
    rows = []
    for m in ms:
        row = two_way_test([m(r) for r in evals_a], [m(r) for r in evals_b], alpha)
        rows.append({"metric": m.name, "iou": _threshold(m.name), **row, "alpha": alpha, "note": NOTES[row["level"]]})
    return {"headline": rows[0], "rows": rows}
