"""`nequip-moe deploy`: package + compile + composite-type table + LAMMPS input."""

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
    assert "pair_style allegro" in script
    assert f"pair_coeff      * * tiny_moe_pair_allegro.nequip.pt2 {' '.join(table['type_names'])}" in script


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
