"""Shared fixtures. Tests use tiny synthetic media; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the hydra override that adds the test-only config groups (``model=toy``, ``data=toy``,
#: ``experiment=toy_av`` / ``toy_visual``: the engine's oracle in tests/toy.py) to the package's configs
TOY = f"hydra.searchpath=[file://{REPO / 'tests' / 'configs'}]"


@pytest.fixture(autouse=True, scope="session")
def _trust_the_toy_method():
    """Checkpoints of the toy method name ``tests.toy.ToyVIS``, which ``avis eval`` / ``avis infer`` refuse to
    build from a file unless it is trusted: trusted here, in the test process only."""
    from avis.engine import session

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session, "TRUSTED_TARGETS", (*session.TRUSTED_TARGETS, "tests.toy."))
        yield


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m avis ARGS`` against this checkout in a subprocess (text output)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "avis", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
