"""Training input throughput against the tiny model's training step, in one run.

Builds a small synthetic dataset (``avis synth`` + ``avis build``, one video per shard unless ``--shard-size``
says otherwise) unless ``--shards`` is given, serves it from a web server on 127.0.0.1 (``python -m
http.server`` in its own process), then measures side by side:

- the training input pipeline (``avis.data.ClipStream`` over ``ShardSource``: shards read through webdataset's
  stack, each sample's JSON and members checked, lazy decoding of the clip's frames, audio windows, masks,
  multi-scale resize, collate), clips per second with 0..N DataLoader workers (0 = in the main process), the
  shards read from the local disk and from the server by URL (curl); epoch restarts (worker start-up) are
  included;
- the tiny RCF training step (``rcf_av_tiny`` settings: rcf_tiny, delta 1, tiny audio branch, AdamW, gradient
  clipping) on batches from the same pipeline: clips per second it consumes;

and prints the ratio loader / training (the goal: at least 3). Every measurement is repeated in ``--rounds``
interleaved rounds and the medians are shown (on a shared machine the load drifts within a run).

    python scripts/bench_loader.py [--workers 2] [--batches 30] [--steps 10] [--rounds 3] [--threads N]
                                   [--videos 12] [--shard-size BYTES] [--shards DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from avis.data import ClipStream, ShardSource

# configs/data/synthetic.yaml and configs/experiment/rcf_av_tiny.yaml
BATCH, CLIPS_PER_VIDEO, SHUFFLE, SCALES, MAX_SIZE, DIVISIBILITY = 4, 2, 16, [64, 80, 96], 160, 32
DELTA = 1


def make_shards(root: Path, videos: int, shard_size: int = 1) -> Path:
    from avis.cli import main as avis

    raw, shards = root / "raw", root / "shards"
    if avis(["synth", "--out", str(raw), "--videos", str(videos), "--val-fraction", "0"]) != 0:
        raise SystemExit("avis synth failed")
    # Tiny shards by default: one video each, so that every DataLoader worker gets its own shards.
    if avis(["build", "--videos", str(raw), "--annotations", str(raw / "train.json"), "--out", str(shards),
             "--shard-size", str(shard_size)]) != 0:
        raise SystemExit("avis build failed")
    return shards


@contextmanager
def web_server(folder: Path):
    """``python -m http.server`` on 127.0.0.1 serving ``folder`` (its own process: no GIL shared with the
    loader); yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def stream(shards, workers: int, seed: int = 0) -> ClipStream:
    return ClipStream(ShardSource(str(shards)), 1 + DELTA, BATCH, seed=seed, num_workers=workers,
                      clips_per_video=CLIPS_PER_VIDEO, shuffle_buffer=SHUFFLE, scales=SCALES, max_size=MAX_SIZE,
                      size_divisibility=DIVISIBILITY)


def time_batches(batches, n: int) -> tuple[float, float]:
    """Clips per second over n batches after the first (start-up of the first epoch excluded): per wall second
    and per CPU second of this process (meaningful with 0 workers: it leaves out other jobs' time)."""
    it = iter(batches)
    next(it)
    clips = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        b = next(it)
        b = b[0] if isinstance(b, tuple) else b
        clips += b["frames"].shape[0]
    return clips / (time.perf_counter() - t0), clips / (time.process_time() - c0)


def clip_loader(shards, workers: int, n: int) -> tuple[float, float]:
    return time_batches(stream(shards, workers).batches(), n)


def training(shards: Path, steps: int, warmup: int = 2) -> tuple[float, float]:
    """Clips per second of the tiny model's training step (forward, backward, clip, AdamW) on real batches,
    per wall second and per process CPU second (median step)."""
    from avis.models.audio import audio_tokens_tiny
    from avis.models.rcf import rcf_tiny

    src = ShardSource(str(shards))
    torch.manual_seed(0)
    model = rcf_tiny(len(src.categories), DELTA, audio_encoder=audio_tokens_tiny(out_channels=32, lstm_hidden=32))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=1e-4)
    it = stream(shards, 0, seed=1).batches()
    batches = [next(it)[0] for _ in range(4)]
    times, cpu = [], []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        t0, c0 = time.perf_counter(), time.process_time()
        loss = sum(model(batch).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return BATCH / statistics.median(times), BATCH / statistics.median(cpu)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="largest number of DataLoader workers (0..N timed)")
    p.add_argument("--batches", type=int, default=30, help="timed batches per loader setting")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (median reported)")
    p.add_argument("--videos", type=int, default=12, help="synthetic videos to build")
    p.add_argument("--shard-size", type=int, default=1,
                   help="avis build --shard-size (bytes; default 1: one video a shard, ~200 KB)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--shards", default=None, help="existing shard folder (default: build a synthetic one)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every measurement (medians shown)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        shards = Path(args.shards) if args.shards else make_shards(Path(tmp), args.videos, args.shard_size)
        n_shards = len(list(shards.glob("shard-*.tar")))
        import webdataset

        print(f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, torch "
              f"{torch.__version__}, webdataset {webdataset.__version__}, threads {torch.get_num_threads()}; "
              f"{n_shards} shards; batch {BATCH}, clip 1+{DELTA} frames, scales {SCALES}, max {MAX_SIZE}; load "
              f"average {os.getloadavg()[0]:.1f} at start")
        rates: dict = {}  # (source, workers) -> [(clips per wall s, per CPU s)] over the rounds
        trains = []
        with web_server(shards.parent) as base:
            url = f"{base}/{shards.name}/"  # the manifest there lists the shards
            for _ in range(args.rounds):  # rounds interleave everything: load drift hits all rows alike
                trains.append(training(shards, args.steps))
                for w in range(args.workers + 1):  # disk and server side by side, for each number of workers
                    rates.setdefault(("local disk", w), []).append(clip_loader(shards, w, args.batches))
                    rates.setdefault(("http://127.0.0.1 (curl)", w), []).append(clip_loader(url, w, args.batches))
        print(f"load average {os.getloadavg()[0]:.1f} at end; medians of {args.rounds} rounds")
        consume = statistics.median(t[0] for t in trains)
        consume_cpu = statistics.median(t[1] for t in trains)
        print(f"tiny RCF training consumes {consume:.1f} clips per wall second ({', '.join(f'{t[0]:.1f}' for t in trains)}), "
              f"{consume_cpu:.1f} per CPU second ({', '.join(f'{t[1]:.1f}' for t in trains)})")
        print(f"{'shards from':28s} {'workers':>7s} {'clips/s':>8s} {'x training':>10s} {'clips/CPU s':>12s} "
              f"{'x training (CPU)':>16s}")
        for (name, w), runs in rates.items():
            rate, rate_cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            cpu_cols = f"{rate_cpu:12.1f} {rate_cpu / consume_cpu:16.2f}" if w == 0 else f"{'-':>12s} {'-':>16s}"
            print(f"{name:28s} {w:7d} {rate:8.1f} {rate / consume:10.2f} {cpu_cols}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
