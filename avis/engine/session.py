"""A trained method back from its checkpoint (the checkpoint carries its config), for eval and infer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from avis.engine import checkpoint as ckpt_io
from avis.errors import ConfigError, InputError


@dataclass
class Loaded:
    model: torch.nn.Module
    cfg: DictConfig
    categories: list[dict]
    step: int
    device: torch.device


def load_trained(path, device: str = "auto", overrides: list[str] | None = None) -> Loaded:
    state = ckpt_io.load(path)
    try:
        cfg = OmegaConf.create(state["config"])
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"bad config or override: {e}") from None
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model = instantiate(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise InputError(f"weights do not fit the model of its config: {str(e).splitlines()[0]}", path) from None
    model.to(dev).eval()
    cats = state.get("categories")
    if cats is None:
        raise InputError("checkpoint has no category list", path)
    return Loaded(model, cfg, [dict(c) for c in cats], int(state["step"]), dev)
