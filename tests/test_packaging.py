"""The wheel: built from this tree, installed into an empty folder, it runs without the checkout (the hydra
configs ship inside it as the package ``avis.configs``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


def _tree_packages() -> set[str]:
    found = {".".join(p.parent.relative_to(REPO).parts) for top in ("avis", "data_tools")
             for p in (REPO / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    return found | {"avis.configs"}


def test_pyproject_lists_every_package_of_the_tree():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(cfg["packages"]) == _tree_packages()
    assert cfg["package-dir"] == {"avis.configs": "configs"}


def _run(args, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{args}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, used without build isolation (no download)
    src = tmp_path / "src"  # a clean copy: an in-tree build folder could carry stale modules into the wheel
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("avis", "data_tools", "configs"):  # (an in-place build of the C extension stays out)
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AVIS_CONFIG_DIR")}
    env["OMP_NUM_THREADS"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w",
          str(tmp_path / "dist")], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("avis-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"avis/configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*.yaml")}
    assert len(configs) > 30 and configs <= names
    modules = {p.relative_to(REPO).as_posix() for top in ("avis", "data_tools") for p in (REPO / top).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)  # test oracles stay out
    if shutil.which("cc") or shutil.which("gcc"):  # the scorer's C extension, built from avis/evaluation/_rlec.c
        assert any(n.startswith("avis/evaluation/_rlec.") and n.endswith((".so", ".pyd")) for n in names), names

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], tmp_path,
         env)
    empty = tmp_path / "empty"
    empty.mkdir()
    env["PYTHONPATH"] = str(site)
    where = _run([sys.executable, "-c", "import avis, data_tools; print(avis.__file__); print(data_tools.__file__)"],
                 empty, env).stdout.split()
    if shutil.which("cc") or shutil.which("gcc"):
        c = _run([sys.executable, "-c", "from avis.evaluation import rle_c; print(rle_c.AVAILABLE, rle_c._rlec.__file__)"],
                 empty, env).stdout.split()
        assert c[0] == "True" and Path(c[1]).is_relative_to(site), c
    assert all(Path(w).is_relative_to(site) for w in where), where
    cfg = _run([sys.executable, "-m", "avis", "train", "--cfg", "job", "experiment=rcf_av_tiny"], empty, env).stdout
    assert "_target_: avis.models.rcf.rcf_tiny" in cfg and "eta: ${audio.eta}" in cfg
    _run([sys.executable, "-m", "avis", "demo", "--quick", "--out", "q"], empty, env)
    assert (empty / "q" / "summary.json").is_file() and (empty / "q" / "report.md").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["q"]  # nothing written outside --out
