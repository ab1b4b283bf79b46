"""The preset rows: named expert sizes (``options.PRESETS``) timed within a memory budget.

Paper-size experts need a lot of memory per edge: the big preset expert's compiled call keeps
two per-edge buffers of its tensor product alive, ``[edges, 64 channels, 31 paths, 16]`` and
the outer product ``[edges, 64, 16, 16]`` (376 KiB per edge in float64, 188 KiB in float32),
so all-big on the 2,080-atom slab (154k edges at r_max 7 A) needs about 55 GiB. Each model's
peak memory is therefore measured per edge on the smallest structure (a fresh subprocess per
model, ``memory.measure_memory``) and predicted on the target structure from its edges: the
MoE's from the experts' per-edge costs and its own split of the edges by centre. A model whose
prediction exceeds ``preset_memory_gib`` is timed on the two largest smaller structures that
fit and its time extrapolated to the target with the scaling exponent measured between them
(``t ~ N^b``); such rows say so under ``extrapolated``.
"""

import pathlib
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import ase
import torch

from nequip.data import AtomicDataDict

from nequip_moe.benchmarking.memory import measure_memory
from nequip_moe.benchmarking.models import BenchModel, prepare_models
from nequip_moe.benchmarking.options import BenchOptions
from nequip_moe.benchmarking.speed import (
    centre_fraction,
    cost_weights,
    fit_exponent,
    speed_row,
    time_call,
    time_interleaved,
    timed_inputs,
)

GIB = 2**30


def _num_edges(data: AtomicDataDict.Type) -> int:
    return int(data[AtomicDataDict.EDGE_INDEX_KEY].shape[1])


class TimedInputs:
    """Inputs of every timed model on one structure (``speed.timed_inputs``), their edges
    split by the expert that evaluates them, and their predicted peak memory."""

    def __init__(self, models: Dict[str, BenchModel], atoms: ase.Atoms, fractions, device):
        self.atoms = atoms
        self.masks, self.data = timed_inputs(models, atoms, fractions, device)
        # (edges of the big expert, edges of the small expert) of each model's call
        self.edges = {
            "big": (_num_edges(self.data["big"]), 0),
            "small": (0, _num_edges(self.data["small"])),
        }
        for f, mask in self.masks.items():
            data = self.data[f"moe@{f}"]
            hf = centre_fraction(data, mask)
            self.edges[f"moe@{f}"] = (hf * _num_edges(data), (1.0 - hf) * _num_edges(data))

    def predicted_bytes(self, key: str, bytes_per_edge: Tuple[float, float]) -> float:
        """Peak call memory of ``key`` from the experts' memory per edge."""
        return sum(n * b for n, b in zip(self.edges[key], bytes_per_edge))


def probe_memory(
    models: Dict[str, BenchModel], atoms: ase.Atoms, fractions, device
) -> Dict:
    """Peak call memory of every model on ``atoms`` (measured), the experts' memory per edge,
    and the MoE's prediction from them (a check of the prediction)."""
    inputs = TimedInputs(models, atoms, fractions, device)
    probe = {"n_atoms": len(atoms), "call_bytes": {}, "predicted_call_bytes": {}}
    for key in inputs.data:
        fraction = float(key.split("@")[1]) if "@" in key else 0.0
        model = models[key.split("@")[0]]
        probe["call_bytes"][key] = measure_memory(model, atoms, fraction, device)["call_bytes"]
    per_edge = (
        probe["call_bytes"]["big"] / inputs.edges["big"][0],
        probe["call_bytes"]["small"] / inputs.edges["small"][1],
    )
    probe["bytes_per_edge"] = {"big": per_edge[0], "small": per_edge[1]}
    for key in inputs.data:
        probe["predicted_call_bytes"][key] = inputs.predicted_bytes(key, per_edge)
    return probe


def _time_keys(models, inputs: TimedInputs, keys: Sequence[str], options, device):
    calls = {
        key: (
            lambda m=models[key.split("@")[0]].model, d=inputs.data[key]: time_call(
                m, d, device, options.clock
            )
        )
        for key in keys
    }
    return time_interleaved(calls, options.repeats, options.warmup)


def budget_rows(
    models: Dict[str, BenchModel],
    structures: List[ase.Atoms],
    fractions: Sequence[float],
    bytes_per_edge: Tuple[float, float],
    budget_bytes: float,
    options: BenchOptions,
    device: torch.device,
    log: Callable[[str], None],
) -> List[Dict]:
    """Speed rows on ``structures[-1]``; models predicted over the budget are extrapolated
    from the two largest smaller structures that fit."""
    target = TimedInputs(models, structures[-1], fractions, device)
    predicted = {key: target.predicted_bytes(key, bytes_per_edge) for key in target.data}
    fit = [key for key in target.data if predicted[key] <= budget_bytes]
    times = _time_keys(models, target, fit, options, device) if fit else {}
    median = {key: statistics.median(values) for key, values in times.items()}
    extrapolated = {}
    smaller = None
    for key in (k for k in target.data if k not in fit):
        if smaller is None:
            smaller = [TimedInputs(models, a, fractions, device) for a in structures[:-1]]
        ladder = [i for i in smaller if i.predicted_bytes(key, bytes_per_edge) <= budget_bytes]
        if len(ladder) < 2:
            raise ValueError(
                f"preset `{key}` needs {predicted[key] / GIB:.1f} GiB at {len(target.atoms)} "
                f"atoms, over --preset-memory-gib {budget_bytes / GIB:g}, and fewer than two "
                "smaller structures fit to extrapolate from: add smaller sizes (e.g. --slabs "
                "4 6 16) or raise the budget"
            )
        ladder = ladder[-2:]
        measured = [
            statistics.median(_time_keys(models, step, [key], options, device)[key])
            for step in ladder
        ]
        sizes = [len(step.atoms) for step in ladder]
        exponent = fit_exponent(sizes, measured)
        median[key] = measured[-1] * (len(target.atoms) / sizes[-1]) ** exponent
        extrapolated[key] = {"from_atoms": sizes, "times_s": measured, "exponent": exponent}
        log(
            f"  {key}: {predicted[key] / GIB:.1f} GiB predicted, over budget: extrapolated "
            f"from N={sizes} (t ~ N^{exponent:.2f}) to {median[key]:.3g} s"
        )
    rows = []
    for f, mask in target.masks.items():
        keys = (("moe", f"moe@{f}"), ("big", "big"), ("small", "small"))
        rows.append(
            {
                **speed_row(target.atoms, f, mask, target.data, median),
                "times_s": {name: times.get(k) for name, k in keys},
                "predicted_call_bytes": {name: predicted[k] for name, k in keys},
                "extrapolated": {name: extrapolated[k] for name, k in keys if k in extrapolated},
            }
        )
    return rows


def preset_section(
    options: BenchOptions,
    structures: List[ase.Atoms],
    device: torch.device,
    log: Callable[[str], None],
) -> Dict:
    """Speed rows, cost weights and memory of the preset experts, for each ``preset_dtypes``.

    Args:
        options: the run's options (``preset``, ``preset_dtypes``, ``preset_fractions``,
            ``preset_max_atoms``, ``preset_memory_gib``)
        structures: the run's structures, smallest first
        device: where the models run
    """
    from nequip_moe.benchmarking.untrained import untrained_checkpoints

    ladder = [a for a in structures if options.preset_max_atoms is None
              or len(a) <= options.preset_max_atoms]
    if not ladder:
        raise ValueError(f"no structure has at most --preset-max-atoms {options.preset_max_atoms} atoms")
    budget = options.preset_memory_gib * GIB
    section = {"n_atoms": len(ladder[-1]), "memory_budget_bytes": budget}
    for dtype in options.preset_dtypes:
        out_dir = pathlib.Path(options.out_dir) / f"preset_{options.preset}_{dtype}"
        log(f"preset {options.preset} {dtype}: {len(ladder[-1])} atoms, {options.preset_memory_gib:g} GiB")
        files = untrained_checkpoints(
            options.config, structures[0], out_dir, dtype, options.hf_expert, options.preset
        )
        start = time.perf_counter()
        models = prepare_models(files, options.eager, out_dir, device, options.hf_expert, log)
        prepare_s = time.perf_counter() - start
        probe = probe_memory(models, ladder[0], options.preset_fractions, device)
        per_edge = (probe["bytes_per_edge"]["big"], probe["bytes_per_edge"]["small"])
        log(
            f"  memory per edge at N={len(ladder[0])}: big {per_edge[0] / 1024:.1f} KiB, "
            f"small {per_edge[1] / 1024:.1f} KiB"
        )
        rows = budget_rows(
            models, ladder, options.preset_fractions, per_edge, budget, options, device, log
        )
        section[dtype] = {
            "rows": rows,
            "cost_weights": cost_weights(rows, models["moe"].experts),
            "memory_probe": probe,
            "prepare_s": prepare_s,
        }
    return section
