"""Opening input files: only regular files are read.

A FIFO named as an input blocks its reader forever (``avis inspect fifo.tar`` used to hang), and a device such
as ``/dev/zero`` never ends. Every place that opens a user's file (JSON, shards, checkpoints, media) goes
through :func:`regular_file` (for libraries that open paths themselves: PyAV, torch, PIL) or
:func:`open_regular` (which opens without blocking and checks the opened file itself).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from avis.errors import InputError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _check(st: os.stat_result, path) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        raise InputError(kind if kind.startswith("not ") else f"{kind}, not a regular file", path)


def regular_file(path: str | os.PathLike, missing: str = "no such file") -> Path:
    """``path`` if it is a regular file (following symlinks); else an :class:`InputError` naming it:
    ``missing`` when nothing is there, what it is otherwise (a FIFO, a device, a folder)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(missing, path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None
    _check(st, path)
    return Path(path)


def open_regular(path: str | os.PathLike, mode: str = "rb", encoding: str | None = None,
                 missing: str = "no such file"):
    """``open(path, mode)`` for reading, refusing anything but a regular file without ever blocking: the file
    is opened with ``O_NONBLOCK`` (a FIFO then opens at once) and the opened file itself is checked."""
    if any(c in mode for c in "wax+"):
        raise ValueError("open_regular is for reading")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(missing, path) from None
    except IsADirectoryError:
        raise InputError("a folder, not a regular file", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None
    try:
        _check(os.fstat(fd), path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding=encoding) if "b" not in mode else os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise
