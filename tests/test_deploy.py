"""`nequip-moe deploy`: package + compile + composite-type table + LAMMPS input."""

import json
import pathlib
import zipfile

import pytest
import yaml

from nequip_moe.integrations.model_files import is_pair_allegro_target, read_metadata

from conftest import run_tool


def test_deploy_writes_table_and_lammps_input(tiny_moe_deployed, tiny_moe_package):
    metadata = read_metadata(tiny_moe_deployed / "tiny_moe_pair_allegro.nequip.pt2")
    assert is_pair_allegro_target(metadata)
    table = yaml.safe_load((tiny_moe_deployed / "tiny_moe.types.yaml").read_text())
    assert table["type_names"] == metadata["type_names"].split()
    assert [table["composite_types"][t]["expert"] for t in table["type_names"]] == metadata[
        "moe_type_experts"
    ].split()
    script = (tiny_moe_deployed / "tiny_moe.lammps.in").read_text()
    assert "newton          on" in script
    assert "pair_style      allegro" in script
    assert f"pair_coeff      * * tiny_moe_pair_allegro.nequip.pt2 {' '.join(table['type_names'])}" in script


def openmp_regions(compiled_file) -> int:
    """OpenMP parallel regions in the C++ kernels AOTInductor generated for a compiled file."""
    with zipfile.ZipFile(compiled_file) as archive:
        sources = [name for name in archive.namelist() if name.endswith(".cpp")]
        assert sources, f"{compiled_file}: no generated C++ source in the archive"
        return sum(archive.read(name).decode().count("#pragma omp parallel") for name in sources)


def test_deploy_compiles_for_one_thread(tiny_moe_deployed):
    """The fixture ran `deploy` with two torch threads; the kernels are still serial, as for
    one thread per MPI rank (`integrations.compile`: compiled with two threads, the same MoE
    gets OpenMP-parallel kernels that run slower on one thread)."""
    assert openmp_regions(tiny_moe_deployed / "tiny_moe_pair_allegro.nequip.pt2") == 0


def test_deploy_bad_input_keeps_existing_files(tmp_path, tiny_moe_deployed):
    with pytest.raises(RuntimeError, match="does not exist"):
        run_tool(["nequip-moe", "deploy", tmp_path / "missing.ckpt"], cwd=tmp_path)
    with pytest.raises(RuntimeError, match="already compiled"):
        run_tool(
            ["nequip-moe", "deploy", tiny_moe_deployed / "tiny_moe_pair_allegro.nequip.pt2"],
            cwd=tmp_path,
        )
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    (tmp_path / "corrupt.types.yaml").write_text("kept: true\n")
    with pytest.raises(RuntimeError, match="could not be loaded"):
        run_tool(["nequip-moe", "deploy", corrupt], cwd=tmp_path)
    assert (tmp_path / "corrupt.types.yaml").read_text() == "kept: true\n"


def test_deploy_writes_balanced_and_pair_nequip_inputs(tmp_path, monkeypatch, capsys):
    """The LAMMPS input for each LAMMPS target, with cost weights from a bench JSON (the
    nequip tools are replaced by stand-ins that write empty files)."""
    from nequip_moe.scripts import cli, deploy

    from test_assign_cli import model_metadata

    package = tmp_path / "moe.nequip.zip"
    package.write_bytes(b"")
    monkeypatch.setattr(deploy, "read_metadata", lambda path: model_metadata("1 0", None))
    monkeypatch.setattr(deploy, "_run", lambda cmd, cwd: pathlib.Path(cmd[2]).write_bytes(b""))
    monkeypatch.setattr(deploy, "compile_model", lambda model, out, *args, **kwargs: pathlib.Path(out).write_bytes(b""))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"cost_weights": {"big": 6.5, "small": 1.0}}))
    args = ["deploy", str(package), "--out-dir", str(tmp_path / "out")]
    assert cli.main(args + ["--targets", "pair_nequip", "ase"]) == 0, capsys.readouterr().err
    script = (tmp_path / "out" / "moe.lammps.in").read_text()
    assert "pair_style      nequip" in script and "newton          off" in script
    assert "balance" not in script  # one MPI rank

    monkeypatch.setattr(deploy, "read_metadata", lambda path: model_metadata("0 0", None))
    assert cli.main(args + ["--targets", "pair_allegro", "--cost-weights", str(bench)]) == 0
    script = (tmp_path / "out" / "moe.lammps.in").read_text()
    assert "pair_coeff      * * moe_pair_allegro.nequip.pt2 C O Pt Pt_small" in script
    assert "6.5*(type==label2type(atom,Pt))+1*(type==label2type(atom,Pt_small))" in script
    assert "fix             nequip_moe_balance all balance 100 1.10 shift xyz 20 1.02 weight var nequip_moe_cost" in script
    types = yaml.safe_load((tmp_path / "out" / "moe.types.yaml").read_text())
    assert types["composite_types"]["Pt_small"] == {"element": "Pt", "expert": "small"}
