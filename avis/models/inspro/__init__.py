"""InsPro (He et al., NeurIPS 2022): online VIS by propagating instance query-proposal pairs.

Layout: ``head`` (dynamic interaction stage, dynamic conv, intra-query attention, box deltas), ``matching``
(matching cost, temporally consistent matching, box de-duplication loss), ``model`` (the :class:`InsPro`
method). Shared parts: ``avis.models.backbones`` (torchvision ResNet / tiny CPU net) and CrossVIS's CondInst
pieces (``avis.models.crossvis.mask``: mask branch, dynamic mask head; ``crossvis.losses.dice_loss``).
Builders: :func:`inspro_tiny`, :func:`inspro_r50`, :func:`inspro_r101`.

Deviations from the paper: the list in the project's ``docs/baselines_inspro.md``.
"""

from __future__ import annotations

from .head import DynamicConv, InteractionStage, IntraQueryAttention, apply_deltas
from .matching import dedup_loss, match_cost, temporally_consistent_matching
from .model import InsPro, clip_to_image, mask_boxes

__all__ = ["InsPro", "inspro_tiny", "inspro_r50", "inspro_r101", "temporally_consistent_matching",
           "match_cost", "dedup_loss", "clip_to_image", "mask_boxes", "DynamicConv", "InteractionStage",
           "IntraQueryAttention", "apply_deltas"]

TINY = {"backbone": "tiny", "backbone_kwargs": {"width": 16}, "hidden_dim": 32, "num_queries": 10,
        "num_stages": 2, "dim_dynamic": 16, "dim_feedforward": 128, "num_heads": 4, "mask_branch_channels": 16}


def inspro_tiny(num_classes: int, **kwargs) -> InsPro:
    """CPU preset: tiny 16-wide backbone, 32 channels, 10 queries, 2 stages, dynamic dim 16, mask branch 16."""
    return InsPro(num_classes, **{**TINY, **kwargs})


def inspro_r50(num_classes: int, backbone_weights: str | None = None, **kwargs) -> InsPro:
    """The paper's setting: ResNet-50 + FPN 256, 100 queries, 6 stages, dynamic conv 256 -> 64 -> 256."""
    return InsPro(num_classes, backbone="resnet50", backbone_weights=backbone_weights, **kwargs)


def inspro_r101(num_classes: int, backbone_weights: str | None = None, **kwargs) -> InsPro:
    """As :func:`inspro_r50` with a ResNet-101."""
    return InsPro(num_classes, backbone="resnet101", backbone_weights=backbone_weights, **kwargs)

