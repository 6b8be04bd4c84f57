"""The synthetic dataset: real media that decode as promised, masks that match the pixels, and an audio knob
that does what it says (twins identical to the eye and distinct to the ear at d = 1; audio blind to the
objects at d = 0)."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio
from scipy import ndimage

from avis.io import masks as mask_io
from avis.io.ytvis import load_annotations
from data_tools import synth
from data_tools import synth_audio as sa
from data_tools.synth_categories import BY_ID, CATEGORIES, PAIR_OF, PAIRS, taxonomy, twin, ytvis_categories

REPO = Path(__file__).resolve().parents[1]
TINY = dict(size=(96, 64), frames=12, fps=10.0, progress=False, keep_media=True)


@pytest.fixture(scope="module")
def dep1(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_d1")
    return out, synth.generate(out, num_videos=4, seed=5, audio_dependence=1.0, **TINY)


@pytest.fixture(scope="module")
def dep0(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_d0")
    return out, synth.generate(out, num_videos=3, seed=5, audio_dependence=0.0, **TINY)


def _cfg(**kw) -> synth.SynthConfig:
    return synth.SynthConfig(width=96, height=64, frames=12, fps=10.0, **kw)


_MEL = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=160, n_mels=32)


def _logmel(x: np.ndarray) -> np.ndarray:
    """Time-averaged log-mel spectrum in dB, floored 40 dB under its peak."""
    p = _MEL(torch.as_tensor(x, dtype=torch.float32)).mean(-1)
    db = 10 * torch.log10(p + 1e-10)
    return torch.maximum(db, db.max() - 40).numpy()


def _lsd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((_logmel(a) - _logmel(b)) ** 2)))


def _decode(path: Path):
    with av.open(str(path)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        info = dict(vcodec=vs.codec_context.name, pix_fmt=vs.codec_context.pix_fmt, rate=vs.average_rate,
                    acodec=aus.codec_context.name, sr=aus.rate, channels=aus.codec_context.channels,
                    a_dur=float(aus.duration * aus.time_base))
    with av.open(str(path)) as c:
        vframes = list(c.decode(video=0))
    with av.open(str(path)) as c:
        aframes = list(c.decode(audio=0))
    return info, vframes, aframes


# ------------------------------------------------------------------------------------------------ media


def test_mp4_decodes_with_promised_streams(dep1):
    out, videos = dep1
    for v in videos:
        info, vframes, aframes = _decode(out / "videos" / f"{v.name}.mp4")
        assert info["vcodec"] == "h264" and info["pix_fmt"] == "yuv420p"
        assert info["acodec"] == "aac" and info["sr"] == 16000 and info["channels"] == 1
        assert info["rate"] == Fraction(10)
        assert len(vframes) == 12
        assert [f.time for f in vframes] == pytest.approx([i / 10 for i in range(12)])
        assert (vframes[0].width, vframes[0].height) == (96, 64)
        # audio: sample 0 presented at t = 0 (AAC priming hidden by the edit list), the clip's full length
        assert aframes[0].pts == 0 and aframes[0].time == 0.0
        assert info["a_dur"] == pytest.approx(1.2)
        assert sum(f.samples for f in aframes) >= 19200


def test_decoded_media_match_what_was_synthesised(dep1):
    """Pixels within codec error of the render; audio at lag 0 (time-aligned) and close to the synthesis."""
    out, videos = dep1
    for v in videos:
        _, vframes, aframes = _decode(out / "videos" / f"{v.name}.mp4")
        pix = np.stack([f.to_ndarray(format="rgb24") for f in vframes]).astype(np.int16)
        # Away from shape boundaries (where 4:2:0 chroma blurs saturated colours) pixels are near-exact.
        near_edge = ndimage.grey_dilation(v.ids, size=(1, 5, 5)) != ndimage.grey_erosion(v.ids, size=(1, 5, 5))
        err = np.abs(pix - v.frames).max(-1)[~near_edge]
        assert err.mean() < 4.0 and np.percentile(err, 99) < 16
        dec = np.concatenate([f.to_ndarray()[0] for f in aframes])
        w = v.waveform
        n = len(w)
        assert np.abs(dec[n:]).max(initial=0) < 0.02  # only encoder padding past the end
        lags = np.arange(-40, 41)
        xc = [np.dot(dec[max(0, lag):n + min(0, lag)], w[max(0, -lag):n - max(0, lag)]) for lag in lags]
        assert lags[int(np.argmax(xc))] == 0
        assert np.sqrt(np.mean((dec[:n] - w) ** 2)) < 0.35 * np.sqrt(np.mean(w ** 2))


# ---------------------------------------------------------------------------------------------- annotations


def test_json_layout_and_masks_match_the_render(dep1):
    out, videos = dep1
    data = {s: json.loads((out / f"{s}.json").read_text()) for s in ("train", "val")}
    assert [len(data[s]["videos"]) for s in ("train", "val")] == [3, 1]
    for s in data:
        assert data[s]["categories"] == ytvis_categories()
        load_annotations(out / f"{s}.json")  # the project's loader accepts it
    n_checked = 0
    for v in videos:
        d = data[v.split]
        entry = next(e for e in d["videos"] if e["id"] == v.video_id)
        assert entry["fps"] == 10.0 and entry["length"] == 12 == len(entry["file_names"])
        assert (entry["width"], entry["height"]) == (96, 64)
        assert (out / entry["video_file"]).is_file()
        assert entry["audio_dependent"] is True
        anns = [a for a in d["annotations"] if a["video_id"] == v.video_id]
        layers = {o.category: k for k, o in enumerate(v.scene.layers) if o.category is not None}
        assert {a["category_id"] for a in anns} == set(layers)  # one per category, every sounding object
        for a in anns:
            want = v.ids == layers[a["category_id"]]  # what was painted on top, i.e. the visible part
            for t, seg in enumerate(a["segmentations"]):
                if not want[t].any():
                    assert seg is None and a["areas"][t] is None and a["bboxes"][t] is None
                    continue
                assert np.array_equal(mask_io.decode(seg).astype(bool), want[t])
                assert a["areas"][t] == int(want[t].sum())
                ys, xs = np.nonzero(want[t])
                assert a["bboxes"][t] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                n_checked += 1
    assert n_checked > 20


def test_decoded_colour_inside_masks_is_the_objects_colour(dep1):
    """At d = 1 objects are solid: decoded pixels inside a mask have the pair colour, and outside it the colour
    (which no other shape in the video uses) is nearly absent."""
    out, videos = dep1
    for v in videos:
        _, vframes, _ = _decode(out / "videos" / f"{v.name}.mp4")
        pix = np.stack([f.to_ndarray(format="rgb24") for f in vframes]).astype(np.int16)
        for k, o in enumerate(v.scene.layers):
            if o.category is None:
                continue
            colour = np.array(PAIR_OF[BY_ID[o.category].pair].color)
            close = np.abs(pix - colour).max(-1) <= 40  # (T, H, W)
            vis = v.ids == k
            inner = np.stack([ndimage.binary_erosion(m, iterations=2) for m in vis])
            outer = ~np.stack([ndimage.binary_dilation(m, iterations=2) for m in vis])
            if inner.sum() > 10:
                assert close[inner].mean() > 0.95
            assert close[outer].mean() < 0.01


def test_scenes_move_scale_occlude_enter_and_leave():
    cfg = _cfg()
    absent = occluded = scaled = distractors = 0
    for k in range(12):
        scene = synth.sample_scene(cfg, np.random.SeedSequence([9, k]), audio_dependent=True)
        frames, ids, onscreen = synth.render_scene(scene, cfg)
        for i, o in enumerate(scene.layers):
            if o.category is None:
                distractors += 1
                continue
            vis = (ids == i).reshape(cfg.frames, -1).sum(1)
            absent += int((vis == 0).any() and (vis > 0).any())
            occluded += int(((vis < onscreen[i]) & (vis > 0)).any())
            scaled += int(abs(o.motion["size"][-1] / o.motion["size"][0] - 1) > 0.2)
        pairs = [BY_ID[o.category].pair for o in scene.layers if o.category is not None]
        assert len(pairs) == len(set(pairs))  # at most one member of each look-alike pair
    assert absent > 0 and occluded > 0 and scaled > 0 and distractors > 0


# ------------------------------------------------------------------------------------- the audio knob


def test_signatures_twins_far_apart_within_category_close():
    """Log-mel distance between twins is well above the distance between instances of one category."""
    n, j = 16000, sa.PITCH_JITTER
    sig = {c.id: [sa.signature(c.sound, n, 16000, np.random.default_rng(s), p)
                  for s, p in ((1, 1 - j), (2, 1 + j), (3, 1.0))] for c in CATEGORIES}
    f = {k: [_logmel(x) for x in v] for k, v in sig.items()}

    def d(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    for c in CATEGORIES:
        within = np.mean([d(f[c.id][a], f[c.id][b]) for a in range(3) for b in range(a + 1, 3)])
        between = np.mean([d(x, y) for x in f[c.id] for y in f[twin(c.id)]])
        assert between > 2.0 * within, (c.name, within, between)


def test_at_d1_twins_look_identical_and_sound_different(dep1):
    cfg = _cfg()
    for v in dep1[1]:
        swapped = synth.swap_twins(v.scene)
        frames, ids, onscreen = synth.render_scene(swapped, cfg)
        assert np.array_equal(frames, v.frames) and np.array_equal(ids, v.ids)  # the eye cannot tell
        orig = synth.soundtrack(v.scene, cfg, onscreen)
        assert np.allclose(orig, v.waveform)
        # Same objects, other instances of the same categories (new pitch and phase): the within-category spread.
        resampled = replace(v.scene, layers=[
            o if o.category is None else replace(o, pitch=2 - o.pitch, sound_seed=o.sound_seed + 1)
            for o in v.scene.layers])
        within = _lsd(orig, synth.soundtrack(resampled, cfg, onscreen))
        between = _lsd(orig, synth.soundtrack(swapped, cfg, onscreen))
        assert between > 2.0 * within and between > 4.0, (within, between)


def test_at_d0_audio_is_independent_of_the_objects(dep0):
    out, videos = dep0
    cfg = _cfg()
    other = synth.sample_scene(cfg, np.random.SeedSequence([1234, 0]), audio_dependent=False)
    for v in videos:
        assert v.scene.audio_dependent is False
        # Swap every object for its twin, or show another scene entirely: the soundtrack does not change.
        swapped = synth.swap_twins(v.scene)
        frames, _, _ = synth.render_scene(swapped, cfg)
        assert not np.array_equal(frames, v.frames)  # twins are told apart by their texture
        assert np.array_equal(synth.soundtrack(swapped, cfg), v.waveform)
        assert np.array_equal(synth.soundtrack(replace(v.scene, layers=other.layers), cfg), v.waveform)
        # ... but it is a real soundtrack: sources well above the background noise.
        assert np.sqrt(np.mean(v.waveform ** 2)) > 3 * v.scene.noise_level
    data = json.loads((out / "train.json").read_text())
    assert not any(e["audio_dependent"] for e in data["videos"])
    assert not any(any(a["sounding"]) for a in data["annotations"])


def test_intermediate_dependence_splits_videos_by_seed(tmp_path):
    made = synth.generate(tmp_path, num_videos=8, seed=2, audio_dependence=0.5, size=(48, 32), frames=4,
                          fps=8.0, progress=False, keep_media=True)
    cfg = synth.SynthConfig(width=48, height=32, frames=4, fps=8.0)
    per_split = {s: [v.scene.audio_dependent for v in made if v.split == s] for s in ("train", "val")}
    assert sum(per_split["train"]) == 3 and sum(per_split["val"]) == 1  # floor(0.5 * n + 0.5) of 6 and 2
    for v in made:
        looks = {synth.drawable(o, v.scene.audio_dependent).texture for o in v.scene.layers if o.category}
        assert looks and (looks == {"solid"} if v.scene.audio_dependent else "solid" not in looks)
        _, _, onscreen = synth.render_scene(v.scene, cfg)
        for k, o in enumerate(v.scene.layers):
            if o.category and v.scene.audio_dependent:
                assert synth.sounding_flags(o, onscreen[k], cfg, True) == [
                    any(a <= t < b for a, b in o.intervals) and onscreen[k][i] > 0
                    for i, t in enumerate(cfg.frame_times)]


def test_source_sounds_while_active_and_louder_when_larger():
    cfg = synth.SynthConfig(width=64, height=64, frames=10, fps=10.0)
    obj = synth.SceneObject(category=4, motion={}, intervals=[(0.0, 0.5)], sound_seed=3)
    area = np.full(10, cfg.ref_area)
    x1 = synth._source_signal(obj, area, cfg)
    x2 = synth._source_signal(obj, 2 * area, cfg)
    on, off = slice(800, 7200), slice(8400, None)  # clear of the 10 ms ramps around 0.5 s
    assert np.abs(x1[off]).max() == 0.0
    assert np.sqrt(np.mean(x1[on] ** 2)) == pytest.approx(sa.SOURCE_GAIN, rel=0.15)
    assert np.allclose(x2, np.sqrt(2) * x1)  # amplitude ~ sqrt(area)
    assert np.allclose(synth._source_signal(obj, np.zeros(10), cfg), 0)  # off screen: silent


# ----------------------------------------------------------------------------------- determinism, CLI, data


def test_same_seed_same_bytes(tmp_path):
    kw = dict(num_videos=2, audio_dependence=0.5, size=(48, 32), frames=6, fps=6.0, progress=False)
    synth.generate(tmp_path / "a", seed=7, **kw)
    synth.generate(tmp_path / "b", seed=7, **kw)
    synth.generate(tmp_path / "c", seed=8, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "c" / "train.json").read_bytes()


def test_cli_writes_the_dataset(cli, tmp_path):
    out = tmp_path / "ds"
    r = cli("synth", "--out", out, "--videos", "3", "--size", "64x48", "--frames", "5", "--fps", "5",
            "--audio-dependence", "0.3", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 videos (2 train, 1 val)" in r.stdout
    train = json.loads((out / "train.json").read_text())
    val = json.loads((out / "val.json").read_text())
    assert [e["video_file"] for e in train["videos"]] == ["videos/train_0000.mp4", "videos/train_0001.mp4"]
    assert [e["video_file"] for e in val["videos"]] == ["videos/val_0000.mp4"]
    assert all((out / e["video_file"]).stat().st_size > 1000 for e in train["videos"] + val["videos"])
    assert train["info"]["seed"] == 1 and train["info"]["audio_dependence"] == 0.3


@pytest.mark.parametrize("args, msg", [
    (["--size", "65x48"], "even"),
    (["--size", "big"], "WIDTHxHEIGHT"),
    (["--audio-dependence", "1.5"], "[0, 1]"),
    (["--videos", "0"], "at least 1"),
])
def test_cli_rejects_bad_options(cli, tmp_path, args, msg):
    r = cli("synth", "--out", tmp_path / "x", *args)
    assert r.returncode == 2
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_taxonomy_file_matches_the_code():
    data = json.loads((REPO / "annotations" / "taxonomies" / "synthetic.json").read_text())
    assert data == taxonomy()
    assert len(data["categories"]) == 8 and len(data["pairs"]) == len(PAIRS) == 4
    for c in data["categories"]:
        assert data["categories"][c["twin"] - 1]["twin"] == c["id"] and c["sound"]
