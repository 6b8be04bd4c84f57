"""Where the hydra configs live and how to load a run's config outside hydra.

The config groups are kept in the repository's top-level ``configs/`` and ship inside the wheel as the
package ``avis.configs`` (``pyproject.toml`` maps the folder onto it), read by hydra as a config module
(``pkg://avis.configs``). :func:`config_path` picks, in order: ``$AVIS_CONFIG_DIR``; the checkout's
``configs/`` when this package runs from a checkout or an editable install (edits apply at once); the
installed ``avis.configs``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from avis.errors import ConfigError

ENV_VAR = "AVIS_CONFIG_DIR"
CONFIG_MODULE = "avis.configs"


def config_path() -> str:
    """The hydra search path of the configs: an absolute folder, or ``pkg://avis.configs``."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not (Path(env) / "train.yaml").is_file():
            raise ConfigError(f"{ENV_VAR}={env}: no train.yaml in that folder")
        return str(Path(env).resolve())
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "train.yaml").is_file():
        return str(checkout / "configs")
    if importlib.util.find_spec(CONFIG_MODULE) is not None:
        return f"pkg://{CONFIG_MODULE}"
    raise ConfigError(f"cannot find the hydra configs (neither a checkout's configs/ nor the installed "
                      f"{CONFIG_MODULE}); set {ENV_VAR}")


def initialize():
    """hydra's global initialisation on :func:`config_path` (a context manager), for its compose API."""
    from hydra import initialize_config_dir, initialize_config_module

    path = config_path()
    if path.startswith("pkg://"):
        return initialize_config_module(path[len("pkg://"):], version_base=None)
    return initialize_config_dir(path, version_base=None)


def compose(overrides=(), out_dir: str | os.PathLike | None = None):
    """The training config outside the hydra app (scripts, notebooks): ``train(compose([...], "runs/x"))``.

    ``out_dir`` replaces ``trainer.out_dir`` (hydra's run folder, which exists only inside the app).
    """
    from hydra import compose as hydra_compose

    with initialize():
        cfg = hydra_compose("train", overrides=list(overrides))
    if out_dir is not None:
        cfg.trainer.out_dir = os.fspath(out_dir)
    return cfg
