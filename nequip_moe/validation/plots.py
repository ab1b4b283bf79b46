"""The validation's figures (matplotlib, PNG), one per measure that ran.

- ``split_crystal.png``: the interface force of every atom against its signed distance from the
  interface (each cut, at its worst strain), and each cut's largest force against the strain;
- ``eos.png``: E(V) per atom of each expert alone (and the reference), with their fits;
- ``error_vs_distance.png``: force error against the signed distance from the interface;
- ``nve.png``: the NVE total energy against time at both timesteps.
"""

import pathlib
from typing import Callable, Dict

import numpy as np


def _figure(columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(5.5 * columns, 4.0), squeeze=False)


def _save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _finish(fig, ax, path, xlabel: str, ylabel: str, title: str):
    """Label one panel, add its legend and save the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_split_crystal(result: Dict, path, threshold=None):
    """Force map and worst force against strain of ``interface.split_crystal_forces``."""
    fig, axes = _figure(2)
    left, right = axes[0]
    for name, force_map in result["force_map"].items():
        left.scatter(force_map["distance_a"], force_map["interface_force_mev_per_a"], s=10,
                     label=f"{name} ({100 * force_map['strain']:+.1f} %)")
    for name, geometry in result["geometries"].items():
        rows = geometry["rows"]
        right.plot([100 * r["strain"] for r in rows], [r["max_interface_force_mev_per_a"] for r in rows],
                   "o-", label=name)
    for ax in (left, right):
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=1, label=f"bound {threshold:g}")
        ax.set_ylabel("interface force (meV/A)")
        ax.legend(fontsize=7)
    left.set_xlabel("signed distance from the interface (A, < 0: high fidelity)")
    right.set_xlabel("isotropic strain (%)")
    left.set_title("split perfect crystal: force map at the worst strain", fontsize=9)
    right.set_title("largest interface force per cut", fontsize=9)
    _save(fig, path)


def _birch_murnaghan(volumes, fit):
    eta = (fit["V0"] / volumes) ** (2.0 / 3.0)
    b0 = fit["B0_GPa"] * 0.006241509074460763  # GPa -> eV/A^3
    return fit["E0"] + 9.0 * fit["V0"] * b0 / 16.0 * (
        (eta - 1.0) ** 3 * fit["B0_prime"] + (eta - 1.0) ** 2 * (6.0 - 4.0 * eta)
    )


def plot_eos(result: Dict, path):
    """E(V) - E0 of every calculator of ``bulk.eos_curves`` with its Birch-Murnaghan fit."""
    fig, axes = _figure()
    ax = axes[0][0]
    volumes = np.asarray(result["volumes"])
    dense = np.linspace(volumes.min(), volumes.max(), 200)
    for name, energies in result["energies"].items():
        fit = result["fits"][name]
        shift = fit.get("E0", min(energies))
        line = ax.plot(volumes, 1000.0 * (np.asarray(energies) - shift), "o", label=name)[0]
        if "V0" in fit:
            ax.plot(dense, 1000.0 * (_birch_murnaghan(dense, fit) - shift), "-", color=line.get_color(),
                    lw=1)
    _finish(fig, ax, path, "volume (A^3/atom)", "E - E0 (meV/atom)", "equation of state of each expert alone")


def plot_error_by_distance(result: Dict, path):
    """``interface.force_error_by_distance`` of the MoE and the models beside it."""
    fig, axes = _figure()
    ax = axes[0][0]
    for name, by_distance in result["by_distance"].items():
        rows = by_distance["bins"]
        ax.plot([r["distance_a"] for r in rows], [r["force_error_mev_per_a"] for r in rows], "o-", label=name)
    ax.axvline(0.0, color="k", lw=0.8)
    _finish(fig, ax, path, "signed distance from the interface (A, < 0: high fidelity)",
            "force error |dF| (meV/A)", "test frames: force error against distance from the interface")


def plot_nve(result: Dict, path):
    """Total energy per atom against time of ``dynamics.nve_timestep_scaling``."""
    fig, axes = _figure()
    ax = axes[0][0]
    for key in ("dt", "2dt"):
        run = result[key]
        energies = np.asarray(run["energies_ev_per_atom"])
        ax.plot(run["times_ps"], 1000.0 * (energies - energies[0]), label=f"dt = {run['timestep_fs']:g} fs")
    _finish(fig, ax, path, "time (ps)", "E - E(0) (meV/atom)", "NVE total energy (velocity Verlet)")


PLOTS: Dict[str, tuple] = {
    "split_crystal": ("split_crystal.png", plot_split_crystal),
    "eos": ("eos.png", plot_eos),
    "interface": ("error_vs_distance.png", plot_error_by_distance),
    "nve": ("nve.png", plot_nve),
}


def plot_writers(report: Dict) -> Dict[str, Callable]:
    """File name -> ``write(path)`` for the plot of every measure that ran."""
    writers = {}
    for measure, (name, plot) in PLOTS.items():
        result = report["measures"].get(measure)
        if not result or "not_applicable" in result:
            continue
        if measure == "split_crystal":
            threshold = next(c["threshold"] for c in report["checks"] if c["name"] == "split_crystal_force")
            writers[name] = lambda p, r=result, t=threshold: plot_split_crystal(r, p, t)
        else:
            writers[name] = lambda p, r=result, f=plot: f(r, p)
    return writers


def write_plots(report: Dict, folder) -> Dict[str, str]:
    """Write the plots into ``folder``; returns file name -> file name (as ``report["plots"]``)."""
    folder = pathlib.Path(folder)
    written = {}
    for name, write in plot_writers(report).items():
        write(folder / name)
        written[name] = name
    return written
