"""The validation's measures as plain functions, each against a case built to pass exactly and
one built to fail: split crystals (zero force by symmetry; an MoE of two identical experts has
no interface force, a mismatched one does), EOS and expert disagreement, the fair interface
penalty (1.0 for identical experts), NVE (a non-conservative force fails), speed-up bound."""

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, surface
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from nequip.data.transforms import NeighborListTransform

from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.model import MoEModel
from nequip_moe.nn import MixtureOfExpertsEnergy
from nequip_moe.validation import (
    THRESHOLDS,
    check,
    eos_curves,
    eos_spread,
    expert_disagreement,
    fit_eos,
    fit_lattice,
    interface_penalty,
    nve_drift,
    nve_timestep_scaling,
    predict,
    shared_bulk_frames,
    speedup,
    split_crystal_forces,
    split_geometries,
)
from nequip_moe.validation.crystal import heights, host_bulk, interface_distance, plane_split

from test_moe_model import float64  # noqa: F401  (module-wide float64 fixture)
from test_moe_nequip_mixins import allegro_expert

R_MAX = 4.0
CONFIG = {
    "seed": 7,
    "model_dtype": "float64",
    "r_max": R_MAX,
    "type_names": ["Cu", "Cu_small", "O"],
    "composite_types": {
        "Cu": {"element": "Cu", "expert": "big"},
        "Cu_small": {"element": "Cu", "expert": "small"},
        "O": {"element": "O", "expert": "big"},
    },
    "experts": {"big": allegro_expert(), "small": allegro_expert()},
}


def moe_calculators(perturb: float = 0.0):
    """An untrained Cu/O MoE whose small expert is the big one (``perturb`` = 0) or the big one
    with every weight scaled by ``1 + perturb * N(0, 1)``: (MoE, [big alone, small alone])."""
    model = MoEModel(**copy.deepcopy(CONFIG))
    energy = next(m for m in model.modules() if isinstance(m, MixtureOfExpertsEnergy))
    energy.experts["small"].load_state_dict(energy.experts["big"].state_dict())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in energy.experts["small"].parameters():
            p.mul_(1.0 + perturb * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    model.eval()

    def calculator(expert=None):
        rule = None if expert is None else (lambda atoms: np.where(atoms.numbers == 8, 0, expert))
        return MoECalculator(model, "cpu", transforms=[NeighborListTransform(r_max=R_MAX)], label_rule=rule)

    return calculator(), [calculator(0), calculator(1)]


def test_split_geometries_are_perfect_crystals_for_any_lattice():
    """EMT forces vanish on every cut of fcc, bcc, hcp and diamond Cu; the halves and the
    sphere's gap are wider than twice the receptive radius. ASE's periodic (111) surface cell
    (its third vector projected on the normal) is not a perfect crystal: the control."""
    for atoms in (bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "bcc", a=2.9, cubic=True),
                  bulk("Cu", "hcp", a=2.55, c=4.16), bulk("Cu", "diamond", a=5.2, cubic=True)):
        for name, split in split_geometries(atoms, 3.0).items():
            split.calc = EMT()
            assert np.abs(split.get_forces()).max() < 1e-9, name
            assert 0 < split.arrays["expert"].sum() < len(split)
            if name == "sphere":
                assert heights(split.cell).min() >= 2 * split.info["radius"] + 6.0
            else:
                assert split.info["half_thickness"] >= 6.0
                # the interface planes are lattice planes: every high-fidelity atom lies on one
                # side of the two cuts, as far as half a cell from the other
                d = interface_distance(split, split.arrays["expert"] == 0)
                assert np.nanmax(np.abs(d)) <= split.info["half_thickness"] + 1e-6
    projected = surface(bulk("Cu", "fcc", a=3.6, cubic=True), (1, 1, 1), 4, periodic=True)
    projected.calc = EMT()
    assert np.abs(projected.get_forces()).max() > 1.0
    with pytest.raises(ValueError, match="must be coprime"):
        plane_split(bulk("Cu", "fcc", a=3.6, cubic=True), (2, 2, 0), 6.0)


def test_identical_experts_give_no_interface_force():
    moe, experts = moe_calculators()
    crystal = host_bulk("Cu", a=3.6)
    result = split_crystal_forces(moe, experts, split_geometries(crystal, R_MAX), strains=(-0.02, 0.0, 0.03))
    assert result["worst_max_interface_force_mev_per_a"] < 1e-7  # 1e-10 eV/A
    assert max(r["max_force_mev_per_a"] for g in result["geometries"].values() for r in g["rows"]) < 1e-7
    verdict = check("split_crystal_force", result["worst_max_interface_force_mev_per_a"], THRESHOLDS)
    assert verdict["verdict"] == "pass"


def test_mismatched_expert_fails_split_crystal_and_disagreement():
    moe, experts = moe_calculators(perturb=0.3)
    crystal = host_bulk("Cu", a=3.6)
    split = split_crystal_forces(moe, experts, split_geometries(crystal, R_MAX), strains=(0.0, 0.02),
                                 trained_strains=(-0.01, 0.01))
    worst = split["worst_max_interface_force_mev_per_a"]
    assert check("split_crystal_force", worst, THRESHOLDS)["verdict"] == "fail"
    assert [r["outside_training"] for r in split["geometries"]["sphere"]["rows"]] == [False, True]
    # the force map puts the force at the interface: none deeper than the receptive radius
    for force_map in split["force_map"].values():
        distance = np.abs(force_map["distance_a"])
        force = np.asarray(force_map["interface_force_mev_per_a"])
        assert force[distance > R_MAX + 1e-6].max() < 1e-7 and force.max() > 1.0

    frames = shared_bulk_frames(crystal, 3, 2 * R_MAX, seed=1)
    mismatched = expert_disagreement(experts, frames)
    identical = expert_disagreement(moe_calculators()[1], frames)
    assert identical["energy_max_mev_per_atom"] < 1e-9 and identical["forces_max_mev_per_a"] < 1e-9
    assert mismatched["frames"] == 3 and mismatched["atoms"] == sum(len(a) for a in frames)
    for name, key in (("energy_disagreement_mean", "energy_mean_mev_per_atom"),
                      ("energy_disagreement_max", "energy_max_mev_per_atom")):
        assert check(name, mismatched[key], THRESHOLDS)["verdict"] == "fail"
    assert mismatched["energy_max_mev_per_atom"] == max(mismatched["energy_by_frame_mev_per_atom"])
    # the per-atom energy disagreement of a frame is |E_big - E_small| / N on all-shared frames
    big, small = predict(experts[0], frames[:1]), predict(experts[1], frames[:1])
    assert mismatched["energy_by_frame_mev_per_atom"][0] == pytest.approx(
        1000 * abs(big[0]["energy"] - small[0]["energy"]) / len(frames[0]))


def test_eos_fit_recovers_its_parameters_and_spread():
    """A Birch-Murnaghan curve is fitted back exactly; the spread of two fits is their relative
    difference; a curve without a minimum in range fails the fit."""
    v0, e0, b0, bp = 12.0, -3.5, 1.0, 4.5  # B0 in eV/A^3
    volumes = np.linspace(11.0, 13.0, 9)
    eta = (v0 / volumes) ** (2 / 3)
    energies = e0 + 9 * v0 * b0 / 16 * ((eta - 1) ** 3 * bp + (eta - 1) ** 2 * (6 - 4 * eta))
    fit = fit_eos(volumes, energies)
    assert fit["V0"] == pytest.approx(v0, rel=1e-6) and fit["B0_prime"] == pytest.approx(bp, rel=1e-4)
    assert fit["B0_GPa"] == pytest.approx(160.21766, rel=1e-4)
    fits = {"a": fit, "b": {**fit, "V0": 1.01 * v0, "B0_GPa": 0.9 * fit["B0_GPa"]}}
    spread = eos_spread(fits, ["a", "b"])
    assert (spread["v0_percent"], spread["b0_percent"]) == pytest.approx((1.0, 10.0))
    assert "fit_failed" in fit_eos(volumes, -volumes)
    assert eos_spread({**fits, "c": {"fit_failed": "x"}}, ["a", "c"])["failed"] == ["c"]


def test_eos_of_emt_at_its_fitted_lattice():
    """``fit_lattice`` puts bulk Cu at EMT's equilibrium: zero pressure; both 'experts' equal."""
    crystal = fit_lattice(EMT(), host_bulk("Cu", a=3.7))
    crystal.calc = EMT()
    assert np.abs(crystal.get_stress()[:3]).max() < 1e-4  # eV/A^3, 16 MPa
    curves = eos_curves({"one": EMT(), "two": EMT()}, crystal)
    assert eos_spread(curves["fits"], ["one", "two"])["v0_percent"] == 0.0
    assert curves["fits"]["one"]["V0"] == pytest.approx(crystal.get_volume() / len(crystal), rel=1e-4)


def labelled_cu_o_slab():
    """Cu(100) + O (EMT reference): O and the top layer high fidelity, the rest low."""
    slab = fcc100("Cu", (3, 3, 5), vacuum=6.0, a=3.6)
    add_adsorbate(slab, "O", 1.2, "hollow")
    slab.pbc = True
    slab.rattle(0.03, seed=2)
    slab.calc = EMT()
    slab.calc = SinglePointCalculator(slab, energy=slab.get_potential_energy(), forces=slab.get_forces())
    z = slab.positions[:, 2]
    slab.arrays["expert"] = np.where((slab.numbers == 8) | (z > z[slab.numbers == 29].max() - 1.0), 0, 1)
    return slab


def test_interface_penalty_is_one_for_identical_experts_and_fails_when_the_interface_adds_error():
    frames = [labelled_cu_o_slab()]
    high = [a.arrays["expert"] == 0 for a in frames]
    moe, experts = moe_calculators()
    penalty = interface_penalty(frames, high, predict(moe, frames), predict(experts[1], frames), R_MAX)
    assert penalty["shell_atoms"] > 0 and penalty["ratio"] == pytest.approx(1.0, abs=1e-12)
    assert check("interface_penalty", penalty["ratio"], THRESHOLDS)["verdict"] == "pass"
    # a prediction whose error doubles on the shell (the interface's) fails the bound
    reference = [{"energy": 0.0, "forces": frames[0].get_forces() + 0.01}]
    doubled = [{"energy": 0.0, "forces": frames[0].get_forces() + 0.02}]
    failing = interface_penalty(frames, high, doubled, reference, R_MAX)
    assert failing["ratio"] == pytest.approx(2.0)
    assert check("interface_penalty", failing["ratio"], THRESHOLDS)["verdict"] == "fail"


class CurlForce(Calculator):
    """EMT plus a rotational force field ``k z x (r - centre)``: no energy has it, dynamics heat."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, k: float):
        super().__init__()
        self.k, self.emt = k, EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        self.emt.calculate(self.atoms, ["energy", "forces"], all_changes)
        offset = self.atoms.positions - self.atoms.positions.mean(axis=0)
        curl = self.k * np.stack([-offset[:, 1], offset[:, 0], np.zeros(len(offset))], axis=1)
        self.results = {"energy": self.emt.results["energy"], "forces": self.emt.results["forces"] + curl}


def test_nve_passes_for_a_conservative_force_and_fails_for_a_broken_one():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    conservative = nve_timestep_scaling(EMT(), atoms, steps=100, timestep_fs=1.0)
    assert check("nve_drift", conservative["dt"]["drift_mev_per_atom_per_ps"], THRESHOLDS)["verdict"] == "pass"
    assert check("nve_dt_exponent", conservative["exponent"], THRESHOLDS)["verdict"] == "pass"
    broken = nve_timestep_scaling(CurlForce(0.02), atoms, steps=100, timestep_fs=1.0)
    assert check("nve_drift", broken["dt"]["drift_mev_per_atom_per_ps"], THRESHOLDS)["verdict"] == "fail"
    assert check("nve_dt_exponent", broken["exponent"], THRESHOLDS)["verdict"] == "fail"
    run = nve_drift(EMT(), atoms, steps=10)
    assert len(run["energies_ev_per_atom"]) == 11 and run["atoms"] == 32


def test_speedup_ideal_bound_from_the_timed_experts():
    moe, experts = moe_calculators()
    slab = labelled_cu_o_slab()
    f = float(np.mean(slab.arrays["expert"] == 0))
    result = speedup(moe, slab, f, reference=experts[0], experts=experts, repeats=1)
    seconds = result["seconds"]
    assert result["cost_ratio"] == pytest.approx(seconds["low_alone"] / seconds["high_alone"])
    assert result["ideal"] == pytest.approx(1 / (f + (1 - f) * result["cost_ratio"]))
    assert result["measured"] == pytest.approx(seconds["reference"] / seconds["moe"])
    assert speedup(moe, slab, None, experts=experts, repeats=1).keys() >= {"seconds", "atoms"}
    assert "ideal" not in speedup(moe, slab, None, experts=experts, repeats=1)


def test_checks_and_thresholds():
    from nequip_moe.validation.report import parse_threshold

    assert parse_threshold("split_crystal_force=15") == ("split_crystal_force", 15.0)
    assert parse_threshold("nve_dt_exponent=1.8:2.2") == ("nve_dt_exponent", (1.8, 2.2))
    assert parse_threshold("eos_v0=none") == ("eos_v0", None)
    for bad in ("split=3", "eos_v0=", "eos_v0=abc"):
        with pytest.raises(ValueError, match="--threshold"):
            parse_threshold(bad)
    assert check("nve_drift", -0.6, THRESHOLDS)["verdict"] == "fail"  # judged by magnitude
    assert check("speedup", 2.0, {"speedup": 3.0})["verdict"] == "fail"
    assert check("speedup", 2.0, THRESHOLDS)["verdict"] == "info"
    assert check("eos_v0", None, THRESHOLDS, not_applicable="why")["verdict"] == "not applicable"
    assert check("eos_v0", None, THRESHOLDS, failed="no minimum")["verdict"] == "fail"
    frame = Atoms("Cu2", positions=[(0, 0, 0), (0, 0, 2.5)], cell=[10] * 3, pbc=True)
    assert np.isnan(interface_distance(frame, np.array([True, True]))).all()
