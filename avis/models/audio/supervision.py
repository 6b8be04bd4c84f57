"""Audio supervision from ordinary annotations: per-frame audio-tagging targets and their loss.

Every YouTube-VIS-style dataset says which categories are in each frame (an annotation whose segmentation at
frame t is not null); AVISeg-style sets also say which annotations are *sounding* at each frame (an optional
per-annotation list ``sounding``). Both are multi-label targets for the audio window of a frame:

    presence  T x K   1 where some annotation of category k has a segmentation at frame t
    sounding  T x K   1 where some annotation of category k is sounding at frame t (only where known)
    known     bool    the video's annotations all carry ``sounding`` (and it has at least one)

They are used twice (docs/audio.md, "Audio supervision"): by the pretraining stage the engine runs before RCF
training (:mod:`avis.models.audio.pretrain`), and by the auxiliary audio-tagging loss on the audio tokens
during RCF training (:class:`AudioTagger`, added by :class:`avis.models.audio.AudioTokenEncoder` when
``audio.supervision.enabled``). Crowd annotations count as present: a crowd of a category is heard as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def instance_tags(instances: Sequence, num_frames: int, index: dict[int, int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Decoded :class:`avis.data.video.Instance` objects (``present``, ``sounding`` over the same frames) ->
    ``(presence, sounding, known)``: float32 ``num_frames`` x K twice and whether ``sounding`` is known."""
    k = len(index)
    presence = np.zeros((num_frames, k), np.float32)
    sounding = np.zeros((num_frames, k), np.float32)
    known = bool(instances) and all(inst.sounding is not None for inst in instances)
    for inst in instances:
        c = index.get(int(inst.category_id))
        if c is None:
            continue
        presence[np.asarray(inst.present, bool), c] = 1.0
        if known:
            sounding[np.asarray(inst.sounding, bool), c] = 1.0
    return presence, sounding, known


def record_tags(records: Sequence[dict], num_frames: int, index: dict[int, int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The same from a shard sample's (or a YTVIS JSON's) annotation records: ``segmentations`` (null where
    the object is absent) and the optional ``sounding`` list, without decoding any mask."""
    k = len(index)
    presence = np.zeros((num_frames, k), np.float32)
    sounding = np.zeros((num_frames, k), np.float32)
    known = bool(records) and all(isinstance(r.get("sounding"), list) for r in records)
    for r in records:
        c = index.get(int(r["category_id"]))
        if c is None:
            continue
        for t, seg in enumerate((r.get("segmentations") or [])[:num_frames]):
            if seg is not None:
                presence[t, c] = 1.0
        if known:
            for t, on in enumerate(r["sounding"][:num_frames]):
                if on:
                    sounding[t, c] = 1.0
    return presence, sounding, known


def video_tags(video, index: dict[int, int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """A :class:`avis.data.video.Video`'s targets over all its frames: from the shard record's annotations
    when the video is lazy (nothing decoded), else from its decoded instances."""
    records = (video.meta or {}).get("instances")
    if video.loader is not None and isinstance(records, list):
        return record_tags(records, video.num_frames, index)
    return instance_tags(video.instances, video.num_frames, index)


def tagging_loss(logits: torch.Tensor, presence: torch.Tensor, sounding: torch.Tensor, has_audio: torch.Tensor,
                 known: torch.Tensor, weight: float = 1.0, sounding_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Multi-label BCE of per-frame tag logits ``B x T x 2K`` (presence logits, then sounding logits) against
    ``presence`` / ``sounding`` ``B x T x K``; clips without sound (``has_audio`` B) carry no loss, and the
    sounding half only counts for clips whose ``known`` (B) is true. Means over the counted entries (a batch
    with none gives a zero that still depends on the logits, so every rank has the same graph under DDP).
    -> ``{"loss_audio_tag", "loss_audio_sounding"}`` (the second only when ``sounding_weight`` > 0)."""
    k = presence.shape[-1]
    p_logits, s_logits = logits[..., :k].float(), logits[..., k:].float()
    on = has_audio.to(logits.device).bool()[:, None, None].expand_as(p_logits).float()
    out = {"loss_audio_tag": weight * _masked_bce(p_logits, presence.to(p_logits), on)}
    if sounding_weight > 0:
        on_s = on * known.to(logits.device).float()[:, None, None]
        out["loss_audio_sounding"] = sounding_weight * _masked_bce(s_logits, sounding.to(s_logits), on_s)
    return out


def _masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * mask
    return per.sum() / mask.sum().clamp(min=1.0)


class AudioTagger(nn.Module):
    """The auxiliary audio-tagging head: audio tokens ``B x T x C'`` -> per-frame logits ``B x T x 2K`` (which
    of the K categories are present, which are sounding), and the loss of :func:`tagging_loss` on a batch.

    A single linear layer on purpose: the tokens themselves must carry the information (a deep head could
    learn it while the tokens the fusion sees stay uninformative)."""

    def __init__(self, dim: int, num_classes: int, weight: float = 1.0, sounding_weight: float = 1.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"audio supervision needs the number of categories >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.weight, self.sounding_weight = float(weight), float(sounding_weight)
        self.linear = nn.Linear(dim, 2 * self.num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens)

    def loss(self, tokens: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """``batch`` as :func:`avis.data.clips.collate` gives it (``audio_tags``, ``audio_sounding``,
        ``sounding_known``, ``has_audio``)."""
        b = tokens.shape[0]
        has_audio = batch.get("has_audio")
        has_audio = torch.ones(b, dtype=torch.bool) if has_audio is None else torch.as_tensor(has_audio)
        return tagging_loss(self(tokens), batch["audio_tags"], batch["audio_sounding"], has_audio,
                            torch.as_tensor(batch["sounding_known"]), self.weight, self.sounding_weight)


def supervision_settings(supervision) -> dict | None:
    """``audio.supervision`` of the config (a mapping or None) -> ``{"weight", "sounding_weight"}``, or None
    when it is off (absent, ``enabled: false``, or a weight of 0)."""
    if not supervision:
        return None
    get = supervision.get
    if not bool(get("enabled", True)):
        return None
    weight, sounding_weight = float(get("weight", 1.0)), float(get("sounding_weight", 1.0))
    if weight < 0 or sounding_weight < 0:
        raise ValueError(f"audio.supervision weights must be >= 0, got {weight}, {sounding_weight}")
    if weight == 0 and sounding_weight == 0:
        return None
    return {"weight": weight, "sounding_weight": sounding_weight}
