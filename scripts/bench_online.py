"""Per-frame latency of online inference, variants side by side in one run.

Default variants at 640 x 360 (random weights: latency does not depend on them): the R-50 and R-101 backbones
alone (the floor), RCF-R50 and RCF-R101 with delta = 1 and 5, audio off and on (the online fast path:
``RCF.optimize_online``), the reference step of RCF-R50 delta = 5 with audio (what the fast path replaces),
RCF-R50 delta = 1 with every slot firing (mask upsampling, thresholding and tracking of all N slots each frame),
VGGish on one window, and the baselines present (CrossVIS-R50 with ~0 and with 100 detections per frame, InsPro-R50 with ~0 and with
100 masks per frame, STMask-R50 with 100 detections per frame), and EfficientVIS-R50 (T = 36 and 9, see below). Frames start on the host as decoded uint8
(the host-to-device copy is timed on a GPU); a step returns the frame's tracked instances (masks upsampled
and thresholded, identities assigned), and the per-video ``finish`` (each track's video-level class and score)
is timed once after the frames and reported per frame. Variants are timed interleaved, frame by frame, so that
load changes on a shared machine hit all of them alike; the median per-frame time after warm-up is reported,
with ratios to the matching backbone and between settings.

Add a method side by side by appending to VARIANTS (any online VISMethod works through ``method``)::

    VARIANTS.append(method("crossvis_r50", lambda: crossvis_r50(num_classes=40)))

Clip-level methods (EfficientVIS) cannot step frame by frame: ``clip_method`` entries are timed clip by clip
(queries carried), reported as the per-frame latency amortised over a clip and the clip delay (the first frame
of a clip waits for the T - 1 frames after it, at ``--video-fps``, plus the clip's compute time).

    python scripts/bench_online.py [--frames 10] [--warmup 3] [--device cpu|cuda] [--amp [--amp-dtype bf16]]
                                   [--compile] [--no-channels-last] [--threads N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: avis, and tests/ for the oracle

from avis.models.audio import audio_tokens_vggish  # noqa: E402
from avis.models.backbones import ResNetBackbone  # noqa: E402
from avis.models.crossvis import crossvis_r50  # noqa: E402
from avis.models.efficientvis import efficientvis_r50  # noqa: E402
from avis.models.inspro import inspro_r50  # noqa: E402
from avis.models.rcf import rcf_r50, rcf_r101  # noqa: E402
from avis.models.stmask import stmask_r50  # noqa: E402

NUM_CLASSES = 40  # YTVIS-2019 / AVIS scale
WIDTH, HEIGHT = 640, 360
WINDOW = 15360  # 0.96 s at 16 kHz

# Fast-path settings given to every model that has ``optimize_online`` (set from the command line).
FAST: dict = {"channels_last": True, "amp": None, "compile": False}

Stepper = Callable[[torch.Tensor, torch.Tensor | None], None]  # (frame uint8 3xHxW, audio window S) -> None


@dataclass
class ClipVariant:
    """A clip-level method: ``build()`` -> a model with ``clip_frames`` and ``run_clip`` / ``carry``."""

    name: str
    build: Callable[[], nn.Module]
    group: str = "clip"
    floor: str | None = "resnet50 backbone"


def clip_method(name: str, build: Callable[[], nn.Module]) -> ClipVariant:
    return ClipVariant(name, build)


@dataclass
class Variant:
    """A named per-frame computation. ``make(device)`` builds it and returns a stepper with its own state
    (a stepper may carry a ``finish`` attribute: the per-video work after the last frame)."""

    name: str
    make: Callable[[torch.device], Stepper]
    group: str = ""
    floor: str | None = None  # name of the backbone-alone variant it is compared with


def method(name: str, build: Callable[[], nn.Module], group: str = "", floor: str | None = None,
           reference: bool = False) -> Variant:
    """Any online VISMethod: init_state once, then ``step`` per frame. Models with ``optimize_online`` get
    the FAST settings; ``reference=True`` runs RCF's reference step instead (tests/rcf_reference.py, the
    oracle the fast path is tested against)."""

    def make(device):
        model = build().to(device).eval()
        run_step = model.step
        if reference:
            from tests.rcf_reference import reference_step

            def run_step(state, frame, audio):  # the reference network part, then the same tracking
                model.track_frame(state, *reference_step(model, state, frame, audio))
        elif hasattr(model, "optimize_online"):
            model.optimize_online(**FAST)
        state = model.init_state()

        def step(frame, audio):
            run_step(state, frame, audio)

        step.finish = lambda: model.finish(state)
        return step

    return Variant(name, make, group, floor)


def backbone_alone(name: str, build: Callable[[], nn.Module]) -> Variant:
    def make(device):
        net = build().to(device).eval()
        if FAST["channels_last"]:
            net = net.to(memory_format=torch.channels_last)
        if FAST["compile"]:
            net = torch.compile(net)
        mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225], device=device).view(3, 1, 1) * 255
        fmt = torch.channels_last if FAST["channels_last"] else torch.contiguous_format

        @torch.no_grad()
        def step(frame, audio):
            net(((frame.to(device, torch.float32) - mean) / std)[None].contiguous(memory_format=fmt))

        return step

    return Variant(name, make, "backbone", name)


def audio_encoder(out_channels: int = 256) -> nn.Module:
    """The paper's audio branch: VGGish (random weights) + 2-layer bi-LSTM 512 + 2 FC."""
    return audio_tokens_vggish(out_channels=out_channels)


def rcf_variant(arch: str, delta: int, audio: bool, reference: bool = False, all_fire: bool = False) -> Variant:
    """RCF preset; ``all_fire``: class threshold 0, so that every slot is upsampled, thresholded and tracked in
    every frame (with random weights no slot reaches the default 0.4, so the default variants time no mask
    post-processing, as for frames without objects)."""
    build = {"r50": rcf_r50, "r101": rcf_r101}[arch]
    name = (f"rcf_{arch} delta={delta} audio={'on' if audio else 'off'}" + (" reference" if reference else "")
            + (" all slots fire" if all_fire else ""))
    extra = {"class_threshold": 0.0} if all_fire else {}
    return method(name, lambda: build(NUM_CLASSES, delta, audio_encoder() if audio else None, **extra), "rcf",
                  floor=f"resnet{arch[1:]} backbone", reference=reference)


VARIANTS: list[Variant] = [
    backbone_alone("resnet50 backbone", lambda: ResNetBackbone("resnet50")),
    *[rcf_variant("r50", d, a) for a in (False, True) for d in (1, 5)],
    rcf_variant("r50", 5, True, reference=True),
    rcf_variant("r50", 1, False, all_fire=True),
    backbone_alone("resnet101 backbone", lambda: ResNetBackbone("resnet101")),
    *[rcf_variant("r101", d, a) for a in (False, True) for d in (1, 5)],
    Variant("vggish audio features alone", lambda device: _vggish_alone(device), "audio"),
    # CrossVIS: random weights score nothing above its 0.05 threshold, so the "100 dets" variant keeps every
    # candidate (threshold 0): full post-processing (NMS, 100 dynamic masks, association), the worst case
    method("crossvis_r50", lambda: crossvis_r50(NUM_CLASSES), "crossvis", floor="resnet50 backbone"),
    method("crossvis_r50 100 dets", lambda: crossvis_r50(NUM_CLASSES, score_threshold=0.0), "crossvis",
           floor="resnet50 backbone"),
    # InsPro: 100 propagated pairs, 6 stages, feature bank 18; "100 masks" computes and records every slot's
    # mask each frame (score threshold below 0), the worst case; the plain variant scores ~no slot active
    method("inspro_r50", lambda: inspro_r50(NUM_CLASSES), "inspro", floor="resnet50 backbone"),
    method("inspro_r50 100 masks", lambda: inspro_r50(NUM_CLASSES, score_threshold=-1.0), "inspro",
           floor="resnet50 backbone"),
    # STMask: random weights already keep 100 detections per frame at its 0.05 threshold (the worst case:
    # NMS, 100 masks, temporal fusion of every kept track, up to 10 frames unmatched, and association)
    method("stmask_r50", lambda: stmask_r50(NUM_CLASSES), "stmask", floor="resnet50 backbone"),
]

CLIP_VARIANTS: list[ClipVariant] = [
    clip_method("efficientvis_r50 T=36", lambda: efficientvis_r50(NUM_CLASSES, clip_length=36)),
    clip_method("efficientvis_r50 T=9", lambda: efficientvis_r50(NUM_CLASSES, clip_length=9)),
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


def run(variants: list[Variant], frames: int, warmup: int, device: torch.device, amp: bool,
        finish: dict[str, float] | None = None, amp_dtype: torch.dtype | None = None,
        cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median wall seconds per frame of each variant; ``finish`` (if given) receives each method's per-video
    finish time divided by the number of frames it saw, ``cpu`` the median process CPU seconds per frame
    (on a shared machine CPU time does not count the time other jobs hold the cores)."""
    steppers = {}
    for v in variants:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random-initialisation warnings
            steppers[v.name] = v.make(device)
    g = torch.Generator().manual_seed(0)
    # Decoded frames live on the host: end to end includes the copy to the device.
    video = torch.randint(0, 256, (4, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=g)
    audio = torch.randn(4, WINDOW, generator=g)
    if device.type == "cuda":
        video, audio = video.pin_memory(), audio.pin_memory()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v.name: [] for v in variants}
    for i in range(warmup + frames):
        for v in variants:  # interleaved: drift in machine load hits every variant alike
            frame, window = video[i % 4], audio[i % 4]
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                steppers[v.name](frame, window)
            _sync(device)
            if i >= warmup:
                times[v.name].append(time.perf_counter() - t0)
                cpu_times[v.name].append(time.process_time() - c0)
    if finish is not None:
        for name, step in steppers.items():
            if hasattr(step, "finish"):
                _sync(device)
                t0 = time.perf_counter()
                step.finish()
                finish[name] = (time.perf_counter() - t0) / (warmup + frames)
    if cpu is not None:
        cpu.update({k: statistics.median(t) for k, t in cpu_times.items()})
    return {k: statistics.median(t) for k, t in times.items()}


def run_clips(variants: list[ClipVariant], clips: int, warmup: int, device: torch.device, amp: bool,
              amp_dtype: torch.dtype | None = None) -> dict[str, tuple[float, float, int]]:
    """-> (median wall s per clip, median process CPU s per clip, T) per variant, queries carried from clip to
    clip, variants interleaved."""
    models, queries = {}, {}
    for v in variants:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            models[v.name] = v.build().to(device).eval()
        queries[v.name] = None
    g = torch.Generator().manual_seed(0)
    walls: dict[str, list[float]] = {v.name: [] for v in variants}
    cpus: dict[str, list[float]] = {v.name: [] for v in variants}
    for i in range(warmup + clips):
        for v in variants:
            m = models[v.name]
            frames = torch.randint(0, 256, (1, m.clip_frames, 3, HEIGHT, WIDTH), dtype=torch.uint8,
                                   generator=g).to(device)
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                out = m.run_clip(frames, queries[v.name])[-1]
                queries[v.name] = m.carry(out)
                out["logits"].softmax(-1)
            _sync(device)
            if i >= warmup:
                walls[v.name].append(time.perf_counter() - t0)
                cpus[v.name].append(time.process_time() - c0)
    return {k: (statistics.median(walls[k]), statistics.median(cpus[k]), models[k].clip_frames) for k in walls}


def _machine() -> str:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{platform.machine()} {model}, {os.cpu_count()} cores"


def _versions() -> str:
    out = [f"torch {torch.__version__}"]
    for mod in ("torchvision", "torchaudio", "av"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return ", ".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10, help="timed frames per variant (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (autocast) in the step")
    p.add_argument("--clips", type=int, default=2, help="timed clips per clip-level variant (median)")
    p.add_argument("--clip-warmup", type=int, default=1)
    p.add_argument("--video-fps", type=float, default=30.0, help="frame rate for the clip delay")
    p.add_argument("--amp-dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile backbone and mask decoder")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--only", nargs="*", help="names (substrings) of the variants to run")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    FAST.update(channels_last=not args.no_channels_last, amp=args.amp_dtype if args.amp else None,
                compile=args.compile)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp_dtype]
    variants = [v for v in VARIANTS if not args.only or any(s in v.name for s in args.only)]
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"{_machine()}; {dev}; {_versions()}")
    print(f"device {device}, threads {torch.get_num_threads()}, amp {args.amp_dtype if args.amp else 'off'}, "
          f"channels_last {FAST['channels_last']}, compile {args.compile}, {WIDTH}x{HEIGHT}, "
          f"median of {args.frames} frames after {args.warmup} warm-up; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    fin: dict[str, float] = {}
    cpu: dict[str, float] = {}
    clip_variants = [v for v in CLIP_VARIANTS if not args.only or any(s in v.name for s in args.only)]
    wall = run(variants, args.frames, args.warmup, device, args.amp, fin, amp_dtype, cpu) if variants else {}
    per_clip = run_clips(clip_variants, args.clips, args.clip_warmup, device, args.amp, amp_dtype)
    for name, (w, c, t) in per_clip.items():  # amortised per frame, listed with the online variants
        wall[name], cpu[name] = w / t, c / t
    variants = variants + clip_variants
    # Ratios on process CPU time on a CPU device (robust to other jobs on shared cores), on wall time on a GPU.
    med = cpu if device.type == "cpu" else wall
    print(f"load average {os.getloadavg()[0]:.1f} at end (1 min), {os.getloadavg()[2]:.1f} (15 min)")
    print(f"ratios below on {'process CPU' if device.type == 'cpu' else 'wall'} time")
    print(f"{'variant':38s} {'wall ms':>8s} {'FPS':>6s} {'CPU ms':>8s} {'x backbone':>11s} {'finish ms/frame':>16s}")
    for v in variants:
        base = med.get(v.floor) if v.floor else None
        ratio = f"{med[v.name] / base:11.3f}" if base else f"{'-':>11s}"
        f = f"{1000 * fin[v.name]:16.1f}" if v.name in fin else f"{'-':>16s}"
        print(f"{v.name:38s} {1000 * wall[v.name]:8.1f} {1 / wall[v.name]:6.2f} {1000 * cpu[v.name]:8.1f} {ratio} {f}")
    for arch in ("r50", "r101"):
        for audio in ("off", "on"):
            d1, d5 = f"rcf_{arch} delta=1 audio={audio}", f"rcf_{arch} delta=5 audio={audio}"
            if d1 in med and d5 in med:
                print(f"{arch}: delta 5 / delta 1 (audio {audio}): {med[d5] / med[d1]:.3f}")
        for delta in (1, 5):
            off, on = f"rcf_{arch} delta={delta} audio=off", f"rcf_{arch} delta={delta} audio=on"
            if off in med and on in med:
                print(f"{arch}: audio on / off (delta {delta}): {med[on] / med[off]:.3f}")
            # with audio the model has two feature extractors: the floor is both of them
            floor = (med.get(f"resnet{arch[1:]} backbone"), med.get("vggish audio features alone"))
            if on in med and None not in floor:
                print(f"{arch}: audio on (delta {delta}) / (backbone + VGGish alone): {med[on] / sum(floor):.3f}")
    # The four figures of issue 26 on one line: RCF-R50 over its feature extractor(s), audio off and on.
    goal = []
    for audio in ("off", "on"):
        for delta in (1, 5):
            v = f"rcf_r50 delta={delta} audio={audio}"
            floor = [med.get("resnet50 backbone")] + ([med.get("vggish audio features alone")] if audio == "on" else [])
            if v in med and None not in floor:
                goal.append(f"audio {audio} delta {delta}: {med[v] / sum(floor):.3f}")
    if goal:
        print("r50 over its feature extractors (backbone; backbone + VGGish with audio): " + ", ".join(goal))
    fire, plain = "rcf_r50 delta=1 audio=off all slots fire", "rcf_r50 delta=1 audio=off"
    if fire in med and plain in med:
        print(f"r50 delta 1 audio off, every slot fires / none fires: {med[fire] / med[plain]:.3f}")
    for name, (w, _, t) in per_clip.items():
        print(f"{name}: {1000 * w:.0f} ms per clip of {t} frames; clip delay {(t - 1) / args.video_fps + w:.2f} s "
              f"at {args.video_fps:g} fps ((T - 1) / fps + clip compute)")
    ref, fast = "rcf_r50 delta=5 audio=on reference", "rcf_r50 delta=5 audio=on"
    if ref in med and fast in med:
        print(f"fast path / reference step (r50, delta 5, audio on): {med[fast] / med[ref]:.3f}")
    for cv in ("crossvis_r50", "crossvis_r50 100 dets", "inspro_r50", "inspro_r50 100 masks", "stmask_r50"):
        rcf = "rcf_r50 delta=1 audio=off"
        if cv in med and rcf in med:
            print(f"{cv} / {rcf}: {med[cv] / med[rcf]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
