"""Anchors of STMask's feature calibration for anchors (FCA) and SSD box coding.

Each location of level l (stride s_l, scale S_l) carries one anchor per predictor kernel: 3x3 -> 1:1,
3x5 (wide) -> w/h = 5/3, 5x3 (tall) -> w/h = 3/5, with w = S sqrt(r), h = S / sqrt(r), so that the
anchor's shape follows the kernel's receptive field. Flat order: level, then row-major location, then anchor.
"""

from __future__ import annotations

import math

import torch

KERNELS = ((3, 3), (3, 5), (5, 3))  # (kh, kw) of the three predictors
RATIOS = (1.0, 5 / 3, 3 / 5)  # w / h of the matching anchors
SCALES = (24, 48, 96, 192, 384)  # P3..P7
VARIANCES = (0.1, 0.2)


def make_anchors(sizes: list[tuple[int, int]], strides, scales=SCALES, ratios=RATIOS, device=None) -> torch.Tensor:
    """Level sizes [(h_l, w_l)] -> anchors A x 4 (x1, y1, x2, y2), A = sum h_l w_l len(ratios)."""
    out = []
    for (h, w), s, scale in zip(sizes, strides, scales):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        cx, cy = ((xs + 0.5) * s).reshape(-1, 1), ((ys + 0.5) * s).reshape(-1, 1)
        aw = torch.tensor([scale * math.sqrt(r) for r in ratios], device=device)
        ah = torch.tensor([scale / math.sqrt(r) for r in ratios], device=device)
        out.append(torch.stack([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2], -1).reshape(-1, 4))
    return torch.cat(out)


def _cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


def encode(boxes: torch.Tensor, anchors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """x1y1x2y2 boxes and anchors ... x 4 -> SSD deltas ((c - c_a) / (v0 w_a), log(wh / wh_a) / v1)."""
    b, a = _cxcywh(boxes), _cxcywh(anchors)
    return torch.cat([(b[..., :2] - a[..., :2]) / (variances[0] * a[..., 2:]),
                      torch.log(b[..., 2:].clamp(min=1e-6) / a[..., 2:]) / variances[1]], -1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """Inverse of :func:`encode` (log-size deltas clamped at log(1000 / 16) as in torchvision)."""
    a = _cxcywh(anchors)
    c = a[..., :2] + deltas[..., :2] * variances[0] * a[..., 2:]
    wh = a[..., 2:] * torch.exp((deltas[..., 2:] * variances[1]).clamp(max=math.log(1000 / 16)))
    return torch.cat([c - wh / 2, c + wh / 2], -1)
