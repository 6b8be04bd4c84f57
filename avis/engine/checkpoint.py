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
import random
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
        torch.save(ckpt, f)


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise InputError(f"not a loadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                         path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError("not an avis checkpoint (no 'format: avis-checkpoint' entry)", path)
    return ckpt


def latest(directory: str | os.PathLike) -> Path | None:
    """``last.pt`` in ``directory`` if it exists."""
    p = Path(directory) / "last.pt"
    return p if p.is_file() else None
