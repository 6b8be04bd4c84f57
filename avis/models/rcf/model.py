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
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from avis.models.base import FrameResult, Track, TrackedInstance, VISMethod
from avis.models.preprocess import normalize, register_pixel_stats
from avis.models.rcf.criterion import SetCriterion
from avis.models.rcf.decoder import InstanceHeads, MaskDecoder
from avis.models.rcf.fusion import RobustContextFusion
from avis.models.rcf.transformer import InstanceDecoder
from avis.tracking import SlotTracker


@dataclass
class RCFState:
    """Online state of one video: the cache of the last delta frames' features (and audio entries), the
    slot tracker, and the last frame's raw outputs (for inspection)."""

    features: deque
    audio: deque
    tracker: SlotTracker
    frame: int = 0  # frames processed so far
    size: tuple[int, int] | None = None
    silence: torch.Tensor | None = None  # cached audio entry of a missing window (fast path)
    last_probs: torch.Tensor | None = None  # last frame's N x (K+1) class probabilities (device)
    last_masks: torch.Tensor | None = None  # last frame's N x H/4 x W/4 mask logits (device)


def _zero_padding(x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Normalised images N x 3 x H x W, valid sizes N x 2 (h, w) -> the padding (right/bottom) set to 0 (the
    mean colour), as the zero padding of the convolutions at inference, where frames are not padded."""
    rows = torch.arange(x.shape[-2], device=x.device)[None, :, None] >= sizes[:, 0, None, None]
    cols = torch.arange(x.shape[-1], device=x.device)[None, None, :] >= sizes[:, 1, None, None]
    return x.masked_fill((rows | cols)[:, None], 0)


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
        register_pixel_stats(self)
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
    @property
    def audio_encoder(self) -> nn.Module | None:
        """The audio encoder (``audio.encoder``; what the engine's audio pretraining stage trains), or None."""
        return self.fusion.audio_tokens.encoder if self.uses_audio else None

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ... x 3 x H x W (0..255) -> float, ImageNet-normalised."""
        return normalize(frames, self.pixel_mean, self.pixel_std)

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

    def predict(self, f_t, f_ref, low, audio=None, audio_valid=None, all_layers: bool = False, valid_hw=None):
        """Everything after the backbone. f_t: B x C x h x w; f_ref: B x delta*C x h x w or None; low: finer
        levels of the target frame; audio: tokens B x T x C' (``fusion.audio_tokens``) or None; audio_valid,
        valid_hw (the rows x cols of f_t's grid that hold the image): see :class:`RobustContextFusion` ->
        logits L x B x N x (K+1), mask logits L x B x N x H/4 x W/4 with L = dec_layers if all_layers else 1."""
        fused = self.fusion(f_t, f_ref, audio, audio_valid, valid_hw)
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
        x = self.normalize(frames.flatten(0, 1))
        sizes = batch.get("image_sizes")  # B x 2: each clip's size before the batch was padded
        if sizes is not None:
            sizes = torch.as_tensor(sizes, device=x.device)
            x = _zero_padding(x, sizes.repeat_interleave(t, 0))
        feats = self.backbone(x)
        last = feats[-1].unflatten(0, (b, t))
        f_t = last[:, -1]
        valid_hw = None
        if sizes is not None:  # feature cell i holds image rows [i s, (i + 1) s): those with i s < h are valid
            s = self.backbone.strides[-1]
            valid_hw = torch.minimum((sizes + s - 1) // s, sizes.new_tensor(f_t.shape[-2:]))
        f_ref = last[:, :-1].flatten(1, 2) if self.delta else None
        low = [f.unflatten(0, (b, t))[:, -1] for f in feats[:-1]]
        audio = valid = raw = None
        if self.uses_audio:
            # Precomputed per-frame audio features (frozen audio backbone) replace the windows when given.
            features = batch.get("audio_features")
            audio, raw = self.fusion.audio_tokens.encode(
                None if features is not None else batch["audio"].to(f_t.device),
                None if features is None else features.to(f_t.device))
            valid = batch.get("has_audio")
            valid = None if valid is None else torch.as_tensor(valid, device=f_t.device)
        logits, masks = self.predict(f_t, f_ref, low, audio, valid, all_layers=self.aux_loss, valid_hw=valid_hw)
        targets = [self._target(clip[-1], masks.shape[-2:], masks.device) for clip in batch["targets"]]
        losses = self.criterion(logits[-1], masks[-1], targets)
        for i in range(logits.shape[0] - 1):
            aux = self.criterion(logits[i], masks[i], targets)
            losses.update({f"{k}_aux{i}": v for k, v in aux.items()})
        tagger = getattr(self.fusion.audio_tokens.encoder, "tagger", None) if self.uses_audio else None
        if tagger is not None:
            # audio.supervision: the audio tokens of every frame of the clip predict that frame's categories
            # (and which of them sound), so that they stay informative (docs/audio.md)
            losses.update(tagger.loss(raw, batch))
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
        return RCFState(features=deque(maxlen=self.delta), audio=deque(maxlen=self.delta),
                        tracker=SlotTracker(self.class_threshold, self.iou_threshold))

    @torch.no_grad()
    def step(self, state: RCFState, frame: torch.Tensor, audio: torch.Tensor | None = None) -> FrameResult:
        """frame: uint8 3 x H x W; audio: float32 S (this frame's window) or None (no sound: the audio tokens
        are masked out) -> this frame's tracked instances (:meth:`forward_frame`, then :meth:`track_frame`)."""
        probs, masks = self.forward_frame(state, frame, audio)
        return self.track_frame(state, probs, masks)

    @torch.no_grad()
    def forward_frame(self, state: RCFState, frame: torch.Tensor,
                      audio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The network on one frame -> class probabilities N x (K+1) (float32) and mask logits N x H/4 x W/4,
        left on the device. The backbone runs once on this frame; references come from the cache (the first
        frame repeated at the video's start). Nothing here waits for the device."""
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
            aud = feat = None
            if self.uses_audio and audio is not None:
                feat, aud = self._online_audio(state, audio.to(device, non_blocking=True).float())
            logits, masks = self.predict(f_t, f_ref, feats[:-1], aud)
        if self.delta:
            state.features.append(f_t)
            state.audio.append(feat)
        return logits[-1, 0].float().softmax(-1), masks[-1, 0]

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
        """This frame's cached audio entry and the audio tokens of the fusion.

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
            return feat, tokens.proj(encoder.tokens_from_projected(seq))
        return feat, tokens.from_features(seq)

    @torch.no_grad()
    def track_frame(self, state: RCFState, probs: torch.Tensor, masks: torch.Tensor) -> FrameResult:
        """One frame's slot outputs -> its tracked instances: binarise (mask threshold), keep fired slots,
        assign identities (:class:`avis.tracking.SlotTracker`: slot identity, IoU > 0.5 rescue against the
        previous frame). Masks at the input size (bool H x W, CPU).

        The one host transfer of the step: class probabilities first, then only the slots that can fire (best
        real-class probability >= class_threshold) are upsampled and thresholded on the device; the others
        cannot fire, so the tracker gets empty masks for them.
        """
        state.last_probs, state.last_masks = probs, masks
        probs = probs.float().cpu()
        binary = torch.zeros((probs.shape[0], *state.size), dtype=torch.bool)
        candidates = torch.nonzero(probs[:, :-1].max(-1).values >= self.class_threshold).flatten()
        if len(candidates):
            logit_threshold = torch.logit(torch.tensor(self.mask_threshold)).item()
            picked = masks[candidates.to(masks.device)]
            # in chunks: bounded memory at full resolution, one host transfer per chunk
            binary[candidates] = torch.cat([(F.interpolate(c[None].float(), size=state.size, mode="bilinear",
                                                           align_corners=False)[0] > logit_threshold).cpu()
                                            for c in picked.split(64)])
        assigned = state.tracker.update(state.frame, probs, binary)
        real = probs[:, :-1]
        result = FrameResult(state.frame, sorted(
            (TrackedInstance(tid, int(real[slot].argmax()), float(real[slot].max()), binary[slot])
             for slot, tid in assigned.items()), key=lambda inst: inst.track_id))
        state.frame += 1
        return result

    def finish(self, state: RCFState) -> list[Track]:
        """The video-level tracks (class = score-weighted majority of the per-frame classes, score = mean of
        that class's probability over the track's frames; see :class:`avis.tracking.SlotTracker`)."""
        return state.tracker.tracks()
