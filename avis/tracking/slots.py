"""Order-preserving slot identities (RCF, Section III-B4).

A slot "fires" in a frame when its best real-class probability reaches ``class_threshold`` and its binarised
mask is not empty. Identity = slot index: a fired slot continues the track its slot last held. Robustness
rule: when the mask of slot i at t has IoU > ``iou_threshold`` with the mask of a slot j fired at t-1, it
takes j's track whatever the order (pairs assigned greedily by decreasing IoU, one track per slot per frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from avis.models.base import Track


@dataclass
class _TrackRecord:
    probs: dict[int, torch.Tensor] = field(default_factory=dict)  # frame -> K real-class probabilities
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # frame -> bool H x W


def _iou(a: torch.Tensor, area_a: torch.Tensor, b: torch.Tensor, area_b: torch.Tensor) -> torch.Tensor:
    """:func:`avis.models.losses.mask_iou` of float 0/1 rows a (n x P) and b (m x P) with their areas given."""
    inter = a @ b.T
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


class SlotTracker:
    """Feed it one frame of slot outputs at a time; :meth:`tracks` gives the video-level result.

    Per track (choices where the paper is silent): category = score-weighted majority of the per-frame
    argmax classes; score = mean over the track's frames of that category's probability.
    """

    def __init__(self, class_threshold: float = 0.4, iou_threshold: float = 0.5):
        self.class_threshold = class_threshold
        self.iou_threshold = iou_threshold
        self._records: list[_TrackRecord] = []
        self._slot_track: dict[int, int] = {}  # slot -> track it last held (one slot per track)
        self._prev_slots: list[int] = []  # slots fired in the previous frame
        # The previous frame's fired masks as float rows and their areas: each frame's fired masks are converted
        # once and serve as this frame's IoU operand and as the next frame's (the conversion of N full-size
        # masks is a large part of a frame's tracking cost).
        self._prev_rows: torch.Tensor | None = None
        self._prev_areas: torch.Tensor | None = None

    def update(self, frame: int, probs: torch.Tensor, masks: torch.Tensor) -> dict[int, int]:
        """probs: N x (K+1) softmax (no-object last); masks: N x H x W bool -> {fired slot: track id}."""
        real = probs[:, :-1]
        best = real.max(-1).values
        confident = torch.nonzero(best >= self.class_threshold).flatten()
        # Masks of the slots that can fire as 0/1 float rows (through uint8: a faster conversion than from
        # bool; counts are exact below 2^24); an empty mask (area 0) does not fire.
        rows = masks[confident].flatten(1).view(torch.uint8).float()
        areas = rows.sum(1)
        keep = areas > 0
        fired = confident[keep].tolist()
        if len(fired) < len(confident):
            rows, areas = rows[keep], areas[keep]
        assigned: dict[int, int] = {}
        used: set[int] = set()
        if fired and self._prev_slots:
            iou = _iou(rows, areas, self._prev_rows, self._prev_areas)
            pairs = torch.nonzero(iou > self.iou_threshold).tolist()
            pairs.sort(key=lambda p: -float(iou[p[0], p[1]]))
            for a, b in pairs:
                slot, tid = fired[a], self._slot_track[self._prev_slots[b]]
                if slot not in assigned and tid not in used:
                    assigned[slot] = tid
                    used.add(tid)
        for slot in fired:
            if slot in assigned:
                continue
            tid = self._slot_track.get(slot)
            if tid is None or tid in used:
                tid = len(self._records)
                self._records.append(_TrackRecord())
            assigned[slot] = tid
            used.add(tid)
        # A track belongs to one slot: forget it in the slot that held it before.
        self._slot_track = {s: t for s, t in self._slot_track.items() if t not in used}
        self._slot_track.update(assigned)
        for slot, tid in assigned.items():
            self._records[tid].probs[frame] = real[slot]
            self._records[tid].masks[frame] = masks[slot]
        self._prev_slots = fired
        self._prev_rows, self._prev_areas = rows, areas
        return assigned

    def tracks(self) -> list[Track]:
        out = []
        for tid, rec in enumerate(self._records):
            probs = torch.stack(list(rec.probs.values()))  # F x K
            best, cls = probs.max(-1)
            votes = torch.zeros(probs.shape[1], dtype=probs.dtype).index_add_(0, cls, best)
            label = int(votes.argmax())
            out.append(Track(label=label, score=float(probs[:, label].mean()), masks=dict(rec.masks), track_id=tid))
        return out
