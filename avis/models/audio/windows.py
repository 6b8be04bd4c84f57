"""Per-frame audio windows: for a frame shown at time t, the eta seconds of sound that end at t.

Time is the key of synchronisation (DESIGN.md): sample 0 of a video's audio is time 0 of its frame timeline,
so the window of frame t is samples ``[round(t*sr) - S, round(t*sr))`` with ``S = round(eta*sr)``, zero-padded
where it reaches before the start (or past the end) of the audio.
"""

from __future__ import annotations

import torch

SAMPLE_RATE = 16_000
DEFAULT_ETA = 0.96  # one VGGish example


def window_length(eta: float = DEFAULT_ETA, sample_rate: int = SAMPLE_RATE) -> int:
    return int(round(eta * sample_rate))


def frame_windows(waveform: torch.Tensor, frame_times, sample_rate: int = SAMPLE_RATE,
                  eta: float = DEFAULT_ETA) -> torch.Tensor:
    """Cut the windows of all frames of a clip at once.

    waveform: (..., N) mono samples; frame_times: (T,) seconds -> (..., T, S) with S = round(eta * sr).
    """
    s = window_length(eta, sample_rate)
    times = torch.as_tensor(frame_times, dtype=torch.float64)
    ends = torch.round(times * sample_rate).to(torch.long)  # exclusive end sample of each window
    n = waveform.shape[-1]
    if not ends.numel():
        return waveform.new_zeros(*waveform.shape[:-1], 0, s)
    # Only the span the windows cover, [lo, hi), padded where it reaches outside the audio; the windows are
    # views of it (unfold), copied once: the cost follows the clip, not the length of the video's sound.
    lo, hi = int(ends.min()) - s, int(ends.max())
    a, b = min(max(lo, 0), n), min(max(hi, 0), n)
    b = max(a, b)
    pad_left = a - lo
    if b > a:
        span = torch.nn.functional.pad(waveform[..., a:b], (pad_left, hi - lo - pad_left - (b - a)))
    else:  # every window outside the audio (pad cannot grow an empty tensor)
        span = waveform.new_zeros(*waveform.shape[:-1], hi - lo)
    return span.unfold(-1, s, 1)[..., (ends - s - lo).to(waveform.device), :]
