"""Tiny real media files for the data tests, written with PyAV (H.264 + AAC in mp4).

Frame i is a uniform grey of level ``level(i)`` (with a white 8x8 patch in the top-left corner), so a test
can tell which source frame a decoder returned; audio is silence with optional clicks at known times.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def level(i: int) -> int:
    return 16 + (7 * i) % 224


def frame_index(img: np.ndarray) -> int:
    """Inverse of :func:`level` for a decoded frame (median of the grey area, robust to the patch)."""
    v = float(np.median(img[img.shape[0] // 2:, :, :]))
    return int(round((v - 16) / 7))


def clicks_audio(duration: float, clicks, rate: int = 48000, channels: int = 2, click_s: float = 0.004):
    """float32 channels x N: silence with full-scale bursts of ``click_s`` seconds at each time in ``clicks``."""
    x = np.zeros((channels, int(round(duration * rate))), np.float32)
    for c in clicks:
        a = int(round(c * rate))
        x[:, a:a + int(click_s * rate)] = 0.9
    return x


def write_video(path, num_frames: int = 12, fps=15, size=(64, 48), times=None, start: float = 0.0,
                audio: np.ndarray | None = None, audio_rate: int = 48000, audio_start: float = 0.0,
                rotation: int = 0):
    """mp4 with ``num_frames`` frames at ``fps`` (or at explicit ``times`` s), video starting at ``start`` s.

    ``audio``: float32 channels x N placed at ``audio_start`` seconds (container time).
    """
    w, h = size
    tb = Fraction(1, 90000)
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = tb
        vs.codec_context.time_base = tb
        vs.options = {"preset": "ultrafast", "crf": "10", "bframes": "0"}
        if rotation:
            vs.set_display_rotation(rotation)
        aus = None
        if audio is not None:
            aus = c.add_stream("aac", rate=audio_rate)
            aus.layout = "stereo" if audio.shape[0] == 2 else "mono"
            aus.time_base = Fraction(1, audio_rate)
        if times is None:
            times = [i / float(fps) for i in range(num_frames)]
        for i, t in enumerate(times):
            img = np.full((h, w, 3), level(i), np.uint8)
            img[:8, :8] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = int(round((start + t) / tb))
            f.time_base = tb
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if aus is not None:
            fmt = "fltp"
            n = 1024
            off = int(round(audio_start * audio_rate))
            for s in range(0, audio.shape[1], n):
                chunk = np.ascontiguousarray(audio[:, s:s + n])
                af = av.AudioFrame.from_ndarray(chunk, format=fmt, layout=aus.layout.name)
                af.sample_rate = audio_rate
                af.pts = off + s
                af.time_base = Fraction(1, audio_rate)
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path
