"""Exports under hostile names: colliding video names (one output per video, never overwritten), category
names holding control characters (valid CVAT XML, nothing raw on the terminal)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import av
import pytest

from data_tools.exporters.common import video_names
from data_tools.exporters.cvat import read_cvat
from tests.conftest import REPO
from tests.hostile import jsons
from tests.hostile.conftest import call
from tests.hostile.media import good

# ------------------------------------------------------------------------------------------------ class 3
# name -> the videos' video_file (None: a JPEG-folder video named by file_names)

NAME_CASES = {
    "same-stem-two-folders": ["x/a.mp4", "y/a.mp4"],
    "same-stem-three-folders": ["x/a.mp4", "y/a.mp4", "z/a.mp4"],
    "case-only": ["A.mp4", "a.mp4"],
    "suffix-equals-another-stem": ["x/a.mp4", "y/a.mp4", "a_2.mp4", "a_3.mp4"],
    "same-after-sanitizing": ["a b.mp4", "a_b.mp4", "a+b.mp4"],
    "same-stem-other-extension": ["a.mp4", "a.mkv", "a.MP4"],
    "long-names-same-prefix": ["x" * 300 + "1.mp4", "x" * 300 + "2.mp4"],
    "dots-only": ["..mp4", "video.mp4", "._.mp4"],
    "reserved-names": ["con.mp4", "CON.mkv", "nul.mp4"],
    "fallback-equals-a-stem": [None, "video_1.mp4", "video_2.mp4"],
    "jpeg-folders-same-name": ["@x/f", "@y/f"],
}


def _names_gt(files: list) -> dict:
    """A ground truth of len(files) videos (16 x 20, 3 frames) with those media names, and results (one track
    per video, its mask at a different place in each video so that outputs can be told apart)."""
    base = jsons.valid_gt()
    videos = []
    for i, f in enumerate(files, start=1):
        v = {**copy.deepcopy(base["videos"][0]), "id": i}
        if f is None:
            v["file_names"] = [f"{t:05d}.jpg" for t in range(jsons.T)]
        elif f.startswith("@"):
            v["file_names"] = [f"{f[1:]}/{t:05d}.jpg" for t in range(jsons.T)]
        else:
            v["video_file"] = f
        videos.append(v)
    return {"videos": videos, "annotations": [], "categories": base["categories"]}


def _results(gt: dict) -> list[dict]:
    return [{"video_id": v["id"], "category_id": 1, "score": 0.9,
             "segmentations": [jsons._rle(1 + (v["id"] % 8), 1 + (v["id"] % 12)) for _ in range(v["length"])]}
            for v in gt["videos"]]


@pytest.mark.parametrize("case", list(NAME_CASES))
def test_export_names_are_unique_and_stable(case, tmp_path, capsys):
    gt = _names_gt(NAME_CASES[case])
    n = len(gt["videos"])
    for order, g in (("given", gt), ("reversed", {**gt, "videos": gt["videos"][::-1]})):
        (tmp_path / f"gt_{order}.json").write_text(json.dumps(g))
        (tmp_path / "res.json").write_text(json.dumps(_results(gt)))
        out = tmp_path / order
        rc, _, err = call(capsys, "export", "--gt", tmp_path / f"gt_{order}.json", "--results", tmp_path / "res.json",
                          "--format", "png,cvat", "--out", out, "--score-threshold", "0")
        assert rc == 0, err
        folders = sorted(p for p in (out / "png").iterdir())
        assert len(folders) == n, [p.name for p in folders]
        ids = sorted(json.loads((p / "instances.json").read_text())["video_id"] for p in folders)
        assert ids == list(range(1, n + 1))  # one folder per video: none overwrote another
        xmls = sorted((out / "cvat").glob("*.xml"))
        assert len(xmls) == n
        assert sorted(int(ET.parse(p).getroot().findtext("meta/task/id")) for p in xmls) == ids
        for p in [*folders, *xmls]:
            assert len(p.name.encode()) <= 255 and p.name.casefold() not in {"con", "nul", "con.xml", "nul.xml"}
        # each video's own masks: its track is where _results put it for that id
        for p in folders:
            meta = json.loads((p / "instances.json").read_text())
            tracks = read_cvat(out / "cvat" / f"{p.name}.xml", g)
            assert [t["video_id"] for t in tracks] == [meta["video_id"]]
    assert sorted(p.name for p in (tmp_path / "given" / "png").iterdir()) == \
        sorted(p.name for p in (tmp_path / "reversed" / "png").iterdir())  # the same names in any order
    names = video_names(gt)
    assert len({v.casefold() for v in names.values()}) == n


def _frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_overlays_of_videos_with_the_same_name(tmp_path, capsys, toy_checkpoint):
    """``x/a.mp4`` and ``y/a.mp4`` (different lengths): two overlays, from ``avis export`` and ``avis infer``."""
    vids = tmp_path / "videos"
    (vids / "x").mkdir(parents=True)
    (vids / "y").mkdir()
    good(vids / "x" / "a.mp4", num_frames=12)  # 0.8 s: 4 overlay frames at 5 fps
    good(vids / "y" / "a.mp4", num_frames=30)  # 2 s: 10 frames
    gt = jsons.valid_gt(media=True)
    gt["videos"][0]["video_file"], gt["videos"][1]["video_file"] = "x/a.mp4", "y/a.mp4"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(jsons.valid_results(gt)))
    rc, _, err = call(capsys, "export", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json", "--format",
                      "overlay", "--videos", vids, "--out", tmp_path / "exp")
    assert rc == 0, err
    assert {p.name: _frames(p) for p in (tmp_path / "exp" / "overlay").iterdir()} == {"a_1.mp4": 4, "a_2.mp4": 10}
    rc, _, err = call(capsys, "infer", vids / "x" / "a.mp4", vids / "y" / "a.mp4", "--checkpoint", toy_checkpoint,
                      "--out", tmp_path / "inf", "--fps", 5)
    assert rc == 0, err
    assert {p.name: _frames(p) for p in (tmp_path / "inf" / "overlay").iterdir()} == {"a_1.mp4": 4, "a_2.mp4": 10}


# ------------------------------------------------------------------------------------------------ class 5
# control characters in names

CONTROL_NAMES = {
    "nul": "cat\x00", "bell": "dog\x07", "escape-sequence": "\x1b[31mred\x1b[0m", "clear-screen": "a\x1b[2J\x1b[H",
    "backspace": "abc\x08\x08", "form-feed": "x\x0cy", "del": "x\x7f", "c1-csi": "x\x9b31m", "c1-nel": "x\x85y",
    "newline": "two\nlines", "carriage-return": "over\rwrite", "lone-surrogate": "x\ud800y", "fffe": "x\ufffe",
    "bidi-override": "abc\u202edcba",
}


@pytest.fixture(scope="module")
def control_gt(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("control")
    gt = jsons.valid_gt()
    gt["categories"] = [{"id": i, "name": n} for i, n in enumerate(CONTROL_NAMES.values(), start=1)]
    gt["videos"][0]["file_names"] = [f"\x1b[2Jclip/{t:05d}.jpg" for t in range(jsons.T)]
    res = [{**r, "category_id": k + 1} for k, r in enumerate(jsons.valid_results())]
    res += [{"video_id": 1, "category_id": c, "score": 0.5, "segmentations": jsons.valid_results()[0]["segmentations"]}
            for c in range(4, len(CONTROL_NAMES) + 1)]
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "res.json").write_text(json.dumps(res))
    return root / "gt.json", root / "res.json", gt


def test_cvat_xml_is_valid_with_control_characters(control_gt, tmp_path, capsys):
    gt_path, res_path, gt = control_gt
    rc, _, err = call(capsys, "export", "--gt", gt_path, "--results", res_path, "--format", "cvat", "--out", tmp_path,
                      "--score-threshold", "0")
    assert rc == 0, err
    for xml in (tmp_path / "cvat").glob("*.xml"):
        root = ET.parse(xml).getroot()  # expat: a strict XML 1.0 parser
        labels = [lab.findtext("name") for lab in root.iter("label")]
        assert len(labels) == len(CONTROL_NAMES)
        for name in labels:
            assert all(c in "\t\n\r" or ord(c) >= 0x20 and not 0x7f <= ord(c) <= 0x9f for c in name), repr(name)
        assert "\\x1b[31mred\\x1b[0m" in labels and "cat\\x00" in labels
        ids = {t["category_id"] for t in read_cvat(xml, gt)}  # the names still map back to their categories
        assert ids and ids <= set(range(1, len(CONTROL_NAMES) + 1))
    xml1 = next(p for p in (tmp_path / "cvat").glob("*.xml") if ET.parse(p).getroot().findtext("meta/task/id") == "1")
    assert {t["category_id"] for t in read_cvat(xml1, gt)} == set(range(1, len(CONTROL_NAMES) + 1)) - {3}


RAW = ("\x1b", "\x07", "\x9b", "\x00", "\u202e", "\x08")


def _no_raw(text: str) -> None:
    for c in RAW:
        assert c not in text, (repr(c), text[-500:])


def test_terminal_gets_no_raw_control_characters(control_gt, tmp_path, capsys):
    """Names from a file reach stdout (the per-category table), stderr (log lines, error lines) escaped."""
    gt_path, res_path, gt = control_gt
    rc, out, err = call(capsys, "score", "--gt", gt_path, "--results", res_path, "--per-category")
    assert rc == 0, err
    _no_raw(out + err)
    assert "\\x1b[31mred\\x1b[0m" in out and "abc\\u202edcba" in out
    # an error line quoting a hostile path: one line, escaped
    bad = copy.deepcopy(gt)
    bad["videos"][1]["file_names"] = [f"/\x1b[2J\n/etc/{t}.jpg" for t in range(jsons.T)]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    rc, out, err = call(capsys, "export", "--gt", tmp_path / "bad.json", "--results", res_path, "--format", "png",
                        "--out", tmp_path / "o")
    assert rc == 2
    _no_raw(out + err)
    lines = [ln for ln in err.splitlines() if "avis export: error:" in ln]
    assert len(lines) == 1 and "\\x1b[2J\\n/etc" in lines[0]


def test_terminal_escaping_in_a_real_process(control_gt, tmp_path):
    """The same through ``python -m avis``, with the streams of a real process (not pytest's capture)."""
    gt_path, res_path, _ = control_gt
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "avis", "score", "--gt", str(gt_path), "--results", str(res_path),
                        "--per-category"], capture_output=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    _no_raw(out)
    assert "\\x1b[31mred" in out


def test_video_names_escape_nothing_raw():
    gt = _names_gt(["\x1b[2J.mp4", "a\u202eb.mp4"])
    assert all(c.isalnum() or c in "._-" for n in video_names(gt).values() for c in n)

