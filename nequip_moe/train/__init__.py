"""Training pieces of nequip-moe: co-training agreement metrics and parameter groups."""

from .agreement import (
    EmptySafeMAE,
    EmptySafeMSE,
    ExpertAgreement,
    ExpertError,
    InterfaceForceAgreement,
)
from .param_groups import expert_param_groups

__all__ = [
    "ExpertAgreement",
    "ExpertError",
    "InterfaceForceAgreement",
    "EmptySafeMSE",
    "EmptySafeMAE",
    "expert_param_groups",
]
