"""``avis build``: raw videos (+ YTVIS JSON) -> synchronised WebDataset shards + ``manifest.json``.

Three input forms (docs/data.md):

1. ``--videos DIR`` alone: every video file under DIR (sorted by path), frames every 1/``--fps`` s;
2. ``--annotations FILE`` whose videos give ``video_file`` (relative to DIR) and ``fps`` or ``frame_times``;
3. ``--annotations FILE`` whose videos give ``file_names`` (JPEG frames under DIR) and an ``audio_file``.

One shard sample per video (key = zero-padded video id)::

    KEY.json          metadata, frame times, instances (RLE masks at the stored frame size, original category ids)
    KEY.audio.flac    16 kHz mono int16 FLAC on the frame timeline (silence if the video has no sound)
    KEY.00000.jpg ... one JPEG per frame, in time order

Determinism: each video's members are serialised to tar blocks by the code that encodes it (fixed headers:
mtime 0, uid/gid 0, mode 0644, ustar), shards are cut by size in input order and are the concatenation of
their videos' blocks, so the bytes do not depend on ``--workers`` or ``--ray``. Resumability: shards are
written under a temporary name and renamed when complete; ``.build-state.json`` records the finished shards,
and ``--resume`` continues after the last one.

Where the per-video work runs: in this process (``--workers 1``), in a pool of processes (``--workers N``), or
as Ray tasks (``--ray [ADDRESS]``, :func:`_run_ray`), which write each video's blocks to ``.build-parts/`` of the
output folder (a shared file system on a cluster); shard tasks join them and the driver commits the shards to
the state in order, so that a killed driver resumes from the parts already written.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tarfile
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from avis import __version__
from avis.errors import ConfigError, InputError
from avis.io import masks as mask_io
from avis.io.atomic import atomic_write_json
from avis.io.ytvis import check_relpath, load_json, normalize_annotations
from data_tools.decode import check_fps

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SAMPLE_RATE = 16_000
STATE_FILE = ".build-state.json"
PARTS_DIR = ".build-parts"  # per-video tar blocks written by Ray tasks, until their shard is committed
VIDEO_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv",
                    ".wmv", ".3gp", ".ogv"}
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")  # --audio-dir, in this order
EXIT_SOME_FAILED = 3
JPEG_THREADS = 2
LOOKAHEAD = 1  # --workers 1: videos decoded ahead of the one being finished, in threads of this process
MAX_KEY_CHARS = 80  # a member name (key + ".00000.jpg") must fit the 100 characters of a ustar header


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--videos", required=True, help="folder of the videos (or of the JPEG frame folders)")
    p.add_argument("--annotations", help="YTVIS JSON (optional; see docs/data.md for the builder extensions)")
    p.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar and manifest.json")
    p.add_argument("--fps", type=float, default=6.0,
                   help="frame rate to sample raw videos at, and the rate of JPEG frames without fps (default 6)")
    p.add_argument("--max-size", type=int, default=None, help="scale frames so the longer side is at most this")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default 1); with --ray and no address, the CPUs of the local Ray "
                        "instance (default: all cores). The output does not depend on it")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the per-video work as Ray tasks: without ADDRESS on a local Ray instance, with 'auto' "
                        "or 'ray://host:port' on a cluster (--out on a file system all nodes share)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted build in --out")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the stored frames (default 90)")
    p.add_argument("--shard-size", type=int, default=256 << 20, help="target shard size in bytes (default 256 MiB)")
    p.add_argument("--require-audio", action="store_true", help="treat a video without sound as a failed input")
    p.add_argument("--audio-dir", default=None,
                   help="JPEG-frame videos without 'audio_file': their sound is DIR/<frame folder>.wav (or .flac, "
                        ".mp3, .m4a, ...), as in AVISeg's WAVAudios/ (docs/data.md)")


# ----------------------------------------------------------------------------------------------------------
# jobs: one picklable dict per input video, in the output order


def _key(video_id) -> str:
    if isinstance(video_id, int) and not isinstance(video_id, bool) and video_id >= 0:
        return f"{video_id:08d}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(video_id)) or "_"


def _scan_videos(root: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS:
                files.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(files, key=lambda s: s.replace(os.sep, "/"))


def make_jobs(videos_dir: Path, annotations: str | None, fps: float) -> tuple[list[dict], list[dict]]:
    """-> (jobs, categories sorted by id)."""
    if annotations is None:
        files = _scan_videos(videos_dir)
        if not files:
            raise InputError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) found", videos_dir)
        return [{"video_id": i + 1, "kind": "video", "source": f, "fps": fps, "times": None, "annotations": None,
                 "video": None} for i, f in enumerate(files)], []
    data = load_json(annotations)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("videos", "categories")):
        raise InputError("not a YTVIS annotation file (needs 'videos' and 'categories' lists)", annotations)
    cats = []
    for c in data["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            raise InputError(f"category without an integer id: {c!r:.80}", annotations)
        cats.append(c)
    cats.sort(key=lambda c: c["id"])
    by_video: dict = {}
    ann_ids: set = set()
    for a in data.get("annotations") or []:
        if isinstance(a, dict):
            if isinstance(a.get("id"), (int, str)):  # an annotation id is the instance's track id in the shards
                if a["id"] in ann_ids:
                    raise InputError(f"duplicate annotation id {a['id']}", annotations)
                ann_ids.add(a["id"])
            by_video.setdefault(a.get("video_id"), []).append(a)
    jobs = []
    seen = set()
    for v in data["videos"]:
        if not isinstance(v, dict) or "id" not in v:
            raise InputError(f"video entry without an id: {v!r:.80}", annotations)
        if v["id"] in seen:
            raise InputError(f"duplicate video id {v['id']}", annotations)
        seen.add(v["id"])
        # media paths come from the file: one outside --videos would pull any file of this machine into the shards
        paths = [(k, v[k]) for k in ("video_file", "audio_file") if v.get(k)]
        paths += [("file_names", n) for n in v.get("file_names") or []]
        for what, p in paths:
            if (msg := check_relpath(p)) is not None:
                raise InputError(f"video {v['id']}: '{what}' {msg}", annotations)
        kind = "video" if v.get("video_file") else "frames"
        source = v.get("video_file") or (v.get("file_names") or [None])[0]
        times = v.get("frame_times")
        jobs.append({"video_id": v["id"], "kind": kind, "source": source, "fps": v.get("fps"), "times": times,
                     "annotations": by_video.get(v["id"], []), "video": v})
    jobs.sort(key=lambda j: (not isinstance(j["video_id"], int), j["video_id"] if isinstance(j["video_id"], int)
                             else str(j["video_id"])))
    keys: dict = {}
    for j in jobs:  # shard keys must be unique, or the reader would merge two videos
        key = _key(j["video_id"])
        if len(key) > MAX_KEY_CHARS:
            raise InputError(f"video id {str(j['video_id'])[:20]}... is {len(key)} characters long; shard keys "
                             f"hold at most {MAX_KEY_CHARS}", annotations)
        other = keys.setdefault(key, j["video_id"])
        if other != j["video_id"]:
            raise InputError(f"video ids {other!r} and {j['video_id']!r} map to the same shard key", annotations)
    return jobs, cats


# ----------------------------------------------------------------------------------------------------------
# worker: one job -> the tar blocks of its shard sample (runs in the pool or a Ray task; no shared state)


def media_path(root: str | os.PathLike, rel: str) -> Path:
    """``root / rel``, refused when its real path (symbolic links resolved) is outside ``root``'s real path.

    Paths in annotation files are checked for '..' and absolute names (:func:`check_relpath`); this checks what
    the file system makes of them: a link inside the folder that points at ``/etc/passwd`` or at another
    user's files would otherwise be read into the shards.
    """
    path = Path(root) / rel
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise InputError(f"a symbolic link to {real}, outside {root}; refusing to read it", path)
    return path


def _resize_mask(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize by index gathering (deterministic, no interpolation library)."""
    if m.shape == (h, w):
        return m
    rows = np.minimum((np.arange(h) + 0.5) * m.shape[0] / h, m.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(w) + 0.5) * m.shape[1] / w, m.shape[1] - 1).astype(np.int64)
    return m[rows[:, None], cols[None, :]]


def _frame_times(job: dict, default_fps: float) -> tuple[np.ndarray | None, float | None]:
    """Annotated forms: the frame times the JSON gives (or k / fps for its length). None for raw videos."""
    v = job["video"]
    if v is None:
        return None, job["fps"]
    given_fps = None
    if v.get("fps") is not None:
        try:
            given_fps = check_fps(v["fps"], f"video {v['id']}: 'fps'")
        except InputError as e:
            raise InputError(e.message) from None  # the annotation's problem: named by the caller
    if job["times"] is not None:
        t = np.asarray(job["times"], dtype=np.float64)
        if t.ndim != 1 or len(t) == 0 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise InputError(f"video {v['id']}: frame_times must be increasing finite seconds")
        return t, given_fps
    fps = given_fps or float(default_fps)
    n = v.get("length") or len(v.get("file_names") or [])
    if not n:
        lens = [len(a.get("segmentations") or []) for a in job["annotations"]]
        n = max(lens, default=0)
    if not n:
        raise InputError(f"video {v['id']}: no length, file_names or frame_times to know its frames")
    return np.arange(int(n), dtype=np.float64) / fps, fps


@functools.cache
def _torch_jpeg_encoder():
    """torchvision's JPEG encoder op (libjpeg-turbo, the same bytes as Pillow's), or None where it is gone.

    Preferred because it releases the GIL while encoding: Pillow's encoder holds it, so its encoding thread
    stalled the decoding loop instead of running beside it. The op's library (``image_stable``) is loaded
    without importing the ``torchvision`` package, whose ``__init__`` imports its models and with them
    ``torch._dynamo``: 1.6 s of CPU at the start of every build process (the ``torchvision.io.encode_jpeg``
    function only checks its input and calls the same op). torchvision 0.29 marks its image codecs as
    deprecated (superseded by TorchCodec, not installable here); ``torchvision.io`` then Pillow are the
    fallbacks.
    """
    import importlib.machinery
    import importlib.util

    import torch

    try:
        spec = importlib.util.find_spec("torchvision")
        finder = importlib.machinery.FileFinder(
            spec.submodule_search_locations[0],
            (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
        torch.ops.load_library(finder.find_spec("image_stable").origin)
        op = torch.ops.image.encode_jpeg
        return lambda chw, quality: op(chw, quality)
    except (AttributeError, ImportError, OSError, RuntimeError, TypeError):
        pass
    try:
        from torchvision.io import encode_jpeg
    except ImportError:
        return None
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
    return lambda chw, quality: encode_jpeg(chw, quality=quality)


def _encode_jpeg(img, quality: int) -> bytes:
    """uint8 H x W x 3 RGB (or a function returning it, converted here in the encoding thread) -> JPEG bytes."""
    if callable(img):
        img = img()
    encode = _torch_jpeg_encoder()
    if encode is not None:
        import torch

        # a C x H x W view of the H x W x C array: torchvision permutes it back without a copy
        return encode(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), quality).numpy().tobytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@functools.cache
def _jpeg_pool() -> ThreadPoolExecutor:
    """The JPEG threads of this process, shared by the videos it encodes (one pool per video cost a thread
    start per video, and two videos in flight share the cores anyway)."""
    return ThreadPoolExecutor(max_workers=JPEG_THREADS, thread_name_prefix="avis-jpeg")


def _encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    # int16 full scale is 32768 so that reading back as float (x / 32768) returns the quantised input
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _audio_of_frames(job: dict, settings: dict, ctx: dict) -> tuple[Path | None, str | None]:
    """A JPEG-frame video's sound: its ``audio_file``, else (``--audio-dir``) ``DIR/<frame folder>.<ext>``.
    -> (path to read, the name stored as ``audio_source``)."""
    v = job["video"]
    if v.get("audio_file"):
        return media_path(ctx["root"], v["audio_file"]), v["audio_file"]
    if ctx.get("audio_root") is None:
        return None, None
    folder = str(job["source"]).replace("\\", "/").split("/")[0]
    for ext in AUDIO_EXTENSIONS:
        if os.path.lexists(os.path.join(ctx["audio_root"], folder + ext)):
            return media_path(ctx["audio_root"], folder + ext), folder + ext
    return None, None


def _read_input(job, settings, ctx, src, times, fps, on_frame):
    """-> (frames, audio, has_audio, (orig_w, orig_h), duration, extra metadata)."""
    from data_tools import decode as dec

    if job["kind"] == "video":
        d = dec.decode(src, times=times, fps=None if times is not None else fps, max_size=settings["max_size"],
                       sample_rate=SAMPLE_RATE, on_frame=on_frame, keep_frames=False, lazy_rgb=True)
        if times is not None and times[-1] >= d.duration - 1e-6:
            raise InputError(f"annotated frame times reach {times[-1]:.3f} s but the video lasts "
                             f"{d.duration:.3f} s", src)
        extra = {"shown_times": [round(float(t), 6) for t in d.shown_times], "rotation": d.rotation,
                 "audio_source": job["source"] if d.has_audio else None}
        return d.frames, d.audio, d.has_audio, (d.width, d.height), d.duration, extra
    v = job["video"]
    names = v.get("file_names") or []
    if len(names) != len(times):
        raise InputError(f"video {v['id']}: {len(names)} file_names for {len(times)} frame times")
    paths = [media_path(ctx["root"], n) for n in names]
    frames = [dec.read_image(p, settings["max_size"]) for p in paths]
    if len({f.shape for f in frames}) != 1:
        raise InputError(f"video {v['id']}: its frames do not all have the same size", paths[0])
    period = 1.0 / fps if fps else (float(np.median(np.diff(times))) if len(times) > 1 else 1.0)
    duration = float(times[-1] + period)
    n = int(round(duration * SAMPLE_RATE))
    audio = np.zeros(n, np.float32)
    audio_path, audio_name = _audio_of_frames(job, settings, ctx)
    if audio_path is not None:
        a = dec.decode_audio_file(audio_path, SAMPLE_RATE)[:n]
        audio[:len(a)] = a
    extra = {"shown_times": [round(float(t), 6) for t in times], "rotation": 0, "audio_source": audio_name}
    return np.stack(frames), audio, audio_path is not None, dec.read_image_size(paths[0]), duration, extra


def process(job: dict, settings: dict, ctx: dict) -> dict:
    """Decode one input and encode its sample. -> {"blocks": tar blocks, "size", "warnings", counts}.

    ``ctx``: where this process finds the inputs (``root``: the videos folder, ``audio_root``: --audio-dir);
    not part of ``settings``, which are the same wherever the work runs.
    """
    key = _key(job["video_id"])
    times, fps = _frame_times(job, settings["fps"])
    if not job["source"]:
        raise InputError(f"video {job['video_id']}: no video_file or file_names")
    check_masks(job, settings["annotations"])
    src = media_path(ctx["root"], job["source"])
    q = settings["jpeg_quality"]
    # frames are converted to RGB and encoded in other threads (the codecs release the GIL) while decoding goes on
    pool = _jpeg_pool()
    jpegs: dict = {}

    def encode(i, img):
        jpegs[i] = pool.submit(_encode_jpeg, img, q)

    try:
        frames, audio, has_audio, (orig_w, orig_h), duration, extra = _read_input(job, settings, ctx, src, times,
                                                                                   fps, encode)
        sample = _sample(job, settings, key, src, times, fps, frames, audio, has_audio, orig_w, orig_h,
                         duration, extra)
        for t in range(len(frames)):
            if t not in jpegs:
                encode(t, frames[t])
        files = sample.pop("files") + [(f"{key}.{t:05d}.jpg", jpegs[t].result()) for t in range(len(frames))]
    except BaseException:
        for f in jpegs.values():
            f.cancel()  # those running end on their own and are dropped
        raise
    sample["blocks"] = tar_blocks(files)
    sample["size"] = sum(map(len, sample["blocks"]))
    return sample


def check_masks(job: dict, annotations: str | None) -> None:
    """Before anything is decoded: every RLE of the video's annotations must cover exactly its own ``size``
    (h x w pixels). pycocotools decodes counts without bounds checks, so counts that run past h * w write past
    the mask's buffer in every later reader (``avis score`` refuses them, training did not); counts that stop
    short leave pixels undefined. Compressed strings are decoded with the scorer's kernel
    (:class:`avis.evaluation.rle_kernels.RleTable`); the rest is :func:`avis.io.ytvis.check_segmentation`'s.
    Errors name the annotation file."""
    from avis.io.ytvis import check_segmentation

    where, counts = [], []
    for a in job["annotations"] or []:
        segs = a.get("segmentations") if isinstance(a, dict) else None
        for t, seg in enumerate(segs if isinstance(segs, list) else []):
            if (msg := check_segmentation(seg, None, None)) is not None:
                raise InputError(f"video {job['video_id']} annotation {a.get('id')} frame {t}: {msg}", annotations)
            if isinstance(seg, dict) and isinstance(seg["counts"], str):
                where.append((a.get("id"), t, seg["size"]))
                counts.append(seg["counts"])
    if not counts:
        return
    from avis.evaluation.rle_kernels import RleTable

    totals = RleTable(counts, need_intervals=np.zeros(len(counts), np.bool_)).totals
    expected = np.array([h * w for _, _, (h, w) in where], dtype=np.int64)
    bad = np.flatnonzero(totals != expected)
    if len(bad):
        aid, t, (h, w) = where[bad[0]]
        raise InputError(f"video {job['video_id']} annotation {aid} frame {t}: RLE counts cover "
                         f"{int(totals[bad[0]])} pixels, not {h}x{w} = {h * w}", annotations)


def _sample(job, settings, key, src, times, fps, frames, audio, has_audio, orig_w, orig_h, duration, extra):
    """Validate the annotations against the decoded frames; metadata and audio members of the sample."""
    warnings = []
    meta = {"video_id": job["video_id"], "key": key, "source": job["source"], "sample_rate": SAMPLE_RATE,
            "audio_encoding": "flac-pcm16", "format_version": FORMAT_VERSION, **extra}
    if not has_audio:
        if settings["require_audio"]:
            raise InputError("no sound stream (--require-audio)", src)
        warnings.append(f"{Path(settings['videos']) / job['source']}: no sound stream; storing silence "
                        "(has_audio = false)")
    T, H, W = frames.shape[:3]
    if T == 0:
        raise InputError("no frames at the requested times", src)
    frame_times = times if times is not None else np.arange(T, dtype=np.float64) / fps
    instances = []
    if job["video"] is not None:
        v = dict(job["video"])
        jw, jh = v.get("width"), v.get("height")
        if (jw, jh) != (None, None) and (jw, jh) != (orig_w, orig_h):
            raise InputError(f"video {v['id']}: annotations are {jw}x{jh} but the frames are {orig_w}x{orig_h}", src)
        v.setdefault("width", orig_w)
        v.setdefault("height", orig_h)
        v["length"] = T
        anns = normalize_annotations({"videos": [v], "annotations": [dict(a) for a in job["annotations"]],
                                      "categories": []})["annotations"]
        cat_ids = set(settings["category_ids"])
        for a in anns:
            segs = a["segmentations"]
            if len(segs) != T:
                raise InputError(f"video {v['id']} annotation {a.get('id')}: {len(segs)} segmentations for "
                                 f"{T} frames")
            if a.get("category_id") not in cat_ids:
                raise InputError(f"video {v['id']} annotation {a.get('id')}: unknown category_id "
                                 f"{a.get('category_id')}")
            if (W, H) != (orig_w, orig_h):
                segs = [None if s is None else mask_io.encode(_resize_mask(mask_io.decode(s), H, W)) for s in segs]
            inst = {"id": a.get("id"), "category_id": a["category_id"], "iscrowd": int(a.get("iscrowd", 0)),
                    "segmentations": segs}
            snd = a.get("sounding")
            if isinstance(snd, list) and len(snd) == T:  # AVISeg-style flags: the audio supervision reads them
                inst["sounding"] = [bool(f) for f in snd]  # null (unknown) -> not sounding
            instances.append(inst)
    meta.update(num_frames=T, width=W, height=H, orig_width=orig_w, orig_height=orig_h, fps=fps,
                frame_times=[float(t) for t in frame_times], duration=round(float(duration), 6),
                has_audio=bool(has_audio), num_samples=int(len(audio)), instances=instances)
    files = [(f"{key}.json", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
             (f"{key}.audio.flac", _encode_flac(audio, SAMPLE_RATE))]
    return {"files": files, "warnings": warnings, "num_frames": T, "num_instances": len(instances),
            "has_audio": bool(has_audio)}


def _shown(path: str, settings: dict, ctx: dict) -> str:
    """A path under the folder the worker read (absolute on Ray) as the user named it (``--videos`` as given),
    so that messages, and the manifest's failed list, do not depend on where the work ran."""
    for root, given in ((ctx["root"], settings["videos"]), (ctx.get("audio_root"), settings.get("audio_dir"))):
        if root and given and (path == root or path.startswith(root.rstrip(os.sep) + os.sep)):
            return os.path.join(given, os.path.relpath(path, root))
    return path


def _work(arg) -> tuple[int, dict | None, str | None]:
    """Pool / Ray entry point: never raises, so that one bad input cannot stop the build."""
    index, job, settings, ctx = arg
    try:
        return index, process(job, settings, ctx), None
    except InputError as e:
        # the source is reported beside the reason; name the file only when it is another one (a frame)
        same = e.path is None or e.path == os.fspath(Path(ctx["root"]) / (job["source"] or ""))
        return index, None, e.message if same else f"{_shown(e.path, settings, ctx)}: {e.message}"
    except Exception as e:  # noqa: BLE001 - a decoder or library failing on odd input is still that input's failure
        log.debug("input %s failed:\n%s", job.get("source"), traceback.format_exc())
        return index, None, f"internal error: {type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------------------
# shard writing: a sample is the tar blocks of its members; a shard is its samples' blocks and the end marker


def tar_blocks(files: list[tuple[str, bytes]]) -> list[bytes]:
    """The tar blocks of a sample's members, as ``tarfile`` writes them (ustar headers with mtime 0, uid/gid 0,
    no user/group names, mode 0644; data padded to 512 bytes), so that the shards any process joins from them
    are byte-identical. Names are ASCII keys, at most ``MAX_KEY_CHARS`` + 10 characters."""
    out = []
    for name, data in files:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
        info.uname = info.gname = ""
        out.append(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        out.append(data)
        if len(data) % tarfile.BLOCKSIZE:
            out.append(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))
    return out


def _tmp_shard_name(name: str) -> str:
    return f".{name[:-4]}-{secrets.token_hex(4)}.tar.tmp"  # unique: a retried Ray task never meets an old one


_TMP_SHARD = re.compile(r"\.shard-\d{6}(-[0-9a-f]+)?\.tar\.tmp")


class ShardWriter:
    """Writes one shard under a temporary name; :meth:`close` ends the archive, fsyncs and renames it."""

    def __init__(self, out: Path, index: int):
        self.name = f"shard-{index:06d}.tar"
        self.path = Path(out) / self.name
        self.tmp = Path(out) / _tmp_shard_name(self.name)
        self.f = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.n = 0  # bytes written
        self.bytes = 0  # bytes of the samples (what --shard-size counts)
        self.keys: list[str] = []
        self.num_frames = 0

    def _write(self, b: bytes) -> None:
        self.sha.update(b)
        self.n += len(b)
        self.f.write(b)

    def add(self, key: str, blocks: list[bytes], num_frames: int) -> None:
        for b in blocks:
            self._write(b)
            self.bytes += len(b)
        self.keys.append(key)
        self.num_frames += num_frames

    def close(self) -> dict:
        # tarfile's end of archive: two zero blocks, then zeros up to a multiple of its 10240-byte record
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self.n % tarfile.RECORDSIZE:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - self.n % tarfile.RECORDSIZE))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return {"name": self.name, "sha256": self.sha.hexdigest(), "bytes": self.n,
                "num_videos": len(self.keys), "num_frames": self.num_frames, "keys": self.keys}


def starts_new_shard(current_bytes: int, current_videos: int, size: int, shard_size: int) -> bool:
    """The cut rule, in input order: a shard holds at least one video and closes before the video that would
    push its samples past ``shard_size`` bytes."""
    return current_videos > 0 and current_bytes + size > shard_size


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------


def _settings(args, videos: Path, cats) -> dict:
    if args.max_size is not None and args.max_size < 16:
        raise ConfigError(f"--max-size must be at least 16, got {args.max_size}")
    if not 1 <= args.jpeg_quality <= 100:
        raise ConfigError(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    if args.shard_size < 1:
        raise ConfigError("--shard-size must be positive")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    settings = {"videos": str(videos), "annotations": args.annotations, "fps": float(args.fps),
                "max_size": args.max_size, "jpeg_quality": args.jpeg_quality, "shard_size": args.shard_size,
                "require_audio": bool(args.require_audio), "sample_rate": SAMPLE_RATE,
                "category_ids": [c["id"] for c in cats]}
    if args.audio_dir is not None:  # only when given: manifests of builds without it keep their bytes
        settings["audio_dir"] = str(args.audio_dir)
    return settings


def _clean(out: Path) -> None:
    for p in out.iterdir():
        if p.name in ("manifest.json", STATE_FILE) or re.fullmatch(r"shard-\d{6}\.tar", p.name) \
                or _TMP_SHARD.fullmatch(p.name):
            p.unlink()
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)


def _jobs_digest(jobs) -> str:
    return hashlib.sha256(json.dumps(jobs, sort_keys=True, default=str).encode()).hexdigest()


def _load_state(out: Path, settings: dict, digest: str) -> dict | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable; starting over", path)
        return None
    if state.get("settings") != settings or state.get("inputs") != digest:
        raise ConfigError(f"{out} holds a build with other settings or inputs; rerun without --resume to "
                          "start over")
    # keep the finished shards that are intact, drop everything after the first damaged one
    kept = []
    for s in state["shards"]:
        p = out / s["name"]
        if not p.exists() or p.stat().st_size != s["bytes"] or sha256_file(p) != s["sha256"]:
            log.warning("%s is missing or damaged; rebuilding from it on", p)
            break
        kept.append(s)
    if len(kept) < len(state["shards"]):
        state["next_index"] = kept[-1]["next_index"] if kept else 0
        state["failed"] = [f for f in state["failed"] if f["index"] < state["next_index"]]
        state["no_audio"] = [a for a in state["no_audio"] if a[0] < state["next_index"]]
        state["shards"] = kept
    return state


class BuildState:
    """``.build-state.json``: the finished shards in order, the failed inputs and those without sound before
    ``next_index`` (the first input not in a finished shard). Whoever writes the shards (this process, or Ray
    tasks) hands each one to :meth:`commit` in shard order, with the outcomes of the inputs it closes."""

    def __init__(self, out: Path, state: dict, jobs: list[dict]):
        self.out, self.data, self.jobs = out, state, jobs

    def outcome(self, index: int, error: str | None, has_audio: bool = True) -> tuple[list, list]:
        """The failed / without-sound records of one input (as pending lists of its shard)."""
        job = self.jobs[index]
        if error is not None:
            src = job["source"] or f"video {job['video_id']}"
            return [{"index": index, "video_id": job["video_id"], "source": src, "reason": error}], []
        return [], ([] if has_audio else [[index, job["source"]]])

    def commit(self, rec: dict | None, next_index: int, failed: list, no_audio: list) -> None:
        if rec is not None:
            rec["next_index"] = next_index
            self.data["shards"].append(rec)
        self.data["failed"].extend(failed)
        self.data["no_audio"].extend(no_audio)
        self.data["next_index"] = next_index
        atomic_write_json(self.data, self.out / STATE_FILE)


def _report(index: int, job: dict, res: dict | None, error: str | None, write) -> None:
    if error is not None:
        write(f"avis build: failed: {job['source'] or 'video ' + str(job['video_id'])}: {error}")
    else:
        for w in res["warnings"]:
            write(f"avis build: warning: {w}")


def _in_order(pool: ThreadPoolExecutor, fn, items, ahead: int):
    """``map(fn, items)`` run in ``pool`` with ``ahead`` items started beyond the one being consumed."""
    it = iter(items)
    futures = collections.deque(pool.submit(fn, x) for x in itertools.islice(it, ahead + 1))
    while futures:
        res = futures.popleft().result()
        for x in itertools.islice(it, 1):
            futures.append(pool.submit(fn, x))  # before handing out res: it keeps going while res is written
        yield res


def _run_local(args, out: Path, jobs, settings, ctx, state: BuildState, bar) -> None:
    """The per-video work in this process or a pool of ``--workers`` processes; shards written here."""
    from tqdm import tqdm

    start = state.data["next_index"]
    todo = [(i, jobs[i], settings, ctx) for i in range(start, len(jobs))]
    pending_failed: list[dict] = []
    pending_no_audio: list = []
    writer: ShardWriter | None = None

    def finish_shard(next_index: int):
        nonlocal writer
        state.commit(writer.close(), next_index, pending_failed[:], pending_no_audio[:])
        pending_failed.clear()
        pending_no_audio.clear()
        writer = None

    workers = args.workers or 1
    if workers > 1 and len(todo) > 1:
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(todo)))
        results = pool.imap(_work, todo, chunksize=1)
    else:
        # one process, the next video decoded in a thread while this one's JPEG encoding ends and it is written
        pool = ThreadPoolExecutor(max_workers=1 + LOOKAHEAD, thread_name_prefix="avis-video")
        results = _in_order(pool, _work, todo, LOOKAHEAD)
    try:
        for index, res, error in results:
            bar.update(1)
            _report(index, jobs[index], res, error, lambda m: tqdm.write(m, file=sys.stderr))
            if res is not None and writer is not None and starts_new_shard(writer.bytes, len(writer.keys),
                                                                           res["size"], args.shard_size):
                finish_shard(index)  # with the failures and silent inputs before this one
            failed, no_audio = state.outcome(index, error, res is None or res["has_audio"])
            pending_failed += failed
            pending_no_audio += no_audio
            if res is None:
                continue
            if writer is None:
                writer = ShardWriter(out, len(state.data["shards"]))
            writer.add(_key(jobs[index]["video_id"]), res["blocks"], res["num_frames"])
        if writer is not None:
            finish_shard(len(jobs))
        else:
            state.commit(None, len(jobs), pending_failed, pending_no_audio)
    finally:
        if writer is not None:  # stopped by an error: the temporary file goes, finished shards stay
            writer.f.close()
            writer.tmp.unlink(missing_ok=True)
        if isinstance(pool, ThreadPoolExecutor):
            pool.shutdown(wait=False, cancel_futures=True)  # a video being decoded ends on its own
        else:
            pool.terminate()
            pool.join()


def run(args) -> int:

    videos = Path(args.videos)
    if not videos.is_dir():
        raise InputError("not a folder", videos)
    if args.audio_dir is not None and not Path(args.audio_dir).is_dir():
        raise InputError("not a folder (--audio-dir)", args.audio_dir)
    out = Path(args.out)
    check_fps(args.fps, "--fps")
    jobs, cats = make_jobs(videos, args.annotations, args.fps)
    settings = _settings(args, videos, cats)
    # absolute: Ray tasks run in other working directories, possibly on other machines (same shared paths)
    ctx = {"root": os.path.abspath(videos),
           "audio_root": None if args.audio_dir is None else os.path.abspath(args.audio_dir)}
    ray = None
    if args.ray is not None:  # before --out is touched: an unreachable cluster leaves it as it was
        from data_tools.build_ray import connect

        ray = connect(args.ray, args.workers)
    try:
        return _build(args, out, jobs, cats, settings, ctx, ray)
    finally:
        if ray is not None:
            ray.shutdown()


def _build(args, out: Path, jobs, cats, settings, ctx, ray) -> int:
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    digest = _jobs_digest(jobs)
    data = _load_state(out, settings, digest) if args.resume else None
    if data is None:
        _clean(out)
        data = {"settings": settings, "inputs": digest, "shards": [], "failed": [], "next_index": 0,
                "no_audio": []}
        atomic_write_json(data, out / STATE_FILE)
    elif data.get("done") and (out / "manifest.json").exists():
        print(f"avis build: {out} is complete; nothing to do", file=sys.stderr)
        return EXIT_SOME_FAILED if data["failed"] else 0
    for p in out.iterdir():  # a shard that was being written when the build stopped
        if _TMP_SHARD.fullmatch(p.name):
            p.unlink()
    state = BuildState(out, data, jobs)
    bar = tqdm(total=len(jobs), initial=data["next_index"], unit="video", desc="avis build", disable=None,
               file=sys.stderr)
    try:
        if ray is not None:
            from data_tools.build_ray import run_ray

            run_ray(ray, args, out, jobs, settings, ctx, state, bar)
        else:
            _run_local(args, out, jobs, settings, ctx, state, bar)
    finally:
        bar.close()
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "avis_version": __version__,
        "settings": {k: v for k, v in settings.items() if k != "category_ids"},
        "categories": cats,
        "counts": {"videos": sum(s["num_videos"] for s in data["shards"]),
                   "frames": sum(s["num_frames"] for s in data["shards"]),
                   "shards": len(data["shards"]), "failed": len(data["failed"]),
                   "without_audio": len(data["no_audio"])},
        "shards": [{k: s[k] for k in ("name", "sha256", "bytes", "num_videos", "num_frames", "keys")}
                   for s in data["shards"]],
        "failed": [{k: f[k] for k in ("video_id", "source", "reason")} for f in data["failed"]],
        "without_audio": [src for _, src in data["no_audio"]],
    }
    atomic_write_json(manifest, out / "manifest.json", indent=1)
    data["done"] = True
    atomic_write_json(data, out / STATE_FILE)
    n_failed = len(data["failed"])
    print(f"avis build: {manifest['counts']['videos']} videos, {manifest['counts']['frames']} frames in "
          f"{len(data['shards'])} shards -> {out}" + (f"; {n_failed} inputs failed (see manifest.json)"
                                                        if n_failed else ""), file=sys.stderr)
    return EXIT_SOME_FAILED if n_failed else 0
