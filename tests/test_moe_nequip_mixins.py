"""nequip's own model test suite (the mixins allegro's tests use) on MoE configurations.

The mixin fixtures type their test molecules as H -> 0, C -> 1, O -> 2; the composite types
below put type 1 on the small expert, so every mixin test evaluates both experts.
"""

import copy

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nequip.data import to_ase
from nequip.utils.unittests.model_tests_ase_integration import ASEIntegrationMixin

from nequip_moe.integrations.ase import MoECalculator

from conftest import CONFIGS

COMPOSITE_TYPES = {
    "C": {"element": "C", "expert": "big"},
    "O_small": {"element": "O", "expert": "small"},
    "Pt": {"element": "Pt", "expert": "big"},
    "Pt_small": {"element": "Pt", "expert": "small"},
    "C_small": {"element": "C", "expert": "small"},
    "O": {"element": "O", "expert": "big"},
}


def allegro_expert(**overrides):
    config = {
        "_target_": "allegro.model.AllegroModel",
        "l_max": 1,
        "num_layers": 1,
        "num_scalar_features": 8,
        "num_tensor_features": 2,
        "allegro_mlp_hidden_layers_depth": 1,
        "allegro_mlp_hidden_layers_width": 8,
        "readout_mlp_hidden_layers_depth": 1,
        "readout_mlp_hidden_layers_width": 8,
        "radial_chemical_embed": {
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": 4,
        },
        "avg_num_neighbors": 5.0,
    }
    config.update(overrides)
    return config


def moe_config(experts, r_max=4.0):
    return {
        "_target_": "nequip_moe.model.MoEModel",
        "seed": 123,
        "r_max": r_max,
        "type_names": list(COMPOSITE_TYPES),
        "composite_types": copy.deepcopy(COMPOSITE_TYPES),
        "experts": experts,
    }


# two Allegro experts of different size and cutoff; the small one with per-edge-type cutoffs
TWO_ALLEGRO = moe_config(
    {
        "big": allegro_expert(
            l_max=2, num_layers=2, num_scalar_features=16, num_tensor_features=4
        ),
        "small": allegro_expert(
            r_max=3.5, per_edge_type_cutoff={"C": 3.0, "O": {"Pt": 3.2, "O": 2.8}}
        ),
    }
)
# a message-passing NequIP expert (routed with its receptive-field halo) and an Allegro one
NEQUIP_ALLEGRO = moe_config(
    {
        "big": {
            "_target_": "nequip.model.NequIPGNNModel",
            "l_max": 1,
            "num_layers": 2,
            "num_features": 8,
            "radial_mlp_depth": 1,
            "radial_mlp_width": 8,
            "avg_num_neighbors": 5.0,
        },
        "small": allegro_expert(r_max=3.6),
    }
)


class _MixinMoECalculator(MoECalculator):
    """``MoECalculator`` as nequip's ASE mixin calls it: the mixin passes the species map of
    plain models, while MoE typing comes from the structures' ``expert`` arrays."""

    @classmethod
    def _from_saved_model(cls, model_path, chemical_species_to_atom_type_map=None, **kwargs):
        return super()._from_saved_model(
            model_path, chemical_species_to_atom_type_map={}, **kwargs
        )

    @classmethod
    def from_compiled_model(cls, compile_path, chemical_species_to_atom_type_map=None, **kwargs):
        return super().from_compiled_model(compile_path, **kwargs)


class MoEMixinTests(ASEIntegrationMixin):
    """Runs nequip's basic, energy and ASE-compile model tests on an MoE config.

    Training sessions use `configs/tiny_moe.yaml` on EMT Pt+CO frames with expert labels,
    rewritten for the class's composite types.
    """

    @pytest.fixture(scope="class", params=["package"])
    @classmethod
    def model_source(cls, request):
        return request.param

    @pytest.fixture(scope="class")
    @classmethod
    def conffile(cls, config, pt_co_frames_file, tmp_path_factory):
        train_config = OmegaConf.load(CONFIGS / "tiny_moe.yaml")
        train_config.data_file = str(pt_co_frames_file)
        train_config.cutoff_radius = config["r_max"]
        train_config.model_type_names = config["type_names"]
        train_config.composite_types = config["composite_types"]
        train_config.expert_names = list(config["experts"])
        path = tmp_path_factory.mktemp("mixin_conf") / "moe_train.yaml"
        OmegaConf.save(train_config, path)
        return str(path)  # absolute: nequip's session helper joins it onto its own folder

    @pytest.fixture(scope="class")
    @classmethod
    def ase_calculator_cls(cls):
        return _MixinMoECalculator

    def load_validation_structures(self, training_config, tmpdir):
        """Validation frames with their per-atom ``expert`` arrays (both experts present)."""
        datamodule = instantiate(training_config.data, _recursive_=False)
        datamodule.prepare_data()
        datamodule.setup("validate")
        structures = []
        for data in datamodule.val_dataloader()[0]:
            structures += to_ase(data.copy(), extra_fields=["expert"])
        assert {0, 1} <= {int(e) for a in structures for e in a.arrays["expert"].ravel()}
        return structures

    def model_parameter_updates(self, model_config):
        updates = {
            "type_names": "${model_type_names}",
            "composite_types": "${composite_types}",
            "r_max": "${cutoff_radius}",
        }
        for name in model_config["experts"]:
            updates[f"experts.{name}.avg_num_neighbors"] = (
                "${training_data_stats:num_neighbors_mean}"
            )
            updates[f"experts.{name}.per_type_energy_shifts"] = (
                "${training_data_stats:per_atom_energy_mean}"
            )
            updates[f"experts.{name}.per_type_energy_scales"] = (
                "${training_data_stats:forces_rms}"
            )
        return updates


class TestTwoAllegroExperts(MoEMixinTests):
    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return copy.deepcopy(TWO_ALLEGRO)

    @pytest.fixture
    def strict_locality(self):
        return True


class TestNequIPAllegroExperts(MoEMixinTests):
    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return copy.deepcopy(NEQUIP_ALLEGRO)

    @pytest.fixture(scope="class", params=["float64"])
    @classmethod
    def model_dtype(cls, request):
        return request.param

    @pytest.fixture
    def strict_locality(self):
        return False
