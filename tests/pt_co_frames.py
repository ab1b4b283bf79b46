"""The tests' tiny Pt(111) + CO frames, EMT-labelled, with per-atom ``expert`` arrays.

The tests' own fixtures (the example builds its structures in ``examples/pt_co``); the same
frames as the example's ``make_frames``, so the tiny configs train on what they always have.
"""

from typing import List

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

PT_A0 = 3.92  # EMT lattice constant of Pt (A)


def label_regions(atoms: Atoms, depth: float = 2.5) -> np.ndarray:
    """0 (big) for C, O and Pt within ``depth`` of the top Pt layer; 1 (small) for the rest."""
    is_pt = atoms.numbers == 78
    top = atoms.positions[is_pt, 2].max() if is_pt.any() else 0.0
    big = ~is_pt | (atoms.positions[:, 2] > top - depth)
    return np.where(big, 0, 1).astype(np.int64)


def slab_with_co(size=(2, 2, 3), site="ontop", rattle=0.05, seed=0) -> Atoms:
    """Small periodic Pt(111) slab, 5 A vacuum, with one ase ``molecule("CO")`` (O first)."""
    slab = fcc111("Pt", size, a=PT_A0, vacuum=5.0)
    add_adsorbate(slab, molecule("CO"), 1.9, site, mol_index=1)
    slab.pbc = True
    slab.info.pop("adsorbate_info", None)
    rng = np.random.default_rng(seed)
    slab.positions += rng.normal(0.0, rattle, slab.positions.shape) * np.where(
        slab.numbers == 78, 1.0, 0.3
    )[:, None]
    return slab


def labelled(atoms: Atoms, expert=None) -> Atoms:
    """Copy with EMT energy, forces and stress and the ``expert`` array (default
    ``label_regions``)."""
    atoms = atoms.copy()
    atoms.arrays["expert"] = label_regions(atoms) if expert is None else expert
    atoms.calc = EMT()
    results = dict(
        energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress()
    )
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


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
