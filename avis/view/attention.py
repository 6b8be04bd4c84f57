"""RCF attention maps kept by an evaluation run, for ``avis view``.

``avis eval --keep-attention`` runs the model as usual and keeps, for every frame, the last fusion layer's
head-averaged attention of two kinds (see :meth:`avis.models.rcf.fusion.RobustContextFusion.attention_maps`):

* ``ref_to_target``: N = K x K reference tokens, each one's attention over the target frame's h x w grid
  (the paper's reference-to-target maps, Fig. 8 / 12);
* ``audio_to_target``: the 1 + delta audio tokens (oldest first, the frame's own window last), likewise
  (the audio attention of Fig. 10).

File ``attention.npz`` (numpy, no pickles): ``format`` = ``"avis-attention-1"``, ``video_ids`` (int64, V)
and per video ``<kind>_<video id>`` float16 T x N x h x w (T = the video's frames in evaluation order, the
frames of its results). A kind the model has no tokens for is left out. At the paper's test size (640 x 360,
stride 32, K = 4) that is 16 x 20 x 12 halves per frame: about 8 kB a frame before compression.

:func:`render_sprites` turns one video's maps into the images the page shows: per kind, a PNG sprite with a
row per frame and a tile per token (a magma heat map, scaled per frame by the largest value of that kind so
the tokens of a frame compare), plus a first tile where the N maps are reduced to RGB by PCA over the whole
video (the paper reduces the 8 heads this way; the model keeps head-averaged weights, so the PCA runs over
the tokens instead).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path

import numpy as np

from avis.errors import ConfigError, InputError
from avis.io.atomic import atomic_open

FORMAT = "avis-attention-1"
KINDS = ("ref_to_target", "audio_to_target")
MAX_TOKENS = 1024  # a larger token axis is not an RCF attention file


class AttentionRecorder:
    """Keeps each frame's attention maps while an online model runs over videos.

    ``model`` must be able to keep attention (``keep_attention`` and ``attention_maps()``, as RCF) and run
    frame by frame (``step``). Pass the videos through :meth:`videos` on their way to the model; while that
    iterator runs, every ``step`` of the model is followed by a copy of its maps to the host::

        rec = AttentionRecorder(model)
        predict_videos(model, rec.videos(videos), ...)
        rec.save("attention.npz")
    """

    def __init__(self, model):
        if not (hasattr(model, "keep_attention") and callable(getattr(model, "attention_maps", None))
                and callable(getattr(model, "step", None))):
            raise ConfigError(f"{type(model).__name__} keeps no attention maps (--keep-attention is for RCF)")
        self.model = model
        self.maps: dict[int, dict[str, list[np.ndarray]]] = {}

    def videos(self, videos):
        """Yield ``videos`` unchanged and record the maps of each (by its ``video_id``) while the model runs
        on it; the model is back to normal when the iteration ends (or stops)."""
        model, was = self.model, bool(self.model.keep_attention)
        step = model.step
        current: dict[str, list[np.ndarray]] = {}

        def recording_step(state, frame, audio=None):
            out = step(state, frame, audio)
            maps = model.attention_maps()
            for kind in KINDS:
                if maps.get(kind) is not None:  # 1 x N x h x w on the device; float16 on the host keeps it small
                    current.setdefault(kind, []).append(maps[kind][0].float().cpu().numpy().astype(np.float16))
            return out

        model.keep_attention = True
        # An instance attribute shadows the method for this model object only, until the finally below.
        object.__setattr__(model, "step", recording_step)
        try:
            for v in videos:
                vid = int(v["video_id"] if isinstance(v, dict) else v.video_id)
                current = self.maps.setdefault(vid, {})
                yield v
        finally:
            with contextlib.suppress(AttributeError):
                object.__delattr__(model, "step")
            model.keep_attention = was

    def save(self, path: str | os.PathLike) -> Path:
        return write_attention(path, self.maps)


def write_attention(path: str | os.PathLike, maps: dict[int, dict[str, list[np.ndarray]]]) -> Path:
    """Write the recorder's maps (video id -> kind -> per-frame N x h x w) as ``attention.npz``."""
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT), "video_ids": np.array(sorted(maps), np.int64)}
    for vid in sorted(maps):
        for kind, frames in maps[vid].items():
            if frames:
                arrays[f"{kind}_{vid}"] = np.stack(frames).astype(np.float16)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def read_attention(path: str | os.PathLike) -> dict[int, dict[str, np.ndarray]]:
    """video id -> kind -> float32 T x N x h x w; an unreadable or malformed file is an :class:`InputError`."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FORMAT:
                raise InputError(f"not an avis attention file (expected format {FORMAT!r})", path)
            ids = z["video_ids"]
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise InputError("'video_ids' must be a list of integers", path)
            out: dict[int, dict[str, np.ndarray]] = {}
            for vid in ids.tolist():
                out[vid] = {}
                for kind in KINDS:
                    key = f"{kind}_{vid}"
                    if key not in z.files:
                        continue
                    a = z[key]
                    if a.ndim != 4 or a.dtype.kind != "f" or not 0 < a.shape[1] <= MAX_TOKENS or 0 in a.shape:
                        raise InputError(f"{key}: expected frames x tokens x h x w floats, got {a.dtype} "
                                         f"{tuple(a.shape)}", path)
                    out[vid][kind] = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            return out
    except InputError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # truncated, pickles refused
        raise InputError(f"unreadable attention file ({e})", path) from None


def _magma() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def pca_rgb(maps: np.ndarray) -> np.ndarray:
    """T x N x h x w -> uint8 T x h x w x 3: each pixel's N token values projected on the video's first
    three principal components, each scaled to 0..255 over the video (fewer tokens: missing channels 0)."""
    t, n, h, w = maps.shape
    x = maps.transpose(0, 2, 3, 1).reshape(-1, n).astype(np.float64)
    x = x - x.mean(0)
    out = np.zeros((x.shape[0], 3))
    if n >= 2 and np.any(x):  # (maps that never vary have no components: they stay black)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps = vt[: min(3, vt.shape[0])]
        k = len(comps)
        # a component's sign is arbitrary: orient each so its largest loading is positive (stable colours)
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
        proj = x @ (comps * signs[:, None]).T
        lo, hi = proj.min(0), proj.max(0)
        out[:, :k] = (proj - lo) / np.where(hi > lo, hi - lo, 1)
    elif n == 1:
        m = maps.transpose(0, 2, 3, 1).reshape(-1, n)[:, 0]
        out[:, 0] = m / m.max() if m.max() > 0 else 0
    return (out.reshape(t, h, w, 3) * 255).round().astype(np.uint8)


def heat(maps: np.ndarray) -> np.ndarray:
    """T x N x h x w -> uint8 T x N x h x w x 3 magma, each frame scaled by its largest value."""
    peak = maps.reshape(maps.shape[0], -1).max(1)
    scaled = maps / np.where(peak > 0, peak, 1)[:, None, None, None]
    return _magma()[np.clip((scaled * 255).round(), 0, 255).astype(np.uint8)]


def render_sprites(maps: dict[str, np.ndarray], out_dir: Path, stem: str) -> dict:
    """One PNG per kind, ``<stem>_<kind>.png``: frame t is row t, tile 0 the PCA map, tile 1 + i token i's
    heat map (tiles h x w). Returns kind -> ``{"file", "frames", "tokens", "h", "w"}`` (file relative to
    ``out_dir``'s parent)."""
    from PIL import Image

    out = {}
    for kind, m in maps.items():
        t, n, h, w = m.shape
        tiles = np.concatenate([pca_rgb(m)[:, None], heat(m)], axis=1)  # T x (1 + N) x h x w x 3
        sheet = tiles.transpose(0, 2, 1, 3, 4).reshape(t * h, (1 + n) * w, 3)
        name = f"{stem}_{kind}.png"
        with atomic_open(out_dir / name, "wb") as f:
            Image.fromarray(sheet).save(f, format="PNG")
        out[kind] = {"file": f"{out_dir.name}/{name}", "frames": t, "tokens": n, "h": h, "w": w}
    return out
