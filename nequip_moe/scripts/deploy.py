"""``nequip-moe deploy MODEL``: package, compile and write the LAMMPS files in one step.

A thin wrapper over the standard commands (what ``nequip-deploy`` was before nequip 0.7):
``nequip-package build`` (for a checkpoint), then ``nequip-compile --mode aotinductor`` for
each target asked, then the composite-type table and a ready LAMMPS input beside the model.
Running the standard commands by hand gives the same files.

Targets: ``pair_allegro`` (``pair_style allegro``, any number of MPI ranks; only for MoEs whose
experts are all strictly local, as the model's ``moe_expert_halo_hops`` metadata declares),
``pair_nequip`` (``pair_style nequip``, ``newton off``, one MPI rank; exact for any MoE,
message-passing experts included) and ``ase`` (``MoECalculator``). The LAMMPS input
(``NAME.lammps.in``, from ``nequip_moe.integrations.lammps_input``) is written for the first
LAMMPS target asked; for ``pair_allegro`` it balances the MoE's weighted work over MPI ranks
(``--cost-weights``, ``--balance``).

Gated MoEs (metadata ``moe_gate_model``) deploy the same way: their type names are plain
elements, so the input maps ``pair_coeff * * NAME_pair_allegro.nequip.pt2 C O Pt`` onto a data
file typed by species (``nequip-moe assign STRUCTURE --model MODEL --out-lammps FILE`` writes
one, without labels to prepare), ``NAME.types.yaml`` names the gate instead of composite types,
and the run-time load balancing weighs measured time (a gated atom's cost follows its gate,
which LAMMPS does not see), so ``--cost-weights`` is refused.
"""

import os
import pathlib
import subprocess
import tempfile

import yaml

from nequip_moe.integrations.lammps_input import (
    BALANCE_STYLES,
    GATED_COST_WEIGHTS,
    lammps_input,
    parse_cost_weights,
)
from nequip_moe.integrations.compile import COMPILE_THREADS, compile_model, nequip_tool
from nequip_moe.integrations.lammps_locality import check_strictly_local
from nequip_moe.integrations.model_files import GatedTypes, model_types, read_metadata

TARGETS = ("pair_allegro", "pair_nequip", "ase")
DEFAULT_TARGETS = ("pair_allegro", "ase")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "deploy",
        help="package (checkpoint) and compile (AOTInductor) an MoE model, with its type table and LAMMPS input",
    )
    parser.add_argument("model", help="training checkpoint or .nequip.zip package")
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=TARGETS,
        default=list(DEFAULT_TARGETS),
        help="compile targets (default: pair_allegro ase); pair_allegro needs strictly local "
        "experts, pair_nequip (one MPI rank) works for any MoE",
    )
    parser.add_argument("--device", default="cpu", help="device to compile for (default: cpu)")
    parser.add_argument(
        "--compile-threads",
        type=int,
        default=COMPILE_THREADS,
        help="threads (OpenMP, per MPI rank) the compiled files will run with: Inductor writes "
        "the compile's thread count into its CPU kernels, and files compiled with more run "
        f"slower on fewer (default: {COMPILE_THREADS}, pair_style allegro's one thread per rank)",
    )
    parser.add_argument(
        "--out-dir", type=pathlib.Path, default=None, help="output folder (default: beside MODEL)"
    )
    parser.add_argument("--name", default=None, help="file name stem (default: MODEL's stem)")
    parser.add_argument(
        "--data-file",
        default="system.data",
        help="LAMMPS data file the input script reads (default: system.data; write it with `nequip-moe assign`)",
    )
    add_balance_arguments(parser)
    parser.set_defaults(func=run)


def add_balance_arguments(parser):
    """``--cost-weights`` and ``--balance``, for the commands that write LAMMPS inputs."""
    parser.add_argument(
        "--cost-weights",
        metavar="NAME=COST,...|BENCH.json",
        help="cost per atom of each expert for MPI load balancing, e.g. big=8.3,small=1, or "
        "the JSON of `nequip-moe bench --json` (its `cost_weights`); default: atom counts "
        "(gated MoEs: not accepted, their inputs balance measured time)",
    )
    parser.add_argument(
        "--balance",
        choices=BALANCE_STYLES,
        default="shift",
        help="load balancing of a pair_style allegro input: shift (brick decomposition), rcb "
        "(comm_style tiled) or none (default: shift)",
    )


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(
            f"`{' '.join(map(str, cmd))}` failed:\n{(proc.stderr or proc.stdout)[-3000:]}"
        )


def _replace(tmp: pathlib.Path, final: pathlib.Path) -> pathlib.Path:
    os.replace(tmp, final)
    print(f"  wrote {final}")
    return final


def run(args):
    model = pathlib.Path(args.model).resolve()
    if not model.is_file():
        raise FileNotFoundError(f"model file `{model}` does not exist")
    if str(model).endswith(".nequip.pt2"):
        raise ValueError(f"`{model}` is already compiled: deploy a checkpoint or a package")
    metadata = read_metadata(model)
    table = model_types(metadata, f"`{model}`")
    gated = isinstance(table, GatedTypes)
    if "pair_allegro" in args.targets:
        check_strictly_local(metadata, model.name, "--targets pair_allegro (pair_style allegro)")
    if gated and args.cost_weights:
        raise ValueError(f"`{model.name}`: {GATED_COST_WEIGHTS}")
    cost_weights = (
        parse_cost_weights(args.cost_weights, table.expert_names) if args.cost_weights else None
    )
    out_dir = (args.out_dir or model.parent).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or model.name.split(".")[0]

    with tempfile.TemporaryDirectory(dir=out_dir) as work:
        work = pathlib.Path(work)
        # nequip-compile re-instantiates the training data: run from the checkpoint's folder
        if str(model).endswith(".nequip.zip"):
            package = model
        else:
            print(f"nequip-package build {model}")
            package = work / f"{name}.nequip.zip"
            _run([nequip_tool("nequip-package"), "build", str(model), str(package)], cwd=model.parent)
            package = _replace(package, out_dir / package.name)

        compiled = {}
        for target in args.targets:
            print(f"nequip-compile --target {target} --device {args.device} "
                  f"({args.compile_threads} thread(s))")
            out = work / f"{name}_{target}.nequip.pt2"
            try:
                compile_model(package, out, target, args.device, args.compile_threads,
                              cwd=model.parent)
            except RuntimeError as e:
                raise ValueError(str(e)) from e
            compiled[target] = _replace(out, out_dir / out.name)

        types_file = work / f"{name}.types.yaml"
        types = {"type_names": table.type_names, "experts": table.expert_names}
        if gated:
            # no composite types: the gate weighs the experts (g for the first, 1 - g)
            types["gate"] = table.gate
        else:
            types["composite_types"] = table.to_config()
        types["r_max"] = float(metadata["r_max"])
        types_file.write_text(yaml.safe_dump(types, sort_keys=False))
        _replace(types_file, out_dir / types_file.name)
        lammps_targets = [t for t in args.targets if t in ("pair_allegro", "pair_nequip")]
        if lammps_targets:
            target = lammps_targets[0]
            script = work / f"{name}.lammps.in"
            script.write_text(
                lammps_input(
                    compiled[target].name,
                    table,
                    args.data_file,
                    pair_style=target.split("_")[1],
                    cost_weights=cost_weights,
                    balance=args.balance,
                )
            )
            _replace(script, out_dir / script.name)
    print(f"{'types' if gated else 'composite types'}: {table.describe()}")
