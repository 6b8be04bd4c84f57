"""Order-preserving slot identities with the IoU > 0.5 rule, on constructed slot outputs."""

from __future__ import annotations

import torch

from avis.models.losses import mask_iou
from avis.tracking import SlotTracker

N, K, S = 5, 3, 12


def box(y, x, h=4, w=4):
    m = torch.zeros(S, S, dtype=torch.bool)
    m[y:y + h, x:x + w] = True
    return m


def frame(slots: dict[int, tuple[int, float, torch.Tensor]]):
    """{slot: (class, prob, mask)} -> probs N x (K+1), masks N x S x S; other slots are no-object."""
    probs = torch.zeros(N, K + 1)
    probs[:, K] = 1.0
    masks = torch.zeros(N, S, S, dtype=torch.bool)
    for s, (c, p, m) in slots.items():
        probs[s] = (1 - p) / K
        probs[s, c] = p
        masks[s] = m
    return probs, masks


def run(frames):
    tr = SlotTracker()
    ids = [tr.update(i, *frame(f)) for i, f in enumerate(frames)]
    return ids, tr.tracks()


def test_mask_iou():
    a, b = box(0, 0), box(0, 2)
    iou = mask_iou(torch.stack([a, b]), torch.stack([a, torch.zeros(S, S, dtype=torch.bool)]))
    torch.testing.assert_close(iou, torch.tensor([[1.0, 0.0], [8 / 24, 0.0]]))


def test_stable_slots_keep_ids():
    # Two objects moving right by one pixel a frame (consecutive IoU 0.6) stay in slots 1 and 3.
    frames = [{1: (0, 0.9, box(0, t)), 3: (2, 0.8, box(6, 8 - t))} for t in range(4)]
    ids, tracks = run(frames)
    assert all(f == {1: 0, 3: 1} for f in ids)
    assert [(t.label, sorted(t.masks)) for t in tracks] == [(0, [0, 1, 2, 3]), (2, [0, 1, 2, 3])]
    assert torch.equal(tracks[1].masks[2], box(6, 6))
    assert abs(tracks[0].score - 0.9) < 1e-6 and abs(tracks[1].score - 0.8) < 1e-6


def test_slot_index_alone_links_frames_when_masks_jump():
    # Order preservation: no overlap between frames, the slot index still carries the identity.
    ids, tracks = run([{2: (1, 0.9, box(0, 0))}, {2: (1, 0.9, box(8, 8))}])
    assert ids == [{2: 0}, {2: 0}] and len(tracks) == 1


def test_swapped_slots_with_high_iou_keep_ids():
    a0, b0 = box(0, 0), box(7, 7)
    frames = [{0: (0, 0.9, a0), 1: (1, 0.9, b0)},
              {0: (1, 0.9, box(7, 6)), 1: (0, 0.9, box(0, 1))},  # the slots swapped; masks barely moved
              {0: (1, 0.9, box(7, 5)), 1: (0, 0.9, box(0, 2))}]
    ids, tracks = run(frames)
    assert ids[0] == {0: 0, 1: 1}
    assert ids[1] == {0: 1, 1: 0}
    assert ids[2] == {0: 1, 1: 0}  # and stay with their new slots
    assert [t.label for t in tracks] == [0, 1]
    assert torch.equal(tracks[0].masks[1], box(0, 1)) and torch.equal(tracks[1].masks[1], box(7, 6))


def test_new_object_gets_new_id():
    frames = [{0: (0, 0.9, box(0, 0))},
              {0: (0, 0.9, box(0, 1)), 4: (2, 0.7, box(8, 8))}]
    ids, tracks = run(frames)
    assert ids[1] == {0: 0, 4: 1}
    assert len(tracks) == 2 and sorted(tracks[1].masks) == [1] and tracks[1].label == 2


def test_vanished_object_frames_are_absent():
    frames = [{0: (0, 0.9, box(0, 0)), 1: (1, 0.9, box(8, 8))},
              {0: (0, 0.9, box(0, 1))},  # object in slot 1 vanished ...
              {0: (0, 0.9, box(0, 2))},
              {0: (0, 0.9, box(0, 3)), 1: (1, 0.9, box(8, 7))}]  # ... and came back in its slot
    ids, tracks = run(frames)
    assert sorted(tracks[1].masks) == [0, 3]
    assert sorted(tracks[0].masks) == [0, 1, 2, 3]
    assert len(tracks) == 2


def test_thresholds_and_empty_masks():
    frames = [{0: (0, 0.39, box(0, 0)),  # below the class threshold 0.4: not fired
               1: (1, 0.9, torch.zeros(S, S, dtype=torch.bool)),  # empty mask: not a detection
               2: (2, 0.41, box(4, 4))}]
    ids, tracks = run(frames)
    assert ids == [{2: 0}] and len(tracks) == 1


def test_track_taken_by_iou_is_not_reused_by_its_old_slot():
    # Object A moves from slot 0 to slot 1 (IoU rule); a different object then fires in slot 0: new id.
    frames = [{0: (0, 0.9, box(0, 0))},
              {1: (0, 0.9, box(0, 1)), 0: (1, 0.9, box(8, 8))}]
    ids, tracks = run(frames)
    assert ids[1] == {1: 0, 0: 1}
    assert len(tracks) == 2


def test_category_is_score_weighted_majority():
    m = box(0, 0)
    frames = [{0: (1, 0.5, m)}, {0: (1, 0.5, m)}, {0: (2, 0.95, m)}, {0: (2, 0.95, m)}, {0: (1, 0.45, m)}]
    _, tracks = run(frames)
    # votes: class 1 = 0.5 + 0.5 + 0.45 = 1.45, class 2 = 1.9 -> class 2, even though 1 wins 3 frames to 2
    assert tracks[0].label == 2
    expected = (2 * (0.5 / 3) + 0.95 * 2 + 0.55 / 3) / 5  # class-2 probability averaged over the frames
    assert abs(tracks[0].score - expected) < 1e-6


def _plain_update(state: dict, frame_i: int, probs, masks, class_threshold=0.4, iou_threshold=0.5):
    """The rule written plainly (mask_iou on the bool masks of each pair of frames, nothing cached): the oracle
    of SlotTracker.update, which keeps the previous frame's float masks and areas."""
    real = probs[:, :-1]
    fired = torch.nonzero((real.max(-1).values >= class_threshold) & masks.flatten(1).any(1)).flatten().tolist()
    assigned, used = {}, set()
    if fired and state["prev_slots"]:
        iou = mask_iou(masks[fired], state["prev_masks"])
        pairs = sorted(torch.nonzero(iou > iou_threshold).tolist(), key=lambda p: -float(iou[p[0], p[1]]))
        for a, b in pairs:
            slot, tid = fired[a], state["slot_track"][state["prev_slots"][b]]
            if slot not in assigned and tid not in used:
                assigned[slot] = tid
                used.add(tid)
    for slot in fired:
        if slot not in assigned:
            tid = state["slot_track"].get(slot)
            if tid is None or tid in used:
                tid = state["n"]
                state["n"] += 1
            assigned[slot] = tid
            used.add(tid)
    state["slot_track"] = {s: t for s, t in state["slot_track"].items() if t not in used} | assigned
    state["prev_slots"], state["prev_masks"] = fired, masks[fired]
    return assigned


def test_random_sequences_match_the_plain_rule():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        tr = SlotTracker()
        state = {"prev_slots": [], "prev_masks": None, "slot_track": {}, "n": 0}
        base = torch.rand(N, S, S, generator=g)
        for t in range(6):
            probs = torch.rand(N, K + 1, generator=g).softmax(-1) * 2  # some slots reach 0.4, some do not
            # masks drift and swap between slots (IoU rescues), some empty
            masks = (base[torch.randperm(N, generator=g)] + 0.3 * torch.rand(N, S, S, generator=g)) > 0.9
            masks[torch.rand(N, generator=g) < 0.2] = False
            assert tr.update(t, probs, masks) == _plain_update(state, t, probs, masks)
