"""Mask decoder (FPN fusion of O'_tgt with low-level backbone features -> stride-4 segmentation map S_t)
and the instance heads (class logits, dynamic filters theta, masks = theta^T S)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_WINOGRAD_MIN_PIXELS = 512  # measured: NNPACK ~1x oneDNN at 12 x 20, 1.4x at 23 x 40, 2.1-2.4x at 45 x 80 and up


def _winograd_ok(x: torch.Tensor) -> bool:
    """Whether :func:`_conv3x3` can take NNPACK's Winograd path: float32 on the CPU, outside autocast.
    ``torch._nnpack_available()`` also initialises NNPACK, without which its convolution fails."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and torch._nnpack_available())


def _conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a 3 x 3, stride 1, padding 1 conv on a contiguous NCHW float32 CPU tensor.

    On the CPU with one thread oneDNN's direct 3 x 3 conv runs near the GEMM peak, so the stride-4 conv of the
    mask decoder costs as much as a tenth of a ResNet-50; NNPACK's Winograd transform does the same conv with
    about 2.2x fewer operations (docs/performance.md), agreeing with the direct conv to ~1e-5 relative (the
    Winograd transform's float32 rounding). Anything NNPACK does not take goes to ``conv``, and so do small maps
    (below ``_WINOGRAD_MIN_PIXELS``), where the transforms cost as much as they save (the 12 x 20 stride-32 map
    of a 640 x 360 frame).
    """
    if x.shape[-2] * x.shape[-1] >= _WINOGRAD_MIN_PIXELS and _winograd_ok(x) and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.groups == 1 \
            and conv.dilation == (1, 1):
        return torch._nnpack_spatial_convolution(x.contiguous(), conv.weight.contiguous(), conv.bias, [1, 1])
    return conv(x)


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

    def forward_unprojected(self, fused: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """The online CPU path of :meth:`forward` for one image (B = 1), without the final ``mask_proj``:
        -> B x fpn_dim x H_0 x W_0, for :meth:`InstanceHeads.forward_folded` (which folds ``mask_proj`` into
        the dynamic filters). Same values as :meth:`forward` up to float32 rounding (see :func:`_conv3x3`).

        Every tensor it makes is contiguous NCHW, whatever the backbone's memory format: the lateral 1 x 1
        conv is one GEMM that reads channels-last features as a transposed operand and writes NCHW, and adds
        the upsampled coarser level in the same call (GEMM ``beta = 1``), its bias moved onto the coarse map
        before the nearest upsampling (which only repeats values, so the sums are the same).
        """
        if fused.shape[0] != 1:
            raise ValueError(f"forward_unprojected takes one image, got a batch of {fused.shape[0]}")
        conv, norm, act = self.inp
        x = act(norm(_conv3x3(fused.contiguous(), conv)))
        for i in range(len(feats) - 1, -1, -1):
            f, lat = feats[i], self.lateral[i]
            c, h, w = f.shape[1:]
            d = lat.out_channels
            up = F.interpolate(x + lat.bias.view(1, d, 1, 1), size=(h, w), mode="nearest").reshape(d, h * w)
            if f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous():
                rows = f.permute(0, 2, 3, 1).reshape(h * w, c).t()  # C x hw, a transposed view (no copy)
            else:
                rows = f.reshape(c, h * w)
            s = torch.addmm(up, lat.weight.view(d, c), rows).view(1, d, h, w)
            conv, norm, act = self.output[i]
            x = act(norm(_conv3x3(s, conv)))
        return x


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

    def forward_folded(self, code: torch.Tensor, x: torch.Tensor, proj: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on ``seg = proj(x)`` (proj: the mask decoder's 1 x 1 ``mask_proj``) without computing
        seg: theta^T (W x + b) = (W^T theta)^T x + theta^T b, so the 1 x 1 conv over every pixel of the
        stride-4 map becomes a product of the N filters with W (N x C_o x C_o). code: ... x 1 x N x C';
        x: 1 x C x H x W -> as :meth:`forward` (B = 1)."""
        theta = self.filters(code)
        weight = proj.weight.view(proj.out_channels, -1)
        c, h, w = x.shape[1:]
        masks = torch.addmm((theta @ proj.bias).reshape(-1, 1), (theta @ weight).reshape(-1, c), x.reshape(c, h * w))
        return self.cls(code), masks.view(*theta.shape[:-1], h, w)
