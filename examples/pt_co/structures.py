"""Pt + CO structures of the example, its benchmarks and the tests: the one place they are built.

- ``pt111_slab`` / ``add_co``: the Pt(111) slab and CO adsorbate every builder starts from;
- the data stage's frame kinds (``bulk_eos`` ... ``md_snapshots``), each tagged with its kind;
- ``BenchSlab``: large rattled slabs with CO on a grid of top sites for ``nequip-moe bench``
  (``python examples/pt_co/structures.py bench-slabs OUT.xyz`` writes them);
- ``slab_with_co`` / ``make_frames`` / ``label_regions``: the tests' tiny labelled frames;
- ``attach_labels`` / ``emt_labelled``: reference energy, forces and stress from a calculator.
"""

import argparse
import dataclasses
import math
from typing import List, Optional, Sequence

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

PT_A0 = 3.92  # EMT lattice constant of Pt (A); SevenNet PBE gives 3.98
CO_BOND = 1.15
ADSORPTION_HEIGHT = {"ontop": 1.85, "bridge": 1.55, "fcc": 1.35, "hcp": 1.35}
SITES = tuple(ADSORPTION_HEIGHT)
EOS_SCALES = np.linspace(0.95, 1.05, 9)  # held-out grid, offset from the training grid


# ---------------------------------------------------------------- building blocks


def pt111_slab(size, vacuum: float = 8.0) -> Atoms:
    """Pt(111) slab of ``size = (nx, ny, layers)``; keeps ase's adsorption-site table."""
    return fcc111("Pt", size, a=PT_A0, vacuum=vacuum)


def add_co(
    slab: Atoms, site: str = "ontop", offset=(0, 0), height=None, tilt: float = 0.0,
    azimuth: float = 0.0,
) -> None:
    """Add CO (C down) at ``site`` of surface cell ``offset`` of a ``pt111_slab``.

    Args:
        slab: slab with ase's adsorption-site table
        site: ``ontop``, ``bridge``, ``fcc`` or ``hcp``
        offset: surface cell (in surface lattice vectors)
        height: C height above the top Pt layer (default ``ADSORPTION_HEIGHT[site]``)
        tilt: tilt of the C-O axis from the surface normal (radians)
        azimuth: direction of the tilt (radians)
    """
    o_pos = CO_BOND * np.array(
        [math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth), math.cos(tilt)]
    )
    co = Atoms("CO", positions=[(0.0, 0.0, 0.0), o_pos])
    height = ADSORPTION_HEIGHT[site] if height is None else height
    add_adsorbate(slab, co, height, site, offset=offset)


def pt_bulk(a: float = PT_A0, repeat: int = 2) -> Atoms:
    """Conventional fcc Pt cell (4 atoms) repeated ``repeat`` times along each axis."""
    return bulk("Pt", "fcc", a=a, cubic=True).repeat(repeat)


def rattle(atoms: Atoms, rng: np.random.Generator, pt: float, co: float = 0.02) -> Atoms:
    """Random displacements: normal with std ``pt`` for Pt, at most ``co`` A for C and O."""
    disp = rng.normal(0.0, pt, (len(atoms), 3))
    is_co = atoms.numbers != 78
    directions = rng.normal(size=(int(is_co.sum()), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    disp[is_co] = directions * rng.uniform(0.0, co, (len(directions), 1))
    atoms.positions += disp
    return atoms


# ---------------------------------------------------------------- labels


def attach_labels(frames: Sequence[Atoms], calc) -> List[Atoms]:
    """Copies of ``frames`` with energy, forces and stress from ``calc`` as single-point results."""
    labelled = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        results = dict(
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(),
        )
        atoms.calc = SinglePointCalculator(atoms, **results)
        labelled.append(atoms)
    return labelled


def emt_labelled(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with EMT energy, forces and stress (arrays such as ``expert`` kept)."""
    return attach_labels([atoms], EMT())[0]


# ---------------------------------------------------------------- the data stage's frames


def with_kind(atoms: Atoms, kind: str) -> Atoms:
    """Tag a frame with its kind (``info["kind"]``), drop ase's site table, make it periodic."""
    atoms.info = {"kind": kind}
    atoms.pbc = True
    return atoms


def bulk_eos(n: int, rng: np.random.Generator) -> List[Atoms]:
    """Unrattled 32-atom fcc Pt cells on an even grid of lattice constants."""
    return [with_kind(pt_bulk(PT_A0 * s), "bulk_eos") for s in np.linspace(0.94, 1.06, n)]


def bulk_eos_heldout(scales: Sequence[float] = EOS_SCALES) -> List[Atoms]:
    """The held-out equation-of-state set (never trained on)."""
    return [with_kind(pt_bulk(PT_A0 * s), "eos_heldout") for s in scales]


def bulk_strained(n: int, rng: np.random.Generator) -> List[Atoms]:
    """32- or 108-atom cells, symmetric strain <= 3 %, rattle 0.02-0.1 A."""
    frames = []
    for i in range(n):
        atoms = pt_bulk(PT_A0, repeat=3 if i % 5 == 4 else 2)
        strain = rng.uniform(-0.03, 0.03, (3, 3))
        strain = 0.5 * (strain + strain.T)
        atoms.set_cell(atoms.cell @ (np.eye(3) + strain), scale_atoms=True)
        frames.append(with_kind(rattle(atoms, rng, rng.uniform(0.02, 0.1)), "bulk_strained"))
    return frames


def _random_co(slab: Atoms, site: str, offset, rng: np.random.Generator, height=None) -> None:
    """CO at ``site`` of cell ``offset``, tilted by up to 15 degrees in a random direction."""
    tilt = math.radians(rng.uniform(0.0, 15.0))
    add_co(slab, site, offset, height, tilt, rng.uniform(0.0, 2.0 * math.pi))


def covered_slab(size, num_co: int, rng: np.random.Generator, kind: str) -> Atoms:
    """Slab with ``num_co`` CO on one kind of site in distinct surface cells."""
    slab = pt111_slab(size)
    site = SITES[rng.integers(len(SITES))]
    cells = [(i, j) for i in range(size[0]) for j in range(size[1])]
    for k in rng.choice(len(cells), num_co, replace=False):
        _random_co(slab, site, cells[k], rng)
    return with_kind(rattle(slab, rng, 0.05), kind)


def clean_slabs(n: int, rng: np.random.Generator) -> List[Atoms]:
    return [with_kind(rattle(pt111_slab((3, 3, 4)), rng, 0.05), "clean_slab") for _ in range(n)]


def slabs_with_co(n: int, rng: np.random.Generator) -> List[Atoms]:
    return [covered_slab((3, 3, 4), 1 + i % 4, rng, "slab_co") for i in range(n)]


def quarter_monolayer(n: int, rng: np.random.Generator) -> List[Atoms]:
    frames = []
    for i in range(n):
        slab = pt111_slab((2, 2, 4))
        _random_co(slab, SITES[i % len(SITES)], (0, 0), rng)
        frames.append(with_kind(rattle(slab, rng, 0.05), "quarter_ml"))
    return frames


def large_slabs_with_co(n: int, rng: np.random.Generator) -> List[Atoms]:
    return [covered_slab((4, 4, 4), 4 + 2 * (i % 3), rng, "large_slab_co") for i in range(n)]


def desorption(n: int, rng: np.random.Generator) -> List[Atoms]:
    frames = []
    for height in np.linspace(1.6, 6.0, n):
        slab = pt111_slab((3, 3, 4))
        _random_co(slab, "ontop", (1, 1), rng, height=height)
        frames.append(with_kind(rattle(slab, rng, 0.05), "desorption"))
    return frames


def gas_co(n: int, rng: np.random.Generator) -> List[Atoms]:
    frames = []
    for bond in np.linspace(1.03, 1.35, n):
        co = Atoms("CO", positions=[(6.0, 6.0, 6.0), (6.0, 6.0, 6.0 + bond)], cell=[12.0] * 3)
        frames.append(with_kind(co, "gas_co"))
    return frames


def md_snapshots(n: int, rng: np.random.Generator, calc, steps_between: int = 10) -> List[Atoms]:
    """Snapshots of a 3x3x4 slab with 2 CO, Langevin at 600 K (2 fs) with the labeller."""
    atoms = covered_slab((3, 3, 4), 2, rng, "md")
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=600.0, rng=rng)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=600.0, friction=0.02, fixcm=False, rng=rng)
    frames = []
    for _ in range(n):
        dyn.run(steps_between)
        snapshot = atoms.copy()
        snapshot.info = {"kind": "md"}
        frames.append(snapshot)
    return frames


# ---------------------------------------------------------------- benchmark slabs


@dataclasses.dataclass(frozen=True)
class BenchSlab:
    """A Pt(111) slab with CO on top sites, rebuilt identically from these numbers.

    Args:
        size: surface atoms along each in-plane direction (``size x size`` per layer)
        layers: Pt layers
        co_spacing: one CO on every ``co_spacing``-th top site along both directions
        rattle: standard deviation of random displacements (Angstrom)
        seed: seed of the displacements
        vacuum: vacuum on each side of the slab (Angstrom)
    """

    size: int
    layers: int = 8
    co_spacing: int = 4
    rattle: float = 0.02
    seed: int = 0
    vacuum: float = 6.0

    def build(self) -> Atoms:
        slab = pt111_slab((self.size, self.size, self.layers), vacuum=self.vacuum)
        for j in range(0, self.size, self.co_spacing):
            for i in range(0, self.size, self.co_spacing):
                add_co(slab, "ontop", (i, j))
        slab.info = {"kind": "bench_slab", **dataclasses.asdict(self)}
        slab.pbc = True
        rng = np.random.default_rng(self.seed)
        slab.positions += rng.normal(0.0, self.rattle, slab.positions.shape)
        return slab


# ---------------------------------------------------------------- the tests' tiny frames


def label_regions(atoms: Atoms, depth: float = 2.5) -> np.ndarray:
    """0 (big) for C, O and Pt within ``depth`` of the top Pt layer; 1 (small) for the rest."""
    is_pt = atoms.numbers == 78
    top = atoms.positions[is_pt, 2].max() if is_pt.any() else 0.0
    big = ~is_pt | (atoms.positions[:, 2] > top - depth)
    return np.where(big, 0, 1).astype(np.int64)


def slab_with_co(size=(2, 2, 3), site="ontop", rattle=0.05, seed=0) -> Atoms:
    """Small periodic Pt(111) slab, 5 A vacuum, with one ase ``molecule("CO")`` (O first)."""
    slab = pt111_slab(size, vacuum=5.0)
    add_adsorbate(slab, molecule("CO"), 1.9, site, mol_index=1)
    slab.pbc = True
    slab.info.pop("adsorbate_info", None)
    rng = np.random.default_rng(seed)
    slab.positions += rng.normal(0.0, rattle, slab.positions.shape) * np.where(
        slab.numbers == 78, 1.0, 0.3
    )[:, None]
    return slab


def labelled(atoms: Atoms, expert=None) -> Atoms:
    """EMT-labelled copy with the ``expert`` array (default ``label_regions``)."""
    atoms = atoms.copy()
    atoms.arrays["expert"] = label_regions(atoms) if expert is None else expert
    return emt_labelled(atoms)


def make_frames(num_slabs: int = 6, num_bulk: int = 2, seed: int = 0) -> List[Atoms]:
    """Tiny EMT-labelled frames: slabs with CO on each kind of site, then rattled bulk cells."""
    sites = ("ontop", "fcc", "hcp", "bridge")
    frames = [labelled(slab_with_co(site=sites[i % 4], seed=seed + i)) for i in range(num_slabs)]
    rng = np.random.default_rng(seed)
    for i in range(num_bulk):
        pt = bulk("Pt", "fcc", a=PT_A0 * (0.98 + 0.02 * i), cubic=True)
        pt.positions += rng.normal(0.0, 0.05, pt.positions.shape)
        frames.append(labelled(pt, expert=np.full(len(pt), 1, dtype=np.int64)))
    return frames


# ---------------------------------------------------------------- command line


def write_bench_slabs(path, sizes: Sequence[int], layers: int = 8, co_spacing: int = 4,
                      seed: int = 0) -> List[Atoms]:
    """Write ``BenchSlab`` s of every size to one extxyz file (the input of ``nequip-moe bench``)."""
    frames = [BenchSlab(size, layers, co_spacing, seed=seed).build() for size in sizes]
    write(path, frames, format="extxyz")
    return frames


def main(args: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description="Write Pt(111) + CO benchmark slabs (extxyz).")
    sub = parser.add_subparsers(dest="command", required=True)
    slabs = sub.add_parser("bench-slabs", help="slabs of BenchSlab for nequip-moe bench --structure")
    slabs.add_argument("out", help="extxyz file")
    slabs.add_argument("--sizes", type=int, nargs="+", default=[6, 8, 11, 16],
                       help="surface atoms along each direction (default: %(default)s)")
    slabs.add_argument("--layers", type=int, default=8, help="Pt layers (default: %(default)s)")
    slabs.add_argument("--co-spacing", type=int, default=4,
                       help="one CO on every n-th top site (default: %(default)s)")
    args = parser.parse_args(args)
    frames = write_bench_slabs(args.out, args.sizes, args.layers, args.co_spacing)
    print(f"wrote {len(frames)} slabs ({', '.join(str(len(a)) for a in frames)} atoms) to {args.out}")


if __name__ == "__main__":
    main()
