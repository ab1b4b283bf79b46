"""Peak memory of one model call, each model in a fresh subprocess.

CPU: resident set size, its peak (``VmHWM``) reset through ``/proc/self/clear_refs`` after a
warm-up call, with a fixed ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the resident
set (``ru_maxrss`` would not do: a forked child keeps its parent's resident size at the fork as
a floor). CUDA: ``torch.cuda.max_memory_allocated``.
"""

import json
import os
import subprocess
import sys
from typing import Callable, Dict

import numpy as np
import torch

import ase

from nequip_moe.benchmarking.models import BenchModel, load_bench_model
from nequip_moe.benchmarking.speed import high_fidelity_mask, synchronize, time_call

# glibc allocations from this size on are mmapped and returned to the system when freed
# (a fixed threshold turns off glibc's adaptive one, which keeps freed tensors resident)
MMAP_THRESHOLD = 1 << 16


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_call_memory(call: Callable[[], None], device: torch.device) -> Dict[str, int]:
    """Memory before and at the peak of one ``call``, after one untimed warm-up call."""
    call()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        call()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size
        baseline = _proc_status_bytes("VmRSS")
        call()
        peak = _proc_status_bytes("VmHWM")
    return {"baseline_bytes": baseline, "peak_bytes": peak, "call_bytes": peak - baseline}


def memory_worker():
    """Entry point of a measurement subprocess: JSON spec on stdin, JSON result on stdout."""
    spec = json.load(sys.stdin)
    from nequip.utils.global_state import set_global_state

    set_global_state(allow_tf32=False)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model = load_bench_model(spec["name"], spec["path"], device, spec["hf_expert"])
    atoms = ase.Atoms(
        numbers=spec["numbers"], positions=spec["positions"], cell=spec["cell"], pbc=spec["pbc"]
    )
    mask = high_fidelity_mask(atoms, spec["fraction"], model.forced_high_fidelity(atoms))
    data = model.inputs(atoms, mask, device)
    print(json.dumps(peak_call_memory(lambda: time_call(model.model, data, device), device)))


def measure_memory(
    model: BenchModel, atoms: ase.Atoms, fraction: float, device: torch.device
) -> Dict[str, int]:
    """Peak memory of one call of ``model`` on ``atoms``, measured in a fresh subprocess."""
    if device.type == "cpu" and not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError("CPU peak-memory measurement needs Linux /proc")
    spec = {
        "name": model.name,
        "path": model.path,
        "hf_expert": None if model.experts is None else model.experts[0],
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "cell": np.asarray(atoms.cell).tolist(),
        "pbc": atoms.pbc.tolist(),
        "fraction": fraction,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    proc = subprocess.run(
        [sys.executable, "-c",
         "from nequip_moe.benchmarking.memory import memory_worker; memory_worker()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of `{model.name}` failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_section(
    models: Dict[str, BenchModel], atoms: ase.Atoms, fraction: float, device: torch.device
) -> Dict:
    """Peak memory of the MoE (at ``fraction``) and of both experts alone on one structure;
    ``moe_over_big`` is ``None`` when all-big's call stays within memory the process had
    already (0 bytes measured: a tiny model on a small structure)."""
    result = {
        "n_atoms": len(atoms),
        "hf_fraction_target": fraction,
        "method": "CUDA max_memory_allocated of one call after a warm-up, fresh subprocess"
        if device.type == "cuda"
        else "peak RSS (VmHWM) of one call after a warm-up, reset via /proc/self/clear_refs, "
        f"minus the RSS before it; fresh subprocess, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}",
    }
    for name, model in models.items():
        result[name] = measure_memory(model, atoms, fraction, device)
    big = result["big"]["call_bytes"]
    result["moe_over_big"] = result["moe"]["call_bytes"] / big if big > 0 else None
    return result
