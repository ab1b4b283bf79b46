"""Data field names of nequip-moe (constants only: imported by packaged modules).

``EXPERT_KEY`` is the per-atom integer expert label read from data (an extxyz per-atom
array of that name); ``ATOM_EXPERT_KEY`` is the model's per-atom record of which expert
produced each atom's energy. Both are registered with nequip in ``nequip_moe/__init__.py``.
"""

from typing import Final

EXPERT_KEY: Final[str] = "expert"
ATOM_EXPERT_KEY: Final[str] = "atomic_expert"
