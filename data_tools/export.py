"""``avis export``: turn a YTVIS results file into annotation files for servers, tools, training and people.

Formats (``--format``, repeat it or give a comma-separated list; ``all`` = every format):

==================  ==========================================  =====================================
format              writes (under ``--out``)                    for
==================  ==========================================  =====================================
ytvis               ``results.json``                            scoring, other VIS tools
ytvis-zip           ``results.zip`` (``results.json`` inside)   YouTube-VIS evaluation servers
ytvis-annotations   ``ytvis_annotations.json``                  pseudo-labels for ``avis build``
coco                ``coco_instances.json``                     per-frame COCO tools (track id attribute)
png                 ``png/<video>/<frame>.png`` (+ instances)   DAVIS-style index masks
cvat                ``cvat/<video>.xml``                        CVAT for video 1.1 (correction in CVAT)
overlay             ``overlay/<video>.mp4``                     looking at it: masks, ids, classes, sound
==================  ==========================================  =====================================
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from avis.errors import ConfigError
from avis.io import ytvis

from .exporters import coco, cvat, png
from .exporters import ytvis as ytvis_export
from .exporters.common import select_tracks

log = logging.getLogger(__name__)

FORMATS = ("ytvis", "ytvis-zip", "ytvis-annotations", "coco", "png", "cvat", "overlay")
# Results files for servers keep every prediction (dropping some can only lower AP); the formats people look
# at or train on keep the confident ones.
DEFAULT_THRESHOLD = {"ytvis": 0.0, "ytvis-zip": 0.0}
DEFAULT_THRESHOLD_OTHER = 0.5


def parse_formats(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        for f in v.split(","):
            f = f.strip().lower()
            if not f:
                continue
            if f == "all":
                out.extend(x for x in FORMATS if x not in out)
            elif f not in FORMATS:
                raise ConfigError(f"unknown export format {f!r} (choose from {', '.join(FORMATS)}, all)")
            elif f not in out:
                out.append(f)
    if not out:
        raise ConfigError("no export format given (--format)")
    return out


def export(results_path: str | os.PathLike, gt_path: str | os.PathLike, formats: list[str],
           out_dir: str | os.PathLike, score_threshold: float | None = None, min_frames: int = 1,
           max_per_video: int | None = None, videos_dir: str | os.PathLike | None = None,
           overlay_fps: float | None = None, cvat_shape: str = "mask", gt: dict | None = None) -> dict[str, Path]:
    """Export ``results_path`` in each of ``formats`` under ``out_dir``; returns format -> written path.

    Inputs are validated first (a bad file raises :class:`avis.errors.InputError` before anything is
    written); every file is written atomically.
    """
    formats = parse_formats(formats)
    if min_frames < 0:
        raise ConfigError("--min-frames must be >= 0")
    gt = gt if gt is not None else ytvis.load_annotations(gt_path)
    if "overlay" in formats and videos_dir is None:
        videos_dir = _recorded_videos_dir(gt, gt_path)
    results = ytvis.load_results(results_path, gt=gt)
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for fmt in formats:
        thr = score_threshold if score_threshold is not None else DEFAULT_THRESHOLD.get(fmt, DEFAULT_THRESHOLD_OTHER)
        tracks = select_tracks(results, gt, thr, min_frames, max_per_video)
        log.info("%s: %d of %d predictions (score >= %g, >= %d frames)", fmt, len(tracks), len(results), thr,
                 min_frames)
        if fmt == "ytvis":
            written[fmt] = ytvis_export.write_results(tracks, gt, out_dir)
        elif fmt == "ytvis-zip":
            written[fmt] = ytvis_export.write_results_zip(tracks, gt, out_dir)
        elif fmt == "ytvis-annotations":
            written[fmt] = ytvis_export.write_annotations(tracks, gt, out_dir)
        elif fmt == "coco":
            written[fmt] = coco.write_coco(tracks, gt, out_dir)
        elif fmt == "png":
            written[fmt] = png.write_png(tracks, gt, out_dir)
        elif fmt == "cvat":
            written[fmt] = cvat.write_cvat(tracks, gt, out_dir, shape=cvat_shape)
        elif fmt == "overlay":
            from .exporters import overlay  # PyAV encode; imported only when asked for

            written[fmt] = overlay.write_overlay(tracks, gt, out_dir, videos_dir=videos_dir, fps=overlay_fps)
    return written


def _recorded_videos_dir(gt: dict, gt_path) -> str:
    """The media folder of a ``videos.json`` that ``avis infer`` wrote for this user (its signed record,
    :mod:`avis.io.provenance`); any other file needs ``--videos``: a folder named by a file avis did not
    write could pull any video of this machine into the export."""
    from avis.io.provenance import recorded_videos_dir

    folder, why = recorded_videos_dir(gt)
    if folder is None:
        raise ConfigError("--format overlay needs --videos DIR (the folder the video_file paths are relative to)"
                          + (f"; {os.fspath(gt_path)}: {why}" if why and gt_path is not None else ""))
    log.info("overlay: media from %s (recorded by avis infer in %s)", folder, gt_path)
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, metavar="RES.json", help="YTVIS results file (predictions)")
    parser.add_argument("--gt", required=True, metavar="GT.json",
                        help="YTVIS annotation file of the same videos (sizes, frames, categories, media paths)")
    parser.add_argument("--format", action="append", required=True, metavar="F",
                        help=f"one of {', '.join(FORMATS)}, or all; repeat or comma-separate for several")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--score-threshold", type=float, default=None, metavar="S",
                        help="keep predictions with score >= S (default: 0 for ytvis/ytvis-zip, "
                             f"{DEFAULT_THRESHOLD_OTHER} for the other formats)")
    parser.add_argument("--min-frames", type=int, default=1, metavar="N",
                        help="keep tracks with a non-empty mask in at least N frames (default 1)")
    parser.add_argument("--max-per-video", type=int, default=None, metavar="K",
                        help="keep the K best-scoring tracks per video")
    parser.add_argument("--videos", default=None, metavar="DIR",
                        help="folder of the source media (the GT's video_file / audio_file / file_names are "
                             "relative to it); needed by the overlay, except for the videos.json of avis infer, "
                             "which records its own")
    parser.add_argument("--overlay-fps", type=float, default=None, metavar="F",
                        help="frame rate of the overlay video (default: the annotation rate, the video entry's "
                             "fps or the median rate of its frame_times: one overlay frame per annotated frame)")
    parser.add_argument("--cvat-shape", choices=cvat.SHAPES, default="mask",
                        help="CVAT shapes: exact masks (default) or polygons (outline of the largest part)")


def run(args: argparse.Namespace) -> int:
    written = export(args.results, args.gt, args.format, args.out, score_threshold=args.score_threshold,
                     min_frames=args.min_frames, max_per_video=args.max_per_video, videos_dir=args.videos,
                     overlay_fps=args.overlay_fps, cvat_shape=args.cvat_shape)
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
    return 0
