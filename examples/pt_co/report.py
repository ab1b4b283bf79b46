"""Stage 5 of the Pt + CO example: the validation report.

From the trained models and the held-out data it measures, for every model: test errors
(energy per atom by kind of frame, forces by class of atom), the bulk Pt equation of state
(of each MoE expert alone too), the force error against the distance from the expert
interface, the NVE energy drift of the MoE and of the all-big model at the same timestep, the
speed-up of the MoE over the all-big model with its ideal bound (``nequip_moe.benchmark``)
and a short LAMMPS NVE run of the MoE. Writes ``report.md``, ``report.json`` and PNGs.
"""

import contextlib
import dataclasses
import json
import pathlib
import time
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase import Atoms, units
from ase.eos import EquationOfState
from ase.io import read
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
    from nequip_moe.integrations.lammps_driver import pair_allegro_input, run_pair_allegro_input
    from nequip_moe.integrations.lammps_runtime import start_lammps
    from nequip_moe.integrations.model_files import read_composite_table

    table = read_composite_table(pair_allegro_file)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = pathlib.Path(tmp) / "structure.data"
        write_lammps_data(data_file, atoms, atoms.arrays["expert"], table)
        lmp = start_lammps()
        script = pair_allegro_input(pair_allegro_file, table.type_names, data_file, num_steps=0)
        run_pair_allegro_input(lmp, script, device=device)
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
    ``1 / (f + (1 - f) c)``, ``c`` the measured small/big cost ratio (``nequip_moe.benchmark``).

    Args:
        files: ``{moe, big, small}`` -> model files (compiled ``--target ase`` files are timed as they are)
        hf_fraction: high-fidelity fraction of the timed slab
        out_dir: where the benchmark may put compiled models
        device: device of the models
        size: surface atoms along each direction of the slab
    """
    from nequip_moe.benchmark import BenchOptions, run_benchmark

    options = BenchOptions(
        model_files={k: str(v) for k, v in files.items()},
        sizes=(size,),
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


# ---------------------------------------------------------------- claims


def check_claims(report: Dict, moe: str) -> List[Dict]:
    """The example's claims about the MoE model ``moe`` and whether they hold in ``report``."""
    title = report["models"][moe]
    forces = {k: v["forces_mae_mev_per_a"] for k, v in report["errors"].items()}
    claims = []

    def claim(text, holds, detail):
        claims.append({"model": moe, "claim": text, "holds": holds, "detail": detail})

    if "big" in forces and "small" in forces:
        hf = [c for c in ("adsorbate", "hf_region") if forces[moe][c] is not None]
        ratio = max(forces[moe][c] / forces["big"][c] for c in hf)
        claim(
            f"{title} is as accurate as all-big on adsorbates and high-fidelity Pt "
            "(force MAE within 10 % of all-big's)",
            ratio <= 1.1,
            f"worst MoE/all-big force MAE ratio over {', '.join(hf)}: {ratio:.2f}",
        )
        better = [c for c in hf if forces[moe][c] < forces["small"][c]]
        claim(
            f"{title} is more accurate than all-small on adsorbates and high-fidelity Pt",
            len(better) == len(hf),
            f"better on {', '.join(better) or 'none'} of {', '.join(hf)}",
        )
    fits = report["eos"]["fits"] if report["eos"] else {}
    big_fit, small_fit = fits.get(f"{moe}:big_expert", {}), fits.get(f"{moe}:small_expert", {})
    if "V0" in big_fit and "V0" in small_fit:
        dv = abs(big_fit["V0"] - small_fit["V0"]) / small_fit["V0"]
        db = abs(big_fit["B0_GPa"] - small_fit["B0_GPa"]) / small_fit["B0_GPa"]
        claim(
            f"the two experts of {title} agree on bulk Pt (V0 within 1 %, B0 within 10 %), so the "
            "interface carries no artificial strain",
            dv < 0.01 and db < 0.10,
            f"V0 differs by {100 * dv:.2f} %, B0 by {100 * db:.1f} %",
        )
    elif fits:
        claim(f"the two experts of {title} agree on bulk Pt", False,
              "no Birch-Murnaghan minimum in the sampled range for at least one expert")
    drift = report["nve_drift"]
    if drift and "big" in drift and moe in drift:
        d_moe = abs(drift[moe]["drift_mev_per_atom_per_ps"])
        d_big = abs(drift["big"]["drift_mev_per_atom_per_ps"])
        claim(
            f"NVE with {title} drifts no more than all-big at the same timestep",
            d_moe <= d_big,
            f"|drift| MoE {d_moe:.3g}, all-big {d_big:.3g} meV/atom/ps",
        )
    speed = report["speedup"]
    if speed and speed["model"] == moe:
        claim(
            f"{title} is faster than all-big",
            speed["measured"] > 1.0,
            f"measured {speed['measured']:.2f}x, ideal {speed['ideal']:.2f}x at "
            f"f = {speed['hf_fraction']:.2f}",
        )
    plain = "moe"
    if moe != plain and plain in report["models"]:
        gaps = {}
        for name in (plain, moe):
            big_fit, small_fit = fits.get(f"{name}:big_expert", {}), fits.get(f"{name}:small_expert", {})
            if "B0_GPa" in big_fit and "B0_GPa" in small_fit:
                gaps[name] = abs(big_fit["B0_GPa"] - small_fit["B0_GPa"])
        if len(gaps) == 2:
            claim(
                f"the experts of {title} have closer bulk moduli than those of "
                f"{report['models'][plain]}",
                gaps[moe] < gaps[plain],
                f"|B0 big - B0 small|: {gaps[moe]:.1f} GPa co-trained, {gaps[plain]:.1f} GPa without",
            )
    return claims


# ---------------------------------------------------------------- the report


@contextlib.contextmanager
def section(message: str):
    """Print ``message`` and, when the block ends, the seconds it took."""
    print(f"    {message} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"    {message}: {time.perf_counter() - start:.0f} s", flush=True)


def make_report(
    models: Sequence[ReportModel],
    data_dir,
    out_dir,
    nve_steps: int,
    speed_files: Optional[Dict[str, pathlib.Path]] = None,
    pair_allegro_file: Optional[pathlib.Path] = None,
    notes: Optional[Dict] = None,
    device: str = "cpu",
) -> Dict:
    """Measure everything, write ``report.json``, ``report.md`` and PNGs; returns the report.

    Args:
        models: models to compare; names ``big`` and ``small`` mark the single-model baselines
        data_dir: the data stage's folder (``test.xyz``, optional ``eos.xyz``)
        out_dir: where the report goes
        nve_steps: steps of each NVE run
        speed_files: ``{moe, big, small}`` model files for the speed-up (``None``: skipped)
        pair_allegro_file: MoE compiled for pair_allegro for the LAMMPS run (``None``: skipped)
        notes: extra facts for the report (sizes, timings)
        device: device of the compiled files and of the timings
    """
    data_dir, out_dir = pathlib.Path(data_dir), pathlib.Path(out_dir)
    test = read(data_dir / "test.xyz", index=":")
    moes = [m.name for m in models if m.is_moe]
    report = {"notes": notes or {}, "models": {m.name: m.title for m in models}}

    with section(f"test errors on {len(test)} frames"):
        predictions = {m.name: predict(m.calculator(), test) for m in models}
    report["errors"] = {name: test_errors(test, p) for name, p in predictions.items()}
    report["atom_counts"] = {
        name: int(sum((atom_classes(a) == name).sum() for a in test)) for name in ATOM_CLASSES
    }
    report["force_error_vs_interface"] = {
        name: force_error_by_distance(test, p) for name, p in predictions.items()
    }

    eos_file = data_dir / "eos.xyz"
    eos_frames = read(eos_file, index=":") if eos_file.is_file() else []
    report["eos"] = None
    if eos_frames:
        with section(f"equation of state on {len(eos_frames)} held-out bulk frames"):
            report["eos"] = eos_curves(eos_frames, models)

    structure = nve_structure(test)
    report["nve_drift"] = None
    if structure is not None:
        report["nve_drift"] = {}
        for model in models:
            if model.name in moes + ["big"]:
                with section(f"NVE {model.title}: {nve_steps} steps, {len(structure)} atoms"):
                    report["nve_drift"][model.name] = nve_drift(
                        model.calculator(), structure, nve_steps
                    )
    report["lammps_nve"] = None
    if pair_allegro_file is not None and structure is not None:
        with section(f"LAMMPS NVE of the MoE: {nve_steps} steps"):
            report["lammps_nve"] = lammps_nve(pair_allegro_file, structure, nve_steps, device)

    report["speedup"] = None
    if speed_files is not None:
        hf_fraction = float(np.mean(np.concatenate([a.arrays["expert"] for a in test]) == BIG))
        timed = next(m.name for m in models if m.path == speed_files["moe"])
        with section(f"speed-up at high-fidelity fraction {hf_fraction:.2f}"):
            report["speedup"] = {
                "model": timed,
                **speedup(speed_files, hf_fraction, out_dir / "benchmark", device),
            }

    report["claims"] = [c for moe in moes for c in check_claims(report, moe)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    figures = plot_report(report, out_dir)
    (out_dir / "report.md").write_text(markdown(report, figures))
    return report


# ---------------------------------------------------------------- figures and text


def plot_report(report: Dict, out_dir: pathlib.Path) -> List[str]:
    """PNG figures of the report; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = report["models"]
    figures = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        figures.append(name)

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(report["errors"])
    for k, (name, errors) in enumerate(report["errors"].items()):
        values = [errors["forces_mae_mev_per_a"][c] or 0.0 for c in ATOM_CLASSES]
        ax.bar(np.arange(len(ATOM_CLASSES)) + k * width, values, width, label=titles[name])
    ax.set_xticks(np.arange(len(ATOM_CLASSES)) + 0.4 - width / 2, ATOM_CLASSES)
    ax.set_ylabel("force MAE (meV/A)")
    ax.legend()
    save(fig, "errors.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in report["force_error_vs_interface"].items():
        bins = curve["bins"]
        ax.plot([b["distance_a"] for b in bins], [b["force_error_mev_per_a"] for b in bins],
                "o-", label=titles[name])
    ax.axvline(0.0, color="gray", lw=0.8)
    ax.set_xlabel("distance from the interface (A; < 0 inside the big region)")
    ax.set_ylabel("force error (meV/A)")
    ax.legend()
    save(fig, "force_error_vs_interface.png")

    if report["eos"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        volumes = report["eos"]["volumes"]
        for key, energies in report["eos"]["energies"].items():
            ax.plot(volumes, energies, "k--" if key == "reference" else "o-",
                    label=curve_title(key, titles))
        ax.set_xlabel("volume (A^3/atom)")
        ax.set_ylabel("energy (eV/atom)")
        ax.legend(fontsize=8)
        save(fig, "eos.png")

    if report["nve_drift"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, run in report["nve_drift"].items():
            energies = np.array(run["energies_ev_per_atom"])
            ax.plot(np.arange(len(energies)) * run["timestep_fs"],
                    1000.0 * (energies - energies[0]), label=titles[name])
        ax.set_xlabel("time (fs)")
        ax.set_ylabel("total energy - start (meV/atom)")
        ax.legend()
        save(fig, "nve.png")
    return figures


def curve_title(key: str, titles: Dict[str, str]) -> str:
    """Title of an equation-of-state curve: ``moe:big_expert`` -> ``MoE (big expert alone)``."""
    name, _, expert = key.partition(":")
    title = titles.get(name, name)
    return f"{title} ({expert.replace('_', ' ')} alone)" if expert else title


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(str(c) for c in row) + " |" for row in rows],
    ]


def summary_rows(report: Dict) -> List[List[str]]:
    """One row per model: energy MAE, force MAE overall and on adsorbates, NVE drift."""
    rows = []
    for name, errors in report["errors"].items():
        drift = (report["nve_drift"] or {}).get(name)
        rows.append([
            report["models"][name],
            _fmt(errors["energy_mae_mev_per_atom"]["all"]),
            _fmt(errors["forces_mae_mev_per_a"]["all"]),
            _fmt(errors["forces_mae_mev_per_a"]["adsorbate"]),
            _fmt(drift["drift_mev_per_atom_per_ps"], 3) if drift else "-",
        ])
    return rows


SUMMARY_HEADER = ("model", "E MAE meV/atom", "F MAE meV/A", "F MAE adsorbate", "NVE drift meV/atom/ps")


def markdown(report: Dict, figures: Sequence[str]) -> str:
    """``report.md``: every table of the report, the claims and the figures."""
    titles = report["models"]
    lines = ["# Pt + CO Mixture of Experts: validation report", ""]
    notes = report["notes"]
    if notes.get("labeller") == "emt":
        lines += ["Reference data from ASE's EMT, which is not physical for CO chemistry: this "
                  "report checks the method's plumbing and self-consistency, not surface "
                  "science (use `--labeller sevenn` for a realistic teacher).", ""]
    if notes:
        lines += ["## Run", ""] + [f"- {k}: {v}" for k, v in notes.items()] + [""]
        lines += ["Every model trains until `max_epochs` or `max_minutes` (wall clock), whichever "
                  "comes first: with a time cap, cheaper models take more optimizer steps, so "
                  "accuracy differences reflect training cost as well as capacity.", ""]

    lines += ["## Claims", ""]
    for c in report["claims"]:
        verdict = "holds" if c["holds"] else "**does not hold at these sizes**"
        lines.append(f"- {c['claim']}: {verdict} ({c['detail']})")
    lines += ["", "## Summary", ""] + _table(SUMMARY_HEADER, summary_rows(report)) + [""]

    lines += ["## Test errors", "", "Energy MAE (meV/atom) by kind of frame:", ""]
    lines += _table(
        ["model", "all", *FRAME_GROUPS],
        [[titles[n], *(_fmt(e["energy_mae_mev_per_atom"][g]) for g in ("all",) + FRAME_GROUPS)]
         for n, e in report["errors"].items()],
    )
    counts = ", ".join(f"{k} {v}" for k, v in report["atom_counts"].items())
    lines += ["", f"Force MAE (meV/A per component) by class of atom (test atoms: {counts}):", ""]
    lines += _table(
        ["model", "all", *ATOM_CLASSES],
        [[titles[n], *(_fmt(e["forces_mae_mev_per_a"][c]) for c in ("all",) + ATOM_CLASSES)]
         for n, e in report["errors"].items()],
    )
    lines += [""] + [f"- {k}: {v}" for k, v in ATOM_CLASS_TITLES.items()] + [""]

    if report["eos"]:
        lines += ["## Bulk Pt equation of state (held-out set, Birch-Murnaghan)", ""]
        rows = []
        for key, fit in report["eos"]["fits"].items():
            title = curve_title(key, titles)
            if "fit_failed" in fit:
                rows.append([title, f"fit failed: {fit['fit_failed']}", "", ""])
            else:
                rows.append([title, _fmt(fit["V0"], 3), _fmt(fit["B0_GPa"]), _fmt(fit["B0_prime"], 2)])
        lines += _table(["model", "V0 (A^3/atom)", "B0 (GPa)", "B0'"], rows)
        lines += ["", "In bulk every atom is on the small expert, so an MoE's bulk equation of "
                  "state is its small expert's; the big expert's is what the interface pulls "
                  "towards.", ""]

    if report["nve_drift"]:
        lines += ["## NVE energy drift (ASE Velocity Verlet, 300 K start)", ""]
        runs = dict(report["nve_drift"])
        if report["lammps_nve"]:
            runs["LAMMPS MoE"] = report["lammps_nve"]
        lines += _table(
            ["model", "atoms", "steps x dt (fs)", "drift (meV/atom/ps)", "max |E - E0| (meV/atom)"],
            [[titles.get(n, n), r["atoms"], f"{r['steps']} x {r['timestep_fs']}",
              _fmt(r["drift_mev_per_atom_per_ps"], 4), _fmt(r["max_deviation_mev_per_atom"], 3)]
             for n, r in runs.items()],
        ) + [""]

    speed = report["speedup"]
    if speed:
        lines += [
            "## Speed-up of the MoE over all-big", "",
            f"- {speed['atoms']}-atom Pt(111) + CO slab, high-fidelity fraction "
            f"f = {speed['hf_fraction']:.2f}, {'compiled (AOTInductor)' if speed['compiled'] else 'eager'} models",
            f"- measured {speed['measured']:.2f}x; ideal 1 / (f + (1 - f) c) = {speed['ideal']:.2f}x "
            f"with cost ratio c = {speed['cost_ratio_small_over_big']:.3f}; efficiency "
            f"{speed['efficiency']:.2f}",
            "",
        ]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)
