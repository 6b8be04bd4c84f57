#!/usr/bin/env python
"""Batch annotation export: every results file in a folder of runs, in the same formats, one output folder each.

    python scripts/export_annotations.py --runs outputs/ --gt val.json --format ytvis-zip,png --out exports/

finds ``--pattern`` (default ``**/results*.json``) under ``--runs`` and writes ``OUT/<run>/`` for each, where
``<run>`` is the results file's folder relative to ``--runs`` (``a/b`` -> ``a__b``; the file's stem is added
when it is not plain ``results``). The ground truth is loaded once. A run whose ``OUT/<run>/export.json``
records the same results file (size, mtime) and options is skipped, so an interrupted batch resumes; ``--force``
redoes everything. A run with bad input is reported and the others go on; the exit code is 1 if any failed.
Options are those of ``avis export`` (see docs/export.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from avis.errors import AvisError  # noqa: E402
from avis.io import ytvis  # noqa: E402
from data_tools import export as export_cmd  # noqa: E402
from data_tools.exporters.cvat import SHAPES  # noqa: E402

log = logging.getLogger("export_annotations")


def run_name(results: Path, runs: Path) -> str:
    rel = results.relative_to(runs)
    parts = list(rel.parent.parts)
    if rel.stem != "results" or not parts:
        parts.append(rel.stem)
    return "__".join(parts)


def find_results(runs: Path, pattern: str, out: Path) -> list[Path]:
    out = out.resolve()
    found = []
    for p in sorted(runs.glob(pattern)):
        # never pick up our own outputs when --out lies inside --runs
        if p.is_file() and out not in p.resolve().parents:
            found.append(p)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, type=Path, help="folder of runs holding results JSON files")
    ap.add_argument("--pattern", default="**/results*.json", help="glob of the results files under --runs")
    ap.add_argument("--gt", required=True, type=Path, help="YTVIS annotation file of the videos")
    ap.add_argument("--format", action="append", required=True, help="formats, as for avis export")
    ap.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per run)")
    ap.add_argument("--score-threshold", type=float, default=None)
    ap.add_argument("--min-frames", type=int, default=1)
    ap.add_argument("--max-per-video", type=int, default=None)
    ap.add_argument("--videos", type=Path, default=None, help="source media folder (for overlays)")
    ap.add_argument("--overlay-fps", type=float, default=None)
    ap.add_argument("--cvat-shape", choices=SHAPES, default="mask")
    ap.add_argument("--force", action="store_true", help="redo runs that were already exported")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    try:
        formats = export_cmd.parse_formats(args.format)
        gt = ytvis.load_annotations(args.gt)
    except AvisError as e:
        print(f"export_annotations: error: {e}", file=sys.stderr)
        return 2
    found = find_results(args.runs, args.pattern, args.out)
    if not found:
        print(f"export_annotations: error: no files match {args.pattern!r} under {args.runs}", file=sys.stderr)
        return 2
    options = {"formats": formats, "score_threshold": args.score_threshold, "min_frames": args.min_frames,
               "max_per_video": args.max_per_video, "overlay_fps": args.overlay_fps, "cvat_shape": args.cvat_shape,
               "gt": str(args.gt.resolve()), "videos": None if args.videos is None else str(args.videos.resolve())}
    failed, skipped, done = [], 0, 0
    for res in tqdm(found, desc="runs", unit="run"):
        name = run_name(res, args.runs)
        out = args.out / name
        stat = res.stat()
        manifest = {"results": str(res.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **options}
        mpath = out / "export.json"
        if not args.force and mpath.is_file():
            try:
                if ytvis.load_json(mpath).get("manifest") == manifest:
                    skipped += 1
                    continue
            except AvisError:
                pass  # unreadable manifest: redo the run
        try:
            written = export_cmd.export(res, args.gt, formats, out, score_threshold=args.score_threshold,
                                        min_frames=args.min_frames, max_per_video=args.max_per_video,
                                        videos_dir=args.videos, overlay_fps=args.overlay_fps,
                                        cvat_shape=args.cvat_shape, gt=gt)
        except AvisError as e:
            failed.append((name, str(e)))
            tqdm.write(f"export_annotations: {name}: error: {e}", file=sys.stderr)
            continue
        ytvis.save_json({"manifest": manifest, "written": {k: str(v) for k, v in written.items()}}, mpath, indent=1)
        done += 1
    print(f"{done} exported, {skipped} already done, {len(failed)} failed (of {len(found)} runs) -> {args.out}")
    for name, err in failed:
        print(f"  failed: {name}: {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
