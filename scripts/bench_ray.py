"""``avis build --ray`` against ``avis build --workers 2`` on the same inputs, side by side in one run.

    python scripts/bench_ray.py [--videos 16] [--seconds 8] [--size 640x360] [--fps 6] [--repeats 2]

Writes ``--videos`` synthetic H.264 + AAC mp4s (scripts/bench_build.py's), then times, alternately and
``--repeats`` times each (best kept), whole ``avis build`` processes as a user runs them:

* ``--workers 2``: a pool of two processes;
* ``--ray --workers 2``: a local Ray instance with 2 CPUs (start-up and shutdown included);

and separately what Ray adds: starting and stopping a local instance (``ray.init`` + ``ray.shutdown``), and the
round trip of an empty task. Also the per-video work (``--workers 1``: seconds per video, one process) and the
sizes (input and output bytes per video), from which docs/scale.md estimates how a cluster scales.
Both builds must give byte-identical shards (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_build import write_synthetic  # noqa: E402

CPU = {}  # label -> CPU seconds of the last build process of that kind (and its children)


def build(src: Path, out: Path, *extra: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "avis", "build", "--videos", str(src), "--out", str(out), "--fps",
                        ARGS.fps, "--shard-size", str(64 << 20), *extra], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[" ".join(extra)] = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"build failed ({' '.join(extra)}):\n{p.stderr[-3000:]}")
    return dt


def ray_overheads() -> tuple[float, float]:
    """(seconds to start and stop a local 2-CPU instance, seconds of an empty task's round trip, median of 20)."""
    code = """
import logging, time, statistics, ray
t = time.perf_counter()
ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=96 << 20, log_to_driver=False,
         logging_level=logging.ERROR)
f = ray.remote(lambda: None)
ray.get([f.remote() for _ in range(2)])  # workers up
rt = []
for _ in range(20):
    s = time.perf_counter(); ray.get(f.remote()); rt.append(time.perf_counter() - s)
ray.shutdown()
print(time.perf_counter() - t - sum(rt), statistics.median(rt))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    start, task = (float(v) for v in p.stdout.split())
    return start, task


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--rate", type=int, default=30)
    ap.add_argument("--fps", default="6")
    ap.add_argument("--repeats", type=int, default=2)
    ARGS = ap.parse_args()
    size = tuple(int(v) for v in ARGS.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="avis-bench-ray-"))
    try:
        src = tmp / "src"
        src.mkdir()
        for i in range(ARGS.videos):
            write_synthetic(src / f"synth{i:03d}.mp4", ARGS.seconds, size, ARGS.rate, i)
        in_bytes = sum(p.stat().st_size for p in src.iterdir())
        load = os.getloadavg()
        one = build(src, tmp / "w1", "--workers", "1")
        best = {"workers": float("inf"), "ray": float("inf")}
        for r in range(ARGS.repeats):
            best["workers"] = min(best["workers"], build(src, tmp / f"w2_{r}", "--workers", "2"))
            best["ray"] = min(best["ray"], build(src, tmp / f"ray_{r}", "--ray", "--workers", "2"))
        load = (load, os.getloadavg())
        start, task = ray_overheads()
        m1 = json.loads((tmp / "w1" / "manifest.json").read_text())
        for r in range(ARGS.repeats):
            assert json.loads((tmp / f"ray_{r}" / "manifest.json").read_text())["shards"] == m1["shards"]
        out_bytes = sum(s["bytes"] for s in m1["shards"])
        frames = m1["counts"]["frames"]
        import av
        import ray

        print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, python "
              f"{platform.python_version()}, av {av.__version__}, ray {ray.__version__}; load avg "
              f"{load[0][0]:.1f} before, {load[1][0]:.1f} after")
        print(f"inputs: {ARGS.videos} synthetic {ARGS.size} {ARGS.rate} fps {ARGS.seconds:g} s H.264 + AAC 48 kHz "
              f"stereo, {in_bytes / ARGS.videos / 1e6:.2f} MB each; sampling {ARGS.fps} fps -> {frames} frames, "
              f"{out_bytes / ARGS.videos / 1e6:.2f} MB of shard per video")
        start1 = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import torch, "
                                 "torchaudio.functional, data_tools.build; print(time.perf_counter() - t)"],
                                env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
        imports = float(start1.stdout)
        print(f"per-video work (--workers 1, whole process {one:.2f} s, {CPU['--workers 1']:.2f} CPU-s; its imports "
              f"take {imports:.2f} s): {(one - imports) / ARGS.videos:.3f} s and "
              f"{CPU['--workers 1'] / ARGS.videos:.3f} CPU-s per video")
        for k, label in (("workers", "--workers 2       "), ("ray", "--ray --workers 2 ")):
            print(f"{label}: {best[k]:.2f} s wall, {ARGS.videos / best[k]:.2f} videos/s, "
                  f"{frames / best[k]:.1f} frames/s")
        print(f"ratio --ray / --workers 2 throughput: {best['workers'] / best['ray']:.2f}")
        print(f"Ray local instance start + stop: {start:.2f} s; empty task round trip: {task * 1000:.1f} ms")
        print(f"--ray without its start + stop: {best['ray'] - start:.2f} s, "
              f"{ARGS.videos / max(best['ray'] - start, 1e-9):.2f} videos/s")
        print("shards byte-identical across --workers 1, --ray: yes")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
