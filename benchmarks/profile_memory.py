"""Peak memory per call of the MoE and of its experts alone, against system size.

Builds the untrained models of a training config (optionally with a ``--preset`` of expert
sizes), compiles them with ``nequip-compile`` (unless ``--eager``), and measures the peak memory
of one call (energy + forces) of each model on bench slabs of several sizes, each in a fresh
subprocess (``nequip_moe.benchmarking.memory``). Memory grows with the number of edges, so each
model's peak is fitted as ``a + b * edges`` and extrapolated to a target slab size; the fits say
which model holds the memory and how much each edge costs.

    python benchmarks/profile_memory.py --preset paper --sizes 3 4 5 6 --target-size 16
"""

import argparse
import json
import pathlib

import numpy as np
import torch

from nequip.utils.global_state import set_global_state

from nequip_moe.benchmarking.memory import measure_memory
from nequip_moe.benchmarking.options import DEFAULT_CONFIG, MODEL_NAMES
from nequip_moe.benchmarking.runner import prepare_models
from nequip_moe.benchmarking.speed import high_fidelity_mask
from nequip_moe.benchmarking.structures import bench_slabs
from nequip_moe.benchmarking.untrained import untrained_checkpoints

GIB = 2**30


def edges(model, atoms, fraction, device) -> int:
    """Edges of ``model``'s input graph of ``atoms`` (the MoE: at its largest cutoff)."""
    mask = high_fidelity_mask(atoms, fraction, model.forced_high_fidelity(atoms))
    return int(model.inputs(atoms, mask, device)["edge_index"].shape[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--preset", default=None, help="expert sizes, e.g. paper")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 4, 5, 6])
    parser.add_argument("--target-size", type=int, default=16, help="16: 2,080 atoms")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default="benchmarks/out_memory")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    set_global_state(allow_tf32=False)
    device = torch.device("cpu")
    out_dir = pathlib.Path(args.out_dir) / f"{args.preset or 'config'}_{args.dtype}"
    slabs = bench_slabs(args.sizes)
    files = untrained_checkpoints(
        args.config, slabs[0], out_dir, args.dtype, None, args.preset
    )
    models = prepare_models(files, args.eager, out_dir, device, None, print)
    rows = []
    for atoms in slabs:
        row = {"n_atoms": len(atoms)}
        for name in MODEL_NAMES:
            model = models[name]
            row[name] = {
                "edges": edges(model, atoms, args.fraction, device),
                **measure_memory(model, atoms, args.fraction, device),
            }
        rows.append(row)
        print(
            f"N={len(atoms)}: "
            + ", ".join(
                f"{name} {row[name]['call_bytes'] / GIB:.2f} GiB ({row[name]['edges']} edges, "
                f"{row[name]['call_bytes'] / row[name]['edges'] / 1024:.1f} KiB/edge)"
                for name in MODEL_NAMES
            ),
            flush=True,
        )
    target = bench_slabs([args.target_size])[0]
    fits = {}
    for name in MODEL_NAMES:
        x = np.array([row[name]["edges"] for row in rows], dtype=float)
        y = np.array([row[name]["call_bytes"] for row in rows], dtype=float)
        slope, intercept = np.polyfit(x, y, 1)
        target_edges = edges(models[name], target, args.fraction, device)
        fits[name] = {
            "bytes_per_edge": slope,
            "intercept_bytes": intercept,
            "target_edges": target_edges,
            "target_call_bytes": intercept + slope * target_edges,
        }
        print(
            f"{name}: {slope / 1024:.1f} KiB/edge + {intercept / GIB:.2f} GiB; at "
            f"N={len(target)} ({target_edges} edges): {fits[name]['target_call_bytes'] / GIB:.1f} GiB"
        )
    result = {"options": vars(args), "rows": rows, "fits": fits, "target_atoms": len(target)}
    (out_dir / "memory.json").write_text(json.dumps(result, indent=1))
    print(f"results: {out_dir / 'memory.json'}")


if __name__ == "__main__":
    main()
