"""``report.md`` and the PNG figures of the example's report, from the measured report."""

import pathlib
from typing import Dict, List, Sequence

import numpy as np

from measures import ATOM_CLASS_TITLES, ATOM_CLASSES, FRAME_GROUPS


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
