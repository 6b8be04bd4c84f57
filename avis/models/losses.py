"""Mask losses and overlaps shared by the methods: Dice (smoothed, and CondInst's squared form), binary mask
IoU, and the zero loss that keeps unused outputs in the autograd graph.

Masks are flattened to ``M x P`` (M masks of P pixels) unless said otherwise; predictions are probabilities
(after the sigmoid), targets are in [0, 1] (soft targets allowed).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def dice_similarity(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Smoothed Dice coefficient of every pair: pred N x P, gt M x P -> N x M,
    (2 sum(p g) + 1) / (sum p + sum g + 1)."""
    inter = pred @ gt.T
    return (2 * inter + 1) / (pred.sum(-1)[:, None] + gt.sum(-1)[None, :] + 1)


def dice_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Smoothed Dice loss of aligned rows: pred, gt M x P -> M, 1 - (2 sum(p g) + 1) / (sum p + sum g + 1)
    (DETR / RCF / EfficientVIS)."""
    inter = (pred * gt).sum(-1)
    return 1 - (2 * inter + 1) / (pred.sum(-1) + gt.sum(-1) + 1)


def squared_dice_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """CondInst's Dice (squares in the denominator): probs, targets P x h x w -> scalar, the mean over P of
    1 - 2 sum(p g) / (sum p^2 + sum g^2 + eps), in float32; 0 (in the graph) when P = 0."""
    if probs.shape[0] == 0:
        return zero_loss(probs)
    p = probs.flatten(1).float()
    g = targets.flatten(1).float()
    return (1 - 2 * (p * g).sum(1) / ((p * p).sum(1) + (g * g).sum(1) + eps)).mean()


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of binary masks: a n x H x W, b m x H x W (bool) -> n x m float (0 for two empties)."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def zero_loss(*tensors: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """A scalar 0 that depends on every given tensor (or iterable of tensors, e.g. ``module.parameters()``).

    Added to a loss where a batch leaves some outputs unused (no positives, no pairs), it gives their
    parameters a zero gradient: DDP without ``find_unused_parameters`` needs a gradient for every parameter.
    """
    total = 0
    for t in tensors:
        for x in ([t] if torch.is_tensor(t) else t):
            total = total + x.sum()
    return total * 0
