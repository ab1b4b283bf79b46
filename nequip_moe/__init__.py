"""nequip-moe: multi-fidelity Mixture-of-Experts potentials for the NequIP framework.

Imported by nequip at start-up through the ``nequip.extension`` entry point; it registers the
expert-label, gate and co-training fields.
"""

from nequip.data import register_fields

from ._keys import (
    EXPERT_KEY,
    ATOM_EXPERT_KEY,
    SHARED_KEY,
    GATE_KEY,
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
    EXPERT_EDGE_ENERGY_GRADIENT_KEY,
)
from ._version import __version__  # noqa: F401

register_fields(
    node_fields=[
        EXPERT_KEY,
        ATOM_EXPERT_KEY,
        SHARED_KEY,
        GATE_KEY,
        EXPERT_ATOMIC_ENERGY_KEY,
        EXPERT_FORCES_KEY,
    ],
    edge_fields=[EXPERT_EDGE_ENERGY_GRADIENT_KEY],
    graph_fields=[EXPERT_TOTAL_ENERGY_KEY],
    long_fields=[EXPERT_KEY, ATOM_EXPERT_KEY, SHARED_KEY],
)
