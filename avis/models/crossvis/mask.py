"""CondInst mask generation: the shared mask branch, relative coordinates and the dynamic mask head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avis.models.losses import zero_loss


class MaskBranch(nn.Module):
    """[P3, P4, P5] (B x C x h_l x w_l) -> mask features B x out x h3 x w3 (stride 8).

    Each level: conv3x3 + BN + ReLU to ``channels``; upsampled to P3 and summed; 4 x (conv3x3 + BN + ReLU);
    1x1 to ``out_channels``.
    """

    def __init__(self, in_channels: int, channels: int = 128, out_channels: int = 8, num_levels: int = 3):
        super().__init__()

        def cbr(cin: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                 nn.ReLU(inplace=True))

        self.refine = nn.ModuleList(cbr(in_channels) for _ in range(num_levels))
        self.tower = nn.Sequential(*[cbr(channels) for _ in range(4)], nn.Conv2d(channels, out_channels, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.refine[0](feats[0])
        for level in range(1, len(self.refine)):
            y = self.refine[level](feats[level])
            x = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.tower(x)


def relative_coords(locations: torch.Tensor, soi: torch.Tensor, height: int, width: int,
                    stride: int = 8) -> torch.Tensor:
    """Relative coordinates of every mask-feature pixel to each instance location (CondInst).

    locations: P x 2 (x, y) image pixels; soi: P (size of interest of each location's FPN level)
    -> P x 2 x height x width, channel 0 = (x_loc - x_pix) / soi, channel 1 = (y_loc - y_pix) / soi, where
    (x_pix, y_pix) = (j * stride + stride // 2, i * stride + stride // 2) is the centre of mask pixel (i, j).
    """
    dev = locations.device
    ys = torch.arange(height, device=dev, dtype=torch.float32) * stride + stride // 2
    xs = torch.arange(width, device=dev, dtype=torch.float32) * stride + stride // 2
    rx = (locations[:, 0, None, None] - xs[None, None, :]).expand(-1, height, -1)
    ry = (locations[:, 1, None, None] - ys[None, :, None]).expand(-1, -1, width)
    return torch.stack([rx, ry], 1) / soi.float()[:, None, None, None]


class DynamicMaskHead(nn.Module):
    """Three 1x1 convs whose weights are generated per instance: (in_channels + 2) -> 8 -> 8 -> 1.

    With 8 mask channels: 10*8 + 8*8 + 8*1 weights + 8 + 8 + 1 biases = 169 parameters.
    forward(x P x (C+2) x h x w, params P x num_params) -> mask logits P x h x w.
    Implemented as one grouped convolution per layer (groups = P).
    """

    def __init__(self, in_channels: int = 8, channels: int = 8, num_layers: int = 3):
        super().__init__()
        dims = [in_channels + 2] + [channels] * (num_layers - 1) + [1]
        self.layer_dims = list(zip(dims[:-1], dims[1:]))
        self.num_params = sum(a * b + b for a, b in self.layer_dims)

    def split_params(self, params: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """P x num_params -> per layer weights (P*out) x in x 1 x 1 and biases (P*out); weights first, then biases."""
        n = params.shape[0]
        sizes = [a * b for a, b in self.layer_dims] + [b for _, b in self.layer_dims]
        chunks = torch.split(params, sizes, dim=1)
        k = len(self.layer_dims)
        weights = [w.reshape(n * b, a, 1, 1) for w, (a, b) in zip(chunks[:k], self.layer_dims)]
        biases = [b.reshape(-1) for b in chunks[k:]]
        return weights, biases

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        weights, biases = self.split_params(params)
        x = x.reshape(1, -1, h, w)
        for i, (wt, b) in enumerate(zip(weights, biases)):
            x = F.conv2d(x, wt, b, groups=n)
            if i < len(weights) - 1:
                x = F.relu(x)
        return x.reshape(n, h, w)


def mask_logits(head: DynamicMaskHead, mask_feats: torch.Tensor, params: torch.Tensor, locations: torch.Tensor,
                soi: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Masks of P instances at stride stride/2.

    mask_feats P x C x h x w (the features each filter is applied to, one row per instance), params P x 169,
    locations P x 2 and soi P (where the relative coordinates are centred) -> logits P x 2h x 2w.
    """
    if params.shape[0] == 0:
        h, w = mask_feats.shape[-2:]
        # keep the graph connected (DDP without find_unused_parameters needs a gradient for every parameter)
        return mask_feats.new_zeros(0, 2 * h, 2 * w) + zero_loss(mask_feats, params)
    rel = relative_coords(locations, soi, *mask_feats.shape[-2:], stride=stride)
    logits = head(torch.cat([mask_feats, rel.to(mask_feats.dtype)], 1), params)
    # align_corners=False keeps pixel centres aligned: stride-4 pixel k sits at 4k + 2, as in the targets
    return F.interpolate(logits[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
