"""`nequip-moe validate` on the session's tiny trained MoEs: packaged and compiled, static and
gated; the gated MoE's fixed regions; bad inputs are clear errors that write nothing."""

import json

import numpy as np
import pytest
from ase.build import bulk

from nequip_moe.scripts import cli
from nequip_moe.validation import ModelUnderTest, predict
from nequip_moe.validation.report import CHECKS

pytest_plugins = ["gated_fixtures"]

# a quick validation: few strains, one cut and the sphere, short NVE, one timing
QUICK = ("--strains=-1,1", "--planes", "111", "--eos-strains=-2,-1,0,1,2", "--bulk-frames", "2",
         "--nve-steps", "20", "--speed-repeats", "1", "--allow-fail")
OUTPUTS = {"validation.json", "validation.md", "split_crystal.png", "eos.png",
           "error_vs_distance.png", "nve.png"}


def validate(model, out, *flags):
    return cli.main(["validate", str(model), "--out", str(out), *map(str, flags)])


@pytest.fixture(scope="module")
def untrained_reference(tmp_path_factory, pt_co_frames_file):
    """An untrained plain model (tiny_moe's big expert alone) checkpoint: a --reference."""
    from ase.io import read

    from nequip_moe.benchmarking.untrained import untrained_checkpoints

    from conftest import CONFIGS

    out = tmp_path_factory.mktemp("untrained")
    return untrained_checkpoints(CONFIGS / "tiny_moe.yaml", read(pt_co_frames_file, 0), out)["big"]


def report_of(out, reference=False):
    report = json.loads((out / "validation.json").read_text())
    expected = [n for n in CHECKS if reference or not n.startswith("reference_")]
    assert [c["name"] for c in report["checks"]] == expected
    for c in report["checks"]:
        assert c["verdict"] in ("pass", "fail", "info", "not applicable")
        assert c["verdict"] == "not applicable" or c["value"] is not None or c["verdict"] == "fail"
        assert c["name"] in (out / "validation.md").read_text()
    return report


@pytest.mark.parametrize("compiled", [False, True], ids=["package", "compiled"])
def test_validate_static_moe(tmp_path, tiny_moe_package, tiny_moe_ase_pt2, pt_co_frames_file, compiled, capsys):
    model = tiny_moe_ase_pt2 if compiled else tiny_moe_package
    out = tmp_path / "out"
    assert validate(model, out, "--test", pt_co_frames_file, *QUICK) == 0
    assert {p.name for p in out.iterdir()} == OUTPUTS
    report = report_of(out)
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert verdicts["core_ratio"] == "not applicable"  # no --reference
    assert all(v != "not applicable" for k, v in verdicts.items() if k not in ("core_ratio", "reference_v0", "reference_b0"))
    assert report["model"]["kind"] == "static" and report["model"]["compiled"] == compiled
    assert report["inputs"]["bulk"]["element"] == "Pt"
    split = report["measures"]["split_crystal"]
    assert set(split["geometries"]) == {"plane_111", "sphere"} and split["strains"] == [-0.01, 0.01]
    assert "FAIL" in capsys.readouterr().out or report["passed"]


def test_validate_with_a_reference(tmp_path, tiny_moe_package, pt_co_frames_file, untrained_reference):
    out = tmp_path / "out"
    flags = ("--test", pt_co_frames_file, "--reference", untrained_reference, "--a", "3.92",
             "--skip", "nve,split_crystal")
    assert validate(tiny_moe_package, out, *flags, *QUICK) == 0
    report = report_of(out, reference=True)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["split_crystal_force"]["detail"] == "skipped (--skip)"
    assert checks["core_ratio"]["verdict"] == "info" and checks["core_ratio"]["value"] > 0
    assert checks["speedup"]["value"] == pytest.approx(report["measures"]["speed"]["measured"])
    assert checks["reference_v0"]["verdict"] in ("pass", "fail")
    assert set(report["measures"]["interface"]["errors"]) == {"moe", "low_alone", "reference"}
    assert {p.name for p in out.iterdir()} == OUTPUTS - {"split_crystal.png", "nve.png"}


@pytest.mark.parametrize("compiled", [False, True], ids=["package", "compiled"])
def test_validate_gated_moe(tmp_path, tiny_gated_package, tiny_gated_ase_pt2, pt_co_frames_file, compiled):
    """The package runs every measure (its gate replaced by fixed regions where a measure needs
    them); the compiled file cannot replace its gate: those measures say so, NVE runs."""
    model = tiny_gated_ase_pt2 if compiled else tiny_gated_package
    out = tmp_path / "out"
    assert validate(model, out, "--test", pt_co_frames_file, "--a", "3.92", *QUICK) == 0
    report = report_of(out)
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert report["model"]["kind"] == "gated"
    assert verdicts["nve_drift"] in ("pass", "fail") and verdicts["nve_dt_exponent"] in ("pass", "fail")
    if compiled:
        assert verdicts["split_crystal_force"] == "not applicable"
        assert "validate its package" in report["checks"][0]["detail"]
        assert (out / "validation.md").read_text().count("INCOMPLETE") == 1
    else:
        assert verdicts["split_crystal_force"] in ("pass", "fail")
        assert verdicts["interface_penalty"] in ("pass", "fail")
        assert {p.name for p in out.iterdir()} == OUTPUTS


def test_gated_moe_with_fixed_regions(tiny_gated_package):
    """On perfect bulk Pt the gate is 0: the gated MoE equals its low-fidelity expert alone
    (its gate fixed to 0); on a slab the surface is high fidelity and the MoE differs."""
    from ase.build import fcc111

    model = ModelUnderTest(tiny_gated_package)
    crystal = bulk("Pt", "fcc", a=3.92, cubic=True).repeat(2)
    assert not model.high_fidelity(crystal).any()
    gated, low = (predict(c, [crystal])[0] for c in (model.calculator(), model.expert_calculator(model.low)))
    assert gated["energy"] == pytest.approx(low["energy"], abs=1e-10)
    np.testing.assert_allclose(gated["forces"], low["forces"], atol=1e-10)
    slab = fcc111("Pt", (2, 2, 5), a=3.92, vacuum=6.0)
    slab.pbc = True
    high = model.high_fidelity(slab)
    z = slab.positions[:, 2]
    np.testing.assert_array_equal(high, np.isclose(z, z.max()) | np.isclose(z, z.min()))
    gated, low = (predict(c, [slab])[0] for c in (model.calculator(), model.expert_calculator(model.low)))
    assert abs(gated["energy"] - low["energy"]) > 1e-6
    # the fixed regions of the gate's own region reproduce it where g is 0 or 1 (no blend zone)
    weights = model.expert_weights(slab)
    slab.arrays["expert"] = np.where(high, 0, 1)
    if np.isin(weights[:, 0], (0.0, 1.0)).all():
        fixed = predict(model.region_calculator(), [slab])[0]
        assert fixed["energy"] == pytest.approx(gated["energy"], abs=1e-10)


def test_validate_bad_inputs_write_nothing(tmp_path, tiny_moe_package, pt_co_frames_file, capsys):
    from ase.io import read, write

    out = tmp_path / "out"
    unlabelled = tmp_path / "unlabelled.xyz"
    frames = read(pt_co_frames_file, ":")
    for atoms in frames:
        del atoms.arrays["expert"]
    write(unlabelled, frames)
    no_energy = tmp_path / "no_energy.xyz"
    write(no_energy, [a.copy() for a in frames])
    cases = [
        ((tmp_path / "none.nequip.zip",), "model file"),
        ((tiny_moe_package, "--test", unlabelled), "has no per-atom `expert` labels: pass --rules"),
        ((tiny_moe_package, "--test", no_energy), "has no energy and forces"),
        ((tiny_moe_package, "--threshold", "split=3"), "--threshold `split=3`"),
        ((tiny_moe_package, "--skip", "eos,teacher"), "cannot skip ['teacher']"),
        ((tiny_moe_package, "--planes", "1x0"), "--planes `1x0`"),
        ((tiny_moe_package, "--strains", "a,b"), "--strains `a,b`"),
        ((tiny_moe_package, "--bulk", pt_co_frames_file, "--element", "Pt"), "give --bulk or --element"),
        ((tiny_moe_package, "--element", "C"), "every expert of"),
        ((tiny_moe_package, "--reference", tiny_moe_package), "is an MoE: the reference is a single model"),
        ((tiny_moe_package, "--nve-steps", "2"), "nve_steps >= 4"),
    ]
    for args, message in cases:
        rc = cli.main(["validate", *map(str, args), "--out", str(out)])
        stderr = capsys.readouterr().err
        assert rc == 2 and message in stderr, (args, stderr)
        assert not out.exists()
