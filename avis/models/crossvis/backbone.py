"""Backbone + FPN producing P3-P7 for the FCOS/CondInst family.

A body maps images to C3, C4, C5 (strides 8, 16, 32); torchvision's ``FeaturePyramidNetwork`` with the
``LastLevelP6P7`` block (P6, P7 from P5) turns them into five maps P3..P7 at strides 8..128.
The ResNet body is the shared :class:`avis.models.backbones.ResNetBackbone` (layer2-4; weights from a local
file only); the tiny body is ours because the shared ``TinyBackbone`` stops at stride 16.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from avis.models.backbones import ResNetBackbone, stage_outputs

STRIDES = (8, 16, 32, 64, 128)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBody(nn.Module):
    """CPU body: B x 3 x H x W -> [B x 2w x H/8 x W/8, B x 4w x H/16 x W/16, B x 4w x H/32 x W/32]."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv_bn(3, w, 2), _conv_bn(w, w, 2), _conv_bn(w, w, 1))
        self.stages = nn.ModuleList(nn.Sequential(_conv_bn(a, b, 2), _conv_bn(b, b, 1))
                                    for a, b in [(w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)])
        self.channels = [2 * w, 4 * w, 4 * w]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_outputs(self.stem, self.stages, x)


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


def tiny_fpn(out_channels: int = 32, width: int = 16) -> FPNBackbone:
    return FPNBackbone(TinyBody(width), out_channels)


def resnet_fpn(name: str = "resnet50", out_channels: int = 256, weights_path: str | None = None,
               frozen_bn: bool | None = None) -> FPNBackbone:
    """torchvision ResNet (random init, or a local torchvision state dict; nothing is downloaded) + FPN.

    ``frozen_bn=None`` freezes BatchNorm only when weights are given: frozen statistics of a random
    initialisation would leave a from-scratch ResNet without normalisation (our choice)."""
    frozen = bool(weights_path) if frozen_bn is None else frozen_bn
    return FPNBackbone(ResNetBackbone(name, weights_path, frozen_bn=frozen, levels=3), out_channels)
