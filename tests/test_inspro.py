"""InsPro: temporally consistent matching, de-duplication loss, propagation, feature bank, overfitting."""

from __future__ import annotations

import pytest
import torch

from avis.models.base import Track
from avis.models.inspro import (
    InsPro,
    clip_to_image,
    dedup_loss,
    inspro_tiny,
    mask_boxes,
    match_cost,
    temporally_consistent_matching,
)
from tests.baseline_utils import build_synth_shards, single_thread

pytestmark = pytest.mark.filterwarnings("ignore:backbone .*random initialisation:UserWarning")


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():  # small steps: ~10x faster than on two threads of the busy 2-core machine
        yield


def _cost(n_slots: int, prefs: list[int]) -> torch.Tensor:
    """A cost matrix where object j strongly prefers slot prefs[j] (cost 0 there, 1 elsewhere)."""
    c = torch.ones(n_slots, len(prefs))
    for j, s in enumerate(prefs):
        c[s, j] = 0.0
    return c


# ---------------------------------------------------------------- temporally consistent matching

def test_first_frame_is_hungarian():
    cost = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    (slots, gi), = temporally_consistent_matching([cost], [torch.tensor([7, 3])])
    assert dict(zip(gi.tolist(), slots.tolist())) == {0: 1, 1: 0}


def test_persisting_objects_keep_their_slot_even_when_another_is_cheaper():
    costs = [_cost(6, [2, 4]),
             _cost(6, [0, 1])]  # frame 1 would prefer other slots: ignored for persisting objects
    ids = [torch.tensor([10, 11]), torch.tensor([11, 10])]  # order of the objects changes too
    m = temporally_consistent_matching(costs, ids)
    assert dict(zip(m[0][1].tolist(), m[0][0].tolist())) == {0: 2, 1: 4}
    assert dict(zip(m[1][1].tolist(), m[1][0].tolist())) == {0: 4, 1: 2}  # id 11 -> slot 4, id 10 -> slot 2


def test_new_objects_are_matched_among_free_slots_and_vanished_slots_stay_reserved():
    n = 5
    costs = [_cost(n, [1, 3]),          # ids 1, 2 -> slots 1, 3
             _cost(n, [1]),             # id 1 persists; id 2 vanished (slot 3 reserved)
             _cost(n, [3, 1, 0])]       # id 2 back; new id 9 would love slot 3 (reserved) ... then slot 1 (taken)
    costs[2][4, 2] = 0.5                # ... its best free slot is 4
    costs[2][0, 2] = 0.7
    ids = [torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([2, 1, 9])]
    m = temporally_consistent_matching(costs, ids)
    assert dict(zip(m[1][1].tolist(), m[1][0].tolist())) == {0: 1}
    got = dict(zip(m[2][1].tolist(), m[2][0].tolist()))
    assert got[0] == 3 and got[1] == 1          # the vanished object got its own slot back
    assert got[2] == 4                           # the new one: best among never-used slots {0, 2, 4}


def test_new_object_cannot_take_reserved_slot_even_if_it_is_the_only_cheap_one():
    costs = [_cost(3, [0]), torch.zeros(3, 0), _cost(3, [0])]  # the new id 6 wants slot 0, which id 5 holds
    ids = [torch.tensor([5]), torch.tensor([], dtype=torch.int64), torch.tensor([6])]
    m = temporally_consistent_matching(costs, ids)
    assert m[1][0].numel() == 0
    assert m[2][0].tolist() != [0] and m[2][0].numel() == 1


def test_more_new_objects_than_free_slots_leaves_the_rest_unmatched():
    m = temporally_consistent_matching([torch.rand(2, 3)], [torch.tensor([1, 2, 3])])
    assert sorted(m[0][0].tolist()) == [0, 1] and len(set(m[0][1].tolist())) == 2


def test_match_cost_prefers_the_right_box_and_class():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10]])
    logits = torch.tensor([[5.0, -5], [-5, 5], [-5, 5]])  # slot 2: right box, wrong class
    cost = match_cost(logits, boxes, torch.tensor([0, 1]), torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]),
                      (64, 64))
    assert cost.shape == (3, 2)
    assert cost[:, 0].argmin() == 0 and cost[:, 1].argmin() == 1
    assert cost[0, 0] < cost[2, 0]


# ---------------------------------------------------------------- box de-duplication loss

def test_dedup_loss_on_constructed_boxes():
    gt = torch.tensor([[0.0, 0, 30, 40]])  # diagonal 50, centre (15, 20)
    pred = torch.tensor([[0.0, 0, 30, 40],     # matched: ignored
                         [3.0, 4, 33, 44],     # unmatched, centre offset (3, 4): d^2/D^2 = 25/2500 = 0.01
                         [10.0, 0, 40, 40],    # offset (10, 0): 100/2500 = 0.04
                         [100.0, 100, 130, 140]])  # far away: d^2/D^2 > beta -> 0
    matched = torch.tensor([True, False, False, False])
    loss = dedup_loss(pred, matched, gt, k=2, beta=0.1)  # top-2 IoU among unmatched: boxes 1 and 2
    assert loss.item() == pytest.approx(((0.1 - 0.01) + (0.1 - 0.04)) / 2)
    loss3 = dedup_loss(pred, matched, gt, k=5, beta=0.1)  # only 3 unmatched: mean over 3, far box adds 0
    assert loss3.item() == pytest.approx(((0.1 - 0.01) + (0.1 - 0.04) + 0) / 3)
    # the gradient pushes the duplicate's centre away from the ground truth's
    p = pred.clone().requires_grad_(True)
    dedup_loss(p, matched, gt, k=2).backward()
    assert p.grad[1, 0] < 0 and p.grad[1, 2] < 0 and p.grad[0].abs().sum() == 0
    # two ground-truth boxes: summed
    two = dedup_loss(pred, matched, torch.cat([gt, gt]), k=2)
    assert two.item() == pytest.approx(2 * loss.item())
    assert dedup_loss(pred, torch.ones(4, dtype=torch.bool), gt).item() == 0


# ---------------------------------------------------------------- propagation and the feature bank

def test_clip_to_image_and_mask_boxes():
    b = torch.tensor([[-5.0, -2, 30, 70], [10, 10, 200, 20], [100, 5, 120, 9], [3, -9, 8, -4]])
    assert clip_to_image(b, (64, 96)).tolist() == [[0, 0, 30, 64], [10, 10, 96, 20], [95, 5, 96, 9],
                                                   [3, 0, 8, 1]]  # fully outside: kept 1 px wide/high
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, 2:5, 1:7] = True
    assert mask_boxes(m).tolist() == [[1, 2, 7, 5]]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return inspro_tiny(3, num_queries=6)


def test_propagated_proposals_are_clipped_to_the_image(tiny):
    tiny.eval()
    with torch.no_grad():  # push the initial proposals far outside the image
        tiny.init_boxes.weight[:, :2] = torch.tensor([1.5, -0.5])
        tiny.init_boxes.weight[:, 2:] = 2.0
    try:
        state = tiny.init_state()
        frame = torch.randint(0, 255, (3, 48, 80), dtype=torch.uint8)
        tiny.step(state, frame)
        raw = state["last"]["boxes"]
        assert (raw[:, 2] > 80).any() or (raw[:, 1] < 0).any()  # the stages left boxes outside
        p = state["boxes"][0]
        assert (p[:, 0::2] >= 0).all() and (p[:, 0::2] <= 80).all()
        assert (p[:, 1::2] >= 0).all() and (p[:, 1::2] <= 48).all()
        assert torch.equal(p, clip_to_image(raw, (48, 80)))
    finally:
        with torch.no_grad():
            tiny.init_boxes.weight[:, :2] = 0.5
            tiny.init_boxes.weight[:, 2:] = 1.0


def test_feature_bank_length_training_vs_inference(tiny):
    assert (tiny.train_bank, tiny.test_bank) == (3, 18)
    tiny.eval()
    state = tiny.init_state()
    frame = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    lengths = []
    for _ in range(20):
        tiny.step(state, frame)
        lengths.append(len(state["bank"]))
    assert lengths == list(range(1, 19)) + [18, 18]
    tiny.train()
    assert tiny.bank_size() == 3
    last = {"queries": torch.randn(1, 6, 32), "boxes": torch.zeros(1, 6, 4)}
    bank = []
    for _ in range(5):
        _, _, bank = tiny.propagate(last, bank, (32, 32))
    assert len(bank) == 3


def test_intra_query_attention_is_the_weighted_sum_plus_current(tiny):
    bank = torch.randn(4, 1, 6, 32)
    w = tiny.intra_query.eps(bank).softmax(0)
    expected = (w * bank).sum(0) + bank[-1]
    assert torch.allclose(tiny.intra_query(bank), expected)
    one = tiny.intra_query(bank[-1:])
    assert torch.allclose(one, 2 * bank[-1])  # a bank of one: o_t + o_t


def test_gradients_flow_through_the_propagated_queries(tiny):
    tiny.train()
    frames = torch.randint(0, 255, (1, 3, 3, 32, 32), dtype=torch.uint8)
    m = torch.zeros(1, 32, 32, dtype=torch.bool)
    m[0, 4:20, 6:22] = True
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool),
             "instance_ids": torch.zeros(0, dtype=torch.int64)}
    obj = {"labels": torch.tensor([1]), "masks": m, "instance_ids": torch.tensor([4])}
    tiny.zero_grad()
    losses = tiny({"frames": frames, "targets": [[empty, empty, obj]]})  # only the last frame has an object
    assert set(losses) == {"loss_cls", "loss_l1", "loss_giou", "loss_dedup", "loss_dice", "loss_mask_focal"}
    sum(losses.values()).backward()
    # the first frame's queries reach the loss only through propagation (and the class loss of frame 0)
    assert tiny.intra_query.eps.weight.grad.abs().sum() > 0
    assert tiny.init_queries.weight.grad.abs().sum() > 0
    unused = [n for n, p in tiny.named_parameters() if p.grad is None]
    assert not unused  # DDP without find_unused_parameters needs every parameter in the graph
    tiny.zero_grad()
    sum(tiny({"frames": frames, "targets": [[obj, empty, empty]]}).values()).backward()
    assert tiny.init_boxes.weight.grad.abs().sum() > 0  # the learned proposals are trained by frame 0's boxes


# ---------------------------------------------------------------- overfitting two synthetic clips

def _clips(H: int = 64, W: int = 96):
    """Two 3-frame clips drawn as tensors: moving rectangles on a grey background, one object entering late."""
    frames = torch.full((2, 3, 3, H, W), 110, dtype=torch.uint8)
    colours = {0: (230, 40, 40), 1: (40, 200, 60), 2: (40, 60, 230)}
    targets = []
    # (label, instance id, per-frame box y0, x0, y1, x1 or None where absent)
    # clip 0: class 0 moving right, class 2 static; clip 1: class 1 moving down, class 0 enters at frame 1
    paths = [[(0, 11, [(6, 6, 34, 36), (6, 12, 34, 42), (6, 18, 34, 48)]),
              (2, 12, [(36, 50, 60, 86)] * 3)],
             [(1, 21, [(4, 44, 30, 80), (9, 44, 35, 80), (14, 44, 40, 80)]),
              (0, 22, [None, (34, 4, 60, 34), (34, 8, 60, 38)])]]
    for b, objs in enumerate(paths):
        clip = []
        for t in range(3):
            labels, masks, ids = [], [], []
            for label, iid, boxes in objs:
                if boxes[t] is None:
                    continue
                y0, x0, y1, x1 = boxes[t]
                m = torch.zeros(H, W, dtype=torch.bool)
                m[y0:y1, x0:x1] = True
                frames[b, t][:, m] = torch.tensor(colours[label], dtype=torch.uint8)[:, None]
                labels.append(label), masks.append(m), ids.append(iid)
            clip.append({"labels": torch.tensor(labels), "masks": torch.stack(masks),
                         "instance_ids": torch.tensor(ids)})
        targets.append(clip)
    return {"frames": frames, "targets": targets}


def _best_iou(tracks: list[Track], masks_by_frame: dict[int, torch.Tensor], label: int) -> float:
    best = 0.0
    for tr in tracks:
        ious = []
        for t, gt in masks_by_frame.items():
            pred = tr.masks.get(t, torch.zeros_like(gt))
            ious.append((pred & gt).sum().item() / max((pred | gt).sum().item(), 1))
        if tr.label == label:
            best = max(best, sum(ious) / len(ious))
    return best


@pytest.mark.slow
def test_tiny_overfits_two_clips():
    torch.manual_seed(0)
    model = inspro_tiny(3, num_queries=8)
    batch = _clips()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    first = last = None
    for _ in range(150):
        losses = model(batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first = first if first is not None else loss.item()
        last = loss.item()
    assert last < 0.1 * first, (first, last)
    model.eval()
    for b in range(2):
        tracks = model.predict_video(batch["frames"][b])
        by_id: dict[int, tuple[int, dict]] = {}
        for t, tg in enumerate(batch["targets"][b]):
            for label, m, iid in zip(tg["labels"].tolist(), tg["masks"], tg["instance_ids"].tolist()):
                by_id.setdefault(iid, (label, {}))[1][t] = m
        for iid, (label, masks) in by_id.items():
            assert _best_iou(tracks, masks, label) > 0.8, (b, iid)


def test_builders_and_interface():
    m = inspro_tiny(5)
    assert isinstance(m, InsPro) and m.clip_length == 3 and not m.uses_audio
    assert m.num_queries == 10 and len(m.stages) == 2
    assert m.mask_head.num_params == 169
    assert m.stages[0].controller.out_features == 169


# ---------------------------------------------------------------- plugging in through configs alone

def test_configs_instantiate_the_paper_and_tiny_settings():
    from hydra.utils import instantiate

    from avis.engine.config import compose

    cfg = compose(["experiment=inspro", "data.num_classes=40", "data.train.pattern=x"])
    assert cfg.optim.optimizer.lr == 2.5e-5 and cfg.optim.optimizer.weight_decay == 1e-4
    assert cfg.data.batch_size == 8 and cfg.trainer.max_steps == 32000 and not cfg.audio.enabled
    m = instantiate(cfg.model)
    assert (m.num_queries, len(m.stages), m.hidden_dim, m.clip_length) == (100, 6, 256, 3)
    assert m.stages[0].inst_interact.dim_dynamic == 64 and len(m.stages[0].reg_module) == 9  # 3 x FC+LN+ReLU
    assert (m.train_bank, m.test_bank, m.dedup_k, m.dedup_beta) == (3, 18, 5, 0.1)
    assert m.w == {"cls": 2, "l1": 5, "giou": 2, "dedup": 1, "dice": 5, "mask_focal": 5}
    tiny = instantiate(compose(["experiment=inspro_tiny", "data.num_classes=3"]).model)
    assert (tiny.num_queries, len(tiny.stages), tiny.hidden_dim) == (10, 2, 32)


@pytest.mark.slow
def test_inspro_tiny_trains_and_evaluates_from_shards(tmp_path):
    from avis import cli as avis_cli
    from avis.engine.logs import read_jsonl

    root = tmp_path / "av"
    build_synth_shards(root, videos=4, frames=6)
    run = tmp_path / "run"
    assert avis_cli.main(["train", "experiment=inspro_tiny", f"data.train.pattern={root / 'train'}",
                          f"data.val_pattern={root / 'val'}", f"hydra.run.dir={run}", "trainer.max_steps=3",
                          "trainer.log_every=1", "trainer.ckpt_every=3", "trainer.eval_every=3", "data.batch_size=2",
                          "data.scales=[48]", "data.test_size=48", "trainer.progress=false",
                          "trainer.tensorboard=false"]) == 0
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3] and all("loss_dedup" in r for r in recs)
    ev = read_jsonl(run / "metrics.jsonl", kind="eval")
    assert len(ev) == 1 and {"AP", "AR100"} <= set(ev[0])


def test_training_step_under_bf16_autocast_gives_float32_losses(tiny):
    tiny.train()
    m = torch.zeros(1, 32, 32, dtype=torch.bool)
    m[0, 4:20, 6:22] = True
    obj = {"labels": torch.tensor([1]), "masks": m, "instance_ids": torch.tensor([4])}
    frames = torch.randint(0, 255, (1, 3, 3, 32, 32), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = tiny({"frames": frames, "targets": [[obj, obj, obj]]})
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_finish_video_level_output_and_gap_split(tiny):
    m = torch.zeros(4, 4, dtype=torch.bool)
    s = torch.tensor
    records = {3: [(0, s([0.1, 0.9, 0.0]), m), (1, s([0.5, 0.3, 0.0]), m), (6, s([0.6, 0.0, 0.0]), m),
                   (7, s([0.7, 0.0, 0.3]), m)],
               5: [(2, s([0.0, 0.0, 0.2]), m)]}
    state = {"records": records}
    tracks = tiny.finish(state)
    assert [(t.label, sorted(t.masks)) for t in tracks] == [(0, [0, 1, 6, 7]), (2, [2])]
    assert tracks[0].score == pytest.approx((0.1 + 0.5 + 0.6 + 0.7) / 4)  # mean class-0 score, not the max
    tiny.split_gap = 3
    try:
        tracks = tiny.finish(state)
    finally:
        tiny.split_gap = None
    assert [(t.label, sorted(t.masks)) for t in tracks] == [(1, [0, 1]), (0, [6, 7]), (2, [2])]
    assert tracks[0].score == pytest.approx(0.6) and tracks[1].score == pytest.approx(0.65)
