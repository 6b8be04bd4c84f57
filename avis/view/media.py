"""The media a viewer page plays: one browser-ready mp4 per video (H.264 yuv420p + AAC), on the toolkit's frame
timeline, so that the page's ``currentTime`` is the time of ``frame_times`` (t = 0 at the first frame).

Where each video's pictures and sound come from, first found:

1. ``--shards``: the frames and 16 kHz sound the model saw (exact times from the shards);
2. ``--videos``: the source named by the ground truth (``video_file``, or ``file_names`` JPEG frames, with
   ``audio_file``), re-encoded by the overlay exporter with nothing drawn, at the source's frame rate (at most
   :data:`MAX_FPS`) so playback is smooth while masks change at the annotated frames;
3. nothing: grey frames at the annotated times, silent (the page still shows masks, IoU and scores).

Re-encoding (rather than copying the source) puts frame 0 at t = 0 and the sound on the same timeline whatever
the source's start offsets, edit lists or codecs are, and gives every browser a codec it plays.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avis.errors import InputError
from avis.io import ytvis
from avis.io.atomic import MP4_FASTSTART, atomic_path

log = logging.getLogger(__name__)
MAX_FPS = 30.0
DEFAULT_FPS = 6.0  # the builder's default rate, for videos whose annotation times are unknown
BLANK = 48  # grey level of the frames of a video without media
TIME_BASE = Fraction(1, 90000)


def annotation_times(video: dict, fps: float | None = None) -> tuple[list[float], bool]:
    """Times of the annotated frames and whether they are known (else ``i / DEFAULT_FPS``)."""
    times = ytvis.frame_times(video, fps=fps)
    if times is not None:
        return times, True
    return [i / DEFAULT_FPS for i in range(int(video.get("length") or 0))], False


def source_rate(path: Path) -> float | None:
    """The source video's average frame rate (None when the container does not say)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.video:
                raise InputError("no video stream", path)
            rate = c.streams.video[0].average_rate or c.streams.video[0].guessed_rate
            return float(rate) if rate else None
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"unreadable media file ({e})", path) from None


def encode_frames(path: Path, frames: np.ndarray, times, audio: np.ndarray | None = None,
                  sample_rate: int = 16000) -> None:
    """uint8 T x H x W x 3 frames shown from ``times[t]`` (s, increasing) and optional float32 mono sound
    (sample 0 at t = 0) -> H.264 (yuv420p, padded to even sizes) + AAC mp4, written atomically."""
    t_count, h, w = frames.shape[:3]
    eh, ew = h + h % 2, w + w % 2
    times = np.asarray(times, np.float64)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / DEFAULT_FPS
    with atomic_path(path) as tmp, av.open(os.fspath(tmp), "w", format="mp4", options=MP4_FASTSTART) as out:
        vs = out.add_stream("libx264", rate=Fraction(1 / step).limit_denominator(100000))
        vs.width, vs.height, vs.pix_fmt = ew, eh, "yuv420p"
        vs.time_base = vs.codec_context.time_base = TIME_BASE
        # bframes 0: frames keep their own times (variable frame rates from frame_times stay exact)
        vs.options = {"crf": "20", "preset": "veryfast", "bframes": "0"}
        aus = None
        if audio is not None and audio.size:
            aus = out.add_stream("aac", rate=int(sample_rate), layout="mono")
        for t in range(t_count):
            img = frames[t] if (eh, ew) == (h, w) else np.pad(frames[t], ((0, eh - h), (0, ew - w), (0, 0)))
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts, vf.time_base = int(round(times[t] / TIME_BASE)), TIME_BASE
            out.mux(vs.encode(vf))
        # the last frame is shown for one frame interval: a repeated frame marks where the video ends
        if t_count:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts, vf.time_base = int(round((times[-1] + step) / TIME_BASE)) - 1, TIME_BASE
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if aus is not None:
            wav = np.asarray(audio, np.float32).reshape(-1)
            for s in range(0, len(wav), 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[None, s:s + 1024]), format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts, af.time_base = int(sample_rate), s, Fraction(1, int(sample_rate))
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))


def from_shards(path: Path, video) -> dict:
    """A shard video (:class:`avis.data.Video`) -> mp4; returns the page's media info."""
    audio = np.asarray(video.audio, np.float32) if video.has_audio else None
    encode_frames(path, np.asarray(video.frames), video.frame_times, audio, video.sample_rate)
    return {"times": [float(t) for t in video.frame_times], "sound": bool(video.has_audio and audio.size),
            "note": "frames and sound from the shards (what the model saw)"}


def from_source(path: Path, video: dict, videos_dir: Path) -> dict:
    """The source media named by a ground-truth video entry -> mp4 through the overlay exporter."""
    from data_tools.exporters import overlay

    fps = None
    if video.get("video_file"):
        rate = source_rate(videos_dir / video["video_file"])
        fps = min(rate, MAX_FPS) if rate else None
    times, known = annotation_times(video, fps)
    if not known:  # JPEG frames without times: the builder's default rate (said on the page)
        fps = DEFAULT_FPS
    info = overlay.write_video_overlay(video, [], {}, videos_dir, path, fps=fps)
    note = "source video" if video.get("video_file") else "source frames"
    if not known:
        note += f"; annotation times unknown, shown at {DEFAULT_FPS:g} fps"
    return {"times": times, "sound": info["audio_samples"] > 0, "note": note}


def blank(path: Path, video: dict) -> dict:
    """Grey frames at the annotated times, silent, for a video without media."""
    times, known = annotation_times(video)
    h, w = int(video["height"]), int(video["width"])
    frames = np.broadcast_to(np.uint8(BLANK), (len(times), h, w, 3))
    encode_frames(path, frames, times)
    note = "no media (give --videos or --shards): masks on a blank frame"
    if not known:
        note += f"; annotation times unknown, shown at {DEFAULT_FPS:g} fps"
    return {"times": times, "sound": False, "note": note}


def has_source(video: dict, videos_dir: Path | None) -> bool:
    return videos_dir is not None and bool(video.get("video_file") or video.get("file_names"))

