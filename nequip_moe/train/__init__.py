"""Training pieces of nequip-moe: co-training agreement metrics and parameter groups."""

from .agreement import ExpertAgreement, ExpertError, EmptySafeMSE, EmptySafeMAE
from .param_groups import expert_param_groups

__all__ = [
    "ExpertAgreement",
    "ExpertError",
    "EmptySafeMSE",
    "EmptySafeMAE",
    "expert_param_groups",
]
