"""Region rules: each selects atoms of a structure (a boolean mask) and names their expert.

Rules are the dataclasses below, or plain mappings (e.g. from YAML) with a ``kind`` key
(``rule_from_dict``)::

    - {kind: near, expert: big, species: [C, O], cutoff: 4.0}
    - {kind: depth, expert: big, depth: 2.5, species: [Cu]}
    - {kind: coordination, expert: big, species: [Fe], neighbours: [Fe]}

``nequip_moe.data.regions.assign_experts`` applies them in order. Positions and distances are
Cartesian, in Å; distances between atoms and to a sphere's centre use the minimum image along
periodic cell directions.
"""

import abc
import dataclasses
from typing import ClassVar, List, Mapping, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import find_mic

from nequip_moe.data.neighbours import (
    check_elements,
    coordination_numbers,
    host_shell,
    neighbour_pairs,
)

_AXES = {"x": 0, "y": 1, "z": 2}
_SURFACES = ("top", "bottom", "both")


def _check_species(species: Union[str, Sequence[str]]) -> List[str]:
    return check_elements(species, "species")


def _check_positive(name: str, value: float):
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _species_mask(atoms: Atoms, species: Optional[Sequence[str]]) -> np.ndarray:
    if species is None:
        return np.ones(len(atoms), dtype=bool)
    return np.isin(atoms.numbers, [atomic_numbers[s] for s in species])


class Rule(abc.ABC):
    """A region rule: ``select(atoms)`` is the boolean mask of atoms that get ``expert``."""

    kind: ClassVar[str]
    expert: str

    @abc.abstractmethod
    def select(self, atoms: Atoms) -> np.ndarray:
        """Boolean mask over ``atoms`` of the atoms in the region."""


@dataclasses.dataclass
class Near(Rule):
    """Atoms of ``species`` and every atom within ``cutoff`` of one of them.

    Args:
        expert: expert of the selected atoms
        species: element symbols of the centre atoms, e.g. ``[C, O]``
        cutoff: distance (Å) from a centre atom
    """

    expert: str
    species: Sequence[str]
    cutoff: float
    kind: ClassVar[str] = "near"

    def __post_init__(self):
        self.species = _check_species(self.species)
        _check_positive("cutoff", self.cutoff)

    def select(self, atoms: Atoms) -> np.ndarray:
        centres = _species_mask(atoms, self.species)
        selected = centres.copy()
        if centres.any():
            i, j = neighbour_pairs(atoms, self.cutoff)
            selected[i[centres[j]]] = True
        return selected


@dataclasses.dataclass
class Depth(Rule):
    """Atoms at most ``depth`` below a surface along a Cartesian axis, and every atom above it.

    The top (bottom) surface is the position of the outermost atom of ``species`` along
    ``axis``; ``species`` names the substrate so that adsorbates above it do not define the
    surface. The slab must not straddle the cell boundary along ``axis``.

    Args:
        expert: expert of the selected atoms
        depth: depth (Å) below the surface; put it between two layer depths to get whole layers
        axis: surface normal, ``x``, ``y`` or ``z``
        surface: ``top`` (largest coordinate), ``bottom`` or ``both``
        species: element symbols that define the surface (default: all atoms)
    """

    expert: str
    depth: float
    axis: str = "z"
    surface: str = "top"
    species: Optional[Sequence[str]] = None
    kind: ClassVar[str] = "depth"

    def __post_init__(self):
        if self.depth < 0:
            raise ValueError(f"depth must not be negative, got {self.depth}")
        if self.axis not in _AXES:
            raise ValueError(f"axis must be one of {list(_AXES)}, got `{self.axis}`")
        if self.surface not in _SURFACES:
            raise ValueError(f"surface must be one of {list(_SURFACES)}, got `{self.surface}`")
        if self.species is not None:
            self.species = _check_species(self.species)

    def select(self, atoms: Atoms) -> np.ndarray:
        coordinate = atoms.positions[:, _AXES[self.axis]]
        reference = coordinate[_species_mask(atoms, self.species)]
        selected = np.zeros(len(atoms), dtype=bool)
        if len(reference) == 0:
            return selected
        if self.surface in ("top", "both"):
            selected |= coordinate >= reference.max() - self.depth
        if self.surface in ("bottom", "both"):
            selected |= coordinate <= reference.min() + self.depth
        return selected


@dataclasses.dataclass
class Box(Rule):
    """Atoms inside (or outside) an axis-aligned box of Cartesian positions.

    Args:
        expert: expert of the selected atoms
        lower: lower corner (Å); a ``None`` entry leaves that direction unbounded
        upper: upper corner (Å); a ``None`` entry leaves that direction unbounded
        inside: select the atoms inside (``True``) or outside the box
    """

    expert: str
    lower: Sequence[Optional[float]] = (None, None, None)
    upper: Sequence[Optional[float]] = (None, None, None)
    inside: bool = True
    kind: ClassVar[str] = "box"

    def __post_init__(self):
        if len(self.lower) != 3 or len(self.upper) != 3:
            raise ValueError(f"box corners need 3 entries, got {self.lower} and {self.upper}")

    def select(self, atoms: Atoms) -> np.ndarray:
        lower = np.array([-np.inf if v is None else v for v in self.lower], dtype=float)
        upper = np.array([np.inf if v is None else v for v in self.upper], dtype=float)
        positions = atoms.positions
        within = np.all((positions >= lower) & (positions <= upper), axis=1)
        return within if self.inside else ~within


@dataclasses.dataclass
class Sphere(Rule):
    """Atoms inside (or outside) a sphere; minimum-image distance to the centre in periodic cells.

    Args:
        expert: expert of the selected atoms
        center: centre (Å)
        radius: radius (Å)
        inside: select the atoms inside (``True``) or outside the sphere
    """

    expert: str
    center: Sequence[float]
    radius: float
    inside: bool = True
    kind: ClassVar[str] = "sphere"

    def __post_init__(self):
        if len(self.center) != 3:
            raise ValueError(f"sphere center needs 3 entries, got {self.center}")
        _check_positive("radius", self.radius)

    def select(self, atoms: Atoms) -> np.ndarray:
        offsets = atoms.positions - np.asarray(self.center, dtype=float)
        if atoms.pbc.any():
            _, distances = find_mic(offsets, atoms.cell, atoms.pbc)
        else:
            distances = np.linalg.norm(offsets, axis=1)
        within = distances <= self.radius
        return within if self.inside else ~within


@dataclasses.dataclass
class Coordination(Rule):
    """Atoms with fewer than ``below`` neighbours within ``cutoff``: surfaces, steps, defects.

    Without ``cutoff`` or ``below``, both come from the bulk coordination shell of the host
    crystal (``neighbours.host_shell``: fcc and hcp 12 nearest neighbours, bcc 8 + 6, diamond
    4): the host is the one element of ``neighbours`` (else of ``species``), its crystal
    ``crystal`` and ``nearest_neighbour`` where given, else its reference crystal.

    Args:
        expert: expert of the selected atoms
        cutoff: neighbour distance (Å), between the bulk coordination shell and the next one
            (default: the host crystal's)
        below: bulk coordination; atoms with fewer neighbours are selected (default: the host
            crystal's)
        species: only atoms of these elements can be selected (default: all atoms)
        neighbours: count only neighbours of these elements, e.g. the host's, so that
            adsorbates do not make a surface atom look bulk-like (default: all neighbours)
        crystal: the host's crystal, ``fcc``, ``bcc``, ``hcp``, ``diamond`` or ``sc`` (default:
            its reference crystal)
        nearest_neighbour: the host's nearest-neighbour distance (Å) (default: the reference's)
    """

    expert: str
    cutoff: Optional[float] = None
    below: Optional[int] = None
    species: Optional[Sequence[str]] = None
    neighbours: Optional[Sequence[str]] = None
    crystal: Optional[str] = None
    nearest_neighbour: Optional[float] = None
    kind: ClassVar[str] = "coordination"

    def __post_init__(self):
        if self.species is not None:
            self.species = _check_species(self.species)
        if self.neighbours is not None:
            self.neighbours = _check_species(self.neighbours)
        if self.cutoff is None or self.below is None:
            hosts = self.neighbours or self.species or []
            if len(hosts) != 1:
                raise ValueError(
                    "a coordination rule without `cutoff` and `below` takes them from the host "
                    f"crystal: name one host element in `neighbours` (or `species`), got {hosts}"
                )
            shell = host_shell(hosts[0], crystal=self.crystal, nearest_neighbour=self.nearest_neighbour)
            self.cutoff = shell.cutoff if self.cutoff is None else self.cutoff
            self.below = shell.coordination if self.below is None else self.below
        _check_positive("cutoff", self.cutoff)
        _check_positive("below", self.below)

    def select(self, atoms: Atoms) -> np.ndarray:
        counted = None if self.neighbours is None else _species_mask(atoms, self.neighbours)
        coordination = coordination_numbers(atoms, self.cutoff, counted)
        return (coordination < self.below) & _species_mask(atoms, self.species)


@dataclasses.dataclass
class Indices(Rule):
    """Atoms given by index (0-based, in the structure's order).

    Args:
        expert: expert of the selected atoms
        indices: atom indices
    """

    expert: str
    indices: Sequence[int]
    kind: ClassVar[str] = "indices"

    def select(self, atoms: Atoms) -> np.ndarray:
        indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        bad = indices[(indices < 0) | (indices >= len(atoms))]
        if len(bad):
            raise ValueError(
                f"{self!r}: indices {bad.tolist()} are out of range for {len(atoms)} atoms"
            )
        selected = np.zeros(len(atoms), dtype=bool)
        selected[indices] = True
        return selected


RULE_KINDS = {rule.kind: rule for rule in (Near, Depth, Box, Sphere, Coordination, Indices)}


def rule_from_dict(config: Mapping) -> Rule:
    """Build a rule from a mapping with a ``kind`` key and the rule's arguments.

    Args:
        config: e.g. ``{"kind": "near", "expert": "big", "species": ["C", "O"], "cutoff": 4.0}``
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a region rule must be a mapping with a `kind` key, got {config!r}")
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in RULE_KINDS:
        raise ValueError(
            f"region rule {config} needs `kind`, one of {list(RULE_KINDS)}; got `{kind}`"
        )
    rule = RULE_KINDS[kind]
    fields = dataclasses.fields(rule)
    names = {f.name for f in fields}
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    unknown = sorted(set(config) - names)
    missing = sorted(required - set(config))
    if unknown or missing:
        raise ValueError(
            f"region rule `{kind}` {config}: "
            + (f"unknown keys {unknown}; " if unknown else "")
            + (f"missing keys {missing}; " if missing else "")
            + f"its keys are {[f.name for f in fields]}"
        )
    try:
        return rule(**config)
    except TypeError as e:
        raise ValueError(f"region rule `{kind}` {config}: {e}") from None
