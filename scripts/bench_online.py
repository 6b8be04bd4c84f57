"""Per-frame latency of online inference, variants side by side in one run.

Default variants: the R-50 backbone alone, and RCF-R50 with delta = 1 and 5, audio off and on, at 640 x 360
(random weights: latency does not depend on them). Variants are timed interleaved, frame by frame, so that
load changes on a shared machine hit all of them alike; the median per-frame time after warm-up is reported,
with ratios to the backbone and between settings.

Add a method side by side by appending to VARIANTS (any online VISMethod works through ``method``)::

    VARIANTS.append(method("crossvis_r50", lambda: crossvis_r50(num_classes=40)))

    python scripts/bench_online.py [--frames 10] [--warmup 3] [--device cpu|cuda] [--amp] [--threads N]
                                   [--only NAME ...]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from avis.models.audio import audio_tokens_vggish
from avis.models.backbones import ResNetBackbone
from avis.models.rcf import rcf_r50

NUM_CLASSES = 40  # YTVIS-2019 / AVIS scale
WIDTH, HEIGHT = 640, 360
WINDOW = 15360  # 0.96 s at 16 kHz

Stepper = Callable[[torch.Tensor, torch.Tensor | None], None]  # (frame uint8 3xHxW, audio window S) -> None


@dataclass
class Variant:
    """A named per-frame computation. ``make(device)`` builds it and returns a stepper with its own state."""

    name: str
    make: Callable[[torch.device], Stepper]
    group: str = ""


def method(name: str, build: Callable[[], nn.Module], group: str = "") -> Variant:
    """Any online VISMethod: init_state once, then ``step`` per frame."""

    def make(device):
        model = build().to(device).eval()
        state = model.init_state()
        return lambda frame, audio: model.step(state, frame, audio)

    return Variant(name, make, group)


def backbone_alone(name: str, build: Callable[[], nn.Module]) -> Variant:
    def make(device):
        net = build().to(device).eval()
        mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225], device=device).view(3, 1, 1) * 255

        @torch.no_grad()
        def step(frame, audio):
            net(((frame.to(device, torch.float32) - mean) / std)[None])

        return step

    return Variant(name, make, "backbone")


def audio_encoder(out_channels: int = 256) -> nn.Module:
    """The paper's audio branch: VGGish (random weights) + 2-layer bi-LSTM 512 + 2 FC."""
    return audio_tokens_vggish(out_channels=out_channels)


def rcf_variant(delta: int, audio: bool) -> Variant:
    name = f"rcf_r50 delta={delta} audio={'on' if audio else 'off'}"
    return method(name, lambda: rcf_r50(NUM_CLASSES, delta, audio_encoder() if audio else None), "rcf")


VARIANTS: list[Variant] = [
    backbone_alone("resnet50 backbone", lambda: ResNetBackbone("resnet50")),
    rcf_variant(1, False),
    rcf_variant(5, False),
    rcf_variant(1, True),
    rcf_variant(5, True),
    Variant("vggish audio features alone", lambda device: _vggish_alone(device), "audio"),
]


def _vggish_alone(device) -> Stepper:
    enc = audio_encoder().to(device).eval()

    @torch.no_grad()
    def step(frame, audio):
        enc.frame_features(audio[None])

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(variants: list[Variant], frames: int, warmup: int, device: torch.device, amp: bool) -> dict[str, float]:
    steppers = {}
    for v in variants:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random-initialisation warnings
            steppers[v.name] = v.make(device)
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (4, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=g).to(device)
    audio = torch.randn(4, WINDOW, generator=g).to(device)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for i in range(warmup + frames):
        for v in variants:  # interleaved: drift in machine load hits every variant alike
            frame, window = video[i % 4], audio[i % 4]
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, enabled=amp):
                steppers[v.name](frame, window)
            _sync(device)
            if i >= warmup:
                times[v.name].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10, help="timed frames per variant (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast (mixed precision)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--only", nargs="*", help="names (substrings) of the variants to run")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [v for v in VARIANTS if not args.only or any(s in v.name for s in args.only)]
    print(f"torch {torch.__version__}, {platform.machine()} {platform.processor() or ''}, device {device}, "
          f"threads {torch.get_num_threads()}, amp {args.amp}, {WIDTH}x{HEIGHT}, "
          f"median of {args.frames} frames after {args.warmup} warm-up")
    med = run(variants, args.frames, args.warmup, device, args.amp)
    base = next((med[v.name] for v in variants if v.group == "backbone"), None)
    print(f"{'variant':34s} {'ms/frame':>9s} {'FPS':>7s} {'x backbone':>11s}")
    for v in variants:
        ratio = f"{med[v.name] / base:11.3f}" if base else f"{'-':>11s}"
        print(f"{v.name:34s} {1000 * med[v.name]:9.1f} {1 / med[v.name]:7.2f} {ratio}")
    for audio in ("off", "on"):
        d1, d5 = f"rcf_r50 delta=1 audio={audio}", f"rcf_r50 delta=5 audio={audio}"
        if d1 in med and d5 in med:
            print(f"delta 5 / delta 1 (audio {audio}): {med[d5] / med[d1]:.3f}")
    for delta in (1, 5):
        off, on = f"rcf_r50 delta={delta} audio=off", f"rcf_r50 delta={delta} audio=on"
        if off in med and on in med:
            print(f"audio on / off (delta {delta}): {med[on] / med[off]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
