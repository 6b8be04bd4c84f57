"""InsPro (He et al., NeurIPS 2022): online VIS by propagating instance query-proposal pairs.

Layout: ``head`` (dynamic interaction stage, dynamic conv, intra-query attention, box deltas), ``matching``
(matching cost, temporally consistent matching, box de-duplication loss), ``model`` (the :class:`InsPro`
method). Shared parts: ``avis.models.backbones`` (torchvision ResNet / tiny CPU net) and CrossVIS's CondInst
pieces (``avis.models.crossvis.mask``: mask branch, dynamic mask head) and CondInst's squared Dice
(``avis.models.losses.squared_dice_loss``).
Builders: :func:`inspro_tiny`, :func:`inspro_r50`, :func:`inspro_r101`.

Deviations from the paper / the Sparse R-CNN + CondInst settings it inherits (each is a constructor argument,
repeated in ``configs/model/inspro*.yaml``):

1. No COCO pre-training (nothing may be downloaded): the backbone starts from random init or from a local
   torchvision state dict (``backbone_weights``); BatchNorm is frozen only with weights (``frozen_bn``).
2. FPN on the backbone's levels only (R-50: P2-P5, as Sparse R-CNN's RoI pooler uses; tiny: P2-P4); the
   mask branch takes the stride >= 8 levels (P3-P5). No P6/P7 (the method has no dense head that needs them).
3. Boxes are derived from the masks (the batch format carries masks only).
4. One assignment per clip, computed from the *last* stage's predictions, shared by every stage's loss
   (Sparse R-CNN matches each stage separately; with propagation a slot must mean one object at all stages).
5. Relative coordinates of the mask head are centred on the stage's predicted box and divided by half its
   longer side (at least ``rel_coord_min`` px); CondInst divides by the FPN level's size of interest.
6. Masks: bilinear x2 upsampling (align_corners=False) of stride-8 logits to stride 4. The stride-4 targets
   are the fraction of each 4 x 4 cell inside the object (``mask_target="area"``); CondInst samples the cell's
   centre pixel (``"center"``), which leaves edges undetermined by +-2 px on small images (overfitting test:
   full-resolution IoU 0.79-0.89 with "center", 0.94-0.97 with "area"). Mask focal loss averaged over pixels
   per object; dice per object; both summed over objects and divided by the frame's object count.
7. Intra-query attention: ``eps`` maps each object feature to one scalar weight (the paper: "a linear
   transformation"); the bank holds the last ``train_bank`` (3) frames in training mode and ``test_bank``
   (18) in eval mode, the current frame included.
8. Training clips come from the engine (the target frame and the ``clip_length - 1`` frames before it, repeated
   at a video's start); proposals are clipped to the (padded) batch image; gradients flow through the
   propagated queries, not through the propagated boxes (Sparse R-CNN detaches boxes between stages).
9. Video-level output (notes' choice): per slot, the frames where its max class score > ``score_threshold``
   (0.15); class = argmax of the mean scores there, score = that mean; ``split_gap`` optionally splits a
   slot's track at long gaps. InsPro-lite (key frames) is not implemented.
10. Schedule (``configs/optim/adamw_inspro.yaml``): AdamW 2.5e-5, wd 1e-4 as in the paper, but the engine's
    poly decay instead of x0.1 at 24k and 28k of 32k steps; gradient-norm clipping 1.0 (Sparse R-CNN's).
"""

from __future__ import annotations

from avis.models.backbones import build_backbone

from .head import DynamicConv, InteractionStage, IntraQueryAttention, apply_deltas
from .matching import dedup_loss, match_cost, temporally_consistent_matching
from .model import InsPro, clip_to_image, mask_boxes

__all__ = ["InsPro", "inspro_tiny", "inspro_r50", "inspro_r101", "temporally_consistent_matching",
           "match_cost", "dedup_loss", "clip_to_image", "mask_boxes", "DynamicConv", "InteractionStage",
           "IntraQueryAttention", "apply_deltas"]

TINY = {"hidden_dim": 32, "num_queries": 10, "num_stages": 2, "dim_dynamic": 16, "dim_feedforward": 128,
        "num_heads": 4, "mask_branch_channels": 16}


def inspro_tiny(num_classes: int, width: int = 16, backbone_weights: str | None = None, **kwargs) -> InsPro:
    """CPU preset: tiny 16-wide backbone, 32 channels, 10 queries, 2 stages, dynamic dim 16, mask branch 16."""
    return InsPro(num_classes, build_backbone("tiny", weights=backbone_weights, width=width), **{**TINY, **kwargs})


def inspro_r50(num_classes: int, backbone_weights: str | None = None, frozen_bn: bool | None = None, **kwargs) -> InsPro:
    """The paper's setting: ResNet-50 + FPN 256, 100 queries, 6 stages, dynamic conv 256 -> 64 -> 256."""
    return InsPro(num_classes, build_backbone("resnet50", weights=backbone_weights, frozen_bn=frozen_bn), **kwargs)


def inspro_r101(num_classes: int, backbone_weights: str | None = None, frozen_bn: bool | None = None,
                **kwargs) -> InsPro:
    """As :func:`inspro_r50` with a ResNet-101."""
    return InsPro(num_classes, build_backbone("resnet101", weights=backbone_weights, frozen_bn=frozen_bn), **kwargs)
