"""Streamable test media (MPEG-TS / Matroska, H.264 + AAC) with video and sound interleaved by time.

A square of a per-second colour moves over grey; the sound is a tone whose loudness follows the square's
position, so an audio-visual toy model's output depends on the windows it gets.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def write_stream(path, seconds: float = 2.0, fps: int = 12, size=(64, 48), audio_rate: int | None = 16000,
                 fmt: str = "mpegts", seed: int = 0):
    """Write ``path`` in ``fmt`` with packets interleaved in time order; returns it."""
    w, h = size
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    with av.open(str(path), "w", format=fmt) as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18", "bframes": "0", "g": str(fps)}
        aus = None
        if audio_rate:
            aus = c.add_stream("aac", rate=audio_rate, layout="mono")
            aus.bit_rate = 64000
        audio = None
        if aus is not None:
            t = np.arange(int(round(seconds * audio_rate))) / audio_rate
            amp = 0.1 + 0.8 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
            audio = (amp * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)

        def mux_audio(a_pos: int) -> int:
            """Encode and mux the next 1024 samples from ``a_pos``; returns the position after them."""
            chunk = audio[a_pos:a_pos + 1024]
            af = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = audio_rate, a_pos, Fraction(1, audio_rate)
            for p in aus.encode(af):
                c.mux(p)
            return a_pos + len(chunk)

        a_pos = 0
        for i in range(n):
            img = np.full((h, w, 3), 110, np.uint8)
            x = int((w - 16) * (0.5 + 0.5 * np.sin(i / 5)))
            y = int((h - 16) * (0.5 + 0.5 * np.cos(i / 7)))
            img[y:y + 16, x:x + 16] = (200, 40 + 30 * (i // fps) % 200, 40)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            f.time_base = Fraction(1, fps)
            for p in vs.encode(f):
                c.mux(p)
            while audio is not None and a_pos < min(len(audio), int(round((i + 1) / fps * audio_rate))):
                a_pos = mux_audio(a_pos)
        for p in vs.encode():
            c.mux(p)
        if aus is not None:
            while a_pos < len(audio):
                a_pos = mux_audio(a_pos)
            for p in aus.encode():
                c.mux(p)
    return path
