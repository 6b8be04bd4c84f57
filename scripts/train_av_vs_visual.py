#!/usr/bin/env python
"""Train audio-visual vs visual-only RCF over seeds x {audio, no audio} x reference frames, evaluate, test:
the paper's Tables X / XII on your data.

    # CPU, minutes per run: RCF tiny (the demo's recipe), 2 seeds, 1..5 reference frames
    python scripts/train_av_vs_visual.py --shards data/shards --out runs/avcmp --seeds 0 1 --steps 300
    # GPU, the paper's preset (RCF ResNet-50, VGGish, 60k steps) -- give local weights as overrides
    python scripts/train_av_vs_visual.py --shards data/shards --out runs/avcmp --preset paper \\
        model.backbone_weights=/weights/resnet50.pth audio.encoder.weights=/weights/vggish.pth

``--shards DIR`` holds ``train/`` and ``val/`` (each a folder of shards from ``avis build`` with its
manifest); or give ``--train`` and ``--val`` (folder, glob or brace pattern). Every run is a call into the
training engine (``avis.engine.train.train_experiment``, the same as ``avis train experiment=...``) and the
evaluator (``avis.engine.evaluate.evaluate_checkpoint``, the same as ``avis eval``):

    OUT/ref<k>/<av|visual>/seed<s>/         the run: config.yaml, metrics.jsonl, checkpoints/
    OUT/ref<k>/<av|visual>/seed<s>/eval/    results.json, metrics.json, samples.csv, gt.json (val split)
    OUT/tables/table.md, table.csv           the Table X / XII style table (scripts/significance_test.py)
    OUT/tables/verdict_ref<k>.json, tests_ref<k>.md/.csv, iou_ref<k>.png   the verdict and every test per setting

A run whose ``eval/metrics.json`` exists is skipped, so an interrupted sweep resumes where it stopped (the
engine's ``trainer.resume`` continues a run that stopped mid-training). Extra ``key=value`` arguments are
hydra overrides given to every run (``audio.*`` keys only to the audio-visual runs). The two arms of a setting
differ only in the hydra ``audio`` group; the audio-visual arm has the audio supervision of its ``audio`` group
(``audio.supervision``, ``audio.pretrain``: docs/audio.md) by default: ``audio.supervision.enabled=false
audio.pretrain.steps=0`` turns it off.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from avis.errors import AvisError, InputError  # noqa: E402

PRESETS = {  # name -> (audio-visual experiment, visual-only experiment, default steps)
    "tiny": ("rcf_av_tiny", "rcf_visual_tiny", None),
    "paper": ("rcf_av", "rcf_visual", None),
}
ARMS = ("av", "visual")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--shards", help="folder with train/ and val/ shard folders")
    p.add_argument("--train", help="training shards (folder, glob or brace pattern)")
    p.add_argument("--val", help="validation shards")
    p.add_argument("--out", required=True, help="output folder of the sweep")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="tiny: RCF tiny with the demo's CPU recipe; paper: the paper's preset (GPU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    p.add_argument("--refs", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="reference frames (1..5)")
    p.add_argument("--steps", type=int, help="training steps per run (default: the preset's trainer)")
    p.add_argument("--metric", choices=("top1", "iou"), default="top1",
                   help="per-instance sample behind the table's IoU columns (see scripts/significance_test.py)")
    p.add_argument("--device", default="auto", help="evaluation device (training: trainer.device)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("overrides", nargs="*", help="hydra overrides for every run (key=value)")
    return p.parse_args(argv)


def plan(refs, seeds) -> list[tuple[int, str, int]]:
    """The runs, in the order they are trained: per setting, per seed, both arms back to back."""
    return [(r, arm, s) for r in refs for s in seeds for arm in ARMS]


def arm_overrides(overrides, arm: str) -> list[str]:
    """The overrides of one arm: ``audio.*`` keys (``audio.pretrain.steps=0``, ``audio.supervision.weight=2``)
    only reach the audio-visual arm, whose audio group has them; the visual-only arm's audio is none."""
    return [o for o in overrides if arm == "av" or not o.lstrip("+~").startswith("audio.")]


def run_dir(out: Path, ref: int, arm: str, seed: int) -> Path:
    return out / f"ref{ref}" / arm / f"seed{seed}"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except AvisError as e:
        print(f"train_av_vs_visual: error: {e}", file=sys.stderr)
        return e.exit_code


def _main(args) -> int:
    from avis.demo import FULL
    from avis.engine.evaluate import evaluate_checkpoint
    from avis.engine.train import train_experiment
    from avis.evaluation import av_table
    from avis.io.ytvis import load_annotations

    if args.shards:
        train, val = Path(args.shards) / "train", Path(args.shards) / "val"
        for p in (train, val):
            if not p.is_dir():
                raise InputError("missing (--shards DIR needs train/ and val/ folders of shards)", p)
    elif args.train and args.val:
        train, val = args.train, args.val
    else:
        raise InputError("give --shards DIR, or --train and --val")
    if any(r < 0 for r in args.refs):
        raise InputError("--refs must be >= 0")
    out = Path(args.out)
    av_exp, vis_exp, _ = PRESETS[args.preset]
    base = list(FULL.overrides) if args.preset == "tiny" else []
    steps = args.steps if args.steps is not None else (FULL.steps if args.preset == "tiny" else None)
    runs = plan(args.refs, args.seeds)
    print(f"{len(runs)} runs ({len(args.refs)} reference-frame settings x {len(args.seeds)} seeds x 2 arms) "
          f"-> {out}")
    if args.dry_run:
        for ref, arm, seed in runs:
            print(f"  {run_dir(out, ref, arm, seed)}")
        return 0
    for i, (ref, arm, seed) in enumerate(runs):
        rd = run_dir(out, ref, arm, seed)
        if (rd / "eval" / "metrics.json").is_file():
            print(f"[{i + 1}/{len(runs)}] {rd}: done before, skipped")
            continue
        t0 = time.perf_counter()
        print(f"\n[{i + 1}/{len(runs)}] train {arm} ref={ref} seed={seed} -> {rd}", flush=True)
        overrides = [*base, f"model.delta={ref}", "trainer.resume=true", *arm_overrides(args.overrides, arm)]
        if steps is None:  # the preset's trainer decides; the engine needs a number for the checkpoint cadence
            from avis.engine.config import compose

            n = int(compose([f"experiment={av_exp}"]).trainer.max_steps)
        else:
            n = steps
        ckpt = train_experiment(av_exp if arm == "av" else vis_exp, rd, train, seed, n, overrides)
        summary = evaluate_checkpoint(ckpt, rd / "eval", shards=val, device=args.device)
        m = summary["metrics"] or {}
        print(f"    AP {100 * m.get('AP', float('nan')):.1f}, AP50 {100 * m.get('AP50', float('nan')):.1f} "
              f"({time.perf_counter() - t0:.0f} s)")
    first = run_dir(out, args.refs[0], "av", args.seeds[0]) / "eval" / "gt.json"
    rows = av_table.summarize_runs(out, load_annotations(first), out / "tables", ARMS, args.metric)
    print("\n" + av_table.to_markdown(rows))
    print(f"\nwritten: {out / 'tables' / 'table.md'}, {out / 'tables' / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
