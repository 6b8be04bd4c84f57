"""CrossVIS (Yang et al., ICCV 2021) and its CondInst-VIS ablation, visual-only online baselines.

Layout: ``backbone`` (ResNet/tiny + FPN P3-P7), ``head`` (FCOS towers, controller, embedding branch),
``targets`` (FCOS assignment), ``mask`` (mask branch, relative coordinates, dynamic head), ``crossover``
(cross-frame pairing), ``losses`` (dice, global balanced / pair-wise embedding, identity map), ``association``
(online tracking rule), ``model`` (the :class:`CrossVIS` method). Builders: :func:`crossvis_tiny`,
:func:`crossvis_r50`, :func:`condinst_vis_tiny`, :func:`condinst_vis_r50`.

Deviations from the paper / public code (each is a constructor argument, repeated in the configs):

1. No COCO pre-training (nothing may be downloaded): backbones start from random init or from a local
   torchvision state-dict file (``backbone_weights``); BatchNorm is frozen only with weights (``frozen_bn``).
2. Two frames per clip: the first (reference) and the last (target) frame of the engine's clip; the
   reference-frame distance (paper: up to 20 annotated frames) is the data pipeline's ``delta``.
3. Identities are mapped to proxies on the fly in order of first appearance ((video_id, instance_id) ->
   index, saved in the state dict); ``num_identities`` is a config value and past it identities share
   proxies by hash (the paper uses exactly the training set's identity count).
4. The proxy classifier is a plain linear layer (weight = proxies) with a bias initialised to the focal
   prior (-log 99); the paper does not say whether the proxies are normalised.
5. Masks are upsampled with bilinear interpolation (align_corners=False) instead of CondInst's
   ``aligned_bilinear``; both keep pixel centres aligned with the stride-4 targets (sampled at 4k + 2).
6. The 500-proposal cap is per batch (one process = one "GPU"); the crossover loss uses the same sampled
   positives; positives whose instance is missing, or has no positive location, in the other frame are
   skipped.
7. Boxes are derived from the masks (the batch format carries masks only).
8. CondInst-VIS: the paper's ablation keeps MaskTrack R-CNN's pair-wise identity head; here it is the same
   network with ``crossover=False, embedding="pairwise"`` (key = target frame, references = mean embedding
   of each reference-frame instance's positives, cross entropy over [new, refs]) and the same association
   rule as CrossVIS (cosine + box IoU, same class, new track below 0.4), not MaskTrack's rule with
   detection score. ``embedding=None`` gives class + box IoU association only.
9. Unmatched tracks are never terminated (as in the public code); tracks only end with the video.
"""

from __future__ import annotations

from .association import assign, match_scores, update_tracks
from .backbone import resnet_fpn, tiny_fpn
from .losses import GlobalEmbeddingLoss, IdentityMap, embedding_scale
from .model import CrossVIS

__all__ = ["CrossVIS", "crossvis_tiny", "crossvis_r50", "condinst_vis_tiny", "condinst_vis_r50", "assign",
           "match_scores", "update_tracks", "GlobalEmbeddingLoss", "IdentityMap", "embedding_scale",
           "resnet_fpn", "tiny_fpn"]

TINY = {"mask_branch_channels": 16, "embed_dim": 32, "num_identities": 64}


def crossvis_tiny(num_classes: int, width: int = 16, backbone_weights: str | None = None, **kwargs) -> CrossVIS:
    """CPU preset: 5-stage 16-wide conv net, FPN 32 channels, mask branch 16, embedding 32, 64 proxies."""
    opts = {**TINY, **kwargs}
    return CrossVIS(num_classes, tiny_fpn(32, width, backbone_weights), **opts)


def crossvis_r50(num_classes: int, backbone_weights: str | None = None, frozen_bn: bool | None = None,
                 **kwargs) -> CrossVIS:
    """ResNet-50 + FPN 256, mask branch 128 -> 8, embedding 256 (the paper's setting)."""
    return CrossVIS(num_classes, resnet_fpn("resnet50", 256, backbone_weights, frozen_bn), **kwargs)


def condinst_vis_tiny(num_classes: int, width: int = 16, backbone_weights: str | None = None,
                      **kwargs) -> CrossVIS:
    return crossvis_tiny(num_classes, width, backbone_weights,
                         **{"crossover": False, "embedding": "pairwise", **kwargs})


def condinst_vis_r50(num_classes: int, backbone_weights: str | None = None, frozen_bn: bool | None = None,
                     **kwargs) -> CrossVIS:
    return crossvis_r50(num_classes, backbone_weights, frozen_bn,
                        **{"crossover": False, "embedding": "pairwise", **kwargs})
