"""STMask's online association against tracks propagated to the current frame by the temporal fusion module.

s_ij = (cos(e_i, e_j) + 1) / 2 + maskIoU(m_i, m~_j) + 2 boxIoU(b_i, b~_j), detection i, track j (its last
embedding e_j, its box b~_j and mask m~_j propagated to frame t). Detections, in descending detection score,
take the free track with the highest s; a detection whose best s <= ``new_threshold`` (1.4) starts a new
track (choice: greedy one-to-one in score order). A track unmatched in a frame keeps its propagated box and
mask, with its score multiplied by ``decay`` (0.95) per frame, for up to ``memory`` (10) frames; then it
ends. Video score = mean of its frame scores; class = majority vote over matched frames.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torchvision.ops import box_iou

from avis.models.losses import mask_iou

NEW = -1


@dataclass
class STTrack:
    emb: torch.Tensor  # E, last matched detection's embedding
    box: torch.Tensor  # 4, at the last processed frame (detected or propagated)
    coef: torch.Tensor  # k, mask coefficients at the last processed frame
    score: float  # current score (decayed while unmatched)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    missed: int = 0
    track_id: int = -1  # set by the caller when the track is created (stable over the video)

    @property
    def label(self) -> int:
        return Counter(self.labels).most_common(1)[0][0]  # ties: the first seen


def match_scores(emb, boxes, masks, t_emb, t_boxes, t_masks) -> torch.Tensor:
    """Detections (D) against propagated tracks (T) -> D x T scores in [0, 4]."""
    cos = torch.nn.functional.cosine_similarity(emb[:, None], t_emb[None], dim=-1)
    return (cos + 1) / 2 + mask_iou(masks, t_masks) + 2 * box_iou(boxes, t_boxes)


def assign(scores: torch.Tensor, det_scores: torch.Tensor, threshold: float = 1.4) -> list[int]:
    """D x T scores -> per detection the track index it joins, or NEW (best free s <= threshold)."""
    out = [NEW] * scores.shape[0]
    free = torch.ones(scores.shape[1], dtype=torch.bool)
    for i in det_scores.argsort(descending=True).tolist():
        if not free.any():
            continue
        s = scores[i].masked_fill(~free, float("-inf"))
        j = int(s.argmax())
        if float(s[j]) > threshold:
            out[i] = j
            free[j] = False
    return out


def update_tracks(tracks: list[STTrack], ended: list[STTrack], frame: int, det: dict, prop_boxes: torch.Tensor,
                  prop_coefs: torch.Tensor, prop_masks: torch.Tensor, threshold: float = 1.4, memory: int = 10,
                  decay: float = 0.95) -> list[int]:
    """One frame. ``tracks`` (alive) and their propagated boxes / coefficients / masks at this frame (aligned
    with ``tracks``); ``det``: boxes, scores, labels, emb, coef, masks. Updates in place; tracks unmatched
    for more than ``memory`` frames move to ``ended``. Returns the assignment of each detection."""
    if tracks:
        t_emb = torch.stack([t.emb for t in tracks])
        scores = match_scores(det["emb"], det["boxes"], det["masks"], t_emb, prop_boxes, prop_masks)
    else:
        scores = det["boxes"].new_zeros(len(det["boxes"]), 0)
    pairs = assign(scores, det["scores"], threshold)
    matched = set()
    for i, j in enumerate(pairs):
        s = float(det["scores"][i])
        if j == NEW:
            tr = STTrack(det["emb"][i], det["boxes"][i], det["coef"][i], s)
            tracks.append(tr)
        else:
            tr = tracks[j]
            matched.add(j)
            tr.emb, tr.box, tr.coef, tr.score, tr.missed = det["emb"][i], det["boxes"][i], det["coef"][i], s, 0
        tr.labels.append(int(det["labels"][i]))
        tr.scores.append(s)
        tr.masks[frame] = det["masks"][i]
    n_old = scores.shape[1]
    alive = []
    for j, tr in enumerate(tracks):
        if j < n_old and j not in matched:
            tr.missed += 1
            if tr.missed > memory:
                ended.append(tr)
                continue
            tr.box, tr.coef, tr.score = prop_boxes[j], prop_coefs[j], tr.score * decay
            tr.scores.append(tr.score)
            tr.masks[frame] = prop_masks[j]
        alive.append(tr)
    tracks[:] = alive
    return pairs
