"""Online identity tracking: order-preserving slot identities with the IoU > 0.5 rule (RCF)."""

from avis.tracking.slots import SlotTracker, mask_iou

__all__ = ["SlotTracker", "mask_iou"]
