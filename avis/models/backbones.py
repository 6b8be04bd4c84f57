"""Visual backbones that return multi-level feature maps (torchvision models, never downloaded).

Every backbone maps ``x: float B x 3 x H x W`` (normalised RGB) to a list of feature maps from fine to
coarse, ``[B x C_i x H/s_i x W/s_i]``, and exposes ``channels`` (C_i) and ``strides`` (s_i). The last
level is what RCF calls ``f_t``; the finer levels feed the FPN mask decoder.

Pretrained weights come from a local file only (``weights=PATH``, a state dict of the classification model:
torchvision's, or timm's for ``swin_l``; ``.safetensors`` or a ``torch.save`` file loaded with
``weights_only=True``); without it the network starts from random initialisation and a warning says so.

Swin-L (the RCF paper's best backbone) is not in torchvision; ``swin_l`` builds it with timm, an optional
extra (``pip install 'avis[timm]'``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from avis.errors import ConfigError, InputError
from avis.io.files import regular_file

_RESNETS = {
    "resnet18": (torchvision.models.resnet18, [64, 128, 256, 512]),
    "resnet34": (torchvision.models.resnet34, [64, 128, 256, 512]),
    "resnet50": (torchvision.models.resnet50, [256, 512, 1024, 2048]),
    "resnet101": (torchvision.models.resnet101, [256, 512, 1024, 2048]),
}
_SWINS = {
    "swin_t": (torchvision.models.swin_t, 96),
    "swin_s": (torchvision.models.swin_s, 96),
    "swin_b": (torchvision.models.swin_b, 128),
}
# The classifier of the source model is dropped, so its keys may be in a weights file and are ignored.
_HEAD_PREFIXES = ("fc.", "head.", "norm.")


def load_local_weights(model: nn.Module, path: str, convert: Callable[[dict, nn.Module], dict] | None = None) -> None:
    """Load a classification state dict from a local file into ``model`` (head keys ignored). ``convert``:
    maps the file's state dict to ``model``'s keys (e.g. timm's filter for original Swin checkpoints)."""
    regular_file(path, missing="weights file not found")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise InputError("weights file not found", path) from e
    except Exception as e:  # unpickling refused or corrupt file
        raise InputError(f"cannot read weights ({type(e).__name__}: {e})", path) from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError("weights file does not hold a state dict", path)
    if convert is not None:
        try:
            state = convert(state, model)
        except Exception as e:  # a file of another architecture
            raise InputError(f"weights do not fit the backbone ({type(e).__name__}: {e})", path) from e
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise InputError(f"weights do not fit the backbone: {str(e).splitlines()[-1].strip()}", path) from e
    missing = [k for k in missing if not k.startswith(_HEAD_PREFIXES)]
    unexpected = [k for k in unexpected if not k.startswith(_HEAD_PREFIXES)]
    if missing or unexpected:
        raise InputError(f"weights do not fit the backbone (missing {missing[:3]}..., "
                         f"unexpected {unexpected[:3]}...)", path)


def _warn_random(name: str) -> None:
    warnings.warn(f"backbone {name}: no weights file given, starting from random initialisation",
                  stacklevel=3)


class ResNetBackbone(nn.Module):
    """torchvision ResNet body -> features of the last ``levels`` of layer1..layer4 (strides 4, 8, 16, 32).

    ``frozen_bn=True`` replaces BatchNorm with FrozenBatchNorm2d, as detection models do when fine-tuning
    pretrained weights with small per-GPU batches. The default (None) freezes only when ``weights`` are given:
    the frozen statistics of a random initialisation are the identity, which would leave a from-scratch
    ResNet with no normalisation and nothing to learn in its 53 norm layers.
    """

    def __init__(self, name: str = "resnet50", weights: str | None = None, frozen_bn: bool | None = None,
                 levels: int = 4):
        super().__init__()
        if name not in _RESNETS:
            raise ConfigError(f"unknown ResNet {name!r}; choose from {sorted(_RESNETS)}")
        if not 1 <= levels <= 4:
            raise ConfigError(f"levels must be in 1..4, got {levels}")
        factory, channels = _RESNETS[name]
        if frozen_bn is None:
            frozen_bn = bool(weights)
        self.frozen_bn = frozen_bn
        model = factory(weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else None)
        if weights:
            load_local_weights(model, weights)
        else:
            _warn_random(name)
        keep = [f"layer{i}" for i in range(5 - levels, 5)]
        self.body = IntermediateLayerGetter(model, return_layers={k: k for k in keep})
        self.channels = channels[4 - levels:]
        self.strides = [4, 8, 16, 32][4 - levels:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x 3 x H x W -> [B x C_i x H/s_i x W/s_i] fine to coarse."""
        return list(self.body(x).values())


class SwinBackbone(nn.Module):
    """torchvision Swin transformer -> features of its four stages (strides 4, 8, 16, 32), channels first."""

    def __init__(self, name: str = "swin_b", weights: str | None = None):
        super().__init__()
        if name not in _SWINS:
            raise ConfigError(f"unknown Swin {name!r}; choose from {sorted(_SWINS)}")
        factory, embed = _SWINS[name]
        model = factory(weights=None)
        if weights:
            load_local_weights(model, weights)
        else:
            _warn_random(name)
        self.features = model.features  # [patch embed, stage1, merge, stage2, merge, stage3, merge, stage4]
        self.channels = [embed, 2 * embed, 4 * embed, 8 * embed]
        self.strides = [4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x 3 x H x W (H, W multiples of 32 are best) -> [B x C_i x H/s_i x W/s_i]."""
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i % 2 == 1:  # end of a stage; Swin works channels-last
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        return outs


#: timm Swin variants by our name: the RCF paper's Swin-L (window 12, ImageNet-22k pre-training at 384 px)
TIMM_SWINS = {"swin_l": "swin_large_patch4_window12_384"}


class TimmSwinBackbone(nn.Module):
    """A timm Swin transformer (optional extra ``avis[timm]``) -> features of its four stages (strides 4, 8,
    16, 32), channels first.

    ``model_name``: any timm Swin (``swin_large_patch4_window12_384`` is the paper's Swin-L); timm builds it
    with random weights and never downloads (``pretrained=False``). ``weights``: a local state dict of the
    timm classification model, or an original Microsoft Swin checkpoint (converted by timm's filter). Any
    input size: frames are padded to the patch size and the window attention masks are made per input size.
    """

    def __init__(self, model_name: str = TIMM_SWINS["swin_l"], weights: str | None = None):
        super().__init__()
        try:
            import timm
            from timm.models.swin_transformer import checkpoint_filter_fn
        except ImportError as e:
            raise ConfigError(f"backbone {model_name!r} needs timm: pip install 'avis[timm]'") from e
        try:
            self.body = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True)
        except RuntimeError as e:  # unknown model name
            raise ConfigError(f"timm cannot build {model_name!r}: {e}") from e
        # The classifier's final norm and head are not used (and DDP needs a gradient for every parameter).
        self.body.prune_intermediate_layers(len(self.body.layers), prune_norm=True, prune_head=True)
        if weights:
            load_local_weights(self.body, weights, convert=checkpoint_filter_fn)
        else:
            _warn_random(model_name)
        self.patch = int(self.body.patch_embed.patch_size[0])
        self.channels = [int(f["num_chs"]) for f in self.body.feature_info]
        self.strides = [int(f["reduction"]) for f in self.body.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x 3 x H x W -> [B x C_i x ceil(H/s_i) x ceil(W/s_i)] for s_i = 4, 8, 16, 32."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        return self.body.forward_intermediates(x, intermediates_only=True)


def _conv_gn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(min(8, cout), cout),
                         nn.ReLU(inplace=True))


def stage_outputs(stem: nn.Module, stages: Iterable[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``stem`` then each of ``stages`` in turn on x; -> the output of every stage (not the stem's)."""
    x = stem(x)
    outs = []
    for stage in stages:
        x = stage(x)
        outs.append(x)
    return outs


class _TinyBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = _conv_gn(cin, cout, 2)
        self.conv = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.GroupNorm(min(8, cout), cout))

    def forward(self, x):
        x = self.down(x)
        return torch.relu(x + self.conv(x))


class TinyBackbone(nn.Module):
    """A very narrow ResNet-like net (GroupNorm) for CPU tests: strides 4, 8, 16, channels ``width * (1, 2, 4)``."""

    def __init__(self, width: int = 16, weights: str | None = None):
        super().__init__()
        self.stem = _conv_gn(3, width, 2)
        self.stages = nn.ModuleList([_TinyBlock(width, width), _TinyBlock(width, 2 * width),
                                     _TinyBlock(2 * width, 4 * width)])
        self.channels = [width, 2 * width, 4 * width]
        self.strides = [4, 8, 16]
        if weights:
            load_local_weights(self, weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x 3 x H x W -> [B x w x H/4 x W/4, B x 2w x H/8 x W/8, B x 4w x H/16 x W/16]."""
        return stage_outputs(self.stem, self.stages, x)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone32(nn.Module):
    """A narrow BatchNorm conv net for CPU tests of the FPN detectors (CrossVIS, STMask): C3, C4, C5 at
    strides 8, 16, 32, channels ``width * (2, 4, 4)`` (:class:`TinyBackbone` stops at stride 16)."""

    def __init__(self, width: int = 16, weights: str | None = None):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv_bn(3, w, 2), _conv_bn(w, w, 2), _conv_bn(w, w, 1))
        self.stages = nn.ModuleList(nn.Sequential(_conv_bn(a, b, 2), _conv_bn(b, b, 1))
                                    for a, b in [(w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)])
        self.channels = [2 * w, 4 * w, 4 * w]
        self.strides = [8, 16, 32]
        if weights:
            load_local_weights(self, weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x 3 x H x W -> [B x 2w x H/8 x W/8, B x 4w x H/16 x W/16, B x 4w x H/32 x W/32]."""
        return stage_outputs(self.stem, self.stages, x)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{n: (lambda n=n, **kw: ResNetBackbone(n, **kw)) for n in _RESNETS},
    **{n: (lambda n=n, **kw: SwinBackbone(n, **kw)) for n in _SWINS},
    **{n: (lambda n=n, **kw: TimmSwinBackbone(TIMM_SWINS[n], **kw)) for n in TIMM_SWINS},
    "tiny": TinyBackbone,
    "tiny32": TinyBackbone32,
}


def build_backbone(name: str, weights: str | None = None, **kwargs) -> nn.Module:
    """The one way every builder makes its backbone: by torchvision name (resnet18/34/50/101 with
    ``frozen_bn`` and ``levels``, swin_t/s/b), ``swin_l`` (timm), or ``tiny`` / ``tiny32`` (CPU nets, with
    ``width``).
    ``weights``: a local state-dict file (nothing is downloaded); None starts from random initialisation."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name](weights=weights, **kwargs)
