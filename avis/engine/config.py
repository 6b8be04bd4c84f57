"""Where the hydra configs live and how to load a run's config outside hydra."""

from __future__ import annotations

import os
from pathlib import Path

from avis.errors import ConfigError

ENV_VAR = "AVIS_CONFIG_DIR"


def config_dir() -> Path:
    """The ``configs/`` folder: ``$AVIS_CONFIG_DIR``, else the repository's ``configs/`` next to the package
    (an editable install or a checkout), else ``./configs``."""
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates.append(Path(__file__).resolve().parents[2] / "configs")
    candidates.append(Path.cwd() / "configs")
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    raise ConfigError(f"cannot find the hydra configs (train.yaml) in {', '.join(map(str, candidates))}; "
                      f"set {ENV_VAR}")


def compose(overrides=(), out_dir: str | os.PathLike | None = None):
    """The training config outside the hydra app (scripts, notebooks): ``train(compose([...], "runs/x"))``.

    ``out_dir`` replaces ``trainer.out_dir`` (hydra's run folder, which exists only inside the app).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = hydra_compose("train", overrides=list(overrides))
    if out_dir is not None:
        cfg.trainer.out_dir = os.fspath(out_dir)
    return cfg
