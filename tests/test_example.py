"""The Pt + CO example (``examples/pt_co``) in miniature, and its checks of user data.

The miniature runs every stage but compilation (about a minute per file; the compile commands
are those of the ``tiny_moe_*_pt2`` fixtures) with a few EMT-labelled frames, one epoch and
tiny experts, in the example's order: all-big, packaged, then the staged MoEs (with and without
agreement terms) with that package as their frozen big expert.
"""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from ase.io import read, write

from pt_co_frames import make_frames

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples" / "pt_co"
sys.path.insert(0, str(EXAMPLE_DIR))
import data as example_data  # noqa: E402
import run as example_run  # noqa: E402

# tiny experts: every model of the example shares these overrides
TINY_OVERRIDES = [
    f"--override={expert}_expert.{key}={value}"
    for expert in ("big", "small")
    for key, value in (
        ("l_max", 1),
        ("num_layers", 1),
        ("num_scalar_features", 8),
        ("num_tensor_features", 2),
    )
]


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """The example's output folder after a miniature run (runs once)."""
    out = tmp_path_factory.mktemp("pt_co")
    example_run.main(
        ["--out", str(out), "--no-compile", "--labeller", "emt", "--frame-scale", "0.1",
         "--max-epochs", "1", "--nve-steps", "5", "--adaptive-nve-steps", "0", "--distil", "2",
         "--columns", "1", "--seeds", "2",
         *TINY_OVERRIDES]
    )
    return out


def test_miniature_trains_in_stages_with_epoch_budgets(miniature):
    """Every model trained for its epochs (no wall clock); the staged MoEs load the packaged
    all-big model as their frozen big expert; each staged MoE trains with 2 seeds (--seeds)."""
    timings = json.loads((miniature / "timings.json").read_text())
    stages = list(timings)
    staged = ("moe", "moe_s2", "moe_noagree", "moe_noagree_s2")
    for name in staged:
        assert stages.index("package big") < stages.index(f"train {name}")
    assert "train moe_joint" not in stages and "train moe_s3" not in stages
    big_package = str((miniature / "models" / "big.nequip.zip").resolve())
    for name, config in (("moe", "pt_co_staged"), ("moe_s2", "pt_co_staged"),
                         ("moe_noagree", "pt_co_staged_noagree"),
                         ("moe_noagree_s2", "pt_co_staged_noagree")):
        overrides = (miniature / "train" / name / ".hydra" / "overrides.yaml").read_text()
        assert f"big_model={big_package}" in overrides and "max_epochs=1" in overrides
        assert "max_time" not in overrides
        # the second seed differs in the seed only: the same data split
        assert ("seed=124" in overrides) == name.endswith("_s2")
        hydra = (miniature / "train" / name / ".hydra" / "hydra.yaml").read_text()
        assert f"config_name: {config}" in hydra
    # distil stage: the staged MoEs, with and without agreement terms, train on the same
    # split: all-big's labels of bulk frames, 2 cubic cells (--distil) and 1 long one
    assert stages.index("package big") < stages.index("distil") < stages.index("train moe")
    for name in staged:
        overrides = (miniature / "train" / name / ".hydra" / "overrides.yaml").read_text()
        assert "train_file=train_distilled.xyz" in overrides
    train = read(miniature / "data" / "train.xyz", index=":")
    distilled = read(miniature / "data" / "train_distilled.xyz", index=":")
    assert len(distilled) == len(train) + 3 and len(distilled[-1]) == 96
    report = json.loads((miniature / "report.json").read_text())
    assert report["notes"]["labeller"] == "emt"
    for name, progress in report["notes"]["trained"].items():
        assert "stopped in epoch 1" in progress, name


def test_miniature_report_numbers_agree(miniature):
    """The report's numbers recomputed from one another and from its raw entries."""
    report = json.loads((miniature / "report.json").read_text())
    assert set(report["errors"]) == {"big", "small", "moe", "moe_s2", "moe_noagree",
                                     "moe_noagree_s2"}
    assert report["without_agreement"] == {"moe": "moe_noagree"}
    assert report["seeds"] == {"moe": ["moe", "moe_s2"], "moe_noagree": ["moe_noagree",
                                                                          "moe_noagree_s2"]}
    # each consistency claim of an MoE is judged on its worst seed, every seed shown
    for claim in report["claims"]:
        if claim.get("key") == "split_max_force" and claim["model"] == "moe":
            seeds = claim["seeds"]
            assert set(seeds) == {"moe", "moe_s2"} and claim["value"] == max(seeds.values())
            assert claim["holds"] == (max(seeds.values()) <= claim["threshold"])
            for name in seeds:
                assert report["models"][name] in claim["detail"]
    counts = report["atom_counts"]
    for errors in report["errors"].values():
        forces = errors["forces_mae_mev_per_a"]
        # the atom classes partition the test atoms: the overall MAE is their weighted mean
        by_class = sum(counts[c] * forces[c] for c in counts if counts[c])
        assert forces["all"] == pytest.approx(by_class / sum(counts.values()))
    assert {"reference", "big", "small", "moe:big_expert", "moe:small_expert"} <= set(
        report["eos"]["fits"]
    )
    volumes = report["eos"]["volumes"]
    if "V0" in report["eos"]["fits"]["reference"]:
        assert min(volumes) <= report["eos"]["fits"]["reference"]["V0"] <= max(volumes)

    speed = report["speedup"]
    f, c = speed["hf_fraction"], speed["cost_ratio_small_over_big"]
    seconds = speed["seconds"]
    assert c == pytest.approx(seconds["small"] / seconds["big"])
    assert speed["measured"] == pytest.approx(seconds["big"] / seconds["moe"])
    assert speed["ideal"] == pytest.approx(1.0 / (f + (1.0 - f) * c))
    assert speed["efficiency"] == pytest.approx(speed["measured"] / speed["ideal"])

    claims = {c["claim"]: c for c in report["claims"]}
    faster = next(c for text, c in claims.items() if text.endswith("is faster than all-big"))
    assert faster["holds"] == (speed["measured"] > 1.0)
    forces = {k: v["forces_mae_mev_per_a"] for k, v in report["errors"].items()}
    ratio = forces["moe"]["core"] / forces["big"]["core"]
    parity = next(c for text, c in claims.items() if "as accurate as all-big on the core" in text
                  and c["model"] == "moe")
    assert parity["value"] == pytest.approx(ratio)
    assert parity["holds"] == (ratio <= parity["threshold"])
    # the big expert's response beyond the small expert's cutoff on the same split crystal:
    # none, the experts share pt_co_moe.yaml's cutoff_radius (4.5 A)
    split = report["split_crystal"]
    beyond = split["beyond_small_cutoff"]
    assert beyond["r_cut"] == 4.5
    assert [r["strain"] for r in beyond["rows"]] == split["strains"]
    assert beyond["worst_max_force_mev_per_a"] == 0.0
    assert "beyond the small expert's cutoff (4.50 A)" in (miniature / "report.md").read_text()
    for name in ("report.md", "summary.png", "errors.png", "eos.png", "split_crystal.png",
                 "timings.json"):
        assert (miniature / name).is_file()


MINIATURE_ARGS = ["--no-compile", "--labeller", "emt", "--frame-scale", "0.1", "--max-epochs",
                  "1", "--nve-steps", "5", "--adaptive-nve-steps", "0", "--distil", "2",
                  "--columns", "1", "--seeds", "2", *TINY_OVERRIDES]


def test_rerun_skips_finished_stages(miniature, capsys):
    example_run.main(["--out", str(miniature), *MINIATURE_ARGS])
    printed = capsys.readouterr().out
    assert "train moe: up to date, skipped" in printed
    assert "report: up to date, skipped" in printed
    # the summary states every claim of the report with its verdict
    report = json.loads((miniature / "report.json").read_text())
    for claim in report["claims"]:
        verdict = "holds" if claim["holds"] else "DOES NOT HOLD"
        assert f"{verdict}: {claim['claim']} ({claim['detail']})" in printed


@pytest.mark.parametrize("name", ["big", "small"])
def test_baseline_configs_reuse_the_expert_architecture(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(EXAMPLE_DIR.parents[1] / "configs"), version_base="1.3"):
        moe = compose("pt_co_moe", overrides=[f"{name}_expert.l_max=1"])
        single = compose(f"pt_co_{name}", overrides=[f"{name}_expert.l_max=1"])
    model = OmegaConf.to_container(single.training_module.model, resolve=False)
    expert = OmegaConf.to_container(moe[f"{name}_expert"], resolve=False)
    assert model["_target_"] == "allegro.model.AllegroModel"
    assert model["l_max"] == 1  # overrides reach the baseline as they reach the MoE
    assert {k: model[k] for k in expert} == expert
    assert {"seed", "model_dtype", "type_names", "r_max"} <= set(model)
    assert list(single.model_type_names) == ["C", "O", "Pt"]
    assert single.data.transforms[0]._target_.endswith("ChemicalSpeciesToAtomTypeMapper")


def test_labeller_lattice_constant_is_the_calculators_equilibrium():
    from ase.calculators.emt import EMT

    a0 = example_data.labeller_lattice_constant(EMT())
    # at a0 the cubic cell is stress free; 1 % off, it is not
    for scale, stressed in ((1.0, False), (1.01, True)):
        atoms = example_data.pt_bulk(a0 * scale, repeat=1)
        atoms.calc = EMT()
        pressure = -atoms.get_stress()[:3].mean()
        assert (abs(pressure) > 1e-3) == stressed, (scale, pressure)
    # a guess far from the potential's minimum is refused, naming the lattice constant
    with pytest.raises(ValueError, match="lattice constant .* outside the range"):
        example_data.labeller_lattice_constant(EMT(), guess=3.5)


def test_generated_frames_have_labels_and_heldout_eos(tmp_path):
    summary = example_data.make_dataset(tmp_path, example_data.FrameCounts().scaled(0.1))
    assert summary["frames"]["test"] > 0 and summary["eos_frames"] > 0
    # the written summary names how the frames were labelled (the report quotes it)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["labeller"] == "emt"
    assert written["buffer_width"] == example_data.DEFAULT_BUFFER_WIDTH
    # the held-out EOS set is centred on the labeller's own lattice constant
    eos = read(tmp_path / "eos.xyz", index=":")
    middle = eos[len(eos) // 2]
    assert np.isclose(middle.cell[0, 0] / 2, written["a0"], rtol=1e-6)
    assert abs(np.mean(middle.get_stress()[:3])) < 1e-3
    # ... and reaches past the bulk volumes trained on, at both ends
    low, high = written["train_bulk_strain"]
    assert min(written["eos_strains"]) < low < high < max(written["eos_strains"])
    frames = example_data.read_user_frames(tmp_path / "train.xyz")
    for atoms in frames:
        expert = atoms.arrays["expert"]
        if atoms.info["kind"].startswith("bulk"):
            assert (expert == 1).all()
        assert (expert[atoms.numbers != 78] == 0).all()  # C and O always on the big expert


def _run_on_user_data(tmp_path, frames, *extra):
    path = tmp_path / "user.xyz"
    write(path, frames)
    out = tmp_path / "out"
    example_run.main(["--data", str(path), "--out", str(out), *extra])
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.calc.results.pop("forces"), "has no forces"),
        (lambda a: a.arrays.pop("expert"), "no per-atom `expert` array"),
        (lambda a: a.set_chemical_symbols(["Cu"] * len(a)), "contains Cu"),
    ],
    ids=["no_forces", "no_expert_no_rule", "unknown_species"],
)
def test_bad_user_data_fails_before_training(tmp_path, change, message):
    frames = make_frames(num_slabs=2, num_bulk=1)
    change(frames[-1])
    with pytest.raises(ValueError, match=message):
        _run_on_user_data(tmp_path, frames)
    assert not (tmp_path / "out" / "train").exists()


def test_user_rules_label_frames(tmp_path):
    frames = make_frames(num_slabs=3, num_bulk=0)
    for atoms in frames:
        del atoms.arrays["expert"]
    path = tmp_path / "user.xyz"
    write(path, frames)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {kind: near, expert: big, species: [C, O], cutoff: 4.0}\n")
    labelled = example_data.read_user_frames(path, rules)
    for atoms in labelled:
        assert set(np.unique(atoms.arrays["expert"])) == {0, 1}


@pytest.mark.skipif(
    importlib.util.find_spec("sevenn") is not None, reason="SevenNet is installed"
)
def test_sevenn_labeller_says_how_to_install():
    with pytest.raises(RuntimeError, match="pip install sevenn==0.13.0"):
        example_data.make_labeller("sevenn")


def test_co_trained_moe_trains_on_distilled_bulk_by_default():
    """The staged co-trained MoE's training split carries all-big's labels on bulk and extra
    bulk cells it labels by default; with the user's data only the relabelling."""
    import argparse

    def sizes(**options):
        args = dict(full=False, max_epochs=None, epochs=[], frame_scale=None, nve_steps=None,
                    adaptive_nve_steps=None, distil=None, data=None)
        return example_run.run_sizes(argparse.Namespace(**{**args, **options}))

    assert sizes().distil_cells == example_run.QUICK.distil_cells > 0
    assert sizes(full=True).distil_cells == example_run.FULL.distil_cells > sizes().distil_cells
    assert sizes(distil=7).distil_cells == 7
    assert sizes(data="frames.xyz").distil_cells == 0
    moe = next(m for m in example_run.MODELS if m.name == "moe")
    overrides = example_run.model_overrides(
        example_run.Layout(pathlib.Path("out")), sizes(), moe
    )
    assert f"train_file={example_run.DISTILLED_TRAIN}" in overrides


@pytest.mark.parametrize("flag", ["--distil", "--columns"])
@pytest.mark.parametrize("cells", ["3", "-1"])
def test_bad_distil_is_refused_before_anything_runs(tmp_path, flag, cells):
    """Bulk cells to add: never negative, and fcc Pt only with the generated data."""
    frames = tmp_path / "frames.xyz"
    frames.write_text("")
    with pytest.raises(ValueError, match=flag):
        example_run.main(["--out", str(tmp_path / "out"), "--data", str(frames), flag, cells])
    assert not (tmp_path / "out").exists()


def test_pipeline_reruns_exactly_what_changed(tmp_path, capsys):
    """A job is skipped when its outputs exist and its inputs are unchanged; a changed option
    or upstream output reruns it and the jobs after it, naming what changed."""
    from pipeline import Job, Pipeline

    option = {"value": 1}
    runs = []

    def jobs():
        def first(threads):
            runs.append("first")
            (tmp_path / "a.txt").write_text(str(option["value"]))

        def second(threads):
            runs.append("second")
            (tmp_path / "b.txt").write_text((tmp_path / "a.txt").read_text() * 2)

        def other(threads):
            runs.append("other")
            (tmp_path / "c.txt").write_text("c")

        return [Job("first", [tmp_path / "a.txt"], first, {"option": option["value"]}),
                Job("second", [tmp_path / "b.txt"], second,
                    lambda: {"a": tmp_path / "a.txt"}, after=["first"]),
                Job("other", [tmp_path / "c.txt"], other, {})]

    Pipeline(tmp_path, budget=1).run(jobs())
    assert sorted(runs) == ["first", "other", "second"]
    runs.clear()
    Pipeline(tmp_path, budget=1).run(jobs())
    assert runs == [] and capsys.readouterr().out.count("up to date, skipped") == 3
    option["value"] = 2
    Pipeline(tmp_path, budget=1).run(jobs())
    printed = capsys.readouterr().out
    assert sorted(runs) == ["first", "second"]
    assert "first (inputs changed: option" in printed and "second (inputs changed: a" in printed
    assert (tmp_path / "b.txt").read_text() == "22"
    # an output deleted by hand is made again, and so are the jobs after it only if it changed
    runs.clear()
    (tmp_path / "a.txt").unlink()
    Pipeline(tmp_path, budget=1).run(jobs())
    assert runs == ["first"]


def test_pipeline_keeps_to_the_thread_budget(tmp_path):
    """Independent jobs run side by side, never more threads at once than the budget; an
    exclusive job runs alone with all of them; a failure stops new jobs and is raised."""
    import threading
    import time as _time

    from pipeline import Job, Pipeline

    lock, state = threading.Lock(), {"threads": 0, "most": 0, "exclusive_alone": True}

    def work(name, exclusive=False):
        def action(threads):
            with lock:
                if exclusive and state["threads"]:
                    state["exclusive_alone"] = False
                state["threads"] += threads
                state["most"] = max(state["most"], state["threads"])
            _time.sleep(0.2)
            (tmp_path / name).write_text(str(threads))
            with lock:
                state["threads"] -= threads
        return action

    jobs = [Job(f"j{k}", [tmp_path / f"j{k}"], work(f"j{k}")) for k in range(5)]
    jobs.append(Job("x", [tmp_path / "x"], work("x", True), after=["j0"], exclusive=True))
    Pipeline(tmp_path, budget=2).run(jobs)
    assert state["most"] == 2 and state["exclusive_alone"]
    assert (tmp_path / "x").read_text() == "2"  # the whole budget
    assert {(tmp_path / f"j{k}").read_text() for k in range(5)} <= {"1", "2"}

    def fail(threads):
        raise RuntimeError("broken job")

    started = []
    bad = [Job("bad", [tmp_path / "bad"], fail),
           Job("later", [tmp_path / "later"], lambda t: started.append(t), after=["bad"])]
    with pytest.raises(RuntimeError, match="broken job"):
        Pipeline(tmp_path / "fail", budget=2).run(bad)
    assert started == [] and not (tmp_path / "fail" / "stamps.json").exists()


def test_thread_budget_is_shared_not_multiplied(monkeypatch):
    import threads

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.thread_budget() == 2
    assert threads.split_budget(2, 6) == (2, 1) and threads.split_budget(4, 2) == (2, 2)
    assert threads.split_budget(2, 1) == (1, 2)
    env = threads.child_environment(1)
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    # large tensors stay in the heap instead of being mapped (and faulted in) afresh
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) == 32 * 1024 * 1024
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        threads.thread_budget()


def test_md_trajectories_stay_in_one_split():
    """Consecutive MD snapshots of one trajectory never land in two splits; other kinds are
    split frame by frame."""
    from ase import Atoms

    frames = [Atoms("Pt", info={"kind": "md", "trajectory": k // 3}) for k in range(12)]
    frames += [Atoms("Pt", info={"kind": "bulk_eos"}) for _ in range(20)]
    for index, atoms in enumerate(frames):
        atoms.info["index"] = index
    splits = example_data.split_by_kind(frames, seed=3)
    where = {}
    for name, members in splits.items():
        for atoms in members:
            where.setdefault(atoms.info.get("trajectory", f"f{atoms.info['index']}"), set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    md = {name: {a.info["trajectory"] for a in members if a.info["kind"] == "md"}
          for name, members in splits.items()}
    assert all(md[name] for name in ("train", "val", "test"))  # 4 trajectories reach all three
    assert example_data.trajectory_lengths(10) == [3, 3, 2, 2]
    assert sum(len(m) for m in splits.values()) == len(frames)


def test_readme_results_are_the_rendered_reference():
    """The README's results block is the rendering of the committed reference run's
    report.json and timings.json (readme.py), not numbers typed by hand."""
    import readme

    text = readme.README.read_text()
    assert (readme.REFERENCE / "report.json").is_file(), "no reference run committed"
    assert readme.readme_with(text, readme.reference_block()) == text, (
        "README.md differs from the rendering of examples/pt_co/reference/: run "
        "python examples/pt_co/readme.py"
    )
    # every claim of the reference run is in it, with its verdict
    report = json.loads((readme.REFERENCE / "report.json").read_text())
    for claim in report["claims"]:
        assert readme._cell(claim["claim"]) in text


def test_readme_check_fails_when_a_reference_number_changes(tmp_path, monkeypatch):
    """The control of the test above: ``readme.py --check`` refuses a README whose results
    block is not the rendering of the reference files, e.g. after one number changed."""
    import readme

    reference = tmp_path / "reference"
    reference.mkdir()
    report = {"notes": {"labeller": "emt", "sizes": {"frame_scale": 0.1, "seeds": 3}},
              "claims": [{"claim": "split crystal max |F| <= 20 meV/A", "model": "moe",
                          "value": 12.5, "threshold": 20.0, "holds": True,
                          "seeds": {"moe": 12.5, "moe_s2": 9.0, "moe_s3": 7.1}}]}
    (reference / "timings.json").write_text(json.dumps({"data": 10.0, "total (wall)": 60.0}))
    (reference / "report.json").write_text(json.dumps(report))
    readme_file = tmp_path / "README.md"
    readme_file.write_text(f"# title\n\n{readme.BEGIN}\n{readme.END}\n\nmore text\n")
    monkeypatch.setattr(readme, "REFERENCE", reference)
    monkeypatch.setattr(readme, "README", readme_file)
    assert readme.main(["--check"]) == 1  # the block is still empty
    assert readme.main([]) == 0 and readme.main(["--check"]) == 0
    text = readme_file.read_text()
    assert "moe_s2: 9" in text and "more text" in text and "max \\|F\\|" in text
    report["claims"][0]["value"] = 12.6
    (reference / "report.json").write_text(json.dumps(report))
    assert readme.main(["--check"]) == 1
    assert readme_file.read_text() == text  # --check writes nothing
