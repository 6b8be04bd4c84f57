"""``avis train [hydra overrides]``: the hydra app that trains a method.

Examples::

    avis train experiment=rcf_av_tiny data.train.pattern='shards/train-*.tar'
    avis train experiment=rcf_visual trainer.max_steps=1000 hydra.run.dir=runs/vis
    avis train -m experiment=rcf_av,rcf_visual seed=0,1,2          # a hydra multirun sweep
    torchrun --nproc-per-node 4 -m avis train experiment=rcf_av     # DDP, one process per GPU

The config groups live in ``configs/`` (see :mod:`avis.engine.config`). From Python,
:func:`train_experiment` trains one preset into a folder (the demo and ``scripts/train_av_vs_visual.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from avis.engine.config import config_path
from avis.errors import AvisError, ConfigError

# the keys people set most, for ``avis train --help``
COMMON_KEYS = (
    ("data.train.pattern=DIR", "the training shards (a folder, glob, brace pattern, manifest.json or URL)"),
    ("data.val_pattern=DIR", "validation shards: periodic evaluation, the metrics table, checkpoints/best.pt"),
    ("trainer.max_steps=N", "optimisation steps (the paper: 60000; the tiny presets: 60)"),
    ("trainer.eval_every=N", "evaluate every N steps and at the end (0: never)"),
    ("trainer.ckpt_every=N", "write checkpoints/step_N.pt and last.pt every N steps and at the end"),
    ("trainer.best_metric=AP", "keep checkpoints/best.pt by this evaluation metric (null: none)"),
    ("trainer.resume=true", "continue the run in hydra.run.dir from its last checkpoint (or a path)"),
    ("trainer.device=cpu", "cpu, cuda, cuda:1 (default: cuda when there is a GPU)"),
    ("data.batch_size=N", "global batch (clips per step, split over torchrun processes)"),
    ("seed=N", "the seed of weights, data order and sampling"),
    ("hydra.run.dir=DIR", "the run folder (default: outputs/DATE/TIME)"),
)


def _experiments() -> list[tuple[str, str]]:
    """(name, its first comment line) of every ``configs/experiment/*.yaml``."""
    path = config_path()
    if path.startswith("pkg://"):
        from importlib.resources import files

        folder = files(path[len("pkg://"):]).joinpath("experiment")
    else:
        folder = Path(path) / "experiment"
    out = []
    for f in sorted(folder.iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".yaml"):
            continue
        lines = [ln[1:].strip() for ln in f.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
        out.append((f.name[:-len(".yaml")], lines[0] if lines else ""))
    return out


def _help_epilog() -> str:
    try:
        exps = _experiments()
    except (OSError, AvisError):
        exps = []
    width = max([len(n) for n, _ in exps] + [len(k) for k, _ in COMMON_KEYS])
    lines = ["experiments (experiment=NAME):"]
    lines += [f"  {n:<{width}}  {d}" for n, d in exps]
    lines += ["", "keys set most often (any key of `avis train --cfg job` can be set the same way):"]
    lines += [f"  {k:<{width}}  {d}" for k, d in COMMON_KEYS]
    lines += ["", "example:",
              "  avis train experiment=rcf_av_tiny data.train.pattern=demo_out/shards/train \\",
              "      data.val_pattern=demo_out/shards/val hydra.run.dir=runs/av",
              "", "docs/training.md describes the configs, the console output and the run folder."]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _help_epilog()
    parser.add_argument("-m", "--multirun", action="store_true", help="hydra multirun: sweep over a,b,c values")
    parser.add_argument("--cfg", choices=["job", "hydra", "all"], help="print the composed config and exit")
    parser.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="hydra overrides (key=value, group=option, -m for a multirun sweep, --cfg job to "
                             "print the config)")


def run(args: argparse.Namespace, hooks=()) -> int:
    """``avis train``; ``hooks`` (:class:`avis.engine.loop.HookBase`) run after the standard ones."""
    overrides = list(args.overrides)
    check_overrides(overrides, multirun=args.multirun)  # one line with the closest names, before hydra runs
    if args.multirun:
        overrides.insert(0, "--multirun")
    if args.cfg:
        overrides += ["--cfg", args.cfg] + (["--resolve"] if args.resolve else [])
    if int(os.environ.get("RANK", "0")) != 0:
        # Only rank 0 writes hydra's output folder and logs.
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
        if not any(o.startswith("hydra.run.dir=") for o in overrides):
            overrides.append("hydra.run.dir=.")  # its own timestamp would name a second, empty folder
    errors: list[BaseException] = []
    results: list[dict] = []

    @hydra.main(config_path=config_path(), config_name="train", version_base=None)
    def _main(cfg: DictConfig) -> None:
        from avis.engine.loop import check_config, train
        try:
            check_config(cfg)
            results.append(train(cfg, hooks))
        except (AvisError, OSError) as e:  # hand one-line errors (ours, a full disk) to the CLI, not hydra's report
            errors.append(e)
        except Exception as e:  # noqa: BLE001 - config values hydra composed but no builder accepts: one line too
            errors.append(config_error(e))

    saved = sys.argv
    sys.argv = ["avis train", *overrides]
    try:
        _main()
    except SystemExit as e:  # hydra exits on bad overrides / failed jobs after printing the reason
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    if errors:
        raise errors[0]
    return 0


def train_experiment(experiment: str, run_dir: str | os.PathLike, train_pattern, seed: int, steps: int,
                     overrides=(), progress: bool = True) -> Path:
    """Train one preset of ``configs/experiment`` (``rcf_av_tiny``, ``rcf_visual``, ...) on ``train_pattern``
    for ``steps`` steps into ``run_dir``, without periodic evaluation; returns the last checkpoint.

    The same as ``avis train experiment=... hydra.run.dir=RUN_DIR`` through hydra's compose API; ``overrides``
    are further hydra overrides (``model.delta=3``, ``optim.optimizer.lr=1e-3``, ``trainer.resume=true``)."""
    from avis.engine.config import compose
    from avis.engine.loop import check_config, train

    run_dir = Path(run_dir).resolve()
    cfg = compose([f"experiment={experiment}", f"data.train.pattern={train_pattern}", "data.val_pattern=null",
                   f"seed={seed}", f"trainer.max_steps={steps}", "trainer.eval_every=0",
                   f"trainer.ckpt_every={steps}", f"trainer.log_every={min(10, steps)}", "trainer.tensorboard=false",
                   f"trainer.progress={str(progress).lower()}", *overrides], out_dir=run_dir)
    check_config(cfg)
    train(cfg)
    return run_dir / "checkpoints" / "last.pt"


def config_error(e: Exception) -> Exception:
    """An error raised while a composed config is built into the run, as the CLI should show it: a builder's
    own :class:`~avis.errors.AvisError` (hydra wraps it), a value left unset (``???``) or of the wrong type as
    a :class:`~avis.errors.ConfigError` naming the key; anything else unchanged (the CLI's last resort)."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    cause = e
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, (AvisError, OSError)):
        return cause
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "a value"
        hint = " (the training shards: a folder, glob or URL)" if key == "data.train.pattern" else ""
        return ConfigError(f"{key} is not set: give {key}=...{hint}")
    if isinstance(cause, OmegaConfBaseException):
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        key = getattr(cause, "full_key", None)
        return ConfigError(f"{key}: {first}" if key and key not in first else first)
    if isinstance(e, InstantiationException):
        what = f"{type(cause).__name__}: {cause}" if cause is not e else str(e)
        return ConfigError(" ".join(what.split())[:400])
    return e


# --------------------------------------------------------------------------- config errors, before hydra runs
def check_overrides(overrides: list[str], multirun: bool = False) -> None:
    """Compose the config with ``overrides`` as hydra will; a bad override (an unknown option of a group, a
    key the config does not have, a syntax error) becomes one :class:`~avis.errors.ConfigError` line naming
    the closest valid names (hydra would print its own multi-line report, or a traceback). For a multirun
    each value of a sweep is checked (globs, which need hydra's loader, are left to hydra)."""
    from hydra.errors import HydraException, OverrideParseException

    try:
        variants = _variants(overrides) if multirun else [list(overrides)]
    except OverrideParseException as e:
        raise ConfigError(_parse_message(e)) from e
    for variant in variants:
        try:
            _compose(variant)
        except HydraException as e:
            raise ConfigError(_config_message(e, variant)) from e


def _variants(overrides: list[str]) -> list[list[str]]:
    """Override lists covering every value of every sweep once (each sweep's other values at their first)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices: list[list[str]] = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        try:
            values = list(o.sweep_string_iterator())
        except HydraException:  # glob(...) needs hydra's config loader: hydra checks it
            values = []
        choices.append([f"{o.get_key_element()}={v}" for v in values])
    base = [c[0] for c in choices if c]
    variants = [base]
    for i, c in enumerate(choices):
        for v in c[1:]:
            k = sum(1 for x in choices[:i] if x)
            variants.append(base[:k] + [v] + base[k + 1:])
    return variants


def _compose(overrides: list[str]):
    from hydra import compose

    from avis.engine.config import initialize

    with initialize():
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def _closest(word: str, options, n: int = 3, cutoff: float = 0.6) -> list[str]:
    import difflib

    return difflib.get_close_matches(word, list(options), n=n, cutoff=cutoff)


def _parse_message(e) -> str:
    msg = str(getattr(e, "message", e)).split("\nSee https://")[0]
    return f"cannot parse the override '{getattr(e, 'override', '?')}': {' '.join(msg.split())}"


def _config_message(e, overrides: list[str]) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(e, OverrideParseException):
        return _parse_message(e)
    if isinstance(e, MissingConfigException) and getattr(e, "options", None) is not None and e.missing_cfg_file:
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        options = sorted(e.options)
        close = _closest(name, options)
        shown = ", ".join(options) if len(options) <= 20 else ", ".join(options[:20]) + ", ..."
        return (f"'{name}' is not an option of '{group}'" + (f"; closest: {', '.join(close)}" if close else "")
                + f" (options: {shown})")
    key = getattr(e.__cause__, "full_key", None)
    if key:
        known = _all_keys([o for o in overrides if _key_of(o) != key])
        close = _closest(key, known, cutoff=0.8)  # dotted keys share long prefixes: only near misses
        value = next((o.split("=", 1)[1] for o in overrides if _key_of(o) == key and "=" in o), "VALUE")
        return (f"'{key}' is not a key of the config" + (f"; closest: {', '.join(close)}" if close else "")
                + f" (a new key is added with +{key}={value}; `avis train --cfg job` prints the config)")
    return " ".join(str(e).replace("\n", "; ").split())


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _all_keys(overrides: list[str]) -> list[str]:
    """Every dotted key of the config composed with ``overrides`` (without the groups' overrides when that
    fails too), for suggestions."""
    from hydra.errors import HydraException
    from omegaconf import DictConfig, ListConfig

    for attempt in (overrides, [o for o in overrides if "." not in _key_of(o)], []):
        try:
            cfg = _compose(attempt)
            break
        except HydraException:
            continue
    else:
        return []
    keys: list[str] = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for k in node.keys():
                full = f"{prefix}{k}"
                keys.append(full)
                try:
                    child = node._get_node(k)
                except Exception:  # noqa: BLE001 - an odd node is just not walked into
                    continue
                walk(child, full + ".")
        elif isinstance(node, ListConfig):
            return

    walk(cfg, "")
    return keys
