"""Throughput of the audio branch on CPU, as seconds of audio processed per second of wall time.

Measured side by side in one run, on the same random audio:
  numpy-frontend   the VGGish log-mel recipe in NumPy (float64, as the official mel_features.py computes it)
  torch-frontend   avis' batched LogMelFrontend (torch.stft + mel matmul, float32)
  vggish           VGGish up to the 4096-d feature, on ready log-mel examples (random weights: the speed
                   does not depend on the values)
  frontend+vggish  per-frame windows -> 4096-d features (AudioFeatureExtractor), what the RCF branch runs
  tiny             the CPU preset's extractor (small conv net on the same log-mel)

Audio seconds = number of 0.96 s examples x 0.96 (non-overlapping examples, as VGGish is used offline). With
per-frame windows in a video at F fps, one second of video needs F examples: divide by F x 0.96 for the
real-time factor of the online branch. Usage: python scripts/bench_audio.py [--seconds 20] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from avis.models.audio import AudioFeatureExtractor, LogMelFrontend, TinyAudioNet, VGGish
from avis.models.audio.frontend import EXAMPLE_SAMPLES, vggish_mel_matrix


def numpy_log_mel(x: np.ndarray, mel: np.ndarray) -> np.ndarray:
    n = 1 + (len(x) - 400) // 160
    idx = np.arange(400)[None, :] + 160 * np.arange(n)[:, None]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    return np.log(np.abs(np.fft.rfft(x[idx] * hann, 512)) @ mel + 0.01)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernels selection)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=19.2, help="audio per measurement (default 20 examples)")
    ap.add_argument("--repeats", type=int, default=3, help="best of N")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=32, help="examples per VGGish call")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_ex = max(1, int(round(args.seconds / 0.96)))
    audio_s = n_ex * 0.96
    windows = torch.randn(n_ex, EXAMPLE_SAMPLES) * 0.1  # one exact 96-frame example per window
    fe = LogMelFrontend()
    mel = vggish_mel_matrix().numpy()
    vgg = VGGish().eval()
    ext = AudioFeatureExtractor(vgg, trainable=False, chunk_size=args.batch)
    tiny = AudioFeatureExtractor(TinyAudioNet(64, 8), trainable=False, chunk_size=args.batch)
    with torch.no_grad():
        examples = fe(windows)
        rows = {
            "numpy-frontend": timed(lambda: [numpy_log_mel(w, mel) for w in windows.double().numpy()],
                                    args.repeats),
            "torch-frontend": timed(lambda: fe(windows), args.repeats),
            "vggish": timed(lambda: [vgg.forward_features(c) for c in examples.split(args.batch)], args.repeats),
            "frontend+vggish": timed(lambda: ext(windows), args.repeats),
            "tiny": timed(lambda: tiny(windows), args.repeats),
        }
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {n_ex} examples = {audio_s:.1f} s of audio, batch {args.batch}, "
          f"best of {args.repeats}")
    base = rows["frontend+vggish"]
    print(f"{'variant':<18}{'time s':>9}{'audio s / s':>14}{'x frontend+vggish':>20}")
    for name, t in rows.items():
        print(f"{name:<18}{t:>9.3f}{audio_s / t:>14.1f}{base / t:>20.2f}")
    print(f"torch-frontend is {rows['numpy-frontend'] / rows['torch-frontend']:.1f}x the NumPy recipe; "
          f"the front end is {100 * rows['torch-frontend'] / base:.1f}% of frontend+vggish")


if __name__ == "__main__":
    main()
