"""Inputs that must get a clean answer: FIFOs and devices where files are read, ``avis synth`` sizes beyond
what it can make, ``avis eval --limit`` and categories that do not match the checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from avis.engine.evaluate import iter_eval_videos
from tests.hostile import jsons
from tests.hostile.conftest import call, error_line


@pytest.fixture
def watchdog():
    """A command that blocks (a FIFO opened for reading waits for a writer forever) fails the test instead."""

    def boom(*_):
        raise TimeoutError("the command hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------ FIFOs

FIFO = r"a FIFO \(named pipe\), not a regular file"


@pytest.fixture(scope="module")
def fifo_inputs(tmp_path_factory, built, media) -> dict:
    root = tmp_path_factory.mktemp("fifo")
    paths = {}
    for name in ("shard.tar", "gt.json", "res.json", "ckpt.pt", "video.mp4"):
        os.mkfifo(root / name)
        paths[name] = root / name
    (root / "shards").mkdir()
    os.mkfifo(root / "shards" / "shard-000000.tar")
    (root / "videos").mkdir()
    shutil.copy(media["good"], root / "videos" / "a.mp4")
    os.mkfifo(root / "videos" / "b.mp4")
    gt = jsons.valid_gt(media=True)
    (root / "gt_media.json").write_text(json.dumps(gt))
    (root / "res_media.json").write_text(json.dumps(jsons.valid_results(gt)))
    (root / "gt_ok.json").write_text(json.dumps(jsons.valid_gt()))
    (root / "res_ok.json").write_text(json.dumps(jsons.valid_results()))
    return {"root": root, **paths}


def _fifo_cases(f: dict, ckpt: Path, built: Path, media: dict) -> dict:
    r = f["root"]
    return {
        "inspect-shard": (["inspect", f["shard.tar"]], f["shard.tar"]),
        "inspect-folder": (["inspect", r / "shards"], r / "shards" / "shard-000000.tar"),
        "score-gt": (["score", "--gt", f["gt.json"], "--results", r / "res_ok.json"], f["gt.json"]),
        "score-results": (["score", "--gt", r / "gt_ok.json", "--results", f["res.json"]], f["res.json"]),
        "ttest": (["ttest", "--gt", r / "gt_ok.json", "--a", f["res.json"], "--b", r / "res_ok.json"], f["res.json"]),
        "export-gt": (["export", "--gt", f["gt.json"], "--results", r / "res_ok.json", "--format", "png", "--out",
                       r / "o1"], f["gt.json"]),
        "export-overlay-video": (["export", "--gt", r / "gt_media.json", "--results", r / "res_media.json",
                                  "--format", "overlay", "--videos", r / "videos", "--out", r / "o2",
                                  "--score-threshold", "0"], r / "videos" / "b.mp4"),
        "eval-checkpoint": (["eval", "--checkpoint", f["ckpt.pt"], "--shards", built, "--out", r / "o3"], f["ckpt.pt"]),
        "eval-shards": (["eval", "--checkpoint", ckpt, "--shards", f["shard.tar"], "--out", r / "o4"], f["shard.tar"]),
        "eval-gt": (["eval", "--checkpoint", ckpt, "--shards", built, "--gt", f["gt.json"], "--out", r / "o5"],
                    f["gt.json"]),
        "infer-video": (["infer", f["video.mp4"], "--checkpoint", ckpt, "--out", r / "o6"], f["video.mp4"]),
        "infer-checkpoint": (["infer", media["good"], "--checkpoint", f["ckpt.pt"], "--out", r / "o7"], f["ckpt.pt"]),
        "build-annotations": (["build", "--videos", r / "videos", "--annotations", f["gt.json"], "--out", r / "o8"],
                              f["gt.json"]),
    }


FIFO_CASES = list(_fifo_cases({"root": Path("."), **{k: Path(k) for k in ("shard.tar", "gt.json", "res.json",
                                                                           "ckpt.pt", "video.mp4")}},
                              Path("c"), Path("b"), {"good": Path("g")}))


@pytest.mark.parametrize("case", FIFO_CASES)
def test_fifo_is_refused_not_waited_for(case, fifo_inputs, toy_checkpoint, built, media, capsys, watchdog):
    argv, path = _fifo_cases(fifo_inputs, toy_checkpoint, built, media)[case]
    rc, _, err = call(capsys, *argv)
    error_line(rc, err, argv[0], path, FIFO)
    assert rc == 2


def test_fifo_among_the_videos_of_a_build(fifo_inputs, tmp_path, capsys, watchdog):
    """``avis build`` over a folder holding a FIFO named like a video: that input fails, the others build."""
    rc, _, err = call(capsys, "build", "--videos", fifo_inputs["root"] / "videos", "--out", tmp_path / "o")
    assert rc == 3 and "Traceback" not in err
    assert f"avis build: failed: b.mp4: {FIFO.replace(chr(92), '')}" in err


@pytest.mark.parametrize("what", ["char-device", "folder"])
def test_other_non_files(what, fifo_inputs, capsys, watchdog):
    path, msg = {"char-device": ("/dev/zero", r"a character device, not a regular file"),
                 "folder": (fifo_inputs["root"] / "shards", r"a folder, not a regular file")}[what]
    rc, _, err = call(capsys, "score", "--gt", path, "--results", fifo_inputs["root"] / "res_ok.json")
    error_line(rc, err, "score", path, msg)


# ------------------------------------------------------------------------------------------------ synth

SYNTH_CASES = {
    "size-100000x100000": (["--size", "100000x100000"], r"width and height must be at most 4096"),
    "size-4096x4096-30-frames": (["--size", "4096x4096"], r"is 503316480 pixels a video, beyond the generator's"),
    "frames-1e8": (["--frames", "100000000"], r"--frames 100000000: at most 10000"),
    "frames-times-size": (["--size", "1024x1024", "--frames", "64"], r"pixels a video, beyond"),
    "fps-1e-9": (["--fps", "1e-9"], r"last 3e\+10 s, beyond the 600 s limit"),
    "fps-nan": (["--fps", "nan"], r"--fps nan: must be in \(0, 240\]"),
    "fps-inf": (["--fps", "inf"], r"--fps inf: must be in \(0, 240\]"),
    "videos-1e9": (["--videos", "1000000000"], r"--videos 1000000000: at most 100000"),
    "seed-negative": (["--seed", "-1"], r"--seed -1: must be >= 0"),
    "size-huge-digits": (["--size", "9" * 5000 + "x16"], r"expected WIDTHxHEIGHT"),
}


@pytest.mark.parametrize("case", list(SYNTH_CASES))
def test_synth_refuses_what_it_cannot_make(case, tmp_path, capsys):
    args, what = SYNTH_CASES[case]
    rc, _, err = call(capsys, "synth", "--out", tmp_path / "o", *args)
    error_line(rc, err, "synth", None, what)
    assert rc == 2 and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ eval --limit

@pytest.mark.parametrize("limit", ["-1", "0", "-1000000"])
def test_eval_limit_must_be_positive(limit, toy_checkpoint, built, tmp_path, capsys):
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", built, "--out", tmp_path,
                      "--limit", limit)
    error_line(rc, err, "eval", None, rf"--limit must be a number of videos >= 1, got {limit}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("limit, expected", [(None, 2), (1, 1), (2, 2), (5, 2), (0, 0), (-1, 0)])
def test_iter_eval_videos_limit(limit, expected):
    class Video:
        def __init__(self, name):
            self.name = name

        def load(self):
            return self

    class Source:
        def units(self):
            return ["u1", "u2"]

        def videos(self, unit, strict=False):
            assert strict  # evaluation never skips an unreadable video
            yield from (Video(f"{unit}-{k}") for k in "ab") if unit == "u1" else ()

    assert len(list(iter_eval_videos(Source(), limit))) == expected


def test_eval_limit_counts_videos(toy_checkpoint, built, tmp_path, capsys):
    rc, out, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", built, "--out", tmp_path,
                        "--limit", "1", "--json")
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1])["timing"]["videos"] == 1


# ------------------------------------------------------------------------------------------------ categories

@pytest.fixture(scope="module")
def foreign_shards(tmp_path_factory, media) -> dict:
    """Shards whose annotations use a category (3 'bird') the toy checkpoint (1 'toy0', 2 'toy1') lacks."""
    root = tmp_path_factory.mktemp("foreign")
    (root / "videos").mkdir()
    shutil.copy(media["good"], root / "videos" / "a.mp4")
    shutil.copy(media["good"], root / "videos" / "b.mp4")
    gt = jsons.valid_gt(media=True)
    gt["categories"].append({"id": 3, "name": "bird"})
    gt["annotations"][2]["category_id"] = 3
    (root / "gt.json").write_text(json.dumps(gt))
    assert call_build(root) == 0
    no_manifest = root / "no_manifest"
    no_manifest.mkdir()
    shutil.copy(root / "shards" / "shard-000000.tar", no_manifest / "shard-000000.tar")
    disjoint = json.loads(json.dumps(gt))
    disjoint["categories"] = [{"id": c["id"] + 10, "name": c["name"]} for c in gt["categories"]]
    for a in disjoint["annotations"]:
        a["category_id"] += 10
    (root / "gt_disjoint.json").write_text(json.dumps(disjoint))
    return {"shards": root / "shards", "no_manifest": no_manifest / "shard-000000.tar", "gt": root / "gt.json",
            "gt_disjoint": root / "gt_disjoint.json"}


def call_build(root: Path) -> int:
    from avis import cli

    return cli.main(["build", "--videos", str(root / "videos"), "--annotations", str(root / "gt.json"), "--out",
                     str(root / "shards"), "--fps", "5"])


def test_category_mismatch_names_the_files(foreign_shards, toy_checkpoint, tmp_path, capsys):
    f = foreign_shards
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", f["shards"], "--out", tmp_path / "a")
    line = error_line(rc, err, "eval", f["shards"] / "manifest.json",
                      r"the shards' categories 3 'bird' are not among the categories of the checkpoint")
    assert str(toy_checkpoint) in line
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", f["no_manifest"], "--out",
                      tmp_path / "b")
    line = error_line(rc, err, "eval", f["no_manifest"], r"sample \d+ \(video 2\): category id 3 is not among the "
                                                          r"categories of the checkpoint")
    assert str(toy_checkpoint) in line
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", f["shards"], "--gt",
                      f["gt_disjoint"], "--out", tmp_path / "c")
    error_line(rc, err, "eval", f["gt_disjoint"], r"categories of the checkpoint .* are not in this ground truth: "
                                                  r"1 'toy0', 2 'toy1'")
    assert not any((tmp_path / d).exists() and list((tmp_path / d).iterdir()) for d in "abc")


def test_refusals_within_a_2_gib_address_space(fifo_inputs, tmp_path):
    """``ulimit -v 2097152`` on the commands that do not import torch (torch alone maps about 3 GiB; the
    checkpoint commands are checked against their own footprint in test_hostile_checkpoints): each refusal is
    the clean line, quickly, within 2 GiB of address space."""
    import re
    import resource
    import subprocess
    import sys

    from tests.conftest import REPO

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    r = fifo_inputs["root"]
    cases = [(["synth", "--out", tmp_path / "o", "--size", "100000x100000"], r"width and height must be at most 4096"),
             (["synth", "--out", tmp_path / "o", "--size", "4096x4096"], r"pixels a video, beyond"),
             (["synth", "--out", tmp_path / "o", "--fps", "1e-9"], r"beyond the 600 s limit"),
             (["score", "--gt", fifo_inputs["gt.json"], "--results", r / "res_ok.json"], FIFO),
             (["score", "--gt", "/dev/zero", "--results", r / "res_ok.json"], r"a character device")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for argv, what in cases:
        p = subprocess.run([sys.executable, "-m", "avis", *map(str, argv)], capture_output=True, text=True, env=env,
                           preexec_fn=cap, timeout=120)
        assert p.returncode == 2 and re.search(what, p.stderr), (argv, p.stderr[-2000:])
        assert "internal error" not in p.stderr and "Traceback" not in p.stderr
