import torch

from avis.models.audio import frame_windows


def test_window_ends_at_frame_time_and_is_zero_padded_at_start():
    sr = 100
    wav = torch.arange(1, 501, dtype=torch.float32)  # 5 s, sample k holds k + 1
    w = frame_windows(wav, [0.0, 0.5, 2.0, 5.5], sample_rate=sr, eta=1.0)
    assert w.shape == (4, 100)
    assert torch.all(w[0] == 0)  # nothing before t = 0
    assert torch.all(w[1, :50] == 0) and torch.equal(w[1, 50:], torch.arange(1, 51, dtype=torch.float32))
    assert torch.equal(w[2], torch.arange(101, 201, dtype=torch.float32))  # samples 100..199
    assert torch.equal(w[3, :50], torch.arange(451, 501, dtype=torch.float32)) and torch.all(w[3, 50:] == 0)


def test_click_lands_in_its_frame_only():
    sr = 16000
    wav = torch.zeros(3 * sr)
    click = int(1.5 * sr) - 10  # just before t = 1.5 s
    wav[click] = 1.0
    w = frame_windows(wav[None], torch.tensor([0.5, 1.5, 2.5]), sample_rate=sr, eta=0.96)
    assert w.shape == (1, 3, 15360)
    assert w[0, 1].sum() == 1 and w[0, 0].sum() == 0 and w[0, 2].sum() == 0
