"""Hungarian matching with the paper's similarity (Eq. 3) and the set loss (Eq. 4)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from avis.models.losses import dice_loss, dice_similarity


class HungarianMatcher:
    """One-to-one assignment of slots to ground truths maximising Dice(m, m_hat) + p_hat(c)."""

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, masks: torch.Tensor, targets: list[dict]) -> list[tuple]:
        """logits: B x N x (K+1); masks: B x N x h x w (logits); targets[b]: {"labels": n, "masks": n x h x w
        float} -> per image (slot indices, gt indices), int64 tensors of equal length min(N, n)."""
        out = []
        probs = logits.softmax(-1)
        for b, tgt in enumerate(targets):
            labels = tgt["labels"]
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.long)
                out.append((empty, empty))
                continue
            sim = dice_similarity(masks[b].flatten(1).sigmoid().float(), tgt["masks"].flatten(1).float())
            sim = sim + probs[b][:, labels].float()
            rows, cols = linear_sum_assignment(sim.cpu().numpy(), maximize=True)
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out


class SetCriterion(nn.Module):
    """loss_ce: cross-entropy over all slots (unmatched -> no-object, weighted ``no_object_weight``);
    loss_dice: Dice loss of the matched masks, averaged over the ground truths of the batch."""

    def __init__(self, num_classes: int, no_object_weight: float = 0.1, class_weight: float = 1.0,
                 dice_weight: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = HungarianMatcher()
        self.class_weight = class_weight
        self.dice_weight = dice_weight
        empty = torch.ones(num_classes + 1)
        empty[-1] = no_object_weight
        self.register_buffer("empty_weight", empty, persistent=False)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """logits: B x N x (K+1); masks: B x N x h x w; targets as for the matcher (masks at h x w)."""
        b, n = logits.shape[:2]
        indices = self.matcher(logits, masks, targets)
        classes = torch.full((b, n), self.num_classes, dtype=torch.long, device=logits.device)
        pred_masks, gt_masks = [], []
        for i, ((rows, cols), tgt) in enumerate(zip(indices, targets)):
            rows, cols = rows.to(logits.device), cols.to(logits.device)
            classes[i, rows] = tgt["labels"][cols]
            pred_masks.append(masks[i, rows])
            gt_masks.append(tgt["masks"][cols])
        loss_ce = F.cross_entropy(logits.flatten(0, 1), classes.flatten(), weight=self.empty_weight)
        num = max(sum(len(r) for r, _ in indices), 1)
        pm = torch.cat(pred_masks).flatten(1).sigmoid()
        gm = torch.cat(gt_masks).flatten(1).to(pm.dtype)
        return {"loss_ce": self.class_weight * loss_ce,
                "loss_dice": self.dice_weight * dice_loss(pm, gm).sum() / num}
