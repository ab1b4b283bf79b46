"""Starting an expert from a trained model: PretrainedExpert, frozen_experts, expert learning
rates, and the whole staged route (train an expert -> package it -> MoE with the packaged or
checkpointed expert -> train -> package -> compile -> the same numbers as eager)."""


import copy
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nequip_moe.integrations.model_files import load_model
from nequip_moe.nn import MixtureOfExpertsEnergy
from nequip_moe.train import expert_param_groups

from conftest import CONFIGS, run_tool
from test_cotraining import TWO_ALLEGRO_TINY
from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    ELEMENTS,
    build,
    element_graph,
    float64,
    half_labels,
    pt_co_slab,
    typed_graph,
)


@pytest.fixture(scope="module")
def trained_allegro(tmp_path_factory, pt_co_frames_file):
    """A plain Allegro model (element types) trained with nequip-train: the 'high-fidelity' model."""
    run_dir = tmp_path_factory.mktemp("allegro_run")
    config = OmegaConf.load(CONFIGS / "tiny_moe.yaml")
    config.data_file = str(pt_co_frames_file)
    config.data.transforms[0] = {
        "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
        "model_type_names": ELEMENTS,
    }
    config.data.stats_manager.type_names = ELEMENTS
    model = OmegaConf.to_container(config.training_module.model.experts.big)
    model.update(seed=3, model_dtype="float64", type_names=ELEMENTS, r_max=4.5)
    config.training_module.model = model
    OmegaConf.save(config, run_dir / "allegro.yaml")
    run_tool(
        ["nequip-train", "-cp", run_dir, "-cn", "allegro", f"hydra.run.dir={run_dir}"],
        cwd=run_dir,
    )
    return run_dir / "best.ckpt"


def moe_with_pretrained_big(ckpt, **options):
    small = {
        "_target_": "allegro.model.AllegroModel",
        "r_max": 4.0,
        "l_max": 1,
        "num_layers": 1,
        "num_scalar_features": 8,
        "num_tensor_features": 2,
        "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 4},
        "avg_num_neighbors": 10.0,
    }
    config = {
        "seed": 1,
        "r_max": 4.5,
        "type_names": list(TWO_ALLEGRO_TINY["type_names"]),
        "composite_types": copy.deepcopy(TWO_ALLEGRO_TINY["composite_types"]),
        "experts": {
            "big": {"_target_": "nequip_moe.model.PretrainedExpert", "path": str(ckpt)},
            "small": small,
        },
    }
    return build(config, **options), config


@pytest.fixture(scope="module")
def allegro_package(trained_allegro):
    """The trained Allegro model packaged with `nequip-package build`."""
    path = trained_allegro.parent / "allegro.nequip.zip"
    run_tool(["nequip-package", "build", trained_allegro, path], cwd=trained_allegro.parent)
    return path


@pytest.fixture(params=["checkpoint", "package"])
def pretrained_file(request, trained_allegro):
    if request.param == "checkpoint":
        return trained_allegro
    return request.getfixturevalue("allegro_package")


def test_pretrained_expert_keeps_its_energies_and_can_be_frozen(pretrained_file):
    moe, config = moe_with_pretrained_big(pretrained_file, frozen_experts=["big"])
    reference, _ = load_model(pretrained_file)
    atoms = pt_co_slab()
    labels = half_labels(atoms)
    out = moe(typed_graph(atoms, config, labels))
    ref = reference(element_graph(atoms, 4.5))
    big = torch.as_tensor(labels) == 0
    torch.testing.assert_close(
        out["atomic_energy"].view(-1)[big], ref["atomic_energy"].view(-1)[big], atol=1e-10, rtol=0
    )
    moe_energy = next(m for m in moe.modules() if isinstance(m, MixtureOfExpertsEnergy))
    assert not any(p.requires_grad for p in moe_energy.experts["big"].parameters())
    assert all(p.requires_grad for p in moe_energy.experts["small"].parameters())
    # frozen parameters are left out of the optimizer; the small expert gets its own rate
    groups = expert_param_groups(torch.nn.ModuleDict({"sole_model": moe}), {"small": 0.05})
    grouped = [id(p) for g in groups for p in g["params"]]
    assert not set(grouped) & {id(p) for p in moe_energy.experts["big"].parameters()}
    assert groups[-1]["lr"] == 0.05
    assert {id(p) for p in groups[-1]["params"]} == {
        id(p) for p in moe_energy.experts["small"].parameters()
    }
    # a packaged expert's classes are not the installed ones: still one force output (the
    # MoE's) and the Allegro expert still counts as strictly local
    assert sum(type(m).__name__ == "ForceStressOutput" for m in moe.modules()) == 1
    assert moe.metadata["moe_expert_halo_hops"].split() == ["0", "0"]


def test_pretrained_expert_errors(trained_allegro, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        moe_with_pretrained_big(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match=r"frozen_experts \['huge'\] are not experts"):
        moe_with_pretrained_big(trained_allegro, frozen_experts=["huge"])
    moe, _ = moe_with_pretrained_big(trained_allegro)
    with pytest.raises(ValueError, match=r"expert_lr names \['huge'\]"):
        expert_param_groups(moe, {"huge": 0.1})


def test_two_packaged_experts_are_refused_while_packaging(allegro_package, tmp_path, monkeypatch):
    """nequip-package reads every package through one importer: a second package would load
    the first one's model, so it is refused with a message naming both files."""
    import shutil

    from nequip_moe.model import moe_model

    other = tmp_path / "other.nequip.zip"
    shutil.copy(allegro_package, other)
    monkeypatch.setattr(moe_model, "workflow_state", lambda: "package")
    monkeypatch.setattr(moe_model, "_PACKAGES_LOADED_BY_NEQUIP_PACKAGE", set())
    moe_model.PretrainedExpert(str(allegro_package))
    moe_model.PretrainedExpert(str(allegro_package))  # the same package again is fine
    with pytest.raises(ValueError, match=r"two packages .*other\.nequip\.zip.*checkpoints"):
        moe_model.PretrainedExpert(str(other))


def test_staged_recipe_composes_to_a_pretrained_expert(trained_allegro):
    """configs/pt_co_staged.yaml (the recipe of pt_co_cotrain.yaml's header) composes to an
    expert node that is exactly the `PretrainedExpert` (none of the big expert's Allegro keys
    merged into it), frozen, and instantiates to the trained model."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        config = compose("pt_co_staged", overrides=[f"big_model={trained_allegro}"])
    model = config.training_module.model
    big = OmegaConf.to_container(model.experts.big, resolve=True)
    assert big == {"_target_": "nequip_moe.model.PretrainedExpert", "path": str(trained_allegro)}
    assert list(model.frozen_experts) == ["big"]
    assert OmegaConf.to_container(model.experts, resolve=False)["small"] == "${small_expert}"
    expert = instantiate(big)
    reference, _ = load_model(trained_allegro)
    data = element_graph(pt_co_slab(), 4.5)
    torch.testing.assert_close(
        expert(dict(data))["total_energy"], reference(dict(data))["total_energy"], atol=1e-10, rtol=0
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, pt_co_frames_file):
    """The tiny frames as the train/val/test files the Pt + CO configs read."""
    path = tmp_path_factory.mktemp("staged_data")
    for split in ("train", "val", "test"):
        shutil.copy(pt_co_frames_file, path / f"{split}.xyz")
    return path


def train_staged(run_dir, big_model, data_dir):
    """One epoch of `configs/pt_co_staged.yaml` with `big_model` as the frozen big expert."""
    run_dir.mkdir()
    run_tool(
        [
            "nequip-train", "-cp", CONFIGS, "-cn", "pt_co_staged",
            f"big_model={big_model}", f"data_dir={data_dir}", "max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=run_dir,
    )
    return run_dir / "last.ckpt"


def predictions(model, atoms, labels):
    out = model(typed_graph(atoms, TWO_ALLEGRO_TINY, labels, r_max=5.0))
    return {key: out[key].detach() for key in ("total_energy", "atomic_energy", "forces")}


@pytest.mark.parametrize("expert_source", ["package", "checkpoint"])
def test_staged_route_package_compile_same_numbers(
    expert_source, trained_allegro, allegro_package, data_dir, tmp_path
):
    """Expert (package or checkpoint) -> MoE trained with it frozen -> `nequip-package build`
    -> (for the packaged expert) `nequip-compile --target ase`: every form predicts the same,
    and the frozen expert's atoms keep the pretrained model's energies."""
    big_model = allegro_package if expert_source == "package" else trained_allegro
    ckpt = train_staged(tmp_path / "run", big_model, data_dir)
    package = tmp_path / "moe.nequip.zip"
    run_tool(["nequip-package", "build", ckpt, package], cwd=tmp_path)

    atoms = pt_co_slab()
    labels = half_labels(atoms)
    eager, metadata = load_model(ckpt)
    assert metadata["moe_expert_halo_hops"].split() == ["0", "0"]
    expected = predictions(eager, atoms, labels)
    forms = {"package": package}
    if expert_source == "package":  # one AOTInductor compile for the whole route
        compiled = tmp_path / "moe.nequip.pt2"
        run_tool(
            [
                "nequip-compile", package, compiled, "--mode", "aotinductor",
                "--device", "cpu", "--target", "ase",
            ],
            cwd=tmp_path,
        )
        forms["compiled"] = compiled
    for form, path in forms.items():
        model, _ = load_model(path)
        got = predictions(model, atoms, labels)
        for key, value in expected.items():
            torch.testing.assert_close(
                got[key], value, atol=1e-8, rtol=0, msg=lambda m: f"{form} {key}: {m}"
            )

    # frozen through training: the big expert's atoms have the pretrained model's energies
    reference, _ = load_model(big_model)
    ref = reference(element_graph(atoms, 4.5))["atomic_energy"].view(-1)
    big = torch.as_tensor(labels) == 0
    torch.testing.assert_close(
        expected["atomic_energy"].view(-1)[big], ref[big].detach(), atol=1e-10, rtol=0
    )


def test_frozen_expert_cache_trains_identically(trained_allegro, pt_co_frames_file, tmp_path):
    """`nequip-train` of configs/tiny_staged.yaml (frozen big expert, every agreement term, random
    interface cuts) for 3 epochs: with the frozen expert computed once per training frame and
    reused (the default) the logged losses and metrics of every step and epoch and the trained
    weights are those of evaluating it at every step."""
    import csv

    runs = {}
    for cache in ("true", "false"):
        run_dir = tmp_path / f"cache_{cache}"
        run_dir.mkdir()
        run_tool(
            [
                "nequip-train", "-cp", CONFIGS, "-cn", "tiny_staged",
                f"big_model={trained_allegro}", f"data_file={pt_co_frames_file}",
                "trainer.max_epochs=3", f"++training_module.model.frozen_expert_cache={cache}",
                "+trainer.logger={_target_:lightning.pytorch.loggers.CSVLogger,save_dir:.,name:log}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=run_dir,
        )
        (metrics_file,) = run_dir.glob("log/*/metrics.csv")
        with open(metrics_file) as f:
            runs[cache] = (run_dir, list(csv.DictReader(f)))
    (cached_dir, cached), (evaluated_dir, evaluated) = runs["true"], runs["false"]
    assert len(cached) == len(evaluated) > 6
    checked = 0
    for row, ref in zip(cached, evaluated):
        assert row.keys() == ref.keys()
        for key, value in row.items():
            if value == "" or key in ("epoch", "step") or "time" in key:
                assert value == ref[key] or "time" in key, key
                continue
            assert float(value) == pytest.approx(float(ref[key]), rel=1e-10, abs=1e-10), key
            checked += 1
    assert checked > 50
    # the cached run reused the frozen expert's outputs; the other never did
    reused = "reusing its outputs on training frames seen before"
    assert reused in (cached_dir / "train.log").read_text()
    assert reused not in (evaluated_dir / "train.log").read_text()
    from test_cotraining import assert_same_weights

    assert_same_weights(cached_dir / "last.ckpt", evaluated_dir / "last.ckpt", atol=1e-10)
