"""Tracklet-level Hungarian matching with empty frames and the EfficientVIS losses.

A ground-truth tracklet is one instance over the T frames of a clip: its label, per-frame masks (all zero in
frames where it is absent: "empty frames"), per-frame boxes and a ``valid`` flag per frame. The cost of
predicting tracklet j with query i sums over the T frames:

    valid frame: -w_cls p_i^t(c_j) + w_l1 |b_i^t - b_j^t|_1 - w_giou GIoU(b_i^t, b_j^t) - w_mask IoU(m_i^t, m_j^t)
    empty frame: -w_cls p_i^t(empty)

(soft mask IoU of sigmoid probabilities; boxes normalised cxcywh). Losses (per clip, normalised by the
number of ground-truth tracklets x T): cross-entropy over every query and frame (empty for unmatched queries
and for the empty frames of matched ones, weight ``empty_weight``), BCE of the masks of matched queries on
every frame (zero target on empty frames), Dice and box L1 + GIoU on the valid frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou, masks_to_boxes

from avis.models.losses import dice_loss, zero_loss


@dataclass
class Tracklets:
    """Ground-truth tracklets of one clip (G of them, T frames; masks at the mask logits' size h x w)."""

    ids: torch.Tensor     # int64 G  (instance ids)
    labels: torch.Tensor  # int64 G
    masks: torch.Tensor   # float G x T x h x w in [0, 1]
    boxes: torch.Tensor   # float G x T x 4 normalised cxcywh (zeros where not valid)
    valid: torch.Tensor   # bool G x T


def build_tracklets(frames: list[dict], size: tuple[int, int], device) -> Tracklets:
    """frames: T per-frame targets (labels n, masks bool n x H x W, instance_ids n) -> tracklets with masks
    area-resized to ``size``; boxes are taken from the full-resolution masks."""
    ids = sorted({int(i) for f in frames for i in f["instance_ids"].tolist()})
    g, t = len(ids), len(frames)
    pos = {k: j for j, k in enumerate(ids)}
    labels = torch.zeros(g, dtype=torch.long)
    masks = torch.zeros(g, t, *size)
    boxes = torch.zeros(g, t, 4)
    valid = torch.zeros(g, t, dtype=torch.bool)
    for ti, f in enumerate(frames):
        m = f["masks"]
        if m.shape[0] == 0:
            continue
        hh, ww = m.shape[-2:]
        area = m.flatten(1).any(1)
        small = F.interpolate(m[None].float(), size=tuple(size), mode="area")[0]
        xyxy = torch.zeros(m.shape[0], 4)
        if area.any():
            xyxy[area] = masks_to_boxes(m[area]).float() + torch.tensor([0.0, 0.0, 1.0, 1.0])
        cxcywh = box_convert(xyxy, "xyxy", "cxcywh") / torch.tensor([ww, hh, ww, hh], dtype=torch.float32)
        for k, (iid, lab) in enumerate(zip(f["instance_ids"].tolist(), f["labels"].tolist())):
            j = pos[int(iid)]
            labels[j] = int(lab)
            if area[k]:
                masks[j, ti] = small[k]
                boxes[j, ti] = cxcywh[k]
                valid[j, ti] = True
    return Tracklets(torch.as_tensor(ids, dtype=torch.long).to(device), labels.to(device), masks.to(device),
                     boxes.to(device), valid.to(device))


def soft_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred: N x T x P probabilities; gt: G x T x P in [0, 1] -> per-frame soft IoU N x G x T."""
    inter = torch.einsum("ntp,gtp->ngt", pred, gt)
    union = pred.sum(-1)[:, None] + gt.sum(-1)[None] - inter
    return inter / union.clamp(min=1e-6)


def _giou_frames(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred: N x T x 4, gt: G x T x 4 (cxcywh) -> GIoU N x G x T."""
    p = box_convert(pred, "cxcywh", "xyxy").transpose(0, 1)  # T N 4
    q = box_convert(gt, "cxcywh", "xyxy").transpose(0, 1)
    # Degenerate (all-zero) boxes of empty frames would give NaN; those entries are masked by the caller.
    q = torch.where((q[..., 2:] > q[..., :2]).all(-1, keepdim=True), q, q.new_tensor([0.0, 0.0, 1.0, 1.0]))
    return torch.stack([generalized_box_iou(p[t], q[t]) for t in range(p.shape[0])], -1)


class TrackletMatcher:
    """Hungarian assignment of queries to ground-truth tracklets with the summed per-frame cost above."""

    def __init__(self, cost_class: float = 2.0, cost_l1: float = 5.0, cost_giou: float = 2.0,
                 cost_mask: float = 2.0):
        self.cost_class, self.cost_l1, self.cost_giou, self.cost_mask = cost_class, cost_l1, cost_giou, cost_mask

    @torch.no_grad()
    def cost(self, logits, boxes, masks, tgt: Tracklets) -> torch.Tensor:
        """logits N x T x (K+1), boxes N x T x 4, mask logits N x T x h x w -> cost N x G."""
        probs = logits.float().softmax(-1)
        valid = tgt.valid.float()[None]  # 1 G T
        p_cls = probs[:, :, tgt.labels].permute(0, 2, 1)  # N G T
        p_empty = probs[:, :, -1][:, None]  # N 1 T
        cls = -(valid * p_cls + (1 - valid) * p_empty)
        l1 = (boxes.float()[:, None] - tgt.boxes[None]).abs().sum(-1)  # N G T
        giou = _giou_frames(boxes.float(), tgt.boxes)
        iou = soft_iou(masks.float().sigmoid().flatten(2), tgt.masks.flatten(2))
        frame = self.cost_class * cls + valid * (self.cost_l1 * l1 - self.cost_giou * giou - self.cost_mask * iou)
        return frame.sum(-1)

    def __call__(self, logits, boxes, masks, tgt: Tracklets, free: torch.Tensor | None = None):
        """-> (query indices, tracklet indices). ``free``: bool N, the queries that may be assigned."""
        if tgt.labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        c = self.cost(logits, boxes, masks, tgt)
        rows_ok = torch.arange(c.shape[0]) if free is None else torch.nonzero(free.cpu()).flatten()
        rows, cols = linear_sum_assignment(c[rows_ok].cpu().numpy())
        return rows_ok[torch.as_tensor(rows, dtype=torch.long)], torch.as_tensor(cols, dtype=torch.long)


class TrackletCriterion(nn.Module):
    """Losses of one set of tracklet predictions given an assignment (weights: class 2, L1 5, GIoU 2,
    Dice 8, BCE 1 by default; ``empty_weight`` for the empty class in the cross-entropy)."""

    def __init__(self, num_classes: int, class_weight: float = 2.0, l1_weight: float = 5.0,
                 giou_weight: float = 2.0, dice_weight: float = 8.0, bce_weight: float = 1.0,
                 empty_weight: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.weights = {"loss_ce": class_weight, "loss_bbox": l1_weight, "loss_giou": giou_weight,
                        "loss_dice": dice_weight, "loss_mask": bce_weight}
        w = torch.ones(num_classes + 1)
        w[-1] = empty_weight
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits, boxes, masks, targets: list[Tracklets], assignments: list[tuple]):
        """logits B x N x T x (K+1), boxes B x N x T x 4, masks B x N x T x h x w; per clip (query idx,
        tracklet idx) -> dict of weighted losses."""
        b, n, t = logits.shape[:3]
        classes = torch.full((b, n, t), self.num_classes, dtype=torch.long, device=logits.device)
        pm, gm, pb, gb, vm = [], [], [], [], []
        for i, ((rows, cols), tgt) in enumerate(zip(assignments, targets)):
            rows, cols = rows.to(logits.device), cols.to(logits.device)
            lab = tgt.labels[cols][:, None].expand(-1, t)
            classes[i, rows] = torch.where(tgt.valid[cols], lab, self.num_classes)
            pm.append(masks[i, rows])
            gm.append(tgt.masks[cols])
            pb.append(boxes[i, rows])
            gb.append(tgt.boxes[cols])
            vm.append(tgt.valid[cols])
        loss_ce = F.cross_entropy(logits.flatten(0, 2).float(), classes.flatten(), self.class_weights)
        pm, gm = torch.cat(pm).float(), torch.cat(gm)  # M T h w
        pb, gb, vm = torch.cat(pb).float(), torch.cat(gb), torch.cat(vm)
        norm = max(pm.shape[0] * t, 1)
        nvalid = max(int(vm.sum()), 1)
        zero = zero_loss(logits)
        if pm.shape[0]:
            loss_mask = F.binary_cross_entropy_with_logits(pm, gm, reduction="none").mean((2, 3)).sum() / norm
            loss_dice = dice_loss(pm[vm].flatten(1).sigmoid(), gm[vm].flatten(1)).sum() / nvalid
            loss_bbox = (pb[vm] - gb[vm]).abs().sum() / nvalid
            p = box_convert(pb[vm], "cxcywh", "xyxy")
            loss_giou = (1 - torch.diag(generalized_box_iou(p, box_convert(gb[vm], "cxcywh", "xyxy")))).sum() / nvalid
        else:
            loss_mask = loss_dice = loss_bbox = loss_giou = zero
        raw = {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice, "loss_bbox": loss_bbox,
               "loss_giou": loss_giou}
        return {k: v * self.weights[k] for k, v in raw.items()}
