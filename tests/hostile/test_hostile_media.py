"""Bad media files against ``avis build`` and ``avis infer``."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
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


# ------------------------------------------------------------------------------------------------ class 4
# sound AAC cannot encode, and a run that fails after its predictions

# name -> (sample rate of the source's sound, its tone in Hz)
ODD_RATES = {"1-kHz": (1000, 100.0), "5-kHz": (5000, 440.0), "50-kHz": (50000, 440.0), "192-kHz": (192000, 440.0),
             "384-kHz": (384000, 440.0)}


@pytest.fixture(scope="module")
def odd_media(tmp_path_factory) -> dict:
    from tests.hostile.media import odd_rate

    root = tmp_path_factory.mktemp("odd_rates")
    return {name: odd_rate(root / f"{name}.mkv", rate) for name, (rate, _) in ODD_RATES.items()}


def _overlay_sound(path) -> tuple[int, np.ndarray]:
    import av

    with av.open(str(path)) as c:
        rate = c.streams.audio[0].codec_context.sample_rate
        x = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
    return rate, x


@pytest.mark.parametrize("case", list(ODD_RATES))
def test_overlay_resamples_sound_aac_cannot_encode(case, odd_media, toy_checkpoint, tmp_path, capsys):
    """``avis infer`` (and the overlay export it shares): the sound is resampled to a rate AAC has and keeps
    its tone and length."""
    from data_tools.exporters.overlay import aac_rate

    rate, tone = ODD_RATES[case]
    rc, _, err = call(capsys, "infer", odd_media[case], "--checkpoint", toy_checkpoint, "--out", tmp_path, "--fps", 5)
    assert rc == 0, err
    got_rate, x = _overlay_sound(tmp_path / "overlay" / f"{case}.mp4")
    assert got_rate == aac_rate(rate) and got_rate in av_aac_rates()
    assert abs(len(x) / got_rate - 0.8) < 0.1  # 12 frames at 15 fps
    spectrum = np.abs(np.fft.rfft(x[: int(0.7 * got_rate)]))
    peak = np.fft.rfftfreq(int(0.7 * got_rate), 1 / got_rate)[int(np.argmax(spectrum))]
    assert abs(peak - tone) < 0.05 * tone, peak


def av_aac_rates() -> list[int]:
    import av

    return list(av.Codec("aac", "w").audio_rates)


def test_aac_rate_choice():
    from data_tools.exporters.overlay import aac_rate

    assert [aac_rate(r) for r in (1000, 7350, 8000, 12345, 44100, 50000, 88200, 96000, 176400, 192000)] == \
        [7350, 7350, 8000, 16000, 44100, 64000, 88200, 96000, 96000, 96000]


def test_export_overlay_of_odd_rate_sound(odd_media, tmp_path, capsys):
    shutil.copy(odd_media["1-kHz"], tmp_path / "a.mp4")
    shutil.copy(odd_media["192-kHz"], tmp_path / "b.mp4")
    gt = jsons.valid_gt(media=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(jsons.valid_results(gt)))
    rc, _, err = call(capsys, "export", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json",
                      "--format", "overlay", "--videos", tmp_path, "--out", tmp_path / "out", "--score-threshold", "0")
    assert rc == 0, err
    assert [_overlay_sound(tmp_path / "out" / "overlay" / f"{n}.mp4")[0] for n in "ab"] == [7350, 96000]


def test_failed_infer_leaves_earlier_outputs(media, toy_checkpoint, tmp_path, capsys, monkeypatch):
    """The overlay of the second video fails after the predictions are made: results.json, videos.json and
    the earlier overlays stay byte-identical, and nothing of the failed run is left."""
    from avis.errors import InputError
    from data_tools.exporters import overlay

    shutil.copy(media["good"], tmp_path / "a.mp4")
    shutil.copy(media["good"], tmp_path / "b.mp4")
    out = tmp_path / "out"
    rc, _, err = call(capsys, "infer", tmp_path / "a.mp4", tmp_path / "b.mp4", "--checkpoint", toy_checkpoint,
                      "--out", out)
    assert rc == 0, err
    (out / "results.json").write_text("earlier results\n")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(map(str, before)) == ["overlay/a.mp4", "overlay/b.mp4", "results.json", "videos.json"]
    real = overlay.write_video_overlay

    def failing(v, *a, **kw):
        if v["id"] == 2:
            raise InputError("cannot encode this one", v["video_file"])
        return real(v, *a, **kw)

    monkeypatch.setattr(overlay, "write_video_overlay", failing)
    rc, _, err = call(capsys, "infer", tmp_path / "a.mp4", tmp_path / "b.mp4", "--checkpoint", toy_checkpoint,
                      "--out", out, "--fps", 3)
    error_line(rc, err, "infer", None, "cannot encode this one")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["overlay", "results.json", "videos.json"]
