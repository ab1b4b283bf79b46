"""The private nequip (and torch) names behind ``nequip_moe.compat.nequip_api``: each test fails
loudly when an upgrade of nequip (checked on 0.19.1) or torch (2.13) changes one."""

import inspect

import numpy as np
import torch

from nequip.data.transforms import NeighborListTransform
from nequip.integrations.ase import NequIPCalculator
from nequip.model.inference_models import load_compiled_model

from nequip_moe.compat.nequip_api import (
    SOLE_MODEL_KEY,
    ase_compile_target,
    calculator_from_saved_model,
    compiled_model_metadata,
    transforms_run_on_device,
    workflow_state,
)
from nequip_moe.integrations.ase import MoECalculator

from test_assign_cli import TARGET_FIELDS


def test_sole_model_key_is_nequips():
    from nequip.train.lightning import _SOLE_MODEL_KEY

    assert SOLE_MODEL_KEY == _SOLE_MODEL_KEY


def test_workflow_state_follows_nequip():
    from nequip.scripts._workflow_utils import set_workflow_state

    assert workflow_state() is None
    set_workflow_state("package")
    try:
        assert workflow_state() == "package"
    finally:
        set_workflow_state(None)


def test_ase_compile_target_fields():
    """The fields our ASE target check compares against (and the tests' `--target ase` files)."""
    target = ase_compile_target()
    inputs, outputs = (text.split() for text in TARGET_FIELDS["ase"])
    assert list(target["input"]) == inputs
    assert set(outputs) <= set(target["output"])


def test_transforms_run_on_device():
    calculator = NequIPCalculator(
        model=torch.nn.Identity().eval(), device="cpu", transforms=[NeighborListTransform(r_max=3.0)]
    )
    assert transforms_run_on_device(calculator) is False


def test_calculator_from_saved_model(tiny_moe_package, mixed_expert_slab):
    """nequip's loader still takes the options we pass and builds our class, whose energy is
    the compiled file's."""
    parameters = inspect.signature(NequIPCalculator._from_saved_model).parameters
    assert {"device", "chemical_species_to_atom_type_map", "allow_tf32", "model_name",
            "compile_mode"} <= set(parameters)
    calculator = calculator_from_saved_model(
        MoECalculator, tiny_moe_package, device="cpu", chemical_species_to_atom_type_map={}
    )
    assert type(calculator) is MoECalculator
    energy = calculator.get_potential_energy(mixed_expert_slab)
    assert np.isfinite(energy) and calculator.get_forces(mixed_expert_slab).shape == (18, 3)


def test_compiled_model_metadata_is_nequips(tiny_moe_ase_pt2):
    metadata = compiled_model_metadata(tiny_moe_ase_pt2)
    model, _ = load_compiled_model(str(tiny_moe_ase_pt2), "cpu")
    assert metadata == dict(model.model.get_metadata())
    assert metadata["type_names"].split() == ["C", "O", "Pt", "Pt_small"]
