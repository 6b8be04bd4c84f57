"""Errors that the command line turns into one clear line and a non-zero exit code.

Library code raises :class:`InputError` for anything wrong with a file a user gave us (naming the file and
what is wrong); the CLI prints it without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import os


class AvisError(Exception):
    """Base class of the errors a user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(AvisError):
    """A user-supplied file (video, JSON, shard, checkpoint) is unreadable or invalid."""


class ConfigError(AvisError):
    """Invalid options or configuration."""
