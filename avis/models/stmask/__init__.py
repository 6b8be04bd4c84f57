"""STMask (Li et al., CVPR 2021), a visual-only online baseline: YOLACT-style prototypes and coefficients,
feature calibration for anchors (FCA) and boxes (FCB), a tracking embedding and a temporal fusion module.

Layout: ``anchors`` (FCA anchors, SSD box coding), ``head`` (protonet, FCA predictors with adaptive FCB),
``temporal`` (correlation + RoIAlign temporal fusion on P4), ``association`` (matching against propagated
tracks), ``model`` (the :class:`STMask` method). Builders: :func:`stmask_tiny`, :func:`stmask_r50`.
Backbone + FPN P3-P7 are CrossVIS's (:mod:`avis.models.crossvis.backbone`).

Deviations from the paper / public code: the list in the project's ``docs/baselines_stmask.md``.
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


def stmask_tiny(num_classes: int, **kwargs) -> STMask:
    """CPU preset: 16-wide conv body, FPN 32, protonet 32 -> 16 prototypes, embedding 32, temporal 32/32/64."""
    return STMask(num_classes, tiny_fpn(32, 16), **{**TINY, **kwargs})


def stmask_r50(num_classes: int, weights_path: str | None = None, frozen_bn: bool | None = None,
               **kwargs) -> STMask:
    """ResNet-50 + FPN 256, 32 prototypes, embedding 128, temporal fusion 512/512/1024 (the paper's setting)."""
    return STMask(num_classes, resnet_fpn("resnet50", 256, weights_path, frozen_bn), **kwargs)
