"""Region rules: per-atom expert labels from the geometry of a structure.

A rule selects atoms (a boolean mask) and names the expert they get. ``assign_experts`` gives
every atom the default expert, then applies the rules in order (a later rule overrides an
earlier one), optionally growing each selected region by whole neighbour shells (a buffer) so
that the interface between experts lies away from the chemistry the big expert is there for.

Rules are the dataclasses below, or plain mappings (e.g. from YAML) with a ``kind`` key::

    - {kind: near, expert: big, species: [C, O], cutoff: 4.0}
    - {kind: depth, expert: big, depth: 2.5, species: [Pt]}

Positions and distances are Cartesian, in Å; distances between atoms and to a sphere's centre
use the minimum image along periodic cell directions.
"""

import abc
import dataclasses
import warnings
from typing import ClassVar, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import complete_cell, find_mic
from matscipy.neighbours import neighbour_list

_AXES = {"x": 0, "y": 1, "z": 2}
_SURFACES = ("top", "bottom", "both")


def _check_species(species: Union[str, Sequence[str]]) -> List[str]:
    """Element symbols as a list (a single symbol may be given as a string)."""
    species = [species] if isinstance(species, str) else list(species)
    unknown = [s for s in species if s not in atomic_numbers or s == "X"]
    if unknown or len(species) == 0:
        raise ValueError(f"species must be a non-empty list of element symbols, got {species}")
    return species


def _check_positive(name: str, value: float):
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _species_mask(atoms: Atoms, species: Optional[Sequence[str]]) -> np.ndarray:
    if species is None:
        return np.ones(len(atoms), dtype=bool)
    return np.isin(atoms.numbers, [atomic_numbers[s] for s in species])


def _neighbour_pairs(atoms: Atoms, cutoff: float) -> Tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``(i, j)`` of distinct atoms (and periodic images) within ``cutoff``.

    matscipy's list (nequip's default backend) equals ``ase.neighborlist.neighbor_list`` and
    is ~30x faster on 10^5 atoms.
    """
    return neighbour_list(
        "ij",
        positions=atoms.positions,
        cell=complete_cell(atoms.cell),
        pbc=atoms.pbc,
        cutoff=float(cutoff),
    )


def median_nearest_neighbour_distance(atoms: Atoms, search: float = 6.0) -> float:
    """Median over atoms of the distance to the nearest neighbour (within ``search`` Å).

    Args:
        atoms: the structure
        search: largest distance looked at (default ``6.0``)
    """
    i, d = neighbour_list(
        "id", positions=atoms.positions, cell=complete_cell(atoms.cell), pbc=atoms.pbc, cutoff=search
    )
    if len(i) == 0:
        raise ValueError(f"no two atoms within {search} A: give the buffer's shell_cutoff")
    nearest = np.full(len(atoms), np.inf)
    np.minimum.at(nearest, i, d)
    return float(np.median(nearest[np.isfinite(nearest)]))


def coordination_numbers(atoms: Atoms, cutoff: float) -> np.ndarray:
    """Number of neighbours of every atom within ``cutoff`` (minimum image, all species).

    Args:
        atoms: the structure
        cutoff: neighbour distance (Å); between the first and second shell to count nearest
            neighbours
    """
    _check_positive("cutoff", cutoff)
    return np.bincount(_neighbour_pairs(atoms, cutoff)[0], minlength=len(atoms))


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
            i, j = _neighbour_pairs(atoms, self.cutoff)
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

    Args:
        expert: expert of the selected atoms
        cutoff: neighbour distance (Å), between the first and second shell (e.g. 3.3 for Pt)
        below: bulk coordination (e.g. 12 for fcc); atoms with fewer neighbours are selected
    """

    expert: str
    cutoff: float
    below: int = 12
    kind: ClassVar[str] = "coordination"

    def __post_init__(self):
        _check_positive("cutoff", self.cutoff)

    def select(self, atoms: Atoms) -> np.ndarray:
        return coordination_numbers(atoms, self.cutoff) < self.below


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


def check_expert_labels(expert, num_atoms: int, expert_names: Sequence[str]) -> np.ndarray:
    """Validate per-atom expert labels; returns them as an int64 array.

    Args:
        expert: one integer label per atom (shape ``[num_atoms]`` or ``[num_atoms, 1]``, as nequip writes per-atom fields); label ``k`` means ``expert_names[k]``
        num_atoms: number of atoms
        expert_names: experts in label order
    """
    labels = np.asarray(expert)
    if labels.shape == (num_atoms, 1):
        labels = labels.reshape(num_atoms)
    if labels.shape != (num_atoms,) or not (
        labels.size == 0 or np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError(
            f"expert labels must be {num_atoms} integers (one per atom), "
            f"got shape {labels.shape} of {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= len(expert_names))]
    if len(bad):
        raise ValueError(
            f"expert labels {sorted(set(bad.tolist()))} are out of range: labels must be "
            f"0..{len(expert_names) - 1} for experts {list(expert_names)}"
        )
    return labels


def assign_experts(
    atoms: Atoms,
    rules: Sequence[Union[Rule, Mapping]],
    expert_names: Sequence[str],
    default_expert: str,
    buffer_shells: int = 0,
    shell_cutoff: Optional[float] = None,
) -> np.ndarray:
    """Per-atom expert labels from region rules.

    Every atom starts with ``default_expert``; then each rule, in order, gives its expert to the
    atoms it selects, grown by ``buffer_shells`` neighbour shells. A rule that selects no atom
    warns (naming the rule) and changes nothing.

    Args:
        atoms: the structure
        rules: ``Rule`` objects or mappings for ``rule_from_dict``
        expert_names: experts in label order (the model's ``expert_names``)
        default_expert: expert of atoms no rule selects
        buffer_shells: number of neighbour shells added around each rule's region
        shell_cutoff: neighbour distance (Å) of one shell, between the first and second
            neighbour shell (e.g. 3.3 for Pt); default: 1.2 x the median nearest-neighbour
            distance of the structure (between the shells of fcc and hcp metals)

    Returns:
        int64 array of expert labels; label ``k`` means ``expert_names[k]``
    """
    expert_names = list(expert_names)
    rules = [rule_from_dict(r) if isinstance(r, Mapping) else r for r in rules]
    for expert in [default_expert] + [rule.expert for rule in rules]:
        if expert not in expert_names:
            raise ValueError(f"unknown expert `{expert}`; the experts are {expert_names}")
    if not isinstance(buffer_shells, (int, np.integer)) or buffer_shells < 0:
        raise ValueError(f"buffer_shells must be a non-negative integer, got {buffer_shells!r}")
    if buffer_shells > 0:
        if shell_cutoff is None:
            shell_cutoff = 1.2 * median_nearest_neighbour_distance(atoms)
        _check_positive("shell_cutoff", shell_cutoff)
        shell_i, shell_j = _neighbour_pairs(atoms, shell_cutoff)

    labels = np.full(len(atoms), expert_names.index(default_expert), dtype=np.int64)
    for rule in rules:
        selected = np.array(rule.select(atoms), dtype=bool)
        if not selected.any():
            warnings.warn(f"region rule {rule!r} selects no atom", stacklevel=2)
            continue
        for _ in range(buffer_shells):
            selected[shell_i[selected[shell_j]]] = True
        labels[selected] = expert_names.index(rule.expert)
    return labels


def expert_summary(expert, expert_names: Sequence[str]) -> List[Tuple[str, int, float]]:
    """Atoms per expert and their fraction of all atoms, in label order.

    Args:
        expert: per-atom expert labels
        expert_names: experts in label order
    """
    labels = check_expert_labels(expert, len(expert), expert_names)
    counts = np.bincount(labels, minlength=len(expert_names))
    total = max(len(labels), 1)
    return [(name, int(n), float(n) / total) for name, n in zip(expert_names, counts)]
