"""CrossVIS baseline: crossover pairing/coordinates, embedding loss, association rule, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avis.models.crossvis import (
    CrossVIS,
    GlobalEmbeddingLoss,
    IdentityMap,
    assign,
    condinst_vis_tiny,
    crossvis_tiny,
    match_scores,
    update_tracks,
)
from avis.models.crossvis.association import DROPPED, NEW
from avis.models.crossvis.targets import fcos_targets, level_locations
from tests.baseline_utils import (
    assert_overfits_two_clips,
    clip_batch,
    numbered_video,
    train_and_eval_on_toy,
    two_object_clips,
)


def _reference_dynamic_head(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """10 x h x w, 169 params (weights 80, 64, 8 then biases 8, 8, 1) -> h x w logits, written out per layer."""
    w1, w2, w3 = p[:80].reshape(8, 10), p[80:144].reshape(8, 8), p[144:152].reshape(1, 8)
    b1, b2, b3 = p[152:160], p[160:168], p[168:169]
    h = torch.relu(torch.einsum("oc,chw->ohw", w1, x) + b1[:, None, None])
    h = torch.relu(torch.einsum("oc,chw->ohw", w2, h) + b2[:, None, None])
    return (torch.einsum("oc,chw->ohw", w3, h) + b3[:, None, None])[0]


def test_crossover_uses_other_frames_features_and_coordinates():
    torch.manual_seed(0)
    model = crossvis_tiny(2)
    h = w = 4  # mask features of a 32 x 32 image at stride 8
    mask_feats = torch.stack([torch.full((8, h, w), 1.0), torch.randn(8, h, w)])  # image 0 = ref, 1 = target
    locations = torch.zeros(20, 2)
    soi = torch.full((20,), 64.0)
    locations[5], soi[5] = torch.tensor([4.0, 28.0]), 64.0  # instance id 10 in image 0
    locations[9], soi[9] = torch.tensor([20.0, 12.0]), 128.0  # instance id 10 in image 1
    locations[7] = torch.tensor([12.0, 12.0])  # instance id 20, only in image 1
    pos_img, pos_loc, pos_gt = torch.tensor([0, 1, 1]), torch.tensor([5, 7, 9]), torch.tensor([0, 0, 1])
    masks4 = [torch.rand(1, 8, 8) > 0.5, torch.rand(2, 8, 8) > 0.5]
    targets = [{"ids": torch.tensor([10]), "masks4": masks4[0]}, {"ids": torch.tensor([20, 10]), "masks4": masks4[1]}]
    s_params = torch.randn(3, 169)  # filters of the three positives, in pos order

    seen = {}
    hook = model.dynamic_head.register_forward_hook(lambda m, args, out: seen.update(x=args[0], p=args[1], out=out))
    loss = model.crossover_loss(mask_feats, s_params, pos_img, pos_gt, pos_img, pos_loc, pos_gt, targets,
                                locations, soi)
    hook.remove()

    # the instance 20 has no partner; id 10 of image 0 pairs with image 1's location 9, and vice versa
    x, p = seen["x"], seen["p"]
    assert x.shape == (2, 10, h, w)
    assert torch.equal(p, s_params[[0, 2]])
    assert torch.equal(x[0, :8], mask_feats[1]) and torch.equal(x[1, :8], mask_feats[0])
    centres = torch.arange(4.0) * 8 + 4
    torch.testing.assert_close(x[0, 8], ((20 - centres) / 128)[None, :].expand(h, w))
    torch.testing.assert_close(x[0, 9], ((12 - centres) / 128)[:, None].expand(h, w))
    torch.testing.assert_close(x[1, 8], ((4 - centres) / 64)[None, :].expand(h, w))
    torch.testing.assert_close(x[1, 9], ((28 - centres) / 64)[:, None].expand(h, w))

    # output of the dynamic head and the dice loss against the other frame's mask of the same instance
    expected_logits = torch.stack([_reference_dynamic_head(x[i], p[i]) for i in range(2)])
    torch.testing.assert_close(seen["out"], expected_logits, rtol=1e-4, atol=1e-5)
    probs = F.interpolate(expected_logits[:, None], scale_factor=2, mode="bilinear")[:, 0].sigmoid().flatten(1)
    gts = torch.stack([masks4[1][1], masks4[0][0]]).flatten(1).float()
    dice = 1 - 2 * (probs * gts).sum(1) / ((probs ** 2).sum(1) + (gts ** 2).sum(1) + 1e-5)
    torch.testing.assert_close(loss, dice.mean(), rtol=1e-4, atol=1e-5)


def test_global_embedding_loss_scale_and_normalisation():
    n_ids, dim = 10, 4
    crit = GlobalEmbeddingLoss(dim, n_ids)
    assert crit.scale == pytest.approx(math.sqrt(2) * math.log(9))
    torch.manual_seed(1)
    with torch.no_grad():
        crit.proxies.weight.normal_()
        crit.proxies.bias.normal_()
    emb = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, -2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    ids = torch.tensor([2, 7, 2])
    # by hand: z = W (s e / |e|) + b, focal (alpha .25, gamma 2) per identity, summed, / number of positives
    z = (math.sqrt(2) * math.log(9) * emb / emb.norm(dim=1, keepdim=True)) @ crit.proxies.weight.T + crit.proxies.bias
    y = F.one_hot(ids, n_ids).float()
    prob = z.sigmoid()
    ce = -(y * prob.log() + (1 - y) * (1 - prob).log())
    p_t = prob * y + (1 - prob) * (1 - y)
    expected = (ce * (1 - p_t) ** 2 * (0.25 * y + 0.75 * (1 - y))).sum() / 3
    torch.testing.assert_close(crit(emb, ids), expected)
    # L2 normalisation: the embedding's length does not matter
    torch.testing.assert_close(crit(emb * torch.tensor([[0.1], [5.0], [30.0]]), ids), expected)
    # normalised by positives: repeating every positive leaves the loss unchanged
    torch.testing.assert_close(crit(emb.repeat(4, 1), ids.repeat(4)), expected)


def test_identity_map_first_seen_order_saved_and_overflow():
    ids = IdentityMap(3)
    assert [ids.index(7, 1), ids.index(7, 2), ids.index(9, 1), ids.index(7, 1)] == [0, 1, 2, 0]
    assert ids.index(11, 5) == (11 * 1000003 + 5) % 3 and ids.overflowed == 1
    model = crossvis_tiny(2, num_identities=3)
    model.identities.index(4, 4)
    model.identities.index(2, 1)
    fresh = crossvis_tiny(2, num_identities=3)
    fresh.load_state_dict(model.state_dict())
    assert fresh.identities.table == {(4, 4): 0, (2, 1): 1}


def test_identity_map_is_shared_across_ddp_ranks(monkeypatch):
    """Under DDP every rank adds all ranks' new identities, in rank order (the gather is simulated: this rank
    is rank 1 and rank 0 brings (0, 1) and (9, 9))."""
    from avis.models.crossvis import losses

    gathered_by_rank0 = [(0, 1), (9, 9)]
    monkeypatch.setattr(losses.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses.dist, "get_world_size", lambda: 2)

    def all_gather_object(out, obj):
        out[0], out[1] = gathered_by_rank0, obj

    monkeypatch.setattr(losses.dist, "all_gather_object", all_gather_object)
    ids = IdentityMap(10)
    assert ids.indices([(1, 1), (9, 9), (1, 1)]) == [2, 1, 2]
    assert ids.table == {(0, 1): 0, (9, 9): 1, (1, 1): 2}


def test_association_rule():
    e = torch.eye(4)
    trk_emb, trk_boxes, trk_labels = e[:2], torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 1])
    det_emb = torch.stack([e[0], e[3], e[1], 0.6 * e[0] + 0.8 * e[2]])
    det_boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [0, 0, 10, 10]])
    det_labels = torch.tensor([0, 1, 0, 0])
    s = match_scores(det_emb, det_boxes, det_labels, trk_emb, trk_boxes, trk_labels)
    expected = torch.tensor([[2.0, -1], [-1, 0.0], [0.0, -1], [1.6, -1]])  # det 2 looks like track 1, other class
    torch.testing.assert_close(s, expected)
    # det 0 and det 3 both claim track 0: the higher score wins, the other is dropped; the rest start tracks
    assert assign(s) == [0, NEW, NEW, DROPPED]
    assert assign(torch.tensor([[0.39], [0.41]])) == [NEW, 0]
    assert assign(torch.zeros(2, 0)) == [NEW, NEW]

    model = crossvis_tiny(2)
    state = model.init_state()
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    update_tracks(state["tracks"], 0, trk_emb, trk_boxes, trk_labels, torch.tensor([0.9, 0.8]), masks[:2])
    result = update_tracks(state["tracks"], 1, det_emb, det_boxes, det_labels, torch.tensor([0.5, 0.6, 0.7, 0.95]),
                           masks)
    assert result == [0, 2, 3, DROPPED]
    tracks = model.finish(state)
    assert [t.label for t in tracks] == [0, 1, 1, 0]
    assert [sorted(t.masks) for t in tracks] == [[0, 1], [0], [1], [1]]
    assert tracks[0].score == pytest.approx((0.9 + 0.5) / 2)  # video score = mean frame score
    assert tracks[1].score == pytest.approx(0.8)


def test_fcos_targets_size_ranges_and_smallest_box():
    locs, levels = level_locations([(8, 8), (4, 4)], (8, 16))
    boxes = torch.tensor([[0.0, 0, 40, 40], [0, 0, 100, 64], [8, 8, 24, 24]])
    cls, reg, gt = fcos_targets(locs, levels, boxes, torch.tensor([0, 1, 2]), 3, (64, 128), (8, 16),
                                center_radius=None)
    # location (12, 12) on P3: inside all three boxes; box 1 is too big for P3; box 2 is the smallest
    i = 1 * 8 + 1
    assert (int(cls[i]), int(gt[i])) == (2, 2) and reg[i].tolist() == [4, 4, 12, 12]
    # location (40, 8) on P4 (index 64 + 2): max distance 60 to box 1 -> (0, 64] is P3's range, not P4's
    assert int(gt[64 + 2]) == -1
    # location (88, 56) on P3 would need box 1 with max side distance 88 > 64 -> only P4 takes it
    j = 64 + 3 * 4 + 1  # P4 location (24, 56)
    assert int(gt[j]) == 1 and reg[j].tolist() == [24, 56, 76, 8]


def test_fcos_centre_sampling_radius():
    """With centre sampling (radius 1.5 strides) a location inside the box but far from its centre is
    background; without it, it is positive."""
    locs, levels = level_locations([(8, 8)], (8,))
    box, label = torch.tensor([[0.0, 0, 64, 64]]), torch.tensor([1])  # centre (32, 32): region [20, 44]^2 on P3
    near, far = 3 * 8 + 3, 1 * 8 + 1  # locations (28, 28) and (12, 12)
    _, _, gt = fcos_targets(locs, levels, box, label, 2, (64, 128), (8,), center_radius=1.5)
    assert int(gt[near]) == 0 and int(gt[far]) == -1
    assert int((gt == 0).sum()) == 4  # the 2 x 2 locations (28 and 36) strictly within 12 px of the centre
    _, _, gt = fcos_targets(locs, levels, box, label, 2, (64, 128), (8,), center_radius=None)
    assert int(gt[far]) == 0 and int((gt == 0).sum()) == 64


def test_condinst_vis_variant_losses():
    batch = clip_batch(*two_object_clips(1))
    torch.manual_seed(0)
    losses = condinst_vis_tiny(2)(batch)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr", "loss_mask", "loss_embed"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert set(crossvis_tiny(2)(batch)) == set(losses) | {"loss_cross"}
    assert isinstance(crossvis_tiny(2), CrossVIS) and crossvis_tiny(2).clip_length == 2


@pytest.mark.parametrize("build", [crossvis_tiny, condinst_vis_tiny])
def test_empty_and_one_sided_instances_keep_every_parameter_in_the_graph(build):
    """No objects at all, or an object in one frame only: finite losses and a gradient for every parameter
    (what DDP without find_unused_parameters needs); odd frame sizes are padded."""
    torch.manual_seed(0)
    model = build(3)
    h, w = 24, 37
    frames = torch.randint(0, 256, (2, 3, 3, h, w), dtype=torch.uint8)
    none = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, h, w, dtype=torch.bool),
            "instance_ids": torch.zeros(0, dtype=torch.long)}
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 2:10, 3:12] = True  # the second instance is empty in this frame
    some = {"labels": torch.tensor([1, 2]), "masks": masks, "instance_ids": torch.tensor([4, 5])}
    for targets in ([[none] * 3, [none] * 3], [[some, none, none], [none, none, some]]):
        losses = model({"frames": frames, "targets": targets, "video_ids": [0, 1]})
        assert all(torch.isfinite(v) for v in losses.values())
        model.zero_grad()
        sum(losses.values()).backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == []
    if build is condinst_vis_tiny:
        return
    model.eval()
    assert model.predict_video(frames[0, :1]) == []  # random init: nothing above 0.05
    model.score_threshold = 0.0
    tracks = model.predict_video(frames[0, :1])
    assert len(tracks) == 100  # top 100 after NMS, each a new track
    assert all(m.shape == (h, w) and m.dtype == torch.bool for t in tracks for m in t.masks.values())


# -- overfitting ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_preset_overfits_two_clips():
    assert_overfits_two_clips(crossvis_tiny, lr=2e-3, steps=250, ctr_drop=0.05)


# -- configs: the engine builds the method from them alone ------------------------------------------------
def test_configs_build_crossvis_and_condinst_vis():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from avis.engine.config import compose

    for experiment, crossover, embedding in [("crossvis_tiny", True, "global"), ("condinst_vis_tiny", False, "pairwise")]:
        model = instantiate(compose([f"experiment={experiment}", "data.num_classes=3"]).model)
        assert isinstance(model, CrossVIS) and model.num_classes == 3
        assert (model.crossover, model.embedding, model.clip_length) == (crossover, embedding, 2)
    cross = OmegaConf.to_container(compose(["experiment=crossvis"]), resolve=False)
    cond = OmegaConf.to_container(compose(["experiment=condinst_vis"]), resolve=False)
    assert cross["model"]["_target_"] == "avis.models.crossvis.crossvis_r50"
    assert (cross["model"]["crossover"], cross["model"]["embedding"]) == (True, "global")
    assert (cond["model"]["crossover"], cond["model"]["embedding"]) == (False, "pairwise")
    opt = cross["optim"]
    assert opt["optimizer"]["_target_"] == "torch.optim.SGD" and opt["optimizer"]["lr"] == 0.005
    assert opt["clip_grad_norm"] is None and cross["data"]["scales"] == [360] and cross["audio"]["enabled"] is False
    # the ablation differs from CrossVIS only in the model's two flags
    assert {k: v for k, v in cond.items() if k != "model"} == {k: v for k, v in cross.items() if k != "model"}
    assert {k: v for k, v in cond["model"].items() if k not in ("crossover", "embedding")} == \
        {k: v for k, v in cross["model"].items() if k not in ("crossover", "embedding")}


@pytest.mark.slow
def test_engine_trains_and_evaluates_crossvis_tiny(tmp_path):
    last, metrics = train_and_eval_on_toy(tmp_path, "crossvis_tiny")
    assert {"loss_cls", "loss_mask", "loss_cross", "loss_embed"} <= set(last)
    assert "AP" in metrics


def test_training_pairs_a_frame_with_a_partner_within_the_window_never_itself():
    """The paper samples the reference frame at a random distance 0 < |i - t| <= 20; the pipeline delivers the
    pair the method's clip sampler picks (first = earlier, last = later frame)."""
    import numpy as np

    from avis.data.clips import sample_clip

    model = crossvis_tiny(2)
    assert model.clip_sampler.max_distance == 20 and model.clip_sampler.length == model.clip_length == 2
    rng = np.random.default_rng(0)
    for n, window in ((60, 20), (8, 20), (60, 3)):
        sampler = crossvis_tiny(2, partner_distance=window).clip_sampler
        dist = []
        for _ in range(600):
            clip = sample_clip(numbered_video(n), [], 2, rng, sampler=sampler)
            a, b = clip["frames"][:, 0, 0, 0].tolist()
            assert 0 <= a < b < n
            dist.append(b - a)
        assert set(dist) == set(range(1, min(window, n - 1) + 1))  # every distance of the window occurs
        if n == 60 and window == 20:
            assert 9 < np.mean(dist) < 12  # uniform over the window, not mostly adjacent
    assert sampler(1, rng).tolist() == [0, 0]  # a one-frame video: the frame with itself
    assert all(sorted(sampler(2, rng).tolist()) == [0, 1] for _ in range(20))
