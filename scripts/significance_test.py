#!/usr/bin/env python
"""Significance of audio-visual vs visual-only for a folder of runs: the Table X / XII style table.

    python scripts/significance_test.py --runs runs/ --gt val.json --out runs/tables

Layout of ``--runs`` (what ``scripts/train_av_vs_visual.py`` writes; any tool's results fit)::

    RUNS/<group>/<arm>/<seed>/results.json          (or .../<seed>/eval/results.json)

``<group>``: one compared setting, e.g. ``ref1`` .. ``ref5`` (reference frames: the table's "Ref. number" shows
the digits); ``<arm>``: ``av`` and ``visual`` (``--arms`` renames them; the first is A, the one expected to
be better); ``<seed>``: any name (``seed0``, ``seed1``...). Results are YouTube-VIS results JSON against the
``--gt`` annotations (default: the ``gt.json`` that ``avis eval`` wrote next to the first results).

Writes ``OUT/table.md`` and ``OUT/table.csv``: one row per group with AP, AP50 without and with audio (%, means
over seeds), and for AP and the mean top-1 sample at IoU > 0.5 and > 0.75 the signed difference (audio-visual
- visual-only) beside a ONE-SIDED p-value for "audio-visual is better" (the CSV adds the two-sided p-values
and 95 % confidence intervals). The p-values are the verdict of ``avis ttest``
(``avis.evaluation.recipes.compare_recipes``): with >= 2 seeds per arm a recipe-level test (null: the two
recipes are equally good on this data distribution; training seeds and test videos both random); with one
seed per arm a model-level test (it compares the two trained models, not the recipes; the table says so).
``--metric iou`` puts the per-category match's IoU in the IoU columns instead of the top-1 sample.

Per group, also ``verdict_<group>.json`` (the verdict: headline and rows), ``tests_<group>.md/.csv`` (the
verdict rows, then the per-model diagnostics of ``avis ttest`` on the first seed of each arm, e.g. the RCF
paper's unpaired test) and ``iou_<group>.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from avis.errors import AvisError, InputError  # noqa: E402
from avis.evaluation import av_table  # noqa: E402
from avis.io.ytvis import load_annotations  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--runs", required=True, help="folder of runs (layout above)")
    p.add_argument("--gt", help="ground-truth YTVIS JSON (default: gt.json beside the first results)")
    p.add_argument("--out", help="output folder (default: RUNS/tables)")
    p.add_argument("--arms", nargs=2, default=["av", "visual"], metavar=("A", "B"), help="arm folder names")
    p.add_argument("--metric", choices=av_table.METRICS, default=av_table.METRICS[0],
                   help="per-instance sample behind the IoU columns (top1: the headline; iou: per-category match)")
    p.add_argument("--iou", type=float, nargs=2, default=[0.5, 0.75], help="the two IoU thresholds")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the diagnostics' AP CI (0: off)")
    return p.parse_args(argv)


def find_gt(runs: Path, arms) -> Path:
    found = av_table.collect_runs(runs, tuple(arms))
    for arm_runs in found.values():
        for _, path in arm_runs[arms[0]]:
            if (path.parent / "gt.json").is_file():
                return path.parent / "gt.json"
    raise InputError("no --gt given and no gt.json beside the results", runs)


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = Path(args.runs)
    try:
        if not runs.is_dir():
            raise InputError("not a folder", runs)
        gt = load_annotations(args.gt or find_gt(runs, args.arms))
        out = Path(args.out) if args.out else runs / "tables"
        try:
            rows = av_table.summarize_runs(runs, gt, out, tuple(args.arms), args.metric, tuple(args.iou),
                                           args.bootstrap)
        except FileNotFoundError as e:
            raise InputError(str(e), runs) from None
    except AvisError as e:
        print(f"significance_test: error: {e}", file=sys.stderr)
        return e.exit_code
    print(av_table.to_markdown(rows))
    print(f"\nwritten: {out / 'table.md'}, {out / 'table.csv'} (+ verdict_<group>.json, tests_<group>.md/.csv, "
          "iou_<group>.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
