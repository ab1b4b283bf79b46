"""The largest system a model evaluates (energy + forces) on a device, MoE against all-big.

Each model is called once on bench slabs of growing size, smallest first, until the device
runs out of memory (``torch.OutOfMemoryError``, as CUDA raises it) or the sizes run out. On a
GPU that finds where the MoE's smaller edge sets let it go beyond the big expert alone; on a
CPU (a dry run) the sizes run out first and every size tried fits.
"""

import time
from typing import Callable, Dict, Sequence

import ase
import torch

from nequip_moe.benchmarking.models import BenchModel
from nequip_moe.benchmarking.speed import high_fidelity_mask, synchronize


def _call(model: BenchModel, atoms: ase.Atoms, fraction: float, device: torch.device) -> Dict:
    """One call of ``model`` on ``atoms``: wall time and, on CUDA, the peak memory it allocated."""
    mask = high_fidelity_mask(atoms, fraction, model.forced_high_fidelity(atoms))
    data = model.inputs(atoms, mask, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    model.model(dict(data))
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"n_atoms": len(atoms), "time_s": seconds, "peak_bytes": peak}


def largest_fit(
    model: BenchModel,
    structures: Sequence[ase.Atoms],
    fraction: float,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> Dict:
    """Call ``model`` on each structure (smallest first) until it runs out of device memory.

    Args:
        model: the model (the MoE at ``fraction``, or an expert alone)
        structures: growing structures
        fraction: high-fidelity fraction of the MoE's atoms
        device: where the model runs

    Returns:
        ``largest_fit_atoms`` (``None`` if even the smallest failed), ``out_of_memory_atoms``
        (the first size that failed, ``None`` if all fit) and each call's time and peak memory
    """
    calls, failed = [], None
    for atoms in sorted(structures, key=len):
        try:
            calls.append(_call(model, atoms, fraction, device))
        except torch.OutOfMemoryError:
            failed = len(atoms)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        log(f"  {model.name}: N={len(atoms)} fits ({calls[-1]['time_s']:.3g} s)")
    return {
        "largest_fit_atoms": calls[-1]["n_atoms"] if calls else None,
        "out_of_memory_atoms": failed,
        "calls": calls,
    }


def capacity_section(
    models: Dict[str, BenchModel],
    structures: Sequence[ase.Atoms],
    fraction: float,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> Dict:
    """Largest system of the MoE (at ``fraction``) and of the big expert alone."""
    section = {"hf_fraction_target": fraction, "n_atoms_tried": sorted(len(a) for a in structures)}
    for name in ("moe", "big"):
        section[name] = largest_fit(models[name], structures, fraction, device, log)
    return section
