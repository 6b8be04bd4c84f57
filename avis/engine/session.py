"""A trained method back from its checkpoint (the checkpoint carries its config), for eval and infer.

The checkpoint is untrusted: its tensors load with ``weights_only=True`` (:mod:`avis.engine.checkpoint`) and
its config is data (:mod:`avis.engine.safe_config`: parsed within limits, no interpolation, only the
builders avis registers). The model is first built on PyTorch's ``meta`` device, which allocates nothing, and
compared with the checkpoint's tensors: a config asking for a model its weights do not fit (a hidden size of
a billion) is refused before any memory is allocated for it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from avis.engine import checkpoint as ckpt_io
from avis.engine import safe_config
from avis.errors import ConfigError, InputError

log = logging.getLogger(__name__)

# Memory a model may hold beyond its checkpoint's tensors (buffers not saved in the state dict).
MAX_EXTRA_BYTES = 1 << 30
# Modules + parameters + buffers a model may register while it is built (at least; 20 per saved tensor).
MAX_MODULES = 10_000
# The checkpoint's test size (short side, pixels) and audio window (seconds); the paper tests at 360, 0.96 s.
MAX_TEST_SIZE = 4096
MAX_ETA = 5.0


@dataclass
class Loaded:
    model: torch.nn.Module
    cfg: DictConfig
    categories: list[dict]
    step: int
    device: torch.device
    fps: float | None = None  # the frame rate of the training data (checkpoints from before it was recorded: None)


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


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _check_fit(model_cfg, weights: dict, path) -> None:
    """Build the model on the meta device (no memory) and compare it with the checkpoint's tensors: the same
    entries, each parameter of the checkpoint's shape. Buffers and extra states may legitimately change shape
    while training (CrossVIS's identity memory grows), so they are only bounded: at most
    :data:`MAX_EXTRA_BYTES` beyond the checkpoint's own non-parameter tensors."""
    shell = _meta_build(model_cfg, weights, path)
    expected = shell.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
               ("; " if missing and unexpected else "") + \
               (f"unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        raise InputError(f"weights do not fit the model of its config ({what})", path)
    params = dict(shell.named_parameters())
    for k, t in params.items():
        if k in weights and tuple(t.shape) != tuple(weights[k].shape):
            raise InputError(f"weights do not fit the model of its config ({k}: the config builds "
                             f"{list(t.shape)}, the checkpoint holds {list(weights[k].shape)})", path)
    extra = _nbytes(shell.buffers()) - _nbytes(v for k, v in weights.items() if k not in params)
    if extra > MAX_EXTRA_BYTES:
        raise InputError(f"checkpoint config builds a model holding {extra} bytes of buffers beyond its weights "
                         f"(limit {MAX_EXTRA_BYTES})", path)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def data_problem(data, ranges: bool = True) -> str | None:
    """What is wrong with the ``data`` section that eval and infer read (sizes frames are resized to, the
    audio window ``eta`` in seconds); ``ranges``: also bound the values (the checkpoint's own config: a test
    size of 100000 would resize every frame to gigabytes)."""
    if not isinstance(data, dict):
        return f"'data' must be a mapping, got {type(data).__name__}"
    for key, top in (("test_size", MAX_TEST_SIZE), ("test_max_size", 2 * MAX_TEST_SIZE)):
        v = data.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return f"data.{key} must be a whole number of pixels >= 1 or null, got {str(v)[:40]!r}"
        if ranges and v is not None and v > top:
            return f"data.{key} {v} is beyond the {top} pixel limit"
    val = data.get("val")
    if val is not None and not isinstance(val, dict):
        return f"data.val must be a mapping (the evaluation data) or null, got {type(val).__name__}"
    pattern = (val or {}).get("pattern")
    if not (pattern is None or isinstance(pattern, str) or
            isinstance(pattern, list) and all(isinstance(p, str) for p in pattern)):
        return "data.val.pattern must be a shard pattern (text or a list of texts) or null"
    eta = data.get("eta", 0.96)
    if not _number(eta) or eta <= 0:
        return f"data.eta must be a number of seconds > 0, got {str(eta)[:40]!r}"
    if ranges and eta > MAX_ETA:
        return f"data.eta {eta} is beyond the {MAX_ETA} s limit"
    return None


# Builder arguments naming a local file of pretrained weights (configs/model, configs/audio, the demo). The
# checkpoint's own weights replace whatever such a file would give, so a checkpoint's config does not get to
# have a file of this machine read (and a checkpoint trained with weights at a path that does not exist here
# still loads).
WEIGHT_FILE_KEYS = frozenset({"backbone_weights", "weights_path", "weights"})


def _drop_weight_files(node) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in WEIGHT_FILE_KEYS and isinstance(v, str):
                log.info("not reading %s=%s of the checkpoint's config: its own weights replace them", k, v)
                node[k] = None
            else:
                _drop_weight_files(v)
    elif isinstance(node, list):
        for v in node:
            _drop_weight_files(v)


def load_trained(path, device: str = "auto", overrides: list[str] | None = None) -> Loaded:
    state = ckpt_io.load(path, require=("step", "model", "config", "categories"))
    try:
        data = safe_config.parse(state["config"])
        problem = data_problem(data.get("data"))
        if problem:
            raise safe_config.Refused(problem)
        _drop_weight_files(data.get("model"))
        cfg = safe_config.with_overrides(data, overrides or [])
    except safe_config.Refused as e:
        raise InputError(f"checkpoint config {e}", path) from None
    except safe_config.OverrideError as e:
        raise ConfigError(str(e)) from None
    problem = data_problem(OmegaConf.to_container(cfg).get("data"), ranges=False)
    if problem:
        raise ConfigError(f"the config with your overrides: {problem}")
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
    fps = state.get("data_fps")
    fps = float(fps) if _number(fps) and 0 < fps <= 1000 else None  # the build's bound (decode.check_fps)
    return Loaded(model, cfg, [dict(c) for c in state["categories"]], int(state["step"]), dev, fps)
