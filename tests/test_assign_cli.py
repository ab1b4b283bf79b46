"""LAMMPS data files with composite types, their trip through LAMMPS, and `nequip-moe assign`."""

import warnings
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.lammps import Prism
from ase.data import atomic_masses, atomic_numbers
from ase.io import read

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.data.regions import Depth, assign_experts
from nequip.utils.aoti_metadata import NEQUIP_AOTI_INPUTS_KEY, NEQUIP_AOTI_OUTPUTS_KEY

from nequip_moe.integrations.lammps_data import read_lammps_data, write_lammps_data
from nequip_moe.scripts import assign, cli

from test_regions import EXPERTS, PT_A, pt111_slab

TABLE = CompositeTypeTable(
    type_names=["C", "O", "Pt", "Pt_small"],
    elements=["C", "O", "Pt", "Pt"],
    experts=["big", "big", "big", "small"],
    expert_names=EXPERTS,
)
PT_MASS = atomic_masses[atomic_numbers["Pt"]]
TARGET_FIELDS = {
    "pair_allegro": ("pos edge_index atom_types", "atomic_energy forces virial"),
    "pair_nequip": (
        "pos edge_index atom_types cell edge_cell_shift",
        "atomic_energy forces virial",
    ),
    "ase": (
        "pos edge_index atom_types cell edge_cell_shift",
        "atomic_energy total_energy forces stress",
    ),
}


def model_metadata(halo_hops="0 0", target="pair_allegro", table=TABLE):
    """Metadata of an MoE file with TABLE's composite types (``target=None``: uncompiled)."""
    metadata = {"type_names": " ".join(table.type_names), "r_max": "4.5", **table.to_metadata()}
    if halo_hops is not None:
        metadata["moe_expert_halo_hops"] = halo_hops
    if target is not None:
        metadata[NEQUIP_AOTI_INPUTS_KEY], metadata[NEQUIP_AOTI_OUTPUTS_KEY] = TARGET_FIELDS[target]
    return metadata


@pytest.fixture
def slab_and_expert():
    """Pt(111) + CO: C, O and the top Pt layer big (11 atoms), the other 27 Pt small."""
    slab = pt111_slab()
    rules = [Depth(expert="big", depth=1.0, species=["Pt"])]
    return slab, assign_experts(slab, rules, EXPERTS, default_expert="small")


@pytest.fixture
def slab_data_file(tmp_path, slab_and_expert):
    path = tmp_path / "slab.data"
    write_lammps_data(path, *slab_and_expert, TABLE)
    return path


def test_data_file_types_from_the_table(tmp_path, slab_and_expert):
    slab, expert = slab_and_expert
    path = tmp_path / "slab.data"
    write_lammps_data(path, slab, expert, TABLE)
    text = path.read_text()
    assert "\n4 atom types\n" in text
    assert "\nAtom Type Labels\n\n1 C\n2 O\n3 Pt\n4 Pt_small\n" in text
    atoms = [line.split() for line in text.split("Atoms # atomic\n\n")[1].splitlines()]
    types = np.array([int(fields[1]) for fields in atoms])
    assert types[-2:].tolist() == [2, 1]  # O, C
    assert np.sum(types == 3) == 9 and np.sum(types == 4) == 27


def test_data_file_type_errors(tmp_path, slab_and_expert):
    slab, expert = slab_and_expert
    path = tmp_path / "slab.data"
    with pytest.raises(ValueError, match=r"\(C, small\) \(1 atoms"):
        write_lammps_data(path, slab, np.where(slab.numbers == 6, 1, expert), TABLE)
    hydrogen = slab.copy()
    hydrogen.numbers[:2] = 1
    with pytest.raises(ValueError, match=r"\(H, small\) \(2 atoms: the model has no element H"):
        write_lammps_data(path, hydrogen, expert, TABLE)
    with pytest.raises(ValueError, match=r"out of range"):
        write_lammps_data(path, slab, np.full(len(slab), 2), TABLE)
    assert not path.exists()


def test_data_file_round_trip(slab_data_file, slab_and_expert):
    slab, expert = slab_and_expert
    back = read_lammps_data(slab_data_file, TABLE)
    np.testing.assert_array_equal(back.arrays["expert"], expert)
    np.testing.assert_array_equal(back.numbers, slab.numbers)
    np.testing.assert_allclose(back.cell.volume, slab.cell.volume)
    np.testing.assert_allclose(
        back.get_all_distances(mic=True), slab.get_all_distances(mic=True), atol=1e-9
    )


def test_lammps_round_trip(tmp_path, slab_data_file, slab_and_expert):
    from conftest import require_lammps

    require_lammps()
    from nequip_moe.integrations.lammps_runtime import start_lammps

    slab, expert = slab_and_expert
    lmp = start_lammps()
    try:
        lmp.commands_string(
            f"units metal\natom_style atomic\nboundary p p p\nread_data {slab_data_file}\n"
            "group small type Pt_small\nvariable num_small equal count(small)\n"
        )
        num_small = lmp.extract_variable("num_small")
        ids = lmp.numpy.extract_atom("id").copy()
        types = lmp.numpy.extract_atom("type").copy()
        masses = lmp.numpy.extract_atom("mass")[1:].copy()
        positions = lmp.numpy.extract_atom("x").copy()
        # move the first atom (bottom layer) to the big expert, as an input script may
        lmp.commands_string(f"set atom 1 type Pt\nwrite_data {tmp_path / 'written.data'}")
    finally:
        lmp.close()
    order = np.argsort(ids)
    lammps_expert = np.array(TABLE.type_expert_index)[types - 1]
    np.testing.assert_array_equal(lammps_expert[order], expert)
    prism = Prism(np.asarray(slab.cell), pbc=slab.pbc)
    expected_positions = prism.vector_to_lammps(slab.positions, wrap=True)
    np.testing.assert_allclose(positions[order], expected_positions, atol=1e-9)
    assert num_small == 27
    np.testing.assert_allclose(masses, [12.011, 15.999, PT_MASS, PT_MASS], atol=1e-3)
    written = read_lammps_data(tmp_path / "written.data", TABLE)
    assert expert[0] == EXPERTS.index("small")
    np.testing.assert_array_equal(written.arrays["expert"], np.r_[0, expert[1:]])
    np.testing.assert_array_equal(written.numbers, slab.numbers)


def _write_with_extra_expert(path, slab):
    """A data file from a model with a third expert: its 5th type, `Pt_medium`, holds atom 0."""
    table = CompositeTypeTable(
        type_names=TABLE.type_names + ["Pt_medium"],
        elements=TABLE.elements + ["Pt"],
        experts=TABLE.experts + ["medium"],
        expert_names=EXPERTS + ["medium"],
    )
    expert = np.where(slab.numbers == 78, 1, 0)
    expert[0] = 2
    write_lammps_data(path, slab, expert, table)


def test_data_file_types_not_in_model(tmp_path):
    slab = pt111_slab()
    path = tmp_path / "five_types.data"
    _write_with_extra_expert(path, slab)
    with pytest.raises(ValueError, match=r"names \['Pt_medium'\] are not types of the model"):
        read_lammps_data(path, TABLE)
    unlabelled = tmp_path / "unlabelled.data"
    text = path.read_text()
    start = text.index("Atom Type Labels")
    unlabelled.write_text(text[:start] + text[text.index("Masses", start):])
    with pytest.raises(ValueError, match=r"atom types \[5\] have no model type"):
        read_lammps_data(unlabelled, TABLE)
    # mapping the 5th LAMMPS type explicitly onto a model type reads the file
    back = read_lammps_data(unlabelled, TABLE, type_names=TABLE.type_names + ["Pt"])
    assert back.arrays["expert"][0] == 0


def test_data_file_type_order_checked_by_mass(slab_data_file):
    with pytest.warns(UserWarning) as record:
        read_lammps_data(slab_data_file, TABLE, type_names=["O", "C", "Pt", "Pt_small"])
    assert [str(w.message).split(": ", 1)[1] for w in record] == [
        "LAMMPS type 1 has mass 12.01 but maps to element O (16): is the type order the model's?",
        "LAMMPS type 2 has mass 16 but maps to element C (12.01): is the type order the model's?",
    ]


def test_data_file_needs_atoms_inside_open_directions(tmp_path, slab_and_expert):
    with pytest.raises(ValueError, match="needs a 3D cell"):
        write_lammps_data(tmp_path / "co.data", molecule("CO"), [0, 0], TABLE)
    slab, expert = slab_and_expert
    slab.pbc = [True, True, False]
    slab.positions[-1, 2] += slab.cell[2, 2]
    with pytest.raises(ValueError, match=r"outside the cell along non-periodic .* \[2\]"):
        write_lammps_data(tmp_path / "slab.data", slab, expert, TABLE)


@pytest.fixture
def model_table(monkeypatch):
    """`nequip-moe assign` reads TABLE (pair_allegro file) from any model path (no file needed)."""
    monkeypatch.setattr(
        "nequip_moe.integrations.model_files.read_metadata", lambda path: model_metadata()
    )
    return "moe_lmp.nequip.pt2"


def run_assign(*args):
    return cli.main(["assign", *map(str, args)])


def test_assign_cli_flags(tmp_path, model_table, capsys):
    structure = tmp_path / "slab.xyz"
    pt111_slab().write(structure)
    out_xyz, out_data = tmp_path / "out.xyz", tmp_path / "out.data"
    rc = run_assign(
        structure,
        *("--model", model_table, "--near", "C,O:4.5", "--top-layers-depth", "1.0"),
        *("--out-xyz", out_xyz, "--out-lammps", out_data),
    )
    assert rc == 0
    stdout = capsys.readouterr().out.split("\n")
    # near C,O within 4.5 A: C, O and 10 Pt, of which 3 in the second layer; top layer: 9 Pt
    assert "big               14     0.368" in stdout
    assert "small             24     0.632" in stdout
    assert "  pair_coeff      * * moe_lmp.nequip.pt2 C O Pt Pt_small" in stdout
    assert f"  read_data       {out_data}" in stdout
    expert = read(out_xyz).arrays["expert"]
    assert np.sum(expert == 0) == 14
    np.testing.assert_array_equal(read_lammps_data(out_data, TABLE).arrays["expert"], expert)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.data", "out.xyz", "slab.xyz"]


def test_assign_cli_rules_file(tmp_path, model_table, capsys):
    structure = tmp_path / "pt.extxyz"
    bulk("Pt", "fcc", a=PT_A, cubic=True).repeat((5, 5, 5)).write(structure)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "default_expert: small\nbuffer_shells: 1\nshell_cutoff: 3.3\n"
        "rules:\n  - {kind: indices, expert: big, indices: [0]}\n"
    )
    out_xyz = tmp_path / "out.xyz"
    args = (structure, "--model", model_table, "--rules", rules, "--out-xyz", out_xyz)
    assert run_assign(*args) == 0
    assert np.sum(read(out_xyz).arrays["expert"] == 0) == 13
    # flags override the file's settings
    assert run_assign(*args, "--buffer-shells", "2", "--pair-coeff-model", "/md/m.nequip.pt2") == 0
    assert np.sum(read(out_xyz).arrays["expert"] == 0) == 55
    assert "pair_coeff      * * /md/m.nequip.pt2 C O Pt Pt_small\n" in capsys.readouterr().out


def _assert_error(capsys, rc, message):
    assert rc == 2
    stderr = capsys.readouterr().err.strip().split("\n")
    assert len(stderr) == 1 and message in stderr[0], stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--near", "C,O"], "--near `C,O`: expected SPECIES:CUTOFF"),
        (["--near", "C:4", "--expert", "medium"], "unknown expert `medium`"),
        ([], "no region rules"),
        (["--near", "C,O:4.0"], "(H, small) (2 atoms: the model has no element H)"),
    ],
)
def test_assign_cli_errors_keep_outputs(tmp_path, model_table, capsys, flags, message):
    slab = pt111_slab()
    slab.numbers[:2] = 1
    structure = tmp_path / "slab.xyz"
    slab.write(structure)
    out_xyz, out_data = tmp_path / "out.xyz", tmp_path / "out.data"
    out_xyz.write_text("keep")
    out_data.write_text("keep")
    rc = run_assign(
        structure, "--model", model_table, *flags, "--out-xyz", out_xyz, "--out-lammps", out_data
    )
    _assert_error(capsys, rc, message)
    assert out_xyz.read_text() == "keep" and out_data.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.data", "out.xyz", "slab.xyz"]


def test_assign_cli_failed_second_output_keeps_first(tmp_path, model_table, capsys):
    slab = pt111_slab()
    slab.pbc = [True, True, False]
    slab.positions[-1, 2] += slab.cell[2, 2]  # outside the open direction: no data file
    structure = tmp_path / "slab.xyz"
    slab.write(structure)
    out_xyz = tmp_path / "out.xyz"
    out_xyz.write_text("keep")
    rc = run_assign(
        structure,
        *("--model", model_table, "--near", "C,O:4"),
        *("--out-xyz", out_xyz, "--out-lammps", tmp_path / "out.data"),
    )
    _assert_error(capsys, rc, "outside the cell")
    assert out_xyz.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.xyz", "slab.xyz"]


def test_assign_cli_bad_inputs(tmp_path, model_table, capsys):
    structure = tmp_path / "slab.xyz"
    pt111_slab().write(structure)
    rc = run_assign(tmp_path / "none.xyz", "--model", model_table, "--near", "C:4")
    _assert_error(capsys, rc, "none.xyz` does not exist")
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {kind: shell, expert: big}\n")
    rc = run_assign(structure, "--model", model_table, "--rules", rules)
    _assert_error(capsys, rc, "needs `kind`, one of ['near', 'depth'")
    rules.write_text("rules: [{kind: near, expert: big, species: [C], cutoff: 4}]\nbuffer: 1\n")
    rc = run_assign(structure, "--model", model_table, "--rules", rules)
    _assert_error(capsys, rc, "unknown keys ['buffer']")


def test_assign_cli_reads_types_from_checkpoint(tmp_path, tiny_moe_run, capsys):
    structure = tmp_path / "slab.xyz"
    pt111_slab().write(structure)
    out_data = tmp_path / "out.data"
    model = tiny_moe_run / "best.ckpt"
    rc = run_assign(structure, "--model", model, "--near", "C,O:4.0", "--out-lammps", out_data)
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "  pair_coeff      * * model.nequip.pt2 C O Pt Pt_small" in stdout
    assert "  pair_style      allegro" in stdout  # the tiny MoE's experts are strictly local
    assert "\nAtom Type Labels\n\n1 C\n2 O\n3 Pt\n4 Pt_small\n" in out_data.read_text()
    expert = read_lammps_data(out_data, TABLE).arrays["expert"]
    assert np.sum(expert == 0) == 9


def test_assign_cli_preset(tmp_path, model_table, capsys):
    """`--preset pt_co_coordination`: in bulk with a vacancy, the vacancy's 12 neighbours (found
    here by distance) are the core; `--buffer-shells 0` keeps exactly them big."""
    from ase.geometry import get_distances

    pt = bulk("Pt", "fcc", a=PT_A, cubic=True).repeat((3, 3, 3))
    del pt[0]
    structure, out_xyz = tmp_path / "vacancy.extxyz", tmp_path / "out.xyz"
    pt.write(structure)
    args = (structure, "--model", model_table, "--preset", "pt_co_coordination")
    assert run_assign(*args, "--buffer-shells", "0", "--out-xyz", out_xyz) == 0
    _, from_vacancy = get_distances([0.0, 0.0, 0.0], pt.positions, cell=pt.cell, pbc=True)
    nearest = np.isclose(from_vacancy[0], PT_A / np.sqrt(2))
    assert nearest.sum() == 12
    np.testing.assert_array_equal(read(out_xyz).arrays["expert"] == 0, nearest)
    # the preset's own buffer (one shell) makes the region larger, still around the vacancy
    assert run_assign(*args, "--out-xyz", out_xyz) == 0
    big = read(out_xyz).arrays["expert"] == 0
    assert big.sum() > 12 and big[nearest].all()
    # `--buffer-width` replaces the preset's shell by every atom within the width of the core:
    # the example's rule set (4.5 A) and exactly the core plus its neighbours within 3 A
    for width in (3.0, 4.5):
        assert run_assign(*args, "--buffer-width", str(width), "--out-xyz", out_xyz) == 0
        _, from_core = get_distances(pt.positions[nearest], pt.positions, cell=pt.cell, pbc=True)
        expected = nearest | (from_core.min(axis=0) <= width)
        np.testing.assert_array_equal(read(out_xyz).arrays["expert"] == 0, expected)
    rc = run_assign(*args, "--buffer-width", "3", "--buffer-shells", "1", "--out-xyz", out_xyz)
    _assert_error(capsys, rc, "buffer_shells or buffer_width, not both")


# ---------------------------------------------------------------- assign --dataset (no model)


def cu_o_frames():
    """EMT-labelled frames: Cu(100) with O on a hollow site, rattled bulk Cu, a Cu(100) slab
    with a vacancy in its middle layer; energies and forces to be kept by the labelling."""
    from ase.build import add_adsorbate, fcc100
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    slab = fcc100("Cu", (3, 3, 5), vacuum=6.0, a=3.61)
    add_adsorbate(slab, "O", 1.0, "hollow")
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    crystal.rattle(0.05, seed=1)
    defect = fcc100("Cu", (3, 3, 5), vacuum=6.0, a=3.61)
    del defect[22]  # the middle layer's centre atom
    frames = []
    for atoms in (slab, crystal, defect):
        atoms.pbc = True
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(
            atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
        )
        frames.append(atoms)
    return frames


def test_assign_dataset_labels_every_frame(tmp_path, capsys):
    from ase.io import write

    from nequip_moe.data.regions import adsorbate_host

    frames = cu_o_frames()
    write(tmp_path / "frames.xyz", frames)
    out = tmp_path / "labelled.xyz"
    rc = run_assign(
        tmp_path / "frames.xyz", "--dataset", out, "--experts", "big,small",
        "--preset", "adsorbate_host", "--host", "Cu", "--adsorbates", "O", "--buffer-shells", "0",
    )
    assert rc == 0
    labelled = read(out, ":")
    rules, settings = adsorbate_host("big", "small", "Cu", ["O"], buffer_shells=0)
    expected = []
    for atoms, original in zip(labelled, frames):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no O in bulk and vacancy frames
            labels = assign_experts(original, rules, ["big", "small"], **settings)
        np.testing.assert_array_equal(atoms.arrays["expert"], labels)
        assert atoms.get_potential_energy() == pytest.approx(original.get_potential_energy())
        np.testing.assert_allclose(atoms.get_forces(), original.get_forces(), atol=1e-6)
        expected.append(int((labels == 0).sum()))
    # slab: O and both (100) surfaces (CN 8); bulk: none; vacancy: 2 surfaces + 12 neighbours
    assert expected == [1 + 18, 0, 18 + 4 + 4 + 4]
    stdout = capsys.readouterr().out
    assert "     1      32             0     0.000" in stdout
    assert f"     0      46            19{19 / 46:>10.3f}" in stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--near", "N:2.0"], "the rules name N, which no frame of"),
        (["--near", "O:2.0", "--expert", "medium"], "unknown expert `medium`"),
        (["--near", "O:2.0", "--host", "Cu"], "1 frame(s) of"),
        (["--near", "O:2.0"], "--dataset needs --experts"),
        (["--near", "O:2.0", "--experts", "big"], "at least two distinct expert names"),
        ([], "no region rules"),
    ],
)
def test_assign_dataset_errors_write_nothing(tmp_path, capsys, flags, message):
    from ase import Atoms
    from ase.io import write

    frames = cu_o_frames() + [Atoms("O2", positions=[(0, 0, 0), (0, 0, 1.2)], cell=[8] * 3)]
    write(tmp_path / "frames.xyz", frames)
    out = tmp_path / "labelled.xyz"
    out.write_text("keep")
    experts = [] if "--experts" in flags or "needs --experts" in message else ["--experts", "big,small"]
    rc = run_assign(tmp_path / "frames.xyz", "--dataset", out, *experts, *flags)
    _assert_error(capsys, rc, message)
    assert out.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.xyz", "labelled.xyz"]
    if "frame(s) of" in message:  # the O2 molecule is frame 3; --allow-no-host accepts it
        args = ("--near", "O:2.0", "--host", "Cu", "--allow-no-host")
        assert run_assign(tmp_path / "frames.xyz", "--dataset", out, *experts, *args) == 0
        assert (read(out, index=3).arrays["expert"] == 0).all()


def test_assign_dataset_bad_files(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.xyz"
    corrupt.write_text("3\nnot an extxyz comment\nCu 0 0\n")
    out = tmp_path / "out.xyz"
    rc = run_assign(corrupt, "--dataset", out, "--experts", "big,small", "--near", "O:2")
    _assert_error(capsys, rc, "cannot read structure")
    rc = run_assign(tmp_path / "none.xyz", "--dataset", out, "--experts", "big,small", "--near", "O:2")
    _assert_error(capsys, rc, "none.xyz` does not exist")
    rc = run_assign(corrupt, "--near", "O:2")
    _assert_error(capsys, rc, "give --model MODEL")
    assert not out.exists()


def test_assign_dataset_checks_the_models_types(tmp_path, model_table, capsys):
    """With --model, every (element, expert) must be a composite type: TABLE has no Cu."""
    from ase.io import write

    write(tmp_path / "frames.xyz", cu_o_frames())
    out = tmp_path / "out.xyz"
    rc = run_assign(tmp_path / "frames.xyz", "--dataset", out, "--model", model_table,
                    "--near", "O:2.0")
    _assert_error(capsys, rc, "the model has no element Cu")
    rc = run_assign(tmp_path / "frames.xyz", "--dataset", out, "--model", model_table,
                    "--experts", "small,big", "--near", "O:2.0")
    _assert_error(capsys, rc, "differ from the model's experts big,small")
    assert not out.exists()


def test_assign_dataset_bcc_host_from_a_rules_file(tmp_path, capsys):
    """bcc Fe + H with a rules file (preset adsorbate_host): the vacancy's 8 + 6 neighbours and
    the H with the Fe it bonds to are high fidelity; a frame of bulk Fe is all low fidelity."""
    from ase import Atoms
    from ase.io import write

    crystal = bulk("Fe", "bcc", a=2.87, cubic=True).repeat(4)
    defect = crystal.copy()
    del defect[0]
    hydrided = crystal.copy()
    hydrided += Atoms("H", positions=[(1.435, 0.7175, 0.0)])  # tetrahedral site
    write(tmp_path / "fe.xyz", [crystal, defect, hydrided])
    (tmp_path / "rules.yaml").write_text(
        "preset: {name: adsorbate_host, expert: big, default_expert: small, host: Fe, "
        "adsorbates: [H], buffer_shells: 0}\n"
    )
    out = tmp_path / "out.xyz"
    args = ("--dataset", out, "--experts", "big,small", "--rules", tmp_path / "rules.yaml")
    assert run_assign(tmp_path / "fe.xyz", *args) == 0
    labelled = read(out, ":")
    assert [int((a.arrays["expert"] == 0).sum()) for a in labelled[:2]] == [0, 14]
    # H in a tetrahedral site: 4 Fe at 1.60 A, within the Fe-H bond cutoff (1.96 A)
    assert int((labelled[2].arrays["expert"] == 0).sum()) == 1 + 4
