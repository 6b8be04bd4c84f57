"""End-to-end latency of ``avis stream`` on a loopback stream, beside the paper's per-frame formula.

A local sender serves an MPEG-TS file (640 x 360, 30 fps, H.264 + 44.1 kHz AAC, written here) on 127.0.0.1 at
the file's own rate, once, then closes the connection: the run is bounded and stops by itself. ``avis stream``
reads it as a live source (``tcp://127.0.0.1:PORT``) with a model of random weights (latency does not depend
on them) and reports, per frame, the time from the arrival of the frame's picture to its JSON line:
p50 / p95 / p99 and the processed FPS, and the dropped frames.

Beside it, the paper's formula: latency = backbone + fusion + decoders per frame (RCF Section IV), each part
timed inside the same steps (forward hooks on ``backbone``, ``fusion``, ``mask_decoder``,
``instance_decoder`` + ``heads``, and the audio branch's per-frame work, ``RCF._online_audio``, counted with
the fusion it feeds; CUDA synchronised around each on a GPU), medians. The tracker (``track_frame``: masks
upsampled and thresholded, identities) is timed too but is not part of the formula. What the formula leaves
out is the rest of a live frame's life: waiting for the next source frame (the frame shown at t is certain
only when the next one arrives), decoding, the audio window, resizing, tracking, RLE and the JSON line, and
the queue when the model is behind.

Models: ``tiny`` (RCF tiny, delta 1, the tiny audio encoder, test size 96 / 160: the demo's) and ``r50``
(RCF-R50, delta 1, VGGish + bi-LSTM audio, test size 360 / 640: the paper's), each with ``--queue`` and
``--drop``.

    python scripts/bench_stream.py [--seconds 10] [--fps 6] [--models tiny r50] [--policies queue drop]
                                   [--max-queue N] [--device cpu|cuda] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: avis, and tests/ for the media

from omegaconf import OmegaConf  # noqa: E402

from avis.engine import checkpoint as ckpt_io  # noqa: E402
from avis.engine.session import load_trained  # noqa: E402
from avis.engine.stream import stream  # noqa: E402
from tests.streammedia import write_stream  # noqa: E402

NUM_CLASSES = 40
CATEGORIES = [{"id": i + 1, "name": f"c{i + 1}"} for i in range(NUM_CLASSES)]
MODELS = {
    "tiny": ({"_target_": "avis.models.rcf.rcf_tiny", "num_classes": NUM_CLASSES, "delta": 1,
              "audio_encoder": {"_target_": "avis.models.audio.audio_tokens_tiny", "out_channels": 32}},
             {"test_size": 96, "test_max_size": 160, "eta": 0.96}),
    "r50": ({"_target_": "avis.models.rcf.rcf_r50", "num_classes": NUM_CLASSES, "delta": 1,
             "audio_encoder": {"_target_": "avis.models.audio.audio_tokens_vggish", "out_channels": 256}},
            {"test_size": 360, "test_max_size": 640, "eta": 0.96}),
}
PARTS = ("backbone", "audio", "fusion", "mask_decoder", "instance_decoder", "heads", "tracking")
MODULES = ("backbone", "fusion", "mask_decoder", "instance_decoder", "heads")  # timed by forward hooks
METHODS = {"audio": "_online_audio", "tracking": "track_frame"}  # timed by wrapping the model's methods
FORMULA = ("backbone", "audio", "fusion", "mask_decoder", "instance_decoder", "heads")  # the paper's sum


def make_checkpoint(name: str, folder: Path, fps: float) -> Path:
    from hydra.utils import instantiate

    model_cfg, data_cfg = MODELS[name]
    cfg = OmegaConf.create({"model": model_cfg, "data": {"num_classes": NUM_CLASSES, **data_cfg}})
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    path = folder / f"{name}.pt"
    ckpt_io.save(path, {"step": 0, "model": model.state_dict(), "config": OmegaConf.to_yaml(cfg),
                        "categories": CATEGORIES, "data_fps": fps})
    return path


class Sender(threading.Thread):
    """Serves ``data`` (a stream ``seconds`` long) once on 127.0.0.1, paced at its own rate, then closes."""

    def __init__(self, data: bytes, seconds: float):
        super().__init__(daemon=True)
        self.data, self.seconds = data, seconds
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(120)  # nobody came: give up rather than wait forever
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            chunk = 16 * 1024
            start = time.monotonic()
            for i in range(0, len(self.data), chunk):
                due = start + self.seconds * i / len(self.data)
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    conn.sendall(self.data[i:i + chunk])
                except OSError:  # the reader went away
                    return
        self.sock.close()


class PartTimer:
    """Forward hooks timing the parts of RCF's step (milliseconds per frame, summed over calls in a step)."""

    def __init__(self, model, device):
        self.device, self.ms, self.frame = device, {p: [] for p in PARTS}, {}
        for p in MODULES:
            m = getattr(model, p)
            m.register_forward_pre_hook(lambda mod, inp, p=p: self._start(p))
            m.register_forward_hook(lambda mod, inp, out, p=p: self._stop(p))
        for p, name in METHODS.items():
            setattr(model, name, self._wrap(p, getattr(model, name)))

    def _wrap(self, p, fn):
        def timed(*a, **k):
            self._start(p)
            try:
                return fn(*a, **k)
            finally:
                self._stop(p)
        return timed

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self, p):
        self._sync()
        self.frame[p + "_t0"] = time.perf_counter()

    def _stop(self, p):
        self._sync()
        self.frame[p] = self.frame.get(p, 0.0) + (time.perf_counter() - self.frame.pop(p + "_t0")) * 1000

    def end_frame(self):
        for p in PARTS:
            self.ms[p].append(self.frame.get(p, 0.0))
        self.frame = {}


def run_one(name: str, ckpt: Path, media: bytes, seconds: float, policy: str, device: str, warmup: int,
            max_queue: int | None = None) -> dict:
    trained = load_trained(ckpt, device)
    timer = PartTimer(trained.model, trained.device)
    sender = Sender(media, seconds)
    sender.start()
    run = stream(f"tcp://127.0.0.1:{sender.port}", trained, fps=trained.fps, policy=policy, timeout=60,
                 max_queue=max_queue, on_step=lambda state: timer.end_frame())
    sender.join(timeout=5)
    lat = run.latency
    frames = lat["per_frame"][warmup:]  # the first steps pay one-off costs (allocations, oneDNN kernels)
    parts = {p: statistics.median(timer.ms[p][warmup:]) if len(timer.ms[p]) > warmup else None for p in PARTS}
    from avis.engine.stream import percentiles

    return {"model": name, "policy": f"{policy} (max-queue {lat['max_queue']})", "frames": lat["frames"], "processed": lat["processed"],
            "dropped": lat["dropped"], "fps": lat["fps"], "latency_ms": percentiles(f["latency_ms"] for f in frames),
            "step_ms": percentiles(f["step_ms"] for f in frames), "parts_ms": parts,
            "formula_ms": sum(parts[p] for p in FORMULA if parts[p] is not None), "ended": lat["ended"]}


def _machine() -> str:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()} {model}, {os.cpu_count()} cores, load average {load:.1f}"


def _versions() -> str:
    out = [f"torch {torch.__version__}", f"python {platform.python_version()}"]
    for mod in ("torchaudio", "av"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return ", ".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of the loopback stream")
    p.add_argument("--fps", type=float, default=6.0, help="processing rate (the checkpoints' 'training' rate)")
    p.add_argument("--models", nargs="+", default=["tiny", "r50"], choices=sorted(MODELS))
    p.add_argument("--policies", nargs="+", default=["queue", "drop"], choices=["queue", "drop"])
    p.add_argument("--max-queue", type=int, default=None, help="avis stream --max-queue (default: its own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2, help="first processed frames left out of the statistics")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging_quiet()
    rows = []
    with tempfile.TemporaryDirectory(prefix="avis-bench-stream-") as tmp:
        tmp = Path(tmp)
        src = write_stream(tmp / "live.ts", seconds=args.seconds, fps=30, size=(640, 360), audio_rate=44100)
        data = src.read_bytes()
        for name in args.models:
            ckpt = make_checkpoint(name, tmp, args.fps)
            for policy in args.policies:
                row = run_one(name, ckpt, data, args.seconds, policy, args.device, args.warmup, args.max_queue)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    print(f"\nmachine: {_machine()}; {_versions()}; device {args.device}, torch threads "
          f"{torch.get_num_threads()}; stream {args.seconds:g} s of 640x360 30 fps H.264 + 44.1 kHz AAC over "
          f"127.0.0.1 at its own rate, processed at {args.fps:g} fps\n")
    print("| model | policy | processed / frames | dropped | FPS | latency p50 / p95 / p99 ms | step p50 ms | "
          "backbone | audio + fusion | mask dec. | inst. dec. + heads | formula (sum) ms | tracking |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        lat, pm = r["latency_ms"], r["parts_ms"]

        def f(v):
            return "n/a" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"
        inst = None if pm["instance_decoder"] is None else pm["instance_decoder"] + (pm["heads"] or 0)
        fusion = None if pm["fusion"] is None else pm["fusion"] + (pm["audio"] or 0)
        print(f"| {r['model']} | {r['policy']} | {r['processed']} / {r['frames']} | {r['dropped']} | "
              f"{'n/a' if r['fps'] is None else format(r['fps'], '.2f')} | "
              f"{f(lat['p50'])} / {f(lat['p95'])} / {f(lat['p99'])} | {f(r['step_ms']['p50'])} | "
              f"{f(pm['backbone'])} | {f(fusion)} | {f(pm['mask_decoder'])} | {f(inst)} | "
              f"{f(r['formula_ms'])} | {f(pm['tracking'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
