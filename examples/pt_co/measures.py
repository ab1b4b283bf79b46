"""Measurements of the Pt + CO example's report, each a function of models and frames.

Test errors (energy per atom by kind of frame, forces by class of atom), the bulk Pt equation
of state (of each MoE expert alone too), the force error against the distance from the
expert interface, the NVE energy drift in ASE and in LAMMPS, and the speed-up of the MoE over
the all-big model with its ideal bound (``nequip_moe.benchmarking``).
"""

import dataclasses
import pathlib
import time
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase import Atoms, units
from ase.eos import EquationOfState
from ase.md.verlet import VelocityVerlet
from ase.md.velocitydistribution import thermalize_momenta

from nequip.integrations.ase import NequIPCalculator

from nequip_moe._composite import TYPE_ELEMENTS_KEY
from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.integrations.model_files import is_compiled, read_metadata

ATOM_CLASSES = ("adsorbate", "hf_region", "interface", "bulk")
ATOM_CLASS_TITLES = {
    "adsorbate": "adsorbate (C, O)",
    "hf_region": "high-fidelity Pt (surface + buffer)",
    "interface": "interface shell (small-expert Pt next to the big region)",
    "bulk": "bulk (small-expert Pt beyond the shell)",
}
INTERFACE_SHELL = 3.0  # A: one Pt nearest-neighbour shell (2.77 A) around the big region
FRAME_GROUPS = ("bulk", "surface", "gas")
BIG, SMALL = 0, 1


@dataclasses.dataclass
class ReportModel:
    """A model of the report.

    Args:
        name: short name (keys of ``report.json``)
        title: name in tables and plots
        path: the file the report evaluates (compiled ``--target ase`` file, else package)
        device: device to evaluate on (the compile device for compiled files)
    """

    name: str
    title: str
    path: pathlib.Path
    device: str = "cpu"

    @property
    def is_moe(self) -> bool:
        return TYPE_ELEMENTS_KEY in self.metadata

    @property
    def metadata(self) -> Dict[str, str]:
        if not hasattr(self, "_metadata"):
            self._metadata = read_metadata(self.path)
        return self._metadata

    def calculator(self):
        """ASE calculator: ``MoECalculator`` (labels from ``atoms.arrays["expert"]``) for MoE models."""
        if self.is_moe:
            return MoECalculator.from_file(self.path, device=self.device)
        if is_compiled(self.path):
            return NequIPCalculator.from_compiled_model(
                self.path, device=self.device, chemical_species_to_atom_type_map=True
            )
        return NequIPCalculator._from_saved_model(
            self.path, device=self.device, chemical_species_to_atom_type_map=True
        )


# ---------------------------------------------------------------- atom classes


def interface_distance(atoms: Atoms) -> np.ndarray:
    """Signed distance (A) of every atom from the expert interface: the distance to the
    nearest atom of the other expert, negative inside the big region; ``nan`` in frames with
    one expert only.

    Args:
        atoms: frame with the per-atom ``expert`` array
    """
    expert = atoms.arrays["expert"]
    if len(set(expert.tolist())) < 2:
        return np.full(len(atoms), np.nan)
    distances = atoms.get_all_distances(mic=True)
    other = expert[None, :] != expert[:, None]
    nearest = np.where(other, distances, np.inf).min(axis=1)
    return np.where(expert == BIG, -nearest, nearest)


def atom_classes(atoms: Atoms) -> np.ndarray:
    """Class of every atom (``ATOM_CLASSES``): C and O are adsorbates, big-expert Pt the
    high-fidelity region, small-expert Pt within ``INTERFACE_SHELL`` of it the interface
    shell, and other small-expert Pt bulk.

    Args:
        atoms: frame with the per-atom ``expert`` array
    """
    distance = interface_distance(atoms)
    is_pt = atoms.numbers == 78
    big = atoms.arrays["expert"] == BIG
    shell = ~big & (distance < INTERFACE_SHELL)  # nan compares False
    return np.select(
        [~is_pt, big, shell], ["adsorbate", "hf_region", "interface"], default="bulk"
    )


def frame_group(atoms: Atoms) -> str:
    """``bulk`` (all small expert), ``gas`` (no Pt) or ``surface``."""
    if not (atoms.numbers == 78).any():
        return "gas"
    if (atoms.arrays["expert"] == SMALL).all():
        return "bulk"
    return "surface"


# ---------------------------------------------------------------- test errors


def predict(calc, frames: Sequence[Atoms]) -> List[Dict[str, np.ndarray]]:
    """Energy and forces of ``calc`` on every frame (copies keep the ``expert`` array)."""
    predictions = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        predictions.append(
            {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        )
    return predictions


def test_errors(frames: Sequence[Atoms], predictions) -> Dict:
    """Energy MAE (meV/atom) by frame group and force MAE (meV/A, per component) by atom class."""
    energy = {group: [] for group in ("all",) + FRAME_GROUPS}
    forces = {name: [] for name in ("all",) + ATOM_CLASSES}
    for atoms, pred in zip(frames, predictions):
        e_err = 1000.0 * abs(pred["energy"] - atoms.get_potential_energy()) / len(atoms)
        energy["all"].append(e_err)
        energy[frame_group(atoms)].append(e_err)
        f_err = 1000.0 * np.abs(pred["forces"] - atoms.get_forces())
        forces["all"].append(f_err)
        classes = atom_classes(atoms)
        for name in ATOM_CLASSES:
            forces[name].append(f_err[classes == name])

    def mean(values):
        values = np.concatenate([np.ravel(v) for v in values]) if values else np.array([])
        return float(values.mean()) if values.size else None

    return {
        "energy_mae_mev_per_atom": {k: mean(v) for k, v in energy.items()},
        "forces_mae_mev_per_a": {k: mean(v) for k, v in forces.items()},
    }


def force_error_by_distance(frames, predictions, bins=np.arange(-6.0, 6.5, 1.0)) -> Dict:
    """Mean per-atom force error norm (meV/A) in bins of signed distance from the interface."""
    distance = np.concatenate([interface_distance(a) for a in frames])
    error = np.concatenate(
        [
            1000.0 * np.linalg.norm(p["forces"] - a.get_forces(), axis=1)
            for a, p in zip(frames, predictions)
        ]
    )
    index = np.digitize(distance, bins)
    rows = []
    for k in range(1, len(bins)):
        selected = (index == k) & ~np.isnan(distance)
        if selected.any():
            rows.append(
                {
                    "distance_a": float(0.5 * (bins[k - 1] + bins[k])),
                    "force_error_mev_per_a": float(error[selected].mean()),
                    "atoms": int(selected.sum()),
                }
            )
    return {"bins": rows}


# ---------------------------------------------------------------- equation of state


def fit_eos(volumes: Sequence[float], energies: Sequence[float]) -> Dict:
    """Birch-Murnaghan fit per atom: V0 (A^3/atom), E0 (eV/atom), B0 (GPa), B0'."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ase warns of a minimum outside; checked below
            eos = EquationOfState(list(volumes), list(energies), eos="birchmurnaghan")
            eos.fit()
        e0, b0, bp, v0 = eos.eos_parameters
    except (RuntimeError, ValueError) as e:
        return {"fit_failed": str(e)}
    if b0 <= 0:
        return {"fit_failed": "no minimum (B0 <= 0)"}
    if not min(volumes) <= v0 <= max(volumes):
        return {"fit_failed": f"minimum V0 = {v0:.2f} A^3 outside the sampled volumes"}
    return {"V0": float(v0), "E0": float(e0), "B0_GPa": float(b0 / units.GPa), "B0_prime": float(bp)}


def eos_curves(eos_frames: Sequence[Atoms], models: Sequence[ReportModel]) -> Dict:
    """E(V) per atom of the reference and every model on the held-out bulk set; each MoE
    expert alone too (all atoms labelled with that expert)."""
    volumes = [a.get_volume() / len(a) for a in eos_frames]
    curves = {"reference": [a.get_potential_energy() / len(a) for a in eos_frames]}
    for model in models:
        calc = model.calculator()
        labellings = {model.name: None}
        if model.is_moe:
            labellings = {f"{model.name}:big_expert": BIG, f"{model.name}:small_expert": SMALL}
        for key, label in labellings.items():
            frames = [a.copy() for a in eos_frames]
            if label is not None:
                for atoms in frames:
                    atoms.arrays["expert"] = np.full(len(atoms), label)
            curves[key] = [p["energy"] / len(a) for a, p in zip(frames, predict(calc, frames))]
    return {
        "volumes": volumes,
        "energies": curves,
        "fits": {key: fit_eos(volumes, energies) for key, energies in curves.items()},
    }


# ---------------------------------------------------------------- dynamics


def nve_structure(test_frames: Sequence[Atoms]) -> Optional[Atoms]:
    """The test frame of median size among those with C or O and both experts (``None`` if
    there is none)."""
    mixed = [
        a for a in test_frames
        if frame_group(a) == "surface" and (a.numbers != 78).any()
        and (a.arrays["expert"] == SMALL).any()
    ]
    return sorted(mixed, key=len)[len(mixed) // 2].copy() if mixed else None


def nve_drift(calc, atoms: Atoms, steps: int, timestep_fs: float = 1.0, seed: int = 0) -> Dict:
    """Velocity Verlet from 300 K: total-energy drift (linear fit) and largest excursion.

    Args:
        calc: ASE calculator
        atoms: start structure (with ``expert`` labels for MoE calculators)
        steps: number of steps
        timestep_fs: timestep (fs)
        seed: seed of the initial velocities
    """
    atoms = atoms.copy()
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=300.0, rng=np.random.default_rng(seed))
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    energies = np.array(energies) / len(atoms)
    times_ps = np.arange(len(energies)) * timestep_fs / 1000.0
    slope = np.polyfit(times_ps, energies, 1)[0]
    return {
        "atoms": len(atoms),
        "steps": steps,
        "timestep_fs": timestep_fs,
        "drift_mev_per_atom_per_ps": float(1000.0 * slope),
        "max_deviation_mev_per_atom": float(1000.0 * np.abs(energies - energies[0]).max()),
        "seconds_per_step": seconds / steps,
        "energies_ev_per_atom": energies.tolist(),
    }


def lammps_nve(
    pair_allegro_file, atoms: Atoms, steps: int, device: str = "cpu", chunk: int = 10
) -> Dict:
    """NVE of the MoE in LAMMPS (``fix external`` stand-in for ``pair_style allegro``).

    Args:
        pair_allegro_file: MoE compiled with ``--target pair_allegro``
        atoms: start structure with ``expert`` labels
        steps: number of 1 fs steps
        device: device the file was compiled for
        chunk: steps between total-energy samples
    """
    import tempfile

    from nequip_moe.integrations.lammps_data import write_lammps_data
    from nequip_moe.integrations.lammps_driver import run_lammps_input
    from nequip_moe.integrations.lammps_input import lammps_input
    from nequip_moe.integrations.lammps_runtime import start_lammps
    from nequip_moe.integrations.model_files import read_composite_table

    table = read_composite_table(pair_allegro_file)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = pathlib.Path(tmp) / "structure.data"
        write_lammps_data(data_file, atoms, atoms.arrays["expert"], table)
        lmp = start_lammps()
        script = lammps_input(pair_allegro_file, table, data_file, num_steps=0)
        run_lammps_input(lmp, script, device=device)
        energies = [lmp.get_thermo("etotal")]
        for _ in range(steps // chunk):
            lmp.command(f"run {chunk}")
            energies.append(lmp.get_thermo("etotal"))
        lmp.close()
    energies = np.array(energies) / len(atoms)
    times_ps = np.arange(len(energies)) * chunk / 1000.0
    return {
        "atoms": len(atoms),
        "steps": steps,
        "timestep_fs": 1.0,
        "drift_mev_per_atom_per_ps": float(1000.0 * np.polyfit(times_ps, energies, 1)[0]),
        "max_deviation_mev_per_atom": float(1000.0 * np.abs(energies - energies[0]).max()),
    }


# ---------------------------------------------------------------- speed


def speedup(
    files: Dict[str, pathlib.Path], hf_fraction: float, out_dir, device: str = "cpu", size: int = 6
) -> Dict:
    """MoE vs all-big speed-up on a Pt(111) + CO slab at ``hf_fraction``, with the ideal bound
    ``1 / (f + (1 - f) c)``, ``c`` the measured small/big cost ratio (``nequip_moe.benchmarking``).

    Args:
        files: ``{moe, big, small}`` -> model files (compiled ``--target ase`` files are timed as they are)
        hf_fraction: high-fidelity fraction of the timed slab
        out_dir: where the benchmark may put compiled models
        device: device of the models
        size: surface atoms along each direction of the slab
    """
    from nequip_moe.benchmarking import BenchOptions, run_benchmark
    from structures import write_bench_slabs

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bench_slabs(out_dir / "slab.xyz", sizes=[size])
    options = BenchOptions(
        structure=str(out_dir / "slab.xyz"),
        model_files={k: str(v) for k, v in files.items()},
        fractions=(hf_fraction,),
        repeats=5,
        memory=False,
        training=False,
        device=device,
        eager=not all(is_compiled(p) for p in files.values()),
        out_dir=str(out_dir),
    )
    row = run_benchmark(options, log=lambda message: print(f"    {message}"))["rows"][0]
    return {
        "measured": row["speedup"],
        "ideal": row["ideal_speedup"],
        "efficiency": row["efficiency"],
        "hf_fraction": row["hf_fraction"],
        "cost_ratio_small_over_big": row["cost_ratio"],
        "atoms": row["n_atoms"],
        "seconds": {"moe": row["t_moe_s"], "big": row["t_big_s"], "small": row["t_small_s"]},
        "compiled": not options.eager,
    }
