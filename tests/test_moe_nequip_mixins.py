"""nequip's own model test suite (the mixins allegro's tests use) on MoE configurations.

The mixin fixtures type their test molecules as H -> 0, C -> 1, O -> 2; the composite types
below put type 1 on the small expert, so every mixin test evaluates both experts.
"""

import copy

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nequip.data import AtomicDataDict, compute_neighborlist_, from_dict, to_ase
from nequip.nn import with_edge_vectors_
from nequip.utils.unittests.model_tests_ase_integration import ASEIntegrationMixin

from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.nn import MixtureOfExpertsEnergy

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


def nequip_expert(**overrides):
    config = {
        "_target_": "nequip.model.NequIPGNNModel",
        "l_max": 1,
        "num_layers": 2,
        "num_features": 8,
        "radial_mlp_depth": 1,
        "radial_mlp_width": 8,
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


def experts_own_cutoffs(config):
    """``per_edge_type_cutoff`` over composite types equal to what the (strictly local) experts
    use at inference: each centre type's row holds its own expert's cutoffs, as written in the
    expert configs (3.2 and 2.8 are not float32 numbers: float32(3.2) > 3.2)."""
    types = config["composite_types"]
    return {
        centre: {
            neighbour: expert_cutoff(
                config, types[centre]["expert"], types[centre]["element"], types[neighbour]["element"]
            )
            for neighbour in config["type_names"]
        }
        for centre in config["type_names"]
    }


# a message-passing NequIP expert (routed with its receptive-field halo) and an Allegro one
NEQUIP_ALLEGRO = moe_config({"big": nequip_expert(), "small": allegro_expert(r_max=3.6)})


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


def composite_type(config, element, expert):
    """Index of the composite type of (element, expert) in the model's type names."""
    for index, name in enumerate(config["type_names"]):
        entry = config["composite_types"][name]
        if entry["element"] == element and entry["expert"] == expert:
            return index
    raise KeyError((element, expert))


def expert_cutoff(config, expert, centre, neighbour):
    """An expert's cutoff for edges from a ``centre`` atom to a ``neighbour`` atom, read from its
    config as nequip reads ``per_edge_type_cutoff`` (missing entries: the expert's ``r_max``)."""
    expert_config = config["experts"][expert]
    r_max = float(expert_config.get("r_max", config["r_max"]))
    cutoff = (expert_config.get("per_edge_type_cutoff") or {}).get(centre, r_max)
    if isinstance(cutoff, dict):
        cutoff = cutoff.get(neighbour, r_max)
    return float(cutoff)


class MoEMixinTests(ASEIntegrationMixin):
    """Runs nequip's basic, energy and ASE-compile model tests on an MoE config.

    Training sessions use `configs/tiny_moe.yaml` on EMT Pt+CO frames with expert labels,
    rewritten for the class's composite types. nequip's `test_embedding_cutoff` and
    `test_isolated_atom_energies` would pass without checking anything for an MoE (the model's
    output holds no edge embedding; the shifts are per element, not per composite type): they
    are replaced by MoE versions.
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

    def test_embedding_cutoff(self, model, device):
        """Each expert's edge embeddings vanish at its own (per-edge-type) cutoffs: the edge from
        a centre of element a to a neighbour of element b is kept up to the expert's cutoff for
        (a, b), where its embedding and its energy contribution go smoothly to zero."""
        _, config, _ = model
        instance = self.make_model(config, device)
        (moe_energy,) = [m for m in instance.modules() if isinstance(m, MixtureOfExpertsEnergy)]
        seen = {}
        for name, expert in moe_energy.experts.items():
            expert.register_forward_hook(
                lambda module, args, out, name=name: seen.__setitem__(name, out)
            )
        elements = sorted({c["element"] for c in config["composite_types"].values()})
        tol = 1e-4 if config["model_dtype"] == "float32" else 1e-6

        def evaluate(expert, centre, neighbour, distance):
            """Two atoms of the expert; its embedding of the edge 0 -> 1 (None: no such edge)
            and the centre's energy."""
            data = from_dict(
                {
                    "atom_types": np.array(
                        [
                            composite_type(config, centre, expert),
                            composite_type(config, neighbour, expert),
                        ]
                    ),
                    "pos": np.array([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]]),
                }
            )
            data = compute_neighborlist_(data, r_max=float(config["r_max"]))
            seen.clear()
            out = instance(AtomicDataDict.to_(data, device))
            centre_energy = out[AtomicDataDict.PER_ATOM_ENERGY_KEY][0].item()
            expert_out = seen[expert]
            edges = expert_out[AtomicDataDict.EDGE_INDEX_KEY]
            edge = ((edges[0] == 0) & (edges[1] == 1)).nonzero().view(-1)
            if edge.numel() == 0:
                return None, centre_energy
            return expert_out[AtomicDataDict.EDGE_EMBEDDING_KEY][edge[0]], centre_energy

        for expert in config["experts"]:
            for centre in elements:
                for neighbour in elements:
                    cutoff = expert_cutoff(config, expert, centre, neighbour)
                    case = f"expert {expert}, edge {centre} -> {neighbour}, cutoff {cutoff}"
                    inside, _ = evaluate(expert, centre, neighbour, 0.8 * cutoff)
                    at_cutoff, energy_at = evaluate(expert, centre, neighbour, cutoff * (1 - 1e-3))
                    beyond, energy_beyond = evaluate(expert, centre, neighbour, cutoff * (1 + 1e-3))
                    assert inside is not None and at_cutoff is not None, case
                    assert inside.abs().max() > 1e-6, case
                    assert at_cutoff.abs().max() < tol * inside.abs().max(), case
                    assert beyond is None or torch.all(beyond == 0), case
                    assert abs(energy_at - energy_beyond) < tol, case

    def test_isolated_atom_energies(self, model, device):
        """An isolated atom of every composite type gets its own expert's shift for its element
        (the experts are given different per-element shifts)."""
        _, config, _ = model
        config = copy.deepcopy(config)
        elements = sorted({c["element"] for c in config["composite_types"].values()})
        shifts = {}
        for k, (name, expert) in enumerate(config["experts"].items()):
            shifts[name] = {el: -(10.0**k) * (i + 1.25) for i, el in enumerate(elements)}
            expert["per_type_energy_shifts"] = shifts[name]
        instance = self.make_model(config, device)
        frames = [
            from_dict({"atom_types": np.array([t]), "pos": np.zeros((1, 3))})
            for t in range(len(config["type_names"]))
        ]
        data = compute_neighborlist_(
            AtomicDataDict.batched_from_list(frames), r_max=float(config["r_max"])
        )
        assert data[AtomicDataDict.EDGE_INDEX_KEY].shape[1] == 0
        out = instance(AtomicDataDict.to_(data, device))
        expected = [
            shifts[config["composite_types"][t]["expert"]][config["composite_types"][t]["element"]]
            for t in config["type_names"]
        ]
        energies = out[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1)
        torch.testing.assert_close(
            energies, torch.tensor(expected, dtype=energies.dtype, device=energies.device)
        )

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
        # the composite-type neighbour cutoffs given explicitly, equal to the experts' own
        # (issue 29: a float32 model refused them); TWO_ALLEGRO alone derives them
        return {**copy.deepcopy(TWO_ALLEGRO), "per_edge_type_cutoff": experts_own_cutoffs(TWO_ALLEGRO)}

    # float32 end to end here; the float64 sessions (1e-12 compiled == eager) are the
    # NequIP + Allegro class and the gated class of test_gated_moe.py
    @pytest.fixture(scope="class", params=["float32"])
    @classmethod
    def model_dtype(cls, request):
        return request.param

    @pytest.fixture
    def strict_locality(self):
        return True

    def test_pair_allegro_compile_holds_every_expert_edge(self, fake_model_training_session):
        """The float32 MoE compiled for `pair_style allegro` carries the composite-type cutoffs as
        written, and fed only the edges pair_allegro keeps (``r^2 <= cut^2`` per type pair, with
        the metadata's cutoffs) it gives the eager model's energies and forces: LAMMPS's
        neighbour list holds every edge the experts evaluate. Control: the list cut 30 % short
        for the small expert's centres gives other forces."""
        from allegro._compile import allegro_data_settings
        from nequip.utils.unittests.utils import resolve_saved_model_path, run_nequip_compile
        from nequip_moe.integrations.model_files import load_model
        from test_moe_model import pt_co_slab, typed_graph

        _, tmpdir, env, model_dtype, model_source, _ = fake_model_training_session
        saved = resolve_saved_model_path(tmpdir, model_source)
        compiled_path = run_nequip_compile(
            saved, tmpdir, env, "aotinductor", "cpu", "pair_allegro", output_prefix="pair_allegro"
        )
        eager, _ = load_model(saved)
        compiled, metadata = load_model(compiled_path)
        config = experts_own_cutoffs(TWO_ALLEGRO)
        names = TWO_ALLEGRO["type_names"]
        written = torch.tensor([float(c) for c in metadata["per_edge_type_cutoff"].split()], dtype=torch.float64)
        expected = torch.tensor([config[a][b] for a in names for b in names], dtype=torch.float64)
        assert torch.equal(written.view(-1), expected)

        atoms = pt_co_slab(size=(3, 3, 3), seed=4)
        # CO and the lower Pt on the small expert, the upper Pt on the big one
        z = atoms.positions[:, 2]
        labels = np.where((atoms.numbers == 78) & (z > np.median(z[atoms.numbers == 78])), 0, 1)
        data = typed_graph(atoms, TWO_ALLEGRO, labels)
        ref = eager(dict(data))

        def pair_allegro(cutoffs):
            """The compiled model on the edges pair_allegro keeps with this cutoff matrix."""
            types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
            edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
            edge_type = types[edge_index[0]] * len(names) + types[edge_index[1]]
            vectors = with_edge_vectors_(dict(data))[AtomicDataDict.EDGE_VECTORS_KEY]
            keep = vectors.square().sum(-1) <= cutoffs.view(-1)[edge_type].square()
            kept = dict(data)
            for key in (AtomicDataDict.EDGE_INDEX_KEY, AtomicDataDict.EDGE_CELL_SHIFT_KEY):
                kept[key] = kept[key][..., keep] if key == AtomicDataDict.EDGE_INDEX_KEY else kept[key][keep]
            ghost_owner = kept[AtomicDataDict.EDGE_INDEX_KEY][1][
                kept[AtomicDataDict.EDGE_CELL_SHIFT_KEY].abs().sum(-1) != 0
            ]
            ghosted = allegro_data_settings(dict(kept))
            out = compiled({k: ghosted[k] for k in metadata["nequip_aoti_inputs"].split()})
            num_local = len(atoms)
            forces = out["forces"][:num_local].index_add(0, ghost_owner, out["forces"][num_local:])
            return out["atomic_energy"][:num_local], forces

        energy, forces = pair_allegro(written)
        torch.testing.assert_close(energy.double(), ref["atomic_energy"].double(), atol=1e-4, rtol=0)
        torch.testing.assert_close(forces.double(), ref["forces"].double(), atol=1e-4, rtol=0)
        short = written.clone().view(len(names), len(names))
        for name in names:
            if TWO_ALLEGRO["composite_types"][name]["expert"] == "small":
                short[names.index(name)] *= 0.7
        _, short_forces = pair_allegro(short)
        assert (short_forces.double() - ref["forces"].double()).abs().max() > 1e-3


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
