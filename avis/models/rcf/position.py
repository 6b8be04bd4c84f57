"""2-D sine positional encoding (DETR) for flattened feature maps."""

from __future__ import annotations

import math

import torch


def sine_position_encoding(h: int, w: int, dim: int, device=None, dtype=torch.float32,
                           temperature: float = 10000.0) -> torch.Tensor:
    """Encoding of an h x w grid -> (h*w) x dim, row-major like ``x.flatten(2)``.

    Half of the channels encode y, half x, each as interleaved sin/cos of the normalised coordinate.
    """
    if dim % 4:
        raise ValueError(f"positional encoding needs dim divisible by 4, got {dim}")
    npf = dim // 2
    scale = 2 * math.pi
    eps = 1e-6
    y = (torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + eps) * scale)
    x = (torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + eps) * scale)
    i = torch.arange(npf, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / npf)
    py = y[:, None] / dim_t  # h x npf
    px = x[:, None] / dim_t  # w x npf
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((py[:, None, :].expand(h, w, npf), px[None, :, :].expand(h, w, npf)), dim=2)
    return pos.reshape(h * w, dim).to(dtype)


class PositionCache:
    """Memoises encodings per (h, w, dim, device, dtype): online inference asks for the same grid each frame."""

    def __init__(self):
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
        key = (h, w, dim, str(device), dtype)
        pos = self._cache.get(key)
        if pos is None:
            pos = self._cache[key] = sine_position_encoding(h, w, dim, device, dtype)
        return pos
