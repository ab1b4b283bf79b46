"""``report.md`` and the PNG figures of the example's report, from the measured report."""

import pathlib
from typing import Dict, List, Optional, Sequence

import numpy as np

from claims import THRESHOLDS
from measures import ATOM_CLASS_TITLES, ATOM_CLASSES, FRAME_GROUPS


def plot_report(report: Dict, out_dir: pathlib.Path) -> List[str]:
    """PNG figures of the report; returns their file names (``summary.png`` first)."""
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

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    plot_errors(axes[0, 0], report)
    plot_split_crystal(axes[0, 1], report)
    plot_buffer_sweep(axes[1, 0], report)
    plot_interface(axes[1, 1], report)
    fig.suptitle("Pt + CO MoE: accuracy, interface forces, buffer width")
    save(fig, "summary.png")

    for name, plot in (("errors.png", plot_errors), ("split_crystal.png", plot_split_crystal),
                       ("buffer_sweep.png", plot_buffer_sweep),
                       ("force_error_vs_interface.png", plot_interface)):
        fig, ax = plt.subplots(figsize=(7, 4))
        if plot(ax, report):
            save(fig, name)
        else:
            plt.close(fig)

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


def plot_errors(ax, report: Dict) -> bool:
    titles = report["models"]
    width = 0.8 / max(len(report["errors"]), 1)
    for k, (name, errors) in enumerate(report["errors"].items()):
        values = [errors["forces_mae_mev_per_a"][c] or 0.0 for c in ATOM_CLASSES]
        ax.bar(np.arange(len(ATOM_CLASSES)) + k * width, values, width, label=titles[name])
    ax.set_xticks(np.arange(len(ATOM_CLASSES)) + 0.4 - width / 2, ATOM_CLASSES)
    ax.set_ylabel("force MAE (meV/A)")
    ax.set_title("test force MAE by class of atom")
    ax.legend(fontsize=8)
    return True


def plot_split_crystal(ax, report: Dict) -> bool:
    split = report.get("split_crystal")
    if not split:
        return False
    for name, result in split["models"].items():
        rows = result["rows"]
        ax.plot([100 * r["strain"] for r in rows], [r["max_force_mev_per_a"] for r in rows],
                "o-", label=f"{report['models'][name]} (max)")
    ax.axhline(THRESHOLDS["split_max_force_mev_per_a"], color="gray", ls="--", lw=0.8,
               label="claim bound")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("isotropic strain (%)")
    ax.set_ylabel("max |F| (meV/A); reference 0")
    ax.set_title(f"split perfect crystals ({len(split.get('geometries', {})) or 1} cuts, "
                 f"{split['atoms']} atoms)")
    ax.legend(fontsize=8)
    return True


def plot_buffer_sweep(ax, report: Dict) -> bool:
    sweep = report.get("buffer_sweep")
    if not sweep:
        return False
    rows = sweep["rows"]
    widths = [r["buffer_width_a"] for r in rows]
    ax.plot(widths, [r["core_ratio_to_all_big"] for r in rows], "o-",
            label="core force MAE / all-big")
    ax.plot(widths, [r["energy_ratio_to_all_big"] for r in rows], "s-",
            label="energy MAE / all-big")
    ax.axhline(THRESHOLDS["core_force_ratio"], color="gray", ls="--", lw=0.8)
    ax.set_xlabel("buffer width (A)")
    ax.set_ylabel("error / all-big")
    ax.set_title(f"buffer sweep of {report['models'][sweep['model']]}")
    right = ax.twinx()
    right.plot(widths, [r["edge_speedup"] for r in rows], "^:", color="C3",
               label="edge-count speed-up (test split)")
    if sweep.get("timed"):
        right.plot(widths, [r["timed_edge_speedup"] for r in rows], "<:", color="C5",
                   label=f"edge-count speed-up ({sweep['timing_atoms']} atoms)")
        right.plot(widths, [r["measured_speedup"] for r in rows], "v:", color="C4",
                   label=f"measured speed-up ({sweep['timing_atoms']} atoms)")
    right.set_ylabel("speed-up over all-big")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    return True


def plot_interface(ax, report: Dict) -> bool:
    titles = report["models"]
    for name, curve in report["force_error_vs_interface"].items():
        bins = curve["bins"]
        ax.plot([b["distance_a"] for b in bins], [b["force_error_mev_per_a"] for b in bins],
                "o-", label=titles[name])
    ax.axvline(0.0, color="gray", lw=0.8)
    ax.set_xlabel("distance from the interface (A; < 0 inside the big region)")
    ax.set_ylabel("force error (meV/A)")
    ax.set_title("test force error vs distance from the interface")
    ax.legend(fontsize=8)
    return True


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
    """One row per model: energy MAE, force MAE overall and on the core, NVE drift."""
    rows = []
    for name, errors in report["errors"].items():
        drift = (report["nve_drift"] or {}).get(name)
        rows.append([
            report["models"][name],
            _fmt(errors["energy_mae_mev_per_atom"]["all"]),
            _fmt(errors["forces_mae_mev_per_a"]["all"]),
            _fmt(errors["forces_mae_mev_per_a"].get("core")),
            _fmt(drift["drift_mev_per_atom_per_ps"], 3) if drift else "-",
        ])
    return rows


SUMMARY_HEADER = ("model", "E MAE meV/atom", "F MAE meV/A", "F MAE core", "NVE drift meV/atom/ps")


def markdown(report: Dict, figures: Sequence[str], extra: Optional[Sequence[str]] = None) -> str:
    """``report.md``: the claims, every table of the report and the figures; ``extra``
    markdown sections (the gated MoE's) go before the figures."""
    titles = report["models"]
    lines = ["# Pt + CO Mixture of Experts: validation report", ""]
    notes = report["notes"]
    if notes.get("labeller") == "emt":
        lines += ["Reference data from ASE's EMT, which is not physical for CO chemistry: this "
                  "report checks the method's plumbing and self-consistency, not surface "
                  "science (use `--labeller sevenn` for a realistic teacher).", ""]
    if "summary.png" in figures:
        lines += ["![summary](summary.png)", ""]

    lines += ["## Claims", "",
              "Each claim states its threshold; `value` and `threshold` are in `report.json`.", ""]
    for c in report["claims"]:
        verdict = "holds" if c["holds"] else "**does not hold at these sizes**"
        lines.append(f"- {c['claim']}: {verdict} ({c['detail']})")
    lines += [""]
    if notes:
        lines += ["## Run", ""] + [f"- {k}: {v}" for k, v in notes.items()] + [""]
    lines += ["## Summary", ""] + _table(SUMMARY_HEADER, summary_rows(report)) + [""]
    lines += teacher_lines(report)

    lines += ["## Test errors", "", "Energy MAE (meV/atom) by group of frames (bulk: every atom "
              "on the small expert; surface: both experts; gas: no Pt):", ""]
    lines += _table(
        ["model", "all", *FRAME_GROUPS],
        [[titles[n], *(_fmt(e["energy_mae_mev_per_atom"][g]) for g in ("all",) + FRAME_GROUPS)]
         for n, e in report["errors"].items()],
    )
    counts = ", ".join(f"{k} {v}" for k, v in report["atom_counts"].items())
    groups = ", ".join(f"{k} {v}" for k, v in report.get("group_counts", {}).items())
    lines += ["", f"Force MAE (meV/A per component) by class of atom (test atoms: {counts}; "
              f"groups: {groups}):", ""]
    columns = ("all",) + ATOM_CLASSES + ("core", "small", "interface_far")
    lines += _table(
        ["model", *columns],
        [[titles[n], *(_fmt(e["forces_mae_mev_per_a"].get(c)) for c in columns)]
         for n, e in report["errors"].items()],
    )
    lines += [""] + [f"- {k}: {v}" for k, v in ATOM_CLASS_TITLES.items()]
    lines += ["- core: adsorbate + core Pt; small: every small-expert atom; interface_far: "
              "small-expert atoms beyond the shell in frames with both experts", ""]
    lines += kind_lines(report)

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
        outside = report["eos"].get("outside_training") or []
        if any(outside):
            volumes = [f"{v:.2f}" for v, out in zip(report["eos"]["volumes"], outside) if out]
            lines += [f"Held-out volumes beyond the labeller's bulk volumes trained on (data "
                      f"summary's `train_bulk_strain` {report['data'].get('train_bulk_strain')}): "
                      f"{', '.join(volumes)} A^3/atom of {len(outside)}.{_distilled(report)}", ""]
    lines += interface_lines(report)
    lines += buffer_lines(report)

    if report["nve_drift"]:
        lines += ["## NVE energy conservation (ASE Velocity Verlet, 300 K start)", "",
                  f"Bounds: |drift| <= {THRESHOLDS['drift_mev_per_atom_per_ps']} meV/atom/ps; "
                  "the energy fluctuation (std after removing the linear drift) grows as dt^p "
                  f"with p in {list(THRESHOLDS['dt_exponent'])} (Verlet: 2).", ""]
        runs = dict(report["nve_drift"])
        scaling = report.get("nve_scaling") or {}
        rows = []
        for n, r in runs.items():
            s = scaling.get(n, {})
            rows.append([titles.get(n, n), r["atoms"], f"{r['steps']} x {r['timestep_fs']}",
                         _fmt(r["drift_mev_per_atom_per_ps"], 4),
                         _fmt(r["max_deviation_mev_per_atom"], 3),
                         _fmt(r.get("fluctuation_mev_per_atom"), 4),
                         _fmt(s.get("2dt", {}).get("fluctuation_mev_per_atom"), 4),
                         _fmt(s.get("exponent"), 2)])
        if report["lammps_nve"]:
            r = report["lammps_nve"]
            rows.append([f"LAMMPS {titles.get(r.get('model'), 'MoE')}", r["atoms"],
                         f"{r['steps']} x {r['timestep_fs']}", _fmt(r["drift_mev_per_atom_per_ps"], 4),
                         _fmt(r["max_deviation_mev_per_atom"], 3), "-", "-", "-"])
        lines += _table(
            ["model", "atoms", "steps x dt (fs)", "drift (meV/atom/ps)", "max |E - E0| (meV/atom)",
             "fluctuation dt", "fluctuation 2dt", "exponent p"], rows) + [""]

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
    lines += list(extra or [])
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures if f != "summary.png"] + [""]
    return "\n".join(lines)


def teacher_lines(report: Dict) -> List[str]:
    sanity = report.get("teacher")
    if not sanity:
        return []
    ref = sanity["pbe_reference"]
    labeller = report["notes"].get("labeller", "?")
    judged = "judged in the claims" if labeller == "sevenn" else "shown only: EMT is not PBE"
    return ["## Teacher label sanity", "",
            f"The labeller (`{labeller}`) against PBE references ({judged}):", ""] + _table(
        ["quantity", "labeller", "PBE reference"],
        [["bulk Pt a0 (A)", _fmt(sanity.get("a0_A"), 3), f"{ref['a0_A']}"],
         ["bulk Pt B0 (GPa)", _fmt(sanity.get("B0_GPa"), 0),
          f"{ref['B0_GPa'][0]:.0f}-{ref['B0_GPa'][1]:.0f}"],
         ["CO bond (A)", _fmt(sanity.get("co_bond_A"), 3), f"{ref['co_bond_A']}"]],
    ) + [""]


def kind_lines(report: Dict) -> List[str]:
    titles = report["models"]
    kinds = list(dict.fromkeys(k for e in report["errors"].values() for k in e.get("by_kind", {})))
    if not kinds:
        return []
    lines = ["Errors by kind of frame (energy MAE meV/atom / force MAE meV/A / core force MAE "
             "meV/A):", ""]
    rows = []
    for kind in kinds:
        frames = next(e["by_kind"][kind]["frames"] for e in report["errors"].values()
                      if kind in e.get("by_kind", {}))
        row = [kind, frames]
        for e in report["errors"].values():
            k = e.get("by_kind", {}).get(kind)
            row.append(" / ".join(_fmt(k.get(q)) for q in (
                "energy_mae_mev_per_atom", "forces_mae_mev_per_a", "core_forces_mae_mev_per_a"))
                if k else "-")
        rows.append(row)
    return lines + _table(["kind", "frames", *(titles[n] for n in report["errors"])], rows) + [""]


def _distilled(report: Dict) -> str:
    """What the staged MoEs' distilled bulk cells (the big expert's labels) span, if any."""
    sizes = report.get("notes", {}).get("sizes", {})
    if not sizes.get("distil_cells") or "distil_strain" not in sizes:
        return ""
    return (f" The staged MoEs' small experts also trained on {sizes['distil_cells']} bulk cells "
            f"labelled by the big expert, isotropic strain within +-{100 * sizes['distil_strain']:.0f} %.")


def interface_lines(report: Dict) -> List[str]:
    titles = report["models"]
    lines = []
    split = report.get("split_crystal")
    if split:
        strains = split["strains"]
        cuts = ", ".join(f"{name} ({atoms} atoms)" for name, atoms in split["geometries"].items())
        lines += ["## Split perfect crystal (interface test)", "",
                  f"Perfect fcc Pt (a0 = {split['a0']:.3f} A, the reference's) split between the "
                  f"experts by periodic planes and by a sphere of big-expert atoms in a "
                  f"small-expert matrix: {cuts}; interfaces farther apart than twice the "
                  f"receptive radius ({split['receptive_radius_a']:.1f} A). The reference force "
                  "is zero on every atom by symmetry; max |F| over the cuts / RMS over all their "
                  "atoms (meV/A):", ""]
        rows = [[titles.get(n, n),
                 *(f"{r['max_force_mev_per_a']:.1f} / {r['rms_force_mev_per_a']:.1f}"
                   for r in m["rows"])]
                for n, m in split["models"].items()]
        outside = split.get("outside_training") or [False] * len(strains)
        lines += _table(["model", *(f"{100 * s:+.0f} %{' *' if out else ''}"
                                    for s, out in zip(strains, outside))], rows) + [""]
        if any(outside):
            lines += [f"\\* beyond the labeller's bulk strains trained on.{_distilled(report)}", ""]
        beyond = split.get("beyond_small_cutoff")
        if beyond:
            lines += [f"The big expert's per-atom energies of the small half respond to "
                      f"neighbours beyond the small expert's cutoff ({beyond['r_cut']:.2f} A), "
                      "which that small expert cannot see: a small expert matching the big one "
                      "on every neighbour it sees would leave a max |F| of " + ", ".join(
                          f"{r['max_force_mev_per_a']:.2f}" for r in beyond["rows"])
                      + " meV/A at these strains (zero when the cutoffs are equal).", ""]
        pairs = report.get("without_agreement") or {}
        if pairs:
            lines += ["Co-trained vs without agreement terms: " + ", ".join(
                f"{titles[a]} vs {titles[b]}" for a, b in pairs.items()), ""]
    agreement = report.get("expert_disagreement") or {}
    if agreement:
        lines += ["Experts' disagreement on shared bulk (every atom on the big expert vs every "
                  "atom on the small one):", ""]
        lines += _table(
            ["model", "frames", "energy (meV/atom, mean)", "energy (max)", "forces (meV/A, MAE)"],
            [[titles[n], a["frames"], _fmt(a["energy_mae_mev_per_atom"], 2),
              _fmt(a["energy_max_mev_per_atom"], 2), _fmt(a["forces_mae_mev_per_a"])]
             for n, a in agreement.items()],
        ) + [""]
    return lines


def buffer_lines(report: Dict) -> List[str]:
    sweep = report.get("buffer_sweep")
    if not sweep:
        return []
    titles = report["models"]
    ref = sweep["all_big"]
    lines = [
        "## Buffer width: accuracy against speed", "",
        f"{titles[sweep['model']]} with the test frames relabelled at each buffer width (core: "
        "C, O, Pt within 2.5 A of them, Pt with < 12 Pt neighbours; buffer: every atom within "
        "the width of the core). All-big: core force MAE "
        f"{ref['core_forces_mae_mev_per_a']:.1f} meV/A, energy MAE "
        f"{ref['energy_mae_mev_per_atom']:.2f} meV/atom. Ideal speed-up by atoms "
        "1 / (f + (1 - f) c) "
        f"with the measured cost ratio c = {sweep['cost_ratio_small_over_big']:.3f} (the MoE with "
        "every Pt on the small vs the big expert); by edges: the big expert pays for the edges "
        f"its atoms centre within {sweep['expert_cutoffs_a'][0]:g} A, the small one for its "
        f"atoms' within {sweep['expert_cutoffs_a'][1]:g} A at "
        f"{sweep['edge_cost_ratio_small_over_big']:.3f}x the cost per edge (surface atoms centre "
        "fewer edges)"
        + (f"; measured: eager, on a {sweep['timing_atoms']}-atom Pt(111) + CO slab (indicative "
           "on a loaded machine)" if sweep.get("timed") else "")
        + f". The data's labels use {sweep.get('data_buffer_width')} A (the default: the small "
        "expert's cutoff, so that no core atom's force carries a small-expert term; narrower "
        "buffers are faster, at the small region's error in the column small F MAE); the "
        "smallest width with "
        f"core force MAE <= {THRESHOLDS['core_force_ratio']}x all-big's: "
        + (f"{sweep['smallest_width_at_parity_a']:g} A." if sweep.get("smallest_width_at_parity_a")
           is not None else "none of those swept."), "",
    ]
    header = ["width (A)", "f (test)", "core F MAE", "/ all-big", "E MAE", "/ all-big",
              "small F MAE", "ideal speed-up (atoms)", "ideal speed-up (edges)"]
    if sweep.get("timed"):
        header += ["f (timed)", "edges (timed)", "measured speed-up"]
    rows = []
    for r in sweep["rows"]:
        row = [f"{r['buffer_width_a']:g}", _fmt(r["hf_fraction"], 2),
               _fmt(r["core_forces_mae_mev_per_a"]), _fmt(r["core_ratio_to_all_big"], 3),
               _fmt(r["energy_mae_mev_per_atom"], 2), _fmt(r["energy_ratio_to_all_big"], 3),
               _fmt(r["small_forces_mae_mev_per_a"]), _fmt(r["ideal_speedup"], 2),
               _fmt(r["edge_speedup"], 2)]
        if sweep.get("timed"):
            row += [_fmt(r["timed_hf_fraction"], 2), _fmt(r["timed_edge_speedup"], 2),
                    _fmt(r["measured_speedup"], 2)]
        rows.append(row)
    return lines + _table(header, rows) + [""]
