"""Losses of CrossVIS: the global balanced embedding loss and the pair-wise MaskTrack-style embedding loss used
by the CondInst-VIS ablation (the masks' Dice is :func:`avis.models.losses.squared_dice_loss`)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from avis.models.losses import zero_loss


def embedding_scale(num_identities: int) -> float:
    """s = sqrt(2) * ln(N - 1): the scale of the L2-normalised embedding for N identities (N >= 3)."""
    return math.sqrt(2) * math.log(max(num_identities, 3) - 1)


class GlobalEmbeddingLoss(nn.Module):
    """Global balanced embedding: one learnable proxy per training identity.

    forward(emb P x E, ids P in [0, N)) -> scalar:
    logits = Linear_N(s * emb / ||emb||), s = sqrt(2) ln(N - 1); sigmoid focal loss (alpha, gamma) against the
    one-hot identity, summed and divided by the number of positives P (max 1).
    The proxies are the rows of the linear layer's weight; its bias starts at the focal prior (choice).
    """

    def __init__(self, embed_dim: int, num_identities: int, alpha: float = 0.25, gamma: float = 2.0,
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_identities, self.alpha, self.gamma = num_identities, alpha, gamma
        self.scale = embedding_scale(num_identities)
        self.proxies = nn.Linear(embed_dim, num_identities)
        nn.init.normal_(self.proxies.weight, std=0.01)
        nn.init.constant_(self.proxies.bias, -math.log((1 - prior_prob) / prior_prob))

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.proxies(F.normalize(emb, dim=1) * self.scale)

    def forward(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if emb.shape[0] == 0:
            return zero_loss(self.parameters(), emb)  # keeps every parameter in the graph
        target = F.one_hot(ids, self.num_identities).to(emb.dtype)
        loss = sigmoid_focal_loss(self.logits(emb), target, self.alpha, self.gamma, reduction="sum")
        return loss / max(emb.shape[0], 1)


def pairwise_embedding_loss(emb: torch.Tensor, ids: torch.Tensor, ref_emb: torch.Tensor,
                            ref_ids: torch.Tensor) -> torch.Tensor:
    """MaskTrack R-CNN's pair-wise identity loss (paper eq. 9-10), used by CondInst-VIS.

    emb P x E (key-frame positives) with identity ids P; ref_emb M x E (one embedding per reference-frame
    instance) with ids ref_ids M -> cross entropy over [new, ref_1..ref_M] with logits [0, emb . ref_m].
    """
    if emb.shape[0] == 0 or ref_emb.shape[0] == 0:  # nothing to tell apart: every key is new
        return zero_loss(emb, ref_emb)
    logits = torch.cat([emb.new_zeros(emb.shape[0], 1), emb @ ref_emb.T], 1)
    match = ids[:, None] == ref_ids[None, :]
    target = torch.where(match.any(1), match.float().argmax(1) + 1, torch.zeros_like(ids))
    return F.cross_entropy(logits, target)


class IdentityMap(nn.Module):
    """Maps training identities (video_id, instance_id) to proxy indices in [0, N), on the fly.

    Identities get the next free index in the order they are first seen; the table is saved in the module's
    state dict (``get_extra_state``), so resumed training keeps its proxies. Under DDP, :meth:`indices`
    gathers every rank's new identities first and assigns them in rank order, so all ranks share one table.
    Past N distinct identities, new ones share proxies by a fixed hash (``(video_id * 1000003 + instance_id)
    mod N``): set N (the config's ``num_identities``) to at least the number of instances in the training set.
    """

    def __init__(self, num_identities: int):
        super().__init__()
        self.num_identities = num_identities
        self.table: dict[tuple[int, int], int] = {}
        self.overflowed = 0

    def _add(self, key: tuple[int, int]) -> None:
        if key in self.table:
            return
        if len(self.table) < self.num_identities:
            self.table[key] = len(self.table)
        else:
            self.overflowed += 1

    def index(self, video_id: int, instance_id: int) -> int:
        key = (int(video_id), int(instance_id))
        self._add(key)
        return self.table.get(key, (key[0] * 1000003 + key[1]) % self.num_identities)

    def indices(self, keys: list[tuple[int, int]]) -> list[int]:
        """Indices of a batch of (video_id, instance_id) keys; a collective call when DDP is running."""
        keys = [(int(v), int(i)) for v, i in keys]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            new = [k for k in dict.fromkeys(keys) if k not in self.table]
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, new)
            for rank_keys in gathered:
                for key in rank_keys:
                    self._add(tuple(key))
        return [self.index(*k) for k in keys]

    def get_extra_state(self) -> torch.Tensor:
        """The table as an int64 M x 3 tensor (video_id, instance_id, index): every state-dict value a tensor."""
        return torch.tensor([(v, i, idx) for (v, i), idx in self.table.items()], dtype=torch.long).reshape(-1, 3)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.table = {(int(v), int(i)): int(idx) for v, i, idx in state.tolist()}
