"""The gated MoE: e_i = g_i e_i^big + (1 - g_i) e_i^small with a smooth, strictly local gate.

Numerical facts on configurations with atoms inside the blend zone (0 < g < 1): forces and
stress are the exact derivatives of the energy (through the gate as well), routed == dense,
each expert evaluates only the centres it weighs, and nequip's model test mixins (including
compiled == eager) on a gated model trained with ``configs/tiny_gated.yaml``.
"""

import copy

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, bulk, fcc111, molecule
from omegaconf import OmegaConf

from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
from nequip.utils.unittests.model_tests_ase_integration import ASEIntegrationMixin

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.nn import AdsorbateCoordinationGate, MixtureOfExpertsEnergy

from conftest import CONFIGS
from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    build,
    float64,
    standalone_expert,
)
from test_moe_nequip_mixins import MoEMixinTests, allegro_expert, nequip_expert

ELEMENTS = ["C", "O", "Pt"]
GATE = {"_target_": "nequip_moe.nn.AdsorbateCoordinationGate"}


def gated_config(experts, r_max=4.0):
    return {
        "_target_": "nequip_moe.model.MoEModel",
        "seed": 123,
        "r_max": r_max,
        "type_names": list(ELEMENTS),
        "gate": dict(GATE),
        "experts": experts,
    }


GATED_TWO_ALLEGRO = gated_config(
    {
        "big": allegro_expert(l_max=2, num_layers=2, num_scalar_features=16, num_tensor_features=4),
        "small": allegro_expert(r_max=3.5, per_edge_type_cutoff={"C": 3.0}),
    }
)
# a message-passing big expert: routed with its halo around the gated centres
GATED_NEQUIP_ALLEGRO = gated_config({"big": nequip_expert(), "small": allegro_expert(r_max=3.6)})
CONFIGS_BY_ID = {"allegro2": GATED_TWO_ALLEGRO, "nequip+allegro": GATED_NEQUIP_ALLEGRO}


def blend_zone_slab(seed=1):
    """Rattled 5-layer Pt(111) with CO whose C sits inside the gate's switching shell of the
    Pt below: the slab's interior atoms get 0 < g < 1 from thermal coordination changes."""
    slab = fcc111("Pt", (3, 3, 5), vacuum=5.0, a=3.92)
    add_adsorbate(slab, molecule("CO"), 2.6, "ontop", mol_index=1)
    slab.pbc = True
    slab.rattle(0.15, seed=seed)
    return slab


def hot_bulk(seed=2):
    """Strongly rattled bulk Pt (periodic): partial coordination deficits put atoms in the blend zone."""
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.2, seed=seed)
    return atoms


def graph(atoms, r_max=4.0):
    data = ChemicalSpeciesToAtomTypeMapper(ELEMENTS)(from_ase(atoms))
    return NeighborListTransform(r_max=r_max)(data)


def gate_values(atoms, r_max=4.0):
    return AdsorbateCoordinationGate(ELEMENTS)(graph(atoms, r_max))["moe_gate"].view(-1)


@pytest.mark.parametrize("make", [blend_zone_slab, hot_bulk])
def test_structures_have_blend_zone_atoms(make):
    """The test structures hold atoms of all three zones (big only, blend, small only)."""
    g = gate_values(make())
    assert int(((g > 0) & (g < 1)).sum()) >= 3
    assert int((g == 0).sum()) >= 1
    if make is blend_zone_slab:
        assert int((g == 1).sum()) >= 1


@pytest.mark.parametrize("config_id", list(CONFIGS_BY_ID))
def test_energy_is_gate_weighted_expert_energies(config_id):
    """e_i = g_i e_i^big + (1 - g_i) e_i^small, each expert alone on the whole structure."""
    config = CONFIGS_BY_ID[config_id]
    moe = build(config)
    atoms = blend_zone_slab()
    out = moe(graph(atoms))
    g = out["moe_gate"].view(-1)
    torch.testing.assert_close(g, gate_values(atoms))
    big, r_big = standalone_expert(moe, config, "big")
    small, r_small = standalone_expert(moe, config, "small")
    e_big = big(graph(atoms, r_big))["atomic_energy"].view(-1)
    e_small = small(graph(atoms, r_small))["atomic_energy"].view(-1)
    expected = g * e_big + (1 - g) * e_small
    torch.testing.assert_close(out["atomic_energy"].view(-1), expected, atol=1e-10, rtol=0)
    assert torch.equal(out["atomic_expert"].view(-1), (g < 0.5).long())


def finite_difference_forces(moe, atoms, indices, h=1e-5):
    forces = np.zeros((len(indices), 3))
    for row, i in enumerate(indices):
        for c in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, c] += sign * h
                energies.append(moe(graph(moved))["total_energy"].item())
            forces[row, c] = -(energies[0] - energies[1]) / (2 * h)
    return forces


@pytest.mark.parametrize("config_id", list(CONFIGS_BY_ID))
def test_forces_are_exact_derivatives_in_blend_zone(config_id):
    """Autograd forces on blend-zone atoms (where grad g acts) and their neighbours equal central
    finite differences of the energy; the error shrinks as h^2 (C2 gate, no kinks)."""
    moe = build(CONFIGS_BY_ID[config_id])
    atoms = blend_zone_slab()
    out = moe(graph(atoms))
    g = out["moe_gate"].view(-1)
    blend = torch.nonzero((g > 0) & (g < 1)).view(-1).tolist()[:4]
    assert len(blend) >= 3
    forces = out["forces"].detach().numpy()[blend]
    errors = [
        np.abs(finite_difference_forces(moe, atoms, blend, h) - forces).max()
        for h in (1e-4, 1e-5)
    ]
    assert errors[1] < 1e-6
    assert errors[1] < 0.05 * errors[0] or errors[1] < 1e-9


def test_stress_is_exact_strain_derivative():
    """Stress equals the finite-difference derivative of the energy under homogeneous strain
    on hot bulk Pt, whose blend-zone gates change with the strain."""
    moe = build(GATED_TWO_ALLEGRO)
    atoms = hot_bulk()
    stress = moe(graph(atoms))["stress"].detach().numpy().reshape(3, 3)
    volume = atoms.get_volume()
    h = 1e-6
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h
                moved = atoms.copy()
                moved.set_cell(atoms.cell @ strain.T, scale_atoms=True)
                energies.append(moe(graph(moved))["total_energy"].item())
            fd[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    fd = 0.5 * (fd + fd.T)
    np.testing.assert_allclose(stress, fd, atol=1e-8, rtol=0)


@pytest.mark.parametrize("config_id", list(CONFIGS_BY_ID))
@pytest.mark.parametrize("make", [blend_zone_slab, hot_bulk])
def test_routed_equals_dense(config_id, make):
    """Routing each expert only to the centres it weighs (plus its halo) changes nothing."""
    config = CONFIGS_BY_ID[config_id]
    routed = build(config)
    dense = build(config, dense=True)
    dense.load_state_dict(routed.state_dict())
    data = graph(make())
    a, b = routed(dict(data)), dense(dict(data))
    for key in ("total_energy", "atomic_energy", "forces", "stress"):
        torch.testing.assert_close(a[key], b[key], atol=1e-12, rtol=0)


def test_each_expert_evaluates_only_the_centres_it_weighs():
    """The big expert gets edges centred on g > 0 atoms only, the small one on g < 1 only: the
    blend zone pays for both, big-only and small-only atoms for one."""
    moe = build(GATED_TWO_ALLEGRO)
    (module,) = [m for m in moe.modules() if isinstance(m, MixtureOfExpertsEnergy)]
    centres = {}
    for name, expert in module.experts.items():
        expert.register_forward_pre_hook(
            lambda m, args, name=name: centres.__setitem__(
                name, set(args[0][AtomicDataDict.EDGE_INDEX_KEY][0].tolist())
            )
        )
    atoms = blend_zone_slab()
    out = moe(graph(atoms))
    g = out["moe_gate"].view(-1)
    n = len(atoms)
    big = {i for i in centres["big"] if i < n}  # indices >= n are the routing's dummy atoms
    small = {i for i in centres["small"] if i < n}
    assert big <= set(torch.nonzero(g > 0).view(-1).tolist())
    assert small <= set(torch.nonzero(g < 1).view(-1).tolist())
    assert big & small == big & set(torch.nonzero((g > 0) & (g < 1)).view(-1).tolist())
    assert len(big) < n and len(small) < n and len(big & small) > 0


def test_blend_zone_joins_the_agreement_atoms():
    """With a ``shared`` field in the input (training), the blend-zone atoms are added to it and
    every expert's energies and forces are produced there."""
    moe = build(GATED_TWO_ALLEGRO)
    atoms = blend_zone_slab()
    data = graph(atoms)
    data["shared"] = torch.zeros((len(atoms), 1), dtype=torch.long)
    data[AtomicDataDict.POSITIONS_KEY].requires_grad_(True)
    out = moe(data)
    g = out["moe_gate"].view(-1)
    blend = (g > 0) & (g < 1)
    assert torch.equal(out["shared"].view(-1) != 0, blend)
    energies = out["expert_atomic_energy"]
    assert torch.all(energies[blend] != 0) and torch.all(energies[~blend] == 0)
    assert torch.all(out["expert_forces"][blend].abs().sum(-1) > 0)


def test_metadata_and_neighbor_cutoffs():
    """A gated model has element type names, the gate in its metadata, no composite-type table,
    and neighbour cutoffs covering every expert from every centre and the gate's own shells."""
    moe = build(GATED_TWO_ALLEGRO)
    metadata = moe.metadata
    assert metadata["type_names"] == "C O Pt"
    assert metadata["moe_gate_model"] == "AdsorbateCoordinationGate"
    assert "moe_type_experts" not in metadata
    # Pt centres: the big expert's r_max (4.0) to every neighbour; C/O centres too: one cutoff
    # for every pair, which the metadata's r_max alone says
    assert "per_edge_type_cutoff" not in metadata and float(metadata["r_max"]) == 4.0
    np.testing.assert_array_equal(
        np.array(next(m for m in moe.modules() if hasattr(m, "gate")).neighbor_cutoffs()),
        np.full((3, 3), 4.0),
    )
    with pytest.raises(ValueError, match="gated"):
        CompositeTypeTable.from_metadata(metadata)


def test_gate_shells_enter_the_neighbor_cutoffs():
    """Experts with short cutoffs: the gate's host shell (3.50 A for Pt) still reaches the
    neighbour list."""
    experts = {
        "big": allegro_expert(r_max=3.0),
        "small": allegro_expert(r_max=2.0),
    }
    moe = build(gated_config(experts, r_max=3.0) | {"r_max": 3.6})
    cutoffs = np.array(moe.metadata["per_edge_type_cutoff"].split(), dtype=float).reshape(3, 3)
    pt = ELEMENTS.index("Pt")
    assert cutoffs[pt, pt] == AdsorbateCoordinationGate(ELEMENTS).coordination_r_off
    assert cutoffs[pt, ELEMENTS.index("C")] == 3.0


def test_calculator_types_gated_models_by_species():
    """MoECalculator evaluates a gated model without labels; unknown species are named."""
    moe = build(GATED_TWO_ALLEGRO)
    moe.eval()
    calc = MoECalculator(moe, device="cpu", transforms=[NeighborListTransform(r_max=4.0)])
    atoms = blend_zone_slab()
    atoms.calc = calc
    reference = moe(graph(atoms))
    np.testing.assert_allclose(
        atoms.get_forces(), reference["forces"].detach().numpy(), atol=1e-12, rtol=0
    )
    gold = atoms.copy()
    gold[0].symbol = "Au"
    gold.calc = calc
    with pytest.raises(ValueError, match="Au"):
        gold.get_potential_energy()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"composite_types": {"C": {"element": "C", "expert": "big"}}}, "exactly one of"),
        ({"gate": None}, "exactly one of"),
        ({"type_names": ["C", "O", "Pt_small"]}, "not elements"),
        ({"gate": {"_target_": "nequip_moe.nn.AdsorbateCoordinationGate", "type_names": ["C", "Pt", "O"]}}, "differ"),
        ({"gate": {"adsorbates": ["C"]}}, "_target_"),
        ({"gate": {"_target_": "nequip_moe.nn.AdsorbateCoordinationGate", "adsorbates": ["N"]}}, "N"),
    ],
)
def test_bad_gated_configs_are_named(change, message):
    config = copy.deepcopy(GATED_TWO_ALLEGRO)
    config.update(change)
    with pytest.raises(ValueError, match=message):
        build(config)


def test_gate_needs_two_experts():
    config = copy.deepcopy(GATED_TWO_ALLEGRO)
    config["experts"]["tiny"] = allegro_expert(r_max=3.0)
    with pytest.raises(ValueError, match="exactly two experts"):
        build(config)


class TestGatedAllegroExperts(MoEMixinTests):
    """nequip's basic, energy and ASE-compile model tests on a gated MoE, trained with
    ``configs/tiny_gated.yaml``; the ASE tests use nequip's own calculator (plain element
    names) and validation structures that include blend-zone atoms, so compiled == eager is
    checked where the gate's gradient acts."""

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return copy.deepcopy(GATED_TWO_ALLEGRO)

    @pytest.fixture(scope="class", params=["float64"])
    @classmethod
    def model_dtype(cls, request):
        return request.param

    @pytest.fixture
    def strict_locality(self):
        return True

    @pytest.fixture(scope="class")
    @classmethod
    def conffile(cls, config, pt_co_frames_file, tmp_path_factory):
        train_config = OmegaConf.load(CONFIGS / "tiny_gated.yaml")
        merged = OmegaConf.merge(OmegaConf.load(CONFIGS / "tiny_cotrain.yaml"), train_config)
        merged = OmegaConf.merge(OmegaConf.load(CONFIGS / "tiny_moe.yaml"), merged)
        merged.pop("defaults", None)
        merged.data_file = str(pt_co_frames_file)
        merged.cutoff_radius = config["r_max"]
        path = tmp_path_factory.mktemp("gated_conf") / "gated_train.yaml"
        OmegaConf.save(merged, path)
        return str(path)

    @pytest.fixture(scope="class")
    @classmethod
    def ase_calculator_cls(cls):
        from nequip.integrations.ase import NequIPCalculator

        return NequIPCalculator

    def load_validation_structures(self, training_config, tmpdir):
        structures = ASEIntegrationMixin.load_validation_structures(
            self, training_config, tmpdir
        )
        structures = structures + [blend_zone_slab(), hot_bulk()]
        g = torch.cat([gate_values(a) for a in structures])
        assert int(((g > 0) & (g < 1)).sum()) >= 3
        return structures

    def model_parameter_updates(self, model_config):
        updates = super().model_parameter_updates(model_config)
        del updates["composite_types"]
        return updates

    def test_embedding_cutoff(self, model, device):
        """Each expert's edge embeddings vanish at its own cutoffs: checked on the expert alone
        (a dimer is under-coordinated, g = 1, so the small expert never sees it in the MoE)."""
        _, config, _ = model
        instance = self.make_model(config, device)
        (moe_energy,) = [m for m in instance.modules() if isinstance(m, MixtureOfExpertsEnergy)]
        for name, expert in moe_energy.experts.items():
            r_max = float(config["experts"][name].get("r_max", config["r_max"]))
            embeddings = []
            for distance in (0.8 * r_max, r_max * (1 - 1e-3)):
                data = {
                    "atom_types": torch.tensor([2, 2]),
                    "pos": torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]]),
                    "edge_index": torch.tensor([[0, 1], [1, 0]]),
                }
                data = AtomicDataDict.to_(data, device)
                out = expert(data)
                embeddings.append(out[AtomicDataDict.EDGE_EMBEDDING_KEY])
            assert embeddings[0].abs().max() > 1e-6, name
            assert embeddings[1].abs().max() < 1e-6 * embeddings[0].abs().max(), name

    def test_isolated_atom_energies(self, model, device):
        """An isolated atom has no neighbours, hence g = 1: its energy is the big expert's shift."""
        _, config, _ = model
        config = copy.deepcopy(config)
        for k, expert in enumerate(config["experts"].values()):
            expert["per_type_energy_shifts"] = {
                el: -(10.0**k) * (i + 1.25) for i, el in enumerate(ELEMENTS)
            }
        instance = self.make_model(config, device)
        frames = [
            {"atom_types": torch.tensor([t]), "pos": torch.zeros((1, 3))} for t in range(3)
        ]
        data = AtomicDataDict.batched_from_list(frames)
        data["edge_index"] = torch.zeros((2, 0), dtype=torch.long)
        out = instance(AtomicDataDict.to_(data, device))
        energies = out[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1)
        torch.testing.assert_close(
            energies, torch.tensor([-1.25, -2.25, -3.25], dtype=energies.dtype)
        )
