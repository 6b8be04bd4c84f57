"""``avis inspect SHARDS...``: one JSON line per video (reads metadata and the audio header, not the frames):
``video_id``, ``source`` (the file it was built from, relative to the build's ``--videos``: a video file, or
the first frame of a JPEG folder), ``num_frames``, ``fps``, ``height``, ``width``, ``has_audio``,
``audio_sample_rate``, ``audio_num_samples``, ``num_instances``.

Shards may be paths or URLs (``http(s)://``, ``s3://``, ``pipe:``, ...; see :mod:`avis.data.shards`); each
sample is checked against the schema (:mod:`avis.data.schema`) as it is read.
"""

from __future__ import annotations

import argparse
import io
import json

from avis.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+",
                   help="shard files, folders, globs, brace patterns, manifest.json, or URLs of these (http(s)://, "
                        "s3://, gs://, pipe:CMD; a URL ending in / reads the manifest.json there)")


def video_record(sample: dict) -> dict:
    """One line of ``avis inspect`` for a checked sample (``avis.data.shards.iter_samples``)."""
    import soundfile as sf

    from avis.data.shards import sample_meta

    meta = sample_meta(sample)
    if "audio.flac" not in sample:
        raise InputError(f"sample {meta.get('key')}: no audio member", sample.get("__url__"))
    try:
        n_audio = sf.info(io.BytesIO(sample["audio.flac"])).frames
    except RuntimeError as e:
        raise InputError(f"sample {meta.get('key')}: unreadable audio ({e})", sample.get("__url__")) from None
    if n_audio != meta["num_samples"]:
        raise InputError(f"sample {meta.get('key')}: unreadable audio (its header declares {n_audio} samples, the "
                         f"metadata {meta['num_samples']})", sample.get("__url__"))
    n_jpg = meta["num_frames"]  # the reader checked that exactly these frames are stored
    fps = meta.get("fps")
    t = meta["frame_times"]
    if not fps and len(t) > 1 and t[-1] > t[0]:  # irregular frame times: report the mean rate
        fps = (len(t) - 1) / (t[-1] - t[0])
    source = meta.get("source")  # the builder's: the media file (or first frame) relative to its --videos
    return {"video_id": meta["video_id"], "source": source if isinstance(source, str) else None,
            "num_frames": n_jpg, "fps": fps, "height": meta["height"], "width": meta["width"],
            "has_audio": meta["has_audio"], "audio_sample_rate": meta["sample_rate"],
            "audio_num_samples": int(n_audio), "num_instances": len(meta.get("instances", []))}


def run(args) -> int:
    from avis.data.shards import expand_shards, iter_samples

    for shard in expand_shards(args.shards):
        for sample in iter_samples(shard):
            print(json.dumps(video_record(sample)), flush=True)
    return 0
