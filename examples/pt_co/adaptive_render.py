"""The adaptive-regions section's figure (total energy against time) and markdown."""

import pathlib
from typing import Dict

import numpy as np

from adaptive_models import PathLike
from adaptive_nve import RELABEL_EVERY


def plot_nve(nve: Dict, out_dir: PathLike, name: str = "adaptive_nve.png") -> str:
    """Total energy (meV/atom, from its start) against time for the four runs; below, the CO's
    lateral shift and the atoms a t = 0 static labelling gets wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "gated": "gated MoE",
        "big": "all-big",
        "static_relabelled": f"static MoE, relabelled every {RELABEL_EVERY} steps",
        "force_mixing": "force mixing (energy: gated expression)",
    }
    fig, (top, zoom, bottom) = plt.subplots(
        3, 1, figsize=(7, 8), sharex=True, height_ratios=[2, 1.3, 1]
    )
    for key, title in titles.items():
        run = nve["runs"][key]
        e = 1000.0 * (np.array(run["energies_ev_per_atom"]) - run["energies_ev_per_atom"][0])
        top.plot(run["times_ps"], e, label=title, lw=1)
        if key in ("gated", "big"):
            zoom.plot(run["times_ps"], 1000.0 * e, label=title, lw=1)
    top.set_ylabel("E_total - E_total(0)\n(meV/atom)")
    top.legend(fontsize=8)
    top.set_title(f"NVE, {nve['structure']['formula']}, {nve['structure']['temperature_K']:.0f} K, hot CO")
    zoom.set_ylabel("gated, all-big\n(micro-eV/atom)")
    zoom.legend(fontsize=8)
    gated = nve["runs"]["gated"]
    bottom.plot(gated["times_ps"], gated["co_lateral_shift_a"], label="CO lateral shift (A)")
    if "stale_atoms" in gated:
        bottom.plot(gated["times_ps"], gated["stale_atoms"], label="atoms mislabelled by t=0 labels")
    bottom.set_xlabel("time (ps)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


# ---------------------------------------------------------------- markdown


def _g(value, fmt=".3g"):
    return "-" if value is None else format(value, fmt)


def adaptive_markdown(section: Dict) -> str:
    """The report's markdown for an ``adaptive_section`` result."""
    lines = ["## Adaptive regions: the gated MoE", ""]
    lines += [
        "The gated MoE `E = sum_i [g_i e_i^big + (1 - g_i) e_i^small]` of the all-big and all-small "
        "models (no retraining), with the strictly local `AdsorbateCoordinationGate`, against the "
        "static MoE of the same two models, force mixing `F_i = g_i F_i^big + (1 - g_i) F_i^small` "
        "and all-big.",
        "",
        "### Claims",
        "",
    ]
    for c in section["claims"]:
        verdict = "holds" if c["holds"] else "**does not hold**"
        value = c["value"]
        value = _g(value, ".4g") if isinstance(value, (int, float)) else value
        detail = f"; {c['detail']}" if c.get("detail") else ""
        threshold = c["threshold"]
        threshold = _g(threshold, ".4g") if isinstance(threshold, (int, float)) else threshold
        lines.append(f"- {c['claim']}: {verdict} (value {value}, threshold {threshold}{detail})")
    nve = section.get("nve")
    if nve:
        s = nve["structure"]
        lines += [
            "",
            "### NVE with moving chemistry (ASE velocity Verlet)",
            "",
            f"{s['slab']} ({s['atoms']} atoms); velocities at {s['temperature_K']:.0f} K (seed "
            f"{s['seed']}), the CO given {s['co_kick_ev']} eV of extra kinetic energy along x; "
            "flat-bottomed harmonic walls (conservative, in the potential energy) "
            f"{s['walls_above_top_layer_a']['C']} / {s['walls_above_top_layer_a']['O']} A above "
            "the top layer keep C / O on the surface (the EMT-trained models bind CO by < 0.1 eV). "
            f"Gate options `{nve['gate_options']}`: terrace Pt counts as regular, so the "
            "high-fidelity region is the CO and the Pt it touches and follows the CO. At t = 0: "
            f"zones {', '.join(f'{k} {v:.2f}' for k, v in nve['zones_t0'].items())}; static "
            f"labels (`pt_co_coordination`, same radii) put {nve['static_big_atoms_t0']} atoms on "
            "the big expert. Drift: slope of a linear fit of the total energy; fluctuation: RMS "
            "about it.",
            "",
            "| run | steps x dt (fs) | drift (eV/atom/ps) | RMS fluctuation (eV/atom) | max abs(E - E0) (eV/atom) | s/step |",
            "|---|---|---|---|---|---|",
        ]
        for key, title in (
            ("gated", "gated MoE"),
            ("big", "all-big"),
            ("static_relabelled", "static MoE relabelled"),
            ("force_mixing", "force mixing"),
        ):
            r = nve["runs"][key]
            lines.append(
                f"| {title} | {r['steps']} x {r['timestep_fs']:g} | {r['drift_ev_per_atom_per_ps']:.2e} | "
                f"{r['rms_fluctuation_ev_per_atom']:.2e} | {r['max_deviation_ev_per_atom']:.2e} | "
                f"{r['seconds_per_step']:.3f} |"
            )
        st = nve["runs"]["static_relabelled"]
        lines += [
            "",
            f"The static MoE was relabelled every {st['relabel_every']} steps; "
            f"{len(st['relabelings'])} relabellings changed labels, with energy jumps summing "
            f"to {st['sum_abs_jumps_ev_per_atom']:.2e} eV/atom in absolute value. "
            f"The CO moved up to {max(nve['runs']['gated']['co_lateral_shift_a']):.1f} A "
            "laterally; labels fixed at t = 0 would have been wrong on up to "
            f"{max(nve['runs']['gated'].get('stale_atoms', [0]))} atoms.",
            "",
        ]
        d = nve["dt_scaling"]
        lines.append(
            "Gated MoE, same simulated time at several timesteps: RMS fluctuation "
            + ", ".join(
                f"{r:.2e} eV/atom at {dt:g} fs" for dt, r in zip(d["timesteps_fs"], d["rms_fluctuation_ev_per_atom"])
            )
            + f"; fitted exponent {_g(d['exponent'])} (Verlet: 2)."
        )
        if "adaptive_nve.png" in section.get("figures", []):
            lines += ["", "![NVE total energy](adaptive_nve.png)"]
    acc = section.get("accuracy")
    if acc:
        titles = {
            "gated": "gated MoE (default gate)",
            "gated_following": "gated MoE (NVE's adsorbate-following gate)",
            "static": "static MoE (the default gate's region)",
            "static_split": "static MoE (split's buffered labels)",
            "big": "all-big",
            "small": "all-small",
        }
        classes = ["all"] + list(acc["classes"])
        counts = ", ".join(f"{k} {v}" for k, v in acc["atom_counts"].items())
        lines += [
            "",
            f"### Accuracy on the test split ({acc['frames']} frames)",
            "",
            f"Force MAE (meV/A per component) by class of atom (classes from the split's static "
            f"labels; atoms: {counts}). The static MoE puts {acc['static_hf_fraction']:.2f} of the "
            "atoms on the big expert on the default gate's region (its g >= 0.5 atoms as labels: "
            "the claims compare the gated MoE with this one) and "
            f"{acc.get('static_split_hf_fraction', float('nan')):.2f} on the split's buffered "
            "labels; gated zones (big-only / blend / small-only): "
            + "; ".join(
                f"{titles[k]} {z['big_only']:.2f} / {z['blend']:.2f} / {z['small_only']:.2f}"
                for k, z in acc["gate_zones"].items()
            )
            + ".",
            "",
            "| model | E MAE meV/atom | " + " | ".join(classes) + " |",
            "|---|---|" + "---|" * len(classes),
        ]
        for key, title in titles.items():
            e = acc["errors"][key]
            f = e["forces_mae_mev_per_a"]
            lines.append(
                f"| {title} | {_g(e['energy_mae_mev_per_atom']['all'], '.1f')} | "
                + " | ".join(_g(f.get(c), ".1f") for c in classes)
                + " |"
            )
        lines.append("")
        lines += [f"- {k}: {v}" for k, v in acc.get("class_titles", {}).items()]
    spd = section.get("speed")
    if spd:
        lines += [
            "",
            "### Speed (eager, CPU, interleaved in one run)",
            "",
            f"{spd['structure']}, fastest of {spd['repeats']} calls (forces included), as built "
            "(rattle 0.02 A) and rattled by 0.15 A (beyond 700 K amplitudes) so that the default "
            "gate has a blend zone. The static MoE puts the same atoms (g > 0) on the big expert. "
            "Ideal: the experts' own times weighted by the atoms they evaluate (per edge: by "
            "their share of the edges centred on them), the blend zone counted twice for the "
            "gated MoE; efficiency = ideal time / measured time (above 1: the experts' cost is "
            "not linear in atoms or edges, so the ideal is no strict bound).",
            "",
            "| structure | zones big / blend / small | model | time (s) | speed-up vs all-big | ideal (atoms) | ideal (edges) | efficiency (edges) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, row in spd["rows"].items():
            z = row["zones"]
            zones = f"{z['big_only']:.3f} / {z['blend']:.3f} / {z['small_only']:.3f}"
            head = f"| {label} ({row['atoms']} atoms) | {zones} "
            lines.append(f"{head}| all-big | {row['seconds']['big']:.3f} | 1 | - | - | - |")
            for key, title in (("gated", "gated MoE"), ("static", "static MoE")):
                lines.append(
                    f"{head}| {title} | {row['seconds'][key]:.3f} | {row['speedup'][key]:.2f} | "
                    f"{row['ideal_speedup'][key]:.2f} | {row['ideal_speedup_edges'][key]:.2f} | "
                    f"{row['efficiency_edges'][key]:.2f} |"
                )
            lines.append(
                f"{head}| all-small | {row['seconds']['small']:.3f} | {row['speedup']['small']:.2f} | - | - | - |"
            )
        lines += [
            "",
            "Edges in each model's neighbour list (the gated MoE cannot know g before the call, so "
            "every centre gets the big expert's cutoff; the static MoE's list is pruned on "
            "small-expert centres): "
            + "; ".join(
                f"{label}: " + ", ".join(f"{k} {v}" for k, v in row["input_edges"].items())
                for label, row in spd["rows"].items()
                if "input_edges" in row
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"
