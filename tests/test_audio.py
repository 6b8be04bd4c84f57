"""Audio branch: VGGish front end against an independent NumPy recipe, alignment, VGGish weights, tokens."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from torch import nn

from avis.errors import InputError
from avis.models.audio import (
    AudioTokenEncoder,
    LogMelFrontend,
    audio_tokens_tiny,
    audio_tokens_vggish,
    frame_windows,
    precompute_audio_features,
    vggish,
    vggish_mel_matrix,
)
from avis.models.audio.frontend import EXAMPLE_SAMPLES, LOG_OFFSET

SPEECH = [Path("/usr/share/sounds/alsa") / n for n in ("Front_Center.wav", "Rear_Left.wav")]


# ---------------------------------------------------------------- independent NumPy VGGish recipe (float64)
def _hz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def np_mel_matrix():
    """VGGish: triangles linear in mel between mel-equispaced edges over 125-7500 Hz, DC row zeroed."""
    bins = _hz_to_mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(_hz_to_mel(125.0), _hz_to_mel(7500.0), 66)
    m = np.zeros((257, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        m[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    m[0] = 0.0
    return m


def np_vggish_log_mel(x):
    """16 kHz samples -> log(mel + 0.01), frames of 400 every 160 samples without padding, rfft of 512."""
    x = np.asarray(x, dtype=np.float64)
    n = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160:i * 160 + 400] for i in range(n)])
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(400) / 400)  # periodic
    spec = np.abs(np.fft.rfft(frames * hann, 512))
    return np.log(spec @ np_mel_matrix() + 0.01)


def _read_wav(path):
    sf = pytest.importorskip("soundfile")
    if not path.is_file():
        pytest.skip(f"{path} is missing (Debian package alsa-utils provides it)")
    data, sr = sf.read(str(path), dtype="int16")
    data = data / 32768.0
    if data.ndim == 2:
        data = data.mean(axis=1)
    return data, sr


# ---------------------------------------------------------------- front end
def test_frontend_matches_numpy_recipe_on_noise_batched():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 20_000)) * np.array([[0.01], [0.3], [1.0]])
    out = LogMelFrontend()(torch.tensor(x, dtype=torch.float32))
    assert out.shape == (3, 1 + (20_000 - 400) // 160, 64) == (3, 123, 64)
    for b in range(3):
        np.testing.assert_allclose(out[b].double().numpy(), np_vggish_log_mel(x[b]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("path", SPEECH, ids=lambda p: p.name)
def test_frontend_matches_numpy_recipe_on_speech_resampled_by_frontend(path):
    x, sr = _read_wav(path)
    assert sr == 48_000
    out = LogMelFrontend()(torch.tensor(x, dtype=torch.float32), sample_rate=sr).double().numpy()
    # Resampling is torchaudio's job; the reference gets the same torchaudio output at 16 kHz.
    x16 = AF.resample(torch.tensor(x, dtype=torch.float32), sr, 16_000).double().numpy()
    ref = np_vggish_log_mel(x16)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    assert out.max() - out.min() > 6  # real speech, not silence: the comparison covers a wide range
    # Sanity of the resampling path itself: scipy's polyphase resampler gives nearly the same log-mel
    # (filters differ near the band edge, hence a mean, not a max); a wrong rate would be far off.
    from scipy.signal import resample_poly

    assert np.abs(np_vggish_log_mel(resample_poly(x, 1, 3)) - out).mean() < 0.05


def test_mel_matrix_is_vggish_and_matches_librosa_htk_modulo_mel_linear_triangles():
    librosa = pytest.importorskip("librosa")
    ours = vggish_mel_matrix().numpy()  # (257, 64)
    np.testing.assert_allclose(ours, np_mel_matrix(), atol=1e-12)
    lib = librosa.filters.mel(sr=16_000, n_fft=512, n_mels=64, fmin=125.0, fmax=7500.0, htk=True, norm=None,
                              dtype=np.float64).T
    # Same band edges (librosa's 2595 log10 and VGGish's 1127 ln differ by a constant factor that cancels in
    # equispaced edges), hence the same support and the same peak bins.
    assert np.array_equal(lib > 0, ours > 0)
    assert np.array_equal(lib.argmax(0), ours.argmax(0))
    # VGGish's triangles are linear in mel, librosa's in Hz: map librosa's weights through the mel warp.
    edges = librosa.mel_frequencies(66, fmin=125.0, fmax=7500.0, htk=True)
    lo, c, hi = edges[:-2], edges[1:-1], edges[2:]
    f = librosa.fft_frequencies(sr=16_000, n_fft=512)[:, None]
    rising = f <= c
    f_from_lib = np.where(rising, lo + lib * (c - lo), hi - lib * (hi - c))  # Hz position encoded by lib
    m = _hz_to_mel
    warped = np.where(rising, (m(f_from_lib) - m(lo)) / (m(c) - m(lo)), (m(hi) - m(f_from_lib)) / (m(hi) - m(c)))
    np.testing.assert_allclose(ours, np.where(lib > 0, warped, 0.0), atol=1e-9)
    assert 1e-3 < np.abs(ours - lib).max() < 1e-2  # the convention difference is real but small
    assert np.all(ours[0] == 0)  # DC row zeroed


def test_examples_are_96_frames_ending_at_the_window_end():
    fe = LogMelFrontend()
    x = torch.randn(2, 20_080)
    full = fe(x)
    # A window of exactly 15600 samples is one VGGish example with no padding.
    ex = fe.examples(x[:, -EXAMPLE_SAMPLES:])
    assert ex.shape == (2, 96, 64)
    # Its frames line up with the full signal's frames that end at the same sample (20080 - 400 is a multiple
    # of 160 here, so the last frame of the full signal ends at sample 20080 too).
    torch.testing.assert_close(ex, full[:, -96:], atol=1e-4, rtol=0)
    # The paper's 0.96 s window is left-padded causally with 240 zeros: frames 0 and 1 overlap the padding,
    # frames 2.. are the 94 frames of the window itself, unchanged and ending at the window's end.
    ex96 = fe.examples(x[:, -15_360:])
    assert ex96.shape == (2, 96, 64)
    torch.testing.assert_close(ex96[:, 2:], full[:, -94:], atol=1e-4, rtol=0)
    assert (ex96[:, :2] - full[:, -96:-94]).abs().max() > 0.1  # the padded frames did change
    assert fe.examples(x).shape == (2, 96, 64)  # longer windows keep the last 96 frames
    torch.testing.assert_close(fe.examples(x), full[:, -96:], atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_frontend_same_on_cpu_and_gpu():
    x = torch.randn(4, 16_000)
    fe = LogMelFrontend()
    torch.testing.assert_close(fe.cuda()(x.cuda()).cpu(), LogMelFrontend()(x), atol=1e-4, rtol=0)
    enc = audio_tokens_tiny(out_channels=8).eval()
    a = torch.randn(2, 3, 15_360)
    with torch.no_grad():
        cpu = enc(a)
        gpu = enc.cuda()(a.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- alignment
def test_click_at_t_is_in_frame_t_window_and_not_in_the_previous_frame():
    sr, t = 16_000, 2.0
    wav = torch.zeros(3 * sr)
    wav[int(t * sr) - 200] = 1.0  # a click 12.5 ms before t: inside frame t's window
    wav[int(t * sr) + 5] = 1.0  # and one just after t: must not leak into frame t (causality)
    times = torch.tensor([t - 1.0, t])  # 1 fps: frames more than eta = 0.96 s apart
    ex = LogMelFrontend().examples(frame_windows(wav, times, sample_rate=sr))  # (2, 96, 64)
    silence = math.log(LOG_OFFSET)
    assert torch.all(ex[0] == silence)  # previous frame: nothing
    loud = ex[1].amax(dim=1) > silence + 1
    assert loud[-1] and loud.sum() <= 3  # the click sits in the last STFT frames (the most recent 25 ms)
    assert torch.all(ex[1, :-3] == silence)
    # Whatever the backbone, frame t's feature differs from silence's and frame t-1's equals it.
    enc = audio_tokens_tiny(out_channels=8).eval()
    with torch.no_grad():
        feats = enc.frame_features(frame_windows(wav, times, sample_rate=sr))
        quiet = enc.frame_features(torch.zeros(1, 15_360))[0]
    torch.testing.assert_close(feats[0], quiet)
    assert not torch.allclose(feats[1], quiet)


def test_click_after_t_alone_leaves_frame_t_silent():
    wav = torch.zeros(48_000)
    wav[32_000] = 1.0  # exactly at t = 2 s: sample index 32000 belongs to the future of frame t = 2 s
    ex = LogMelFrontend().examples(frame_windows(wav, torch.tensor([2.0, 2.5])))
    assert torch.all(ex[0] == math.log(LOG_OFFSET)) and ex[1].max() > math.log(LOG_OFFSET) + 1


# ---------------------------------------------------------------- VGGish weights
class _TorchVGGishLayout(nn.Module):
    """The torchvggish module layout written out independently (features / embeddings Sequentials, the
    transpose(1, 3).transpose(1, 2) flatten), plus its PCA post-processor parameters."""

    def __init__(self):
        super().__init__()
        layers, c = [], 1
        for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1), nn.ReLU(True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))
        self.pproc = nn.Module()
        self.pproc.pca_matrix = nn.Parameter(torch.randn(128, 128), requires_grad=False)
        self.pproc.pca_means = nn.Parameter(torch.randn(128, 1), requires_grad=False)

    def forward(self, x, upto=None):
        x = self.features(x)
        x = torch.transpose(x, 1, 3)
        x = torch.transpose(x, 1, 2).contiguous().view(x.size(0), -1)
        return self.embeddings[:upto](x) if upto else self.embeddings(x)


EXPECTED_KEYS = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")} | {
    f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


@pytest.mark.slow
def test_torchvggish_state_dict_loads_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    ref = _TorchVGGishLayout().eval()
    with torch.no_grad():  # biases away from zero so that a wrong flatten order cannot go unnoticed
        for mod in ref.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.bias.uniform_(-0.1, 0.1)
    path = tmp_path / "vggish-torchvggish.pth"
    torch.save(ref.state_dict(), path)
    model = vggish(path).eval()
    assert set(model.state_dict()) == EXPECTED_KEYS  # the documented key mapping
    x = torch.randn(3, 1, 96, 64) * 3
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-6, rtol=0)
        feat = model.forward_features(x[:, 0])
        torch.testing.assert_close(feat, ref(x, upto=4), atol=1e-6, rtol=0)
    assert feat.shape == (3, 4096) and feat.min() >= 0  # after fc1_2's ReLU
    # The same file through the token builder: frozen, loaded weights, C_a = 4096.
    enc = audio_tokens_vggish(out_channels=16, weights=path, freeze=True)
    assert enc.feature_dim == 4096 and enc.out_channels == 16
    assert not any(p.requires_grad for p in enc.extractor.parameters())
    torch.testing.assert_close(enc.extractor.backbone.features[0].weight, ref.features[0].weight)
    # A state dict with a missing layer is refused with a clear InputError naming the file.
    sd = ref.state_dict()
    del sd["embeddings.2.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(InputError, match="broken.pth.*embeddings.2.weight"):
        vggish(tmp_path / "broken.pth")


def test_vggish_bad_files_and_missing_weights_warning(tmp_path, caplog):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pth: cannot read VGGish weights"):
        vggish(tmp_path / "junk.pth")
    with pytest.raises(InputError, match="not found"):
        vggish(tmp_path / "nope.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "small.pth")
    with pytest.raises(InputError, match="wrong shapes.*features.0.weight"):
        vggish(tmp_path / "small.pth")
    with caplog.at_level(logging.WARNING, logger="avis.models.audio.vggish"):
        vggish(None)
    assert "random initialization" in caplog.text


@pytest.mark.slow
def test_gradients_reach_trainable_vggish_and_waveform():
    torch.manual_seed(0)
    enc = audio_tokens_vggish(out_channels=8, freeze=False, lstm_hidden=16, fc_hidden=16)
    audio = (torch.randn(1, 2, 15_360) * 0.1).requires_grad_()
    enc(audio).square().sum().backward()
    assert enc.extractor.backbone.features[0].weight.grad.abs().sum() > 0
    assert enc.extractor.backbone.embeddings[2].weight.grad.abs().sum() > 0
    assert enc.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert audio.grad is not None and torch.isfinite(audio.grad).all() and audio.grad.abs().sum() > 0


# ---------------------------------------------------------------- tokens
def test_gradients_trainable_vs_frozen_tiny():
    torch.manual_seed(0)
    enc = audio_tokens_tiny(out_channels=8, freeze=False)
    audio = torch.randn(2, 2, 15_360, requires_grad=True)
    enc(audio).sum().backward()
    for p in (enc.lstm.weight_ih_l0, enc.lstm.weight_hh_l1_reverse, enc.head[0].weight,
              enc.extractor.backbone.features[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert audio.grad.abs().sum() > 0  # through the log-mel front end to the waveform

    frozen = audio_tokens_tiny(out_channels=8, freeze=True).train()
    assert not frozen.extractor.backbone.training  # frozen backbone stays in eval mode
    audio = torch.randn(2, 2, 15_360, requires_grad=True)
    frozen(audio).sum().backward()
    assert frozen.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.extractor.parameters()) and audio.grad is None


@pytest.mark.parametrize("delta", range(6))
def test_token_shapes_and_precomputed_features_path(delta):
    torch.manual_seed(delta)
    enc = audio_tokens_tiny(out_channels=12).eval()
    assert isinstance(enc, AudioTokenEncoder) and enc.out_channels == 12
    audio = torch.randn(3, 1 + delta, 15_360)
    with torch.no_grad():
        tokens = enc(audio)
        feats = enc.frame_features(audio)
        assert tokens.shape == (3, 1 + delta, 12) and feats.shape == (3, 1 + delta, enc.feature_dim)
        torch.testing.assert_close(enc(features=feats), tokens)
        torch.testing.assert_close(enc(features=feats.half()), tokens, atol=2e-2, rtol=2e-2)
        # Batch items are independent; along time the bi-LSTM mixes: changing the oldest window changes
        # the target's token (when there is an older one).
        torch.testing.assert_close(enc(audio[1:2]), tokens[1:2], atol=1e-5, rtol=1e-5)
        if delta:
            changed = audio.clone()
            changed[:, 0] = 0
            assert not torch.allclose(enc(changed)[:, -1], tokens[:, -1])


def test_vggish_token_head_shapes_from_precomputed_features():
    enc = audio_tokens_vggish(out_channels=256)
    assert enc.feature_dim == 4096 and enc.lstm.hidden_size == 512 and enc.lstm.num_layers == 2
    assert enc.lstm.bidirectional
    feats = torch.rand(2, 4, 4096, dtype=torch.float16)
    with torch.no_grad():
        assert enc(features=feats).shape == (2, 4, 256)
    with pytest.raises(ValueError, match="exactly one"):
        enc()
    with pytest.raises(ValueError, match="B x T x 4096"):
        enc(features=torch.zeros(2, 4, 64))


def test_precompute_matches_online_features_and_resamples_once():
    torch.manual_seed(0)
    enc = audio_tokens_tiny(out_channels=8).eval()
    ex = enc.extractor
    wav16 = torch.randn(2 * 16_000) * 0.2
    times = torch.arange(12) / 6.0  # 6 fps, 2 s
    feats = precompute_audio_features(wav16, 16_000, times, ex, batch_size=5)
    assert feats.dtype == torch.float16 and feats.shape == (12, ex.feature_dim)
    with torch.no_grad():
        online = ex(frame_windows(wav16, times))
    torch.testing.assert_close(feats.float(), online, atol=1e-2, rtol=1e-2)
    # Stereo 48 kHz input: channels averaged, resampled once for the whole video.
    wav48 = AF.resample(wav16, 16_000, 48_000)
    stereo = torch.stack([wav48 * 0.5, wav48 * 1.5])
    got = precompute_audio_features(stereo.numpy(), 48_000, times.numpy(), ex)
    with torch.no_grad():
        want = ex(frame_windows(AF.resample(wav48, 48_000, 16_000), times))
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=1e-2)
    assert ex.training is False
