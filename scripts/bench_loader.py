"""Training input throughput against the tiny model's training step, in one run.

Builds a small synthetic dataset (``avis synth`` + ``avis build``, one video per shard) unless ``--shards`` is
given, then measures side by side:

- the training input pipeline (``avis.data.ClipStream`` over ``ShardSource``: lazy decoding of the clip's
  frames, audio windows, masks, multi-scale resize, collate), clips per second with 0..N DataLoader workers
  (0 = in the main process); epoch restarts (worker start-up) are included;
- the tiny RCF training step (``rcf_av_tiny`` settings: rcf_tiny, delta 1, tiny audio branch, AdamW, gradient
  clipping) on batches from the same pipeline: clips per second it consumes;

and prints the ratio loader / training (the goal: at least 3).

    python scripts/bench_loader.py [--workers 2] [--batches 30] [--steps 10] [--threads N] [--shards DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from avis.data import ClipStream, ShardSource

# configs/data/synthetic.yaml and configs/experiment/rcf_av_tiny.yaml
BATCH, CLIPS_PER_VIDEO, SHUFFLE, SCALES, MAX_SIZE, DIVISIBILITY = 4, 2, 16, [64, 80, 96], 160, 32
DELTA = 1


def make_shards(root: Path, videos: int) -> Path:
    from avis.cli import main as avis

    raw, shards = root / "raw", root / "shards"
    if avis(["synth", "--out", str(raw), "--videos", str(videos), "--val-fraction", "0"]) != 0:
        raise SystemExit("avis synth failed")
    # Tiny shards: one video each, so that every DataLoader worker gets its own shards.
    if avis(["build", "--videos", str(raw), "--annotations", str(raw / "train.json"), "--out", str(shards),
             "--shard-size", "1"]) != 0:
        raise SystemExit("avis build failed")
    return shards


def stream(shards: Path, workers: int, seed: int = 0) -> ClipStream:
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


def clip_loader(shards: Path, workers: int, n: int) -> tuple[float, float]:
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
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--shards", default=None, help="existing shard folder (default: build a synthetic one)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        shards = Path(args.shards) if args.shards else make_shards(Path(tmp), args.videos)
        n_shards = len(list(shards.glob("shard-*.tar")))
        print(f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, threads "
              f"{torch.get_num_threads()}; {n_shards} shards; batch {BATCH}, clip 1+{DELTA} frames, scales "
              f"{SCALES}, max {MAX_SIZE}; load average {os.getloadavg()[0]:.1f} at start")
        train = training(shards, args.steps)
        rows = []
        for w in range(args.workers + 1):
            rows.append(("ClipStream", w, clip_loader(shards, w, args.batches)))
        train2 = training(shards, args.steps)  # again: load drift between the two shows in the spread
        print(f"load average {os.getloadavg()[0]:.1f} at end")
        print(f"tiny RCF training consumes {train[0]:.1f} / {train2[0]:.1f} clips per wall second, "
              f"{train[1]:.1f} / {train2[1]:.1f} per CPU second (before / after the loaders)")
        consume, consume_cpu = max(train[0], train2[0]), max(train[1], train2[1])
        print(f"{'pipeline':28s} {'workers':>7s} {'clips/s':>8s} {'x training':>10s} {'clips/CPU s':>12s} "
              f"{'x training (CPU)':>16s}")
        for name, w, (rate, rate_cpu) in rows:
            cpu_cols = f"{rate_cpu:12.1f} {rate_cpu / consume_cpu:16.2f}" if w == 0 else f"{'-':>12s} {'-':>16s}"
            print(f"{name:28s} {w:7d} {rate:8.1f} {rate / consume:10.2f} {cpu_cols}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
