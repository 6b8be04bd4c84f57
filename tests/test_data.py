"""Shard reader, the video type and the clip pipeline: fields, shapes, labels, audio windows, determinism,
resume, splitting between ranks and workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avis import cli as avis_cli
from avis.data import ShardSource, iter_videos
from avis.data.clips import ClipStream, Position, clip_indices
from avis.errors import InputError
from avis.io import masks as mask_io
from avis.models.audio import frame_windows
from tests.avmedia import clicks_audio, frame_index, write_video

CATS = [{"id": 4, "name": "dog"}, {"id": 9, "name": "guitar"}, {"id": 2, "name": "person"}]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 annotated videos (one silent) in 3 shards; instance k of video v has category CATS[(v + k) % 3]."""
    root = tmp_path_factory.mktemp("data")
    src = root / "src"
    src.mkdir()
    videos, anns = [], []
    for v in range(3):
        n = 6 + 2 * v
        audio = None if v == 1 else clicks_audio(n / 10, [0.15 + 0.1 * v])
        write_video(src / f"v{v}.mp4", num_frames=n, fps=10, size=(48, 32), audio=audio)
        videos.append({"id": 10 + v, "width": 48, "height": 32, "fps": 10, "length": n, "video_file": f"v{v}.mp4"})
        for k in range(2):
            segs = []
            for t in range(n):
                if k == 1 and t % 3 == 0:
                    segs.append(None)  # instance absent in some frames
                    continue
                m = np.zeros((32, 48), np.uint8)
                m[4 * k: 4 * k + 8, t: t + 10] = 1
                segs.append(mask_io.encode(m))
            anns.append({"id": 100 * v + k, "video_id": 10 + v, "category_id": CATS[(v + k) % 3]["id"],
                         "segmentations": segs})
    (root / "ann.json").write_text(json.dumps({"videos": videos, "annotations": anns, "categories": CATS}))
    out = root / "out"
    assert avis_cli.main(["build", "--videos", str(src), "--annotations", str(root / "ann.json"), "--out", str(out),
                          "--shard-size", "1"]) == 0
    return out


def test_iter_videos_fields(shards):
    vids = list(iter_videos(str(shards / "shard-{000000..000002}.tar")))
    assert [v.video_id for v in vids] == [10, 11, 12]
    for i, v in enumerate(vids):
        n = 6 + 2 * i
        assert v.frames.dtype == np.uint8 and v.frames.shape == (n, 32, 48, 3)
        np.testing.assert_allclose(v.frame_times, np.arange(n) / 10)
        assert [frame_index(f) for f in v.frames] == list(range(n))
        assert v.audio.dtype == np.float32 and v.audio.shape == (1, int(round(n / 10 * 16000)))
        assert v.sample_rate == 16000 and v.has_audio == (i != 1)
        assert (np.abs(v.audio).max() > 0.1) == v.has_audio
        assert [inst.instance_id for inst in v.instances] == [100 * i, 100 * i + 1]
        a, b = v.instances
        assert a.masks.shape == (n, 32, 48) and a.masks.dtype == bool
        assert a.masks[:, 0:8].any() and not a.masks[:, 8:].any()
        assert b.present.tolist() == [t % 3 != 0 for t in range(n)]
        assert int(a.masks[2].sum()) == 8 * 10 and a.masks[2, 0, 2] and not a.masks[2, 0, 1]


def test_reader_rejects_missing_and_corrupt_shards(tmp_path):
    with pytest.raises(InputError, match="no shards match"):
        list(iter_videos(str(tmp_path / "nothing-*.tar")))
    bad = tmp_path / "shard-000000.tar"
    bad.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(InputError, match="shard-000000.tar"):
        list(iter_videos(str(bad)))


def test_clip_indices_end_at_the_target_and_clamp():
    assert clip_indices(10, 5, 3).tolist() == [3, 4, 5]
    assert clip_indices(10, 0, 3).tolist() == [0, 0, 0]
    assert clip_indices(10, 1, 1).tolist() == [1]


def _stream(shards, **kw) -> ClipStream:
    args = dict(clip_length=3, batch_size=2, seed=3, clips_per_video=2, scales=[24])
    return ClipStream(ShardSource(str(shards)), **{**args, **kw})


def _epoch(stream: ClipStream, epoch: int = 0, start: int = 0) -> list[tuple[dict, dict]]:
    """The batches (and their info) of one epoch from batch ``start`` on (the stream itself is endless)."""
    out = []
    batches = stream.batches(Position(epoch, start))
    for batch, info in batches:
        if info["epoch"] != epoch:
            break
        out.append((batch, info))
    batches.close()
    return out


def test_clip_batches_align_frames_audio_and_labels(shards):
    """Every clip of an epoch against the reader: the right source frames (resized), each frame's audio window
    cut at its time, and each frame's instances with their labels, ids and masks."""
    src = ShardSource(str(shards))
    batches = [b for b, _ in _epoch(_stream(shards))]
    assert [b["frames"].shape[0] for b in batches] == [2, 2, 2]  # 3 videos x 2 clips
    videos = {v.video_id: v for v in iter_videos(str(shards))}
    index = {int(c["id"]): i for i, c in enumerate(src.categories)}
    assert set(index) == {c["id"] for c in CATS}
    seen = set()
    for batch in batches:
        B = batch["frames"].shape[0]
        # short side 24 (the batch's scale), aspect kept: 32 x 48 -> 24 x 36
        assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape == (B, 3, 3, 24, 36)
        assert batch["frame_times"].dtype == torch.float64 and batch["frame_times"].shape == (B, 3)
        assert batch["audio"].dtype == torch.float32 and batch["audio"].shape == (B, 3, 15360)
        assert batch["has_audio"].dtype == torch.bool and len(batch["targets"]) == B
        for b in range(B):
            vid = batch["video_ids"][b]
            v = videos[vid]
            seen.add(vid)
            assert batch["has_audio"][b].item() == v.has_audio
            times = batch["frame_times"][b]
            idx = [int(round(float(t) * 10)) for t in times]
            assert idx == clip_indices(v.num_frames, idx[-1], 3).tolist()  # consecutive, target last
            # each frame's audio window is the reader's audio cut at that frame's time
            ref = frame_windows(torch.from_numpy(v.audio[0]), times, 16000)
            torch.testing.assert_close(batch["audio"][b], ref)
            # frames are the right source frames (resized)
            levels = batch["frames"][b, :, :, 12:, :].float().median(dim=-1).values.median(dim=-1).values
            assert [int(round((float(x) - 16) / 7)) for x in levels[:, 0]] == idx
            assert len(batch["targets"][b]) == 3
            for j, tgt in enumerate(batch["targets"][b]):
                t = idx[j]
                present = [inst for inst in v.instances if inst.present[t]]
                assert tgt["instance_ids"].tolist() == [inst.instance_id for inst in present]
                assert tgt["labels"].tolist() == [index[inst.category_id] for inst in present]
                assert tgt["labels"].dtype == torch.int64 and tgt["instance_ids"].dtype == torch.int64
                assert tgt["masks"].dtype == torch.bool and tgt["masks"].shape == (len(present), 24, 36)
                for m, inst in zip(tgt["masks"], present):
                    # nearest-resized masks keep roughly their area (8 x 10 px at 32 x 48 -> 6 x ~8)
                    assert 30 <= int(m.sum()) <= 70
                    # and their place: the object's rows (4k .. 4k + 8) and columns (t .. t + 10), scaled by 3/4
                    rows, cols = np.nonzero(m.numpy())
                    k = inst.instance_id % 100
                    assert abs(rows.min() - 3 * k) <= 1 and abs(rows.max() + 1 - 0.75 * (4 * k + 8)) <= 1
                    assert abs(cols.min() - 0.75 * t) <= 1 and abs(cols.max() + 1 - 0.75 * (t + 10)) <= 1
    assert seen == {10, 11, 12}


def test_clip_stream_is_deterministic_given_a_seed(shards):
    def run(seed):
        return [(b["video_ids"][0], b["frame_times"][0].tolist())
                for b, _ in _epoch(_stream(shards, clip_length=2, batch_size=1, seed=seed, clips_per_video=1))]

    a, b, c = run(1), run(1), run(2)
    assert a == b
    assert sorted(x[0] for x in a) == [10, 11, 12]
    assert a != c  # a different seed changes order or targets


def test_workers_split_the_shards_and_resume_inside_an_epoch(shards):
    stream = _stream(shards, clip_length=1, batch_size=1, clips_per_video=1, num_workers=2)
    epoch = _epoch(stream)
    assert sorted(b["video_ids"][0] for b, _ in epoch) == [10, 11, 12]  # every video once, none twice
    # resuming after the first batch gives exactly the rest of the epoch
    rest = _epoch(stream, start=1)
    assert [i["position"] for _, i in rest] == [i["position"] for _, i in epoch[1:]]
    for (x, _), (y, _) in zip(rest, epoch[1:]):
        assert x["video_ids"] == y["video_ids"] and torch.equal(x["frames"], y["frames"])
    # the next epoch permutes the shards anew
    orders = {tuple(b["video_ids"][0] for b, _ in _epoch(stream, e)) for e in range(4)}
    assert len(orders) > 1


def test_ranks_read_disjoint_shards(shards):
    for epoch in range(3):
        got = [[b["video_ids"][0] for b, _ in _epoch(_stream(shards, clip_length=1, batch_size=1, clips_per_video=1,
                                                             rank=r, world_size=2), epoch)] for r in (0, 1)]
        assert not set(got[0]) & set(got[1]) and sorted(got[0] + got[1]) == [10, 11, 12]


def test_multi_scale_batches(shards):
    stream = _stream(shards, clip_length=1, batch_size=1, seed=0, clips_per_video=4, scales=[16, 24])
    shapes = {tuple(b["frames"].shape[-2:]) for b, _ in _epoch(stream)}
    assert shapes == {(16, 24), (24, 36)}


def test_lazy_video_decodes_only_what_is_selected(shards, monkeypatch):
    """One video type: a lazy shard video and its decoded form agree on every field; ``select`` decodes only
    the frames asked for."""
    from avis.data import VideoSource, lazy_video
    from avis.data import shards as sh

    sample = next(sh.iter_samples(shards / "shard-000002.tar"))
    lazy = lazy_video(sample)
    full = sh.decode_sample(sample)
    assert lazy.frames is None and lazy.num_frames == full.num_frames == 10 and lazy.video_id == full.video_id
    np.testing.assert_array_equal(lazy.frame_times, full.frame_times)
    decoded = []
    orig = sh.decode_jpeg
    monkeypatch.setattr(sh, "decode_jpeg", lambda data: decoded.append(1) or orig(data))
    part = lazy.select([7, 3, 7])
    assert len(decoded) == 3 and part.frames.shape == (3, 32, 48, 3)
    same = full.select([7, 3, 7])  # a decoded video selects by slicing
    np.testing.assert_array_equal(part.frames, same.frames)
    np.testing.assert_array_equal(part.frame_times, full.frame_times[[7, 3, 7]])
    for a, b in zip(part.instances, same.instances):
        np.testing.assert_array_equal(a.masks, b.masks) and np.testing.assert_array_equal(a.present, b.present)
    assert part.instances[1].mask(0) is not None and part.instances[1].mask(1) is None  # absent at frame 3k
    np.testing.assert_array_equal(lazy.load().frames, full.frames)
    assert full.load() is full
    assert isinstance(ShardSource(str(shards)), VideoSource)
