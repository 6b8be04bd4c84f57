"""Input preparation shared by every method: ImageNet normalisation of uint8 frames and padding to a size
divisibility.

Frames arrive as uint8 RGB ``... x 3 x H x W`` (0..255). Every method normalises them with the ImageNet
statistics scaled to 0..255 (the torchvision / detectron2 convention), held in two non-persistent buffers
(``pixel_mean``, ``pixel_std``: not in the state dict, they follow the module's device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_pixel_stats(module: nn.Module) -> None:
    """Give ``module`` the buffers ``pixel_mean`` / ``pixel_std`` (3 x 1 x 1, ImageNet statistics x 255)."""
    module.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255, persistent=False)
    module.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255, persistent=False)


def normalize(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ... x 3 x H x W (0..255) -> float32 (frames - mean) / std on ``mean``'s device."""
    return (frames.to(mean.device, torch.float32) - mean) / std


def pad_to_multiple(x: torch.Tensor, divisibility: int) -> torch.Tensor:
    """... x H x W -> ... x Hp x Wp zero-padded right/bottom, Hp and Wp the next multiples of ``divisibility``."""
    h, w = x.shape[-2:]
    d = divisibility
    return F.pad(x, (0, (-w) % d, 0, (-h) % d))


def normalize_and_pad(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      divisibility: int) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float N x 3 x Hp x Wp; the padding is 0, i.e. the mean colour."""
    return pad_to_multiple(normalize(frames, mean, std), divisibility)
