"""Shards from elsewhere, through webdataset's streaming stack: a web server on 127.0.0.1 (python's http.server in
a thread) serves a built dataset, and ``avis inspect`` / ``avis train`` / ``avis eval`` read it by URL with the
same results as from the disk; a server that breaks off mid-shard is read again (or skipped / an error, as
``data.train.on_error`` says); ``pipe:`` and fsspec (``memory://``) URLs; a manifest from a server names no
command and no other place."""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from avis import cli as avis_cli
from avis.data import ShardSource, iter_videos
from avis.engine import checkpoint as ckpt_io
from avis.errors import InputError
from avis.io import masks as mask_io
from tests.avmedia import clicks_audio, write_video
from tests.conftest import TOY

CATS = [{"id": 3, "name": "cat"}, {"id": 5, "name": "drum"}]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 annotated videos (one silent) in 4 shards: ``ROOT/shards/shard-00000{0..3}.tar`` + manifest."""
    root = tmp_path_factory.mktemp("remote")
    src = root / "src"
    src.mkdir()
    videos, anns = [], []
    for v in range(4):
        n = 6 + v
        write_video(src / f"v{v}.mp4", num_frames=n, fps=10, size=(40, 32),
                    audio=None if v == 2 else clicks_audio(n / 10, [0.1 + 0.1 * v]))
        videos.append({"id": 1 + v, "width": 40, "height": 32, "fps": 10, "length": n, "video_file": f"v{v}.mp4"})
        segs = []
        for t in range(n):
            m = np.zeros((32, 40), np.uint8)
            m[4 + v: 14 + v, t: t + 12] = 1
            segs.append(mask_io.encode(m))
        anns.append({"id": 10 + v, "video_id": 1 + v, "category_id": CATS[v % 2]["id"], "segmentations": segs})
    (root / "ann.json").write_text(json.dumps({"videos": videos, "annotations": anns, "categories": CATS}))
    assert avis_cli.main(["build", "--videos", str(src), "--annotations", str(root / "ann.json"), "--out",
                          str(root / "shards"), "--shard-size", "1"]) == 0
    assert len(list((root / "shards").glob("shard-*.tar"))) == 4
    return root


class _Handler(SimpleHTTPRequestHandler):
    """Serves the folder; a file named in ``server.drops`` (name -> how many more times; -1: always) gets its
    full Content-Length but only half its bytes, then the connection closes (a server breaking off)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        with self.server.lock:
            self.server.requests.append(name)
            drop = self.server.drops.get(name, 0)
            if drop > 0:
                self.server.drops[name] = drop - 1
        if drop:
            data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            time.sleep(self.server.drop_delay)  # the client reads what came before the break
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(dataset):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(dataset)))
    httpd.drops, httpd.requests, httpd.lock, httpd.drop_delay = {}, [], threading.Lock(), 0.0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _reset(server):
    server.drops.clear()
    server.requests.clear()
    server.drop_delay = 0.0


@pytest.fixture(autouse=True)
def _restore_logging():
    """``avis.cli.main`` sets up logging on the (captured, later closed) stderr of the test that first calls it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _call(capsys, *args):
    capsys.readouterr()
    rc = avis_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_by_url_equals_the_disk(dataset, server, capsys):
    rc, local, err = _call(capsys, "inspect", dataset / "shards")
    assert rc == 0, err
    assert len(local.splitlines()) == 4
    for url in (f"{server.url}/shards/", f"{server.url}/shards/manifest.json",
                f"{server.url}/shards/shard-{{000000..000003}}.tar"):
        rc, remote, err = _call(capsys, "inspect", url)
        assert rc == 0, err
        assert remote == local
    assert server.requests.count("manifest.json") == 2 and server.requests.count("shard-000002.tar") == 3


def test_sources_by_url_pipe_and_fsspec_read_the_same_videos(dataset, server):
    shards = dataset / "shards"
    local = [(v.video_id, v.frames.tobytes(), v.audio.tobytes()) for v in iter_videos(shards)]
    assert [v[0] for v in local] == [1, 2, 3, 4]
    by_url = ShardSource(f"{server.url}/shards/")
    assert by_url.categories == CATS  # from the manifest, fetched by URL
    assert by_url.units() == [f"{server.url}/shards/shard-{i:06d}.tar" for i in range(4)]
    pipes = [f"pipe:cat {shards}/shard-{i:06d}.tar" for i in range(4)]
    with pytest.raises(InputError, match=r"no manifest\.json with 'categories' beside the shards \(a pipe: shard"):
        ShardSource(pipes)
    by_pipe = ShardSource(pipes, categories=str(shards / "manifest.json"))

    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for p in shards.iterdir():
        fs.pipe(f"/avis-test/shards/{p.name}", p.read_bytes())
    try:
        by_glob = ShardSource("memory://avis-test/shards/shard-*.tar")
        assert [u.rsplit("/", 1)[-1] for u in by_glob.units()] == [f"shard-{i:06d}.tar" for i in range(4)]
        for src in (by_url, by_pipe, by_glob, ShardSource("memory://avis-test/shards/")):
            got = [(v.video_id, v.frames.tobytes(), v.audio.tobytes())
                   for u in src.units() for v in (x.load() for x in src.videos(u, strict=True))]
            assert got == local
    finally:
        fs.rm("/avis-test", recursive=True)


def _train(monkeypatch, capsys, run_dir: Path, pattern: str, *extra) -> tuple[int, str, list[dict]]:
    """``avis train`` of the toy method on ``pattern`` (8 steps); (exit code, stderr + stdout, per-step trace)."""
    from avis.engine import train as train_mod
    from tests.engine_hooks import Trace

    monkeypatch.setattr(train_mod, "run", functools.partial(train_mod.run, hooks=[Trace(run_dir / "trace")]))
    rc, out, err = _call(capsys, "train", "experiment=toy_av", TOY, "data=shards", f"data.train.pattern={pattern}",
                         "data.batch_size=2", "data.num_workers=0", "data.scales=[24]", "data.shuffle_buffer=4",
                         "data.clips_per_video=2", "trainer.max_steps=8", "trainer.ckpt_every=4", "trainer.eval_every=0",
                         "trainer.progress=false", "trainer.tensorboard=false", f"hydra.run.dir={run_dir}", *extra)
    trace = run_dir / "trace" / "trace_rank0.jsonl"
    steps = [json.loads(ln) for ln in trace.read_text().splitlines()] if trace.exists() else []
    return rc, err + out, steps


def _weights(run_dir: Path) -> dict:
    return ckpt_io.load(run_dir / "checkpoints" / "last.pt")["model"]


def test_train_and_eval_by_url_equal_the_disk(dataset, server, monkeypatch, capsys, tmp_path):
    """The same shards from the disk and from the server: the same batches (videos per step), losses and final
    weights; a server that breaks off once in the middle of a shard changes nothing (the shard is read again,
    continuing after the samples already handed out)."""
    rc, err, disk = _train(monkeypatch, capsys, tmp_path / "disk", str(dataset / "shards"))
    assert rc == 0, err
    assert len(disk) == 8
    server.drops["shard-000001.tar"] = 1
    rc, err, web = _train(monkeypatch, capsys, tmp_path / "web", f"{server.url}/shards/")
    assert rc == 0, err
    # 2 epochs of 4 batches: the shard is requested 3 times, the first transfer broken off and read again
    assert server.requests.count("shard-000001.tar") == 3
    assert err.count("the transfer stopped early); reading it again after its first 0 samples (retry 1 of 2)") == 1
    for a, b in zip(disk, web):
        assert (a["video_ids"], a["loss"], a["params"]) == (b["video_ids"], b["loss"], b["params"])
    wa, wb = _weights(tmp_path / "disk"), _weights(tmp_path / "web")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # resumed from the web run's step-4 checkpoint, by URL: steps 5-8 are the uninterrupted run's
    rc, err, resumed = _train(monkeypatch, capsys, tmp_path / "resumed", f"{server.url}/shards/",
                              f"trainer.resume={tmp_path / 'web' / 'checkpoints' / 'step_00000004.pt'}")
    assert rc == 0, err
    assert [s["step"] for s in resumed] == [5, 6, 7, 8]
    for a, b in zip(disk[4:], resumed):
        assert (a["video_ids"], a["loss"], a["params"]) == (b["video_ids"], b["loss"], b["params"])

    # avis eval by URL: the same results and metrics as from the disk
    ckpt = tmp_path / "disk" / "checkpoints" / "last.pt"
    outs = []
    for name, shards in (("e_disk", dataset / "shards"), ("e_web", f"{server.url}/shards/")):
        rc, _, err = _call(capsys, "eval", "--checkpoint", ckpt, "--shards", shards, "--out", tmp_path / name)
        assert rc == 0, err
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics.pop("timing", None)
        metrics.pop("checkpoint", None)
        outs.append([(tmp_path / name / f).read_text() for f in ("results.json", "gt.json")] + [metrics])
    assert outs[0] == outs[1]
    assert len(json.loads(outs[0][1])["annotations"]) == 4  # the ground truth carried in the shards


def test_workers_read_urls_and_resume_inside_an_epoch(dataset, server):
    """2 DataLoader workers (each running curl) split the URLs; every video once an epoch, the same batches as
    from the disk, and a stream resumed at batch 2 gives exactly the rest of the epoch."""
    from avis.data.clips import ClipStream, Position

    def epoch(pattern, start=0):
        stream = ClipStream(ShardSource(pattern), clip_length=2, batch_size=1, seed=5, num_workers=2,
                            clips_per_video=1, shuffle_buffer=2, scales=[24])
        out = []
        batches = stream.batches(Position(0, start))
        for batch, info in batches:
            if info["epoch"] != 0:
                break
            out.append((batch["video_ids"], batch["frames"], info["position"]))
        batches.close()
        return out

    web, disk = epoch(f"{server.url}/shards/"), epoch(str(dataset / "shards"))
    assert sorted(v for ids, _, _ in web for v in ids) == [1, 2, 3, 4]
    assert [(i, p) for i, _, p in web] == [(i, p) for i, _, p in disk]
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(web, disk))
    rest = epoch(f"{server.url}/shards/", start=2)
    assert [(i, p) for i, _, p in rest] == [(i, p) for i, _, p in web[2:]]
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(rest, web[2:]))


def test_a_broken_transfer_continues_after_the_samples_handed_out(dataset, server, caplog):
    """One shard of 4 videos, broken off at half its bytes: the videos read before the break are not handed out
    twice, the others come from the second transfer; the same videos as from the disk."""
    import tarfile

    all_tar = dataset / "all.tar"
    if not all_tar.exists():
        with tarfile.open(all_tar, "w", format=tarfile.USTAR_FORMAT) as out:
            for i in range(4):
                with tarfile.open(dataset / "shards" / f"shard-{i:06d}.tar") as t:
                    for m in t.getmembers():
                        out.addfile(m, t.extractfile(m))
    local = [(v.video_id, v.frames.tobytes()) for v in iter_videos(all_tar)]
    server.drops["all.tar"], server.drop_delay = 1, 1.0
    src = ShardSource(f"{server.url}/all.tar", categories=CATS)
    with caplog.at_level(logging.WARNING, logger="avis.data.shards"):
        got = [(v.video_id, v.load().frames.tobytes()) for v in src.videos(src.units()[0])]
    assert got == local and [g[0] for g in got] == [1, 2, 3, 4]
    assert server.requests == ["all.tar", "all.tar"]
    (msg,) = [r.getMessage() for r in caplog.records]
    n = int(msg.split("reading it again after its first ")[1].split()[0])
    assert 1 <= n < 4  # some samples were handed out before the break, and not again


def test_a_server_that_always_breaks_off(dataset, server, monkeypatch, capsys, tmp_path, caplog):
    """Read again ``retries`` times; then ``on_error=warn`` skips the rest of the shard (its first samples are
    kept) and training goes on, ``on_error=fail`` stops with one line naming the URL."""
    server.drops["shard-000002.tar"] = -1
    url = f"{server.url}/shards/shard-000002.tar"
    with caplog.at_level(logging.WARNING, logger="avis.data.shards"):
        src = ShardSource(f"{server.url}/shards/", retries=1)
        assert [v.video_id for v in src.videos(url)] == []
    assert server.requests.count("shard-000002.tar") == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert any("reading it again" in m for m in msgs)
    assert any(m.startswith(f"skipping the rest of this shard: {url}: unreadable shard (curl exited with status 18: "
                            "the transfer stopped early)") for m in msgs)

    rc, err, steps = _train(monkeypatch, capsys, tmp_path / "warn", f"{server.url}/shards/")
    assert rc == 0, err
    assert len(steps) == 8 and all(3 not in s["video_ids"] for s in steps)
    assert "skipping the rest of this shard" in err
    rc, err, _ = _train(monkeypatch, capsys, tmp_path / "fail", f"{server.url}/shards/", "data.train.on_error=fail",
                        "data.train.retries=0")
    assert rc == 2
    lines = [ln for ln in err.splitlines() if "avis train: error: " in ln]
    assert lines == [f"avis train: error: {url}: unreadable shard (curl exited with status 18: the transfer "
                     "stopped early)"], err
    assert "Traceback" not in err


def test_unreachable_shards_are_one_line(server, capsys):
    """A missing file on the server, a port nobody listens on, an fsspec protocol without its backend, a scheme
    nobody reads: one line each, naming the URL."""
    import importlib.util
    import socket

    with socket.socket() as s:  # a free port, closed again
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/shard-000000.tar"
    cases = [(f"{server.url}/shards/shard-000009.tar", r"unreadable shard \(curl exited with status 22: the server "
                                                       r"answered with an HTTP error\)"),
             (closed, r"unreadable shard \(curl exited with status 7: could not connect\)"),
             ("s5://bucket/shard-000000.tar", r"no reader for 's5:' URLs")]
    if importlib.util.find_spec("fsspec") and not importlib.util.find_spec("s3fs"):
        cases.append(("s3://bucket/shard-000000.tar", r"unreadable shard \(Install s3fs to access S3\)"))
    for url, what in cases:
        rc, _, err = _call(capsys, "inspect", url)
        lines = [ln for ln in err.splitlines() if "avis inspect: error: " in ln]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"avis inspect: error: {url}: "), err
        assert re.search(what, lines[0]), lines[0]


def test_a_manifest_from_a_server_names_no_command(dataset, server, tmp_path):
    """Shard names in a fetched manifest are plain file names beside it: a ``pipe:`` name (which would run a
    command) or a path elsewhere is refused before anything is opened."""
    marker = tmp_path / "ran"
    manifest = json.loads((dataset / "shards" / "manifest.json").read_text())
    bad = dataset / "bad"
    for name in (f"pipe:touch {marker}", "../shards/shard-000000.tar", "/etc/passwd", "sub/shard-000000.tar"):
        shutil.rmtree(bad, ignore_errors=True)
        bad.mkdir()
        (bad / "manifest.json").write_text(json.dumps({**manifest, "shards": [{"name": name}]}))
        with pytest.raises(InputError, match=r"shard name .* is not a plain file name"):
            ShardSource(f"{server.url}/bad/")
        assert "shard-000000.tar" not in server.requests
    assert not marker.exists()


def test_eval_runs_no_command_a_checkpoint_names(dataset, tmp_path, capsys):
    """A checkpoint whose stored config reads validation shards through ``pipe:`` is refused unless the shards
    are given on the command line."""
    marker = tmp_path / "ran"
    rc, _, err = _call(capsys, "train", "experiment=toy_av", TOY, "data=shards",
                       f"data.train.pattern={dataset / 'shards'}", f"data.val_pattern='pipe:touch {marker}'",
                       "data.batch_size=2", "data.num_workers=0", "data.scales=[24]", "trainer.max_steps=1",
                       "trainer.eval_every=0", "trainer.progress=false", "trainer.tensorboard=false",
                       f"hydra.run.dir={tmp_path / 'run'}")
    assert rc == 0, err
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    rc, _, err = _call(capsys, "eval", "--checkpoint", ckpt, "--out", tmp_path / "e")
    assert rc == 2 and f"avis eval: error: {ckpt}: the checkpoint's config reads its validation shards through a " \
                       "command" in err, err
    assert not marker.exists()
    rc, _, err = _call(capsys, "eval", "--checkpoint", ckpt, "--shards", dataset / "shards", "--out", tmp_path / "e")
    assert rc == 0, err
    assert not marker.exists()
