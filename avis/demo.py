"""``avis demo``: does sound help? The whole workflow on the embedded synthetic dataset, in minutes on a CPU.

Stages (each a Python call into the piece that does it, progress shown throughout)::

    1 synthesize   data_tools.synth.generate       audio-dependent videos (look-alike twins told apart by sound)
    2 build        data_tools.build                 train / val WebDataset shards
    3 train, eval  avis.engine.train / evaluate     RCF tiny, audio-visual and visual-only, --seeds N training
                                                    seeds each (same data), parallel processes with --jobs; the
                                                    audio arm's engine pretrains its log-mel network on the
                                                    training split's per-frame tags first (audio.pretrain) and
                                                    trains with the audio-tagging loss (audio.supervision)
    4 significance avis.evaluation.ttest           the verdict (compare_recipes: recipe level over the seeds;
                                                    model level with one seed per arm) and the per-model
                                                    diagnostics of the first seed (compare)
    5 export       data_tools.export.export         YTVIS results of both arms, one overlay video with sound
    6 view         avis.view.write_view             DIR/view/index.html: the first seed of both arms side by side
    7 report       DIR/report.md                    the Table X / XII style table, plots, links

    avis demo                               # -> demo_out/report.md (3 seeds per arm)
    avis demo --audio-dependence 0          # the control: sound carries no information about the objects
    avis demo --seeds 5 --jobs 2            # more seeds; two trainings at a time
    avis demo --quick --out /tmp/q          # seconds: a smoke run on a handful of tiny videos (numbers meaningless)

The two arms differ only in the hydra ``audio`` group (``experiment=rcf_av_tiny`` vs ``rcf_visual_tiny``); the
demo's training recipe (steps, learning rate, sizes: :data:`FULL`) is given to both as hydra overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from avis.errors import ConfigError
from avis.io.atomic import atomic_open

log = logging.getLogger("avis.demo")

STAGES = 7
ARMS = (("av", "rcf_av_tiny", "audio-visual"), ("visual", "rcf_visual_tiny", "visual-only"))
IOUS = (0.5, 0.75)


@dataclass(frozen=True)
class DemoSettings:
    """Dataset size and training recipe of a demo run (both arms get the same)."""

    videos: int = 160           # synthetic videos, train + val
    val_fraction: float = 0.25
    size: tuple[int, int] = (96, 64)   # width, height of the synthetic videos
    frames: int = 20
    fps: float = 8.0
    steps: int = 1200           # training steps per run
    seeds: int = 3              # training seeds per arm (the recipe-level verdict needs >= 2)
    audio_pretrain_steps: int = 300   # the audio arm's audio.pretrain.steps (0: no pretraining stage)
    overrides: tuple[str, ...] = field(default_factory=tuple)  # hydra overrides for both arms
    bootstrap: int = 1000


# The recipe used by `avis demo` (tuned so that the tiny model learns masks and, with audio, the twins).
FULL = DemoSettings(overrides=(
    "data.batch_size=4", "data.scales=[64]", "data.test_size=64", "data.test_max_size=96", "data.max_size=96",
    "data.clips_per_video=2", "optim.optimizer.lr=2e-3", "optim.backbone_lr_mult=1.0", "optim.clip_grad_norm=1.0",
))
# Seconds: the pipeline end to end on a handful of tiny videos (tests, smoke runs); the numbers mean nothing.
QUICK = DemoSettings(videos=4, val_fraction=0.5, size=(64, 48), frames=6, fps=6.0, steps=3, seeds=2, bootstrap=50,
                     audio_pretrain_steps=3,
                     overrides=("data.batch_size=2", "data.scales=[48]", "data.test_size=48",
                                "data.test_max_size=64", "data.max_size=64", "model.num_queries=4"))


def __getattr__(name: str):
    # ``avis.demo.pretrained_audio_tokens``: the audio encoder's builder that checkpoints of older demo runs name
    # (now avis.models.audio's); imported on use, so that ``avis --help`` does not load torch
    if name == "pretrained_audio_tokens":
        from avis.models.audio import pretrained_audio_tokens

        return pretrained_audio_tokens
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out; report.md inside)")
    parser.add_argument("--audio-dependence", type=float, default=1.0,
                        help="share of videos where only sound tells look-alike twins apart (default 1; 0 = "
                             "the control where sound carries no information)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data and of the first training seed (default 0; seeds SEED..SEED+N-1)")
    parser.add_argument("--seeds", type=int,
                        help=f"training seeds per arm (default {FULL.seeds}; the recipe-level verdict needs >= 2, "
                             "1 compares two trained models only)")
    parser.add_argument("--jobs", type=int,
                        help="trainings run at a time, in separate processes (default: 2 on a machine with >= 2 "
                             "cores, else 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in seconds on 4 tiny videos (pipeline check; the numbers mean nothing)")
    parser.add_argument("--steps", type=int, help="training steps per arm (default: the demo recipe's)")
    parser.add_argument("--videos", type=int, help="synthetic videos, train + val (default: the recipe's)")
    parser.add_argument("overrides", nargs="*", help="extra hydra overrides for both arms (key=value)")


def run(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else FULL
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if args.videos is not None:
        settings = replace(settings, videos=args.videos)
    if args.seeds is not None:
        settings = replace(settings, seeds=args.seeds)
    if args.overrides:
        settings = replace(settings, overrides=settings.overrides + tuple(args.overrides))
    summary = run_demo(args.out, audio_dependence=args.audio_dependence, seed=args.seed, settings=settings,
                       quick=args.quick, jobs=args.jobs)
    print(f"\nreport: {summary['report']}")
    return 0


# --------------------------------------------------------------------------------------------- stages
def _stage(i: int, title: str) -> float:
    print(f"\n== [{i}/{STAGES}] {title}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str = "") -> float:
    dt = time.perf_counter() - t0
    print(f"   done in {dt:.1f} s{(' -- ' + what) if what else ''}", flush=True)
    return dt


def synthesize(out: Path, audio_dependence: float, seed: int, s: DemoSettings) -> Path:
    from data_tools.synth import generate

    synth_dir = out / "synth"
    generate(synth_dir, num_videos=s.videos, seed=seed, audio_dependence=audio_dependence, size=s.size,
             frames=s.frames, fps=s.fps, val_fraction=s.val_fraction)
    return synth_dir


def build_shards(synth_dir: Path, out: Path) -> dict[str, Path]:
    from data_tools import build

    dirs = {}
    for split in ("train", "val"):
        parser = argparse.ArgumentParser()
        build.add_arguments(parser)
        dirs[split] = out / "shards" / split
        rc = build.run(parser.parse_args(["--videos", str(synth_dir), "--annotations",
                                          str(synth_dir / f"{split}.json"), "--out", str(dirs[split])]))
        if rc:
            raise RuntimeError(f"building the {split} shards failed (exit {rc})")
    return dirs


def significance(gt: dict, runs_a: list[list[dict]], runs_b: list[list[dict]], out: Path, bootstrap: int,
                 seed: int) -> dict:
    """The verdict of ``avis ttest`` (A = audio-visual, B = visual-only; ``runs_*``: the results of each seed;
    recipe level with >= 2 seeds per arm, else model level) and the per-model diagnostics of the first seed
    of each arm -> ``out``/ttest.json (``{headline, rows}``), ttest.csv, ttest.md, iou_distributions.png.
    Returns ``{"headline", "rows" (verdict), "diagnostics" (rows)}``."""
    from avis.evaluation import ttest
    from avis.io.ytvis import save_json

    verdict = ttest.compare_recipes(gt, runs_a, runs_b, IOUS, av_table_metrics())
    diag = ttest.compare(gt, runs_a[0], runs_b[0], IOUS, bootstrap=bootstrap, seed=seed)
    rows = verdict["rows"] + diag["rows"]
    save_json(ttest.jsonable({"headline": verdict["headline"], "rows": rows}), out / "ttest.json", indent=2)
    with atomic_open(out / "ttest.csv", "w") as f:
        f.write(ttest.to_csv(rows))
    with atomic_open(out / "ttest.md", "w") as f:
        f.write(ttest.format_table(rows, markdown=True) + "\n")
    ttest.plot_distributions(diag["ious_a"], diag["ious_b"], out / "iou_distributions.png",
                             ("audio-visual", "visual-only"))
    return {**verdict, "diagnostics": diag["rows"]}


def av_table_metrics() -> list[str]:
    from avis.evaluation.av_table import table_metrics

    return table_metrics("top1", IOUS)


def export_arm(results: list[dict], gt: dict, synth_dir: Path, out_dir: Path, overlay_video: int | None) -> dict:
    """YTVIS results of every val video; with ``overlay_video``, that video's overlay mp4 (with its sound)."""
    from avis.io.ytvis import save_json
    from data_tools.export import export

    out_dir.mkdir(parents=True, exist_ok=True)
    res_path = out_dir / "results_in.json"
    save_json(results, res_path)
    written = {k: str(v) for k, v in export(res_path, None, ["ytvis"], out_dir, gt=gt).items()}
    if overlay_video is not None:
        one_gt = {**gt, "videos": [v for v in gt["videos"] if v["id"] == overlay_video],
                  "annotations": [a for a in gt["annotations"] if a["video_id"] == overlay_video]}
        one = [r for r in results if r["video_id"] == overlay_video]
        save_json(one, out_dir / "overlay_results.json")
        w = export(out_dir / "overlay_results.json", None, ["overlay"], out_dir, gt=one_gt, videos_dir=synth_dir,
                   score_threshold=0.3)
        mp4s = sorted(Path(w["overlay"]).glob("*.mp4")) if Path(w["overlay"]).is_dir() else [Path(w["overlay"])]
        written["overlay"] = str(mp4s[0])
    res_path.unlink(missing_ok=True)
    return written


# ---------------------------------------------------------------------------------------------- driver
def default_jobs() -> int:
    """Trainings at a time: 2 on a machine with at least 2 cores (the tiny model keeps about one core busy)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_arm(key: str, experiment: str, run_dir: str, eval_dir: str, train, val, gt_path: str, seed: int,
            steps: int, overrides: tuple, progress: bool, threads: int | None = None) -> dict:
    """One run of the demo: train ``experiment`` with ``seed`` into ``run_dir`` (the engine, with the audio
    arm's pretraining stage and tagging loss) and evaluate it on the val shards into ``eval_dir``. Runs in a
    worker process with ``--jobs`` > 1 (``threads``: torch threads there). Returns the metrics, the path of
    its results and its wall and CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    if threads:
        import torch

        torch.set_num_threads(threads)
    from avis.engine.evaluate import evaluate_checkpoint
    from avis.engine.train import train_experiment
    from avis.io.ytvis import load_annotations

    ckpt = train_experiment(experiment, run_dir, train, seed, steps, overrides, progress)
    t_train = time.perf_counter() - t0
    ev = evaluate_checkpoint(ckpt, eval_dir, shards=val, gt=load_annotations(gt_path), progress=progress)
    return {"key": key, "seed": seed, "metrics": ev["metrics"], "results": str(Path(eval_dir) / "results.json"),
            "train_s": t_train, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def run_demo(out, audio_dependence: float = 1.0, seed: int = 0, settings: DemoSettings = FULL,
             quick: bool = False, progress: bool = True, jobs: int | None = None) -> dict:
    """The whole demo into ``out``; returns the summary written to ``out/summary.json``."""
    if not 0.0 <= audio_dependence <= 1.0:
        raise ConfigError(f"--audio-dependence {audio_dependence}: must be in [0, 1]")
    if settings.steps < 1:
        raise ConfigError(f"--steps {settings.steps}: need at least 1")
    if settings.seeds < 1:
        raise ConfigError(f"--seeds {settings.seeds}: need at least 1")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: need at least 1")
    from avis.evaluation import av_table
    from avis.io.ytvis import load_annotations

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    times: dict[str, float] = {}
    seeds = [seed + i for i in range(settings.seeds)]
    print(f"avis demo: audio dependence d = {audio_dependence:g}, data seed {seed}, {settings.videos} videos "
          f"{settings.size[0]}x{settings.size[1]}, {settings.seeds} training seed(s) per arm "
          f"({', '.join(map(str, seeds))}), {settings.steps} steps per run, {jobs} at a time -> {out}", flush=True)

    t0 = _stage(1, "synthesize the audio-visual dataset (data_tools.synth)")
    synth_dir = synthesize(out, audio_dependence, seed, settings)
    times["synthesize"] = _done(t0)

    t0 = _stage(2, "build train / val shards (data_tools.build)")
    shards = build_shards(synth_dir, out)
    times["build"] = _done(t0)

    # the audio arm's supervision is the engine's (audio.supervision, audio.pretrain: docs/audio.md); the demo
    # only sets its pretraining length
    arm_overrides = {"av": (f"audio.pretrain.steps={settings.audio_pretrain_steps}",), "visual": ()}
    plan = [(key, experiment, s) for s in seeds for key, experiment, _ in ARMS]
    t0 = _stage(3, f"train and evaluate RCF tiny: {len(seeds)} seed(s) x (audio-visual rcf_av_tiny, visual-only "
                   f"rcf_visual_tiny), {settings.steps} steps each, {jobs} at a time")
    done = _run_all(plan, out, shards, synth_dir / "val.json", settings, arm_overrides, jobs, progress)
    times["train_eval"] = _done(t0)
    runs = {key: [done[(key, s)] for s in seeds] for key, _, _ in ARMS}

    gt = load_annotations(synth_dir / "val.json")
    results = {key: [json.loads(Path(r["results"]).read_text()) for r in runs[key]] for key in runs}
    t0 = _stage(4, "significance (avis.evaluation.ttest: audio-visual = A, visual-only = B)")
    cmp = significance(gt, results["av"], results["visual"], out, settings.bootstrap, seed)
    h = cmp["headline"]
    times["ttest"] = _done(t0, f"{h['metric']} ({h['level']} level, test '{h['test']}'): {h['mean_a']:.3f} vs "
                               f"{h['mean_b']:.3f}, diff {h['diff']:+.3f}, p(audio-visual better) = "
                               f"{h['p_one_sided']:.3g} (one-sided)")

    t0 = _stage(5, "export (data_tools.export: YTVIS results of the first seed, one overlay video with sound)")
    overlay_video = _pick_overlay_video(gt, results["av"][0])
    exports = {key: export_arm(results[key][0], gt, synth_dir, out / "export" / key,
                               overlay_video if key == "av" else None) for key, _, _ in ARMS}
    times["export"] = _done(t0)

    t0 = _stage(6, f"view (avis view: seed {seeds[0]} of both arms side by side -> view/index.html)")
    view = write_view_page(out, runs, shards["val"], synth_dir / "val.json")
    times["view"] = _done(t0)

    t0 = _stage(7, "report")
    row = av_table.table_row(1, cmp)
    with atomic_open(out / "table.csv", "w") as f:
        f.write(av_table.to_csv([row]))
    times["total"] = time.perf_counter() - t_start
    run_cpu = sum(r["cpu_s"] for rs in runs.values() for r in rs)
    own_cpu = time.process_time() - cpu_start
    # CPU seconds of all threads of this process and of the runs (workers report their own): the load-free
    # cost; on a quiet machine the wall clock is about (CPU outside the runs) + (CPU of the runs) / jobs
    times["total_cpu"] = own_cpu + (run_cpu if jobs > 1 else 0.0)
    times["runs_cpu"] = run_cpu
    # what the wall clock would be on a quiet machine with >= `jobs` cores: the CPU outside the runs, plus the
    # runs' CPU seconds scheduled in plan order on `jobs` workers (each run keeps about one core busy)
    outside = times["total_cpu"] - run_cpu
    times["quiet_wall_estimate"] = outside + makespan([done[(k, s)]["cpu_s"] for k, _, s in plan], jobs)
    summary = {"audio_dependence": audio_dependence, "seed": seed, "seeds": seeds, "jobs": jobs, "quick": quick,
               "settings": asdict(settings),
               "metrics": {key: [r["metrics"] for r in runs[key]] for key in runs},
               "runs": {key: [{k: v for k, v in r.items() if k != "metrics"} for r in runs[key]] for key in runs},
               "table": row, "headline": h, "tests": cmp["rows"], "diagnostics": cmp["diagnostics"],
               "overlay_video": overlay_video,
               "audio_pretrain": [_pretrain_record(out / "runs" / "av" / f"seed{s}") for s in seeds],
               "exports": exports, "view": view, "seconds": times, "report": str(out / "report.md")}
    _write_report(out, summary)
    from avis.io.ytvis import save_json

    save_json(_nan_to_none(summary), out / "summary.json", indent=2)
    _done(t0, f"total {times['total']:.0f} s wall, {times['total_cpu']:.0f} s CPU")
    return summary


def makespan(durations, workers: int) -> float:
    """The finish time of ``durations`` started in order, each on the first free of ``workers`` workers."""
    free = [0.0] * max(1, workers)
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)


def _run_all(plan, out: Path, shards: dict, gt_path: Path, settings: DemoSettings, arm_overrides: dict, jobs: int,
             progress: bool) -> dict:
    """Every (arm, seed) of ``plan`` through :func:`run_arm`: in this process one after the other (jobs 1, with
    progress bars), else in ``jobs`` worker processes (torch threads split between them)."""
    def args(key, experiment, s, prog, threads=None):
        return (key, experiment, str(out / "runs" / key / f"seed{s}"), str(out / "eval" / key / f"seed{s}"),
                str(shards["train"]), str(shards["val"]), str(gt_path), s, settings.steps,
                (*settings.overrides, *arm_overrides[key]), prog, threads)

    done: dict = {}

    def report(r, i):
        m = r["metrics"] or {}
        print(f"   [{i}/{len(plan)}] {r['key']} seed {r['seed']}: AP {100 * m.get('AP', math.nan):.1f}, AP50 "
              f"{100 * m.get('AP50', math.nan):.1f} ({r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU)", flush=True)

    if jobs == 1 or len(plan) == 1:
        for i, (key, experiment, s) in enumerate(plan):
            print(f"   -- {key} seed {s}", flush=True)
            r = run_arm(*args(key, experiment, s, progress))
            done[(key, s)] = r
            report(r, i + 1)
        return done
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn: a fresh interpreter per worker (forking a process that already runs torch threads can hang)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_arm, *args(key, experiment, s, False, threads)): (key, s)
                   for key, experiment, s in plan}
        for i, f in enumerate(as_completed(futures)):
            r = f.result()
            done[futures[f]] = r
            report(r, i + 1)
    return done


def write_view_page(out: Path, runs: dict, val_shards, gt_path: Path) -> str | None:
    """``avis view`` of the first seed of both arms, side by side, with the val videos' frames and sound from
    the shards -> ``out/view/index.html`` (its path relative to ``out``; None, with a warning, when it fails:
    the page is a convenience, the verdict does not depend on it)."""
    from avis.errors import AvisError
    from avis.view import write_view

    try:
        index = write_view(Path(runs["av"][0]["results"]).parent, out / "view",
                           compare=[Path(runs["visual"][0]["results"]).parent],
                           labels=["audio-visual", "visual-only"], shards=[str(val_shards)], gt=gt_path,
                           title="avis demo: audio-visual vs visual-only")
    except (AvisError, OSError) as e:
        log.warning("the avis view page could not be written: %s", e)
        return None
    return _rel(index, out)


def _pretrain_record(run: Path) -> dict | None:
    """What the engine's audio pretraining stage reached in ``run`` (None without one)."""
    from avis.engine.audio_pretrain import RECORD

    try:
        return json.loads((run / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _pick_overlay_video(gt: dict, results: list[dict]) -> int | None:
    """The val video with the most instances (ties: the lowest id): the most to look at."""
    if not gt["videos"]:
        return None
    counts = {v["id"]: 0 for v in gt["videos"]}
    for a in gt["annotations"]:
        counts[a["video_id"]] = counts.get(a["video_id"], 0) + 1
    return min(counts, key=lambda v: (-counts[v], v))


def _nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def _rel(path, out: Path) -> str:
    return os.path.relpath(path, out)


def _write_report(out: Path, s: dict) -> None:
    from avis.evaluation import av_table
    from avis.evaluation.ttest import format_table, headline_text

    d, h, row = s["audio_dependence"], s["headline"], s["table"]
    st, seeds = s["settings"], s["seeds"]
    ap = next((r for r in s["tests"] if r["metric"] == "AP"), None)
    arms = ("audio-visual", "visual-only")
    recipe = h["level"] == "recipe"
    per_seed = ["| metric | " + " | ".join([f"audio-visual seed {x}" for x in seeds]
                                           + [f"visual-only seed {x}" for x in seeds]) + " |",
                "|---|" + "---|" * (2 * len(seeds))]
    for k in ("AP", "AP50", "AP75", "AR1", "AR10"):
        per_seed.append(f"| {k} | " + " | ".join(_pct(m[k]) for m in s["metrics"]["av"] + s["metrics"]["visual"])
                        + " |")
    lines = [
        f"# avis demo: does sound help? (audio dependence d = {d:g})",
        "",
        ("> QUICK smoke run: a handful of tiny videos and a few training steps; it checks the pipeline, the "
         "numbers mean nothing.\n" if s["quick"] else ""),
        f"Synthetic set (`avis synth`, seed {s['seed']}): {st['videos']} videos of {st['size'][0]}x{st['size'][1]}"
        f" px, {st['frames']} frames at {st['fps']:g} fps; share of audio-dependent videos d = {d:g} (in those, "
        "look-alike twins are pixel-identical and only their sound tells them apart). Both arms: RCF tiny, "
        f"{st['steps']} training steps, training seeds {', '.join(map(str, seeds))}, the same data; they differ "
        "only in the audio branch. The audio-visual arm's engine first pretrains its log-mel network on the "
        "training split's per-frame category presence and `sounding` flags (`audio.pretrain`, "
        f"{st['audio_pretrain_steps']} steps) and trains with the auxiliary audio-tagging loss "
        "(`audio.supervision`; docs/audio.md).",
        "",
        "## Table X / XII style (val split, AP in %, means over the seeds)",
        "",
        av_table.to_markdown([row]),
        "",
        f"**Verdict** (the headline of `avis ttest`, A = audio-visual, B = visual-only; test: "
        f"`{h['test']}`, {h['level']} level): {headline_text(_nan_row(h), arms)}.",
        "",
        (f"The test is recipe-level (`{h['test']}`: a t test whose variance has a training-seed part and a "
         f"test-video part, `avis.evaluation.recipes`): {h['n_a']} vs {h['n_b']} training seeds, {h['n_videos']} "
         "val videos; its null is 'the two recipes are equally good on this data distribution', with both the "
         "training seeds and the test videos random." if recipe else
         f"With one training seed per arm the test (`{h['test']}`) compares two trained models and says "
         "nothing about the recipes: another seed could reverse it; `--seeds 3` (the default) gives the "
         "recipe-level verdict."),
        "",
        f"`{h['metric']}` is the mean top-1 sample: predictions are matched to ground-truth instances ignoring "
        "the category (greedy by score), and an instance scores the IoU of its match when the match has the right "
        "category, 0 otherwise or when missed.",
        "",
        (f"AP: {headline_text(_nan_row(ap), arms)}. The top-1 sample judges each object by the most confident "
         "prediction on it (a wrong label there scores 0); AP also charges every other false positive, so read "
         "both." if ap else ""),
        "",
        "Per run (val split, %):",
        "",
        *per_seed,
        "",
        "## All tests (`avis ttest`, A = audio-visual, B = visual-only)",
        "",
        format_table([_nan_row(r) for r in s["tests"] + s["diagnostics"]], markdown=True),
        "",
        f"Rows of level `{h['level']}` are the verdict over all seeds. Rows of level `model` after them are "
        f"per-model diagnostics of seed {seeds[0]} of each arm (instances treated as independent): `paper` = the "
        "RCF paper's unpaired test on the IoUs of matched predictions above the threshold (Student / Welch); "
        "`paired-video` averages per video first; `bootstrap` = 95 % CI of the AP difference resampling videos. "
        "Every p is beside its signed effect: `diff` is A - B, `p_one_sided` is for 'A better than B', "
        "`p_value` two-sided.",
        "",
        "## Look at the results",
        "",
    ]
    if s.get("view"):
        lines.append(f"- **[{s['view']}]({s['view']})**: the `avis view` page of seed {seeds[0]} of both arms side "
                     "by side (ground truth, audio-visual and visual-only masks over each val video with its "
                     "sound, per-instance IoU and score, sortable). Written by "
                     f"`avis view eval/av/seed{seeds[0]} --compare eval/visual/seed{seeds[0]} --labels "
                     "audio-visual visual-only --gt synth/val.json --shards shards/val --out view`; add `--serve` for a local server.")
    if "overlay" in s["exports"]["av"]:
        lines.append(f"- Overlay video of the audio-visual model's predictions (seed {seeds[0]}), with the video's "
                     f"sound: [{_rel(s['exports']['av']['overlay'], out)}]({_rel(s['exports']['av']['overlay'], out)})")
    lines += ["", "![IoU distributions](iou_distributions.png)", "", "## Files", ""]
    for key in ("av", "visual"):
        lines.append(f"- YTVIS results ({key}, seed {seeds[0]}): [{_rel(s['exports'][key]['ytvis'], out)}]"
                     f"({_rel(s['exports'][key]['ytvis'], out)}); per seed: eval/{key}/seed*/ (results.json, "
                     "metrics.json, samples.csv); runs/{key}/seed*/ (config.yaml, metrics.jsonl, checkpoints/"
                     + ("; audio_pretrain.json" if key == "av" else "") + ")")
    cpu = s["seconds"]
    lines += ["- Tests: [ttest.json](ttest.json), [ttest.csv](ttest.csv), [ttest.md](ttest.md); table: "
              "[table.csv](table.csv); everything: [summary.json](summary.json)", "",
              "## Time (s)", "",
              f"Wall-clock per stage, {s['jobs']} training(s) at a time. `total_cpu` is the CPU time of all "
              "threads of the demo and its worker processes, `runs_cpu` that of the trainings and evaluations. "
              "`quiet_wall_estimate` is the wall clock this run would take on a quiet machine with "
              f"{s['jobs']} free core(s): the CPU time outside the runs plus the runs' CPU times scheduled in "
              "order on the workers (on a busy machine the wall clock grows, the CPU time hardly). torch "
              f"threads: {torch_threads()}.", "",
              "| stage | seconds |", "|---|---|",
              *[f"| {k} | {v:.1f} |" for k, v in cpu.items()], ""]
    with atomic_open(out / "report.md", "w") as f:
        f.write("\n".join(lines))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _pct(v) -> str:
    return "-" if v is None or v < 0 else f"{100 * v:.1f}"


def _nan_row(r: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in r.items()}
