"""Overlay videos: the predicted masks, track ids, class names and scores drawn on the source frames, written as
H.264 mp4 with the source's sound re-encoded to AAC. ``OUT/overlay/<video>.mp4``.

Timing follows the toolkit's frame timeline (time 0 = the first video frame, see ``data_tools/decode.py``):
the overlay has a frame at every ``k / fps`` (``fps`` = ``--overlay-fps``, default the annotation rate) for
as long as the source video lasts, showing the source frame shown at that time and the masks of the annotated
frame in effect then (the last annotated time <= t, held for one annotation interval). With the default rate
the overlay frames are exactly the annotated frames. The audio is the source's (its own file's ``audio_file``
when the video entry names one), placed on the same timeline, at its native rate and channel layout.

Videos given as JPEG folders (``file_names`` without ``video_file``) become silent overlays of those frames.
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from avis.errors import ConfigError, InputError
from avis.io import masks as mask_io
from avis.io import ytvis
from avis.io.atomic import MP4_FASTSTART, atomic_path
from avis.io.files import regular_file
from avis.io.text import printable

from .common import category_names, davis_palette, tracks_by_video, video_names

log = logging.getLogger(__name__)
ALPHA = 0.45  # mask fill opacity
TIME_EPS = 1e-6


def track_color(track_id: int) -> np.ndarray:
    """A bright, stable colour per track id (the DAVIS palette entry, lifted so dark entries stay visible)."""
    c = davis_palette()[1 + (int(track_id) - 1) % 255].astype(np.float32)
    return np.clip(64 + c * 0.75, 0, 255)


def _edges(m: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of a bool mask within ``width`` pixels of its outside (4-neighbour erosion, ``width`` times)."""
    inner = m
    for _ in range(max(1, width)):
        p = np.pad(inner, 1)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def label_font(height: int, width: int):
    """The label font for a frame: 4.5 % of its short side (8 to 48 px), so that labels keep their share of the
    frame from a 96 px thumbnail to 4K."""
    return ImageFont.load_default(size=int(min(48, max(8, round(min(height, width) * 0.045)))))


def outline_width(height: int, width: int) -> int:
    """Mask outlines: 1 px up to 480 px short sides, then 1 px more per 480."""
    return max(1, min(height, width) // 480 + 1)


def _overlap(a, b) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def layout_labels(anchors: list[tuple[int, int, int, int] | None], sizes: list[tuple[int, int]],
                  frame_hw: tuple[int, int]) -> list[tuple[int, int, int, int] | None]:
    """Label boxes ``(x0, y0, x1, y1)`` inside the frame that do not overlap each other, one per mask box
    ``anchors[i]`` (None: no label), in priority order (the first gets its preferred place: just above its mask,
    else inside its top edge, else just below it). A label that meets one already placed slides down, then up,
    in steps of its height, staying near its mask; when the frame has no free place the least covered is taken.
    """
    H, W = frame_hw
    placed: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int, int, int] | None] = []
    for anchor, (w, h) in zip(anchors, sizes):
        if anchor is None:
            out.append(None)
            continue
        x0, y0, x1, y1 = anchor
        w, h = min(w, W), min(h, H)
        x = min(max(0, x0), W - w)
        starts = [y0 - h, y0, y1 + 1]
        rows = starts + [y + k * h * sgn for y in starts for k in range(1, max(2, H // max(h, 1) + 1))
                         for sgn in (1, -1)]
        best, best_cover = None, None
        for y in rows:
            y = min(max(0, y), H - h)
            box = (x, y, x + w, y + h)
            cover = sum(_overlap(box, b) for b in placed)
            if best_cover is None or cover < best_cover:
                best, best_cover = box, cover
            if cover == 0:
                break
        placed.append(best)
        out.append(best)
    return out


def draw(frame: np.ndarray, items: list[tuple[np.ndarray, int, str]], font=None) -> np.ndarray:
    """frame uint8 H x W x 3; items (bool mask, track id, label text) drawn in order (last on top). Labels are
    placed by :func:`layout_labels`, the last item's first (the best-scoring track gets the best place), and
    scale with the frame (:func:`label_font`)."""
    H, W = frame.shape[:2]
    out = frame.astype(np.float32)
    line = outline_width(H, W)
    for m, tid, _ in items:
        c = track_color(tid)
        out[m] = out[m] * (1 - ALPHA) + c * ALPHA
        out[_edges(m, line)] = c
    img = Image.fromarray(out.round().astype(np.uint8))
    d = ImageDraw.Draw(img)
    font = font or label_font(H, W)
    pad = max(1, getattr(font, "size", 10) // 8)
    order = list(range(len(items)))[::-1]  # priority: the one drawn on top first
    anchors, sizes = [], []
    for i in order:
        m, _, text = items[i]
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            anchors.append(None)
            sizes.append((0, 0))
            continue
        anchors.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
        left, top, right, bottom = d.textbbox((0, 0), text, font=font)
        sizes.append((right - left + 2 * pad, bottom - top + 2 * pad))
    boxes = layout_labels(anchors, sizes, (H, W))
    for i, box in reversed(list(zip(order, boxes))):  # the best last: on top if the frame is too full
        if box is None:
            continue
        _, tid, text = items[i]
        c = track_color(tid)
        d.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=tuple(int(v) for v in c))
        left, top, _, _ = d.textbbox((0, 0), text, font=font)
        d.text((box[0] + pad - left, box[1] + pad - top), text,
               fill=(0, 0, 0) if c @ np.array([0.299, 0.587, 0.114]) > 110 else (255, 255, 255), font=font)
    return np.asarray(img)


def _annotation_rate(times: list[float]) -> float | None:
    if len(times) < 2:
        return None
    return 1.0 / float(np.median(np.diff(times)))


def _mask_index(out_times: np.ndarray, ann_times: list[float]) -> np.ndarray:
    """For each output time, the annotated frame in effect (-1 for none): the last one at or before it, held
    for one annotation interval (the next one's time, or the median interval after the last)."""
    at = np.asarray(ann_times, np.float64)
    if at.size == 0:
        return np.full(len(out_times), -1)
    step = float(np.median(np.diff(at))) if at.size > 1 else math.inf
    ends = np.append(at[1:], at[-1] + step)
    i = np.searchsorted(at, out_times + TIME_EPS, side="right") - 1
    ok = (i >= 0) & (out_times < ends[np.clip(i, 0, None)] - TIME_EPS)
    return np.where(ok, i, -1)


def _open(path: Path):
    regular_file(path)
    try:
        return av.open(os.fspath(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"unreadable media file ({e})", path) from None


def _rgb(frame) -> np.ndarray:
    """Decoded frame -> uint8 H x W x 3 in display orientation (the stream's rotation applied, as the builder)."""
    img = frame.to_ndarray(format="rgb24")
    try:
        rot = int(round((frame.rotation or 0) / 90.0)) % 4
    except (AttributeError, ValueError):
        rot = 0
    return np.ascontiguousarray(np.rot90(img, rot)) if rot else img


def iter_frames(path: Path, fps: float):
    """Stream ``(k, t, rgb)``: the frame shown at t = k / fps on the frame timeline (t = 0 at the first frame),
    for every t before the end of the last frame. Memory stays at two frames whatever the video's length.

    Same timing rule as the dataset builder's decoder (``data_tools/decode.py``: the last frame whose
    presentation time is <= t), which holds the whole clip in memory; an overlay of a long video must not."""
    with _open(path) as c:
        if not c.streams.video:
            raise InputError("no video stream", path)
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        t0, prev, prev_t, last_dur, k = None, None, None, None, 0
        try:
            for frame in c.decode(vs):
                ft = frame.time if frame.time is not None else (prev_t or 0.0) + (last_dur or 0.0) + (t0 or 0.0)
                t0 = ft if t0 is None else t0
                t = ft - t0
                if prev is not None and t < prev_t + TIME_EPS:
                    prev = frame  # duplicate / out-of-order timestamp: the later frame replaces it
                    continue
                if prev is not None:
                    last_dur = t - prev_t
                    rgb = None
                    while k / fps < t - TIME_EPS:
                        rgb = _rgb(prev) if rgb is None else rgb
                        yield k, k / fps, rgb
                        k += 1
                prev, prev_t = frame, t
                if frame.duration:
                    last_dur = float(frame.duration * frame.time_base)
        except av.FFmpegError as e:
            raise InputError(f"corrupt or truncated video ({e})", path) from None
        if prev is None:
            raise InputError("the video stream has no decodable frames", path)
        if not last_dur:
            rate = vs.average_rate or vs.guessed_rate
            last_dur = 1.0 / float(rate) if rate else 1.0 / fps
        end = prev_t + last_dur
        rgb = None
        while k / fps < end - TIME_EPS:
            rgb = _rgb(prev) if rgb is None else rgb
            yield k, k / fps, rgb
            k += 1


def _video_t0(path: Path) -> float:
    with _open(path) as c:
        try:
            for frame in c.decode(c.streams.video[0]):
                return float(frame.time or 0.0)
        except av.FFmpegError as e:
            raise InputError(f"corrupt or truncated video ({e})", path) from None
    return 0.0


def aac_rate(rate: int) -> int:
    """The sample rate to encode a ``rate`` Hz source with AAC: its own when AAC has it, else the lowest AAC
    rate above it (nothing is lost), else AAC's highest (a 192 kHz source becomes 96 kHz)."""
    rates = sorted(av.Codec("aac", "w").audio_rates or (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000))
    if rate in rates:
        return rate
    return next((r for r in rates if r > rate), rates[-1])


def _audio_stream(out: av.container.OutputContainer, src: Path):
    """Add the AAC stream for ``src``'s first audio stream (before anything is muxed); None without sound.
    The sound is resampled (:func:`aac_rate`) when AAC cannot encode the source's rate (1 kHz, 192 kHz)."""
    with _open(src) as c:
        if not c.streams.audio:
            return None
        cc = c.streams.audio[0].codec_context
        layout = cc.layout.name if cc.layout else "mono"
        layout = layout if layout in ("mono", "stereo") else "stereo"  # AAC-LC: downmix anything wider
        if not cc.sample_rate or cc.sample_rate <= 0:
            raise InputError("the sound stream has no sample rate", src)
        ost = out.add_stream("aac", rate=aac_rate(cc.sample_rate))
        ost.codec_context.layout = layout
        ost.codec_context.format = "fltp"
        return ost


def _encode_audio(out: av.container.OutputContainer, ost, src: Path, offset: float) -> int:
    """Re-encode ``src``'s first audio stream into ``ost``; its sample 0 is placed at ``offset`` seconds on the
    output timeline (negative: the part before 0 is dropped). Returns the samples written."""
    rate, layout = ost.codec_context.sample_rate, ost.codec_context.layout.name
    with _open(src) as c:
        ins = c.streams.audio[0]
        res = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=1024)
        skip = max(0, int(round(-offset * rate)))  # samples to drop at the start
        pad = max(0, int(round(offset * rate)))  # samples of silence to add at the start
        # The decoder also returns the encoder's padding of the last AAC frame; the header's duration is the
        # real length, so stop there when the header knows it.
        total = pad + int(round(float(ins.duration * ins.time_base) * rate)) - skip if ins.duration else None
        written = 0

        def emit(frames):
            nonlocal skip, written
            for f in frames:
                a = f.to_ndarray()
                if skip:
                    drop = min(skip, a.shape[1])
                    skip -= drop
                    a = a[:, drop:]
                if total is not None:
                    a = a[:, :max(0, total - written)]
                if a.shape[1] == 0:
                    continue
                nf = av.AudioFrame.from_ndarray(np.ascontiguousarray(a), format="fltp", layout=layout)
                nf.sample_rate = rate
                nf.pts = written
                nf.time_base = Fraction(1, rate)
                written += a.shape[1]
                for p in ost.encode(nf):
                    out.mux(p)

        try:
            if pad:
                emit([_silence(pad, layout, rate)])  # already in the output format: not through the resampler
            for frame in c.decode(ins):
                frame.pts = None  # the resampler re-times; we keep our own sample count
                emit(res.resample(frame))
            emit(res.resample(None))
        except av.FFmpegError as e:
            raise InputError(f"corrupt or truncated audio ({e})", src) from None
        for p in ost.encode(None):
            out.mux(p)
        return written


def _silence(n: int, layout: str, rate: int) -> av.AudioFrame:
    ch = 1 if layout == "mono" else 2
    f = av.AudioFrame.from_ndarray(np.zeros((ch, n), np.float32), format="fltp", layout=layout)
    f.sample_rate = rate
    return f


def _audio_start(path: Path) -> float | None:
    with _open(path) as c:
        if not c.streams.audio:
            return None
        try:
            for frame in c.decode(c.streams.audio[0]):
                return float(frame.time or 0.0)
        except av.FFmpegError as e:
            raise InputError(f"corrupt or truncated audio ({e})", path) from None
    return None


def _jpeg_frames(v: dict, videos_dir: Path, times: list[float], fps: float):
    """A video given as JPEG frames: frame i is shown from times[i] on."""
    paths = [videos_dir / f for f in v["file_names"]]
    step = 1.0 / (_annotation_rate(times) or fps)
    n = int(math.ceil((times[-1] + step) * fps - TIME_EPS))
    idx = np.clip(np.searchsorted(np.asarray(times), np.arange(n) / fps + TIME_EPS, side="right") - 1, 0, None)
    cache: tuple[int, np.ndarray] | None = None
    for k in range(n):
        i = int(idx[k])
        if cache is None or cache[0] != i:
            regular_file(paths[i])
            try:
                with Image.open(paths[i]) as im:
                    cache = (i, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
            except OSError as e:
                raise InputError(f"unreadable image ({e})", paths[i]) from None
        yield k, k / fps, cache[1]


def write_video_overlay(v: dict, vtracks: list[dict], cats: dict[int, str], videos_dir: Path, out_path: Path,
                        fps: float | None = None) -> dict:
    """One video's overlay; returns ``{"frames", "fps", "audio_samples", "audio_rate"}``."""
    ann_times = ytvis.frame_times(v, fps=fps)
    if ann_times is None:
        raise ConfigError(f"video {v['id']} has neither 'fps' nor 'frame_times': give --overlay-fps")
    rate = fps or v.get("fps") or _annotation_rate(ann_times)
    if not rate:
        raise ConfigError(f"video {v['id']} has one annotated frame and no fps: give --overlay-fps")
    H, W = v["height"], v["width"]
    font = label_font(H, W)
    order = sorted(vtracks, key=lambda t: t["score"])  # the best drawn last, on top
    labels = [printable(f"{t['track_id']} {cats.get(t['category_id'], t['category_id'])} {t['score']:.2f}",
                        one_line=True) for t in order]
    if v.get("video_file"):
        src = videos_dir / v["video_file"]
        frames = iter_frames(src, rate)
        audio_src = videos_dir / v["audio_file"] if v.get("audio_file") else src
    elif v.get("file_names"):
        src, audio_src = None, (videos_dir / v["audio_file"] if v.get("audio_file") else None)
        frames = _jpeg_frames(v, videos_dir, ann_times, rate)
    else:
        raise ConfigError(f"video {v['id']} has neither 'video_file' nor 'file_names' to draw on")
    # even sizes for yuv420p
    ew, eh = W + W % 2, H + H % 2
    n = 0
    audio_samples, audio_rate = 0, 0
    with atomic_path(out_path) as tmp:  # a path, not a stream: faststart rewrites the file
        with av.open(os.fspath(tmp), "w", format="mp4", options=MP4_FASTSTART) as out:
            vst = out.add_stream("libx264", rate=Fraction(rate).limit_denominator(100000))
            vst.width, vst.height, vst.pix_fmt = ew, eh, "yuv420p"
            vst.options = {"crf": "20", "preset": "veryfast"}
            if audio_src is not None:
                regular_file(audio_src)
            ast = _audio_stream(out, audio_src) if audio_src is not None else None
            cache: dict[int, list] = {}
            for k, t, rgb in frames:
                if rgb.shape[:2] != (H, W):  # draw at the annotation's size
                    rgb = np.asarray(Image.fromarray(rgb).resize((W, H), Image.Resampling.BILINEAR))
                i = int(_mask_index(np.array([t]), ann_times)[0])
                if i not in cache:
                    cache.clear()
                    cache[i] = [] if i < 0 else [
                        (mask_io.decode(tr["segmentations"][i]).astype(bool), tr["track_id"], lab)
                        for tr, lab in zip(order, labels) if tr["segmentations"][i] is not None]
                img = draw(rgb, cache[i], font)
                if (ew, eh) != (W, H):
                    img = np.pad(img, ((0, eh - H), (0, ew - W), (0, 0)))
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                vf.pts = k
                for p in vst.encode(vf):
                    out.mux(p)
                n += 1
            for p in vst.encode(None):
                out.mux(p)
            if ast is not None:
                # audio sample 0 sits at its stream time minus the first video frame's time (0 for a
                # separate audio file, whose sample 0 is time 0, as the dataset builder does)
                offset = 0.0 if audio_src != src else (_audio_start(src) or 0.0) - _video_t0(src)
                audio_samples = _encode_audio(out, ast, audio_src, offset)
                audio_rate = ast.codec_context.sample_rate
    return {"frames": n, "fps": float(rate), "audio_samples": audio_samples, "audio_rate": audio_rate}


def write_overlay(tracks: list[dict], gt: dict, out_dir: str | os.PathLike, videos_dir: str | os.PathLike,
                  fps: float | None = None) -> Path:
    from tqdm import tqdm

    root = Path(out_dir) / "overlay"
    names, cats = video_names(gt), category_names(gt)
    by_video = tracks_by_video(tracks)
    for v in tqdm(gt["videos"], desc="overlay", unit="video", disable=len(gt["videos"]) < 2):
        info = write_video_overlay(v, by_video.get(v["id"], []), cats, Path(videos_dir), root / f"{names[v['id']]}.mp4",
                                   fps=fps)
        log.info("overlay %s: %d frames at %.3g fps, %d audio samples", names[v["id"]], info["frames"], info["fps"],
                 info["audio_samples"])
    return root
