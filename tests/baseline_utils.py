"""Helpers shared by the baseline methods' tests: synthetic clips and batches, one-thread runs, the
overfitting check of the frame-pair detectors, and small engine runs (toy data, synthetic shards)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

H = W = 64  # size of two_object_clips' frames


def two_object_clips(n: int) -> list[tuple[torch.Tensor, list[dict]]]:
    """n two-frame clips: a red disc (class 0) and a green box (class 1) moving on a grey background.

    -> per clip (frames uint8 2 x 3 x H x W, per-frame targets with labels, masks 2 x H x W, instance ids)."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    out = []
    for k in range(n):
        frames = torch.full((2, 3, H, W), 40, dtype=torch.uint8)
        targets = []
        for t in range(2):
            masks = torch.zeros(2, H, W, dtype=torch.bool)
            masks[0] = (yy - (18 + 4 * t + 3 * k)) ** 2 + (xx - (17 + 2 * t)) ** 2 < 13 ** 2
            # box edges on multiples of 4: masks come at stride 4, so thin objects off the grid lose IoU
            masks[1, 28 + 4 * k:60, 28 + 4 * t:60 + 4 * t] = True
            for i, colour in enumerate([(230, 40, 40), (40, 230, 60)]):
                frames[t][:, masks[i]] = torch.tensor(colour, dtype=torch.uint8)[:, None]
            targets.append({"labels": torch.tensor([0, 1]), "masks": masks, "instance_ids": torch.tensor([1, 2])})
        out.append((frames, targets))
    return out


def clip_batch(*clips) -> dict:
    """(frames, targets) clips -> a training batch (frames B x T x 3 x H x W, targets, video ids 0..B-1)."""
    return {"frames": torch.stack([c[0] for c in clips]), "targets": [c[1] for c in clips],
            "video_ids": list(range(len(clips)))}


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one torch thread, then restore the thread count.

    Tiny convs and small steps on the shared, oversubscribed 2-core machine run several times faster on
    one thread than on two fighting for busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def assert_overfits_two_clips(build: Callable[[int], nn.Module], lr: float, steps: int, ctr_drop: float) -> None:
    """Train ``build(2)`` (seed 0, AdamW at ``lr``, ``steps`` steps) on both clips of
    ``two_object_clips(2)`` at once, then check that it has learnt them: the losses other than centerness
    fall below a tenth, centerness falls by ``ctr_drop``, and each object is one track over both frames
    with mask IoU > 0.8."""
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # denormal weights make CPU convs crawl (returns support, not the old value)
    try:
        with single_thread():
            clips = two_object_clips(2)
            batch = clip_batch(*clips)
            model = build(2)
            opt = torch.optim.AdamW(model.parameters(), lr=lr)
            history = []
            for _ in range(steps):
                losses = model(batch)
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()
                history.append({k: float(v.detach()) for k, v in losses.items()})
            # centerness BCE has soft targets, so its floor is their entropy, not 0: judged separately
            rest = [sum(v for k, v in h.items() if k != "loss_ctr") for h in history]
            assert rest[-1] < 0.1 * rest[0], (rest[0], rest[-1])
            assert history[-1]["loss_ctr"] < history[0]["loss_ctr"] - ctr_drop
            model.eval()
            for frames, targets in clips:
                tracks = model.predict_video(frames)
                for label in (0, 1):
                    best = max((t for t in tracks if t.label == label), key=lambda t: t.score)
                    assert sorted(best.masks) == [0, 1]  # one track over both frames
                    for t in range(2):
                        gt, pred = targets[t]["masks"][label], best.masks[t]
                        assert pred.shape == (H, W)
                        iou = float((gt & pred).sum() / (gt | pred).sum())
                        assert iou > 0.8, (label, t, iou)
    finally:
        torch.set_flush_denormal(False)


def train_and_eval_on_toy(tmp_path: Path, experiment: str) -> tuple[dict, dict]:
    """``avis train experiment=EXPERIMENT data=toy`` for 4 steps, then ``avis eval`` of its last checkpoint
    on the CPU. -> (the last metrics.jsonl record of training, the eval's metrics)."""
    from avis import cli
    from tests.conftest import TOY

    run = tmp_path / "run"
    assert cli.main(["train", f"experiment={experiment}", "data=toy", TOY, f"hydra.run.dir={run}",
                     "trainer.max_steps=4", "trainer.log_every=2", "trainer.ckpt_every=4", "trainer.eval_every=0",
                     "trainer.progress=false", "trainer.tensorboard=false"]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    out = tmp_path / "eval"
    assert cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(out),
                     "--device", "cpu"]) == 0
    assert (out / "results.json").is_file()
    return last, json.loads((out / "metrics.json").read_text())["metrics"]


def build_synth_shards(root: Path, videos: int, frames: int) -> None:
    """``avis synth`` of ``videos`` 64 x 48 videos of ``frames`` frames (seed 1) into root/synth, then
    ``avis build`` of its train and val splits into root/train and root/val (shards of ~20 kB)."""
    from avis import cli

    assert cli.main(["synth", "--out", str(root / "synth"), "--videos", str(videos), "--frames", str(frames),
                     "--size", "64x48", "--seed", "1"]) == 0
    for split in ("train", "val"):
        assert cli.main(["build", "--videos", str(root / "synth"), "--annotations",
                         str(root / "synth" / f"{split}.json"), "--out", str(root / split),
                         "--shard-size", "20000"]) == 0
