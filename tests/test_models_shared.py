"""Blocks every method shares: the builder contract (backbone weights, BatchNorm policy), preprocessing, the
mask losses and the zero loss."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from avis.models import losses, preprocess
from tests.baseline_utils import single_thread


@pytest.fixture(autouse=True)
def _quiet():
    with single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "random initialisation"
        torch.manual_seed(0)
        yield


def _resnet_builders():
    from avis.models import crossvis, efficientvis, inspro, rcf, stmask

    return {"rcf_r50": rcf.rcf_r50, "crossvis_r50": crossvis.crossvis_r50, "stmask_r50": stmask.stmask_r50,
            "inspro_r50": inspro.inspro_r50, "efficientvis_r50": efficientvis.efficientvis_r50}


def _norms(module):
    mods = list(module.modules())
    return (sum(isinstance(m, FrozenBatchNorm2d) for m in mods),
            [m for m in mods if isinstance(m, nn.BatchNorm2d)])


def test_resnet_freezes_batchnorm_only_with_weights(tmp_path):
    """Without weights, frozen BatchNorm would be the identity: a from-scratch ResNet without normalisation."""
    import torchvision

    from avis.models.backbones import build_backbone

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    frozen, trainable = _norms(build_backbone("resnet18"))
    assert frozen == 0 and len(trainable) == 20 and all(m.weight.requires_grad for m in trainable)
    frozen, trainable = _norms(build_backbone("resnet18", weights=str(path)))
    assert frozen == 20 and not trainable
    assert _norms(build_backbone("resnet18", frozen_bn=True))[0] == 20  # asked for explicitly


@pytest.mark.parametrize("name", list(_resnet_builders()))
def test_resnet_builders_follow_the_batchnorm_policy(name):
    """Every ResNet builder leaves BatchNorm trainable without weights (InsPro and EfficientVIS froze all 53)."""
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        model = _resnet_builders()[name](3)
    frozen, trainable = _norms(model.backbone)
    assert frozen == 0 and len(trainable) == 53


def test_normalize_and_pad_values():
    frames = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 3, 5)
    m = nn.Module()
    preprocess.register_pixel_stats(m)
    assert not m.state_dict()  # non-persistent buffers
    x = preprocess.normalize_and_pad(frames, m.pixel_mean, m.pixel_std, 4)
    assert x.shape == (2, 3, 4, 8) and x.dtype == torch.float32
    expect = (torch.tensor([0.0, 128, 255]) / 255 - torch.tensor(preprocess.IMAGENET_MEAN)) / torch.tensor(
        preprocess.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 0, 0], expect)
    assert (x[:, :, 3] == 0).all() and (x[:, :, :, 5:] == 0).all()  # padding = the mean colour


def test_dice_forms_and_mask_iou():
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    g = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(losses.dice_loss(p, g), torch.tensor([1 - 5 / 5, 1 - 3 / 5]))
    torch.testing.assert_close(losses.dice_similarity(p, g[:1]), torch.tensor([[1.0], [3 / 5]]))
    # CondInst: 1 - 2 sum(pg) / (sum p^2 + sum g^2), mean over masks
    sq = losses.squared_dice_loss(p.view(2, 2, 2), g.view(2, 2, 2), eps=0.0)
    torch.testing.assert_close(sq, torch.tensor((0 + (1 - 2 * 1.0 / (1.0 + 2))) / 2))
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    b[0, :1] = True
    torch.testing.assert_close(losses.mask_iou(a, b), torch.tensor([[0.5, 0.0], [0.0, 0.0]]))


def test_zero_loss_reaches_every_tensor_with_zero_gradient():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    z = losses.zero_loss(lin.parameters(), x)
    assert z.item() == 0 and z.dim() == 0
    z.backward()
    assert all(p.grad is not None and not p.grad.any() for p in [*lin.parameters(), x])
    empty = losses.squared_dice_loss(torch.zeros(0, 2, 2, requires_grad=True), torch.zeros(0, 2, 2))
    assert empty.item() == 0 and empty.requires_grad


# -- the per-frame contract of the online methods ----------------------------------------------------------------

def _online_builders():
    from avis.models import crossvis, inspro, rcf, stmask
    from avis.models.audio import audio_tokens_tiny

    # thresholds low enough that random weights detect something in every frame
    return {"rcf_tiny": lambda: rcf.rcf_tiny(3, delta=2, audio_encoder=audio_tokens_tiny(), class_threshold=0.2),
            "crossvis_tiny": lambda: crossvis.crossvis_tiny(3, score_threshold=0.0, max_detections=6),
            "stmask_tiny": lambda: stmask.stmask_tiny(3, score_threshold=0.0, max_detections=6),
            "inspro_tiny": lambda: inspro.inspro_tiny(3, score_threshold=0.0, split_gap=1)}


def _video(n=5, size=(48, 64)):
    g = torch.Generator().manual_seed(3)
    return (torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=g),
            torch.randn(n, 1600, generator=g))


@pytest.mark.parametrize("name", list(_online_builders()))
def test_step_returns_the_frames_tracked_instances_that_make_the_tracks(name):
    """step(t) returns frame t's instances at once (copied as returned); finish adds nothing to any frame:
    each track's masks are exactly what its id had in the per-frame results, and the tracks are those of
    predict_video."""
    from avis.models.base import FrameResult

    model = _online_builders()[name]().eval()
    frames, audio = _video()
    state = model.init_state()
    by_id: dict[int, dict[int, torch.Tensor]] = {}
    n_inst = 0
    for t in range(len(frames)):
        res = model.step(state, frames[t], audio[t])
        assert isinstance(res, FrameResult) and res.frame == t
        ids = [i.track_id for i in res.instances]
        assert ids == sorted(set(ids))  # one instance per track, ordered by id
        for inst in res.instances:
            assert inst.mask.dtype == torch.bool and inst.mask.shape == frames.shape[-2:]
            assert inst.mask.device.type == "cpu" and 0 <= inst.score <= 1 and 0 <= inst.label < 3
            by_id.setdefault(inst.track_id, {})[t] = inst.mask.clone()
        n_inst += len(res.instances)
    tracks = model.finish(state)
    assert n_inst > 0 and len(tracks) == len(by_id)
    assert {tr.track_id for tr in tracks} == set(by_id)
    for tr in tracks:
        assert sorted(tr.masks) == sorted(by_id[tr.track_id])
        assert all(torch.equal(tr.masks[t], by_id[tr.track_id][t]) for t in tr.masks)
    again = model.predict_video(frames, audio)
    assert [(t.track_id, t.label, t.score, sorted(t.masks)) for t in again] == \
        [(t.track_id, t.label, t.score, sorted(t.masks)) for t in tracks]


def test_frame_record_is_one_json_line_at_the_video_size():
    import json

    from avis.engine.predict import frame_record
    from avis.io import masks as mask_io
    from avis.models.base import FrameResult, TrackedInstance

    m = torch.zeros(4, 6, dtype=torch.bool)
    m[1:3, 2:6] = True
    res = FrameResult(7, [TrackedInstance(2, 1, 0.75, m)])
    rec = json.loads(json.dumps(frame_record(res, 11, [{"id": 5}, {"id": 9}], 8, 12)))
    assert (rec["video_id"], rec["frame"]) == (11, 7)
    (inst,) = rec["instances"]
    assert (inst["track_id"], inst["category_id"], inst["score"]) == (2, 9, 0.75)
    big = torch.from_numpy(mask_io.decode(inst["segmentation"]))
    assert big.shape == (8, 12) and torch.equal(big[::2, ::2], m)  # twice the size, bilinear > 0.5
    assert frame_record(FrameResult(0), 1, [], 8, 12)["instances"] == []
