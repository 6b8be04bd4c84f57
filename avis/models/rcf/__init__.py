"""RCF: robust context fusion transformer with order-preserving instance codes (online VIS, optional audio)."""

from avis.models.rcf.builders import (
    rcf_r18,
    rcf_r34,
    rcf_r50,
    rcf_r101,
    rcf_swin_b,
    rcf_swin_l,
    rcf_swin_s,
    rcf_swin_t,
    rcf_tiny,
)
from avis.models.rcf.model import RCF, RCFState

__all__ = ["RCF", "RCFState", "rcf_r18", "rcf_r34", "rcf_r50", "rcf_r101", "rcf_swin_b", "rcf_swin_l",
           "rcf_swin_s", "rcf_swin_t", "rcf_tiny"]
