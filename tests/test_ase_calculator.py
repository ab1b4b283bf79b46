"""``MoECalculator``: composite typing from expert labels, agreement with the eager model,
ASE workflows with cell changes, and clear errors."""

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase.stress import full_3x3_to_voigt_6_stress

from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform
from nequip.model.saved_models.load_utils import load_saved_model

from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.integrations.model_files import read_composite_table

from pt_co_frames import label_regions


def eager_reference(checkpoint, atoms):
    """Energy, per-atom energies, forces and stress of the eager checkpoint model, with atom
    types looked up by name, (element, expert name) -> type name -> index (independent of the
    calculator's typing through ``CompositeTypeTable.type_index``)."""
    model = load_saved_model(str(checkpoint)).eval()
    table = read_composite_table(checkpoint)
    data = from_ase(atoms)
    data[AtomicDataDict.ATOM_TYPE_KEY] = torch.as_tensor(
        [
            table.type_names.index(table.composite_type(symbol, table.expert_names[label]))
            for symbol, label in zip(atoms.get_chemical_symbols(), atoms.arrays["expert"])
        ]
    )
    data = NeighborListTransform(r_max=float(model.metadata["r_max"]))(data)
    out = model(data)
    return (
        out[AtomicDataDict.TOTAL_ENERGY_KEY].item(),
        out[AtomicDataDict.PER_ATOM_ENERGY_KEY].detach().numpy().reshape(-1),
        out[AtomicDataDict.FORCE_KEY].detach().numpy(),
        full_3x3_to_voigt_6_stress(out[AtomicDataDict.STRESS_KEY].detach().numpy()[0]),
    )


def calculator_results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return (
        atoms.get_potential_energy(),
        atoms.get_potential_energies(),
        atoms.get_forces(),
        atoms.get_stress(),
    )


def assert_results_close(actual, expected, atol):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=0, atol=atol)


def test_compiled_calculator_matches_eager_model(
    tiny_moe_ase_calculator, tiny_moe_run, mixed_expert_slab
):
    assert_results_close(
        calculator_results(tiny_moe_ase_calculator, mixed_expert_slab),
        eager_reference(tiny_moe_run / "best.ckpt", mixed_expert_slab),
        atol=1e-10,
    )


@pytest.mark.parametrize("source", ["best.ckpt", "package"])
def test_saved_model_calculators_match(
    source, tiny_moe_ase_calculator, tiny_moe_run, tiny_moe_package, mixed_expert_slab
):
    path = tiny_moe_package if source == "package" else tiny_moe_run / source
    calc = MoECalculator.from_file(path)
    assert_results_close(
        calculator_results(calc, mixed_expert_slab),
        calculator_results(tiny_moe_ase_calculator, mixed_expert_slab),
        atol=1e-10,
    )


def test_expert_labels_decide_the_composite_types(
    tiny_moe_ase_calculator, tiny_moe_ase_pt2, mixed_expert_slab
):
    mixed = calculator_results(tiny_moe_ase_calculator, mixed_expert_slab)[0]
    all_small = mixed_expert_slab.copy()
    all_small.arrays["expert"] = np.where(all_small.numbers == 78, 1, 0)
    e_small_pt = calculator_results(tiny_moe_ase_calculator, all_small)[0]
    assert abs(mixed - e_small_pt) > 1e-3

    # a label rule, and a default expert for unlabelled atoms, give the same composite types
    rule_calc = MoECalculator.from_compiled_model(tiny_moe_ase_pt2, label_rule=label_regions)
    unlabelled = mixed_expert_slab.copy()
    del unlabelled.arrays["expert"]
    assert calculator_results(rule_calc, unlabelled)[0] == pytest.approx(mixed, abs=1e-12)
    bulk_pt = bulk("Pt", "fcc", a=3.92, cubic=True)
    default_calc = MoECalculator.from_compiled_model(tiny_moe_ase_pt2, default_expert="small")
    labelled_small = bulk_pt.copy()
    labelled_small.arrays["expert"] = np.ones(len(bulk_pt), dtype=np.int64)
    assert calculator_results(default_calc, bulk_pt)[0] == pytest.approx(
        calculator_results(tiny_moe_ase_calculator, labelled_small)[0], abs=1e-12
    )
    # without labels or a named default, atoms get the table's default: the first expert
    labelled_first = bulk_pt.copy()
    labelled_first.arrays["expert"] = np.zeros(len(bulk_pt), dtype=np.int64)
    assert calculator_results(tiny_moe_ase_calculator, bulk_pt)[0] == pytest.approx(
        calculator_results(tiny_moe_ase_calculator, labelled_first)[0], abs=1e-12
    )

    # changing the labels of the same atoms invalidates the cached results
    atoms = mixed_expert_slab.copy()
    atoms.calc = tiny_moe_ase_calculator
    assert atoms.get_potential_energy() == pytest.approx(mixed, abs=1e-12)
    atoms.arrays["expert"] = all_small.arrays["expert"]
    assert atoms.get_potential_energy() == pytest.approx(e_small_pt, abs=1e-12)


def test_stress_is_the_strain_derivative(tiny_moe_ase_calculator, mixed_expert_slab):
    atoms = mixed_expert_slab.copy()
    atoms.calc = tiny_moe_ase_calculator
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_stress(), numerical, rtol=0, atol=1e-6)


def test_md_relaxation_and_eos(tiny_moe_ase_calculator, tiny_moe_ase_pt2):
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=1)
    atoms.arrays["expert"] = np.arange(len(atoms)) % 2

    # velocity Verlet: the energy error shrinks like dt^2 (conservative forces)
    def energy_error(dt_fs, num_steps):
        md_atoms = atoms.copy()
        md_atoms.calc = tiny_moe_ase_calculator
        thermalize_momenta(md_atoms, temperature_K=300, rng=np.random.default_rng(0))
        dynamics = VelocityVerlet(md_atoms, timestep=dt_fs * units.fs)
        energies = []
        dynamics.attach(lambda: energies.append(md_atoms.get_total_energy()))
        dynamics.run(num_steps)
        return np.abs(np.array(energies) - energies[0]).max()

    assert energy_error(1.0, 20) > 3.0 * energy_error(0.5, 40)

    # relaxation of positions and cell
    relaxed = atoms.copy()
    relaxed.calc = tiny_moe_ase_calculator
    e_start = relaxed.get_potential_energy()
    BFGS(FrechetCellFilter(relaxed), logfile=None).run(fmax=1e-3, steps=3)
    assert relaxed.get_potential_energy() < e_start
    assert not np.allclose(relaxed.cell, atoms.cell)

    # EOS scan: one calculator across cell changes equals a fresh calculator per volume
    scan = atoms.copy()
    scan.calc = tiny_moe_ase_calculator
    for scale in (0.97, 1.0, 1.03):
        scan.set_cell(atoms.cell * scale, scale_atoms=True)
        fresh = scan.copy()
        fresh.calc = MoECalculator.from_compiled_model(tiny_moe_ase_pt2)
        assert scan.get_potential_energy() == pytest.approx(
            fresh.get_potential_energy(), abs=1e-12
        )


def add_hydrogen(atoms):
    atoms.append("H")
    atoms.arrays["expert"][-1] = 0


def label_out_of_range(atoms):
    atoms.arrays["expert"][0] = 2


def small_carbon(atoms):
    atoms.arrays["expert"][atoms.numbers == 6] = 1


def fractional_labels(atoms):
    atoms.arrays["expert"] = atoms.arrays["expert"] * 0.5


@pytest.mark.parametrize(
    "change, message",
    [
        (add_hydrogen, "no element H"),
        (label_out_of_range, "out of range"),
        (small_carbon, r"\(C, small\) .* C has composite types only for experts"),
        (fractional_labels, "integers"),
    ],
)
def test_bad_structures_are_refused(
    tiny_moe_ase_calculator, mixed_expert_slab, change, message
):
    change(mixed_expert_slab)
    mixed_expert_slab.calc = tiny_moe_ase_calculator
    with pytest.raises(ValueError, match=message):
        mixed_expert_slab.get_potential_energy()


def test_wrong_target_file_is_refused(tiny_moe_pair_allegro_pt2):
    with pytest.raises(ValueError, match="pair_allegro.*--target ase"):
        MoECalculator.from_compiled_model(tiny_moe_pair_allegro_pt2)


def test_default_expert_must_exist(tiny_moe_ase_pt2):
    with pytest.raises(ValueError, match="not one of the experts"):
        MoECalculator.from_compiled_model(tiny_moe_ase_pt2, default_expert="medium")
