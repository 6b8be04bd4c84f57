"""The clip pipeline: videos of a :class:`~avis.data.video.VideoSource` -> training clips -> batches in the
format of :mod:`avis.models.base`, reproducible from a saved position.

A clip is ``clip_length`` consecutive stored frames of one video, the target frame last (``clip_length = 1 +
delta`` for the online methods; the clip length for clip-level ones); a video shorter than a clip repeats its
first frame in front. A method that trains on other frames declares them with its ``clip_sampler``
(:mod:`avis.models.sampling`), which replaces that default. Each frame comes with its audio window
(:func:`avis.models.audio.frame_windows`: the eta seconds ending at the frame's time) and its annotations
(crowds left out)::

    source units (shards), permuted per epoch -> [rank::world_size] -> [worker::num_workers]
      -> videos (lazy: only a clip's frames are decoded) -> clips_per_video clips each (random target frames)
      -> shuffle buffer -> batches (one short side per batch drawn from scales, resize, pad, collate)

:class:`ClipStream` yields endless batches for one rank. Everything random is drawn from generators seeded by
``(seed, epoch, rank, worker)``, never from the global RNGs, so the batches of an epoch are a pure function of
those numbers: a resumed run re-creates the epoch and skips the batches it had already consumed
(:class:`Position`: epoch and batch, saved in every checkpoint). Ranks (and the DataLoader workers of a rank)
read disjoint shards; an incomplete last batch of an epoch is dropped, so every step sees ``batch_size`` clips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avis.data.video import Video, VideoSource, audio_16k, category_index, label_of
from avis.errors import AvisError, ConfigError, InputError
from avis.models.audio.supervision import instance_tags
from avis.models.audio.windows import DEFAULT_ETA, SAMPLE_RATE, frame_windows, window_length

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- geometry

def scaled_size(height: int, width: int, short: int, max_size: int | None) -> tuple[int, int]:
    """Size with the short side ``short`` and the long side at most ``max_size`` (aspect kept)."""
    s = short / min(height, width)
    if max_size is not None and max(height, width) * s > max_size:
        s = max_size / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 T x 3 x H x W -> uint8 T x 3 x h x w (bilinear, antialiased)."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    x = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """bool n x H x W -> bool n x h x w (nearest)."""
    if masks.numel() == 0 or tuple(masks.shape[-2:]) == tuple(size):
        return masks.reshape(masks.shape[0], *size) if masks.numel() == 0 else masks
    return F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5


# ---------------------------------------------------------------- clips

def clip_indices(num_frames: int, target: int, clip_length: int) -> np.ndarray:
    """Frame indices of the clip ending at ``target`` (clamped at frame 0: short videos repeat their first frame)."""
    return np.clip(np.arange(target - clip_length + 1, target + 1), 0, num_frames - 1)


def sample_clip(video: Video, categories, clip_length: int, rng: np.random.Generator,
                eta: float = DEFAULT_ETA, sampler=None) -> dict:
    """One training clip: a random target frame and the ``clip_length - 1`` frames before it (the first frame
    repeated at the start of a video), or the frames the method's ``sampler`` picks (``model.clip_sampler``,
    see :mod:`avis.models.sampling`), with each frame's audio window and annotations (crowds left out).

    Only the clip's frames are decoded (``video.select``), however long or lazy the video.
    """
    n = video.num_frames
    if sampler is None:
        idx = clip_indices(n, int(rng.integers(n)), clip_length)
    else:
        idx = np.asarray(sampler(n, rng), dtype=np.int64)
        if len(idx) != clip_length or idx.min() < 0 or idx.max() >= n:
            raise ConfigError(f"the clip sampler gave {idx.tolist()} for a {clip_length}-frame clip of {n} frames")
    uniq = sorted(set(idx.tolist()))
    video = video.select(uniq)
    idx = np.searchsorted(np.asarray(uniq), idx)
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(video.frames)[idx])).permute(0, 3, 1, 2).contiguous()
    times = torch.as_tensor(np.asarray(video.frame_times, dtype=np.float64)[idx])
    wave, has_audio = audio_16k(video)
    audio = (frame_windows(wave, times, SAMPLE_RATE, eta) if has_audio
             else torch.zeros(len(idx), window_length(eta, SAMPLE_RATE)))
    index = category_index(categories)
    # per-frame audio-tagging targets (all annotations, crowds too): avis.models.audio.supervision
    presence, sounding, known = instance_tags(video.instances, len(uniq), index)
    insts = [(label_of(index, inst.category_id, video.video_id), inst) for inst in video.instances]
    insts = [(label, inst) for label, inst in insts if not inst.iscrowd]
    h, w = x.shape[-2:]
    targets = []
    for i in idx:
        labels, masks, ids = [], [], []
        for label, inst in insts:
            m = inst.mask(int(i))
            if m is None or not m.any():
                continue
            labels.append(label)
            ids.append(int(inst.instance_id))
            masks.append(torch.from_numpy(np.asarray(m, dtype=bool)))
        targets.append({
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool),
            "instance_ids": torch.tensor(ids, dtype=torch.int64),
        })
    return {"frames": x, "frame_times": times, "audio": audio, "has_audio": has_audio, "targets": targets,
            "video_id": video.video_id, "audio_tags": torch.from_numpy(presence[idx]),
            "audio_sounding": torch.from_numpy(sounding[idx]), "sounding_known": known}


def collate(clips: list[dict], short: int | None, max_size: int | None, size_divisibility: int = 1) -> dict:
    """Resize every clip to the short side ``short`` (None: keep), pad (bottom, right) to the largest rounded up
    to a multiple of ``size_divisibility``, stack."""
    sizes = []
    for c in clips:
        h, w = c["frames"].shape[-2:]
        sizes.append((h, w) if short is None else scaled_size(h, w, short, max_size))
    d = max(1, int(size_divisibility))
    H, W = (-(-max(s[0] for s in sizes) // d) * d), (-(-max(s[1] for s in sizes) // d) * d)
    frames, targets = [], []
    for c, (h, w) in zip(clips, sizes):
        f = resize_frames(c["frames"], (h, w))
        frames.append(F.pad(f, (0, W - w, 0, H - h)))
        tt = []
        for tg in c["targets"]:
            m = resize_masks(tg["masks"], (h, w))
            tt.append({**tg, "masks": F.pad(m, (0, W - w, 0, H - h))})
        targets.append(tt)
    tags = {}
    if all("audio_tags" in c for c in clips):  # clips made elsewhere (tests, tools) may come without them
        tags = {"audio_tags": torch.stack([c["audio_tags"] for c in clips]),  # B x T x K (see sample_clip)
                "audio_sounding": torch.stack([c["audio_sounding"] for c in clips]),
                "sounding_known": torch.tensor([c["sounding_known"] for c in clips])}
    return {
        "frames": torch.stack(frames),
        "image_sizes": torch.tensor(sizes, dtype=torch.int64),  # B x 2, (h, w) before the padding
        "frame_times": torch.stack([c["frame_times"] for c in clips]),
        "audio": torch.stack([c["audio"] for c in clips]),
        "has_audio": torch.tensor([c["has_audio"] for c in clips]),
        "targets": targets,
        "video_ids": [c["video_id"] for c in clips],
        **tags,
    }


@dataclass
class Position:
    epoch: int = 0
    batch: int = 0  # batches of this epoch already consumed


class _EpochClips(IterableDataset):
    """The batches of one epoch of one rank (split further between DataLoader workers)."""

    def __init__(self, stream: ClipStream, epoch: int):
        self.s, self.epoch = stream, epoch

    def __iter__(self):
        try:
            yield from self._batches()
        except AvisError as e:
            if get_worker_info() is None:
                raise
            # from a DataLoader worker, handed over as a value: the loader would re-raise it with the worker's
            # traceback as its message, and the CLI's one line would become a page
            yield None, {"error": e}

    def _batches(self):
        s = self.s
        wi = get_worker_info()
        wid, nw = (0, 1) if wi is None else (wi.id, wi.num_workers)
        units = s.rank_units(self.epoch)[wid::nw]
        rng = np.random.default_rng([s.seed, self.epoch, s.rank, wid])
        buf: list[dict] = []
        pending: list[dict] = []

        def emit(clip):
            pending.append(clip)
            if len(pending) == s.batch_size:
                short = None if not s.scales else int(s.scales[rng.integers(len(s.scales))])
                batch = collate(pending, short, s.max_size, s.size_divisibility)
                info = {"epoch": self.epoch, "units": sorted({c["_unit"] for c in pending})}
                pending.clear()
                return batch, info
            return None

        for unit in units:
            for video in s.source.videos(unit):
                for _ in range(s.clips_per_video):
                    try:
                        clip = sample_clip(video, s.categories, s.clip_length, rng, s.eta, s.sampler)
                    except InputError as e:  # a corrupt frame: the source's on_error says skip or stop
                        if getattr(s.source, "on_error", "fail") == "fail":
                            raise
                        log.warning("skipping a video: %s", e)
                        break
                    clip["_unit"] = unit
                    buf.append(clip)
                    if len(buf) >= s.shuffle_buffer:
                        out = emit(buf.pop(int(rng.integers(len(buf)))))
                        if out is not None:
                            yield out
        rng.shuffle(buf)
        for clip in buf:
            out = emit(clip)
            if out is not None:
                yield out
        # an incomplete last batch is dropped: every step sees batch_size clips


def _identity(x):
    return x


class ClipStream:
    """Endless batches for one rank: ``for batch, info in stream.batches(Position(epoch, batch)): ...``."""

    def __init__(self, source: VideoSource, clip_length: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, clips_per_video: int = 1, shuffle_buffer: int = 16,
                 scales: Sequence[int] | None = None, max_size: int | None = None, eta: float = DEFAULT_ETA,
                 size_divisibility: int = 1, sampler=None):
        self.source, self.clip_length, self.batch_size = source, int(clip_length), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_workers, self.clips_per_video = int(num_workers), int(clips_per_video)
        self.shuffle_buffer, self.scales = max(1, int(shuffle_buffer)), list(scales or [])
        self.max_size, self.eta, self.size_divisibility = max_size, float(eta), int(size_divisibility)
        self.sampler = sampler  # the method's clip_sampler (None: target frame + the frames before it)
        self.categories = list(source.categories)
        self.units = list(source.units())
        if len(self.units) < world_size * max(1, num_workers):
            raise ConfigError(f"{len(self.units)} shard(s) for {world_size} rank(s) x {max(1, num_workers)} "
                              f"worker(s): every data worker needs at least one shard (write smaller shards)")

    def rank_units(self, epoch: int) -> list:
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        return [self.units[i] for i in perm][self.rank::self.world_size]

    def batches(self, start: Position | None = None) -> Iterator[tuple[dict, dict]]:
        pos = Position() if start is None else Position(start.epoch, start.batch)
        while True:
            # A fixed generator keeps the DataLoader from drawing its base seed from the global torch RNG,
            # which would shift the model's random stream (dropout) depending on when epochs start.
            loader = DataLoader(_EpochClips(self, pos.epoch), batch_size=None, num_workers=self.num_workers,
                                collate_fn=_identity, generator=torch.Generator().manual_seed(self.seed),
                                multiprocessing_context="fork" if self.num_workers else None)
            i = -1
            for i, (batch, info) in enumerate(loader):
                if batch is None:
                    raise info["error"]
                if i < pos.batch:  # resuming: these were consumed before the checkpoint
                    continue
                pos.batch = i + 1
                yield batch, {**info, "position": Position(pos.epoch, pos.batch)}
            if i < 0:
                raise ConfigError(f"rank {self.rank} got no complete batch of {self.batch_size} clips in epoch "
                                  f"{pos.epoch}: too few videos for the batch size")
            pos = Position(pos.epoch + 1, 0)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ConfigError(f"data.batch_size={global_batch} (global) is not divisible by {world_size} processes")
    return global_batch // world_size


def test_size(height: int, width: int, short: int | None, max_size: int | None) -> tuple[int, int]:
    return (height, width) if short is None else scaled_size(height, width, short, max_size)
