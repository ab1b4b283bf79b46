"""Physical and numerical facts of the MoE model (float64)."""

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from hydra.utils import get_method

from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform
from nequip.utils.global_state import set_global_state

from nequip_moe.data import CompositeTypeMapper
from nequip_moe.model import MoEModel
from nequip_moe.nn import MixtureOfExpertsEnergy

from test_moe_nequip_mixins import NEQUIP_ALLEGRO, TWO_ALLEGRO, allegro_expert, experts_own_cutoffs

ELEMENTS = ["C", "O", "Pt"]


@pytest.fixture(scope="module", autouse=True)
def float64():
    set_global_state(allow_tf32=False)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def build(config, **overrides):
    config = copy.deepcopy(config)
    config.pop("_target_", None)
    config.update(model_dtype="float64", **overrides)
    return MoEModel(**config)


def pt_co_slab(size=(3, 3, 3), vacuum=5.0, seed=0):
    slab = fcc111("Pt", size, vacuum=vacuum, a=3.92)
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop", mol_index=1)
    slab.pbc = True
    slab.rattle(0.05, seed=seed)
    return slab


def typed_graph(atoms, config, labels, r_max=None):
    """AtomicDataDict with composite atom types from species + expert labels."""
    data = from_ase(atoms)
    data["expert"] = torch.as_tensor(labels, dtype=torch.long)
    mapper = CompositeTypeMapper(
        config["type_names"], config["composite_types"], list(config["experts"])
    )
    data = mapper(data)
    return NeighborListTransform(r_max=r_max or config["r_max"])(data)


def half_labels(atoms):
    """C, O and the upper half of the Pt atoms -> expert 0 (big); the rest -> 1 (small)."""
    z = atoms.positions[:, 2]
    return np.where((atoms.numbers != 78) | (z > np.median(z)), 0, 1)


def standalone_expert(moe, config, name):
    """The expert alone, as an ordinary nequip model on element types with the MoE's weights."""
    expert_config = copy.deepcopy(config["experts"][name])
    builder = get_method(expert_config.pop("_target_"))
    expert_config.setdefault("r_max", config["r_max"])
    model = builder(seed=0, model_dtype="float64", type_names=ELEMENTS, **expert_config)
    moe_energy = next(m for m in moe.modules() if isinstance(m, MixtureOfExpertsEnergy))
    model.model.func.load_state_dict(moe_energy.experts[name].state_dict())
    return model, float(expert_config["r_max"])


def element_graph(atoms, r_max):
    data = from_ase(atoms)
    data[AtomicDataDict.ATOM_TYPE_KEY] = torch.as_tensor(
        [ELEMENTS.index(s) for s in atoms.get_chemical_symbols()]
    )
    return NeighborListTransform(r_max=r_max)(data)


@pytest.mark.parametrize("config", [TWO_ALLEGRO, NEQUIP_ALLEGRO], ids=["allegro2", "nequip+allegro"])
def test_atom_energy_is_own_experts_energy(config):
    """Each atom's energy is exactly its own expert's energy for that atom on the whole structure."""
    moe = build(config)
    atoms = pt_co_slab()
    labels = half_labels(atoms)
    out = moe(typed_graph(atoms, config, labels))
    assert set(out["atomic_expert"].view(-1).tolist()) == {0, 1}
    assert torch.equal(out["atomic_expert"].view(-1), torch.as_tensor(labels))
    for k, name in enumerate(config["experts"]):
        alone, r_max = standalone_expert(moe, config, name)
        reference = alone(element_graph(atoms, r_max))["atomic_energy"].view(-1)
        mine = torch.as_tensor(labels) == k
        torch.testing.assert_close(
            out["atomic_energy"].view(-1)[mine], reference[mine], atol=1e-10, rtol=0
        )


def test_cotraining_outputs_are_equivariant():
    """nequip's equivariance check covers the co-training outputs through their declared irreps
    (per-expert 0e energies, per-expert 1o forces)."""
    from nequip.utils.test import assert_AtomicData_equivariant

    moe = build(TWO_ALLEGRO)
    irreps = moe.irreps_out
    assert str(irreps["expert_atomic_energy"]) == "2x0e" and str(irreps["expert_forces"]) == "1x1o"
    atoms = pt_co_slab(size=(2, 2, 2))
    data = typed_graph(atoms, TWO_ALLEGRO, half_labels(atoms))
    data["shared"] = torch.as_tensor(atoms.numbers == 78).long().view(-1, 1)
    message = assert_AtomicData_equivariant(moe, data)
    assert "expert_forces" in message and "expert_atomic_energy" in message


def test_single_expert_equals_expert_alone():
    """An MoE of one expert owning every type is that expert (energy, forces, stress)."""
    expert = allegro_expert(l_max=2, num_layers=2, num_scalar_features=16)
    config = {
        "r_max": 4.0,
        "type_names": ELEMENTS,
        "composite_types": {el: {"element": el, "expert": "only"} for el in ELEMENTS},
        "experts": {"only": expert},
    }
    moe = build(config, seed=7)
    alone, _ = standalone_expert(moe, config, "only")
    atoms = pt_co_slab()
    out = moe(typed_graph(atoms, config, np.zeros(len(atoms), dtype=int)))
    ref = alone(element_graph(atoms, 4.0))
    for key in ["total_energy", "atomic_energy", "forces", "stress", "virial"]:
        torch.testing.assert_close(out[key], ref[key], atol=1e-10, rtol=0)


@pytest.mark.parametrize("config", [TWO_ALLEGRO, NEQUIP_ALLEGRO], ids=["allegro2", "nequip+allegro"])
@pytest.mark.parametrize("labelling", ["mixed", "all_big", "all_small"])
def test_routed_equals_dense(config, labelling):
    routed = build(config)
    dense = build(config, dense=True)
    dense.load_state_dict(routed.state_dict())
    atoms = pt_co_slab()
    labels = {
        "mixed": half_labels(atoms),
        "all_big": np.zeros(len(atoms), dtype=int),
        "all_small": np.ones(len(atoms), dtype=int),
    }[labelling]
    data = typed_graph(atoms, config, labels)
    out_routed, out_dense = routed(dict(data)), dense(dict(data))
    for key in ["total_energy", "atomic_energy", "forces", "stress", "virial"]:
        torch.testing.assert_close(out_routed[key], out_dense[key], atol=1e-10, rtol=0)


def test_forces_and_stress_match_finite_differences():
    moe = build(TWO_ALLEGRO)
    atoms = pt_co_slab(size=(2, 2, 3))
    labels = half_labels(atoms)

    def energy(a):
        return moe(typed_graph(a, TWO_ALLEGRO, labels))["total_energy"].item()

    out = moe(typed_graph(atoms, TWO_ALLEGRO, labels))
    h = 1e-5
    rng = np.random.default_rng(0)
    for atom in rng.choice(len(atoms), 4, replace=False):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            numeric = -(energy(plus) - energy(minus)) / (2 * h)
            assert abs(numeric - out["forces"][atom, axis].item()) < 1e-6
    volume = atoms.get_volume()
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2)]:
        strained = []
        for sign in (1, -1):
            eps = np.eye(3)
            eps[i, j] += sign * h / 2
            eps[j, i] += sign * h / 2
            a = atoms.copy()
            a.set_cell(atoms.cell @ eps, scale_atoms=True)
            strained.append(energy(a))
        numeric = (strained[0] - strained[1]) / (2 * h) / volume
        assert abs(numeric - out["stress"][0, i, j].item()) < 1e-7


def test_isolated_atoms_and_empty_experts():
    """An isolated atom (no edges) gets its own expert's shift; an expert owning no atom is harmless."""
    config = copy.deepcopy(TWO_ALLEGRO)
    config["experts"]["big"]["per_type_energy_shifts"] = {"C": -1.0, "O": -2.0, "Pt": -3.0}
    config["experts"]["small"]["per_type_energy_shifts"] = {"C": -10.0, "O": -20.0, "Pt": -30.0}
    moe = build(config)
    atoms = Atoms("PtOC", positions=[[0, 0, 0], [20, 0, 0], [40, 0, 0]], cell=[60, 60, 60], pbc=False)
    out = moe(typed_graph(atoms, config, [1, 0, 1]))
    assert out[AtomicDataDict.EDGE_INDEX_KEY].shape[1] == 0
    torch.testing.assert_close(
        out["atomic_energy"].view(-1), torch.tensor([-30.0, -2.0, -10.0])
    )
    assert torch.all(out["forces"] == 0)
    # all atoms on one expert: the other has nothing to do and contributes nothing
    slab = pt_co_slab(size=(2, 2, 2))
    for expert, labels in [(0, np.zeros(len(slab), int)), (1, 1 - np.isin(slab.numbers, [6, 8]))]:
        out = moe(typed_graph(slab, config, labels))
        assert (out["atomic_expert"].view(-1) == expert).sum() == (labels == expert).sum()
        assert torch.isfinite(out["forces"]).all()


def test_train_time_compile_mode_uses_dense_evaluation():
    from nequip_moe.nn import DenseCompileGraphModel

    moe = build(TWO_ALLEGRO, compile_mode="compile")
    assert isinstance(moe, DenseCompileGraphModel)
    assert all(m.dense for m in moe.modules() if isinstance(m, MixtureOfExpertsEnergy))
    assert not any(
        m.dense for m in build(TWO_ALLEGRO).modules() if isinstance(m, MixtureOfExpertsEnergy)
    )


def test_metadata_carries_composite_table():
    metadata = build(TWO_ALLEGRO).metadata
    assert metadata["type_names"] == "C O_small Pt Pt_small C_small O"
    assert metadata["moe_type_elements"] == "C O Pt Pt C O"
    assert metadata["moe_type_experts"] == "big small big small small big"
    assert metadata["moe_expert_names"] == "big small"
    assert metadata["moe_expert_r_max"] == "4.0 3.5"
    assert metadata["moe_expert_halo_hops"] == "0 0"
    assert float(metadata["r_max"]) == 4.0
    # neighbour cutoffs: a centre's row holds its own (strictly local) expert's cutoffs
    small = {"C": {"C": 3.0, "O": 3.0, "Pt": 3.0}, "O": {"C": 3.5, "O": 2.8, "Pt": 3.2}}
    types = TWO_ALLEGRO["composite_types"]
    expected = [
        4.0 if types[a]["expert"] == "big"
        else small.get(types[a]["element"], {}).get(types[b]["element"], 3.5)
        for a in TWO_ALLEGRO["type_names"]
        for b in TWO_ALLEGRO["type_names"]
    ]
    assert [float(c) for c in metadata["per_edge_type_cutoff"].split()] == expected
    # co-training evaluates the small expert on big atoms too: every pair needs the largest cutoff
    moe_energy = next(m for m in build(TWO_ALLEGRO).modules() if isinstance(m, MixtureOfExpertsEnergy))
    assert moe_energy.neighbor_cutoffs(cotraining=True) == [[4.0] * 6] * 6
    # a NequIP expert of 2 layers has a halo of one shell: it needs its edges from every centre
    # one cutoff for every pair is `r_max` alone (LAMMPS may map many of its types onto one):
    metadata = build(NEQUIP_ALLEGRO).metadata
    assert metadata["moe_expert_halo_hops"] == "1 0"
    assert "per_edge_type_cutoff" not in metadata and metadata["r_max"] == "4.0"
    # ... also below the MoE's r_max: the experts' common cutoff becomes the metadata's r_max
    config = copy.deepcopy(NEQUIP_ALLEGRO)
    config["experts"]["big"]["r_max"] = config["experts"]["small"]["r_max"] = 3.6
    metadata = build(config).metadata
    assert "per_edge_type_cutoff" not in metadata and metadata["r_max"] == "3.6"


def allegro_by_another_name(**kwargs):
    """A model builder whose receptive field nequip-moe does not know (Allegro, renamed)."""
    from allegro.model import AllegroModel

    return AllegroModel(**kwargs)


def test_expert_locality_is_declared_or_known():
    """Declared receptive fields override unknown ones, are written to the metadata, and may not
    undercut what a known builder needs."""
    config = copy.deepcopy(NEQUIP_ALLEGRO)
    config["expert_locality"] = {"big": 3, "small": "all"}
    metadata = build(config).metadata
    assert metadata["moe_expert_halo_hops"] == "3 -1"
    config["expert_locality"] = {"big": "local"}
    with pytest.raises(ValueError, match=r"declares 0 halo shells for expert `big`, but its builder nequip.model.NequIPGNNModel needs 1"):
        build(config)
    config["expert_locality"] = {"huge": "local"}
    with pytest.raises(ValueError, match="expert_locality names `huge`"):
        build(config)
    config["expert_locality"] = {"big": "nearby"}
    with pytest.raises(ValueError, match="expert_locality of `big` is 'nearby'"):
        build(config)
    # an expert from a builder of unknown structure is not guessed local: all edges, with a warning
    config = copy.deepcopy(TWO_ALLEGRO)
    config["experts"]["small"]["_target_"] = "test_moe_model.allegro_by_another_name"
    with pytest.warns(UserWarning, match="expert `small` .* has a receptive field nequip-moe does not know"):
        metadata = build(config).metadata
    assert metadata["moe_expert_halo_hops"] == "0 -1"


def _bad(config_edit, match):
    config = copy.deepcopy(TWO_ALLEGRO)
    config_edit(config)
    with pytest.raises(ValueError, match=match):
        build(config)


def test_bad_model_configs_name_the_problem():
    _bad(lambda c: c["composite_types"]["C"].update(element="Xx"), "composite type `C` names unknown element `Xx`")
    _bad(lambda c: c["composite_types"]["C"].update(expert="huge"), "composite type `C` names unknown expert `huge`")
    _bad(lambda c: c["type_names"].append("N"), r"type_names \['N'\] have no entry")
    _bad(lambda c: c["experts"]["small"].update(type_names=["C", "Pt"]), r"expert `small` type_names .* do not cover the elements \['O'\]")
    _bad(lambda c: c["experts"]["small"].update(r_max=5.0), "expert `small` has r_max 5.0 > the MoE r_max 4.0")
    _bad(lambda c: c["experts"]["big"].update(seed=3), r"expert `big` sets \['seed'\]")
    _bad(lambda c: c.update(per_edge_type_cutoff={"Pt": 3.0}), "per_edge_type_cutoff Pt-.* is below")
    _bad(lambda c: c.update(per_edge_type_cutoff={"Pt_small": {"C_small": 3.4}}), r"per_edge_type_cutoff Pt_small-C_small = 3.4 is below the 3.5")
    _bad(lambda c: c.update(experts={}), "needs at least one expert")
    _bad(lambda c: c["composite_types"]["O"].update(expert="small"), "repeats the pair")


def test_expert_type_names_may_be_reordered():
    """An expert built on its own element order (e.g. a pretrained model) is mapped correctly."""
    config = copy.deepcopy(TWO_ALLEGRO)
    config["experts"]["small"]["type_names"] = ["Pt", "O", "C"]
    moe = build(config)
    atoms = pt_co_slab()
    labels = half_labels(atoms)
    out = moe(typed_graph(atoms, config, labels))
    expert_config = copy.deepcopy(config["experts"]["small"])
    builder = get_method(expert_config.pop("_target_"))
    alone = builder(seed=0, model_dtype="float64", **expert_config)
    moe_energy = next(m for m in moe.modules() if isinstance(m, MixtureOfExpertsEnergy))
    alone.model.func.load_state_dict(moe_energy.experts["small"].state_dict())
    data = from_ase(atoms)
    data["atom_types"] = torch.as_tensor([["Pt", "O", "C"].index(s) for s in atoms.get_chemical_symbols()])
    ref = alone(NeighborListTransform(r_max=3.5)(data))["atomic_energy"].view(-1)
    small = torch.as_tensor(labels) == 1
    torch.testing.assert_close(out["atomic_energy"].view(-1)[small], ref[small], atol=1e-10, rtol=0)


def test_transform_errors_name_the_problem():
    mapper = CompositeTypeMapper(
        TWO_ALLEGRO["type_names"], TWO_ALLEGRO["composite_types"], ["big", "small"]
    )
    atoms = pt_co_slab(size=(2, 2, 2))
    data = from_ase(atoms)
    data["expert"] = torch.full((len(atoms),), 2)
    with pytest.raises(ValueError, match=r"expert labels \[2\] are out of range"):
        mapper(dict(data))
    gold = from_ase(Atoms("Au", positions=[[0, 0, 0]]))
    gold["expert"] = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"no composite type for \(species, expert\) \(Au, big\)"):
        mapper(gold)
    with pytest.raises(ValueError, match="default_expert `huge` is not one of the experts"):
        CompositeTypeMapper(TWO_ALLEGRO["type_names"], TWO_ALLEGRO["composite_types"], ["big", "small"], "huge")
    # unlabelled frames take the default expert
    unlabelled = CompositeTypeMapper(
        TWO_ALLEGRO["type_names"], TWO_ALLEGRO["composite_types"], ["big", "small"], "small"
    )(from_ase(Atoms("PtO", positions=[[0, 0, 0], [2, 0, 0]])))
    assert unlabelled["atom_types"].tolist() == [3, 1]


def test_float32_per_edge_type_cutoffs_match_float64_twin():
    """A float32 MoE given composite-type cutoffs equal to its experts' own (3.2 and 2.8 are not
    float32 numbers) builds, routes every edge its float64 twin routes and predicts the same to
    float32 precision, co-training outputs included; its metadata holds the cutoffs as written.
    A cutoff truly below an expert's is still refused."""
    config = {**copy.deepcopy(TWO_ALLEGRO), "per_edge_type_cutoff": experts_own_cutoffs(TWO_ALLEGRO)}
    config.pop("_target_")
    model32 = MoEModel(**copy.deepcopy(config), model_dtype="float32")
    model64 = build(config)
    model32.load_state_dict(model64.state_dict())
    assert {p.dtype for p in model32.parameters()} == {torch.float32}
    written = [float(c) for c in model32.metadata["per_edge_type_cutoff"].split()]
    expected = [config["per_edge_type_cutoff"][a][b] for a in config["type_names"] for b in config["type_names"]]
    assert written == expected and 3.2 in written and 2.8 in written

    atoms = pt_co_slab(size=(3, 3, 3), seed=2)
    data = typed_graph(atoms, config, half_labels(atoms))
    data["shared"] = torch.as_tensor(atoms.numbers == 78).long().view(-1, 1)
    out32, out64 = model32(dict(data)), model64(dict(data))
    for key in ["total_energy", "atomic_energy", "forces", "stress", "expert_atomic_energy", "expert_forces"]:
        torch.testing.assert_close(
            out32[key].double(), out64[key], atol=2e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}"
        )
    assert (out32["forces"].double() - out64["forces"]).abs().max() > 1e-9  # float32 happened

    below = copy.deepcopy(config)
    below["per_edge_type_cutoff"]["O_small"]["Pt"] = 3.1999
    with pytest.raises(ValueError, match=r"per_edge_type_cutoff O_small-Pt = 3.1999 is below the 3.2"):
        MoEModel(**below, model_dtype="float32")
