"""CrossVIS online association (public code): embedding cosine + box IoU, same class only."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

NEW = -1  # detection starts a new track
DROPPED = -2  # detection lost its track to a better-matching detection


def match_scores(det_emb: torch.Tensor, det_boxes: torch.Tensor, det_labels: torch.Tensor,
                 trk_emb: torch.Tensor, trk_boxes: torch.Tensor, trk_labels: torch.Tensor) -> torch.Tensor:
    """D detections x K tracks -> D x K scores: cos(e_det, e_last) + IoU(b_det, b_last) if the classes match,
    else -1. Embeddings D x E / K x E, boxes x1y1x2y2, labels int."""
    if det_emb.shape[0] == 0 or trk_emb.shape[0] == 0:
        return det_emb.new_zeros(det_emb.shape[0], trk_emb.shape[0])
    s = F.normalize(det_emb, dim=1) @ F.normalize(trk_emb, dim=1).T + box_iou(det_boxes, trk_boxes)
    return torch.where(det_labels[:, None] == trk_labels[None, :], s, torch.full_like(s, -1.0))


def assign(scores: torch.Tensor, threshold: float = 0.4) -> list[int]:
    """scores D x K -> per detection a track index, ``NEW`` or ``DROPPED``.

    A detection whose best score is below ``threshold`` (or with no tracks) starts a new track; otherwise it
    claims its best track, and when several claim one track the highest score wins and the others are dropped.
    """
    d, k = scores.shape
    if k == 0:
        return [NEW] * d
    best, track = scores.max(1)
    out = [NEW if b < threshold else int(j) for b, j in zip(best.tolist(), track.tolist())]
    winner: dict[int, int] = {}
    for i, j in enumerate(out):
        if j >= 0 and (j not in winner or best[i] > best[winner[j]]):
            winner[j] = i
    return [j if j < 0 or winner[j] == i else DROPPED for i, j in enumerate(out)]


@dataclass
class TrackState:
    label: int
    emb: torch.Tensor  # last embedding E
    box: torch.Tensor  # last box 4
    scores: list[float] = field(default_factory=list)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)


def update_tracks(tracks: list[TrackState], frame_index: int, emb: torch.Tensor, boxes: torch.Tensor,
                  labels: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor, threshold: float = 0.4) -> list[int]:
    """Associate one frame's D detections with ``tracks`` (in place): matched tracks take the detection's
    embedding, box, score and mask; new tracks are appended. Returns per detection its track index (new
    tracks included) or ``DROPPED``."""
    if tracks:
        trk_emb = torch.stack([t.emb for t in tracks])
        trk_boxes = torch.stack([t.box for t in tracks])
        trk_labels = torch.tensor([t.label for t in tracks], device=labels.device)
    else:
        trk_emb, trk_boxes = emb.new_zeros(0, emb.shape[1]), boxes.new_zeros(0, 4)
        trk_labels = labels.new_zeros(0)
    result = assign(match_scores(emb, boxes, labels, trk_emb, trk_boxes, trk_labels), threshold)
    for i, j in enumerate(result):
        if j == DROPPED:
            continue
        if j == NEW:
            tracks.append(TrackState(label=int(labels[i]), emb=emb[i], box=boxes[i]))
            j = len(tracks) - 1
            result[i] = j
        t = tracks[j]
        t.emb, t.box = emb[i], boxes[i]
        t.scores.append(float(scores[i]))
        t.masks[frame_index] = masks[i]
    return result
