"""STMask baseline: anchors and box coding, FCB offsets, correlation, temporal fusion, association, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from avis.models.stmask import STMask, TemporalFusion, correlation, decode, encode, make_anchors, stmask_tiny
from avis.models.stmask.association import NEW, STTrack, assign, match_scores, update_tracks
from avis.models.stmask.head import Predictor
from tests.baseline_utils import (
    H,
    W,
    assert_overfits_two_clips,
    clip_batch,
    train_and_eval_on_toy,
    two_object_clips,
)


# -- anchors and box coding -----------------------------------------------------------------------------
def test_anchor_layout_shapes_and_order():
    anchors = make_anchors([(2, 3), (1, 1)], (8, 16), scales=(24, 48))
    assert anchors.shape == ((6 + 1) * 3, 4)
    # level 0, row 1, column 2, second predictor (3x5: wide, w/h = 5/3)
    a = anchors[(1 * 3 + 2) * 3 + 1]
    cx, cy, w, h = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2, a[2] - a[0], a[3] - a[1]
    assert torch.allclose(torch.stack([cx, cy]), torch.tensor([20.0, 12.0]))
    assert math.isclose(float(w / h), 5 / 3, rel_tol=1e-5) and math.isclose(float(w * h), 24 ** 2, rel_tol=1e-5)
    tall = anchors[(1 * 3 + 2) * 3 + 2]
    assert math.isclose(float((tall[2] - tall[0]) / (tall[3] - tall[1])), 3 / 5, rel_tol=1e-5)
    last = anchors[-3]  # level 1, its only location, square anchor of scale 48
    assert torch.allclose(last, torch.tensor([-16.0, -16.0, 32.0, 32.0]))


def test_box_encoding_round_trip_and_variances():
    torch.manual_seed(0)
    anchors = make_anchors([(3, 4)], (8,))
    xy = torch.rand(len(anchors), 2) * 30
    boxes = torch.cat([xy, xy + 2 + torch.rand(len(anchors), 2) * 40], 1)
    assert torch.allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-4)
    a = anchors[:1]
    w = a[0, 2] - a[0, 0]
    shifted = a + torch.tensor([0.1 * w, 0, 0.1 * w, 0])  # centre moved by 0.1 w: delta x = 1 (variance 0.1)
    assert torch.allclose(encode(shifted, a), torch.tensor([[1.0, 0, 0, 0]]), atol=1e-5)
    doubled = a + torch.stack([-w / 2, w * 0, w / 2, w * 0])  # width x2 about the same centre: log(2) / 0.2
    assert torch.allclose(encode(doubled, a), torch.tensor([[0, 0, math.log(2) / 0.2, 0]]), atol=1e-5)


# -- FCB ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [(3, 3), (3, 5), (5, 3)])
def test_fcb_zero_offsets_reproduce_plain_convolution(kernel):
    torch.manual_seed(0)
    pred = Predictor(8, 3, 4, 6, kernel, fcb=True, fcb_mask=True)
    assert not pred.offset.weight.any() and not pred.offset.bias.any()
    x = torch.randn(2, 8, 6, 7)
    out = pred(x)
    pad = (kernel[0] // 2, kernel[1] // 2)
    plain = F.conv2d(x, pred.cls.weight, pred.cls.bias, padding=pad).permute(0, 2, 3, 1)
    assert torch.allclose(out["cls"], plain, atol=1e-5)
    coef = torch.tanh(F.conv2d(x, pred.coef.weight, pred.coef.bias, padding=pad)).permute(0, 2, 3, 1)
    assert torch.allclose(out["coef"], coef, atol=1e-5)
    assert out["box"].shape == (2, 6, 7, 4) and out["cls"].shape == (2, 6, 7, 4) and out["emb"].shape == (2, 6, 7, 6)
    # a learned offset of +1 column on every tap (bias of the offset conv) samples x shifted by one column
    with torch.no_grad():
        pred.offset.bias.view(-1, 2)[:, 1] = 1.0
    shifted = F.pad(x, (pad[1] - 1, pad[1] + 1, pad[0], pad[0]))  # every window one column to the right
    moved = F.conv2d(shifted, pred.cls.weight, pred.cls.bias).permute(0, 2, 3, 1)
    assert torch.allclose(pred(x)["cls"], moved, atol=1e-5)
    assert not torch.allclose(moved, plain, atol=1e-3)


# -- temporal fusion ------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch", [3, 11])
def test_correlation_matches_a_direct_loop(patch):
    torch.manual_seed(0)
    f1, f2 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    out = correlation(f1, f2, patch)
    assert out.shape == (2, patch * patch, 4, 5)
    r = patch // 2
    ref = torch.zeros_like(out)
    for n in range(2):
        for y in range(4):
            for x in range(5):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        if 0 <= y + dy < 4 and 0 <= x + dx < 5:
                            ref[n, (dy + r) * patch + dx + r, y, x] = (f1[n, :, y, x] * f2[n, :, y + dy, x + dx]).mean()
    assert torch.allclose(out, ref, atol=1e-6)


def test_temporal_fusion_shifts_a_known_box():
    torch.manual_seed(0)
    tf = TemporalFusion(4, num_protos=3, patch=3, channels=(8,), stride=16)
    p4a, p4b = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    boxes = torch.tensor([[8.0, 16.0, 40.0, 32.0], [0.0, 0.0, 20.0, 60.0]])
    coefs = torch.randn(2, 3)
    same_boxes, same_coefs = tf.propagate(p4a, p4b, [boxes], coefs)  # zero-initialised heads: identity
    assert torch.allclose(same_boxes, boxes, atol=1e-5) and torch.allclose(same_coefs, coefs)
    with torch.no_grad():  # the shift head says: move right by 0.1 w (delta 1), double the height, add 0.5
        tf.box_fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0, math.log(2) / 0.2]))
        tf.coef_fc.bias.fill_(0.5)
    moved, shifted = tf.propagate(p4a, p4b, [boxes], coefs)
    expected = torch.tensor([[11.2, 8.0, 43.2, 40.0], [2.0, -30.0, 22.0, 90.0]])
    assert torch.allclose(moved, expected, atol=1e-4)
    assert torch.allclose(shifted, coefs + 0.5)
    # with a learned weight the shift depends on the features at the t-1 box (RoIAlign of [corr, P4, P4])
    with torch.no_grad():
        tf.box_fc.weight.normal_()
    moved2, _ = tf.propagate(p4a, p4b, [boxes], coefs)
    moved3, _ = tf.propagate(p4a, p4b * 2, [boxes], coefs)
    assert not torch.allclose(moved2, moved3)


# -- association ----------------------------------------------------------------------------------------
def _mask(x0, y0, x1, y1, size=20):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_match_score_formula():
    emb = torch.tensor([[1.0, 0.0]])
    t_emb = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    t_boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]])
    masks = _mask(0, 0, 10, 10)[None]
    t_masks = torch.stack([_mask(0, 0, 10, 5), _mask(0, 0, 10, 10)])
    s = match_scores(emb, boxes, masks, t_emb, t_boxes, t_masks)
    assert torch.allclose(s, torch.tensor([[0.5 + 0.5 + 2 * 0.5, 1 + 1 + 2]]))


def test_assign_new_track_threshold_and_one_to_one():
    # detection 0 (score 0.9) takes track 0; detection 1 then has only track 1 at exactly 1.4 -> new track;
    # detection 2 at 1.41 joins track 1
    scores = torch.tensor([[3.0, 0.0], [3.5, 1.4], [0.0, 1.41]])
    assert assign(scores, torch.tensor([0.9, 0.8, 0.7])) == [0, NEW, 1]
    assert assign(scores[1:2], torch.tensor([0.8])) == [0]
    assert assign(torch.tensor([[1.4]]), torch.tensor([0.5])) == [NEW]
    # exactly at the threshold (1.5 is exact in float32, 1.4 is not): "best s <= threshold" starts a new track
    assert assign(torch.tensor([[1.5]]), torch.tensor([0.5]), threshold=1.5) == [NEW]
    assert assign(torch.tensor([[1.5001]]), torch.tensor([0.5]), threshold=1.5) == [0]


def test_tracks_kept_ten_frames_with_decayed_score():
    emb = torch.tensor([[1.0, 0.0]])
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    mask = _mask(0, 0, 10, 10)[None]
    det = {"boxes": box, "scores": torch.tensor([0.8]), "labels": torch.tensor([1]), "emb": emb,
           "coef": torch.zeros(1, 3), "masks": mask}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
             "emb": torch.zeros(0, 2), "coef": torch.zeros(0, 3), "masks": torch.zeros(0, 20, 20, dtype=torch.bool)}
    tracks: list[STTrack] = []
    ended: list[STTrack] = []
    update_tracks(tracks, ended, 0, det, None, None, None)
    assert len(tracks) == 1
    prop_box, prop_mask = torch.tensor([[1.0, 0.0, 11.0, 10.0]]), _mask(1, 0, 11, 10)[None]
    for f in range(1, 11):  # ten frames unmatched: kept, propagated, score x 0.95 per frame
        update_tracks(tracks, ended, f, empty, prop_box, torch.ones(1, 3), prop_mask)
        assert len(tracks) == 1 and not ended
        assert math.isclose(tracks[0].score, 0.8 * 0.95 ** f, rel_tol=1e-6)
        assert torch.equal(tracks[0].masks[f], prop_mask[0]) and torch.equal(tracks[0].box, prop_box[0])
    update_tracks(tracks, ended, 11, empty, prop_box, torch.ones(1, 3), prop_mask)  # the 11th: ended
    assert not tracks and len(ended) == 1 and sorted(ended[0].masks) == list(range(11))
    # a track that is matched again after 10 missed frames continues (memory resets)
    tracks, ended = [], []
    update_tracks(tracks, ended, 0, det, None, None, None)
    for f in range(1, 11):
        update_tracks(tracks, ended, f, empty, box, torch.zeros(1, 3), mask)
    pairs = update_tracks(tracks, ended, 11, det, box, torch.zeros(1, 3), mask)
    assert pairs == [0] and tracks[0].missed == 0 and tracks[0].score == pytest.approx(0.8)


def test_anchor_matching_thresholds_and_forced_best_anchor():
    model = stmask_tiny(2)
    anchors = make_anchors([(4, 4)], (8,), scales=(24,))
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], anchors[5 * 3].tolist()])  # a tiny box; an anchor itself
    gt, state = model.match(anchors, boxes)
    iou = box_iou(boxes, anchors)
    tiny_best = int(iou[0].argmax())
    assert state[tiny_best] == 1 and gt[tiny_best] == 0  # below 0.5, still positive: its best anchor
    assert state[5 * 3] == 1 and gt[5 * 3] == 1
    best = iou.max(0).values
    others = torch.ones(len(anchors), dtype=torch.bool)
    others[[tiny_best, 5 * 3]] = False
    assert torch.equal(state[others & (best >= 0.5)], torch.ones_like(state[others & (best >= 0.5)]))
    assert (state[others & (best < 0.4)] == 0).all() and (state[others & (best >= 0.4) & (best < 0.5)] == -1).all()
    assert ((best >= 0.4) & (best < 0.5) & others).any()  # the ignored band is exercised
    _, none = model.match(anchors, torch.zeros(0, 4))
    assert (none == 0).all()


# -- the model ------------------------------------------------------------------------------------------
def test_losses_gradients_and_empty_frames():
    torch.manual_seed(0)
    model = stmask_tiny(2)
    clips = two_object_clips(1)
    frames, targets = clips[0]
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, H, W, dtype=torch.bool),
              "instance_ids": torch.zeros(0, dtype=torch.long)}, targets[1]]
    losses = model(clip_batch(clips[0], (frames, empty)))
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr", "loss_mask", "loss_track", "loss_t_box", "loss_t_mask"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())

    # a batch without any object still yields every loss, finite, with every parameter in the graph
    model.zero_grad()
    losses = model(clip_batch((frames, [empty[0], empty[0]])))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tracking_loss_targets_by_hand():
    """Pair-wise BCE between the positives of the two frames: p = (cos + 1) / 2, target 1 for the same
    instance id, 0 otherwise, averaged over the pairs."""
    model = stmask_tiny(2)
    emb = torch.zeros(2, 4, 2)
    emb[0, 0], emb[0, 1] = torch.tensor([1.0, 0]), torch.tensor([0.0, 1])  # frame t-1: ids 5, 6
    emb[1, 2], emb[1, 3] = torch.tensor([1.0, 0]), torch.tensor([0.6, 0.8])  # frame t: ids 5, 7
    targets = [{"ids": torch.tensor([5, 6])}, {"ids": torch.tensor([5, 7])}]
    loss = model._track_loss(emb, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 1]),
                             targets)
    # p = [[1, 0.8], [0.5, 0.9]] (5-5, 5-7; 6-5, 6-7), targets [[1, 0], [0, 0]]
    expected = -(math.log(1 - 1e-6) + math.log(1 - 0.8) + math.log(1 - 0.5) + math.log(1 - 0.9)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_temporal_fusion_loss_targets_by_hand():
    """Temporal fusion, trained at the gt box of t-1 of an instance present at t: box target = SSD deltas of its
    box at t relative to the box at t-1 (smooth L1); mask target = its mask at t, from the mean t-1
    coefficients of its positives (+ the predicted shift), BCE inside the box at t."""
    torch.manual_seed(0)
    model = stmask_tiny(2)  # zero-initialised fusion heads: predicted deltas and shifts are 0
    b0, b1 = torch.tensor([10.0, 10, 30, 30]), torch.tensor([14.0, 10, 34, 30])
    m0, m1 = torch.zeros(16, 16, dtype=torch.bool), torch.zeros(16, 16, dtype=torch.bool)
    m0[2:8, 2:8], m1[3:8, 4:9] = True, True
    targets = [{"boxes": b0[None], "ids": torch.tensor([5]), "masks4": m0[None]},
               {"boxes": b1[None], "ids": torch.tensor([5]), "masks4": m1[None]}]
    protos = torch.randn(2, 16, 16, 16)
    coef = torch.randn(2, 6, 16)
    p_img, p_anc, p_gt = torch.tensor([0, 0, 1]), torch.tensor([1, 4, 2]), torch.tensor([0, 0, 0])
    t_box, t_mask = model._temporal_loss(torch.randn(2, 32, 4, 4), protos, coef, p_img, p_anc, p_gt, targets)
    # cxcywh (20, 20, 20, 20) -> (24, 20, 20, 20): deltas ((24 - 20) / (0.1 * 20), 0, 0, 0) = (2, 0, 0, 0)
    assert t_box.item() == pytest.approx((2 - 0.5) / 4)  # smooth L1 (beta 1) of 2, mean over 4
    logits = torch.einsum("khw,k->hw", protos[1], coef[0, [1, 4]].mean(0))  # frame t's prototypes
    centres = torch.arange(16) * 4 + 2.0
    crop = ((centres[:, None] >= 10) & (centres[:, None] < 30) & (centres[None] >= 14) & (centres[None] < 34))
    bce = F.binary_cross_entropy_with_logits(logits, m1.float(), reduction="none")
    assert t_mask.item() == pytest.approx(float((bce * crop).sum() / crop.sum()), rel=1e-5)


@pytest.mark.slow
def test_tiny_preset_overfits_two_clips():
    assert_overfits_two_clips(stmask_tiny, lr=3e-3, steps=STEPS, ctr_drop=0.5)


STEPS = 100


# -- configs: the engine builds the method from them alone ------------------------------------------------
def test_configs_build_stmask():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from avis.engine.config import compose

    model = instantiate(compose(["experiment=stmask_tiny", "data.num_classes=3"]).model)
    assert isinstance(model, STMask) and model.num_classes == 3 and model.clip_length == 2
    assert model.new_track_threshold == 1.4 and model.track_memory == 10 and model.track_decay == 0.95
    assert model.loss_weights["ctr"] == 20.0 and model.head.predictors[0].fcb
    full = OmegaConf.to_container(compose(["experiment=stmask"]), resolve=False)
    assert full["model"]["_target_"] == "avis.models.stmask.stmask_r50"
    assert full["model"]["temporal_channels"] == [512, 512, 1024] and full["model"]["num_protos"] == 32
    assert full["optim"]["optimizer"]["_target_"] == "torch.optim.SGD" and full["audio"]["enabled"] is False
    assert full["data"]["batch_size"] == 16 and full["trainer"]["max_steps"] == 160000


@pytest.mark.slow
def test_engine_trains_and_evaluates_stmask_tiny(tmp_path):
    last, metrics = train_and_eval_on_toy(tmp_path, "stmask_tiny")
    assert {"loss_cls", "loss_mask", "loss_track", "loss_t_box", "loss_t_mask"} <= set(last)
    assert "AP" in metrics


def test_online_step_propagates_an_unmatched_track():
    """Frame 0: one detection; frame 1: none. The track continues on the temporal fusion's propagated box and
    coefficients (identity at init, then a set shift) decoded with frame 1's prototypes, its score x 0.95."""
    torch.manual_seed(0)
    model = stmask_tiny(2).eval()
    frames = torch.randint(0, 255, (2, 3, H, W), dtype=torch.uint8)
    real_detect = model.detect
    box, coef = torch.tensor([[8.0, 8.0, 40.0, 44.0]]), torch.linspace(-1, 1, 16)[None]
    protos_seen = []

    def detect(frame):
        det, p4, protos = real_detect(frame)
        protos_seen.append(protos)
        n = 1 if len(protos_seen) == 1 else 0
        det = {"boxes": box[:n], "scores": torch.tensor([0.9])[:n], "labels": torch.tensor([1])[:n],
               "emb": F.normalize(torch.ones(n, 32), dim=1), "coef": coef[:n],
               "masks": model.masks_at(protos, coef[:n], box[:n], H, W)}
        return det, p4, protos

    model.detect = detect
    tracks = model.predict_video(frames)
    assert len(tracks) == 1 and sorted(tracks[0].masks) == [0, 1] and tracks[0].label == 1
    assert tracks[0].score == pytest.approx((0.9 + 0.9 * 0.95) / 2)
    expected = model.masks_at(protos_seen[1], coef, box, H, W)[0]
    assert expected.any() and torch.equal(tracks[0].masks[1], expected)
    # a shift head that moves boxes right by 0.1 w (delta 1) and adds 0.25 to the coefficients
    with torch.no_grad():
        model.temporal.box_fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        model.temporal.coef_fc.bias.fill_(0.25)
    protos_seen.clear()
    tracks = model.predict_video(frames)
    moved = box + torch.tensor([3.2, 0.0, 3.2, 0.0])
    expected = model.masks_at(protos_seen[1], coef + 0.25, moved, H, W)[0]
    assert torch.equal(tracks[0].masks[1], expected)
    assert not torch.equal(expected, model.masks_at(protos_seen[1], coef, box, H, W)[0])
