"""Training you can watch (issue 23): what ``avis train`` and ``avis eval`` print, train.log, checkpoints/best.pt,
progress bars with totals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from avis import cli as avis_cli
from avis.engine import checkpoint as ckpt_io
from avis.engine.logs import read_jsonl
from tests.conftest import REPO, TOY

FAST = ["trainer.tensorboard=false", TOY]


def _train(run, *extra, progress=True) -> subprocess.CompletedProcess:
    """``avis train`` of the toy method in a subprocess: hydra's job logging as a user gets it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "avis", "train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.max_steps=6",
            "trainer.log_every=2", "trainer.ckpt_every=2", "trainer.eval_every=3",
            f"trainer.progress={str(progress).lower()}", *FAST, *extra]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def test_a_run_says_what_it_does_and_where_it_went(tmp_path):
    run = tmp_path / "run"
    p = _train(run)
    assert p.returncode == 0, p.stderr[-3000:]
    console = p.stderr.replace("\r", "\n")
    lines = [ln for ln in console.splitlines() if ln.strip() and not ln.startswith("train:")]
    # at the start: the run folder and one line of model / data / steps
    assert lines[0] == f"run folder {run}"
    assert re.fullmatch(r"model ToyVIS \(0\.\d\dM parameters, audio on\) \| data ToyVideos \(2 categories, 5 fps\) \| "
                        r"steps 0 -> 6, batch 4 \| eval every 3 on ToyVideos, best by AP \| cpu", lines[1]), lines[1]
    # at each evaluation: the metrics table
    evals = read_jsonl(run / "metrics.jsonl", kind="eval")
    assert [e["step"] for e in evals] == [3, 6]
    for e in evals:
        k = lines.index(next(ln for ln in lines if ln.startswith(f"evaluation at step {e['step']} (2 videos, 12 "
                                                                      "frames")))
        assert lines[k + 1].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "HOTA",
                                        "DetA", "AssA", "LocA"]
        assert float(lines[k + 2].split()[0]) == pytest.approx(e["AP"] * 100, abs=0.051)
    # at the end: time, the best evaluation, where everything is
    best = max(evals, key=lambda e: (e["AP"], -e["step"]))
    k = next(i for i, ln in enumerate(lines) if ln.startswith("done: step 6/6 in "))
    assert lines[k + 1] == f"best AP {best['AP'] * 100:.1f} at step {best['step']}: {run / 'checkpoints' / 'best.pt'}"
    assert lines[k + 2] == f"checkpoints: {run / 'checkpoints'} (last.pt = step 6)"
    assert lines[k + 3] == f"evaluations: {run / 'eval'}"
    assert lines[k + 4].startswith(f"logs: {run / 'train.log'}, {run / 'metrics.jsonl'}")
    # the bar shows the steps' scalars: they are not printed as lines, but train.log has them, with times
    assert not any(ln.startswith("step 2/6") for ln in lines)
    log = (run / "train.log").read_text()
    for step in (2, 4, 6):
        assert re.search(rf"\]\[avis\.train\]\[INFO\] - step {step}/6  loss \d+\.\d{{4}}", log), log
    assert "run folder" in log and "evaluation at step 3" in log and "done: step 6/6" in log
    # best.pt: the checkpoint of the best evaluation (at step 3 there is no step checkpoint: written; at 6 linked)
    record = json.loads((run / "checkpoints" / "best.json").read_text())
    assert record == {"metric": "AP", "value": best["AP"], "step": best["step"]}
    assert ckpt_io.load(run / "checkpoints" / "best.pt")["step"] == best["step"]


def test_without_a_bar_the_steps_are_lines(tmp_path):
    p = _train(tmp_path / "run", "trainer.eval_every=0", progress=False)
    assert p.returncode == 0, p.stderr[-3000:]
    steps = [ln for ln in p.stderr.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in steps] == ["2/6", "4/6", "6/6"]
    assert "eta" in steps[0] and "eta" not in steps[-1]
    assert "no evaluation (set data.val_pattern and trainer.eval_every" in p.stderr
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_best_checkpoint_follows_the_chosen_metric_and_survives_resume(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.log_every=2", "trainer.ckpt_every=2",
            "trainer.eval_every=2", "trainer.progress=false", "trainer.best_metric=AR10", *FAST]
    assert avis_cli.main([*base, "trainer.max_steps=4"]) == 0
    evals = read_jsonl(run / "metrics.jsonl", kind="eval")
    best = max(evals, key=lambda e: (e["AR10"], -e["step"]))
    record = json.loads((run / "checkpoints" / "best.json").read_text())
    assert record == {"metric": "AR10", "value": best["AR10"], "step": best["step"]}
    assert os.path.samefile(run / "checkpoints" / "best.pt", run / "checkpoints" / f"step_{best['step']:08d}.pt")
    # resumed: the best so far is kept unless a later evaluation beats it
    assert avis_cli.main([*base, "trainer.max_steps=8", "trainer.resume=true"]) == 0
    evals = read_jsonl(run / "metrics.jsonl", kind="eval")
    best = max(evals, key=lambda e: (e["AR10"], -e["step"]))
    assert json.loads((run / "checkpoints" / "best.json").read_text())["step"] == best["step"]
    # a fresh run in the same folder does not keep the old run's best
    assert avis_cli.main([*base, "trainer.max_steps=2", "trainer.eval_every=0"]) == 0
    assert not (run / "checkpoints" / "best.pt").exists() and not (run / "checkpoints" / "best.json").exists()
    # a metric the evaluation does not have: one line with the closest
    capsys.readouterr()
    assert avis_cli.main([*base, "trainer.max_steps=2", "trainer.best_metric=Ap"]) == 2
    err = capsys.readouterr().err
    assert "trainer.best_metric='Ap' is not a metric of the evaluation; closest: AP" in err


def test_eval_prints_the_table_and_a_bar_with_its_total(tmp_path, capsys):
    run = tmp_path / "run"
    assert avis_cli.main(["train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.max_steps=2",
                          "trainer.eval_every=0", "trainer.progress=false", *FAST]) == 0
    capsys.readouterr()
    assert avis_cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out",
                          str(tmp_path / "ev")]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    assert f"AP  @[IoU=0.50:0.95 | area=   all | maxDets=100] = {metrics['AP']:.3f}   AP" in out
    assert f"HOTA  @[alpha=0.05:0.95 | class-averaged ] = {metrics['HOTA']:.3f}   HOTA" in out
    assert "2 videos, 12 frames, model " in out and "checkpoint " in out
    assert f"written to {tmp_path / 'ev'}: results.json, gt.json, metrics.json, samples.csv" in out
    assert "0/2 [" in err and "0video" not in err  # the bar knows its total
    assert avis_cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out",
                          str(tmp_path / "ev"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == metrics


def test_count_videos_reads_the_manifest_of_the_shards_it_reads(tmp_path):
    from avis.data.shards import ShardSource
    from avis.engine.evaluate import count_videos, iter_eval_videos
    from data_tools.synth import generate

    generate(tmp_path / "s", num_videos=4, seed=0, size=(32, 32), frames=3, fps=6.0, progress=False,
             val_fraction=0.0)
    assert avis_cli.main(["build", "--videos", str(tmp_path / "s"), "--annotations", str(tmp_path / "s" / "train.json"),
                          "--out", str(tmp_path / "sh"), "--shard-size", "1"]) == 0
    for pattern, limit in ((tmp_path / "sh", None), (tmp_path / "sh" / "shard-00000[01].tar", None),
                           (tmp_path / "sh", 3)):
        src = ShardSource(str(pattern))
        assert count_videos(src, limit) == sum(1 for _ in iter_eval_videos(src, limit))
    assert count_videos(ShardSource(str(tmp_path / "sh" / "shard-00000[01].tar"))) == 2
    assert ShardSource(str(tmp_path / "sh")).fps == 6.0
