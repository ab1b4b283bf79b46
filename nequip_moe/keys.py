"""Data field names and model metadata keys of nequip-moe (constants only: imported by packaged modules).

- ``EXPERT_KEY``: per-atom integer expert label read from data (extxyz per-atom array).
- ``ATOM_EXPERT_KEY``: the model's per-atom record of which expert produced each energy.
- ``SHARED_KEY``: per-atom 0/1 mark of *shared* environments, where all experts must agree.
  When present in a model input, the model also evaluates every expert there (co-training).
- ``GATE_KEY``: per-atom gate ``g`` in [0, 1] of a gated MoE (weight of the high-fidelity expert).
- ``EXPERT_ATOMIC_ENERGY_KEY`` ``[num_atoms, num_experts]``, ``EXPERT_FORCES_KEY``
  ``[num_atoms, num_experts, 3]``: each expert's per-atom energy and whole-frame force on the
  shared atoms (zero elsewhere). ``EXPERT_TOTAL_ENERGY_KEY`` ``[num_frames, num_experts]``:
  each expert's energy of the frame, meaningful for frames whose atoms are all shared.
- ``EXPERT_EDGE_ENERGY_GRADIENT_KEY`` ``[num_edges, num_experts, 3]``: for strictly local
  experts, each expert's gradient ``d e_centre / d r_edge`` of its centre atom's energy with
  respect to the edge vector, on the edges centred on shared atoms (zero elsewhere).

The data fields are registered with nequip in ``nequip_moe/__init__.py``.
"""

from typing import Final

EXPERT_KEY: Final[str] = "expert"
ATOM_EXPERT_KEY: Final[str] = "atomic_expert"
SHARED_KEY: Final[str] = "shared"
GATE_KEY: Final[str] = "moe_gate"
EXPERT_ATOMIC_ENERGY_KEY: Final[str] = "expert_atomic_energy"
EXPERT_FORCES_KEY: Final[str] = "expert_forces"
EXPERT_TOTAL_ENERGY_KEY: Final[str] = "expert_total_energy"
EXPERT_EDGE_ENERGY_GRADIENT_KEY: Final[str] = "expert_edge_energy_gradient"

# Model metadata keys (space-separated strings): the composite-type table aligned with
# `type_names` (`moe_type_elements`, `moe_type_experts`), the experts in label order
# (`moe_expert_names`) and, aligned with them, each expert's `r_max` and receptive field:
# `moe_expert_halo_hops` is 0 (strictly local), n > 0 (n message-passing neighbour shells) or
# -1 (unknown). Models without `moe_expert_halo_hops` are older: treat the field as unknown.
EXPERT_NAMES_KEY: Final[str] = "moe_expert_names"
TYPE_ELEMENTS_KEY: Final[str] = "moe_type_elements"
TYPE_EXPERTS_KEY: Final[str] = "moe_type_experts"
EXPERT_R_MAX_KEY: Final[str] = "moe_expert_r_max"
EXPERT_HALO_HOPS_KEY: Final[str] = "moe_expert_halo_hops"
# Gated MoEs (plain element type names, no composite-type table) carry the gate's class name
# under `moe_gate_model` instead of `moe_type_elements` / `moe_type_experts`.
GATE_MODEL_KEY: Final[str] = "moe_gate_model"
