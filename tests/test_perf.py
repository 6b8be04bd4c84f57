"""Online fast path (issue 15): same masks and tracks as the reference step, float32 on CPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from avis.models import rcf
from avis.models.audio import audio_tokens_tiny
from avis.tracking import SlotTracker
from tests.baseline_utils import single_thread
from tests.rcf_reference import reference_video

H, W = 48, 64


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _model(delta: int, audio: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    # A low class threshold so that random slots fire and the tracks are not empty.
    return rcf.rcf_tiny(3, delta=delta, audio_encoder=audio_tokens_tiny() if audio else None,
                        class_threshold=0.2).eval()


def _video(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, 3, H, W), dtype=torch.uint8, generator=g)
    audio = [torch.randn(1600, generator=g) for _ in range(n)]
    if n > 2:
        audio[2] = None  # a frame without its window: silence in the later frames' references
    return frames, audio


def _run(model, frames, audio):
    """-> per-frame raw outputs [(probs N x (K+1), mask logits N x h x w)], and the tracks."""
    state = model.init_state()
    outs = []
    for f, a in zip(frames, audio):
        model.step(state, f, a)
        outs.append((state.last_probs, state.last_masks))
    return outs, model.finish(state)


def _reference_finish(model, outs, size):
    """The per-frame finish: every slot upsampled and thresholded, frame by frame."""
    tracker = SlotTracker(model.class_threshold, model.iou_threshold)
    for i, (probs, masks) in enumerate(outs):
        up = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        tracker.update(i, probs.float(), up > 0)
    return tracker.tracks()


def _assert_same_tracks(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.label == y.label
        assert x.score == pytest.approx(y.score, abs=1e-5)
        assert sorted(x.masks) == sorted(y.masks)
        for t in x.masks:
            # the two paths agree to ~1e-6 in the mask logits; a pixel whose logit is that close to 0 may flip
            # (it does with some CPU kernels), so a handful of differing pixels is allowed, not more
            differ = int((x.masks[t] != y.masks[t]).sum())
            assert differ <= max(2, x.masks[t].numel() // 2000), (t, differ)


@pytest.mark.parametrize("delta,audio", [(0, False), (2, True), (5, True), (3, False)])
def test_fast_path_equals_reference(delta, audio):
    model = _model(delta, audio)
    frames, windows = _video()
    ref_outs, ref_tracks = reference_video(model, frames, windows)
    model.optimize_online(channels_last=True)
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    outs, tracks = _run(model, frames, windows)
    for (p, m), (q, r) in zip(outs, ref_outs):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m, r, atol=1e-4, rtol=1e-4)
    _assert_same_tracks(tracks, ref_tracks)
    _assert_same_tracks(tracks, _reference_finish(model, outs, (H, W)))


def test_cached_lstm_projection_equals_lstm():
    enc = audio_tokens_tiny(lstm_layers=3).eval()
    a = torch.randn(2, 6, enc.feature_dim)
    with torch.no_grad():
        torch.testing.assert_close(enc.tokens_from_projected(enc.project(a)), enc.tokens(a), atol=1e-5, rtol=1e-5)
        # Projection is per frame: projecting frames one at a time and stacking them is the same input.
        per_frame = torch.stack([enc.project(a[:, i]) for i in range(6)], 1)
        torch.testing.assert_close(per_frame, enc.project(a), atol=1e-6, rtol=1e-6)


def test_fast_audio_runs_the_lstm_input_projection_once_per_frame():
    model = _model(3)
    calls = []
    enc = model.fusion.audio_tokens.encoder
    orig = enc.project
    enc.project = lambda f: calls.append(f.shape[:-1].numel()) or orig(f)
    frames, windows = _video(5)
    windows[2] = torch.randn(1600)
    _run(model, frames, windows)
    assert calls == [1] * 5


def test_amp_option():
    model = _model(1)
    with pytest.raises(ValueError, match="amp"):
        model.optimize_online(amp="fp8")
    frames, windows = _video(3)
    ref_outs, _ = _run(model, frames, windows)
    model.optimize_online(channels_last=False, amp="bf16")  # CPU autocast: checks the code path, not speed
    outs, _ = _run(model, frames, windows)
    for (p, _), (q, _) in zip(outs, ref_outs):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, atol=0.1, rtol=0.1)


def test_audio_all_present_needs_no_padding_mask():
    model = _model(2)
    seen = []
    model.fusion.layers[0].register_forward_hook(lambda m, i, o: seen.append(i[2]))
    frames, windows = _video(2)
    windows[1] = torch.randn(1600)
    _run(model, frames, windows)
    _run(model, frames, [windows[0], None])
    assert seen[0] is None and seen[1] is None
    assert seen[2] is None and seen[3] is not None and seen[3].tolist() == [[False] * (seen[3].shape[1] - 3)
                                                                          + [True] * 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_network_step_does_not_synchronise():
    """The network part of a step (forward_frame) never waits for the device; the step's one wait is the
    host transfer of its output (track_frame)."""
    model = _model(2).cuda().optimize_online(amp="bf16")
    frames, windows = _video(3)
    frames = frames.pin_memory()  # host frames, as decoded: pinned so that the copy need not block
    windows = [None if a is None else a.cuda() for a in windows]
    state = model.init_state()
    model.step(state, frames[0], windows[0])  # first frame: lazy initialisation may sync
    outs = [(state.last_probs, state.last_masks)]
    torch.cuda.synchronize()
    for f, a in zip(frames[1:], windows[1:]):
        torch.cuda.set_sync_debug_mode("error")
        try:
            probs, masks = model.forward_frame(state, f, a)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        model.track_frame(state, probs, masks)
        outs.append((probs, masks))
    ref_outs, _ = _run(_model(2), *_video(3))  # same weights, float32 on the CPU
    for (p, _), (q, _) in zip(outs, ref_outs):
        torch.testing.assert_close(p.cpu(), q, atol=0.05, rtol=0.05)
    assert isinstance(model.finish(state), list)


def test_decode_sample_decodes_audio_once_per_sample(monkeypatch):
    """Several clips per video: the FLAC is decoded once, the frames asked for each time."""
    import io
    import json

    import numpy as np
    import soundfile as sf
    from PIL import Image

    from avis.data import shards as sh

    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 1600).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, 16000, format="FLAC", subtype="PCM_16")
    sample = {"__key__": "v", "json": json.dumps({"num_frames": 2, "height": 8, "width": 8, "video_id": 1,
                                                  "frame_times": [0.0, 0.05], "sample_rate": 16000,
                                                  "has_audio": True, "num_samples": 1600, "instances": []}).encode(),
              "audio.flac": buf.getvalue()}
    for i in range(2):
        jpg = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * (i + 1), np.uint8)).save(jpg, format="JPEG")
        sample[f"{i:05d}.jpg"] = jpg.getvalue()
    calls = []
    orig = sh.decode_audio
    monkeypatch.setattr(sh, "decode_audio", lambda *a: calls.append(1) or orig(*a))
    a = sh.decode_sample(sample, frames=[0])
    b = sh.decode_sample(sample, frames=[1])
    assert len(calls) == 1
    np.testing.assert_allclose(a.audio[0], wave, atol=1 / 32768)
    assert np.array_equal(a.audio, b.audio)
    assert abs(int(a.frames[0].mean()) - 40) <= 2 and abs(int(b.frames[0].mean()) - 80) <= 2


def test_bench_online_fast_and_reference_variants(monkeypatch):
    """The benchmark's plumbing (not its timings): fast and reference variants, finish and CPU times reported."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_online.py"
    spec = importlib.util.spec_from_file_location("bench_online", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_online", bench)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "WIDTH", W)
    monkeypatch.setattr(bench, "HEIGHT", H)
    monkeypatch.setattr(bench, "WINDOW", 1600)
    built = []

    def build():
        built.append(_model(2))
        return built[-1]

    variants = [bench.backbone_alone("tiny backbone", lambda: _model(0).backbone),
                bench.method("fast", build, floor="tiny backbone"),
                bench.method("reference", build, floor="tiny backbone", reference=True)]
    finish, cpu = {}, {}
    wall = bench.run(variants, frames=2, warmup=1, device=torch.device("cpu"), amp=False, finish=finish, cpu=cpu)
    assert set(wall) == set(cpu) == {"tiny backbone", "fast", "reference"} and set(finish) == {"fast", "reference"}
    assert built[0].channels_last and not built[1].channels_last  # the reference variant runs as built


# -- issue 26: the mask decoder's online CPU path -------------------------------------------------------------------

class _CountNNPACK:
    """Counts the Winograd convolutions (so that a test fails if the online path stops taking them)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        orig = torch._nnpack_spatial_convolution

        def conv(*a, **k):
            self.calls += 1
            return orig(*a, **k)

        monkeypatch.setattr(torch, "_nnpack_spatial_convolution", conv)


@pytest.mark.parametrize("channels_last", [True, False])
def test_online_mask_decoder_and_folded_heads_equal_forward(monkeypatch, channels_last):
    """forward_unprojected + forward_folded (Winograd 3 x 3 convs, GEMM laterals, mask_proj folded into the
    filters) = forward + heads, on maps large enough for the Winograd path (stride-4 map 40 x 56)."""
    from avis.models.rcf.decoder import InstanceHeads, MaskDecoder

    torch.manual_seed(0)
    dec, heads = MaskDecoder([16, 24], 32, fpn_dim=24, mask_dim=20).eval(), InstanceHeads(32, 3, 20).eval()
    for m in dec.modules():  # non-trivial GroupNorm affine parameters
        if isinstance(m, torch.nn.GroupNorm):
            torch.nn.init.normal_(m.weight, 1, 0.3)
            torch.nn.init.normal_(m.bias, 0, 0.3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dec = dec.to(memory_format=fmt)
    feats = [torch.randn(1, 16, 40, 56).contiguous(memory_format=fmt),
             torch.randn(1, 24, 20, 24).contiguous(memory_format=fmt)]
    fused = torch.randn(1, 32, 10, 12).contiguous(memory_format=fmt)
    codes = torch.randn(2, 1, 7, 32)  # 2 decoder layers, 1 image, 7 queries
    count = _CountNNPACK(monkeypatch)
    with torch.no_grad():
        logits, masks = heads(codes, dec(fused, feats))
        calls = count.calls
        logits2, masks2 = heads.forward_folded(codes, dec.forward_unprojected(fused, feats), dec.mask_proj)
    assert masks2.shape == masks.shape == (2, 1, 7, 40, 56)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(masks2, masks, atol=1e-4, rtol=1e-4)
    if torch._nnpack_available():
        assert calls == 0 and count.calls == 1  # the 40 x 56 level only (20 x 24 and 10 x 12 are below 512 px)


def test_fast_path_equals_reference_where_winograd_runs(monkeypatch):
    """The online step at a frame size whose stride-4 map takes the Winograd path (128 x 160 -> 32 x 40): same
    class probabilities, mask logits and tracks as the reference step (tests/rcf_reference.py)."""
    model = _model(2, True)
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (4, 3, 128, 160), dtype=torch.uint8, generator=g)
    windows = [torch.randn(1600, generator=g) for _ in range(4)]
    ref_outs, ref_tracks = reference_video(model, frames, windows)
    model.optimize_online(channels_last=True)
    count = _CountNNPACK(monkeypatch)
    outs, tracks = _run(model, frames, windows)
    if torch._nnpack_available():
        assert count.calls == len(frames)
    for (p, m), (q, r) in zip(outs, ref_outs):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m, r, atol=1e-4, rtol=1e-4)
    _assert_same_tracks(tracks, ref_tracks)


def test_lstm_first_step_from_zero_state_equals_nn_lstm():
    """The recurrence skips h @ W_hh and f * c at the zero initial state: still nn.LSTM's output."""
    enc = audio_tokens_tiny(lstm_layers=2).eval()
    a = torch.randn(1, 4, enc.feature_dim)
    with torch.no_grad():
        h, _ = enc.lstm(a)
        torch.testing.assert_close(enc.tokens_from_projected(enc.project(a)), enc.head(h), atol=1e-6, rtol=1e-5)
