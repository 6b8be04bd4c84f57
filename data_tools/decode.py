"""Media decoding with PyAV: the one place the toolkit reads video, audio and image files.

Time is the key of synchronisation. Every video gets a *frame timeline* whose time 0 is the presentation time
of its first decoded video frame; the frames kept are the ones *shown* at the requested times (the last frame
whose presentation time is <= the target), which is right for variable frame rate, 29.97 fps and streams that
do not start at 0. Audio is placed on the same timeline: sample 0 of the returned waveform is time 0 of the
frame timeline, whatever the audio stream's own start offset (silence is padded in front of a late audio
stream, the part before the first frame of an early one is dropped).

API::

    probe(path) -> VideoInfo                                  # headers + first frame (rotation)
    decode(path, times=None, fps=None, max_size=None, sample_rate=16000, audio=True) -> Decoded
    decode_frames(path, times, max_size=None) -> (frames uint8 T x H x W x 3, shown_times float64 T)
    decode_audio(path, sample_rate=16000) -> float32 (N,)     # mono, on the frame timeline
    decode_audio_file(path, sample_rate=16000) -> float32 (N,) # audio-only file, sample 0 = its first sample
    read_image(path, max_size=None) -> uint8 H x W x 3        # a JPEG/PNG frame (EXIF orientation applied)

Every function raises :class:`avis.errors.InputError` naming the file for unreadable, truncated or
stream-less inputs. The video stream is read sequentially with frame-threaded decoding, the sound from a second
handle of the file in a thread beside it; only the frames that are shown at a target time are converted to RGB
(and scaled by swscale when ``max_size`` asks for it).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import av
import numpy as np

from avis.errors import InputError
from avis.io.files import regular_file

log = logging.getLogger(__name__)

TIME_EPS = 1e-6  # seconds; a frame whose time equals a target up to float rounding is shown at that target
AUDIO_RATE = 16_000
MAX_BAD_PACKETS = 10  # undecodable packets skipped per stream before the file counts as corrupt
MAX_FPS = 1000.0  # frames per second: above any source's rate a sampling rate only repeats frames


def check_fps(fps, what: str = "fps") -> float:
    """A frame rate given by a user or an annotation file -> float, or :class:`InputError` saying ``what`` is
    wrong: it must be a finite number in (0, ``MAX_FPS``]. The one check of ``avis build --fps``, an
    annotation's ``fps``, ``avis infer --fps`` and :func:`decode`: an infinite rate made the frame sampler
    loop forever (every target k / inf is 0), 1e9 asked for a billion frames a second of video."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} must be a number of frames per second, got {type(fps).__name__}")
    try:
        value = float(fps)
    except OverflowError:  # an integer of hundreds of digits
        raise InputError(f"{what} must be a frame rate in (0, {MAX_FPS:g}] per second, got a number of "
                         f"{fps.bit_length()} bits") from None
    if not (math.isfinite(value) and 0 < value <= MAX_FPS):
        raise InputError(f"{what} must be a frame rate in (0, {MAX_FPS:g}] per second, got {value:g}")
    return value


@dataclass
class VideoInfo:
    """What the headers (and the first frame) say about a video file. Sizes are display sizes (rotation applied)."""

    path: str
    duration: float  # seconds of the video stream (header), 0 if unknown
    fps: float  # average frame rate, 0 if unknown
    width: int
    height: int
    rotation: int  # counter-clockwise degrees from the display matrix (0, 90, 180, 270)
    num_frames: int  # from the header, 0 if unknown
    video_start: float  # seconds, the video stream's start time
    has_audio: bool
    audio_sample_rate: int = 0
    audio_channels: int = 0
    audio_start: float = 0.0  # seconds, the audio stream's start time
    video_codec: str = ""
    audio_codec: str = ""


@dataclass
class Decoded:
    """Result of :func:`decode`: the frames shown at the frame times, and the audio on the same timeline."""

    frames: np.ndarray  # uint8 T x H x W x 3
    frame_times: np.ndarray  # float64 T, the requested times (seconds on the frame timeline)
    shown_times: np.ndarray  # float64 T, presentation time of the frame shown at each target
    duration: float  # seconds: end of the last frame on the frame timeline
    has_audio: bool
    audio: np.ndarray | None  # float32 (N,) at sample_rate, N = round(duration * sample_rate); None if not asked
    sample_rate: int
    width: int  # display size of the source (before max_size)
    height: int
    rotation: int
    info: dict = field(default_factory=dict)


def _reason(e: BaseException) -> str:
    if isinstance(e, av.FFmpegError):
        return f"{e.strerror or type(e).__name__}"
    return str(e) or type(e).__name__


def _open(path: str | os.PathLike):
    path = os.fspath(regular_file(path))
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"unreadable media file ({_reason(e)})", path) from None


def _rotation(frame) -> int:
    try:
        r = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return int(round((r or 0) / 90.0)) % 4 * 90


def _stream_seconds(value, time_base) -> float | None:
    return None if value is None or time_base is None else float(value * time_base)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the headers (and decode the first frame, for the display rotation)."""
    path = os.fspath(path)
    with _open(path) as c:
        if not c.streams.video:
            raise InputError("no video stream", path)
        vs = c.streams.video[0]
        aus = c.streams.audio[0] if c.streams.audio else None
        tb = vs.time_base
        start = _stream_seconds(vs.start_time, tb)
        if start is None:
            start = (c.start_time or 0) / av.time_base
        duration = _stream_seconds(vs.duration, tb)
        if duration is None:
            duration = max(0.0, (c.duration or 0) / av.time_base)
        rate = vs.average_rate or vs.guessed_rate
        rotation = 0
        try:
            for frame in c.decode(vs):
                rotation = _rotation(frame)
                break
        except av.FFmpegError as e:
            raise InputError(f"cannot decode the video stream ({_reason(e)})", path) from None
        w, h = vs.codec_context.width, vs.codec_context.height
        if rotation in (90, 270):
            w, h = h, w
        info = VideoInfo(path=path, duration=float(duration), fps=float(rate) if rate else 0.0, width=w, height=h,
                         rotation=rotation, num_frames=int(vs.frames or 0), video_start=float(start),
                         has_audio=aus is not None, video_codec=vs.codec_context.name)
        if aus is not None:
            info.audio_sample_rate = int(aus.codec_context.sample_rate or aus.rate or 0)
            info.audio_channels = int(aus.codec_context.channels or 0)
            a_start = _stream_seconds(aus.start_time, aus.time_base)
            info.audio_start = float(a_start if a_start is not None else start)
            info.audio_codec = aus.codec_context.name
        return info


def output_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most ``max_size`` (never enlarged)."""
    if not max_size or max(width, height) <= max_size:
        return width, height
    s = max_size / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def _to_rgb(frame, max_size: int | None, rotation: int) -> np.ndarray:
    """One decoded frame -> uint8 H x W x 3 RGB, scaled (swscale, area) to ``max_size`` and rotated upright."""
    w, h = output_size(frame.width, frame.height, max_size)
    if (w, h) == (frame.width, frame.height):
        img = frame.to_ndarray(format="rgb24")
    else:
        img = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
    if rotation:
        img = np.ascontiguousarray(np.rot90(img, rotation // 90))
    return img


class _LazyRGB:
    """A decoded frame whose RGB conversion runs on the first call, in whichever thread calls (once)."""

    def __init__(self, frame, max_size, rotation):
        self._args = (frame, max_size, rotation)
        self._img = None
        self._lock = threading.Lock()

    def __call__(self) -> np.ndarray:
        with self._lock:
            if self._img is None:
                self._img = _to_rgb(*self._args)
                self._args = None  # release the decoder's frame buffer
            return self._img


class _FrameSampler:
    """Walks decoded frames in presentation order and keeps, for each target time, the frame shown then.

    ``times`` (sorted) or ``fps`` (targets k / fps while they fall before the end of the last frame).
    """

    def __init__(self, times, fps, max_size, on_frame=None, keep=True, lazy=False):
        self.on_frame, self.keep, self.lazy = on_frame, keep, lazy and not keep
        self.times = None if times is None else np.asarray(times, dtype=np.float64)
        self.fps = fps
        self.max_size = max_size
        self.k = 0  # next target index
        self.out: list[np.ndarray] = []
        self.shown: list[float] = []
        self.prev = None  # (time, frame)
        self.prev_rgb = None  # the previous frame converted (an array, or a _LazyRGB when lazy)
        self.rotation = 0

    def _target(self, k):
        if self.times is not None:
            return self.times[k] if k < len(self.times) else None
        return k / self.fps

    def _rgb(self):
        if self.prev_rgb is None:
            frame = self.prev[1]
            if self.lazy:
                self.prev_rgb = _LazyRGB(frame, self.max_size, self.rotation)
            else:
                self.prev_rgb = _to_rgb(frame, self.max_size, self.rotation)
        return self.prev_rgb

    def _shape(self):
        frame = self.prev[1]
        w, h = output_size(frame.width, frame.height, self.max_size)
        return (w, h) if self.rotation in (90, 270) else (h, w)

    def _emit_until(self, limit):
        """Give the previous frame to every pending target before ``limit`` (seconds)."""
        while True:
            t = self._target(self.k)
            if t is None or t >= limit - TIME_EPS:
                return
            rgb = self._rgb()
            self.out.append(rgb if self.keep else np.empty(self._shape() + (0,), np.uint8))
            self.shown.append(self.prev[0])
            if self.on_frame is not None:
                self.on_frame(self.k, rgb)
            self.k += 1

    def push(self, t, frame):
        if self.prev is None:
            self.rotation = _rotation(frame)
            # targets before the first frame (negative times) get the first frame
            self.prev = (t, frame)
            self._emit_until(0.0)
            return
        if t < self.prev[0] + TIME_EPS:  # out-of-order or duplicate timestamp: the later frame replaces it
            self.prev, self.prev_rgb = (self.prev[0], frame), None
            return
        self._emit_until(t)
        self.prev, self.prev_rgb = (t, frame), None

    def finish(self, end):
        if self.prev is None:
            return
        if self.times is not None:
            self._emit_until(math.inf)  # targets past the end get the last frame; the caller checks times
        else:
            self._emit_until(end)


def decode(path: str | os.PathLike, times=None, fps: float | None = None, max_size: int | None = None,
           sample_rate: int = AUDIO_RATE, audio: bool = True, on_frame=None, keep_frames: bool = True,
           lazy_rgb: bool = False) -> Decoded:
    """Decode a video file once: the frames shown at ``times`` (or every 1/``fps`` s) and, if ``audio``, the sound.

    ``times`` are seconds on the frame timeline (sorted ascending); with ``fps`` the targets are ``k / fps``
    for every k whose time falls before the end of the last frame. The audio (mono, ``sample_rate``) has
    ``round(duration * sample_rate)`` samples, zeros where the file has no sound. ``on_frame(index, rgb)``, if
    given, is called as soon as each output frame is known (to encode it while decoding goes on); with
    ``keep_frames=False`` the frames are not stacked into ``Decoded.frames`` (it is then T x H x W x 0, giving
    only the shape), which saves a copy of every frame when ``on_frame`` consumes them. With ``lazy_rgb`` (and
    ``keep_frames=False``) ``on_frame`` gets a function instead of the array: calling it (from any thread, once
    or more) converts the frame to RGB, so that the conversion runs off the decoding loop.
    """
    path = os.fspath(path)
    if (times is None) == (fps is None):
        raise ValueError("give exactly one of times and fps")
    if times is not None:
        times = np.asarray(times, dtype=np.float64)
        if times.ndim != 1 or (len(times) > 1 and np.any(np.diff(times) < 0)):
            raise ValueError("times must be a sorted 1-D sequence")
    if fps is not None:
        fps = check_fps(fps)
    with _open(path) as c:
        if not c.streams.video:
            raise InputError("no video stream", path)
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        vtb = vs.time_base
        header_duration = _stream_seconds(vs.duration, vtb) or 0.0
        header_frames = int(vs.frames or 0)
        rate = float(vs.average_rate or vs.guessed_rate or 0) or None
        sampler = _FrameSampler(times, fps, max_size, on_frame, keep_frames, lazy_rgb)
        t0 = None  # pts (seconds) of the first frame = time 0 of the frame timeline
        last_t, last_dur, n_frames = None, None, 0
        # The sound is decoded from a second handle of the file in a thread (PyAV releases the GIL while
        # decoding): interleaving audio packets with the frame-threaded video decoder stalled its pipeline
        # and cost 3-4x the audio's own decode time.
        sound = _sound_pool().submit(_decode_sound, path) if audio and c.streams.audio else None
        try:
            for decoded in _decoded_packets(c, vs):
                for frame in decoded:
                    ft = frame.time
                    if ft is None:  # no timestamp: continue at the nominal rate
                        ft = (last_t + (last_dur or 0)) if last_t is not None else 0.0
                    if t0 is None:
                        t0 = ft
                    t = ft - t0
                    sampler.push(t, frame)
                    if frame.duration:
                        last_dur = float(frame.duration * frame.time_base)
                    elif last_t is not None and t > last_t:
                        last_dur = t - last_t
                    last_t = t if last_t is None else max(last_t, t)
                    n_frames += 1
        except av.FFmpegError as e:
            if sound is not None:
                sound.cancel()  # or, running, it ends on its own and is dropped
            raise InputError(f"corrupt or truncated media ({_reason(e)})", path) from None
        chunks, native_rate = sound.result() if sound is not None else ([], 0)
        if n_frames == 0:
            raise InputError("the video stream has no decodable frames", path)
        if last_dur is None or last_dur <= 0:
            last_dur = 1.0 / rate if rate else 0.0
        duration = last_t + last_dur
        # A file cut short still decodes, to fewer frames than its header announces. An edit list can present
        # fewer frames than the samples the header counts (a cut keeping 15 of 30 frames, the first at -1 s):
        # the header's duration is the presented one, so the frames that duration holds are what to expect.
        if header_frames > 0 and header_duration > 0 and rate:
            header_frames = min(header_frames, math.ceil(header_duration * rate - 1e-6))
        if header_frames > 0 and n_frames < 0.9 * header_frames - 1:
            raise InputError(f"truncated: {n_frames} of the {header_frames} frames its header announces decode", path)
        if header_duration > 0 and duration < 0.9 * header_duration - 0.1:
            raise InputError(f"truncated: decodes to {duration:.2f} s of the {header_duration:.2f} s its header "
                             "announces", path)
        sampler.finish(duration)
        frames = np.stack(sampler.out) if sampler.out else np.zeros((0, 0, 0, 3 if keep_frames else 0), np.uint8)
        frame_times = times if times is not None else np.arange(len(sampler.out), dtype=np.float64) / fps
        w, h = vs.codec_context.width, vs.codec_context.height
        if sampler.rotation in (90, 270):
            w, h = h, w
        wav = None
        if audio:
            n = int(round(duration * sample_rate))
            wav = _place_audio(chunks, native_rate, t0, n, sample_rate) if chunks else np.zeros(n, np.float32)
        return Decoded(frames=frames, frame_times=np.asarray(frame_times, np.float64),
                       shown_times=np.asarray(sampler.shown, np.float64), duration=float(duration),
                       has_audio=bool(chunks), audio=wav, sample_rate=sample_rate, width=w, height=h,
                       rotation=sampler.rotation,
                       info={"video_start": t0, "audio_start": chunks[0][0] if chunks else None,
                             "native_audio_rate": native_rate, "decoded_frames": n_frames})


@functools.cache
def _sound_pool() -> ThreadPoolExecutor:
    """The threads that decode sounds beside the videos, kept for the process (starting threads for every
    video showed in the build's profile); two, for two videos decoded at once."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="avis-sound")


def _decoded_packets(container, stream, max_bad: int = MAX_BAD_PACKETS):
    """The frames of each packet of ``stream``; up to ``max_bad`` undecodable packets are skipped (a few
    corrupt packets in a long file should not lose it), one more raises the FFmpeg error."""
    errors = 0
    for packet in container.demux(stream):
        try:
            yield packet.decode()
        except av.FFmpegError:
            errors += 1
            if errors > max_bad:
                raise


def _mono_chunks(c, path: str, what: str, max_bad: int = MAX_BAD_PACKETS):
    """The first audio stream of the open container ``c`` down-mixed to mono at its native rate
    -> ([(start seconds or None, float32 samples)], native rate); ``what`` names the file in errors."""
    chunks: list[tuple[float | None, np.ndarray]] = []
    resampler, native_rate = None, 0

    def take(aframes):
        for af in aframes:
            if af.samples:
                chunks.append((af.time if af.pts is not None else None,
                               af.to_ndarray().reshape(-1).astype(np.float32, copy=False)))

    try:
        for decoded in _decoded_packets(c, c.streams.audio[0], max_bad):
            if resampler is None and decoded:
                native_rate = decoded[0].sample_rate
                resampler = av.AudioResampler(format="flt", layout="mono", rate=native_rate)
            for af in decoded:
                take(resampler.resample(af))
        if resampler is not None:
            take(resampler.resample(None))
    except av.FFmpegError as e:
        raise InputError(f"corrupt or truncated {what} ({_reason(e)})", path) from None
    return chunks, native_rate


def _decode_sound(path: str) -> tuple[list[tuple[float | None, np.ndarray]], int]:
    """A video file's sound from a handle of its own (run beside the video decoding), see :func:`_mono_chunks`."""
    with _open(path) as c:
        return _mono_chunks(c, path, "media")


_THREADS_LOCK = threading.Lock()
_THREADS_USERS = [0, 1]  # resamplings running, torch's thread count before the first of them


def _resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """torchaudio's resampler, on one torch thread: with torch's default pool of one thread per core, its
    OpenMP threads spun beside the video decoder's and the builder's JPEG threads and made a resampling of a
    few ms take 20-50 times longer on 2 busy cores. The count is restored when no resampling runs (they may
    run in several threads at once); the result does not depend on it."""
    if orig == new:
        return x
    import torch
    import torchaudio.functional as AF

    with _THREADS_LOCK:
        if _THREADS_USERS[0] == 0:
            _THREADS_USERS[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_USERS[0] += 1
    try:
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), orig, new).numpy()
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS[0] -= 1
            if _THREADS_USERS[0] == 0:
                torch.set_num_threads(_THREADS_USERS[1])


def _place_audio(chunks, native_rate, t0, n, sample_rate) -> np.ndarray:
    """Concatenate decoded mono chunks, resample, and put sample 0 at time ``t0`` (pad or trim to ``n``)."""
    start = chunks[0][0]
    if start is None:
        start = t0
    x = _resample(np.concatenate([c for _, c in chunks]), native_rate, sample_rate)
    offset = int(round((start - t0) * sample_rate))  # > 0: the sound starts after the first frame
    out = np.zeros(n, np.float32)
    src0 = max(0, -offset)
    dst0 = max(0, offset)
    m = max(0, min(n - dst0, len(x) - src0))
    out[dst0:dst0 + m] = x[src0:src0 + m]
    return out


def decode_frames(path: str | os.PathLike, times, max_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The frames shown at ``times`` (seconds on the frame timeline, sorted) -> (uint8 T x H x W x 3, shown times)."""
    d = decode(path, times=times, max_size=max_size, audio=False)
    return d.frames, d.shown_times


def decode_audio(path: str | os.PathLike, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """A video's sound, mono float32 at ``sample_rate``, on its frame timeline (zeros if it has none).

    Decodes the video stream too (for time 0 and the duration), so prefer :func:`decode` when you need both.
    """
    return decode(path, times=[], sample_rate=sample_rate).audio


def decode_audio_file(path: str | os.PathLike, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """An audio file's first audio stream, mono float32 at ``sample_rate``; sample 0 is its first sample."""
    path = os.fspath(path)
    with _open(path) as c:
        if not c.streams.audio:
            raise InputError("no audio stream", path)
        # no bad packet is skipped here: the samples are concatenated, so a gap would shift all that follows
        chunks, rate = _mono_chunks(c, path, "audio", max_bad=0)
        if not chunks:
            raise InputError("the audio stream has no decodable samples", path)
        return _resample(np.concatenate([x for _, x in chunks]), rate, sample_rate).astype(np.float32)


def read_image(path: str | os.PathLike, max_size: int | None = None) -> np.ndarray:
    """A still image (JPEG/PNG frame of a YTVIS folder) -> uint8 H x W x 3 RGB, EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(regular_file(path))
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            w, h = output_size(im.width, im.height, max_size)
            if (w, h) != (im.width, im.height):
                im = im.resize((w, h), Image.Resampling.BOX)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"unreadable image ({e})", path) from None


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a still image as displayed (EXIF orientation applied), from its header."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(regular_file(path))
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that swap the axes
                w, h = h, w
            return w, h
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"unreadable image ({e})", path) from None
