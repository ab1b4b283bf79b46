"""NVE energy conservation with ASE's velocity Verlet: drift and the dt^2 scaling of the energy
fluctuation, the marks of a conservative force field integrated correctly."""

import time
from typing import Dict, Optional, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet


def nve_drift(
    calc: Calculator, atoms: Atoms, steps: int, timestep_fs: float = 1.0,
    temperature_k: float = 300.0, seed: int = 0,
) -> Dict:
    """Velocity Verlet from ``temperature_k``: total-energy drift (slope of a linear fit,
    meV/atom/ps), the fluctuation about it and the largest excursion (meV/atom).

    Args:
        calc: ASE calculator
        atoms: start structure (with ``expert`` labels for static MoE calculators)
        steps: number of steps
        timestep_fs: timestep (fs)
        temperature_k: temperature of the initial Maxwell-Boltzmann velocities (K)
        seed: seed of the initial velocities
    """
    if steps < 2:
        raise ValueError(f"NVE needs at least 2 steps, got {steps}")
    atoms = atoms.copy()
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    energies = np.array(energies) / len(atoms)
    times_ps = np.arange(len(energies)) * timestep_fs / 1000.0
    slope, intercept = np.polyfit(times_ps, energies, 1)
    fluctuation = energies - (slope * times_ps + intercept)
    return {
        "atoms": len(atoms),
        "steps": int(steps),
        "timestep_fs": float(timestep_fs),
        "temperature_k": float(temperature_k),
        "drift_mev_per_atom_per_ps": float(1000.0 * slope),
        "fluctuation_mev_per_atom": float(1000.0 * fluctuation.std()),
        "max_deviation_mev_per_atom": float(1000.0 * np.abs(energies - energies[0]).max()),
        "seconds_per_step": seconds / steps,
        "times_ps": times_ps.tolist(),
        "energies_ev_per_atom": energies.tolist(),
    }


def nve_timestep_scaling(
    calc: Calculator, atoms: Atoms, steps: int, timestep_fs: float = 1.0,
    temperature_k: float = 300.0, seed: int = 0,
) -> Dict:
    """NVE at ``timestep_fs`` (``steps`` steps) and at twice it over the same simulated time:
    the drift of each, and the exponent ``p`` of the energy fluctuation ~ dt^p (velocity
    Verlet on a conservative force field: p = 2).

    Args:
        calc: ASE calculator
        atoms: start structure
        steps: steps at ``timestep_fs`` (half as many at twice it)
        timestep_fs: the smaller timestep (fs)
        temperature_k: initial temperature (K)
        seed: seed of the initial velocities (the same for both runs)
    """
    runs = {
        "dt": nve_drift(calc, atoms, steps, timestep_fs, temperature_k, seed),
        "2dt": nve_drift(calc, atoms, max(2, steps // 2), 2.0 * timestep_fs, temperature_k, seed),
    }
    small, large = (runs[k]["fluctuation_mev_per_atom"] for k in ("dt", "2dt"))
    runs["exponent"] = float(np.log2(large / small)) if small > 0 and large > 0 else None
    return runs


def nve_structure(frames: Sequence[Atoms], mixed: Sequence[bool]) -> Optional[Atoms]:
    """The frame of median size among those with both regions (``mixed``), else the largest
    frame; ``None`` without frames."""
    if not frames:
        return None
    candidates = [a for a, m in zip(frames, mixed) if m] or [max(frames, key=len)]
    return sorted(candidates, key=len)[len(candidates) // 2].copy()
