"""The Fe + H example (examples/fe_h): its data generator's structures and labels (a stand-in
calculator, and SevenNet on one tiny cell), its frames labelled by `nequip-moe assign
--dataset`, its configs as `nequip-train` composes them, and its README's validation table,
which must be the rendering of the committed reference validation.json. Nothing trains."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from nequip_moe.scripts import cli

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "fe_h"


def example_module(name):
    """``examples/fe_h/<name>.py`` under the name ``fe_h_<name>`` (the Pt+CO example's tests
    import modules of the same names, ``data`` and ``render``, from their own folder)."""
    spec = importlib.util.spec_from_file_location(f"fe_h_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fe_h_data = example_module("data")
render = example_module("render")

A0 = 2.83


def nearest_fe(atoms, index):
    fe = np.flatnonzero(atoms.numbers == 26)
    return atoms.get_distances(index, fe, mic=True).min()


@pytest.mark.parametrize("site, distance", [("tetrahedral", A0 * 5**0.5 / 4), ("octahedral", A0 / 2)])
def test_interstitial_h_sits_on_its_site(site, distance):
    atoms = fe_h_data.interstitial_h(A0, site)
    assert atoms.get_chemical_formula() == "HFe54"
    assert nearest_fe(atoms, len(atoms) - 1) == pytest.approx(distance)


@pytest.mark.parametrize("facet", ["100", "110"])
def test_slab_h_sits_on_the_faces(facet):
    rng = np.random.default_rng(3)
    for _ in range(6):
        atoms = fe_h_data.slab_with_h(A0, facet, rng)
        fe_z = atoms.positions[atoms.numbers == 26, 2]
        for k in np.flatnonzero(atoms.numbers == 1):
            z = atoms.positions[k, 2]
            assert z > fe_z.max() or z < fe_z.min()  # on a face, not inside the slab
            assert 1.3 < nearest_fe(atoms, k) < 2.2  # bonded to the surface
        assert atoms.pbc.all()


def test_recipe_kinds_and_strains():
    counts = fe_h_data.FrameCounts().scaled(0.2)
    frames = fe_h_data.structures(A0, counts, seed=0)
    kinds = [a.info["kind"] for a in frames]
    assert {k: kinds.count(k) for k in set(kinds)} == {k: getattr(counts, k) for k in set(kinds)}
    for atoms in frames:
        if atoms.info["kind"] == "bulk":  # isotropic <= 4.5 % plus symmetric <= 1.5 % per component
            ratio = (atoms.get_volume() / len(atoms) / (A0**3 / 2)) ** (1 / 3)
            assert 0.955 - 0.03 < ratio < 1.045 + 0.03
    # the equation of state: the perfect 2-atom cell, compressed and expanded
    eos = [(a.get_volume() / 2 / (A0**3 / 2)) ** (1 / 3) - 1 for a in frames if a.info["kind"] == "eos"]
    assert len(eos) == counts.eos >= 2 and min(eos) < 0 < max(eos) and max(map(abs, eos)) <= 0.045
    # another seed draws other frames (the held-out test set)
    other = fe_h_data.structures(A0, counts, seed=1)
    assert not np.allclose(frames[0].positions, other[0].positions)


def test_labels_and_energy_shifts_with_a_stand_in_labeller():
    frames = fe_h_data.structures(A0, fe_h_data.FrameCounts().scaled(0.1), seed=0)[:3]
    labelled = fe_h_data.label(frames, "morse", workers=0)
    for atoms in labelled:
        reference = atoms.copy()
        reference.calc = fe_h_data.make_labeller("morse")
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy())
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces())
        assert atoms.get_stress().shape == (6,)
    # energies that are sums of per-element values give those values back
    crystals = [bulk("Fe", "bcc", a=A0, cubic=True).repeat((k, 1, 1)) for k in (1, 2)]
    crystals[1][0].symbol = "H"
    crystals.append(crystals[1].copy())
    crystals[2][1].symbol = "H"
    from ase.calculators.singlepoint import SinglePointCalculator

    for atoms in crystals:
        atoms.calc = SinglePointCalculator(atoms, energy=-8.0 * (atoms.numbers == 26).sum() - 2.5 * (atoms.numbers == 1).sum())
    assert fe_h_data.energy_shifts(crystals) == pytest.approx({"Fe": -8.0, "H": -2.5})


def test_generator_files_and_assign_labels(tmp_path, capsys):
    fe_h_data.main(["--out", str(tmp_path), "--labeller", "morse", "--scale", "0.1", "--workers", "0"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    pool, test = read(tmp_path / "frames.xyz", ":"), read(tmp_path / "test.xyz", ":")
    assert (summary["frames"], summary["test_frames"]) == (len(pool), len(test))
    assert set(summary["energy_shifts"]) == {"Fe", "H"}
    assert read(tmp_path / "bulk.xyz").cell.lengths() == pytest.approx([summary["lattice_constant_a"]] * 3)
    rc = cli.main(["assign", str(tmp_path / "frames.xyz"), "--dataset", str(tmp_path / "labelled.xyz"),
                   "--experts", "big,small", "--preset", "adsorbate_host", "--host", "Fe", "--adsorbates", "H"])
    assert rc == 0
    for atoms in read(tmp_path / "labelled.xyz", ":"):
        big = atoms.arrays["expert"] == 0
        kind = atoms.info["kind"]
        assert big[atoms.numbers == 1].all()  # H is always high fidelity
        if kind in ("eos", "bulk", "column"):
            assert not big.any()
        else:  # H, its neighbours, surfaces and vacancy neighbours, with a small-expert bulk
            assert big.any() and not big.all(), kind


def test_sevenn_lattice_constant():
    """The default labeller, offline: SevenNet's PBE bcc Fe lattice constant (PBE: 2.83 A)."""
    pytest.importorskip("sevenn")
    import torch

    dtype = torch.get_default_dtype()  # the test session's (float64); SevenNet runs in float32
    torch.set_default_dtype(torch.float32)
    try:
        assert 2.80 < fe_h_data.lattice_constant("sevenn") < 2.87
    finally:
        torch.set_default_dtype(dtype)


def test_configs_compose_as_nequip_train_composes_them():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(EXAMPLE), version_base="1.3"):
        moe = compose("fe_h_moe")
        big = compose("fe_h_big", overrides=["energy_shifts={Fe:-8.3,H:-2.1}"])
        small = compose("fe_h_small")
        staged = compose("fe_h_staged", overrides=["big_model=/some/big.ckpt", "small_model=/some/small.ckpt"])
    assert big.training_module.model.type_names == ["H", "Fe"]
    assert OmegaConf.to_container(big.training_module.model.per_type_energy_shifts) == {"Fe": -8.3, "H": -2.1}
    expert = OmegaConf.to_container(moe.big_expert, resolve=False)
    single = OmegaConf.to_container(big.training_module.model, resolve=False)
    assert {k: single[k] for k in expert if k != "per_type_energy_shifts"} == {
        k: v for k, v in expert.items() if k != "per_type_energy_shifts"}
    # all-small is the MoE's small expert alone on the element types
    assert small.training_module.model.type_names == ["H", "Fe"]
    assert small.training_module.model.l_max == moe.small_expert.l_max
    model = staged.training_module.model
    for name in ("big", "small"):
        assert model.experts[name]._target_ == "nequip_moe.model.PretrainedExpert"
        assert model.experts[name].path == f"/some/{name}.ckpt"
    assert list(model.frozen_experts) == ["big"]  # the small expert trains on
    terms = [m.name for m in staged.training_module.loss.extra_metrics]
    assert terms == ["energy_agreement", "force_agreement", "frame_energy_agreement", "interface_force_agreement",
                     "edge_gradient_agreement"]
    assert model.cotraining_edge_gradients  # the edge-gradient term needs the per-expert gradients


def test_readme_table_is_the_reference_validation():
    report = json.loads(render.REFERENCE.read_text())
    readme = render.README.read_text()
    assert render.readme_block(readme) == render.table(report)
    assert report["complete"]
    # a check whose value or verdict differs from the README's renders another table
    changed = json.loads(json.dumps(report))
    changed["checks"][0]["value"] = 2 * (changed["checks"][0]["value"] or 1.0) + 1.0
    assert render.readme_block(readme) != render.table(changed)
    # and the README's headline is the reference's verdict
    headline = "**PASS**" if report["passed"] else "**FAIL**"
    assert render.readme_block(readme).startswith(headline)
    # rewriting the block with the reference's table leaves the README unchanged
    assert render.with_table(readme, render.table(report)) == readme
