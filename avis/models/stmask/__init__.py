"""STMask (Li et al., CVPR 2021), a visual-only online baseline: YOLACT-style prototypes and coefficients,
feature calibration for anchors (FCA) and boxes (FCB), a tracking embedding and a temporal fusion module.

Layout: ``anchors`` (FCA anchors, SSD box coding), ``head`` (protonet, FCA predictors with adaptive FCB),
``temporal`` (correlation + RoIAlign temporal fusion on P4), ``association`` (matching against propagated
tracks), ``model`` (the :class:`STMask` method). Builders: :func:`stmask_tiny`, :func:`stmask_r50`.
Backbone + FPN P3-P7 are CrossVIS's (:mod:`avis.models.crossvis.backbone`).

Deviations from the paper / public code (each a constructor argument or noted in the configs):

1. No COCO pre-training (nothing may be downloaded): random init, or a local torchvision ResNet state dict
   (``backbone_weights``); BatchNorm frozen only with weights.
2. Plain ResNet-50 (no DCNv2 in the backbone); deformable convolution only in the FCB head.
3. FCB is the adaptive variant (offsets = zero-initialised 1x1 conv on the detached box deltas) on the class
   branch (``fcb_mask`` adds the coefficient and embedding branches); the "aligned" variant is not built.
4. Class loss: softmax CE with OHEM 3:1 per image (at least 3 negatives for images without objects), summed
   and divided by the number of positives; cross-class standard NMS (torchvision) instead of fast NMS.
5. Centerness: sigmoid logit with BCE against the FCOS centerness of the anchor centre in its gt box (choice).
6. Temporal fusion, training: RoIs at the gt boxes of t-1 of instances present at t; their t-1
   coefficients = mean of that instance's positive anchors' (detached); box target = SSD deltas of the box at t
   relative to the box at t-1 (smooth L1); mask target = the mask at t (BCE in the box). Its two FC layers start
   at zero (identity propagation). Its input is [correlation 121, P4(t-1), P4(t)].
7. Tracking embedding loss: pair-wise BCE on (cos + 1) / 2 between positives of the two frames (<= 100 each).
8. Two frames per clip: the first and the last frame of the engine's clip (the data pipeline's ``delta``
   sets the distance; paper: +-2 annotated frames). Boxes are derived from the masks.
9. Association: greedy one-to-one in detection-score order; unmatched tracks output their propagated masks
   (score x0.95 per frame) for up to 10 frames, then end.
"""

from __future__ import annotations

from ..crossvis.backbone import resnet_fpn, tiny_fpn
from .anchors import decode, encode, make_anchors
from .association import assign, match_scores, update_tracks
from .model import STMask
from .temporal import TemporalFusion, correlation

__all__ = ["STMask", "stmask_tiny", "stmask_r50", "make_anchors", "encode", "decode", "correlation",
           "TemporalFusion", "assign", "match_scores", "update_tracks"]

TINY = {"num_protos": 16, "embed_dim": 32, "proto_channels": 32, "temporal_channels": (32, 32, 64)}


def stmask_tiny(num_classes: int, width: int = 16, backbone_weights: str | None = None, **kwargs) -> STMask:
    """CPU preset: 16-wide conv body, FPN 32, protonet 32 -> 16 prototypes, embedding 32, temporal 32/32/64."""
    return STMask(num_classes, tiny_fpn(32, width, backbone_weights), **{**TINY, **kwargs})


def stmask_r50(num_classes: int, backbone_weights: str | None = None, frozen_bn: bool | None = None,
               **kwargs) -> STMask:
    """ResNet-50 + FPN 256, 32 prototypes, embedding 128, temporal fusion 512/512/1024 (the paper's setting)."""
    return STMask(num_classes, resnet_fpn("resnet50", 256, backbone_weights, frozen_bn), **kwargs)
