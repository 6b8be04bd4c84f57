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


# A checkpoint's config is instantiated by hydra, so its ``_target_`` entries name code that will run: a
# downloaded checkpoint may only name the toolkit's own builders and torch's optimisers / modules.
TRUSTED_TARGETS = ("avis.", "torch.optim.", "torch.nn.")


def untrusted_targets(node) -> list[str]:
    """The ``_target_`` values of a config (plain containers) outside :data:`TRUSTED_TARGETS`."""
    found = []
    if isinstance(node, dict):
        t = node.get("_target_")
        if t is not None and not (isinstance(t, str) and t.startswith(TRUSTED_TARGETS)):
            found.append(str(t))
        for v in node.values():
            found += untrusted_targets(v)
    elif isinstance(node, list):
        for v in node:
            found += untrusted_targets(v)
    return found


def load_trained(path, device: str = "auto", overrides: list[str] | None = None) -> Loaded:
    state = ckpt_io.load(path)
    if not isinstance(state.get("config"), str):
        raise InputError("checkpoint has no config", path)
    try:
        bad = untrusted_targets(OmegaConf.to_container(OmegaConf.create(state["config"]), resolve=False))
    except Exception as e:  # noqa: BLE001 - malformed YAML is the file's fault
        raise InputError(f"checkpoint config is not valid YAML ({str(e).splitlines()[0][:200]})", path) from None
    if bad:
        raise InputError(f"checkpoint config names code outside avis/torch to run ({', '.join(bad[:3])}); "
                         "refusing to load it", path)
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
