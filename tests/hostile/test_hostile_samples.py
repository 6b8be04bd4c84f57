"""Shards that lie (issue 21): tar members stored sparse or declaring gigabytes, a FLAC header claiming 256 GiB,
a JPEG header claiming 20000 x 20000, sample JSON claiming a billion frames or 60000 x 60000 pixels, and
malformed sample JSON of every kind, against ``avis inspect``, ``avis eval`` and training.

Each is one clean line naming the shard and the sample, within 2 GiB of address space
beyond the toolkit's own footprint; training skips the bad sample (or video) with a warning and goes on with
the good one after it in the same shard, or stops with the line under ``data.train.on_error=fail``."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest

from avis.data import ShardSource
from avis.data.clips import ClipStream
from avis.engine import checkpoint as ckpt_io
from avis.errors import InputError
from tests.conftest import REPO, TOY
from tests.hostile import samples as S
from tests.hostile.conftest import call, error_line

TOY_CATEGORIES = [{"id": 1, "name": "toy0"}, {"id": 2, "name": "toy1"}]
_FAKE = {"video_id": 1, "key": "00000001", "num_frames": 3, "frame_times": [0.0, 0.2, 0.4], "width": 8, "height": 6,
         "has_audio": True, "sample_rate": 16000, "num_samples": 9600, "duration": 0.6, "instances": []}
MEMBER_CASES = ["sparse-member-3GiB", "sparse-member-900MB", "member-declaring-2GiB", "frame-larger-than-its-pixels",
                "frame-past-num-frames", "frame-missing", "no-metadata", "sound-missing"]
DECODE_CASES = ["flac-claiming-256GiB", "jpeg-claiming-20000x20000", "jpeg-claiming-9000x9000",
                "rle-covering-more-than-the-frame"]
JSON_CASES = ["json-" + k for k in S.meta_cases(_FAKE, "00000001")]
ALL_CASES = MEMBER_CASES + DECODE_CASES + JSON_CASES


@pytest.fixture(scope="module")
def lying(built, tmp_path_factory) -> dict[str, dict]:
    cases = S.make_cases(built, tmp_path_factory.mktemp("lying"))
    assert sorted(cases) == sorted(ALL_CASES)
    return cases


def test_the_corpus_is_bad_only_where_it_says(built, lying, tmp_path):
    """The good sample after each bad one reads back; the craft itself is right (a sparse member expands to its
    declared size for tarfile, the patched headers say what they should)."""
    import io
    import tarfile

    import soundfile as sf
    from PIL import Image

    raw = S.sparse_member("x.jpg", 3 * S.GiB) + b"\0" * 1024
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as t:
        (m,) = list(t)
        assert m.issparse() and m.isreg() and m.size == 3 * S.GiB
    members = dict(S.read_members(lying["flac-claiming-256GiB"]["shard"]))
    assert sf.info(io.BytesIO(members["00000001.audio.flac"])).frames == (1 << 36) - 1  # 256 GiB as float32
    members = dict(S.read_members(lying["jpeg-claiming-20000x20000"]["shard"]))
    Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
    try:
        assert Image.open(io.BytesIO(members["00000001.00000.jpg"])).size == (20000, 20000)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    good = [v.video_id for v in ShardSource(str(lying["json-60000x60000"]["shard"]), categories=[]).videos(
        str(lying["json-60000x60000"]["shard"]))]
    assert good == [2]


@pytest.mark.parametrize("case", MEMBER_CASES + JSON_CASES + ["flac-claiming-256GiB"])
def test_inspect(case, lying, capsys):
    shard = lying[case]["shard"]
    rc, _, err = call(capsys, "inspect", shard)
    error_line(rc, err, "inspect", shard, r"sample 00000001: " + lying[case]["what"])
    assert rc == 2


@pytest.mark.parametrize("case", ["jpeg-claiming-20000x20000", "jpeg-claiming-9000x9000",
                                  "rle-covering-more-than-the-frame"])
def test_inspect_reads_no_frames(case, lying, capsys):
    rc, out, err = call(capsys, "inspect", lying[case]["shard"])
    assert rc == 0, err
    assert [json.loads(ln)["video_id"] for ln in out.splitlines()] == [1, 2]


@pytest.mark.parametrize("case", MEMBER_CASES[:3] + DECODE_CASES + ["json-billion-frames", "json-60000x60000",
                                                                     "json-frame-times-nan"])
def test_eval(case, lying, toy_checkpoint, tmp_path, capsys):
    shard = lying[case]["shard"]
    (tmp_path / "metrics.json").write_text("earlier output\n")
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", shard, "--out", tmp_path)
    error_line(rc, err, "eval", shard, r"sample 00000001: .*" + lying[case]["what"])
    assert rc == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert (tmp_path / "metrics.json").read_text() == "earlier output\n"


@pytest.mark.parametrize("case", ALL_CASES)
def test_training_skips_the_bad_sample_and_goes_on(case, lying, caplog):
    """The training source skips the bad sample (read cases) or the training clips the bad video (decode
    cases) with a warning naming the shard and the sample, and trains on the good video after it; with
    ``on_error=fail`` it stops with the same error."""
    shard, what, stage = str(lying[case]["shard"]), lying[case]["what"], lying[case]["stage"]
    with caplog.at_level(logging.WARNING):
        if case == "member-declaring-2GiB":  # its 2 GiB swallow the rest of the shard: no video is left to train on
            src = ShardSource([shard], categories=TOY_CATEGORIES)
            assert [v.video_id for v in src.videos(shard)] == []
        else:
            stream = ClipStream(ShardSource([shard], categories=TOY_CATEGORIES), clip_length=2, batch_size=1,
                                shuffle_buffer=1, clips_per_video=1)
            assert [b["video_ids"][0] for b, _ in itertools.islice(stream.batches(), 2)] == [2, 2]
    warned = [r.getMessage() for r in caplog.records if shard in r.getMessage()]
    skip = "skipping a video: " if stage.startswith("decode") else "skipping this sample: "
    assert warned and warned[0].startswith(skip + shard + ": sample 00000001: ") and re.search(what, warned[0])
    strict = ClipStream(ShardSource([shard], categories=TOY_CATEGORIES, on_error="fail"), clip_length=2,
                        batch_size=1, shuffle_buffer=1)
    with pytest.raises(InputError, match=what):
        list(itertools.islice(strict.batches(), 2))


def test_valid_variants_are_accepted(built, tmp_path):
    """An annotated instance, per-frame ``sounding`` flags, a string video id with extra keys, and the JSON
    written last (webdataset's TarWriter orders a sample's members by name): read and decoded."""
    first = S.read_members(built / "shard-000000.tar")
    meta = json.loads(first[0][1])
    for name, data in S.valid_meta_variants(meta).items():
        shard = S.write_tar(tmp_path / f"{name}.tar", [(n, data if n.endswith(".json") else d) for n, d in first])
        (v,) = [x.load() for x in ShardSource(str(shard), categories=TOY_CATEGORIES).videos(str(shard), strict=True)]
        assert v.num_frames == meta["num_frames"] and v.frames.shape[0] == meta["num_frames"], name
        if name != "string-id-and-extra-keys":
            assert v.instances[0].masks.sum() > 0 and v.instances[0].present.all()
    last = S.write_tar(tmp_path / "json-last.tar", sorted(first, key=lambda m: m[0].split(".", 1)[1]))
    assert S.read_members(last)[-1][0].endswith(".json")
    (v,) = [x.load() for x in ShardSource(str(last), categories=[]).videos(str(last), strict=True)]
    assert v.num_frames == meta["num_frames"]
    # members read before their JSON are bounded by it afterwards
    big = [(n, b"\xff" * (4 * meta["width"] * meta["height"] + (1 << 20) + 1) if n.endswith(".00001.jpg") else d)
           for n, d in sorted(first, key=lambda m: m[0].split(".", 1)[1])]
    shard = S.write_tar(tmp_path / "json-last-big.tar", big)
    with pytest.raises(InputError, match=r"sample 00000001: member 00001\.jpg is \d+ bytes, more than its metadata"):
        list(ShardSource(str(shard), categories=[]).videos(str(shard), strict=True))


def test_avis_train_skips_bad_shards_among_good_ones(built, lying, tmp_path, capsys):
    """``avis train`` on 2 good shards and 4 bad ones (a sparse member, a sample claiming 60000 x 60000, malformed
    JSON, a JPEG claiming 20000 x 20000): it finishes, warning about each; ``on_error=fail`` stops with the line."""
    d = tmp_path / "shards"
    d.mkdir()
    for name in ("shard-000000.tar", "shard-000001.tar", "manifest.json"):
        shutil.copy(built / name, d / name)
    bad = ["sparse-member-3GiB", "json-60000x60000", "json-instance-category-string", "jpeg-claiming-20000x20000"]
    for i, case in enumerate(bad):
        shutil.copy(lying[case]["shard"], d / f"shard-{i + 2:06d}.tar")
    common = ["train", "experiment=toy_av", TOY, "data=shards", f"data.train.pattern={d}", "data.batch_size=1",
              "data.num_workers=0", "data.scales=[24]", "data.shuffle_buffer=64", "data.clips_per_video=2",
              "trainer.max_steps=3", "trainer.eval_every=0", "trainer.progress=false", "trainer.tensorboard=false"]
    rc, out, err = call(capsys, *common, f"hydra.run.dir={tmp_path / 'warn'}")
    assert rc == 0, err
    assert ckpt_io.load(tmp_path / "warn" / "checkpoints" / "last.pt")["step"] == 3
    log = out + err
    for i, case in enumerate(bad):
        assert re.search(rf"skipping (this sample|a video): {d / f'shard-{i + 2:06d}.tar'}: sample 00000001: .*"
                         + lying[case]["what"], log), (case, log[-3000:])
    assert "Traceback" not in log
    rc, out, err = call(capsys, *common, f"hydra.run.dir={tmp_path / 'fail'}", "data.train.on_error=fail")
    line = error_line(rc, err, "train", None, r"sample 00000001: ")
    assert any(str(d / f"shard-{i + 2:06d}.tar") in line for i in range(len(bad)))


CHILD = r"""
import json, resource, sys
import torch, avis.cli, avis.engine.evaluate, avis.engine.session, hydra.utils  # the footprint

def vm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) << 10

cap = vm() + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
for argv in json.loads(sys.argv[1]):
    rc = avis.cli.main(argv)
    print(json.dumps({"argv": argv, "rc": rc}), flush=True)
    print("--- end of case", file=sys.stderr, flush=True)
"""


def test_refusals_within_2_gib(lying, toy_checkpoint, tmp_path):
    """Every case through ``avis inspect`` and ``avis eval`` in one process whose address space may grow by at
    most 2 GiB beyond the toolkit's footprint (torch alone maps about 3 GiB): the clean line each, exit 2 (0
    for ``inspect`` on the frame-decoding cases: it reads no frames); a hang fails the subprocess timeout."""
    argvs, expect = [], []
    for case in ALL_CASES:
        shard, what, stage = lying[case]["shard"], lying[case]["what"], lying[case]["stage"]
        argvs.append(["inspect", str(shard)])
        expect.append(("inspect", case, shard, what, 0 if stage == "decode" else 2))
        argvs.append(["eval", "--checkpoint", str(toy_checkpoint), "--shards", str(shard), "--out",
                      str(tmp_path / case)])
        expect.append(("eval", case, shard, what, 2))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # (the toy checkpoint trusted: conftest.py)
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argvs)], capture_output=True, text=True, env=env,
                       timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith('{"argv"')]
    assert len(rows) == len(argvs), p.stderr[-3000:]
    errs = p.stderr.split("--- end of case\n")
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr and "MemoryError" not in p.stderr
    for (command, case, shard, what, code), row, err in zip(expect, rows, errs):
        assert row["rc"] == code, (command, case, err)
        if code:
            lines = [ln for ln in err.splitlines() if f"avis {command}: error: " in ln]
            assert len(lines) == 1, (command, case, err)
            assert lines[0].startswith(f"avis {command}: error: {shard}: sample 00000001: "), lines[0]
            assert re.search(what, lines[0]), (command, case, lines[0])
