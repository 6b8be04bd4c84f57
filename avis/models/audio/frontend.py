"""The VGGish log-mel front end, batched in torch.

The recipe is VGGish's (``vggish_input.py`` / ``mel_features.py`` of the TF AudioSet release, reused unchanged
by torchvggish) and the RCF paper's appendix VIII:

- 16 kHz mono (other rates are resampled with :func:`torchaudio.functional.resample`);
- frames of 400 samples (25 ms) every 160 samples (10 ms), *no centre padding*: a signal of N samples gives
  ``1 + (N - 400) // 160`` frames, frame i covering samples ``[160 i, 160 i + 400)``;
- periodic Hann window, FFT length 512 (the frame zero-padded at its end), magnitude (not power) spectrum;
- VGGish's own 64-band mel matrix over 125-7500 Hz on the HTK scale ``1127 ln(1 + f / 700)``: triangles are
  linear in *mel* (not in Hz, as in librosa/torchaudio) and the DC bin row is zeroed;
- ``log(mel + 0.01)``.

One VGGish example is 96 frames x 64 bands (0.96 s of hops). A window of exactly ``EXAMPLE_SAMPLES`` = 15600
samples (0.975 s) gives exactly 96 frames. The paper's per-frame window is eta = 0.96 s = 15360 samples, which
gives 94 frames; the paper pads "so that the output has the same length as the input" (96 frames for 96 hops).
:meth:`LogMelFrontend.examples` does that padding causally: it zero-pads the window on the *left* to 15600
samples, so the last frame still ends at the window's end (the frame's time) and no later sound leaks in.
Longer windows keep their last 96 frames.
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
from torch import nn

from avis.models.audio.windows import SAMPLE_RATE

WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window, as VGGish computes it
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms hops
EXAMPLE_SAMPLES = WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * HOP_SAMPLES  # 15600: exactly 96 frames


def hertz_to_mel(hz):
    """HTK mel scale as VGGish writes it: 1127 ln(1 + f / 700) (same as librosa's 2595 log10(1 + f / 700))."""
    if isinstance(hz, torch.Tensor):
        return 1127.0 * torch.log1p(hz / 700.0)
    return 1127.0 * math.log1p(hz / 700.0)


def vggish_mel_matrix(num_mel_bins: int = NUM_MEL_BINS, num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
                      sample_rate: int = SAMPLE_RATE, lower_edge_hz: float = MEL_MIN_HZ,
                      upper_edge_hz: float = MEL_MAX_HZ) -> torch.Tensor:
    """VGGish's mel weight matrix, (num_spectrogram_bins, num_mel_bins), float64.

    Band edges are equally spaced in mel between the two edge frequencies; each band's weight on an FFT bin is
    the triangle ``max(0, min(rise, fall))`` evaluated on the bins' *mel* values; row 0 (DC) is zeroed.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_edge_hz < upper_edge_hz <= nyquist:
        raise ValueError(f"need 0 <= lower_edge_hz < upper_edge_hz <= {nyquist}, got {lower_edge_hz}, {upper_edge_hz}")
    bins_mel = hertz_to_mel(torch.linspace(0.0, nyquist, num_spectrogram_bins, dtype=torch.float64))
    edges = torch.linspace(hertz_to_mel(lower_edge_hz), hertz_to_mel(upper_edge_hz), num_mel_bins + 2,
                           dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rise = (bins_mel[:, None] - lower) / (center - lower)
    fall = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rise, fall), min=0.0)
    weights[0, :] = 0.0  # VGGish drops the DC bin explicitly
    return weights


def to_mono_16k(waveform: torch.Tensor, sample_rate: int, channel_dim: int | None = None) -> torch.Tensor:
    """Average channels (if ``channel_dim`` is given) and resample to 16 kHz (torchaudio's sinc resampler)."""
    if channel_dim is not None:
        waveform = waveform.mean(dim=channel_dim)
    if int(sample_rate) != SAMPLE_RATE:
        waveform = AF.resample(waveform, int(sample_rate), SAMPLE_RATE)
    return waveform


class LogMelFrontend(nn.Module):
    """waveform (..., N) at ``sample_rate`` -> VGGish log-mel (..., F, 64), F = 1 + (N16k - 400) // 160.

    Parameter-free; the window and the mel matrix are buffers (so ``.to(device)`` moves them). Computation is
    float32 (inputs of other dtypes are cast). Gradients flow to the waveform.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(WINDOW_SAMPLES, periodic=True), persistent=False)
        self.register_buffer("mel_matrix", vggish_mel_matrix().to(torch.float32), persistent=False)

    @staticmethod
    def num_frames(num_samples: int) -> int:
        return max(0, 1 + (num_samples - WINDOW_SAMPLES) // HOP_SAMPLES)

    def forward(self, waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        x = to_mono_16k(waveform.to(torch.float32), sample_rate)
        batch_shape, n = x.shape[:-1], x.shape[-1]
        if n < WINDOW_SAMPLES:
            raise ValueError(f"need at least {WINDOW_SAMPLES} samples at 16 kHz, got {n}")
        x = x.reshape(-1, n)
        # torch.stft frames n_fft samples and centres the shorter window inside them, so padding (512-400)/2
        # on each side puts window i exactly on samples [160 i, 160 i + 400): VGGish's frames. The extra zeros
        # only shift the FFT input circularly, which leaves the magnitude unchanged.
        side = (FFT_LENGTH - WINDOW_SAMPLES) // 2
        x = nn.functional.pad(x, (side, side))
        spec = torch.stft(x, n_fft=FFT_LENGTH, hop_length=HOP_SAMPLES, win_length=WINDOW_SAMPLES,
                          window=self.window, center=False, return_complex=True).abs()  # (B, 257, F)
        mel = torch.matmul(spec.transpose(-1, -2), self.mel_matrix)  # (B, F, 64)
        out = torch.log(mel + LOG_OFFSET)
        return out.reshape(*batch_shape, out.shape[-2], NUM_MEL_BINS)

    def examples(self, windows: torch.Tensor) -> torch.Tensor:
        """Per-frame windows (..., S) at 16 kHz -> one VGGish example each, (..., 96, 64).

        Windows shorter than 15600 samples are zero-padded on the left (see the module docstring); longer
        ones keep their last 96 frames (the ones that end at the window's end).
        """
        s = windows.shape[-1]
        if s < EXAMPLE_SAMPLES:
            windows = nn.functional.pad(windows, (EXAMPLE_SAMPLES - s, 0))
        elif s > EXAMPLE_SAMPLES:
            # Keep whole hops from the end so that frame boundaries stay aligned to the window's end.
            windows = windows[..., s - EXAMPLE_SAMPLES:]
        return self(windows)
