"""``avis build --ray``: a killed Ray worker is retried, a killed driver resumes, the output is a local build's.

Every Ray run is a subprocess on its own local Ray instance (2 CPUs, no dashboard, a 96 MiB object store),
killed with its process tree at the end whatever happens, so that nothing outlives the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avis import cli as avis_cli
from tests.avmedia import clicks_audio, write_video
from tests.conftest import REPO

pytest.importorskip("ray")

pytestmark = pytest.mark.slow
TIMEOUT = 240  # seconds for one Ray build on 2 busy cores (it takes 15-40 s)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """8 videos (the one before last long enough for the driver to be killed before it is done), an unreadable
    file and a silent one."""
    src = tmp_path_factory.mktemp("ray_inputs")
    for i in [0, 1, 2, 4, 5, 6, 7, 8]:
        write_video(src / f"v{i}.mp4", num_frames=300 if i == 7 else 30, fps=15, size=(96, 64),
                    audio=clicks_audio(20.0 if i == 7 else 2.0, [0.2 + 0.1 * i], channels=1))
    (src / "v3_bad.mp4").write_text("not a video")
    write_video(src / "v9_silent.mp4", num_frames=20, fps=10)
    return src


def _args(src: Path, out: Path, *extra) -> list[str]:
    return ["build", "--videos", str(src), "--out", str(out), "--fps", "10", "--shard-size", "40000", *extra]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray_ref") / "out"
    assert avis_cli.main(_args(inputs, out)) == 3  # one input fails
    return out


def _files(out: Path) -> dict[str, bytes]:
    """Everything a build leaves that a user reads: the shards and the manifest (the failed list is in it)."""
    m = json.loads((out / "manifest.json").read_text())
    names = ["manifest.json"] + [s["name"] for s in m["shards"]]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(names)
    return {n: (out / n).read_bytes() for n in names}


def _children(pid: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                procs[int(d.name)] = (ppid, (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, IndexError, ValueError):
                continue
    return procs


def _descendants(pid: int) -> dict[int, str]:
    procs = _children(pid)
    out, frontier = {}, [pid]
    while frontier:
        p = frontier.pop()
        for c, (pp, cmd) in procs.items():
            if pp == p and c not in out:
                out[c] = cmd
                frontier.append(c)
    return out


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "avis", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True, text=True)


def _end(proc: subprocess.Popen, tree: dict[int, str]) -> None:
    """Kill what is left of our build and the Ray processes it started (known by pid, never by name)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    tree.update(_descendants(proc.pid))
    deadline = time.monotonic() + 30  # Ray's workers leave once their raylet is gone
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in tree):
        time.sleep(0.2)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ray_build_survives_a_killed_worker_and_a_killed_driver_byte_identically(inputs, reference, tmp_path):
    """One Ray run: a worker is killed in the middle of a video (Ray retries it), then the driver once shards
    are committed; ``--resume --ray`` finishes. Shards, manifest and failed list equal the local build's."""
    out = tmp_path / "ray"
    state = out / ".build-state.json"
    proc = _start(_args(inputs, out, "--ray", "--workers", "2"))
    tree: dict[int, str] = {}
    killed_worker = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            tree.update(_descendants(proc.pid))
            busy = [p for p, cmd in tree.items() if cmd.startswith("ray::video_task")]
            if busy and killed_worker is None:
                killed_worker = busy[0]
                os.kill(killed_worker, signal.SIGKILL)  # one of the first videos, being decoded
            try:
                done = json.loads(state.read_text()) if state.exists() else {"next_index": 0}
            except ValueError:  # pragma: no cover - written atomically
                continue
            # past the first videos (so the killed one was retried and committed) and with parts written ahead
            ahead = [p for p in (out / ".build-parts").glob("*.json") if int(p.stem) >= done["next_index"]] \
                if (out / ".build-parts").exists() else []
            if done["next_index"] >= 4 and ahead:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the build ended before it could be killed: {proc.communicate()[1][-2000:]}"
    finally:
        _end(proc, tree)
    assert killed_worker is not None, "no Ray worker was seen decoding"
    committed = json.loads(state.read_text())
    kept = {s["name"]: (out / s["name"]).stat().st_mtime_ns for s in committed["shards"]}
    assert kept and not (out / "manifest.json").exists()
    assert not [f for f in committed["failed"] if "died" in f["reason"]]  # the killed video was retried

    proc = _start(_args(inputs, out, "--ray", "--workers", "2", "--resume"))
    tree = {}
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        _end(proc, tree)
    assert proc.returncode == 3, stderr  # the unreadable file, as in the local build
    assert "Traceback" not in stderr
    assert _files(out) == _files(reference)  # byte for byte: nothing lost, nothing twice
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())  # committed shards were kept
    assert not (out / ".build-parts").exists() and not list(out.glob(".shard-*"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["shards"] >= 4 and m["without_audio"] == ["v9_silent.mp4"]
    assert [f["source"] for f in m["failed"]] == ["v3_bad.mp4"]
    keys = [k for s in m["shards"] for k in s["keys"]]
    assert len(keys) == len(set(keys)) == 9


def test_parts_left_by_a_killed_driver_are_reused(inputs, tmp_path):
    """The outcomes a killed Ray run wrote are read back, stale and torn ones dropped (no Ray needed)."""
    from data_tools import build_ray

    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "000000001.tar").write_bytes(b"x" * 1024)
    (parts / "000000001.json").write_text(json.dumps({"index": 1, "error": None, "size": 1024, "num_frames": 2,
                                                      "has_audio": True, "warnings": []}))
    (parts / "000000002.json").write_text(json.dumps({"index": 2, "error": "unreadable"}))
    (parts / "000000003.tar").write_bytes(b"x" * 100)  # its outcome was never written: the task was killed
    (parts / "000000004.tar").write_bytes(b"x" * 10)  # torn: shorter than its outcome says
    (parts / "000000004.json").write_text(json.dumps({"index": 4, "error": None, "size": 1024}))
    (parts / "000000000.json").write_text(json.dumps({"index": 0, "error": "before the resume point"}))
    (parts / ".000000005.tar.tmp-abc").write_bytes(b"")
    done = build_ray._reusable_parts(parts, start=1, n=9)
    assert sorted(done) == [1, 2] and done[2]["error"] == "unreadable"
    assert sorted(p.name for p in parts.iterdir()) == ["000000001.json", "000000001.tar", "000000002.json"]
    assert np.all(np.frombuffer((parts / "000000001.tar").read_bytes(), np.uint8) == ord("x"))


def test_unreachable_cluster_is_one_line_and_leaves_out_alone(inputs, reference, tmp_path, capsys, monkeypatch):
    """``--ray auto`` with no cluster to join: refused before ``--out`` is touched (an earlier build stays)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    rc = avis_cli.main(_args(inputs, out, "--ray", "auto"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "avis build: error: --ray auto: cannot start or join Ray (" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
