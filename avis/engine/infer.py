"""``avis infer VIDEO... --checkpoint CKPT --out DIR``: a trained method on raw video files or JPEG frame folders.

Videos are decoded exactly as ``avis build`` decodes them (``data_tools/decode.py``: frames shown at
``k / fps`` on the frame timeline, sound resampled to 16 kHz mono with sample 0 at time 0), so the model sees
the same frames and audio windows as in training. ``fps`` defaults to the frame rate of the checkpoint's
training data (recorded by ``avis train``; 6, the build's default, for checkpoints that do not record it). A
folder of JPEG (or PNG) frames is a video whose frames, in name order, are shown at ``k / fps``, with the sound
of ``FOLDER.wav`` (or another audio file of the folder's name beside it) when there is one. Writes::

    DIR/results.json     YTVIS results (masks at each video's display size)
    DIR/videos.json      the videos as a YTVIS annotation file without annotations (ids, sizes, frame times,
                         media paths relative to the folder holding all inputs, which it records, signed:
                         :mod:`avis.io.provenance`): with results.json the input of ``avis export``, which
                         finds the media without ``--videos``
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
import re
import shutil
import tempfile
from pathlib import Path

from avis.errors import InputError
from avis.io.files import regular_file
from avis.models.audio.windows import DEFAULT_ETA

log = logging.getLogger("avis.infer")

DEFAULT_FPS = 6.0  # avis build's default, for checkpoints that do not record their data's rate
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from data_tools.export import DEFAULT_THRESHOLD_OTHER

    parser.add_argument("videos", nargs="+",
                        help="video files (any container/codec PyAV reads) or folders of JPEG/PNG frames")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by avis train")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames per second to run at (default: the frame rate of the checkpoint's training "
                             f"data, else {DEFAULT_FPS:g}); the frame timeline starts at the first frame")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no-overlay", action="store_true", help="write results only, no overlay videos")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="overlay only tracks scoring at least this (default: avis export's, "
                             f"{DEFAULT_THRESHOLD_OTHER}); results.json keeps every track")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")


def _natural(name: str):
    return [int(x) if x.isdigit() else x.lower() for x in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """The JPEG / PNG frames of a folder, in natural name order (``2.jpg`` before ``10.jpg``)."""
    files = [f for f in folder.iterdir() if f.suffix.lower() in FRAME_EXTENSIONS and not f.name.startswith(".")]
    if not files:
        raise InputError(f"a folder without frames ({', '.join(FRAME_EXTENSIONS)}) to run on", folder)
    return sorted(files, key=lambda f: _natural(f.name))


def _sound_beside(folder: Path) -> Path | None:
    from data_tools.build import AUDIO_EXTENSIONS

    return next((p for ext in AUDIO_EXTENSIONS if (p := folder.with_name(folder.name + ext)).is_file()), None)


def _decode_folder(folder: Path, fps: float, max_size: int | None):
    """A JPEG frame folder as :class:`data_tools.decode.Decoded`-like fields: frames at ``k / fps``."""
    import numpy as np

    from data_tools import decode as dec

    files = frame_files(folder)
    frames = [dec.read_image(f, max_size) for f in files]
    if len({f.shape for f in frames}) != 1:
        raise InputError("its frames do not all have the same size", folder)
    width, height = dec.read_image_size(files[0])
    times = np.arange(len(files), dtype=np.float64) / fps
    sound = _sound_beside(folder)
    audio = None
    if sound is not None:
        n = int(round(len(files) / fps * dec.AUDIO_RATE))
        audio = np.zeros(n, np.float32)
        a = dec.decode_audio_file(sound, dec.AUDIO_RATE)[:n]
        audio[:len(a)] = a
    return files, np.stack(frames), times, audio, sound, (width, height)


def _inputs(paths: list[Path]) -> tuple[list[Path], Path]:
    """Each input resolved (a file, or a folder of frames), and the folder holding them all."""
    resolved = []
    for p in paths:
        if p.is_dir():
            resolved.append(p.resolve())
        else:
            regular_file(p)  # names a missing path, refuses a FIFO or a device
            resolved.append(p.resolve())
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    return resolved, root


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avis.data.video import Video
    from avis.engine.predict import predict_videos
    from avis.engine.session import load_trained
    from avis.io import provenance
    from avis.io.ytvis import save_json
    from data_tools import decode as dec

    if args.fps is not None:
        dec.check_fps(args.fps, "--fps")  # the build's rule: finite, in (0, 1000]
    paths, root = _inputs([Path(v) for v in args.videos])
    trained = load_trained(args.checkpoint, args.device)
    fps = args.fps or trained.fps or DEFAULT_FPS
    if args.fps is None:
        log.info("running at %g fps (%s)", fps, "the rate of the checkpoint's training data" if trained.fps else
                 "the checkpoint does not record its data's rate; --fps sets it")
    dc = trained.cfg.data
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    entries, decoded = [], []
    for i, p in enumerate(tqdm(paths, desc="decode", unit="video", disable=len(paths) < 2)):
        vid = i + 1
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            files, frames, times, audio, sound, (w, h) = _decode_folder(p, fps, dc.get("test_max_size"))
            entry = {"file_names": [f.relative_to(root).as_posix() for f in files]}
            if sound is not None:
                entry["audio_file"] = sound.relative_to(root).as_posix()
            has_audio = sound is not None
        else:
            d = dec.decode(p, fps=fps, max_size=dc.get("test_max_size"))
            frames, times, audio, has_audio, (w, h) = d.frames, d.frame_times, d.audio, d.has_audio, (d.width, d.height)
            entry = {"video_file": rel, "file_names": [f"{p.stem}/{t:05d}.jpg" for t in range(len(times))]}
        entries.append({"id": vid, "width": int(w), "height": int(h), "length": len(times), "fps": float(fps),
                        "frame_times": [float(t) for t in times], **entry})
        decoded.append(Video(video_id=vid, frames=frames, frame_times=times,
                             audio=None if audio is None else audio[None], sample_rate=dec.AUDIO_RATE,
                             has_audio=has_audio))
        if not has_audio and trained.model.uses_audio:
            log.warning("%s has no sound: the audio-visual model gets silence", p)
    sizes = {e["id"]: (e["height"], e["width"], e["length"]) for e in entries}
    pred = predict_videos(trained.model, decoded, trained.categories, trained.device,
                          short=dc.get("test_size"), max_size=dc.get("test_max_size"),
                          eta=float(dc.get("eta", DEFAULT_ETA)), amp=not args.no_amp, with_gt=False, sizes=sizes)
    videos = {"videos": entries, "annotations": [], "categories": trained.categories,
              provenance.RECORD: provenance.record(root, entries)}
    summary = {"videos": len(entries), "results": len(pred["results"]), "fps": fps, "timing": pred["timing"]}
    stage = Path(tempfile.mkdtemp(prefix=".avis-infer-", dir=out))
    try:
        save_json(pred["results"], stage / "results.json")
        save_json(videos, stage / "videos.json")
        if not args.no_overlay:
            _overlays(pred["results"], videos, stage, root, fps, args.score_threshold)
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


def _overlays(results: list[dict], videos: dict, out: Path, root: Path, fps: float, threshold: float | None) -> str:
    from data_tools.export import DEFAULT_THRESHOLD_OTHER
    from data_tools.exporters import overlay
    from data_tools.exporters.common import select_tracks

    thr = DEFAULT_THRESHOLD_OTHER if threshold is None else threshold  # as avis export draws overlays
    tracks = select_tracks(results, videos, score_threshold=thr)
    return str(overlay.write_overlay(tracks, videos, out, videos_dir=root, fps=fps))
