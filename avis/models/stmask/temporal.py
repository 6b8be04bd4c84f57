"""STMask's temporal fusion module: correlation of P4(t-1) and P4(t), RoIAlign at boxes of t-1, a small conv
net and two FC layers -> box shift (SSD deltas relative to the t-1 box) and mask-coefficient shift."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from .anchors import decode


def correlation(f1: torch.Tensor, f2: torch.Tensor, patch: int = 11) -> torch.Tensor:
    """N x C x h x w pair -> N x patch^2 x h x w: out[:, (dy+r)*patch + (dx+r), y, x] = mean_c f1[c, y, x]
    f2[c, y+dy, x+dx], r = patch // 2, zero outside f2 (FlowNet-style, stride 1, kernel 1)."""
    r = patch // 2
    h, w = f1.shape[-2:]
    f2p = F.pad(f2, (r, r, r, r))
    return torch.stack([(f1 * f2p[:, :, dy:dy + h, dx:dx + w]).mean(1)
                        for dy in range(patch) for dx in range(patch)], 1)


class TemporalFusion(nn.Module):
    """forward(p4_prev, p4_cur N x C x h x w, boxes list (N) of B_n x 4 at t-1, input pixels) ->
    (box deltas R x 4, coefficient shifts R x k); :meth:`propagate` decodes the boxes.

    Input of the RoI net: [correlation (patch^2), P4(t-1), P4(t)] channels; RoIAlign 7x7 at stride 16; convs
    ``channels`` (paper 512, 512, 1024) + ReLU, global average pool, FC -> 4 and FC -> k. Both FC layers start
    at zero, so an untrained module propagates boxes and coefficients unchanged (choice)."""

    def __init__(self, in_channels: int, num_protos: int = 32, patch: int = 11,
                 channels: tuple[int, ...] = (512, 512, 1024), stride: int = 16, pool: int = 7):
        super().__init__()
        self.patch, self.stride, self.pool = patch, stride, pool
        layers, cin = [], patch * patch + 2 * in_channels
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
            cin = c
        self.convs = nn.Sequential(*layers)
        self.box_fc = nn.Linear(cin, 4)
        self.coef_fc = nn.Linear(cin, num_protos)
        for fc in (self.box_fc, self.coef_fc):
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, p4_prev: torch.Tensor, p4_cur: torch.Tensor, boxes: list[torch.Tensor]):
        # float32 for RoIAlign: box coordinates in bf16 (under autocast) would be off by pixels
        x = torch.cat([correlation(p4_prev, p4_cur, self.patch), p4_prev, p4_cur], 1).float()
        rois = roi_align(x, [b.float() for b in boxes], self.pool, 1.0 / self.stride, sampling_ratio=2,
                         aligned=True)
        h = self.convs(rois).mean((2, 3))
        return self.box_fc(h), self.coef_fc(h)

    def propagate(self, p4_prev, p4_cur, boxes: list[torch.Tensor], coefs: torch.Tensor):
        """-> boxes at t (R x 4, decoded with the t-1 boxes as anchors), coefficients at t (R x k)."""
        deltas, shift = self(p4_prev, p4_cur, boxes)
        return decode(deltas.float(), torch.cat(boxes).float()), coefs.float() + shift.float()
