"""``avis demo``: does sound help? The whole workflow on the embedded synthetic dataset, in minutes on a CPU.

Stages (each a Python call into the piece that does it, progress shown throughout)::

    1 synthesize   data_tools.synth.generate       audio-dependent videos (look-alike twins told apart by sound)
    2 build        data_tools.build                 train / val WebDataset shards
    3 pretrain     pretrain_audio                   the audio arm's log-mel network on the train split's sound labels
    4 train        avis.engine.train                RCF tiny, audio-visual and visual-only (same seed, same data)
    5 evaluate     avis.engine.evaluate             both checkpoints online over the val shards -> YTVIS metrics, HOTA
    6 significance avis.evaluation.ttest           the verdict (compare_recipes; model level with one seed per arm)
                                                   and the per-model diagnostics (compare)
    7 export       data_tools.export.export         YTVIS results of both arms, one overlay video with sound
    8 report       DIR/report.md                    the Table X / XII style table, plots, links

    avis demo                               # -> demo_out/report.md
    avis demo --audio-dependence 0          # the control: sound carries no information about the objects
    avis demo --quick --out /tmp/q          # seconds: a smoke run on a handful of tiny videos (numbers meaningless)

The two arms differ only in the hydra ``audio`` group (``experiment=rcf_av_tiny`` vs ``rcf_visual_tiny``); the
demo's training recipe (steps, learning rate, sizes: :data:`FULL`) is given to both as hydra overrides.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from avis.errors import ConfigError
from avis.io.atomic import atomic_open

log = logging.getLogger("avis.demo")

STAGES = 8
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
    steps: int = 1600           # training steps per arm
    audio_pretrain_steps: int = 500   # steps of pretraining the audio encoder's log-mel network (0: none)
    overrides: tuple[str, ...] = field(default_factory=tuple)  # hydra overrides for both arms
    bootstrap: int = 1000


# The recipe used by `avis demo` (tuned so that the tiny model learns masks and, with audio, the twins).
FULL = DemoSettings(overrides=(
    "data.batch_size=4", "data.scales=[64]", "data.test_size=64", "data.test_max_size=96", "data.max_size=96",
    "data.clips_per_video=2", "optim.optimizer.lr=2e-3", "optim.backbone_lr_mult=1.0", "optim.clip_grad_norm=1.0",
))
# Seconds: the pipeline end to end on a handful of tiny videos (tests, smoke runs); the numbers mean nothing.
QUICK = DemoSettings(videos=4, val_fraction=0.5, size=(64, 48), frames=6, fps=6.0, steps=3, bootstrap=50,
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of both trainings (default 0)")
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
    if args.overrides:
        settings = replace(settings, overrides=settings.overrides + tuple(args.overrides))
    summary = run_demo(args.out, audio_dependence=args.audio_dependence, seed=args.seed, settings=settings,
                       quick=args.quick)
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
def run_demo(out, audio_dependence: float = 1.0, seed: int = 0, settings: DemoSettings = FULL,
             quick: bool = False, progress: bool = True) -> dict:
    """The whole demo into ``out``; returns the summary written to ``out/summary.json``."""
    if not 0.0 <= audio_dependence <= 1.0:
        raise ConfigError(f"--audio-dependence {audio_dependence}: must be in [0, 1]")
    if settings.steps < 1:
        raise ConfigError(f"--steps {settings.steps}: need at least 1")
    from avis.engine.evaluate import evaluate_checkpoint
    from avis.engine.train import train_experiment
    from avis.evaluation import av_table
    from avis.io.ytvis import load_annotations

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    times = {}
    print(f"avis demo: audio dependence d = {audio_dependence:g}, seed {seed}, {settings.videos} videos "
          f"{settings.size[0]}x{settings.size[1]}, {settings.steps} training steps per arm -> {out}", flush=True)

    t0 = _stage(1, "synthesize the audio-visual dataset (data_tools.synth)")
    synth_dir = synthesize(out, audio_dependence, seed, settings)
    times["synthesize"] = _done(t0)

    t0 = _stage(2, "build train / val shards (data_tools.build)")
    shards = build_shards(synth_dir, out)
    times["build"] = _done(t0)

    # the audio arm's supervision is the engine's (audio.supervision, audio.pretrain: docs/audio.md); the demo
    # only sets its pretraining length
    arm_overrides = {"av": [f"audio.pretrain.steps={settings.audio_pretrain_steps}"], "visual": []}

    runs = {}
    for i, (key, experiment, label) in enumerate(ARMS):
        t0 = _stage(4, f"train {label} RCF tiny ({experiment}, {settings.steps} steps) [{i + 1}/2]")
        runs[key] = train_experiment(experiment, out / "runs" / key, shards["train"], seed, settings.steps,
                              (*settings.overrides, *arm_overrides[key]), progress)
        times[f"train_{key}"] = _done(t0)

    gt = load_annotations(synth_dir / "val.json")
    evals = {}
    for i, (key, _, label) in enumerate(ARMS):
        t0 = _stage(5, f"evaluate {label} on the val split [{i + 1}/2]")
        evals[key] = evaluate_checkpoint(runs[key], out / "eval" / key, shards=shards["val"], gt=gt,
                                         progress=progress)
        m = evals[key]["metrics"]
        times[f"eval_{key}"] = _done(t0, f"AP {100 * m['AP']:.1f}, AP50 {100 * m['AP50']:.1f}, "
                                         f"HOTA {100 * m['HOTA']:.1f}")

    t0 = _stage(6, "significance (avis.evaluation.ttest: audio-visual = A, visual-only = B)")
    cmp = significance(gt, [evals["av"]["results"]], [evals["visual"]["results"]], out, settings.bootstrap, seed)
    h = cmp["headline"]
    times["ttest"] = _done(t0, f"{h['metric']} ({h['level']} level): {h['mean_a']:.3f} vs {h['mean_b']:.3f}, "
                               f"diff {h['diff']:+.3f}, p(audio-visual better) = {h['p_one_sided']:.3g}")

    t0 = _stage(7, "export (data_tools.export: YTVIS results, one overlay video with sound)")
    overlay_video = _pick_overlay_video(gt, evals["av"]["results"])
    exports = {key: export_arm(evals[key]["results"], gt, synth_dir, out / "export" / key,
                               overlay_video if key == "av" else None) for key, _, _ in ARMS}
    times["export"] = _done(t0)

    t0 = _stage(8, "report")
    ma, mb = evals["av"]["metrics"], evals["visual"]["metrics"]
    row = av_table.table_row(1, cmp)
    with atomic_open(out / "table.csv", "w") as f:
        f.write(av_table.to_csv([row]))
    times["total"] = time.perf_counter() - t_start
    times["total_cpu"] = time.process_time() - cpu_start  # all threads of this process: the load-free cost
    summary = {"audio_dependence": audio_dependence, "seed": seed, "quick": quick, "settings": asdict(settings),
               "metrics": {"av": ma, "visual": mb}, "table": row, "headline": h, "tests": cmp["rows"],
               "diagnostics": cmp["diagnostics"],
               "overlay_video": overlay_video, "audio_pretrain": _pretrain_record(out / "runs" / "av"), "exports": exports, "seconds": times,
               "report": str(out / "report.md")}
    _write_report(out, summary)
    from avis.io.ytvis import save_json

    save_json(_nan_to_none(summary), out / "summary.json", indent=2)
    _done(t0, f"total {times['total']:.0f} s")
    return summary


def _pretrain_record(run: Path) -> dict | None:
    """What the engine's audio pretraining stage reached in ``run`` (None without one)."""
    import json

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
    ma, mb = s["metrics"]["av"], s["metrics"]["visual"]
    st = s["settings"]
    ap = next((r for r in s["tests"] if r["metric"] == "AP"), None)
    arms = ("audio-visual", "visual-only")
    lines = [
        f"# avis demo: does sound help? (audio dependence d = {d:g})",
        "",
        ("> QUICK smoke run: a handful of tiny videos and a few training steps; it checks the pipeline, the "
         "numbers mean nothing.\n" if s["quick"] else ""),
        f"Synthetic set (`avis synth`, seed {s['seed']}): {st['videos']} videos of {st['size'][0]}x{st['size'][1]}"
        f" px, {st['frames']} frames at {st['fps']:g} fps; share of audio-dependent videos d = {d:g} (in those, "
        "look-alike twins are pixel-identical and only their sound tells them apart). Both arms: RCF tiny, "
        f"{st['steps']} training steps, the same seed and data; they differ only in the audio branch.",
        "",
        "## Table X / XII style (val split, AP in %)",
        "",
        av_table.to_markdown([row]),
        "",
        f"**Verdict** (the headline of `avis ttest`, A = audio-visual, B = visual-only): "
        f"{headline_text(_nan_row(h), arms)}.",
        "",
        f"`{h['metric']}` is the mean top-1 sample: predictions are matched to ground-truth instances ignoring "
        "the category (greedy by score), and an instance scores the IoU of its match when the match has the right "
        "category, 0 otherwise or when missed. "
        + (f"The test is recipe-level: {h['n_a']} vs {h['n_b']} training seeds, {h['n_videos']} val videos; its "
           "null is 'the two recipes are equally good on this data distribution', with both the training seeds "
           "and the test videos random." if h["level"] == "recipe" else
           "With one training seed per arm the test is over the val videos only: another seed could reverse it; "
           "several seeds per arm give the recipe-level verdict."),
        "",
        (f"AP: {headline_text(_nan_row(ap), arms)}. The top-1 sample judges each object by the most confident "
         "prediction on it (a wrong label there scores 0); AP also charges every other false positive, so read "
         "both." if ap else ""),
        "",
        "| metric | audio-visual | visual-only |",
        "|---|---|---|",
        *[f"| {k} | {_pct(ma[k])} | {_pct(mb[k])} |" for k in ("AP", "AP50", "AP75", "AR1", "AR10")],
        "",
        "## All tests (`avis ttest`, A = audio-visual, B = visual-only)",
        "",
        format_table([_nan_row(r) for r in s["tests"] + s["diagnostics"]], markdown=True),
        "",
        "Rows of level `model` after the verdict are per-model diagnostics of one seed per arm (instances "
        "treated as independent): `paper` = the RCF paper's unpaired test on the IoUs of matched predictions above "
        "the threshold (Student / Welch); `paired-video` averages per video first; `bootstrap` = 95 % CI of the "
        "AP difference resampling videos. `diff` is A - B; `p_one_sided` is for 'A better than B'.",
        "",
        "## Plots and files",
        "",
        "![IoU distributions](iou_distributions.png)",
        "",
    ]
    if "overlay" in s["exports"]["av"]:
        lines.append(f"- Overlay video of the audio-visual model's predictions, with the video's sound: "
                     f"[{_rel(s['exports']['av']['overlay'], out)}]({_rel(s['exports']['av']['overlay'], out)})")
    for key in ("av", "visual"):
        lines.append(f"- YTVIS results ({key}): [{_rel(s['exports'][key]['ytvis'], out)}]"
                     f"({_rel(s['exports'][key]['ytvis'], out)}); metrics: [eval/{key}/metrics.json]"
                     f"(eval/{key}/metrics.json); per-instance samples: eval/{key}/samples.csv")
    lines += ["- Tests: [ttest.csv](ttest.csv), [ttest.md](ttest.md); table: [table.csv](table.csv); "
              "everything: [summary.json](summary.json)", "",
              "## Time (s)", "", f"Wall-clock per stage; `total_cpu` is the CPU time of all threads (on a busy "
              f"machine the wall clock grows, the CPU time hardly). torch threads: {torch_threads()}.", "",
              "| stage | seconds |", "|---|---|",
              *[f"| {k} | {v:.1f} |" for k, v in s["seconds"].items()], ""]
    with atomic_open(out / "report.md", "w") as f:
        f.write("\n".join(lines))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _pct(v) -> str:
    return "-" if v is None or v < 0 else f"{100 * v:.1f}"


def _nan_row(r: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in r.items()}
