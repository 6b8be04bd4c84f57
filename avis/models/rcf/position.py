"""2-D sine positional encoding (DETR) for flattened feature maps."""

from __future__ import annotations

import math

import torch


def sine_position_encoding(h: int, w: int, dim: int, device=None, dtype=torch.float32,
                           temperature: float = 10000.0) -> torch.Tensor:
    """Encoding of an h x w grid -> (h*w) x dim, row-major like ``x.flatten(2)``.

    Half of the channels encode y, half x, each as interleaved sin/cos of the normalised coordinate.
    """
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + _EPS) * _SCALE
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + _EPS) * _SCALE
    return _encode(y[None], x[None], dim, temperature)[0].to(dtype)


def valid_position_encoding(h: int, w: int, dim: int, valid_hw: torch.Tensor, dtype=torch.float32,
                            temperature: float = 10000.0) -> torch.Tensor:
    """Encodings of B grids of h x w whose top-left ``valid_hw[b]`` = (rows, cols) hold the image and the rest
    padding -> B x (h*w) x dim. Coordinates are normalised over the valid region, as DETR's cumulative sum over
    the unmasked pixels (padded positions repeat the last valid coordinate); with no padding this equals
    :func:`sine_position_encoding`."""
    device = valid_hw.device
    hv, wv = valid_hw[:, 0:1].float(), valid_hw[:, 1:2].float()
    y = torch.minimum(torch.arange(1, h + 1, device=device, dtype=torch.float32)[None], hv) / (hv + _EPS) * _SCALE
    x = torch.minimum(torch.arange(1, w + 1, device=device, dtype=torch.float32)[None], wv) / (wv + _EPS) * _SCALE
    return _encode(y, x, dim, temperature).to(dtype)


_SCALE = 2 * math.pi
_EPS = 1e-6


def _encode(y: torch.Tensor, x: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    """Normalised coordinates y: B x h, x: B x w -> B x (h*w) x dim."""
    if dim % 4:
        raise ValueError(f"positional encoding needs dim divisible by 4, got {dim}")
    npf = dim // 2
    b, h, w = y.shape[0], y.shape[1], x.shape[1]
    i = torch.arange(npf, device=y.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / npf)
    py = y[..., None] / dim_t  # B x h x npf
    px = x[..., None] / dim_t  # B x w x npf
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    pos = torch.cat((py[:, :, None, :].expand(b, h, w, npf), px[:, None, :, :].expand(b, h, w, npf)), dim=3)
    return pos.reshape(b, h * w, dim)


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
