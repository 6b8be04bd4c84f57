"""Reading the shards ``avis build`` writes (format: docs/data.md), through webdataset's streaming stack.

A shard is named by a path or a URL: a local file, ``file:``, ``pipe:COMMAND`` (its standard output),
``http(s)://`` (webdataset runs curl), and any fsspec protocol (``s3://``, ``gs://``, ``az://``, ...) when
fsspec and its backend are installed (registered as webdataset ``gopen`` handlers here). One shard is read as
a webdataset pipeline (:func:`iter_samples`)::

    URL -> open_shard (webdataset's gopen; a local path only as a regular file)
        -> tar_members (each member's tar header checked before the member is read)
        -> wds.group_by_keys (members sharing a key -> one sample)
        -> check_sample (metadata against the schema of avis.data.schema, members against the metadata)

``tar_members`` stands where webdataset's ``tar_file_expander`` would: that one reads each member before any
code can look at its header, so a sparse member declaring gigabytes would be allocated before a handler could
refuse it. It yields the same records (``{"fname", "data", "__url__"}``, ``{}`` at the end of a shard), so
``group_by_keys`` and any other webdataset stage work on them. A sample's JSON is parsed and checked as it is
read, so that the members after it are bounded by what it allows; a refused sample's other members are
skipped unread. Frames and sound are decoded later, when a clip asks for them, by decoders that compare the
JPEG's and the FLAC's own header with the metadata first (:func:`decode_jpeg`, :func:`decode_audio`).

:func:`decode_sample` turns a sample into a :class:`~avis.data.video.Video` (only the frames asked for),
:func:`lazy_video` into a lazy one. :class:`ShardSource` serves shards to training and evaluation (a
:class:`~avis.data.video.VideoSource`); its shard-reading step, shard -> samples, is :meth:`ShardSource.samples`.
"""

from __future__ import annotations

import glob
import importlib.util
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property, partial
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
from webdataset.gopen import Pipe, gopen, gopen_schemes
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext, group_by_keys

from avis.data.schema import (
    MAX_AUDIO_SAMPLES,
    MAX_MEMBER_BYTES,  # noqa: F401 - re-exported: the limits live in avis.data.schema
    MAX_SAMPLE_BYTES,
    SampleError,
    check_members,
    member_limit,
    parse_meta,
)
from avis.data.video import Instance, Video
from avis.errors import ConfigError, InputError
from avis.io import masks as mask_io
from avis.io.files import open_regular, regular_file

log = logging.getLogger(__name__)

AUDIO_CACHE_KEY = "__audio__"  # decoded waveform memoised in the sample dict (no tar suffix can clash)
ERROR_SUFFIX = "__error__"  # a record of tar_members: the sample it belongs to was refused (the reason)
MANIFEST = "manifest.json"
_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # a shard listed in a manifest: a plain file name
# curl's exit statuses (webdataset reads http(s) through curl) in words
_CURL = {6: "could not resolve the host", 7: "could not connect", 18: "the transfer stopped early",
         22: "the server answered with an HTTP error", 28: "timed out", 52: "the server sent nothing",
         56: "the connection broke"}


# ------------------------------------------------------------------------------------------------ URLs

def _register_fsspec() -> None:
    """fsspec protocols (s3, gs with gcsfs, az, hdfs, memory, ...) as webdataset gopen handlers, for the
    schemes webdataset does not open itself. Nothing happens without fsspec."""
    if importlib.util.find_spec("fsspec") is None:
        return
    import fsspec

    prefer = {"gs", "gcs"} if importlib.util.find_spec("gcsfs") is not None else set()  # over the gsutil CLI
    for proto in fsspec.available_protocols():
        if proto in ("file", "local") or (proto in gopen_schemes and proto not in prefer):
            continue
        gopen_schemes[proto] = _gopen_fsspec


def _gopen_fsspec(url, mode="rb", bufsize=8192, **kw):
    import fsspec

    return fsspec.open(url, mode).open()


_register_fsspec()


def is_url(name: str) -> bool:
    """``scheme:...`` (s3://, http://, pipe:, file:) rather than a local path (``C:\\x`` is a path)."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", name) is not None


def _is_remote(name: str) -> bool:
    return is_url(name) and not name.startswith("file:")


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower()


def _check_scheme(url: str) -> None:
    scheme = _scheme(url)
    if scheme != "file" and scheme not in gopen_schemes:
        raise InputError(f"no reader for '{scheme}:' URLs (webdataset opens pipe:, http(s): and the fsspec "
                         "protocols when fsspec and its backend, e.g. s3fs or gcsfs, are installed)", url)


def _local_path(name: str) -> str:
    return url2pathname(urlparse(name).path) if name.startswith("file:") else name


def read_url(url: str, limit: int) -> bytes:
    """The bytes at a path or URL (read through the shard opener), at most ``limit`` of them."""
    try:
        stream = open_shard(url)
        data = stream.read(limit + 1)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any transport failure is the URL's
        failure = _close(stream) if "stream" in locals() else None
        raise InputError(f"cannot read ({failure or _reason(e)})", url) from None
    if len(data) > limit:
        _close(stream)
        raise InputError(f"more than the {limit} byte limit", url)
    failure = _close(stream)
    if failure:
        raise InputError(f"cannot read ({failure})", url)
    return data


def _load_json_url(url: str):
    from avis.io.ytvis import load_json, max_json_bytes

    if not is_url(url):
        return load_json(url)
    data = read_url(url, max_json_bytes())
    try:
        return json.loads(data)
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        raise InputError(f"invalid JSON ({type(e).__name__}: {str(e)[:200]})", url) from None


def _base(name: str) -> str:
    """The folder of a shard path or URL (with its trailing separator)."""
    return name[: name.rindex("/") + 1] if "/" in name else ""


def manifest_shards(manifest_url: str) -> list[str]:
    """The shards a ``manifest.json`` (path or URL) lists, beside it."""
    manifest = _load_json_url(manifest_url)
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list):
        raise InputError("not an avis manifest (no 'shards' list)", manifest_url)
    out = []
    for s in shards:
        name = s.get("name") if isinstance(s, dict) else None
        # a manifest from a server names files beside it, never a command (pipe:) or another place
        if not (isinstance(name, str) and _SHARD_NAME.fullmatch(name)):
            raise InputError(f"shard name {name!r} is not a plain file name", manifest_url)
        out.append(_base(manifest_url) + name)
    return out


def expand_shards(pattern: str | os.PathLike | Iterable) -> list[str]:
    """Shard paths or URLs from brace patterns (``shard-{000000..000009}.tar``), globs (local, or fsspec
    URLs), local folders (their ``shard-*.tar``), ``manifest.json`` files or URLs and URLs ending in ``/``
    (the shards the manifest lists), or lists of these."""
    from webdataset.shardlists import expand_urls

    if isinstance(pattern, (str, os.PathLike)):
        items = [os.fspath(pattern)]
    else:
        items = [os.fspath(p) for p in pattern]
    out: list[str] = []
    for item in items:
        try:
            urls = expand_urls(item)
        except (AssertionError, ValueError) as e:  # webdataset: ${VAR} without WDS_VAR set
            raise InputError(f"cannot expand the shard pattern ({e})", item) from None
        for url in urls:
            if is_url(url) and not url.startswith("file:"):
                _check_scheme(url)
                if url.startswith("pipe:"):
                    out.append(url)
                elif url.endswith("/") or url.endswith("/" + MANIFEST):
                    out += manifest_shards(url if url.endswith(MANIFEST) else url + MANIFEST)
                elif any(ch in url for ch in "*?[") and gopen_schemes.get(_scheme(url)) is _gopen_fsspec:
                    import fsspec

                    fs = fsspec.filesystem(_scheme(url))
                    out += sorted(fs.unstrip_protocol(p) for p in fs.glob(url))
                else:
                    out.append(url)
                continue
            path = _local_path(url)
            if os.path.isdir(path):
                out += sorted(glob.glob(os.path.join(path, "shard-*.tar")))
            elif os.path.basename(path) == MANIFEST:
                out += manifest_shards(path)
            elif any(ch in path for ch in "*?["):
                out += sorted(glob.glob(path))
            else:
                out.append(url)
    if not out:
        raise InputError("no shards match", str(pattern))
    for url in out:  # a FIFO would block the reader forever: refuse anything but files (missing ones later)
        if not _is_remote(url) and os.path.exists(_local_path(url)):
            regular_file(_local_path(url))
    return out


def manifest_location(shards: list[str]) -> str | None:
    """Where the ``manifest.json`` beside the first shard is (a path or URL); None for a ``pipe:`` shard."""
    first = shards[0]
    if first.startswith("pipe:"):
        return None
    if not _is_remote(first):
        return str(Path(_local_path(first)).parent / MANIFEST)
    return _base(first) + MANIFEST


def load_manifest(shards: list[str]) -> dict | None:
    """The ``manifest.json`` beside the first shard (a path or URL), or None where there is none (a ``pipe:``
    shard has no place beside it)."""
    first = shards[0]
    if first.startswith("pipe:"):
        return None
    if not is_url(first) or first.startswith("file:"):
        path = Path(_local_path(first)).parent / MANIFEST
        return _load_json_url(str(path)) if path.is_file() else None
    try:
        return _load_json_url(_base(first) + MANIFEST)
    except InputError as e:
        log.debug("no manifest beside %s: %s", first, e)
        return None


def load_categories(categories, shards: list[str]) -> list[dict]:
    """``{"id", "name"}`` dicts: from ``categories`` (a list, or the path / URL of a YTVIS JSON or manifest
    holding ``categories``), else from the manifest beside the shards."""
    where = None
    if categories is None:
        first = shards[0]
        where = manifest_location(shards)
        why = "a pipe: shard has no place beside it"
        manifest = None
        if where is not None:
            try:
                manifest = _load_json_url(where) if _is_remote(where) or os.path.isfile(_local_path(where)) else None
                why = "there is none" if manifest is None else "it has no 'categories'"
            except InputError as e:
                why = e.message
        if not isinstance(manifest, dict) or manifest.get("categories") is None:
            raise InputError(f"no manifest.json with 'categories' beside the shards ({why}); give the categories "
                             "(data.train.categories=<YTVIS JSON or manifest.json, a path or URL>)",
                             where or first)
        categories = manifest["categories"]
    elif isinstance(categories, (str, os.PathLike)):
        where = os.fspath(categories)
        data = _load_json_url(where)
        categories = data.get("categories") if isinstance(data, dict) else None
    try:
        return [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in categories]
    except (TypeError, KeyError, ValueError, AttributeError):
        raise InputError("'categories' must be a list of {\"id\": integer, \"name\": ...} objects",
                         where) from None


# ------------------------------------------------------------------------------------------------ streams

def _open_local(path: str):
    """A local shard, opened only if it is a regular file (a FIFO would block the reader, a device never end)."""
    return open_regular(path, missing="unreadable shard (no such file)")


def open_shard(url: str):
    """A readable stream of a shard: webdataset's ``gopen`` for URLs, a regular file for local paths."""
    if not is_url(url) or url.startswith("file:"):
        return _open_local(_local_path(url))
    _check_scheme(url)
    return gopen(url, "rb")


def _close(stream) -> str | None:
    """Close a shard stream; what went wrong behind it (the exit of curl or a ``pipe:`` command), if anything."""
    try:
        stream.close()
    except Exception as e:  # noqa: BLE001 - a pipe's failed exit, a broken connection
        if isinstance(stream, Pipe) and stream.status is not None:
            cmd = stream.args[0][0]
            prog = cmd[0] if isinstance(cmd, list) else str(cmd).split()[0]
            what = _CURL.get(stream.status, "") if prog == "curl" else ""
            return f"{prog} exited with status {stream.status}" + (f": {what}" if what else "")
        return _reason(e)
    return None


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e.args[0]) if isinstance(e.args, tuple) and e.args and isinstance(e.args[0], str) else str(e)


def _escapes(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def open_shards(urls: Iterable[str]) -> Iterator[dict]:
    """webdataset stage (as ``wds.url_opener``): shard URLs -> ``{"url", "stream"}`` (:func:`open_shard`)."""
    for url in urls:
        yield {"url": url, "stream": open_shard(url)}


def tar_members(sources: Iterable[dict]) -> Iterator[dict]:
    """webdataset stage: opened shards (``{"url", "stream"}``) -> their members as ``{"fname", "data",
    "__url__"}``, with ``{}`` after each sample and at the end of each shard (the records of
    ``wds.tar_file_expander``; on ``{}`` ``wds.group_by_keys`` hands out the sample it holds, so a sample is
    complete and handed out before the next one is read).

    Each member's header is checked before the member is read: members other than regular files are skipped;
    a name that is absolute or goes up with ``..`` stops the shard (InputError); a sparse member, or one
    larger than its bound (:func:`avis.data.schema.member_limit`: by the sample's metadata once its JSON has
    been read, else by the format's caps), refuses its sample: a record ``KEY.__error__`` carries the reason
    and the sample's other members are skipped unread. A sample's JSON is parsed and checked here; its record
    carries the metadata (a dict). The stream is closed at the end of each shard, and a failure behind it
    (curl's or a ``pipe:`` command's exit status) is an error even where the bytes ended cleanly.
    """
    for source in sources:
        url, stream = source["url"], source["stream"]
        try:
            yield from _members(url, stream)
        except GeneratorExit:  # the reader stopped early
            _close(stream)
            raise
        except Exception as e:
            failure = _close(stream)  # the transport's reason (curl: the server broke off) over tarfile's
            if failure:
                raise OSError(failure) from e
            raise
        failure = _close(stream)
        if failure:
            raise OSError(failure)
        yield {}


def _members(url: str, stream) -> Iterator[dict]:
    key, meta, total, refused = None, None, 0, False
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for m in tar:
            tar.members = []  # keep no list of headers: a shard has thousands of members
            if not m.isreg():
                continue
            if _escapes(m.name):
                raise InputError(f"member name {m.name!r} is absolute or goes up with '..'", url)
            prefix, suffix = base_plus_ext(m.name)
            if prefix is None:
                continue
            suffix = suffix.lower()
            if prefix != key:
                if key is not None:
                    yield {}  # group_by_keys hands out the finished sample now, before this member is read
                key, meta, total, refused = prefix, None, 0, False
            if refused:
                continue  # tarfile skips its bytes without reading them into memory
            problem = None
            if m.sparse is not None:
                problem = f"member {suffix} is stored sparse ({m.size} bytes declared); avis shards never are"
            else:
                try:
                    limit = member_limit(suffix, meta)
                except SampleError as e:
                    problem = str(e)
                else:
                    if m.size > limit:
                        by = "its metadata allows" if meta is not None else "the format allows"
                        problem = f"member {suffix} declares {m.size} bytes, more than {by} ({limit})"
                    elif meta is None and total + m.size > MAX_SAMPLE_BYTES:
                        problem = f"the sample's members exceed {MAX_SAMPLE_BYTES} bytes before its metadata"
            if problem is None:
                data = tar.extractfile(m).read()
                total += len(data)
                if suffix == "json":
                    try:
                        data = meta = parse_meta(data, os.path.basename(prefix))
                    except SampleError as e:
                        problem = str(e)
            if problem is not None:
                refused = True
                yield {"fname": f"{prefix}.{ERROR_SUFFIX}", "data": problem, "__url__": url}
                yield {}  # handed out (and refused) now: skipping the member may be what breaks the shard
                continue
            yield {"fname": m.name, "data": data, "__url__": url}


def check_sample(sample: dict) -> dict:
    """webdataset stage (one sample): refuse a sample ``tar_members`` marked, or whose metadata or members
    break the schema (:class:`SampleError`); the checked metadata is ``sample["json"]`` (a dict)."""
    if ERROR_SUFFIX in sample:
        raise SampleError(sample[ERROR_SUFFIX])
    meta = sample.get("json")
    if meta is None:
        raise SampleError("no metadata member (KEY.json)")
    if not isinstance(meta, dict):
        meta = sample["json"] = parse_meta(meta, os.path.basename(sample["__key__"]))
    check_members(sample, meta)
    return sample


def iter_samples(url: str | os.PathLike, *, handler: Callable[[Exception], bool] = reraise_exception,
                 retries: int = 0) -> Iterator[dict]:
    """Stream one shard: checked samples ``{"__key__", "__url__", "json": metadata dict, "audio.flac": bytes,
    "00000.jpg": bytes, ...}``, each handed out before the next is read (a shard damaged inside a sample
    keeps the samples before it). Nothing is extracted to disk.

    A sample that breaks the schema is an :class:`InputError` given to ``handler`` (webdataset's protocol:
    raise it, return True to skip the sample and go on, False to stop reading the shard). A shard that cannot
    be read raises InputError; a remote one (any URL but ``file:``) is first read again up to ``retries``
    times, continuing after the samples already handed out, so the samples are the same as an unbroken read's.
    """
    url = os.fspath(url)
    done = attempt = 0
    while True:
        members = tar_members(open_shards([url]))
        groups = group_by_keys(members)
        i = 0
        try:
            while True:
                try:
                    group = next(groups)
                except StopIteration:
                    return
                except InputError:
                    raise
                except Exception as e:  # noqa: BLE001 - tarfile, the transport, duplicate members: the shard's
                    err = InputError(f"unreadable shard ({_reason(e)})", url)
                    if attempt < retries and _is_remote(url):
                        attempt += 1
                        log.warning("%s; reading it again after its first %d samples (retry %d of %d)", err, done,
                                    attempt, retries)
                        break
                    raise err from None
                i += 1
                if i <= done:  # read again after a broken transfer: these were handed out already
                    continue
                done = i
                try:
                    yield check_sample(group)
                except SampleError as e:
                    err = InputError(f"sample {group['__key__']}: {e}", url)
                    if not handler(err):
                        return
        finally:
            groups.close()
            members.close()


# ------------------------------------------------------------------------------------------------ decoding

def sample_meta(sample: dict) -> dict:
    """A sample's checked metadata (``sample["json"]``: parsed and checked here when it is still bytes)."""
    meta = sample.get("json")
    if isinstance(meta, dict):
        return meta
    key = sample.get("__key__")
    if meta is None:
        raise InputError(f"sample {key}: no metadata member (KEY.json)", sample.get("__url__"))
    try:
        meta = sample["json"] = parse_meta(meta, None if key is None else os.path.basename(key))
    except SampleError as e:
        raise InputError(f"sample {key}: {e}", sample.get("__url__")) from None
    return meta


def decode_jpeg(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """JPEG bytes -> uint8 H x W x 3. With ``size`` (height, width), an image whose header says otherwise is
    refused (ValueError) before it is decoded; Pillow's decompression-bomb bound holds in any case."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
        if size is not None and (im.height, im.width) != tuple(size):
            raise ValueError(f"its header says {im.width}x{im.height}, the metadata {size[1]}x{size[0]}")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_audio(data: bytes, num_samples: int | None = None, sample_rate: int | None = None) -> np.ndarray:
    """FLAC bytes -> float32 (N,) (channels averaged). The header must declare ``num_samples`` samples at
    ``sample_rate`` (when given; at most MAX_AUDIO_SAMPLES in any case) and the stream must hold them: no
    more than that is allocated or read (ValueError otherwise)."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.format != "FLAC":
            raise ValueError(f"not FLAC but {f.format}")
        n = f.frames if num_samples is None else num_samples
        if f.frames != n or not 0 <= n <= MAX_AUDIO_SAMPLES:
            raise ValueError(f"its header declares {f.frames} samples, the metadata {n}")
        if sample_rate is not None and f.samplerate != sample_rate:
            raise ValueError(f"its header says {f.samplerate} Hz, the metadata {sample_rate} Hz")
        if not 1 <= f.channels <= 8:
            raise ValueError(f"{f.channels} channels")
        x = f.read(frames=n, dtype="float32", always_2d=True)
    if len(x) != n:
        raise ValueError(f"the sound ends after {len(x)} of its {n} samples")
    return x[:, 0].copy() if x.shape[1] == 1 else x.mean(axis=1)


def decode_sample(sample: dict, frames: Iterable[int] | None = None, audio: bool = True) -> Video:
    """A shard sample -> :class:`Video` holding the frames at indices ``frames`` (all by default)."""
    meta = sample_meta(sample)
    key, url = meta.get("key", sample.get("__key__")), sample.get("__url__")
    T, H, W = meta["num_frames"], meta["height"], meta["width"]
    idx = list(range(T)) if frames is None else [int(i) for i in frames]
    if any(not 0 <= i < T for i in idx):
        raise IndexError(f"frame indices {idx} outside 0..{T - 1}")
    imgs = []
    for i in idx:
        name = f"{i:05d}.jpg"
        if name not in sample:
            raise InputError(f"sample {key}: frame '{name}' missing", url)
        try:
            imgs.append(decode_jpeg(sample[name], (H, W)))
        except Exception as e:  # noqa: BLE001 - PIL: unidentified, truncated, a bomb; our header check
            raise InputError(f"sample {key}: frame {name}: unreadable JPEG ({_reason(e)})", url) from None
    try:
        frames_arr = np.stack(imgs) if imgs else np.zeros((0, H, W, 3), np.uint8)
        if audio and "audio.flac" in sample:
            # Training draws several clips per sample: decode the FLAC once and keep it with the sample.
            wav = sample.get(AUDIO_CACHE_KEY)
            if wav is None:
                try:
                    wav = decode_audio(sample["audio.flac"], meta["num_samples"], meta["sample_rate"])
                except (RuntimeError, ValueError, OSError, TypeError) as e:  # soundfile: corrupt FLAC
                    raise InputError(f"sample {key}: unreadable audio ({_reason(e)})", url) from None
                sample[AUDIO_CACHE_KEY] = wav
        else:
            wav = np.zeros(0, np.float32)
        instances = []
        for k, inst in enumerate(meta.get("instances", [])):
            segs = inst["segmentations"]
            present = np.array([segs[i] is not None for i in idx], dtype=bool)
            masks = np.zeros((len(idx), H, W), dtype=bool)
            for j, i in enumerate(idx):
                if segs[i] is not None:
                    try:
                        masks[j] = mask_io.decode(segs[i])
                    except ValueError as e:  # pycocotools: counts that do not cover height x width
                        raise InputError(f"sample {key}: instance {k} frame {i}: invalid RLE ({e})", url) from None
            snd = inst.get("sounding")  # the schema checked it: null or num_frames booleans
            instances.append(Instance(instance_id=inst["id"], category_id=inst["category_id"], masks=masks,
                                      present=present, iscrowd=int(inst.get("iscrowd", 0)),
                                      sounding=None if snd is None else np.array([snd[i] for i in idx], bool)))
    except MemoryError:
        raise InputError(f"sample {key}: decoding {len(idx)} frames of {W}x{H} with their masks does not fit in "
                         "memory", url) from None
    times = np.asarray(meta["frame_times"], dtype=np.float64)[idx]
    return Video(video_id=meta["video_id"], frames=frames_arr, frame_times=times, audio=wav[None, :],
                 sample_rate=int(meta["sample_rate"]), has_audio=bool(meta["has_audio"]), instances=instances,
                 fps=meta.get("fps"), key=meta.get("key", sample.get("__key__", "")), meta=meta)


def lazy_video(sample: dict) -> Video:
    """A shard sample as a lazy :class:`Video`: its metadata now, frames and sound when selected or loaded."""
    meta = sample_meta(sample)
    return Video(video_id=meta["video_id"], frames=None, frame_times=np.asarray(meta["frame_times"], np.float64),
                 audio=None, sample_rate=int(meta["sample_rate"]), has_audio=bool(meta["has_audio"]),
                 fps=meta.get("fps"), key=meta.get("key", sample.get("__key__", "")), meta=meta,
                 loader=partial(decode_sample, sample))


def iter_videos(pattern: str | os.PathLike | Iterable) -> Iterator[Video]:
    """Every video of the shards matching ``pattern``, in shard order, fully decoded (see :class:`Video`)."""
    for shard in expand_shards(pattern):
        for sample in iter_samples(shard):
            yield decode_sample(sample)


# ------------------------------------------------------------------------------------------------ source

class ShardSource:
    """WebDataset shards written by ``avis build``: one unit per shard (a path or URL, see the module).

    ``pattern``: what :func:`expand_shards` takes (glob, brace pattern, folder, manifest, URL, list).
    Categories come from the ``manifest.json`` beside the shards (fetched by URL for remote shards), or
    ``categories`` (a list of ``{"id", "name"}``, or the path / URL of a YTVIS JSON or manifest).
    ``videos(unit)`` yields lazy videos (:class:`avis.data.VideoSource`).
    ``on_error``: what training does with a shard it cannot read (truncated, corrupt, bad metadata): ``"warn"``
    skips the rest of that shard (or the bad sample) with a warning, ``"fail"`` stops with the error.
    Evaluation (``videos(unit, strict=True)``) always fails: a skipped video would silently change the metrics.
    ``retries``: how often a remote shard whose transfer breaks is read again (continuing where it broke)
    before ``on_error`` applies.
    """

    def __init__(self, pattern, categories=None, on_error: str = "warn", retries: int = 2):
        if on_error not in ("warn", "fail"):
            raise ConfigError(f"on_error must be 'warn' or 'fail', got {on_error!r}")
        if not (isinstance(retries, int) and retries >= 0):
            raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
        self.on_error, self.retries = on_error, retries
        self.files = expand_shards(pattern if isinstance(pattern, str) else list(pattern))
        for f in self.files:
            if not _is_remote(f) and not os.path.isfile(_local_path(f)):
                raise InputError("shard not found", f)
        self.categories = load_categories(categories, self.files)
        self._ids = {c["id"] for c in self.categories}

    def units(self) -> list[str]:
        return list(self.files)

    @cached_property
    def fps(self) -> float | None:
        """The frame rate of the data (its first video's: the ``fps`` it was built at, else the mean rate of
        its frame times); None when it cannot be read. Recorded in checkpoints, so that ``avis infer`` runs
        at the rate the model was trained on."""
        videos = self.videos(self.files[0], strict=True)
        try:
            video = next(videos, None)
        except (InputError, OSError) as e:
            log.debug("no frame rate from %s: %s", self.files[0], e)
            return None
        finally:
            videos.close()  # the shard's stream is released now, not when the generator is collected
        if video is None:
            return None
        if video.fps:
            return float(video.fps)
        t = np.asarray(video.frame_times, np.float64)
        return float((len(t) - 1) / (t[-1] - t[0])) if len(t) > 1 and t[-1] > t[0] else None

    def videos(self, unit: str, strict: bool = False):
        """The shard's videos, lazy (frames decoded on ``select`` / ``load``)."""
        handler = reraise_exception if strict or self.on_error == "fail" else self._skip_sample
        try:
            for sample in self.samples(unit, handler):
                meta = sample["json"]
                # training: a label outside the categories would stop the run; evaluation checks the
                # categories against its checkpoint or ground truth itself (avis.engine.evaluate)
                unknown = [] if strict else sorted({i["category_id"] for i in meta.get("instances", [])} - self._ids)
                if unknown:
                    e = InputError(f"sample {sample['__key__']}: category_id {unknown[0]} is not one of the "
                                   f"dataset's categories {sorted(self._ids)}", unit)
                    if handler(e):
                        continue
                    return
                yield lazy_video(sample)
        except InputError as e:  # the tar itself is damaged: what was read before it is kept
            if strict or self.on_error == "fail":
                raise
            log.warning("skipping the rest of this shard: %s (data.train.on_error=fail to stop instead)", e)

    def samples(self, unit: str, handler: Callable[[Exception], bool] = reraise_exception) -> Iterator[dict]:
        """The shard-reading step: one shard -> its checked samples (:func:`iter_samples`)."""
        return iter_samples(unit, handler=handler, retries=self.retries)

    @staticmethod
    def _skip_sample(e: Exception) -> bool:
        log.warning("skipping this sample: %s (data.train.on_error=fail to stop instead)", e)
        return True
