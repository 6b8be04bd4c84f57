"""DETR-style transformer layers (post-norm, positional encodings added to queries and keys).

Written out rather than using ``nn.TransformerEncoderLayer`` because the positional encodings go into q/k
only, and because the fusion encoder must be able to keep its attention weights for visualisation.
"""

from __future__ import annotations

import torch
from torch import nn


def _ffn(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Self-attention over all tokens. ``keep_attention``: store head-averaged weights B x L x L."""

    def __init__(self, dim: int, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """x, pos: B x L x C (pos may broadcast); padding_mask: B x L bool, True = ignore -> B x L x C."""
        q = x + pos
        out, weights = self.attn(q, q, x, key_padding_mask=padding_mask, need_weights=self.keep_attention)
        self.attention = weights.detach() if self.keep_attention else None
        x = self.norm1(x + self.drop(out))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the fused tokens, FFN."""

    def __init__(self, dim: int, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, dim_feedforward, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt, query_pos, memory, pos, padding_mask=None):
        """tgt, query_pos: B x N x C; memory, pos: B x L x C; padding_mask: B x L -> B x N x C."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt, need_weights=False)[0]))
        out = self.cross_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=padding_mask,
                              need_weights=False)[0]
        tgt = self.norm2(tgt + self.drop(out))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class InstanceDecoder(nn.Module):
    """N learnable instance queries decode the fused tokens into the instance code.

    forward(memory B x L x C, pos B x L x C, padding_mask) -> codes ``layers x B x N x C`` (the output of
    every layer after a shared LayerNorm; the last one is e_t, the others feed auxiliary losses).
    """

    def __init__(self, dim: int, num_queries: int = 10, num_layers: int = 3, nhead: int = 8,
                 dim_feedforward: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.query_pos = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList([DecoderLayer(dim, nhead, dim_feedforward, dropout)
                                     for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, memory, pos, padding_mask=None) -> torch.Tensor:
        b = memory.shape[0]
        query_pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, pos, padding_mask)
            outs.append(self.norm(tgt))
        return torch.stack(outs)
