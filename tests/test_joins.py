"""The joins between commands (issue 23): what one command writes, the next one reads.

infer -> export (videos.json, overlays without --videos), export ytvis-zip -> score / ttest, results that do
not belong to the ground truth, the synthetic splits' video ids, a run's config used from another folder,
infer on a JPEG frame folder and at the checkpoint's frame rate."""

from __future__ import annotations

import copy
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from avis import cli as avis_cli
from avis.io import masks as mask_io
from avis.io import ytvis


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    from data_tools.synth import generate

    generate(root, num_videos=6, seed=2, size=(64, 48), frames=6, fps=6.0, progress=False)
    return root


def _perfect_results(gt: dict) -> list[dict]:
    """Each annotation as a prediction (score 0.9): AP 1."""
    return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 0.9,
             "segmentations": a["segmentations"]} for a in gt["annotations"]]


def test_synthetic_splits_do_not_share_video_ids(synth):
    train = ytvis.load_annotations(synth / "train.json")
    val = ytvis.load_annotations(synth / "val.json")
    t_ids, v_ids = [v["id"] for v in train["videos"]], [v["id"] for v in val["videos"]]
    assert t_ids == list(range(1, len(t_ids) + 1))
    assert v_ids == list(range(len(t_ids) + 1, len(t_ids) + len(v_ids) + 1))
    assert {a["video_id"] for a in val["annotations"]} <= set(v_ids)


def test_score_and_ttest_read_the_results_zip_of_export(synth, tmp_path, capsys):
    gt = ytvis.load_annotations(synth / "val.json")
    res = tmp_path / "res.json"
    ytvis.save_json(_perfect_results(gt), res)
    assert avis_cli.main(["export", "--results", str(res), "--gt", str(synth / "val.json"), "--format",
                          "ytvis-zip", "--out", str(tmp_path / "exp")]) == 0
    zipped = tmp_path / "exp" / "results.zip"
    assert zipfile.ZipFile(zipped).namelist() == ["results.json"]
    capsys.readouterr()
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(zipped),
                          "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(1.0)
    # the zip gives what the JSON gives
    def key(r):
        return r["video_id"], r["category_id"], r["score"], json.dumps(r["segmentations"])

    assert sorted(map(key, ytvis.load_results(zipped, gt))) == sorted(map(key, ytvis.load_results(res, gt)))
    assert avis_cli.main(["ttest", "--gt", str(synth / "val.json"), "--a", str(zipped), "--b", str(res),
                          "--json", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["headline"]["diff"] == pytest.approx(0.0)
    # a zip without results.json at its root is one line naming it
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("sub/results.json", "[]")
    capsys.readouterr()
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(other)]) == 2
    err = capsys.readouterr().err
    assert "other.zip: the zip has no results.json at its root (it holds 'sub/results.json')" in err


def test_results_of_the_other_split_are_refused(synth, tmp_path, capsys):
    val = ytvis.load_annotations(synth / "val.json")
    res = tmp_path / "val_res.json"
    ytvis.save_json(_perfect_results(val), res)
    assert avis_cli.main(["score", "--gt", str(synth / "train.json"), "--results", str(res)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "these results are for other videos" in err and "val_res.json" in err


def _shift_away(rle: dict | None) -> dict | None:
    """The mask moved to where it cannot touch the objects: the complement of every object is not
    available per frame here, so a 2x2 square in a corner no synthetic object reaches is used."""
    if rle is None:
        return None
    h, w = rle["size"]
    m = np.zeros((h, w), np.uint8)
    m[:2, :2] = 1
    return mask_io.encode(m)


def test_results_that_overlap_nothing_are_an_error_and_partial_ones_a_warning(synth, tmp_path, capsys, caplog):
    gt = ytvis.load_annotations(synth / "val.json")
    objects = np.zeros((gt["videos"][0]["height"], gt["videos"][0]["width"]), bool)
    for a in gt["annotations"]:
        for s in a["segmentations"]:
            if s is not None:
                objects |= mask_io.decode(s).astype(bool)
    assert not objects[:2, :2].any()  # the corner the moved masks take is free of objects
    # same video ids and frame counts as the ground truth, masks nowhere near its objects
    wrong = [{**r, "segmentations": [_shift_away(s) for s in r["segmentations"]]} for r in _perfect_results(gt)]
    path = tmp_path / "wrong.json"
    ytvis.save_json(wrong, path)
    capsys.readouterr()
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(path)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("avis score: error: ") and "wrong.json: no predicted mask overlaps any object" in last
    assert avis_cli.main(["ttest", "--gt", str(synth / "val.json"), "--a", str(path), "--b", str(path)]) == 2
    assert "no predicted mask overlaps any object" in capsys.readouterr().err
    # results for one of the two val videos: scored, with a warning naming the video left out
    vids = sorted(v["id"] for v in gt["videos"])
    part = [r for r in _perfect_results(gt) if r["video_id"] == vids[0]]
    path = tmp_path / "part.json"
    ytvis.save_json(part, path)
    with caplog.at_level(logging.WARNING):
        assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(path)]) == 0
    assert f"part.json: the results have predictions for 1 of the 2 annotated ground-truth videos; videos {vids[1]} " \
           "have none" in caplog.text


def test_results_with_other_frame_counts_say_so(synth, tmp_path, capsys):
    gt = ytvis.load_annotations(synth / "val.json")
    res = copy.deepcopy(_perfect_results(gt))
    for r in res:
        r["segmentations"] = r["segmentations"][:-1]
    path = tmp_path / "short.json"
    ytvis.save_json(res, path)
    assert avis_cli.main(["score", "--gt", str(synth / "val.json"), "--results", str(path)]) == 2
    assert "these results are for other videos: 2 of their 2 videos have another number of frames than the " \
           "ground truth's" in capsys.readouterr().err


# ------------------------------------------------------------------ a trained (toy) model: infer, export, eval

@pytest.fixture(scope="module")
def toy_run(synth, tmp_path_factory) -> Path:
    """The toy method trained a few steps on shards of the synthetic set, given by *relative* paths from the
    folder the run is made in; its checkpoint made to label every pixel as category 1 (``all_cat1.pt``)."""
    import torch

    from avis.engine import checkpoint as ckpt_io
    from tests.conftest import TOY

    root = tmp_path_factory.mktemp("toyrun")
    for split in ("train", "val"):
        assert avis_cli.main(["build", "--videos", str(synth), "--annotations", str(synth / f"{split}.json"),
                              "--out", str(root / "shards" / split)]) == 0
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert avis_cli.main(["train", "experiment=toy_av", "data=synthetic", "data.train.pattern=shards/train",
                              "data.val_pattern=shards/val", "hydra.run.dir=run", "trainer.max_steps=2",
                              "trainer.eval_every=0", "trainer.ckpt_every=2", "data.scales=[24]", "data.test_size=24",
                              "trainer.progress=false", "trainer.tensorboard=false", TOY]) == 0
    finally:
        os.chdir(cwd)
    ckpt = ckpt_io.load(root / "run" / "checkpoints" / "last.pt")
    ckpt["model"]["head.bias"][:] = torch.tensor([0.0] + [50.0] + [0.0] * (ckpt["model"]["head.bias"].numel() - 2))
    ckpt_io.save(root / "all_cat1.pt", ckpt)
    return root


def test_eval_works_from_another_folder(toy_run, tmp_path, monkeypatch, capsys):
    """The run was trained from its own folder with relative shard paths: its config stores them absolute."""
    from avis.engine import checkpoint as ckpt_io

    config = (toy_run / "run" / "config.yaml").read_text()
    assert f"pattern: {toy_run / 'shards' / 'val'}" in config and f"pattern: {toy_run / 'shards' / 'train'}" in config
    monkeypatch.chdir(tmp_path)
    assert avis_cli.main(["eval", "--checkpoint", str(toy_run / "run" / "checkpoints" / "last.pt"),
                          "--out", "ev"]) == 0
    assert (tmp_path / "ev" / "metrics.json").is_file()
    # a checkpoint of an older avis (relative paths in its config): one line saying where it looked
    ckpt = ckpt_io.load(toy_run / "run" / "checkpoints" / "last.pt")
    ckpt["config"] = ckpt["config"].replace(str(toy_run / "shards" / "val"), "shards/val")
    ckpt_io.save(tmp_path / "old.pt", ckpt)
    capsys.readouterr()
    assert avis_cli.main(["eval", "--checkpoint", str(tmp_path / "old.pt"), "--out", "ev2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err
    assert f"data.val.pattern 'shards/val' is relative: it was looked for from {tmp_path}" in err


def test_infer_records_the_training_rate_and_export_needs_no_videos_folder(synth, toy_run, tmp_path, monkeypatch):
    from avis.engine import checkpoint as ckpt_io
    from data_tools.exporters import overlay

    assert ckpt_io.load(toy_run / "all_cat1.pt")["data_fps"] == 6.0  # the synthetic set's rate (fps=6 above)
    drawn = []
    real = overlay.write_overlay
    monkeypatch.setattr(overlay, "write_overlay", lambda tracks, *a, **k: (drawn.append(tracks), real(tracks, *a, **k))[1])
    out = tmp_path / "infer"
    vids = [synth / "videos" / "val_0000.mp4", synth / "videos" / "val_0001.mp4"]
    assert avis_cli.main(["infer", *map(str, vids), "--checkpoint", str(toy_run / "all_cat1.pt"),
                          "--out", str(out)]) == 0
    videos = json.loads((out / "videos.json").read_text())
    assert videos["avis"]["videos_dir"] == str((synth / "videos").resolve())
    assert [v["video_file"] for v in videos["videos"]] == ["val_0000.mp4", "val_0001.mp4"]  # relative
    assert all(v["fps"] == 6.0 and v["length"] == 6 for v in videos["videos"])  # the checkpoint's rate
    assert ytvis.validate_annotations(videos) == []  # a YTVIS file by the usual rules
    res = json.loads((out / "results.json").read_text())
    assert res and len(drawn) == 1 and len(drawn[0]) == len(res)
    # the overlay keeps what export's overlay keeps (score >= 0.5), results.json everything
    from avis.engine import infer

    low = [{**res[0], "score": 0.3}, {**res[0], "score": 0.5}, {**res[0], "score": 0.49}]
    infer._overlays(low, videos, tmp_path / "o", synth / "videos", 6.0, None)
    assert [t["score"] for t in drawn[-1]] == [0.5]
    infer._overlays(low, videos, tmp_path / "o", synth / "videos", 6.0, 0.0)
    assert len(drawn[-1]) == 3
    monkeypatch.setattr(overlay, "write_overlay", real)

    # export from infer's output: no --videos
    ex = tmp_path / "export"
    assert avis_cli.main(["export", "--results", str(out / "results.json"), "--gt", str(out / "videos.json"),
                          "--format", "overlay,ytvis", "--out", str(ex)]) == 0
    import av

    for name in ("val_0000", "val_0001"):
        with av.open(str(ex / "overlay" / f"{name}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 6 and c.streams.audio

    # the same file edited to name another folder, or made by another user (key): --videos is needed
    forged = copy.deepcopy(videos)
    forged["avis"]["videos_dir"] = "/"
    forged["videos"][0]["video_file"] = str((synth / "videos" / "val_0000.mp4").resolve())[1:]
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    rc = avis_cli.main(["export", "--results", str(out / "results.json"), "--gt", str(tmp_path / "forged.json"),
                        "--format", "overlay", "--out", str(tmp_path / "x")])
    assert rc == 2 and not (tmp_path / "x" / "overlay").exists()
    monkeypatch.setenv("AVIS_KEY_FILE", str(tmp_path / "other.key"))
    rc = avis_cli.main(["export", "--results", str(out / "results.json"), "--gt", str(out / "videos.json"),
                        "--format", "overlay", "--out", str(tmp_path / "y")])
    assert rc == 2 and not (tmp_path / "y" / "overlay").exists()
    # with --videos any user can
    assert avis_cli.main(["export", "--results", str(out / "results.json"), "--gt", str(out / "videos.json"),
                          "--format", "overlay", "--videos", str(synth / "videos"), "--out", str(tmp_path / "z")]) == 0


def test_export_without_videos_says_why(toy_run, synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / "infer"
    assert avis_cli.main(["infer", str(synth / "videos" / "val_0000.mp4"), "--checkpoint",
                          str(toy_run / "all_cat1.pt"), "--out", str(out), "--no-overlay"]) == 0
    videos = json.loads((out / "videos.json").read_text())
    videos["avis"]["videos_dir"] = str(tmp_path)
    (tmp_path / "edited.json").write_text(json.dumps(videos))
    capsys.readouterr()
    assert avis_cli.main(["export", "--results", str(out / "results.json"), "--gt", str(tmp_path / "edited.json"),
                          "--format", "overlay", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--format overlay needs --videos DIR" in err and "or was edited since" in err


def test_infer_on_a_jpeg_frame_folder_with_its_sound(synth, toy_run, tmp_path):
    import soundfile as sf
    from PIL import Image

    from data_tools import decode as dec

    d = dec.decode(synth / "videos" / "val_0000.mp4", fps=6.0)
    clip = tmp_path / "media" / "clip"
    clip.mkdir(parents=True)
    for k, f in enumerate(d.frames):  # names whose plain sort is not their order
        Image.fromarray(f).save(clip / f"{k}.jpg", quality=95)
    sf.write(tmp_path / "media" / "clip.wav", d.audio, 16000)
    out = tmp_path / "infer"
    assert avis_cli.main(["infer", str(clip), "--checkpoint", str(toy_run / "all_cat1.pt"), "--out", str(out),
                          "--fps", "6"]) == 0
    v = json.loads((out / "videos.json").read_text())["videos"][0]
    assert v["file_names"] == [f"clip/{k}.jpg" for k in range(len(d.frames))]  # natural order
    assert v["audio_file"] == "clip.wav" and "video_file" not in v
    assert (v["width"], v["height"]) == (64, 48) and v["length"] == len(d.frames)
    res = json.loads((out / "results.json").read_text())
    assert res and all(len(r["segmentations"]) == len(d.frames) for r in res)
    import av

    with av.open(str(out / "overlay" / "clip.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(d.frames) and c.streams.audio
    # the same frames as the mp4 give the same results (JPEG at quality 95 changes a few pixels at most)
    out2 = tmp_path / "infer_mp4"
    assert avis_cli.main(["infer", str(synth / "videos" / "val_0000.mp4"), "--checkpoint",
                          str(toy_run / "all_cat1.pt"), "--out", str(out2), "--no-overlay"]) == 0
    res2 = json.loads((out2 / "results.json").read_text())
    assert [r["category_id"] for r in res] == [r["category_id"] for r in res2]


def test_infer_without_a_recorded_rate_runs_at_6_fps(synth, toy_run, tmp_path):
    from avis.engine import checkpoint as ckpt_io

    ckpt = ckpt_io.load(toy_run / "all_cat1.pt")
    del ckpt["data_fps"]
    ckpt_io.save(tmp_path / "old.pt", ckpt)
    out = tmp_path / "infer"
    assert avis_cli.main(["infer", str(synth / "videos" / "val_0000.mp4"), "--checkpoint", str(tmp_path / "old.pt"),
                          "--out", str(out), "--no-overlay"]) == 0
    assert json.loads((out / "videos.json").read_text())["videos"][0]["fps"] == 6.0
    # and --fps wins over the checkpoint's
    assert avis_cli.main(["infer", str(synth / "videos" / "val_0000.mp4"), "--checkpoint",
                          str(toy_run / "all_cat1.pt"), "--out", str(out), "--no-overlay", "--fps", "3"]) == 0
    assert json.loads((out / "videos.json").read_text())["videos"][0]["length"] == 3


def test_infer_names_a_missing_input(toy_run, tmp_path, capsys):
    assert avis_cli.main(["infer", str(tmp_path / "nope"), "--checkpoint", str(toy_run / "all_cat1.pt"),
                          "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert avis_cli.main(["infer", str(tmp_path / "empty"), "--checkpoint", str(toy_run / "all_cat1.pt"),
                          "--out", str(tmp_path / "o")]) == 2
    assert "a folder without frames" in capsys.readouterr().err


def test_view_of_infer_output_finds_the_media(synth, toy_run, tmp_path):
    out = tmp_path / "infer"
    assert avis_cli.main(["infer", str(synth / "videos" / "val_0000.mp4"), "--checkpoint",
                          str(toy_run / "all_cat1.pt"), "--out", str(out), "--no-overlay"]) == 0
    assert avis_cli.main(["view", str(out), "--out", str(tmp_path / "page")]) == 0
    media = list((tmp_path / "page" / "media").glob("*.mp4"))
    assert len(media) == 1
    import av

    with av.open(str(media[0])) as c:
        assert sum(1 for _ in c.decode(video=0)) >= 6 and c.streams.audio
