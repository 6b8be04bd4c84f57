"""RCF model: shapes for every preset and delta, audio on/off, loss and matcher values, the online feature
cache (backbone once per frame, same result as the clip computation), attention maps, and an overfitting
check on synthetic moving shapes."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

from avis.errors import InputError
from avis.models import backbones as bb
from avis.models import rcf
from avis.models.losses import dice_similarity, mask_iou
from avis.models.rcf.criterion import HungarianMatcher, SetCriterion
from tests.baseline_utils import single_thread
from tests.rcf_reference import reference_step

H = W = 64


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():  # tiny ops: an order of magnitude faster on one thread
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "random initialisation" warnings
            yield


class StubAudio(nn.Module):
    """Stand-in for the audio branch: log-power spectrum per window + a linear layer (B x T x S -> B x T x C)."""

    def __init__(self, out_channels: int = 24, n_fft: int = 64):
        super().__init__()
        self.out_channels = out_channels
        self.n_fft = n_fft
        self.linear = nn.Linear(n_fft // 2 + 1, out_channels)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio.flatten(0, 1), self.n_fft, self.n_fft // 2, window=torch.hann_window(self.n_fft),
                          return_complex=True)
        logp = spec.abs().pow(2).add(1e-6).log().mean(-1)
        return self.linear(logp).unflatten(0, audio.shape[:2])


def audio_encoder():
    """The audio branch's CPU preset (splits into per-frame features + tokens: cached online)."""
    from avis.models.audio import audio_tokens_tiny

    return audio_tokens_tiny()


def make_batch(b: int, t: int, n: int = 2, size=(H, W), s: int = 1600, has_audio=None):
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (b, t, 3, *size), dtype=torch.uint8, generator=g)
    targets = [[{"labels": torch.arange(n) % 3, "masks": torch.rand(n, *size, generator=g) > 0.5,
                 "instance_ids": torch.arange(n)} for _ in range(t)] for _ in range(b)]
    return {"frames": frames, "frame_times": torch.zeros(b, t, dtype=torch.float64),
            "audio": torch.randn(b, t, s, generator=g),
            "has_audio": torch.ones(b, dtype=torch.bool) if has_audio is None else has_audio,
            "targets": targets, "video_ids": list(range(b))}


def outputs(model, batch):
    """Run the model's clip computation in eval mode -> (logits, masks, fused memory length)."""
    frames = batch["frames"]
    b, t = frames.shape[:2]
    feats = model.backbone(model.normalize(frames.flatten(0, 1)))
    last = feats[-1].unflatten(0, (b, t))
    f_ref = last[:, :-1].flatten(1, 2) if model.delta else None
    low = [f.unflatten(0, (b, t))[:, -1] for f in feats[:-1]]
    audio = model.fusion.audio_tokens(batch["audio"]) if model.uses_audio else None
    valid = batch["has_audio"] if model.uses_audio else None
    fused = model.fusion(last[:, -1], f_ref, audio, valid)
    logits, masks = model.predict(last[:, -1], f_ref, low, audio, valid)
    return logits, masks, fused.memory.shape[1]


# -- backbones -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "resnet18", "resnet34", "resnet50", "resnet101", "swin_t", "swin_s",
                                  "swin_b"])
def test_backbone_levels(name):
    net = bb.build_backbone(name).eval()
    assert len(net.channels) == len(net.strides)
    if name in ("resnet101", "swin_s", "swin_b"):
        return  # constructed; their forward is the same code as their smaller siblings'
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == net.channels
    assert [(64 // s, 96 // s) for s in net.strides] == [tuple(f.shape[-2:]) for f in feats]


def test_backbone_local_weights(tmp_path):
    src = torchvision_resnet18_state()
    path = tmp_path / "r18.pth"
    torch.save(src, path)
    net = bb.ResNetBackbone("resnet18", weights=str(path))
    assert torch.equal(net.body.conv1.weight, src["conv1.weight"])
    assert torch.equal(net.body.layer4[1].conv2.weight, src["layer4.1.conv2.weight"])
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="bad.pth"):
        bb.ResNetBackbone("resnet18", weights=str(tmp_path / "bad.pth"))
    with pytest.raises(InputError, match="not found"):
        bb.ResNetBackbone("resnet18", weights=str(tmp_path / "missing.pth"))


def torchvision_resnet18_state():
    import torchvision

    return {k: v.clone() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}


# -- presets and shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("builder", ["rcf_tiny", "rcf_r18", "rcf_r34", "rcf_r50", "rcf_r101", "rcf_swin_t",
                                     "rcf_swin_s", "rcf_swin_b"])
def test_presets_build(builder):
    model = getattr(rcf, builder)(num_classes=5, delta=2)
    assert model.clip_length == 3 and not model.uses_audio
    assert isinstance(model, rcf.RCF)
    if builder not in ("rcf_tiny", "rcf_r50"):
        return
    model.eval()
    with torch.no_grad():
        logits, masks, length = outputs(model, make_batch(1, 3, size=(64, 96)))
    stride = model.backbone.strides[-1]
    assert logits.shape == (1, 1, 10, 6)
    assert masks.shape == (1, 1, 10, 16, 24)  # stride 4
    assert length == (64 // stride) * (96 // stride) + 4


@pytest.mark.parametrize("delta", range(6))
@pytest.mark.parametrize("with_audio", [False, True])
def test_tiny_shapes_every_delta(delta, with_audio):
    model = rcf.rcf_tiny(num_classes=3, delta=delta, audio_encoder=audio_encoder() if with_audio else None,
                         num_queries=7, pool_size=2)
    assert model.clip_length == 1 + delta and model.uses_audio == with_audio
    batch = make_batch(2, 1 + delta)
    losses = model(batch)
    assert set(losses) == {"loss_ce", "loss_dice", "loss_ce_aux0", "loss_dice_aux0"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.heads.cls.weight.grad.abs().sum() > 0
    if delta:
        assert model.fusion.reference_tokens.proj.weight.grad.abs().sum() > 0
        assert model.fusion.reference_tokens.proj.in_channels == delta * model.backbone.channels[-1]
    model.eval()
    with torch.no_grad():
        logits, masks, length = outputs(model, batch)
    assert logits.shape == (1, 2, 7, 4)
    assert masks.shape == (1, 2, 7, H // 4, W // 4)
    assert length == (H // 16) * (W // 16) + (4 if delta else 0) + ((1 + delta) if with_audio else 0)
    with pytest.raises(ValueError, match="clips of"):
        model(make_batch(1, 2 + delta))


def test_audio_off_is_same_model_without_audio_tokens():
    torch.manual_seed(3)
    off = rcf.rcf_tiny(3, delta=1)
    torch.manual_seed(3)
    on = rcf.rcf_tiny(3, delta=1, audio_encoder=audio_encoder())
    extra = set(on.state_dict()) - set(off.state_dict())
    assert set(off.state_dict()) <= set(on.state_dict())
    assert extra and all(k.startswith("fusion.audio_tokens.") for k in extra)


def test_training_takes_precomputed_audio_features():
    model = rcf.rcf_tiny(3, delta=1, audio_encoder=audio_encoder()).eval()
    batch = make_batch(2, 2)
    with torch.no_grad():
        feats = model.fusion.audio_tokens.encoder.frame_features(batch["audio"])
        ref = model(batch)
        pre = model(dict(batch, audio_features=feats.half(), audio=None))
    for k in ref:
        torch.testing.assert_close(ref[k], pre[k], atol=2e-3, rtol=2e-3)


def test_audio_changes_output_only_where_present():
    model = rcf.rcf_tiny(3, delta=2, audio_encoder=audio_encoder()).eval()
    a = make_batch(2, 3, has_audio=torch.tensor([True, False]))
    b = dict(a, audio=torch.zeros_like(a["audio"]))  # noise vs silence
    with torch.no_grad():
        la, ma, _ = outputs(model, a)
        lb, mb, _ = outputs(model, b)
    assert (la[:, 0] - lb[:, 0]).abs().max() > 1e-4  # heard: audio matters
    torch.testing.assert_close(la[:, 1], lb[:, 1], atol=1e-6, rtol=0)  # no sound: audio tokens masked out
    torch.testing.assert_close(ma[:, 1], mb[:, 1], atol=1e-6, rtol=0)


def test_reference_weight_map_and_pooling():
    tok = rcf.fusion.ReferenceTokens(in_channels=4, delta=2, dim=8, pool_size=2)
    f = torch.randn(1, 8, 6, 6)
    out, w = tok(f)
    assert out.shape == (1, 8, 2, 2) and w.shape == (1, 1, 6, 6)
    assert (w > 0).all() and (w < 1).all()
    expected = tok.proj(torch.nn.functional.adaptive_avg_pool2d(w * f, 2))
    torch.testing.assert_close(out, expected)


# -- loss and matcher ------------------------------------------------------------------------------------------

def test_dice_similarity_values():
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    g = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(dice_similarity(p, g), torch.tensor([[5 / 5], [1 / 5]]))


def test_matcher_finds_the_permutation_and_loss_is_near_zero_when_perfect():
    gt = torch.zeros(3, 8, 8)
    gt[0, :4, :4] = 1
    gt[1, 4:, 4:] = 1
    gt[2, :4, 4:] = 1
    labels = torch.tensor([2, 0, 1])
    perm = [4, 1, 3]  # gt i lives in slot perm[i] out of 5
    logits = torch.full((1, 5, 4), -20.0)
    logits[0, :, 3] = 20  # no-object everywhere ...
    masks = torch.full((1, 5, 8, 8), -20.0)
    for i, s in enumerate(perm):  # ... except in the slots holding a ground truth
        logits[0, s] = -20
        logits[0, s, labels[i]] = 20
        masks[0, s][gt[i] > 0] = 20
    targets = [{"labels": labels, "masks": gt}]
    rows, cols = HungarianMatcher()(logits, masks, targets)[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(perm))
    losses = SetCriterion(3)(logits, masks, targets)
    assert losses["loss_ce"] < 1e-6 and losses["loss_dice"] < 1e-3
    # Classes shuffled against the masks: every assignment now pays in CE or in Dice.
    bad = SetCriterion(3)(logits, masks, [{"labels": labels.roll(1), "masks": gt}])
    assert bad["loss_ce"] + bad["loss_dice"] > 0.9


def test_matcher_uses_the_masks_dice_when_classes_tie():
    """Two objects of the same class: only Dice(m, m_hat) of Eq. 3 tells which slot holds which."""
    gt = torch.zeros(2, 8, 8)
    gt[0, :4] = 1
    gt[1, 4:] = 1
    logits = torch.full((1, 4, 3), -20.0)
    logits[0, :, 2] = 20  # no-object ...
    masks = torch.full((1, 4, 8, 8), -20.0)
    for gi, slot in ((0, 3), (1, 1)):  # ... except slots 3 and 1, both class 0
        logits[0, slot] = torch.tensor([20.0, -20, -20])
        masks[0, slot][gt[gi] > 0] = 20
    rows, cols = HungarianMatcher()(logits, masks, [{"labels": torch.tensor([0, 0]), "masks": gt}])[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 3, 1: 1}


def test_no_object_weight():
    logits = torch.zeros(1, 4, 3)  # uniform: -log p = log 3 for every slot whatever its class
    masks = torch.zeros(1, 4, 4, 4)
    gt = torch.ones(1, 4, 4)
    t = [{"labels": torch.tensor([0]), "masks": gt}]
    for w in (0.1, 1.0):
        loss = SetCriterion(2, no_object_weight=w)(logits, masks, t)["loss_ce"]
        torch.testing.assert_close(loss, torch.log(torch.tensor(3.0)))  # weighted mean of equal terms
    logits[0, :, 0] = 2.0  # now the class-0 logit is high everywhere: no-object slots are wrong
    lo = SetCriterion(2, no_object_weight=0.1)(logits, masks, t)["loss_ce"]
    hi = SetCriterion(2, no_object_weight=1.0)(logits, masks, t)["loss_ce"]
    assert hi > lo
    empty = SetCriterion(2)(logits, masks, [{"labels": torch.zeros(0, dtype=torch.long),
                                             "masks": torch.zeros(0, 4, 4)}])
    assert empty["loss_dice"] == 0


# -- online inference --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [0, 1, 3, 5])
def test_backbone_runs_once_per_frame(delta):
    model = rcf.rcf_tiny(3, delta=delta, audio_encoder=audio_encoder()).eval()
    calls, audio_calls = [], []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model.fusion.audio_tokens.encoder.extractor.register_forward_hook(
        lambda m, i, o: audio_calls.append(i[0].shape[:-1].numel()))
    frames = torch.randint(0, 256, (7, 3, 32, 48), dtype=torch.uint8)
    tracks = model.predict_video(frames, torch.randn(7, 800))
    assert calls == [1] * 7
    assert audio_calls == [1] * 7  # the audio backbone too: per-frame audio features are cached
    assert all(m.shape == (32, 48) and m.dtype == torch.bool for t in tracks for m in t.masks.values())


@pytest.mark.parametrize("encoder", ["none", "split", "plain"])
def test_online_step_equals_clip_computation(encoder):
    """At frame t the references are frames t-delta..t-1 clamped at 0 (the first frame repeated); audio
    features cached per frame (split encoder) or windows re-encoded (plain encoder) give the same result."""
    delta = 3
    enc = {"none": None, "split": audio_encoder(), "plain": StubAudio()}[encoder]
    model = rcf.rcf_tiny(3, delta=delta, audio_encoder=enc).eval()
    g = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (5, 3, H, W), dtype=torch.uint8, generator=g)
    audio = torch.randn(5, 1600, generator=g)
    state = model.init_state()
    probs, mask_logits = [], []
    for t in range(5):
        model.step(state, frames[t], audio[t])
        probs.append(state.last_probs)
        mask_logits.append(state.last_masks)
    for t in (0, 1, 4):
        idx = [max(0, t - d) for d in range(delta, -1, -1)]
        batch = {"frames": frames[idx][None], "audio": audio[idx][None], "has_audio": torch.tensor([True])}
        with torch.no_grad():
            logits, masks, _ = outputs(model, batch)
        torch.testing.assert_close(probs[t], logits[-1, 0].softmax(-1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mask_logits[t], masks[-1, 0], atol=1e-3, rtol=1e-3)


def test_attention_maps():
    model = rcf.rcf_tiny(3, delta=2, audio_encoder=audio_encoder()).eval()
    with pytest.raises(RuntimeError, match="keep_attention"):
        model.attention_maps()
    model.keep_attention = True
    state = model.init_state()
    model.step(state, torch.randint(0, 256, (3, H, W), dtype=torch.uint8), torch.randn(1600))
    maps = model.attention_maps()
    hw = (H // 16, W // 16)
    assert maps["ref_to_target"].shape == (1, 4, *hw)
    assert maps["target_to_ref"].shape == (1, 4, *hw)
    assert maps["audio_to_target"].shape == (1, 3, *hw)
    assert maps["weight_map"].shape == (1, 1, *hw)
    full = maps["full"]
    torch.testing.assert_close(full.sum(-1), torch.ones(full.shape[:2]))  # softmax rows
    torch.testing.assert_close(maps["ref_to_target"], full[:, 16:20, :16].reshape(1, 4, *hw))
    model.keep_attention = False
    model.step(state, torch.randint(0, 256, (3, H, W), dtype=torch.uint8), torch.randn(1600))
    with pytest.raises(RuntimeError):
        model.attention_maps()


# -- overfitting on synthetic moving shapes ------------------------------------------------------------------------

COLOURS = {0: (220, 40, 40), 1: (40, 200, 60), 2: (50, 80, 230)}


def synthetic_clip(seed: int, num_frames: int = 4, num_objects: int = 3):
    """Coloured square (class 0), disc (1) and diamond (2) moving in straight lines over a grey background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    starts = [(torch.randint(14, 50, (2,), generator=g).float(), (torch.rand(2, generator=g) - 0.5) * 4)
              for _ in range(num_objects)]
    frames, targets = [], []
    for t in range(num_frames):
        img = torch.full((3, H, W), 90, dtype=torch.uint8)
        masks = []
        for c, (p, v) in enumerate(starts):
            cy, cx = (p + v * t).tolist()
            if c == 0:
                m = ((yy - cy).abs() < 9) & ((xx - cx).abs() < 9)
            elif c == 1:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 < 100
            else:
                m = ((yy - cy).abs() + (xx - cx).abs()) < 11
            for earlier in masks:  # later shapes are drawn on top
                earlier &= ~m
            img[:, m] = torch.tensor(COLOURS[c], dtype=torch.uint8)[:, None]
            masks.append(m)
        frames.append(img)
        targets.append({"labels": torch.arange(num_objects), "masks": torch.stack(masks),
                        "instance_ids": torch.arange(num_objects)})
    return torch.stack(frames), targets


@pytest.mark.slow
def test_tiny_overfits_two_clips_and_segments_them():
    torch.manual_seed(0)
    delta = 1
    clips = [synthetic_clip(1, num_objects=3), synthetic_clip(2, num_objects=2)]
    frames, targets = [], []
    for f, t in clips:  # every frame as a target, its reference clamped at the video start as online
        for i in range(f.shape[0]):
            idx = [max(0, i - d) for d in range(delta, -1, -1)]
            frames.append(f[idx])
            targets.append([t[j] for j in idx])
    batch = {"frames": torch.stack(frames), "targets": targets}
    model = rcf.rcf_tiny(num_classes=3, delta=delta)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    history = []
    for _ in range(300):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert min(history[-10:]) < 0.1 * history[0], (history[0], history[-10:])

    model.eval()
    for f, t in clips:
        tracks = model.predict_video(f)
        n = len(t[0]["labels"])
        assert len(tracks) == n
        for gi in range(n):
            # The one track that covers this object: right class, present in every frame, IoU > 0.8.
            ious = torch.tensor([[mask_iou(tr.masks[i][None], t[i]["masks"][gi][None]).item()
                                  if i in tr.masks else 0.0 for i in range(f.shape[0])] for tr in tracks])
            best = int(ious.mean(1).argmax())
            assert tracks[best].label == gi
            assert ious[best].min() > 0.8, ious[best]
            assert tracks[best].score > 0.4


def test_audio_model_without_audio_equals_silent_clip():
    """step(..., audio=None) masks the audio tokens: same output as any audio with has_audio False."""
    model = rcf.rcf_tiny(3, delta=1, audio_encoder=audio_encoder()).eval()
    frames = torch.randint(0, 256, (2, 3, H, W), dtype=torch.uint8)
    state = model.init_state()
    for t in range(2):
        model.step(state, frames[t], None)
    batch = {"frames": frames[None], "audio": torch.randn(1, 2, 1600), "has_audio": torch.tensor([False])}
    with torch.no_grad():
        logits, masks, _ = outputs(model, batch)
    torch.testing.assert_close(state.last_probs, logits[-1, 0].softmax(-1), atol=1e-4, rtol=1e-4)


def test_bench_variants_are_pluggable(monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_online.py"
    spec = importlib.util.spec_from_file_location("bench_online", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_online", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "WIDTH", 48)
    monkeypatch.setattr(bench, "HEIGHT", 32)
    monkeypatch.setattr(bench, "WINDOW", 800)
    variants = [bench.backbone_alone("tiny backbone", lambda: rcf.rcf_tiny(3).backbone),
                bench.method("rcf_tiny delta=1", lambda: rcf.rcf_tiny(3, 1)),
                bench.method("rcf_tiny audio", lambda: rcf.rcf_tiny(3, 2, audio_encoder=StubAudio()))]
    med = bench.run(variants, frames=2, warmup=1, device=torch.device("cpu"), amp=False)
    assert set(med) == {v.name for v in variants} and all(t > 0 for t in med.values())


def test_hydra_instantiates_builders():
    from hydra.utils import instantiate

    model = instantiate({"_target_": "avis.models.rcf.rcf_tiny", "num_classes": 4, "delta": 2, "num_queries": 6,
                         "audio_encoder": {"_target_": "avis.models.audio.audio_tokens_tiny", "out_channels": 32}})
    assert isinstance(model, rcf.RCF) and model.clip_length == 3 and model.uses_audio
    assert model.heads.cls.out_features == 5 and model.instance_decoder.query_pos.num_embeddings == 6
    assert isinstance(model.fusion.audio_tokens.proj, nn.Identity)  # C_a = C' = 32: no projection


def test_soundless_video_is_masked_in_inference_as_in_training():
    """A video without sound: the engine feeds no windows, so each step masks the audio tokens exactly as
    training does with has_audio = False (zero windows would be encoded as real silence)."""
    import numpy as np

    from avis.data.video import Video
    from avis.engine.predict import model_inputs, predict_videos

    model = rcf.rcf_tiny(3, delta=1, audio_encoder=audio_encoder()).eval()
    g = np.random.default_rng(0)
    video = Video(video_id=1, frames=g.integers(0, 256, (3, H, W, 3), dtype=np.uint8),
                  frame_times=np.array([0.0, 0.04, 0.08]), audio=None, sample_rate=16000, has_audio=False)
    frames, audio, _ = model_inputs(video, None, None)
    assert audio is None
    seen = []
    predict = model._predict_online  # the network after the backbone in the online step
    model._predict_online = lambda *a, **k: seen.append(predict(*a, **k)[0][-1, 0].softmax(-1)) or predict(*a, **k)
    predict_videos(model, [video], [{"id": 1}, {"id": 2}, {"id": 3}], torch.device("cpu"), progress=False,
                   with_gt=False)
    del model._predict_online
    assert len(seen) == 3
    for t in range(3):
        idx = [max(0, t - 1), t]
        batch = {"frames": frames[idx][None], "audio": torch.randn(1, 2, 1600),
                 "has_audio": torch.tensor([False])}
        with torch.no_grad():
            logits, _, _ = outputs(model, batch)
        torch.testing.assert_close(seen[t], logits[-1, 0].softmax(-1), atol=1e-5, rtol=1e-5)


def test_backbone_lr_multiplier_selects_the_visual_backbone_only():
    """The paper's 0.1 multiplier is for the visual backbone, not the audio network's own ``backbone``."""
    from avis.engine.optim import param_groups

    model = rcf.rcf_tiny(3, audio_encoder=audio_encoder())
    groups = {g["name"]: g for g in param_groups(model, 1e-3, 0.0, backbone_lr_mult=0.1)}
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in model.backbone.parameters()}
    audio_net = model.fusion.audio_tokens.encoder.extractor.backbone
    assert {id(p) for p in audio_net.parameters()} <= {id(p) for p in groups["head"]["params"]}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["head"]["lr"] == 1e-3


def _finish_of_before(model, outs, size):
    """RCF.finish before the per-frame contract: every frame's outputs kept to the end of the video, then one
    batched upsampling of the candidate slots and the slot tracker over all frames."""
    from torch.nn import functional as F

    from avis.tracking import SlotTracker

    tracker = SlotTracker(model.class_threshold, model.iou_threshold)
    logit_threshold = torch.logit(torch.tensor(model.mask_threshold)).item()
    probs = torch.stack([p for p, _ in outs]).float().cpu()
    frame_idx, slot_idx = torch.nonzero(probs[..., :-1].max(-1).values >= model.class_threshold, as_tuple=True)
    stacked = torch.stack([m for _, m in outs])
    picked = stacked[frame_idx, slot_idx]
    binary = torch.cat([(F.interpolate(c[None].float(), size=size, mode="bilinear", align_corners=False)[0]
                         > logit_threshold) for c in picked.split(64)])
    for i in range(len(outs)):
        masks = torch.zeros((stacked.shape[1], *size), dtype=torch.bool)
        sel = frame_idx == i
        masks[slot_idx[sel]] = binary[sel]
        tracker.update(i, probs[i], masks)
    return tracker.tracks()


@pytest.mark.parametrize("fast", [True, False])
def test_per_frame_tracking_gives_the_same_tracks_as_the_video_level_finish(fast):
    model = rcf.rcf_tiny(3, delta=2, audio_encoder=audio_encoder(), class_threshold=0.2).eval()
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (8, 3, 40, 56), dtype=torch.uint8, generator=g)
    audio = torch.randn(8, 1600, generator=g)
    state = model.init_state()
    outs = []
    for t in range(8):
        if fast:
            model.step(state, frames[t], audio[t])
        else:  # the reference network part (tests/rcf_reference.py), then the same per-frame tracking
            model.track_frame(state, *reference_step(model, state, frames[t], audio[t]))
        outs.append((state.last_probs, state.last_masks))
    tracks, before = model.finish(state), _finish_of_before(model, outs, (40, 56))
    assert len(tracks) == len(before) > 1
    for a, b in zip(tracks, before):
        assert (a.label, a.score, sorted(a.masks)) == (b.label, b.score, sorted(b.masks))
        assert all(torch.equal(a.masks[t], b.masks[t]) for t in a.masks)


# -- padding --------------------------------------------------------------------------------------------------------

def test_fusion_over_a_padded_grid_equals_the_unpadded_one():
    """Target tokens over the padding are masked out of the attention, the sine encoding spans the valid
    region and the reference tokens pool over it: the valid tokens, the decoder and the class logits are those
    of the unpadded features whatever the padding holds; O'_tgt is 0 over the padding."""
    model = rcf.rcf_tiny(3, delta=2, audio_encoder=audio_encoder()).eval()
    c = model.backbone.channels[-1]
    g = torch.Generator().manual_seed(2)
    grids = [(3, 5), (6, 7)]  # the second image fills the padded 6 x 7 grid
    f_t = torch.randn(2, c, 6, 7, generator=g) * 3
    f_ref = torch.randn(2, 2 * c, 6, 7, generator=g) * 3
    audio = model.fusion.audio_tokens(torch.randn(2, 3, 1600, generator=g))
    valid = torch.tensor([True, False])
    with torch.no_grad():
        padded = model.fusion(f_t, f_ref, audio, valid, valid_hw=torch.tensor(grids))
        codes = model.instance_decoder(padded.memory, padded.pos, padded.padding_mask)
        for i, (h, w) in enumerate(grids):
            alone = model.fusion(f_t[i:i + 1, :, :h, :w], f_ref[i:i + 1, :, :h, :w], audio[i:i + 1], valid[i:i + 1])
            keep = (torch.arange(6)[:, None] < h) & (torch.arange(7)[None, :] < w)
            mem = padded.memory[i]
            torch.testing.assert_close(mem[:42][keep.flatten()], alone.memory[0, :h * w], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(mem[42:], alone.memory[0, h * w:], atol=1e-5, rtol=1e-4)  # ref + audio
            torch.testing.assert_close(padded.target[i][:, :h, :w], alone.target[0], atol=1e-5, rtol=1e-4)
            assert (padded.target[i][:, ~keep] == 0).all()
            ref_codes = model.instance_decoder(alone.memory, alone.pos, alone.padding_mask)
            torch.testing.assert_close(codes[:, i], ref_codes[:, 0], atol=1e-5, rtol=1e-4)


def test_batch_padding_reaches_the_model_and_its_content_does_not_matter():
    """The pipeline tells each clip's size before padding (image_sizes); the model zeroes the padded pixels
    (as the convolutions' zero padding at inference) and masks the padded tokens."""
    from avis.data.clips import collate

    g = torch.Generator().manual_seed(3)

    def clip(h, w):
        return {"frames": torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g),
                "frame_times": torch.zeros(2, dtype=torch.float64), "audio": torch.randn(2, 1600, generator=g),
                "has_audio": True, "video_id": 0,
                "targets": [{"labels": torch.tensor([1]), "masks": torch.rand(1, h, w, generator=g) > 0.5,
                             "instance_ids": torch.tensor([1])}] * 2}

    batch = collate([clip(40, 56), clip(48, 36)], short=None, max_size=None, size_divisibility=32)
    assert batch["frames"].shape[-2:] == (64, 64)
    assert batch["image_sizes"].tolist() == [[40, 56], [48, 36]]
    model = rcf.rcf_tiny(3, delta=1, audio_encoder=audio_encoder()).eval()
    other = dict(batch, frames=batch["frames"].clone())
    other["frames"][0, :, :, 40:] = 255  # garbage in the padding of clip 0
    other["frames"][1, :, :, :, 36:] = 17
    with torch.no_grad():
        a, b = model(batch), model(other)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)


# -- Swin-L (timm, optional extra) ------------------------------------------------------------------------------------

SMALL_SWIN = "swin_tiny_patch4_window7_224"  # the same timm class as Swin-L, small enough for CPU tests


def test_rcf_swin_l_is_the_papers_swin_l():
    pytest.importorskip("timm")
    with torch.device("meta"):  # structure only: 197M parameters are not initialised
        model = rcf.rcf_swin_l(num_classes=5)
    assert model.backbone.channels == [192, 384, 768, 1536] and model.backbone.strides == [4, 8, 16, 32]
    assert model.fusion.target_tokens.proj.in_channels == 1536
    assert sum(p.numel() for p in model.backbone.parameters()) > 190e6
    assert not any(k.startswith(("norm.", "head.")) for k in model.backbone.body.state_dict())  # unused: pruned


def test_rcf_swin_l_code_path_with_a_small_timm_swin(monkeypatch):
    """rcf_swin_l's builder and backbone, run with a small timm Swin: any frame size, losses, online step."""
    pytest.importorskip("timm")
    from avis.models import backbones

    monkeypatch.setitem(backbones.TIMM_SWINS, "swin_l", SMALL_SWIN)
    model = rcf.rcf_swin_l(num_classes=3, delta=1, hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=32,
                           fpn_dim=16, mask_dim=16)
    assert model.backbone.channels == [96, 192, 384, 768]
    batch = make_batch(1, 2, size=(50, 70))  # not a multiple of the patch or the windows
    losses = model(batch)
    sum(losses.values()).backward()
    assert model.backbone.body.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.backbone.parameters())  # no unused parameter (DDP)
    model.eval()
    result = model.step(model.init_state(), batch["frames"][0, 0])
    assert all(i.mask.shape == (50, 70) for i in result.instances)


def test_timm_swin_loads_local_weights(tmp_path):
    """A timm classification state dict (torch.save or safetensors), or an original Swin checkpoint."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from avis.models.backbones import TimmSwinBackbone

    src = timm.create_model(SMALL_SWIN, pretrained=False, num_classes=10).state_dict()
    src = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in src.items()}
    torch.save(src, tmp_path / "timm.pth")
    save_file(src, str(tmp_path / "timm.safetensors"))
    # the original Microsoft layout: patch merging at the end of a stage, classifier "head."
    orig = {}
    for k, v in src.items():
        for i in (1, 2, 3):
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        orig[k.replace("head.fc.", "head.")] = v
    torch.save({"model": orig}, tmp_path / "orig.pth")
    for name in ("timm.pth", "timm.safetensors", "orig.pth"):
        net = TimmSwinBackbone(SMALL_SWIN, weights=str(tmp_path / name))
        got = net.body.state_dict()
        for k in ("patch_embed.proj.weight", "layers.2.downsample.reduction.weight",
                  "layers.3.blocks.1.attn.relative_position_bias_table"):
            assert torch.equal(got[k], src[k]), (name, k)
    torch.save({"layers.0.blocks.0.norm1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="bad.pth"):
        TimmSwinBackbone(SMALL_SWIN, weights=str(tmp_path / "bad.pth"))


def test_swin_l_without_timm_says_how_to_install(monkeypatch):
    from avis.errors import ConfigError
    from avis.models.backbones import build_backbone

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ConfigError, match=r"avis\[timm\]"):
        build_backbone("swin_l")
