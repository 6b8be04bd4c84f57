"""FCOS target assignment on the flattened P3-P7 locations."""

from __future__ import annotations

import math

import torch


def level_locations(sizes: list[tuple[int, int]], strides: tuple[int, ...], device=None) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Feature-map sizes [(h, w) per level] -> locations L x 2 (x, y pixel centres, row-major per level,
    levels concatenated) and the level index of each location (L)."""
    locs, levels = [], []
    for level, ((h, w), s) in enumerate(zip(sizes, strides)):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        locs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * s + s // 2)
        levels.append(torch.full((h * w,), level, dtype=torch.long, device=device))
    return torch.cat(locs), torch.cat(levels)


def fcos_targets(locations: torch.Tensor, levels: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, sizes_of_interest: tuple[float, ...], strides: tuple[int, ...],
                 center_radius: float | None = 1.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign each location to at most one ground-truth box (FCOS).

    locations L x 2, levels L, boxes n x 4 (x1, y1, x2, y2), labels n ->
    cls L (label, or ``num_classes`` for background), reg L x 4 (l, t, r, b), gt index L (-1 for background).
    A location is a candidate for a box when it lies inside it (inside the centre region of radius
    ``center_radius`` strides when given), and the box's largest side distance falls in its level's range
    (soi[l-1], soi[l]] (the first from 0, the last to infinity); ties go to the smallest box.
    """
    n_loc = locations.shape[0]
    if boxes.shape[0] == 0:
        return (torch.full((n_loc,), num_classes, dtype=torch.long, device=locations.device),
                locations.new_zeros(n_loc, 4), torch.full((n_loc,), -1, dtype=torch.long, device=locations.device))
    x, y = locations[:, 0:1], locations[:, 1:2]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 2)  # L x n x 4
    if center_radius:
        stride = torch.tensor(strides, dtype=torch.float32, device=locations.device)[levels][:, None] * center_radius
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        x1, y1 = torch.maximum(cx - stride, boxes[:, 0]), torch.maximum(cy - stride, boxes[:, 1])
        x2, y2 = torch.minimum(cx + stride, boxes[:, 2]), torch.minimum(cy + stride, boxes[:, 3])
        inside = torch.stack([x - x1, y - y1, x2 - x, y2 - y], 2).min(2).values > 0
    else:
        inside = ltrb.min(2).values > 0
    bounds = torch.tensor((0.0,) + tuple(sizes_of_interest[:-1]) + (math.inf,), device=locations.device)
    lo, hi = bounds[levels][:, None], bounds[levels + 1][:, None]
    max_reg = ltrb.max(2).values
    ok = inside & (max_reg > lo) & (max_reg <= hi)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(n_loc, -1)
    area = torch.where(ok, area, torch.full_like(area, math.inf))
    min_area, gt = area.min(1)
    gt = torch.where(torch.isinf(min_area), torch.full_like(gt, -1), gt)
    pos = gt >= 0
    cls = torch.where(pos, labels[gt.clamp(min=0)], torch.full_like(gt, num_classes))
    reg = ltrb[torch.arange(n_loc, device=locations.device), gt.clamp(min=0)]
    return cls, reg, gt


def centerness(reg: torch.Tensor) -> torch.Tensor:
    """reg P x 4 (l, t, r, b) -> FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)), P."""
    lr, tb = reg[:, 0::2], reg[:, 1::2]
    return torch.sqrt((lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) *
                      (tb.min(1).values / tb.max(1).values.clamp(min=1e-6)))
