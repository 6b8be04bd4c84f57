"""The small interface every method implements, so that the engine, the evaluator and the exporters never
branch on the method. Methods are built from configs with ``hydra.utils.instantiate`` (``_target_``).

Training batch (produced by :mod:`avis.data`, collated over B clips of T frames each; T = 1 + delta for the
online methods, the clip length for clip-level ones; frames in time order, the target frame last)::

    batch = {
        "frames":      uint8   B x T x 3 x H x W   (RGB; the method normalises)
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
    }

Inference: :meth:`VISMethod.predict_video` takes one whole video at the model's input size and returns
tracks; the engine maps labels to category ids, resizes masks to the video's size and writes YTVIS
results. Online methods also expose the per-frame step (``init_state`` / ``step`` / ``finish``) that
``predict_video`` loops over, which is what online latency benchmarks time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Track:
    """One predicted object over a video: its class, its score and its mask in each frame it appears in."""

    label: int  # 0-based category index
    score: float
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # frame index -> bool H x W


class VISMethod(nn.Module):
    """Base class of all methods. Subclasses implement :meth:`forward` (training) and :meth:`predict_video`."""

    #: frames per training clip the data pipeline must deliver (1 + delta, or the clip length)
    clip_length: int = 1
    #: whether the method consumes the ``audio`` entry of the batch
    uses_audio: bool = False

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training step: a batch (see module docstring) -> dict of scalar losses; the engine sums them."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_video(self, frames: torch.Tensor, audio: torch.Tensor | None = None) -> list[Track]:
        """frames: uint8 T x 3 x H x W; audio: float32 T x S per-frame windows or None -> tracks."""
        state = self.init_state()
        for t in range(frames.shape[0]):
            self.step(state, frames[t], None if audio is None else audio[t])
        return self.finish(state)

    # Online methods implement these three; clip-level methods override predict_video instead.
    def init_state(self):
        raise NotImplementedError(f"{type(self).__name__} is not an online method")

    def step(self, state, frame: torch.Tensor, audio: torch.Tensor | None = None) -> None:
        raise NotImplementedError(f"{type(self).__name__} is not an online method")

    def finish(self, state) -> list[Track]:
        raise NotImplementedError(f"{type(self).__name__} is not an online method")
