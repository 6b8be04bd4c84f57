"""Keeping sound and frames of a live source in step: the pieces of ``avis stream`` that hold no model.

A live source delivers video and audio packets interleaved, each stream a little ahead of the other by the
muxer's whim. Frame ``k`` of the frame timeline (``t_k = k / fps``, time 0 = the first video frame, as
``data_tools/decode.py`` defines it for ``avis build`` and ``avis infer``) can be processed once

* its picture is known: the source frame *shown* at ``t_k`` (the last one whose presentation time is <= t_k),
  which is certain only when the next source frame has arrived (or the stream ended), and
* its sound is known: the audio window of ``eta`` seconds that *ends* at ``t_k``
  (:func:`avis.models.audio.windows.frame_windows`), which needs the 16 kHz samples up to ``t_k``.

:class:`AudioTimeline` turns decoded mono chunks at the source's rate into the 16 kHz waveform placed on the
frame timeline exactly as :func:`data_tools.decode.decode` places it (sample 0 of the first chunk at the
chunk's time minus the first frame's time; the concatenated chunks resampled with torchaudio's sinc filter),
but block by block as the chunks arrive. Causality: a window holds only samples *before* ``t_k``; computing the
16 kHz samples just before ``t_k`` reads at most :attr:`StreamResampler.lookahead` source samples past them
(torchaudio's anti-aliasing filter, plus the resampler's block of ``orig / gcd`` samples: about 10 ms at
44.1 kHz, 0 when the source is at 16 kHz already), the same samples the offline resampling reads.

:class:`FrameQueue` is what lies between the reader and the model when the model falls behind: ``queue``
waits (the reader blocks once ``capacity`` frames wait), ``drop`` throws the oldest waiting frame away to make
room for the newest and counts it.
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from avis.models.audio.windows import SAMPLE_RATE, window_length


class StreamResampler:
    """torchaudio's ``resample`` (sinc, Hann window, 6 zero crossings, roll-off 0.99: its defaults, which
    ``data_tools.decode`` uses) computed incrementally. ``push`` returns the output samples the input so far
    determines; ``finish`` the rest (the input's end is zero-padded, as torchaudio pads it). The samples are
    those of one ``resample`` call over the whole input up to float rounding (torchaudio's single convolution
    may sum in another order: differences of a few 1e-7; none when ``orig == new``)."""

    def __init__(self, orig: int, new: int = SAMPLE_RATE):
        self.orig, self.new = int(orig), int(new)
        self.same = self.orig == self.new
        self.length = 0  # input samples pushed
        self.emitted = 0  # output samples returned
        if self.same:
            self.lookahead = 0
            return
        from torchaudio.functional.functional import _get_sinc_resample_kernel

        g = math.gcd(self.orig, self.new)
        self.o, self.n = self.orig // g, self.new // g
        self.kernel, self.width = _get_sinc_resample_kernel(self.orig, self.new, g, 6, 0.99, "sinc_interp_hann",
                                                            None, torch.device("cpu"), torch.float32)
        self.K = self.kernel.shape[-1]  # 2 * width + o input samples per block of n outputs
        self.lookahead = self.width + self.o  # input samples past an output block's start that it reads
        self.buf = np.zeros(self.width, np.float32)  # torchaudio's left padding, then the input
        self.buf_start = 0  # index in the padded input of buf[0]
        self.block = 0  # next output block

    def _blocks(self, available: int) -> np.ndarray:
        """The blocks whose inputs lie within the first ``available`` samples of the padded input."""
        count = (available - self.K) // self.o + 1 - self.block if available >= self.K else 0
        if count <= 0:
            return np.zeros(0, np.float32)
        lo = self.block * self.o - self.buf_start
        seg = torch.from_numpy(self.buf[lo:lo + (count - 1) * self.o + self.K])
        out = torch.nn.functional.conv1d(seg[None, None], self.kernel, stride=self.o)[0].T.reshape(-1)
        self.block += count
        drop = self.block * self.o - self.buf_start  # inputs no later block reads
        self.buf, self.buf_start = self.buf[drop:], self.buf_start + drop
        return out.numpy()

    def push(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(-1)
        self.length += len(x)
        if self.same:
            self.emitted += len(x)
            return x
        self.buf = np.concatenate([self.buf, x])
        return self._emit(self._blocks(self.buf_start + len(self.buf)))

    def finish(self) -> np.ndarray:
        if self.same:
            return np.zeros(0, np.float32)
        self.buf = np.concatenate([self.buf, np.zeros(self.width + self.o, np.float32)])
        return self._emit(self._blocks(self.buf_start + len(self.buf)))

    def _emit(self, y: np.ndarray) -> np.ndarray:
        total = math.ceil(self.n * self.length / self.o)  # torchaudio's output length for the input so far
        y = y[:max(0, total - self.emitted)]  # only at the end: the padding's blocks past the input
        self.emitted += len(y)
        return y


class AudioTimeline:
    """The 16 kHz mono sound of a live source on its frame timeline, for cutting frame windows.

    ``push(time, samples)``: one decoded mono chunk at ``native_rate`` (``time``: its presentation time in the
    source's clock, or None), in arrival order. ``start(t0)``: the first video frame's time (time 0 of the
    frame timeline). ``window(t)``: the ``eta`` s window ending at ``t`` (zeros where there is no sound),
    available once ``ready(t)``.
    """

    def __init__(self, native_rate: int, eta: float, sample_rate: int = SAMPLE_RATE):
        self.rate = int(sample_rate)
        self.S = window_length(eta, self.rate)
        self.resampler = StreamResampler(native_rate, self.rate)
        self.first_time: float | None = None  # the first chunk's time (decode: chunks[0][0])
        self.t0: float | None = None
        self.offset: int | None = None  # 16 kHz samples from frame time 0 to the first chunk's sample 0
        self.pending: list[np.ndarray] = []  # resampled before t0 was known
        self.buf = np.zeros(0, np.float32)  # placed samples [base, base + len(buf))
        self.base = 0
        self.seen_chunk = False
        self.done = False

    def _place(self, y: np.ndarray) -> None:
        if self.offset is None:
            self.pending.append(y)
            return
        if self.pending:
            y = np.concatenate([*self.pending, y])
            self.pending = []
        self.buf = np.concatenate([self.buf, y])

    def _set_offset(self) -> None:
        if self.offset is None and self.t0 is not None and self.seen_chunk:
            start = self.t0 if self.first_time is None else self.first_time
            self.offset = int(round((start - self.t0) * self.rate))  # decode._place_audio's rule
            self.base = self.offset  # the first resampled sample's place on the timeline
            self._place(np.zeros(0, np.float32))

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._set_offset()

    def push(self, time: float | None, samples: np.ndarray) -> None:
        if not self.seen_chunk:
            self.seen_chunk, self.first_time = True, time
            self._set_offset()
        self._place(self.resampler.push(samples))

    def finish(self) -> None:
        """The audio stream ended: the resampler's tail, then every window is ready."""
        if self.seen_chunk:
            self._place(self.resampler.finish())
        self.done = True

    @property
    def end(self) -> int | None:
        """Exclusive end (16 kHz sample index on the frame timeline) of the sound placed so far."""
        return None if self.offset is None else self.base + len(self.buf)

    @staticmethod
    def end_sample(t: float, rate: int = SAMPLE_RATE) -> int:
        """The window of a frame at ``t`` ends (exclusive) here: frame_windows' rounding, in float64."""
        return int(torch.round(torch.as_tensor([t], dtype=torch.float64) * rate).to(torch.long)[0])

    def ready(self, t: float) -> bool:
        if self.done:
            return True
        end = self.end
        return end is not None and end >= self.end_sample(t, self.rate)

    def window(self, t: float) -> np.ndarray:
        """float32 S: samples [e - S, e) of the placed sound, e = round(t * rate); zeros outside it (and before 0)."""
        e = self.end_sample(t, self.rate)
        out = np.zeros(self.S, np.float32)
        if self.offset is None:
            return out
        # sound before frame time 0 is not part of the timeline (decode drops it), nor is there any before base
        lo, hi = max(e - self.S, self.base, 0), min(e, self.base + len(self.buf))
        if hi > lo:
            out[lo - (e - self.S):hi - (e - self.S)] = self.buf[lo - self.base:hi - self.base]
        return out

    def forget_before(self, t: float) -> None:
        """Samples no window of a frame at or after ``t`` reads are released."""
        if self.offset is None:
            return
        keep = self.end_sample(t, self.rate) - self.S
        cut = min(max(0, keep - self.base), len(self.buf))
        if cut:
            self.buf, self.base = self.buf[cut:], self.base + cut


@dataclass
class QueueStats:
    queued: int = 0  # frames put
    dropped: int = 0  # frames thrown away unprocessed (drop policy)
    max_waiting: int = 0  # the longest the queue got
    blocked_s: float = 0.0  # seconds the reader waited for room (queue policy)


class FrameQueue:
    """Frames from the reader to the model, in order, under one of two policies.

    ``queue``: every frame is processed; when ``capacity`` frames wait, ``put`` blocks the reader until the
    model takes one (the source is then read late: a file or a pipe simply waits, a network source buffers in
    the kernel and may lose packets once that fills up). ``drop``: ``put`` never blocks; when ``capacity``
    frames wait, the oldest waiting frame is dropped (counted in ``stats.dropped``, its index in
    ``dropped_indices``), so the model always works on the newest frames and latency stays bounded.

    ``close()`` marks the end: ``get`` returns what still waits, then None.
    """

    POLICIES = ("queue", "drop")

    def __init__(self, policy: str = "queue", capacity: int = 64):
        if policy not in self.POLICIES:
            raise ValueError(f"policy must be one of {self.POLICIES}, got {policy!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.policy, self.capacity = policy, int(capacity)
        self.items: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.closed = False
        self.stats = QueueStats()
        self.dropped_indices: list[int] = []

    def put(self, index: int, item) -> None:
        import time

        with self.cond:
            if self.policy == "queue":
                t = time.monotonic()
                while len(self.items) >= self.capacity and not self.closed:
                    self.cond.wait()
                self.stats.blocked_s += time.monotonic() - t
            elif len(self.items) >= self.capacity:
                old, _ = self.items.popleft()
                self.stats.dropped += 1
                self.dropped_indices.append(old)
            self.items.append((index, item))
            self.stats.queued += 1
            self.stats.max_waiting = max(self.stats.max_waiting, len(self.items))
            self.cond.notify_all()

    def get(self, timeout: float | None = None):
        """The oldest waiting ``(index, item)``; None once closed and empty. Raises TimeoutError when nothing
        came within ``timeout`` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.items or self.closed, timeout):
                raise TimeoutError
            if not self.items:
                return None
            got = self.items.popleft()
            self.cond.notify_all()
            return got

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
