"""Per-frame online latency of CrossVIS vs CondInst-VIS (R-50, 640 x 360), side by side in one run.

    python scripts/bench_crossvis_online.py [--frames 5] [--warmup 2] [--device cpu] [--variants ...]

Random-init weights with ``score_threshold=0`` so every frame runs the full post-processing (100 masks and
the association): the worst case. Prints ms/frame per variant and the ratio to the first one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from avis.models.crossvis import bench_entry


def time_variant(variant: str, frames: torch.Tensor, warmup: int, device: str) -> list[float]:
    name, model = bench_entry(variant, device=device)
    state = model.init_state()
    times = []
    for i, frame in enumerate(frames):
        frame = frame.to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.step(state, frame)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=["crossvis_r50", "condinst_vis_r50"])
    args = ap.parse_args()
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (args.warmup + args.frames, 3, 360, 640), dtype=torch.uint8)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, 640x360")
    base = None
    for v in args.variants:
        ms = 1000 * statistics.median(time_variant(v, frames, args.warmup, args.device))
        base = base or ms
        print(f"{v:20s} {ms:9.1f} ms/frame  ratio {ms / base:.2f}")


if __name__ == "__main__":
    main()
