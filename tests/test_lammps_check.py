"""LAMMPS inputs from `lammps_input`, the type-label check they run in real LAMMPS, the locality
refusals, and `nequip-moe check-lammps` on the ways a type mapping goes wrong."""

import json
import re

import numpy as np
import pytest

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.integrations import lammps_check
from nequip.utils.aoti_metadata import NEQUIP_AOTI_INPUTS_KEY, NEQUIP_AOTI_OUTPUTS_KEY

from nequip_moe.integrations.lammps_data import write_lammps_data
from nequip_moe.integrations.lammps_driver import _lammps_to_model_types
from nequip_moe.integrations.lammps_input import lammps_input, parse_cost_weights
from nequip_moe.integrations.lammps_locality import (
    check_strictly_local,
    exact_pair_style,
    expert_halo_hops,
)
from nequip_moe.scripts import assign, cli, deploy

from conftest import require_lammps
from test_assign_cli import (  # noqa: F401 (fixture)
    TABLE,
    TARGET_FIELDS,
    model_metadata,
    slab_and_expert,
)
from test_regions import EXPERTS, pt111_slab


# ---------------------------------------------------------------- cost weights and input text


def test_cost_weights_from_text_and_bench_json(tmp_path):
    assert parse_cost_weights("small=1, big=8.3", EXPERTS) == {"big": 8.3, "small": 1.0}
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [], "cost_weights": {"big": 5.5, "small": 1.0}}))
    assert parse_cost_weights(str(bench), EXPERTS) == {"big": 5.5, "small": 1.0}
    for text, message in [
        ("big=8.3", r"no weight for \['small'\]"),
        ("big=8.3,small=1,tiny=0.5", r"unknown experts \['tiny'\]"),
        ("big=-1,small=1", "cost of expert `big` must be a positive number"),
        ("big:8.3", "expected NAME=COST"),
        (str(tmp_path / "missing.json"), "does not exist"),
    ]:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            parse_cost_weights(text, EXPERTS)
    bench.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="top-level `cost_weights`"):
        parse_cost_weights(str(bench), EXPERTS)


def test_input_text_per_pair_style():
    allegro = lammps_input("m.nequip.pt2", TABLE, "s.data", cost_weights={"big": 8.3, "small": 1})
    lines = allegro.splitlines()
    assert "newton          on" in lines
    assert "pair_coeff      * * m.nequip.pt2 C O Pt Pt_small" in lines
    # weight of each composite type = cost of its expert, picked by type label
    assert (
        'variable        nequip_moe_cost atom "8.3*(type==label2type(atom,C))+'
        "8.3*(type==label2type(atom,O))+8.3*(type==label2type(atom,Pt))+"
        '1*(type==label2type(atom,Pt_small))"'
    ) in lines
    assert "balance         1.05 shift xyz 20 1.02 weight var nequip_moe_cost" in lines
    rcb = lammps_input("m.nequip.pt2", TABLE, "s.data", balance="rcb")
    assert "comm_style      tiled" in rcb and "balance         1.05 rcb" in rcb
    assert "weight var" not in rcb
    nequip = lammps_input("m.nequip.pt2", TABLE, "s.data", pair_style="nequip")
    assert "newton          off" in nequip and "pair_style      nequip" in nequip
    assert "balance" not in nequip


# ---------------------------------------------------------------- the type-label check in LAMMPS


def run_header(tmp_path, data_file):
    """The written input up to pair_style, in real LAMMPS; returns the error or None."""
    require_lammps()
    from nequip_moe.integrations.lammps_runtime import start_lammps

    script = lammps_input("m.nequip.pt2", TABLE, data_file)
    lmp = start_lammps()
    try:
        lmp.commands_string(script[: script.index("pair_style")])
        return None
    except Exception as e:  # LAMMPS errors reach Python as plain Exceptions
        return str(e)
    finally:
        lmp.close()


def test_lammps_stops_on_data_files_with_other_labels(tmp_path, slab_and_expert):
    slab, expert = slab_and_expert
    good = tmp_path / "good.data"
    write_lammps_data(good, slab, expert, TABLE)
    assert run_header(tmp_path, good) is None

    # the same model types in another order: Pt_small is LAMMPS type 3
    swapped_table = CompositeTypeTable(
        ["C", "O", "Pt_small", "Pt"], ["C", "O", "Pt", "Pt"], ["big", "big", "small", "big"], EXPERTS
    )
    swapped = tmp_path / "swapped.data"
    write_lammps_data(swapped, slab, expert, swapped_table)
    assert "type_labels_not_in_the_order_C_O_Pt_Pt_small" in run_header(tmp_path, swapped)

    text = good.read_text()
    start = text.index("Atom Type Labels")
    unlabelled = tmp_path / "unlabelled.data"
    unlabelled.write_text(text[:start] + text[text.index("Masses", start):])
    error = run_header(tmp_path, unlabelled)
    assert "data_file_needs_type_labels_from_nequip_moe_assign" in error
    assert "without a labelmap" in error
    # labels for other types only (e.g. element names)
    elements = tmp_path / "elements.data"
    elements.write_text(text.replace("\n3 Pt\n4 Pt_small\n", "\n3 Pt\n4 Pt2\n"))
    assert "lacks_type_labels_C_O_Pt_Pt_small" in run_header(tmp_path, elements)


def extra_type_data(path, slab, expert):
    """A data file with a 5th LAMMPS type (`Pt_huge`, a third expert) holding one Pt atom."""
    table = CompositeTypeTable(
        ["C", "O", "Pt", "Pt_small", "Pt_huge"], ["C", "O", "Pt", "Pt", "Pt"],
        ["big", "big", "big", "small", "huge"], [*EXPERTS, "huge"],
    )
    expert = expert.copy()
    expert[np.flatnonzero(slab.numbers == 78)[0]] = 2
    write_lammps_data(path, slab, expert, table)
    return path


def test_lammps_stops_on_atoms_of_extra_types(tmp_path, slab_and_expert):
    """Several LAMMPS types onto one model type need a type beyond the model's: the written
    input stops on any atom of such a type, labels or not, before the pair style runs."""
    data = extra_type_data(tmp_path / "extra.data", *slab_and_expert)
    error = run_header(tmp_path, data)
    assert "atoms_of_LAMMPS_types_beyond_4:_map_types_one-to-one_onto_C_O_Pt_Pt_small" in error
    script = lammps_input("m.nequip.pt2", TABLE, "extra.data")
    note = script.index("after editing it, run `nequip-moe check-lammps")
    assert script.index("pair_style") > note  # the note stands beside pair_style / pair_coeff


def test_check_lammps_and_driver_refuse_many_to_one(tmp_path, slab_and_expert, monkeypatch, capsys):
    """`C O Pt Pt Pt` onto a gated model's element types C O Pt, on a data file typed by mass
    alone (no labels to disagree with): refused, with the per-edge-type cutoff reason where the
    model has them; the fix-external driver refuses the same map."""
    text = extra_type_data(tmp_path / "labelled.data", *slab_and_expert).read_text()
    start = text.index("Atom Type Labels")
    (tmp_path / "pt.data").write_text(text[:start] + text[text.index("Masses", start):])
    gated = {
        "type_names": "C O Pt", "r_max": "4.5", "moe_gate_model": "AdsorbateCoordinationGate",
        "moe_expert_names": "big small", "moe_expert_r_max": "4.5 4.0",
        "moe_expert_halo_hops": "0 0", "per_edge_type_cutoff": "Pt Pt 4.0",
    }
    gated[NEQUIP_AOTI_INPUTS_KEY], gated[NEQUIP_AOTI_OUTPUTS_KEY] = TARGET_FIELDS["pair_allegro"]
    monkeypatch.setattr(lammps_check, "read_metadata", lambda path: gated)
    (tmp_path / "g.nequip.pt2").write_bytes(b"")
    script = tmp_path / "in.lammps"
    script.write_text(
        "units metal\natom_style atomic\nread_data pt.data\npair_style allegro\n"
        "pair_coeff * * g.nequip.pt2 C O Pt Pt Pt\n"
    )
    rc, out = check(capsys, script)
    assert rc == 2 and "LAMMPS types 3, 4, 5 -> `Pt`" in out, out
    assert "pair_allegro leaves those of the extra types unset" in out
    del gated["per_edge_type_cutoff"]
    rc, out = check(capsys, script)
    assert rc == 2 and "LAMMPS types 3, 4, 5 -> `Pt`" in out and "unset" not in out
    with pytest.raises(ValueError, match=r"LAMMPS types 3, 4 -> `Pt`.*unset"):
        _lammps_to_model_types(["C", "O", "Pt", "Pt"], ["C", "O", "Pt"], 4, True)
    assert _lammps_to_model_types(["O", "C", "Pt"], ["C", "O", "Pt"], 3, True).tolist() == [1, 0, 2]


# ---------------------------------------------------------------- locality


def test_halo_hops_metadata():
    assert expert_halo_hops(model_metadata("0 2")) == {"big": 0, "small": 2}
    assert expert_halo_hops(model_metadata(None)) is None
    with pytest.raises(ValueError, match="one value per expert"):
        expert_halo_hops(model_metadata("0"))
    assert exact_pair_style(model_metadata("0 0")) == "allegro"
    assert exact_pair_style(model_metadata("0 -1")) == "nequip"
    assert exact_pair_style(model_metadata(None)) == "nequip"


def test_non_local_experts_are_refused_for_pair_allegro():
    check_strictly_local(model_metadata("0 0"), "m", "pair_style allegro")
    check_strictly_local({"type_names": "Pt", "r_max": "4"}, "m", "pair_style allegro")  # no MoE
    with pytest.raises(ValueError) as e:
        check_strictly_local(model_metadata("2 -1"), "m.zip", "pair_style allegro")
    message = str(e.value)
    assert "expert(s) `big` (message passing, 2-shell halo), `small` (unknown receptive field)" in message
    assert "--targets pair_nequip" in message and "MoECalculator" in message
    with pytest.raises(ValueError, match="does not declare its experts' locality.*nequip-package build"):
        check_strictly_local(model_metadata(None), "m.zip", "pair_style allegro")


def test_deploy_refuses_pair_allegro_for_message_passing(tmp_path, monkeypatch, capsys):
    package = tmp_path / "mp.nequip.zip"
    package.write_bytes(b"")
    monkeypatch.setattr(deploy, "read_metadata", lambda path: model_metadata("1 0", None))
    assert cli.main(["deploy", str(package), "--out-dir", str(tmp_path / "out")]) == 2
    assert "expert(s) `big` (message passing, 1-shell halo)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- nequip-moe check-lammps


@pytest.fixture
def lammps_files(tmp_path, slab_and_expert, monkeypatch):
    """A data file from the writer and an input from `lammps_input`; the model is metadata."""
    slab, expert = slab_and_expert
    write_lammps_data(tmp_path / "slab.data", slab, expert, TABLE)
    (tmp_path / "moe.nequip.pt2").write_bytes(b"")
    metadata = {"moe.nequip.pt2": model_metadata()}
    monkeypatch.setattr(lammps_check, "read_metadata", lambda path: metadata[path.name])
    path = tmp_path / "in.lammps"
    path.write_text(
        lammps_input("moe.nequip.pt2", TABLE, "slab.data", cost_weights={"big": 8, "small": 1})
    )
    return path, metadata


def check(capsys, input_file):
    rc = cli.main(["check-lammps", str(input_file)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_check_lammps_good_input(capsys, lammps_files):
    rc, out = check(capsys, lammps_files[0])
    assert rc == 0, out
    assert "LAMMPS type 4 `Pt_small` -> Pt_small (Pt, small)" in out


@pytest.mark.parametrize(
    "names, message",
    [
        ("C O Pt_small Pt", "LAMMPS type 3 is labelled `Pt` in `slab.data` but pair_coeff maps it to `Pt_small`"),
        ("C O Pt Pt", "LAMMPS type 4 is labelled `Pt_small` in `slab.data` but pair_coeff maps it to `Pt` (an element name"),
        ("C O Pt Pt", "pair_coeff maps several LAMMPS types onto one model type (LAMMPS types 3, 4 -> `Pt`)"),
        ("C O Pt Pt_tiny", "pair_coeff names `Pt_tiny` (LAMMPS type 4), which the model does not have"),
        ("C O Pt", "has 4 atom types but pair_coeff names 3"),
    ],
)
def test_check_lammps_wrong_names(capsys, lammps_files, names, message):
    edit(lammps_files[0], "moe.nequip.pt2 C O Pt Pt_small", f"moe.nequip.pt2 {names}")
    rc, out = check(capsys, lammps_files[0])
    assert rc == 2 and message in out, out
    assert "fix: write the input with `nequip-moe deploy`/`assign`, or use " in out
    assert "`pair_coeff * * moe.nequip.pt2 C O Pt Pt_small`" in out


def test_check_lammps_masses_and_labels(capsys, lammps_files, tmp_path):
    data = tmp_path / "slab.data"
    data.write_text(re.sub(r"\n2 15\.9\d* # O\n", "\n2 1.008 # O\n", data.read_text()))
    rc, out = check(capsys, lammps_files[0])
    assert rc == 2 and "LAMMPS type 2 has mass 1.008 in `slab.data`, but pair_coeff maps it to `O`, element O (16)" in out
    text = data.read_text()
    start = text.index("Atom Type Labels")
    data.write_text(text[:start] + text[text.index("Masses", start):])
    rc, out = check(capsys, lammps_files[0])
    assert rc == 2 and "`slab.data` has no Atom Type Labels" in out


def test_check_lammps_pair_style_target_and_locality(capsys, lammps_files):
    path, metadata = lammps_files
    metadata["moe.nequip.pt2"] = model_metadata("1 0", "pair_nequip")
    rc, out = check(capsys, path)
    assert rc == 2
    assert "is compiled for pair_style nequip, the input says `pair_style allegro`" in out
    assert "expert(s) `big` (message passing, 1-shell halo)" in out
    edit(path, "pair_style      allegro", "pair_style      nequip")
    edit(path, "newton          on", "newton          off")
    assert check(capsys, path)[0] == 0
    metadata["moe.nequip.pt2"] = model_metadata("0 0", "ase")
    rc, out = check(capsys, path)
    assert rc == 2 and "was not compiled for LAMMPS" in out


def test_assign_writes_a_balanced_input_that_checks_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "nequip_moe.integrations.model_files.read_metadata", lambda path: model_metadata()
    )
    monkeypatch.setattr(lammps_check, "read_metadata", lambda path: model_metadata())
    structure = tmp_path / "slab.xyz"
    pt111_slab().write(structure)
    (tmp_path / "moe.nequip.pt2").write_bytes(b"")
    args = [
        "assign", str(structure), "--model", "moe.nequip.pt2", "--near", "C,O:4.0",
        "--out-lammps", str(tmp_path / "slab.data"), "--out-input", str(tmp_path / "in.lammps"),
        "--cost-weights", "big=8.3,small=1",
    ]
    assert cli.main(args) == 0
    script = (tmp_path / "in.lammps").read_text()
    assert "weight var nequip_moe_cost" in script and "8.3*(type==label2type(atom,Pt))" in script
    assert check(capsys, tmp_path / "in.lammps")[0] == 0
    # a bad --cost-weights writes nothing
    (tmp_path / "in.lammps").write_text("keep")
    assert cli.main(args[:-1] + ["big=8.3"]) == 2
    assert "no weight for ['small']" in capsys.readouterr().err
    assert (tmp_path / "in.lammps").read_text() == "keep"
