"""The one video type every part of the toolkit reads, and the protocol of a source of videos.

A :class:`Video` is what ``avis build`` stored for one video: frames, their presentation times, the sound on
the same timeline and the annotated instances. The shard reader, raw-file inference (``avis infer``) and the
tests' in-memory data all produce it; training, evaluation and the ground-truth writer read only it.

A video may be *lazy*: the shard reader hands out videos that know their metadata (id, frame times, sound
flags) and decode frames only when asked, so that a training clip decodes the few frames it needs:
``video.select([i, j])`` returns a (decoded) :class:`Video` of those frames, ``video.load()`` all of them.
On a decoded video both are plain slicing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np

from avis.errors import ConfigError

SAMPLE_RATE = 16000  # the models' audio rate (also avis.models.audio.windows.SAMPLE_RATE)


@dataclass
class Instance:
    """One annotated object of a video: its masks in the video's frames (all-False where it is absent)."""

    instance_id: int
    category_id: int
    masks: np.ndarray  # bool T x H x W
    present: np.ndarray  # bool T
    iscrowd: int = 0
    sounding: np.ndarray | None = None  # bool T: the annotation's optional per-frame ``sounding`` flags (AVISeg)

    def mask(self, t: int) -> np.ndarray | None:
        """Frame ``t``'s mask (bool H x W), None where the object is absent."""
        return self.masks[t] if self.present[t] else None

    def select(self, indices: Sequence[int]) -> Instance:
        idx = list(indices)
        return replace(self, masks=self.masks[idx], present=self.present[idx],
                       sounding=None if self.sounding is None else self.sounding[idx])


@dataclass
class Video:
    """A video with its sound and annotations. ``frames`` and ``audio`` are None on a lazy video until
    :meth:`select` / :meth:`load` decode them (``loader`` set); everything else is always there."""

    video_id: int | str
    frames: np.ndarray | None  # uint8 T x H x W x 3 (RGB)
    frame_times: np.ndarray  # float64 T, seconds on the frame timeline
    audio: np.ndarray | None  # float32 1 x N at sample_rate, sample 0 = time 0 of the frame timeline
    sample_rate: int
    has_audio: bool
    instances: list[Instance] = field(default_factory=list)
    fps: float | None = None
    key: str = ""
    meta: dict = field(default_factory=dict)  # a shard sample's whole JSON record
    # lazy videos: indices (None: all) -> the decoded Video of those frames
    loader: Callable[[list[int] | None], Video] | None = field(default=None, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)

    def select(self, indices: Sequence[int]) -> Video:
        """The decoded video of the frames at ``indices`` (in that order; instances' masks likewise)."""
        idx = [int(i) for i in indices]
        if self.loader is not None:
            return self.loader(idx)
        return replace(self, frames=self.frames[idx], frame_times=np.asarray(self.frame_times)[idx],
                       instances=[inst.select(idx) for inst in self.instances])

    def load(self) -> Video:
        """The whole video, decoded (itself when it already is)."""
        return self if self.loader is None else self.loader(None)


@runtime_checkable
class VideoSource(Protocol):
    """Where training and evaluation get videos from (built by hydra from ``data.train`` / ``data.val``).

    ``categories``: ``{"id", "name"}`` dicts; a label is the 0-based index into this list. ``units()``: the
    names of its parts (shards), the unit of splitting between ranks and DataLoader workers.
    ``videos(unit, strict)``: that unit's videos (possibly lazy); a video that cannot be read is skipped with
    a warning or raises, as the source is configured, and always raises with ``strict`` (evaluation: a
    skipped video would silently change the metrics).
    """

    categories: list[dict]

    def units(self) -> list[str]: ...

    def videos(self, unit: str, strict: bool = False) -> Iterator[Video]: ...


def category_index(categories: Sequence[dict]) -> dict[int, int]:
    """Category id -> 0-based label."""
    return {int(c["id"]): i for i, c in enumerate(categories)}


def label_of(index: dict[int, int], category_id: int, video_id) -> int:
    """The 0-based label of ``category_id`` (an unknown id is a configuration error naming the video)."""
    if int(category_id) not in index:
        raise ConfigError(f"video {video_id}: category id {category_id} is not in the dataset's categories "
                          f"{sorted(index)}")
    return index[int(category_id)]


def audio_16k(video: Video):
    """The video's mono 16 kHz waveform (1-D float32 tensor) and whether it has sound."""
    import torch

    if video.audio is None or not video.has_audio:
        return torch.zeros(0), False
    a = torch.as_tensor(np.asarray(video.audio), dtype=torch.float32)
    a = a.mean(0) if a.ndim == 2 else a.reshape(-1)
    if int(video.sample_rate) != SAMPLE_RATE:
        import torchaudio.functional as AF

        a = AF.resample(a, int(video.sample_rate), SAMPLE_RATE)
    return a, True
