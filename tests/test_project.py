"""The project's own contract: README commands, CI, the console script's dispatch and error style."""

import re

import pytest

from avis import cli as avis_cli
from avis.errors import InputError
from tests.conftest import REPO


def _readme_commands():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_readme_top_gives_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    top = readme.split("## ", 1)[0]
    cmds = [line.strip() for b in re.findall(r"```bash\n(.*?)```", top, re.S) for line in b.splitlines() if line.strip()]
    assert len(cmds) == 2
    main_cmd, test_cmd = cmds
    assert ".venv" in main_cmd and ".venv" in test_cmd
    assert "pytest" in test_cmd
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines, "the README's test command must be a line of .ci/run"


def test_every_command_of_the_design_is_registered():
    expected = {"synth", "build", "inspect", "train", "eval", "infer", "score", "ttest", "export", "demo", "view", "stream"}
    assert set(avis_cli.COMMANDS) == expected
    readme = (REPO / "README.md").read_text()
    for name in expected:
        assert f"`avis {name}" in readme, f"README does not document avis {name}"


def test_help_lists_commands(capsys):
    assert avis_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in avis_cli.COMMANDS:
        assert f"  {name} " in out


def test_unknown_command_exits_2(capsys):
    assert avis_cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_input_error_is_one_line_without_traceback(monkeypatch, capsys, tmp_path):
    import types

    fake = types.ModuleType("fake_cmd")
    fake.add_arguments = lambda p: None

    def run(args):
        raise InputError("truncated moov atom", tmp_path / "bad.mp4")

    fake.run = run
    monkeypatch.setattr(avis_cli, "_load", lambda name: fake)
    assert avis_cli.main(["build"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "bad.mp4: truncated moov atom" in err
    # --debug shows the traceback
    assert avis_cli.main(["build", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_console_script_runs_in_a_subprocess(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("avis ")


@pytest.mark.parametrize("path", ["avis", "data_tools", "configs", "annotations", "scripts", "tests"])
def test_top_level_layout(path):
    assert (REPO / path).is_dir()
