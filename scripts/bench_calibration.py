"""Benchmark: is the verdict of ``avis ttest`` calibrated? False-positive rate of A/A comparisons and power.

An A/A comparison trains the same recipe with disjoint seeds on the control set and tests "A better than B";
the null is true by construction, so a test at alpha = 0.05 may reject in at most 5 % of such comparisons.

1. **Real runs** (``--collect DIR``): the demo's control set (``avis synth``-style, audio dependence 0, 160
   videos, data seed 0) and the demo's visual-only recipe (RCF tiny, 1600 steps) trained with each of
   ``--real-seeds``, evaluated on the 40 val videos (90 instances). Resumable: a run with results is reused.
   Reported: the per-seed metrics; every split of the seeds into two disjoint halves (recipe-level verdict,
   ``compare_recipes``); every pair of single seeds (the OLD headline, a paired t over instances of one run
   per arm, and the new model-level test).
2. **Variance components** fitted on those runs: per ground-truth instance i of video v and run s, the
   top-1 sample at IoU 0.5 is ``1[mu + c_v + b_i + a_s + e_si > 0] * q`` (probit: video, instance, seed
   effects and seed x instance noise e ~ N(0, 1); q an IoU drawn from the real runs' non-zero samples).
   mu, sd(c), sd(b), sd(a) are fitted by simulated moments (mean, and the variances over seeds, instances and
   videos of the real runs x instances table).
3. **Simulated A/A** from the fitted model, ``--reps`` comparisons per setting, each with a fresh test set
   (video and instance effects: the test set is a sample from the distribution) and fresh seeds, at 2, 3, 5
   seeds per arm, and under stress settings (seed effect x 0 and x 2; the arms differing per video with zero
   mean: equal recipes on the distribution, unequal on any one test set). Tests compared, at alpha = 0.05:
   ``new`` the verdict (:func:`avis.evaluation.recipes.two_way_test`, the production code); ``old`` the old
   headline (paired t over instances of the seed-averaged samples; with one seed per arm exactly the old
   ``avis ttest`` headline); ``seeds`` the old ``seeds-*`` rows (Welch t on the per-run values);
   ``bootstrap`` a two-way bootstrap (seeds resampled within arm, videos shared; percentile p).
4. **Power** of the verdict (one-sided, "A better", alpha = 0.05) at mean top-1 differences of 0.03 to 0.20.

    python scripts/bench_calibration.py --collect /tmp/calib --real-seeds 0 1 2 3 4 5 6 7 --reps 2000

(training the 8 runs takes about 1 h on a busy 2-core machine; the statistics about 10 min).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avis, not an installed one

from avis.evaluation.recipes import RunEval, RunScore, two_way_test  # noqa: E402

ALPHA = 0.05


# ------------------------------------------------------------------------------------------- real runs
def collect(out: Path, seeds: list[int]) -> tuple[dict, list[list[dict]]]:
    """Train and evaluate the control-set runs (resumable); returns the val ground truth and each run's results."""
    from avis.demo import FULL, build_shards, synthesize
    from avis.engine.evaluate import evaluate_checkpoint
    from avis.engine.train import train_experiment
    from avis.io.ytvis import load_annotations, load_results

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "shards" / "val").is_dir():
        build_shards(synthesize(out, 0.0, 0, FULL), out)
    gt = load_annotations(out / "synth" / "val.json")
    runs = []
    for s in seeds:
        rd = out / "runs" / f"seed{s}"
        res = rd / "eval" / "results.json"
        if not res.is_file():
            t0 = time.time()
            ckpt = train_experiment("rcf_visual_tiny", rd, out / "shards" / "train", s, FULL.steps,
                                    FULL.overrides, progress=False)
            evaluate_checkpoint(ckpt, rd / "eval", shards=out / "shards" / "val", gt=gt, progress=False)
            print(f"  trained and evaluated seed {s} ({time.time() - t0:.0f} s)", flush=True)
        runs.append(load_results(res, gt=gt))
    return gt, runs


def top1_table(gt: dict, runs: list[list[dict]], tau: float = 0.5):
    """Runs x instances top-1 samples, and the video index (0..V-1, ground-truth order) of each instance."""
    from avis.evaluation.samples import top1_context, top1_samples, top1_scores

    per = [top1_scores(top1_samples(top1_context(gt, r), tau)) for r in runs]
    keys = sorted(per[0])
    vids = sorted({int(v["id"]) for v in gt["videos"]})
    index = {v: i for i, v in enumerate(vids)}
    return np.array([[p[k] for k in keys] for p in per]), np.array([index[k[0]] for k in keys]), len(vids)


def real_a_a(gt: dict, runs: list[list[dict]]) -> dict:
    """Verdicts on every split of the real seeds into two halves, and single-seed tests on every pair."""
    evals = [RunEval(gt, r) for r in runs]
    from avis.evaluation.recipes import metric

    ms = [metric("top1@0.5"), metric("AP")]
    scores = {m.name: [m(e) for e in evals] for m in ms}
    k = len(runs) // 2
    splits = []
    for a in itertools.combinations(range(len(runs)), k):
        b = tuple(i for i in range(len(runs)) if i not in a)
        if len(b) == k and a < b:  # each unordered split once
            splits.append({"a": a, "b": b, **{name: two_way_test([sc[i] for i in a], [sc[i] for i in b])
                                              for name, sc in scores.items()}})
    y, video, _ = top1_table(gt, runs)
    pairs = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        old = sps.ttest_rel(y[i], y[j]).pvalue
        new = two_way_test([scores["top1@0.5"][i]], [scores["top1@0.5"][j]])["p_value"]
        pairs.append({"a": i, "b": j, "old": float(old), "new_model": float(new)})
    return {"k": k, "splits": splits, "pairs": pairs, "scores": scores}


# ---------------------------------------------------------------------------------------- the simulator
class Model:
    """The probit model of the top-1 samples (module docstring), on the real test set's video structure."""

    def __init__(self, sizes: np.ndarray, ious: np.ndarray, mu=0.0, sd_c=0.5, sd_b=1.0, sd_a=0.2):
        self.sizes, self.ious = np.asarray(sizes), np.asarray(ious)
        self.video = np.repeat(np.arange(len(sizes)), sizes)
        self.mu, self.sd_c, self.sd_b, self.sd_a = mu, sd_c, sd_b, sd_a

    def test_set(self, rng) -> np.ndarray:
        """Latent difficulty of each instance of a fresh test set (video + instance effects)."""
        return (self.mu + self.sd_c * rng.standard_normal(len(self.sizes))[self.video]
                + self.sd_b * rng.standard_normal(len(self.video)))

    def runs(self, rng, base: np.ndarray, seeds: int, shift=0.0, sd_a=None) -> np.ndarray:
        """Seeds x instances top-1 samples of one arm on the test set ``base`` (``shift``: the arm's effect,
        a scalar or one per instance)."""
        sd_a = self.sd_a if sd_a is None else sd_a
        z = base[None] + shift + sd_a * rng.standard_normal((seeds, 1)) + rng.standard_normal((seeds, len(base)))
        return (z > 0) * rng.choice(self.ious, size=z.shape)


def moments(y: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Mean of the correct indicator; variances of its means over seeds, over instances, over videos."""
    c = (y > 0).astype(float)
    inst = c.mean(0)
    nv = video.max() + 1
    vid = np.bincount(video, inst, nv) / np.bincount(video, minlength=nv)
    return np.array([c.mean(), c.mean(1).var(ddof=1), inst.var(ddof=1), vid.var(ddof=1)])


def fit(y: np.ndarray, video: np.ndarray, sims: int = 300, seed: int = 0) -> tuple[Model, np.ndarray, np.ndarray]:
    """Fit mu, sd(c), sd(b), sd(a) by simulated moments (common random numbers); returns the model, the real
    moments and the fitted model's."""
    sizes = np.bincount(video)
    target = moments(y, video)
    nz = y[y > 0]
    s, n, nv = y.shape[0], y.shape[1], len(sizes)
    rng = np.random.default_rng(seed)
    zc, zb = rng.standard_normal((sims, nv)), rng.standard_normal((sims, n))
    za, ze = rng.standard_normal((sims, s, 1)), rng.standard_normal((sims, s, n))
    vid = np.repeat(np.arange(nv), sizes)

    def sim_moments(theta):
        mu, lc, lb, la = theta
        z = mu + np.exp(lc) * zc[:, vid][:, None] + np.exp(lb) * zb[:, None] + np.exp(la) * za + ze
        c = (z > 0).astype(float)
        inst = c.mean(1)
        vmean = np.stack([np.bincount(vid, row, nv) for row in inst]) / sizes
        return np.array([c.mean(), c.mean(2).var(ddof=1, axis=1).mean(), inst.var(ddof=1, axis=1).mean(),
                         vmean.var(ddof=1, axis=1).mean()])

    scale = np.maximum(np.abs(target), 1e-4)

    def loss(theta):
        return float((((sim_moments(theta) - target) / scale) ** 2).sum())

    best = min((optimize.minimize(loss, x0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-6,
                                                                            "maxiter": 800})
                for x0 in ([0.0, np.log(0.5), 0.0, np.log(0.2)], [0.0, np.log(0.2), np.log(1.5), np.log(0.5)])),
               key=lambda r: r.fun)
    mu, lc, lb, la = best.x
    return Model(sizes, nz, mu, np.exp(lc), np.exp(lb), np.exp(la)), target, sim_moments(best.x)


# ----------------------------------------------------------------------------------------------- the tests
def run_scores(y: np.ndarray, video: np.ndarray, nv: int) -> list[RunScore]:
    counts = np.bincount(video, minlength=nv)
    return [RunScore.from_video_sums(np.bincount(video, row, nv), counts) for row in y]


def bootstrap_p(ya, yb, video, nv, rng, n: int = 999) -> float:
    """Two-way bootstrap: seeds resampled within each arm, videos (shared by the arms) with replacement;
    percentile p-value 2 (min(#D* <= 0, #D* >= 0) + 1) / (n + 1)."""
    ta = np.stack([np.bincount(video, row, nv) for row in ya])  # seeds x videos sums
    tb = np.stack([np.bincount(video, row, nv) for row in yb])
    cnt = np.bincount(video, minlength=nv).astype(float)
    w = rng.multinomial(nv, np.full(nv, 1 / nv), size=n).astype(float)
    ca = rng.multinomial(len(ya), np.full(len(ya), 1 / len(ya)), size=n)
    cb = rng.multinomial(len(yb), np.full(len(yb), 1 / len(yb)), size=n)
    tot = w @ cnt
    d = ((ca @ ta) * w).sum(1) / len(ya) / tot - ((cb @ tb) * w).sum(1) / len(yb) / tot
    return min(1.0, 2 * (min((d <= 0).sum(), (d >= 0).sum()) + 1) / (n + 1))


def simulate(model: Model, seeds: int, reps: int, rng, shift=0.0, sd_a=None, sd_arm_video=0.0,
             methods=("new", "old", "seeds", "bootstrap")) -> dict:
    """p-values of each method over ``reps`` comparisons; ``shift``: A's latent effect; ``sd_arm_video``: the
    arms' per-video difference (zero mean over the distribution)."""
    nv = len(model.sizes)
    out = {m: [] for m in methods}
    out["diff"] = []
    for _ in range(reps):
        base = model.test_set(rng)
        g = sd_arm_video * rng.standard_normal(nv)[model.video] / 2 if sd_arm_video else 0.0
        ya = model.runs(rng, base, seeds, shift + g, sd_a)
        yb = model.runs(rng, base, seeds, -g, sd_a)
        out["diff"].append(ya.mean() - yb.mean())
        if "new" in methods:
            r = two_way_test(run_scores(ya, model.video, nv), run_scores(yb, model.video, nv), ALPHA)
            out["new"].append((r["p_value"], r["p_one_sided"]))
        if "old" in methods:
            t = sps.ttest_rel(ya.mean(0), yb.mean(0))
            out["old"].append((t.pvalue, sps.t.sf(t.statistic, t.df)))
        if "seeds" in methods and seeds >= 2:
            t = sps.ttest_ind(ya.mean(1), yb.mean(1), equal_var=False)
            out["seeds"].append((t.pvalue, sps.t.sf(t.statistic, t.df)))
        if "bootstrap" in methods and seeds >= 2:
            out["bootstrap"].append((bootstrap_p(ya, yb, model.video, nv, rng), np.nan))
    return {k: np.array(v, float) for k, v in out.items() if len(v)}


def rate(p: np.ndarray) -> tuple[float, float]:
    """Rejection rate at ALPHA (NaN p = not rejected) and its binomial standard error."""
    r = float(np.mean(np.nan_to_num(p, nan=1.0) < ALPHA))
    return r, float(np.sqrt(r * (1 - r) / len(p)))


def fmt(r) -> str:
    return f"{100 * r[0]:.1f} % (± {100 * r[1]:.1f})"


# ------------------------------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", required=True, help="folder of the control set and the real runs")
    ap.add_argument("--real-seeds", type=int, nargs="+", default=list(range(8)), help="seeds of the real runs")
    ap.add_argument("--reps", type=int, default=2000, help="simulated comparisons per setting")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args(argv)

    import scipy

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    t0 = time.time()
    report: dict = {"alpha": ALPHA, "reps": args.reps}
    gt, runs = collect(Path(args.collect), args.real_seeds)
    y, video, nv = top1_table(gt, runs)
    print(f"\n## Real runs: {len(runs)} seeds of the visual-only recipe on the control set, {nv} val videos, "
          f"{y.shape[1]} instances")
    real = real_a_a(gt, runs)
    top1 = [s.value for s in real["scores"]["top1@0.5"]]
    apv = [s.value for s in real["scores"]["AP"]]
    print("per seed: top1@0.5 " + " ".join(f"{v:.3f}" for v in top1) + " | AP " + " ".join(f"{v:.3f}" for v in apv))
    print(f"sd over seeds: top1@0.5 {np.std(top1, ddof=1):.4f}, AP {np.std(apv, ddof=1):.4f}")
    n_split = len(real["splits"])
    for name in ("top1@0.5", "AP"):
        ps = np.array([s[name]["p_value"] for s in real["splits"]])
        print(f"real A/A, {real['k']} vs {real['k']} seeds, {n_split} splits, verdict on {name}: "
              f"{int((ps < ALPHA).sum())} with p < 0.05 (smallest p {np.nanmin(ps):.3f})")
    old = np.array([p["old"] for p in real["pairs"]])
    new = np.array([p["new_model"] for p in real["pairs"]])
    print(f"real single-seed pairs ({len(old)}): OLD headline p < 0.05 in {int((old < ALPHA).sum())}, the new "
          f"model-level test in {int((new < ALPHA).sum())} (both compare two trained models, which do differ)")
    report["real"] = {"top1": top1, "AP": apv, "splits_k": real["k"],
                      "splits_p_top1": [s["top1@0.5"]["p_value"] for s in real["splits"]],
                      "splits_p_ap": [s["AP"]["p_value"] for s in real["splits"]],
                      "pairs_p_old": old.tolist(), "pairs_p_new_model": new.tolist()}

    model, target, fitted = fit(y, video)
    print(f"\n## Fitted model: mu {model.mu:.3f}, sd video {model.sd_c:.3f}, sd instance {model.sd_b:.3f}, "
          f"sd seed {model.sd_a:.3f} (seed x instance noise sd 1)")
    names = ("mean correct", "var over seeds", "var over instances", "var over videos")
    for n_, t_, f_ in zip(names, target, fitted):
        print(f"  {n_:20s} real {t_:.5f}  fitted {f_:.5f}")
    report["model"] = {"mu": model.mu, "sd_video": model.sd_c, "sd_instance": model.sd_b, "sd_seed": model.sd_a,
                       "moments_real": target.tolist(), "moments_fitted": fitted.tolist()}

    rng = np.random.default_rng(args.seed)
    print(f"\n## Simulated A/A: false-positive rate at alpha = {ALPHA} (two-sided p < 0.05), {args.reps} "
          "comparisons each (± binomial SE)")
    print("| setting | seeds per arm | new (verdict) | old headline | seeds-only Welch | two-way bootstrap |")
    print("|---|---|---|---|---|---|")
    settings = [("fitted", {}), ("seed sd x 0", {"sd_a": 0.0}), ("seed sd x 2", {"sd_a": 2 * model.sd_a}),
                ("arms differ per video (sd 1.5), equal on average", {"sd_arm_video": 1.5})]
    report["a_a"] = []
    for label, kw in settings:
        for seeds in ((1, 2, 3, 5) if label == "fitted" else (2, 3, 5)):
            res = simulate(model, seeds, args.reps, rng, **kw)
            cells = [fmt(rate(res[m][:, 0])) if m in res else "-" for m in ("new", "old", "seeds", "bootstrap")]
            one = rate(res["new"][:, 1])
            print(f"| {label} | {seeds} | " + " | ".join(cells) + " |", flush=True)
            report["a_a"].append({"setting": label, "seeds": seeds,
                                  **{m: rate(res[m][:, 0]) for m in ("new", "old", "seeds", "bootstrap") if m in res},
                                  "new_one_sided": one})
    # power: A's latent shift for target mean differences (a large-sample Monte Carlo of the mean difference)
    print("\n## Power of the verdict: rejection rate of 'A better' (one-sided p < 0.05), fitted model")
    grid = np.linspace(0, 2.0, 21)
    base_rng = np.random.default_rng(1)
    diffs = [np.mean(simulate(model, 1, 400, base_rng, shift=s, methods=())["diff"]) for s in grid]
    print("| mean top-1 difference | latent shift | 2 seeds | 3 seeds | 5 seeds |")
    print("|---|---|---|---|---|")
    report["power"] = []
    for target_d in (0.03, 0.05, 0.10, 0.20):
        shift = float(np.interp(target_d, diffs, grid))
        cells = []
        for seeds in (2, 3, 5):
            res = simulate(model, seeds, args.reps // 2, rng, shift=shift, methods=("new",))
            cells.append(rate(res["new"][:, 1]))
            report["power"].append({"diff": target_d, "shift": shift, "seeds": seeds, "power": cells[-1]})
        print(f"| +{target_d:.2f} | {shift:.3f} | " + " | ".join(fmt(c) for c in cells) + " |", flush=True)
    print(f"\n(total {time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
