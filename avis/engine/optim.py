"""Optimizer parameter groups (backbone lr multiplier and weight decay) and the poly learning-rate schedule."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0,
                 backbone_weight_decay: float | None = None, backbone_prefixes=("backbone",),
                 no_decay_norm_bias: bool = False) -> list[dict]:
    """Split trainable parameters into up to four groups: backbone / rest x decayed / not decayed.

    A parameter belongs to the backbone when its qualified name is in the module named by one of
    ``backbone_prefixes`` (module paths from the model's root: ``backbone`` selects ``backbone.layer1.0.conv1
    .weight`` but not ``fusion.audio_tokens.encoder.extractor.backbone.*``, the audio network's own backbone).
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    bb_wd = weight_decay if backbone_weight_decay is None else backbone_weight_decay
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bb = any(name.startswith(prefix + ".") for prefix in backbone_prefixes)
        no_decay = no_decay_norm_bias and (id(p) in norm_params or name.endswith(".bias") or p.ndim <= 1)
        key = (is_bb, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * (backbone_lr_mult if is_bb else 1.0),
                "weight_decay": 0.0 if no_decay else (bb_wd if is_bb else weight_decay),
                "name": ("backbone" if is_bb else "head") + ("_no_decay" if no_decay else ""),
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, optimizer_factory: Callable, *, backbone_lr_mult: float = 1.0,
                    backbone_weight_decay: float | None = None, backbone_prefixes=("backbone",),
                    no_decay_norm_bias: bool = False) -> torch.optim.Optimizer:
    """``optimizer_factory`` is a partial (hydra ``_partial_: true``) carrying ``lr`` and ``weight_decay``."""
    kw = getattr(optimizer_factory, "keywords", {})
    lr, wd = kw.get("lr", 1e-3), kw.get("weight_decay", 0.0)
    groups = param_groups(model, lr, wd, backbone_lr_mult, backbone_weight_decay, tuple(backbone_prefixes),
                          no_decay_norm_bias)
    return optimizer_factory(groups)


class PolyLR(LRScheduler):
    """lr = base_lr * (1 - step / total_steps) ** power, after an optional linear warm-up.

    The paper's schedule (power 0.9). Its state is plain numbers, so it loads with ``weights_only=True``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9,
                 warmup_steps: int = 0, warmup_factor: float = 0.001, min_lr: float = 0.0, last_epoch: int = -1):
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.min_lr = float(min_lr)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        progress = min(step, self.total_steps) / max(1, self.total_steps)
        f = (1.0 - progress) ** self.power
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            f *= self.warmup_factor * (1 - alpha) + alpha
        return f

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [max(self.min_lr, base * f) for base in self.base_lrs]
