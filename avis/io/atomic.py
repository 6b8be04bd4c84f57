"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A crash or a full disk mid-write leaves the previous file (if any) intact and at worst a stray ``*.tmp-*``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """``with atomic_open(p, "w") as f: ...`` -- ``p`` appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the mode a plain open() would (0666 & ~umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = os.fspath(path)  # a failed write (disk full) names no file by itself
        raise


def atomic_write_json(obj, path: str | os.PathLike, indent: int | None = None) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
