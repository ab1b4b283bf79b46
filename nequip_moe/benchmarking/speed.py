"""Timing of the MoE against its experts: speed-up vs the ideal bound, scaling, cost weights.

At high-fidelity fraction ``f`` the MoE speed-up ``t_big / t_moe`` is compared with the ideal
``1 / (f + (1 - f) c)`` of the cost model, where ``c = t_small / t_big`` is measured at the same
size: the efficiency ``speed-up / ideal`` shows what routing costs. High-fidelity atoms
(adsorbates, surface layers) often have fewer neighbours than bulk ones, so each row also gives
the ideal with the experts' shares of the edges in place of atom fractions
(``ideal_speedup_edges``, ``efficiency_edges``): the tighter yardstick of routing overhead.
"""

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import ase
from nequip.data import AtomicDataDict

from nequip_moe.benchmarking.models import BenchModel


def high_fidelity_mask(atoms: ase.Atoms, fraction: float, forced: np.ndarray) -> np.ndarray:
    """Atoms given to the high-fidelity expert: the ``forced`` ones, then the highest ones
    (largest z: adsorbates and top layers of a slab) until ``fraction`` of all atoms is reached.

    Args:
        atoms: the structure
        fraction: target high-fidelity fraction in ``[0, 1]``
        forced: boolean mask of atoms that must be high fidelity (elements the low-fidelity expert has no composite type for)
    """
    mask = forced.copy()
    missing = int(round(fraction * len(atoms))) - int(forced.sum())
    if missing > 0:
        by_height = np.argsort(-atoms.positions[:, 2], kind="stable")
        mask[by_height[~forced[by_height]][:missing]] = True
    return mask


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# what a timed call measures: wall time, or the CPU time of this process (CPU runs only: with
# one torch thread it is the call's own work, unaffected by other jobs sharing the machine)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_call(
    model: torch.nn.Module, data: AtomicDataDict.Type, device, clock: str = "wall"
) -> float:
    """Time (s) of one model call, forces included, by ``CLOCKS[clock]``."""
    now = CLOCKS[clock]
    synchronize(device)
    start = now()
    model(dict(data))[AtomicDataDict.FORCE_KEY]
    synchronize(device)
    return now() - start


def time_interleaved(
    calls: Dict[str, Callable[[], float]], repeats: int, warmup: int
) -> Dict[str, List[float]]:
    """Run every timed call ``warmup`` times, then ``repeats`` rounds of one call each.

    Interleaving spreads load fluctuations of a shared machine over all calls alike.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            times[key].append(call())
    return times


def speed_figures(t_moe: float, t_big: float, t_small: float, hf_fraction: float) -> Dict:
    """Speed-up of the MoE over the big expert, the ideal of the cost model, and their ratio."""
    cost_ratio = t_small / t_big
    ideal = 1.0 / (hf_fraction + (1.0 - hf_fraction) * cost_ratio)
    speedup = t_big / t_moe
    return {
        "cost_ratio": cost_ratio,
        "speedup": speedup,
        "ideal_speedup": ideal,
        "efficiency": speedup / ideal,
    }


def centre_fraction(data: AtomicDataDict.Type, atoms: np.ndarray) -> float:
    """Fraction of the edges of ``data`` centred on the masked ``atoms``."""
    centres = data[AtomicDataDict.EDGE_INDEX_KEY][0].cpu().numpy()
    return float(atoms[centres].mean())


def timed_inputs(
    models: Dict[str, BenchModel], atoms: ase.Atoms, fractions: Sequence[float], device
) -> Tuple[Dict[float, np.ndarray], Dict[str, AtomicDataDict.Type]]:
    """The high-fidelity mask of each fraction and the inputs of every timed call: ``big`` and
    ``small`` alone and the MoE at each fraction (``moe@f``)."""
    forced = models["moe"].forced_high_fidelity(atoms)
    masks = {f: high_fidelity_mask(atoms, f, forced) for f in fractions}
    inputs = {
        "big": models["big"].inputs(atoms, forced, device),
        "small": models["small"].inputs(atoms, forced, device),
    }
    for f, mask in masks.items():
        inputs[f"moe@{f}"] = models["moe"].inputs(atoms, mask, device)
    return masks, inputs


def speed_row(
    atoms: ase.Atoms,
    fraction: float,
    mask: np.ndarray,
    inputs: Dict[str, AtomicDataDict.Type],
    median: Dict[str, float],
) -> Dict:
    """The row of one fraction: figures from the median times of ``big``, ``small`` and
    ``moe@fraction`` (seconds), edge counts and atoms per second."""
    key = f"moe@{fraction}"
    hf_fraction = float(mask.mean())
    figures = speed_figures(median[key], median["big"], median["small"], hf_fraction)
    # the cost model per edge: each expert's share of the edges it evaluates alone
    hf_edges = centre_fraction(inputs["big"], mask)
    lf_edges = centre_fraction(inputs["small"], ~mask)
    ideal_edges = 1.0 / (hf_edges + lf_edges * figures["cost_ratio"])
    keys = (("moe", key), ("big", "big"), ("small", "small"))
    return {
        "n_atoms": len(atoms),
        "structure": {k: np.asarray(v).tolist() for k, v in atoms.info.items()},
        "target_fraction": fraction,
        "hf_fraction": hf_fraction,
        "n_hf_atoms": int(mask.sum()),
        "n_edges": {
            name: int(inputs[k][AtomicDataDict.EDGE_INDEX_KEY].shape[1]) for name, k in keys
        },
        "t_moe_s": median[key],
        "t_big_s": median["big"],
        "t_small_s": median["small"],
        **figures,
        "hf_edge_fraction": hf_edges,
        "lf_edge_fraction": lf_edges,
        "ideal_speedup_edges": ideal_edges,
        "efficiency_edges": figures["speedup"] / ideal_edges,
        "atoms_per_s": {name: len(atoms) / median[k] for name, k in keys},
    }


def speed_rows(
    models: Dict[str, BenchModel],
    atoms: ase.Atoms,
    fractions: Sequence[float],
    repeats: int,
    warmup: int,
    device: torch.device,
    clock: str = "wall",
) -> List[Dict]:
    """Time the MoE at every fraction and both experts alone on one structure; one row per fraction."""
    masks, inputs = timed_inputs(models, atoms, fractions, device)
    calls = {
        key: (lambda m=models[key.split("@")[0]].model, d=data: time_call(m, d, device, clock))
        for key, data in inputs.items()
    }
    times = time_interleaved(calls, repeats, warmup)
    median = {key: statistics.median(values) for key, values in times.items()}
    return [
        {
            **speed_row(atoms, f, mask, inputs, median),
            "times_s": {"moe": times[f"moe@{f}"], "big": times["big"], "small": times["small"]},
        }
        for f, mask in masks.items()
    ]


def fit_exponent(n_atoms: Sequence[int], times: Sequence[float]) -> Optional[float]:
    """Exponent ``b`` of ``t ~ N^b`` by least squares in log-log (``None`` below two sizes)."""
    if len(set(n_atoms)) < 2:
        return None
    return float(np.polyfit(np.log(n_atoms), np.log(times), 1)[0])


def scaling_from_rows(rows: List[Dict]) -> Dict[str, Dict]:
    """Time per atom against N for the big and small experts and the MoE at each fraction."""
    series = {}
    for row in rows:
        for label, t in (
            ("big", row["t_big_s"]),
            ("small", row["t_small_s"]),
            (f"moe f={row['target_fraction']:g}", row["t_moe_s"]),
        ):
            entry = series.setdefault(label, {"n_atoms": [], "time_s": []})
            if row["n_atoms"] not in entry["n_atoms"]:
                entry["n_atoms"].append(row["n_atoms"])
                entry["time_s"].append(t)
    for entry in series.values():
        entry["time_per_atom_s"] = [t / n for t, n in zip(entry["time_s"], entry["n_atoms"])]
        entry["exponent"] = fit_exponent(entry["n_atoms"], entry["time_s"])
    return series


def cost_weights(rows: List[Dict], experts: Sequence[str]) -> Dict[str, float]:
    """Each expert's cost per atom relative to the cheapest (cheapest = 1.0), for load balancing.

    Measured on the largest structure, where fixed per-call costs matter least: the
    high-fidelity expert alone costs ``t_big / N`` per atom, the low-fidelity one ``t_small / N``.

    Args:
        rows: speed rows
        experts: the MoE's (high-fidelity, low-fidelity) expert names
    """
    largest = max(rows, key=lambda r: r["n_atoms"])
    per_atom = dict(zip(experts, (largest["t_big_s"], largest["t_small_s"])))
    cheapest = min(per_atom.values())
    return {name: t / cheapest for name, t in per_atom.items()}
