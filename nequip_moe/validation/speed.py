"""Speed of the MoE against the all-high-fidelity model, beside its ideal bound.

The ideal speed-up of an MoE whose high-fidelity expert runs on a fraction ``f_high`` of the
atoms and the low-fidelity one on ``f_low`` (``1 - f_high`` for static regions; a gated MoE's
blend zone counts twice), at the cost ratio ``c`` of the low- over the high-fidelity expert
per atom, is ``1 / (f_high + f_low c)``; ``c`` is measured by timing each expert alone on the
same structure.
"""

import time
from typing import Dict, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator


def time_calculation(calc: Calculator, atoms: Atoms, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times (s) of one energy + forces evaluation (after one warm-up)."""
    best = np.inf
    for k in range(repeats + 1):
        copy = atoms.copy()
        calc.reset()
        start = time.perf_counter()
        calc.calculate(copy, ["energy", "forces"])
        if k > 0:
            best = min(best, time.perf_counter() - start)
    return float(best)


def speedup(
    moe: Calculator,
    atoms: Atoms,
    f_high: Optional[float],
    f_low: Optional[float] = None,
    reference: Optional[Calculator] = None,
    experts: Optional[Sequence[Calculator]] = None,
    repeats: int = 3,
) -> Dict:
    """Measured speed-up of the MoE over the reference on ``atoms`` and the ideal bound.

    Args:
        moe: the MoE (regions from the structure's labels, or its gate)
        atoms: the structure to time
        f_high: fraction of the atoms the high-fidelity expert evaluates (``None``: unknown,
            no ideal bound)
        f_low: fraction the low-fidelity expert evaluates (default ``1 - f_high``)
        reference: the all-high-fidelity model (default ``None``: no measured speed-up)
        experts: high- and low-fidelity expert alone, to measure the cost ratio ``c``
            (default ``None``: no ideal bound)
        repeats: timed evaluations of each (best of)
    """
    if f_high is not None and f_low is None:
        f_low = 1.0 - f_high
    seconds = {"moe": time_calculation(moe, atoms, repeats)}
    result = {"atoms": len(atoms), "f_high": f_high, "f_low": f_low, "repeats": repeats}
    if reference is not None:
        seconds["reference"] = time_calculation(reference, atoms, repeats)
        result["measured"] = seconds["reference"] / seconds["moe"]
    if experts is not None and f_high is not None:
        seconds["high_alone"] = time_calculation(experts[0], atoms, repeats)
        seconds["low_alone"] = time_calculation(experts[1], atoms, repeats)
        cost = seconds["low_alone"] / seconds["high_alone"]
        result["cost_ratio"] = cost
        result["ideal"] = 1.0 / (f_high + f_low * cost)
        result["measured_vs_high_alone"] = seconds["high_alone"] / seconds["moe"]
    result["seconds"] = seconds
    return result
