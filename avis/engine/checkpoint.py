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
from pathlib import Path

import numpy as np
import torch

from avis.errors import InputError
from avis.io.atomic import atomic_open

FORMAT = "avis-checkpoint"


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


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    if path.stat().st_size == 0:
        raise InputError("not a loadable checkpoint (empty file)", path)
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
    return ckpt


def latest(directory: str | os.PathLike) -> Path | None:
    """``last.pt`` in ``directory`` if it exists."""
    p = Path(directory) / "last.pt"
    return p if p.is_file() else None
