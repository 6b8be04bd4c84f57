"""Precomputed per-frame audio features, for training with a frozen audio backbone.

With a frozen VGGish, a_t depends only on the video's sound and the frame's time, so it can be computed once
at build time and stored next to the frames (T x 4096 float16 = 8 KiB per frame); training then calls
``encoder(features=a)`` and never runs VGGish. The windows are exactly those of the online path
(:func:`frame_windows`, eta seconds ending at each frame's time, zero-padded before t = 0), so stored and
on-the-fly features agree up to float16 rounding.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from avis.models.audio.frontend import to_mono_16k
from avis.models.audio.tokens import AudioFeatureExtractor
from avis.models.audio.vggish import vggish
from avis.models.audio.windows import DEFAULT_ETA, SAMPLE_RATE, frame_windows


def vggish_feature_extractor(weights: str | os.PathLike | None = None) -> AudioFeatureExtractor:
    """A frozen VGGish extractor (C_a = 4096), the one :func:`precompute_audio_features` uses by default."""
    return AudioFeatureExtractor(vggish(weights), trainable=False)


@torch.no_grad()
def precompute_audio_features(waveform, sample_rate: int, frame_times, extractor: AudioFeatureExtractor | None
                              = None, *, weights: str | os.PathLike | None = None, eta: float = DEFAULT_ETA,
                              batch_size: int = 32, device: str | torch.device | None = None) -> torch.Tensor:
    """One video's sound + its frame times -> per-frame features, float16 T x C_a (on the CPU).

    waveform: (N,) mono or (C, N) channels-first samples (tensor or array) at ``sample_rate`` (resampled to
    16 kHz once for the whole video); frame_times: (T,) seconds. ``extractor`` defaults to a frozen VGGish
    loaded from ``weights`` (random with a warning when None). ``batch_size`` windows go through the
    backbone at a time, so memory does not grow with the video's length.
    """
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if not torch.is_tensor(waveform) else waveform)
    x = x.to(torch.float32)
    if x.dim() == 2:
        x = x.mean(dim=0)
    elif x.dim() != 1:
        raise ValueError(f"expected a (N,) or (C, N) waveform, got shape {tuple(x.shape)}")
    if extractor is None:
        extractor = vggish_feature_extractor(weights)
    if device is not None:
        extractor = extractor.to(device)
    was_training = extractor.training
    extractor.eval()
    try:
        dev = next(extractor.parameters()).device
        x = to_mono_16k(x.to(dev), sample_rate)
        times = torch.as_tensor(frame_times, dtype=torch.float64).reshape(-1)
        out = []
        for chunk in times.split(batch_size):
            windows = frame_windows(x, chunk, sample_rate=SAMPLE_RATE, eta=eta)  # (t, S)
            feats = extractor(windows)
            # float16 saturates at 65504; clamp rather than store inf for an out-of-range activation
            out.append(feats.clamp(-65504.0, 65504.0).to(torch.float16).cpu())
        return torch.cat(out) if out else torch.zeros(0, extractor.feature_dim, dtype=torch.float16)
    finally:
        extractor.train(was_training)
