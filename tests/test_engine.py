"""The training and evaluation engine: recipe pieces, end-to-end runs, kill-and-resume, torchrun DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avis import cli as avis_cli
from avis.data.clips import ClipStream, Position
from avis.engine import checkpoint as ckpt_io
from avis.engine.logs import read_jsonl
from avis.engine.optim import PolyLR, param_groups
from avis.io import masks as mask_io
from tests.conftest import REPO, TOY, run_cli
from tests.toy import ToyVideos, ToyVIS

FAST = ["trainer.progress=false", "trainer.tensorboard=false", TOY]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def _run(args, timeout=240) -> subprocess.CompletedProcess:
    """Run in its own process group, so that a hang kills every process it started."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"timed out: {' '.join(map(str, args))}\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


# ------------------------------------------------------------------ recipe pieces

def test_param_groups_backbone_multiplier_and_weight_decay():
    model = ToyVIS(num_classes=2, uses_audio=True)
    groups = param_groups(model, lr=6e-4, weight_decay=1e-4, backbone_lr_mult=0.1, backbone_weight_decay=1e-2)
    by = {g["name"]: g for g in groups}
    assert set(by) == {"backbone", "head"}
    assert by["backbone"]["lr"] == pytest.approx(6e-5) and by["backbone"]["weight_decay"] == 1e-2
    assert by["head"]["lr"] == pytest.approx(6e-4) and by["head"]["weight_decay"] == 1e-4
    n_bb = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in by["backbone"]["params"]) == n_bb
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    nd = {g["name"] for g in param_groups(model, 1e-3, 1e-4, no_decay_norm_bias=True) if g["weight_decay"] == 0}
    assert nd == {"backbone_no_decay", "head_no_decay"}


def test_poly_schedule_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.0}, {"params": [], "lr": 0.1}])
    sched = PolyLR(opt, total_steps=10, power=0.9)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    expect = [(1 - k / 10) ** 0.9 for k in range(10)]
    np.testing.assert_allclose([s[0] for s in seen], expect, rtol=1e-12)
    np.testing.assert_allclose([s[1] for s in seen], np.array(expect) * 0.1, rtol=1e-12)
    assert opt.param_groups[0]["lr"] == 0.0


def test_checkpoint_round_trip_weights_only(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    state = ckpt_io.rng_state()
    a = (torch.rand(3), np.random.rand(2))
    ckpt_io.save(tmp_path / "c.pt", {"step": 7, "rng": [state], "config": "a: 1\n"})
    back = ckpt_io.load(tmp_path / "c.pt")  # weights_only=True inside
    ckpt_io.set_rng_state(back["rng"][0])
    b = (torch.rand(3), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="not a loadable checkpoint"):
        ckpt_io.load(tmp_path / "bad.pt")


def test_clip_stream_is_a_function_of_seed_epoch_rank():
    src = ToyVideos(num_videos=8, num_shards=4, num_frames=5)
    make = lambda rank: ClipStream(src, clip_length=3, batch_size=2, seed=1, rank=rank, world_size=2,  # noqa: E731
                                   scales=[16, 20])
    it = make(0).batches()
    first = [next(it) for _ in range(5)]
    again = make(0).batches(Position(first[2][1]["position"].epoch, first[2][1]["position"].batch))
    b, info = next(again)  # resuming after batch 3 gives batch 4
    assert info["position"] == first[3][1]["position"]
    assert torch.equal(b["frames"], first[3][0]["frames"]) and b["video_ids"] == first[3][0]["video_ids"]
    # shapes and the clip: target last, uint8 frames, per-frame audio windows of 0.96 s at 16 kHz
    batch = first[0][0]
    assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape[:3] == (2, 3, 3)
    assert batch["audio"].shape == (2, 3, 15360) and len(batch["targets"][0]) == 3
    assert min(batch["frames"].shape[-2:]) in (16, 20)
    # ranks read disjoint shards in every epoch, and together all of them
    s0, s1 = make(0), make(1)
    for epoch in range(3):
        u0, u1 = set(s0.rank_units(epoch)), set(s1.rank_units(epoch))
        assert not (u0 & u1) and u0 | u1 == set(src.units())


# ------------------------------------------------------------------ end to end (toy method, in-memory data)

@pytest.mark.parametrize("experiment", ["toy_av", "toy_visual"])
def test_tiny_run_trains_and_evaluates(tmp_path, experiment, capsys):
    run = tmp_path / "run"
    rc = avis_cli.main(["train", f"experiment={experiment}", f"hydra.run.dir={run}", "trainer.max_steps=40",
                        "trainer.ckpt_every=20", "trainer.eval_every=40", *FAST])
    assert rc == 0
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(5, 45, 5))
    assert np.mean([r["loss"] for r in recs[-2:]]) < recs[0]["loss"]
    ckpt = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 40 and ckpt["data"][0]["epoch"] >= 1
    assert ("uses_audio: true" in ckpt["config"]) == (experiment == "toy_av")
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == ["step_00000020.pt",
                                                                              "step_00000040.pt"]
    # periodic evaluation wrote results for the val videos
    assert (run / "eval" / "step_00000040" / "results.json").is_file()

    out = tmp_path / "eval"
    assert avis_cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(out)]) == 0
    gt = json.loads((out / "gt.json").read_text())
    res = json.loads((out / "results.json").read_text())
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["timing"]["frames"] == 12 and summary["timing"]["fps"] > 0
    assert {v["id"] for v in gt["videos"]} == {10001, 10002} and gt["annotations"]
    cat_ids = {c["id"] for c in gt["categories"]}
    assert res and all(r["category_id"] in cat_ids and len(r["segmentations"]) == 6 for r in res)
    # masks at the video's size (24 x 32; the model ran at its test size) and overlapping the truth
    seg = next(s for r in res for s in r["segmentations"] if s is not None)
    assert seg["size"] == [24, 32]
    best = []
    for a in gt["annotations"]:
        ious = []
        for r in res:
            if r["video_id"] != a["video_id"]:
                continue
            inter = union = 0
            for g, p in zip(a["segmentations"], r["segmentations"]):
                gm = mask_io.decode(g) if g else np.zeros((24, 32), np.uint8)
                pm = mask_io.decode(p) if p else np.zeros((24, 32), np.uint8)
                inter += int((gm & pm).sum())
                union += int((gm | pm).sum())
            ious.append(inter / max(union, 1))
        best.append(max(ious, default=0))
    assert np.mean(best) > 0.3, best


# ------------------------------------------------------------------ kill and resume

def _train_proc(run: Path, *extra: str, hooks=()) -> subprocess.CompletedProcess:
    """``avis train`` in a subprocess, with the tests' hooks (tests/engine_hooks.py)."""
    args = [sys.executable, "-m", "tests.engine_hooks", *hooks, "experiment=toy_av", f"hydra.run.dir={run}",
            "trainer.max_steps=8", "trainer.log_every=1", "trainer.ckpt_every=3", "trainer.eval_every=2",
            "data.batch_size=2", "data.num_workers=1", *FAST, *extra]
    return _run(args)


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_losses(tmp_path):
    full = _train_proc(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _train_proc(tmp_path / "resumed", hooks=["--kill-at", "4"])
    assert killed.returncode == -signal.SIGKILL
    # the dead run had logged step 4 after its last checkpoint (step 3)
    assert [r["step"] for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")] == [1, 2, 3, 4]
    resumed = _train_proc(tmp_path / "resumed", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))  # each step once: the dead run's step 4 was dropped
    assert [r["loss"] for r in b[4:]] == [r["loss"] for r in a[4:]]  # steps 5..8, exactly
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    sa = ckpt_io.load(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    sb = ckpt_io.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ torchrun, 2 CPU processes

@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    run, trace = tmp_path / "run", tmp_path / "trace"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "tests.engine_hooks", "--trace", str(trace), "experiment=toy_visual", f"hydra.run.dir={run}",
            "trainer.max_steps=6", "trainer.log_every=1", "trainer.ckpt_every=3", "trainer.eval_every=0",
            "data.batch_size=4", *FAST]
    p = _run(args)
    assert p.returncode == 0, p.stderr[-3000:]
    t0, t1 = (read_jsonl(trace / f"trace_rank{r}.jsonl", kind=None) for r in (0, 1))
    assert [r["step"] for r in t0] == [r["step"] for r in t1] == list(range(1, 7))
    for a, b in zip(t0, t1):
        assert a["params"] == b["params"]  # identical parameters after every step
        assert a["epoch"] != b["epoch"] or not set(a["units"]) & set(b["units"])
    per_epoch = {}
    for r, tr in enumerate((t0, t1)):
        for rec in tr:
            per_epoch.setdefault(rec["epoch"], [set(), set()])[r].update(rec["units"])
    assert all(not (u0 & u1) for u0, u1 in per_epoch.values())  # disjoint shards in each epoch
    assert len({rec["loss"] for rec in t0} ^ {rec["loss"] for rec in t1}) > 0  # ranks saw different data
    # only rank 0 wrote: one log (each step once), checkpoints, one hydra folder
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 7))
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "checkpoints", "config.yaml", "metrics.jsonl",
                                                     "train.log"]
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and len(ck["data"]) == 2


def test_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"garbage")
    p = run_cli("eval", "--checkpoint", bad, "--out", tmp_path / "o")
    assert p.returncode == 2 and "not a loadable checkpoint" in p.stderr and "Traceback" not in p.stderr


def test_multirun_sweep_and_errors(tmp_path, capsys):
    rc = avis_cli.main(["train", "-m", "experiment=toy_av,toy_visual", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                        "trainer.max_steps=2", "trainer.eval_every=0", *FAST])
    assert rc == 0
    for job, audio in (("0", True), ("1", False)):
        ck = ckpt_io.load(tmp_path / "sweep" / job / "checkpoints" / "last.pt")
        assert ck["step"] == 2 and (f"uses_audio: {str(audio).lower()}" in ck["config"])
    # a missing checkpoint to resume from is the user's error: one line, exit 2
    rc = avis_cli.main(["train", "experiment=toy_av", f"hydra.run.dir={tmp_path / 'r'}",
                        f"trainer.resume={tmp_path / 'nope.pt'}", *FAST])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err


def _compose(*overrides):
    from omegaconf import OmegaConf

    from avis.engine.config import compose

    return OmegaConf.to_container(compose(overrides))


def test_default_recipe_is_the_papers_and_arms_differ_only_in_audio():
    cfg = _compose("experiment=rcf_av")
    o = cfg["optim"]
    assert o["optimizer"]["_target_"] == "torch.optim.AdamW" and o["optimizer"]["lr"] == 6e-4
    assert o["optimizer"]["weight_decay"] == 1e-4 and o["backbone_lr_mult"] == 0.1
    assert o["scheduler"]["power"] == 0.9 and cfg["trainer"]["max_steps"] == 60000
    assert cfg["data"]["batch_size"] == 16 and len(cfg["data"]["scales"]) > 1 and cfg["trainer"]["amp"]
    # one eta: the audio group's, which the data reads; its value is the code's default
    from avis.models.audio.windows import DEFAULT_ETA

    assert cfg["audio"]["eta"] == DEFAULT_ETA and cfg["data"]["eta"] == "${audio.eta}"
    swin = _compose("experiment=rcf_av", "optim=adamw_swin")["optim"]
    assert (swin["optimizer"]["lr"], swin["optimizer"]["weight_decay"], swin["backbone_lr_mult"]) == (3e-4, 1e-2, 1.0)
    for av, vis in (("rcf_av", "rcf_visual"), ("rcf_av_tiny", "rcf_visual_tiny"), ("toy_av", "toy_visual")):
        a, b = _compose(f"experiment={av}", TOY), _compose(f"experiment={vis}", TOY)
        assert a["audio"]["enabled"] and not b["audio"]["enabled"] and b["audio"]["encoder"] is None
        a.pop("audio"), b.pop("audio")
        assert a == b, (av, vis)


def test_train_from_python_with_a_hook(tmp_path):
    """Hooks run after the standard ones (after each step's log and checkpoint), and after_train runs even when
    training stops with an error."""
    from avis.engine.config import compose
    from avis.engine.loop import HookBase, train

    calls = []

    class Record(HookBase):
        def before_train(self):
            calls.append(("before", self.trainer.step))

        def after_step(self):
            t = self.trainer
            ckpt = (t.out_dir / "checkpoints" / f"step_{t.step:08d}.pt").is_file()
            calls.append(("step", t.step, t.last.clips, len(t.last.video_ids), sorted(t.last.losses), ckpt))
            if t.step == 3 and fail:
                raise RuntimeError("boom")

        def after_train(self):
            calls.append(("after", self.trainer.step))

    fail = False
    cfg = ["experiment=toy_visual", "trainer.max_steps=3", "trainer.eval_every=0", "trainer.ckpt_every=2", *FAST]
    out = train(compose(cfg, out_dir=tmp_path / "run"), hooks=[Record()])
    assert out["step"] == 3 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert calls == [("before", 0), ("step", 1, 4, 4, ["loss_ce"], False), ("step", 2, 4, 4, ["loss_ce"], True),
                     ("step", 3, 4, 4, ["loss_ce"], True), ("after", 3)]
    calls.clear()
    fail = True
    with pytest.raises(RuntimeError, match="boom"):
        train(compose(cfg, out_dir=tmp_path / "run2"), hooks=[Record()])
    assert calls[-1] == ("after", 3)


def test_config_dir_override(tmp_path, monkeypatch):
    import shutil

    from avis.engine.config import compose, config_path
    from avis.errors import ConfigError

    assert config_path() == str(REPO / "configs")  # a checkout reads its own configs/
    shutil.copytree(REPO / "configs", tmp_path / "c")
    (tmp_path / "c" / "train.yaml").write_text((tmp_path / "c" / "train.yaml").read_text().replace("seed: 0", "seed: 7"))
    monkeypatch.setenv("AVIS_CONFIG_DIR", str(tmp_path / "c"))
    assert compose(["experiment=rcf_av_tiny"]).seed == 7
    monkeypatch.setenv("AVIS_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no train.yaml"):
        compose([])
