"""Audio branch: per-frame audio windows, log-mel front end, VGGish, bi-LSTM audio tokens."""

from avis.models.audio.frontend import LogMelFrontend, to_mono_16k, vggish_mel_matrix
from avis.models.audio.precompute import precompute_audio_features, vggish_feature_extractor
from avis.models.audio.tokens import (
    AudioFeatureExtractor,
    AudioTokenEncoder,
    TinyAudioNet,
    audio_tokens_tiny,
    audio_tokens_vggish,
    pretrained_audio_tokens,
)
from avis.models.audio.vggish import VGGish, load_vggish_state_dict, vggish
from avis.models.audio.windows import SAMPLE_RATE, frame_windows

__all__ = [
    "SAMPLE_RATE",
    "AudioFeatureExtractor",
    "AudioTokenEncoder",
    "LogMelFrontend",
    "TinyAudioNet",
    "VGGish",
    "audio_tokens_tiny",
    "audio_tokens_vggish",
    "frame_windows",
    "load_vggish_state_dict",
    "precompute_audio_features",
    "pretrained_audio_tokens",
    "to_mono_16k",
    "vggish",
    "vggish_feature_extractor",
    "vggish_mel_matrix",
]
