#!/usr/bin/env python
"""An independent audio-visual probe set: look-alike objects that only their sound tells apart.

Written apart from ``data_tools/synth.py`` (nothing imported from it) to check the toolkit's "did the sound
help?" answer on data it was not developed on (issue 19, item 2). What differs from ``avis synth``:

* shapes: five-point stars, rings and crosses (three look-alike pairs, six categories), over a smooth
  two-colour gradient backdrop with speckle; a silent grey diamond may wander through (never annotated);
* sounds: repeating FM chirps, amplitude-modulated noise bands and band-limited click trains, each category
  in its own frequency band; 22050 Hz **stereo** (each source panned by its horizontal position);
* video: raw MPEG-4 part 2 video at 24 fps + AAC, written with PyAV; annotations at 6 fps (annotated frame k
  is raw frame 4k, at k / 6 s: the YouTube-VIS JSON's ``fps`` extension, which ``avis build`` maps to video
  time), plain YouTube-VIS fields only -- **no** ``sounding`` flags.

The two members of a pair are drawn pixel-identical (same shape, colour, size, motion law), and a video
holds at most one member of each pair, so the picture tells the pair, never the member. The member is the
category; a category is decided by the sound the object makes while it is visible:

* ``--variant informative``: every object sounds exactly while it is visible (loudness ~ sqrt of its visible
  area, panned by its position), so the soundtrack names the member: only a model that listens can label it.
* ``--variant control``: the pictures and annotations are the same as the informative variant's with the same
  seed (byte-identical JSON), but the soundtrack is that of an independent, invisible scene of the same kind
  (same number of sources, same distributions of categories, activity and loudness). The sound is
  unrelated to the labels: neither arm can do better than chance between the twins.

Everything derives from ``numpy.random.SeedSequence([seed, split, index, stream])``; the member of each
object is drawn from its own stream, so the visuals do not depend on it.

    python scripts/make_av_probe.py --out data/probe_inf --variant informative --train 120 --val 40 --seed 0
    python scripts/make_av_probe.py --out data/probe_ctl --variant control --train 120 --val 40 --seed 0
    avis build --videos data/probe_inf --annotations data/probe_inf/train.json --out data/probe_inf/shards/train
    avis build --videos data/probe_inf --annotations data/probe_inf/val.json --out data/probe_inf/shards/val

Output: ``OUT/videos/<split>_<k>.mp4``, ``OUT/train.json``, ``OUT/val.json`` (``video_file`` relative to OUT),
``OUT/info.json`` (settings and per-category sounds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pycocotools import mask as cocomask

SPLITS = ("train", "val")
# Six categories in three look-alike pairs. The members of a pair look the same; the sound differs:
# (id, name, shape, sound kind, band in Hz). Bands do not overlap, so a band's energy names its category.
CATEGORIES = (
    (1, "star-chirper", "star", "chirp", (400.0, 800.0)),
    (2, "star-hisser", "star", "noise", (4000.0, 5000.0)),
    (3, "ring-clicker", "ring", "clicks", (1500.0, 2200.0)),
    (4, "ring-chirper", "ring", "chirp_down", (2600.0, 3300.0)),
    (5, "cross-hummer", "cross", "noise", (220.0, 340.0)),
    (6, "cross-clicker", "cross", "clicks", (5500.0, 7000.0)),
)
PAIRS = {"star": (1, 2), "ring": (3, 4), "cross": (5, 6)}
COLORS = {"star": (235, 190, 40), "ring": (40, 175, 170), "cross": (200, 60, 160)}
BAND = {c[0]: c[4] for c in CATEGORIES}
KIND = {c[0]: c[3] for c in CATEGORIES}


def twin(category: int) -> int:
    a, b = next(p for p in PAIRS.values() if category in p)
    return b if category == a else a


@dataclass(frozen=True)
class ProbeConfig:
    width: int = 96
    height: int = 64
    frames: int = 18          # annotated frames
    ann_fps: float = 6.0      # their rate; raw video runs at video_fps
    video_fps: int = 24
    sample_rate: int = 22050
    max_objects: int = 3      # at most one per pair

    @property
    def step(self) -> int:
        """Raw frames per annotated frame."""
        return int(round(self.video_fps / self.ann_fps))

    @property
    def raw_frames(self) -> int:
        return self.frames * self.step

    @property
    def duration(self) -> float:
        return self.raw_frames / self.video_fps


@dataclass
class Obj:
    shape: str
    category: int
    x0: float
    y0: float
    vx: float         # px per second
    vy: float
    radius: float
    grow: float       # radius factor per second (log)
    angle0: float
    spin: float       # rad per second
    wobble: float     # px amplitude of a sideways wobble
    wobble_hz: float
    shade: float      # brightness factor, the same for both members


# ------------------------------------------------------------------------------------------- pictures
def _grid(cfg: ProbeConfig):
    yy, xx = np.mgrid[0:cfg.height, 0:cfg.width].astype(np.float32)
    return xx + 0.5, yy + 0.5


def _star_inside(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Five-point star of outer radius r (inner 0.45 r), as a polygon filled by the even-odd rule."""
    k = np.arange(10)
    rad = np.where(k % 2 == 0, r, 0.45 * r)
    px, py = rad * np.sin(k * np.pi / 5), -rad * np.cos(k * np.pi / 5)
    inside = np.zeros(u.shape, bool)
    for i in range(10):
        x1, y1, x2, y2 = px[i], py[i], px[(i + 1) % 10], py[(i + 1) % 10]
        crosses = (y1 > v) != (y2 > v)
        xint = x1 + (v - y1) * (x2 - x1) / (y2 - y1 + 1e-12)
        inside ^= crosses & (u < xint)
    return inside


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, cfg: ProbeConfig) -> np.ndarray:
    xx, yy = _grid(cfg)
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if shape == "star":
        return _star_inside(u, v, r)
    if shape == "ring":
        d = np.hypot(u, v)
        return (d <= r) & (d >= 0.55 * r)
    if shape == "cross":
        w = 0.32 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= r
    raise ValueError(shape)


def _pose(o: Obj, t: float) -> tuple[float, float, float, float]:
    """Centre x, y, radius and angle at time t (s)."""
    nx, ny = -o.vy, o.vx  # sideways wobble, perpendicular to the path
    n = np.hypot(nx, ny) + 1e-9
    w = o.wobble * np.sin(2 * np.pi * o.wobble_hz * t)
    return (o.x0 + o.vx * t + w * nx / n, o.y0 + o.vy * t + w * ny / n, o.radius * np.exp(o.grow * t),
            o.angle0 + o.spin * t)


def _sample_motion(rng: np.random.Generator, cfg: ProbeConfig, shape: str) -> Obj:
    r = rng.uniform(8.0, 14.0)
    # start somewhere (possibly just outside the frame) and drift at 5..25 px/s
    x0 = rng.uniform(-0.1, 1.1) * cfg.width
    y0 = rng.uniform(-0.1, 1.1) * cfg.height
    speed, heading = rng.uniform(5.0, 25.0), rng.uniform(0, 2 * np.pi)
    # aim roughly through the frame so objects enter and leave rather than sit off-screen
    to_centre = np.arctan2(cfg.height / 2 - y0, cfg.width / 2 - x0)
    heading = to_centre + 0.6 * (heading - np.pi)
    return Obj(shape=shape, category=0, x0=x0, y0=y0, vx=speed * np.cos(heading), vy=speed * np.sin(heading),
               radius=r, grow=rng.uniform(-0.12, 0.12), angle0=rng.uniform(0, 2 * np.pi),
               spin=rng.uniform(-1.5, 1.5), wobble=rng.uniform(0, 3), wobble_hz=rng.uniform(0.3, 1.2),
               shade=rng.uniform(0.85, 1.1))


def _backdrop(rng: np.random.Generator, cfg: ProbeConfig) -> np.ndarray:
    xx, yy = _grid(cfg)
    a, b = rng.uniform(40, 120, 3), rng.uniform(40, 120, 3)
    ang = rng.uniform(0, 2 * np.pi)
    g = ((np.cos(ang) * xx / cfg.width + np.sin(ang) * yy / cfg.height) % 1.0)[..., None]
    img = a * (1 - g) + b * g + rng.normal(0, 6, (cfg.height, cfg.width, 1))
    return np.clip(img, 0, 255).astype(np.float32)


@dataclass
class Scene:
    objects: list[Obj]        # annotated objects, in depth order (later ones in front)
    distractor: Obj | None    # silent, never annotated, drawn behind the objects


def sample_scene(cfg: ProbeConfig, seed: int, split: int, index: int) -> tuple[Scene, np.ndarray]:
    """The visual scene and backdrop of one video; members of pairs come from their own stream."""
    vis = np.random.default_rng(np.random.SeedSequence([seed, split, index, 0]))
    who = np.random.default_rng(np.random.SeedSequence([seed, split, index, 1]))
    n = int(vis.integers(1, cfg.max_objects + 1))
    shapes = list(vis.permutation(sorted(PAIRS))[:n])
    objs = []
    for shape in shapes:
        for _ in range(20):  # keep objects that are visible in at least a third of the annotated frames
            o = _sample_motion(vis, cfg, shape)
            if _visible_frames(o, cfg) >= cfg.frames // 3:
                break
        objs.append(o)
    for o in objs:
        o.category = PAIRS[o.shape][int(who.integers(2))]
    distractor = _sample_motion(vis, cfg, "diamond") if vis.random() < 0.5 else None
    return Scene(objs, distractor), _backdrop(vis, cfg)


def _visible_frames(o: Obj, cfg: ProbeConfig) -> int:
    return sum(bool(shape_mask(o.shape, *_pose(o, k / cfg.ann_fps), cfg).any()) for k in range(cfg.frames))


def render(scene: Scene, bg: np.ndarray, cfg: ProbeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Raw frames (F x H x W x 3 uint8) and the visible-object index map (F x H x W int8, -1 = none)."""
    frames = np.empty((cfg.raw_frames, cfg.height, cfg.width, 3), np.uint8)
    ids = np.full((cfg.raw_frames, cfg.height, cfg.width), -1, np.int8)
    for f in range(cfg.raw_frames):
        t = f / cfg.video_fps
        img = bg.repeat(3, axis=2) if bg.shape[2] == 1 else bg.copy()
        if scene.distractor is not None:
            m = shape_mask("diamond", *_pose(scene.distractor, t), cfg)
            img[m] = 150.0
        for k, o in enumerate(scene.objects):
            m = shape_mask(o.shape, *_pose(o, t), cfg)
            img[m] = np.clip(np.array(COLORS[o.shape], np.float32) * o.shade, 0, 255)
            ids[f][m] = k
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, ids


# --------------------------------------------------------------------------------------------- sounds
def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def source(category: int, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS signature of a category: its kind of sound inside its band, with per-object variation."""
    lo, hi = BAND[category]
    t = np.arange(n) / sr
    kind = KIND[category]
    if kind in ("chirp", "chirp_down"):
        period = rng.uniform(0.15, 0.3)
        ph = (t / period + rng.random()) % 1.0           # position inside each sweep
        if kind == "chirp_down":
            ph = 1 - ph
        freq = lo + (hi - lo) * ph
        x = np.sin(2 * np.pi * np.cumsum(freq) / sr)
    elif kind == "noise":
        rate = rng.uniform(3.0, 8.0)                     # amplitude modulation
        x = _band_noise(rng, n, sr, lo, hi) * (0.6 + 0.4 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)))
    elif kind == "clicks":
        rate = rng.uniform(8.0, 16.0)                    # clicks per second: decaying bursts of band noise
        since = (t * rate + rng.random()) % 1.0 / rate
        x = _band_noise(rng, n, sr, lo, hi) * np.exp(-since / 0.012)
    else:
        raise ValueError(kind)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float64)


def _tracks(objs: list[Obj], cfg: ProbeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per object, per raw frame: visible area (px) and horizontal position in [0, 1] of an object drawn alone
    (occlusion by other objects does not silence a source)."""
    areas = np.zeros((len(objs), cfg.raw_frames))
    pans = np.full((len(objs), cfg.raw_frames), 0.5)
    for k, o in enumerate(objs):
        for f in range(cfg.raw_frames):
            m = shape_mask(o.shape, *_pose(o, f / cfg.video_fps), cfg)
            areas[k, f] = m.sum()
            if areas[k, f]:
                pans[k, f] = np.clip(np.nonzero(m)[1].mean() / (cfg.width - 1), 0, 1)
    return areas, pans


def _per_sample(values: np.ndarray, cfg: ProbeConfig, n: int) -> np.ndarray:
    """Raw-frame values held for each frame's duration, smoothed over 20 ms (no clicks at the edges)."""
    idx = np.minimum((np.arange(n) * cfg.video_fps // cfg.sample_rate).astype(int), cfg.raw_frames - 1)
    x = values[idx]
    k = max(1, int(0.02 * cfg.sample_rate))
    return np.convolve(np.pad(x, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k, mode="valid")


def mix(objs: list[Obj], cfg: ProbeConfig, rng: np.random.Generator) -> np.ndarray:
    """Stereo soundtrack (2 x N float32): each object's signature while visible, loudness ~ sqrt(area /
    reference area), panned by position; over a quiet noise floor."""
    n = int(round(cfg.duration * cfg.sample_rate))
    out = rng.normal(0, 0.003, (2, n))
    if objs:
        areas, pans = _tracks(objs, cfg)
        ref = np.pi * 11.0 ** 2 * 0.6
        for k, o in enumerate(objs):
            gain = 0.12 * np.sqrt(_per_sample(areas[k], cfg, n) / ref)
            pan = _per_sample(pans[k], cfg, n)
            s = source(o.category, n, cfg.sample_rate, rng) * gain
            out[0] += s * np.cos(pan * np.pi / 2)
            out[1] += s * np.sin(pan * np.pi / 2)
    peak = np.abs(out).max()
    if peak > 0.95:
        out *= 0.95 / peak
    return out.astype(np.float32)


def soundtrack(scene: Scene, cfg: ProbeConfig, variant: str, seed: int, split: int, index: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, split, index, 2]))
    if variant == "informative":
        return mix(scene.objects, cfg, rng)
    if variant == "control":
        # an invisible scene drawn from streams no visual or label draw uses: same kind of sound, unrelated
        ghost, _ = sample_scene(cfg, seed + 7_919_993, split, index)
        return mix(ghost.objects, cfg, rng)
    raise ValueError(f"unknown variant {variant!r} (informative or control)")


# --------------------------------------------------------------------------------------------- writing
def _yuv(img: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")


def write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, cfg: ProbeConfig) -> None:
    """MPEG-4 part 2 (near-lossless quantiser) at video_fps + AAC stereo at sample_rate, via a temp name."""
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as c:
        vs = c.add_stream("mpeg4", rate=Fraction(cfg.video_fps))
        vs.width, vs.height, vs.pix_fmt = cfg.width, cfg.height, "yuv420p"
        vs.codec_context.time_base = Fraction(1, cfg.video_fps)
        vs.codec_context.qmin = vs.codec_context.qmax = 2
        vs.codec_context.thread_count = 1
        aus = c.add_stream("aac", rate=cfg.sample_rate, layout="stereo")
        aus.bit_rate = 96000
        for i, img in enumerate(frames):
            vf = _yuv(img)
            vf.pts = i
            c.mux(vs.encode(vf))
        c.mux(vs.encode(None))
        hop = 1024
        for s in range(0, audio.shape[1], hop):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, s:s + hop]), format="fltp",
                                            layout="stereo")
            af.sample_rate, af.pts = cfg.sample_rate, s
            c.mux(aus.encode(af))
        c.mux(aus.encode(None))
    os.replace(tmp, path)


def _rle(m: np.ndarray) -> dict:
    r = cocomask.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def annotations(video_id: int, next_id: int, scene: Scene, ids: np.ndarray, cfg: ProbeConfig) -> list[dict]:
    anns = []
    ann_ids = ids[::cfg.step][:cfg.frames]   # annotated frame k = raw frame k * step, at k / ann_fps s
    for k, o in enumerate(scene.objects):
        vis = ann_ids == k
        area = vis.reshape(cfg.frames, -1).sum(1)
        if not area.any():
            continue
        segs, boxes = [], []
        for f in range(cfg.frames):
            if area[f]:
                ys, xs = np.nonzero(vis[f])
                segs.append(_rle(vis[f]))
                boxes.append([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                              int(ys.max() - ys.min() + 1)])
            else:
                segs.append(None)
                boxes.append(None)
        anns.append({"id": next_id + len(anns), "video_id": video_id, "category_id": o.category, "iscrowd": 0,
                     "segmentations": segs, "areas": [int(a) if a else None for a in area], "bboxes": boxes})
    return anns


def generate(out: str | Path, variant: str = "informative", train: int = 120, val: int = 40, seed: int = 0,
             cfg: ProbeConfig = ProbeConfig()) -> dict:
    if variant not in ("informative", "control"):
        raise ValueError(f"unknown variant {variant!r} (informative or control)")
    if cfg.video_fps % cfg.ann_fps:
        raise ValueError("video_fps must be a multiple of ann_fps (annotated frames are raw frames)")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    counts = {}
    for si, (split, n) in enumerate(zip(SPLITS, (train, val))):
        videos, anns = [], []
        for i in range(n):
            vid = i + 1
            scene, bg = sample_scene(cfg, seed, si, i)
            frames, ids = render(scene, bg, cfg)
            audio = soundtrack(scene, cfg, variant, seed, si, i)
            name = f"{split}_{i:04d}.mp4"
            write_mp4(out / "videos" / name, frames, audio, cfg)
            videos.append({"id": vid, "width": cfg.width, "height": cfg.height, "length": cfg.frames,
                           "fps": cfg.ann_fps, "video_file": f"videos/{name}"})
            anns += annotations(vid, len(anns) + 1, scene, ids, cfg)
        gt = {"info": {"generator": "scripts/make_av_probe.py", "split": split, "seed": seed},
              "videos": videos, "annotations": anns,
              "categories": [{"id": c[0], "name": c[1], "supercategory": c[2]} for c in CATEGORIES]}
        tmp = out / f".{split}.json.tmp"
        tmp.write_text(json.dumps(gt))
        os.replace(tmp, out / f"{split}.json")
        counts[split] = {"videos": n, "instances": len(anns)}
    info = {"variant": variant, "seed": seed, "config": asdict(cfg), "counts": counts,
            "categories": [{"id": c[0], "name": c[1], "shape": c[2], "sound": c[3], "band_hz": list(c[4])}
                           for c in CATEGORIES]}
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


def band_energy(wave: np.ndarray, sr: int, band: tuple[float, float]) -> float:
    """Mean power of a mono waveform inside a frequency band (for checks of the audio-label relation)."""
    spec = np.abs(np.fft.rfft(wave)) ** 2
    f = np.fft.rfftfreq(len(wave), 1 / sr)
    return float(spec[(f >= band[0]) & (f <= band[1])].sum() / max(len(wave), 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=("informative", "control"), default="informative")
    p.add_argument("--train", type=int, default=120, help="training videos (default 120)")
    p.add_argument("--val", type=int, default=40, help="validation videos (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=ProbeConfig.frames, help="annotated frames per video")
    p.add_argument("--size", default="96x64", help="WIDTHxHEIGHT (default 96x64)")
    p.add_argument("--sample-rate", type=int, default=ProbeConfig.sample_rate)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if min(w, h) < 16 or args.frames < 1 or args.train < 0 or args.val < 0:
        p.error("need --size at least 16x16, --frames >= 1, --train/--val >= 0")
    cfg = ProbeConfig(width=w, height=h, frames=args.frames, sample_rate=args.sample_rate)
    info = generate(args.out, args.variant, args.train, args.val, args.seed, cfg)
    print(json.dumps(info["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
