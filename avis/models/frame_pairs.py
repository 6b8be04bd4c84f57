"""Ground truth shared by the frame-pair dense detectors (CrossVIS and STMask): both train on a pair of frames
per clip, whose annotations they turn into boxes and stride-4 masks the same way."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes


def pair_targets(clip_targets: list, sel: list[int], padded_hw: tuple[int, int], device: torch.device,
                 video_ids: list | None = None) -> list[dict]:
    """Ground truth of frames ``sel`` of each clip, clip-major then frame (the order of the images).

    Per image: ``boxes`` n x 4 (x0, y0, x1, y1, far edges exclusive), ``labels`` n, ``masks4`` bool
    n x Hp/4 x Wp/4 (the masks padded to ``padded_hw`` and sampled at stride 4), ``ids`` n, and ``video``
    (the clip's video id) when ``video_ids`` is given. Instances with an empty mask in that frame are dropped.
    """
    hp, wp = padded_hw
    out = []
    for b, frame_targets in enumerate(clip_targets):
        for t in sel:
            tg = frame_targets[t]
            masks = tg["masks"].to(device).bool()
            keep = masks.flatten(1).any(1)
            masks = masks[keep]
            boxes = masks_to_boxes(masks.float()) if len(masks) else masks.new_zeros(0, 4, dtype=torch.float32)
            boxes[:, 2:] += 1  # masks_to_boxes gives the last pixel; the box extends to its far edge
            h, w = masks.shape[-2:]
            masks4 = F.pad(masks, (0, wp - w, 0, hp - h))[:, 2::4, 2::4]
            target = {"boxes": boxes, "labels": tg["labels"].to(device)[keep], "masks4": masks4,
                      "ids": tg["instance_ids"].to(device)[keep]}
            if video_ids is not None:
                target["video"] = int(video_ids[b])
            out.append(target)
    return out
