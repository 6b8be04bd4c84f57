"""Hostile inputs of ``avis build`` (and ``avis infer``'s rate): symbolic links out of ``--videos``, absurd frame
rates, RLE masks whose counts do not cover their frame, and a valid mp4 with an edit list that must be accepted
as the container presents it. Refusals are checked in a real process capped at 2 GiB of address space."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avis.io import masks as mask_io
from tests.avmedia import frame_index
from tests.conftest import REPO
from tests.hostile import jsons
from tests.hostile.conftest import call, error_line
from tests.hostile.media import edit_list

CAP = 2 << 30  # bytes of address space for the capped runs


def capped(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """``avis ARGS`` in a process whose address space is capped at 2 GiB (``ulimit -v``); it must answer
    within ``timeout`` seconds (a hang guard, not a speed test)."""
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({CAP}, {CAP})); "
            "from avis.cli import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def run(capsys, cap: bool, *args) -> tuple[int, str]:
    """``avis ARGS`` -> (exit code, stderr): capped in a process of its own (the worst case of each class), or
    in this process (the others, to keep the suite fast)."""
    if cap:
        p = capped(*args)
        return p.returncode, p.stderr
    rc, _, err = call(capsys, *args)
    return rc, err


def one_video_gt() -> dict:
    """``jsons.valid_gt(media=True)`` without its second video: in the capped process torch cannot load, so
    only the refused input may be in the file."""
    gt = jsons.valid_gt(media=True)
    gt["videos"] = gt["videos"][:1]
    gt["annotations"] = [a for a in gt["annotations"] if a["video_id"] == 1]
    return gt


def failed_lines(err: str) -> list[str]:
    return [ln[ln.index("avis build: failed:"):] for ln in err.splitlines() if "avis build: failed:" in ln]


# ------------------------------------------------------------------------------------------------ symlinks

@pytest.fixture
def linked(tmp_path, media):
    """``videos/`` (JPEG frames only: the capped process cannot load torch to build a good video) and a
    ``secret/`` folder beside it that no link may pull in."""
    videos, secret = tmp_path / "videos", tmp_path / "secret"
    videos.mkdir()
    secret.mkdir()
    shutil.copy(media["good"], secret / "private.mp4")
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(secret / "private.jpg")
    shutil.copy(media["good"], secret / "private.m4a")
    return videos, secret


def _frames_gt(names, audio_file=None) -> dict:
    v = {"id": 1, "width": 64, "height": 48, "fps": 5, "file_names": names}
    if audio_file:
        v["audio_file"] = audio_file
    return {"videos": [v], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}


# case -> (how the link is made, the annotation file or None for a raw-video scan, the file the line names)
def _symlink_cases(videos: Path, secret: Path) -> dict:
    from PIL import Image

    for t in range(3):
        Image.fromarray(np.full((48, 64, 3), 20 * t, np.uint8)).save(videos / f"{t:05d}.jpg")
    ok = [f"{t:05d}.jpg" for t in range(3)]
    return {
        "raw-scan-file-link": (lambda: (videos / "b_link.mp4").symlink_to(secret / "private.mp4"), None,
                               "b_link.mp4"),
        "raw-scan-relative-link": (lambda: (videos / "b_link.mp4").symlink_to("../secret/private.mp4"), None,
                                   "b_link.mp4"),
        "raw-scan-link-chain": (lambda: ((videos / "c.mp4").symlink_to(secret / "private.mp4"),
                                         (videos / "b_link.mp4").symlink_to("c.mp4")), None, "b_link.mp4"),
        "video_file-link": (lambda: (videos / "b_link.mp4").symlink_to(secret / "private.mp4"),
                            {"videos": [{"id": 1, "width": 64, "height": 48, "fps": 5, "length": 2,
                                         "video_file": "b_link.mp4"}], "annotations": [],
                             "categories": [{"id": 1, "name": "cat"}]}, "b_link.mp4"),
        "frame-link": (lambda: (videos / "f.jpg").symlink_to(secret / "private.jpg"),
                       _frames_gt(ok[:2] + ["f.jpg"]), "f.jpg"),
        "folder-link": (lambda: (videos / "dir").symlink_to(secret, target_is_directory=True),
                        _frames_gt(["dir/private.jpg"] + ok[1:]), "dir/private.jpg"),
        "audio_file-link": (lambda: (videos / "s.m4a").symlink_to(secret / "private.m4a"),
                            _frames_gt(ok, "s.m4a"), "s.m4a"),
    }


SYMLINK_CASES = ["raw-scan-file-link", "raw-scan-relative-link", "raw-scan-link-chain", "video_file-link",
                 "frame-link", "folder-link", "audio_file-link"]


@pytest.mark.parametrize("case", SYMLINK_CASES)
def test_symlink_out_of_the_videos_folder_is_refused(case, linked, tmp_path, capsys):
    videos, secret = linked
    make, gt, named = _symlink_cases(videos, secret)[case]
    make()
    args = ["build", "--videos", videos, "--out", tmp_path / "out", "--fps", 5]
    if gt is not None:
        (tmp_path / "gt.json").write_text(json.dumps(gt))
        args += ["--annotations", tmp_path / "gt.json"]
    rc, err = run(capsys, case == "raw-scan-file-link", *args)
    assert rc == 3 and "Traceback" not in err, err
    lines = failed_lines(err)
    assert lines and all(re.search(rf"a symbolic link to {re.escape(str(secret.resolve()))}/private\.\w+, "
                                   rf"outside {re.escape(str(videos.resolve()))}; refusing to read it", ln)
                         for ln in lines), lines
    assert [ln for ln in lines if named in ln], lines
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "symbolic link" in manifest["failed"][-1]["reason"]
    assert manifest["counts"]["videos"] == 0  # nothing of secret/ is in the shards


def test_links_that_stay_inside_are_read(linked, media, tmp_path, capsys):
    videos, _ = linked
    shutil.copy(media["good"], videos / "a_good.mp4")
    (videos / "sub").mkdir()
    (videos / "sub" / "b_link.mp4").symlink_to("../a_good.mp4")
    rc, _, err = call(capsys, "build", "--videos", videos, "--out", tmp_path / "out", "--fps", 5)
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["videos"] == 2


# ------------------------------------------------------------------------------------------------ frame rates

RATE_FLAGS = ["inf", "1e9", "nan", "-1", "0", "1e400", "-inf", "1001"]


@pytest.mark.parametrize("value", RATE_FLAGS)
def test_build_fps_flag(value, media, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(media["good"], src / "a.mp4")
    rc, err = run(capsys, value in ("inf", "1e9"), "build", "--videos", src, "--out", tmp_path / "out",
                  f"--fps={value}")
    shown = {"1e400": "inf", "-inf": "-inf", "1e9": "1e\\+09"}.get(value, value)
    error_line(rc, err, "build", None, rf"--fps must be a frame rate in \(0, 1000\] per second, "
                                                      rf"got {shown}$")
    assert rc == 2 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["inf", "1e9", "nan", "-1"])
def test_infer_fps_flag(value, media, toy_checkpoint, tmp_path, capsys):
    """The same rule for ``avis infer --fps`` (one shared check, before the checkpoint is even loaded)."""
    out = tmp_path / "out"
    rc, _, err = call(capsys, "infer", media["good"], "--checkpoint", toy_checkpoint, "--out", out, f"--fps={value}")
    error_line(rc, err, "infer", None, r"--fps must be a frame rate in \(0, 1000\] per second")
    assert rc == 2 and not out.exists()


# annotation 'fps' -> the value in the message ('1e999' is how JSON writes a number too large for a float)
ANNOTATION_RATES = {"1e9": "got 1e+09", "1e999": "got inf", "-5": "got -5", "0": "got 0",
                    '"fast"': "must be a number of frames per second, got str",
                    "true": "must be a number of frames per second, got bool", "1" + "0" * 400: "a number of"}


@pytest.mark.parametrize("value", list(ANNOTATION_RATES))
def test_annotation_fps(value, media, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(media["good"], videos / "a.mp4")
    shutil.copy(media["good"], videos / "b.mp4")
    text = json.dumps(one_video_gt()).replace('"fps": 5', f'"fps": {value}', 1)
    (tmp_path / "gt.json").write_text(text)
    rc, err = run(capsys, value in ("1e9", "1e999"), "build", "--videos", videos, "--annotations",
                  tmp_path / "gt.json", "--out", tmp_path / "out")
    assert rc == 3 and "Traceback" not in err, err
    (line,) = failed_lines(err)
    assert line.startswith("avis build: failed: a.mp4: video 1: 'fps' ") and ANNOTATION_RATES[value] in line, line


# ------------------------------------------------------------------------------------------------ RLE coverage

def _rle_cases() -> dict:
    full = mask_io.encode(np.ones((48, 64), np.uint8))
    box = np.zeros((48, 64), np.uint8)
    box[10:20, 5:30] = 1
    good = mask_io.encode(box)
    short = mask_io.encode(np.ones((40, 64), np.uint8))["counts"]  # a whole 40 x 64 mask, labelled 48 x 64
    long_ = mask_io.encode(np.ones((480, 640), np.uint8))["counts"]  # 100 times the pixels (writes past the end)
    return {
        "short-counts": ({"size": [48, 64], "counts": short}, r"RLE counts cover 2560 pixels, not 48x64 = 3072"),
        "long-counts": ({"size": [48, 64], "counts": long_}, r"RLE counts cover 307200 pixels, not 48x64 = 3072"),
        "empty-counts": ({"size": [48, 64], "counts": ""}, r"RLE counts cover 0 pixels, not 48x64 = 3072"),
        "one-run-too-many": ({"size": [48, 64], "counts": good["counts"] + "1"},
                             r"RLE counts cover \d+ pixels, not 48x64 = 3072"),
        "uncompressed-short": ({"size": [48, 64], "counts": [100, 200]},
                               r"uncompressed RLE counts sum to 300, not height\*width = 3072"),
        "not-rle-characters": ({"size": [48, 64], "counts": full["counts"] + "~~"},
                               r"compressed RLE counts contain characters outside"),
    }


RLE_CASES = list(_rle_cases())


@pytest.mark.parametrize("case", RLE_CASES)
def test_rle_counts_must_cover_the_frame(case, media, tmp_path, capsys):
    """Refused at build time, naming the annotation file, before the video is decoded: pycocotools would
    write a mask of such counts past its buffer in every reader."""
    seg, what = _rle_cases()[case]
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(media["good"], videos / "a.mp4")
    shutil.copy(media["good"], videos / "b.mp4")
    gt = one_video_gt()
    gt["annotations"][0]["segmentations"][1] = seg
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rc, err = run(capsys, case == "long-counts", "build", "--videos", videos, "--annotations", tmp_path / "gt.json",
                  "--out", tmp_path / "out")
    assert rc == 3 and "Traceback" not in err, err
    (line,) = failed_lines(err)
    assert line.startswith(f"avis build: failed: a.mp4: {tmp_path / 'gt.json'}: video 1 annotation 1 frame 1: ")
    assert re.search(what, line), line


def test_exact_coverage_passes_and_masks_survive(media, tmp_path, capsys):
    from avis.data import iter_videos

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(media["good"], videos / "a.mp4")
    shutil.copy(media["good"], videos / "b.mp4")
    gt = jsons.valid_gt(media=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rc, _, err = call(capsys, "build", "--videos", videos, "--annotations", tmp_path / "gt.json", "--out",
                      tmp_path / "out")
    assert rc == 0, err
    v = next(iter_videos(tmp_path / "out"))
    np.testing.assert_array_equal(v.instances[0].masks[1], mask_io.decode(gt["annotations"][0]["segmentations"][1]))


# ------------------------------------------------------------------------------------------------ edit lists

@pytest.mark.parametrize("gop", [None, 1])
def test_edit_list_mp4_is_accepted_as_presented(gop, tmp_path, capsys):
    """Timestamps from -1 s, an edit list keeping the last 15 of 30 frames: the frames decoders show are built
    (it was refused as 'truncated: 15 of the 30 frames its header announces'), and the sound starts with them."""
    from avis.data import iter_videos
    from data_tools import decode as dec

    videos = tmp_path / "videos"
    videos.mkdir()
    path = edit_list(videos / "cut.mp4", gop)
    assert dec.probe(path).num_frames == 30  # the header still counts the cut samples
    rc, _, err = call(capsys, "build", "--videos", videos, "--out", tmp_path / "out", "--fps", 15)
    assert rc == 0, err
    (v,) = list(iter_videos(tmp_path / "out"))
    assert [frame_index(f) for f in v.frames] == list(range(15, 30))
    np.testing.assert_allclose(v.frame_times, np.arange(15) / 15)
    assert v.has_audio and v.audio.shape == (1, 16000)  # 1 s presented
    onsets = np.flatnonzero(np.abs(v.audio[0]) > 0.3) / 16000
    assert len(onsets) and abs(onsets[0] - 0.5) <= 0.01  # the click at container time +0.5 s; -0.5 s is cut


def test_edit_list_mp4_in_infer(tmp_path, toy_checkpoint, capsys):
    path = edit_list(tmp_path / "cut.mp4", 1)
    rc, _, err = call(capsys, "infer", path, "--checkpoint", toy_checkpoint, "--out", tmp_path / "out",
                      "--fps", 15, "--no-overlay")
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "videos.json").read_text())["videos"][0]["length"] == 15
