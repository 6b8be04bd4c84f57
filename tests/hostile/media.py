"""Hostile media files, generated from one tiny good mp4 (H.264 + AAC) by the tests; nothing is committed."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.avmedia import write_video


def good(path: Path, num_frames: int = 12, audio: bool = True) -> Path:
    sound = np.sin(np.linspace(0, 400, int(48000 * num_frames / 15)))[None].repeat(2, 0).astype(np.float32) * 0.3
    return write_video(path, num_frames=num_frames, fps=15, size=(64, 48), audio=sound if audio else None)


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=48000)
        s.layout = "mono"
        x = (np.sin(np.linspace(0, 300, 48000)) * 0.3).astype(np.float32)[None]
        for i in range(0, x.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 1024]), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = 48000, i, Fraction(1, 48000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def edit_list(path: Path, gop: int | None = None) -> Path:
    """30 frames at 15 fps whose timestamps start at -1 s, and AAC sound starting at -0.5 s (a click there and
    one at +0.5 s). FFmpeg's mp4 muxer writes an edit list (``elst``) that starts the presentation at 0 s: the
    container presents the last 15 frames (grey levels of frames 15..29, see ``tests.avmedia.level``) and the
    sound from 0 s. ``gop=1``: every frame a key frame, so the demuxer drops the 15 cut samples (the header
    still counts 30); default GOP: they are demuxed flagged 'discard' and decoded only as references."""
    from tests.avmedia import clicks_audio, level

    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=15)
        vs.width, vs.height, vs.pix_fmt, vs.time_base = 64, 48, "yuv420p", Fraction(1, 15)
        if gop:
            vs.options = {"g": str(gop)}
        aus = c.add_stream("aac", rate=48000)
        aus.layout = "mono"
        for i in range(30):
            img = np.full((48, 64, 3), level(i), np.uint8)
            img[:8, :8] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i - 15, Fraction(1, 15)
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        x = clicks_audio(1.5, [0.0, 1.0], channels=1)
        for s in range(0, x.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s:s + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = 48000, s - 24000, Fraction(1, 48000)
            for p in aus.encode(af):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)
    assert b"elst" in path.read_bytes()
    return path


def _packet_ranges(path: Path, kind: str) -> list[tuple[int, int]]:
    with av.open(str(path)) as c:
        st = c.streams.audio[0] if kind == "audio" else c.streams.video[0]
        return [(p.pos, p.size) for p in c.demux(st) if p.pos is not None and p.pos >= 0 and p.size]


def corrupt_aac(src: Path, dst: Path) -> Path:
    """Every AAC packet's payload overwritten with noise (the container and the video stay intact)."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    for pos, size in _packet_ranges(src, "audio"):
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _ue(v: int) -> str:
    """Exp-Golomb ue(v) bits."""
    b = bin(v + 1)[2:]
    return "0" * (len(b) - 1) + b


def absurd_dimensions(src: Path, dst: Path, width: int = 60000, height: int = 60000) -> Path:
    """The header says ``width`` x ``height``: the tkhd display size, the avc1 sample entry and the SPS's
    macroblock counts are patched (the SPS is rewritten bit by bit; the slices stay those of a 64 x 48 stream)."""
    data = bytearray(src.read_bytes())
    i = data.find(b"tkhd")
    ver = data[i + 4]
    off = i + 4 + 4 + (32 if ver == 1 else 20) + 8 + 8 + 36
    data[off:off + 8] = struct.pack(">II", min(width, 65535) << 16, min(height, 65535) << 16)
    j = data.find(b"avc1")
    data[j + 28:j + 32] = struct.pack(">HH", min(width, 65535), min(height, 65535))
    k = data.find(b"avcC", j)
    sps_len = struct.unpack(">H", data[k + 10:k + 12])[0]
    sps = bytes(data[k + 12:k + 12 + sps_len])
    new = _patch_sps(sps, width, height)
    # keep the box sizes consistent: the new SPS must have the same length (pad/trim trailing bits)
    new = new[:sps_len].ljust(sps_len, b"\x00")
    data[k + 12:k + 12 + sps_len] = new
    dst.write_bytes(bytes(data))
    return dst


def _patch_sps(sps: bytes, width: int, height: int) -> bytes:
    """Rewrite pic_width_in_mbs_minus1 / pic_height_in_map_units_minus1 of a baseline/high SPS (no emulation
    prevention bytes in tiny SPSs)."""
    bits = "".join(f"{b:08b}" for b in sps)
    pos = 8  # NAL header

    def u(n):
        nonlocal pos
        v = int(bits[pos:pos + n], 2)
        pos += n
        return v

    def ue():
        nonlocal pos
        z = 0
        while bits[pos] == "0":
            z += 1
            pos += 1
        pos += 1
        v = (1 << z) - 1 + (int(bits[pos:pos + z], 2) if z else 0)
        pos += z
        return v

    def se():
        v = ue()
        return (v + 1) // 2 if v % 2 else -(v // 2)

    profile = u(8)
    u(16)
    ue()  # sps id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = ue()
        if chroma == 3:
            u(1)
        ue()
        ue()
        u(1)
        if u(1):  # scaling matrix present
            for n in range(8 if chroma != 3 else 12):
                if u(1):
                    last = nxt = 8
                    for _ in range(16 if n < 6 else 64):
                        if nxt:
                            nxt = (last + se()) % 256
                        last = nxt or last
    ue()  # log2_max_frame_num
    poc = ue()
    if poc == 0:
        ue()
    elif poc == 1:
        u(1)
        se()
        se()
        for _ in range(ue()):
            se()
    ue()  # max_num_ref_frames
    u(1)
    start = pos
    ue()
    ue()
    rest = bits[pos:]
    new = bits[:start] + _ue(-(-width // 16) - 1) + _ue(-(-height // 16) - 1) + rest
    new = new.ljust(-(-len(new) // 8) * 8, "0")
    return bytes(int(new[b:b + 8], 2) for b in range(0, len(new), 8))


def odd_rate(path: Path, rate: int, codec: str = "pcm_s16le", num_frames: int = 12, fps: int = 15) -> Path:
    """H.264 + sound at a sample rate AAC cannot encode (1 kHz, 192 kHz), in Matroska: a 440 Hz tone (or
    100 Hz below 1 kHz) for the length of the video."""
    w, h = 64, 48
    with av.open(str(path), "w", format="matroska") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        aus = c.add_stream(codec, rate=rate)
        aus.layout = "mono"
        for i in range(num_frames):
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), 16 + 7 * i, np.uint8), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        n = int(rate * num_frames / fps)
        tone = 100.0 if rate < 2000 else 440.0
        x = (0.3 * np.sin(2 * np.pi * tone * np.arange(n) / rate) * 32767).astype(np.int16)[None]
        step = max(1, rate // 10)
        for s in range(0, n, step):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s:s + step]), format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = rate, s, Fraction(1, rate)
            for p in aus.encode(af):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)
    return path


def make_media(root: Path) -> dict[str, Path]:
    """name -> file of every hostile media case (and ``good``)."""
    root.mkdir(parents=True, exist_ok=True)
    g = good(root / "good.mp4")
    out = {"good": g}
    (root / "zero.mp4").write_bytes(b"")
    out["zero-byte"] = root / "zero.mp4"
    (root / "text.mp4").write_text("this is not a video\n" * 50)
    out["text-as-mp4"] = root / "text.mp4"
    out["truncated-50%"] = truncated(g, root / "truncated.mp4")
    out["audio-only"] = audio_only(root / "audio_only.mp4")
    out["video-only"] = good(root / "video_only.mp4", audio=False)
    out["corrupt-aac"] = corrupt_aac(g, root / "corrupt_aac.mp4")
    out["absurd-dimensions"] = absurd_dimensions(g, root / "absurd.mp4")
    return out
