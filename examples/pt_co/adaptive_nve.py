"""NVE with moving chemistry for the adaptive-regions section (``adaptive.py``): a hot CO
gliding over Pt(111) at 700 K (kept on the surface by conservative walls), with a gate whose
high-fidelity region follows the CO, for (a) the gated MoE, (b) all-big, (c) the static MoE
relabelled every ``RELABEL_EVERY`` steps and (d) force mixing: total energy against time, its
drift and fluctuation, and the dt^2 scaling of the gated MoE's fluctuation.
"""

import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.calculator import Calculator
from ase.constraints import Hookean
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from adaptive_models import (
    FOLLOWING_GATE,
    ForceMixingCalculator,
    PathLike,
    gate_values,
    gated_model,
    plain_calculator,
    static_labels,
    static_model,
)

NVE_TEMPERATURE_K = 700.0
CO_KICK_EV = 0.3
RELABEL_EVERY = 20
TIMESTEP_FS = 1.0
DT_SCALING_FS = (0.5, 1.0, 2.0)


def zone_fractions(g: np.ndarray) -> Dict[str, float]:
    """Fractions of atoms in the gate's zones: big-only ``g == 1``, blend, small-only ``g == 0``."""
    g = np.asarray(g)
    n = max(len(g), 1)
    return {
        "big_only": float((g == 1).sum() / n),
        "blend": float(((g > 0) & (g < 1)).sum() / n),
        "small_only": float((g == 0).sum() / n),
    }


# ---------------------------------------------------------------- NVE with moving chemistry


def co_on_pt111(size=(3, 3, 4), vacuum: float = 8.0, height: float = 1.9) -> Atoms:
    """Periodic Pt(111) slab with one CO on a top site, C down (atoms: Pt..., O, C)."""
    slab = fcc111("Pt", size, vacuum=vacuum, a=3.92)
    add_adsorbate(slab, molecule("CO"), height, "ontop", mol_index=1)
    slab.pbc = True
    slab.info["description"] = (
        f"Pt(111) {size[0]}x{size[1]}, {size[2]} layers, periodic, one CO (C down) on a top site"
    )
    return slab


def nve_start(
    atoms: Optional[Atoms] = None,
    temperature_K: float = NVE_TEMPERATURE_K,
    kick_ev: float = CO_KICK_EV,
    seed: int = 0,
    wall_c: float = 2.3,
    wall_o: float = 3.6,
    wall_k: float = 5.0,
) -> Atoms:
    """Start of the NVE runs: Maxwell-Boltzmann velocities at ``temperature_K``, the CO given
    ``kick_ev`` of extra kinetic energy along x (zero total momentum after), and flat-bottomed
    harmonic walls (``ase.constraints.Hookean`` planes, conservative, counted in the potential
    energy) ``wall_c`` / ``wall_o`` Angstrom above the top Pt layer for C / O: the EMT-trained
    models bind CO by under 0.1 eV, so without them the hot CO desorbs.

    Args:
        atoms: a Pt slab with one CO (default ``co_on_pt111()``)
        temperature_K: initial temperature of all atoms
        kick_ev: extra lateral kinetic energy of the CO (eV)
        seed: seed of the velocities
        wall_c, wall_o: heights of the walls above the top Pt layer (Angstrom)
        wall_k: wall spring constant (eV/A^2)
    """
    atoms = (atoms if atoms is not None else co_on_pt111()).copy()
    symbols = np.array(atoms.get_chemical_symbols())
    pt = np.nonzero(symbols == "Pt")[0]
    c, o = int(np.nonzero(symbols == "C")[0][0]), int(np.nonzero(symbols == "O")[0][0])
    top = atoms.positions[pt, 2].max() - 0.5
    z_top = atoms.positions[pt][atoms.positions[pt, 2] > top, 2].mean()
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    momenta = atoms.get_momenta()
    masses = atoms.get_masses()
    co = [c, o]
    speed = np.sqrt(2.0 * kick_ev / masses[co].sum())
    momenta[co, 0] += masses[co] * speed
    atoms.set_momenta(momenta)
    Stationary(atoms)
    atoms.set_constraint(
        [
            Hookean(c, (0.0, 0.0, 1.0, -(z_top + wall_c)), wall_k),
            Hookean(o, (0.0, 0.0, 1.0, -(z_top + wall_o)), wall_k),
        ]
    )
    atoms.info["nve_start"] = {
        "temperature_K": temperature_K,
        "co_kick_ev": kick_ev,
        "seed": seed,
        "walls_above_top_layer_a": {"C": wall_c, "O": wall_o},
        "wall_k_ev_per_a2": wall_k,
    }
    return atoms


def energy_stats(times_ps: np.ndarray, energies: np.ndarray) -> Dict:
    """Drift (slope of a linear fit, eV/atom/ps), RMS fluctuation about it and largest
    excursion from the start (eV/atom) of a per-atom total-energy series."""
    slope, intercept = np.polyfit(times_ps, energies, 1)
    residual = energies - (slope * times_ps + intercept)
    return {
        "drift_ev_per_atom_per_ps": float(slope),
        "rms_fluctuation_ev_per_atom": float(np.sqrt(np.mean(residual**2))),
        "max_deviation_ev_per_atom": float(np.abs(energies - energies[0]).max()),
    }


def run_nve(
    atoms: Atoms,
    calc: Calculator,
    steps: int,
    timestep_fs: float = TIMESTEP_FS,
    relabel: Optional[Callable[[Atoms], np.ndarray]] = None,
    relabel_every: int = RELABEL_EVERY,
    gate: Optional[Callable[[Atoms], np.ndarray]] = None,
    labels_t0: Optional[np.ndarray] = None,
    sample_every: int = 1,
) -> Dict:
    """Velocity Verlet from ``atoms`` (with momenta, constraints): per-atom total energy against
    time, its drift and fluctuation; a fixed number of steps.

    Args:
        atoms: start (copied)
        calc: ASE calculator
        steps: number of steps
        timestep_fs: timestep
        relabel: static MoE: ``labels = relabel(atoms)`` stored in ``atoms.arrays["expert"]``
            at the start and every ``relabel_every`` steps; the energy jump of each change is
            recorded
        relabel_every: steps between relabellings
        gate: ``g = gate(atoms)`` sampled along the run (moving chemistry)
        labels_t0: static labels of the start, compared with ``g >= 0.5`` along the run
        sample_every: steps between samples
    """
    atoms = atoms.copy()
    symbols = np.array(atoms.get_chemical_symbols())
    carbon = int(np.nonzero(symbols == "C")[0][0]) if "C" in symbols else None
    if relabel is not None:
        atoms.arrays["expert"] = relabel(atoms)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    samples = {"step": [], "energy": [], "stale": [], "co_shift": []}
    jumps = []
    start_xy = atoms.positions[carbon, :2].copy() if carbon is not None else None

    def do_relabel():
        if dyn.nsteps == 0 or dyn.nsteps % relabel_every:
            return
        labels = relabel(atoms)
        if not np.array_equal(labels, atoms.arrays["expert"]):
            before = atoms.get_total_energy()
            atoms.arrays["expert"] = labels
            jumps.append(
                {"step": dyn.nsteps, "jump_ev_per_atom": (atoms.get_total_energy() - before) / len(atoms)}
            )

    def sample():
        if dyn.nsteps % sample_every:
            return
        samples["step"].append(dyn.nsteps)
        samples["energy"].append(atoms.get_total_energy() / len(atoms))
        if gate is not None and labels_t0 is not None:
            region = np.where(gate(atoms) >= 0.5, 0, 1)
            samples["stale"].append(int((region != labels_t0).sum()))
        if carbon is not None:
            samples["co_shift"].append(float(np.linalg.norm(atoms.positions[carbon, :2] - start_xy)))

    if relabel is not None:
        dyn.attach(do_relabel, interval=1)
    dyn.attach(sample, interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    times_ps = np.array(samples["step"]) * timestep_fs / 1000.0
    energies = np.array(samples["energy"])
    result = {
        "atoms": len(atoms),
        "steps": steps,
        "timestep_fs": timestep_fs,
        **energy_stats(times_ps, energies),
        "seconds_per_step": seconds / max(steps, 1),
        "times_ps": times_ps.tolist(),
        "energies_ev_per_atom": energies.tolist(),
        "co_lateral_shift_a": samples["co_shift"],
    }
    if samples["stale"]:
        result["stale_atoms"] = samples["stale"]
    if relabel is not None:
        result["relabelings"] = jumps
        result["relabel_every"] = relabel_every
        result["sum_abs_jumps_ev_per_atom"] = float(sum(abs(j["jump_ev_per_atom"]) for j in jumps))
    return result


def nve_comparison(
    big_file: PathLike,
    small_file: PathLike,
    steps: int,
    device: str = "cpu",
    seed: int = 0,
    gate_options: Optional[Dict] = None,
    timesteps_fs: Sequence[float] = DT_SCALING_FS,
    log: Callable[[str], None] = print,
) -> Dict:
    """NVE of (a) gated, (b) all-big, (c) static relabelled every ``RELABEL_EVERY`` steps,
    (d) force mixing, from one start at ``TIMESTEP_FS``; the gated MoE also at
    ``timesteps_fs`` over the same simulated time (dt^2 scaling of its fluctuation).

    Args:
        big_file, small_file: the two models
        steps: steps at ``TIMESTEP_FS`` (other timesteps: the same simulated time)
        device: device of the models
        seed: seed of the initial velocities
        gate_options: gate options (default ``FOLLOWING_GATE``)
        timesteps_fs: timesteps of the gated MoE's scaling runs
        log: progress messages
    """
    gate_options = dict(FOLLOWING_GATE if gate_options is None else gate_options)
    gated = gated_model(big_file, small_file, gate_options, device)
    big = plain_calculator(big_file, device)
    small = plain_calculator(small_file, device)
    calcs = {
        "gated": gated,
        "big": big,
        "static": static_model(big_file, small_file, device),
        "force_mixing": ForceMixingCalculator(big, small, gated),
    }
    return nve_runs(nve_start(seed=seed), calcs, steps, gate_options, timesteps_fs, log)


def nve_runs(
    start: Atoms,
    calcs: Dict[str, Calculator],
    steps: int,
    gate_options: Optional[Dict] = None,
    timesteps_fs: Sequence[float] = DT_SCALING_FS,
    log: Callable[[str], None] = print,
) -> Dict:
    """The runs of ``nve_comparison`` from ``start`` with the given calculators.

    Args:
        start: start structure with momenta and walls (``nve_start``)
        calcs: ``gated`` (a ``gated_model``), ``big``, ``static`` (a ``static_model``) and
            ``force_mixing`` calculators
        steps: steps at ``TIMESTEP_FS``
        gate_options: the gated model's gate options (for the static labels)
        timesteps_fs: timesteps of the gated MoE's scaling runs
        log: progress messages
    """
    gated = calcs["gated"]
    labels_t0 = static_labels(start, gate_options)

    def gate(atoms):
        # the gated run's own calculator keeps g of the current positions
        if gated.atoms is not None and np.array_equal(gated.atoms.positions, atoms.positions):
            return gated.results["gate"]
        return gate_values(gated, atoms)

    g0 = gate(start)
    runs = {}
    specs = {
        "gated": dict(calc=gated, gate=gate, labels_t0=labels_t0),
        "big": dict(calc=calcs["big"]),
        "static_relabelled": dict(
            calc=calcs["static"], relabel=lambda a: static_labels(a, gate_options)
        ),
        "force_mixing": dict(calc=calcs["force_mixing"]),
    }
    for name, spec in specs.items():
        t = time.perf_counter()
        runs[name] = run_nve(start, steps=steps, timestep_fs=TIMESTEP_FS, **spec)
        log(f"NVE {name}: {steps} steps in {time.perf_counter() - t:.0f} s")
    scaling = {}
    for dt in timesteps_fs:
        if dt == TIMESTEP_FS:
            scaling[dt] = runs["gated"]
            continue
        n = int(round(steps * TIMESTEP_FS / dt))
        t = time.perf_counter()
        scaling[dt] = run_nve(start, gated, n, timestep_fs=dt, sample_every=max(1, int(round(TIMESTEP_FS / dt))))
        log(f"NVE gated at {dt} fs: {n} steps in {time.perf_counter() - t:.0f} s")
    dts = sorted(scaling)
    rms = [scaling[dt]["rms_fluctuation_ev_per_atom"] for dt in dts]
    exponent = float(np.polyfit(np.log(dts), np.log(rms), 1)[0]) if len(dts) > 1 else None
    return {
        "structure": {
            "atoms": len(start),
            "formula": start.get_chemical_formula(),
            "slab": start.info.get("description", "Pt slab with one CO"),
            **start.info["nve_start"],
        },
        "gate_options": dict(gate_options or {}),
        "zones_t0": zone_fractions(g0),
        "static_big_atoms_t0": int((labels_t0 == 0).sum()),
        "runs": runs,
        "dt_scaling": {
            "timesteps_fs": dts,
            "rms_fluctuation_ev_per_atom": rms,
            "drift_ev_per_atom_per_ps": [scaling[dt]["drift_ev_per_atom_per_ps"] for dt in dts],
            "exponent": exponent,
        },
    }
