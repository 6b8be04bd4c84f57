"""Mask decoder (FPN fusion of O'_tgt with low-level backbone features -> stride-4 segmentation map S_t)
and the instance heads (class logits, dynamic filters theta, masks = theta^T S)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv3(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(32, cout // 4), cout),
                         nn.ReLU(inplace=True))


class MaskDecoder(nn.Module):
    """Top-down FPN from the fused target tokens to the finest backbone level.

    Args:
        in_channels: channels of the finer backbone levels, fine to coarse (every level but the last).
        dim: C', channels of O'_tgt.
        fpn_dim: channels inside the FPN (C' by default).
        mask_dim: C_o, channels of S_t.

    forward(fused: B x C' x h x w, feats: [B x C_i x H_i x W_i] fine to coarse) -> S: B x C_o x H_0 x W_0.
    """

    def __init__(self, in_channels: list[int], dim: int, fpn_dim: int | None = None, mask_dim: int | None = None):
        super().__init__()
        fpn_dim = fpn_dim or dim
        mask_dim = mask_dim or dim
        self.inp = _conv3(dim, fpn_dim)
        self.lateral = nn.ModuleList([nn.Conv2d(c, fpn_dim, 1) for c in in_channels])
        self.output = nn.ModuleList([_conv3(fpn_dim, fpn_dim) for _ in in_channels])
        self.mask_proj = nn.Conv2d(fpn_dim, mask_dim, 1)

    def forward(self, fused: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.inp(fused)
        for i in range(len(feats) - 1, -1, -1):
            lat = self.lateral[i](feats[i])
            x = self.output[i](lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest"))
        return self.mask_proj(x)


class InstanceHeads(nn.Module):
    """Class head (K classes + no-object) and dynamic mask filters from the instance code.

    forward(code: ... x B x N x C', seg: B x C_o x H x W) -> logits ... x B x N x (K+1),
    mask logits ... x B x N x H x W (M = theta^T S, theta = FC(ReLU(FC(e)))).
    """

    def __init__(self, dim: int, num_classes: int, mask_dim: int | None = None):
        super().__init__()
        mask_dim = mask_dim or dim
        self.cls = nn.Linear(dim, num_classes + 1)
        self.filters = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, mask_dim))

    def forward(self, code: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.filters(code)
        masks = torch.einsum("...bnc,bchw->...bnhw", theta, seg)
        return self.cls(code), masks
