"""``nequip-moe bench``: speed-up, scaling, memory and training cost of an MoE vs its experts."""

import dataclasses
import json
import pathlib
import sys

import torch

from nequip_moe.benchmark import (
    EXAMPLE_CONFIG,
    MODEL_NAMES,
    BenchOptions,
    format_table,
    plot_results,
    run_benchmark,
)

# `--quick`: tiny slabs, two fractions, few repeats
_QUICK = {
    "sizes": [3, 4],
    "layers": 4,
    "fractions": [0.25, 1.0],
    "repeats": 2,
    "train_frames": 2,
    "train_size": 2,
}
_MODEL_FILE_HELP = {
    "moe": "the MoE",
    "big": "its high-fidelity expert alone",
    "small": "its low-fidelity expert alone",
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "bench",
        help="time the MoE against its big and small experts alone "
        "(speed-up vs ideal, scaling, memory, training)",
        description="Times the MoE, its high-fidelity expert alone (big) and its low-fidelity "
        "expert alone (small) on Pt(111) + CO slabs and reports the MoE speed-up t_big / t_moe "
        "against the ideal 1 / (f + (1 - f) c), c = t_small / t_big measured at the same size. "
        "Without model files it benchmarks the untrained architectures of --config.",
    )
    models = parser.add_argument_group("models (default: untrained models from --config)")
    models.add_argument(
        "--config",
        default=str(EXAMPLE_CONFIG),
        help="MoE training config with two experts at training_module.model "
        "(default: %(default)s)",
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
        "--sizes",
        type=int,
        nargs="+",
        default=[6, 8, 11, 16],
        help="slab sizes: surface atoms along each direction (default: %(default)s; with 8 "
        "layers about 300 to 2,100 atoms; 22: 3,900)",
    )
    sweep.add_argument("--layers", type=int, default=8, help="Pt layers (default: %(default)s)")
    sweep.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.0, 0.1, 0.25, 0.5, 1.0],
        help="target high-fidelity fractions; the highest atoms go to the big expert first, "
        "adsorbates always (default: %(default)s)",
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

    run = parser.add_argument_group("how")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
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
        "--memory-fraction",
        type=float,
        default=0.25,
        help="high-fidelity fraction of the memory and training measurements "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--out-dir",
        default="nequip_moe_bench",
        help="compiled models, plots and results (default: %(default)s)",
    )
    run.add_argument("--json", help="results file (default: OUT_DIR/bench.json)")
    run.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    parser.set_defaults(func=run_bench)


def run_bench(args):
    files = {name: getattr(args, name) for name in MODEL_NAMES}
    given = [name for name, path in files.items() if path is not None]
    if given and len(given) != len(MODEL_NAMES):
        raise ValueError(f"give all of --moe --big --small or none (got only {given})")
    if not given and not pathlib.Path(args.config).is_file():
        raise FileNotFoundError(
            f"config `{args.config}` does not exist: pass --config or --moe/--big/--small"
        )
    # every option of the same name as a BenchOptions field goes straight through
    fields = {field.name for field in dataclasses.fields(BenchOptions)}
    options = BenchOptions(**{k: v for k, v in vars(args).items() if k in fields})
    options.config = None if given else args.config
    options.model_files = files if given else None
    if args.quick:
        options = dataclasses.replace(options, **_QUICK)
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
    print_summary(results, "eager" if args.eager else "AOTInductor")
    print(f"results: {json_path}")


def print_summary(results, mode: str):
    """Machine line, speed table, scaling exponents, memory and training lines."""
    machine = results["machine"]
    print(
        f"{machine['date']}  {machine['device_name']} ({machine['device']}), "
        f"{machine['torch_threads']} threads, torch {machine['versions']['torch']}, {mode}"
    )
    print(format_table(results["rows"]))
    exponents = [
        f"{label} {entry['exponent']:.2f}"
        for label, entry in results["scaling"].items()
        if entry["exponent"] is not None
    ]
    print("scaling exponents (t ~ N^b): " + ", ".join(exponents))
    memory = results["memory"]
    if memory is not None:
        per_model = ", ".join(
            f"{name} {memory[name]['call_bytes'] / 2**20:.0f} MiB" for name in MODEL_NAMES
        )
        print(
            f"peak memory at N={memory['n_atoms']}: {per_model} "
            f"(moe / big {memory['moe_over_big']:.2f})"
        )
    training = results["training"]
    if training is not None and "skipped" in training:
        print(f"training: {training['skipped']}")
    elif training is not None:
        print(
            f"training step ({training['n_atoms']} atoms, {training['n_shared_atoms']} shared): "
            f"big {training['big_step_s']:.3g} s, moe {training['moe_step_s']:.3g} s "
            f"({training['moe_over_big']:.2f}x), moe co-training "
            f"{training['moe_cotrain_step_s']:.3g} s ({training['moe_cotrain_over_big']:.2f}x)"
        )
