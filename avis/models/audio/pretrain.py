"""Pretraining the audio encoder's log-mel network on the training data's per-frame tags.

The RCF's own gradients reach the log-mel network only through the fusion transformer, the decoders and the
set loss, and early in training those gradients carry little about sound: a randomly initialised audio
network gives tokens the fusion learns to ignore, and then nothing pushes it to improve (docs/audio.md). This
stage gives it a direct signal first: from each frame's audio window, predict which categories are present in
that frame and, where the annotations say, which are sounding (:mod:`avis.models.audio.supervision`). It is
the role AudioSet-pretrained VGGish plays in the paper, learned from the annotations every YouTube-VIS-style
dataset has.

:func:`collect_examples` turns a :class:`avis.data.video.VideoSource` into log-mel examples and targets
(at most ``max_windows``, a uniform sample of all frames with sound); :func:`pretrain_network` trains the
network with a temporary linear head (multi-label BCE). The engine runs both before RCF training
(:func:`avis.engine.audio_pretrain.run_audio_pretraining`, configured by ``audio.pretrain``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from avis.data.video import audio_16k, category_index
from avis.models.audio.supervision import video_tags
from avis.models.audio.windows import SAMPLE_RATE, frame_windows


def collect_examples(source, frontend, eta: float, max_windows: int = 10000, seed: int = 0,
                     progress=None) -> dict:
    """Log-mel examples of every frame with sound of ``source`` (units in order) and their targets ->
    ``{"examples" N x 96 x 64, "presence" N x K, "sounding" N x K, "known" N (bool), "videos", "frames"}``
    (``frames``: frames with sound seen; above ``max_windows`` a uniform random sample of them is kept,
    seeded by ``seed``). Lazy videos decode only their sound."""
    index = category_index(source.categories)
    rng = np.random.default_rng(seed)
    xs: list[torch.Tensor] = []
    ps: list[torch.Tensor] = []
    ss: list[torch.Tensor] = []
    ks: list[bool] = []
    seen = videos = 0
    for unit in source.units():
        for video in source.videos(unit):
            if progress is not None:
                progress.update(1)
            decoded = video.select([]) if video.loader is not None else video  # only the sound
            wave, has = audio_16k(decoded)
            if not has or video.num_frames == 0:
                continue
            videos += 1
            presence, sounding, known = video_tags(video, index)
            with torch.no_grad():
                ex = frontend.examples(frame_windows(wave, np.asarray(video.frame_times), SAMPLE_RATE, eta))
            for t in range(video.num_frames):  # reservoir sampling: a uniform sample of all frames seen
                if seen < max_windows:
                    slot = len(xs)
                    xs.append(None)
                    ps.append(None)
                    ss.append(None)
                    ks.append(False)
                else:
                    slot = int(rng.integers(seen + 1))
                seen += 1
                if slot < max_windows:
                    xs[slot], ps[slot] = ex[t], torch.from_numpy(presence[t])
                    ss[slot], ks[slot] = torch.from_numpy(sounding[t]), known
    k = len(index)
    if not xs:
        return {"examples": torch.zeros(0, 96, 64), "presence": torch.zeros(0, k), "sounding": torch.zeros(0, k),
                "known": torch.zeros(0, dtype=torch.bool), "videos": videos, "frames": seen}
    return {"examples": torch.stack(xs), "presence": torch.stack(ps), "sounding": torch.stack(ss),
            "known": torch.tensor(ks), "videos": videos, "frames": seen}


def pretrain_network(net: torch.nn.Module, feature_dim: int, data: dict, steps: int, batch_size: int = 64,
                     lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0, device="cpu",
                     progress: bool = False) -> dict:
    """Train ``net`` (log-mel examples N x 96 x 64 -> N x ``feature_dim``, ``forward_features``) and a
    temporary linear head on ``data`` (:func:`collect_examples`): BCE on presence, plus BCE on sounding for
    the examples whose ``known`` is true. The global random generators are left as they were (the RCF's
    training after this stage draws the same numbers with or without it). Returns ``{"loss" (mean of the last
    50 steps), "accuracy" / "baseline" (per category and window on up to 4096 training windows: the network's
    presence predictions and always predicting the majority label)}``."""
    from tqdm import tqdm

    presence, sounding, known = data["presence"], data["sounding"], data["known"].float()
    n, k = presence.shape
    if n == 0:
        raise ValueError("no training window with sound to pretrain the audio network on")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(int(feature_dim), 2 * k).to(device)
    gen = torch.Generator().manual_seed(seed)
    net.requires_grad_(True)
    net.train()
    opt = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    for _ in tqdm(range(steps), desc="pretrain audio", unit="step", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        logits = head(net.forward_features(data["examples"][idx].to(device)))
        p, s = presence[idx].to(device), sounding[idx].to(device)
        kn = known[idx].to(device)[:, None].expand_as(s)
        loss = F.binary_cross_entropy_with_logits(logits[:, :k], p)
        if kn.sum() > 0:
            loss = loss + (F.binary_cross_entropy_with_logits(logits[:, k:], s, reduction="none") * kn).sum() / kn.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    with torch.no_grad():
        m = min(n, 4096)
        pred = torch.cat([head(net.forward_features(c.to(device)))[:, :k].cpu() > 0
                          for c in data["examples"][:m].split(256)])
        truth = presence[:m] > 0.5
        accuracy = float((pred == truth).float().mean())
        majority = truth.float().mean(0) > 0.5
        baseline = float((majority[None].expand_as(truth) == truth).float().mean())
    return {"loss": float(np.mean(losses[-50:])) if losses else float("nan"), "accuracy": accuracy,
            "baseline": baseline}
