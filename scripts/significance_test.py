#!/usr/bin/env python
"""Significance of audio-visual vs visual-only for a folder of runs: the Table X / XII style table.

    python scripts/significance_test.py --runs runs/ --gt val.json --out runs/tables

Layout of ``--runs`` (what ``scripts/train_av_vs_visual.py`` writes; any tool's results fit)::

    RUNS/<group>/<arm>/<seed>/results.json          (or .../<seed>/eval/results.json)

``<group>``: one compared setting, e.g. ``ref1`` .. ``ref5`` (reference frames: the table's "Ref. number" shows
the digits); ``<arm>``: ``av`` and ``visual`` (``--arms`` renames them; the first is A, the one expected to
be better); ``<seed>``: any name (``seed0``, ``seed1``...). Results are YouTube-VIS results JSON against the
``--gt`` annotations (default: the ``gt.json`` that ``avis eval`` wrote next to the first results).

Writes ``OUT/table.md`` and ``OUT/table.csv`` (one row per group: AP, AP50 without and with audio in %, their
difference, p at IoU > 0.5 and > 0.75) and per group the full ``avis ttest`` output (``tests_<group>.md/.csv``,
``iou_<group>.png``). The p columns come from ``--test``: ``paired-instance-top1`` (default, the headline of
``avis ttest``: paired over ground-truth instances, class-agnostic matching, the match's IoU if its category is
right else 0, averaged over the seeds of an arm), ``paired-instance`` (the IoU of the same-category match) or
``paper`` (the RCF paper's unpaired test on matched IoUs above the threshold, Welch, runs pooled).
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
    p.add_argument("--test", choices=av_table.TESTS, default=av_table.TESTS[0], help="test behind the p columns")
    p.add_argument("--iou", type=float, nargs=2, default=[0.5, 0.75], help="the two IoU thresholds")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI (0: off)")
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
            rows = av_table.summarize_runs(runs, gt, out, tuple(args.arms), args.test, tuple(args.iou),
                                           args.bootstrap)
        except FileNotFoundError as e:
            raise InputError(str(e), runs) from None
    except AvisError as e:
        print(f"significance_test: error: {e}", file=sys.stderr)
        return e.exit_code
    print(av_table.to_markdown(rows))
    print(f"\nwritten: {out / 'table.md'}, {out / 'table.csv'} (+ tests_<group>.md/.csv, iou_<group>.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
