"""A trained method back from its checkpoint (the checkpoint carries its config), for eval and infer.

The checkpoint is untrusted: its tensors load with ``weights_only=True`` (:mod:`avis.engine.checkpoint`) and
its config is data (:mod:`avis.engine.safe_config`: parsed within limits, no interpolation, only the
builders avis registers). The model is first built on PyTorch's ``meta`` device, which allocates nothing, and
compared with the checkpoint's tensors: a config asking for a model its weights do not fit (a hidden size of
a billion) is refused before any memory is allocated for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from avis.engine import checkpoint as ckpt_io
from avis.engine import safe_config
from avis.errors import ConfigError, InputError

# Memory a model may hold beyond its checkpoint's tensors (buffers not saved in the state dict).
MAX_EXTRA_BYTES = 1 << 30
# Modules + parameters + buffers a model may register while it is built (at least; 20 per saved tensor).
MAX_MODULES = 10_000


@dataclass
class Loaded:
    model: torch.nn.Module
    cfg: DictConfig
    categories: list[dict]
    step: int
    device: torch.device


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _build(model_cfg, path) -> torch.nn.Module:
    try:
        model = instantiate(model_cfg)
    except Exception as e:  # noqa: BLE001 - the builder refused the config's arguments
        cause = e.__cause__ or e  # hydra wraps the builder's own error
        raise InputError(f"checkpoint config does not build a model ({_first_line(cause)})", path) from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"checkpoint config builds a {type(model).__name__}, not a model", path)
    return model


class _TooManyModules(Exception):
    pass


def _meta_build(model_cfg, weights: dict, path) -> torch.nn.Module:
    """The model on the meta device. Its modules, parameters and buffers are counted as they are registered,
    and the build stops once they are far more than the checkpoint holds tensors (a config asking for a
    billion layers would otherwise fill the memory with Python objects even on the meta device)."""
    from torch.nn.modules import module as M

    limit = max(MAX_MODULES, 20 * len(weights))
    count = [0]

    def hook(*_):
        count[0] += 1
        if count[0] > limit:
            raise _TooManyModules

    handles = [M.register_module_module_registration_hook(hook), M.register_module_parameter_registration_hook(hook),
               M.register_module_buffer_registration_hook(hook)]
    try:
        with torch.device("meta"):
            return _build(model_cfg, path)
    except InputError:
        if count[0] > limit:
            raise InputError(f"checkpoint config builds a model of more than {limit} modules and tensors, far "
                             f"more than its {len(weights)} weights; refusing to build it", path) from None
        raise
    finally:
        for h in handles:
            h.remove()


def _check_fit(model_cfg, weights: dict, path) -> None:
    """Build the model on the meta device (no memory) and compare it with the checkpoint's tensors."""
    shell = _meta_build(model_cfg, weights, path)
    expected = shell.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
               ("; " if missing and unexpected else "") + \
               (f"unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        raise InputError(f"weights do not fit the model of its config ({what})", path)
    for k, t in expected.items():
        if tuple(t.shape) != tuple(weights[k].shape):
            raise InputError(f"weights do not fit the model of its config ({k}: the config builds "
                             f"{list(t.shape)}, the checkpoint holds {list(weights[k].shape)})", path)
    held = sum(t.numel() * t.element_size() for t in (*shell.parameters(), *shell.buffers()))
    extra = held - sum(t.numel() * t.element_size() for t in expected.values())  # buffers not saved
    if extra > MAX_EXTRA_BYTES:
        raise InputError(f"checkpoint config builds a model holding {extra} bytes beyond its weights "
                         f"(limit {MAX_EXTRA_BYTES})", path)


def load_trained(path, device: str = "auto", overrides: list[str] | None = None) -> Loaded:
    state = ckpt_io.load(path, require=("step", "model", "config", "categories"))
    try:
        cfg = safe_config.checkpoint_config(state["config"], overrides or [])
    except safe_config.Refused as e:
        raise InputError(f"checkpoint config {e}", path) from None
    except safe_config.OverrideError as e:
        raise ConfigError(str(e)) from None
    model_cfg = cfg._get_node("model")
    if not isinstance(model_cfg, DictConfig) or "_target_" not in model_cfg:
        raise InputError("checkpoint config has no 'model' to build (a mapping with a _target_)", path)
    _check_fit(model_cfg, state["model"], path)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model = _build(model_cfg, path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise InputError(f"weights do not fit the model of its config: {str(e).splitlines()[0]}", path) from None
    model.to(dev).eval()
    return Loaded(model, cfg, [dict(c) for c in state["categories"]], int(state["step"]), dev)
