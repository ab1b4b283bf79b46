"""Production-size speed: the trained MoE against trained all-big in LAMMPS, 1 and 2 MPI ranks.

The method exists for systems far larger than the training frames. This section builds two
with the example's structure builders at the labeller's lattice constant:

- ``slab``: a thick Pt(111) slab, 18 x 18 surface atoms x 16 layers (5,184 Pt), CO on top
  sites at 1/4 monolayer (81 CO) on the top surface: 5,346 atoms;
- ``particle``: a Pt cuboctahedron of 2,057 atoms (8 shells, 4.5 nm vertex to vertex) with
  CO on a quarter of its surface atoms' top sites;

labels them with the example's region rules (``data.label_experts``), and times MD steps of
the compiled MoE (``--target pair_allegro``, from ``nequip-moe deploy``) against compiled
all-big in LAMMPS through the fix-external stand-in for ``pair_style allegro``
(``nequip_moe.integrations.lammps_driver``: LAMMPS's neighbour lists, ghost atoms, reverse
communication), one thread per MPI rank, with the start-up load balance of the input that
``nequip-moe deploy`` writes (each atom weighs its expert's cost from ``nequip-moe bench``;
all-big: atom counts). For each system and rank count it gives the high-fidelity fraction f,
the cost ratio c of the trained experts, the ideal ``1 / (f + (1 - f) c)``, the measured
speed-up and the efficiency (measured / ideal).

The rules make every under-coordinated Pt core, so a slab's bottom surface and its buffer are
on the big expert as much as the top. A production slab's bottom is usually held fixed or
stands for the bulk below it: ``bulk_bottom_labels`` (the remedy, timed beside the rules as
``slab (bulk-terminated bottom)``) keeps the core of the top half only.

Each LAMMPS run is a subprocess (``mpirun -np R python production.py time ...``).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.cluster import Octahedron

from structures import PT_A0, add_co, add_co_on_sites, pt111_slab, rattle

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parent
BIN_DIR = pathlib.Path(sys.executable).parent
SLAB_SIZE = (18, 18, 16)
SLAB_CO_SPACING = 2  # CO on every 2nd top site in both directions: 1/4 monolayer
PARTICLE = (17, 8)  # ase Octahedron(length, cutoff): the 2,057-atom cuboctahedron
PARTICLE_CO_FRACTION = 0.25  # CO per surface Pt
RANKS = (1, 2)
WARMUP_STEPS = 1
# the claim on the production slab (issue: the paper's headline at production scale)
SPEEDUP_BOUND = 2.0
EFFICIENCY_BOUND = 0.85


def production_slab(a0: float = PT_A0, seed: int = 0) -> Atoms:
    """Pt(111) ``SLAB_SIZE`` at ``a0`` with CO on every ``SLAB_CO_SPACING``-th top site of the
    top surface, rattled 0.02 A (Pt) / <= 0.02 A (C, O), periodic (8 A vacuum)."""
    slab = pt111_slab(SLAB_SIZE, vacuum=8.0, a0=a0)
    for j in range(0, SLAB_SIZE[1], SLAB_CO_SPACING):
        for i in range(0, SLAB_SIZE[0], SLAB_CO_SPACING):
            add_co(slab, "ontop", (i, j))
    slab.info = {"kind": "production_slab"}
    slab.pbc = True
    return rattle(slab, np.random.default_rng(seed), 0.02)


def production_particle(a0: float = PT_A0, seed: int = 0) -> Atoms:
    """The ``PARTICLE`` cuboctahedron at ``a0`` with CO on ``PARTICLE_CO_FRACTION`` of its
    surface atoms' top sites (``structures.add_co_on_sites``), rattled, 8 A vacuum."""
    particle = Octahedron("Pt", *PARTICLE, latticeconstant=a0)
    particle.center(vacuum=8.0)
    particle.pbc = True
    rng = np.random.default_rng(seed)
    count = np.bincount(_pt_pairs(particle)[0], minlength=len(particle))
    surface = int((count < 12).sum())
    add_co_on_sites(particle, int(PARTICLE_CO_FRACTION * surface), rng, kinds=("top",))
    particle.center(vacuum=8.0)
    particle.info = {"kind": "production_particle"}
    return rattle(particle, rng, 0.02)


def _pt_pairs(atoms: Atoms, cutoff: float = 3.3):
    from ase.neighborlist import neighbor_list

    return neighbor_list("ij", atoms, cutoff)


def bulk_bottom_labels(atoms: Atoms, buffer_width: float) -> np.ndarray:
    """Expert labels of a slab whose bottom stands for the bulk below it (held fixed in a
    production run): the example's core (``data.core_atoms``) in the top half only, and every
    atom within ``buffer_width`` of it, on the big expert (0); the rest small (1)."""
    from ase.neighborlist import neighbor_list

    from data import core_atoms

    z = atoms.positions[:, 2]
    is_pt = atoms.numbers == 78
    middle = 0.5 * (z[is_pt].min() + z[is_pt].max())
    core = core_atoms(atoms) & ((z > middle) | ~is_pt)
    big = core.copy()
    if buffer_width > 0:
        i, j = neighbor_list("ij", atoms, buffer_width)
        big[j[core[i]]] = True
    return np.where(big, 0, 1).astype(np.int64)


def systems(a0: float, buffer_width: float) -> Dict[str, Atoms]:
    """The production systems with their ``expert`` labels: the rules' and the remedy's."""
    from data import label_experts

    slab, particle = production_slab(a0), production_particle(a0)
    slab.arrays["expert"] = label_experts(slab, buffer_width)
    particle.arrays["expert"] = label_experts(particle, buffer_width)
    remedy = slab.copy()
    remedy.arrays["expert"] = bulk_bottom_labels(slab, buffer_width)
    return {"slab": slab, "slab (bulk-terminated bottom)": remedy, "particle": particle}


# ---------------------------------------------------------------- one LAMMPS run


def time_lammps(model_file, data_file, type_names: Sequence[str], steps: int,
                cost_weights: Optional[Dict[str, float]], device: str = "cpu") -> Dict:
    """Run (in this process, one MPI rank of ``mpirun``) the input ``lammps_input`` writes
    for ``model_file`` on ``data_file``: set-up, ``WARMUP_STEPS`` steps, then ``steps`` timed
    MD steps; returns the wall seconds per step (on rank 0 the whole run's)."""
    from nequip_moe.integrations.lammps_driver import run_lammps_input
    from nequip_moe.integrations.lammps_input import lammps_input
    from nequip_moe.integrations.lammps_runtime import start_lammps
    from nequip_moe.composite import TYPE_ELEMENTS_KEY
    from nequip_moe.integrations.model_files import GatedTypes, model_types, read_metadata

    metadata = read_metadata(model_file)
    if TYPE_ELEMENTS_KEY in metadata:
        table = model_types(metadata, str(model_file))
    else:  # a single model (all-big): typed by species, like a gated MoE
        table = GatedTypes(list(type_names), "none (one model)", ["big"])
    lmp = start_lammps()
    script = lammps_input(model_file, table, data_file, cost_weights=cost_weights,
                          balance="shift", num_steps=0)
    start = time.perf_counter()
    run_lammps_input(lmp, script, device=device)
    lmp.command(f"run {WARMUP_STEPS}")
    setup = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    lmp.command(f"run {steps}")
    seconds = (time.perf_counter() - start) / steps
    result = {"seconds_per_step": seconds, "setup_seconds": setup,
              # rank 0's CPU time: on one rank, what the run costs whatever else the machine
              # runs (on several, MPI's busy waiting counts too)
              "cpu_seconds_per_step": (time.process_time() - cpu) / steps,
              "load_average": list(os.getloadavg()),
              "ranks": int(lmp.extract_setting("world_size")),
              "atoms": int(lmp.get_natoms()), "rank": int(lmp.extract_setting("world_rank"))}
    lmp.close()
    return result


def run_time_lammps(model_file, data_file, type_names, steps: int, ranks: int,
                    cost_weights: Optional[Dict[str, float]], device: str = "cpu") -> Dict:
    """``time_lammps`` in ``mpirun -np RANKS`` (one thread per rank)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "result.json"
        cmd = [str(BIN_DIR / "mpirun"), "-np", str(ranks), sys.executable, __file__, "time",
               str(model_file), str(data_file), "--types", *type_names, "--steps", str(steps),
               "--device", device, "--json", str(out)]
        if cost_weights:
            cmd += ["--cost-weights", json.dumps(cost_weights)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------- the section


def production_section(moe_file, big_file, bench: Dict, a0: float, buffer_width: float,
                       steps: int = 3, device: str = "cpu", ranks: Sequence[int] = RANKS,
                       log=print) -> Dict:
    """Time the MoE against all-big on every system of ``systems`` at each rank count.

    Args:
        moe_file: the MoE compiled for pair_allegro (``nequip-moe deploy``)
        big_file: all-big compiled for pair_allegro
        bench: ``nequip-moe bench --json`` of the trained experts (``cost_weights``, rows'
            ``cost_ratio``)
        a0: the labeller's lattice constant (A)
        buffer_width: the rules' buffer (A)
        steps: timed MD steps per run (after ``WARMUP_STEPS``)
        device: device the files were compiled for
        ranks: MPI rank counts
        log: progress messages
    """
    from nequip_moe.integrations.lammps_data import write_lammps_data
    from nequip_moe.integrations.model_files import GatedTypes, read_composite_table

    table = read_composite_table(moe_file)
    elements = ["C", "O", "Pt"]
    c = float(bench["rows"][-1]["cost_ratio"])
    weights = {k: float(v) for k, v in bench["cost_weights"].items()}
    section = {"cost_ratio_small_over_big": c, "cost_weights": weights, "steps": steps,
               "warmup_steps": WARMUP_STEPS, "ranks": list(ranks), "systems": {}}
    all_big: Dict[int, Dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, atoms) in enumerate(systems(a0, buffer_width).items()):
            big = atoms.arrays["expert"] == 0
            f = float(np.mean(big))
            ideal = 1.0 / (f + (1.0 - f) * c)
            z = atoms.positions[:, 2]
            lower = z < 0.5 * (z[atoms.numbers == 78].min() + z[atoms.numbers == 78].max())
            row = {"atoms": len(atoms), "hf_fraction": f, "ideal_speedup": ideal, "runs": {},
                   # big-expert atoms in the lower half of the Pt (a slab's bottom surface)
                   "lower_half_hf_fraction": float(np.mean(big & lower))}
            moe_data = pathlib.Path(tmp) / f"moe_{index}.data"
            write_lammps_data(moe_data, atoms, atoms.arrays["expert"], table)
            big_data = pathlib.Path(tmp) / f"{name.split()[0]}_big.data"
            if not big_data.is_file():
                write_lammps_data(big_data, atoms, None, GatedTypes(elements, "-", ["big"]))
            for r in ranks:
                key = (name.split()[0], r)
                start = time.perf_counter()
                if key not in all_big:
                    all_big[key] = run_time_lammps(big_file, big_data, elements, steps, r, None,
                                                   device)
                moe = run_time_lammps(moe_file, moe_data, table.type_names, steps, r, weights,
                                      device)
                t_big, t_moe = all_big[key]["seconds_per_step"], moe["seconds_per_step"]
                row["runs"][str(r)] = {
                    "all_big_s_per_step": t_big, "moe_s_per_step": t_moe,
                    "speedup": t_big / t_moe, "efficiency": t_big / t_moe / ideal,
                    "cpu_speedup": (all_big[key]["cpu_seconds_per_step"]
                                    / moe["cpu_seconds_per_step"]),
                    "load_average": {"all_big": all_big[key]["load_average"],
                                     "moe": moe["load_average"]},
                }
                log(f"{name}, {len(atoms)} atoms, f = {f:.3f}, {r} rank(s): all-big "
                    f"{t_big:.2f} s/step, MoE {t_moe:.2f} s/step: {t_big / t_moe:.2f}x (ideal "
                    f"{ideal:.2f}x) [{time.perf_counter() - start:.0f} s]")
            section["systems"][name] = row
    return section


def production_claims(section: Dict) -> List[Dict]:
    """The headline at production scale, on the slab (the rules' labels) at every rank
    count: >= ``SPEEDUP_BOUND`` x all-big and >= ``EFFICIENCY_BOUND`` of the ideal."""
    row = section["systems"]["slab"]
    claims = []
    for ranks, run in row["runs"].items():
        holds = run["speedup"] >= SPEEDUP_BOUND and run["efficiency"] >= EFFICIENCY_BOUND
        claims.append({
            "model": "moe",
            "claim": f"on the {row['atoms']}-atom production slab in LAMMPS ({ranks} MPI "
                     f"rank{'s' * (ranks != '1')}) the MoE is >= {SPEEDUP_BOUND:g}x faster than "
                     f"all-big and reaches >= {100 * EFFICIENCY_BOUND:.0f} % of the ideal",
            "holds": holds,
            "detail": f"{run['speedup']:.2f}x, ideal {row['ideal_speedup']:.2f}x at f = "
                      f"{row['hf_fraction']:.3f}, c = {section['cost_ratio_small_over_big']:.3f}: "
                      f"{100 * run['efficiency']:.0f} %",
            "value": {"speedup": run["speedup"], "efficiency": run["efficiency"]},
            "threshold": {"speedup": SPEEDUP_BOUND, "efficiency": EFFICIENCY_BOUND},
        })
    return claims


def production_markdown(section: Dict) -> List[str]:
    """The report's production-size section."""
    lines = [
        "## Production-size speed in LAMMPS", "",
        f"Trained models compiled for pair_allegro, run through the fix-external stand-in for "
        f"`pair_style allegro` ({section['warmup_steps']} warm-up step, then "
        f"{section['steps']} timed MD steps, one thread per MPI rank, start-up balance weighted "
        f"by the bench's cost weights {section['cost_weights']}); c = "
        f"{section['cost_ratio_small_over_big']:.3f} (bench, 2,080-atom slab).", "",
        "| system | atoms | f (lower half) | ideal | ranks | all-big (s/step) | MoE (s/step) | "
        "speed-up | efficiency | CPU-time speed-up (rank 0) | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in section["systems"].items():
        for ranks, run in row["runs"].items():
            load = max(run["load_average"]["all_big"][0], run["load_average"]["moe"][0])
            lines.append(
                f"| {name} | {row['atoms']} | {row['hf_fraction']:.3f} "
                f"({row['lower_half_hf_fraction']:.3f}) | {row['ideal_speedup']:.2f}x | {ranks} "
                f"| {run['all_big_s_per_step']:.2f} | {run['moe_s_per_step']:.2f} | "
                f"{run['speedup']:.2f}x | {100 * run['efficiency']:.0f} % | "
                f"{run['cpu_speedup']:.2f}x | {load:.1f} |")
    slab = section["systems"].get("slab")
    remedy = section["systems"].get("slab (bulk-terminated bottom)")
    lines.append("")
    if slab and remedy:
        lines.append(
            f"The rules make every under-coordinated Pt core, so the slab's bottom surface and "
            f"its buffer put {100 * slab['lower_half_hf_fraction']:.1f} % of its atoms on the big "
            f"expert (f = {slab['hf_fraction']:.3f} in all, ideal "
            f"{slab['ideal_speedup']:.2f}x). `slab (bulk-terminated bottom)` keeps the core of "
            f"the top half only (`production.bulk_bottom_labels`, for a slab whose bottom layers "
            f"stand for the bulk below, as when they are held fixed): f = "
            f"{remedy['hf_fraction']:.3f}, ideal {remedy['ideal_speedup']:.2f}x.")
    return lines + ["", "Wall times on a shared machine carry its load (last column: the "
                    "1-minute load average); on one rank the CPU-time speed-up does not.", ""]


def main(args=None):
    parser = argparse.ArgumentParser(description="one timed LAMMPS run (under mpirun)")
    sub = parser.add_subparsers(dest="command", required=True)
    timed = sub.add_parser("time")
    timed.add_argument("model")
    timed.add_argument("data")
    timed.add_argument("--types", nargs="+", required=True)
    timed.add_argument("--steps", type=int, required=True)
    timed.add_argument("--device", default="cpu")
    timed.add_argument("--cost-weights", type=json.loads)
    timed.add_argument("--json", required=True)
    args = parser.parse_args(args)
    result = time_lammps(args.model, args.data, args.types, args.steps, args.cost_weights,
                         args.device)
    if result["rank"] == 0:
        pathlib.Path(args.json).write_text(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(EXAMPLE_DIR))
    main()
