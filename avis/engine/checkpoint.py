"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors and plain containers only::

    {"format": "avis-checkpoint", "version": 1, "step": int,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "rng": [per-rank {"python", "numpy", "torch", "cuda"}],      # rank r resumes with rng[r]
     "data": [per-rank {"epoch": int, "batch": int}],             # position of each rank's data stream
     "world_size": int, "config": "<resolved config as YAML>"}
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from avis.errors import InputError
from avis.io.atomic import atomic_open
from avis.io.files import regular_file

FORMAT = "avis-checkpoint"
MAX_PICKLE_BYTES = 64 << 20  # the pickle of a checkpoint's structure and config (its tensors are separate)


def rng_state() -> dict:
    """This process's python, numpy, torch and CUDA RNG states, as weights_only-loadable values."""
    key, state, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"key": key, "state": torch.from_numpy(state.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict) -> None:
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    n = s["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save(path: str | os.PathLike, ckpt: dict) -> None:
    """Atomic: the file is complete or absent, and an older checkpoint of the same name survives a crash."""
    ckpt = {"format": FORMAT, "version": 1, **ckpt}
    with atomic_open(path, "wb") as f:
        try:
            torch.save(ckpt, f)
        except RuntimeError as e:
            # torch's zip writer turns a failed write (disk full) into "unexpected pos": report the cause
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def load(path: str | os.PathLike, require: tuple[str, ...] = ("step",)) -> dict:
    """A checkpoint, its layout checked (:func:`structure_problem`); ``require``: the entries the caller
    needs (``session`` needs the model, its config and categories; a resume also the optimiser state)."""
    path = regular_file(path, missing="checkpoint not found")
    if path.stat().st_size == 0:
        raise InputError("not a loadable checkpoint (empty file)", path)
    _check_zip(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text suggests weights_only=False: exactly what a hostile file wants; name what it holds instead
        g, op = re.search(r"GLOBAL (\S+)", str(e)), re.search(r"Unsupported operand (\d+)", str(e))
        what = f": {g.group(1)}" if g else (f": pickle opcode {op.group(1)}" if op else "")
        raise InputError("not a loadable checkpoint (it holds pickled objects other than tensors and plain "
                         f"containers{what}; refusing to unpickle them)", path) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        first = (str(e).splitlines() or [""])[0][:200]  # some errors have no message at all
        raise InputError(f"not a loadable checkpoint ({type(e).__name__}: {first})", path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError("not an avis checkpoint (no 'format: avis-checkpoint' entry)", path)
    problem = structure_problem(ckpt, require)
    if problem:
        raise InputError(f"not a valid avis checkpoint: {problem}", path)
    return ckpt


def _check_zip(path: Path) -> None:
    """torch.save writes a zip of *stored* records, so what torch.load reads is bounded by the file's size. A
    deflated record could inflate far beyond it (a 320 KB file whose config inflates to 300 MB took 1.4 GB and
    13 s to refuse): refuse compressed records and an absurd pickle before torch reads anything."""
    try:
        if not zipfile.is_zipfile(path):
            return  # torch's legacy format (or not a checkpoint at all): torch.load decides
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"not a loadable checkpoint ({e})", path) from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise InputError(f"not a loadable checkpoint (record {info.filename!r} is compressed; torch stores its "
                             "records, and a compressed one could inflate far beyond the file)", path)
        if info.filename.endswith("/data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise InputError(f"not a loadable checkpoint (its pickled structure is {info.file_size} bytes, beyond "
                             f"the {MAX_PICKLE_BYTES} byte limit; the tensors are stored apart from it)", path)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _what(x) -> str:
    return f"{type(x).__name__} {str(x)[:60]!r}" if isinstance(x, (str, int, float, dict)) else type(x).__name__


def structure_problem(ckpt: dict, require: tuple[str, ...] = ()) -> str | None:
    """The first way ``ckpt`` departs from the layout in this module's docstring, or None: one check of every
    entry the toolkit reads (those in ``require`` must be there), so a checkpoint with ``categories: "abc"`` or
    a text ``step`` is refused as a file instead of failing wherever the entry is first used."""
    missing = [k for k in require if k not in ckpt]
    if missing:
        return f"no {', '.join(repr(k) for k in missing)} entry"
    if "step" in ckpt and (not _is_int(ckpt["step"]) or ckpt["step"] < 0):
        return f"'step' must be a whole number >= 0, got {_what(ckpt['step'])}"
    if "model" in ckpt:
        model = ckpt["model"]
        if not isinstance(model, dict) or not model:
            return f"'model' must be a non-empty mapping of parameter names to tensors, got {_what(model)}"
        for k, v in model.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                return f"'model' entry {str(k)[:60]!r} is a {type(v).__name__}, not a tensor"
    if "config" in ckpt and not isinstance(ckpt["config"], str):
        return f"'config' must be the training config as YAML text, got {_what(ckpt['config'])}"
    if "categories" in ckpt:
        cats = ckpt["categories"]
        if not isinstance(cats, list):
            return f"'categories' must be a list of {{id, name}}, got {_what(cats)}"
        ids = set()
        for i, c in enumerate(cats):
            if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
                return f"'categories' entry {i} must be {{id: integer, name: text}}, got {_what(c)}"
            if c["id"] in ids:
                return f"'categories' has id {c['id']} twice"
            ids.add(c["id"])
    for key in ("optimizer", "scheduler"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            return f"'{key}' must be a mapping, got {_what(ckpt[key])}"
    ws = ckpt.get("world_size", 1)
    if not _is_int(ws) or ws < 1:
        return f"'world_size' must be a whole number >= 1, got {_what(ws)}"
    for key, fields in (("data", ("epoch", "batch")), ("rng", ("python", "numpy", "torch"))):
        if key not in ckpt:
            continue
        per_rank = ckpt[key]
        if not isinstance(per_rank, list) or len(per_rank) != ws:
            return f"'{key}' must be a list of one entry per process ({ws}), got {_what(per_rank)}"
        for r, entry in enumerate(per_rank):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                return f"'{key}' entry {r} must have {', '.join(fields)}"
            if key == "data" and (set(entry) != set(fields) or not all(_is_int(entry[f]) and entry[f] >= 0
                                                                        for f in fields)):
                return f"'data' entry {r} must be {{epoch, batch}} whole numbers >= 0, got {str(entry)[:80]}"
    return None


def latest(directory: str | os.PathLike) -> Path | None:
    """``last.pt`` in ``directory`` if it exists."""
    p = Path(directory) / "last.pt"
    return p if p.is_file() else None
