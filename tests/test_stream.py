"""``avis stream``: online inference on a live source (local pipes only), against ``avis infer`` and the offline
decoder it must agree with."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from avis.engine import checkpoint as ckpt_io
from avis.engine.livesync import AudioTimeline, FrameQueue, StreamResampler
from data_tools import decode as dec
from tests.conftest import REPO
from tests.streammedia import write_stream

AUDIO_CFG = {"_target_": "avis.models.audio.audio_tokens_tiny", "out_channels": 16, "lstm_hidden": 32}
DATA_CFG = {"num_classes": 2, "test_size": 24, "test_max_size": 64, "eta": 0.96}
CATEGORIES = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
FPS = 5.0


def _checkpoint(path: Path, model_cfg: dict, weights=None) -> Path:
    """A checkpoint as avis train writes it (config, categories, training data rate), without training."""
    from hydra.utils import instantiate

    cfg = {"audio": {"eta": 0.96, "enabled": True, "encoder": AUDIO_CFG}, "model": model_cfg, "data": DATA_CFG}
    torch.manual_seed(0)
    model = instantiate(OmegaConf.create(cfg).model)
    state = model.state_dict()
    if weights is not None:
        state.update(weights(state))
    ckpt_io.save(path, {"step": 0, "model": state, "config": OmegaConf.to_yaml(OmegaConf.create(cfg)),
                        "categories": CATEGORIES, "data_fps": FPS})
    return path


def _toy_weights(state: dict) -> dict:
    """The toy AV model made to find the moving red square, with the sound's loudness moving its border: the
    masks depend on every audio window (checked below), so equal results mean equal windows."""
    w = torch.zeros(16, 3, 3, 3)
    w[0, 0, 1, 1], w[0, 1, 1, 1], w[1, 1, 1, 1], w[1, 2, 1, 1] = 1, -1, 1, -1
    head = torch.zeros(3, 16, 1, 1)
    head[1, 0], head[2, 1] = 4, 4
    audio = torch.zeros(16, 4)
    audio[0] = 0.2
    return {"backbone.0.weight": w, "backbone.0.bias": torch.zeros(16), "backbone.1.weight": torch.ones(16),
            "backbone.1.bias": torch.zeros(16), "head.weight": head, "head.bias": torch.tensor([4.0, 0, 0]),
            "audio_fc.weight": audio, "audio_fc.bias": torch.zeros(16)}


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory) -> Path:
    cfg = {"_target_": "tests.toy.ToyVIS", "num_classes": 2, "clip_length": 2, "uses_audio": True,
           "hidden_dim": 16, "dropout": 0.0}
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "toy.pt", cfg, _toy_weights)


@pytest.fixture(scope="module")
def rcf_ckpt(tmp_path_factory) -> Path:
    """RCF tiny with two reference frames and sound, random weights (a class threshold of 0 so that slots fire)."""
    cfg = {"_target_": "avis.models.rcf.rcf_tiny", "num_classes": 2, "delta": 2, "hidden_dim": 16,
           "num_queries": 4, "class_threshold": 0.0, "audio_encoder": AUDIO_CFG}
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "rcf.pt", cfg)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("streams")
    return {"ts44": write_stream(root / "a.ts", seconds=3.0, audio_rate=44100),
            "mkv16": write_stream(root / "b.mkv", seconds=2.0, fmt="matroska", seed=1),
            "ts16": write_stream(root / "c.ts", seconds=2.4, seed=2),
            "long": write_stream(root / "long.ts", seconds=8.0, seed=3)}


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def _stream_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "avis", "stream", *map(str, args)]


# ----------------------------------------------------------------------------------- audio on the timeline
@pytest.mark.parametrize("orig", [16000, 44100, 48000, 8000])
def test_resampler_fed_in_pieces_gives_the_offline_resampling(orig):
    rng = np.random.default_rng(orig)
    x = rng.standard_normal(orig + 777).astype(np.float32)
    whole = dec._resample(x, orig, 16000)
    r, parts, i = StreamResampler(orig), [], 0
    while i < len(x):
        m = int(rng.integers(1, 2500))
        parts.append(r.push(x[i:i + m]))
        i += m
    got = np.concatenate(parts + [r.finish()])
    assert got.shape == whole.shape
    if orig == 16000:
        assert np.array_equal(got, whole)
    else:  # the same filter, summed in another order: float rounding only
        assert np.abs(got - whole).max() < 2e-6


@pytest.mark.parametrize("start,t0", [(0.3, 0.0), (0.0, 0.25), (10.0, 10.1)])
def test_frame_windows_equal_the_offline_ones(start, t0):
    """Sound placed on the frame timeline as data_tools.decode places it (late start padded, early start cut)."""
    from avis.models.audio.windows import frame_windows

    x = np.random.default_rng(0).standard_normal(44100 * 2).astype(np.float32)
    chunks = [(start, x[:1000]), (None, x[1000:])]
    placed = dec._place_audio(chunks, 44100, t0, int(round(2.5 * 16000)), 16000)
    tl = AudioTimeline(44100, 0.96)
    tl.push(start, x[:1000])  # sound before the first frame: kept until time 0 is known
    tl.start(t0)
    tl.push(None, x[1000:])
    tl.finish()
    times = np.arange(0, 2.4, 1 / 6)
    want = frame_windows(torch.from_numpy(placed), times).numpy()
    got = np.stack([tl.window(t) for t in times])
    assert np.abs(got - want).max() < 2e-6 and np.abs(want).sum() > 0


@pytest.mark.parametrize("orig", [16000, 44100])
def test_a_window_is_released_once_its_sound_is_there_and_uses_nothing_after(orig):
    """Causality: frame t becomes ready exactly when the sound up to t (plus the resampler's few ms of filter,
    0 at 16 kHz) has arrived, and what comes after cannot change its window."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(orig * 2).astype(np.float32)
    t = 1.0
    r = StreamResampler(orig)
    need = int(round(t * orig)) + r.lookahead  # source samples up to t and the filter's look-ahead
    a, b = AudioTimeline(orig, 0.96), AudioTimeline(orig, 0.96)
    for tl in (a, b):
        tl.start(0.0)
    step = 37
    pushed = 0
    while not a.ready(t):
        chunk = x[pushed:pushed + step]
        a.push(0.0 if pushed == 0 else None, chunk)
        b.push(0.0 if pushed == 0 else None, chunk)
        pushed += len(chunk)
    assert pushed <= need + step  # ready as soon as the sound allows (not at the end of the stream)
    if orig == 16000:
        assert pushed - step < int(round(t * 16000)) <= pushed  # exactly when sample round(16000 t) - 1 is in
    window = a.window(t).copy()
    a.push(None, x[pushed:])  # the rest of the real sound
    b.push(None, rng.standard_normal(len(x) - pushed).astype(np.float32) * 100)  # something else entirely
    assert np.array_equal(a.window(t), window) and np.array_equal(b.window(t), window)
    assert not np.array_equal(a.window(t + 0.2), b.window(t + 0.2))  # later windows do see it


def test_frame_queue_policies():
    q = FrameQueue("drop", capacity=3)
    for k in range(10):
        q.put(k, f"frame {k}")
    q.close()
    got = []
    while (item := q.get(timeout=1)) is not None:
        got.append(item[0])
    assert got == [7, 8, 9] and q.stats.dropped == 7 and q.dropped_indices == list(range(7))

    q = FrameQueue("queue", capacity=2)
    done = threading.Event()

    def produce():
        for k in range(6):
            q.put(k, k)
        q.close()
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set() and len(q.items) == 2  # the reader waits for room, nothing is thrown away
    got = []
    while (item := q.get(timeout=5)) is not None:
        got.append(item[0])
    assert got == list(range(6)) and q.stats.dropped == 0
    with pytest.raises(TimeoutError):
        FrameQueue("queue").get(timeout=0.05)


# -------------------------------------------------------------------------------------- end to end, pipes
def _interleaved(path: Path) -> bool:
    """Whether the file's audio and video packets alternate (neither stream comes as one block)."""
    with av.open(str(path)) as c:
        kinds = [p.stream.type for p in c.demux() if p.size]
    switches = sum(a != b for a, b in zip(kinds, kinds[1:]))
    return switches > len(kinds) // 4


@pytest.mark.parametrize("name,via", [("ts44", "stdin"), ("mkv16", "fifo")])
def test_stream_through_a_pipe_equals_infer_on_the_same_file(name, via, media, toy_ckpt, tmp_path, capsys):
    from avis import cli

    src = media[name]
    assert _interleaved(src)
    out, ref = tmp_path / "stream", tmp_path / "infer"
    args = ["--checkpoint", str(toy_ckpt), "--out", str(out), "--device", "cpu"]
    if via == "stdin":  # standard input of a separate process: `cat file.ts | avis stream - ...`
        with open(src, "rb") as f:
            p = subprocess.run(_stream_cmd("-", *args), stdin=f, capture_output=True, text=True, env=_env(),
                               timeout=300)
        assert p.returncode == 0, p.stderr
        stdout, stderr = p.stdout, p.stderr
    else:  # a named pipe fed by a sender thread
        sender = _fifo_sender(tmp_path / "live.mkv", src.read_bytes())
        assert cli.main(["stream", str(tmp_path / "live.mkv"), *args]) == 0
        sender.join(timeout=10)
        stdout, stderr = capsys.readouterr()
    assert cli.main(["infer", str(src), "--checkpoint", str(toy_ckpt), "--out", str(ref), "--no-overlay",
                     "--device", "cpu"]) == 0
    results = json.loads((ref / "results.json").read_text())
    assert results and any(s for tr in results for s in tr["segmentations"])  # the model found something
    assert (out / "results.json").read_bytes() == (ref / "results.json").read_bytes()
    # the live lines: one per frame, in order, and what they said is what the final results say
    lines = [json.loads(x) for x in stdout.splitlines()]
    n = len(json.loads((ref / "videos.json").read_text())["videos"][0]["frame_times"])
    assert [x["frame"] for x in lines] == list(range(n))
    assert [x["time"] for x in lines] == pytest.approx([k / FPS for k in range(n)])
    assert (out / "frames.jsonl").read_text().splitlines() == stdout.splitlines()
    for tr in results:
        cat = tr["category_id"]
        for k, seg in enumerate(tr["segmentations"]):
            live = [i["segmentation"] for i in lines[k]["instances"] if i["category_id"] == cat]
            assert live == ([seg] if seg is not None else [])
    lat = json.loads((out / "latency.json").read_text())
    assert lat["processed"] == lat["frames"] == n and lat["dropped"] == 0 and lat["audio_late"] == 0
    assert len(lat["per_frame"]) == n and lat["latency_ms"]["p50"] > 0 and lat["fps"] > 0
    assert "latency p50" in stderr.strip().splitlines()[-1]


def _read_line(proc, timeout: float) -> str | None:
    """One line of the process's stdout, or None after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            c = os.read(proc.stdout.fileno(), 1)
            if not c:
                return None
            buf += c
            if c == b"\n":
                return buf.decode()
    return None


def test_lines_arrive_while_the_stream_is_still_coming(media, toy_ckpt, tmp_path):
    data = media["long"].read_bytes()
    cut = len(data) // 2
    proc = subprocess.Popen(_stream_cmd("-", "--checkpoint", toy_ckpt, "--out", tmp_path / "o", "--device", "cpu"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        proc.stdin.write(data[:cut])
        proc.stdin.flush()
        first = _read_line(proc, timeout=120)  # the sender holds back the second half until a line came
        assert first is not None, "no JSON line while the stream was half sent"
        assert json.loads(first)["frame"] == 0
        assert proc.poll() is None  # still running: the stream has not ended
        rest, err = proc.communicate(input=data[cut:], timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    frames = [json.loads(x)["frame"] for x in [first, *rest.decode().splitlines()]]
    assert frames == list(range(int(8.0 * FPS)))


def _fifo_sender(fifo: Path, data: bytes, hold: threading.Event | None = None) -> threading.Thread:
    """A local sender writing ``data`` into the named pipe ``fifo``, then closing it (or, with ``hold``, keeping
    it open and silent until ``hold`` is set: a sender alive but stalled)."""
    os.mkfifo(fifo)

    def send():
        with open(fifo, "wb") as f:
            for i in range(0, len(data), 4096):
                f.write(data[i:i + 4096])
                f.flush()
            if hold is not None:
                hold.wait(120)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def test_stream_cut_mid_packet_leaves_valid_partial_output(media, toy_ckpt, tmp_path, capsys):
    """The sender dies mid-way (the pipe ends inside a packet): everything it delivered is processed and
    written, and the command ends with its one-line summary."""
    from avis import cli

    data = media["long"].read_bytes()
    out = tmp_path / "o"
    sender = _fifo_sender(tmp_path / "live.ts", data[:len(data) // 3 + 101])  # not on a 188-byte TS boundary
    assert cli.main(["stream", str(tmp_path / "live.ts"), "--checkpoint", str(toy_ckpt), "--out", str(out),
                     "--device", "cpu"]) == 0
    sender.join(timeout=10)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("avis stream: ") and "processed" in err[-1]
    lat = json.loads((out / "latency.json").read_text())
    n = lat["frames"]
    assert 0 < n < 8.0 * FPS and lat["processed"] == n
    assert len((out / "frames.jsonl").read_text().splitlines()) == n
    video = json.loads((out / "videos.json").read_text())["videos"][0]
    assert video["length"] == n
    for tr in json.loads((out / "results.json").read_text()):
        assert len(tr["segmentations"]) == n


def test_stalled_stream_ends_with_one_line_and_partial_output(media, toy_ckpt, tmp_path, capsys):
    """The sender stays connected but sends nothing more: after --timeout the run ends, writes what it has,
    and says so in one line (exit 1)."""
    from avis import cli

    data = media["long"].read_bytes()
    out = tmp_path / "o"
    hold = threading.Event()
    sender = _fifo_sender(tmp_path / "live.ts", data[:len(data) // 2], hold)
    try:
        assert cli.main(["stream", str(tmp_path / "live.ts"), "--checkpoint", str(toy_ckpt), "--out", str(out),
                         "--device", "cpu", "--timeout", "3"]) == 1
    finally:
        hold.set()  # the sender closes the pipe: the reader thread left behind ends too
        sender.join(timeout=10)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"avis stream: error: {tmp_path / 'live.ts'}: no frame for 3 s: the source stalled "
                           "after") and "partial" in last
    lat = json.loads((out / "latency.json").read_text())
    assert lat["broken"] and 0 < lat["processed"] == lat["frames"]
    assert len((out / "frames.jsonl").read_text().splitlines()) == lat["processed"]
    assert json.loads((out / "videos.json").read_text())["videos"][0]["length"] == lat["frames"]


# ------------------------------------------------------------------------------------- falling behind
def _offline_probs(trained, src: Path, keep: list[int]) -> list[torch.Tensor]:
    """RCF's per-frame class probabilities when it is given only the frames ``keep`` of ``src`` (decoded as
    avis infer decodes, each with its own audio window)."""
    from avis.data.video import Video
    from avis.engine.predict import model_inputs

    d = dec.decode(src, fps=FPS, max_size=DATA_CFG["test_max_size"])
    video = Video(1, d.frames, d.frame_times, d.audio[None], 16000, True)
    frames, audio, _ = model_inputs(video, DATA_CFG["test_size"], DATA_CFG["test_max_size"])
    state, out = trained.model.init_state(), []
    for k in keep:
        trained.model.step(state, frames[k], audio[k])
        out.append(state.last_probs.clone())
    return out


def test_drop_policy_drops_the_oldest_and_keeps_the_reference_cache_consistent(media, rcf_ckpt):
    """The model is held until the whole source is read, so that it is far behind: with --drop and a queue of 3
    only the 3 newest frames are processed, the others counted as dropped. RCF (two reference frames) then
    gives exactly what it gives when only those frames exist: the cache holds processed frames only."""
    from avis.engine.session import load_trained
    from avis.engine.stream import stream

    trained = load_trained(rcf_ckpt, "cpu")
    src = media["ts16"]
    probs, lines = [], []
    run = stream(str(src), trained, fps=FPS, policy="drop", max_queue=3, hold_until_read=True,
                 emit=lines.append, on_step=lambda st: probs.append(st.last_probs.clone()))
    n = run.latency["frames"]
    assert n == len(dec.decode(src, fps=FPS, audio=False).frame_times) > 6
    assert run.latency["processed"] == 3 and run.latency["dropped"] == n - 3
    assert run.latency["dropped_frames"] == list(range(n - 3))
    kept = [json.loads(x)["frame"] for x in lines]
    assert kept == [n - 3, n - 2, n - 1] and [json.loads(x)["dropped"] for x in lines] == [n - 3] * 3
    sub = _offline_probs(trained, src, kept)
    assert all(torch.equal(a, b) for a, b in zip(probs, sub))
    full = _offline_probs(trained, src, list(range(n)))[-3:]  # what a cache of dropped frames would give
    assert not all(torch.equal(a, b) for a, b in zip(probs, full))
    # results: the timeline's length, nothing in the dropped frames, track masks in the processed ones
    assert run.results and all(len(r["segmentations"]) == n for r in run.results)
    assert all(s is None for r in run.results for s in r["segmentations"][:n - 3])
    assert any(s is not None for r in run.results for s in r["segmentations"][n - 3:])

    run = stream(str(src), trained, fps=FPS, policy="queue", hold_until_read=True)  # n frames fit in its queue
    assert run.latency["processed"] == n and run.latency["dropped"] == 0


def test_bad_sources_are_refused(toy_ckpt, tmp_path, capsys):
    from avis import cli

    for source, message in [(tmp_path / "missing.ts", "no such file, pipe or device"),
                            ("gopher://x", "unsupported URL scheme"), (tmp_path, "a folder, not a stream")]:
        assert cli.main(["stream", str(source), "--checkpoint", str(toy_ckpt), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("avis stream: error: ") and message in err[0]


def test_live_overlay_carries_the_source_sound_and_realtime_paces_the_file(media, toy_ckpt, tmp_path):
    """--overlay live.ts: one drawn frame per processed frame, and the source's audio packets copied in as
    they are (same payloads); --realtime reads a file no faster than it plays."""
    from avis.engine.session import load_trained
    from avis.engine.stream import LiveOverlay, stream

    trained = load_trained(toy_ckpt, "cpu")
    src = media["mkv16"]
    overlay = LiveOverlay(str(tmp_path / "live.ts"), None, FPS, 0.0, trained.categories)
    run = stream(str(src), trained, fps=FPS, realtime=True, overlay=overlay)
    with av.open(str(src)) as c:
        duration = float(c.duration / av.time_base)
        src_audio = [bytes(p) for p in c.demux(audio=0) if p.size]
    assert run.latency["wall_s"] >= 0.8 * duration  # paced: not read in a burst
    with av.open(str(tmp_path / "live.ts")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        frames = list(c.decode(video=0))
    with av.open(str(tmp_path / "live.ts")) as c:
        out_audio = [bytes(p) for p in c.demux(audio=0) if p.size]
    assert len(frames) == run.latency["processed"] == run.latency["frames"]
    assert (frames[0].width, frames[0].height) == (64, 48)
    assert any(r["instances"] for r in run.records)  # there were masks to draw
    # copied, not re-encoded: MPEG-TS frames each AAC packet with a 7-byte ADTS header; the payloads are the
    # source's, from its first packet at or after the first frame (the priming packet before it is not on the
    # timeline) to its last
    payloads = [p[7:] for p in out_audio]
    first = src_audio.index(payloads[0])
    assert first <= 1 and payloads == src_audio[first:]


def test_network_source_on_loopback(media, toy_ckpt, tmp_path):
    """A URL source: MPEG-TS served once on 127.0.0.1 by a local sender; the same results as the file."""
    import socket

    from avis.engine.session import load_trained
    from avis.engine.stream import stream

    src = media["ts16"]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(60)

    def send():
        conn, _ = server.accept()
        with conn:
            conn.sendall(src.read_bytes())
        server.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    trained = load_trained(toy_ckpt, "cpu")
    live = stream(f"tcp://127.0.0.1:{server.getsockname()[1]}", trained, fps=FPS, timeout=30)
    sender.join(timeout=10)
    again = stream(str(src), trained, fps=FPS)
    assert not live.broken and live.latency["frames"] == again.latency["frames"] > 0
    assert live.results == again.results and [r["instances"] for r in live.records] == \
        [r["instances"] for r in again.records]


def test_fragmented_mp4_overlay(media, toy_ckpt, tmp_path):
    from avis.engine.session import load_trained
    from avis.engine.stream import LiveOverlay, stream

    trained = load_trained(toy_ckpt, "cpu")
    out = tmp_path / "live.mp4"
    run = stream(str(media["mkv16"]), trained, fps=FPS, overlay=LiveOverlay(str(out), None, FPS, 0.0,
                                                                            trained.categories))
    data = out.read_bytes()
    assert b"moov" in data[:64] and b"moof" in data  # the index first, then fragments: playable while written
    with av.open(str(out)) as c:
        assert c.format.name.startswith("mov") and [s.type for s in c.streams] == ["video", "audio"]
        assert sum(1 for _ in c.decode(video=0)) == run.latency["processed"]
    with av.open(str(out)) as c:
        assert sum(f.samples for f in c.decode(audio=0)) > 0.9 * 2.0 * 16000  # the sound, 2 s of it
