"""The Table X / XII style comparison of audio-visual (with audio tokens) and visual-only runs.

One row per number of reference frames (the paper's "Ref. number")::

    Ref. | seeds | AP w/o audio | AP50 w/o audio | AP with audio | AP50 with audio | diff AP | p AP (AV > visual)
         | diff (IoU > 0.5) | p AV > visual (IoU > 0.5) | diff (IoU > 0.75) | p AV > visual (IoU > 0.75) | level

AP / AP50 are in percent, averaged over the seeds of each arm. Every p comes from the verdict of ``avis ttest``
(:func:`avis.evaluation.recipes.compare_recipes`, A = audio-visual, B = visual-only) and is ONE-SIDED, for the
question asked: "is audio-visual better than visual-only?"; the signed difference (audio-visual - visual-only)
stands beside it. With >= 2 seeds per arm the test is recipe-level (seeds and test videos both random); with one
seed it compares the two trained models (``level`` = model) and the table says so. ``p AP``: the same test on
AP; the IoU columns: on the mean top-1 sample at that threshold (``metric="top1"``, the headline; ``"iou"``: the
per-category match's IoU, blind to wrong-label predictions), differences in points (x 100). The CSV adds the
two-sided p-values (``p2_*``) and the 95 % confidence intervals of the differences.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

from avis.evaluation import ttest
from avis.evaluation.recipes import NOTES, compare_recipes

COLUMNS = (("ref", "Ref. number"), ("seeds", "seeds (AV / visual)"), ("AP_visual", "AP w/o audio"),
           ("AP50_visual", "AP50 w/o audio"), ("AP_av", "AP with audio"), ("AP50_av", "AP50 with audio"),
           ("dAP", "diff AP"), ("p_ap", "p AP (AV > visual)"), ("d_iou50", "diff (IoU > 0.5)"),
           ("p_iou50", "p AV > visual (IoU > 0.5)"), ("d_iou75", "diff (IoU > 0.75)"),
           ("p_iou75", "p AV > visual (IoU > 0.75)"), ("level", "level"))
CSV_EXTRA = ("dAP50", "p2_ap", "p2_iou50", "p2_iou75", "ci_ap_low", "ci_ap_high", "ci_iou50_low", "ci_iou50_high",
             "ci_iou75_low", "ci_iou75_high", "metric")
METRICS = ("top1", "iou")


def table_metrics(metric: str = "top1", ious=(0.5, 0.75)) -> list[str]:
    """The verdict metrics behind a row: ``metric@T`` per threshold (the first is the headline), AP, AP@0.5."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return [f"{metric}@{t:g}" for t in ious] + ["AP", "AP@0.5"]


def table_row(ref, verdict: dict, metric: str = "top1") -> dict:
    """One row from :func:`~avis.evaluation.recipes.compare_recipes` output whose metrics include ``AP``,
    ``AP@0.5`` and ``metric@0.5`` / ``metric@0.75`` (missing ones: NaN). A = audio-visual, B = visual-only;
    AP values and differences in percent (points)."""
    by = {r["metric"]: r for r in verdict["rows"]}
    nan = math.nan

    def get(name, key, scale=1.0):
        r = by.get(name)
        v = None if r is None else r.get(key)
        return nan if v is None else scale * v

    h = verdict["headline"]
    row = {"ref": ref, "seeds": f"{h['n_a']}/{h['n_b']}", "level": h["level"], "metric": metric,
           "AP_visual": get("AP", "mean_b", 100), "AP50_visual": get("AP@0.5", "mean_b", 100),
           "AP_av": get("AP", "mean_a", 100), "AP50_av": get("AP@0.5", "mean_a", 100),
           "dAP": get("AP", "diff", 100), "dAP50": get("AP@0.5", "diff", 100),
           "p_ap": get("AP", "p_one_sided"), "p2_ap": get("AP", "p_value"),
           "ci_ap_low": get("AP", "ci_low", 100), "ci_ap_high": get("AP", "ci_high", 100)}
    for tau, key in ((0.5, "iou50"), (0.75, "iou75")):
        name = f"{metric}@{tau:g}"
        row.update({f"d_{key}": get(name, "diff", 100), f"p_{key}": get(name, "p_one_sided"),
                    f"p2_{key}": get(name, "p_value"), f"ci_{key}_low": get(name, "ci_low", 100),
                    f"ci_{key}_high": get(name, "ci_high", 100)})
    return row


def compare_arms(gt: dict, runs_av: Sequence[list[dict]], runs_visual: Sequence[list[dict]], ref,
                 metric: str = "top1", ious=(0.5, 0.75), alpha: float = 0.05) -> tuple[dict, dict]:
    """One table row for one reference-frame setting; ``runs_*``: the results (YTVIS lists) of each seed.

    Returns the row and the verdict behind it (:func:`~avis.evaluation.recipes.compare_recipes` output)."""
    verdict = compare_recipes(gt, runs_av, runs_visual, ious, table_metrics(metric, ious), alpha)
    return table_row(ref, verdict, metric), verdict


def _cell(key: str, v) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "ref":
        return str(v)
    if key.startswith(("p_", "p2_")):
        return f"{v:.2g}" if v < 1e-3 else f"{v:.3f}"
    return f"{v:+.1f}" if key.startswith(("d", "ci_")) else f"{v:.1f}"


def notes(rows: list[dict]) -> list[str]:
    """What the p columns mean, and a warning when a row compares single models."""
    metric = rows[0].get("metric", "top1") if rows else "top1"
    sample = ("the mean top-1 sample (class-agnostic greedy match: its IoU if the label is right, else 0)"
              if metric == "top1" else "the mean IoU of each instance's same-category match (0 when missed)")
    out = ["p: one-sided, 'audio-visual better than visual-only', beside the signed difference (audio-visual - "
           f"visual-only, points); IoU columns: {sample} at that threshold; AP: the same test on AP."]
    out += [f"{NOTES[level]}." for level in ("recipe", "model") if any(r.get("level") == level for r in rows)]
    return out


def to_markdown(rows: list[dict]) -> str:
    """The table, then the notes on what its p-values mean."""
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body, "", *notes(rows)])


def to_csv(rows: list[dict]) -> str:
    fields = [k for k, _ in COLUMNS] + list(CSV_EXTRA)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
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


def summarize_runs(root, gt: dict, out_dir, arms: tuple[str, str] = ("av", "visual"), metric: str = "top1",
                   ious=(0.5, 0.75), bootstrap: int = 1000) -> list[dict]:
    """The table of every group under ``root`` (see :func:`collect_runs`) -> ``out_dir``/table.md, table.csv,
    and per group: ``verdict_<group>.json`` (the :func:`compare_arms` verdict, every seed of each arm),
    ``tests_<group>.md/.csv`` (the verdict rows, then the per-model diagnostics of ``avis ttest`` on the first
    seed of each arm) and ``iou_<group>.png``. Returns the table rows."""
    from avis.io.atomic import atomic_open
    from avis.io.ytvis import load_results, save_json

    runs = collect_runs(root, arms)
    if not runs:
        raise FileNotFoundError(f"no results in {root} (layout: <group>/{arms[0]}|{arms[1]}/<seed>/results.json)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for group, arm_runs in runs.items():
        res_a = [load_results(p, gt=gt) for _, p in arm_runs[arms[0]]]
        res_b = [load_results(p, gt=gt) for _, p in arm_runs[arms[1]]]
        row, verdict = compare_arms(gt, res_a, res_b, ref_label(group), metric, ious)
        rows.append(row)
        save_json(ttest.jsonable(verdict), out_dir / f"verdict_{group}.json", indent=2)
        diag = ttest.compare(gt, res_a[0], res_b[0], ious, bootstrap=bootstrap)
        tests = verdict["rows"] + diag["rows"]
        with atomic_open(out_dir / f"tests_{group}.md", "w") as f:
            f.write(ttest.format_table(tests, markdown=True) + "\n")
        with atomic_open(out_dir / f"tests_{group}.csv", "w") as f:
            f.write(ttest.to_csv(tests))
        ttest.plot_distributions(diag["ious_a"], diag["ious_b"], out_dir / f"iou_{group}.png", arms)
    with atomic_open(out_dir / "table.md", "w") as f:
        f.write(to_markdown(rows) + "\n")
    with atomic_open(out_dir / "table.csv", "w") as f:
        f.write(to_csv(rows))
    return rows
