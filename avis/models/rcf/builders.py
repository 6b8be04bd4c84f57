"""One builder per variant, plain keyword arguments so that hydra configs can ``_target_`` them, e.g.::

    model:
      _target_: avis.models.rcf.rcf_r50
      num_classes: 40
      delta: 1
      backbone_weights: /data/weights/resnet50.pth   # optional local file, never downloaded
      audio_encoder: {_target_: avis.models.audio.audio_tokens_tiny, out_channels: 256}   # or null

ResNet builders also take ``frozen_bn`` (None: BatchNorm frozen only when ``backbone_weights`` are given).
Any other keyword (hidden_dim, num_queries, pool_size, enc_layers, ...) goes to :class:`RCF`.
"""

from __future__ import annotations

from torch import nn

from avis.models.backbones import build_backbone
from avis.models.rcf.model import RCF


def rcf_tiny(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None, width: int = 16,
             hidden_dim: int = 32, num_queries: int = 10, enc_layers: int = 2, dec_layers: int = 2,
             dim_feedforward: int = 64, backbone_weights: str | None = None, **kwargs) -> RCF:
    """CPU-sized RCF for tests and demos: narrow ResNet-like backbone (strides 4/8/16), C' = 32."""
    return RCF(build_backbone("tiny", weights=backbone_weights, width=width), num_classes, delta, hidden_dim=hidden_dim,
               num_queries=num_queries, enc_layers=enc_layers, dec_layers=dec_layers,
               dim_feedforward=dim_feedforward, audio_encoder=audio_encoder, **kwargs)


# The stride-4 FPN dominates the heads' cost at 640 x 360; 128 channels keep fusion + heads within 25% of a
# ResNet-50 frame on CPU (docs/benchmarks.md). Pass fpn_dim / mask_dim to change it.
_LARGE = {"fpn_dim": 128, "mask_dim": 128}


def _resnet(name: str, num_classes, delta, audio_encoder, backbone_weights, frozen_bn, kwargs) -> RCF:
    kwargs = {**_LARGE, **kwargs}
    return RCF(build_backbone(name, weights=backbone_weights, frozen_bn=frozen_bn), num_classes, delta,
               audio_encoder=audio_encoder, **kwargs)


def _swin(name: str, num_classes, delta, audio_encoder, backbone_weights, kwargs) -> RCF:
    kwargs = {**_LARGE, **kwargs}
    return RCF(build_backbone(name, weights=backbone_weights), num_classes, delta, audio_encoder=audio_encoder,
               **kwargs)


def rcf_r18(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
            backbone_weights: str | None = None, frozen_bn: bool | None = None, **kwargs) -> RCF:
    return _resnet("resnet18", num_classes, delta, audio_encoder, backbone_weights, frozen_bn, kwargs)


def rcf_r34(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
            backbone_weights: str | None = None, frozen_bn: bool | None = None, **kwargs) -> RCF:
    return _resnet("resnet34", num_classes, delta, audio_encoder, backbone_weights, frozen_bn, kwargs)


def rcf_r50(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
            backbone_weights: str | None = None, frozen_bn: bool | None = None, **kwargs) -> RCF:
    return _resnet("resnet50", num_classes, delta, audio_encoder, backbone_weights, frozen_bn, kwargs)


def rcf_r101(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
             backbone_weights: str | None = None, frozen_bn: bool | None = None, **kwargs) -> RCF:
    return _resnet("resnet101", num_classes, delta, audio_encoder, backbone_weights, frozen_bn, kwargs)


def rcf_swin_t(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
               backbone_weights: str | None = None, **kwargs) -> RCF:
    return _swin("swin_t", num_classes, delta, audio_encoder, backbone_weights, kwargs)


def rcf_swin_s(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
               backbone_weights: str | None = None, **kwargs) -> RCF:
    return _swin("swin_s", num_classes, delta, audio_encoder, backbone_weights, kwargs)


def rcf_swin_b(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
               backbone_weights: str | None = None, **kwargs) -> RCF:
    return _swin("swin_b", num_classes, delta, audio_encoder, backbone_weights, kwargs)


def rcf_swin_l(num_classes: int, delta: int = 1, audio_encoder: nn.Module | None = None,
               backbone_weights: str | None = None, **kwargs) -> RCF:
    """The paper's best backbone, Swin-L (window 12, 384 px pre-training), from timm (``pip install
    'avis[timm]'``); ``backbone_weights``: a local timm (or original Swin) state dict."""
    return _swin("swin_l", num_classes, delta, audio_encoder, backbone_weights, kwargs)
