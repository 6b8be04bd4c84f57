"""FCOS head shared over P3-P7 with the CondInst controller and the CrossVIS embedding branch."""

from __future__ import annotations

import math

import torch
from torch import nn


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) if channels < 128 else 32, channels)


def tower(channels: int, depth: int = 4) -> nn.Sequential:
    """depth x (conv3x3 + GN + ReLU), channels preserved."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), _gn(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Scale(nn.Module):
    """A learnable scalar per FPN level (FCOS), multiplies the box regression."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class CrossVISHead(nn.Module):
    """Per level P (B x C x h x w) ->
    cls B x K x h x w (logits), box B x 4 x h x w (l,t,r,b distances in pixels, >= 0), ctr B x 1 x h x w
    (logit), params B x P x h x w (dynamic mask-head parameters), emb B x E x h x w (or None).

    The controller sits on the box tower (as in CondInst); the embedding branch has its own tower
    (4 x conv+GN+ReLU) -> 1x1 -> E channels -> BatchNorm.
    """

    def __init__(self, in_channels: int, num_classes: int, num_params: int, num_levels: int = 5,
                 embed_dim: int | None = 256, strides: tuple[int, ...] = (8, 16, 32, 64, 128),
                 prior_prob: float = 0.01):
        super().__init__()
        c = in_channels
        self.strides = strides
        self.cls_tower, self.box_tower = tower(c), tower(c)
        self.cls_logits = nn.Conv2d(c, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(c, 1, 3, padding=1)
        self.controller = nn.Conv2d(c, num_params, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self.embed = None
        if embed_dim:
            self.embed = nn.Sequential(tower(c), nn.Conv2d(c, embed_dim, 1), nn.BatchNorm2d(embed_dim))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list] = {"cls": [], "box": [], "ctr": [], "params": [], "emb": []}
        for level, x in enumerate(feats):
            ct, bt = self.cls_tower(x), self.box_tower(x)
            out["cls"].append(self.cls_logits(ct))
            # FCOS "norm_reg_targets": distances in units of the stride, ReLU, scaled back to pixels
            out["box"].append(torch.relu(self.scales[level](self.bbox_pred(bt))) * self.strides[level])
            out["ctr"].append(self.ctrness(bt))
            out["params"].append(self.controller(bt))
            out["emb"].append(None if self.embed is None else self.embed(x))
        return out
