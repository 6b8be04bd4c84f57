"""EfficientVIS: factorised attention, TDC weights, tracklet matching with empty frames, clip-to-clip
assignment reuse, and the tiny preset overfitting two synthetic clips."""

from __future__ import annotations

import warnings

import pytest
import torch

from avis.models.efficientvis import efficientvis_tiny
from avis.models.efficientvis import model as model_mod
from avis.models.efficientvis.criterion import TrackletMatcher, Tracklets, build_tracklets
from avis.models.efficientvis.stage import FactorisedSelfAttention, TemporalDynamicConv
from tests.baseline_utils import build_synth_shards

warnings.filterwarnings("ignore", message="backbone .*random initialisation")


def _changed(a, b):
    return (a - b).abs().amax(-1) > 1e-6  # B x N x T


def test_factorised_attention_time_within_query_then_queries_within_frame():
    torch.manual_seed(0)
    attn = FactorisedSelfAttention(16, nhead=2).eval()
    q = torch.randn(1, 4, 5, 16)
    p = q.clone()
    p[0, 1, 2] += 1.0  # query 1 at frame 2
    ct = _changed(attn.temporal(q), attn.temporal(p))[0]
    assert ct[1].all() and not ct[[0, 2, 3]].any()  # the whole row of query 1, nothing else
    cs = _changed(attn.spatial(q), attn.spatial(p))[0]
    assert cs[:, 2].all() and not cs[:, [0, 1, 3, 4]].any()  # the whole column of frame 2, nothing else
    # The composition is temporal first, then spatial.
    torch.testing.assert_close(attn(q), attn.spatial(attn.temporal(q)))
    assert not torch.allclose(attn(q), attn.temporal(attn.spatial(q)))


def test_tdc_weights_sum_to_one_over_three_frames():
    torch.manual_seed(0)
    tdc = TemporalDynamicConv(8, dynamic_dim=4, pool_size=2)
    q, rois = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 4, 8)
    out = tdc(q, rois)
    assert out.shape == (2, 3, 5, 8)
    a = tdc.last_weights  # B N T 3 S²
    torch.testing.assert_close(a.sum(3), torch.ones(2, 3, 5, 4))
    assert (a[:, :, 0, 0] == 0).all() and (a[:, :, -1, 2] == 0).all()  # no frame before 0 / after T-1
    assert (a[:, :, 1:-1] > 0).all()
    # Frame t's output only depends on RoIs of t-1, t, t+1.
    r2 = rois.clone()
    r2[:, :, 4] += 1
    changed = (tdc(q, r2) - out).abs().amax((0, 1, 3)) > 1e-6
    assert changed.tolist() == [False, False, False, True, True]


def _tracklet(valid, label=1):
    t = len(valid)
    masks = torch.zeros(1, t, 2, 2)
    boxes = torch.zeros(1, t, 4)
    for k, v in enumerate(valid):
        if v:
            masks[0, k, 0, 0] = 1
            boxes[0, k] = torch.tensor([0.25, 0.25, 0.5, 0.5])
    return Tracklets(torch.tensor([5]), torch.tensor([label]), masks, boxes, torch.tensor([valid]))


def test_tracklet_cost_counts_empty_frames():
    # Two queries, 3 frames, K = 2; the instance is in frames 0, 1 and absent in frame 2.
    tgt = _tracklet([True, True, False])
    big = 20.0
    logits = torch.full((2, 3, 3), -big)
    logits[:, :, 1] = big              # both queries say class 1 everywhere ...
    logits[1, 2] = torch.tensor([-big, -big, big])  # ... but query 1 says "empty" in frame 2
    masks = torch.full((2, 3, 2, 2), -big)
    masks[:, :2, 0, 0] = big           # both segment the object perfectly in frames 0 and 1
    boxes = torch.tensor([0.25, 0.25, 0.5, 0.5]).expand(2, 3, 4).clone()
    m = TrackletMatcher(cost_class=2, cost_l1=5, cost_giou=2, cost_mask=2)
    c = m.cost(logits, boxes, masks, tgt)
    # valid frames: -2*1 - 2*1 (GIoU) - 2*1 (IoU) + 0 (L1) = -6 each; the empty frame: -2*p(empty).
    torch.testing.assert_close(c, torch.tensor([[-12.0], [-14.0]]), atol=1e-4, rtol=0)
    rows, cols = m(logits, boxes, masks, tgt)
    assert rows.tolist() == [1] and cols.tolist() == [0]
    # Restricted to free queries, only those can be assigned.
    rows, _ = m(logits, boxes, masks, tgt, free=torch.tensor([True, False]))
    assert rows.tolist() == [0]


def test_build_tracklets_marks_empty_frames():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 4:8] = True
    f0 = {"labels": torch.tensor([1]), "masks": masks, "instance_ids": torch.tensor([3])}
    f1 = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8, dtype=torch.bool),
          "instance_ids": torch.zeros(0, dtype=torch.long)}
    tr = build_tracklets([f0, f1], (4, 4), "cpu")
    assert tr.ids.tolist() == [3] and tr.labels.tolist() == [1] and tr.valid.tolist() == [[True, False]]
    torch.testing.assert_close(tr.boxes[0, 0], torch.tensor([0.75, 0.25, 0.5, 0.5]))
    assert tr.masks[0, 0].sum() == 4 and tr.masks[0, 1].sum() == 0


def _square_clips(b=2, t=4, size=(32, 40)):
    """Two objects per video (classes 0 and 1), 16 px squares on the 4 px grid (the masks' stride), object 1
    moving; object 2 of video 0 appears only from frame 2 on (an instance new in clip 2)."""
    h, w = size
    frames = torch.zeros(b, t, 3, h, w, dtype=torch.uint8)
    frames[:, :, 1] = 40
    targets = []
    for v in range(b):
        clip = []
        for k in range(t):
            ms = torch.zeros(2, h, w, dtype=torch.bool)
            y = 4 * (k % 3)
            ms[0, y:y + 16, 4 * v:4 * v + 16] = True
            ms[1, 16:32, 24 - 4 * v:40 - 4 * v] = True
            keep = [0, 1] if (v or k >= 2) else [0]
            frames[v, k, 0][ms[0]] = 220
            if 1 in keep:
                frames[v, k, 2][ms[1]] = 200
            clip.append({"labels": torch.tensor([0, 1])[keep], "masks": ms[keep],
                         "instance_ids": torch.tensor([1, 2])[keep]})
        targets.append(clip)
    return {"frames": frames, "targets": targets}


def test_clip2_reuses_clip1_assignment(monkeypatch):
    torch.manual_seed(0)
    m = efficientvis_tiny(2, clip_length=2, num_queries=4)
    assert m.clip_length == 4 and m.clip_frames == 2
    batch = _square_clips()
    calls = []
    real = model_mod.TrackletMatcher.__call__

    def spy(self, logits, boxes, masks, tgt, free=None):
        calls.append((tgt.ids.tolist(), None if free is None else free.tolist()))
        return real(self, logits, boxes, masks, tgt, free)

    monkeypatch.setattr(model_mod.TrackletMatcher, "__call__", spy)
    losses = m(batch)
    first, second = m.last_assignments
    for v in range(2):
        a1 = dict(zip(first[v][1].tolist(), first[v][0].tolist()))  # instance id -> query
        a2 = dict(zip(second[v][1].tolist(), second[v][0].tolist()))
        for iid, q in a1.items():
            assert a2[iid] == q
    # Clip 2 re-matches only instance 2 of video 0 (absent from clip 1), among the queries left free.
    clip2_calls = calls[-1:]
    assert clip2_calls[0][0] == [2] and clip2_calls[0][1].count(False) == 1
    assert second[0][1].tolist().count(2) == 1 and a2  # instance 2 got a query in clip 2
    # Gradients of clip 2's loss reach the initial queries through clip 1's output queries.
    m.zero_grad()
    sum(v for k, v in losses.items() if "_c2" in k).backward()
    assert m.init_queries.weight.grad.abs().sum() > 0


def test_predict_video_carries_queries_over_clips():
    torch.manual_seed(0)
    m = efficientvis_tiny(2, clip_length=2, num_queries=3).eval()
    frames = _square_clips(b=1, t=5)["frames"][0]
    seen = []
    orig = m.run_clip

    def spy(fr, queries=None, all_stages=False):
        seen.append((fr.shape[1], None if queries is None else queries.clone()))
        return orig(fr, queries, all_stages)

    m.run_clip = spy
    tracks = m.predict_video(frames)
    assert [s[0] for s in seen] == [2, 2, 1] and seen[0][1] is None
    assert seen[1][1].shape == (1, 3, 32)
    for tr in tracks:
        assert all(0 <= t < 5 and mk.shape == (32, 40) and mk.dtype == torch.bool for t, mk in tr.masks.items())


@pytest.mark.slow
def test_tiny_overfits_two_clips():
    torch.manual_seed(0)
    m = efficientvis_tiny(2, clip_length=2, num_queries=4)
    batch = _square_clips()
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    first = None
    for _ in range(60):
        loss = sum(m(batch).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    m.eval()
    ious = []
    for v in range(2):
        tracks = m.predict_video(batch["frames"][v])
        for k, tgt in enumerate(batch["targets"][v]):
            for g, lab in zip(tgt["masks"], tgt["labels"].tolist()):
                best = max((float((tr.masks[k] & g).sum() / (tr.masks[k] | g).sum())
                            for tr in tracks if k in tr.masks and tr.label == lab), default=0.0)
                ious.append(best)
    print(f"loss {first:.2f} -> {loss.item():.2f}, mask IoU min {min(ious):.3f} mean {sum(ious) / len(ious):.3f}")
    assert min(ious) > 0.8, ious


@pytest.mark.slow
def test_efficientvis_tiny_trains_and_evaluates_through_the_engine(tmp_path):
    """`avis train experiment=efficientvis_tiny` on synthetic shards, then `avis eval` of its checkpoint."""
    import json

    from avis import cli as avis_cli

    root = tmp_path
    build_synth_shards(root, videos=4, frames=8)
    run = root / "run"
    assert avis_cli.main(["train", "experiment=efficientvis_tiny", f"data.train.pattern={root / 'train'}",
                          f"data.val_pattern={root / 'val'}", f"hydra.run.dir={run}", "trainer.max_steps=2",
                          "trainer.log_every=1", "trainer.ckpt_every=2", "trainer.eval_every=0",
                          "data.batch_size=1", "data.scales=[48]", "data.test_size=48", "model.num_queries=4",
                          "trainer.progress=false", "trainer.tensorboard=false"]) == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(r["loss"] > 0 for r in train)
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_bbox", "loss_giou", "loss_ce_c2"} <= set(train[0])
    out = root / "eval"
    assert avis_cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert "AP" in summary["metrics"] and summary["timing"]["frames"] > 0
