"""``nequip-moe bench``: speed-up, scaling, cost weights, memory and training cost of an MoE
vs its experts, on the user's structures or the default Pt(111) + CO slabs (``--slabs``).

Light to import: the benchmark (torch, nequip) is imported when the command runs.
"""

import dataclasses
import json
import pathlib
import sys

from nequip_moe.benchmarking.options import DEFAULT_CONFIG, MODEL_NAMES, PRESETS, BenchOptions

# `--quick`: two fractions, few repeats, small training batch
_QUICK = {"fractions": [0.25, 1.0], "repeats": 2, "train_frames": 2}
_MODEL_FILE_HELP = {
    "moe": "the MoE",
    "big": "its high-fidelity expert alone",
    "small": "its low-fidelity expert alone",
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "bench",
        help="time the MoE against its big and small experts alone "
        "(speed-up vs ideal, scaling, cost weights, memory, training)",
        description="Times the MoE, its high-fidelity expert alone (big) and its low-fidelity "
        "expert alone (small) on the structures of --structure and reports the MoE speed-up "
        "t_big / t_moe against the ideal 1 / (f + (1 - f) c), c = t_small / t_big measured at "
        "the same size, and each expert's cost per atom relative to the cheapest (cost_weights, "
        "for `nequip-moe deploy --cost-weights`). Without model files it benchmarks the "
        "untrained architectures of --config.",
    )
    structures = parser.add_mutually_exclusive_group(required=True)
    structures.add_argument(
        "--structure",
        help="extxyz file of the structures to time, each frame one size",
    )
    structures.add_argument(
        "--slabs",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="time the default structures instead: Pt(111) slabs of SIZE x SIZE x 8 atoms "
        "with CO on every 4th top site (e.g. 6 8 11 16: about 300 to 2,100 atoms; "
        "nequip_moe.benchmarking.structures), written to OUT_DIR/slabs.xyz",
    )
    models = parser.add_argument_group("models (default: untrained models from --config)")
    models.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="MoE training config with two experts at training_module.model (default: a "
        "Pt + CO MoE of two Allegro experts, %(default)s)",
    )
    for name in MODEL_NAMES:
        models.add_argument(
            f"--{name}",
            metavar="FILE",
            help=f"{_MODEL_FILE_HELP[name]}: compiled .nequip.pt2, package .nequip.zip or "
            "checkpoint (give all three)",
        )
    models.add_argument("--hf-expert", help="the MoE's high-fidelity expert (default: its first)")
    models.add_argument(
        "--model-dtype", choices=["float32", "float64"], help="override the config's model_dtype"
    )

    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--supercells",
        type=int,
        nargs="+",
        default=[1],
        help="in-plane repeats (k, k, 1) of every frame, each one more size (default: %(default)s)",
    )
    sweep.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.0, 0.1, 0.25, 0.5, 1.0],
        help="target high-fidelity fractions; the highest atoms (largest z) go to the big "
        "expert first, elements the small expert lacks always (default: %(default)s)",
    )
    sweep.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed calls per model and structure, median reported (default: %(default)s)",
    )
    sweep.add_argument(
        "--warmup", type=int, default=1, help="untimed calls first (default: %(default)s)"
    )
    sweep.add_argument(
        "--quick",
        action="store_true",
        help="tiny run, overriding the sweep: " + ", ".join(f"{k} {v}" for k, v in _QUICK.items()),
    )

    run_capacity = parser.add_argument_group("largest system")
    run_capacity.add_argument(
        "--fit-slabs",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="find the largest system the MoE (at --memory-fraction) and the big expert alone "
        "evaluate on the device: default slabs of these sizes, smallest first, until one runs "
        "out of device memory (default: not searched)",
    )

    preset = parser.add_argument_group("named expert sizes, timed beside the sweep")
    preset.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="replace the experts of --config by these sizes (paper: big Allegro l_max 3, "
        "4 layers, 128/64 features; small l_max 1, 2 layers, 32/32; both r_max 7 A)",
    )
    preset.add_argument(
        "--preset-dtypes",
        nargs="+",
        choices=["float64", "float32"],
        default=["float64", "float32"],
        help="model_dtype of the preset rows (default: %(default)s)",
    )
    preset.add_argument(
        "--preset-fractions",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5],
        help="high-fidelity fractions of the preset rows (default: %(default)s)",
    )
    preset.add_argument(
        "--preset-memory-gib",
        type=float,
        default=16.0,
        help="memory budget of one preset model call: a model whose peak, predicted from its "
        "memory per edge measured on the smallest structure, exceeds it is timed on the two "
        "largest smaller structures that fit and its time extrapolated with the scaling "
        "exponent measured between them, marked `extrapolated` (default: %(default)s)",
    )
    preset.add_argument(
        "--preset-max-atoms",
        type=int,
        help="time the preset on the largest structure up to this size (default: the largest)",
    )

    run = parser.add_argument_group("how")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    run.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what a timed call measures: wall time, or this process's CPU time (CPU runs; "
        "with --threads 1 the call's own work, unaffected by other jobs on a shared machine) "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: %(default)s: multi-threaded AOTInductor timings are "
        "erratic on shared machines)",
    )
    run.add_argument(
        "--eager", action="store_true", help="time eager models (no AOTInductor compile)"
    )
    run.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak memory"
    )
    run.add_argument(
        "--no-training", dest="training", action="store_false", help="skip the training steps"
    )
    run.add_argument(
        "--train-frames",
        type=int,
        default=4,
        help="frames of the training batch: the smallest structure, rattled (default: %(default)s)",
    )
    run.add_argument(
        "--memory-fraction",
        type=float,
        default=0.25,
        help="high-fidelity fraction of the memory and training measurements "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--out-dir",
        default="nequip_moe_bench",
        help="checkpoints, compiled models, plots and results (default: %(default)s)",
    )
    run.add_argument("--json", help="results file (default: OUT_DIR/bench.json)")
    run.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    parser.set_defaults(func=run_bench)


def _refuse_gated(path):
    """``bench`` sweeps static high-fidelity fractions by relabelling atoms; a gated MoE's
    fraction is set by its gate, so it cannot be swept this way: say so up front."""
    from nequip_moe.integrations.model_files import is_gated, read_metadata

    metadata = read_metadata(path)
    if is_gated(metadata):
        raise ValueError(
            f"`{path}` is a gated MoE ({metadata['moe_gate_model']}): `nequip-moe bench` times "
            "static MoEs at high-fidelity fractions it sets by relabelling atoms, while a gated "
            "MoE's fraction follows its gate g on each structure. Time the gated model on the "
            "structures themselves (e.g. its ASE calculator), or bench its static counterpart"
        )


def _refuse_gated_config(path):
    import yaml

    try:
        config = yaml.safe_load(pathlib.Path(path).read_text()) or {}
        gate = ((config.get("training_module") or {}).get("model") or {}).get("gate")
    except (yaml.YAMLError, AttributeError):
        return  # the benchmark's own config reading reports a broken file
    if gate:
        raise ValueError(
            f"`{path}` configures a gated MoE (`gate:`): `nequip-moe bench` times static MoEs "
            "at high-fidelity fractions it sets by relabelling atoms, while a gated MoE's "
            "fraction follows its gate; bench a static MoE config"
        )


def _write_slabs(sizes, out_dir: pathlib.Path) -> pathlib.Path:
    """Write the default bench slabs of ``sizes`` to ``out_dir/slabs.xyz`` (atomically)."""
    from ase.io import write

    from nequip_moe.benchmarking.structures import bench_slabs

    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / "slabs.xyz", out_dir / "slabs.xyz.tmp"
    write(tmp, bench_slabs(sizes), format="extxyz")
    tmp.replace(path)
    return path


def run_bench(args):
    files = {name: getattr(args, name) for name in MODEL_NAMES}
    given = [name for name, path in files.items() if path is not None]
    if given and len(given) != len(MODEL_NAMES):
        raise ValueError(f"give all of --moe --big --small or none (got only {given})")
    if files.get("moe") is not None:
        _refuse_gated(files["moe"])
    elif pathlib.Path(args.config).is_file():
        _refuse_gated_config(args.config)
    if (not given or args.preset) and not pathlib.Path(args.config).is_file():
        raise FileNotFoundError(
            f"config `{args.config}` does not exist: pass --config or --moe/--big/--small"
        )
    import torch

    from nequip_moe.benchmarking.report import plot_results, summary
    from nequip_moe.benchmarking.runner import run_benchmark

    # every option of the same name as a BenchOptions field goes straight through
    fields = {field.name for field in dataclasses.fields(BenchOptions)}
    options = BenchOptions(**{k: v for k, v in vars(args).items() if k in fields})
    options.model_files = files if given else None
    if args.quick:
        options = dataclasses.replace(options, **_QUICK)
    if args.slabs:
        options.structure = str(_write_slabs(args.slabs, pathlib.Path(args.out_dir)))
    torch.set_num_threads(args.threads)

    results = run_benchmark(
        options, log=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)
    )

    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.plots:
        results["plots"] = plot_results(results, out_dir)
    json_path = pathlib.Path(args.json) if args.json else out_dir / "bench.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    print(summary(results, "eager" if args.eager else "AOTInductor"))
    print(f"results: {json_path}")
