"""Data fields and transforms of nequip-moe."""

from nequip_moe._keys import EXPERT_KEY, ATOM_EXPERT_KEY, SHARED_KEY
from .transforms import CompositeTypeMapper, SharedEnvironments

__all__ = [
    "EXPERT_KEY",
    "ATOM_EXPERT_KEY",
    "SHARED_KEY",
    "CompositeTypeMapper",
    "SharedEnvironments",
]
