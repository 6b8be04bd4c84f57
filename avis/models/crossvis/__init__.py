"""CrossVIS (Yang et al., ICCV 2021) and its CondInst-VIS ablation, visual-only online baselines.

Layout: ``backbone`` (ResNet/tiny + FPN P3-P7), ``head`` (FCOS towers, controller, embedding branch),
``targets`` (FCOS assignment), ``mask`` (mask branch, relative coordinates, dynamic head), ``crossover``
(cross-frame pairing), ``losses`` (dice, global balanced / pair-wise embedding, identity map), ``association``
(online tracking rule), ``model`` (the :class:`CrossVIS` method). Builders: :func:`crossvis_tiny`,
:func:`crossvis_r50`, :func:`condinst_vis_tiny`, :func:`condinst_vis_r50`.

Deviations from the paper / public code: the list in the project's ``docs/baselines.md``.
"""

from __future__ import annotations

from .association import assign, match_scores, update_tracks
from .backbone import resnet_fpn, tiny_fpn
from .losses import GlobalEmbeddingLoss, IdentityMap, dice_loss, embedding_scale
from .model import CrossVIS

__all__ = ["CrossVIS", "crossvis_tiny", "crossvis_r50", "condinst_vis_tiny", "condinst_vis_r50", "assign",
           "match_scores", "update_tracks", "GlobalEmbeddingLoss", "IdentityMap", "dice_loss", "embedding_scale",
           "resnet_fpn", "tiny_fpn"]

TINY = {"mask_branch_channels": 16, "embed_dim": 32, "num_identities": 64}


def crossvis_tiny(num_classes: int, **kwargs) -> CrossVIS:
    """CPU preset: 5-stage 16-wide conv net, FPN 32 channels, mask branch 16, embedding 32, 64 proxies."""
    opts = {**TINY, **kwargs}
    return CrossVIS(num_classes, tiny_fpn(32, 16), **opts)


def crossvis_r50(num_classes: int, weights_path: str | None = None, frozen_bn: bool | None = None,
                 **kwargs) -> CrossVIS:
    """ResNet-50 + FPN 256, mask branch 128 -> 8, embedding 256 (the paper's setting)."""
    return CrossVIS(num_classes, resnet_fpn("resnet50", 256, weights_path, frozen_bn), **kwargs)


def condinst_vis_tiny(num_classes: int, **kwargs) -> CrossVIS:
    return crossvis_tiny(num_classes, **{"crossover": False, "embedding": "pairwise", **kwargs})


def condinst_vis_r50(num_classes: int, weights_path: str | None = None, frozen_bn: bool | None = None,
                     **kwargs) -> CrossVIS:
    return crossvis_r50(num_classes, weights_path, frozen_bn,
                        **{"crossover": False, "embedding": "pairwise", **kwargs})
