"""``avis inspect SHARDS...``: one JSON line per video (reads metadata and the audio header, not the frames)."""

from __future__ import annotations

import argparse
import io
import json

from avis.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+", help="shard files, folders, globs or brace patterns")


def video_record(sample: dict) -> dict:
    import soundfile as sf

    from avis.data.shards import sample_meta

    meta = sample_meta(sample)
    if "audio.flac" not in sample:
        raise InputError(f"sample {meta.get('key')}: no audio member", sample.get("__url__"))
    try:
        n_audio = sf.info(io.BytesIO(sample["audio.flac"])).frames
    except RuntimeError as e:
        raise InputError(f"sample {meta.get('key')}: unreadable audio ({e})", sample.get("__url__")) from None
    n_jpg = sum(1 for k in sample if k.endswith(".jpg"))
    if n_jpg != meta["num_frames"]:
        raise InputError(f"sample {meta.get('key')}: {n_jpg} frames stored, metadata says {meta['num_frames']}",
                         sample.get("__url__"))
    fps = meta.get("fps")
    if not fps and len(meta["frame_times"]) > 1:  # irregular frame times: report the mean rate
        t = meta["frame_times"]
        fps = (len(t) - 1) / (t[-1] - t[0])
    return {"video_id": meta["video_id"], "num_frames": n_jpg, "fps": fps, "height": meta["height"],
            "width": meta["width"], "has_audio": meta["has_audio"], "audio_sample_rate": meta["sample_rate"],
            "audio_num_samples": int(n_audio), "num_instances": len(meta.get("instances", []))}


def run(args) -> int:
    from avis.data.shards import expand_shards, iter_samples

    for shard in expand_shards(args.shards):
        for sample in iter_samples(shard):
            print(json.dumps(video_record(sample)), flush=True)
    return 0
