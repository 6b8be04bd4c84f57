"""What one shard sample may hold: the schema of its ``KEY.json`` and the size bounds of its members.

Shards come from anywhere (a bucket, a web server, a colleague), so nothing in a sample is believed before it
is checked. :func:`parse_meta` reads a sample's JSON (size-capped, ``NaN`` / ``Infinity`` refused) and checks
it against the schema below; :func:`member_limit` bounds each member by what that metadata allows, so that a
member is refused from its tar header, before it is read; the decoders in :mod:`avis.data.shards` compare
each JPEG's and the FLAC's own header with the metadata before decoding. Every bound a hostile file could
otherwise choose (frames, pixels, samples, instances) is either tied to the bytes actually present or capped
by a constant below.

Schema (format_version 1, docs/data.md "Shard format"); other keys are allowed and ignored:

============== ========================================================================================
key            rule
============== ========================================================================================
video_id       integer (64-bit) or non-empty string (at most 256 characters)
num_frames     integer >= 1; the sample holds exactly the JPEGs ``00000.jpg`` .. ``num_frames - 1``
frame_times    ``num_frames`` finite numbers, >= 0, non-decreasing, within the sound (num_samples / rate + 1 s)
width, height  integers in 1 .. MAX_SIDE, width * height <= MAX_FRAME_PIXELS; every JPEG has this size
has_audio      boolean; true requires the ``audio.flac`` member
sample_rate    integer in 1000 .. 192000
num_samples    integer in 0 .. MAX_AUDIO_SAMPLES; the FLAC header declares exactly this many (mono)
instances      (optional) at most MAX_INSTANCES objects with unique ``id`` (integer or string),
               ``category_id`` (integer), ``iscrowd`` (optional, 0 / 1), ``segmentations`` (``num_frames``
               entries: null or ``{"size": [height, width], "counts": compressed RLE string}``) and
               ``sounding`` (optional: null or ``num_frames`` booleans)
key            (optional) string equal to the sample's key in the tar
fps            (optional) null or a finite number > 0
duration       (optional) finite number >= 0, within 1 s of num_samples / sample_rate
format_version (optional) integer, at most FORMAT_VERSION
shown_times    (optional) ``num_frames`` finite numbers
============== ========================================================================================
"""

from __future__ import annotations

import json
import math
import re

FORMAT_VERSION = 1
MAX_SIDE = 16384  # pixels (as avis.io.ytvis.MAX_SIDE)
MAX_FRAME_PIXELS = 89_478_485  # Pillow's decompression-bomb bound: a frame decodes to at most 256 MiB
MAX_AUDIO_SAMPLES = 3 * 3600 * 16000  # 3 hours at 16 kHz: 691 MB as float32
MAX_INSTANCES = 1000
MAX_JSON_MEMBER_BYTES = 64 << 20  # one sample's metadata (json.loads needs several times this in memory)
MAX_MEMBER_BYTES = 1 << 30  # any member, before the sample's metadata is known
MAX_SAMPLE_BYTES = 4 << 30  # all members of one sample, before its metadata is known
MAX_LISTED = 3  # problems named in one message

_RLE_CHARS = re.compile(r"[0-o]*")  # pycocotools' compressed RLE code (characters 48..111)
_FRAME = re.compile(r"(\d{5,})\.jpg")
_INT64 = 1 << 63


class SampleError(ValueError):
    """A sample's metadata or members break the schema (the caller names the shard and the sample)."""


def _is_int(x, lo=-_INT64, hi=_INT64 - 1) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _show(x) -> str:
    r = repr(x)
    return f"{r[:40]}..." if len(r) > 43 else r


def _tname(x) -> str:
    return "null" if x is None else type(x).__name__


def _refuse_constant(name):
    raise SampleError(f"{name} is not a number JSON allows")


def parse_meta(data: bytes | str, key: str | None = None) -> dict:
    """A sample's JSON bytes -> its metadata, checked (:func:`check_meta`); :class:`SampleError` otherwise."""
    if len(data) > MAX_JSON_MEMBER_BYTES:
        raise SampleError(f"metadata is {len(data)} bytes, more than the {MAX_JSON_MEMBER_BYTES} byte limit")
    try:
        meta = json.loads(data, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise SampleError("metadata is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise SampleError(f"invalid metadata JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise SampleError("metadata JSON nested too deeply") from None
    except SampleError as e:
        raise SampleError(f"invalid metadata JSON: {e}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SampleError(f"invalid metadata JSON: {e}") from None
    problems = check_meta(meta, key)
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise SampleError("invalid metadata: " + "; ".join(problems[:MAX_LISTED]) + more)
    return meta


def check_meta(meta, key: str | None = None) -> list[str]:
    """The problems of a sample's metadata against the schema (module docstring); empty when it is valid."""
    if not isinstance(meta, dict):
        return [f"the top level is {_tname(meta)}, expected an object"]
    p: list[str] = []
    missing = [k for k in ("video_id", "num_frames", "frame_times", "width", "height", "has_audio", "sample_rate",
                           "num_samples") if k not in meta]
    if missing:
        return [f"missing {', '.join(repr(k) for k in missing)}"]

    vid = meta["video_id"]
    if not (_is_int(vid) or (isinstance(vid, str) and 0 < len(vid) <= 256)):
        p.append(f"'video_id' must be an integer or a short non-empty string, got {_show(vid)}")
    if "key" in meta and not (isinstance(meta["key"], str) and (key is None or meta["key"] == key)):
        p.append(f"'key' {_show(meta['key'])} is not the sample's key {key!r}")
    fv = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(fv, 0, FORMAT_VERSION):
        p.append(f"'format_version' {_show(fv)} is not one this avis reads (<= {FORMAT_VERSION})")

    T, W, H = meta["num_frames"], meta["width"], meta["height"]
    if not _is_int(T, 1):
        p.append(f"'num_frames' must be a positive integer, got {_show(T)}")
        T = None
    for name, v in (("width", W), ("height", H)):
        if not _is_int(v, 1, MAX_SIDE):
            p.append(f"'{name}' must be an integer in 1..{MAX_SIDE}, got {_show(v)}")
    if _is_int(W, 1, MAX_SIDE) and _is_int(H, 1, MAX_SIDE) and W * H > MAX_FRAME_PIXELS:
        p.append(f"frames of {W}x{H} pixels are beyond the {MAX_FRAME_PIXELS} pixel limit")
        W = H = None
    elif not (_is_int(W, 1, MAX_SIDE) and _is_int(H, 1, MAX_SIDE)):
        W = H = None

    if not isinstance(meta["has_audio"], bool):
        p.append(f"'has_audio' must be true or false, got {_show(meta['has_audio'])}")
    sr, n = meta["sample_rate"], meta["num_samples"]
    if not _is_int(sr, 1000, 192000):
        p.append(f"'sample_rate' must be an integer in 1000..192000, got {_show(sr)}")
        sr = None
    if not _is_int(n, 0, MAX_AUDIO_SAMPLES):
        p.append(f"'num_samples' must be an integer in 0..{MAX_AUDIO_SAMPLES}, got {_show(n)}")
        n = None
    if "duration" in meta:
        d = meta["duration"]
        if not (_is_num(d) and d >= 0):
            p.append(f"'duration' must be a finite number >= 0, got {_show(d)}")
        elif sr is not None and n is not None and abs(d * sr - n) > sr:
            p.append(f"'num_samples' {n} does not match 'duration' {d} s at {sr} Hz")
    if "fps" in meta and meta["fps"] is not None and not (_is_num(meta["fps"]) and meta["fps"] > 0):
        p.append(f"'fps' must be null or a finite number > 0, got {_show(meta['fps'])}")

    times = meta["frame_times"]
    if not isinstance(times, list):
        p.append(f"'frame_times' must be a list, got {_tname(times)}")
    elif T is not None and len(times) != T:
        p.append(f"{len(times)} 'frame_times' for 'num_frames' {T}")
    elif not all(_is_num(t) for t in times):
        p.append("'frame_times' must be finite numbers")
    elif times and (times[0] < 0 or any(b < a for a, b in zip(times, times[1:]))):
        p.append("'frame_times' must be >= 0 and non-decreasing")
    elif times and sr is not None and n is not None and times[-1] > n / sr + 1:
        p.append(f"'frame_times' reach {times[-1]} s, past the {n / sr:g} s of sound")
    if "shown_times" in meta:
        st = meta["shown_times"]
        if not (isinstance(st, list) and (T is None or len(st) == T) and all(_is_num(t) for t in st)):
            p.append("'shown_times' must be 'num_frames' finite numbers")

    insts = meta.get("instances", [])
    if not isinstance(insts, list):
        p.append(f"'instances' must be a list, got {_tname(insts)}")
    elif len(insts) > MAX_INSTANCES:
        p.append(f"{len(insts)} instances, more than the {MAX_INSTANCES} limit")
    else:
        ids = set()
        for k, inst in enumerate(insts):
            p += _check_instance(inst, f"instance {k}", T, H, W)
            if isinstance(inst, dict) and isinstance(inst.get("id"), (int, str)):
                if inst["id"] in ids:
                    p.append(f"instance {k}: duplicate id {_show(inst['id'])}")
                ids.add(inst["id"])
            if len(p) > MAX_LISTED:
                break
    return p


def _check_instance(inst, where: str, T: int | None, H: int | None, W: int | None) -> list[str]:
    if not isinstance(inst, dict):
        return [f"{where} is {_tname(inst)}, expected an object"]
    missing = [k for k in ("id", "category_id", "segmentations") if k not in inst]
    if missing:
        return [f"{where}: missing {', '.join(repr(k) for k in missing)}"]
    p = []
    if not (_is_int(inst["id"]) or (isinstance(inst["id"], str) and 0 < len(inst["id"]) <= 256)):
        p.append(f"{where}: 'id' must be an integer or a short non-empty string, got {_show(inst['id'])}")
    if not _is_int(inst["category_id"]):
        p.append(f"{where}: 'category_id' must be an integer, got {_show(inst['category_id'])}")
    if inst.get("iscrowd", 0) not in (0, 1) or isinstance(inst.get("iscrowd"), float):
        p.append(f"{where}: 'iscrowd' must be 0 or 1, got {_show(inst.get('iscrowd'))}")
    snd = inst.get("sounding")
    if snd is not None and not (isinstance(snd, list) and (T is None or len(snd) == T)
                                and all(isinstance(s, bool) for s in snd)):
        p.append(f"{where}: 'sounding' must be null or 'num_frames' booleans")
    segs = inst["segmentations"]
    if not isinstance(segs, list):
        return p + [f"{where}: 'segmentations' must be a list, got {_tname(segs)}"]
    if T is not None and len(segs) != T:
        return p + [f"{where}: {len(segs)} segmentations for 'num_frames' {T}"]
    for t, seg in enumerate(segs):
        if seg is None:
            continue
        if not (isinstance(seg, dict) and "size" in seg and "counts" in seg):
            return p + [f"{where} frame {t}: a segmentation must be null or an RLE {{'size', 'counts'}}"]
        if H is not None and seg["size"] != [H, W]:
            return p + [f"{where} frame {t}: RLE size {_show(seg['size'])} is not the frames' [height, width] "
                        f"[{H}, {W}]"]
        if not (isinstance(seg["counts"], str) and _RLE_CHARS.fullmatch(seg["counts"])):
            return p + [f"{where} frame {t}: RLE counts must be a compressed RLE string"]
    return p


def frame_index(suffix: str) -> int | None:
    """``00012.jpg`` -> 12; None for a member that is not a frame."""
    m = _FRAME.fullmatch(suffix)
    if m is None or f"{int(m.group(1)):05d}" != m.group(1):  # only the names the builder writes
        return None
    return int(m.group(1))


def member_limit(suffix: str, meta: dict | None) -> int:
    """The most bytes a member may declare: by the sample's (checked) metadata when it is known, else by the
    caps of the format. Raises :class:`SampleError` for a member the metadata rules out (a frame past
    ``num_frames``)."""
    if suffix == "json":
        return MAX_JSON_MEMBER_BYTES
    if meta is None:
        return MAX_MEMBER_BYTES
    if suffix == "audio.flac":
        # 16-bit mono FLAC is at most about 2 bytes a sample (verbatim subframes) plus frame headers
        return 3 * meta["num_samples"] + (1 << 20)
    i = frame_index(suffix)
    if i is not None:
        if i >= meta["num_frames"]:
            raise SampleError(f"frame member {suffix} is past 'num_frames' {meta['num_frames']}")
        # a baseline JPEG of W x H stays well under 4 bytes a pixel; 1 MiB for headers, EXIF, ICC
        return 4 * meta["width"] * meta["height"] + (1 << 20)
    return MAX_MEMBER_BYTES


def check_members(sample: dict, meta: dict) -> None:
    """A grouped sample against its metadata: every member within :func:`member_limit` (members read before
    the JSON were only bounded by the caps), exactly the frames ``0 .. num_frames - 1``, the sound when
    ``has_audio``. Raises :class:`SampleError`."""
    frames = set()
    for suffix, data in sample.items():
        if suffix.startswith("__") or suffix == "json":
            continue
        size = len(data)
        if size > member_limit(suffix, meta):
            raise SampleError(f"member {suffix} is {size} bytes, more than its metadata allows "
                              f"({member_limit(suffix, meta)})")
        i = frame_index(suffix)
        if i is not None:
            frames.add(i)
    T = meta["num_frames"]
    if len(frames) != T:
        missing = next(i for i in range(T) if i not in frames)
        raise SampleError(f"{len(frames)} frames stored, metadata says {T} (frame '{missing:05d}.jpg' missing)")
    if meta["has_audio"] and "audio.flac" not in sample:
        raise SampleError("'has_audio' is true but there is no audio.flac member")
