"""Benchmark: writing an ``avis view`` page beside re-encoding its media alone, and drawing the page's masks in
headless Chromium beside the time a frame is on screen.

Builds a YouTube-VIS-like case (default 4 videos, 640x360 source at 30 fps for 6 s with sound, 36 annotated
frames at 6 fps, 5 ground-truth objects, 2 runs of 10 tracks each, attention maps for one run), then times

* ``media``: the page's media alone (the overlay exporter with nothing drawn, as the page uses it), and
* ``page``: :func:`avis.view.write_view` (loading, validating and scoring both runs, media, data files,
  attention images),

and, in Chromium (Debian's, via selenium), the time to draw a new annotated frame in all three mask panels
(decode every visible track's RLE, compose, scale, label) against 1/30 s and 1/6 s.

    python scripts/bench_view.py [--videos 4] [--tracks 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avis, not an installed one

H, W, FPS, ANN_FPS, SECONDS = 360, 640, 30, 6, 6


def ellipse(cx, cy, a, b):
    y, x = np.ogrid[:H, :W]
    return (((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1).astype(np.uint8)


def make_case(root: Path, videos: int, tracks: int, seed: int = 0) -> None:
    from avis.io import masks as mask_io
    from avis.view.attention import write_attention
    from data_tools.synth import write_mp4

    rng = np.random.default_rng(seed)
    T = SECONDS * ANN_FPS
    vids, anns, runs, maps = [], [], {"av": [], "vis": []}, {}
    for vid in range(1, videos + 1):
        # smooth content (blocks of 40 px changing every frame), nearer to a real video than noise
        frames = rng.integers(60, 200, (SECONDS * FPS, H // 40, W // 40, 3), dtype=np.uint8)
        frames = frames.repeat(40, axis=1).repeat(40, axis=2)
        t = np.arange(16000 * SECONDS) / 16000
        write_mp4(root / "videos" / f"v{vid}.mp4", frames, (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32),
                  FPS, 16000)
        vids.append({"id": vid, "width": W, "height": H, "length": T, "fps": ANN_FPS, "video_file": f"v{vid}.mp4"})
        objs = []
        for k in range(5):
            cx, cy, vx = rng.uniform(100, 540), rng.uniform(80, 280), rng.normal(0, 3)
            segs = [mask_io.encode(ellipse(cx + vx * f, cy, 60, 40)) for f in range(T)]
            objs.append(segs)
            anns.append({"id": vid * 10 + k, "video_id": vid, "category_id": 1 + k % 3, "iscrowd": 0,
                         "segmentations": segs})
        for name in runs:
            for j in range(tracks):
                segs = objs[j % 5] if j < 5 else [mask_io.encode(ellipse(rng.uniform(60, 580), rng.uniform(60, 300),
                                                                         40, 30)) for _ in range(T)]
                runs[name].append({"video_id": vid, "category_id": 1 + j % 3, "score": float(rng.uniform(0.5, 1)),
                                   "segmentations": segs})
        maps[vid] = {"ref_to_target": list(rng.random((T, 16, 12, 20), np.float32) / 300),
                     "audio_to_target": list(rng.random((T, 2, 12, 20), np.float32) / 300)}
    (root / "gt.json").write_text(json.dumps({"videos": vids, "annotations": anns, "categories": [
        {"id": c, "name": f"class {c}"} for c in (1, 2, 3)]}))
    for name, res in runs.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps(res))
    write_attention(root / "av" / "attention.npz", maps)


def browser_draw_ms(index: Path, profile: Path) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--window-size=1400,1400", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    try:
        d.set_script_timeout(120)
        d.get(index.as_uri())
        return d.execute_async_script("""
            const done = arguments[0];
            AVIS.select(0).then(async () => {
              const out = [], S = AVIS.state;
              for (let i = 0; i < S.v.times.length; i++) {
                S.mediaTime = S.v.times[i] + 0.001;   // a new annotated frame: nothing cached
                const t0 = performance.now();
                AVIS.render();
                out.push(performance.now() - t0);
              }
              done(out);
            });""")
    finally:
        d.quit()


def webdriver_version() -> str:
    import subprocess

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "chromium ?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--tracks", type=int, default=10)
    args = ap.parse_args()
    import av
    import torch

    from avis.io import ytvis
    from avis.view import write_view
    from data_tools.exporters import overlay

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_case(root, args.videos, args.tracks)
        gt = ytvis.load_annotations(root / "gt.json")
        t0 = time.perf_counter()
        for n, v in enumerate(gt["videos"]):
            overlay.write_video_overlay(v, [], {}, root / "videos", root / "bare" / f"{n}.mp4", fps=FPS)
        media_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = write_view(root / "av", root / "page", gt=root / "gt.json", videos_dir=root / "videos",
                           compare=[root / "vis"], labels=["AV", "visual"])
        page_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (root / "page").rglob("*") if p.is_file())
        ms = np.array(browser_draw_ms(index, root / "profile"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    chromium = webdriver_version()
    print(f"machine: {cpu}, {os.cpu_count()} cores, {chromium}, "
          f"load {os.getloadavg()[0]:.1f}; Python {platform.python_version()}, torch {torch.__version__}, "
          f"PyAV {av.__version__}, numpy {np.__version__}")
    print(f"case: {args.videos} videos {W}x{H}, {SECONDS} s at {FPS} fps + sound, {SECONDS * ANN_FPS} annotated "
          f"frames, 5 GT objects, 2 runs x {args.tracks} tracks")
    print(f"media alone: {media_s:.2f} s; whole page: {page_s:.2f} s (ratio {page_s / media_s:.2f}); "
          f"page folder {size / 1e6:.1f} MB")
    print(f"draw a new annotated frame (3 mask panels + attention): median {np.median(ms):.1f} ms, "
          f"max {ms.max():.1f} ms; median / (1/30 s) = {np.median(ms) / (1000 / FPS):.2f}, "
          f"median / (1/{ANN_FPS} s) = {np.median(ms) / (1000 / ANN_FPS):.2f}")


if __name__ == "__main__":
    main()
