"""The benchmark's default structures: Pt(111) slabs with CO on a grid of top sites.

``nequip-moe bench --slabs 6 8 11 16`` times these (about 300 to 2,100 atoms); ``BenchSlab``
rebuilds one identically from its numbers (size, layers, CO spacing, rattle, seed, vacuum).
"""

import dataclasses
from typing import List, Sequence

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111

PT_A0 = 3.92  # A, Pt's lattice constant (EMT and experiment, within 0.5 %)
CO_BOND = 1.15  # A
CO_TOP_SITE_HEIGHT = 1.85  # A, C above the top Pt layer


@dataclasses.dataclass(frozen=True)
class BenchSlab:
    """A Pt(111) slab with CO (C down) on top sites, rebuilt identically from these numbers.

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
        if min(self.size, self.layers, self.co_spacing) < 1:
            raise ValueError(f"bench slab {self}: size, layers and co_spacing must be positive")
        slab = fcc111("Pt", (self.size, self.size, self.layers), a=PT_A0, vacuum=self.vacuum)
        co = Atoms("CO", positions=[(0.0, 0.0, 0.0), (0.0, 0.0, CO_BOND)])
        for j in range(0, self.size, self.co_spacing):
            for i in range(0, self.size, self.co_spacing):
                add_adsorbate(slab, co, CO_TOP_SITE_HEIGHT, "ontop", offset=(i, j))
        slab.info = {"kind": "bench_slab", **dataclasses.asdict(self)}
        slab.pbc = True
        rng = np.random.default_rng(self.seed)
        slab.positions += rng.normal(0.0, self.rattle, slab.positions.shape)
        return slab


def bench_slabs(
    sizes: Sequence[int], layers: int = 8, co_spacing: int = 4, seed: int = 0
) -> List[Atoms]:
    """``BenchSlab`` s of every size, in the order given.

    Args:
        sizes: surface atoms along each in-plane direction, one slab per size
        layers: Pt layers
        co_spacing: one CO on every ``co_spacing``-th top site
        seed: seed of the displacements
    """
    return [BenchSlab(size, layers, co_spacing, seed=seed).build() for size in sizes]
