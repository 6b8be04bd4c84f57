"""The hostile-input corpus, generated once per session in a temporary folder (nothing big is committed)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from avis import cli as avis_cli
from tests.conftest import TOY
from tests.hostile import jsons
from tests.hostile.media import make_media


@pytest.fixture(autouse=True)
def _restore_logging():
    """``avis.cli.main`` sets up logging on the (captured, later closed) stderr of the test that first calls it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def call(capsys, *args) -> tuple[int, str, str]:
    """``avis ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = avis_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(rc: int, err: str, command: str, path=None, what: str | None = None) -> str:
    """Check the contract (non-zero exit, exactly one ``avis CMD: error:`` line naming the file and what is
    wrong, no traceback) and return that line."""
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if re.search(rf"avis {command}: (internal )?error: ", ln)]
    assert len(lines) == 1, err
    line = lines[0][lines[0].index(f"avis {command}:"):]  # after a progress bar's carriage returns
    assert "internal error" not in line, line
    if path is not None:
        assert str(path) in line, line
    if what is not None:
        assert re.search(what, line), line
    return line


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> Path:
    """``last.pt`` of a 2-step ``toy_av`` training run; one per test module, as each module had its own."""
    run = tmp_path_factory.mktemp("toy_run")
    assert avis_cli.main(["train", "experiment=toy_av", TOY, f"hydra.run.dir={run}", "trainer.max_steps=2",
                          "trainer.eval_every=0", "trainer.progress=false", "trainer.tensorboard=false"]) == 0
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="session")
def json_corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("json")
    gt = root / "gt.json"
    gt.write_text(json.dumps(jsons.valid_gt()))
    res = root / "res.json"
    res.write_text(json.dumps(jsons.valid_results()))
    return {"gt": gt, "results": res, "bad_gt": jsons.bad_gt_cases(root / "gt"),
            "bad_results": jsons.bad_results_cases(root / "res")}


@pytest.fixture(scope="session")
def built(tmp_path_factory, media) -> Path:
    """A real build of two good videos: ``shards/shard-00000{0,1}.tar`` + manifest."""
    src = tmp_path_factory.mktemp("build_src")
    shutil.copy(media["good"], src / "a.mp4")
    shutil.copy(media["good"], src / "b.mp4")
    out = tmp_path_factory.mktemp("build_out") / "shards"
    assert avis_cli.main(["build", "--videos", str(src), "--out", str(out), "--fps", "5",
                          "--shard-size", "1"]) == 0
    assert len(list(out.glob("shard-*.tar"))) == 2
    return out


def _copy_tar(src: Path, dst: Path, rename=None) -> Path:
    with tarfile.open(src) as t_in, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as t_out:
        for i, m in enumerate(t_in.getmembers()):
            data = t_in.extractfile(m)
            if rename is not None and i == 0:
                m.name = rename(m.name)
            t_out.addfile(m, data)
    return dst


@pytest.fixture(scope="session")
def bad_shards(tmp_path_factory, built) -> dict[str, Path]:
    """name -> a folder holding ``manifest.json`` (copied) and one bad ``shard-000000.tar``."""
    root = tmp_path_factory.mktemp("bad_shards")
    good = built / "shard-000000.tar"
    cases = {}

    def folder(name):
        d = root / name
        d.mkdir()
        shutil.copy(built / "manifest.json", d / "manifest.json")
        return d / "shard-000000.tar"

    p = folder("truncated")
    data = good.read_bytes()
    p.write_bytes(data[: len(data) // 2 + 100])
    cases["truncated"] = p
    cases["dotdot-member"] = _copy_tar(good, folder("dotdot-member"), lambda n: "../" + n)
    cases["absolute-member"] = _copy_tar(good, folder("absolute-member"), lambda n: "/etc/" + n)
    p = folder("zero-byte")
    p.write_bytes(b"")
    cases["zero-byte"] = p
    p = folder("not-a-tar")
    p.write_text("hello, I am not a tar archive\n" * 40)
    cases["not-a-tar"] = p
    return cases
