"""Input preparation shared by the frame-pair dense detectors (CrossVIS and STMask).

Both normalise uint8 frames with the Caffe-style ImageNet statistics (0..255 scale), pad them to a size
divisibility, and train on a (reference, target) pair of frames per clip whose ground truth they turn into
boxes and stride-4 masks the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import masks_to_boxes

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def register_pixel_stats(module: nn.Module) -> None:
    """Give ``module`` the ``pixel_mean`` / ``pixel_std`` buffers (3 x 1 x 1); non-persistent, so they are
    not in the state dict and follow the module's device."""
    module.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(3, 1, 1), persistent=False)
    module.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(3, 1, 1), persistent=False)


def normalise_and_pad(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      size_divisibility: int) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float N x 3 x Hp x Wp on ``mean``'s device, zero-padded
    right/bottom so that Hp and Wp are multiples of ``size_divisibility``."""
    x = (frames.to(mean.device).float() - mean) / std
    d = size_divisibility
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % d, 0, (-h) % d))


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
