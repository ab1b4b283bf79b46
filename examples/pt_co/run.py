"""The Pt + CO Mixture-of-Experts example end to end (``make example``).

Stages, each skipped when its outputs exist (``--force`` reruns them):

1. data: ``data.py`` writes labelled frames with expert labels to ``out/data/``
2. train: ``nequip-train -cn pt_co_big | pt_co_small | pt_co_moe | pt_co_cotrain`` (the
   co-trained MoE once its config exists) -> ``out/train/NAME/``
3. package: ``nequip-package build`` -> ``out/models/NAME.nequip.zip``
4. compile: ``nequip-compile --mode aotinductor --target ase | pair_allegro``, only the files
   the report uses -> ``out/models/NAME.TARGET.nequip.pt2``
5. report: ``report.py`` -> ``out/report.md``, ``out/report.json`` and PNGs

The default sizes finish on 2 CPU cores in about half an hour; ``--full`` (or the environment
variable ``PT_CO_FULL=1``) trains at realistic sizes, meant for a GPU.
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

import data
from measures import ReportModel
from render import SUMMARY_HEADER, summary_rows
from report import make_report

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parent
CONFIG_DIR = EXAMPLE_DIR.parents[1] / "configs"
BIN_DIR = pathlib.Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big a run is.

    Args:
        frame_scale: multiplies every count of ``data.FrameCounts``
        max_epochs: epochs of every training run (``None``: the config's own)
        max_minutes: wall-clock cap of every training run (``None``: no cap)
        nve_steps: steps of each NVE run in the report
    """

    frame_scale: float
    max_epochs: Optional[int]
    max_minutes: Optional[float]
    nve_steps: int


QUICK = Sizes(frame_scale=1.0, max_epochs=10, max_minutes=3.5, nve_steps=200)
FULL = Sizes(frame_scale=5.0, max_epochs=None, max_minutes=None, nve_steps=2000)


@dataclasses.dataclass(frozen=True)
class Model:
    """One model of the comparison.

    Args:
        name: output name (``out/train/NAME``, ``out/models/NAME.*``)
        config: training config in ``configs/``
        title: name in the report
        compile_targets: ``nequip-compile`` targets the report uses
    """

    name: str
    config: str
    title: str
    compile_targets: Tuple[str, ...] = ()

    @property
    def config_file(self) -> pathlib.Path:
        return CONFIG_DIR / f"{self.config}.yaml"


MODELS = (
    Model("big", "pt_co_big", "all-big", ("ase",)),
    Model("small", "pt_co_small", "all-small", ("ase",)),
    Model("moe", "pt_co_moe", "MoE", ("ase", "pair_allegro")),
    Model("moe_cotrain", "pt_co_cotrain", "MoE co-trained"),
)

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


def train_overrides(layout: Layout, sizes: Sizes, extra: Sequence[str]) -> List[str]:
    """``nequip-train`` overrides shared by every model."""
    overrides = [f"data_dir={layout.data.resolve()}"]
    if sizes.max_epochs is not None:
        overrides.append(f"max_epochs={sizes.max_epochs}")
    if sizes.max_minutes is not None:
        minutes, seconds = divmod(round(sizes.max_minutes * 60), 60)
        hours, minutes = divmod(minutes, 60)
        overrides.append(f'+trainer.max_time="00:{hours:02d}:{minutes:02d}:{seconds:02d}"')
    return overrides + list(extra)


def model_stages(
    pipeline: Pipeline, model: Model, overrides: Sequence[str], device: Optional[str]
):
    """Stages 2-4 for one model: train, package and compile what the report uses for
    ``device`` (``None``: no compiling)."""
    layout = pipeline.layout
    if not model.config_file.is_file():
        pipeline.skip(f"train {model.name}", f"{model.config_file} does not exist yet")
        return
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


def report_stage(pipeline: Pipeline, sizes: Sizes, device: str, notes: Dict):
    """Stage 5: evaluate every packaged model (compiled files where there are) and report."""
    layout = pipeline.layout
    packaged = [m for m in MODELS if layout.package(m).is_file()]

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


def main(args=None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        default=os.environ.get("PT_CO_FULL") == "1",
                        help="realistic sizes for a GPU (also: PT_CO_FULL=1)")
    parser.add_argument("--force", action="store_true", help="rerun finished stages")
    parser.add_argument("--out", type=pathlib.Path, default=EXAMPLE_DIR / "out")
    parser.add_argument("--labeller", choices=["emt", "sevenn"], default="emt")
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
    parser.add_argument("--frame-scale", type=float, help="replace the size's frame_scale")
    parser.add_argument("--max-epochs", type=int, help="replace the size's max_epochs")
    parser.add_argument("--max-minutes", type=float, help="replace the size's max_minutes")
    parser.add_argument("--nve-steps", type=int, help="replace the size's nve_steps")
    args = parser.parse_args(args)

    sizes = FULL if args.full else QUICK
    replaced = {f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in replaced.items() if v is not None})
    layout = Layout(args.out.resolve())  # absolute: checkpoints keep the data paths
    pipeline = Pipeline(layout, force=args.force)
    print(f"Pt + CO MoE example ({'full' if args.full else 'quick'} sizes) -> {layout.out}")

    data_stage(pipeline, sizes, args.labeller, args.data, args.rules)
    overrides = train_overrides(layout, sizes, args.override)
    for model in MODELS:
        model_stages(pipeline, model, overrides, None if args.no_compile else args.device)
    notes = {"sizes": dataclasses.asdict(sizes), "labeller": args.labeller,
             "data": str(args.data or "generated"), "device": args.device,
             "training overrides": overrides}
    report_stage(pipeline, sizes, args.device, notes)
    print_summary(layout.out)
    return layout.out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
