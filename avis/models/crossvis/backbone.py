"""Backbone + FPN producing P3-P7 for the FCOS/CondInst family.

Stand-in until ``avis.models.backbones`` lands on main: a torchvision ResNet-50 (``weights=None``; an optional
local state-dict file) or a tiny CPU network, both wrapped by torchvision's ``BackboneWithFPN`` with the
``LastLevelP6P7`` extra block, so the output is always five maps P3..P7 at strides 8..128.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

STRIDES = (8, 16, 32, 64, 128)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def tiny_body(width: int = 16) -> nn.Sequential:
    """A 5-stage CPU network: input B x 3 x H x W -> layer2/3/4 at strides 8/16/32 with 2w/4w/4w channels."""
    w = width
    return nn.Sequential(OrderedDict(
        stem=_conv_bn(3, w, 2),
        layer1=nn.Sequential(_conv_bn(w, w, 2), _conv_bn(w, w, 1)),
        layer2=nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1)),
        layer3=nn.Sequential(_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 1)),
        layer4=nn.Sequential(_conv_bn(4 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 1)),
    ))


class FPNBackbone(nn.Module):
    """images B x 3 x H x W (normalised, H and W multiples of 128) -> [P3, P4, P5, P6, P7], each B x C x H/s x W/s."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.strides = STRIDES
        self.net = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, in_channels, out_channels,
                                   extra_blocks=LastLevelP6P7(out_channels, out_channels))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(images).values())


def tiny_fpn(out_channels: int = 32, width: int = 16) -> FPNBackbone:
    return FPNBackbone(tiny_body(width), [2 * width, 4 * width, 4 * width], out_channels)


def resnet50_fpn(out_channels: int = 256, weights_path: str | None = None) -> FPNBackbone:
    """ResNet-50 from random init, or from a local torchvision state dict (nothing is downloaded)."""
    body = resnet50(weights=None)
    if weights_path:
        body.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return FPNBackbone(body, [512, 1024, 2048], out_channels)
