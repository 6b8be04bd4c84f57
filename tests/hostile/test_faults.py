"""Faults: SIGKILL at random points of a build and of a training run, then resume; a full disk (ENOSPC) in
the middle of a write. Nothing finished is lost, nothing is done twice, no shard or checkpoint is corrupt."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avis.data.shards import iter_samples, sample_meta
from avis.engine import checkpoint as ckpt_io
from avis.engine.logs import read_jsonl
from avis.io import atomic
from tests.avmedia import write_video
from tests.conftest import REPO, TOY
from tests.hostile.conftest import call, error_line

FAST = ["trainer.progress=false", "trainer.tensorboard=false", TOY]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)  # our own child's process group (it has its own session)
    except ProcessLookupError:
        pass
    p.wait()


# ------------------------------------------------------------------------------------------------ build

@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("fault_videos")
    for i in range(8):
        write_video(src / f"v{i}.mp4", num_frames=30, fps=15, size=(64, 48),
                    audio=np.full((1, 96000), 0.01 * (i + 1), np.float32))
    return src


def _build_args(videos: Path, out: Path) -> list[str]:
    return ["build", "--videos", str(videos), "--out", str(out), "--fps", "15", "--shard-size", "1"]


def _manifest_shards(out: Path) -> list:
    m = json.loads((out / "manifest.json").read_text())
    return [(s["name"], s["sha256"], s["keys"]) for s in m["shards"]]


def _check_finished_shards(out: Path) -> list[str]:
    """Every shard under its final name is a complete tar of complete samples; returns their keys."""
    keys = []
    for shard in sorted(out.glob("shard-*.tar")):
        for sample in iter_samples(shard):
            n = sample_meta(sample)["num_frames"]
            assert all(f"{i:05d}.jpg" in sample for i in range(n)) and "audio.flac" in sample, shard
            keys.append(sample["__key__"])
    state = out / ".build-state.json"
    if state.exists():
        json.loads(state.read_text())  # written atomically: never torn
    return keys


def test_build_sigkill_at_random_points_then_resume(videos, tmp_path, capsys):
    ref = tmp_path / "ref"
    assert call(capsys, *_build_args(videos, ref))[0] == 0
    expected = _manifest_shards(ref)
    assert len(expected) == 8
    out = tmp_path / "killed"
    rng = random.Random(14)
    kills = 0
    for attempt in range(6):
        # one process, then a pool of two (killed with its workers), alternately: the output must not care
        args = _build_args(videos, out) + ["--workers", str(1 + attempt % 2)] + (["--resume"] if attempt else [])
        p = subprocess.Popen([sys.executable, "-m", "avis", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
        time.sleep(rng.uniform(0.3, 2.5))  # anywhere: start-up, decoding, writing a shard, renaming it
        finished = p.poll() is not None
        _kill_group(p)
        if finished:
            break
        kills += 1
        keys = _check_finished_shards(out)
        assert len(keys) == len(set(keys))  # nothing written twice
        assert not (out / "manifest.json").exists() or json.loads((out / ".build-state.json").read_text())["done"]
    assert kills >= 1, "no run was killed"
    rc, _, err = call(capsys, *_build_args(videos, out), "--resume")
    assert rc == 0, err
    assert _manifest_shards(out) == expected  # byte-identical shards (same sha256), each video once
    keys = _check_finished_shards(out)
    assert sorted(keys) == sorted(k for _, _, ks in expected for k in ks)
    assert not list(out.glob(".shard-*"))


class _DiskFull:
    """A file whose writes fail with ENOSPC once ``budget`` bytes have been written to it."""

    def __init__(self, f, budget: int):
        self.f, self.budget = f, budget

    def write(self, b):
        if self.budget < len(b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_build_disk_full_keeps_finished_shards(videos, tmp_path, capsys, monkeypatch):
    from data_tools import build

    ref = tmp_path / "ref"
    assert call(capsys, *_build_args(videos, ref))[0] == 0
    out = tmp_path / "full"
    opened = []
    real_open = open

    def open_(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and str(path).endswith(".tar.tmp"):
            opened.append(path)
            if len(opened) == 4:  # the 4th shard hits a full disk half-way
                return _DiskFull(f, 3000)
        return f

    monkeypatch.setattr(build, "open", open_, raising=False)
    rc, _, err = call(capsys, *_build_args(videos, out))
    line = error_line(rc, err, "build", None, "No space left on device")
    assert rc == 1, line
    monkeypatch.undo()
    state = json.loads((out / ".build-state.json").read_text())
    assert [s["name"] for s in state["shards"]] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert len(_check_finished_shards(out)) == 3 and not (out / "manifest.json").exists()
    rc, _, err = call(capsys, *_build_args(videos, out), "--resume")
    assert rc == 0, err
    assert _manifest_shards(out) == _manifest_shards(ref)
    assert not list(out.glob(".shard-*"))  # the half-written shard's temporary file is gone


# ------------------------------------------------------------------------------------------------ training

def _train_args(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.engine_hooks", "--trace", str(run / "trace"), "experiment=toy_av",
            f"hydra.run.dir={run}", "trainer.max_steps=8", "trainer.log_every=1", "trainer.ckpt_every=3",
            "trainer.eval_every=0", "data.batch_size=2", "data.num_workers=0", *FAST, *extra]


def _last_per_step(trace: Path) -> dict:
    out = {}
    for rec in read_jsonl(trace, kind=None):
        out[rec["step"]] = rec  # a step redone after a kill: the resumed run's record is the one that counts
    return out


def test_training_sigkill_at_a_random_point_then_resume(tmp_path):
    full = subprocess.run(_train_args(tmp_path / "full"), env=_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    run = tmp_path / "killed"
    rng = random.Random(7)
    kill_after = rng.randint(2, 6)  # logged steps before the kill (plus a random delay: mid-step, mid-save)
    p = subprocess.Popen(_train_args(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while p.poll() is None and time.monotonic() < deadline:
            m = run / "metrics.jsonl"
            if m.exists() and len(m.read_text().splitlines()) >= kill_after:
                time.sleep(rng.uniform(0, 0.2))
                break
            time.sleep(0.01)
    finally:
        _kill_group(p)
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    for ck in (run / "checkpoints").glob("*.pt"):
        ckpt_io.load(ck)  # every checkpoint on disk is complete (atomic writes)
    resumed = subprocess.run(_train_args(run, "trainer.resume=true"), env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))  # each step once
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    # the batches that made the final model are the uninterrupted run's: no clip lost or seen twice
    ta, tb = _last_per_step(tmp_path / "full" / "trace" / "trace_rank0.jsonl"), \
        _last_per_step(run / "trace" / "trace_rank0.jsonl")
    assert sorted(tb) == list(range(1, 9))
    assert [tb[s]["video_ids"] for s in range(1, 9)] == [ta[s]["video_ids"] for s in range(1, 9)]
    assert tb[8]["params"] == ta[8]["params"]
    sa = ckpt_io.load(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    sb = ckpt_io.load(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torn_metrics_line_does_not_stop_a_resume(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.max_steps=3", "trainer.log_every=1",
            "trainer.ckpt_every=2", "trainer.eval_every=0", "data.batch_size=2", *FAST]
    assert call(capsys, *args, "trainer.max_steps=2")[0] == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "kind": "train", "lo')  # killed in the middle of a write
    rc, _, err = call(capsys, *args, "trainer.resume=true")
    assert rc == 0, err
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_checkpoint_disk_full_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    """A full disk while step 4's checkpoint is written: the run stops with one line, last.pt is still step 2
    (and loads), no temporary file is left, and a resume finishes the run."""
    run = tmp_path / "run"
    args = ["train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.max_steps=6", "trainer.log_every=1",
            "trainer.ckpt_every=2", "trainer.eval_every=0", "trainer.keep_checkpoints=5", *FAST]
    real_fdopen = os.fdopen
    calls = []

    def fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "step_00000004.pt" in name:
            calls.append(name)
            return _DiskFull(f, 20_000)
        return f

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
    rc, _, err = call(capsys, *args)
    ck_dir = run / "checkpoints"
    line = error_line(rc, err, "train", ck_dir / "step_00000004.pt", "No space left on device")
    assert rc == 1 and calls, line
    monkeypatch.undo()
    assert ckpt_io.load(ck_dir / "last.pt")["step"] == 2
    assert sorted(p.name for p in ck_dir.iterdir()) == ["last.pt", "step_00000002.pt"]
    rc, _, err = call(capsys, *args, "trainer.resume=true")
    assert rc == 0, err
    assert ckpt_io.load(ck_dir / "last.pt")["step"] == 6


def test_json_write_disk_full_keeps_the_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "metrics.json"
    atomic.atomic_write_json({"AP": 0.5}, p)
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode="r", *a, **k: _DiskFull(real_fdopen(fd, mode), 3))
    with pytest.raises(OSError) as e:
        atomic.atomic_write_json({"AP": 0.75, "AR": [1.0] * 100}, p)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert json.loads(p.read_text()) == {"AP": 0.5}
    assert [q.name for q in tmp_path.iterdir()] == ["metrics.json"]
