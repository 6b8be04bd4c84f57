"""scripts/make_av_probe.py: its output builds with `avis build`, and the sound names the labels only in the
informative variant (checked by value: each category's frequency band in the decoded audio)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("make_av_probe", ROOT / "scripts" / "make_av_probe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_av_probe", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


probe = _load()
CFG = probe.ProbeConfig(width=48, height=32, frames=8)   # tiny: 32 raw frames at 24 fps, 1.33 s


def _build(videos: Path, ann: Path, out: Path) -> None:
    from data_tools import build

    parser = argparse.ArgumentParser()
    build.add_arguments(parser)
    assert build.run(parser.parse_args(["--videos", str(videos), "--annotations", str(ann), "--out", str(out)])) == 0


def _own_vs_twin(audio: np.ndarray, sr: int, category: int) -> float:
    """Energy in the category's band over energy in its look-alike twin's band."""
    return probe.band_energy(audio, sr, probe.BAND[category]) / (
        probe.band_energy(audio, sr, probe.BAND[probe.twin(category)]) + 1e-12)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from avis.data import iter_videos

    root = tmp_path_factory.mktemp("probe")
    out = {}
    for variant in ("informative", "control"):
        d = root / variant
        probe.generate(d, variant, train=2, val=1, seed=3, cfg=CFG)
        _build(d, d / "train.json", d / "shards")
        out[variant] = (d, list(iter_videos(str(d / "shards"))))
    return out


def test_builds_with_annotations_at_their_own_rate(built):
    d, videos = built["informative"]
    gt = json.loads((d / "train.json").read_text())
    assert len(videos) == 2 and len(gt["videos"]) == 2
    assert gt["annotations"], "the probe set must annotate objects"
    assert all("sounding" not in a for a in gt["annotations"])          # plain YouTube-VIS, no sound labels
    with __import__("av").open(str(d / gt["videos"][0]["video_file"])) as c:   # raw media as documented
        assert c.streams.video[0].average_rate == CFG.video_fps
        assert c.streams.audio[0].sample_rate == CFG.sample_rate and c.streams.audio[0].channels == 2
    for v in videos:
        assert v.frames.shape == (CFG.frames, CFG.height, CFG.width, 3)
        np.testing.assert_allclose(v.frame_times, np.arange(CFG.frames) / CFG.ann_fps, atol=1e-6)
        assert v.has_audio and v.sample_rate == 16000
        # the sound lasts as long as the video: the last raw frame ends at raw_frames / video_fps
        assert v.audio.shape[-1] == round(CFG.duration * 16000)
        anns = [a for a in gt["annotations"] if a["video_id"] == v.video_id]
        assert sorted(i.category_id for i in v.instances) == sorted(a["category_id"] for a in anns)
        for inst in v.instances:   # the stored masks are the annotated ones (raw frame 4k at k / 6 s)
            assert inst.masks.shape == (CFG.frames, CFG.height, CFG.width) and inst.present.any()


def test_informative_sound_names_the_member_control_does_not(built):
    d_inf, inf = built["informative"]
    d_ctl, ctl = built["control"]
    # same pictures and labels, different soundtrack
    assert (d_inf / "train.json").read_bytes() == (d_ctl / "train.json").read_bytes()
    for a, b in zip(inf, ctl):
        assert np.array_equal(a.frames, b.frames)
        assert not np.allclose(np.asarray(a.audio), np.asarray(b.audio), atol=1e-3)
    # informative: after AAC, resampling and the mono down-mix, each object's own band carries far more
    # energy than its twin's (the twin is never in the same video)
    for v in inf:
        wav = np.asarray(v.audio)[0]
        for inst in v.instances:
            assert _own_vs_twin(wav, 16000, inst.category_id) > 20


def test_label_from_sound_accuracy_by_variant():
    """Over 30 scenes (in memory, 22.05 kHz stereo before any encoding): reading an object's member off the
    sound is always right in the informative variant and far from it in the control."""
    hits = {"informative": [], "control": []}
    for i in range(30):
        scene, _ = probe.sample_scene(CFG, 11, 0, i)
        for variant in hits:
            wav = probe.soundtrack(scene, CFG, variant, 11, 0, i).mean(0)
            assert np.sqrt(np.mean(wav ** 2)) > 0.01   # both variants sound
            hits[variant] += [_own_vs_twin(wav, CFG.sample_rate, o.category) > 10 for o in scene.objects]
    n = len(hits["informative"])
    assert n >= 40
    assert all(hits["informative"])
    assert np.mean(hits["control"]) < 0.7


def test_members_do_not_change_the_pictures():
    """The member (the category) is drawn apart from the visuals: the two members render identically."""
    scene, bg = probe.sample_scene(CFG, 5, 1, 0)
    frames, ids = probe.render(scene, bg, CFG)
    for o in scene.objects:
        o.category = probe.twin(o.category)
    frames2, ids2 = probe.render(scene, bg, CFG)
    assert np.array_equal(frames, frames2) and np.array_equal(ids, ids2)
