"""Shards that lie, made from a good shard by the tests (nothing is committed; nothing big is written).

Each case is a shard whose first sample (video 1) is bad and whose second (video 2) is good, with the
``manifest.json`` of the good build beside it: a tar member stored sparse or declaring gigabytes, a FLAC whose
header claims 256 GiB of sound, a JPEG whose header says 20000 x 20000, sample JSON claiming a billion frames
or 60000 x 60000 pixels, and malformed sample JSON of every kind (missing keys, wrong types, negative, NaN,
wrong list lengths, ...).
"""

from __future__ import annotations

import copy
import json
import struct
import tarfile
from pathlib import Path

import numpy as np

from avis.io import masks as mask_io

GiB = 1 << 30


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]


def _header(name: str, size: int, typeflag: bytes = b"0", fmt=tarfile.USTAR_FORMAT) -> bytearray:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = size, 0o644
    buf = bytearray(ti.tobuf(format=fmt))
    buf[156:157] = typeflag
    return buf


def _octal(n: int, width: int) -> bytes:
    return b"%0*o" % (width - 1, n) + b"\0"


def _checksum(buf: bytearray) -> bytes:
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def sparse_member(name: str, real_size: int, data: bytes = b"\xff" * 512) -> bytes:
    """A GNU sparse member (type 'S'): ``data`` at the end of a hole, ``real_size`` bytes once expanded, stored
    in a few hundred bytes. tarfile reads it back as a regular file of ``real_size`` bytes."""
    buf = _header(name, len(data), b"S", tarfile.GNU_FORMAT)
    buf[386:398] = _octal(real_size - len(data), 12)  # one sparse entry: offset, number of bytes
    buf[398:410] = _octal(len(data), 12)
    buf[482] = 0  # no extended sparse headers
    buf[483:495] = _octal(real_size, 12)
    return _checksum(buf) + _padded(data)


def lying_member(name: str, declared: int, data: bytes) -> bytes:
    """A regular member whose header declares ``declared`` bytes but which holds ``data`` (the archive then
    ends: the rest of the shard is part of the member, as far as tar can tell)."""
    return _checksum(_header(name, declared)) + _padded(data)


def write_tar(path: Path, entries: list) -> Path:
    """``entries``: ``(name, bytes)`` members and raw members (bytes from the helpers above), in order."""
    out = bytearray()
    for e in entries:
        if isinstance(e, bytes):
            out += e
        else:
            name, data = e
            out += _checksum(_header(name, len(data))) + _padded(data)
    path.write_bytes(bytes(out) + b"\0" * 1024)
    return path


def flac_claiming(data: bytes, total_samples: int) -> bytes:
    """The FLAC with its STREAMINFO's total sample count (36 bits) replaced."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO must come first"
    (word,) = struct.unpack(">Q", data[18:26])
    word = (word & ~((1 << 36) - 1)) | total_samples
    return data[:18] + struct.pack(">Q", word) + data[26:]


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with the size in its frame header (SOF0/1/2) replaced."""
    b, i = bytearray(data), 2
    while i < len(b):
        marker, length = b[i + 1], struct.unpack(">H", b[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(b)
        i += 2 + length
    raise AssertionError("no frame header")


def _instance(meta: dict, **changes) -> dict:
    T, H, W = meta["num_frames"], meta["height"], meta["width"]
    m = np.zeros((H, W), np.uint8)
    m[H // 4: H // 2, W // 4: W // 2] = 1
    rle = mask_io.encode(m)
    return {"id": 7, "category_id": 1, "iscrowd": 0, "segmentations": [rle] * T, **changes}


def _uncovered_rle(meta: dict) -> dict:
    """A compressed RLE of the right size and characters whose counts cover far more than height x width."""
    H, W = meta["height"], meta["width"]
    big = mask_io.encode(np.zeros((H * 4, W), np.uint8))
    return {"size": [H, W], "counts": big["counts"]}


def meta_cases(meta: dict, key: str) -> dict[str, tuple[bytes, str]]:
    """name -> (the sample's JSON bytes, the expected reason (a regex)), all refused by the reader."""
    T = meta["num_frames"]

    def edit(fn) -> bytes:
        m = copy.deepcopy(meta)
        fn(m)
        return json.dumps(m).encode()

    def setk(**kv):
        return edit(lambda m: m.update(kv))

    def inst(**changes):
        return edit(lambda m: m.update(instances=[_instance(m, **changes)]))

    def drop(*keys):
        return edit(lambda m: [m.pop(k) for k in keys])

    nan = json.dumps(meta).replace('"frame_times": [0.0', '"frame_times": [NaN', 1).encode()
    inf = json.dumps(meta).replace('"frame_times": [0.0', '"frame_times": [-Infinity', 1).encode()
    assert b"NaN" in nan and b"Infinity" in inf
    inv = "invalid metadata: "
    return {
        # a sample claiming more than it holds (issue 21: a billion frames, 60000 x 60000)
        "billion-frames": (setk(num_frames=10**9), inv + rf"{T} 'frame_times' for 'num_frames' 1000000000"),
        "billion-frames-float": (setk(num_frames=1e9), inv + r"'num_frames' must be a positive integer, got 1000000000\.0"),
        "60000x60000": (setk(width=60000, height=60000), inv + r"'width' must be an integer in 1\.\.16384, got 60000"),
        "16000x16000": (setk(width=16000, height=16000), inv + r"frames of 16000x16000 pixels are beyond the 89478485 pixel limit"),
        "256GiB-of-samples": (setk(num_samples=(1 << 36) - 1), inv + r"'num_samples' must be an integer in 0\.\.172800000, got 68719476735"),
        "frame-times-far-away": (setk(frame_times=[*meta["frame_times"][:-1], 1e6]), inv + r"'frame_times' reach 1000000\.0 s, past the [\d.]+ s of sound"),
        "too-many-instances": (edit(lambda m: m.update(instances=[_instance(m, id=k, segmentations=[None] * T) for k in range(1001)])), inv + r"1001 instances, more than the 1000 limit"),
        # malformed: missing keys, wrong types, out of range, NaN, wrong lengths
        "missing-num-frames": (drop("num_frames"), inv + r"missing 'num_frames'"),
        "missing-several": (drop("frame_times", "width", "has_audio"), inv + r"missing 'frame_times', 'width', 'has_audio'"),
        "num-frames-string": (setk(num_frames=str(T)), inv + rf"'num_frames' must be a positive integer, got '{T}'"),
        "num-frames-negative": (setk(num_frames=-3), inv + r"'num_frames' must be a positive integer, got -3"),
        "num-frames-bool": (setk(num_frames=True), inv + r"'num_frames' must be a positive integer, got True"),
        "width-zero": (setk(width=0), inv + r"'width' must be an integer in 1\.\.16384, got 0"),
        "height-fraction": (setk(height=47.5), inv + r"'height' must be an integer in 1\.\.16384, got 47\.5"),
        "frame-times-nan": (nan, r"invalid metadata JSON: NaN is not a number JSON allows"),
        "frame-times-infinity": (inf, r"invalid metadata JSON: -Infinity is not a number JSON allows"),
        "frame-times-short": (setk(frame_times=meta["frame_times"][:-1]), inv + rf"{T - 1} 'frame_times' for 'num_frames' {T}"),
        "frame-times-not-a-list": (setk(frame_times=0.5), inv + r"'frame_times' must be a list, got float"),
        "frame-times-strings": (setk(frame_times=[str(t) for t in meta["frame_times"]]), inv + r"'frame_times' must be finite numbers"),
        "frame-times-backwards": (setk(frame_times=meta["frame_times"][::-1]), inv + r"'frame_times' must be >= 0 and non-decreasing"),
        "has-audio-string": (setk(has_audio="yes"), inv + r"'has_audio' must be true or false, got 'yes'"),
        "sample-rate-zero": (setk(sample_rate=0), inv + r"'sample_rate' must be an integer in 1000\.\.192000, got 0"),
        "num-samples-negative": (setk(num_samples=-1), inv + r"'num_samples' must be an integer in 0\.\.172800000, got -1"),
        "duration-mismatch": (setk(duration=1000.0), inv + r"'num_samples' \d+ does not match 'duration' 1000\.0 s at 16000 Hz"),
        "video-id-null": (setk(video_id=None), inv + r"'video_id' must be an integer or a short non-empty string, got None"),
        "video-id-object": (setk(video_id={"a": 1}), inv + r"'video_id' must be an integer or a short non-empty string, got \{'a': 1\}"),
        "key-of-another-sample": (setk(key="00000999"), inv + rf"'key' '00000999' is not the sample's key '{key}'"),
        "format-version-2": (setk(format_version=2), inv + r"'format_version' 2 is not one this avis reads \(<= 1\)"),
        "top-level-list": (json.dumps([meta]).encode(), inv + r"the top level is list, expected an object"),
        "invalid-json": (json.dumps(meta).encode()[:40], r"invalid metadata JSON at line 1 column \d+: "),
        "not-utf8": (b"\xff\xfe{" + json.dumps(meta).encode(), r"metadata is not UTF-8 text"),
        "nested-100000-deep": (b"[" * 100000 + b"]" * 100000, r"metadata JSON nested too deeply"),
        "5000-digit-id": (json.dumps(meta).encode().replace(b'"video_id": 1', b'"video_id": 1' + b"0" * 5000), r"invalid metadata JSON: Exceeds the limit \(4300 digits\)"),
        "instances-not-a-list": (setk(instances={"a": 1}), inv + r"'instances' must be a list, got dict"),
        "instance-not-an-object": (setk(instances=[3]), inv + r"instance 0 is int, expected an object"),
        "instance-missing-segmentations": (edit(lambda m: m.update(instances=[{"id": 1, "category_id": 1}])), inv + r"instance 0: missing 'segmentations'"),
        "instance-category-string": (inst(category_id="1"), inv + r"instance 0: 'category_id' must be an integer, got '1'"),
        "instance-segmentations-short": (inst(segmentations=[None] * (T - 1)), inv + rf"instance 0: {T - 1} segmentations for 'num_frames' {T}"),
        "instance-rle-wrong-size": (inst(segmentations=[{"size": [10, 10], "counts": "0"}] * T), inv + r"instance 0 frame 0: RLE size \[10, 10\] is not the frames' \[height, width\]"),
        "instance-rle-counts-a-number": (inst(segmentations=[{"size": [meta["height"], meta["width"]], "counts": 5}] * T), inv + r"instance 0 frame 0: RLE counts must be a compressed RLE string"),
        "instance-rle-counts-bad-characters": (inst(segmentations=[{"size": [meta["height"], meta["width"]], "counts": "~~\n"}] * T), inv + r"instance 0 frame 0: RLE counts must be a compressed RLE string"),
        "instance-duplicate-ids": (edit(lambda m: m.update(instances=[_instance(m), _instance(m)])), inv + r"instance 1: duplicate id 7"),
        "instance-iscrowd-2": (inst(iscrowd=2), inv + r"instance 0: 'iscrowd' must be 0 or 1, got 2"),
        "instance-sounding-wrong-length": (inst(sounding=[True]), inv + r"instance 0: 'sounding' must be null or 'num_frames' booleans"),
    }


def valid_meta_variants(meta: dict) -> dict[str, bytes]:
    """Metadata the reader must accept: an annotated instance, per-frame ``sounding`` flags (the audio
    branch's targets), a string video id, extra keys."""
    T = meta["num_frames"]
    return {
        "with-instance": json.dumps({**meta, "instances": [_instance(meta)]}).encode(),
        "with-sounding": json.dumps({**meta, "instances": [_instance(meta, sounding=[t % 2 == 0 for t in range(T)])]}).encode(),
        "string-id-and-extra-keys": json.dumps({**meta, "video_id": "clip-a", "notes": {"any": [1, 2]}}).encode(),
    }


def make_cases(built: Path, root: Path) -> dict[str, dict]:
    """name -> {"shard", "what" (regex), "stage"}: "read" cases are refused as the shard is read (``avis
    inspect``, ``avis eval``, the training loader); "decode" cases when frames, sound or masks are decoded
    (``avis eval``, a training clip; ``avis inspect`` reads no frames); "decode+inspect" also by ``avis inspect``
    (it reads the FLAC header)."""
    first, second = read_members(built / "shard-000000.tar"), read_members(built / "shard-000001.tar")
    key = first[0][0].split(".")[0]
    meta = json.loads(dict(first)[f"{key}.json"])
    T = meta["num_frames"]
    frame1 = f"{key}.00001.jpg"
    cases: dict[str, dict] = {}

    def add(name, entries, what, stage="read"):
        d = root / name
        d.mkdir(parents=True)
        (d / "manifest.json").write_bytes((built / "manifest.json").read_bytes())
        cases[name] = {"shard": write_tar(d / "shard-000000.tar", [*entries, *second]), "what": what, "stage": stage}

    def with_member(name, raw):
        return [raw if n == name else (n, d) for n, d in first]

    # members that lie in their tar header
    add("sparse-member-3GiB", with_member(frame1, sparse_member(frame1, 3 * GiB)),
        r"member 00001\.jpg is stored sparse \(3221225472 bytes declared\); avis shards never are")
    add("sparse-member-900MB", with_member(frame1, sparse_member(frame1, 900_000_000)),
        r"member 00001\.jpg is stored sparse \(900000000 bytes declared\)")
    add("member-declaring-2GiB", with_member(frame1, lying_member(frame1, 2 * GiB, dict(first)[frame1])),
        r"member 00001\.jpg declares 2147483648 bytes, more than its metadata allows \(\d+\)")
    add("frame-larger-than-its-pixels", with_member(frame1, (frame1, b"\xff" * (4 * meta["width"] * meta["height"] + (1 << 20) + 1))),
        r"member 00001\.jpg declares \d+ bytes, more than its metadata allows")
    add("frame-past-num-frames", [*first, (f"{key}.{T:05d}.jpg", dict(first)[frame1])],
        rf"frame member {T:05d}\.jpg is past 'num_frames' {T}")
    add("frame-missing", [(n, d) for n, d in first if n != f"{key}.00002.jpg"],
        rf"{T - 1} frames stored, metadata says {T} \(frame '00002\.jpg' missing\)")
    add("no-metadata", [(n, d) for n, d in first if not n.endswith(".json")], r"no metadata member \(KEY\.json\)")
    add("sound-missing", [(n, d) for n, d in first if not n.endswith(".flac")],
        r"'has_audio' is true but there is no audio\.flac member")
    # decoders with limits: headers that lie about the decoded size
    add("flac-claiming-256GiB", [(n, flac_claiming(d, (1 << 36) - 1) if n.endswith(".flac") else d) for n, d in first],
        r"unreadable audio \(its header declares 68719476735 samples, the metadata \d+\)", "decode+inspect")
    add("jpeg-claiming-20000x20000", [(n, jpeg_claiming(d, 20000, 20000) if n.endswith(".jpg") else d) for n, d in first],
        r"frame \d+\.jpg: unreadable JPEG \(Image size \(400000000 pixels\) exceeds limit", "decode")
    add("jpeg-claiming-9000x9000", [(n, jpeg_claiming(d, 9000, 9000) if n.endswith(".jpg") else d) for n, d in first],
        rf"frame \d+\.jpg: unreadable JPEG \(its header says 9000x9000, the metadata {meta['width']}x{meta['height']}\)",
        "decode")
    rle = json.dumps({**meta, "instances": [_instance(meta, segmentations=[_uncovered_rle(meta)] * T)]}).encode()
    add("rle-covering-more-than-the-frame", [(n, rle if n.endswith(".json") else d) for n, d in first],
        r"instance 0 frame \d+: invalid RLE", "decode")
    # the sample's JSON
    for name, (data, what) in meta_cases(meta, key).items():
        add("json-" + name, [(n, data if n.endswith(".json") else d) for n, d in first], what)
    return cases
