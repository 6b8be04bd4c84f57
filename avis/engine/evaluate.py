"""``avis eval``: run a checkpoint online over shards -> results JSON, the 12 YTVIS metrics and HOTA,
per-instance IoU samples and timing.

    avis eval --checkpoint runs/av/checkpoints/last.pt --shards 'shards/val-*.tar' --out runs/av/eval
    avis eval --checkpoint CKPT --out DIR data.test_size=480        # overrides of the checkpoint's config
    torchrun --nproc-per-node 4 -m avis eval --checkpoint CKPT ...  # videos split over 4 GPUs (eval_split.py)

The ground truth is the annotations carried in the shards (written to ``gt.json``) unless ``--gt`` names a
YTVIS JSON; masks are written at the ground truth's video size.

From Python, :func:`evaluate_checkpoint` does the same (the demo and ``scripts/train_av_vs_visual.py`` call
it), and :func:`evaluate_model` is its second half for a model in memory (the trainer's periodic evaluation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from avis.errors import ConfigError, InputError
from avis.models.audio.windows import DEFAULT_ETA

log = logging.getLogger("avis.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by avis train")
    parser.add_argument("--shards", nargs="+", help="shards to run on (default: the config's data.val)")
    parser.add_argument("--gt", help="ground-truth YTVIS JSON (default: the annotations in the shards)")
    parser.add_argument("--out", required=True, help="output folder (results.json, metrics.json, ...)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--limit", type=int, help="only the first N videos")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--keep-attention", action="store_true",
                        help="also write attention.npz, RCF's attention maps of every frame, for avis view")
    parser.add_argument("--json", action="store_true",
                        help="print the summary (metrics, timing) as one JSON line instead of the table")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config")


def run(args: argparse.Namespace) -> int:
    summary = evaluate_checkpoint(args.checkpoint, args.out, shards=args.shards, gt=args.gt, device=args.device,
                                  limit=args.limit, amp=not args.no_amp, overrides=args.overrides,
                                  keep_attention=args.keep_attention)
    if summary is None:  # a torchrun rank other than 0: rank 0 writes the merged evaluation
        return 0
    summary.pop("results")
    if args.json:
        print(json.dumps(summary))
        return 0
    print(format_summary(summary, args.out))
    return 0


def format_summary(summary: dict, out_dir) -> str:
    """What ``avis eval`` prints: the metrics table (as ``avis score`` prints it), the timing and where the
    files are."""
    from avis.evaluation.score import format_table

    tm = summary["timing"]
    lines = [format_table(summary["metrics"])] if summary.get("metrics") else ["(no ground truth: nothing scored)"]
    fps = f"{tm['fps']:.1f} frames/s" if tm.get("fps") else "no frames"
    ck = summary.get("checkpoint") or {}
    lines += ["", f"{tm['videos']} videos, {tm['frames']} frames, model {tm['seconds']:.2f} s ({fps})"
              + (f"; checkpoint {ck['path']} at step {ck['step']}" if ck else ""),
              f"written to {out_dir}: " + ", ".join(n for n in ("results.json", "gt.json", "metrics.json", "samples.csv",
                                                                 "attention.npz") if (Path(out_dir) / n).exists())]
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, shards=None,
                        gt: dict | str | os.PathLike | None = None, device: str = "auto", limit: int | None = None,
                        amp: bool = True, overrides=(), progress: bool = True,
                        keep_attention: bool = False) -> dict:
    """A checkpoint online over ``shards`` (default: its config's ``data.val``), scored against ``gt`` (a YTVIS
    dict or file; None: the annotations in the shards) -> ``out_dir``/results.json, metrics.json,
    samples.csv (+ gt.json). Under ``torchrun`` the videos are split over the processes and rank 0 writes the
    merged evaluation, identical to one process (:mod:`avis.engine.eval_split`; other ranks return None).
    ``overrides``: ``key=value`` changes of the checkpoint's config.
    ``keep_attention``: also write ``attention.npz`` (RCF's attention maps, for ``avis view``). Returns the
    summary written to metrics.json plus ``results`` (the YTVIS results).

    Refused before anything is written: a ``limit`` below 1 (:class:`~avis.errors.ConfigError`), and
    categories that do not match the checkpoint's (a ground truth lacking one of them, shards whose manifest or
    samples use a category it does not have: an :class:`~avis.errors.InputError` naming the file)."""
    from avis.data.shards import ShardSource
    from avis.engine.session import load_trained
    from avis.io.ytvis import load_annotations

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a number of videos >= 1, got {limit}")
    from avis.engine import eval_split

    trained = load_trained(checkpoint, eval_split.rank_device(device), list(overrides))
    cfg = trained.cfg
    if shards:
        source = ShardSource(shards if isinstance(shards, (list, tuple)) else str(shards),
                             categories=trained.categories)
    else:
        _refuse_commands(cfg, overrides, checkpoint)
        source = build_val_source(cfg.data)
        if source is None:
            raise ConfigError("no shards to evaluate: give --shards (the checkpoint's config has no data.val)")
    gt_path = None if gt is None or isinstance(gt, dict) else gt
    if gt_path is not None:
        gt = load_annotations(gt_path)
    check = None
    if gt is not None:
        _check_gt_categories(gt, trained.categories, gt_path, checkpoint)
    else:  # the ground truth comes from the shards: their categories must be the checkpoint's
        _check_manifest_categories(source, trained.categories, checkpoint)
        check = _video_categories_check(trained.categories, checkpoint)
    extra = {"checkpoint": {"path": str(checkpoint), "step": trained.step}}
    if eval_split.world_size() > 1:  # under torchrun: this rank's videos; rank 0 merges and writes
        if keep_attention:
            raise ConfigError("--keep-attention is for a single process, not a torchrun evaluation")
        pred = eval_split.predict_split(trained.model, source, limit, trained.categories, trained.device,
                                        check=check, **_predict_options(cfg.data, gt, amp))
        if pred is None:
            return None
        return {**write_evaluation_of(out_dir, pred, gt, extra), "results": pred["results"]}
    videos, recorder = iter_eval_videos(source, limit, check), None
    if keep_attention:  # its copies to the host count in the timing
        from avis.view.attention import AttentionRecorder

        recorder = AttentionRecorder(trained.model)
        videos = recorder.videos(videos)
    summary = evaluate_model(trained.model, videos, trained.categories, trained.device, cfg.data, out_dir, gt=gt,
                             amp=amp, progress=progress, extra=extra, total=count_videos(source, limit))
    if recorder is not None:
        recorder.save(Path(out_dir) / "attention.npz")
    return summary


def evaluate_model(model, videos, categories: list[dict], device, data_cfg: DictConfig, out_dir, *,
                   gt: dict | None = None, amp: bool = False, progress: bool = True, extra: dict | None = None,
                   total: int | None = None) -> dict:
    """``model`` online over ``videos`` at the test size of ``data_cfg`` (``test_size``, ``test_max_size``,
    ``eta``) -> ``out_dir`` (see :func:`evaluate_checkpoint`). Returns the summary plus ``results``.
    ``total``: the number of videos, for the progress bar (:func:`count_videos`)."""
    from avis.engine.predict import predict_videos

    pred = predict_videos(model, videos, categories, device, progress=progress, total=total,
                          **_predict_options(data_cfg, gt, amp))
    return {**write_evaluation_of(out_dir, pred, gt, extra), "results": pred["results"]}


def _predict_options(data_cfg: DictConfig, gt: dict | None, amp: bool) -> dict:
    """``predict_videos``'s options: the test size of ``data_cfg``, and the ground truth's video sizes."""
    return {"short": data_cfg.get("test_size"), "max_size": data_cfg.get("test_max_size"),
            "eta": float(data_cfg.get("eta", DEFAULT_ETA)), "amp": amp, "with_gt": gt is None,
            "sizes": _gt_sizes(gt)}


def write_evaluation_of(out_dir, pred: dict, gt: dict | None, extra: dict | None) -> dict:
    from avis.engine.predict import write_evaluation

    return write_evaluation(Path(out_dir), pred, gt, extra=extra)


def build_val_source(data_cfg: DictConfig):
    """``data.val``, or None when there is none (no node, or a node whose ``pattern`` is null). A source that
    cannot be made is the user's error (the shards are not there, ...), not hydra's wrapped exception; a
    relative pattern (runs before avis stored absolute ones) says where it was looked for."""
    from hydra.errors import InstantiationException

    from avis.errors import AvisError

    val = data_cfg.get("val")
    if val is None or ("pattern" in val and val.pattern is None):
        return None
    try:
        return instantiate(val)
    except InstantiationException as e:
        cause = e.__cause__
        pattern = val.get("pattern") if "pattern" in val else None
        relative = isinstance(pattern, str) and not os.path.isabs(pattern) and ":" not in pattern
        hint = (f" (data.val.pattern '{pattern}' is relative: it was looked for from {os.getcwd()}; run from the "
                "folder the run was trained in, or give --shards)") if relative else ""
        if isinstance(cause, AvisError):
            raise type(cause)(f"{cause.message}{hint}", cause.path) from cause
        what = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
        raise ConfigError(f"cannot make the validation data (data.val): {' '.join(what.split())[:300]}{hint}") \
            from e


def _refuse_commands(cfg: DictConfig, overrides, checkpoint) -> None:
    """A ``pipe:`` shard URL runs a shell command: one in a checkpoint's stored config (a downloaded file) is
    refused; one given on the command line (an override of ``data.val``) is the user's."""
    from omegaconf import OmegaConf

    given = any(str(o).lstrip("+~").startswith("data.val") for o in overrides or ())
    pattern = OmegaConf.select(cfg, "data.val.pattern", default=None)
    if not given and "pipe:" in str(pattern):
        raise InputError("the checkpoint's config reads its validation shards through a command (data.val.pattern "
                         "is a pipe: URL); avis runs no command a checkpoint names: give --shards", checkpoint)


def count_videos(source, limit: int | None = None) -> int | None:
    """How many videos :func:`iter_eval_videos` will give, when the source says without being read: the
    ``num_videos`` of its shards in their manifest (only the shards it reads), a source's own ``num_videos``;
    None when unknown (a ``pipe:`` shard, shards without a manifest)."""
    n = None
    files = getattr(source, "files", None)
    if files:
        from avis.data.shards import load_manifest

        try:
            manifest = load_manifest(files)
        except (InputError, OSError):
            manifest = None
        by_name = {s.get("name"): s.get("num_videos") for s in (manifest or {}).get("shards") or []
                   if isinstance(s, dict)}
        counts = [by_name.get(str(f).replace("\\", "/").rsplit("/", 1)[-1]) for f in files]
        if counts and all(isinstance(c, int) and c >= 0 for c in counts):
            n = sum(counts)
    elif isinstance(getattr(source, "num_videos", None), int):
        n = source.num_videos
    if n is not None and limit is not None:
        n = min(n, limit)
    return n


def iter_eval_videos(source, limit: int | None = None, check=None):
    """All videos of a source (:class:`avis.data.VideoSource`), decoded, in unit order (the first ``limit``);
    an unreadable video stops the evaluation (strict). ``check(unit, video)`` sees each decoded video before it
    is handed out (it raises to refuse one)."""
    if limit is not None and limit < 1:
        return
    n = 0
    for unit in source.units():
        for v in source.videos(unit, strict=True):
            video = v.load()
            if check is not None:
                check(unit, video)
            yield video
            n += 1
            if limit is not None and n >= limit:  # before the next is read: it may be one that fails
                return


def _names(cats, ids) -> str:
    by_id = {c["id"]: c.get("name", "") for c in cats}
    shown = ", ".join(f"{i} {by_id.get(i, '')!r}" for i in sorted(ids)[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _check_gt_categories(gt: dict, cats: list[dict], gt_path, ckpt) -> None:
    """The model can only predict the checkpoint's categories: each must be in the ground truth (else its
    results could not be scored); categories only the ground truth has score 0 (a warning)."""
    mine, theirs = {c["id"] for c in cats}, {c["id"] for c in gt["categories"]}
    if mine - theirs:
        raise InputError(f"categories of the checkpoint {ckpt} are not in this ground truth: "
                         f"{_names(cats, mine - theirs)}", gt_path)
    if theirs - mine:
        log.warning("%s: categories the checkpoint %s cannot predict (they score 0): %s",
                    gt_path or "ground truth", ckpt, _names(gt["categories"], theirs - mine))


def _check_manifest_categories(source, cats: list[dict], ckpt) -> None:
    from avis.data.shards import load_manifest, manifest_location

    files = getattr(source, "files", None)
    manifest = load_manifest(files) if files else None
    if not manifest or not isinstance(manifest.get("categories"), list):
        return
    mine = {c["id"] for c in cats}
    extra = {c.get("id") for c in manifest["categories"] if isinstance(c, dict)} - mine
    if extra:
        raise InputError(f"the shards' categories {_names(manifest['categories'], extra)} are not among the "
                         f"categories of the checkpoint {ckpt} ({_names(cats, mine)})",
                         manifest_location(files))


def _video_categories_check(cats: list[dict], ckpt):
    mine = {c["id"] for c in cats}

    def check(unit, video) -> None:
        for inst in getattr(video, "instances", None) or []:
            cid = getattr(inst, "category_id", None)
            if cid is not None and cid not in mine:
                raise InputError(f"sample {getattr(video, 'key', '')} (video {video.video_id}): category id {cid} "
                                 f"is not among the categories of the checkpoint {ckpt} ({_names(cats, mine)})",
                                 unit if isinstance(unit, str) else None)

    return check


def _gt_sizes(gt: dict | None) -> dict | None:
    if gt is None:
        return None
    return {int(v["id"]): (int(v["height"]), int(v["width"]), int(v.get("length") or 0)) for v in gt["videos"]}
