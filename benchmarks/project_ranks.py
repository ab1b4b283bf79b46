"""Projection to many MPI ranks: time per MD step of the slowest rank, equal-volume subdomains
(LAMMPS's default) against a partition balanced by per-atom cost weights.

Cost model (the assumptions):

- An atom costs ``1`` (low-fidelity expert) or ``w`` (high-fidelity expert) units per step, one
  unit being the small expert's time per atom; ``w`` is the cost weight that
  ``nequip-moe bench`` measures (``cost_weights``). Costs do not depend on the partition.
- A rank's time is the sum of its atoms' costs; a step takes as long as the slowest rank.
  Communication, ghost-atom (halo) work, neighbour-list builds and the MoE's routing are left
  out: they add to every rank alike or scale with the subdomain surface, not with the experts.
- Unweighted: LAMMPS's default ``Px x Py x Pz`` grid of equal-volume subdomains over the whole
  box (vacuum included), the grid chosen as LAMMPS chooses it (smallest subdomain surface).
- Weighted: recursive coordinate bisection with per-atom weights (``balance ... rcb`` and
  ``fix balance ... rcb`` with ``weight``): the longest side of each sub-box is cut at the
  weighted split point, until every rank has one sub-box.

Structures: the bench's Pt(111) + CO slab (``nequip_moe.benchmarking.structures``: CO on
every 4th top site, the adsorbates and the top Pt layer on the big expert, 6 A vacuum each
side) scaled to ``N`` atoms in three ways: ``thin`` (8 layers, wider), ``island`` (8 layers,
CO on one half of the surface only: the high-fidelity region on one side) and ``thick`` (as
many layers as surface atoms along a side, a chunk of metal under one covered surface).

    python benchmarks/project_ranks.py --weight 90 --plot benchmarks/projection.png
"""

import argparse
import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

PT_NN = 3.92 / math.sqrt(2.0)  # nearest-neighbour distance of fcc Pt (A)
LAYER = 3.92 / math.sqrt(3.0)  # (111) layer spacing (A)
VACUUM = 6.0
CO_HEIGHT, CO_BOND = 1.85, 1.15
GEOMETRIES = ("thin", "island", "thick")


def slab(n_atoms: int, geometry: str = "thin", co_spacing: int = 4) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, high-fidelity mask and box lengths of a Pt(111) + CO slab of about ``n_atoms``.

    Args:
        n_atoms: target number of Pt atoms
        geometry: ``thin``, ``island`` or ``thick`` (see the module docstring)
        co_spacing: one CO on every ``co_spacing``-th top site along both directions
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry `{geometry}`; known: {GEOMETRIES}")
    layers = 8 if geometry != "thick" else max(2, round(n_atoms ** (1.0 / 3.0)))
    side = max(co_spacing, round(math.sqrt(n_atoms / layers)))
    i, j, k = (a.ravel() for a in np.meshgrid(
        np.arange(side), np.arange(side), np.arange(layers), indexing="ij"))
    # fcc stacking ABC: each layer shifted by a third of the in-plane cell
    x = (i + 0.5 * j + (k % 3) / 2.0) * PT_NN
    y = (j + (k % 3) / 3.0) * PT_NN * math.sqrt(3.0) / 2.0
    z = VACUUM + k * LAYER
    box = np.array([side * PT_NN, side * PT_NN * math.sqrt(3.0) / 2.0,
                    2 * VACUUM + (layers - 1) * LAYER + CO_HEIGHT + CO_BOND])
    top = k == layers - 1
    sites = top & (i % co_spacing == 0) & (j % co_spacing == 0)
    if geometry == "island":
        sites &= i < side // 2
    co = np.concatenate([
        np.stack([x[sites], y[sites], z[sites] + h], axis=1) for h in (CO_HEIGHT, CO_HEIGHT + CO_BOND)
    ])
    positions = np.concatenate([np.stack([x, y, z], axis=1), co])
    positions[:, :2] %= box[:2]  # wrap the sheared cell into the orthogonal box
    big = np.concatenate([top if geometry != "island" else top & (i < side // 2),
                          np.ones(len(co), dtype=bool)])
    return positions, big, box


def processor_grid(n_ranks: int, box: Sequence[float]) -> Tuple[int, int, int]:
    """LAMMPS's default grid: the factorisation of ``n_ranks`` with the smallest subdomain surface."""
    lx, ly, lz = box
    best, best_area = None, math.inf
    for px in range(1, n_ranks + 1):
        if n_ranks % px:
            continue
        for py in range(1, n_ranks // px + 1):
            if (n_ranks // px) % py:
                continue
            pz = n_ranks // (px * py)
            area = lx * ly / (px * py) + lx * lz / (px * pz) + ly * lz / (py * pz)
            if area < best_area - 1e-9:
                best, best_area = (px, py, pz), area
    return best


def grid_loads(positions: np.ndarray, weights: np.ndarray, box, n_ranks: int) -> np.ndarray:
    """Load of every rank with equal-volume subdomains (the unweighted partition)."""
    grid = np.array(processor_grid(n_ranks, box))
    cell = np.minimum((positions / np.asarray(box) * grid).astype(int), grid - 1)
    rank = np.ravel_multi_index(cell.T, grid)
    return np.bincount(rank, weights=weights, minlength=n_ranks)


def rcb_loads(positions: np.ndarray, weights: np.ndarray, n_ranks: int) -> np.ndarray:
    """Load of every rank after weighted recursive coordinate bisection."""
    loads: List[float] = []
    stack = [(np.arange(len(weights)), n_ranks)]
    while stack:
        index, ranks = stack.pop()
        if ranks == 1:
            loads.append(float(weights[index].sum()))
            continue
        points = positions[index]
        axis = int(np.argmax(points.max(axis=0) - points.min(axis=0)))
        order = index[np.argsort(points[:, axis], kind="stable")]
        left_ranks = ranks // 2
        cumulative = np.cumsum(weights[order])
        target = cumulative[-1] * left_ranks / ranks
        cut = int(np.searchsorted(cumulative, target))
        # the cut nearer the target: before or after the atom that crosses it
        if cut < len(order) and (cut == 0 or abs(cumulative[cut] - target) < abs(cumulative[cut - 1] - target)):
            cut += 1
        stack += [(order[:cut], left_ranks), (order[cut:], ranks - left_ranks)]
    return np.array(loads)


def imbalance(loads: np.ndarray) -> float:
    """Slowest rank over the mean (1 = perfectly balanced)."""
    return float(loads.max() / loads.mean())


def project(
    n_atoms: int, geometry: str, ranks: Sequence[int], weight: float, unit_s: float
) -> List[Dict]:
    """Rows of slowest-rank time per step, unweighted and weighted, for every rank count.

    Args:
        n_atoms: about this many Pt atoms
        geometry: see ``slab``
        ranks: MPI rank counts
        weight: cost of a high-fidelity atom in units of a low-fidelity one
        unit_s: time of one unit (the small expert's time per atom per step, seconds)
    """
    positions, big, box = slab(n_atoms, geometry)
    weights = np.where(big, weight, 1.0)
    rows = []
    for n_ranks in ranks:
        unweighted = grid_loads(positions, weights, box, n_ranks)
        weighted = rcb_loads(positions, weights, n_ranks)
        rows.append({
            "geometry": geometry,
            "target_atoms": n_atoms,
            "n_atoms": len(weights),
            "hf_fraction": float(big.mean()),
            "weight": weight,
            "ranks": n_ranks,
            "grid": processor_grid(n_ranks, box),
            "ideal_s": float(weights.sum() / n_ranks * unit_s),
            "unweighted_s": float(unweighted.max() * unit_s),
            "weighted_s": float(weighted.max() * unit_s),
            "imbalance_unweighted": imbalance(unweighted),
            "imbalance_weighted": imbalance(weighted),
        })
    return rows


def markdown(rows: List[Dict]) -> str:
    lines = [
        "| structure | N | f | ranks | grid | ideal (ms) | unweighted (ms) | imbalance | "
        "weighted (ms) | imbalance | gain |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['geometry']} | {r['n_atoms']:,} | {r['hf_fraction']:.3f} | {r['ranks']} | "
            f"{'x'.join(map(str, r['grid']))} | {1e3 * r['ideal_s']:.2f} | "
            f"{1e3 * r['unweighted_s']:.2f} | {r['imbalance_unweighted']:.2f} | "
            f"{1e3 * r['weighted_s']:.2f} | {r['imbalance_weighted']:.3f} | "
            f"{r['unweighted_s'] / r['weighted_s']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: List[Dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["target_atoms"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for geometry, color in zip(GEOMETRIES, ("C0", "C1", "C2")):
            sel = [r for r in rows if r["target_atoms"] == size and r["geometry"] == geometry]
            if not sel:
                continue
            ranks = [r["ranks"] for r in sel]
            ax.plot(ranks, [1e3 * r["unweighted_s"] for r in sel], "--o", color=color,
                    label=f"{geometry}: equal volume")
            ax.plot(ranks, [1e3 * r["weighted_s"] for r in sel], "-s", color=color,
                    label=f"{geometry}: weighted rcb")
            ax.plot(ranks, [1e3 * r["ideal_s"] for r in sel], ":", color=color, lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("MPI ranks")
        ax.set_ylabel("slowest rank per step (ms; dotted: ideal)")
        ax.set_title(f"about {size:,} Pt atoms, cost weight {rows[0]['weight']:g}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="Pt atoms of the scaled slabs (default: %(default)s)")
    parser.add_argument("--ranks", type=int, nargs="+",
                        default=[8, 16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--geometries", nargs="+", choices=GEOMETRIES, default=list(GEOMETRIES))
    parser.add_argument("--weight", type=float, default=90.0,
                        help="cost weight of the big expert (nequip-moe bench cost_weights; "
                        "default %(default)s: the example's experts)")
    parser.add_argument("--unit-us", type=float, default=22.5,
                        help="small expert's time per atom per step in microseconds "
                        "(default %(default)s: compiled, 1 CPU thread, measured)")
    parser.add_argument("--plot", help="PNG file of the plot")
    args = parser.parse_args(args)
    rows = [
        row
        for n, geometry in itertools.product(args.atoms, args.geometries)
        for row in project(n, geometry, args.ranks, args.weight, 1e-6 * args.unit_us)
    ]
    print(markdown(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return rows


if __name__ == "__main__":
    main()
