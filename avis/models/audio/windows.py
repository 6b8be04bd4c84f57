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
    """Cut the windows of all frames of a clip in one gather.

    waveform: (..., N) mono samples; frame_times: (T,) seconds -> (..., T, S) with S = round(eta * sr).
    """
    s = window_length(eta, sample_rate)
    times = torch.as_tensor(frame_times, dtype=torch.float64)
    ends = torch.round(times * sample_rate).to(torch.long)  # exclusive end sample of each window
    n = waveform.shape[-1]
    # Pad once on both sides so that every index below is valid, then gather (T, S) indices.
    pad_left = max(0, s - int(ends.min()) if ends.numel() else 0)
    pad_right = max(0, int(ends.max()) - n if ends.numel() else 0)
    padded = torch.nn.functional.pad(waveform, (pad_left, pad_right))
    idx = (ends[:, None] - s + pad_left) + torch.arange(s)[None, :]  # (T, S)
    idx = idx.to(waveform.device)
    return padded[..., idx]
