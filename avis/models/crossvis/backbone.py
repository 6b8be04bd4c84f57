"""Backbone + FPN producing P3-P7 for the FCOS/CondInst family (CrossVIS, STMask).

A body from :func:`avis.models.backbones.build_backbone` maps images to C3, C4, C5 (strides 8, 16, 32): a
torchvision ResNet (``levels=3``) or the CPU net ``tiny32``; torchvision's ``FeaturePyramidNetwork`` with the
``LastLevelP6P7`` block (P6, P7 from P5) turns them into five maps P3..P7 at strides 8..128.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from avis.models.backbones import build_backbone

STRIDES = (8, 16, 32, 64, 128)


class FPNBackbone(nn.Module):
    """images B x 3 x H x W (normalised, H and W multiples of 128) -> [P3..P7], P_l: B x C x H/2^l x W/2^l.

    ``body(x)`` must return [C3, C4, C5] with ``body.channels`` channels."""

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.strides = STRIDES
        self.fpn = FeaturePyramidNetwork(list(body.channels), out_channels, LastLevelP6P7(out_channels, out_channels))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(images)
        return list(self.fpn(OrderedDict((f"c{i + 3}", f) for i, f in enumerate(feats))).values())


def tiny_fpn(out_channels: int = 32, width: int = 16, backbone_weights: str | None = None) -> FPNBackbone:
    """The CPU body ``tiny32`` (BatchNorm, random init or a local state dict) + FPN."""
    return FPNBackbone(build_backbone("tiny32", weights=backbone_weights, width=width), out_channels)


def resnet_fpn(name: str = "resnet50", out_channels: int = 256, backbone_weights: str | None = None,
               frozen_bn: bool | None = None) -> FPNBackbone:
    """torchvision ResNet (random init, or a local torchvision state dict; nothing is downloaded) + FPN;
    ``frozen_bn=None``: BatchNorm frozen only when weights are given (see ``ResNetBackbone``)."""
    return FPNBackbone(build_backbone(name, weights=backbone_weights, frozen_bn=frozen_bn, levels=3),
                       out_channels)
