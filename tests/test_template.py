"""The generic route on a system that is not Pt + CO: EMT-labelled Cu + O frames labelled with
`nequip-moe assign --dataset` (no model), `configs/moe_template.yaml` edited as its EDIT lines
say and trained with `nequip-train` (2 epochs), packaged, and `nequip-moe validate`d."""

import json

import numpy as np
from ase.build import add_adsorbate, bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nequip.data import from_ase

from nequip_moe.integrations.model_files import read_metadata
from nequip_moe.scripts import cli

from conftest import CONFIGS, package_run, run_tool

CU_A = 3.59  # EMT's Cu lattice constant (A)


def cu_o_frames(seed: int = 0):
    """Cu(100) and Cu(111) slabs with O on hollow sites, and strained, rattled bulk Cu; EMT
    energy, forces and stress."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(6):
        build = fcc100 if k % 2 == 0 else fcc111
        slab = build("Cu", (2, 2, 7), a=CU_A, vacuum=5.0)
        add_adsorbate(slab, "O", 1.0 + 0.2 * rng.random(), "hollow" if k % 2 == 0 else "fcc")
        frames.append(slab)
    for k in range(6):
        crystal = bulk("Cu", "fcc", a=CU_A * (0.97 + 0.01 * k), cubic=True).repeat(2)
        frames.append(crystal)
    labelled = []
    for atoms in frames:
        atoms.pbc = True
        atoms.info.pop("adsorbate_info", None)
        atoms.positions += rng.normal(0.0, 0.04, atoms.positions.shape)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                   "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        labelled.append(atoms)
    return labelled


def edited_template(path, data_file):
    """The template with its EDIT lines set for Cu + O, 2 epochs and small experts."""
    config = OmegaConf.load(CONFIGS / "moe_template.yaml")
    config.data_file = str(data_file)
    config.model_type_names = ["O", "Cu", "Cu_small"]
    config.composite_types = {
        "O": {"element": "O", "expert": "big"},
        "Cu": {"element": "Cu", "expert": "big"},
        "Cu_small": {"element": "Cu", "expert": "small"},
    }
    config.host = "Cu"
    config.cutoff_radius = 4.0
    config.train_fraction, config.val_fraction, config.test_fraction = 0.6, 0.2, 0.2
    config.max_epochs, config.batch_size = 2, 2
    config.trainer.accelerator = "cpu"
    for expert in (config.big_expert, config.small_expert):
        expert.l_max, expert.num_scalar_features, expert.num_tensor_features = 1, 8, 2
    OmegaConf.save(config, path)
    return path


def test_template_trains_and_validates_on_cu_o(tmp_path, capsys):
    write(tmp_path / "frames.xyz", cu_o_frames())
    rc = cli.main(["assign", str(tmp_path / "frames.xyz"), "--dataset", str(tmp_path / "labelled.xyz"),
                   "--experts", "big,small", "--preset", "adsorbate_host", "--host", "Cu",
                   "--adsorbates", "O", "--buffer-width", "3.0"])
    assert rc == 0
    labelled = read(tmp_path / "labelled.xyz", ":")
    high = [int((a.arrays["expert"] == 0).sum()) for a in labelled]
    assert all(0 < h < len(a) for h, a in zip(high[:6], labelled)) and high[6:] == [0] * 6
    assert "stress" in labelled[0].calc.results

    config = edited_template(tmp_path / "cu_o_moe.yaml", tmp_path / "labelled.xyz")
    # the template's co-training has shared atoms on Cu: every atom of bulk, the middle of slabs
    shared = instantiate(OmegaConf.load(config).data.transforms[1])
    assert shared(from_ase(labelled[6]))["shared"].all()
    middle = shared(from_ase(labelled[0]))["shared"].view(-1).numpy().astype(bool)
    assert 0 < middle.sum() and not middle[labelled[0].numbers == 8].any()
    run_dir = tmp_path / "run"
    run_tool(["nequip-train", "-cp", tmp_path, "-cn", "cu_o_moe", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    package = package_run(run_dir, "cu_o_moe")
    metadata = read_metadata(package)
    assert metadata["type_names"].split() == ["O", "Cu", "Cu_small"]
    assert metadata["moe_expert_names"].split() == ["big", "small"]

    write(tmp_path / "cu_bulk.xyz", bulk("Cu", "fcc", a=CU_A, cubic=True))
    out = tmp_path / "validation"
    capsys.readouterr()
    rc = cli.main(["validate", str(package), "--test", str(tmp_path / "labelled.xyz"), "--bulk",
                   str(tmp_path / "cu_bulk.xyz"), "--out", str(out), "--strains=-1,1",
                   "--eos-strains=-2,-1,0,1,2", "--bulk-frames", "2", "--nve-steps", "10",
                   "--speed-repeats", "1", "--allow-fail"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "validation.json").read_text())
    assert report["inputs"]["bulk"]["formula"] == "Cu4"
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    for name in ("split_crystal_force", "eos_v0", "energy_disagreement_mean", "interface_penalty",
                 "nve_drift"):
        assert verdicts[name] in ("pass", "fail"), (name, verdicts[name])
