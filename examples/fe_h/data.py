"""Step 1 of the Fe + H example: bcc Fe with H, labelled by an offline calculator, as extxyz.

Builds, at the labeller's own bcc Fe lattice constant (fitted first on the 2-atom cubic cell):
the perfect cell across the equation of state and strained, rattled bulk cells (the bulk
response the experts must share), long bulk columns, bulk cells with a vacancy, interstitial
H in bulk (tetrahedral and octahedral sites), clean Fe(100) and Fe(110) slabs and the same
slabs with 1-2 H on their surface sites; labels
each frame with energy, forces and stress, in single-thread worker processes; and writes

- ``frames.xyz``: the training pool (``nequip-train`` splits it into train and validation);
- ``test.xyz``: held-out frames of every kind (another seed), for ``nequip-moe validate``;
- ``bulk.xyz``: the perfect bcc Fe cell at the labeller's lattice constant;
- ``summary.json``: the labeller, its lattice constant, each element's fitted energy per atom
  (the experts' energy shifts), frame counts and the time taken.

No expert labels: ``nequip-moe assign --dataset`` adds them. Run alone with::

    python examples/fe_h/data.py --out examples/fe_h/out/data [--labeller sevenn] [--workers 2]
"""

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bcc100, bcc110, bulk
from ase.calculators.singlepoint import SinglePointCalculator

FE_A0 = 2.83  # a first guess of bcc Fe's lattice constant (A), refined with the labeller
SITES = {"100": ("hollow", "bridge", "ontop"), "110": ("hollow", "longbridge", "shortbridge", "ontop")}


@dataclasses.dataclass
class FrameCounts:
    """Frames of each kind in the training pool (the test set takes ``test_fraction`` of each).

    Args:
        eos: the perfect 2-atom cubic cell, isotropic strains spread evenly over -4.5..+4.5 %
            (one random strain in each of ``eos`` equal parts): the equation of state itself,
            as the Pt+CO example's ``bulk_eos`` frames (without them all-big's B0 came out
            6 % below the labeller's; NOTES.md)
        bulk: 2x2x2 conventional bcc cells (16 Fe), isotropic strains spread evenly over
            -4.5..+4.5 % (one random strain in each of ``bulk`` equal parts of the range) plus a
            symmetric strain <= 1.5 % per component, rattled 0.02-0.08 A
        column: 2x2x4 conventional cells (64 Fe), isotropic strains spread evenly over
            -3.5..+3.5 %, rattled
        vacancy: 3x3x3 cells (53 Fe) with one vacancy, rattled
        bulk_h: 3x3x3 cells with one interstitial H (tetrahedral or octahedral), rattled
        slab: clean Fe(100) 2x2x12 and Fe(110) 2x2x8 slabs, rattled
        slab_h: the same slabs with 1-2 H on hollow, bridge and top sites
    """

    eos: int = 9
    bulk: int = 32
    column: int = 4
    vacancy: int = 3
    bulk_h: int = 10
    slab: int = 4
    slab_h: int = 16

    def scaled(self, scale: float) -> "FrameCounts":
        return FrameCounts(**{k: max(1, round(v * scale)) for k, v in dataclasses.asdict(self).items()})


def rattled(atoms: Atoms, rng: np.random.Generator, amplitude: float) -> Atoms:
    atoms.positions += rng.normal(0.0, amplitude, atoms.positions.shape)
    return atoms


def strained_cell(atoms: Atoms, rng: np.random.Generator, isotropic: float, shear: float,
                  stratum=None) -> Atoms:
    """``atoms`` under an isotropic strain within ``isotropic`` plus a random symmetric strain
    <= ``shear`` per component (cell and positions scaled). The isotropic strain is uniform
    over the range, or over the ``k``-th of ``n`` equal parts of it for ``stratum=(k, n)`` (so
    that ``n`` frames cover compression and expansion evenly)."""
    k, n = stratum if stratum is not None else (0, 1)
    isotropic_strain = isotropic * (2.0 * (k + rng.uniform()) / n - 1.0)
    noise = rng.uniform(-shear, shear, (3, 3))
    strain = np.eye(3) * (1.0 + isotropic_strain) + 0.5 * (noise + noise.T)
    atoms.set_cell(atoms.cell @ strain, scale_atoms=True)
    return atoms


def fe_bulk(a: float, repeat=(1, 1, 1)) -> Atoms:
    return bulk("Fe", "bcc", a=a, cubic=True).repeat(repeat)


def interstitial_h(a: float, site: str) -> Atoms:
    """A 3x3x3 bcc Fe cell with one H on a tetrahedral or octahedral site near its centre."""
    atoms = fe_bulk(a, (3, 3, 3))
    offset = {"tetrahedral": (0.5, 0.25, 0.0), "octahedral": (0.5, 0.5, 0.0)}[site]
    atoms.append("H")
    atoms.positions[-1] = a * (np.array([1.0, 1.0, 1.0]) + offset)
    return atoms


def fe_slab(a: float, facet: str) -> Atoms:
    """Fe(100) 2x2x12 (48 atoms) or Fe(110) 2x2x8 (32 atoms), 6 A vacuum on each side."""
    build, layers = (bcc100, 12) if facet == "100" else (bcc110, 8)
    atoms = build("Fe", (2, 2, layers), a=a, vacuum=6.0)
    atoms.pbc = True
    return atoms


def slab_with_h(a: float, facet: str, rng: np.random.Generator) -> Atoms:
    """A slab with one H on a random site of its top face, and in half the cases a second one
    on the bottom face (a top site mapped through the slab's centre of inversion)."""
    atoms = fe_slab(a, facet)
    centre = atoms.positions.mean(axis=0)  # a centre of inversion of the perfect slab
    for face in range(rng.integers(1, 3)):
        site = str(rng.choice(SITES[facet]))
        height = {"ontop": 1.55, "hollow": 0.4 if facet == "100" else 1.0}.get(site, 1.1)
        add_adsorbate(atoms, "H", height + rng.uniform(-0.1, 0.15), site, offset=tuple(rng.integers(0, 2, 2)))
        if face == 1:
            atoms.positions[-1] = 2.0 * centre - atoms.positions[-1]
    return atoms


def structures(a0: float, counts: FrameCounts, seed: int) -> List[Atoms]:
    """Every structure of the recipe at lattice constant ``a0``, each tagged ``info["kind"]``."""
    rng = np.random.default_rng(seed)
    builders: Dict[str, Callable[[int], Atoms]] = {
        "eos": lambda k: strained_cell(fe_bulk(a0), rng, 0.045, 0.0, (k, counts.eos)),
        "bulk": lambda k: rattled(strained_cell(fe_bulk(a0, (2, 2, 2)), rng, 0.045, 0.015, (k, counts.bulk)),
                                  rng, rng.uniform(0.02, 0.08)),
        "column": lambda k: rattled(strained_cell(fe_bulk(a0, (2, 2, 4)), rng, 0.035, 0.0, (k, counts.column)),
                                    rng, 0.04),
        "vacancy": lambda k: rattled(strained_cell(fe_bulk(a0, (3, 3, 3))[1:], rng, 0.02, 0.0), rng, 0.04),
        "bulk_h": lambda k: rattled(strained_cell(
            interstitial_h(a0, ("tetrahedral", "octahedral")[k % 4 == 3]), rng, 0.02, 0.0), rng, 0.04),
        "slab": lambda k: rattled(fe_slab(a0, ("100", "110")[k % 2]), rng, 0.04),
        "slab_h": lambda k: rattled(slab_with_h(a0, ("100", "110")[k % 2], rng), rng, 0.04),
    }
    frames = []
    for kind, build in builders.items():
        for k in range(getattr(counts, kind)):
            atoms = build(k)
            atoms.info.pop("adsorbate_info", None)
            atoms.info["kind"] = kind
            frames.append(atoms)
    return frames


# ---------------------------------------------------------------- labelling

LABELLERS = ("sevenn", "morse")
_worker_calc = None


def make_labeller(name: str):
    """The labelling calculator: SevenNet ``7net-mf-0`` (PBE modality, CPU, offline), or ASE's
    Morse potential (``morse``: milliseconds a frame, unphysical; for trying the plumbing)."""
    if name == "sevenn":
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator("7net-mf-0", modal="PBE", device="cpu")
    if name == "morse":
        from ase.calculators.morse import MorsePotential

        return MorsePotential(epsilon=0.4, r0=2.55, rho0=6.0)  # bcc minimum near 2.83 A
    raise ValueError(f"unknown labeller `{name}`; choose one of {', '.join(LABELLERS)}")


def _start_worker(name: str):
    global _worker_calc
    import torch

    torch.set_num_threads(1)
    _worker_calc = make_labeller(name)


def _label(atoms: Atoms) -> Atoms:
    atoms.calc = _worker_calc
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def label(frames: Sequence[Atoms], labeller: str, workers: int) -> List[Atoms]:
    """Energy, forces and stress of every frame from ``labeller``, in ``workers`` single-thread
    processes (``workers`` 0: in this process)."""
    if workers <= 0:
        _start_worker(labeller)
        return [_label(a) for a in frames]
    # one thread per process, idle threads sleeping: torch's default threads collapse when the
    # cores are shared
    os.environ.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", MKL_NUM_THREADS="1")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, context, _start_worker, (labeller,)) as pool:
        # largest first, so that no worker is left with a big frame at the end
        order = sorted(range(len(frames)), key=lambda k: -len(frames[k]))
        done = dict(zip(order, pool.map(_label, [frames[k] for k in order])))
    return [done[k] for k in range(len(frames))]


def energy_shifts(frames: Sequence[Atoms]) -> Dict[str, float]:
    """Each element's energy per atom (eV) from a least-squares fit of the frames' energies to
    their element counts: the experts' per-type energy shifts (``energy_shifts`` in
    ``fe_h_moe.yaml``)."""
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    counts = np.array([[a.get_chemical_symbols().count(e) for e in elements] for a in frames], float)
    energies = np.array([a.get_potential_energy() for a in frames])
    shifts, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {e: float(x) for e, x in zip(elements, shifts)}


def lattice_constant(labeller: str, guess: float = FE_A0) -> float:
    """bcc Fe's lattice constant (A) for ``labeller``: Birch-Murnaghan fit to the 2-atom cubic
    cell at ``guess`` x 0.96-1.04."""
    from ase.eos import EquationOfState

    cells = label([fe_bulk(guess * s) for s in np.linspace(0.96, 1.04, 9)], labeller, 0)
    v0, _, _ = EquationOfState([a.get_volume() for a in cells],
                               [a.get_potential_energy() for a in cells], eos="birchmurnaghan").fit()
    a0 = float((2.0 * v0 / 2.0) ** (1.0 / 3.0))
    if not 0.96 * guess < a0 < 1.04 * guess:
        raise ValueError(f"the labeller's bcc Fe lattice constant {a0:.3f} A lies outside the fitted range")
    return a0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
    parser.add_argument("--labeller", choices=LABELLERS, default="sevenn", help="default: sevenn")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every frame count")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="held-out frames per kind, as a fraction of the pool's")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="single-thread labelling processes (default: min(2, cores))")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from ase.io import write

    start = time.perf_counter()
    a0 = lattice_constant(args.labeller)
    counts = FrameCounts().scaled(args.scale)
    test_counts = FrameCounts().scaled(args.scale * args.test_fraction)
    pool = structures(a0, counts, args.seed)
    test = structures(a0, test_counts, args.seed + 1)
    labelled = label(pool + test, args.labeller, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "frames.xyz", labelled[:len(pool)])
    write(args.out / "test.xyz", labelled[len(pool):])
    write(args.out / "bulk.xyz", fe_bulk(a0))
    summary = {
        "labeller": args.labeller, "lattice_constant_a": a0, "frames": len(pool), "test_frames": len(test),
        "atoms": sum(len(a) for a in pool), "counts": dataclasses.asdict(counts),
        "energy_shifts": energy_shifts(labelled[:len(pool)]),
        "seconds": time.perf_counter() - start, "workers": args.workers,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"a0 {a0:.4f} A; {len(pool)} frames ({summary['atoms']} atoms) and {len(test)} test frames "
          f"labelled by {args.labeller} in {summary['seconds']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
