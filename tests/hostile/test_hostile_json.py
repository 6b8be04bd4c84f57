"""Bad annotation / results JSON against every command that reads them: one line, non-zero exit, outputs kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli
from tests.hostile.conftest import call, error_line

# case -> the part of the message that says what is wrong
GT_CASES = {
    "wrong-frame-count": r"frame count mismatch: 2 segmentations for a video of 3 frames",
    "unknown-category": r"unknown category_id 99",
    "rle-wrong-size": r"RLE size \[8, 8\] does not match the video's \[height, width\] \[16, 20\]",
    "duplicate-ids": r"annotation 1: duplicate annotation id",
    "missing-fields": r"missing 'height'.*missing 'segmentations'",
    "absurd-dimensions": r"'height' 100000 is beyond the 16384 pixel limit",
    "deep-nesting": r"JSON nested too deeply",
    "not-json": r"invalid JSON at line 1 column 13",
    "zero-byte": r"invalid JSON at line 1 column 1",
    "huge-string": r"file is 500000000 bytes, larger than the 100000000 byte limit",
}
RESULTS_CASES = {
    "unknown-video": r"result 0 video 777: unknown video_id",
    "unknown-category": r"result 0 video 1: unknown category_id 99",
    "wrong-frame-count": r"frame count mismatch: 4 segmentations for a video of 3 frames",
    "rle-wrong-size": r"RLE size \[8, 8\] does not match",
    "missing-fields": r"result 0: missing 'score'",
    "nan-score": r"'score' must be a finite number, got nan",
    "deep-nesting": r"JSON nested too deeply",
    "not-a-list": r"not a YTVIS results file",
    "huge-string": r"file is 500000000 bytes, larger than the 100000000 byte limit",
}


def _argv(command: str, gt, results, good_results, out_dir):
    """Arguments of ``command`` with its outputs under ``out_dir``; the output file each run would write."""
    if command == "score":
        return ["score", "--gt", gt, "--results", results, "--out", out_dir / "metrics.json"], out_dir / "metrics.json"
    if command == "ttest":
        return (["ttest", "--gt", gt, "--a", results, "--b", good_results, "--bootstrap", "0",
                 "--json", out_dir / "ttest.json"], out_dir / "ttest.json")
    return (["export", "--gt", gt, "--results", results, "--format", "ytvis,coco", "--out", out_dir],
            out_dir / "results.json")


@pytest.fixture(autouse=True)
def _small_json_limit(monkeypatch):
    # the 500 MB case must be refused by size, before a byte is read; the limit is configurable
    monkeypatch.setenv("AVIS_MAX_JSON_BYTES", str(100_000_000))


@pytest.mark.parametrize("command", ["score", "ttest", "export"])
@pytest.mark.parametrize("case", list(GT_CASES))
def test_bad_ground_truth(command, case, json_corpus, tmp_path, capsys):
    bad = json_corpus["bad_gt"][case]
    argv, output = _argv(command, bad, json_corpus["results"], json_corpus["results"], tmp_path)
    output.write_text("earlier output\n")
    rc, _, err = call(capsys, *argv)
    error_line(rc, err, command, bad, GT_CASES[case])
    assert rc == 2
    assert output.read_text() == "earlier output\n"  # a failed run leaves earlier outputs alone
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]  # and writes nothing else


@pytest.mark.parametrize("command", ["score", "ttest", "export"])
@pytest.mark.parametrize("case", list(RESULTS_CASES))
def test_bad_results(command, case, json_corpus, tmp_path, capsys):
    bad = json_corpus["bad_results"][case]
    argv, output = _argv(command, json_corpus["gt"], bad, json_corpus["results"], tmp_path)
    output.write_text("earlier output\n")
    rc, _, err = call(capsys, *argv)
    error_line(rc, err, command, bad, RESULTS_CASES[case])
    assert rc == 2
    assert output.read_text() == "earlier output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]


@pytest.mark.parametrize("command", ["score", "ttest", "export"])
def test_valid_inputs_pass(command, json_corpus, tmp_path, capsys):
    """The corpus is bad only where it says: the same command on the valid files succeeds and writes."""
    argv, output = _argv(command, json_corpus["gt"], json_corpus["results"], json_corpus["results"], tmp_path)
    rc, _, err = call(capsys, *argv)
    assert rc == 0, err
    assert output.read_text() != ""


def test_huge_file_is_refused_before_reading(json_corpus, tmp_path):
    """In a real process with its address space capped at 1.5 GiB: reading the 500 MB file would need several
    times that, so only a size check before reading can answer it cleanly; the default limit does."""
    env = {k: v for k, v in os.environ.items() if k != "AVIS_MAX_JSON_BYTES"}
    cap = 1536 << 20
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap})); "
            "from avis.io.ytvis import load_json; from avis.errors import InputError\n"
            "try:\n    load_json(sys.argv[1])\nexcept InputError as e:\n    print(e)\n")
    env["PYTHONPATH"] = str(REPO)
    p = subprocess.run([sys.executable, "-c", code, str(json_corpus["bad_gt"]["huge-string"])], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "file is 500000000 bytes, larger than the 268435456 byte limit for JSON" in p.stdout


def test_limit_is_configurable(json_corpus, monkeypatch):
    from avis.errors import ConfigError, InputError
    from avis.io.ytvis import load_json

    monkeypatch.setenv("AVIS_MAX_JSON_BYTES", "10")
    with pytest.raises(InputError, match="larger than the 10 byte limit"):
        load_json(json_corpus["gt"])
    monkeypatch.setenv("AVIS_MAX_JSON_BYTES", "lots")
    with pytest.raises(ConfigError, match="AVIS_MAX_JSON_BYTES"):
        load_json(json_corpus["gt"])
    monkeypatch.setenv("AVIS_MAX_JSON_BYTES", str(1 << 20))
    assert load_json(json_corpus["gt"])["videos"]


@pytest.mark.parametrize("command", ["score", "ttest", "export"])
def test_real_process_one_line_and_debug_traceback(command, json_corpus, tmp_path):
    """Through ``python -m avis``: one stderr line and exit 2; --debug adds the traceback."""
    bad = json_corpus["bad_results"]["unknown-video"]
    argv, _ = _argv(command, json_corpus["gt"], bad, json_corpus["results"], tmp_path)
    p = run_cli(*argv)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(f"avis {command}: error: {bad}: ")
    assert "Traceback" not in p.stderr
    d = run_cli(*argv, "--debug")
    assert d.returncode == 2 and "Traceback" in d.stderr


def test_results_zip_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    """The YTVIS server zip reader checks the declared size of results.json against the JSON limit."""
    import zipfile

    from avis.errors import InputError
    from data_tools.exporters.ytvis import read_results
    from tests.hostile import jsons

    bomb = tmp_path / "results.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("results.json", "[" + " " * 5_000_000 + "]")  # 5 MB of spaces: a few KB compressed
    assert bomb.stat().st_size < 50_000
    monkeypatch.setenv("AVIS_MAX_JSON_BYTES", str(1_000_000))
    with pytest.raises(InputError, match="results.json inflates to 5000002 bytes, larger than the 1000000 byte"):
        read_results(bomb, jsons.valid_gt())
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(InputError, match="not a zip file"):
        read_results(tmp_path / "fake.zip", jsons.valid_gt())
