"""Pt + CO structures of the example and its benchmarks: the one place they are built.

- ``pt111_slab`` / ``add_co``: the Pt(111) slab and CO adsorbate every builder starts from;
- the data stage's frame kinds (``bulk_eos`` ... ``md_snapshots``), each tagged with its kind,
  among them the paper's system: Pt nanoparticles (cuboctahedra, truncated octahedra) and
  stepped (211) / (331) slabs with CO on top, bridge and hollow sites (``surface_sites``),
  bulk with vacancies and thick (111) slabs;
- ``split_crystal``: the perfect fcc crystal split into a big and a small half (interface test);
- ``BenchSlab``: ``nequip-moe bench``'s slabs (``nequip_moe.benchmarking.structures``);
- ``attach_labels`` / ``emt_labelled``: reference energy, forces and stress from a calculator.
"""

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, bulk, fcc111, fcc211, surface
from ase.cluster import Octahedron
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

import nequip_moe.benchmarking.structures

PT_A0 = 3.92  # EMT lattice constant of Pt (A); the data stage builds at its labeller's a0
CO_BOND = 1.15
ADSORPTION_HEIGHT = {"ontop": 1.85, "bridge": 1.55, "fcc": 1.35, "hcp": 1.35}
SITES = tuple(ADSORPTION_HEIGHT)
# lattice constants / a0 of the training EOS grid, and of the held-out grid that reaches past it
TRAIN_EOS_SCALES = (0.97, 1.03)
EOS_SCALES = np.linspace(0.96, 1.04, 9)


# ---------------------------------------------------------------- building blocks


def pt111_slab(size, vacuum: float = 8.0, a0: float = PT_A0) -> Atoms:
    """Pt(111) slab of ``size = (nx, ny, layers)`` and lattice constant ``a0``; keeps ase's
    adsorption-site table."""
    return fcc111("Pt", size, a=a0, vacuum=vacuum)


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


def bulk_eos(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    """Unrattled 32-atom fcc Pt cells on an even grid of lattice constants (``a0`` x
    ``TRAIN_EOS_SCALES``)."""
    return [with_kind(pt_bulk(a0 * s), "bulk_eos") for s in np.linspace(*TRAIN_EOS_SCALES, n)]


def bulk_eos_heldout(scales: Sequence[float] = EOS_SCALES, a0: float = PT_A0) -> List[Atoms]:
    """The held-out equation-of-state set (never trained on): ``a0`` x ``scales``."""
    return [with_kind(pt_bulk(a0 * s), "eos_heldout") for s in scales]


# strained bulk: isotropic part and random symmetric part of every component; with the
# training EOS grid they span less than the held-out EOS set (+-4 %), so that its outer points
# test the models beyond the volumes they were trained on
ISOTROPIC_STRAIN = 0.02
SHEAR_STRAIN = 0.01


def _strain_and_rattle(atoms: Atoms, rng: np.random.Generator, kind: str,
                       isotropic_strain: float = ISOTROPIC_STRAIN) -> Atoms:
    """``atoms`` under a random isotropic strain <= ``isotropic_strain`` plus a random
    symmetric strain <= ``SHEAR_STRAIN`` per component, rattled by 0.02-0.1 A, as ``kind``."""
    strain = rng.uniform(-SHEAR_STRAIN, SHEAR_STRAIN, (3, 3))
    isotropic = rng.uniform(-isotropic_strain, isotropic_strain)
    strain = 0.5 * (strain + strain.T) + isotropic * np.eye(3)
    atoms.set_cell(atoms.cell @ (np.eye(3) + strain), scale_atoms=True)
    return with_kind(rattle(atoms, rng, rng.uniform(0.02, 0.1)), kind)


def bulk_strained(n: int, rng: np.random.Generator, a0: float = PT_A0,
                  isotropic_strain: float = ISOTROPIC_STRAIN) -> List[Atoms]:
    """32- or 108-atom cells at ``a0``, strained and rattled (``_strain_and_rattle``)."""
    cells = (pt_bulk(a0, repeat=3 if i % 5 == 4 else 2) for i in range(n))
    return [_strain_and_rattle(atoms, rng, "bulk_strained", isotropic_strain) for atoms in cells]


def bulk_columns(n: int, rng: np.random.Generator, length: int = 6, a0: float = PT_A0,
                 isotropic_strain: float = ISOTROPIC_STRAIN) -> List[Atoms]:
    """2 x 2 x ``length`` conventional cells at ``a0`` (96 atoms at the default), strained and
    rattled (``_strain_and_rattle``): long along z, so that a cut normal to z (the interface
    term's) leaves each half wider than twice the cutoff, like the split perfect crystal."""
    cells = (pt_bulk(a0, repeat=1).repeat((2, 2, length)) for _ in range(n))
    return [_strain_and_rattle(atoms, rng, "bulk_column", isotropic_strain) for atoms in cells]


def _random_co(slab: Atoms, site: str, offset, rng: np.random.Generator, height=None) -> None:
    """CO at ``site`` of cell ``offset``, tilted by up to 15 degrees in a random direction."""
    tilt = math.radians(rng.uniform(0.0, 15.0))
    add_co(slab, site, offset, height, tilt, rng.uniform(0.0, 2.0 * math.pi))


def covered_slab(size, num_co: int, rng: np.random.Generator, kind: str, a0: float = PT_A0
                 ) -> Atoms:
    """Slab (lattice constant ``a0``) with ``num_co`` CO on one kind of site in distinct
    surface cells."""
    slab = pt111_slab(size, a0=a0)
    site = SITES[rng.integers(len(SITES))]
    cells = [(i, j) for i in range(size[0]) for j in range(size[1])]
    for k in rng.choice(len(cells), num_co, replace=False):
        _random_co(slab, site, cells[k], rng)
    return with_kind(rattle(slab, rng, 0.05), kind)


def clean_slabs(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    return [with_kind(rattle(pt111_slab((3, 3, 4), a0=a0), rng, 0.05), "clean_slab")
            for _ in range(n)]


def slabs_with_co(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    return [covered_slab((3, 3, 4), 1 + i % 4, rng, "slab_co", a0) for i in range(n)]


def quarter_monolayer(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    frames = []
    for i in range(n):
        slab = pt111_slab((2, 2, 4), a0=a0)
        _random_co(slab, SITES[i % len(SITES)], (0, 0), rng)
        frames.append(with_kind(rattle(slab, rng, 0.05), "quarter_ml"))
    return frames


def large_slabs_with_co(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    return [covered_slab((4, 4, 4), 4 + 2 * (i % 3), rng, "large_slab_co", a0) for i in range(n)]


def desorption(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    frames = []
    for height in np.linspace(1.6, 6.0, n):
        slab = pt111_slab((3, 3, 4), a0=a0)
        _random_co(slab, "ontop", (1, 1), rng, height=height)
        frames.append(with_kind(rattle(slab, rng, 0.05), "desorption"))
    return frames


def gas_co(n: int, rng: np.random.Generator) -> List[Atoms]:
    frames = []
    for bond in np.linspace(1.03, 1.35, n):
        co = Atoms("CO", positions=[(6.0, 6.0, 6.0), (6.0, 6.0, 6.0 + bond)], cell=[12.0] * 3)
        frames.append(with_kind(co, "gas_co"))
    return frames


def md_snapshots(n: int, rng: np.random.Generator, calc, steps_between: int = 10,
                 a0: float = PT_A0) -> List[Atoms]:
    """Snapshots of a 3x3x4 slab (lattice constant ``a0``) with 2 CO, Langevin at 600 K (2 fs)
    with the labeller."""
    atoms = covered_slab((3, 3, 4), 2, rng, "md", a0)
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


# ---------------------------------------------------------------- nanoparticles, steps, defects

NEIGHBOUR_CUTOFF = 3.3  # A: between the first (2.77) and second (3.92) Pt shell
SITE_HEIGHT = {"top": 1.85, "bridge": 1.55, "hollow": 1.35}  # C above the site (A)
SITE_KINDS = tuple(SITE_HEIGHT)
MIN_CO_SPACING = 2.8  # A: closest C-C distance between two CO
# Octahedron(length, cutoff) of ase.cluster: cuboctahedra have length = 2 cutoff + 1
PARTICLES = {
    "to38": (4, 1), "co55": (5, 2), "to79": (5, 1),  # default sizes
    "to116": (6, 2), "to140": (6, 1), "co147": (7, 3),  # --full adds these
}
SMALL_PARTICLES = ("to38", "co55", "to79")


def nanoparticle(name: str, vacuum: float = 6.0, a0: float = PT_A0) -> Atoms:
    """Pt cuboctahedron (``coNN``) or truncated octahedron (``toNN``) of ``PARTICLES`` with
    lattice constant ``a0``, centred in a box with ``vacuum`` on every side."""
    length, cutoff = PARTICLES[name]
    particle = Octahedron("Pt", length, cutoff, latticeconstant=a0)
    particle.center(vacuum=vacuum)
    return particle


def stepped_slab(facet: str, layers: Optional[int] = None, vacuum: float = 8.0,
                 a0: float = PT_A0) -> Atoms:
    """Stepped Pt slab of lattice constant ``a0``: ``211`` (3-atom (111) terraces, (100)
    steps; 36 atoms by default) or ``331`` (3-row (111) terraces, (111) steps; 40 atoms by
    default)."""
    if facet == "211":
        return fcc211("Pt", (3, 2, layers or 6), a=a0, vacuum=vacuum)
    if facet == "331":
        cell = bulk("Pt", "fcc", a=a0, cubic=True)
        return surface(cell, (3, 3, 1), layers or 10, vacuum=vacuum)
    raise ValueError(f"unknown stepped facet `{facet}`: use 211 or 331")


def _pt_neighbours(atoms: Atoms, cutoff: float = NEIGHBOUR_CUTOFF):
    from matscipy.neighbours import neighbour_list
    from ase.geometry import complete_cell

    i, j, vectors = neighbour_list(
        "ijD", positions=atoms.positions, cell=complete_cell(atoms.cell), pbc=atoms.pbc,
        cutoff=cutoff,
    )
    is_pt = atoms.numbers == 78
    keep = is_pt[i] & is_pt[j]
    return i[keep], j[keep], vectors[keep]


def surface_sites(atoms: Atoms, kind: str) -> List[Dict]:
    """Adsorption sites of a Pt structure of any shape, from coordination alone.

    Surface atoms are Pt with fewer than 12 Pt neighbours; an atom's outward normal points
    away from its neighbours. ``top``: one surface atom; ``bridge``: two neighbouring surface
    atoms; ``hollow``: three mutually neighbouring surface atoms (fcc and hcp sites of (111)
    facets and terraces). Each site: ``position`` (site point), ``normal`` (unit) and ``atoms``.

    Args:
        atoms: slab, stepped slab or nanoparticle (Pt only, or Pt with adsorbates)
        kind: ``top``, ``bridge`` or ``hollow``
    """
    i, j, vectors = _pt_neighbours(atoms)
    count = np.bincount(i, minlength=len(atoms))
    normal = np.zeros((len(atoms), 3))
    np.add.at(normal, i, -vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    is_surface = (atoms.numbers == 78) & (count < 12) & (np.linalg.norm(normal, axis=1) > 0.5)
    normal[is_surface] /= np.linalg.norm(normal[is_surface], axis=1, keepdims=True)
    bonds = {}
    for a, b, v in zip(i, j, vectors):
        if is_surface[a] and is_surface[b]:
            bonds.setdefault(int(a), {})[int(b)] = v

    def site(members, offsets):
        n = normal[list(members)].sum(axis=0)
        if np.linalg.norm(n) < 1e-6:
            return None
        return {"position": atoms.positions[members[0]] + np.mean(offsets, axis=0),
                "normal": n / np.linalg.norm(n), "atoms": tuple(members)}

    sites = []
    if kind == "top":
        sites = [site([a], [np.zeros(3)]) for a in np.flatnonzero(is_surface)]
    elif kind == "bridge":
        sites = [site([a, b], [np.zeros(3), v])
                 for a in bonds for b, v in bonds[a].items() if a < b]
    elif kind == "hollow":
        for a in bonds:
            for b, vab in bonds[a].items():
                for c, vac in bonds[a].items():
                    if a < b < c and c in bonds[b]:
                        vbc = vac - vab
                        if np.linalg.norm(vbc - bonds[b][c]) < 1e-6:  # the same images
                            sites.append(site([a, b, c], [np.zeros(3), vab, vac]))
    else:
        raise ValueError(f"unknown site kind `{kind}`: use one of {SITE_KINDS}")
    return [s for s in sites if s is not None]


def add_co_on_sites(atoms: Atoms, num_co: int, rng: np.random.Generator,
                    kinds: Sequence[str] = SITE_KINDS) -> int:
    """Add up to ``num_co`` CO (C down, tilted <= 15 degrees) on random sites of random kinds
    (``surface_sites``), at least ``MIN_CO_SPACING`` apart and clear of the Pt atoms; returns
    how many were added."""
    candidates = [(kind, s) for kind in kinds for s in surface_sites(atoms, kind)]
    added = 0
    for index in rng.permutation(len(candidates)):
        if added == num_co:
            break
        kind, s = candidates[index]
        carbon = s["position"] + SITE_HEIGHT[kind] * s["normal"]
        tilt = math.radians(rng.uniform(0.0, 15.0))
        axis = np.cross(s["normal"], rng.normal(size=3))
        axis /= np.linalg.norm(axis)
        direction = math.cos(tilt) * s["normal"] + math.sin(tilt) * axis
        co = Atoms("CO", positions=[carbon, carbon + CO_BOND * direction])
        probe = atoms + co
        from_c = probe.get_distances(len(atoms), range(len(atoms)), mic=True)
        from_o = probe.get_distances(len(atoms) + 1, range(len(atoms)), mic=True)
        is_pt = atoms.numbers == 78
        if ((from_c[~is_pt] < MIN_CO_SPACING).any() or (from_c[is_pt] < 1.7).any()
                or (from_c[is_pt] < 2.3).sum() > len(s["atoms"]) or (from_o[is_pt] < 2.6).any()):
            continue  # crowded, or a concave site (step foot) where the normal points inwards
        atoms += co
        added += 1
    return added


def nanoparticles(n: int, rng: np.random.Generator, sizes: Sequence[str] = SMALL_PARTICLES,
                  a0: float = PT_A0) -> List[Atoms]:
    """Pt nanoparticles of ``sizes`` in turn with 0-8 CO on top, bridge and hollow sites,
    rattled 0.05 A."""
    frames = []
    for k in range(n):
        particle = nanoparticle(sizes[k % len(sizes)], a0=a0)
        add_co_on_sites(particle, int(rng.integers(0, 9)), rng)
        frames.append(with_kind(rattle(particle, rng, 0.05), "nanoparticle"))
    return frames


def stepped_with_co(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    """Pt(211) and Pt(331) slabs in turn with 0-4 CO (top, bridge, hollow), rattled 0.05 A."""
    frames = []
    for k in range(n):
        slab = stepped_slab(("211", "331")[k % 2], a0=a0)
        add_co_on_sites(slab, int(rng.integers(0, 5)), rng)
        frames.append(with_kind(rattle(slab, rng, 0.05), "stepped"))
    return frames


def bulk_vacancies(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    """108-atom fcc cells at ``a0`` with 1 or 2 vacancies, strain <= 1 %, rattle 0.02-0.08 A."""
    frames = []
    for k in range(n):
        atoms = pt_bulk(a0, repeat=3)
        del atoms[rng.choice(len(atoms), 1 + k % 2, replace=False).tolist()]
        strain = rng.uniform(-0.01, 0.01, (3, 3))
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        frames.append(with_kind(rattle(atoms, rng, rng.uniform(0.02, 0.08)), "vacancy"))
    return frames


def thick_slabs_with_co(n: int, rng: np.random.Generator, a0: float = PT_A0) -> List[Atoms]:
    """Pt(111) 3x3x8 slabs (bulk-like middle layers) with 1-3 CO, rattled 0.05 A."""
    return [covered_slab((3, 3, 8), 1 + i % 3, rng, "thick_slab_co", a0) for i in range(n)]


# ---------------------------------------------------------------- the interface test


def split_crystal(a: float, strain: float = 0.0, repeat=(2, 2, 6)) -> Atoms:
    """Perfect fcc Pt (conventional cell ``repeat``-ed) at isotropic ``strain``, split by the
    (001) plane at half height: ``expert`` 0 (big) in the lower half, 1 (small) in the upper
    half; periodic, so there are two planar interfaces. Every atom is an inversion centre:
    the reference forces are zero, any model force is artificial.

    Args:
        a: lattice constant (A) at zero strain
        strain: isotropic linear strain (e.g. 0.01 for +1 %)
        repeat: conventional cells along x, y, z (z is split; keep each half wider than
            twice the largest cutoff)
    """
    atoms = pt_bulk(a * (1.0 + strain), repeat=1).repeat(repeat)
    z = atoms.get_scaled_positions()[:, 2]
    atoms.arrays["expert"] = np.where(z < 0.5 - 1e-6, 0, 1).astype(np.int64)
    atoms.info = {"kind": "split_crystal", "strain": float(strain)}
    return atoms


# ---------------------------------------------------------------- benchmark slabs

# the library's (nequip-moe bench --slabs): Pt(111), CO (C down) on every 4th top site
BenchSlab = nequip_moe.benchmarking.structures.BenchSlab
