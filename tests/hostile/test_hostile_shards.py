"""Bad shards and checkpoints against ``avis inspect`` / ``avis eval`` / ``avis infer``, and the training
loader's choice between skipping a corrupt shard (with a warning) and failing."""

from __future__ import annotations

import io
import itertools
import json
import logging
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from avis.data.shards import ShardSource
from avis.engine import checkpoint as ckpt_io
from avis.errors import InputError
from tests.conftest import TOY
from tests.hostile.conftest import call, error_line

SHARD_CASES = {
    "truncated": r"unreadable shard \(unexpected end of data\)",
    "dotdot-member": r"member name '\.\./\w+\.json' is absolute or goes up with '\.\.'",
    "absolute-member": r"member name '/etc/\w+\.json' is absolute or goes up with '\.\.'",
    "zero-byte": r"unreadable shard \(empty file\)",
    "not-a-tar": r"unreadable shard",
}


@pytest.mark.parametrize("case", list(SHARD_CASES))
def test_inspect(case, bad_shards, capsys):
    rc, _, err = call(capsys, "inspect", bad_shards[case])
    error_line(rc, err, "inspect", bad_shards[case], SHARD_CASES[case])
    assert rc == 2


def test_inspect_good_shards(built, capsys):
    rc, out, err = call(capsys, "inspect", built)
    assert rc == 0, err
    assert [json.loads(ln)["video_id"] for ln in out.splitlines()] == [1, 2]


@pytest.mark.parametrize("case", list(SHARD_CASES))
def test_eval(case, bad_shards, toy_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("earlier output\n")
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", bad_shards[case], "--out", out)
    error_line(rc, err, "eval", bad_shards[case], SHARD_CASES[case])
    assert rc == 2
    assert (out / "metrics.json").read_text() == "earlier output\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_eval_good_shards(built, toy_checkpoint, tmp_path, capsys):
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", built, "--out", tmp_path)
    assert rc == 0, err
    assert json.loads((tmp_path / "metrics.json").read_text())["timing"]["frames"] > 0


# ------------------------------------------------------------------------------------------------ checkpoints

PAYLOAD = r"not a loadable checkpoint \(it holds pickled objects other than tensors and plain containers"

class _Payload:
    """Unpickling this runs ``Path(marker).write_text("pwned")``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (Path(self.marker), "pwned"))


def _bad_checkpoints(root, good) -> dict:
    """name -> (file, marker that must never be written, expected message)."""
    cases = {}
    m = root / "marker_torch"
    torch.save({"format": ckpt_io.FORMAT, "step": 1, "model": _Payload(m)}, root / "payload_torch.pt")
    cases["pickle-payload-torch-zip"] = (root / "payload_torch.pt", m, PAYLOAD)
    m = root / "marker_pickle"
    with open(root / "payload_pickle.pt", "wb") as f:
        pickle.dump({"format": ckpt_io.FORMAT, "model": _Payload(m)}, f)
    cases["pickle-payload-legacy"] = (root / "payload_pickle.pt", m, PAYLOAD)
    # a loadable checkpoint whose config would make hydra run arbitrary code when the model is built
    m = root / "marker_config"
    state = torch.load(good, weights_only=True)
    state["config"] = state["config"].replace(
        "_target_: tests.toy.ToyVIS",
        f"_target_: pathlib.Path.write_text\n  _args_: ['{m}', 'pwned']\n  _partial_: false")
    assert "pathlib.Path.write_text" in state["config"]
    torch.save(state, root / "config_target.pt")
    cases["config-target-injection"] = (root / "config_target.pt", m,
                                        r"checkpoint config names code outside avis/torch to run "
                                        r"\(pathlib\.Path\.write_text\)")
    (root / "zero.pt").write_bytes(b"")
    cases["zero-byte"] = (root / "zero.pt", None, r"not a loadable checkpoint")
    data = good.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (root / "truncated.pt", None, r"not a loadable checkpoint")
    torch.save({"step": 3}, root / "foreign.pt")
    cases["not-an-avis-checkpoint"] = (root / "foreign.pt", None, r"not an avis checkpoint")
    return cases


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, toy_checkpoint):
    return _bad_checkpoints(tmp_path_factory.mktemp("ckpts"), toy_checkpoint)


CKPT_CASES = ["pickle-payload-torch-zip", "pickle-payload-legacy", "config-target-injection", "zero-byte",
              "truncated", "not-an-avis-checkpoint"]


@pytest.mark.parametrize("command", ["eval", "infer"])
@pytest.mark.parametrize("case", CKPT_CASES)
def test_bad_checkpoint(command, case, bad_checkpoints, built, media, tmp_path, capsys):
    ckpt, marker, what = bad_checkpoints[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("earlier output\n")
    if command == "eval":
        argv = ["eval", "--checkpoint", ckpt, "--shards", built, "--out", out]
    else:
        argv = ["infer", media["good"], "--checkpoint", ckpt, "--out", out, "--no-overlay"]
    rc, _, err = call(capsys, *argv)
    line = error_line(rc, err, command, ckpt, what)
    assert "weights_only" not in line  # never advise loading an untrusted file unsafely
    assert rc == 2
    if marker is not None:
        assert not marker.exists(), "the checkpoint ran code"
    assert (out / "results.json").read_text() == "earlier output\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_resume_from_a_payload_checkpoint_runs_nothing(bad_checkpoints, tmp_path, capsys):
    ckpt, marker, _ = bad_checkpoints["pickle-payload-torch-zip"]
    rc, _, err = call(capsys, "train", "experiment=toy_av", TOY, f"hydra.run.dir={tmp_path / 'r'}", f"trainer.resume={ckpt}",
                      "trainer.progress=false", "trainer.tensorboard=false")
    error_line(rc, err, "train", ckpt, PAYLOAD)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ loader

def test_training_loader_skips_a_corrupt_shard_with_a_warning(built, bad_shards, caplog):
    good = str(built / "shard-000000.tar")
    for case in ("truncated", "dotdot-member", "not-a-tar"):
        src = ShardSource([good, str(bad_shards[case])], categories=[])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="avis.data.shards"):
            ids = [v.video_id for unit in src.units() for v in src.videos(unit)]
        assert ids == [1]  # the good shard's video; nothing from the bad one
        assert any("skipping the rest of this shard" in r.getMessage() and str(bad_shards[case]) in r.getMessage()
                   for r in caplog.records)
        strict = ShardSource([good, str(bad_shards[case])], categories=[], on_error="fail")
        assert [v.video_id for v in strict.videos(good)] == [1]
        with pytest.raises(InputError, match=SHARD_CASES[case]):
            list(strict.videos(str(bad_shards[case])))


def test_training_loader_keeps_the_samples_before_the_damage(built, tmp_path, caplog):
    """One shard holding both videos, cut inside the second one: the first video is still trained on."""
    both = tmp_path / "both.tar"
    with tarfile.open(both, "w", format=tarfile.USTAR_FORMAT) as out:
        for name in ("shard-000000.tar", "shard-000001.tar"):
            with tarfile.open(built / name) as t:
                for m in t.getmembers():
                    out.addfile(m, t.extractfile(m))
    with tarfile.open(both) as t:
        second = next(m for m in t.getmembers() if m.name.startswith("00000002."))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(both.read_bytes()[: second.offset_data + 100])
    src = ShardSource([str(cut)], categories=[])
    with caplog.at_level(logging.WARNING, logger="avis.data.shards"):
        ids = [v.video_id for v in src.videos(str(cut))]
    assert ids == [1]
    assert any("skipping the rest of this shard" in r.getMessage() for r in caplog.records)


def test_training_run_skips_a_corrupt_shard(built, bad_shards, tmp_path, capsys):
    """``avis train`` on shards where one is truncated: it trains on the others and says which it skipped;
    with ``data.train.on_error=fail`` it stops with the shard's one-line error."""
    d = tmp_path / "shards"
    d.mkdir()
    for name in ("shard-000000.tar", "shard-000001.tar", "manifest.json"):
        shutil.copy(built / name, d / name)
    shutil.copy(bad_shards["truncated"], d / "shard-000002.tar")
    common = ["train", "experiment=toy_av", TOY, "data=shards", f"data.train.pattern={d}/shard-*.tar",
              "data.batch_size=1", "data.num_workers=0", "data.scales=[24]", "data.shuffle_buffer=1",
              "trainer.max_steps=3", "trainer.eval_every=0", "trainer.progress=false", "trainer.tensorboard=false"]
    rc, _, err = call(capsys, *common, f"hydra.run.dir={tmp_path / 'warn'}")
    assert rc == 0, err
    assert ckpt_io.load(tmp_path / "warn" / "checkpoints" / "last.pt")["step"] == 3
    rc, _, err = call(capsys, *common, f"hydra.run.dir={tmp_path / 'fail'}", "data.train.on_error=fail")
    error_line(rc, err, "train", d / "shard-000002.tar", r"unreadable shard")


@pytest.mark.parametrize("case", ["wrong-frame-count", "unknown-category", "duplicate-ids", "deep-nesting",
                                  "huge-string"])
def test_eval_bad_ground_truth(case, json_corpus, built, toy_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVIS_MAX_JSON_BYTES", str(100_000_000))
    from tests.hostile.test_hostile_json import GT_CASES

    bad = json_corpus["bad_gt"][case]
    (tmp_path / "metrics.json").write_text("earlier output\n")
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", built, "--gt", bad, "--out",
                      tmp_path)
    error_line(rc, err, "eval", bad, GT_CASES[case])
    assert (tmp_path / "metrics.json").read_text() == "earlier output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def _noise_member(built: Path, d: Path, suffix: str) -> Path:
    """A well-formed copy of shard 0 whose member ending in ``suffix`` is noise."""
    shutil.copy(built / "manifest.json", d / "manifest.json")
    out = d / "shard-000000.tar"
    with tarfile.open(built / "shard-000000.tar") as t, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as o:
        for m in t.getmembers():
            data = t.extractfile(m).read()
            if m.name.endswith(suffix):
                data = bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8))
            o.addfile(m, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def corrupt_jpeg_shard(built, tmp_path_factory) -> Path:
    """A well-formed tar whose second frame of video 1 is noise instead of a JPEG."""
    return _noise_member(built, tmp_path_factory.mktemp("corrupt_jpeg"), ".00001.jpg")


def test_corrupt_audio_in_a_shard(built, toy_checkpoint, tmp_path, capsys):
    shard = _noise_member(built, tmp_path, ".audio.flac")
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", shard, "--out", tmp_path / "e")
    error_line(rc, err, "eval", shard, r"sample 00000001: unreadable audio \(")
    rc, _, err = call(capsys, "inspect", shard)
    error_line(rc, err, "inspect", shard, r"sample \S+: unreadable audio")


def test_corrupt_frame_in_a_shard(corrupt_jpeg_shard, built, toy_checkpoint, tmp_path, capsys, caplog):
    what = r"sample 00000001: frame 00001\.jpg: unreadable JPEG \(cannot identify image file"
    rc, _, err = call(capsys, "eval", "--checkpoint", toy_checkpoint, "--shards", corrupt_jpeg_shard, "--out",
                      tmp_path / "eval")
    error_line(rc, err, "eval", corrupt_jpeg_shard, what)
    assert not (tmp_path / "eval" / "results.json").exists()
    # training: the video is skipped with a warning (or the run stops, with on_error=fail)
    from avis.data.clips import ClipStream

    good = str(built / "shard-000001.tar")
    src = ShardSource([good, str(corrupt_jpeg_shard)], categories=[])
    stream = ClipStream(src, clip_length=4, batch_size=1, seed=0, shuffle_buffer=1)
    with caplog.at_level(logging.WARNING, logger="avis.data.clips"):
        # clip_length 4 covers frame 1 whatever the target frame: video 1 can never give a clip
        ids = [b["video_ids"][0] for b, _ in itertools.islice(stream.batches(), 3)]
    assert ids == [2, 2, 2]
    assert any("skipping a video" in r.getMessage() and "unreadable JPEG" in r.getMessage() for r in caplog.records)
    strict = ClipStream(ShardSource([good, str(corrupt_jpeg_shard)], categories=[], on_error="fail"), clip_length=4,
                        batch_size=1, seed=0, shuffle_buffer=1)
    with pytest.raises(InputError, match=what):
        list(itertools.islice(strict.batches(), 3))


def test_real_process_one_line_and_debug_traceback(bad_shards, bad_checkpoints, built, tmp_path):
    """Through ``python -m avis``: the last stderr line is the error, exit 2, the traceback only with --debug."""
    from tests.conftest import run_cli

    shard = bad_shards["dotdot-member"]
    ckpt = bad_checkpoints["pickle-payload-torch-zip"][0]
    for argv, path in ((["inspect", shard], shard),
                       (["eval", "--checkpoint", ckpt, "--shards", built, "--out", tmp_path / "o"], ckpt)):
        p = run_cli(*argv)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith(f"avis {argv[0]}: error: {path}: ")
        if argv[0] == "inspect":  # (--debug is the CLI's, the same for every command: checked once here)
            d = run_cli(*argv, "--debug")
            assert d.returncode == 2 and "Traceback" in d.stderr
    assert not bad_checkpoints["pickle-payload-torch-zip"][1].exists()
