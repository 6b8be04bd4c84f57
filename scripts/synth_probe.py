"""Is the synthetic soundtrack usable, and only when it should be? A linear probe says.

For each sounding object, a ridge classifier reads the clip's time-averaged log-mel spectrum (plus which
look-alike pair the object belongs to, which the picture always shows) and guesses which member of the pair
it is. Audio-dependent scenes should give near-perfect accuracy; audio-independent ones chance (0.5).
Scenes are sampled and synthesised in memory (no encoding). ~0.2 s per scene on one core.

    python scripts/synth_probe.py [--train 300] [--test 100]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torchaudio

from data_tools import synth
from data_tools.synth_categories import BY_ID, PAIRS

PAIR_INDEX = {p.name: i for i, p in enumerate(PAIRS)}


def features(cfg: synth.SynthConfig, dependent: bool, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    mel = torchaudio.transforms.MelSpectrogram(cfg.sample_rate, n_fft=512, hop_length=160, n_mels=40)
    xs, ys = [], []
    for k in range(n):
        scene = synth.sample_scene(cfg, np.random.SeedSequence([seed, k]), dependent)
        f = torch.log(mel(torch.as_tensor(synth.soundtrack(scene, cfg))) + 1e-6).mean(-1).numpy()
        for o in scene.layers:
            if o.category is not None:
                pair = np.zeros(len(PAIRS))
                pair[PAIR_INDEX[BY_ID[o.category].pair]] = 1
                xs.append(np.outer(pair, np.r_[f, 1.0]).ravel())  # one linear model per pair
                ys.append(o.category % 2)  # member 1 or 2 of the pair
    return np.array(xs), np.array(ys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--test", type=int, default=100)
    args = ap.parse_args()
    cfg = synth.SynthConfig()
    for dependent in (True, False):
        xtr, ytr = features(cfg, dependent, args.train, 1)
        xte, yte = features(cfg, dependent, args.test, 2)
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        a, b = (xtr - mu) / sd, (xte - mu) / sd
        w = np.linalg.solve(a.T @ a + 10 * np.eye(a.shape[1]), a.T @ (2.0 * ytr - 1))
        print(f"audio_dependent={dependent}: member-from-audio accuracy train {((a @ w > 0) == ytr).mean():.2f} "
              f"test {((b @ w > 0) == yte).mean():.2f} ({len(yte)} test objects)")


if __name__ == "__main__":
    main()
