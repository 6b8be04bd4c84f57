"""Temporally consistent matching, the matching cost and the box de-duplication loss of InsPro.

Boxes are ``x1, y1, x2, y2`` in pixels throughout.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou, generalized_box_iou

from avis.models.losses import zero_loss


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor,
               image_size: tuple[int, int], w_cls: float = 2.0, w_l1: float = 5.0, w_giou: float = 2.0,
               alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sparse R-CNN's cost: logits N x K, boxes N x 4, labels n, gt_boxes n x 4 -> cost N x n.

    Class: focal cost (positive minus negative focal term of the label's probability); L1 on boxes divided by
    the image size (W, H, W, H); GIoU: minus the generalised IoU.
    """
    if labels.numel() == 0:
        return logits.new_zeros(logits.shape[0], 0)
    prob = logits.sigmoid()[:, labels]
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    h, w = image_size
    scale = boxes.new_tensor([w, h, w, h])
    l1 = torch.cdist(boxes / scale, gt_boxes / scale, p=1)
    giou = generalized_box_iou(boxes, gt_boxes)
    return w_cls * (pos - neg) + w_l1 * l1 - w_giou * giou


def temporally_consistent_matching(costs: list[torch.Tensor], instance_ids: list[torch.Tensor],
                                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One clip's assignment of ground-truth objects to query slots, kept over time (paper section 3.3).

    costs[t]: N x n_t matching cost of the N slots against the n_t objects of frame t; instance_ids[t]: n_t ids.
    Frame 0: Hungarian over all slots. Later frames: an object seen before keeps its slot; new objects are
    matched (Hungarian on their columns) among the *free* slots, i.e. slots never assigned in this clip, so
    the slot of an object that vanished stays reserved for it. Objects beyond the free slots stay unmatched.
    Returns per frame ``(slots, gt_index)`` (int64, equal length): slot ``slots[j]`` predicts object
    ``gt_index[j]`` of that frame.
    """
    slot_of: dict[int, int] = {}
    out = []
    for cost, ids in zip(costs, instance_ids):
        n_slots = cost.shape[0]
        ids_l = [int(i) for i in ids.tolist()]
        slots, gts, new = [], [], []
        for j, iid in enumerate(ids_l):
            if iid in slot_of:
                slots.append(slot_of[iid])
                gts.append(j)
            else:
                new.append(j)
        if new:
            used = set(slot_of.values())
            free = [s for s in range(n_slots) if s not in used]
            if free:
                sub = cost.detach()[free][:, new].float().cpu().numpy()
                rows, cols = linear_sum_assignment(sub)
                for r, c in zip(rows, cols):
                    slot_of[ids_l[new[c]]] = free[r]
                    slots.append(free[r])
                    gts.append(new[c])
        out.append((torch.as_tensor(slots, dtype=torch.int64), torch.as_tensor(gts, dtype=torch.int64)))
    return out


def dedup_loss(pred_boxes: torch.Tensor, matched: torch.Tensor, gt_boxes: torch.Tensor, k: int = 5,
               beta: float = 0.1) -> torch.Tensor:
    """Box de-duplication loss (paper eq. 4), summed over the ground-truth boxes (the caller normalises).

    pred_boxes N x 4 (one frame), matched: bool N (slots matched to an object in this frame), gt_boxes n x 4.
    For each ground-truth box b: the k unmatched predicted boxes with the highest IoU with b, and
    mean_i max(beta - centre_dist(b, b_i)^2 / diag(b)^2, 0).
    """
    neg = pred_boxes[~matched]
    if gt_boxes.shape[0] == 0 or neg.shape[0] == 0:
        return zero_loss(pred_boxes)
    kk = min(k, neg.shape[0])
    iou = box_iou(gt_boxes, neg.detach())  # n x M; selection only, no gradient through it
    idx = iou.topk(kk, dim=1).indices  # n x kk
    sel = neg[idx]  # n x kk x 4
    c_gt = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    c_neg = (sel[..., :2] + sel[..., 2:]) / 2
    dist2 = ((c_neg - c_gt[:, None]) ** 2).sum(-1)
    diag2 = ((gt_boxes[:, 2:] - gt_boxes[:, :2]) ** 2).sum(-1).clamp(min=1e-6)
    return (beta - dist2 / diag2[:, None]).clamp(min=0).mean(1).sum()
