"""The Table X / XII style comparison of audio-visual (with audio tokens) and visual-only runs.

One row per number of reference frames (the paper's "Ref. number")::

    Ref. | AP w/o audio | AP50 w/o audio | AP with audio | AP50 with audio | diff AP | diff AP50 | p (IoU>0.5) | p (IoU>0.75)

AP / AP50 are in percent, averaged over the seeds of each arm. The p-values come from the headline test of
``avis ttest`` (:mod:`avis.evaluation.ttest`), ``paired-instance-top1``: a paired t-test over ground-truth
instances of the top-1 sample (class-agnostic greedy matching at the threshold; the IoU of the match when its
category is right, else 0, 0 when missed); with several seeds per arm the instance's sample is first averaged
over the seeds of that arm (the instance stays the unit; seeds only reduce noise). ``test="paired-instance"``
uses the per-category matching's IoU instead (blind to wrong-label predictions). The paper's
own test (unpaired, matched IoUs above the threshold) can be picked with ``test="paper"`` (Welch).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avis.evaluation import ttest
from avis.evaluation.samples import samples_from_entries, top1_context, top1_samples, top1_scores
from avis.evaluation.ytvis_eval import evaluate

COLUMNS = (("ref", "Ref. number"), ("AP_visual", "AP w/o audio"), ("AP50_visual", "AP50 w/o audio"),
           ("AP_av", "AP with audio"), ("AP50_av", "AP50 with audio"), ("dAP", "diff AP"),
           ("dAP50", "diff AP50"), ("p_iou50", "p (IoU > 0.5)"), ("p_iou75", "p (IoU > 0.75)"),
           ("p_ap", "p (AP, bootstrap)"), ("seeds", "seeds"))
TESTS = (ttest.HEADLINE, "paired-instance", "paper")


def table_row(ref, ap_visual: float, ap50_visual: float, ap_av: float, ap50_av: float, p50: float, p75: float,
              seeds: int = 1, p_ap: float = math.nan) -> dict:
    """One row; AP values are fractions in [0, 1] (the scorer's), the row holds percent as in the paper."""
    return {"ref": ref, "AP_visual": 100 * ap_visual, "AP50_visual": 100 * ap50_visual, "AP_av": 100 * ap_av,
            "AP50_av": 100 * ap50_av, "dAP": 100 * (ap_av - ap_visual), "dAP50": 100 * (ap50_av - ap50_visual),
            "p_iou50": p50, "p_iou75": p75, "p_ap": p_ap, "seeds": seeds}


def bootstrap_ap_p(ev_a, ev_b, n: int = 1000, seed: int = 0) -> float:
    """Two-sided percentile-bootstrap p-value of AP(A) - AP(B) = 0: videos resampled with replacement (the
    same videos for both arms, as ``avis ttest``'s bootstrap CI), p = 2 (min(#diff <= 0, #diff >= 0) + 1) /
    (n + 1). Unlike the IoU t-tests it sees false positives (AP's precision), e.g. a model that labels one
    object with both look-alike classes."""
    from collections import defaultdict

    by_a, by_b = defaultdict(list), defaultdict(list)
    for e in ev_a.entries:
        by_a[e.video_id].append(e)
    for e in ev_b.entries:
        by_b[e.video_id].append(e)
    vids = list(ev_a.video_ids)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        pick = np.sort(rng.integers(0, len(vids), len(vids)))
        ea = [e for i in pick for e in by_a[vids[i]]]
        eb = [e for i in pick for e in by_b[vids[i]]]
        diffs.append(ttest._ap_values(ea, ev_a.category_ids, ())[0] - ttest._ap_values(eb, ev_b.category_ids, ())[0])
    d = np.asarray(diffs)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return math.nan
    k = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return min(1.0, 2 * (k + 1) / (len(d) + 1))


def instance_ious(ev, tau: float) -> dict[tuple, float]:
    """(video, category, instance) -> IoU of its match at ``tau`` (0 when missed)."""
    return ttest.instance_scores(samples_from_entries(ev.entries, tau))


def paired_over_seeds(evs_a: Sequence, evs_b: Sequence, tau: float) -> dict:
    """Paired t-test over instances of the seed-averaged per-instance IoU at ``tau`` (a ttest row)."""
    return _paired_mean([instance_ious(ev, tau) for ev in evs_a], [instance_ious(ev, tau) for ev in evs_b],
                        "paired-instance", tau)


def top1_over_seeds(ctxs_a: Sequence, ctxs_b: Sequence, tau: float) -> dict:
    """As :func:`paired_over_seeds` with the top-1 samples (``ctxs_*``: :func:`~avis.evaluation.samples.
    top1_context` of each run)."""
    return _paired_mean([top1_scores(top1_samples(c, tau)) for c in ctxs_a],
                        [top1_scores(top1_samples(c, tau)) for c in ctxs_b], ttest.HEADLINE, tau)


def _paired_mean(per_a: list[dict], per_b: list[dict], test: str, tau: float) -> dict:
    def mean_scores(per):
        keys = sorted(per[0])
        if any(set(p) != set(keys) for p in per):
            raise ValueError("runs were scored against different ground truth")
        return keys, np.mean([[p[k] for k in keys] for p in per], axis=0)

    ka, a = mean_scores(per_a)
    kb, b = mean_scores(per_b)
    if ka != kb:
        raise ValueError("A and B were scored against different ground truth")
    return ttest.paired_row(test, tau, a, b)


def paper_test(evs_a: Sequence, evs_b: Sequence, tau: float) -> dict:
    """The paper's test: matched IoUs above ``tau`` of every run of each arm pooled, Welch t-test."""
    a = np.concatenate([ttest.matched_ious(samples_from_entries(ev.entries, tau)) for ev in evs_a])
    b = np.concatenate([ttest.matched_ious(samples_from_entries(ev.entries, tau)) for ev in evs_b])
    return ttest.two_sample_rows("paper", tau, a, b)[1]


def compare_arms(gt: dict, runs_av: Sequence[list[dict]], runs_visual: Sequence[list[dict]], ref,
                 test: str = ttest.HEADLINE, ious=(0.5, 0.75), bootstrap: int = 1000) -> tuple[dict, list[dict]]:
    """One table row for one reference-frame setting; ``runs_*``: the results (YTVIS lists) of each seed.
    ``p_ap``: :func:`bootstrap_ap_p` of the first seed of each arm (``bootstrap`` resamples; 0: not computed).

    Returns the row and the test rows behind its p-values.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if not runs_av or not runs_visual:
        raise ValueError("each arm needs at least one run")
    evs_a = [evaluate(gt, r) for r in runs_av]
    evs_b = [evaluate(gt, r) for r in runs_visual]

    def mean_stat(evs, key):
        return float(np.mean([ev.stats[key] for ev in evs]))

    if test == ttest.HEADLINE:
        ctxs_a, ctxs_b = [top1_context(gt, r) for r in runs_av], [top1_context(gt, r) for r in runs_visual]
        tests = [top1_over_seeds(ctxs_a, ctxs_b, tau) for tau in ious]
    else:
        fn = paired_over_seeds if test == "paired-instance" else paper_test
        tests = [fn(evs_a, evs_b, tau) for tau in ious]
    p = {tau: t["p_value"] for tau, t in zip(ious, tests)}
    row = table_row(ref, mean_stat(evs_b, "AP"), mean_stat(evs_b, "AP50"), mean_stat(evs_a, "AP"),
                    mean_stat(evs_a, "AP50"), p.get(0.5, math.nan), p.get(0.75, math.nan),
                    seeds=min(len(runs_av), len(runs_visual)),
                    p_ap=bootstrap_ap_p(evs_a[0], evs_b[0], bootstrap) if bootstrap > 0 else math.nan)
    return row, tests


def _cell(key: str, v) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "ref" or key == "seeds":
        return str(v)
    if key.startswith("p_"):
        return f"{v:.2g}" if v < 1e-3 else f"{v:.3f}"
    return f"{v:+.1f}" if key.startswith("d") else f"{v:.1f}"


def to_markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[k for k, _ in COLUMNS], lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


# --------------------------------------------------------------------------------------- folders of runs
def collect_runs(root, arms: tuple[str, str] = ("av", "visual")) -> dict[str, dict[str, list[tuple[str, Path]]]]:
    """Find results in the layout ``ROOT/<group>/<arm>/<seed>/[eval/]results.json``.

    ``<group>`` is a setting compared on its own (``ref1`` .. ``ref5``: reference frames), ``<arm>`` one of
    ``arms`` (A first), ``<seed>`` any folder name (``seed0``, ``seed1``, ...). Returns
    ``{group: {arm: [(seed, path), ...]}}`` sorted by group and seed; groups missing an arm are left out.
    """
    root = Path(root)
    found: dict[str, dict[str, dict[str, Path]]] = {}
    for pattern in ("*/*/*/results.json", "*/*/*/eval/results.json"):
        for p in root.glob(pattern):
            rel = p.relative_to(root).parts
            group, arm, seed = rel[0], rel[1], rel[2]
            if arm in arms:
                found.setdefault(group, {}).setdefault(arm, {}).setdefault(seed, p)
    out = {}
    for group in sorted(found, key=_natural):
        if all(a in found[group] for a in arms):
            out[group] = {a: sorted(found[group][a].items(), key=lambda kv: _natural(kv[0])) for a in arms}
    return out


def _natural(name: str):
    m = re.fullmatch(r"(\D*)(\d+)", name)
    return (m.group(1), int(m.group(2)), "") if m else (name, -1, name)


def ref_label(group: str) -> str:
    """``ref3`` -> ``3`` (the paper's "Ref. number"); any other group name is kept."""
    m = re.fullmatch(r"ref(\d+)", group)
    return m.group(1) if m else group


def summarize_runs(root, gt: dict, out_dir, arms: tuple[str, str] = ("av", "visual"),
                   test: str = ttest.HEADLINE, ious=(0.5, 0.75), bootstrap: int = 1000) -> list[dict]:
    """The table of every group under ``root`` (see :func:`collect_runs`) -> ``out_dir``/table.md, table.csv,
    and per group the full ``avis ttest`` output (first seed of each arm as A/B, every seed for the seeds
    test) as tests_<group>.md/.csv and iou_<group>.png. Returns the table rows."""
    from avis.io.atomic import atomic_open
    from avis.io.ytvis import load_results

    runs = collect_runs(root, arms)
    if not runs:
        raise FileNotFoundError(f"no results in {root} (layout: <group>/{arms[0]}|{arms[1]}/<seed>/results.json)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for group, arm_runs in runs.items():
        res_a = [load_results(p) for _, p in arm_runs[arms[0]]]
        res_b = [load_results(p) for _, p in arm_runs[arms[1]]]
        row, _ = compare_arms(gt, res_a, res_b, ref_label(group), test, ious, bootstrap)
        rows.append(row)
        several = len(res_a) >= 2 and len(res_b) >= 2
        cmp = ttest.compare(gt, res_a[0], res_b[0], ious, res_a if several else None, res_b if several else None,
                            bootstrap=bootstrap)
        with atomic_open(out_dir / f"tests_{group}.md", "w") as f:
            f.write(ttest.format_table(cmp["rows"], markdown=True) + "\n")
        with atomic_open(out_dir / f"tests_{group}.csv", "w") as f:
            f.write(ttest.to_csv(cmp["rows"]))
        ttest.plot_distributions(cmp["ious_a"], cmp["ious_b"], out_dir / f"iou_{group}.png", arms)
    with atomic_open(out_dir / "table.md", "w") as f:
        f.write(to_markdown(rows) + "\n")
    with atomic_open(out_dir / "table.csv", "w") as f:
        f.write(to_csv(rows))
    return rows
