"""Where the MoE's time goes: torch.profiler on the eager MoE and on the big expert alone.

Runs forward + forces of the untrained default bench models (``nequip_moe.benchmarking``'s
``pt_co_moe.yaml``, or ``--config``) on one Pt(111) + CO bench slab and prints (1) the wall
time of each part of ``MixtureOfExpertsEnergy``'s forward pass -- routing (``expert_edges``: edge types, cutoff gather, ``nonzero``), each
expert's input gathering and network -- and (2) the top operators by self CPU time, forward and
backward, for the MoE and for the big expert alone.

    python benchmarks/profile_moe.py --size 16 --fraction 0.25
"""

import argparse
import statistics
import tempfile
import time

import torch

from nequip.utils.global_state import set_global_state

from nequip_moe.benchmarking.models import load_bench_model
from nequip_moe.benchmarking.options import DEFAULT_CONFIG
from nequip_moe.benchmarking.speed import high_fidelity_mask, time_call
from nequip_moe.benchmarking.structures import BenchSlab
from nequip_moe.benchmarking.untrained import untrained_checkpoints
from nequip_moe.nn import MixtureOfExpertsEnergy


def timed_parts(parts):
    """Wrap ``MixtureOfExpertsEnergy`` methods so that each call adds its wall time to ``parts``."""

    def wrap(name, method):
        def wrapper(self, data, expert_idx, *args, **kwargs):
            start = time.perf_counter()
            with torch.profiler.record_function(f"moe.{name}[{expert_idx}]"):
                out = method(self, data, expert_idx, *args, **kwargs)
            parts.setdefault(f"{name}[{expert_idx}]", []).append(time.perf_counter() - start)
            return out

        return wrapper

    for name in ("expert_edges", "expert_atomic_energy"):
        setattr(MixtureOfExpertsEnergy, name, wrap(name, getattr(MixtureOfExpertsEnergy, name)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--size", type=int, default=16, help="slab size (16: about 2,000 atoms)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    set_global_state(allow_tf32=False)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    atoms = BenchSlab(size=args.size, layers=args.layers).build()
    checkpoints = untrained_checkpoints(
        args.config, BenchSlab(size=3, layers=4).build(), tempfile.mkdtemp()
    )

    parts = {}
    timed_parts(parts)
    for name in ("moe", "big"):
        model = load_bench_model(name, checkpoints[name], device)
        mask = high_fidelity_mask(atoms, args.fraction, model.forced_high_fidelity(atoms))
        data = model.inputs(atoms, mask, device)
        time_call(model.model, data, device)  # warm-up
        parts.clear()
        totals = [time_call(model.model, data, device) for _ in range(args.repeats)]
        print(
            f"\n== {name}: N={len(atoms)}, f={mask.mean():.3f}, "
            f"edges {data['edge_index'].shape[1]}, forward + forces "
            f"{statistics.median(totals):.3f} s (median of {args.repeats})"
        )
        for part, times in parts.items():
            print(f"  {part:<28} {statistics.median(times):.4f} s (forward only)")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            time_call(model.model, data, device)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
