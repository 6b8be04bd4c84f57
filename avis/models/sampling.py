"""Which frames of a video a method's training clip holds: the clip samplers methods declare.

A clip sampler maps ``(num_frames, rng)`` to the ``length`` frame indices of one training clip, in the order
the model reads them (``rng``: the data pipeline's ``numpy.random.Generator``, so that clips stay a pure
function of the pipeline's seed and position). A method declares one as its ``clip_sampler`` attribute;
``None`` keeps the pipeline's default: a uniformly drawn target frame and the ``clip_length - 1`` frames
before it, the first frame repeated at a video's start (RCF, InsPro, STMask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class ClipSampler(Protocol):
    length: int  # frames per clip (the method's clip_length)

    def __call__(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """-> int64 indices, ``length`` of them, each in [0, num_frames)."""
        ...


@dataclass(frozen=True)
class FramePair:
    """Two frames of one video, in time order: a uniformly drawn frame t and a partner r drawn uniformly from
    the frames with 0 < |r - t| <= ``max_distance`` (CrossVIS: a random distance up to 20 annotated frames).
    A frame is paired with itself only when the video has one frame."""

    max_distance: int = 20

    @property
    def length(self) -> int:
        return 2

    def __post_init__(self):
        if self.max_distance < 1:
            raise ValueError(f"max_distance must be >= 1, got {self.max_distance}")

    def __call__(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        t = int(rng.integers(num_frames))
        lo, hi = max(0, t - self.max_distance), min(num_frames - 1, t + self.max_distance)
        if hi == lo:  # a one-frame video
            return np.array([t, t])
        r = int(rng.integers(lo, hi))  # one of the hi - lo frames other than t
        r += r >= t
        return np.array(sorted((t, r)))


@dataclass(frozen=True)
class ClipPair:
    """``num_clips`` clips of ``clip_frames`` consecutive frames within the video, in random order
    (EfficientVIS's correspondence learning: "the order of the two clips in a pair is randomized").

    A window of ``num_clips * clip_frames`` frames is drawn uniformly inside the video and cut into adjacent
    clips. A shorter video holds the clips at evenly spread starts, overlapping (the first at frame 0, the
    last ending at the last frame); a video shorter than one clip is stretched over it (each frame repeated
    about clip_frames / num_frames times, in time order). Frames inside a clip are always in time order.
    """

    clip_frames: int
    num_clips: int = 2
    shuffle: bool = True

    @property
    def length(self) -> int:
        return self.clip_frames * self.num_clips

    def __call__(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        n, t, k = num_frames, self.clip_frames, self.num_clips
        if n < t:
            clips = [np.arange(t) * n // t] * k
        elif n >= k * t:
            s = int(rng.integers(n - k * t + 1))
            clips = [s + i * t + np.arange(t) for i in range(k)]
        else:
            starts = np.linspace(0, n - t, k).round().astype(np.int64)
            clips = [s + np.arange(t) for s in starts]
        if self.shuffle and k > 1:
            clips = [clips[i] for i in rng.permutation(k)]
        return np.concatenate(clips).astype(np.int64)
