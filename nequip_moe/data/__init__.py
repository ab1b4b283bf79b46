"""Data fields and transforms of nequip-moe."""

from nequip_moe._keys import EXPERT_KEY, ATOM_EXPERT_KEY
from .transforms import CompositeTypeMapper

__all__ = ["EXPERT_KEY", "ATOM_EXPERT_KEY", "CompositeTypeMapper"]
