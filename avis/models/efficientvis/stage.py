"""One EfficientVIS iteration: factorised temporal-then-spatial self-attention over tracklet queries,
temporal dynamic convolution (TDC, Eq. 3) on RoI features of t-1, t, t+1, and the light heads.

Shapes (B clips, N tracklet queries, T frames, D channels, S x S RoI bins)::

    queries    B x N x T x D          (one embedding per frame of each tracklet)
    boxes      B x N x T x 4          (tracklet proposals, normalised cx, cy, w, h)
    features   (B*T) x D x h x w      (the fused base feature of every frame, stride ``stride``)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_convert, roi_align


class FactorisedSelfAttention(nn.Module):
    """Self-attention over time within each query (T tokens), then over queries within each frame (N tokens);
    each with a residual connection and LayerNorm."""

    def __init__(self, dim: int, nhead: int = 8, dropout: float = 0.0):
        super().__init__()
        self.time_attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.space_attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.norm_t = nn.LayerNorm(dim)
        self.norm_s = nn.LayerNorm(dim)

    def temporal(self, q: torch.Tensor) -> torch.Tensor:
        """q: B x N x T x D -> same; tokens of one query attend to each other over time."""
        b, n, t, d = q.shape
        x = q.reshape(b * n, t, d)
        x = self.norm_t(x + self.time_attn(x, x, x, need_weights=False)[0])
        return x.reshape(b, n, t, d)

    def spatial(self, q: torch.Tensor) -> torch.Tensor:
        """q: B x N x T x D -> same; the N queries of one frame attend to each other."""
        b, n, t, d = q.shape
        x = q.transpose(1, 2).reshape(b * t, n, d)
        x = self.norm_s(x + self.space_attn(x, x, x, need_weights=False)[0])
        return x.reshape(b, t, n, d).transpose(1, 2)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.temporal(q))


class TemporalDynamicConv(nn.Module):
    """TDC: the dynamic filter of query i at frame t (two 1x1 layers D -> d -> D generated from q_i^t, as the
    dynamic instance interaction of Sparse R-CNN) is applied to the RoI features of frames t-1, t, t+1; the
    three outputs are mixed per RoI bin with weights ``softmax_t'(cos(y_{t,t'}, y_{t,t}))`` (they sum to 1
    over the frames that exist: at a clip's first / last frame only two), then flattened to a D vector."""

    def __init__(self, dim: int, dynamic_dim: int = 64, pool_size: int = 7):
        super().__init__()
        self.dim, self.dynamic_dim = dim, dynamic_dim
        self.params = nn.Linear(dim, 2 * dim * dynamic_dim)
        self.norm1 = nn.LayerNorm(dynamic_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.out = nn.Linear(dim * pool_size * pool_size, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.last_weights: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """q: B x N x T x D; rois: B x N x T x S² x D -> tracklet feature B x N x T x D. The mixing weights
        (B x N x T x 3 x S², order t-1, t, t+1) are kept in ``last_weights``."""
        b, n, t, d = q.shape
        params = self.params(q)
        w1 = params[..., : d * self.dynamic_dim].reshape(b, n, t, d, self.dynamic_dim)
        w2 = params[..., d * self.dynamic_dim:].reshape(b, n, t, self.dynamic_dim, d)
        # Neighbours in time, edge-replicated; the missing ones get weight 0 below.
        prev = torch.cat([rois[:, :, :1], rois[:, :, :-1]], 2)
        nxt = torch.cat([rois[:, :, 1:], rois[:, :, -1:]], 2)
        x = torch.stack([prev, rois, nxt], 3)  # B N T 3 S² D
        y = F.relu(self.norm1(x @ w1[:, :, :, None]))
        y = F.relu(self.norm2(y @ w2[:, :, :, None]))
        sim = F.cosine_similarity(y, y[:, :, :, 1:2], dim=-1)  # B N T 3 S²
        exists = torch.ones(t, 3, dtype=torch.bool, device=q.device)
        exists[0, 0] = False
        exists[-1, 2] = False
        if t == 1:
            exists[0] = torch.tensor([False, True, False], device=q.device)
        sim = sim.masked_fill(~exists[None, None, :, :, None], float("-inf"))
        a = sim.softmax(3)
        self.last_weights = a.detach()
        o = (a.unsqueeze(-1) * y).sum(3)  # B N T S² D
        return F.relu(self.norm3(self.out(o.flatten(3))))


class MLP(nn.Sequential):
    def __init__(self, cin: int, hidden: int, cout: int, layers: int):
        mods = []
        for i in range(layers):
            mods.append(nn.Linear(cin if i == 0 else hidden, cout if i == layers - 1 else hidden))
            if i < layers - 1:
                mods.append(nn.ReLU(inplace=True))
        super().__init__(*mods)


def pool_rois(features: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], pool_size: int,
              stride: int) -> torch.Tensor:
    """features: (B*T) x D x h x w; boxes: B x N x T x 4 normalised cxcywh; size: (H, W) of the frames ->
    RoI features B x N x T x S² x D."""
    b, n, t, _ = boxes.shape
    h, w = size
    scale = boxes.new_tensor([w, h, w, h])
    xyxy = box_convert(boxes * scale, "cxcywh", "xyxy").transpose(1, 2).reshape(b * t * n, 4)
    idx = torch.arange(b * t, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
    rois = roi_align(features, torch.cat([idx[:, None], xyxy], 1), pool_size, 1.0 / stride, 2, aligned=True)
    d = features.shape[1]
    return rois.reshape(b, t, n, d, pool_size * pool_size).permute(0, 2, 1, 4, 3)


def apply_deltas(boxes: torch.Tensor, deltas: torch.Tensor, clamp: float = 4.0) -> torch.Tensor:
    """boxes: ... x 4 normalised cxcywh; deltas: ... x 4 (dx, dy relative to w, h; log dw, dh)."""
    cx = boxes[..., 0] + deltas[..., 0] * boxes[..., 2]
    cy = boxes[..., 1] + deltas[..., 1] * boxes[..., 3]
    bw = boxes[..., 2] * deltas[..., 2].clamp(max=clamp).exp()
    bh = boxes[..., 3] * deltas[..., 3].clamp(max=clamp).exp()
    return torch.stack([cx, cy, bw.clamp(1e-4, 2.0), bh.clamp(1e-4, 2.0)], -1)


class Stage(nn.Module):
    """Factorised self-attention -> TDC -> FFN -> heads (class incl. empty, box deltas, mask embedding)."""

    def __init__(self, dim: int, num_classes: int, nhead: int = 8, dim_feedforward: int = 2048,
                 dynamic_dim: int = 64, pool_size: int = 7, mask_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.pool_size = pool_size
        self.attn = FactorisedSelfAttention(dim, nhead, dropout)
        self.tdc = TemporalDynamicConv(dim, dynamic_dim, pool_size)
        self.norm_tdc = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(inplace=True),
                                 nn.Linear(dim_feedforward, dim))
        self.norm_ffn = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, num_classes + 1)
        self.box = MLP(dim, dim, 4, 3)
        self.mask = MLP(dim, dim, mask_dim, 3)
        nn.init.zeros_(self.box[-1].weight)
        nn.init.zeros_(self.box[-1].bias)

    def forward(self, q, boxes, features, size, stride):
        """-> queries B x N x T x D, boxes B x N x T x 4 (cxcywh), class logits B x N x T x (K+1),
        mask embeddings B x N x T x mask_dim."""
        q = self.attn(q)
        rois = pool_rois(features, boxes.detach(), size, self.pool_size, stride)
        q = self.norm_tdc(q + self.tdc(q, rois))
        q = self.norm_ffn(q + self.ffn(q))
        boxes = apply_deltas(boxes.detach(), self.box(q))
        return q, boxes, self.cls(q), self.mask(q)
