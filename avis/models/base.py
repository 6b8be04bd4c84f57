"""The small interface every method implements, so that the engine, the evaluator and the exporters never
branch on the method. Methods are built from configs with ``hydra.utils.instantiate`` (``_target_``).

Training batch (produced by :mod:`avis.data`, collated over B clips of T frames each; T = 1 + delta for the
online methods, the clip length for clip-level ones; frames as the method's ``clip_sampler`` orders them, by
default in time order with the target frame last)::

    batch = {
        "frames":      uint8   B x T x 3 x H x W   (RGB; the method normalises)
        "image_sizes": int64   B x 2               ((h, w) of each clip's frames before the batch was padded
                                                    bottom/right to H x W; optional, absent = no padding)
        "frame_times": float64 B x T               (seconds on the video's frame timeline)
        "audio":       float32 B x T x S           (per-frame window of eta seconds ending at the frame's
                                                    time, 16 kHz mono, zero-padded before t = 0; zeros
                                                    where the video has no sound)
        "has_audio":   bool    B
        "targets":     list (B) of list (T) of {
                           "labels":       int64 n          (0-based index into the dataset's categories)
                           "masks":        bool  n x H x W
                           "instance_ids": int64 n          (stable over the video's frames)
                       }
        "video_ids":   list (B) of int
        "audio_tags":     float32 B x T x K    (1 where a category has an annotation in the frame, crowds too;
                                                the audio supervision's targets, avis.models.audio.supervision)
        "audio_sounding": float32 B x T x K    (1 where a category is sounding, from the optional
                                                per-frame ``sounding`` flags; zeros where unknown)
        "sounding_known": bool    B            (the clip's video has ``sounding`` on every annotation)
    }

Inference: :meth:`VISMethod.predict_video` takes one whole video at the model's input size and returns
tracks; the engine maps labels to category ids, resizes masks to the video's size and writes YTVIS
results. Online methods (RCF, CrossVIS, STMask, InsPro) also expose the per-frame contract that
``predict_video`` loops over (and online latency benchmarks time)::

    state = model.init_state()
    for t, frame in enumerate(frames):          # uint8 3 x H x W, audio: float32 S or None (no sound)
        result = model.step(state, frame, audio[t])   # FrameResult: this frame's tracked instances, at once
    tracks = model.finish(state)                # video-level Tracks; nothing new about any single frame

Each ``step`` returns a :class:`FrameResult` as soon as the frame is processed: one
:class:`TrackedInstance` per object present in that frame (track id, this frame's class and score, bool mask
at the frame's size). Track ids are the ids of the :class:`Track` objects ``finish`` returns, and a track's
masks are exactly the masks its id had in the per-frame results; ``finish`` only decides the video-level
class and score of each track. EfficientVIS is clip-level: it has ``predict_video`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from avis.models.sampling import ClipSampler


@dataclass
class Track:
    """One predicted object over a video: its class, its score and its mask in each frame it appears in."""

    label: int  # 0-based category index
    score: float
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # frame index -> bool H x W
    track_id: int | None = None  # the id its per-frame instances carried (online methods)


@dataclass
class TrackedInstance:
    """One object in one frame of an online run (what :meth:`VISMethod.step` reports for it)."""

    track_id: int  # stable over the video: the ``track_id`` of the Track it ends up in
    label: int  # 0-based category index decided in this frame
    score: float  # this frame's confidence in [0, 1]
    mask: torch.Tensor  # bool H x W at the size of the frame given to ``step``, on the CPU


@dataclass
class FrameResult:
    """Everything an online method knows about one frame as soon as it has processed it.

    ``frame`` is the 0-based index of the frame in the video (the number of earlier ``step`` calls);
    ``instances`` are ordered by track id. :func:`avis.engine.predict.frame_record` turns it into one JSON-ready
    dict (category ids, RLE masks at the video's size).
    """

    frame: int
    instances: list[TrackedInstance] = field(default_factory=list)


class VISMethod(nn.Module):
    """Base class of all methods. Subclasses implement :meth:`forward` (training) and :meth:`predict_video`."""

    #: frames per training clip the data pipeline must deliver (1 + delta, or the clip length)
    clip_length: int = 1
    #: which frames those are (:mod:`avis.models.sampling`); None: the pipeline's default, a random target
    #: frame and the clip_length - 1 frames before it
    clip_sampler: ClipSampler | None = None
    #: whether the method consumes the ``audio`` entry of the batch
    uses_audio: bool = False

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training step: a batch (see module docstring) -> dict of scalar losses; the engine sums them."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_video(self, frames: torch.Tensor, audio: torch.Tensor | None = None) -> list[Track]:
        """frames: uint8 T x 3 x H x W; audio: float32 T x S per-frame windows, or None for a video without
        sound -> tracks."""
        state = self.init_state()
        for t in range(frames.shape[0]):
            self.step(state, frames[t], None if audio is None else audio[t])
        return self.finish(state)

    # Online methods implement these three; clip-level methods override predict_video instead.
    def init_state(self):
        """A fresh per-video state for :meth:`step`."""
        raise NotImplementedError(f"{type(self).__name__} is not an online method")

    def step(self, state, frame: torch.Tensor, audio: torch.Tensor | None = None) -> FrameResult:
        """One frame (uint8 3 x H x W; audio: this frame's window, float32 S, or None) -> its tracked
        instances (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} is not an online method")

    def finish(self, state) -> list[Track]:
        """The video-level tracks of everything :meth:`step` has seen."""
        raise NotImplementedError(f"{type(self).__name__} is not an online method")
