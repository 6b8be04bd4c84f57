"""Audio tokens for RCF (paper Section III-C): per-frame audio features -> bi-LSTM -> two FC -> C' channels.

For a target frame t with delta reference frames, the data pipeline gives the per-frame windows of the
1 + delta frames (``frame_windows``: eta seconds ending at each frame's time, 16 kHz mono)::

    audio  B x T x S  --front end + backbone, per window-->  a  B x T x C_a  (VGGish: C_a = 4096)
           --2-layer bidirectional LSTM over T (hidden 512)-->  B x T x 1024
           --fc 1024->512, ReLU, fc 512->C'-->  O_aud  B x T x C'   (T = 1 + delta tokens)

Two presets share this interface: :func:`audio_tokens_vggish` (the paper's) and :func:`audio_tokens_tiny`
(a small conv net on the same log-mel and a small LSTM, for CPU tests and the demo). Both are
hydra-instantiable (``_target_: avis.models.audio.audio_tokens_vggish``).

Online use: :meth:`AudioTokenEncoder.frame_features` computes a_t once per frame (cache it like the visual
features), :meth:`AudioTokenEncoder.tokens` turns the cached a_{t-delta..t} into tokens. Training with a
frozen VGGish can skip the backbone with precomputed features: ``encoder(features=a)`` (see
:mod:`avis.models.audio.precompute`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from avis.models.audio.frontend import LogMelFrontend
from avis.models.audio.vggish import vggish


class TinyAudioNet(nn.Module):
    """Small CPU backbone on VGGish log-mel examples: N x 96 x 64 -> N x ``feature_dim``."""

    def __init__(self, feature_dim: int = 128, width: int = 16):
        super().__init__()
        self.feature_dim = feature_dim
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
        )
        self.fc = nn.Sequential(nn.Linear(4 * width, feature_dim), nn.ReLU(inplace=True))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[:, None]
        return self.fc(self.features(x))


class AudioFeatureExtractor(nn.Module):
    """Per-frame audio features: windows (..., S) at 16 kHz -> (..., C_a).

    ``backbone`` maps log-mel examples N x 96 x 64 to N x ``feature_dim`` (``forward_features``).
    ``trainable=False`` freezes it: no gradients, always in eval mode, run under ``torch.no_grad``.
    """

    def __init__(self, backbone: nn.Module, trainable: bool = False, chunk_size: int = 256):
        super().__init__()
        self.frontend = LogMelFrontend()
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)
        self.trainable = trainable
        self.chunk_size = chunk_size  # windows per backbone call, bounds activation memory
        if not trainable:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()
        return self

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        lead, s = windows.shape[:-1], windows.shape[-1]
        flat = windows.reshape(-1, s)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = [self.backbone.forward_features(self.frontend.examples(chunk))
                   for chunk in flat.split(self.chunk_size)]
        feats = torch.cat(out) if out else flat.new_zeros(0, self.feature_dim)
        return feats.reshape(*lead, self.feature_dim)


class AudioTokenEncoder(nn.Module):
    """audio B x T x S (per-frame windows, 16 kHz) -> tokens B x T x ``out_channels``.

    ``forward(features=a)`` takes precomputed per-frame features a (B x T x C_a, any float dtype) instead.
    """

    def __init__(self, extractor: AudioFeatureExtractor, out_channels: int = 256, lstm_hidden: int = 512,
                 lstm_layers: int = 2, fc_hidden: int = 512, tagger: nn.Module | None = None):
        super().__init__()
        self.extractor = extractor
        self.feature_dim = extractor.feature_dim
        self.out_channels = out_channels
        self.lstm = nn.LSTM(self.feature_dim, lstm_hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=True)
        # Last layer without ReLU: tokens enter the fusion transformer next to unconstrained visual tokens.
        self.head = nn.Sequential(nn.Linear(2 * lstm_hidden, fc_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(fc_hidden, out_channels))
        # The auxiliary audio-tagging head (audio.supervision; :mod:`avis.models.audio.supervision`): trained
        # with the RCF, unused at inference. Registered last so that the other parameters keep their order.
        self.tagger = tagger

    def frame_features(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., S) windows -> (..., C_a) features a_t."""
        return self.extractor(audio)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """B x T x C_a -> B x T x C'."""
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"expected features B x T x {self.feature_dim}, got {tuple(features.shape)}")
        weight = self.lstm.weight_ih_l0
        h, _ = self.lstm(features.to(weight.dtype))
        return self.head(h)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(..., C_a) features -> (..., 2 * 4 * hidden) first-layer LSTM gate inputs of both directions.

        The input projection is the only part of the LSTM that sees the C_a = 4096 wide features and it is
        per frame, so online inference caches it per frame and runs only the recurrence
        (:meth:`tokens_from_projected`) over the 1 + delta cached frames (see docs/benchmarks.md).
        """
        lstm = self.lstm
        x = features.to(lstm.weight_ih_l0.dtype)
        # Two products rather than one on concatenated weights: concatenating would copy 32 MB per call.
        return torch.cat([torch.nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0),
                          torch.nn.functional.linear(x, lstm.weight_ih_l0_reverse,
                                                     lstm.bias_ih_l0_reverse + lstm.bias_hh_l0_reverse)], -1)

    def tokens_from_projected(self, pre: torch.Tensor) -> torch.Tensor:
        """B x T x (8 * hidden) from :meth:`project` -> tokens B x T x C', equal to :meth:`tokens`."""
        lstm = self.lstm
        hidden = lstm.hidden_size
        x = None
        for layer in range(lstm.num_layers):
            outs = []
            for d, suffix in enumerate(("", "_reverse")):
                name = f"l{layer}{suffix}"
                if layer == 0:
                    gates_in = pre[..., d * 4 * hidden:(d + 1) * 4 * hidden]
                else:
                    gates_in = torch.nn.functional.linear(
                        x, getattr(lstm, f"weight_ih_{name}"),
                        getattr(lstm, f"bias_ih_{name}") + getattr(lstm, f"bias_hh_{name}"))
                outs.append(_lstm_direction(gates_in, getattr(lstm, f"weight_hh_{name}"), reverse=d == 1))
            x = torch.cat(outs, -1)
        return self.head(x)

    def forward(self, audio: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        if (audio is None) == (features is None):
            raise ValueError("give exactly one of audio (B x T x S) or features (B x T x C_a)")
        if features is None:
            if audio.dim() != 3:
                raise ValueError(f"expected audio B x T x S, got {tuple(audio.shape)}")
            features = self.frame_features(audio)
        return self.tokens(features)


def _lstm_direction(gates_in: torch.Tensor, w_hh: torch.Tensor, reverse: bool) -> torch.Tensor:
    """One LSTM direction from precomputed input gates B x T x 4H (PyTorch's gate order i, f, g, o, biases
    included) -> hidden states B x T x H. T is 1 + delta <= 6 here, so a Python loop over time is cheap."""
    b, t, four_h = gates_in.shape
    h = gates_in.new_zeros(b, four_h // 4)
    c = torch.zeros_like(h)
    out = [None] * t
    for i in (range(t - 1, -1, -1) if reverse else range(t)):
        ig, fg, gg, og = (gates_in[:, i] + h @ w_hh.T).chunk(4, -1)
        c = torch.sigmoid(fg) * c + torch.sigmoid(ig) * torch.tanh(gg)
        h = torch.sigmoid(og) * torch.tanh(c)
        out[i] = h
    return torch.stack(out, 1)


def _tagger(out_channels: int, num_classes: int, supervision) -> nn.Module | None:
    from avis.models.audio.supervision import AudioTagger, supervision_settings

    settings = supervision_settings(supervision)
    return None if settings is None else AudioTagger(out_channels, int(num_classes), **settings)


def audio_tokens_vggish(out_channels: int = 256, weights: str | os.PathLike | None = None, freeze: bool = True,
                        lstm_hidden: int = 512, lstm_layers: int = 2, fc_hidden: int = 512,
                        chunk_size: int = 64, num_classes: int = 0, supervision=None) -> AudioTokenEncoder:
    """The paper's audio branch: VGGish (C_a = 4096; official weights from a local torchvggish file, else
    random init with a warning), 2-layer bi-LSTM with hidden 512, fc 1024->512->C'. ``supervision``
    (``audio.supervision``: ``{enabled, weight, sounding_weight}``) with ``num_classes`` adds the auxiliary
    audio-tagging head (:class:`avis.models.audio.supervision.AudioTagger`)."""
    extractor = AudioFeatureExtractor(vggish(weights), trainable=not freeze, chunk_size=chunk_size)
    enc = AudioTokenEncoder(extractor, out_channels, lstm_hidden, lstm_layers, fc_hidden)
    enc.tagger = _tagger(out_channels, num_classes, supervision)  # after the rest: their initial weights unchanged
    return enc


def audio_tokens_tiny(out_channels: int = 64, feature_dim: int = 64, width: int = 8, lstm_hidden: int = 32,
                      lstm_layers: int = 2, fc_hidden: int = 64, freeze: bool = False, num_classes: int = 0,
                      supervision=None) -> AudioTokenEncoder:
    """CPU preset with the same interface: small conv net on the VGGish log-mel, small bi-LSTM
    (``num_classes`` / ``supervision``: as :func:`audio_tokens_vggish`)."""
    extractor = AudioFeatureExtractor(TinyAudioNet(feature_dim, width), trainable=not freeze)
    enc = AudioTokenEncoder(extractor, out_channels, lstm_hidden, lstm_layers, fc_hidden)
    enc.tagger = _tagger(out_channels, num_classes, supervision)  # after the rest: their initial weights unchanged
    return enc


def pretrained_audio_tokens(weights: str | os.PathLike | None = None, freeze: bool = True, **kwargs):
    """:func:`audio_tokens_tiny` with a saved state dict of the whole encoder (``weights``; read with
    ``weights_only``), its log-mel network frozen by default. Older ``avis demo`` runs name this builder (as
    ``avis.demo.pretrained_audio_tokens``); the engine's pretraining stage (``audio.pretrain``) replaces it."""
    enc = audio_tokens_tiny(freeze=freeze, **kwargs)
    if weights:
        from avis.io.files import regular_file

        enc.load_state_dict(torch.load(regular_file(weights), map_location="cpu", weights_only=True))
    return enc
