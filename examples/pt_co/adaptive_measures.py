"""Accuracy and speed of the adaptive-regions section (``adaptive.py``): test errors of the
gated MoE against the static MoE on the gate's own region, all-big and all-small, by class of
atom; eager timings of the gated and static MoEs against all-big with the blend zone counted
twice in the ideal.
"""

import pathlib
import statistics
from typing import Dict, Optional

import numpy as np
import torch
from ase import Atoms

from nequip.data import AtomicDataDict

from adaptive_nve import zone_fractions
from adaptive_models import (
    FOLLOWING_GATE,
    PathLike,
    gate_values,
    gated_model,
    plain_calculator,
    static_labels,
    static_model,
)


# ---------------------------------------------------------------- accuracy


def accuracy(
    big_file: PathLike, small_file: PathLike, data_dir: PathLike, device: str = "cpu"
) -> Dict:
    """Test errors of the gated MoE (default gate, and the NVE's adsorbate-following gate), the
    static MoE on the same experts and both models alone, by class of atom
    (``measures.atom_classes``: from the split's labels). The static MoE runs twice: on the
    default gate's own region (``static_labels``: the same high-fidelity atoms, the claim's
    comparison) and on the split's labels (the example's buffered regions, for reference)."""
    from ase.io import read

    import measures
    from measures import ATOM_CLASSES, atom_classes, predict, relabelled, test_errors

    test = read(pathlib.Path(data_dir) / "test.xyz", index=":")
    gate_region = [relabelled(a, static_labels(a)) for a in test]
    static = static_model(big_file, small_file, device)
    frames_and_calcs = {
        "gated": (test, gated_model(big_file, small_file, None, device)),
        "gated_following": (test, gated_model(big_file, small_file, FOLLOWING_GATE, device)),
        "static": (gate_region, static),
        "static_split": (test, static),
        "big": (test, plain_calculator(big_file, device)),
        "small": (test, plain_calculator(small_file, device)),
    }
    calcs = {name: calc for name, (_, calc) in frames_and_calcs.items()}
    errors = {
        name: test_errors(test, predict(calc, frames))
        for name, (frames, calc) in frames_and_calcs.items()
    }
    zones = {}
    for name in ("gated", "gated_following"):
        g = np.concatenate([gate_values(calcs[name], a) for a in test])
        zones[name] = zone_fractions(g)
    return {
        "frames": len(test),
        "classes": list(ATOM_CLASSES),
        "class_titles": dict(getattr(measures, "ATOM_CLASS_TITLES", {})),
        "errors": errors,
        "atom_counts": {
            c: int(sum((atom_classes(a) == c).sum() for a in test)) for c in ATOM_CLASSES
        },
        "static_hf_fraction": float(
            np.mean(np.concatenate([a.arrays["expert"] for a in gate_region]) == 0)
        ),
        "static_split_hf_fraction": float(
            np.mean(np.concatenate([a.arrays["expert"] for a in test]) == 0)
        ),
        "gate_zones": zones,
    }


# ---------------------------------------------------------------- speed


def bench_slab(size: int = 6, layers: int = 8, rattle: float = 0.02) -> Atoms:
    """The example's benchmark slab (``structures.BenchSlab``): Pt(111), CO on every 4th top site."""
    from structures import BenchSlab

    return BenchSlab(size, layers, rattle=rattle).build()


# timed structures: the example's benchmark slab, and the same slab rattled by 0.15 A (beyond
# 700 K amplitudes, ~0.1 A), where stretched Pt-Pt bonds put atoms in the default gate's blend zone
SPEED_STRUCTURES = {"bench": 0.02, "bench_rattled": 0.15}


def _edge_fraction(data: AtomicDataDict.Type, atoms: np.ndarray) -> float:
    """Fraction of the edges of ``data`` centred on the masked atoms."""
    centres = data[AtomicDataDict.EDGE_INDEX_KEY][0].cpu().numpy()
    return float(atoms[centres].mean())


def speed(
    big_file: PathLike,
    small_file: PathLike,
    device: str = "cpu",
    repeats: int = 7,
    warmup: int = 1,
    structures: Optional[Dict[str, Atoms]] = None,
) -> Dict:
    """Eager timing, interleaved in one run per structure: gated MoE (default gate), the static
    MoE with the big expert on the same atoms (``g > 0``), all-big and all-small.

    Times are the fastest of ``repeats`` calls (the median is kept as well).
    Ideal times from the zones (fractions of atoms ``f1`` big-only, ``fb`` blend, ``f0``
    small-only) with the blend zone counted twice: gated ``(f1 + fb) t_big + (fb + f0) t_small``,
    static ``(f1 + fb) t_big + f0 t_small``; and the tighter per-edge ideal with each expert's
    share of the edges centred on the atoms it evaluates in place of atom fractions (surface
    atoms have fewer neighbours). Speed-ups are ``t_big / t``.

    Args:
        big_file, small_file: the two models
        device: device of the models
        repeats: timed calls of each model
        warmup: untimed calls first
        structures: name -> structure (default ``SPEED_STRUCTURES`` of ``bench_slab``)
    """
    from nequip_moe.benchmarking.speed import time_call, time_interleaved

    if structures is None:
        structures = {name: bench_slab(rattle=r) for name, r in SPEED_STRUCTURES.items()}
    gated = gated_model(big_file, small_file, None, device)
    static = static_model(big_file, small_file, device)
    big = plain_calculator(big_file, device)
    small = plain_calculator(small_file, device)
    torch_device = torch.device(device)
    rows = {}
    for label, atoms in structures.items():
        atoms = atoms.copy()
        g = gate_values(gated, atoms)
        labelled = atoms.copy()
        labelled.arrays["expert"] = np.where(g > 0, 0, 1)
        inputs = {
            "gated": gated.atoms_to_data(atoms),
            "static": static.atoms_to_data(labelled),
            "big": big.atoms_to_data(atoms),
            "small": small.atoms_to_data(atoms),
        }
        models = {"gated": gated, "static": static, "big": big, "small": small}
        calls = {
            name: (lambda m=models[name].model, d=data: time_call(m, d, torch_device))
            for name, data in inputs.items()
        }
        times = time_interleaved(calls, repeats, warmup)
        # the fastest call: on a shared machine, load only ever adds time (median kept too)
        best = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        zones = zone_fractions(g)
        f1, fb, f0 = zones["big_only"], zones["blend"], zones["small_only"]
        t_big, t_small = best["big"], best["small"]
        e_big = _edge_fraction(inputs["big"], g > 0)
        e_small = _edge_fraction(inputs["small"], g < 1)
        e_small_static = _edge_fraction(inputs["small"], g == 0)
        ideal = {
            "gated": (f1 + fb) * t_big + (fb + f0) * t_small,
            "static": (f1 + fb) * t_big + f0 * t_small,
        }
        ideal_edges = {
            "gated": e_big * t_big + e_small * t_small,
            "static": e_big * t_big + e_small_static * t_small,
        }
        rows[label] = {
            "atoms": len(atoms),
            "rattle_a": float(atoms.info.get("rattle", float("nan"))),
            "zones": zones,
            "hf_fraction": f1 + fb,
            "edge_fractions": {"big": e_big, "small": e_small, "small_static": e_small_static},
            # the neighbour list each model gets: a gated MoE cannot know g before the call, so
            # every centre needs the big expert's cutoff (a static MoE prunes small-expert centres)
            "input_edges": {
                name: int(data[AtomicDataDict.EDGE_INDEX_KEY].shape[1]) for name, data in inputs.items()
            },
            "seconds": best,
            "median_seconds": median,
            "times_s": times,
            "speedup": {k: t_big / best[k] for k in ("gated", "static", "small")},
            "ideal_speedup": {k: t_big / v for k, v in ideal.items()},
            "efficiency": {k: ideal[k] / best[k] for k in ideal},
            "ideal_speedup_edges": {k: t_big / v for k, v in ideal_edges.items()},
            "efficiency_edges": {k: ideal_edges[k] / best[k] for k in ideal_edges},
            "gated_over_static": best["gated"] / best["static"],
            "ideal_gated_over_static": ideal_edges["gated"] / ideal_edges["static"],
        }
    return {
        "structure": "BenchSlab(size=6, layers=8): Pt(111) 6x6x8 + CO on every 4th top site",
        "repeats": repeats,
        "rows": rows,
    }
