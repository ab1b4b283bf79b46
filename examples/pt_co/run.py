"""The Pt + CO Mixture-of-Experts example end to end (``make example``).

Stages, each skipped when its outputs exist (``--force`` reruns them):

1. data: ``data.py`` writes labelled frames with expert labels to ``out/data/``
2. train: ``nequip-train -cn CONFIG`` -> ``out/train/NAME/``, for each model in order:
   ``big`` (all-big, ``pt_co_big``), ``small`` (all-small, ``pt_co_small``), then the staged
   MoEs, whose frozen big expert is the packaged all-big model and whose small expert starts
   from the trained all-small model: ``moe`` (``pt_co_staged``, with
   the agreement terms: the default MoE) and ``moe_noagree`` (``pt_co_staged_noagree``: the
   same without agreement terms); with ``--joint`` also ``moe_joint`` (``pt_co_cotrain``: both
   experts trained jointly from scratch, co-trained). A distil stage before ``moe`` writes
   ``out/data/train_distilled.xyz`` (the training split with the packaged all-big model's
   labels on its bulk frames, plus N cubic (``--distil``, default 40) and M long
   (``--columns``, default 0) bulk cells it labels: ``data.distilled_frames``) and ``moe``
   trains on it
3. package: ``nequip-package build`` -> ``out/models/NAME.nequip.zip`` (right after each
   training: the staged MoEs need ``big.nequip.zip``)
4. compile: ``nequip-compile --mode aotinductor --target ase | pair_allegro``, only the files
   the report uses -> ``out/models/NAME.TARGET.nequip.pt2``
5. report: ``report.py`` -> ``out/report.md``, ``out/report.json`` and PNGs

Every training run is bounded by its number of epochs (never by wall clock) and seeded, so
runs on differently loaded machines train the same models. The default sizes took 24
minutes on an idle 2-core machine (README.md); ``--full`` (or the environment variable ``PT_CO_FULL=1``)
trains at realistic sizes, meant for a GPU.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from ase.io import read, write
from nequip.ase import NequIPCalculator

import data
from measures import ReportModel
from render import SUMMARY_HEADER, summary_rows
from report import make_report

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parent
CONFIG_DIR = EXAMPLE_DIR.parents[1] / "configs"
BIN_DIR = pathlib.Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big a run is. Training is bounded by epochs only (plus the configs' early stopping,
    which also counts epochs), never by wall clock.

    Args:
        frame_scale: multiplies every count of ``data.FrameCounts``
        epochs: epochs of each model's training run, by model name (a model not named:
            its config's ``max_epochs``)
        nve_steps: steps of each NVE run in the report
        adaptive_nve_steps: steps of each NVE run of the report's gated-MoE section
            (``adaptive.py``; 0 leaves the section out)
        distil_cells: strained bulk cells the packaged all-big model labels for the co-trained
            MoE's training split (``data.distilled_frames``)
    """

    frame_scale: float
    epochs: Dict[str, int]
    nve_steps: int
    adaptive_nve_steps: int = 0
    distil_cells: int = 0

    def max_epochs(self, name: str) -> Optional[int]:
        return self.epochs.get(name)


# One epoch (stage time / epochs), two idle cores, measured on the default recipe (166 frames,
# 5431 training atoms, 4.5 A cutoff): all-big 13.9 s, all-small 2.7 s, staged MoE 29.2 s (its
# distilled split: 40 more bulk cells), staged MoE without agreement 8.0 s (joint co-trained
# MoE ~65 s on one thread at 5.0 A). README.md gives the whole run's time.
QUICK = Sizes(
    frame_scale=1.0,
    epochs={"big": 25, "small": 30, "moe": 15, "moe_noagree": 15, "moe_joint": 12},
    nve_steps=200,
    adaptive_nve_steps=600,
    distil_cells=40,
)
FULL = Sizes(frame_scale=5.0, epochs={}, nve_steps=2000, adaptive_nve_steps=2000,
             distil_cells=200)


@dataclasses.dataclass(frozen=True)
class Model:
    """One model of the comparison.

    Args:
        name: output name (``out/train/NAME``, ``out/models/NAME.*``)
        config: training config in ``configs/``
        title: name in the report
        compile_targets: ``nequip-compile`` targets the report uses
        overrides: ``nequip-train`` overrides of this model only
        frozen_big: the model's big expert is the packaged all-big model (``big_model=``),
            frozen, and its small expert starts from the trained all-small model
            (``small_model=``, its checkpoint), so both are trained first
        joint: trained only with ``--joint`` (both experts from scratch)
        distillable: trains on the training split distilled by the frozen big expert
            (``data.distilled_frames``: its labels on shared bulk, plus bulk cells)
    """

    name: str
    config: str
    title: str
    compile_targets: Tuple[str, ...] = ()
    overrides: Tuple[str, ...] = ()
    frozen_big: bool = False
    joint: bool = False
    distillable: bool = False

    @property
    def config_file(self) -> pathlib.Path:
        return CONFIG_DIR / f"{self.config}.yaml"


# in training order: the staged MoEs need the packaged all-big model
MODELS = (
    Model("big", "pt_co_big", "all-big", ("ase",)),
    Model("small", "pt_co_small", "all-small", ("ase",)),
    Model("moe", "pt_co_staged", "MoE (staged, co-trained)", ("ase", "pair_allegro"),
          frozen_big=True, distillable=True),
    # pt_co_staged.yaml with the agreement coefficients 0, without computing the unused terms
    Model("moe_noagree", "pt_co_staged_noagree", "MoE (staged, no agreement)", frozen_big=True),
    Model("moe_joint", "pt_co_cotrain", "MoE (joint, co-trained)", joint=True),
)

# the distilled training split of the staged co-trained MoE, in the data folder
DISTILLED_TRAIN = "train_distilled.xyz"

# co-trained MoE -> the same MoE trained without agreement terms (split-crystal comparison)
WITHOUT_AGREEMENT = {"moe": "moe_noagree"}

# the models nequip_moe.benchmarking times: the MoE and its two experts alone
SPEED_MODELS = ("moe", "big", "small")


@dataclasses.dataclass
class Layout:
    """Where every stage writes, under ``out``."""

    out: pathlib.Path

    @property
    def data(self) -> pathlib.Path:
        return self.out / "data"

    @property
    def logs(self) -> pathlib.Path:
        return self.out / "logs"

    def train_dir(self, model: Model) -> pathlib.Path:
        return self.out / "train" / model.name

    def checkpoint(self, model: Model) -> pathlib.Path:
        return self.train_dir(model) / "best.ckpt"

    def package(self, model: Model) -> pathlib.Path:
        return self.out / "models" / f"{model.name}.nequip.zip"

    def compiled(self, model: Model, target: str) -> pathlib.Path:
        return self.out / "models" / f"{model.name}.{target}.nequip.pt2"


class Pipeline:
    """Runs stages in order, skips finished ones, prints progress and records timings.

    Args:
        layout: output locations
        force: rerun stages whose outputs exist
    """

    def __init__(self, layout: Layout, force: bool = False):
        self.layout = layout
        self.force = force
        self.timings_file = layout.out / "timings.json"
        self.timings: Dict[str, float] = (
            json.loads(self.timings_file.read_text()) if self.timings_file.is_file() else {}
        )
        self.count = 0

    def stage(self, name: str, outputs: Sequence[pathlib.Path], action: Callable[[], None]):
        """Run ``action`` unless every output exists; print what happened."""
        self.count += 1
        prefix = f"[{self.count}] {name}"
        if not self.force and all(p.exists() for p in outputs):
            print(f"{prefix}: done before, skipped ({outputs[0]})", flush=True)
            return
        print(f"{prefix} ...", flush=True)
        start = time.perf_counter()
        action()
        elapsed = time.perf_counter() - start
        self.timings[name] = round(elapsed, 1)
        self.layout.out.mkdir(parents=True, exist_ok=True)
        self.timings_file.write_text(json.dumps(self.timings, indent=2))
        print(f"{prefix}: {elapsed:.1f} s", flush=True)

    def skip(self, name: str, reason: str):
        self.count += 1
        print(f"[{self.count}] {name}: skipped, {reason}", flush=True)

    def command(self, log_name: str, args: Sequence, cwd: Optional[pathlib.Path] = None):
        """Run a nequip command line tool, its output in ``out/logs/LOG_NAME.log``."""
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        log = self.layout.logs / f"{log_name}.log"
        args = [str(BIN_DIR / args[0]), *map(str, args[1:])]
        print(f"    $ {' '.join(args)}", flush=True)
        with open(log, "w") as f:
            proc = subprocess.run(args, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
            raise RuntimeError(
                f"`{' '.join(args)}` failed ({proc.returncode}); last lines of {log}:\n{tail}"
            )


def data_stage(pipeline: Pipeline, sizes: Sizes, labeller: str, user_data, rules):
    """Stage 1: the example's generated frames, or a user's extxyz checked and split."""
    out = pipeline.layout.data
    outputs = [out / f"{split}.xyz" for split in data.SPLITS]

    def make():
        if user_data is None:
            summary = data.make_dataset(
                out, data.FrameCounts().scaled(sizes.frame_scale), labeller
            )
        else:
            frames = data.read_user_frames(user_data, rules)
            summary = data.write_dataset(out, data.split_by_kind(frames), eos=[])
        print(f"    frames {summary['frames']}, test high-fidelity fraction "
              f"{summary['test_hf_fraction']:.2f}")

    pipeline.stage("data", outputs, make)


def train_overrides(layout: Layout, extra: Sequence[str]) -> List[str]:
    """``nequip-train`` overrides shared by every model."""
    return [f"data_dir={layout.data.resolve()}", *extra]


def model_overrides(layout: Layout, sizes: Sizes, model: Model) -> List[str]:
    """``nequip-train`` overrides of one model: its epochs, its frozen big expert, its own."""
    overrides = []
    if sizes.max_epochs(model.name) is not None:
        overrides.append(f"max_epochs={sizes.max_epochs(model.name)}")
    if model.frozen_big:
        overrides.append(f"big_model={layout.package(big_model()).resolve()}")
        # the small expert starts from all-small (its checkpoint: one package per MoE)
        small = next(m for m in MODELS if m.name == "small")
        overrides += [f"small_model={layout.checkpoint(small).resolve()}",
                      "training_module.model.experts.small=${pretrained_small_expert}"]
    if model.distillable:
        overrides.append(f"train_file={DISTILLED_TRAIN}")
    return overrides + list(model.overrides)


def big_model() -> Model:
    return next(m for m in MODELS if m.name == "big")


def distil_stage(pipeline: Pipeline, extra: int, columns: int, device: str):
    """The training split distilled by the packaged all-big model (the staged MoE's frozen big
    expert): its labels on the wholly shared (bulk) frames, on ``extra`` new cubic bulk cells
    and on ``columns`` long ones."""
    layout = pipeline.layout
    out = layout.data / DISTILLED_TRAIN

    def distil():
        calc = NequIPCalculator._from_saved_model(
            str(layout.package(big_model())), device=device,
            chemical_species_to_atom_type_map=True,
        )
        # the data stage's fitted lattice constant (summary.json always written beside the splits)
        a0 = json.loads((layout.data / "summary.json").read_text()).get("a0", data.PT_A0)
        frames = data.distilled_frames(
            read(layout.data / "train.xyz", index=":"), calc, extra, columns=columns, a0=a0
        )
        write(out, frames, format="extxyz")
        print(f"    {len(frames)} training frames, {extra} cubic and {columns} long bulk cells")

    pipeline.stage("distil", [out], distil)


def model_stages(
    pipeline: Pipeline, model: Model, overrides: Sequence[str], device: Optional[str]
):
    """Stages 2-4 for one model: train, package and compile what the report uses for
    ``device`` (``None``: no compiling)."""
    layout = pipeline.layout
    run_dir = layout.train_dir(model)

    def train():
        partial = run_dir.with_name(run_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pipeline.command(
            f"train_{model.name}",
            ["nequip-train", "-cp", CONFIG_DIR, "-cn", model.config, *overrides,
             f"hydra.run.dir={partial.resolve()}"],
        )
        shutil.rmtree(run_dir, ignore_errors=True)
        partial.rename(run_dir)

    # a stage reruns when its inputs changed is beyond this pipeline: --force reruns everything
    pipeline.stage(f"train {model.name}", [layout.checkpoint(model)], train)

    package = layout.package(model)

    def build_package():
        package.parent.mkdir(parents=True, exist_ok=True)
        pipeline.command(
            f"package_{model.name}",
            ["nequip-package", "build", layout.checkpoint(model), package],
        )

    pipeline.stage(f"package {model.name}", [package], build_package)
    for target in model.compile_targets if device is not None else ():
        compiled = layout.compiled(model, target)
        pipeline.stage(
            f"compile {model.name} --target {target}",
            [compiled],
            lambda: pipeline.command(
                f"compile_{model.name}_{target}",
                ["nequip-compile", package, compiled, "--mode",
                 "aotinductor", "--device", device, "--target", target],
            ),
        )


def training_progress(layout: Layout, models: Sequence[Model]) -> Dict[str, str]:
    """Optimizer steps and epochs each model trained for, from its ``last.ckpt``."""
    progress = {}
    for model in models:
        last = torch.load(
            layout.train_dir(model) / "last.ckpt", map_location="cpu", weights_only=False
        )
        progress[model.name] = (
            f"{last['global_step']} optimizer steps (stopped in epoch {last['epoch'] + 1})"
        )
    return progress


def report_stage(
    pipeline: Pipeline, models: Sequence[Model], sizes: Sizes, device: str, notes: Dict
):
    """Stage 5: evaluate every packaged model (compiled files where there are) and report."""
    layout = pipeline.layout
    packaged = [m for m in models if layout.package(m).is_file()]

    def evaluated_file(model: Model) -> pathlib.Path:
        compiled = layout.compiled(model, "ase")
        return compiled if compiled.is_file() else layout.package(model)

    by_name = {m.name: m for m in packaged}
    speed_files = None
    if all(name in by_name for name in SPEED_MODELS):
        speed_files = {name: evaluated_file(by_name[name]) for name in SPEED_MODELS}
    pair_allegro = None
    if "moe" in by_name and layout.compiled(by_name["moe"], "pair_allegro").is_file():
        pair_allegro = layout.compiled(by_name["moe"], "pair_allegro")
    # the co-trained MoEs and the same MoE trained without agreement terms
    without_agreement = {
        name: partner for name, partner in WITHOUT_AGREEMENT.items()
        if name in by_name and partner in by_name
    }
    adaptive = None
    if sizes.adaptive_nve_steps > 0 and {"big", "small"} <= set(by_name):
        adaptive = dict(
            big_file=layout.package(by_name["big"]), small_file=layout.package(by_name["small"]),
            data_dir=layout.data, out_dir=layout.out, nve_steps=sizes.adaptive_nve_steps,
            device=device,
        )
    pipeline.stage(
        "report",
        [layout.out / "report.json"],
        lambda: make_report(
            [ReportModel(m.name, m.title, evaluated_file(m), device) for m in packaged],
            layout.data,
            layout.out,
            nve_steps=sizes.nve_steps,
            speed_files=speed_files,
            pair_allegro_file=pair_allegro,
            notes={**notes, "trained": training_progress(layout, packaged),
                   "stage seconds": dict(pipeline.timings)},
            device=device,
            without_agreement=without_agreement,
            buffer_model="moe" if "moe" in by_name else None,
            adaptive=adaptive,
            big_package=layout.package(by_name["big"]) if "big" in by_name else None,
        ),
    )


def print_summary(out: pathlib.Path):
    """The report's summary table and claims on the terminal."""
    report = json.loads((out / "report.json").read_text())
    rows = [SUMMARY_HEADER, *summary_rows(report)]
    widths = [max(len(str(row[k])) for row in rows) for k in range(len(SUMMARY_HEADER))]
    print()
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if report["speedup"]:
        s = report["speedup"]
        print(f"speed-up MoE vs all-big: {s['measured']:.2f}x (ideal {s['ideal']:.2f}x at "
              f"f = {s['hf_fraction']:.2f})")
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
    sizes = dataclasses.replace(sizes, epochs=epochs)
    if args.frame_scale is not None:
        sizes = dataclasses.replace(sizes, frame_scale=args.frame_scale)
    if args.nve_steps is not None:
        sizes = dataclasses.replace(sizes, nve_steps=args.nve_steps)
    if args.adaptive_nve_steps is not None:
        sizes = dataclasses.replace(sizes, adaptive_nve_steps=args.adaptive_nve_steps)
    if args.distil is not None or args.data is not None:
        sizes = dataclasses.replace(sizes, distil_cells=args.distil or 0)
    return sizes


def main(args=None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        default=os.environ.get("PT_CO_FULL") == "1",
                        help="realistic sizes for a GPU (also: PT_CO_FULL=1)")
    parser.add_argument("--force", action="store_true", help="rerun finished stages")
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to compile for and evaluate on (default: cuda if "
                        "available)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip nequip-compile: the report runs and times eager models "
                        "and leaves out LAMMPS")
    parser.add_argument("--joint", action="store_true",
                        help="also train the MoE jointly from scratch (configs/pt_co_cotrain.yaml, "
                        "`moe_joint`) and report it beside the staged MoE")
    parser.add_argument("--frame-scale", type=float, help="replace the size's frame_scale")
    parser.add_argument("--max-epochs", type=int,
                        help="epochs of every training run (replaces the size's per-model epochs)")
    parser.add_argument("--epochs", action="append", default=[], metavar="NAME=N",
                        help="epochs of one model (big, small, moe, moe_noagree, moe_joint); "
                        "may repeat")
    parser.add_argument("--nve-steps", type=int, help="replace the size's nve_steps")
    parser.add_argument("--adaptive-nve-steps", type=int,
                        help="replace the size's adaptive_nve_steps (0: no gated-MoE section)")
    parser.add_argument("--distil", type=int, metavar="N",
                        help="the co-trained staged MoE trains on the training split with the "
                        "all-big model's labels on its bulk frames plus N strained bulk cells "
                        "it labels (default: the size's, 40 or 200 with --full; 0 with --data; "
                        "README.md measures it)")
    parser.add_argument("--columns", type=int, default=0, metavar="M",
                        help="add M long 2x2x6 bulk cells the all-big model labels to that "
                        "split, which the interface term cuts like the split crystal (a "
                        "co-training lever; README.md measures it; default: %(default)s)")
    args = parser.parse_args(args)
    for flag, value in (("--distil", args.distil), ("--columns", args.columns)):
        if value is not None and value < 0:
            raise ValueError(f"{flag} takes a number of bulk cells >= 0, got {value}")
        if args.data is not None and value:
            raise ValueError(
                f"{flag} adds fcc Pt bulk cells, made for the generated Pt + CO data: with "
                f"--data use {flag} 0 (--distil 0: the big model's labels on your bulk frames)"
            )

    sizes = run_sizes(args)
    models = [m for m in MODELS if args.joint or not m.joint]
    layout = Layout(args.out.resolve())  # absolute: checkpoints keep the data paths
    pipeline = Pipeline(layout, force=args.force)
    print(f"Pt + CO MoE example ({'full' if args.full else 'quick'} sizes) -> {layout.out}")

    data_stage(pipeline, sizes, args.labeller, args.data, args.rules)
    overrides = train_overrides(layout, args.override)
    for model in models:
        if model.distillable:
            distil_stage(pipeline, sizes.distil_cells, args.columns, args.device)
        model_stages(
            pipeline, model, [*overrides, *model_overrides(layout, sizes, model)],
            None if args.no_compile else args.device,
        )
    notes = {"sizes": dataclasses.asdict(sizes), "labeller": args.labeller,
             "data": str(args.data or "generated"), "device": args.device,
             "training overrides": overrides,
             "model overrides": {m.name: model_overrides(layout, sizes, m)
                                 for m in models}}
    report_stage(pipeline, models, sizes, args.device, notes)
    print_summary(layout.out)
    return layout.out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
