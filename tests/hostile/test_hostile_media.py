"""Bad media files against ``avis build`` and ``avis infer``."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from avis import cli as avis_cli
from tests.hostile.conftest import call, error_line

# case -> what the one line says (None: the file is usable and the command succeeds)
MEDIA_CASES = {
    "zero-byte": r"unreadable media file \(Invalid data found",
    "text-as-mp4": r"unreadable media file \(Invalid data found",
    "truncated-50%": r"unreadable media file \(Invalid data found",  # mp4's index (moov) is at the end: cut off
    "audio-only": r"no video stream",
    "corrupt-aac": r"corrupt or truncated media",
    "absurd-dimensions": r"corrupt or truncated media",  # FFmpeg refuses the 60000 x 60000 SPS before allocating
    "video-only": None,
}


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("toy_run")
    assert avis_cli.main(["train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.max_steps=2",
                          "trainer.eval_every=0", "trainer.progress=false", "trainer.tensorboard=false"]) == 0
    return run / "checkpoints" / "last.pt"


@pytest.mark.parametrize("case", list(MEDIA_CASES))
def test_build(case, media, tmp_path, capsys):
    """One bad file among good ones: a ``failed: FILE: reason`` line, exit 3, the good ones still built."""
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(media["good"], src / "a_good.mp4")
    shutil.copy(media[case], src / f"b_{media[case].name}")
    out = tmp_path / "out"
    rc, _, err = call(capsys, "build", "--videos", src, "--out", out, "--fps", 5)
    assert "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    if MEDIA_CASES[case] is None:
        assert rc == 0, err
        assert manifest["counts"]["videos"] == 2
        assert manifest["without_audio"] == [f"b_{media[case].name}"]
        return
    assert rc == 3
    lines = [ln for ln in err.splitlines() if "avis build: failed:" in ln]
    assert len(lines) == 1
    line = lines[0][lines[0].index("avis build: failed:"):]
    assert line.startswith(f"avis build: failed: b_{media[case].name}: "), line
    assert re.search(MEDIA_CASES[case], line), line
    assert manifest["counts"]["videos"] == 1 and manifest["failed"][0]["source"] == f"b_{media[case].name}"


def test_build_require_audio_refuses_video_only(media, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(media["video-only"], src / "silent.mp4")
    rc, _, err = call(capsys, "build", "--videos", src, "--out", tmp_path / "out", "--require-audio")
    assert rc == 3 and "avis build: failed: silent.mp4: no sound stream (--require-audio)" in err


@pytest.mark.parametrize("case", list(MEDIA_CASES))
def test_infer(case, media, toy_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("earlier output\n")
    rc, _, err = call(capsys, "infer", media[case], "--checkpoint", toy_checkpoint, "--out", out, "--no-overlay")
    if MEDIA_CASES[case] is None:
        assert rc == 0, err
        assert json.loads((out / "videos.json").read_text())["videos"][0]["length"] > 0
        return
    error_line(rc, err, "infer", media[case], MEDIA_CASES[case])
    assert rc == 2
    assert (out / "results.json").read_text() == "earlier output\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_infer_stops_before_writing_when_any_video_is_bad(media, toy_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = call(capsys, "infer", media["good"], media["text-as-mp4"], "--checkpoint", toy_checkpoint,
                      "--out", out, "--no-overlay")
    error_line(rc, err, "infer", media["text-as-mp4"], "unreadable media file")
    assert not (out / "results.json").exists()
