"""Starting an expert from a trained model: PretrainedExpert, frozen_experts, expert learning rates."""


import copy

import pytest
import torch
from omegaconf import OmegaConf

from nequip_moe.nn import MixtureOfExpertsEnergy
from nequip_moe.train import expert_param_groups

from conftest import CONFIGS, run_tool
from test_cotraining import TWO_ALLEGRO_TINY
from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    ELEMENTS,
    build,
    element_graph,
    float64,
    half_labels,
    pt_co_slab,
    typed_graph,
)


@pytest.fixture(scope="module")
def trained_allegro(tmp_path_factory, pt_co_frames_file):
    """A plain Allegro model (element types) trained with nequip-train: the 'high-fidelity' model."""
    run_dir = tmp_path_factory.mktemp("allegro_run")
    config = OmegaConf.load(CONFIGS / "tiny_moe.yaml")
    config.data_file = str(pt_co_frames_file)
    config.data.transforms[0] = {
        "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
        "model_type_names": ELEMENTS,
    }
    config.data.stats_manager.type_names = ELEMENTS
    model = OmegaConf.to_container(config.training_module.model.experts.big)
    model.update(seed=3, model_dtype="float64", type_names=ELEMENTS, r_max=4.5)
    config.training_module.model = model
    OmegaConf.save(config, run_dir / "allegro.yaml")
    run_tool(
        ["nequip-train", "-cp", run_dir, "-cn", "allegro", f"hydra.run.dir={run_dir}"],
        cwd=run_dir,
    )
    return run_dir / "best.ckpt"


def moe_with_pretrained_big(ckpt, **options):
    small = {
        "_target_": "allegro.model.AllegroModel",
        "r_max": 4.0,
        "l_max": 1,
        "num_layers": 1,
        "num_scalar_features": 8,
        "num_tensor_features": 2,
        "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 4},
        "avg_num_neighbors": 10.0,
    }
    config = {
        "seed": 1,
        "r_max": 4.5,
        "type_names": list(TWO_ALLEGRO_TINY["type_names"]),
        "composite_types": copy.deepcopy(TWO_ALLEGRO_TINY["composite_types"]),
        "experts": {
            "big": {"_target_": "nequip_moe.model.PretrainedExpert", "path": str(ckpt)},
            "small": small,
        },
    }
    return build(config, **options), config


def test_pretrained_expert_keeps_its_energies_and_can_be_frozen(trained_allegro):
    from nequip_moe.integrations.model_files import load_model

    moe, config = moe_with_pretrained_big(trained_allegro, frozen_experts=["big"])
    reference, _ = load_model(trained_allegro)
    atoms = pt_co_slab()
    labels = half_labels(atoms)
    out = moe(typed_graph(atoms, config, labels))
    ref = reference(element_graph(atoms, 4.5))
    big = torch.as_tensor(labels) == 0
    torch.testing.assert_close(
        out["atomic_energy"].view(-1)[big], ref["atomic_energy"].view(-1)[big], atol=1e-10, rtol=0
    )
    moe_energy = next(m for m in moe.modules() if isinstance(m, MixtureOfExpertsEnergy))
    assert not any(p.requires_grad for p in moe_energy.experts["big"].parameters())
    assert all(p.requires_grad for p in moe_energy.experts["small"].parameters())
    # frozen parameters are left out of the optimizer; the small expert gets its own rate
    groups = expert_param_groups(torch.nn.ModuleDict({"sole_model": moe}), {"small": 0.05})
    grouped = [id(p) for g in groups for p in g["params"]]
    assert not set(grouped) & {id(p) for p in moe_energy.experts["big"].parameters()}
    assert groups[-1]["lr"] == 0.05
    assert {id(p) for p in groups[-1]["params"]} == {
        id(p) for p in moe_energy.experts["small"].parameters()
    }


def test_pretrained_expert_errors(trained_allegro, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        moe_with_pretrained_big(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match=r"frozen_experts \['huge'\] are not experts"):
        moe_with_pretrained_big(trained_allegro, frozen_experts=["huge"])
    moe, _ = moe_with_pretrained_big(trained_allegro)
    with pytest.raises(ValueError, match=r"expert_lr names \['huge'\]"):
        expert_param_groups(moe, {"huge": 0.1})
