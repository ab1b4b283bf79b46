"""Model builders of nequip-moe."""

from .moe_model import MoEModel

__all__ = ["MoEModel"]
