"""Reading the shards ``avis build`` writes (format: docs/data.md).

A shard sample is the group of tar members sharing a key: ``KEY.json`` (metadata, frame times, RLE
instances), ``KEY.audio.flac`` (16 kHz mono on the frame timeline) and ``KEY.NNNNN.jpg`` (one per frame).
:func:`decode_sample` turns such a group (as webdataset's ``tarfile_to_samples`` yields it, or as
:func:`iter_samples` reads it) into a :class:`~avis.data.video.Video`, decoding only the frames asked for;
:func:`lazy_video` into a lazy one that decodes on ``select`` / ``load``. :class:`ShardSource` serves shard
files to training and evaluation (a :class:`~avis.data.video.VideoSource`); its shard-reading step, shard ->
samples, is the one method :meth:`ShardSource.samples`.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from avis.data.video import Instance, Video
from avis.errors import ConfigError, InputError
from avis.io import masks as mask_io

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 1 << 30  # refuse absurd tar members before reading them
AUDIO_CACHE_KEY = "__audio__"  # decoded waveform memoised in the sample dict (no tar suffix can clash)


def expand_shards(pattern: str | os.PathLike | Iterable) -> list[str]:
    """Brace patterns (``shard-{000000..000009}.tar``), globs, folders (their ``shard-*.tar``) or lists of these."""
    from webdataset.shardlists import expand_urls

    if isinstance(pattern, (str, os.PathLike)):
        items = [os.fspath(pattern)]
    else:
        items = [os.fspath(p) for p in pattern]
    out: list[str] = []
    for item in items:
        for url in expand_urls(item):
            if os.path.isdir(url):
                out += sorted(glob.glob(os.path.join(url, "shard-*.tar")))
            elif any(ch in url for ch in "*?["):
                out += sorted(glob.glob(url))
            else:
                out.append(url)
    if not out:
        raise InputError("no shards match", str(pattern))
    return out


def load_manifest(shards: list[str]) -> dict | None:
    """The ``manifest.json`` beside the first shard, or None."""
    path = Path(shards[0]).parent / "manifest.json"
    if not path.is_file():
        return None
    from avis.io.ytvis import load_json

    return load_json(path)


def iter_samples(path: str | os.PathLike) -> Iterator[dict]:
    """Stream one shard: dicts ``{"__key__": KEY, "__url__": path, "json": bytes, "00000.jpg": bytes, ...}``.

    Reads members in order and never extracts anything; non-file members are ignored.
    """
    path = os.fspath(path)
    sample: dict | None = None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                if _escapes(m.name):  # never written anywhere, but a shard that tries this is not ours
                    raise InputError(f"member name {m.name!r} is absolute or goes up with '..'", path)
                base = os.path.basename(m.name)
                if "." not in base:
                    continue
                if m.size > MAX_MEMBER_BYTES:
                    raise InputError(f"member {m.name} is {m.size} bytes; refusing to read it", path)
                key, suffix = base.split(".", 1)
                if sample is None or sample["__key__"] != key:
                    if sample is not None:  # complete: hand it out before reading on (the rest may be damaged)
                        yield sample
                    sample = {"__key__": key, "__url__": path}
                sample[suffix] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"unreadable shard ({e})", path) from None
    if sample is not None:
        yield sample


def _escapes(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def sample_meta(sample: dict) -> dict:
    try:
        return json.loads(sample["json"])
    except (KeyError, ValueError) as e:
        raise InputError(f"sample {sample.get('__key__')}: missing or invalid metadata ({e})",
                         sample.get("__url__")) from None


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_audio(data: bytes) -> np.ndarray:
    """FLAC bytes -> float32 (N,)."""
    import soundfile as sf

    x, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return x.reshape(-1) if x.ndim == 1 else x.mean(axis=1)


def decode_sample(sample: dict, frames: Iterable[int] | None = None, audio: bool = True) -> Video:
    """A shard sample -> :class:`Video` holding the frames at indices ``frames`` (all by default)."""
    meta = sample_meta(sample)
    T = int(meta["num_frames"])
    idx = list(range(T)) if frames is None else [int(i) for i in frames]
    url = sample.get("__url__")
    imgs = []
    for i in idx:
        name = f"{i:05d}.jpg"
        if name not in sample:
            raise InputError(f"sample {meta.get('key')}: frame '{name}' missing", url)
        try:
            imgs.append(decode_jpeg(sample[name]))
        except (OSError, ValueError) as e:  # PIL: unidentified or truncated image
            raise InputError(f"sample {meta.get('key')}: frame {name}: unreadable JPEG ({e})", url) from None
    H, W = int(meta["height"]), int(meta["width"])
    frames_arr = np.stack(imgs) if imgs else np.zeros((0, H, W, 3), np.uint8)
    if audio and "audio.flac" in sample:
        # Training draws several clips per sample: decode the FLAC once and keep it with the sample.
        wav = sample.get(AUDIO_CACHE_KEY)
        if wav is None:
            try:
                wav = decode_audio(sample["audio.flac"])
            except (RuntimeError, ValueError, OSError) as e:  # soundfile: corrupt FLAC
                raise InputError(f"sample {meta.get('key')}: unreadable audio ({e})", url) from None
            sample[AUDIO_CACHE_KEY] = wav
    else:
        wav = np.zeros(0, np.float32)
    instances = []
    for inst in meta.get("instances", []):
        segs = inst["segmentations"]
        present = np.array([segs[i] is not None for i in idx], dtype=bool)
        masks = np.zeros((len(idx), H, W), dtype=bool)
        for j, i in enumerate(idx):
            if segs[i] is not None:
                masks[j] = mask_io.decode(segs[i]).astype(bool)
        instances.append(Instance(instance_id=inst["id"], category_id=inst["category_id"], masks=masks,
                                  present=present, iscrowd=int(inst.get("iscrowd", 0))))
    times = np.asarray(meta["frame_times"], dtype=np.float64)[idx]
    return Video(video_id=meta["video_id"], frames=frames_arr, frame_times=times, audio=wav[None, :],
                 sample_rate=int(meta["sample_rate"]), has_audio=bool(meta["has_audio"]), instances=instances,
                 fps=meta.get("fps"), key=meta.get("key", sample.get("__key__", "")), meta=meta)


def lazy_video(sample: dict) -> Video:
    """A shard sample as a lazy :class:`Video`: its metadata now, frames and sound when selected or loaded."""
    meta = sample_meta(sample)
    try:
        times = np.asarray(meta["frame_times"], dtype=np.float64).reshape(-1)
        if len(times) != int(meta["num_frames"]):
            raise ValueError(f"{len(times)} frame times for {meta['num_frames']} frames")
        return Video(video_id=meta["video_id"], frames=None, frame_times=times, audio=None,
                     sample_rate=int(meta["sample_rate"]), has_audio=bool(meta["has_audio"]), fps=meta.get("fps"),
                     key=meta.get("key", sample.get("__key__", "")), meta=meta,
                     loader=partial(decode_sample, sample))
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"sample {sample.get('__key__')}: invalid metadata ({type(e).__name__}: {e})",
                         sample.get("__url__")) from None


def iter_videos(pattern: str | os.PathLike | Iterable) -> Iterator[Video]:
    """Every video of the shards matching ``pattern``, in shard order, fully decoded (see :class:`Video`)."""
    for shard in expand_shards(pattern):
        for sample in iter_samples(shard):
            yield decode_sample(sample)


class ShardSource:
    """WebDataset shards written by ``avis build``: one unit per shard file.

    ``pattern``: what ``avis.data.expand_shards`` takes (glob, brace pattern, folder, list). Categories come
    from the ``manifest.json`` beside the shards, or ``categories`` (a YTVIS JSON path or a list of
    ``{"id", "name"}``). ``videos(unit)`` yields lazy videos (:class:`avis.data.VideoSource`).
    ``on_error``: what training does with a shard it cannot read (truncated, corrupt, bad metadata): ``"warn"``
    skips the rest of that shard (or the bad sample) with a warning, ``"fail"`` stops with the error.
    Evaluation (``videos(unit, strict=True)``) always fails: a skipped video would silently change the metrics.
    """

    def __init__(self, pattern, categories=None, on_error: str = "warn"):
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

    def videos(self, unit: str, strict: bool = False):
        """The shard's videos, lazy (frames decoded on ``select`` / ``load``)."""
        try:
            for sample in self.samples(unit):
                try:
                    video = lazy_video(sample)
                except InputError as e:
                    self._skip(e, "this sample", strict)
                    continue
                yield video
        except InputError as e:  # the tar itself is damaged: what was read before it is kept
            self._skip(e, "the rest of this shard", strict)

    def samples(self, unit: str) -> Iterator[dict]:
        """The shard-reading step: one shard -> its samples (:func:`iter_samples`)."""
        return iter_samples(unit)

    def _skip(self, e: InputError, what: str, strict: bool) -> None:
        if strict or self.on_error == "fail":
            raise e
        log.warning("skipping %s: %s (data.train.on_error=fail to stop instead)", what, e)
