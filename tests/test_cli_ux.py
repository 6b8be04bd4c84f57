"""The command line as a user meets it (issue 23): --debug anywhere, a reader that stops early, hydra's
config errors as one line with the closest names, ``avis train --help``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from avis import cli as avis_cli
from tests.conftest import REPO, TOY


def test_debug_is_honoured_before_the_command_and_among_overrides(tmp_path, capsys):
    missing = str(tmp_path / "nope.json")
    assert avis_cli.main(["--debug", "score", "--gt", missing, "--results", missing]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "avis score: error: " in err and "unrecognized arguments" not in err
    assert avis_cli.main(["score", "--gt", missing, "--results", missing]) == 2
    assert "Traceback" not in capsys.readouterr().err
    # among hydra overrides (argparse's REMAINDER would hand it to hydra as an override)
    rc = avis_cli.main(["train", "experiment=toy_av", TOY, "trainer.max_steps=1", f"hydra.run.dir={tmp_path}",
                        f"trainer.resume={tmp_path / 'nope.pt'}", "--debug"])
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint not found" in err and "Traceback" in err


def test_a_reader_that_stops_early_is_not_an_error(tmp_path):
    """``avis inspect SHARDS | head -1``: no 'Broken pipe' line, no Python report of a failed flush."""
    from data_tools.synth import generate

    generate(tmp_path / "s", num_videos=3, seed=0, size=(32, 32), frames=3, fps=6.0, progress=False,
             val_fraction=0.0)
    assert avis_cli.main(["build", "--videos", str(tmp_path / "s"), "--annotations", str(tmp_path / "s" / "train.json"),
                          "--out", str(tmp_path / "shards")]) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "avis", "inspect", *[str(tmp_path / "shards")] * 50]
    # the reader closes its end before the first line is written: every write fails
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == avis_cli.EXIT_BROKEN_PIPE and err == ""
    # and through a shell pipeline, as a user types it
    sh = subprocess.run(["bash", "-c", " ".join(f"'{a}'" for a in args) + " | head -1"], capture_output=True,
                        text=True, env=env)
    assert sh.returncode == 0 and sh.stdout.count("\n") == 1 and '"video_id": 1' in sh.stdout
    assert "Broken pipe" not in sh.stderr and "Exception ignored" not in sh.stderr


@pytest.mark.parametrize("override, expected", [
    ("experiment=rcf_av_tny", "'rcf_av_tny' is not an option of 'experiment'; closest: rcf_av_tiny"),
    ("trainer.max_step=5", "'trainer.max_step' is not a key of the config; closest: trainer.max_steps"),
    ("data.train.patern=x", "'data.train.patern' is not a key of the config; closest: data.train.pattern"),
    ("model=rcf_r5", "'rcf_r5' is not an option of 'model'; closest: rcf_r50"),
    ("trainer.max_steps=[", "cannot parse the override 'trainer.max_steps=['"),
])
def test_config_errors_are_one_line_with_the_closest_names(override, expected, tmp_path, capsys):
    rc = avis_cli.main(["train", override, f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avis train: error: ") and expected in lines[0], err
    assert not (tmp_path / "checkpoints").exists()


def test_config_error_with_debug_shows_the_traceback(tmp_path, capsys):
    assert avis_cli.main(["train", "experiment=nope", f"hydra.run.dir={tmp_path}", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "'nope' is not an option of 'experiment'" in err


def test_train_help_lists_the_experiments_and_the_common_keys(capsys):
    with pytest.raises(SystemExit) as e:
        avis_cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("rcf_av_tiny", "rcf_visual", "crossvis_tiny", "efficientvis"):
        assert name in out
    for key in ("data.train.pattern", "trainer.max_steps", "hydra.run.dir", "data.val_pattern",
                "trainer.resume", "trainer.best_metric"):
        assert key in out


def test_values_no_builder_accepts_are_one_line(tmp_path, capsys):
    # a mandatory value left unset (data.train.pattern: ??? in configs/data/shards.yaml)
    assert avis_cli.main(["train", f"hydra.run.dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["avis train: error: data.train.pattern is not set: give data.train.pattern=... (the training "
                   "shards: a folder, glob or URL)"]
    # shards that are not there: the reader's own line, not hydra's report of the builder's exception
    assert avis_cli.main(["train", "experiment=rcf_av_tiny", f"data.train.pattern={tmp_path / 'nope'}",
                          f"hydra.run.dir={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avis train: error: ") and "nope" in err[0]
    assert "Set the environment variable HYDRA_FULL_ERROR" not in "".join(err)


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_steps=abc", "trainer.max_steps='abc': must be an integer"),
    ("trainer.eval_every=1.5", "trainer.eval_every=1.5: must be an integer"),
    ("trainer.progress=maybe", "trainer.progress='maybe': must be true or false"),
    ("data.batch_size=0", "data.batch_size=0: must be at least 1"),
    ("seed=-1", "seed=-1: must be at least 0"),
])
def test_engine_values_of_the_wrong_type_are_one_line_before_anything_is_built(override, expected, tmp_path,
                                                                                capsys):
    """Values hydra composes as given (a string where a count belongs) are refused naming the key, not as an
    internal ValueError from deep in the loop; the shards named do not even exist, so the check comes first."""
    rc = avis_cli.main(["train", "experiment=rcf_av_tiny", override, f"data.train.pattern={tmp_path / 'none'}",
                        f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.strip().splitlines() == [f"avis train: error: {expected}"]
    assert not (tmp_path / "run" / "checkpoints").exists()
