"""Bad media files against ``avis build`` and ``avis infer``."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.hostile import jsons
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


# ------------------------------------------------------------------------------------------------ build + bad JSON

# Whole-file problems stop the build before --out is touched (exit 2); a problem of one video's annotations
# fails that video only (exit 3, ``failed: <its media file>: video N annotation M: ...``), as a bad media
# file does: the other videos are built.
BUILD_JSON_CASES = {
    "wrong-frame-count": (3, r"video 1 annotation 1: 2 segmentations for 3 frames"),
    "unknown-category": (3, r"video 1 annotation 2: unknown category_id 99"),
    "rle-wrong-size": (3, r"video 1 annotation 1 frame 1: RLE size \[8, 8\] does not match the video's \[48, 64\]"),
    "duplicate-ids": (2, r"duplicate annotation id 1"),
    "missing-fields": (3, r"video 1: annotations are 64xNone but the frames are 64x48"),
    # its masks ("counts": "0") cover no pixel of their 1e5 x 1e5 size: refused before the video is decoded
    "absurd-dimensions": (3, r"gt_absurd-dimensions.json: video 2 annotation 3 frame 0: RLE counts cover 0 "
                             r"pixels, not 100000x100000 = 10000000000"),
    "deep-nesting": (2, r"JSON nested too deeply"),
    "not-json": (2, r"invalid JSON at line 1 column 13"),
    "zero-byte": (2, r"invalid JSON at line 1 column 1"),
    "huge-string": (2, r"file is 500000000 bytes, larger than the 100000000 byte limit"),
}


@pytest.fixture(scope="module")
def build_inputs(tmp_path_factory, media):
    root = tmp_path_factory.mktemp("build_json")
    videos = root / "videos"
    videos.mkdir()
    shutil.copy(media["good"], videos / "a.mp4")
    shutil.copy(media["good"], videos / "b.mp4")
    gt = root / "gt.json"
    gt.write_text(json.dumps(jsons.valid_gt(media=True)))
    return videos, gt, jsons.bad_gt_cases(root / "bad", media=True)


@pytest.mark.parametrize("case", list(BUILD_JSON_CASES))
def test_build_bad_annotations(case, build_inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVIS_MAX_JSON_BYTES", str(100_000_000))
    videos, gt, bad = build_inputs
    out = tmp_path / "out"
    assert call(capsys, "build", "--videos", videos, "--annotations", gt, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, what = BUILD_JSON_CASES[case]
    rc, _, err = call(capsys, "build", "--videos", videos, "--annotations", bad[case], "--out", out)
    assert rc == code and "Traceback" not in err
    if code == 2:
        error_line(rc, err, "build", bad[case], what)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier build is untouched
    else:
        lines = [ln[ln.index("avis build: failed:"):] for ln in err.splitlines() if "avis build: failed:" in ln]
        assert len(lines) == 1 and re.search(what, lines[0]), err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["videos"] == 1 and len(manifest["failed"]) == 1


OVERLAY_CASES = {
    "zero-byte": r"unreadable media file",
    "text-as-mp4": r"unreadable media file",
    "truncated-50%": r"unreadable media file",
    "audio-only": r"no video stream",
    "corrupt-aac": r"corrupt or truncated audio",
}


@pytest.mark.parametrize("case", list(OVERLAY_CASES))
def test_export_overlay_bad_media(case, media, tmp_path, capsys):
    """``avis export --format overlay`` reads the source videos: a bad one is one line naming it."""
    shutil.copy(media["good"], tmp_path / "a.mp4")
    shutil.copy(media[case], tmp_path / "b.mp4")
    gt = jsons.valid_gt(media=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(jsons.valid_results(gt)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("earlier output\n")
    rc, _, err = call(capsys, "export", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json",
                      "--format", "overlay", "--videos", tmp_path, "--out", out, "--score-threshold", "0")
    error_line(rc, err, "export", tmp_path / "b.mp4", OVERLAY_CASES[case])
    assert rc == 2 and (out / "results.json").read_text() == "earlier output\n"
    assert not list(out.rglob("*.tmp*"))


# ------------------------------------------------------------------------------------------------ escaping paths

@pytest.mark.parametrize("key,value", [("video_file", "../outside.mp4"), ("video_file", "/abs/outside.mp4"),
                                       ("audio_file", "../outside.mp4"), ("file_names", "/abs/00000.jpg")])
def test_media_paths_must_stay_inside_the_videos_folder(key, value, build_inputs, media, tmp_path, capsys):
    """An annotation file naming media outside ``--videos`` would pull any file of the machine into the shards
    (or an overlay): ``avis build`` and ``avis export`` refuse it before reading anything."""
    videos, _, _ = build_inputs
    gt = jsons.valid_gt(media=True)
    v = gt["videos"][0]
    if key == "file_names":
        v.pop("video_file")
        v["file_names"] = [value] + [f"a/{t:05d}.jpg" for t in range(1, v["length"])]
    else:
        v[key] = value
    bad = tmp_path / "gt.json"
    bad.write_text(json.dumps(gt))
    rc, _, err = call(capsys, "build", "--videos", videos, "--annotations", bad, "--out", tmp_path / "out")
    error_line(rc, err, "build", bad, rf"video 1: '{key}' '{re.escape(value)}' must be a path relative to the "
                                      r"videos folder, without '\.\.'")
    assert rc == 2 and not (tmp_path / "out").exists()
    (tmp_path / "res.json").write_text(json.dumps(jsons.valid_results(jsons.valid_gt(media=True))))
    rc, _, err = call(capsys, "export", "--gt", bad, "--results", tmp_path / "res.json", "--format", "overlay",
                      "--videos", videos, "--out", tmp_path / "exp")
    error_line(rc, err, "export", bad, rf"'{key}' '{re.escape(value)}' must be a path relative")
    assert not (tmp_path / "exp").exists()
