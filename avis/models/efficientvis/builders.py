"""One builder per variant, plain keyword arguments for hydra ``_target_``::

    model:
      _target_: avis.models.efficientvis.efficientvis_r50
      num_classes: 40
      clip_length: 36        # T frames per clip; training batches hold 2T (two clips)

``backbone_weights``: a local state dict (nothing is downloaded); ResNet builders take ``frozen_bn`` (None:
BatchNorm frozen only when weights are given). Any other keyword (num_queries, num_stages, hidden_dim,
pool_size, loss weights, ...) goes to :class:`EfficientVIS`.
"""

from __future__ import annotations

from avis.models.backbones import build_backbone
from avis.models.efficientvis.model import EfficientVIS


def efficientvis_tiny(num_classes: int, clip_length: int = 3, width: int = 16, hidden_dim: int = 32,
                      num_queries: int = 10, num_stages: int = 2, nhead: int = 4, dim_feedforward: int = 64,
                      dynamic_dim: int = 16, pool_size: int = 4, backbone_weights: str | None = None,
                      **kwargs) -> EfficientVIS:
    """CPU-sized EfficientVIS for tests and demos: narrow backbone (strides 4/8/16), D = 32, 2 stages."""
    return EfficientVIS(build_backbone("tiny", weights=backbone_weights, width=width), num_classes, clip_length,
                        num_queries=num_queries, num_stages=num_stages, hidden_dim=hidden_dim, nhead=nhead,
                        dim_feedforward=dim_feedforward, dynamic_dim=dynamic_dim, pool_size=pool_size, **kwargs)


# RoIs from stride 8 and 128-channel mask features at stride 4 keep the heads' cost below the backbone's
# (docs/benchmarks.md); pass roi_level / mask_dim to change them.
_LARGE = {"roi_level": 1, "mask_dim": 128}


def _resnet(name, num_classes, clip_length, backbone_weights, frozen_bn, kwargs) -> EfficientVIS:
    kwargs = {**_LARGE, **kwargs}
    return EfficientVIS(build_backbone(name, weights=backbone_weights, frozen_bn=frozen_bn), num_classes,
                        clip_length, **kwargs)


def efficientvis_r50(num_classes: int, clip_length: int = 36, backbone_weights: str | None = None,
                     frozen_bn: bool | None = None, **kwargs) -> EfficientVIS:
    """The paper's model: ResNet-50, N = 10, M = 6 stages, D = 256, T = 36."""
    return _resnet("resnet50", num_classes, clip_length, backbone_weights, frozen_bn, kwargs)


def efficientvis_r101(num_classes: int, clip_length: int = 36, backbone_weights: str | None = None,
                      frozen_bn: bool | None = None, **kwargs) -> EfficientVIS:
    return _resnet("resnet101", num_classes, clip_length, backbone_weights, frozen_bn, kwargs)
