"""Model builders of nequip-moe."""

from .moe_model import MoEModel, PretrainedExpert

__all__ = ["MoEModel", "PretrainedExpert"]
