"""The dynamic instance interaction stage (Sparse R-CNN's ``RCNNHead``) with InsPro's heads, and intra-query
attention over the feature bank."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor, weights=(2.0, 2.0, 1.0, 1.0)) -> torch.Tensor:
    """Sparse R-CNN's box update: deltas M x 4 (dx, dy, dw, dh) applied to boxes M x 4 (x1y1x2y2) -> M x 4."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = (deltas[:, 2] / ww).clamp(max=_BBOX_XFORM_CLIP)
    dh = (deltas[:, 3] / wh).clamp(max=_BBOX_XFORM_CLIP)
    pcx, pcy = dx * w + cx, dy * h + cy
    pw, ph = dw.exp() * w, dh.exp() * h
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)


class DynamicConv(nn.Module):
    """Instance interaction: each query generates two 1x1 filters (C -> d -> C) applied to its RoI feature.

    forward(query M x C, roi M x S x C) -> object feature M x C (S = pooler_resolution ** 2).
    """

    def __init__(self, dim: int, dim_dynamic: int, num_points: int):
        super().__init__()
        self.dim, self.dim_dynamic = dim, dim_dynamic
        self.dynamic_layer = nn.Linear(dim, 2 * dim * dim_dynamic)
        self.norm1, self.norm2 = nn.LayerNorm(dim_dynamic), nn.LayerNorm(dim)
        self.out_layer = nn.Linear(dim * num_points, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        params = self.dynamic_layer(query)
        n = self.dim * self.dim_dynamic
        p1 = params[:, :n].view(-1, self.dim, self.dim_dynamic)
        p2 = params[:, n:].view(-1, self.dim_dynamic, self.dim)
        x = F.relu(self.norm1(torch.bmm(roi, p1)))
        x = F.relu(self.norm2(torch.bmm(x, p2)))
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))


def _fc_ln_relu(dim: int, n: int) -> nn.Sequential:
    layers = []
    for _ in range(n):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class InteractionStage(nn.Module):
    """One stage: self-attention over queries, RoIAlign of the proposals, dynamic conv, FFN, heads.

    forward(roi (B*N) x C x r x r, boxes B x N x 4, queries B x N x C) -> dict with ``logits`` B x N x K,
    ``boxes`` B x N x 4 (refined, x1y1x2y2 pixels), ``params`` B x N x P (CondInst filters) and ``queries``
    B x N x C (the object features o).
    """

    def __init__(self, dim: int, num_classes: int, pooler_resolution: int = 7,
                 dim_dynamic: int = 64, num_heads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.0,
                 num_cls_fc: int = 1, num_reg_fc: int = 3, num_mask_params: int = 169,
                 prior_prob: float = 0.01):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.inst_interact = DynamicConv(dim, dim_dynamic, pooler_resolution ** 2)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.cls_module = _fc_ln_relu(dim, num_cls_fc)
        self.reg_module = _fc_ln_relu(dim, num_reg_fc)
        self.class_logits = nn.Linear(dim, num_classes)
        self.bboxes_delta = nn.Linear(dim, 4)
        self.controller = nn.Linear(dim, num_mask_params)
        self._reset(prior_prob)

    def _reset(self, prior_prob: float) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.class_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        # start from the unrefined proposal and from small filters (CondInst inits its controller small)
        nn.init.zeros_(self.bboxes_delta.weight)
        nn.init.zeros_(self.bboxes_delta.bias)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.zeros_(self.controller.bias)

    def forward(self, roi: torch.Tensor, boxes: torch.Tensor, queries: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n, c = queries.shape
        roi = roi.flatten(2).transpose(1, 2)  # (B*N) x r*r x C
        q = self.norm1(queries + self.dropout(self.self_attn(queries, queries, queries, need_weights=False)[0]))
        q = q.reshape(b * n, c)
        q = self.norm2(q + self.dropout(self.inst_interact(q, roi)))
        q = self.norm3(q + self.dropout(self.ffn(q)))
        deltas = self.bboxes_delta(self.reg_module(q))
        new_boxes = apply_deltas(deltas, boxes.reshape(-1, 4))
        return {"logits": self.class_logits(self.cls_module(q)).view(b, n, -1),
                "boxes": new_boxes.view(b, n, 4),
                "params": self.controller(q).view(b, n, -1),
                "queries": q.view(b, n, c)}


class IntraQueryAttention(nn.Module):
    """q_t = sum_n softmax_n(eps(o_{t-n})) o_{t-n} + o_t over a bank of the last T object features (eq. 1).

    ``eps`` is a linear map to one weight per (frame, query) (choice: a scalar per feature; the paper says
    only "a linear transformation"). forward(bank T x B x N x C, last = o_t) -> B x N x C.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.eps = nn.Linear(dim, 1)

    def forward(self, bank: torch.Tensor) -> torch.Tensor:
        w = self.eps(bank).softmax(0)  # T x B x N x 1
        return (w * bank).sum(0) + bank[-1]
