"""``avis eval`` under torchrun: the videos split over ranks, the merged output equal to one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avis import cli as avis_cli
from avis.io import masks as mask_io
from tests.conftest import REPO, TOY


def _write_frames(path: Path, frames: np.ndarray, fps: int = 5) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        s.options = {"crf": "10"}
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory) -> Path:
    """5 annotated videos of the toy model's two categories (its colours), several to a shard."""
    root = tmp_path_factory.mktemp("split_eval")
    src = root / "videos"
    src.mkdir()
    videos, anns = [], []
    rng = np.random.default_rng(3)
    colours = [(220, 40, 40), (40, 200, 60)]  # the toy model's categories (tests/toy.py: ToyVideos)
    for i in range(5):
        frames = np.full((6, 24, 32, 3), 128, np.uint8)
        segs = [[], []]
        for j in range(2):
            y, x = rng.integers(0, 12), rng.integers(0, 16)
            for t in range(6):
                m = np.zeros((24, 32), np.uint8)
                m[y:y + 8, x + t:x + t + 10] = 1
                frames[t][m.astype(bool)] = colours[j]
                segs[j].append(mask_io.encode(m))
        _write_frames(src / f"v{i}.mp4", frames)
        videos.append({"id": 10 + i, "width": 32, "height": 24, "fps": 5, "length": 6, "video_file": f"v{i}.mp4"})
        for j in range(2):
            anns.append({"id": len(anns) + 1, "video_id": 10 + i, "category_id": 1 + j, "segmentations": segs[j]})
    (root / "gt.json").write_text(json.dumps({"videos": videos, "annotations": anns,
                                              "categories": [{"id": 1, "name": "toy0"}, {"id": 2, "name": "toy1"}]}))
    out = root / "shards"
    assert avis_cli.main(["build", "--videos", str(src), "--annotations", str(root / "gt.json"), "--out", str(out),
                          "--shard-size", "30000"]) == 0
    per_shard = [s["num_videos"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
    assert len(per_shard) >= 2 and max(per_shard) >= 2, per_shard  # ranks' videos cross shard boundaries
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy_run")
    assert avis_cli.main(["train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.max_steps=40",
                          "trainer.eval_every=0", "trainer.progress=false", "trainer.tensorboard=false", TOY]) == 0
    return run / "checkpoints" / "last.pt"


def test_each_rank_decodes_only_its_videos(val_shards, monkeypatch):
    from avis.data import shards
    from avis.data.shards import ShardSource
    from avis.engine import eval_split

    decoded = []
    real = shards.decode_sample
    monkeypatch.setattr(shards, "decode_sample", lambda s, *a, **k: decoded.append(s["__key__"]) or real(s, *a, **k))
    source = ShardSource(str(val_shards))
    ids = {}
    for rank in (0, 1):
        decoded.clear()
        got = list(eval_split.rank_videos(source, None, rank, 2))
        ids[rank] = [(k, v.video_id) for k, v in got]
        assert decoded == [f"{vid:08d}" for _, vid in ids[rank]]  # the other rank's samples stay bytes
    assert ids == {0: [(0, 10), (2, 12), (4, 14)], 1: [(1, 11), (3, 13)]}
    assert [k for k, _ in eval_split.rank_videos(source, 3, 0, 2)] == [0, 2]  # --limit counts all ranks' videos


@pytest.mark.slow
def test_torchrun_eval_equals_one_process(val_shards, checkpoint, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    one, split = tmp_path / "one", tmp_path / "split"
    common = ["-m", "avis", "eval", "--checkpoint", str(checkpoint), "--shards", str(val_shards), "--device", "cpu"]
    p = subprocess.run([sys.executable, *common, "--out", str(one)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        *common, "--out", str(split)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("results.json", "gt.json", "samples.csv"):
        assert (split / name).read_bytes() == (one / name).read_bytes(), name
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, split))
    assert a["metrics"] == b["metrics"] and a["metrics"]["AP"] >= 0
    assert b["timing"]["ranks"] == 2 and b["timing"]["videos"] == a["timing"]["videos"] == 5
    assert b["timing"]["frames"] == a["timing"]["frames"] == 30
    gt = json.loads((one / "gt.json").read_text())
    assert [v["id"] for v in gt["videos"]] == [10, 11, 12, 13, 14]
    assert len(json.loads((one / "results.json").read_text())) > 0
