"""Drawing for the synthetic dataset: shapes with textures on a static background, painter's order.

Masks are hard (no anti-aliasing) so that an annotation is exactly the set of pixels the object painted:
an object's visible mask is where the id map (the front-most object per pixel) names it.
Everything is vectorised over the T frames of a clip: one (T, H, W) evaluation per object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("disc", "square", "triangle", "hexagon", "ring", "bar")  # the last two: silent distractors
TEXTURES = ("solid", "stripes", "checks")
TEXTURE_CELL = 0.3  # width of a stripe / check, in units of the object's size (so textures scale with it)
DARK = 0.45  # the texture's second colour is the base colour times this


@dataclass
class Drawable:
    """One moving shape over T frames. ``size`` is the radius in pixels; ``angle`` in radians."""

    shape: str
    color: tuple[int, int, int]
    texture: str
    cx: np.ndarray  # (T,)
    cy: np.ndarray  # (T,)
    size: np.ndarray  # (T,)
    angle: np.ndarray  # (T,)


def _local(d: Drawable, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the object's frame, in units of its size: (T, H, W) each."""
    ys = np.arange(height, dtype=np.float32)[None, :, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, None, :] + 0.5
    dx = xs - d.cx.astype(np.float32)[:, None, None]
    dy = ys - d.cy.astype(np.float32)[:, None, None]
    c = np.cos(d.angle).astype(np.float32)[:, None, None]
    s = np.sin(d.angle).astype(np.float32)[:, None, None]
    inv = 1.0 / d.size.astype(np.float32)[:, None, None]
    return (c * dx + s * dy) * inv, (-s * dx + c * dy) * inv


def shape_mask(d: Drawable, height: int, width: int) -> np.ndarray:
    """(T, H, W) bool: the pixels the shape covers, ignoring occlusion (clipped to the frame)."""
    u, v = _local(d, height, width)
    if d.shape == "disc":
        return u * u + v * v <= 1.0
    if d.shape == "square":  # half-side 0.85: about the disc's area
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if d.shape == "hexagon":  # circumradius 1.05 (inradius 0.91)
        a = np.sqrt(3.0) / 2
        return np.maximum(np.abs(u), np.maximum(np.abs(0.5 * u + a * v), np.abs(0.5 * u - a * v))) <= 0.91
    if d.shape == "triangle":  # equilateral, circumradius 1.25, pointing up at angle 0
        r = 1.25
        return (v <= r / 2) & (np.sqrt(3.0) * u - v <= r) & (-np.sqrt(3.0) * u - v <= r)
    if d.shape == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.36)
    if d.shape == "bar":
        return (np.abs(u) <= 1.3) & (np.abs(v) <= 0.3)
    raise ValueError(f"unknown shape {d.shape!r}")


def texture_dark(d: Drawable, height: int, width: int) -> np.ndarray | None:
    """(T, H, W) bool: where the texture uses the dark shade (None for solid)."""
    if d.texture == "solid":
        return None
    u, v = _local(d, height, width)
    rows = np.floor(v / TEXTURE_CELL).astype(np.int32)
    if d.texture == "stripes":
        return rows % 2 == 1
    if d.texture == "checks":
        return (rows + np.floor(u / TEXTURE_CELL).astype(np.int32)) % 2 == 1
    raise ValueError(f"unknown texture {d.texture!r}")


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static (H, W, 3) uint8 backdrop: a dim gradient between two colours plus soft blotches."""
    top, bottom = rng.uniform(15, 80, size=(2, 3))
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).copy()
    # Low-frequency texture: a coarse random grid upsampled bilinearly (gives the codec something to do).
    gh, gw = max(2, height // 16), max(2, width // 16)
    grid = rng.uniform(-12, 12, size=(gh, gw))
    yi = np.linspace(0, gh - 1, height)
    xi = np.linspace(0, gw - 1, width)
    rows = np.array([np.interp(xi, np.arange(gw), grid[r]) for r in range(gh)])  # (gh, W)
    blot = np.array([np.interp(yi, np.arange(gh), rows[:, c]) for c in range(width)]).T  # (H, W)
    img += blot[:, :, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(drawables: list[Drawable], bg: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint ``drawables`` back to front (list order) over ``bg``.

    Returns ``frames`` (T, H, W, 3) uint8, ``ids`` (T, H, W) int16 (index of the front-most drawable, -1 for
    background) and ``onscreen`` (N, T) int: each drawable's unoccluded pixel count inside the frame.
    """
    height, width = bg.shape[:2]
    frames = np.broadcast_to(bg, (num_frames, height, width, 3)).copy()
    ids = np.full((num_frames, height, width), -1, dtype=np.int16)
    onscreen = np.zeros((len(drawables), num_frames), dtype=np.int64)
    for k, d in enumerate(drawables):
        m = shape_mask(d, height, width)
        onscreen[k] = m.reshape(num_frames, -1).sum(1)
        base = np.asarray(d.color, dtype=np.uint8)
        dark = texture_dark(d, height, width)
        if dark is None:
            frames[m] = base
        else:
            shade = np.rint(base * DARK).astype(np.uint8)
            frames[m & ~dark] = base
            frames[m & dark] = shade
        ids[m] = k
    return frames, ids, onscreen
