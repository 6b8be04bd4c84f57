"""Shards -> training clips -> batches in the format of :mod:`avis.models.base`.

A clip is ``clip_length`` consecutive stored frames of one video, the target frame last (``clip_length = 1 +
delta`` for the online methods: the target and its delta earlier reference frames; the clip length for
clip-level methods). Videos shorter than a clip repeat their first frame in front. Each frame comes with its
audio window (:func:`avis.models.audio.frame_windows`: the eta seconds ending at the frame's time).

Pipeline (webdataset)::

    shard list (fixed order, or resampled with replacement for infinite streams)
      -> split_by_node (torchrun rank) -> split_by_worker (DataLoader worker)
      -> tar samples -> shuffle buffer -> clips (random target frames) -> batches (resize, collate)

Everything random draws from generators seeded by ``(seed, rank, worker)``: the same seed, world size and
worker count give the same batches. Pass ``seed + epoch`` for a different order each epoch.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avis.data.shards import decode_sample, expand_shards, load_manifest, sample_meta
from avis.errors import ConfigError, InputError
from avis.models.audio.windows import DEFAULT_ETA, frame_windows


def _worker_seed(seed: int, salt: int = 0) -> int:
    import webdataset as wds

    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return wds.utils.make_seed(int(seed), rank, worker, salt)


def clip_indices(num_frames: int, target: int, clip_length: int) -> list[int]:
    """Indices of the clip ending at ``target`` (clamped at frame 0, so short videos repeat their first frame)."""
    return [max(0, target - clip_length + 1 + i) for i in range(clip_length)]


def make_clip(sample: dict, target: int, clip_length: int, label_of: dict, eta: float = DEFAULT_ETA) -> dict:
    """One clip of a shard sample (native size): frames uint8 T x H x W x 3 tensor, audio T x S, targets."""
    meta = sample_meta(sample)
    idx = clip_indices(int(meta["num_frames"]), target, clip_length)
    uniq = sorted(set(idx))
    video = decode_sample(sample, frames=uniq)
    pos = [uniq.index(i) for i in idx]
    times = video.frame_times[pos]
    audio = frame_windows(torch.from_numpy(video.audio[0]), torch.from_numpy(times), video.sample_rate, eta)
    targets = []
    for p in pos:
        present = [inst for inst in video.instances if inst.present[p] and not inst.iscrowd]
        h, w = video.frames.shape[1:3]
        targets.append({
            "labels": torch.tensor([label_of[inst.category_id] for inst in present], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack([inst.masks[p] for inst in present])) if present
            else torch.zeros((0, h, w), dtype=torch.bool),
            "instance_ids": torch.tensor([int(inst.instance_id) for inst in present], dtype=torch.int64),
        })
    return {"frames": torch.from_numpy(video.frames[pos]), "frame_times": torch.from_numpy(times),
            "audio": audio.to(torch.float32), "has_audio": video.has_audio, "targets": targets,
            "video_id": video.video_id}


class _Clips:
    """Pipeline stage: samples -> ``clips_per_video`` clips each, target frames drawn at random."""

    def __init__(self, clip_length, label_of, clips_per_video, seed, eta, on_error="fail"):
        self.clip_length, self.label_of, self.clips_per_video = clip_length, label_of, clips_per_video
        self.seed, self.eta, self.on_error = seed, eta, on_error

    def __call__(self, src):
        rng = random.Random(_worker_seed(self.seed, 1))
        for sample in src:
            try:
                n = int(sample_meta(sample)["num_frames"])
                # webdataset hands out the members read before a shard's damage as a (partial) sample
                missing = [k for k in ["audio.flac", *(f"{i:05d}.jpg" for i in range(n))] if k not in sample]
                if missing:
                    raise InputError(f"sample {sample.get('__key__')}: incomplete (no {missing[0]})",
                                     sample.get("__url__"))
                clips = [make_clip(sample, rng.randrange(n), self.clip_length, self.label_of, self.eta)
                         for _ in range(self.clips_per_video)]
            except InputError as e:
                if self.on_error == "fail":
                    raise
                warnings.warn(f"skipping a sample: {e}", stacklevel=1)
                continue
            yield from clips


def _as_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_clip(clip: dict, size: tuple[int, int]) -> dict:
    """Frames to ``size`` (H, W) with antialiased bilinear filtering, masks with nearest neighbour."""
    h, w = size
    frames = clip["frames"].permute(0, 3, 1, 2)  # T x 3 x H x W
    if frames.shape[-2:] != (h, w):
        frames = F.interpolate(frames.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        frames = frames.round_().clamp_(0, 255).to(torch.uint8)
    targets = []
    for t in clip["targets"]:
        m = t["masks"]
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m[None].float(), size=(h, w), mode="nearest")[0] > 0.5 if len(m) else \
                torch.zeros((0, h, w), dtype=torch.bool)
        targets.append({**t, "masks": m})
    return {**clip, "frames": frames, "targets": targets}


class ClipCollate:
    """Clips -> one batch (:mod:`avis.models.base` format), all resized to one size.

    ``size``: (H, W) or an int (square). ``scales``: optional list of sizes; each batch draws one (multi-scale
    training), from a generator seeded like the rest of the pipeline.
    """

    def __init__(self, size, scales: Sequence | None = None, seed: int = 0):
        self.size = _as_hw(size)
        self.scales = [_as_hw(s) for s in scales] if scales else None
        self.seed = seed
        self.rng = None

    def __call__(self, clips: list[dict]) -> dict:
        size = self.size
        if self.scales:
            if self.rng is None:
                self.rng = random.Random(_worker_seed(self.seed, 2))
            size = self.scales[self.rng.randrange(len(self.scales))]
        clips = [resize_clip(c, size) for c in clips]
        return {
            "frames": torch.stack([c["frames"] for c in clips]),
            "frame_times": torch.stack([c["frame_times"] for c in clips]).to(torch.float64),
            "audio": torch.stack([c["audio"] for c in clips]),
            "has_audio": torch.tensor([c["has_audio"] for c in clips], dtype=torch.bool),
            "targets": [c["targets"] for c in clips],
            "video_ids": [c["video_id"] for c in clips],
        }


def category_ids(shards: list[str], categories=None) -> list[int]:
    """Ascending category ids: ``categories`` (ids or dicts with "id") or the manifest beside the shards."""
    if categories is None:
        manifest = load_manifest(shards)
        if manifest is None:
            raise ConfigError(f"no manifest.json beside {shards[0]}; pass categories explicitly")
        categories = manifest.get("categories", [])
    return sorted(int(c["id"]) if isinstance(c, dict) else int(c) for c in categories)


def make_clip_pipeline(shards, clip_length: int, batch_size: int, size, *, shuffle: bool = True,
                       resampled: bool = False, seed: int = 0, clips_per_video: int = 1, shuffle_buffer: int = 64,
                       scales: Sequence | None = None, categories=None, eta: float = DEFAULT_ETA,
                       partial: bool = True, on_error: str = "warn"):
    """The webdataset pipeline yielding batches; see :func:`make_clip_loader`."""
    import webdataset as wds

    if clip_length < 1 or batch_size < 1:
        raise ConfigError("clip_length and batch_size must be at least 1")
    urls = expand_shards(shards)
    label_of = {cid: i for i, cid in enumerate(category_ids(urls, categories))}
    if resampled:
        # each (rank, worker) draws shards with replacement from its own seeded stream: no split needed
        stages = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(urls, seed=seed if shuffle else None), wds.split_by_node, wds.split_by_worker]
    if on_error not in ("warn", "fail"):
        raise ConfigError(f"on_error must be 'warn' or 'fail', got {on_error!r}")
    # warn: a corrupt shard is skipped with a warning (what was read before the damage is kept)
    stages.append(wds.tarfile_to_samples(handler=wds.warn_and_continue if on_error == "warn" else wds.reraise_exception))
    if shuffle:
        stages.append(_Shuffle(shuffle_buffer, seed))
    stages.append(_Clips(clip_length, label_of, clips_per_video, seed, eta, on_error))
    stages.append(wds.batched(batch_size, collation_fn=ClipCollate(size, scales, seed), partial=partial))
    return wds.DataPipeline(*stages)


class _Shuffle:
    """webdataset's shuffle buffer, seeded per (rank, worker) when iteration starts (inside the worker)."""

    def __init__(self, bufsize, seed):
        self.bufsize, self.seed = bufsize, seed

    def __call__(self, src):
        import webdataset as wds

        yield from wds.shuffle(self.bufsize, min(self.bufsize, 8), seed=_worker_seed(self.seed, 0))(src)


def make_clip_loader(shards, clip_length: int, batch_size: int, size, num_workers: int = 0, shuffle: bool = True,
                     resampled: bool = False, seed: int = 0, **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader of training batches (:mod:`avis.models.base` format) from shards.

    shards: pattern, folder or list (see :func:`avis.data.shards.expand_shards`); clip_length: frames per clip
    (1 + delta, or T); size: (H, W) or int; resampled: infinite stream of shards drawn with replacement (set
    the number of steps in the training loop); other keyword arguments go to :func:`make_clip_pipeline`
    (clips_per_video, shuffle_buffer, scales, categories, eta, partial, on_error: "warn" (default) skips
    corrupt shards with a warning). With torchrun, shards are split by
    rank (finite mode), so give each rank at least one shard per DataLoader worker.
    """
    pipeline = make_clip_pipeline(shards, clip_length, batch_size, size, shuffle=shuffle, resampled=resampled,
                                  seed=seed, **kwargs)
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                                       persistent_workers=False)
