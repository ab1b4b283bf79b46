"""Region rules: per-atom expert labels from the geometry of a structure.

A rule selects atoms (a boolean mask) and names the expert they get (``nequip_moe.data.rules``).
``assign_experts`` gives every atom the default expert, then applies the rules in order (a
later rule overrides an earlier one), optionally growing each selected region by whole
neighbour shells or by a distance (a buffer) so that the interface between experts lies away
from the chemistry the high-fidelity expert is there for.

Rules are the dataclasses of ``nequip_moe.data.rules``, or plain mappings (e.g. from YAML) with
a ``kind`` key::

    - {kind: near, expert: big, species: [C, O], cutoff: 4.0}
    - {kind: depth, expert: big, depth: 2.5, species: [Cu]}

A rules file (YAML, read by ``read_rules_file``) is a list of rules, or a mapping with a
``rules`` list, an optional ``preset`` (``nequip_moe.data.presets``) and the settings of
``assign_experts``::

    preset: {name: adsorbate_host, expert: big, default_expert: small, host: Fe, adsorbates: [H]}
    buffer_shells: 1          # or `buffer_width: 4.5` (A), a buffer by distance
    rules:
      - {kind: sphere, expert: big, center: [0, 0, 20], radius: 6.0}

A preset's ``bulk`` (a bulk structure file of the host) is read relative to the rules file.
Positions and distances are Cartesian, in Å; distances between atoms and to a sphere's centre
use the minimum image along periodic cell directions.
"""

import pathlib
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import yaml
from ase import Atoms

from nequip_moe.composite import expert_label_array
from nequip_moe.data.neighbours import (  # noqa: F401  (public names of this module)
    coordination_numbers,
    median_nearest_neighbour_distance,
    neighbour_pairs,
)
from nequip_moe.data.presets import (  # noqa: F401
    PRESETS,
    adsorbate_host,
    preset_host,
    preset_rules,
    pt_co_coordination,
)
from nequip_moe.data.rules import (  # noqa: F401
    RULE_KINDS,
    Box,
    Coordination,
    Depth,
    Indices,
    Near,
    Rule,
    Sphere,
    rule_from_dict,
)

RULES_FILE_SETTINGS = ("default_expert", "buffer_shells", "shell_cutoff", "buffer_width")


def _load_rules_file(path) -> Union[list, dict]:
    """The YAML content of a rules file, checked for its shape and keys; a preset's relative
    ``bulk`` path resolved against the file's folder."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rules file `{path}` does not exist")
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"rules file `{path}` is not valid YAML: {e}") from e
    if isinstance(config, list):
        return config
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
    preset = config.get("preset")
    if isinstance(preset, dict) and isinstance(preset.get("bulk"), str):
        config["preset"] = {**preset, "bulk": str(path.parent / preset["bulk"])}
    return config


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
    config = _load_rules_file(path)
    if isinstance(config, list):
        return [rule_from_dict(rule) for rule in config], {}
    rules, settings = [], {}
    if "preset" in config:
        try:
            rules, settings = preset_rules(config["preset"])
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"rules file `{path}`: {e}") from None
    rules = rules + [rule_from_dict(rule) for rule in config.get("rules", [])]
    settings.update({k: config[k] for k in RULES_FILE_SETTINGS if k in config})
    return rules, settings


def rules_file_host(path) -> Optional[str]:
    """The host element of a rules file's preset (``presets.preset_host``), else ``None``.

    Args:
        path: the YAML file
    """
    config = _load_rules_file(path)
    if isinstance(config, dict) and "preset" in config:
        return preset_host(config["preset"])
    return None


def rule_elements(rules: Sequence[Rule]) -> List[str]:
    """The element symbols the rules name (their ``species`` and ``neighbours``), sorted.

    Args:
        rules: region rules
    """
    named = set()
    for rule in rules:
        for key in ("species", "neighbours"):
            named.update(getattr(rule, key, None) or [])
    return sorted(named)


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
        shell_cutoff: neighbour distance (Å) of one shell, between two neighbour shells (e.g.
            a host's ``neighbours.host_shell(...).cutoff``); default: 1.2 x the median
            nearest-neighbour distance of the structure (between the first two shells of fcc
            and hcp crystals; bcc's second shell lies at 1.15 x: give it for bcc hosts)
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
            width_i, width_j = neighbour_pairs(atoms, buffer_width)
    if buffer_shells > 0:
        if shell_cutoff is None:
            shell_cutoff = 1.2 * median_nearest_neighbour_distance(atoms)
        if not shell_cutoff > 0:
            raise ValueError(f"shell_cutoff must be positive, got {shell_cutoff}")
        shell_i, shell_j = neighbour_pairs(atoms, shell_cutoff)

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
