"""``avis synth``: a synthetic audio-visual video instance segmentation dataset with a tunable need for audio.

What it writes (``--out DIR``)::

    DIR/train.json, DIR/val.json     YTVIS-style annotations (+ ``fps``, ``video_file``), compressed RLE masks
    DIR/videos/<split>_<k>.mp4       H.264 (yuv420p) video + AAC mono audio, frame i shown at i / fps seconds

Scenes. Each video shows 1-4 *sounding objects* and 0-2 silent *distractors* (rings and bars, never
annotated) over a static textured backdrop. Everything moves along a wobbly straight path that may start or
end outside the frame (objects enter and leave), grows or shrinks, rotates, and is painted in a random depth
order, so objects occlude each other; an annotation is exactly the object's visible pixels (``None`` in frames
where nothing of it is visible). Eight categories form four look-alike pairs (:mod:`data_tools.synth_categories`):
the members of a pair share shape and colour, and differ only by a texture (stripes vs checks) -- when the
texture is drawn at all. A video holds at most one member of each pair.

Sound. Each category has an acoustic signature (tone, FM sweep, harmonic stack, noise band, chirps, pulsed
tone, thumps, odd harmonics; :mod:`data_tools.synth_audio`). A source sounds during random on/off stretches,
with loudness ``sqrt(on-screen area / reference area)`` (louder when larger), over pink background noise.

The knob ``audio_dependence`` d in [0, 1] decides, per split, which videos are *audio-dependent*: exactly
``floor(d * n + 0.5)`` of the split's n videos, picked by the seed.

* audio-dependent video: both members of a pair are drawn with the pair's shared look (solid colour, no
  texture), so the picture tells the pair but not the member; the soundtrack is the sum of the objects' own
  signatures (following their activity and size). Since a video holds at most one member per pair, the
  soundtrack names the member: only a model that listens can classify it (a visual-only model is at chance
  between the two).
* audio-independent video: each member is drawn with its own texture (vision alone classifies it) and the
  soundtrack is that of a different, invisible random scene drawn from a separate random stream -- same
  distribution of signatures, counts, loudness and activity, but independent of the objects shown. The
  annotations' ``sounding`` flags are all false.

So d = 1: every video needs audio; d = 0: audio carries no information about the objects; in between, the
fraction d of videos needs audio and in the rest audio is a plausible distractor. A solid look marks an
audio-dependent video, so a model can learn when to listen. Motion, sizes, colours, depth order and pair
choices come from a stream that does not depend on d, so sets built with the same seed and different d show
the same choreography.

Determinism: everything derives from ``numpy.random.SeedSequence([seed, split, index])``; the JSON is
byte-identical for a seed and the mp4 files too (single-threaded x264, bit-exact muxing) with the same PyAV
build.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from avis import __version__
from avis.errors import ConfigError, InputError
from avis.io import masks as mask_io
from avis.io.atomic import MP4_FASTSTART, atomic_path
from avis.io.ytvis import save_json
from data_tools import synth_audio as sa
from data_tools.synth_categories import BY_ID, CATEGORIES, PAIR_OF, PAIRS, twin, ytvis_categories
from data_tools.synth_render import Drawable, background, render, shape_mask

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
DISTRACTOR_SHAPES = ("ring", "bar")
ENTER_LEAVE = 0.4  # share of paths that start or end fully outside the frame
DISTRACTOR_COLORS = ((150, 150, 150), (125, 100, 80), (95, 145, 140), (175, 165, 120), (110, 110, 140))


# Bounds of what the generator is asked to make: a video is rendered in memory (about 45 bytes per pixel of
# every frame at its peak: 640 x 480 x 30 frames takes 0.5 GB), so its pixels are capped; the sound lasts as
# long as the video.
MAX_SIDE = 4096
MAX_FRAMES = 10_000
MAX_VIDEO_PIXELS = 1 << 25  # width x height x frames (e.g. 1280 x 720 x 36)
MAX_SECONDS = 600.0
MAX_VIDEOS = 100_000


@dataclass(frozen=True)
class SynthConfig:
    width: int = 160
    height: int = 96
    frames: int = 30
    fps: float = 12.0
    sample_rate: int = 16000
    object_counts: tuple[float, ...] = (0.2, 0.35, 0.3, 0.15)  # P(1..4 sounding objects)
    distractor_counts: tuple[float, ...] = (0.3, 0.4, 0.3)  # P(0..2 distractors)
    noise_db: tuple[float, float] = (-42.0, -30.0)  # background noise RMS range (dBFS)

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))

    @property
    def frame_times(self) -> np.ndarray:
        return np.arange(self.frames) / self.fps

    @property
    def ref_area(self) -> float:
        return math.pi * (0.2 * min(self.width, self.height)) ** 2

    def validate(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ConfigError(f"--size {self.width}x{self.height}: width and height must be even and >= 16 "
                              "(H.264 yuv420p)")
        if self.width > MAX_SIDE or self.height > MAX_SIDE:
            raise ConfigError(f"--size {self.width}x{self.height}: width and height must be at most {MAX_SIDE}")
        if self.frames < 1:
            raise ConfigError(f"--frames {self.frames}: need at least 1 frame")
        if self.frames > MAX_FRAMES:
            raise ConfigError(f"--frames {self.frames}: at most {MAX_FRAMES}")
        if self.width * self.height * self.frames > MAX_VIDEO_PIXELS:
            raise ConfigError(f"--size {self.width}x{self.height} with --frames {self.frames} is "
                              f"{self.width * self.height * self.frames} pixels a video, beyond the generator's "
                              f"{MAX_VIDEO_PIXELS} (it renders a video in memory: about 45 bytes a pixel); "
                              "use fewer frames or a smaller size")
        if not 0 < self.fps <= 240:
            raise ConfigError(f"--fps {self.fps}: must be in (0, 240]")
        if self.duration > MAX_SECONDS:
            raise ConfigError(f"--frames {self.frames} at --fps {self.fps:g} last {self.duration:g} s, beyond the "
                              f"{MAX_SECONDS:g} s limit")
        if self.sample_rate not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
            raise ConfigError(f"--sample-rate {self.sample_rate}: not an AAC sample rate")


@dataclass
class SceneObject:
    """A moving shape: a sounding object (``category`` set) or a silent distractor (``category`` None)."""

    category: int | None
    motion: dict  # cx, cy, size, angle: (T,) arrays
    intervals: list[tuple[float, float]] = field(default_factory=list)  # sounding stretches (s)
    pitch: float = 1.0
    sound_seed: int = 0
    shape: str = ""  # distractors only
    color: tuple[int, int, int] = (0, 0, 0)  # distractors only


@dataclass
class Scene:
    layers: list[SceneObject]  # back to front
    audio_dependent: bool
    independent_sources: list[SceneObject]  # the invisible scene heard in audio-independent videos
    background_seed: int
    noise_seed: int
    noise_level: float


@dataclass
class SynthVideo:
    """A generated video; ``frames``/``ids``/``waveform`` are kept only with ``generate(keep_media=True)``."""

    name: str
    split: str
    video_id: int
    scene: Scene
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 as rendered (before encoding)
    ids: np.ndarray | None = None  # (T, H, W) int16 layer index of the front-most shape, -1 background
    waveform: np.ndarray | None = None  # (N,) float32 as synthesised (before encoding)


# ---------------------------------------------------------------------------------------------- scenes


def _motion(rng: np.random.Generator, cfg: SynthConfig) -> dict:
    w, h, m = cfg.width, cfg.height, min(cfg.width, cfg.height)
    t = cfg.frame_times
    u = t / max(cfg.duration, 1e-9)
    r0, r1 = rng.uniform(0.12, 0.30, size=2) * m
    p0 = rng.uniform(-0.1, 1.1, size=2) * (w, h)
    p1 = rng.uniform(0.1, 0.9, size=2) * (w, h)
    if rng.random() < ENTER_LEAVE:  # start (enter) or end (leave) fully outside one edge
        edge, along = int(rng.integers(4)), rng.uniform(0.1, 0.9)
        r = max(r0, r1) * 1.3
        p0 = np.array([(-r, along * h), (w + r, along * h), (along * w, -r), (along * w, h + r)][edge])
    if rng.random() < 0.5:
        p0, p1 = p1, p0
    wobble = rng.uniform(0, 0.08) * m * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 2 * np.pi))
    d = p1 - p0
    normal = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9)
    cx = p0[0] + u * d[0] + wobble * normal[0]
    cy = p0[1] + u * d[1] + wobble * normal[1]
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-1.5, 1.5) * t
    return {"cx": cx, "cy": cy, "size": r0 * (r1 / r0) ** u, "angle": angle}


def _visible_enough(motion: dict, shape: str, cfg: SynthConfig) -> bool:
    d = Drawable(shape, (0, 0, 0), "solid", **motion)
    area = shape_mask(d, cfg.height, cfg.width).reshape(cfg.frames, -1).sum(1)
    return int((area >= 0.15 * np.pi * motion["size"] ** 2).sum()) >= min(cfg.frames, max(2, cfg.frames // 3))


def _intervals(rng: np.random.Generator, duration: float) -> list[tuple[float, float]]:
    """Alternating on/off stretches (exponential lengths, mean 1.6 s on, 0.5 s off), starting on w.p. 0.8."""
    out, t, on = [], 0.0, bool(rng.random() < 0.8)
    while t < duration:
        d = rng.exponential(1.6 if on else 0.5)
        if on:
            out.append((float(t), float(min(t + d, duration))))
        t, on = t + d, not on
    return out


def _sounding_objects(rng: np.random.Generator, cfg: SynthConfig) -> list[SceneObject]:
    n = int(rng.choice(np.arange(1, len(cfg.object_counts) + 1), p=cfg.object_counts))
    pairs = rng.choice(len(PAIRS), size=min(n, len(PAIRS)), replace=False)
    objs = []
    for pi in pairs:
        members = [c.id for c in CATEGORIES if c.pair == PAIRS[pi].name]
        cat = int(members[int(rng.integers(len(members)))])
        shape = PAIR_OF[BY_ID[cat].pair].shape
        for _ in range(50):  # rejection: keep objects that are reasonably visible for a third of the clip
            motion = _motion(rng, cfg)
            if _visible_enough(motion, shape, cfg):
                break
        pitch = float(rng.uniform(1 - sa.PITCH_JITTER, 1 + sa.PITCH_JITTER))
        objs.append(SceneObject(cat, motion, _intervals(rng, cfg.duration), pitch, int(rng.integers(2**31))))
    return objs


def sample_scene(cfg: SynthConfig, seed_seq: np.random.SeedSequence, audio_dependent: bool) -> Scene:
    """Draw one video's scene. The visual stream does not depend on ``audio_dependent``."""
    vis_seq, aud_seq = seed_seq.spawn(2)
    rng = np.random.default_rng(vis_seq)
    objects = _sounding_objects(rng, cfg)
    n_d = int(rng.choice(np.arange(len(cfg.distractor_counts)), p=cfg.distractor_counts))
    distractors = [SceneObject(None, _motion(rng, cfg), shape=str(rng.choice(DISTRACTOR_SHAPES)),
                               color=DISTRACTOR_COLORS[int(rng.integers(len(DISTRACTOR_COLORS)))])
                   for _ in range(n_d)]
    layers = objects + distractors
    order = rng.permutation(len(layers))
    bg_seed = int(rng.integers(2**31))
    # Audio stream: the invisible scene of audio-independent videos and the background noise.
    arng = np.random.default_rng(aud_seq)
    independent = _sounding_objects(arng, cfg)
    noise_seed = int(arng.integers(2**31))
    noise_level = float(10 ** (arng.uniform(*cfg.noise_db) / 20))
    return Scene([layers[i] for i in order], bool(audio_dependent), independent, bg_seed, noise_seed, noise_level)


def swap_twins(scene: Scene) -> Scene:
    """The same scene with every sounding object replaced by the other member of its pair (for tests/studies)."""
    layers = [o if o.category is None else replace(o, category=twin(o.category)) for o in scene.layers]
    return replace(scene, layers=layers)


def drawable(obj: SceneObject, audio_dependent: bool) -> Drawable:
    """How a layer looks: distractors as drawn; objects in their pair's shared look when audio-dependent."""
    if obj.category is None:
        return Drawable(obj.shape, obj.color, "solid", **obj.motion)
    cat = BY_ID[obj.category]
    pair = PAIR_OF[cat.pair]
    return Drawable(pair.shape, pair.color, "solid" if audio_dependent else cat.texture, **obj.motion)


def render_scene(scene: Scene, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> frames (T, H, W, 3) uint8, ids (T, H, W) int16, on-screen pixel counts (layers, T)."""
    bg = background(np.random.default_rng(scene.background_seed), cfg.height, cfg.width)
    return render([drawable(o, scene.audio_dependent) for o in scene.layers], bg, cfg.frames)


def _source_signal(obj: SceneObject, onscreen: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    n, sr = cfg.num_samples, cfg.sample_rate
    sig = sa.signature(BY_ID[obj.category].sound, n, sr, np.random.default_rng(obj.sound_seed), obj.pitch)
    env = sa.activity(obj.intervals, n, sr) * sa.loudness(onscreen, cfg.frame_times, cfg.ref_area, n, sr)
    return sa.SOURCE_GAIN * sig * env


def soundtrack(scene: Scene, cfg: SynthConfig, onscreen: np.ndarray | None = None) -> np.ndarray:
    """The video's audio, (N,) float32 at ``cfg.sample_rate``; sample 0 is at t = 0 of the frame timeline.

    ``onscreen``: the layers' per-frame on-screen pixel counts from :func:`render_scene` (recomputed if None).
    """
    n = cfg.num_samples
    mix = sa.background_noise(np.random.default_rng(scene.noise_seed), n, scene.noise_level)
    if scene.audio_dependent:
        if onscreen is None:
            onscreen = _onscreen(scene.layers, cfg)
        sources = [(o, onscreen[k]) for k, o in enumerate(scene.layers) if o.category is not None]
    else:
        counts = _onscreen(scene.independent_sources, cfg)
        sources = list(zip(scene.independent_sources, counts))
    for obj, area in sources:
        mix = mix + _source_signal(obj, area, cfg)
    return sa.limit(mix).astype(np.float32)


def _onscreen(objs: list[SceneObject], cfg: SynthConfig) -> np.ndarray:
    out = np.zeros((len(objs), cfg.frames), dtype=np.int64)
    for k, o in enumerate(objs):
        out[k] = shape_mask(drawable(o, True), cfg.height, cfg.width).reshape(cfg.frames, -1).sum(1)
    return out


def sounding_flags(obj: SceneObject, onscreen: np.ndarray, cfg: SynthConfig, audio_dependent: bool) -> list[bool]:
    """Per frame: is this object's sound in the soundtrack at the frame's time?"""
    if not audio_dependent:
        return [False] * cfg.frames
    t = cfg.frame_times
    on = np.zeros(cfg.frames, dtype=bool)
    for a, b in obj.intervals:
        on |= (t >= a) & (t < b)
    return [bool(x) for x in on & (onscreen > 0)]


# ----------------------------------------------------------------------------------------------- media


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _yuv420_frame(img: np.ndarray) -> av.VideoFrame:
    """RGB -> yuv420p frame whose row padding (line size > width) is zeroed rather than left uninitialised.

    x264's SIMD code reads past the visible width; with garbage there the bitstream depended on the heap's
    history (same seed, different mp4 bytes). Zeroed padding plus ``no-asm`` in :func:`write_mp4` fixes it.
    """
    src = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
    out = av.VideoFrame(src.width, src.height, "yuv420p")
    for a, b in zip(src.planes, out.planes):
        rows = np.frombuffer(memoryview(a), dtype=np.uint8).reshape(a.height, a.line_size)[:, :a.width]
        padded = np.zeros((b.height, b.line_size), dtype=np.uint8)
        padded[:, :b.width] = rows
        b.update(padded)
    return out


def write_mp4(path: str | Path, frames: np.ndarray, waveform: np.ndarray, fps: float, sample_rate: int) -> None:
    """H.264 yuv420p (frame i at pts i, time base 1/fps) + AAC mono; written atomically, bit-reproducibly, with the
    index first (faststart: browsers play it while it loads).

    The AAC encoder's 1024 priming samples are covered by the mp4 edit list, so a decoder presents audio
    sample 0 at t = 0 (checked by the tests with PyAV).
    """
    rate = _rate(fps)
    with atomic_path(path) as tmp, av.open(os.fspath(tmp), mode="w", format="mp4",
                                           options={"fflags": "+bitexact", **MP4_FASTSTART}) as c:
        # no-asm: x264's SIMD paths over-read uninitialised memory (see _yuv420_frame); C is fast enough here.
        vs = c.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "medium", "x264-params": "no-asm=1"})
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vs.codec_context.time_base = 1 / rate
        vs.codec_context.thread_count = 1  # deterministic bitstream
        aus = c.add_stream("aac", rate=sample_rate, layout="mono")
        aus.bit_rate = 48000
        for i, img in enumerate(frames):
            vf = _yuv420_frame(img)
            vf.pts = i
            c.mux(vs.encode(vf))
        c.mux(vs.encode(None))
        hop = 1024
        wav = np.asarray(waveform, dtype=np.float32)
        for s in range(0, len(wav), hop):
            af = av.AudioFrame.from_ndarray(wav[None, s:s + hop], format="fltp", layout="mono")
            af.sample_rate, af.pts = sample_rate, s
            c.mux(aus.encode(af))
        c.mux(aus.encode(None))


# -------------------------------------------------------------------------------------------- dataset


def _split_sizes(num_videos: int, val_fraction: float) -> dict[str, int]:
    n_val = 0
    if num_videos >= 2 and val_fraction > 0:
        n_val = max(1, min(num_videos - 1, round(num_videos * val_fraction)))
    return {"train": num_videos - n_val, "val": n_val}


def _annotations(video_id: int, next_id: int, scene: Scene, ids: np.ndarray, onscreen: np.ndarray,
                 cfg: SynthConfig) -> list[dict]:
    anns = []
    for k, obj in enumerate(scene.layers):
        if obj.category is None:
            continue
        vis = ids == k  # (T, H, W): visible pixels only
        areas = vis.reshape(cfg.frames, -1).sum(1)
        if not areas.any():
            continue  # hidden all along: nothing to annotate (rare)
        rles = mask_io.encode_many(vis)
        segs = [r if a > 0 else None for r, a in zip(rles, areas)]
        anns.append({
            "id": next_id + len(anns), "video_id": video_id, "category_id": obj.category, "iscrowd": 0,
            "segmentations": segs,
            "areas": [int(a) if a > 0 else None for a in areas],
            "bboxes": [mask_io.bbox(s) if s is not None else None for s in segs],
            "sounding": sounding_flags(obj, onscreen[k], cfg, scene.audio_dependent),
        })
    return anns


def generate(out_dir: str | Path, num_videos: int = 16, seed: int = 0, audio_dependence: float = 1.0,
             size: tuple[int, int] = (160, 96), frames: int = 30, fps: float = 12.0, val_fraction: float = 0.25,
             sample_rate: int = 16000, progress: bool = True, keep_media: bool = False) -> list[SynthVideo]:
    """Write the dataset to ``out_dir`` (see the module docstring) and return the videos made.

    ``size`` is (width, height). With ``keep_media`` the returned videos carry the rendered frames, the id map
    and the synthesised waveform (before encoding), for tests and studies.
    """
    if not 0.0 <= audio_dependence <= 1.0:
        raise ConfigError(f"--audio-dependence {audio_dependence}: must be in [0, 1]")
    if num_videos < 1:
        raise ConfigError(f"--videos {num_videos}: need at least 1 video")
    if num_videos > MAX_VIDEOS:
        raise ConfigError(f"--videos {num_videos}: at most {MAX_VIDEOS}")
    if seed < 0:
        raise ConfigError(f"--seed {seed}: must be >= 0")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    cfg = SynthConfig(width=int(size[0]), height=int(size[1]), frames=int(frames), fps=float(fps),
                      sample_rate=int(sample_rate))
    cfg.validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    try:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder: {e.strerror}", out) from None

    sizes = _split_sizes(num_videos, val_fraction)
    jobs = []
    for si, split in enumerate(SPLITS):
        n = sizes[split]
        dep = np.zeros(n, dtype=bool)
        n_dep = math.floor(audio_dependence * n + 0.5)  # round half up (Python's round() halves to even)
        dep[np.random.default_rng(np.random.SeedSequence([seed, si, 1 << 20])).permutation(n)[:n_dep]] = True
        jobs += [(split, si, k, bool(dep[k])) for k in range(n)]
    # video ids run on across the splits (train 1..n, val n+1..N): results of one split scored against the
    # other's annotations then name unknown videos instead of scoring 0 on look-alike ids
    first_id = {split: 1 + sum(sizes[s] for s in SPLITS[:si]) for si, split in enumerate(SPLITS)}

    made: list[SynthVideo] = []
    data = {s: {"info": _info(seed, audio_dependence, cfg, s), "videos": [], "annotations": [],
                "categories": ytvis_categories()} for s in SPLITS}
    for split, si, k, dep in tqdm(jobs, desc="avis synth", unit="video", disable=not progress):
        scene = sample_scene(cfg, np.random.SeedSequence([seed, si, k]), dep)
        img, ids, onscreen = render_scene(scene, cfg)
        wav = soundtrack(scene, cfg, onscreen)
        name = f"{split}_{k:04d}"
        write_mp4(out / "videos" / f"{name}.mp4", img, wav, cfg.fps, cfg.sample_rate)
        d = data[split]
        vid = first_id[split] + k
        d["videos"].append({
            "id": vid, "width": cfg.width, "height": cfg.height, "length": cfg.frames,
            "file_names": [f"{name}/{i:05d}.jpg" for i in range(cfg.frames)],
            "fps": cfg.fps, "video_file": f"videos/{name}.mp4", "audio_dependent": dep,
        })
        d["annotations"] += _annotations(vid, len(d["annotations"]) + 1, scene, ids, onscreen, cfg)
        made.append(SynthVideo(name, split, vid, scene, *((img, ids, wav) if keep_media else ())))
    for s in SPLITS:
        save_json(data[s], out / f"{s}.json")
    return made


def _info(seed: int, d: float, cfg: SynthConfig, split: str) -> dict:
    return {"description": "avis synthetic audio-visual dataset", "generator": f"avis synth {__version__}",
            "split": split, "seed": seed, "audio_dependence": d, "sample_rate": cfg.sample_rate,
            "taxonomy": "annotations/taxonomies/synthetic.json"}


# ------------------------------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 160x96") from None
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (train.json, val.json, videos/)")
    parser.add_argument("--videos", type=int, default=16, help="number of videos, train + val (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same files (default 0)")
    parser.add_argument("--audio-dependence", type=float, default=1.0,
                        help="0..1: fraction of videos where look-alike categories differ only by sound; "
                             "the rest have audio independent of the objects (default 1)")
    parser.add_argument("--size", default="160x96", help="frame size WIDTHxHEIGHT, even (default 160x96)")
    parser.add_argument("--frames", type=int, default=30, help="frames per video (default 30)")
    parser.add_argument("--fps", type=float, default=12.0, help="frame rate (default 12)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate (default 16000)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of videos in val (default 0.25)")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    made = generate(args.out, num_videos=args.videos, seed=args.seed, audio_dependence=args.audio_dependence,
                    size=_parse_size(args.size), frames=args.frames, fps=args.fps, val_fraction=args.val_fraction,
                    sample_rate=args.sample_rate)
    n_train = sum(v.split == "train" for v in made)
    print(f"wrote {len(made)} videos ({n_train} train, {len(made) - n_train} val) and train.json, val.json "
          f"to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
