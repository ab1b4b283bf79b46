"""Perfect crystals split between two experts, for any crystal.

A bulk structure (any crystal, any cell) is split into a high-fidelity region (``expert`` 0)
and a low-fidelity one (``expert`` 1):

- ``plane_split``: by two periodic lattice planes ``(hkl)`` of the given cell's lattice, each
  half thicker than ``min_half`` along the plane normal (the supercell's third vector is a
  lattice vector, so the crystal stays perfect);
- ``sphere_split``: a sphere of high-fidelity atoms in a low-fidelity matrix, the sphere's
  surface and its periodic images' farther apart than ``min_gap``.

Every atom of a perfect crystal whose sites are fixed by symmetry (Bravais lattices, hcp,
diamond, ...) feels zero force in any equivariant model, so any force on a split crystal is
the interface's. Sizes come from the models' receptive radius ``r``: an atom's force depends
on atoms within ``2 r`` of it, so two interfaces farther apart than ``2 r`` do not interact
(``split_geometries``).
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.build import bulk, make_supercell
from ase.build.general_surface import ext_gcd
from ase.geometry import find_mic

DEFAULT_PLANES = ((1, 0, 0), (1, 1, 0), (1, 1, 1))


def host_bulk(
    element: str, lattice: Optional[str] = None, a: Optional[float] = None, c: Optional[float] = None
) -> Atoms:
    """The bulk crystal of ``element``: ASE's reference crystal unless ``lattice`` / ``a`` / ``c``
    say otherwise, in its cubic conventional cell where it has one.

    Args:
        element: element symbol
        lattice: crystal structure name as ASE's ``bulk`` takes it (``fcc``, ``bcc``, ``hcp``,
            ``diamond``, ``sc``, ...; default: the reference's)
        a: lattice constant (Å) (default: the reference's)
        c: second lattice constant of hcp and tetragonal crystals (Å)
    """
    try:
        try:
            return bulk(element, lattice, a=a, c=c, cubic=True)
        except (ValueError, RuntimeError):  # no cubic cell (hcp, ...)
            return bulk(element, lattice, a=a, c=c)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"cannot build bulk {element} ({lattice or 'reference crystal'}): {e}; give a bulk "
            "structure file"
        ) from None


def strained(atoms: Atoms, strain: float) -> Atoms:
    """A copy of ``atoms`` under isotropic linear ``strain`` (cell and positions scaled)."""
    copy = atoms.copy()
    copy.set_cell(atoms.cell * (1.0 + strain), scale_atoms=True)
    copy.info["strain"] = float(strain)
    return copy


def heights(cell) -> np.ndarray:
    """Distances between the opposite faces of a cell (Å), one per cell vector."""
    cell = np.asarray(cell)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))
                     for k in range(3)])


def repeated_to(atoms: Atoms, min_height: float) -> Atoms:
    """``atoms`` repeated so that every face-to-face distance is at least ``min_height``."""
    return atoms.repeat([max(1, math.ceil(min_height / h - 1e-9)) for h in heights(atoms.cell)])


def plane_basis(indices: Sequence[int]) -> np.ndarray:
    """Integer lattice basis ``(c1, c2, c3)`` of a cell's lattice with ``c1``, ``c2`` in the plane
    ``(hkl)`` and determinant 1, ASE's construction of ``ase.build.surface`` (whose cell then
    projects ``c3`` onto the normal, breaking the periodicity we keep here).

    Args:
        indices: Miller indices ``(h, k, l)`` in the cell's basis
    """
    h, k, l = (int(i) for i in indices)  # noqa: E741
    if (h, k, l) == (0, 0, 0):
        raise ValueError("Miller indices (0, 0, 0) name no plane")
    zero = [h == 0, k == 0, l == 0]
    if sum(zero) == 2:
        if not zero[0]:
            return np.array([(0, 1, 0), (0, 0, 1), (1, 0, 0)])
        if not zero[1]:
            return np.array([(0, 0, 1), (1, 0, 0), (0, 1, 0)])
        return np.array([(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    p, q = ext_gcd(k, l)
    a, b = ext_gcd(p * k + q * l, h)
    basis = np.array(
        [(p * k + q * l, -p * h, -q * h), np.array((0, l, -k)) // abs(math.gcd(l, k)), (b, a * p, a * q)]
    )
    if abs(round(np.linalg.det(basis))) != 1:
        raise ValueError(f"Miller indices {indices} must be coprime")
    return basis


def plane_split(atoms: Atoms, indices: Sequence[int], min_half: float) -> Atoms:
    """The crystal split by two periodic ``(hkl)`` planes: the lower half of the layers along the
    third cell vector is high fidelity (``expert`` 0), the upper half low fidelity (1).

    Args:
        atoms: periodic bulk structure (any cell)
        indices: Miller indices in ``atoms``' cell basis
        min_half: least thickness (Å) of each half along the plane normal
    """
    basis = plane_basis(indices)
    unit = make_supercell(atoms, basis)
    normal = np.cross(unit.cell[0], unit.cell[1])
    layer = abs(np.dot(unit.cell[2], normal)) / np.linalg.norm(normal)
    layers = 2 * max(1, math.ceil(min_half / layer - 1e-9))
    split = unit.repeat((1, 1, layers))
    third = np.round(split.get_scaled_positions()[:, 2], 8) % 1.0
    split.arrays["expert"] = np.where(third < 0.5, 0, 1).astype(np.int64)
    split.info.update(geometry=f"plane_{''.join(str(int(i)) for i in indices)}",
                      miller=[int(i) for i in indices], half_thickness=layers / 2 * layer)
    return split


def _distance_from_centre(atoms: Atoms) -> np.ndarray:
    """Minimum-image distance of every atom from the site nearest the cell's centre."""
    middle = atoms.cell.sum(axis=0) / 2.0
    centre = atoms.positions[np.argmin(np.linalg.norm(atoms.positions - middle, axis=1))]
    return find_mic(atoms.positions - centre, atoms.cell, atoms.pbc)[1]


def sphere_split(atoms: Atoms, radius: float, min_gap: float) -> Atoms:
    """A sphere of high-fidelity atoms (``expert`` 0) in a low-fidelity matrix (1): the atoms
    within ``radius`` of a site near the cell centre, the radius moved to midway between the
    neighbour shells around it; the cell repeated so that the sphere's surface and its images'
    are at least ``min_gap`` apart.

    Args:
        atoms: periodic bulk structure
        radius: sphere radius (Å)
        min_gap: least distance (Å) between the sphere and its periodic images
    """
    split = repeated_to(atoms, 2.0 * radius + min_gap)
    shells = np.unique(np.round(_distance_from_centre(split), 6))
    radius = 0.5 * (shells[shells <= radius].max() + shells[shells > radius].min())
    split = repeated_to(atoms, 2.0 * radius + min_gap)  # the radius grew by less than a shell
    distance = _distance_from_centre(split)
    split.arrays["expert"] = np.where(distance < radius, 0, 1).astype(np.int64)
    split.info.update(geometry="sphere", radius=float(radius))
    return split


def split_geometries(
    atoms: Atoms, receptive_radius: float, planes: Sequence[Tuple[int, int, int]] = DEFAULT_PLANES,
    sphere: bool = True,
) -> Dict[str, Atoms]:
    """Split crystals whose interfaces lie farther apart than twice the receptive radius ``r``:
    each plane split's halves at least ``2 r`` thick, a sphere of radius ``r`` at least ``2 r``
    from its images.

    Args:
        atoms: periodic bulk structure of the host crystal
        receptive_radius: how far (Å) an atom's energy reaches (the largest expert cutoff times
            one plus its message-passing hops)
        planes: Miller indices of the planes, in ``atoms``' cell basis
        sphere: add the sphere split
    """
    r = float(receptive_radius)
    geometries = {}
    for indices in planes:
        split = plane_split(atoms, indices, 2.0 * r)
        geometries[split.info["geometry"]] = split
    if sphere:
        geometries["sphere"] = sphere_split(atoms, r, 2.0 * r)
    return geometries


def interface_distance(atoms: Atoms, high: np.ndarray) -> np.ndarray:
    """Signed distance (Å) of every atom from the interface: to the nearest atom of the other
    region, negative inside the high-fidelity region; ``nan`` with one region only.

    Args:
        atoms: the structure
        high: boolean mask of the high-fidelity atoms
    """
    high = np.asarray(high, dtype=bool)
    if high.all() or not high.any():
        return np.full(len(atoms), np.nan)
    distances = atoms.get_all_distances(mic=True)
    other = high[None, :] != high[:, None]
    nearest = np.where(other, distances, np.inf).min(axis=1)
    return np.where(high, -nearest, nearest)
