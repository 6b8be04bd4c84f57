"""``avis infer VIDEO... --checkpoint CKPT --out DIR``: a trained method on raw video files.

Videos are decoded exactly as ``avis build`` decodes them (``data_tools/decode.py``: frames shown at
``k / fps`` on the frame timeline, sound resampled to 16 kHz mono with sample 0 at time 0), so the model sees
the same frames and audio windows as in training. Writes::

    DIR/results.json     YTVIS results (masks at each video's display size)
    DIR/videos.json      the videos as a YTVIS annotation file without annotations (ids, sizes, frame times,
                         video_file): with results.json it is the input of ``avis export``
    DIR/overlay/*.mp4    masks, track ids and classes drawn on the source, with the source's sound

Everything is written to a staging folder inside ``DIR`` first and moved into place only when the whole run
succeeded (``results.json`` last): a run that fails (a bad video, an overlay that cannot be encoded) leaves
the outputs of an earlier run as they were.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from avis.io.files import regular_file
from avis.models.audio.windows import DEFAULT_ETA

log = logging.getLogger("avis.infer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="video files (any container/codec PyAV reads)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by avis train")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--fps", type=float, default=6.0,
                        help="frames per second to run at (default 6, as avis build); the frame timeline starts "
                             "at the first frame")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no-overlay", action="store_true", help="write results only, no overlay videos")
    parser.add_argument("--score-threshold", type=float, default=0.0, help="overlay only tracks scoring at least this")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avis.data.video import Video
    from avis.engine.predict import predict_videos
    from avis.engine.session import load_trained
    from avis.io.ytvis import save_json
    from data_tools import decode as dec

    dec.check_fps(args.fps, "--fps")  # the build's rule: finite, in (0, 1000]
    paths = [Path(v) for v in args.videos]
    for p in paths:
        regular_file(p)
    trained = load_trained(args.checkpoint, args.device)
    dc = trained.cfg.data
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    entries, decoded = [], []
    for i, p in enumerate(tqdm(paths, desc="decode", unit="video", disable=len(paths) < 2)):
        d = dec.decode(p, fps=args.fps, max_size=dc.get("test_max_size"))
        vid = i + 1
        entries.append({"id": vid, "width": int(d.width), "height": int(d.height), "length": len(d.frame_times),
                        "fps": float(args.fps), "frame_times": [float(t) for t in d.frame_times],
                        "video_file": str(p.resolve()), "file_names": [f"{p.stem}/{t:05d}.jpg"
                                                                      for t in range(len(d.frame_times))]})
        decoded.append(Video(video_id=vid, frames=d.frames, frame_times=d.frame_times,
                             audio=None if d.audio is None else d.audio[None], sample_rate=d.sample_rate,
                             has_audio=d.has_audio))
        if not d.has_audio and trained.model.uses_audio:
            log.warning("%s has no sound: the audio-visual model gets silence", p)
    sizes = {e["id"]: (e["height"], e["width"], e["length"]) for e in entries}
    pred = predict_videos(trained.model, decoded, trained.categories, trained.device,
                          short=dc.get("test_size"), max_size=dc.get("test_max_size"),
                          eta=float(dc.get("eta", DEFAULT_ETA)), amp=not args.no_amp, with_gt=False, sizes=sizes)
    videos = {"videos": entries, "annotations": [], "categories": trained.categories}
    summary = {"videos": len(entries), "results": len(pred["results"]), "timing": pred["timing"]}
    stage = Path(tempfile.mkdtemp(prefix=".avis-infer-", dir=out))
    try:
        save_json(pred["results"], stage / "results.json")
        save_json(videos, stage / "videos.json")
        if not args.no_overlay:
            _overlays(pred["results"], videos, stage, args)
            summary["overlay"] = str(out / "overlay")
        _move_into_place(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(json.dumps(summary))
    return 0


def _move_into_place(stage: Path, out: Path) -> None:
    """Each staged file replaces its namesake in ``out`` (a rename: atomic per file), ``results.json`` last."""
    files = sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: p.name == "results.json")
    for p in files:
        dst = out / p.relative_to(stage)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, dst)


def _overlays(results: list[dict], videos: dict, out: Path, args) -> str:
    from data_tools.exporters import overlay
    from data_tools.exporters.common import select_tracks

    tracks = select_tracks(results, videos, score_threshold=args.score_threshold)
    return str(overlay.write_overlay(tracks, videos, out, videos_dir="/", fps=args.fps))
