"""Audio branch: per-frame audio windows, log-mel front end, VGGish, bi-LSTM audio tokens."""

from avis.models.audio.windows import SAMPLE_RATE, frame_windows

__all__ = ["SAMPLE_RATE", "frame_windows"]
