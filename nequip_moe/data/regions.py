"""Region rules: per-atom expert labels from the geometry of a structure.

A rule selects atoms (a boolean mask) and names the expert they get. ``assign_experts`` gives
every atom the default expert, then applies the rules in order (a later rule overrides an
earlier one), optionally growing each selected region by whole neighbour shells (a buffer) so
that the interface between experts lies away from the chemistry the big expert is there for.

Rules are the dataclasses below, or plain mappings (e.g. from YAML) with a ``kind`` key::

    - {kind: near, expert: big, species: [C, O], cutoff: 4.0}
    - {kind: depth, expert: big, depth: 2.5, species: [Pt]}

A rules file (YAML, read by ``read_rules_file``) is a list of rules, or a mapping with a
``rules`` list, an optional ``preset`` and the settings of ``assign_experts``::

    preset: {name: pt_co_coordination, expert: big, default_expert: small}
    buffer_shells: 1          # or `buffer_width: 4.5` (A), a buffer by distance
    rules:
      - {kind: sphere, expert: big, center: [0, 0, 20], radius: 6.0}

Positions and distances are Cartesian, in Å; distances between atoms and to a sphere's centre
use the minimum image along periodic cell directions.
"""

import abc
import dataclasses
import warnings
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import yaml
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import complete_cell, find_mic
from matscipy.neighbours import neighbour_list

from nequip_moe._composite import expert_label_array

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
        species: only atoms of these elements can be selected (default: all atoms)
        neighbours: count only neighbours of these elements, e.g. ``[Pt]`` so that adsorbates
            do not make a surface atom look bulk-like (default: all neighbours)
    """

    expert: str
    cutoff: float
    below: int = 12
    species: Optional[Sequence[str]] = None
    neighbours: Optional[Sequence[str]] = None
    kind: ClassVar[str] = "coordination"

    def __post_init__(self):
        _check_positive("cutoff", self.cutoff)
        if self.species is not None:
            self.species = _check_species(self.species)
        if self.neighbours is not None:
            self.neighbours = _check_species(self.neighbours)

    def select(self, atoms: Atoms) -> np.ndarray:
        if self.neighbours is None:
            coordination = coordination_numbers(atoms, self.cutoff)
        else:
            i, j = _neighbour_pairs(atoms, self.cutoff)
            counted = _species_mask(atoms, self.neighbours)[j]
            coordination = np.bincount(i[counted], minlength=len(atoms))
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


def pt_co_coordination(
    expert: str,
    default_expert: str,
    host: str = "Pt",
    adsorbates: Sequence[str] = ("C", "O"),
    coordination_cutoff: float = 3.3,
    bulk_coordination: int = 12,
    bond_cutoff: float = 2.5,
    buffer_shells: int = 1,
    buffer_width: Optional[float] = None,
) -> Tuple[List[Rule], Dict[str, Any]]:
    """Region rules for adsorbates on a metal, for any shape: slabs, steps, nanoparticles, defects.

    The *core* gets ``expert``: adsorbate atoms, host atoms bonded to them (within
    ``bond_cutoff``) and under-coordinated host atoms (fewer than ``bulk_coordination`` host
    neighbours within ``coordination_cutoff``: surfaces, steps, edges, vertices, vacancy
    neighbours), found by coordination rather than by height, so every facet counts. The
    core grows by ``buffer_shells`` neighbour shells; every other atom gets
    ``default_expert``. Preset ``pt_co_coordination`` of rules files.

    Args:
        expert: expert of the core and its buffer (the high-fidelity expert)
        default_expert: expert of all other atoms
        host: host element (default ``Pt``)
        adsorbates: adsorbate elements (default ``C``, ``O``)
        coordination_cutoff: host-host neighbour distance (Å), between the first and second
            shell (default ``3.3``, for Pt: 2.77 and 3.92 Å)
        bulk_coordination: host neighbours of a bulk host atom (default ``12``, fcc)
        bond_cutoff: host-adsorbate bond distance (Å) (default ``2.5``; Pt-C 1.85-2.1 Å)
        buffer_shells: neighbour shells of buffer around the core (default ``1``)
        buffer_width: buffer by distance (Å) instead of by shells (``buffer_shells`` is then
            ignored); e.g. the small expert's cutoff, so that no core atom's force carries a
            small-expert term (default ``None``: shells)

    Returns:
        the rules and the ``assign_experts`` settings (``default_expert``, ``buffer_shells``,
        ``shell_cutoff``, and ``buffer_width`` when given)
    """
    rules = [
        Coordination(
            expert=expert,
            cutoff=coordination_cutoff,
            below=bulk_coordination,
            species=[host],
            neighbours=[host],
        ),
        Near(expert=expert, species=list(adsorbates), cutoff=bond_cutoff),
    ]
    settings = {
        "default_expert": default_expert,
        "buffer_shells": buffer_shells,
        "shell_cutoff": coordination_cutoff,
    }
    if buffer_width is not None:
        settings.update(buffer_shells=0, buffer_width=float(buffer_width))
    return rules, settings


PRESETS = {"pt_co_coordination": pt_co_coordination}
RULES_FILE_SETTINGS = ("default_expert", "buffer_shells", "shell_cutoff", "buffer_width")


def read_rules_file(path) -> Tuple[List[Rule], Dict[str, Any]]:
    """Rules and ``assign_experts`` settings of a YAML rules file.

    The file holds a list of rules, or a mapping with an optional ``preset`` (a mapping with
    ``name``, one of ``PRESETS``, and that preset's arguments), an optional ``rules`` list
    (applied after the preset's rules) and optional settings ``default_expert``,
    ``buffer_shells``, ``shell_cutoff``, ``buffer_width`` (which override the preset's).

    Args:
        path: the YAML file

    Returns:
        the rules and a dict of the settings the file (or its preset) gives
    """
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"rules file `{path}` is not valid YAML: {e}") from e
    if isinstance(config, list):
        return [rule_from_dict(rule) for rule in config], {}
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("rules", []), list)
        or not ("rules" in config or "preset" in config)
    ):
        raise ValueError(
            f"rules file `{path}` must hold a list of rules or a mapping with a `rules` list "
            "and/or a `preset`"
        )
    unknown = sorted(set(config) - {"rules", "preset", *RULES_FILE_SETTINGS})
    if unknown:
        raise ValueError(
            f"rules file `{path}`: unknown keys {unknown}; allowed: rules, preset, "
            + ", ".join(RULES_FILE_SETTINGS)
        )
    rules, settings = [], {}
    if "preset" in config:
        try:
            rules, settings = preset_rules(config["preset"])
        except ValueError as e:
            raise ValueError(f"rules file `{path}`: {e}") from None
    rules = rules + [rule_from_dict(rule) for rule in config.get("rules", [])]
    settings.update({k: config[k] for k in RULES_FILE_SETTINGS if k in config})
    return rules, settings


def preset_rules(preset: Mapping) -> Tuple[List[Rule], Dict[str, Any]]:
    """Rules and settings of a named preset.

    Args:
        preset: mapping with ``name`` (one of ``PRESETS``) and the preset's arguments, e.g.
            ``{"name": "pt_co_coordination", "expert": "big", "default_expert": "small"}``
    """
    if not isinstance(preset, Mapping) or preset.get("name") not in PRESETS:
        raise ValueError(
            f"preset must be a mapping with `name`, one of {list(PRESETS)}, and the preset's "
            f"arguments; got {preset!r}"
        )
    options = {k: v for k, v in preset.items() if k != "name"}
    try:
        return PRESETS[preset["name"]](**options)
    except TypeError as e:
        raise ValueError(f"preset `{preset['name']}` {options}: {e}") from None


def assign_experts(
    atoms: Atoms,
    rules: Sequence[Union[Rule, Mapping]],
    expert_names: Sequence[str],
    default_expert: str,
    buffer_shells: int = 0,
    shell_cutoff: Optional[float] = None,
    buffer_width: Optional[float] = None,
) -> np.ndarray:
    """Per-atom expert labels from region rules.

    Every atom starts with ``default_expert``; then each rule, in order, gives its expert to the
    atoms it selects, grown by ``buffer_shells`` neighbour shells or by every atom within
    ``buffer_width`` Å of a selected atom. A rule that selects no atom warns (naming the rule)
    and changes nothing.

    Args:
        atoms: the structure
        rules: ``Rule`` objects or mappings for ``rule_from_dict``
        expert_names: experts in label order (the model's ``expert_names``)
        default_expert: expert of atoms no rule selects
        buffer_shells: number of neighbour shells added around each rule's region
        shell_cutoff: neighbour distance (Å) of one shell, between the first and second
            neighbour shell (e.g. 3.3 for Pt); default: 1.2 x the median nearest-neighbour
            distance of the structure (between the shells of fcc and hcp metals)
        buffer_width: grow each rule's region by the atoms within this distance (Å, minimum
            image) of it, in one step; ``0`` or ``None``: no buffer by distance. Not together
            with ``buffer_shells``

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
    if buffer_width is not None:
        if not buffer_width >= 0:
            raise ValueError(f"buffer_width must not be negative, got {buffer_width!r}")
        if buffer_shells > 0 and buffer_width > 0:
            raise ValueError("give buffer_shells or buffer_width, not both")
        if buffer_width > 0:
            width_i, width_j = _neighbour_pairs(atoms, buffer_width)
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
        if buffer_width:
            selected[width_i[selected[width_j]]] = True
        labels[selected] = expert_names.index(rule.expert)
    return labels


def expert_summary(expert, expert_names: Sequence[str]) -> List[Tuple[str, int, float]]:
    """Atoms per expert and their fraction of all atoms, in label order.

    Args:
        expert: per-atom expert labels
        expert_names: experts in label order
    """
    labels = expert_label_array(expert, len(expert), expert_names)
    counts = np.bincount(labels, minlength=len(expert_names))
    total = max(len(labels), 1)
    return [(name, int(n), float(n) / total) for name, n in zip(expert_names, counts)]
