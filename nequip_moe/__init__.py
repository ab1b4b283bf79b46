"""nequip-moe: multi-fidelity Mixture-of-Experts potentials for the NequIP framework.

Imported by nequip at start-up through the ``nequip.extension`` entry point; it registers the
expert-label, gate and co-training fields with nequip. Importing it does not import nequip (so
that the ``nequip-moe`` command starts fast): the fields are registered at once if nequip is
imported already (always so when nequip loads this extension), else as soon as nequip's own
import completes.
"""

import importlib.abc
import importlib.util
import sys

from . import keys
from .version import __version__  # noqa: F401


def register_fields():
    """Register nequip-moe's data fields with nequip (idempotent)."""
    from nequip.data import register_fields as register

    register(
        node_fields=[
            keys.EXPERT_KEY,
            keys.ATOM_EXPERT_KEY,
            keys.SHARED_KEY,
            keys.GATE_KEY,
            keys.EXPERT_ATOMIC_ENERGY_KEY,
            keys.EXPERT_FORCES_KEY,
        ],
        edge_fields=[keys.EXPERT_EDGE_ENERGY_GRADIENT_KEY],
        graph_fields=[keys.EXPERT_TOTAL_ENERGY_KEY],
        long_fields=[keys.EXPERT_KEY, keys.ATOM_EXPERT_KEY, keys.SHARED_KEY],
    )


class _RegisterFieldsAfterNequip(importlib.abc.MetaPathFinder):
    """Import hook for when nequip-moe is imported before nequip: nequip's extension loading
    then finds this module already imported, so the fields are registered right after
    nequip's ``__init__`` has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "nequip":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register_fields()

        spec.loader.exec_module = exec_then_register
        return spec


if "nequip" in sys.modules:
    register_fields()
else:
    sys.meta_path.insert(0, _RegisterFieldsAfterNequip())
