"""Formatting of benchmark results: terminal summary and PNG plots."""

import pathlib
from typing import Dict, List

from nequip_moe.benchmarking.options import MODEL_NAMES


def format_table(rows: List[Dict]) -> str:
    """Terminal table of speed rows."""
    header = (
        f"{'N':>6} {'f':>6} {'t_big':>9} {'t_small':>9} {'t_moe':>9} {'speedup':>8} "
        f"{'ideal':>7} {'eff':>6} {'ideal_edges':>11} {'eff_edges':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['n_atoms']:>6} {r['hf_fraction']:>6.3f} {r['t_big_s']:>9.4f} "
            f"{r['t_small_s']:>9.4f} {r['t_moe_s']:>9.4f} {r['speedup']:>8.2f} "
            f"{r['ideal_speedup']:>7.2f} {r['efficiency']:>6.2f} "
            f"{r['ideal_speedup_edges']:>11.2f} {r['efficiency_edges']:>9.2f}"
        )
    return "\n".join(lines)


def format_weights(weights: Dict[str, float]) -> str:
    """``big=8.3,small=1`` (the form ``--cost-weights`` takes)."""
    return ",".join(f"{name}={w:.3g}" for name, w in weights.items())


def summary(results: Dict, mode: str) -> str:
    """Machine line, speed table, scaling exponents, cost weights, memory, training, presets."""
    machine = results["machine"]
    dtypes = sorted({str(d) for d in (results.get("model_dtype") or {}).values()})
    lines = [
        f"{machine['date']}  {machine['device_name']} ({machine['device']}), "
        f"{machine['torch_threads']} threads, torch {machine['versions']['torch']}, {mode}, "
        f"{results['options'].get('clock', 'wall')} clock, "
        f"{'/'.join(dtypes) or 'model dtype unknown'}, "
        f"load average {machine['load_average']} -> {machine.get('load_average_end')}",
        format_table(results["rows"]),
    ]
    largest = [r for r in results["rows"] if r["n_atoms"] == results["rows"][-1]["n_atoms"]]
    lines.append(
        f"atoms/s at N={largest[0]['n_atoms']}: big {largest[0]['atoms_per_s']['big']:.4g}, "
        f"small {largest[0]['atoms_per_s']['small']:.4g}, "
        + ", ".join(f"moe f={r['hf_fraction']:.2f} {r['atoms_per_s']['moe']:.4g}" for r in largest)
    )
    exponents = [
        f"{label} {entry['exponent']:.2f}"
        for label, entry in results["scaling"].items()
        if entry["exponent"] is not None
    ]
    if exponents:
        lines.append("scaling exponents (t ~ N^b): " + ", ".join(exponents))
    lines.append(f"cost weights (per atom, cheapest = 1): {format_weights(results['cost_weights'])}")
    memory = results["memory"]
    if memory is not None:
        per_model = ", ".join(
            f"{name} {memory[name]['call_bytes'] / 2**20:.0f} MiB" for name in MODEL_NAMES
        )
        ratio = memory["moe_over_big"]
        lines.append(
            f"peak memory at N={memory['n_atoms']}: {per_model} (moe / big "
            + ("n/a: all-big's call measured 0 bytes" if ratio is None else f"{ratio:.2f}")
            + ")"
        )
    capacity = results.get("capacity")
    if capacity is not None:
        lines.append(
            f"largest system on {machine['device']} (tried N = {capacity['n_atoms_tried']}): "
            + ", ".join(
                f"{name} {capacity[name]['largest_fit_atoms']} atoms "
                + (
                    f"(out of memory at {capacity[name]['out_of_memory_atoms']})"
                    if capacity[name]["out_of_memory_atoms"]
                    else "(all sizes tried fit)"
                )
                for name in ("moe", "big")
            )
        )
    training = results["training"]
    if training is not None and "skipped" in training:
        lines.append(f"training: {training['skipped']}")
    elif training is not None:
        lines.append(
            f"training step ({training['n_atoms']} atoms, {training['n_shared_atoms']} shared): "
            f"big {training['big_step_s']:.3g} s, "
            + ", ".join(
                f"{name} {training[f'{name}_step_s']:.3g} s ({training[f'{name}_over_big']:.2f}x)"
                for name in ("moe", "moe_cotrain", "moe_staged")
            )
        )
    for preset, section in (results.get("presets") or {}).items():
        for dtype, entry in section.items():
            if isinstance(entry, dict):
                lines += [
                    f"preset {preset}, {dtype} (cost weights {format_weights(entry['cost_weights'])}):",
                    format_table(entry["rows"]),
                    *preset_memory_lines(entry, section["memory_budget_bytes"]),
                ]
    return "\n".join(lines)


def preset_memory_lines(entry: Dict, budget_bytes: float) -> List[str]:
    """Memory per edge, each model's predicted peak on the target, and which times were
    extrapolated from smaller structures."""
    probe, gib = entry["memory_probe"], 2**30
    lines = [
        f"  memory per edge (measured at N={probe['n_atoms']}): "
        + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in probe["bytes_per_edge"].items())
        + "; measured call memory there: "
        + ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in probe["call_bytes"].items())
    ]
    for row in entry["rows"]:
        predicted = ", ".join(f"{k} {v / gib:.1f}" for k, v in row["predicted_call_bytes"].items())
        lines.append(
            f"  N={row['n_atoms']} f={row['hf_fraction']:.2f}: predicted peak GiB {predicted} "
            f"(budget {budget_bytes / gib:g})"
            + "".join(
                f"; {k} extrapolated from N={e['from_atoms']} (t ~ N^{e['exponent']:.2f})"
                for k, e in row["extrapolated"].items()
            )
        )
    return lines


def plot_results(results: Dict, out_dir) -> List[str]:
    """Speed-up and ideal against fraction, time per atom against N (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for n in sorted({r["n_atoms"] for r in results["rows"]}):
        rows = [r for r in results["rows"] if r["n_atoms"] == n]
        (line,) = ax.plot(
            [r["hf_fraction"] for r in rows], [r["speedup"] for r in rows], "o-", label=f"N={n}"
        )
        ax.plot(
            [r["hf_fraction"] for r in rows],
            [r["ideal_speedup"] for r in rows],
            "--",
            color=line.get_color(),
        )
    ax.set_xlabel("high-fidelity fraction f")
    ax.set_ylabel("speed-up over all-big (dashed: ideal)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    paths.append(str(out_dir / "speedup.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, entry in results["scaling"].items():
        exponent = entry["exponent"]
        suffix = "" if exponent is None else f" (N^{exponent:.2f})"
        ax.plot(entry["n_atoms"], entry["time_per_atom_s"], "o-", label=label + suffix)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms N")
    ax.set_ylabel("time per atom (s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(str(out_dir / "scaling.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
