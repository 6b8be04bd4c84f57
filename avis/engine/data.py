"""Clip batches for training, reproducible from a saved position.

A *source* is any object (built by hydra from ``data.train``) with

* ``categories``: list of ``{"id", "name"}`` (a label is the 0-based index into it),
* ``units()``: the names of its shards (the unit of splitting between ranks and workers),
* ``videos(unit)``: the videos of one shard, objects with the fields of ``avis.data.iter_videos``
  (``video_id``, ``frames`` T x H x W x 3 uint8, ``frame_times``, ``audio`` 1 x N, ``sample_rate``,
  ``has_audio``, ``instances``).

:class:`ClipStream` turns a source into batches (the format of :mod:`avis.models.base`). Everything random is
drawn from generators seeded by ``(seed, epoch, rank, worker)``, never from the global RNGs, so the batches of
an epoch are a pure function of those numbers: a resumed run re-creates the epoch and skips the batches it
had already consumed. Shards are permuted per epoch, then split ``[rank::world_size][worker::num_workers]``,
so ranks (and the DataLoader workers of a rank) read disjoint shards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avis.errors import ConfigError, InputError
from avis.models.audio.windows import SAMPLE_RATE, frame_windows, window_length

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- reading a video's fields (one place)

def _get(obj, name, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def video_instances(video, categories: Sequence[dict]) -> list[dict]:
    """The video's instances as ``{"label": 0-based, "instance_id", "iscrowd", "masks": [T] (H x W bool | None)}``.

    Accepts ``avis.data`` instances (``masks`` T x H x W with a ``present`` flag per frame) and plain dicts
    (``masks`` a list with None where the object is absent, or RLE dicts).
    """
    cat_index = {int(c["id"]): i for i, c in enumerate(categories)}
    out = []
    for k, inst in enumerate(_get(video, "instances", None) or []):
        label = _get(inst, "label")
        if label is None:
            cid = int(_get(inst, "category_id"))
            if cid not in cat_index:
                raise ConfigError(f"video {_get(video, 'video_id')}: category id {cid} is not in the dataset's "
                                  f"categories {sorted(cat_index)}")
            label = cat_index[cid]
        iid = _get(inst, "instance_id", _get(inst, "id", k))
        masks, present = _get(inst, "masks"), _get(inst, "present")
        if present is not None:
            masks = [m if p else None for m, p in zip(masks, present)]
        out.append({"label": int(label), "instance_id": int(iid), "iscrowd": int(_get(inst, "iscrowd", 0) or 0),
                    "masks": masks})
    return out


def _mask_at(masks, t: int):
    """Frame t of an instance's masks (array T x H x W, or a list with None where absent) -> bool array | None."""
    m = masks[t]
    if m is None:
        return None
    if isinstance(m, dict):  # RLE
        from avis.io import masks as mask_io
        m = mask_io.decode(m)
    return np.asarray(m).astype(bool)


def num_frames(video) -> int:
    n = _get(video, "num_frames")
    return int(n) if n is not None else len(_get(video, "frames"))


def audio_16k(video) -> tuple[torch.Tensor, bool]:
    """The video's mono 16 kHz waveform (1-D) and whether it has sound."""
    has_audio = bool(_get(video, "has_audio", True))
    audio = _get(video, "audio")
    if audio is None or not has_audio:
        return torch.zeros(0), False
    a = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
    a = a.mean(0) if a.ndim == 2 else a.reshape(-1)
    sr = int(_get(video, "sample_rate", SAMPLE_RATE))
    if sr != SAMPLE_RATE:
        import torchaudio.functional as AF
        a = AF.resample(a, sr, SAMPLE_RATE)
    return a, True


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

def sample_clip(video, categories, clip_length: int, rng: np.random.Generator, eta: float = 0.96,
                sampler=None) -> dict:
    """One training clip: a random target frame and the ``clip_length - 1`` frames before it (the first frame
    repeated at the start of a video), or the frames the method's ``sampler`` picks (``model.clip_sampler``,
    see :mod:`avis.models.sampling`), with each frame's audio window and annotations (crowds left out).

    ``video`` is a decoded video, or a lazy one with ``select(indices)`` that decodes only those frames.
    """
    n = num_frames(video)
    if sampler is None:
        t = int(rng.integers(n))
        idx = np.clip(np.arange(t - clip_length + 1, t + 1), 0, n - 1)
    else:
        idx = np.asarray(sampler(n, rng), dtype=np.int64)
        if len(idx) != clip_length or idx.min() < 0 or idx.max() >= n:
            raise ConfigError(f"the clip sampler gave {idx.tolist()} for a {clip_length}-frame clip of {n} frames")
    if hasattr(video, "select"):
        uniq = sorted(set(idx.tolist()))
        video = video.select(uniq)
        idx = np.searchsorted(np.asarray(uniq), idx)
    frames = _get(video, "frames")
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(frames)[idx])).permute(0, 3, 1, 2).contiguous()
    times = torch.as_tensor(np.asarray(_get(video, "frame_times"), dtype=np.float64)[idx])
    wave, has_audio = audio_16k(video)
    audio = (frame_windows(wave, times, SAMPLE_RATE, eta) if has_audio
             else torch.zeros(len(idx), window_length(eta, SAMPLE_RATE)))
    insts = [i for i in video_instances(video, categories) if not i["iscrowd"]]
    h, w = x.shape[-2:]
    targets = []
    for i in idx:
        labels, masks, ids = [], [], []
        for inst in insts:
            m = _mask_at(inst["masks"], int(i))
            if m is None or not m.any():
                continue
            labels.append(inst["label"])
            ids.append(inst["instance_id"])
            masks.append(torch.from_numpy(m))
        targets.append({
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool),
            "instance_ids": torch.tensor(ids, dtype=torch.int64),
        })
    return {"frames": x, "frame_times": times, "audio": audio, "has_audio": has_audio, "targets": targets,
            "video_id": _get(video, "video_id")}


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
    return {
        "frames": torch.stack(frames),
        "image_sizes": torch.tensor(sizes, dtype=torch.int64),  # B x 2, (h, w) before the padding
        "frame_times": torch.stack([c["frame_times"] for c in clips]),
        "audio": torch.stack([c["audio"] for c in clips]),
        "has_audio": torch.tensor([c["has_audio"] for c in clips]),
        "targets": targets,
        "video_ids": [c["video_id"] for c in clips],
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

    def __init__(self, source, clip_length: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, clips_per_video: int = 1, shuffle_buffer: int = 16,
                 scales: Sequence[int] | None = None, max_size: int | None = None, eta: float = 0.96,
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


def iter_eval_videos(source, limit: int | None = None):
    """All videos of a source, decoded, in unit order (evaluation)."""
    n = 0
    for unit in source.units():
        for v in (source.full_videos(unit) if hasattr(source, "full_videos") else source.videos(unit)):
            yield v
            n += 1
            if limit is not None and n >= limit:
                return


def test_size(height: int, width: int, short: int | None, max_size: int | None) -> tuple[int, int]:
    return (height, width) if short is None else scaled_size(height, width, short, max_size)


class _ShardVideo:
    """One shard sample, decoded lazily: ``select(indices)`` decodes only the frames a clip needs."""

    def __init__(self, sample: dict):
        from avis.data.shards import sample_meta

        self.sample = sample
        meta = sample_meta(sample)
        self.num_frames = int(meta["num_frames"])
        self.video_id = meta.get("video_id")

    def select(self, indices):
        from avis.data.shards import decode_sample

        return decode_sample(self.sample, frames=indices)


class ShardSource:
    """WebDataset shards written by ``avis build``: one unit per shard file.

    ``pattern``: what ``avis.data.expand_shards`` takes (glob, brace pattern, folder, list). Categories come
    from the ``manifest.json`` beside the shards, or ``categories`` (a YTVIS JSON path or a list of
    ``{"id", "name"}``). ``videos(unit)`` yields lazy videos for training; ``full_videos(unit)`` decoded ones.
    ``on_error``: what training does with a shard it cannot read (truncated, corrupt, bad metadata): ``"warn"``
    skips the rest of that shard (or the bad sample) with a warning, ``"fail"`` stops with the error.
    Evaluation (``full_videos``) always fails: a skipped video would silently change the metrics.
    """

    def __init__(self, pattern, categories=None, on_error: str = "warn"):
        from avis.data.shards import expand_shards, load_manifest

        if on_error not in ("warn", "fail"):
            raise ConfigError(f"on_error must be 'warn' or 'fail', got {on_error!r}")
        self.on_error = on_error

        self.files = expand_shards(pattern if isinstance(pattern, str) else list(pattern))
        for f in self.files:
            if not os.path.isfile(f):
                raise InputError("shard not found", f)
        if categories is None:
            manifest = load_manifest(self.files)
            if manifest is None or manifest.get("categories") is None:
                raise InputError("no manifest.json with 'categories' beside the shards (or give categories)",
                                 os.path.dirname(self.files[0]) or ".")
            categories = manifest["categories"]
        elif isinstance(categories, str):
            from avis.io.ytvis import load_json

            categories = load_json(categories)["categories"]
        self.categories = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in categories]

    def units(self) -> list[str]:
        return list(self.files)

    def videos(self, unit: str):
        from avis.data.shards import iter_samples

        try:
            for sample in iter_samples(unit):
                try:
                    video = _ShardVideo(sample)
                except InputError as e:
                    self._skip(e, "this sample")
                    continue
                yield video
        except InputError as e:  # the tar itself is damaged: what was read before it is kept
            self._skip(e, "the rest of this shard")

    def _skip(self, e: InputError, what: str) -> None:
        if self.on_error == "fail":
            raise e
        log.warning("skipping %s: %s (data.train.on_error=fail to stop instead)", what, e)

    def full_videos(self, unit: str):
        from avis.data import iter_videos

        yield from iter_videos(unit)
