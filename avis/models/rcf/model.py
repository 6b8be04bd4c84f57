"""The RCF method: backbone -> robust context fusion -> mask decoder + instance decoder -> slot outputs.

Shapes (B clips, T = 1 + delta frames, target last; backbone levels fine to coarse, last at h x w)::

    frames  uint8 B x T x 3 x H x W  --normalise, backbone-->  f: (B*T) x C x h x w (+ finer levels)
    f_t = f[:, -1]; f_ref = f[:, :-1] concatenated on channels (oldest first): B x delta*C x h x w
    fusion(f_t, f_ref, audio B x T x S)  -> O': B x (h*w + K*K [+ T]) x C', O'_tgt: B x C' x h x w
    mask decoder(O'_tgt, finer levels)   -> S_t: B x C_o x H/4 x W/4
    instance decoder(O')                  -> e_t: layers x B x N x C'
    heads(e_t, S_t)                       -> logits layers x B x N x (K+1), masks layers x B x N x H/4 x W/4
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from avis.models.base import Track, VISMethod
from avis.models.rcf.criterion import SetCriterion
from avis.models.rcf.decoder import InstanceHeads, MaskDecoder
from avis.models.rcf.fusion import RobustContextFusion
from avis.models.rcf.transformer import InstanceDecoder
from avis.tracking import SlotTracker

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class RCFState:
    """Online state of one video: the cache of the last delta frames' features (and audio windows), and
    every processed frame's slot outputs, kept on the device until :meth:`RCF.finish`."""

    features: deque
    audio: deque
    size: tuple[int, int] | None = None
    silence: torch.Tensor | None = None  # cached audio entry of a missing window (fast path)
    probs: list[torch.Tensor] = field(default_factory=list)  # per frame N x (K+1)
    masks: list[torch.Tensor] = field(default_factory=list)  # per frame N x H/4 x W/4 mask logits


class RCF(VISMethod):
    """Robust context fusion network for online (audio-)visual instance segmentation.

    Args:
        backbone: module mapping B x 3 x H x W to a list of feature maps fine to coarse, with ``channels``.
        num_classes: K real classes (a no-object class is added).
        delta: number of reference frames (0..5 in the paper); ``clip_length = 1 + delta``.
        hidden_dim: C'. num_queries: N. pool_size: K of the K x K reference tokens.
        enc_layers / dec_layers / nhead / dim_feedforward / dropout: the two transformers.
        fpn_dim / mask_dim: channels in the FPN and of S_t (C_o); default C'.
        audio_encoder: None (visual only) or a module ``B x T x S -> B x T x C_a`` with ``out_channels``.
        no_object_weight, class_weight, dice_weight, aux_loss: the loss (aux = every decoder layer).
        mask_threshold, class_threshold, iou_threshold: online inference and identity rules.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, delta: int = 1, hidden_dim: int = 256,
                 num_queries: int = 10, pool_size: int = 2, enc_layers: int = 3, dec_layers: int = 3,
                 nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0, fpn_dim: int | None = None,
                 mask_dim: int | None = None, audio_encoder: nn.Module | None = None,
                 no_object_weight: float = 0.1, class_weight: float = 1.0, dice_weight: float = 1.0,
                 aux_loss: bool = True, mask_threshold: float = 0.5, class_threshold: float = 0.4,
                 iou_threshold: float = 0.5):
        super().__init__()
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        self.num_classes = num_classes
        self.delta = delta
        self.clip_length = 1 + delta
        self.uses_audio = audio_encoder is not None
        self.aux_loss = aux_loss
        self.mask_threshold = mask_threshold
        self.class_threshold = class_threshold
        self.iou_threshold = iou_threshold
        self.backbone = backbone
        channels = list(backbone.channels)
        self.fusion = RobustContextFusion(channels[-1], hidden_dim, delta, pool_size, enc_layers, nhead,
                                          dim_feedforward, dropout, audio_encoder)
        self.mask_decoder = MaskDecoder(channels[:-1], hidden_dim, fpn_dim, mask_dim)
        self.instance_decoder = InstanceDecoder(hidden_dim, num_queries, dec_layers, nhead, dim_feedforward,
                                                dropout)
        self.heads = InstanceHeads(hidden_dim, num_classes, mask_dim)
        self.criterion = SetCriterion(num_classes, no_object_weight, class_weight, dice_weight)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255, persistent=False)
        # Online fast path settings (see :meth:`optimize_online`).
        self.channels_last = False
        self.amp_dtype: torch.dtype | None = None
        self._compiled: dict = {}  # plain dict: compiled wrappers must not register as submodules

    def optimize_online(self, channels_last: bool = True, amp: str | None = None,
                        compile: bool = False) -> RCF:
        """Settings of the online fast path (:meth:`step`); returns self.

        channels_last: NHWC weights and inputs for the convolutions (faster on GPUs with tensor cores and
        with oneDNN on CPU). amp: ``"bf16"`` or ``"fp16"`` runs the step under autocast (meant for GPUs; the
        stored outputs are still cast to float32 where the tracker reads them). compile: ``torch.compile``
        the backbone and the mask decoder (first frames are slow while it compiles).
        """
        dtypes = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if amp not in dtypes:
            raise ValueError(f"amp must be one of None, 'bf16', 'fp16', got {amp!r}")
        self.channels_last = channels_last
        self.amp_dtype = dtypes[amp]
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._compiled = ({"backbone": torch.compile(self.backbone), "mask_decoder": torch.compile(self.mask_decoder)}
                          if compile else {})
        return self

    # -- shared pieces ---------------------------------------------------------------------------------
    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ... x 3 x H x W (0..255) -> float, ImageNet-normalised."""
        return (frames.to(self.pixel_mean.device, torch.float32) - self.pixel_mean) / self.pixel_std

    @property
    def keep_attention(self) -> bool:
        """When True, the last fusion layer keeps its attention weights (see :meth:`attention_maps`)."""
        return self.fusion.keep_attention

    @keep_attention.setter
    def keep_attention(self, value: bool) -> None:
        self.fusion.keep_attention = value

    def attention_maps(self) -> dict[str, torch.Tensor | None]:
        """Attention of the last forward/step: reference-to-target, audio-to-target, ... (see fusion)."""
        return self.fusion.attention_maps()

    def predict(self, f_t, f_ref, low, audio=None, audio_valid=None, all_layers: bool = False,
                audio_features=None, audio_tokens=None):
        """Everything after the backbone. f_t: B x C x h x w; f_ref: B x delta*C x h x w or None; low: finer
        levels of the target frame; audio windows B x T x S or audio_features B x T x C_a -> logits
        L x B x N x (K+1), mask logits L x B x N x H/4 x W/4 with L = dec_layers if all_layers else 1."""
        fused = self.fusion(f_t, f_ref, audio, audio_valid, audio_features, audio_tokens)
        seg = self._compiled.get("mask_decoder", self.mask_decoder)(fused.target, low)
        codes = self.instance_decoder(fused.memory, fused.pos, fused.padding_mask)
        if not all_layers:
            codes = codes[-1:]
        return self.heads(codes, seg)

    # -- training --------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Batch of B clips of 1 + delta frames (see :mod:`avis.models.base`; optionally ``audio_features``
        B x T x C_a precomputed for a frozen audio backbone, used instead of ``audio``) -> losses of the last frame:
        ``loss_ce``, ``loss_dice`` (+ ``loss_ce_aux{i}``, ``loss_dice_aux{i}`` per earlier decoder layer)."""
        frames = batch["frames"]
        b, t = frames.shape[:2]
        if t != self.clip_length:
            raise ValueError(f"RCF with delta={self.delta} needs clips of {self.clip_length} frames, got {t}")
        feats = self.backbone(self.normalize(frames.flatten(0, 1)))
        last = feats[-1].unflatten(0, (b, t))
        f_t = last[:, -1]
        f_ref = last[:, :-1].flatten(1, 2) if self.delta else None
        low = [f.unflatten(0, (b, t))[:, -1] for f in feats[:-1]]
        audio = valid = features = None
        if self.uses_audio:
            # Precomputed per-frame audio features (frozen audio backbone) replace the windows when given.
            features = batch.get("audio_features")
            if features is not None:
                features = features.to(f_t.device)
            else:
                audio = batch["audio"].to(f_t.device)
            valid = batch.get("has_audio")
            valid = None if valid is None else torch.as_tensor(valid, device=f_t.device)
        logits, masks = self.predict(f_t, f_ref, low, audio, valid, all_layers=self.aux_loss,
                                     audio_features=features)
        targets = [self._target(clip[-1], masks.shape[-2:], masks.device) for clip in batch["targets"]]
        losses = self.criterion(logits[-1], masks[-1], targets)
        for i in range(logits.shape[0] - 1):
            aux = self.criterion(logits[i], masks[i], targets)
            losses.update({f"{k}_aux{i}": v for k, v in aux.items()})
        return losses

    @staticmethod
    def _target(tgt: dict, size, device) -> dict:
        """Ground truth of the target frame with masks area-resized to the mask logits' size (soft)."""
        masks = tgt["masks"].to(device)
        if masks.shape[0]:
            masks = F.interpolate(masks[None].float(), size=tuple(size), mode="area")[0]
        else:
            masks = masks.new_zeros((0, *size), dtype=torch.float32)
        return {"labels": tgt["labels"].to(device), "masks": masks}

    # -- online inference ------------------------------------------------------------------------------
    def init_state(self) -> RCFState:
        return RCFState(features=deque(maxlen=self.delta), audio=deque(maxlen=self.delta))

    @torch.no_grad()
    def step(self, state: RCFState, frame: torch.Tensor, audio: torch.Tensor | None = None) -> None:
        """frame: uint8 3 x H x W; audio: float32 S (this frame's window) or None. The backbone runs once
        on this frame; references come from the cache (the first frame repeated at the video's start).
        Nothing here waits for the device: outputs stay on it until :meth:`finish`."""
        device = self.pixel_mean.device
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            # non_blocking: a pinned host frame is copied asynchronously (a blocking copy synchronises).
            x = self.normalize(frame[None].to(device, non_blocking=True))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            feats = self._compiled.get("backbone", self.backbone)(x)
            f_t = feats[-1]
            state.size = tuple(frame.shape[-2:])
            f_ref = self._cached_references(state, f_t)
            aud = feat = features = None
            if self.uses_audio and audio is not None:
                feat, aud, features = self._online_audio(state, audio.to(device, non_blocking=True).float())
            logits, masks = self.predict(f_t, f_ref, feats[:-1], audio_features=features, audio_tokens=aud)
        state.probs.append(logits[-1, 0].float().softmax(-1))
        state.masks.append(masks[-1, 0])
        if self.delta:
            state.features.append(f_t)
            state.audio.append(feat)

    def _cached_references(self, state: RCFState, f_t: torch.Tensor) -> torch.Tensor | None:
        """The delta cached reference features, concatenated: 1 x delta*C x h x w (None when delta is 0).

        At the video's start the cache is empty and is filled with this frame's f_t (1 x C x h x w), so the
        first frame is its own reference; the caller appends f_t after the step."""
        if not self.delta:
            return None
        if not state.features:
            state.features.extend([f_t] * self.delta)
        return torch.cat(list(state.features), 1)

    def _online_audio(self, state: RCFState, window: torch.Tensor):
        """This frame's cached audio entry and the audio input of the fusion (tokens or features).

        With a split encoder that can project (:class:`avis.models.audio.AudioTokenEncoder`) the cache holds
        each frame's first-layer LSTM gate inputs, so a frame costs one audio backbone call, one input
        projection and the small recurrence over 1 + delta steps (instead of the 4096-wide LSTM input
        projection of every cached frame again). A missing window reads as silence, computed once per video.
        """
        tokens = self.fusion.audio_tokens
        encoder = tokens.encoder
        project = tokens.splits and hasattr(encoder, "project")

        def entry(w):
            f = tokens.frame_features(w[None])
            return (encoder.project(f) if project else f)[0]

        feat = entry(window)
        if not state.audio:
            state.audio.extend([feat] * self.delta)
        if any(a is None for a in state.audio) and state.silence is None:
            state.silence = entry(torch.zeros_like(window))
        seq = torch.stack([state.silence if a is None else a for a in state.audio] + [feat])[None]
        if project:
            return feat, tokens.proj(encoder.tokens_from_projected(seq)), None
        return feat, None, seq

    @torch.no_grad()
    def finish(self, state: RCFState) -> list[Track]:
        """Binarise (mask threshold), keep fired slots, assign identities -> tracks with masks at the input
        size (bool H x W per frame where the track appears).

        All host transfers happen here, once per video: class probabilities first, then only the slots that
        can fire (best real-class probability >= class_threshold) are upsampled and thresholded on the
        device; the others cannot fire, so the tracker gets empty masks for them.
        """
        tracker = SlotTracker(self.class_threshold, self.iou_threshold)
        logit_threshold = torch.logit(torch.tensor(self.mask_threshold)).item()
        if not state.probs:
            return tracker.tracks()
        probs = torch.stack(state.probs).float().cpu()  # F x N x (K+1)
        candidates = probs[..., :-1].max(-1).values >= self.class_threshold  # F x N
        frame_idx, slot_idx = torch.nonzero(candidates, as_tuple=True)
        stacked = torch.stack(state.masks)  # F x N x h x w, on the device
        device = stacked.device
        picked = stacked[frame_idx.to(device), slot_idx.to(device)]  # M x h x w
        # Upsample in chunks (bounded memory at full resolution), one host transfer per chunk.
        binary = torch.cat([(F.interpolate(c[None].float(), size=state.size, mode="bilinear",
                                           align_corners=False)[0] > logit_threshold).cpu()
                            for c in picked.split(64)]) if len(picked) else None
        n = stacked.shape[1]
        for i in range(len(state.probs)):
            masks = torch.zeros((n, *state.size), dtype=torch.bool)
            sel = frame_idx == i
            if binary is not None and sel.any():
                masks[slot_idx[sel]] = binary[sel]
            tracker.update(i, probs[i], masks)
        return tracker.tracks()
