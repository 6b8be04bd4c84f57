"""Running a method over whole videos: tracks -> YTVIS results, shard annotations -> ground-truth JSON, timing,
and scoring through :mod:`avis.evaluation`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from avis.data.clips import resize_frames, test_size
from avis.data.video import Video, audio_16k, category_index, label_of
from avis.io import masks as mask_io
from avis.io.ytvis import save_json
from avis.models.audio.windows import DEFAULT_ETA, SAMPLE_RATE, frame_windows
from avis.models.base import FrameResult, Track

log = logging.getLogger(__name__)


def _rles_at(masks: list, height: int, width: int) -> list[dict]:
    """bool masks at the model's size -> RLEs at height x width (bilinear, > 0.5)."""
    m = torch.stack([torch.as_tensor(x) for x in masks]).float()
    if tuple(m.shape[-2:]) != (height, width):
        m = F.interpolate(m[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return mask_io.encode_many((m > 0.5).cpu().numpy())


def tracks_to_results(tracks: list[Track], video_id: int, num_frames: int, categories: list[dict],
                      height: int, width: int) -> list[dict]:
    """Tracks at the model's size -> YTVIS results at the video's size (labels -> category ids, RLE)."""
    out = []
    for tr in tracks:
        segs: list = [None] * num_frames
        present = sorted(t for t in tr.masks if 0 <= t < num_frames)
        if present:
            for t, r in zip(present, _rles_at([tr.masks[t] for t in present], height, width)):
                segs[t] = r
        out.append({"video_id": int(video_id), "category_id": int(categories[tr.label]["id"]),
                    "score": float(tr.score), "segmentations": segs})
    return out


def frame_record(result: FrameResult, video_id: int, categories: list[dict], height: int, width: int) -> dict:
    """One online step's output -> a JSON-ready dict (one line of a per-frame stream)::

        {"video_id": 3, "frame": 17, "instances": [{"track_id": 0, "category_id": 5, "score": 0.91,
                                                     "segmentation": {"size": [h, w], "counts": "..."}}, ...]}

    labels become category ids (``categories[label]["id"]``), masks RLEs at ``height`` x ``width`` (the
    video's size), with the same resizing as :func:`tracks_to_results`."""
    insts = result.instances
    rles = _rles_at([i.mask for i in insts], height, width) if insts else []
    return {"video_id": int(video_id), "frame": int(result.frame),
            "instances": [{"track_id": int(i.track_id), "category_id": int(categories[i.label]["id"]),
                           "score": float(i.score), "segmentation": r} for i, r in zip(insts, rles)]}


def video_ground_truth(video: Video, categories: list[dict], next_ann_id: int) -> tuple[dict, list[dict]]:
    """A (decoded) video's entry and annotations for a YTVIS ground-truth JSON, from the annotations it carries."""
    T, H, W = video.frames.shape[:3]
    vid = int(video.video_id)
    entry = {"id": vid, "width": int(W), "height": int(H), "length": int(T),
             "file_names": [f"{vid}/{t:05d}.jpg" for t in range(T)]}
    anns = []
    index = category_index(categories)
    for k, inst in enumerate(video.instances):
        label = label_of(index, inst.category_id, vid)
        segs, areas, boxes = [], [], []
        for t in range(T):
            m = inst.mask(t)
            if m is None or not m.any():
                segs.append(None), areas.append(None), boxes.append(None)
                continue
            r = mask_io.encode(m)
            segs.append(r), areas.append(mask_io.area(r)), boxes.append(mask_io.bbox(r))
        anns.append({"id": next_ann_id + k, "video_id": vid, "category_id": int(categories[label]["id"]),
                     "iscrowd": int(inst.iscrowd or 0), "segmentations": segs, "areas": areas, "bboxes": boxes,
                     "instance_id": int(inst.instance_id)})
    return entry, anns


def model_inputs(video: Video, short: int | None, max_size: int | None, eta: float = DEFAULT_ETA):
    """uint8 T x 3 x h x w frames at the test size and T x S audio windows, or None for a video without
    sound: the model then masks its audio tokens out, as training does for ``has_audio = False`` (zero
    windows would read as real silence)."""
    frames = torch.from_numpy(np.ascontiguousarray(np.asarray(video.frames))).permute(0, 3, 1, 2)
    h, w = frames.shape[-2:]
    frames = resize_frames(frames, test_size(h, w, short, max_size))
    times = torch.as_tensor(np.asarray(video.frame_times, dtype=np.float64))
    wave, has_audio = audio_16k(video)
    audio = frame_windows(wave, times, SAMPLE_RATE, eta) if has_audio else None
    return frames, audio, (int(h), int(w))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict_videos(model, videos, categories: list[dict], device, *, short: int | None = None,
                   max_size: int | None = None, eta: float = DEFAULT_ETA, amp: bool = False, progress: bool = True,
                   with_gt: bool = True, sizes: dict | None = None, total: int | None = None) -> dict:
    """Run ``model.predict_video`` over ``videos``.

    Returns ``{"results": [...], "gt": {...} | None, "timing": {"frames", "seconds", "fps"}}``; seconds count
    the model only (decoding, resizing and RLE encoding are excluded). ``sizes``: video id -> (height, width,
    length) of the ground truth the masks must match (default: the decoded frames' size). ``total``: the
    number of videos for the progress bar (default: ``len(videos)`` when it has one).
    """
    model.eval()
    results, gt_videos, gt_anns = [], [], []
    frames_total, seconds, n_videos = 0, 0.0, 0
    total = total if total is not None else (len(videos) if hasattr(videos, "__len__") else None)
    for video in tqdm(videos, desc="predict", unit="video", total=total, disable=not progress, leave=False):
        frames, audio, (h, w) = model_inputs(video, short, max_size, eta)
        frames = frames.to(device)
        audio = None if audio is None else audio.to(device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            tracks = model.predict_video(frames, audio)
        _sync(device)
        seconds += time.perf_counter() - t0
        frames_total += frames.shape[0]
        n_videos += 1
        vid = int(video.video_id)
        T = frames.shape[0]
        if sizes is not None and vid in sizes:
            h, w, T = sizes[vid][0], sizes[vid][1], sizes[vid][2] or T
        results += tracks_to_results(tracks, vid, T, categories, h, w)
        if with_gt:
            entry, anns = video_ground_truth(video, categories, len(gt_anns) + 1)
            gt_videos.append(entry)
            gt_anns += anns
    gt = {"videos": gt_videos, "annotations": gt_anns, "categories": list(categories)} if with_gt else None
    timing = {"videos": n_videos, "frames": frames_total, "seconds": seconds, "fps": frames_total / seconds if seconds else None}
    return {"results": results, "gt": gt, "timing": timing}


def score(gt: dict, results: list[dict]) -> tuple[dict, list[dict]]:
    """The 12 YTVIS numbers and HOTA (DetA, AssA, LocA, ... as ``avis score --metrics ytvis hota``) and the
    per-instance IoU samples (each ground-truth instance's greedy match), through :mod:`avis.evaluation`."""
    from avis.evaluation.samples import samples_from_entries
    from avis.evaluation.score import compute

    numbers, ev, _ = compute(gt, results, ("ytvis", "hota"))
    return numbers, samples_from_entries(ev.entries, 0.0)


def write_evaluation(out_dir: str | Path, pred: dict, gt: dict | None = None, extra: dict | None = None) -> dict:
    """results.json, gt.json (when the GT came from the shards), metrics.json (AP/AR, HOTA + timing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(pred["results"], out_dir / "results.json")
    gt = gt if gt is not None else pred["gt"]
    if pred["gt"] is not None:
        save_json(pred["gt"], out_dir / "gt.json")
    metrics, samples = score(gt, pred["results"]) if gt is not None else (None, None)
    summary = {"metrics": metrics, "timing": pred["timing"], **(extra or {})}
    save_json(summary, out_dir / "metrics.json", indent=2)
    if samples is not None:
        from avis.evaluation.samples import write_samples_csv

        write_samples_csv(samples, out_dir / "samples.csv")
    return summary
