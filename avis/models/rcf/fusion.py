"""Robust context fusion (Section III-B1): target, reference and audio tokens fused by a transformer encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avis.models.rcf.position import PositionCache, valid_position_encoding
from avis.models.rcf.transformer import EncoderLayer


class TargetTokens(nn.Module):
    """O_tgt = P(phi_{C->C'}(f_t)): 1x1 conv, spatial size kept.

    forward(f: B x C x H x W) -> B x C' x H x W (flattening and positions are done by the fusion module).
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.proj(f)


class ReferenceTokens(nn.Module):
    """O_ref = P(phi_{dC->C'}(pool_{HxW->KxK}(W * f_ref))), W = sigmoid(phi_{dC->1}(f_ref)).

    forward(f_ref: B x delta*C x H x W, reference features concatenated on channels, oldest first;
    valid_hw: int64 B x 2 or None, the top-left rows x cols that hold the image) -> tokens B x C' x K x K
    (pooled over each image's valid region), weight map W: B x 1 x H x W.
    """

    def __init__(self, in_channels: int, delta: int, dim: int, pool_size: int = 2):
        super().__init__()
        self.weight = nn.Conv2d(delta * in_channels, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.proj = nn.Conv2d(delta * in_channels, dim, 1)

    def forward(self, f_ref: torch.Tensor, valid_hw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.sigmoid(self.weight(f_ref))
        x = w * f_ref
        if valid_hw is None:
            pooled = self.pool(x)
        else:  # padding must not enter the K x K bins: pool each image over its own region
            pooled = torch.cat([self.pool(x[i:i + 1, :, :hv, :wv]) for i, (hv, wv) in enumerate(valid_hw.tolist())])
        return self.proj(pooled), w


class AudioTokens(nn.Module):
    """O_aud: the injected audio encoder (B x T x S -> B x T x C_a), projected to C' when C_a != C'.

    A learned embedding per time step (reference windows first, target last) plays the role of P. When the
    encoder splits into ``frame_features`` (per window, (..., S) -> (..., C_a)) and ``tokens`` (B x T x C_a
    -> B x T x C'), as :class:`avis.models.audio.AudioTokenEncoder` does, online inference caches each
    frame's features like the visual ones, and training can take precomputed features.
    """

    def __init__(self, encoder: nn.Module, steps: int, dim: int):
        super().__init__()
        self.encoder = encoder
        c_a = int(getattr(encoder, "out_channels", dim))
        self.proj = nn.Identity() if c_a == dim else nn.Linear(c_a, dim)
        self.time_embed = nn.Parameter(torch.zeros(steps, dim))
        nn.init.normal_(self.time_embed, std=0.02)
        self.splits = hasattr(encoder, "frame_features") and hasattr(encoder, "tokens")

    def frame_features(self, windows: torch.Tensor) -> torch.Tensor:
        """(..., S) -> what :meth:`from_features` takes: the encoder's per-frame features, or the windows."""
        return self.encoder.frame_features(windows) if self.splits else windows

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """B x T x (C_a or S, see :meth:`frame_features`) -> tokens B x T x C'."""
        return self.proj(self.encoder.tokens(features) if self.splits else self.encoder(features))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio: windows B x T x S -> tokens B x T x C' (what :class:`RobustContextFusion` takes)."""
        return self.proj(self.encoder(audio))

    def encode(self, audio: torch.Tensor | None = None, features: torch.Tensor | None = None):
        """Windows B x T x S (or precomputed ``features``, see :meth:`from_features`) -> ``(tokens, raw)``:
        the tokens the fusion takes and the encoder's own output before the projection (what its auxiliary
        tagging head reads)."""
        if features is not None:
            raw = self.encoder.tokens(features) if self.splits else self.encoder(features)
        else:
            raw = self.encoder(audio)
        return self.proj(raw), raw


@dataclass
class Fused:
    """Encoder output. ``memory``/``pos``: B x L x C' with L = H*W + K*K + T (target, reference, audio)."""

    memory: torch.Tensor
    pos: torch.Tensor
    padding_mask: torch.Tensor | None
    target: torch.Tensor  # O'_tgt reshaped, B x C' x H x W


class RobustContextFusion(nn.Module):
    """Tokens of the target frame, the delta reference frames and (optionally) the audio, fused by a
    transformer encoder of ``num_layers`` layers with ``nhead`` heads.

    ``keep_attention = True`` makes the last layer store its attention weights; :meth:`attention_maps` then
    returns them split by token type (for visualisation, Fig. 4 of the paper).
    """

    def __init__(self, in_channels: int, dim: int = 256, delta: int = 1, pool_size: int = 2,
                 num_layers: int = 3, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 audio_encoder: nn.Module | None = None):
        super().__init__()
        self.delta = delta
        self.dim = dim
        self.target_tokens = TargetTokens(in_channels, dim)
        self.reference_tokens = ReferenceTokens(in_channels, delta, dim, pool_size) if delta > 0 else None
        # Reference tokens live on their own K x K grid; a learned type embedding tells them from the target.
        self.ref_type = nn.Parameter(torch.zeros(dim)) if delta > 0 else None
        self.audio_tokens = AudioTokens(audio_encoder, 1 + delta, dim) if audio_encoder is not None else None
        self.layers = nn.ModuleList([EncoderLayer(dim, nhead, dim_feedforward, dropout)
                                     for _ in range(num_layers)])
        self.positions = PositionCache()
        self._layout: tuple[int, int, int, int] | None = None
        self.last_weight_map: torch.Tensor | None = None

    @property
    def keep_attention(self) -> bool:
        return self.layers[-1].keep_attention

    @keep_attention.setter
    def keep_attention(self, value: bool) -> None:
        self.layers[-1].keep_attention = bool(value)

    def forward(self, f_t: torch.Tensor, f_ref: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                audio_valid: torch.Tensor | None = None, valid_hw: torch.Tensor | None = None) -> Fused:
        """f_t: B x C x H x W; f_ref: B x delta*C x H x W (None iff delta = 0); audio: the audio tokens
        B x (1+delta) x C' made by :attr:`audio_tokens` (from windows or per-frame features), or None: then
        the audio tokens, if the model has them, are masked out; audio_valid: bool B (one flag per clip) or
        B x (1+delta) (per token), False where there is no sound; None: all valid. valid_hw: int64 B x 2, the
        top-left rows x cols of the H x W grid that hold the image when the batch was padded (None: all):
        target tokens over the padding are masked out of every attention, the sine encoding spans the valid
        region, the reference tokens pool over it, and O'_tgt is zero over the padding."""
        b, _, h, w = f_t.shape
        tgt = self.target_tokens(f_t)
        dtype, device = tgt.dtype, tgt.device
        tokens = [tgt.flatten(2).transpose(1, 2)]
        padded = valid_hw is not None and bool((valid_hw < valid_hw.new_tensor([h, w])).any())
        if padded:
            rows = torch.arange(h, device=device)[None, :, None] >= valid_hw[:, 0, None, None].to(device)
            cols = torch.arange(w, device=device)[None, None, :] >= valid_hw[:, 1, None, None].to(device)
            tgt_pad = (rows | cols).flatten(1)  # B x h*w, True = padding
            pos = [valid_position_encoding(h, w, self.dim, valid_hw.to(device), dtype)]
            masks = [tgt_pad]
        else:
            pos = [self.positions(h, w, self.dim, device, dtype).expand(b, -1, -1)]
            masks = [torch.zeros(b, h * w, dtype=torch.bool, device=device)]
        need_mask = padded
        n_ref = n_aud = 0
        if self.reference_tokens is not None:
            ref, wmap = self.reference_tokens(f_ref, valid_hw if padded else None)
            k = ref.shape[-1]
            n_ref = k * k
            tokens.append(ref.flatten(2).transpose(1, 2))
            pos.append((self.positions(k, k, self.dim, device, dtype) + self.ref_type).expand(b, -1, -1))
            masks.append(torch.zeros(b, n_ref, dtype=torch.bool, device=device))
            self.last_weight_map = wmap.detach() if self.keep_attention else None
        if self.audio_tokens is not None:
            n_aud = 1 + self.delta
            valid = None  # None: every clip has audio, no padding mask needed
            if audio is None:
                aud = torch.zeros(b, n_aud, self.dim, dtype=dtype, device=device)
                valid = torch.zeros(b, dtype=torch.bool, device=device)
            else:
                aud = audio.to(dtype)
                valid = None if audio_valid is None else audio_valid.to(device)
            tokens.append(aud)
            pos.append(self.audio_tokens.time_embed.to(dtype).expand(b, -1, -1))
            if valid is not None:
                masks.append((~valid)[:, None].expand(b, n_aud) if valid.dim() == 1 else ~valid)
                need_mask = True
            else:
                masks.append(torch.zeros(b, n_aud, dtype=torch.bool, device=device))
        x = torch.cat(tokens, 1)
        p = torch.cat(pos, 1)
        # Without padding and with all audio present (or none in the model) no mask is needed, which also
        # keeps attention on its unmasked (faster) kernels.
        pad = torch.cat(masks, 1) if need_mask else None
        for layer in self.layers:
            x = layer(x, p, pad)
        self._layout = (h, w, n_ref, n_aud)
        target = x[:, : h * w].transpose(1, 2).reshape(b, self.dim, h, w)
        if padded:  # as the zero padding the mask decoder's convolutions see at inference
            target = target.masked_fill(tgt_pad.view(b, 1, h, w), 0)
        return Fused(x, p, pad, target)

    def attention_maps(self) -> dict[str, torch.Tensor | None]:
        """Last encoder layer's head-averaged attention of the last forward (needs ``keep_attention``).

        Returns ``ref_to_target`` (B x K*K x H x W: each reference token's attention over the target grid),
        ``target_to_ref`` (B x K*K x H x W: each target position's attention to each reference token),
        ``audio_to_target`` / ``target_to_audio`` (B x (1+delta) x H x W, audio tokens likewise),
        ``weight_map`` (B x 1 x H x W, the learned reference pixel weights W), and ``full`` (B x L x L);
        entries are None where the model has no such tokens.
        """
        att = self.layers[-1].attention
        if att is None or self._layout is None:
            raise RuntimeError("set keep_attention = True and run a forward pass first")
        h, w, n_ref, n_aud = self._layout
        hw = h * w
        b = att.shape[0]

        def block(lo: int, n: int):
            if n == 0:
                return None, None
            to_t = att[:, lo:lo + n, :hw].reshape(b, n, h, w)
            from_t = att[:, :hw, lo:lo + n].transpose(1, 2).reshape(b, n, h, w)
            return to_t, from_t

        r2t, t2r = block(hw, n_ref)
        a2t, t2a = block(hw + n_ref, n_aud)
        return {"ref_to_target": r2t, "target_to_ref": t2r, "audio_to_target": a2t, "target_to_audio": t2a,
                "weight_map": self.last_weight_map, "full": att}

