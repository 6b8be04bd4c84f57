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
    """Checkpoints of the toy method name ``tests.toy.ToyVIS`` (and its data ``tests.toy.ToyVideos``), which
    ``avis eval`` / ``avis infer`` refuse to build from a file unless trusted: trusted here, by exact name through
    ``AVIS_TRUSTED_TARGETS``, in the test session only (and the avis processes its tests start)."""
    from avis.engine import safe_config

    env = safe_config.TRUSTED_TARGETS_ENV
    names = [os.environ.get(env, ""), "tests.toy.ToyVIS", "tests.toy.ToyVideos"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env, ",".join(n for n in names if n))
        yield


@pytest.fixture(autouse=True, scope="session")
def _infer_key_in_a_temporary_folder(tmp_path_factory):
    """``avis infer`` signs its videos.json with a key kept in the user's data folder (:mod:`avis.io.provenance`):
    the test session (and the avis processes its tests start) use one in its temporary folder instead."""
    from avis.io import provenance

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(provenance.KEY_ENV, str(tmp_path_factory.mktemp("avis-key") / "infer.key"))
        yield


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m avis ARGS`` against this checkout in a subprocess (text output)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "avis", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
