"""``avis stream SOURCE --checkpoint CKPT [--out DIR]``: online inference on a live source, latency measured.

SOURCE is anything PyAV opens as a live input: a media file (read as fast as possible, or at its own rate with
``--realtime``), ``-`` for standard input or the path of a named pipe carrying MPEG-TS or Matroska, a network
URL (``rtsp://``, ``udp://``, ``http://`` MPEG-TS, ``rtmp://``, ``srt://``), or a capture device with
``--format`` (``/dev/video0 --format v4l2``). Video and audio packets are demuxed as they arrive, interleaved.

Frames are taken at ``k / fps`` on the frame timeline (time 0 = the first video frame; ``fps`` defaults to the
rate of the checkpoint's training data), exactly as ``avis infer`` takes them, and each frame's audio window
is the ``eta`` seconds of sound *ending at the frame's time*: a frame waits for its sound, never for later
sound (:mod:`avis.engine.livesync`). The method's per-frame ``step`` runs on each frame, and as soon as it
returns one JSON line goes to standard output (and ``DIR/frames.jsonl``), flushed::

    {"video_id": 1, "frame": 17, "time": 2.833, "instances": [{"track_id": 0, "category_id": 5, "score": 0.91,
     "segmentation": {"size": [h, w], "counts": "..."}}], "latency_ms": 41.2, "dropped": 0}

``frame`` is the frame's index on the timeline (dropped frames leave gaps), ``latency_ms`` the time from the
arrival of the frame's picture (the demuxer handing over its packet) to the line being written.

When the model is slower than the source: ``--queue`` (default) processes every frame, the reader waiting
once ``--max-queue`` frames wait; ``--drop`` throws away the oldest waiting frame instead (at most
``--max-queue`` frames wait, default 3: frames come in bursts when their sound arrives late, and a burst
should not cost frames when the model keeps up on average). The method never sees a
dropped frame: its reference-frame cache holds the last frames it *processed*, and its tracker's previous
frame is the previous processed one; the frame indices it counts are mapped back to the timeline's.

At the end (the source ends, breaks, stalls for ``--timeout`` s, or Ctrl-C) ``DIR`` gets, written atomically:
``results.json`` (YTVIS results: what ``avis infer`` writes for the same input when nothing was dropped),
``videos.json`` (the stream as a YTVIS video entry, frame times included), ``latency.json`` (p50/p95/p99 of
the latency and of the model's step, FPS, counters, and every frame's numbers) and, with ``--overlay``, a live
overlay (MPEG-TS or fragmented mp4, the source's sound passed through). A stream that breaks leaves all of
these for the frames it delivered and ends with one line saying what happened.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import stat
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avis.errors import AvisError, ConfigError, InputError

log = logging.getLogger("avis.stream")

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp", "http", "https", "pipe")
DEFAULT_TIMEOUT = 10.0  # seconds without a frame before a live source counts as dead
# frames that may wait for the model: with --drop, a few, because frames are released in bursts (an MPEG-TS
# muxer writes the sound up to 0.7 s after the pictures; the frames waiting for it go together), and with
# capacity 1 a model keeping up on average still lost frames (11 of 48 in scripts/bench_stream.py)
DROP_QUEUE, QUEUE_QUEUE = 3, 64
DEFAULT_MAX_AUDIO_LAG = 2.0  # seconds of video a frame may wait for its sound before it goes without


class StreamBroken(AvisError):
    """The source failed mid-way; partial outputs were written (exit code 1)."""

    exit_code = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a media file, - (standard input), a named pipe, a URL (rtsp://, udp://, "
                                       "http://, rtmp://, srt://) or a capture device (with --format)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by avis train (an online method)")
    parser.add_argument("--out", default=None, help="folder for frames.jsonl, results.json, videos.json, "
                                                    "latency.json (default: JSON lines on standard output only)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames per second to process (default: the checkpoint's training data rate)")
    parser.add_argument("--realtime", action="store_true",
                        help="read a file at its own rate, as if it were live (default: as fast as possible)")
    parser.add_argument("--format", default=None, help="input format when it cannot be guessed (mpegts, "
                                                       "matroska, v4l2, alsa, ...)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="demuxer/protocol option, repeatable (rtsp_transport=tcp, video_size=640x480)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--queue", dest="policy", action="store_const", const="queue",
                        help="when behind, process every frame; the reader waits (default)")
    policy.add_argument("--drop", dest="policy", action="store_const", const="drop",
                        help="when behind, drop the oldest waiting frames (counted)")
    parser.set_defaults(policy="queue")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="frames that may wait for the model (default: 3 with --drop, 64 with --queue)")
    parser.add_argument("--overlay", default=None, metavar="PATH_OR_URL",
                        help="live overlay: .ts (MPEG-TS), .mp4 (fragmented), or a URL with --overlay-format")
    parser.add_argument("--overlay-format", default=None, choices=("mpegts", "mp4"),
                        help="mpegts or mp4 (fragmented) (default: mp4 for .mp4 / .m4v names, else mpegts)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="overlay only instances scoring at least this (default: avis export's)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds without a new frame before the source counts as dead ({DEFAULT_TIMEOUT:g})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--quiet", action="store_true", help="no JSON lines on standard output (files only)")


# ------------------------------------------------------------------------------------------------ the source
def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {p!r}: expected KEY=VALUE")
        out[key] = value
    return out


def open_source(source: str, fmt: str | None = None, options: dict | None = None, timeout: float | None = None):
    """``source`` opened with PyAV for reading as it arrives. A path must exist (a regular file, a named pipe
    or a device; a folder is refused); ``-`` is standard input; ``scheme://`` a URL."""
    import av

    scheme = source.split("://", 1)[0].lower() if "://" in source else None
    if source == "-":
        target = "pipe:0"
    elif scheme is not None:
        if scheme not in URL_SCHEMES and scheme != "file":
            raise InputError(f"unsupported URL scheme {scheme!r} (use one of {', '.join(URL_SCHEMES)})", source)
        target = source
    else:
        try:
            mode = os.stat(source).st_mode
        except OSError as e:
            raise InputError(f"no such file, pipe or device ({e.strerror})", source) from None
        if stat.S_ISDIR(mode):
            raise InputError("a folder, not a stream (avis infer runs on frame folders)", source)
        target = source
    try:
        return av.open(target, format=fmt, options=dict(options or {}), metadata_errors="ignore",
                       timeout=timeout)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise InputError(f"cannot open the stream ({reason})", source) from None


@dataclass
class FrameItem:
    """One frame of the timeline, ready for the model."""

    time: float  # k / fps
    rgb: np.ndarray  # uint8 h x w x 3 (at the checkpoint's test_max_size, as avis infer decodes)
    window: np.ndarray | None  # float32 S, or None when the source has no sound
    capture: float  # time.monotonic() when the packet of its picture arrived


@dataclass
class ReaderInfo:
    width: int = 0  # display size of the source (results are at this size)
    height: int = 0
    frames: int = 0  # frames of the timeline emitted so far
    audio_late: int = 0  # frames that went without their full sound (it lagged > max_audio_lag)
    has_audio: bool = False
    video_packets: int = 0
    audio_packets: int = 0
    seconds: float = 0.0  # stream time read (the last frame's end)
    first_frame: threading.Event = field(default_factory=threading.Event)


class Reader(threading.Thread):
    """Demuxes the source, decodes video and audio as they arrive, samples the frame timeline and hands each
    frame, with its causal audio window, to the queue. Errors end the thread; ``error`` keeps them."""

    def __init__(self, container, queue, fps: float, max_size: int | None, eta: float, realtime: bool = False,
                 max_audio_lag: float = DEFAULT_MAX_AUDIO_LAG, audio_tap=None, name: str = "source"):
        super().__init__(name="avis-stream-reader", daemon=True)
        self.c, self.queue, self.fps, self.max_size, self.eta = container, queue, fps, max_size, eta
        self.realtime, self.max_audio_lag, self.audio_tap, self.source = realtime, max_audio_lag, audio_tap, name
        self.info = ReaderInfo()
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.pending: deque = deque()  # (k, FrameItem without window) waiting for their sound
        self.timeline = None
        self.latest_video = -math.inf  # frame-timeline time of the newest decoded frame

    def run(self) -> None:
        try:
            self._read()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which reports it
            self.error = e
        finally:
            self.queue.close()

    # the shown frame's arrival: the sampler emits targets for the frame *before* the one just pushed
    def _on_frame(self, k: int, rgb: np.ndarray) -> None:
        self.pending.append((k, FrameItem(k / self.fps, rgb, None, self._emit_arrival)))
        self.info.frames = k + 1
        self.info.first_frame.set()

    def _release(self, final: bool = False) -> None:
        from avis.models.audio.windows import window_length

        while self.pending:
            k, item = self.pending[0]
            if self.info.has_audio:
                tl = self.timeline
                ready = tl is not None and tl.ready(item.time)
                if not (ready or final or self.audio_done):
                    if self.latest_video - item.time <= self.max_audio_lag:
                        return
                    self.info.audio_late += 1
                    log.warning("frame %d (%.2f s): its sound is %.1f s late; it goes with what has arrived", k,
                                item.time, self.latest_video - item.time)
                item.window = tl.window(item.time) if tl is not None else np.zeros(window_length(self.eta),
                                                                                    np.float32)
                if tl is not None:
                    tl.forget_before(item.time)
            self.pending.popleft()
            self.queue.put(k, item)

    def _pace(self, packet) -> None:
        ts = packet.dts if packet.dts is not None else packet.pts
        if ts is None or packet.time_base is None:
            return
        t = float(ts * packet.time_base)
        if self._pace0 is None:
            self._pace0 = (t, time.monotonic())
        wait = self._pace0[1] + (t - self._pace0[0]) - time.monotonic()
        if wait > 0:
            self.stop.wait(wait)

    def _read(self) -> None:
        import av

        from avis.engine.livesync import AudioTimeline
        from data_tools import decode as dec

        c = self.c
        if not c.streams.video:
            raise InputError("no video stream", self.source)
        vs = c.streams.video[0]
        aus = c.streams.audio[0] if c.streams.audio else None
        self.info.has_audio = aus is not None
        self.audio_done = aus is None
        rate = float(vs.average_rate or vs.guessed_rate or 0) or None
        sampler = dec._FrameSampler(None, self.fps, self.max_size, self._on_frame, keep=False)
        t0, last_t, last_dur = None, None, None
        resampler, bad = None, {"video": 0, "audio": 0}
        self._pace0, self._prev_arrival, self._emit_arrival = None, None, None

        def decode(packet, kind):
            try:
                return packet.decode()
            except av.FFmpegError:
                bad[kind] += 1  # data_tools.decode's rule: a few undecodable packets are skipped
                if bad[kind] > dec.MAX_BAD_PACKETS:
                    raise
                return []

        def take_audio(frames):
            for af in frames:
                if af.samples:
                    self.timeline.push(af.time if af.pts is not None else None,
                                       af.to_ndarray().reshape(-1).astype(np.float32, copy=False))

        streams = [vs] + ([aus] if aus is not None else [])
        for packet in c.demux(streams):
            if self.stop.is_set():
                break
            if self.realtime:
                self._pace(packet)
            arrival = time.monotonic()
            if packet.stream is aus:
                self.info.audio_packets += 1
                if self.audio_tap is not None and packet.size:
                    try:
                        self.audio_tap(packet, t0)
                    except Exception as e:  # noqa: BLE001 - the overlay's sound is not worth the results
                        log.warning("overlay: its sound stops here (%s)", e)
                        self.audio_tap = None
                for af in decode(packet, "audio"):
                    if resampler is None:  # decode._mono_chunks: mono float at the first frame's rate
                        resampler = av.AudioResampler(format="flt", layout="mono", rate=af.sample_rate)
                        self.timeline = AudioTimeline(af.sample_rate, self.eta)
                        if t0 is not None:
                            self.timeline.start(t0)
                    take_audio(resampler.resample(af))
                if not packet.size:  # the demuxer's flush packet: this stream has ended
                    if resampler is not None:
                        take_audio(resampler.resample(None))
                        self.timeline.finish()
                    self.audio_done = True
                self._release()
                continue
            self.info.video_packets += 1
            for frame in decode(packet, "video"):
                # data_tools.decode.decode's frame loop, step for step (the frames must be the same)
                ft = frame.time
                if ft is None:
                    ft = (last_t + (last_dur or 0)) if last_t is not None else 0.0
                if t0 is None:
                    t0 = ft
                    if self.timeline is not None:
                        self.timeline.start(t0)
                    self._emit_arrival = arrival  # targets before the first frame get the first frame
                t = ft - t0
                sampler.push(t, frame)
                if sampler.prev is not None and sampler.prev[1] is frame:
                    self._emit_arrival = arrival  # this frame is the one shown from now on
                if frame.duration:
                    last_dur = float(frame.duration * frame.time_base)
                elif last_t is not None and t > last_t:
                    last_dur = t - last_t
                last_t = t if last_t is None else max(last_t, t)
                self.latest_video = max(self.latest_video, t)
                if not self.info.width:
                    w, h = vs.codec_context.width, vs.codec_context.height
                    self.info.width, self.info.height = (h, w) if sampler.rotation in (90, 270) else (w, h)
            self._release()
        if self.stop.is_set():
            return
        if last_t is None:
            raise InputError("the stream ended before its first video frame", self.source)
        if last_dur is None or last_dur <= 0:
            last_dur = 1.0 / rate if rate else 0.0
        sampler.finish(last_t + last_dur)
        self.info.seconds = last_t + last_dur
        if resampler is not None and not self.audio_done:
            take_audio(resampler.resample(None))
            self.timeline.finish()
        self.audio_done = True
        self._release(final=True)


# ----------------------------------------------------------------------------------------------- latency
def percentiles(values_ms) -> dict:
    """p50 / p95 / p99 / mean / max of a list of milliseconds (None for an empty list)."""
    v = np.asarray(list(values_ms), np.float64)
    if not v.size:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
            "mean": round(float(v.mean()), 3), "max": round(float(v.max()), 3)}


# ------------------------------------------------------------------------------------------------ overlay
class LiveOverlay:
    """Masks drawn on each processed frame as it is done, encoded (H.264) into MPEG-TS or fragmented mp4; the
    source's audio packets are copied in unchanged (no re-encoding), on the same timeline."""

    def __init__(self, target: str, fmt: str | None, fps: float, threshold: float, categories: list[dict]):
        self.target, self.fps, self.threshold = target, fps, threshold
        self.fmt = fmt or ("mp4" if target.lower().endswith((".mp4", ".m4v")) else "mpegts")
        self.names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
        self.lock = threading.Lock()
        self.out = self.vst = self.ast = None
        self.audio_in = None
        self.early: list = []  # audio packets before the container could be opened
        self.frames = 0
        self.next_pts = 0
        self.closed = False

    def set_audio(self, stream, container_format: str) -> None:
        if self.fmt == "mp4" and stream.codec_context.name == "aac" and "mpegts" in container_format:
            # MPEG-TS carries AAC in ADTS frames, which mp4 cannot take as they are (copying them wrote an
            # unreadable file; aac_adtstoasc needs the first packet before the header is out)
            log.warning("overlay: the MPEG-TS source's AAC sound cannot be copied into mp4; the overlay is "
                        "silent (a .ts overlay keeps the sound)")
            return
        self.audio_in = stream

    def _open(self, width: int, height: int) -> None:
        from fractions import Fraction

        import av

        opts = {"movflags": "frag_keyframe+empty_moov+default_base_moof"} if self.fmt == "mp4" else {}
        self.out = av.open(self.target, "w", format=self.fmt, options=opts)
        self.vst = self.out.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(100000))
        self.vst.width, self.vst.height, self.vst.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        # no lookahead, no B-frames: each frame leaves the encoder at once (the overlay is live)
        self.vst.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "23"}
        if self.audio_in is not None:
            try:
                self.ast = self.out.add_stream_from_template(self.audio_in)
            except (ValueError, av.FFmpegError) as e:
                log.warning("overlay: the sound cannot be copied into %s (%s); the overlay is silent", self.fmt, e)

    def audio(self, packet, t0: float | None) -> None:
        """A source audio packet (from the reader thread); ``t0``: the first video frame's time (None: not
        known yet, kept until it is)."""
        with self.lock:
            if self.closed:
                return
            if self.out is None or t0 is None:
                self.early.append(packet)
                if len(self.early) > 10_000:  # a stream whose video never starts: do not hold its sound forever
                    self.early.pop(0)
                return
            self._mux_audio(packet, t0)

    def _mux_audio(self, packet, t0: float) -> None:
        if self.ast is None or packet.pts is None:
            return
        shift = int(round(t0 / packet.time_base))
        if packet.pts - shift < 0:  # before the first frame: not on the timeline
            return
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = self.ast
        self.out.mux(packet)

    def frame(self, k: int, rgb: np.ndarray, rec: dict, width: int, height: int, t0: float) -> None:
        import av
        from PIL import Image

        from avis.io import masks as mask_io
        from avis.io.text import printable
        from data_tools.exporters.overlay import draw, label_font

        with self.lock:
            if self.out is None:
                self._open(width, height)
                for p in self.early:
                    self._mux_audio(p, t0)
                self.early = []
            if rgb.shape[:2] != (height, width):  # drawn at the results' size, as avis export draws
                rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
            keep = sorted((i for i in rec["instances"] if i["score"] >= self.threshold), key=lambda i: i["score"])
            items = [(mask_io.decode(i["segmentation"]).astype(bool), i["track_id"],
                      printable(f"{i['track_id']} {self.names.get(i['category_id'], i['category_id'])} "
                                f"{i['score']:.2f}", one_line=True)) for i in keep]
            img = draw(rgb, items, label_font(height, width))
            img = np.pad(img, ((0, height % 2), (0, width % 2), (0, 0)))
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts = max(k, self.next_pts)  # a dropped frame leaves a gap on the timeline
            self.next_pts = vf.pts + 1
            for p in self.vst.encode(vf):
                self.out.mux(p)
            self.frames += 1

    def close_quietly(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - it already failed once; the warning said so
            pass

    def close(self) -> None:
        with self.lock:
            if self.out is None or self.closed:
                return
            self.closed = True
            try:
                for p in self.vst.encode(None):
                    self.out.mux(p)
            finally:
                self.out.close()


# ------------------------------------------------------------------------------------------------- the run
@dataclass
class StreamRun:
    """What a run produced (the CLI writes it; tests read it)."""

    records: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    video: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    ended: str = "end of stream"  # or what broke it
    broken: bool = False


def stream(source: str, trained, *, fps: float, realtime: bool = False, fmt: str | None = None,
           options: dict | None = None, policy: str = "queue", max_queue: int | None = None,
           timeout: float = DEFAULT_TIMEOUT, amp: bool = True, emit=None, overlay: LiveOverlay | None = None,
           max_audio_lag: float = DEFAULT_MAX_AUDIO_LAG, hold_until_read: bool = False, on_step=None) -> StreamRun:
    """Run ``trained`` (:func:`avis.engine.session.load_trained`) online over ``source``.

    ``emit(line)``: called with each frame's JSON line as soon as it is done. ``hold_until_read``: the model
    starts only once the whole source has been read (tests: makes the drop policy deterministic).
    ``on_step(state)``: called after each step (tests: inspect the method's state).
    """
    import torch

    from avis.data.clips import resize_frames, test_size
    from avis.engine.livesync import FrameQueue
    from avis.engine.predict import frame_record, tracks_to_results
    from avis.models.audio.windows import DEFAULT_ETA
    from avis.models.base import VISMethod

    model, categories, device = trained.model, trained.categories, trained.device
    if type(model).step is VISMethod.step:
        raise ConfigError(f"{type(model).__name__} is not an online method (it has no per-frame step): "
                          "avis stream needs RCF, CrossVIS, STMask or InsPro; use avis infer on a recording")
    dc = trained.cfg.data
    short, max_size = dc.get("test_size"), dc.get("test_max_size")
    eta = float(dc.get("eta", DEFAULT_ETA))
    capacity = max_queue or (DROP_QUEUE if policy == "drop" else QUEUE_QUEUE)
    queue = FrameQueue(policy, capacity)
    container = open_source(source, fmt, options, timeout)
    reader = Reader(container, queue, fps, max_size, eta, realtime, max_audio_lag,
                    audio_tap=overlay.audio if overlay is not None else None, name=source)
    if overlay is not None and container.streams.audio:
        overlay.set_audio(container.streams.audio[0], container.format.name)
    uses_audio = bool(getattr(model, "uses_audio", False))
    run = StreamRun()
    index_map: list[int] = []  # the method's frame counter -> the timeline's frame index
    lat_ms, step_ms, per_frame = [], [], []
    state = model.init_state()
    model.eval()
    reader.start()
    started = time.monotonic()
    if hold_until_read:
        reader.join()
    first_done = last_done = None
    try:
        while True:
            try:
                got = queue.get(timeout=timeout)
            except TimeoutError:
                run.broken, run.ended = True, f"no frame for {timeout:g} s: the source stalled"
                break
            if got is None:
                break
            k, item = got
            if not index_map and uses_audio and not reader.info.has_audio:
                log.warning("%s has no sound: the audio-visual model gets none (its audio tokens are masked)",
                            source)
            H, W = reader.info.height, reader.info.width
            x = torch.from_numpy(np.ascontiguousarray(item.rgb)).permute(2, 0, 1)[None]
            h, w = x.shape[-2:]
            x = resize_frames(x, test_size(h, w, short, max_size))[0].to(device)
            a = None if item.window is None else torch.from_numpy(item.window).to(device)
            t_step = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                 enabled=amp and device.type == "cuda"):
                result = model.step(state, x, a)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            s_ms = (time.perf_counter() - t_step) * 1000
            index_map.append(k)
            rec = frame_record(result, 1, categories, H, W)
            rec["frame"], rec["time"] = k, round(item.time, 6)
            done = time.monotonic()
            rec["latency_ms"], rec["dropped"] = round((done - item.capture) * 1000, 3), queue.stats.dropped
            if emit is not None:
                emit(json.dumps(rec))
            done = time.monotonic()  # the line is out: that is when the result exists for a reader
            latency = (done - item.capture) * 1000
            first_done = done if first_done is None else first_done
            last_done = done
            lat_ms.append(latency)
            step_ms.append(s_ms)
            per_frame.append({"frame": k, "latency_ms": round(latency, 3), "step_ms": round(s_ms, 3)})
            run.records.append(rec)
            if on_step is not None:
                on_step(state)
            if overlay is not None:
                try:
                    overlay.frame(k, item.rgb, rec, W, H, reader_t0(reader))
                except Exception as e:  # noqa: BLE001 - the results go on without the overlay
                    log.warning("overlay: stopped at frame %d (%s); results continue", k, e)
                    reader.audio_tap = None
                    overlay.close_quietly()
                    overlay = None
    except KeyboardInterrupt:
        run.broken, run.ended = True, "stopped by the user (Ctrl-C)"
    finally:
        reader.stop.set()
        queue.close()
        if overlay is not None:
            try:
                overlay.close()
            except Exception as e:  # noqa: BLE001 - the results matter more than a half-written overlay
                log.warning("overlay: %s", e)
    reader.join(timeout=2.0)
    if reader.error is not None and not run.broken:
        e = reader.error
        reason = (e.message if isinstance(e, AvisError) else
                  getattr(e, "strerror", None) or str(e) or type(e).__name__)
        run.broken, run.ended = True, f"the stream broke ({reason})"
    if not reader.is_alive():
        container.close()
    # the timeline: every frame the reader emitted (processed or dropped)
    n = max(reader.info.frames, (index_map[-1] + 1) if index_map else 0)
    H, W = reader.info.height, reader.info.width
    tracks = model.finish(state)
    for tr in tracks:
        tr.masks = {index_map[i]: m for i, m in tr.masks.items() if 0 <= i < len(index_map)}
    run.results = tracks_to_results(tracks, 1, n, categories, H, W) if n and H else []
    run.video = {"id": 1, "width": int(W), "height": int(H), "length": int(n), "fps": float(fps),
                 "frame_times": [k / fps for k in range(n)], "file_names": [f"stream/{k:05d}.jpg" for k in range(n)]}
    # throughput while results came: frames after the first per second between the first and the last result
    wall = (last_done - first_done) if len(index_map) > 1 and last_done > first_done else None
    run.latency = {
        "source": source, "policy": policy, "max_queue": capacity, "fps_target": fps, "realtime": realtime,
        "frames": n, "processed": len(index_map), "dropped": queue.stats.dropped,
        "dropped_frames": queue.dropped_indices, "audio_late": reader.info.audio_late,
        "latency_ms": percentiles(lat_ms), "step_ms": percentiles(step_ms),
        "fps": round((len(index_map) - 1) / wall, 3) if wall else None,
        "wall_s": round(time.monotonic() - started, 3), "ended": run.ended, "broken": run.broken,
        "device": str(device), "per_frame": per_frame,
    }
    return run


def reader_t0(reader: Reader) -> float:
    tl = reader.timeline
    return tl.t0 if tl is not None and tl.t0 is not None else 0.0


def run(args: argparse.Namespace) -> int:
    from avis.engine.infer import DEFAULT_FPS
    from avis.engine.session import load_trained
    from avis.io.ytvis import save_json
    from data_tools import decode as dec

    if args.fps is not None:
        dec.check_fps(args.fps, "--fps")
    if args.max_queue is not None and args.max_queue < 1:
        raise ConfigError(f"--max-queue must be at least 1, got {args.max_queue}")
    if args.score_threshold is not None and not math.isfinite(args.score_threshold):
        raise ConfigError(f"--score-threshold must be a number, got {args.score_threshold:g}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ConfigError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    options = _options(args.option)
    trained = load_trained(args.checkpoint, args.device)
    fps = args.fps or trained.fps or DEFAULT_FPS
    out = Path(args.out) if args.out else None
    lines = []  # DIR/frames.jsonl, opened at the first line: a source that fails to open leaves DIR as it was
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    overlay = None
    if args.overlay:
        from data_tools.export import DEFAULT_THRESHOLD_OTHER

        thr = DEFAULT_THRESHOLD_OTHER if args.score_threshold is None else args.score_threshold
        overlay = LiveOverlay(args.overlay, args.overlay_format, fps, thr, trained.categories)

    def emit(line: str) -> None:
        if not args.quiet:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if out is not None:
            if not lines:
                lines.append(open(out / "frames.jsonl", "w", encoding="utf-8"))  # noqa: SIM115 - closed below
            lines[0].write(line + "\n")
            lines[0].flush()

    log.info("streaming %s at %g fps (%s, policy %s)", args.source, fps,
             "--fps" if args.fps else ("the checkpoint's training data rate" if trained.fps else "the default"),
             args.policy)
    try:
        result = stream(args.source, trained, fps=fps, realtime=args.realtime, fmt=args.format, options=options,
                        policy=args.policy, max_queue=args.max_queue, timeout=args.timeout, amp=not args.no_amp,
                        emit=emit, overlay=overlay)
    finally:
        for f in lines:
            f.close()
    lat = result.latency
    if out is not None:
        if not lines:  # no frame was processed: an empty frames.jsonl, not an earlier run's
            (out / "frames.jsonl").write_text("")
        save_json(result.results, out / "results.json")
        save_json({"videos": [result.video], "annotations": [], "categories": trained.categories},
                  out / "videos.json")
        save_json(lat, out / "latency.json", indent=1)
    p = lat["latency_ms"]
    ms = "n/a" if p["p50"] is None else f"p50 {p['p50']:.1f} ms, p95 {p['p95']:.1f} ms, p99 {p['p99']:.1f} ms"
    rate = "n/a" if lat["fps"] is None else f"{lat['fps']:.2f}"
    where = f"; {out}/latency.json" if out is not None else ""
    print(f"avis stream: {lat['processed']} of {lat['frames']} frames processed ({lat['dropped']} dropped), "
          f"{rate} fps; latency {ms}; {result.ended}{where}", file=sys.stderr)
    if result.ended.startswith("stopped by the user"):
        return 130  # as a command interrupted by Ctrl-C, after writing what it had
    if result.broken:
        kept = f"partial results in {out}" if out is not None else "partial results above"
        raise StreamBroken(f"{result.ended} after {lat['frames']} frames; {kept}", args.source)
    return 0
