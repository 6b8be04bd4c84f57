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
