"""Online identity tracking: order-preserving slot identities with the IoU > 0.5 rule (RCF)."""

from avis.tracking.slots import SlotTracker

__all__ = ["SlotTracker"]
