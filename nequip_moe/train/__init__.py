"""Training pieces of nequip-moe: co-training agreement metrics and parameter groups."""

from .agreement import ExpertAgreement, ExpertError, AgreementMSE, AgreementMAE
from .param_groups import expert_param_groups

__all__ = [
    "ExpertAgreement",
    "ExpertError",
    "AgreementMSE",
    "AgreementMAE",
    "expert_param_groups",
]
