"""nequip (and torch) internals that have no public equivalent, one wrapper each.

Each wrapper names the version it was checked on (nequip 0.19.1, torch 2.13);
``tests/test_compat.py`` fails loudly when an upgrade changes one. The imports happen inside
the wrappers, so importing this module is light; never call them from ``nequip_moe.nn``.
"""

from typing import Dict

# nequip names the single model of a training run "sole_model" and exports the name only as
# the private `nequip.train.lightning._SOLE_MODEL_KEY` (nequip 0.19.1); `nequip-compile
# --model` and `load_saved_model` default to it (tests/test_compat.py compares the two)
SOLE_MODEL_KEY = "sole_model"


def workflow_state():
    """The nequip workflow this process runs (``"train"``, ``"package"``, ``"compile"``, ...,
    or ``None``), from the private ``nequip.scripts._workflow_utils`` (nequip 0.19.1)."""
    from nequip.scripts._workflow_utils import get_workflow_state

    return get_workflow_state()


def calculator_from_saved_model(calculator_class, model_path, **kwargs):
    """An ASE calculator of ``calculator_class`` (a ``NequIPCalculator`` subclass) from a
    checkpoint or package.

    nequip 0.19.1 has no public loader for calculators from saved models: its docs and tests use
    the classmethod ``NequIPCalculator._from_saved_model`` (loads the model, builds the
    neighbour-list transforms, calls the class with ``model``, ``device``, ``transforms``).

    Args:
        calculator_class: the calculator class to build
        model_path: checkpoint or ``.nequip.zip`` package
        **kwargs: options of ``_from_saved_model`` (``device``,
            ``chemical_species_to_atom_type_map``, ``allow_tf32``, ``model_name``,
            ``compile_mode``, neighbour-list options) and of the calculator
    """
    return calculator_class._from_saved_model(model_path, **kwargs)


def ase_compile_target() -> Dict:
    """``{"input": [...], "output": [...]}``: the fields of nequip's ``--target ase`` compile
    target, from the private classmethod ``NequIPCalculator._get_aoti_compile_target``
    (nequip 0.19.1; the table behind it, ``nequip.scripts._compile_utils``, is private too)."""
    from nequip.integrations.ase import NequIPCalculator

    return NequIPCalculator._get_aoti_compile_target()


def transforms_run_on_device(calculator) -> bool:
    """Whether a ``NequIPCalculator`` runs its transforms (neighbour list) on the model's device.

    ``NequIPCalculator.__init__`` makes this choice (CUDA neighbour lists) and keeps it only in
    the private attribute ``_move_to_device_before_transforms`` (nequip 0.19.1).
    """
    return calculator._move_to_device_before_transforms


def compiled_model_metadata(path) -> Dict[str, str]:
    """The metadata (string values) of an AOTInductor ``.nequip.pt2`` file, on any device.

    nequip 0.19.1's public ``load_compiled_model`` also reads it, but refuses files compiled
    for another device than the one asked; this is its loading step without that check:
    ``nequip.utils.aoti_metadata.import_custom_ops_libs`` (public), then torch's
    ``torch._inductor.aoti_load_package`` (private name; torch 2.13).
    """
    import torch
    from nequip.utils.aoti_metadata import import_custom_ops_libs

    path = str(path)
    import_custom_ops_libs(path)
    return dict(torch._inductor.aoti_load_package(path).get_metadata())
