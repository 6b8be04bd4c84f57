"""EfficientVIS: clip-level VIS with tracklet queries and temporal dynamic convolution (visual only)."""

from avis.models.efficientvis.builders import efficientvis_r50, efficientvis_r101, efficientvis_tiny
from avis.models.efficientvis.model import EfficientVIS

__all__ = ["EfficientVIS", "efficientvis_r50", "efficientvis_r101", "efficientvis_tiny"]
