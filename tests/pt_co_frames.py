"""Tiny EMT-labelled Pt(111) + CO frames with per-atom expert labels, for tests."""

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def label_regions(atoms: Atoms, depth: float = 2.5) -> np.ndarray:
    """0 (big) for C, O and Pt within ``depth`` of the top Pt layer; 1 (small) for the rest."""
    is_pt = atoms.numbers == 78
    top = atoms.positions[is_pt, 2].max() if is_pt.any() else 0.0
    big = ~is_pt | (atoms.positions[:, 2] > top - depth)
    return np.where(big, 0, 1).astype(np.int64)


def slab_with_co(size=(2, 2, 3), site="ontop", rattle=0.05, seed=0) -> Atoms:
    slab = fcc111("Pt", size, vacuum=5.0, a=3.92)
    add_adsorbate(slab, molecule("CO"), 1.9, site, mol_index=1)
    slab.pbc = True
    slab.info.pop("adsorbate_info", None)
    rng = np.random.default_rng(seed)
    slab.positions += rng.normal(0.0, rattle, slab.positions.shape) * np.where(
        slab.numbers == 78, 1.0, 0.3
    )[:, None]
    return slab


def labelled(atoms: Atoms, expert=None) -> Atoms:
    """Attach EMT energy, forces, stress and the ``expert`` array."""
    atoms = atoms.copy()
    atoms.arrays["expert"] = label_regions(atoms) if expert is None else expert
    atoms.calc = EMT()
    results = dict(
        energy=atoms.get_potential_energy(),
        forces=atoms.get_forces(),
        stress=atoms.get_stress(),
    )
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def make_frames(num_slabs: int = 6, num_bulk: int = 2, seed: int = 0):
    frames = []
    sites = ["ontop", "fcc", "hcp", "bridge"]
    for i in range(num_slabs):
        frames.append(labelled(slab_with_co(site=sites[i % 4], seed=seed + i)))
    rng = np.random.default_rng(seed)
    for i in range(num_bulk):
        pt = bulk("Pt", "fcc", a=3.92 * (0.98 + 0.02 * i), cubic=True)
        pt.positions += rng.normal(0.0, 0.05, pt.positions.shape)
        frames.append(labelled(pt, expert=np.full(len(pt), 1, dtype=np.int64)))
    return frames
