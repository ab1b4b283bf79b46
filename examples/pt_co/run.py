"""The Pt + CO Mixture-of-Experts example end to end (``make example``).

Jobs (``pipeline.py``: each skipped when its outputs exist and its inputs are unchanged,
rerun when an option, a config file or an upstream output changed; independent jobs side by
side within the thread budget, ``threads.py``):

1. data: ``data.py`` writes labelled frames with expert labels to ``out/data/``
2. train, package, compile, per model: ``nequip-train -cn CONFIG`` -> ``out/train/NAME/``,
   ``nequip-package build`` -> ``out/models/NAME.nequip.zip``, ``nequip-compile`` ->
   ``out/models/NAME.TARGET.nequip.pt2``. ``big`` (all-big, ``pt_co_big``) and ``small``
   (all-small, ``pt_co_small``) first, side by side; then the staged MoEs, whose frozen big
   expert is the packaged all-big model and whose small expert starts from the trained
   all-small model, ``moe`` (``pt_co_staged``, co-trained) and ``moe_noagree``
   (``pt_co_staged_noagree``, no agreement terms), each with ``--seeds`` training seeds
   (``moe``, ``moe_s2``, ``moe_s3``, ...), all on the training split distilled by all-big
   (``distil``: ``out/data/train_distilled.xyz``); with ``--joint`` also ``moe_joint``
3. bench: ``nequip-moe bench`` of the compiled MoE and its experts alone (``c``, the cost
   weights) -> ``out/models/bench.json``; deploy: ``nequip-moe deploy`` of the MoE
   (``pair_allegro``, its LAMMPS input balanced with those cost weights) and of the gated
   MoE of all-big and all-small (``out/models/gated.*``)
4. report: ``report.py`` -> ``out/report.md``, ``out/report.json`` and PNGs

Every training run is bounded by its number of epochs (never by wall clock) and seeded, so
runs on differently loaded machines train the same models. ``--full`` (or the environment
variable ``PT_CO_FULL=1``) trains at realistic sizes, meant for a GPU.
"""

import threads  # noqa: F401,I001  (first: OpenMP's wait policy before torch starts)

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

import data
from nequip_moe.integrations.compile import COMPILE_THREADS
from pipeline import Job, Pipeline

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parent
CONFIG_DIR = EXAMPLE_DIR.parents[1] / "configs"
# the example's own code each job's outputs depend on (its digest is an input)
DATA_CODE = ("data.py", "structures.py", "labelling.py")
REPORT_CODE = ("report.py", "measures.py", "claims.py", "render.py", "adaptive.py",
               "adaptive_models.py", "adaptive_nve.py", "adaptive_measures.py",
               "adaptive_render.py", "production.py", "structures.py", "data.py")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big a run is. Training is bounded by epochs only (plus the configs' early stopping,
    which also counts epochs), never by wall clock.

    Args:
        frame_scale: multiplies every count of ``data.FrameCounts``
        epochs: epochs of each model's training run, by model name (a model not named:
            its config's ``max_epochs``); seeds of a model train as long as it
        nve_steps: steps of each NVE run in the report
        adaptive_nve_steps: steps of each NVE run of the report's gated-MoE section
            (``adaptive.py``; 0 leaves the section out)
        distil_cells: strained bulk cells the packaged all-big model labels for the staged
            MoEs' training split (``data.distilled_frames``)
        distil_strain: their largest isotropic linear strain
        seeds: training seeds of each staged MoE (the data split stays the same)
        production_steps: timed LAMMPS MD steps of the production-size section (0: left out)
    """

    frame_scale: float
    epochs: Dict[str, int]
    nve_steps: int
    adaptive_nve_steps: int = 0
    distil_cells: int = 0
    distil_strain: float = 0.05
    seeds: int = 3
    production_steps: int = 3

    def max_epochs(self, name: str) -> Optional[int]:
        return self.epochs.get(name)


# the staged MoEs' epochs: the frozen big expert's outputs are computed once per frame
# (MoEModel's frozen-expert cache), so a staged epoch costs a fraction of an all-big one and
# the small expert gets 40 epochs (1,600 optimizer steps at the default size) to converge on
# the agreement terms. The distilled bulk cells (the big expert's labels, one forward each)
# reach +-5 % isotropic strain, past the labeller's +-3 % and the report's +-4 %: beyond the
# labeller's volumes the small expert then learns the big expert's extrapolation (NOTES.md)
QUICK = Sizes(
    frame_scale=1.0,
    epochs={"big": 25, "small": 30, "moe": 40, "moe_noagree": 40, "moe_joint": 12},
    nve_steps=200,
    adaptive_nve_steps=600,
    distil_cells=60,
)
FULL = Sizes(frame_scale=5.0, epochs={}, nve_steps=2000, adaptive_nve_steps=2000,
             distil_cells=200, production_steps=20)


@dataclasses.dataclass(frozen=True)
class Model:
    """One model of the comparison.

    Args:
        name: output name (``out/train/NAME``, ``out/models/NAME.*``)
        config: training config in ``configs/``
        title: name in the report
        compile_targets: ``nequip-compile`` targets the report uses
        frozen_big: the model's big expert is the packaged all-big model (``big_model=``),
            frozen, and its small expert starts from the trained all-small model
            (``small_model=``, its checkpoint), so both are trained first
        joint: trained only with ``--joint`` (both experts from scratch)
        distillable: trains on the training split distilled by the frozen big expert
            (``data.distilled_frames``: its labels on shared bulk, plus bulk cells)
        seed: training seed (``None``: the config's); the data split is the same for all
        family: the model this one is a seed of (``None``: itself)
    """

    name: str
    config: str
    title: str
    compile_targets: Tuple[str, ...] = ()
    frozen_big: bool = False
    joint: bool = False
    distillable: bool = False
    seed: Optional[int] = None
    family: Optional[str] = None

    @property
    def family_name(self) -> str:
        return self.family or self.name


# in training order: the staged MoEs need the packaged all-big model
MODELS = (
    Model("big", "pt_co_big", "all-big", ("ase", "pair_allegro")),
    Model("small", "pt_co_small", "all-small", ("ase",)),
    Model("moe", "pt_co_staged", "MoE (staged, co-trained)", ("ase",),
          frozen_big=True, distillable=True),
    # pt_co_staged.yaml with the agreement coefficients 0, without computing the unused terms;
    # the same (distilled) training split, so that the comparison isolates the agreement terms
    Model("moe_noagree", "pt_co_staged_noagree", "MoE (staged, no agreement)", frozen_big=True,
          distillable=True),
    Model("moe_joint", "pt_co_cotrain", "MoE (joint, co-trained)", joint=True),
)

# the distilled training split of the staged MoEs, in the data folder
DISTILLED_TRAIN = "train_distilled.xyz"
# co-trained MoE -> the same MoE trained without agreement terms (split-crystal comparison)
WITHOUT_AGREEMENT = {"moe": "moe_noagree"}
# the models nequip_moe.benchmarking times: the MoE and its two experts alone
SPEED_MODELS = ("moe", "big", "small")
# the bench's structure: a Pt(111) + CO slab of 2,080 atoms (structures.BenchSlab(16))
BENCH_SLAB_SIZE = 16


def config_seed() -> int:
    """The ``seed`` of ``configs/pt_co_moe.yaml`` (every config's, through its defaults)."""
    return int(yaml.safe_load((CONFIG_DIR / "pt_co_moe.yaml").read_text())["seed"])


def with_seeds(models: Sequence[Model], seeds: int) -> List[Model]:
    """``models`` with ``seeds - 1`` more training seeds of each staged MoE (``NAME_sK``,
    seed = the config's + K - 1); the extra seeds are evaluated from their packages."""
    out = []
    for model in models:
        out.append(model)
        if model.frozen_big:
            out += [dataclasses.replace(model, name=f"{model.name}_s{k}", seed=config_seed() + k - 1,
                                        family=model.name, compile_targets=())
                    for k in range(2, seeds + 1)]
    return out


def config_files(config: str) -> List[pathlib.Path]:
    """A config and every config of its defaults list, recursively."""
    path = CONFIG_DIR / f"{config}.yaml"
    files = [path]
    for entry in yaml.safe_load(path.read_text()).get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            files += config_files(entry)
    return files


@dataclasses.dataclass
class Layout:
    """Where every job writes, under ``out``."""

    out: pathlib.Path

    @property
    def data(self) -> pathlib.Path:
        return self.out / "data"

    @property
    def models(self) -> pathlib.Path:
        return self.out / "models"

    def train_dir(self, model: Model) -> pathlib.Path:
        return self.out / "train" / model.name

    def checkpoint(self, model: Model) -> pathlib.Path:
        return self.train_dir(model) / "best.ckpt"

    def package(self, model: Model) -> pathlib.Path:
        return self.models / f"{model.name}.nequip.zip"

    def compiled(self, model: Model, target: str) -> pathlib.Path:
        return self.models / f"{model.name}.{target}.nequip.pt2"

    @property
    def deployed_moe(self) -> pathlib.Path:
        """The MoE for LAMMPS, from ``nequip-moe deploy`` (beside ``moe.lammps.in``)."""
        return self.models / "moe_pair_allegro.nequip.pt2"

    @property
    def bench(self) -> pathlib.Path:
        return self.models / "bench.json"

    def data_files(self, train_file: str = "train.xyz") -> Dict[str, pathlib.Path]:
        return {name: self.data / name for name in (train_file, "val.xyz", "test.xyz")}


def code(*names: str) -> Dict[str, pathlib.Path]:
    """The example's source files as job inputs."""
    return {f"code {name}": EXAMPLE_DIR / name for name in names}


def by_name(name: str) -> Model:
    return next(m for m in MODELS if m.name == name)


# ---------------------------------------------------------------- jobs


def data_job(layout: Layout, sizes: Sizes, labeller: str, user_data, rules) -> Job:
    """The example's generated frames, or a user's extxyz checked and split."""
    out = layout.data
    counts = data.FrameCounts().scaled(sizes.frame_scale)

    def make(threads_):
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        if user_data is None:
            summary = data.make_dataset(tmp, counts, labeller, workers=threads_)
        else:
            frames = data.read_user_frames(user_data, rules)
            summary = data.write_dataset(tmp, data.split_by_kind(frames), eos=[])
        # the data folder also holds the distilled split: replace only what this job writes
        out.mkdir(parents=True, exist_ok=True)
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
        tmp.rmdir()
        print(f"    frames {summary['frames']}, test high-fidelity fraction "
              f"{summary['test_hf_fraction']:.2f}")

    inputs = {"labeller": labeller, "counts": dataclasses.asdict(counts), **code(*DATA_CODE)}
    if user_data is not None:
        inputs.update({"labeller": None, "user data": pathlib.Path(user_data),
                       "rules": pathlib.Path(rules) if rules else None})
    outputs = [out / f"{split}.xyz" for split in data.SPLITS] + [out / "summary.json"]
    return Job("data", outputs, make, inputs, exclusive=True)


def distil_job(layout: Layout, sizes: Sizes, columns: int, device: str) -> Job:
    """The training split distilled by the packaged all-big model (the staged MoEs' frozen
    big expert): its labels on the wholly shared (bulk) frames, on ``distil_cells`` new cubic
    bulk cells and on ``columns`` long ones."""
    out = layout.data / DISTILLED_TRAIN
    package = layout.package(by_name("big"))

    def distil(threads_):
        from ase.io import read, write
        from nequip.integrations.ase import NequIPCalculator
        from nequip_moe.compat.nequip_api import calculator_from_saved_model

        from threads import use_threads

        use_threads(threads_)
        calc = calculator_from_saved_model(
            NequIPCalculator, str(package), device=device, chemical_species_to_atom_type_map=True
        )
        a0 = json.loads((layout.data / "summary.json").read_text())["a0"]
        frames = data.distilled_frames(
            read(layout.data / "train.xyz", index=":"), calc, sizes.distil_cells,
            columns=columns, a0=a0, isotropic_strain=sizes.distil_strain,
        )
        write(out.with_name(out.name + ".tmp.xyz"), frames, format="extxyz")
        os.replace(out.with_name(out.name + ".tmp.xyz"), out)
        print(f"    {len(frames)} training frames, {sizes.distil_cells} cubic and {columns} "
              "long bulk cells")

    inputs = {"big package": package, "train.xyz": layout.data / "train.xyz",
              "summary.json": layout.data / "summary.json", "cells": sizes.distil_cells,
              "strain": sizes.distil_strain,
              "columns": columns, "device": device, **code(*DATA_CODE)}
    return Job("distil", [out], distil, inputs, after=["package big"], exclusive=True)


def model_overrides(layout: Layout, sizes: Sizes, model: Model) -> List[str]:
    """``nequip-train`` overrides of one model: its epochs, seed, frozen big expert, split."""
    overrides = []
    epochs = sizes.max_epochs(model.name) or sizes.max_epochs(model.family_name)
    if epochs is not None:
        overrides.append(f"max_epochs={epochs}")
    if model.seed is not None:
        overrides.append(f"seed={model.seed}")
    if model.frozen_big:
        overrides.append(f"big_model={layout.package(by_name('big')).resolve()}")
        # the small expert starts from all-small (its checkpoint: one package per MoE)
        overrides += [f"small_model={layout.checkpoint(by_name('small')).resolve()}",
                      "training_module.model.experts.small=${pretrained_small_expert}"]
    if model.distillable:
        overrides.append(f"train_file={DISTILLED_TRAIN}")
    return overrides


def model_jobs(layout: Layout, pipeline: Pipeline, model: Model, overrides: Sequence[str],
               device: Optional[str]) -> List[Job]:
    """Train, package and compile (what the report uses, for ``device``; ``None``: nothing)."""
    run_dir = layout.train_dir(model)

    def train(threads_):
        partial = run_dir.with_name(run_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pipeline.command(
            f"train_{model.name}",
            ["nequip-train", "-cp", CONFIG_DIR, "-cn", model.config, *overrides,
             f"hydra.run.dir={partial.resolve()}"],
            threads_,
        )
        shutil.rmtree(run_dir, ignore_errors=True)
        partial.rename(run_dir)

    train_file = DISTILLED_TRAIN if model.distillable else "train.xyz"
    inputs = {**{f"config {p.name}": p for p in config_files(model.config)},
              "overrides": list(overrides), **layout.data_files(train_file)}
    after = ["data"]
    if model.frozen_big:
        inputs.update(big=layout.package(by_name("big")), small=layout.checkpoint(by_name("small")))
        after = ["package big", "train small"]
    if train_file == DISTILLED_TRAIN:
        after.append("distil")
    jobs = [Job(f"train {model.name}", [layout.checkpoint(model)], train, inputs, after)]

    package = layout.package(model)

    def build_package(threads_):
        package.parent.mkdir(parents=True, exist_ok=True)
        tmp = package.with_name("tmp_" + package.name)
        pipeline.command(f"package_{model.name}",
                         ["nequip-package", "build", layout.checkpoint(model), tmp], threads_)
        os.replace(tmp, package)

    jobs.append(Job(f"package {model.name}", [package], build_package,
                    {"checkpoint": layout.checkpoint(model)}, [f"train {model.name}"]))
    for target in model.compile_targets if device is not None else ():
        compiled = layout.compiled(model, target)

        # compiled for the threads the files run with, whatever this job's share of the
        # machine (Inductor writes them into its kernels: nequip_moe.integrations.compile)
        def compile_(threads_, compiled=compiled, target=target):
            tmp = compiled.with_name("tmp_" + compiled.name)
            pipeline.command(
                f"compile_{model.name}_{target}",
                ["nequip-compile", package, tmp, "--mode", "aotinductor", "--device", device,
                 "--target", target], COMPILE_THREADS,
            )
            os.replace(tmp, compiled)

        jobs.append(Job(f"compile {model.name} --target {target}", [compiled], compile_,
                        {"package": package, "device": device, "compile_threads": COMPILE_THREADS},
                        [f"package {model.name}"]))
    return jobs


def bench_jobs(layout: Layout, pipeline: Pipeline, device: str) -> List[Job]:
    """``nequip-moe bench`` of the compiled MoE and its experts alone on the 2,080-atom slab
    at the test split's high-fidelity fraction, one thread, alone on the machine (its cost
    weights balance the MoE's LAMMPS runs); then ``nequip-moe deploy`` of the MoE for
    ``pair_allegro`` with those weights."""
    slab = layout.models / "bench_slab.xyz"
    files = {name: layout.compiled(by_name(name), "ase") for name in SPEED_MODELS}
    summary = layout.data / "summary.json"

    # c from one thread's CPU time on CPU: the other jobs of a shared machine do not enter it
    # (wall-clock benches of the same architectures beside other jobs gave c = 0.050 and 0.041)
    clock = "cpu" if device == "cpu" else "wall"

    def bench(threads_):
        from ase.io import write

        from nequip_moe.benchmarking.structures import bench_slabs

        hf_fraction = json.loads(summary.read_text())["test_hf_fraction"]
        write(slab, bench_slabs([BENCH_SLAB_SIZE]), format="extxyz")
        pipeline.command(
            "bench",
            ["nequip-moe", "bench", "--structure", slab,
             *[arg for name, path in files.items() for arg in (f"--{name}", path)],
             "--fractions", f"{hf_fraction:.3f}", "--repeats", "3", "--threads", "1",
             "--clock", clock, "--no-memory", "--no-training", "--no-plots", "--device", device,
             "--out-dir", layout.models / "bench", "--json", layout.bench],
            1,
        )

    def deploy(threads_):
        pipeline.command(
            "deploy_moe",
            ["nequip-moe", "deploy", layout.package(by_name("moe")), "--targets", "pair_allegro",
             "--device", device, "--out-dir", layout.models, "--cost-weights", layout.bench,
             "--data-file", "moe.data"],
            threads_,
        )

    compiled_after = [f"compile {name} --target ase" for name in SPEED_MODELS]
    return [
        Job("bench", [layout.bench], bench, {**files, "summary.json": summary, "clock": clock},
            compiled_after, exclusive=True),
        Job("deploy moe", [layout.deployed_moe, layout.models / "moe.lammps.in"], deploy,
            {"package": layout.package(by_name("moe")), "bench": layout.bench,
             "device": device, "compile_threads": COMPILE_THREADS}, ["bench"]),
    ]


def gated_jobs(layout: Layout, pipeline: Pipeline, device: str) -> List[Job]:
    """The gated MoE of all-big and all-small (``adaptive.py``'s), as a checkpoint
    (``out/models/gated.ckpt``) that ``nequip-moe deploy`` packages, compiles (``ase``,
    ``pair_allegro``) and writes the LAMMPS input of: the model the report's gated-MoE
    section praises, ready for LAMMPS."""
    checkpoint = layout.models / "gated.ckpt"
    big, small = layout.package(by_name("big")), layout.checkpoint(by_name("small"))

    def write(threads_):
        from adaptive_models import write_gated_checkpoint

        write_gated_checkpoint(checkpoint, big, small, layout.data / "test.xyz")

    def deploy(threads_):
        pipeline.command(
            "deploy_gated",
            ["nequip-moe", "deploy", checkpoint, "--targets", "pair_allegro", "ase",
             "--device", device, "--out-dir", layout.models, "--data-file", "gated.data"],
            threads_,
        )

    return [
        # builds the model in this process, no computing: beside the running jobs
        Job("gated checkpoint", [checkpoint], write,
            {"big": big, "small": small, **code("adaptive_models.py")},
            ["package big", "train small"]),
        Job("deploy gated", [layout.models / f"gated_{t}.nequip.pt2" for t in ("ase", "pair_allegro")]
            + [layout.models / "gated.lammps.in"], deploy,
            {"checkpoint": checkpoint, "device": device, "compile_threads": COMPILE_THREADS},
            ["gated checkpoint"]),
    ]


def report_job(layout: Layout, pipeline: Pipeline, models: Sequence[Model], sizes: Sizes,
               device: str, compiled: bool, notes: Dict) -> Job:
    """Evaluate every model (compiled files where there are, the extra seeds from their
    packages) and write the report."""

    def evaluated_file(model: Model) -> pathlib.Path:
        path = layout.compiled(model, "ase")
        return path if compiled and "ase" in model.compile_targets else layout.package(model)

    families: Dict[str, List[str]] = {}
    for model in models:
        families.setdefault(model.family_name, []).append(model.name)

    def report(threads_):
        from measures import ReportModel
        from report import make_report
        from threads import use_threads

        use_threads(1)  # timings are single-thread
        make_report(
            [ReportModel(m.name, m.title if m.family is None else f"{m.title}, seed {m.seed}",
                         evaluated_file(m), device) for m in models],
            layout.data, layout.out,
            nve_steps=sizes.nve_steps,
            bench_file=layout.bench if compiled else None,
            # without compiled files the report times the packages itself (eager)
            speed_files=(None if compiled else
                         {name: layout.package(by_name(name)) for name in SPEED_MODELS}),
            pair_allegro_file=layout.deployed_moe if compiled else None,
            notes={**notes, "trained": training_progress(layout, models),
                   "stage seconds": dict(pipeline.timings)},
            device=device,
            without_agreement={name: partner for name, partner in WITHOUT_AGREEMENT.items()
                               if name in families and partner in families},
            seeds={name: members for name, members in families.items() if len(members) > 1},
            adaptive=(dict(big_file=layout.package(by_name("big")),
                           small_file=layout.package(by_name("small")), data_dir=layout.data,
                           out_dir=layout.out, nve_steps=sizes.adaptive_nve_steps, device=device)
                      if sizes.adaptive_nve_steps > 0 else None),
            big_package=layout.package(by_name("big")),
            production=(dict(moe_file=layout.deployed_moe,
                             big_file=layout.compiled(by_name("big"), "pair_allegro"),
                             steps=sizes.production_steps, device=device)
                        if compiled and sizes.production_steps > 0 else None),
        )

    inputs = {f"model {m.name}": evaluated_file(m) for m in models}
    inputs.update({"data": layout.data, "sizes": dataclasses.asdict(sizes), "device": device,
                   "compiled": compiled, **code(*REPORT_CODE)})
    after = [f"package {m.name}" for m in models] + [
        f"compile {m.name} --target {t}" for m in models for t in m.compile_targets if compiled]
    if compiled:
        inputs.update(bench=layout.bench, deployed=layout.deployed_moe)
        after += ["deploy moe", "deploy gated"]
    return Job("report", [layout.out / "report.json"], report, inputs, after, exclusive=True)


def job_priority(job: Job) -> int:
    """Order in which ready jobs start: the training chain first (the longest path), then
    what only the report needs."""
    for rank, prefix in enumerate(("compile", "deploy", "bench", "report")):
        if job.name.startswith(prefix):
            return rank + 1
    return 0


def training_progress(layout: Layout, models: Sequence[Model]) -> Dict[str, str]:
    """Optimizer steps and epochs each model trained for, from its ``last.ckpt``."""
    import torch

    progress = {}
    for model in models:
        last = torch.load(
            layout.train_dir(model) / "last.ckpt", map_location="cpu", weights_only=False
        )
        progress[model.name] = (
            f"{last['global_step']} optimizer steps (stopped in epoch {last['epoch'] + 1})"
        )
    return progress


def print_summary(out: pathlib.Path):
    """The report's summary table and claims on the terminal."""
    from render import SUMMARY_HEADER, summary_rows

    report = json.loads((out / "report.json").read_text())
    rows = [SUMMARY_HEADER, *summary_rows(report)]
    widths = [max(len(str(row[k])) for row in rows) for k in range(len(SUMMARY_HEADER))]
    print()
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if report["speedup"]:
        s = report["speedup"]
        print(f"speed-up MoE vs all-big: {s['measured']:.2f}x (ideal {s['ideal']:.2f}x at "
              f"f = {s['hf_fraction']:.2f}, c = {s['cost_ratio_small_over_big']:.3f})")
    for c in report["claims"]:
        print(f"{'holds' if c['holds'] else 'DOES NOT HOLD'}: {c['claim']} ({c['detail']})")
    print(f"report: {out / 'report.md'}")


def run_sizes(args: argparse.Namespace) -> Sizes:
    """The run's sizes: ``QUICK`` (or ``FULL`` with ``--full``) with the options that replace
    one size each; no distilled bulk cells with ``--data`` unless ``--distil`` asks."""
    sizes = FULL if args.full else QUICK
    epochs = dict(sizes.epochs)
    if args.max_epochs is not None:
        epochs = {m.name: args.max_epochs for m in MODELS}
    for item in args.epochs:
        name, _, value = item.partition("=")
        if name not in {m.name for m in MODELS} or not value.isdigit():
            raise ValueError(f"--epochs takes NAME=N with NAME one of "
                             f"{[m.name for m in MODELS]}, got `{item}`")
        epochs[name] = int(value)
    replace = {"epochs": epochs}
    for field in ("frame_scale", "nve_steps", "adaptive_nve_steps", "seeds", "production_steps"):
        if getattr(args, field, None) is not None:
            replace[field] = getattr(args, field)
    if args.distil is not None or args.data is not None:
        replace["distil_cells"] = args.distil or 0
    if replace.get("seeds", 1) < 1:
        raise ValueError(f"--seeds takes a number of training seeds >= 1, got {replace['seeds']}")
    return dataclasses.replace(sizes, **replace)


def parse_args(args=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        default=os.environ.get("PT_CO_FULL") == "1",
                        help="realistic sizes for a GPU (also: PT_CO_FULL=1)")
    parser.add_argument("--force", action="store_true", help="rerun every job")
    parser.add_argument("--out", type=pathlib.Path, default=EXAMPLE_DIR / "out")
    parser.add_argument("--labeller", choices=["emt", "sevenn"], default="sevenn",
                        help="reference calculator of the generated data: SevenNet 7net-mf-0 "
                        "(PBE; the `example` extra) or ASE's EMT (fast, unphysical for CO)")
    parser.add_argument("--data", type=pathlib.Path,
                        help="your own extxyz (energy, forces, stress, per-atom `expert`)")
    parser.add_argument("--rules", type=pathlib.Path,
                        help="region rules YAML (as `nequip-moe assign --rules`) to label --data")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra nequip-train override for every model; may repeat")
    parser.add_argument("--device", default=None,
                        help="device to compile for and evaluate on (default: cuda if "
                        "available)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip nequip-compile: the report runs and times eager models "
                        "and leaves out LAMMPS, the bench and the deployed files")
    parser.add_argument("--joint", action="store_true",
                        help="also train the MoE jointly from scratch (configs/pt_co_cotrain.yaml, "
                        "`moe_joint`) and report it beside the staged MoE")
    parser.add_argument("--frame-scale", type=float, help="replace the size's frame_scale")
    parser.add_argument("--max-epochs", type=int,
                        help="epochs of every training run (replaces the size's per-model epochs)")
    parser.add_argument("--epochs", action="append", default=[], metavar="NAME=N",
                        help="epochs of one model (big, small, moe, moe_noagree, moe_joint; "
                        "seeds train as long as their model); may repeat")
    parser.add_argument("--seeds", type=int,
                        help="training seeds of each staged MoE (default: 3); the claims on "
                        "the experts' consistency are judged on the worst seed")
    parser.add_argument("--nve-steps", type=int, help="replace the size's nve_steps")
    parser.add_argument("--adaptive-nve-steps", type=int,
                        help="replace the size's adaptive_nve_steps (0: no gated-MoE section)")
    parser.add_argument("--production-steps", type=int,
                        help="timed LAMMPS MD steps of the production-size section (default 3, "
                        "20 with --full; 0 leaves it out)")
    parser.add_argument("--distil", type=int, metavar="N",
                        help="the staged MoEs train on the training split with the all-big "
                        "model's labels on its bulk frames plus N strained bulk cells it labels "
                        "(default: the size's, 40 or 200 with --full; 0 with --data)")
    parser.add_argument("--columns", type=int, default=0, metavar="M",
                        help="add M long 2x2x6 bulk cells the all-big model labels to that "
                        "split, which the interface term cuts like the split crystal (a "
                        "co-training lever, NOTES.md; default: %(default)s)")
    args = parser.parse_args(args)
    for flag, value in (("--distil", args.distil), ("--columns", args.columns)):
        if value is not None and value < 0:
            raise ValueError(f"{flag} takes a number of bulk cells >= 0, got {value}")
        if args.data is not None and value:
            raise ValueError(
                f"{flag} adds fcc Pt bulk cells, made for the generated Pt + CO data: with "
                f"--data use {flag} 0 (--distil 0: the big model's labels on your bulk frames)"
            )
    return args


def main(args=None) -> pathlib.Path:
    args = parse_args(args)
    sizes = run_sizes(args)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    models = with_seeds([m for m in MODELS if args.joint or not m.joint], sizes.seeds)
    layout = Layout(args.out.resolve())  # absolute: checkpoints keep the data paths
    pipeline = Pipeline(layout.out, force=args.force)
    print(f"Pt + CO MoE example ({'full' if args.full else 'quick'} sizes, "
          f"{pipeline.budget} threads) -> {layout.out}")
    device = None if args.no_compile else args.device

    jobs = [data_job(layout, sizes, args.labeller, args.data, args.rules),
            distil_job(layout, sizes, args.columns, args.device)]
    overrides = {m.name: [f"data_dir={layout.data}", *args.override,
                          *model_overrides(layout, sizes, m)] for m in models}
    for model in models:
        jobs += model_jobs(layout, pipeline, model, overrides[model.name], device)
    if device is not None:
        jobs += bench_jobs(layout, pipeline, device)
        jobs += gated_jobs(layout, pipeline, device)
    notes = {"sizes": dataclasses.asdict(sizes), "labeller": args.labeller,
             "data": str(args.data or "generated"), "device": args.device,
             "threads": pipeline.budget, "training overrides": overrides}
    jobs.append(report_job(layout, pipeline, models, sizes, args.device, device is not None,
                           notes))
    pipeline.run(sorted(jobs, key=job_priority))
    print_summary(layout.out)
    return layout.out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
