"""Audio supervision from ordinary annotations (docs/audio.md, "Audio supervision"): the per-frame targets
(presence, optional ``sounding``), the auxiliary tagging loss of the RCF, the engine's pretraining stage, and
that the visual-only recipe is untouched by any of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from avis.data.clips import collate, sample_clip
from avis.data.video import Instance, Video
from avis.engine.config import compose
from avis.models.audio import audio_tokens_tiny
from avis.models.audio.supervision import instance_tags, record_tags, supervision_settings, tagging_loss

CATS = [{"id": 3, "name": "bell"}, {"id": 7, "name": "siren"}, {"id": 9, "name": "drum"}]
INDEX = {3: 0, 7: 1, 9: 2}
SEG = {"size": [4, 4], "counts": "x"}  # presence only looks at null / not null
# three annotations over 4 frames: a siren (7) in frames 1-2, a crowd of bells (3) in frames 0 and 3, a second
# siren in frames 2-3; the drum (9) never appears
RECORDS = [
    {"category_id": 7, "segmentations": [None, SEG, SEG, None], "sounding": [False, True, False, False]},
    {"category_id": 3, "iscrowd": 1, "segmentations": [SEG, None, None, SEG], "sounding": [True, False, False, True]},
    {"category_id": 7, "segmentations": [None, None, SEG, SEG], "sounding": [False, False, True, False]},
]
PRESENCE = [[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 1, 0]]
SOUNDING = [[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]]


def _strip(records, keep=()):
    return [{k: v for k, v in r.items() if k != "sounding" or i in keep} for i, r in enumerate(records)]


def test_record_targets_by_value_with_and_without_sounding():
    p, s, known = record_tags(RECORDS, 4, INDEX)
    assert known and p.tolist() == PRESENCE and s.tolist() == SOUNDING
    p, s, known = record_tags(_strip(RECORDS), 4, INDEX)  # plain YouTube-VIS: presence only
    assert not known and p.tolist() == PRESENCE and not s.any()
    p, s, known = record_tags(_strip(RECORDS, keep=(0, 1)), 4, INDEX)  # flags on some annotations only: unknown
    assert not known and not s.any()
    assert record_tags([], 4, INDEX)[2] is False  # no annotation: nothing says the video's flags are known


def _instances(records, T=4, H=4, W=4):
    out = []
    for i, r in enumerate(records):
        present = np.array([seg is not None for seg in r["segmentations"]])
        masks = np.zeros((T, H, W), bool)
        masks[present, i, :] = True
        snd = r.get("sounding")
        out.append(Instance(i + 1, r["category_id"], masks, present, int(r.get("iscrowd", 0)),
                            None if snd is None else np.array(snd, bool)))
    return out


def test_instance_targets_equal_record_targets():
    for recs in (RECORDS, _strip(RECORDS)):
        a, b = instance_tags(_instances(recs), 4, INDEX), record_tags(recs, 4, INDEX)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _video(records, size=4):
    T = 4
    rng = np.random.default_rng(2)
    return Video(video_id=5, frames=rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8),
                 frame_times=np.arange(T, dtype=np.float64),
                 audio=rng.standard_normal((1, 16000 * T)).astype(np.float32), sample_rate=16000, has_audio=True,
                 instances=_instances(records, H=size, W=size))


@pytest.mark.parametrize("with_sounding", [True, False])
def test_training_clips_carry_the_frames_targets(with_sounding):
    recs = RECORDS if with_sounding else _strip(RECORDS)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(12):
        clip = sample_clip(_video(recs), CATS, 2, rng)
        frames = clip["frame_times"].long().tolist()  # 1 fps: the time is the frame index
        seen.add(frames[-1])
        assert clip["audio_tags"].tolist() == [PRESENCE[t] for t in frames]
        assert clip["audio_sounding"].tolist() == ([SOUNDING[t] for t in frames] if with_sounding else [[0] * 3] * 2)
        assert clip["sounding_known"] is with_sounding
    assert len(seen) > 2
    batch = collate([sample_clip(_video(recs), CATS, 2, rng) for _ in range(3)], None, None)
    assert batch["audio_tags"].shape == (3, 2, 3) and batch["sounding_known"].tolist() == [with_sounding] * 3


def test_tagging_loss_by_value_and_masks():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 4)  # B=3 clips, T=2 frames, K=2: presence logits then sounding logits
    pres = torch.tensor([[[1., 0.], [0., 1.]], [[1., 1.], [0., 0.]], [[0., 1.], [1., 0.]]])
    snd = torch.tensor([[[1., 0.], [0., 0.]], [[0., 1.], [0., 0.]], [[1., 1.], [1., 1.]]])
    has_audio = torch.tensor([True, True, False])  # clip 2 has no sound: no loss
    known = torch.tensor([True, False, True])       # only clip 0 has sounding flags (and sound)
    out = tagging_loss(logits, pres, snd, has_audio, known, weight=2.0, sounding_weight=0.5)
    want_p = F.binary_cross_entropy_with_logits(logits[:2, :, :2], pres[:2])
    want_s = F.binary_cross_entropy_with_logits(logits[:1, :, 2:], snd[:1])
    assert out["loss_audio_tag"].item() == pytest.approx(2.0 * want_p.item(), rel=1e-6)
    assert out["loss_audio_sounding"].item() == pytest.approx(0.5 * want_s.item(), rel=1e-6)
    none = tagging_loss(logits, pres, snd, torch.zeros(3, dtype=torch.bool), known)
    assert none["loss_audio_tag"].item() == 0.0 and none["loss_audio_sounding"].item() == 0.0


def test_supervision_settings():
    assert supervision_settings(None) is None and supervision_settings({"enabled": False, "weight": 1}) is None
    assert supervision_settings({"enabled": True, "weight": 0, "sounding_weight": 0}) is None
    assert supervision_settings({"enabled": True, "weight": 2}) == {"weight": 2.0, "sounding_weight": 1.0}
    with pytest.raises(ValueError):
        supervision_settings({"enabled": True, "weight": -1})


def _rcf(supervision):
    from avis.models.rcf import rcf_tiny

    torch.manual_seed(0)
    enc = audio_tokens_tiny(out_channels=32, lstm_hidden=8, num_classes=3, supervision=supervision)
    return rcf_tiny(3, delta=1, audio_encoder=enc, num_queries=4)


def test_rcf_adds_the_auxiliary_tagging_loss_on_its_audio_tokens():
    model = _rcf({"enabled": True, "weight": 1.0, "sounding_weight": 1.0})
    rng = np.random.default_rng(1)
    batch = collate([sample_clip(_video(RECORDS, size=32), CATS, 2, rng) for _ in range(2)], None, None)
    losses = model(batch)
    enc = model.audio_encoder
    raw = enc(batch["audio"])  # the encoder's tokens (the projection is the identity here: C_a = C')
    logits = enc.tagger(raw)
    want_p = F.binary_cross_entropy_with_logits(logits[..., :3], batch["audio_tags"])
    want_s = F.binary_cross_entropy_with_logits(logits[..., 3:], batch["audio_sounding"])
    assert losses["loss_audio_tag"].item() == pytest.approx(want_p.item(), rel=1e-5)
    assert losses["loss_audio_sounding"].item() == pytest.approx(want_s.item(), rel=1e-5)
    losses["loss_audio_tag"].backward()  # it trains the audio tokens themselves, not only its own head
    assert enc.lstm.weight_ih_l0.grad is not None and enc.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert enc.head[0].weight.grad.abs().sum() > 0

    off = _rcf({"enabled": False, "weight": 1.0})
    assert off.audio_encoder.tagger is None and not any("tagger" in k for k in off.state_dict())
    assert "loss_audio_tag" not in off(batch)
    # the head is built after the rest of the encoder: the encoder's other initial weights do not depend on it
    on_sd, off_sd = model.audio_encoder.state_dict(), off.audio_encoder.state_dict()
    assert all(torch.equal(on_sd[k], v) for k, v in off_sd.items())


# ------------------------------------------------------------------------------------------ configs
def _plain(experiment, *overrides):
    return OmegaConf.to_container(compose([f"experiment={experiment}", *overrides]), resolve=False)


@pytest.mark.parametrize("av,visual", [("rcf_av_tiny", "rcf_visual_tiny"), ("rcf_av", "rcf_visual")])
def test_the_two_arms_differ_only_under_audio(av, visual):
    a, b = _plain(av), _plain(visual)
    assert a.pop("audio") != b.pop("audio")
    assert a == b
    assert OmegaConf.to_container(compose([f"experiment={visual}"]).audio, resolve=True) == \
        {"eta": 0.96, "enabled": False, "encoder": None}


def test_supervision_and_pretraining_are_on_by_default_and_off_switchable():
    for exp in ("rcf_av_tiny", "rcf_av"):
        cfg = compose([f"experiment={exp}", "data.num_classes=3"])
        assert cfg.audio.supervision.enabled is True and cfg.audio.pretrain.steps > 0
        assert cfg.model.audio_encoder.supervision.enabled is True and cfg.model.audio_encoder.num_classes == 3
    cfg = compose(["experiment=rcf_av_tiny", "data.num_classes=3", "audio.supervision.enabled=false",
                   "audio.pretrain.steps=0"])
    from hydra.utils import instantiate

    from avis.engine.audio_pretrain import settings_of

    assert instantiate(cfg.audio.encoder).tagger is None and settings_of(cfg) is None
    assert instantiate(compose(["experiment=rcf_av_tiny", "data.num_classes=3"]).audio.encoder).tagger is not None


# ------------------------------------------------------------------------------------ engine, shards
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from tests.baseline_utils import build_synth_shards

    root = tmp_path_factory.mktemp("sup")
    build_synth_shards(root, videos=6, frames=8)
    return root


RUN = ["data.batch_size=2", "data.scales=[48]", "data.max_size=64", "model.num_queries=4", "trainer.log_every=1"]
# Losses of the first three steps of the visual-only recipe on these shards, recorded before audio supervision
# existed (the same numbers with it: the visual-only arm is unchanged), and of the audio-visual recipe of that
# time, which `audio.supervision.enabled=false audio.pretrain.steps=0` gives back.
VISUAL_LOSSES = [6.322151184082031, 6.528213024139404, 5.948688983917236]
AV_OLD_LOSSES = [6.964384078979492, 6.42585563659668, 6.012671947479248]


def _losses(run):
    from avis.engine.logs import read_jsonl

    return read_jsonl(run / "metrics.jsonl")


@pytest.mark.slow
def test_visual_only_training_is_unchanged(shards, tmp_path):
    from avis.engine.train import train_experiment

    train_experiment("rcf_visual_tiny", tmp_path / "vis", shards / "train", 0, 3, RUN, progress=False)
    recs = _losses(tmp_path / "vis")
    assert [r["loss"] for r in recs] == pytest.approx(VISUAL_LOSSES, rel=1e-5)
    assert not any("audio" in k for r in recs for k in r) and not (tmp_path / "vis" / "audio_pretrain.pt").exists()
    train_experiment("rcf_av_tiny", tmp_path / "old", shards / "train", 0, 3,
                     [*RUN, "audio.supervision.enabled=false", "audio.pretrain.steps=0"], progress=False)
    assert [r["loss"] for r in _losses(tmp_path / "old")] == pytest.approx(AV_OLD_LOSSES, rel=1e-5)


@pytest.mark.slow
def test_shards_carry_sounding_and_pretraining_reads_the_annotations(shards):
    from avis.data.shards import ShardSource
    from avis.models.audio.frontend import LogMelFrontend
    from avis.models.audio.pretrain import collect_examples

    gt = json.loads((shards / "synth" / "train.json").read_text())
    src = ShardSource(str(shards / "train"))
    index = {int(c["id"]): i for i, c in enumerate(src.categories)}
    want_p, want_s = [], []
    by_video = {}
    for a in gt["annotations"]:
        by_video.setdefault(a["video_id"], []).append(a)
    for unit in src.units():
        for v in src.videos(unit):
            p, s, known = record_tags(by_video.get(v.video_id, []), v.num_frames, index)
            assert known  # the synthetic annotations have sounding flags, and the build kept them
            want_p.append(p)
            want_s.append(s)
            full = v.load()
            assert [inst.sounding.tolist() for inst in full.instances] == \
                [a["sounding"] for a in by_video[v.video_id]]
    data = collect_examples(src, LogMelFrontend(), 0.96, max_windows=10_000)
    assert data["examples"].shape[1:] == (96, 64) and bool(data["known"].all())
    assert data["presence"].numpy().tolist() == np.concatenate(want_p).tolist()
    assert data["sounding"].numpy().tolist() == np.concatenate(want_s).tolist()
    small = collect_examples(src, LogMelFrontend(), 0.96, max_windows=5, seed=1)
    assert len(small["examples"]) == 5 and small["frames"] == data["frames"]


@pytest.mark.slow
def test_engine_pretrains_uses_and_reuses_the_audio_network(shards, tmp_path, monkeypatch):
    from avis.engine import checkpoint as ckpt_io
    from avis.engine.session import load_trained
    from avis.engine.train import train_experiment

    run = tmp_path / "av"
    ckpt = train_experiment("rcf_av_tiny", run, shards / "train", 0, 2, [*RUN, "audio.pretrain.steps=30"],
                            progress=False)
    record = json.loads((run / "audio_pretrain.json").read_text())
    assert record["settings"]["steps"] == 30 and record["windows"] == record["frames"] > 0
    assert record["sounding_known"] == 1.0
    pre = torch.load(run / "audio_pretrain.pt", weights_only=True)
    state = ckpt_io.load(ckpt)["model"]
    prefix = "fusion.audio_tokens.encoder.extractor.backbone."
    assert all(torch.equal(state[prefix + k], v) for k, v in pre.items())  # used, and frozen while the RCF trained
    recs = _losses(run)
    assert all(r["loss_audio_tag"] > 0 and r["loss_audio_sounding"] > 0 for r in recs)
    # a resumed run reuses the weights instead of pretraining again
    from avis.models.audio import pretrain as pretrain_mod

    def refuse(*a, **k):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(pretrain_mod, "pretrain_network", refuse)
    train_experiment("rcf_av_tiny", run, shards / "train", 0, 3, [*RUN, "audio.pretrain.steps=30",
                                                                  "trainer.resume=true"], progress=False)
    loaded = load_trained(run / "checkpoints" / "last.pt", device="cpu")  # checkpoints with the head load
    assert loaded.model.audio_encoder.tagger is not None and loaded.step == 3
