"""Writing a viewer page: runs + ground truth + media -> a folder that opens in a browser from ``file://``.

Layout of the output folder (every path relative, nothing fetched from elsewhere)::

    index.html        the page, with the run summaries, the video list and the per-instance table inlined
    view.js view.css  the page's code and style
    data/<n>.js       video n's ground truth and predicted masks (compressed RLE strings, decoded in the page)
    media/<n>.mp4     video n's pictures and sound (H.264 + AAC, see :mod:`avis.view.media`)
    att/<r>_<n>_*.png run r's attention maps of video n, when the run kept them (:mod:`avis.view.attention`)

``n`` is the video's position in the page and ``r`` the run's: no file name comes from an input file. Every
string from the inputs reaches the page as JSON data (escaped for a ``<script>`` block) and is put in the
document as text, never as markup.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from avis.errors import ConfigError, InputError
from avis.io import ytvis
from avis.io.atomic import atomic_open
from avis.view import media
from avis.view.attention import read_attention, render_sprites

log = logging.getLogger(__name__)

ATTENTION_FILE = "attention.npz"
ASSETS = ("view.js", "view.css")
DEFAULT_THRESHOLD = 0.5  # as the formats people look at in avis export (overlay, png, ...)


@dataclass
class Run:
    """One set of predictions shown on the page."""

    label: str
    results_path: Path
    results: list[dict] = field(default_factory=list)
    metrics: dict | None = None
    timing: dict | None = None
    attention: dict | None = None  # video id -> kind -> T x N x h x w
    matches: dict[int, tuple[int, float]] = field(default_factory=dict)  # result index -> (annotation id, IoU)
    samples: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ inputs
def find_results(path: str | os.PathLike) -> Path:
    """A results JSON, an eval/infer folder holding ``results.json``, or a training run folder (its newest
    ``eval/step_*/results.json``)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise InputError("no such file or folder", p)
    if (p / "results.json").is_file():
        return p / "results.json"
    steps = sorted(p.glob("eval/step_*/results.json"))
    if steps:
        log.info("%s: showing the newest periodic evaluation, %s", p, steps[-1].parent.name)
        return steps[-1]
    raise InputError("no results.json here (give an avis eval or infer output folder, a training run folder "
                     "with eval/, or a results JSON)", p)


def find_gt(results_path: Path) -> Path | None:
    """The ground truth written beside a run's results: ``gt.json`` (avis eval) or ``videos.json`` (avis infer)."""
    for name in ("gt.json", "videos.json"):
        if (results_path.parent / name).is_file():
            return results_path.parent / name
    return None


def default_label(results_path: Path) -> str:
    folder = results_path.parent
    parts = [folder.parent.name, folder.name] if folder.name == "eval" or folder.name.startswith("step_") else [folder.name]
    if results_path.name != "results.json":
        parts.append(results_path.stem)
    return "/".join(p for p in parts if p) or results_path.stem


def _timing(results_path: Path) -> dict | None:
    """FPS and frames from the eval's metrics.json beside the results, when there is a readable one."""
    path = results_path.parent / "metrics.json"
    if results_path.name != "results.json" or not path.is_file():
        return None
    try:
        t = ytvis.load_json(path).get("timing") or {}
    except (InputError, AttributeError):
        log.warning("%s: unreadable, the run's speed is not shown", path)
        return None
    return {k: _num(t.get(k)) for k in ("fps", "frames", "videos") if _num(t.get(k)) is not None} or None


def load_run(path: str | os.PathLike, gt: dict, label: str | None = None) -> Run:
    """Results (validated against ``gt``), their YTVIS metrics and per-instance matches, kept attention."""
    from avis.evaluation.samples import matched_samples_from_entries
    from avis.evaluation.ytvis_eval import evaluate

    results_path = find_results(path)
    run = Run(label or default_label(results_path), results_path)
    run.results = ytvis.load_results(results_path, gt=gt)
    ev = evaluate(gt, run.results, path=os.fspath(results_path))
    run.metrics = {k: _num(v) for k, v in dict(ev.stats).items()}
    run.samples = matched_samples_from_entries(ev.entries, 0.0)
    run.matches = {r["result_index"]: (r["instance_id"], r["iou"]) for r in run.samples if r["result_index"] is not None}
    run.timing = _timing(results_path)
    att = results_path.parent / ATTENTION_FILE
    if att.is_file():
        run.attention = read_attention(att)
    return run


# ------------------------------------------------------------------------------------------------ helpers
def _num(x) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _color(k: int) -> list[int]:
    from data_tools.exporters.overlay import track_color

    return [int(c) for c in track_color(k)]


def script_json(obj) -> str:
    """JSON that is safe inside an HTML ``<script>`` block and as a JavaScript expression: ``<``, ``>``, ``&``
    and every non-ASCII character are \\u escapes, so no input string can close the block or start markup."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _track_ids(results: list[dict], indices: list[int]) -> dict[int, int]:
    """Result index -> track id in its video: the result's own integer ``track_id`` when every result of the
    video has a unique one, else 1, 2, ... in file order (the rule of ``avis export``)."""
    own = [results[i].get("track_id") for i in indices]
    if all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in own) and len(set(own)) == len(own):
        return dict(zip(indices, own))
    return {i: k for k, i in enumerate(indices, start=1)}


def _first_frame(segs: list) -> int:
    return next((t for t, s in enumerate(segs) if s is not None), 0)


def _segs(segs: list) -> list:
    return [None if s is None else s["counts"] for s in segs]


# ------------------------------------------------------------------------------------------------ page data
def _video_data(n: int, v: dict, anns: list[dict], runs: list[Run], by_video: list[dict[int, list[int]]],
                info: dict, att_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    """Video n's data file, its row in the video list and its rows of the per-instance table."""
    gt_items, index_of = [], {}
    for k, a in enumerate(anns, start=1):
        index_of[a["id"]] = k
        gt_items.append({"key": a["id"], "label": f"#{k}", "category": a["category_id"], "color": _color(k),
                         "crowd": bool(a.get("iscrowd")), "segs": _segs(a["segmentations"])})
    run_items, list_row = [], {"n": n, "id": v["id"], "name": info["name"], "length": len(info["times"]),
                               "gt": sum(not a.get("iscrowd") for a in anns), "tracks": [], "miou": []}
    track_of: list[dict[int, int]] = []  # per run: annotation id -> track id of its match
    for r, run in enumerate(runs):
        idx = by_video[r].get(v["id"], [])
        tids = _track_ids(run.results, idx)
        extra = len(anns)
        tracks, matched = [], {}
        for i in sorted(idx, key=lambda i: -run.results[i]["score"]):
            res = run.results[i]
            ann, iou = run.matches.get(i, (None, None))
            if ann is not None:
                matched[ann] = tids[i]
                color = _color(index_of[ann])
            else:
                extra += 1
                color = _color(extra)
            tracks.append({"key": i, "track": tids[i], "category": res["category_id"], "score": _num(res["score"]),
                           "iou": _num(iou), "gt": None if ann is None else index_of[ann], "color": color,
                           "segs": _segs(res["segmentations"])})
        att = None
        if run.attention is not None and v["id"] in run.attention and run.attention[v["id"]]:
            att = render_sprites(run.attention[v["id"]], att_dir, f"{r}_{n}")
        run_items.append({"tracks": tracks, "attention": att})
        track_of.append(matched)
        ious = [(s["iou"] if s["iou"] == s["iou"] else 0.0) for s in run.samples if s["video_id"] == v["id"]]
        list_row["tracks"].append(len(tracks))
        list_row["miou"].append(_num(np.mean(ious)) if ious else None)
    data = {"n": n, "id": v["id"], "name": info["name"], "width": v["width"], "height": v["height"],
            "times": info["times"], "media": info["media"], "media_size": info["media_size"],
            "sound": info["sound"], "note": info["note"], "gt": gt_items, "runs": run_items}
    rows = []
    samples = [{(s["video_id"], s["instance_id"]): s for s in run.samples} for run in runs]
    for a in anns:
        if a.get("iscrowd"):
            continue
        per_run = []
        for r in range(len(runs)):
            s = samples[r].get((v["id"], a["id"]))
            per_run.append({"iou": _num(s["iou"]) if s else None, "score": _num(s["score"]) if s else None,
                            "track": track_of[r].get(a["id"])})
        rows.append({"n": n, "key": a["id"], "label": f"#{index_of[a['id']]}", "category": a["category_id"],
                     "first": _first_frame(a["segmentations"]), "runs": per_run})
    return data, list_row, rows


def _media(videos: list[dict], out_dir: Path, videos_dir: Path | None, shards) -> list[dict]:
    """Write media/<n>.mp4 for every video; returns per video ``{media, media_size, times, sound, note}``."""
    from tqdm import tqdm

    infos: list[dict | None] = [None] * len(videos)
    pos = {v["id"]: n for n, v in enumerate(videos)}
    if shards:
        from avis.data import iter_videos

        for sv in iter_videos(shards):
            try:
                n = pos.get(int(sv.video_id))
            except (TypeError, ValueError):
                continue
            if n is None or infos[n] is not None:
                continue
            length = int(videos[n].get("length") or 0)
            if sv.num_frames != length:
                log.warning("video %s: the shards have %d frames, the ground truth %d: not using the shards' "
                            "media for it", videos[n]["id"], sv.num_frames, length)
                continue
            infos[n] = media.from_shards(out_dir / "media" / f"{n}.mp4", sv)
            infos[n]["media_size"] = list(np.asarray(sv.frames).shape[1:3])
    todo = [n for n in range(len(videos)) if infos[n] is None]
    for n in tqdm(todo, desc="media", unit="video", disable=len(todo) < 2):
        v, path = videos[n], out_dir / "media" / f"{n}.mp4"
        if media.has_source(v, videos_dir):
            infos[n] = media.from_source(path, v, videos_dir)
        else:
            infos[n] = media.blank(path, v)
        infos[n]["media_size"] = [int(v["height"]), int(v["width"])]  # drawn at the annotation's size
    for n, info in enumerate(infos):
        info["media"] = f"media/{n}.mp4"
    return infos


def _write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def _render_index(title: str, data: dict) -> str:
    template = resources.files("avis.view").joinpath("assets", "index.html").read_text(encoding="utf-8")
    values = {"TITLE": html.escape(title, quote=True), "DATA": script_json(data)}
    # one pass, so a value can never be read as another placeholder
    return re.sub(r"__AVIS_(TITLE|DATA)__", lambda m: values[m.group(1)], template)


def write_view(run: str | os.PathLike, out_dir: str | os.PathLike, *, gt: str | os.PathLike | dict | None = None,
               videos_dir: str | os.PathLike | None = None, shards=None, compare=(), labels=None,
               score_threshold: float = DEFAULT_THRESHOLD, limit: int | None = None,
               title: str | None = None) -> Path:
    """Write the viewer page of ``run`` (and the ``compare`` runs beside it) under ``out_dir``.

    ``run`` / ``compare``: results JSONs or run folders (see :func:`find_results`); ``gt``: a YTVIS file or
    dict (default: the ``gt.json`` / ``videos.json`` beside the first run's results); ``videos_dir``: the folder
    the ground truth's media paths are relative to (default: the one ``avis infer`` records, signed, in its
    ``videos.json``: :mod:`avis.io.provenance`); ``shards``: shards holding the videos' frames and sound
    (what ``avis.data.iter_videos`` takes); ``labels``: one name per run; ``score_threshold``: the page's
    initial score filter; ``limit``: only the first N videos (by id). Returns the path of ``index.html``.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    paths = [run, *(compare or ())]
    labels = list(labels or [])
    if len(labels) > len(paths):
        raise ConfigError(f"{len(labels)} labels for {len(paths)} runs")
    if gt is None:
        gt = find_gt(find_results(run))
        if gt is None:
            raise ConfigError("no ground truth beside the results (gt.json or videos.json): give --gt")
    gt_path = None if isinstance(gt, dict) else Path(gt)
    gt = gt if isinstance(gt, dict) else ytvis.load_annotations(gt)
    runs = [load_run(p, gt, labels[r] if r < len(labels) else None) for r, p in enumerate(paths)]
    if len({r.label for r in runs}) < len(runs):  # same folder names: keep them apart
        for r, x in enumerate(runs):
            x.label = f"{x.label} ({r + 1})"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = sorted(gt["videos"], key=lambda v: v["id"])[:limit]
    if videos_dir is None and not shards:  # avis infer's videos.json records its media folder (signed)
        from avis.io.provenance import recorded_videos_dir

        videos_dir = recorded_videos_dir(gt)[0]
    videos_dir = Path(videos_dir) if videos_dir is not None else None
    infos = _media(videos, out_dir, videos_dir, shards)

    from data_tools.exporters.common import video_names

    names = video_names({"videos": videos})
    anns_by_video: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns_by_video.setdefault(a["video_id"], []).append(a)
    by_video = []
    for x in runs:
        d: dict[int, list[int]] = {}
        for i, res in enumerate(x.results):
            d.setdefault(res["video_id"], []).append(i)
        by_video.append(d)
    video_rows, instance_rows = [], []
    for n, v in enumerate(videos):
        info = {**infos[n], "name": names[v["id"]]}
        data, row, rows = _video_data(n, v, anns_by_video.get(v["id"], []), runs, by_video, info, out_dir / "att")
        _write_text(out_dir / "data" / f"{n}.js", f"AVIS.loaded({n},{script_json(data)});\n")
        video_rows.append(row)
        instance_rows += rows
    for name in ASSETS:
        _write_text(out_dir / name, resources.files("avis.view").joinpath("assets", name).read_text(encoding="utf-8"))
    title = title or " vs ".join(x.label for x in runs)
    page = {"title": title, "threshold": score_threshold,
            "gt": os.fspath(gt_path.name) if gt_path else "ground truth",
            "runs": [{"label": x.label, "metrics": x.metrics, "timing": x.timing,
                      "attention": x.attention is not None} for x in runs],
            "categories": [{"id": c["id"], "name": str(c.get("name", c["id"]))} for c in gt["categories"]],
            "videos": video_rows, "instances": instance_rows}
    index = out_dir / "index.html"
    _write_text(index, _render_index(title, page))
    log.info("wrote %s (%d videos, %d runs)", index, len(videos), len(runs))
    return index
