"""A tiny method and an in-memory dataset for testing the engine without the real models and shards.

:class:`ToyVIS` is a real (if weak) :class:`~avis.models.base.VISMethod`: a small conv net labels each pixel
of the target frame with a category or background, optionally biased by the frame's audio energy; every
category present in a frame is one track. :class:`ToyVideos` draws coloured squares that move over a grey
background, each category with its own colour and tone, deterministic in ``seed``.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avis.data.video import Instance, Video
from avis.models.base import Track, VISMethod


class ToyVIS(VISMethod):
    def __init__(self, num_classes: int, clip_length: int = 2, uses_audio: bool = False, hidden_dim: int = 8,
                 dropout: float = 0.1):
        super().__init__()
        self.clip_length, self.uses_audio, self.num_classes = int(clip_length), bool(uses_audio), int(num_classes)
        hidden = int(hidden_dim)
        self.backbone = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.GroupNorm(1, hidden), nn.ReLU())
        self.drop = nn.Dropout2d(dropout)  # exercises the RNG state that resume must restore
        self.head = nn.Conv2d(hidden, num_classes + 1, 1)
        self.audio_fc = nn.Linear(4, hidden) if self.uses_audio else None

    def _logits(self, frames: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """frames uint8 B x 3 x H x W, audio B x S -> logits B x (K+1) x H x W."""
        x = self.backbone(frames.float() / 255.0)
        if self.audio_fc is not None and audio is not None:
            energy = audio.float().reshape(audio.shape[0], 4, -1).pow(2).mean(-1).add(1e-6).log()
            x = x + self.audio_fc(energy)[:, :, None, None]
        return self.head(self.drop(x))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"][:, -1]
        logits = self._logits(frames, batch["audio"][:, -1] if self.uses_audio else None)
        sem = torch.zeros(logits.shape[0], *logits.shape[-2:], dtype=torch.long, device=logits.device)
        for b, clip in enumerate(batch["targets"]):
            tg = clip[-1]
            for label, m in zip(tg["labels"].tolist(), tg["masks"]):
                sem[b][m] = label + 1
        return {"loss_ce": F.cross_entropy(logits.float(), sem)}

    def init_state(self):
        return {"t": 0, "tracks": {}}

    def step(self, state, frame, audio=None):
        probs = self._logits(frame[None], None if audio is None or not self.uses_audio else audio[None])
        probs = probs.float().softmax(1)[0]
        top = probs.argmax(0)
        for c in range(1, self.num_classes + 1):
            m = top == c
            if m.any():
                tr = state["tracks"].setdefault(c - 1, {"masks": {}, "scores": []})
                tr["masks"][state["t"]] = m.cpu()
                tr["scores"].append(float(probs[c][m].mean()))
        state["t"] += 1

    def finish(self, state):
        return [Track(label=k, score=float(np.mean(v["scores"])), masks=v["masks"])
                for k, v in sorted(state["tracks"].items())]


class ToyVideos:
    """``num_videos`` videos split round-robin into ``num_shards`` named units (an
    :class:`avis.data.VideoSource`)."""

    COLORS = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (220, 200, 40)]

    def __init__(self, num_videos: int = 8, num_shards: int = 4, num_frames: int = 6, height: int = 24,
                 width: int = 32, num_categories: int = 2, fps: float = 5.0, seed: int = 0, split: str = "train",
                 sample_rate: int = 16000):
        self.num_videos, self.num_shards, self.num_frames = num_videos, num_shards, num_frames
        self.height, self.width, self.fps, self.seed, self.split = height, width, fps, seed, split
        self.sample_rate = sample_rate
        self.categories = [{"id": i + 1, "name": f"toy{i}"} for i in range(num_categories)]

    def units(self) -> list[str]:
        return [f"{self.split}-{k:03d}" for k in range(self.num_shards)]

    def videos(self, unit: str, strict: bool = False):
        k = int(unit.rsplit("-", 1)[1])
        for i in range(k, self.num_videos, self.num_shards):
            yield self.video(i)

    def video(self, i: int) -> Video:
        rng = np.random.default_rng([self.seed, i, zlib.crc32(self.split.encode())])
        T, H, W = self.num_frames, self.height, self.width
        frames = np.full((T, H, W, 3), 128, np.uint8)
        times = np.arange(T) / self.fps
        n_audio = int(round(T / self.fps * self.sample_rate))
        audio = 0.01 * rng.standard_normal(n_audio).astype(np.float32)
        instances = []
        for j in range(min(2, len(self.categories))):
            c = int(rng.integers(len(self.categories)))
            s = int(rng.integers(H // 4, H // 2))
            y, x = rng.integers(0, H - s), rng.integers(0, W - s)
            vy, vx = rng.integers(-2, 3, size=2)
            masks = []
            for t in range(T):
                yy, xx = int(np.clip(y + vy * t, 0, H - s)), int(np.clip(x + vx * t, 0, W - s))
                m = np.zeros((H, W), bool)
                m[yy:yy + s, xx:xx + s] = True
                if j == 1 and instances:  # the later object occludes the earlier
                    instances[0]["masks"][t] &= ~m
                frames[t][m] = self.COLORS[c % len(self.COLORS)]
                masks.append(m)
            tt = np.arange(n_audio) / self.sample_rate
            audio += (0.2 * np.sin(2 * np.pi * (300 + 400 * c) * tt)).astype(np.float32)
            instances.append({"instance_id": j + 1, "category_id": c + 1, "masks": masks})
        return Video(video_id=i + 1 + (0 if self.split == "train" else 10000), frames=frames,
                     frame_times=times, audio=audio[None], sample_rate=self.sample_rate, has_audio=True,
                     instances=[Instance(d["instance_id"], d["category_id"], np.stack(d["masks"]), np.ones(T, bool))
                                for d in instances], fps=self.fps)
