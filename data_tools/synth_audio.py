"""Sound for the synthetic dataset: one acoustic signature per category, loudness envelopes, the mix.

A source's signal is its category's signature (:data:`SIGNATURES`, normalised to unit RMS) with a per-instance
pitch/rate jitter and random phase, times an envelope: ``on(t) * sqrt(area(t) / ref_area)`` where ``on`` is
the source's activity (on/off stretches, 10 ms ramps) and ``area`` its unoccluded on-screen area, linearly
interpolated between frame times. Sample 0 of the track is time 0 of the frame timeline (frame i at i / fps).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SOURCE_GAIN = 0.08  # amplitude of a unit-RMS signature for an object of the reference area
MAX_LOUDNESS = 2.0  # cap of sqrt(area / ref_area)
RAMP_S = 0.010
PITCH_JITTER = 0.04  # per-instance pitch/rate factor in [1 - j, 1 + j]: categories are not single sounds


def _phase(freq: np.ndarray | float, t: np.ndarray, sr: int, phi: float) -> np.ndarray:
    if np.isscalar(freq):
        return 2 * np.pi * freq * t + phi
    return 2 * np.pi * np.cumsum(freq) / sr + phi


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    edge = 0.1 * (hi - lo)  # soft edges
    gain = np.clip((f - lo) / edge + 0.5, 0, 1) * np.clip((hi - f) / edge + 0.5, 0, 1)
    return np.fft.irfft(spec * gain, n)


def _bell(t, sr, p, rng):
    period = 0.45 / p
    tt = (t + rng.uniform(0, period)) % period
    partials = sum(a * np.sin(2 * np.pi * 520 * p * r * t + rng.uniform(0, 2 * np.pi))
                   for r, a in ((1.0, 1.0), (2.76, 0.5), (5.4, 0.3)))
    return partials * np.exp(-tt / 0.15)


def _siren(t, sr, p, rng):
    f = 750 * p + 150 * p * np.sin(2 * np.pi * 3 * p * t + rng.uniform(0, 2 * np.pi))
    return np.sin(_phase(f, t, sr, rng.uniform(0, 2 * np.pi)))


def _engine(t, sr, p, rng):
    f0 = 110 * p
    stack = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 11))
    return stack * (1 + 0.5 * np.sin(2 * np.pi * 25 * p * t + rng.uniform(0, 2 * np.pi)))


def _fan(t, sr, p, rng):
    return _band_noise(rng, len(t), sr, 1500 * p, 3000 * p)


def _bird(t, sr, p, rng):
    period, dur = 1 / (6 * p), 0.08
    tt = (t + rng.uniform(0, period)) % period
    f0, sweep = 2000 * p, 1500 * p
    inside = tt < dur
    ph = 2 * np.pi * (f0 * tt + sweep * tt * tt / (2 * dur))
    return np.where(inside, np.sin(ph) * np.sin(np.pi * np.clip(tt / dur, 0, 1)) ** 2, 0.0)


def _cricket(t, sr, p, rng):
    gate = np.clip(3 * np.sin(2 * np.pi * 14 * p * t + rng.uniform(0, 2 * np.pi)), -1, 1) * 0.5 + 0.5
    return gate * np.sin(2 * np.pi * 4000 * p * t + rng.uniform(0, 2 * np.pi))


def _drum(t, sr, p, rng):
    period = 1 / (3.5 * p)
    tt = (t + rng.uniform(0, period)) % period
    f_lo, tau = 60 * p, 0.03
    ph = 2 * np.pi * (f_lo * tt + f_lo * tau * (1 - np.exp(-tt / tau)))  # 120 -> 60 Hz drop
    click = rng.standard_normal(len(t)) * np.exp(-tt / 0.01) * 0.5
    return np.sin(ph) * np.exp(-tt / 0.08) + click


def _horn(t, sr, p, rng):
    f0 = 330 * p
    return sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 13, 2) if k * f0 < 4000)


SIGNATURES: dict[str, Callable] = {
    "bell": _bell, "siren": _siren, "engine": _engine, "fan": _fan,
    "bird": _bird, "cricket": _cricket, "drum": _drum, "horn": _horn,
}


def signature(name: str, num_samples: int, sample_rate: int, rng: np.random.Generator,
              pitch: float = 1.0) -> np.ndarray:
    """``num_samples`` of signature ``name`` at unit RMS (float64). ``pitch`` scales its frequencies and rates."""
    t = np.arange(num_samples) / sample_rate
    x = np.asarray(SIGNATURES[name](t, sample_rate, pitch, rng), dtype=np.float64)
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-12)


def activity(intervals: list[tuple[float, float]], num_samples: int, sample_rate: int) -> np.ndarray:
    """0/1 gate of the ``(start_s, end_s)`` intervals with ``RAMP_S`` raised-cosine ramps."""
    gate = np.zeros(num_samples)
    for a, b in intervals:
        gate[max(0, round(a * sample_rate)):max(0, round(b * sample_rate))] = 1.0
    k = max(1, round(RAMP_S * sample_rate))
    win = np.hanning(k + 2)[1:-1]
    return np.convolve(gate, win / win.sum(), mode="same")


def loudness(onscreen: np.ndarray, frame_times: np.ndarray, ref_area: float, num_samples: int,
             sample_rate: int) -> np.ndarray:
    """sqrt(area / ref_area) per sample (capped), from per-frame on-screen pixel counts."""
    per_frame = np.minimum(np.sqrt(np.asarray(onscreen, dtype=np.float64) / ref_area), MAX_LOUDNESS)
    return np.interp(np.arange(num_samples) / sample_rate, frame_times, per_frame)


def background_noise(rng: np.random.Generator, num_samples: int, level: float) -> np.ndarray:
    """Pink-ish (1/f power) noise at RMS ``level``."""
    spec = np.fft.rfft(rng.standard_normal(num_samples))
    f = np.arange(len(spec), dtype=np.float64)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, num_samples)
    return x * level / max(float(np.sqrt(np.mean(x * x))), 1e-12)


def limit(x: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale the whole track down if it would clip (a per-video gain, never a per-sample distortion)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / m) if m > peak else x
