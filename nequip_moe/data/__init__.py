"""Data fields and transforms of nequip-moe."""

from nequip_moe.keys import EXPERT_KEY, ATOM_EXPERT_KEY, SHARED_KEY
from .transforms import CompositeTypeMapper
from .shared import SharedEnvironments

__all__ = [
    "EXPERT_KEY",
    "ATOM_EXPERT_KEY",
    "SHARED_KEY",
    "CompositeTypeMapper",
    "SharedEnvironments",
]
