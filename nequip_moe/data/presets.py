"""Named rule sets (presets) of region rules, for rules files and ``nequip-moe assign --preset``.

- ``adsorbate_host``: adsorbates on a host of any crystal and shape (slabs, steps,
  nanoparticles, defects): the adsorbates, host atoms bonded to them and under-coordinated
  host atoms get the high-fidelity expert, the bulk coordination taken from the host's crystal;
- ``pt_co_coordination``: ``adsorbate_host`` with the Pt + CO example's settings (CO on Pt,
  fcc, 3.3 Å coordination cutoff, 2.5 Å bonds).

A preset is a function ``(expert, default_expert, **options) -> (rules, settings)`` returning
the rules and the ``assign_experts`` settings; ``preset_rules`` calls one by name.
"""

import inspect
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

from nequip_moe.data.neighbours import check_elements, host_shell
from nequip_moe.data.rules import Coordination, Near, Rule

# bond cutoff: this many times the sum of the covalent radii of host and adsorbate
BOND_FACTOR = 1.2


def adsorbate_host(
    expert: str,
    default_expert: str,
    host: str,
    adsorbates: Sequence[str],
    bulk: Optional[Union[Atoms, str, pathlib.Path]] = None,
    crystal: Optional[str] = None,
    nearest_neighbour: Optional[float] = None,
    coordination_cutoff: Optional[float] = None,
    bulk_coordination: Optional[int] = None,
    bond_cutoff: Optional[float] = None,
    buffer_shells: int = 1,
    buffer_width: Optional[float] = None,
) -> Tuple[List[Rule], Dict[str, Any]]:
    """Region rules for adsorbates on a host, for any crystal and shape.

    The *core* gets ``expert``: adsorbate atoms, atoms within ``bond_cutoff`` of them (the host
    atoms they bond to) and under-coordinated host atoms (fewer than ``bulk_coordination`` host
    neighbours within ``coordination_cutoff``: surfaces, steps, edges, vertices, vacancy
    neighbours), found by coordination rather than by height, so every facet counts. The core
    grows by ``buffer_shells`` neighbour shells (of ``coordination_cutoff``) or by every atom
    within ``buffer_width``; every other atom gets ``default_expert``.

    The bulk coordination and its cutoff come from the host's crystal
    (``neighbours.host_shell``: fcc and hcp count 12 nearest neighbours, bcc its first two
    shells, 8 + 6, diamond 4): a bulk structure ``bulk`` of it, else ``crystal`` and
    ``nearest_neighbour``, else the host's reference crystal (ase's reference states).

    Args:
        expert: expert of the core and its buffer (the high-fidelity expert)
        default_expert: expert of all other atoms
        host: host element, e.g. ``Fe``
        adsorbates: adsorbate elements, e.g. ``[H]``
        bulk: bulk structure (``Atoms`` or a file) of the host crystal
        crystal: the host's crystal, ``fcc``, ``bcc``, ``hcp``, ``diamond`` or ``sc``
        nearest_neighbour: the host's nearest-neighbour distance (Å), e.g. the labeller's
        coordination_cutoff: host-host neighbour distance (Å) of the coordination count
            (default: midway between the host crystal's bulk shell and the next shell)
        bulk_coordination: host neighbours of a bulk host atom (default: the crystal's)
        bond_cutoff: host-adsorbate bond distance (Å) (default: ``BOND_FACTOR`` x the sum of
            the covalent radii of the host and the largest adsorbate)
        buffer_shells: neighbour shells of buffer around the core (default ``1``)
        buffer_width: buffer by distance (Å) instead of by shells (``buffer_shells`` is then
            ignored); e.g. the low-fidelity expert's cutoff, so that no core atom's force
            carries a low-fidelity term (default ``None``: shells)

    Returns:
        the rules and the ``assign_experts`` settings (``default_expert``, ``buffer_shells``,
        ``shell_cutoff``, and ``buffer_width`` when given)
    """
    (host,) = check_elements([host], "host")
    adsorbates = check_elements(adsorbates, "adsorbates")
    if host in adsorbates:
        raise ValueError(f"the host `{host}` cannot also be an adsorbate ({adsorbates})")
    if coordination_cutoff is None or bulk_coordination is None:
        shell = host_shell(host, bulk, crystal, nearest_neighbour)
        coordination_cutoff = shell.cutoff if coordination_cutoff is None else coordination_cutoff
        bulk_coordination = shell.coordination if bulk_coordination is None else bulk_coordination
    if bond_cutoff is None:
        radius = max(covalent_radii[atomic_numbers[a]] for a in adsorbates)
        bond_cutoff = BOND_FACTOR * (covalent_radii[atomic_numbers[host]] + radius)
    rules = [
        Coordination(
            expert=expert,
            cutoff=float(coordination_cutoff),
            below=int(bulk_coordination),
            species=[host],
            neighbours=[host],
        ),
        Near(expert=expert, species=list(adsorbates), cutoff=float(bond_cutoff)),
    ]
    settings = {
        "default_expert": default_expert,
        "buffer_shells": buffer_shells,
        "shell_cutoff": float(coordination_cutoff),
    }
    if buffer_width is not None:
        settings.update(buffer_shells=0, buffer_width=float(buffer_width))
    return rules, settings


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
    """``adsorbate_host`` with the Pt + CO example's settings: CO on fcc Pt, Pt-Pt neighbours
    within 3.3 Å (first shell 2.77 Å, second 3.92 Å) of which a bulk atom has 12, Pt-C bonds
    within 2.5 Å (1.85-2.1 Å).

    Args:
        expert: expert of the core and its buffer (the high-fidelity expert)
        default_expert: expert of all other atoms
        host: host element (default ``Pt``)
        adsorbates: adsorbate elements (default ``C``, ``O``)
        coordination_cutoff: host-host neighbour distance (Å) (default ``3.3``)
        bulk_coordination: host neighbours of a bulk host atom (default ``12``)
        bond_cutoff: host-adsorbate bond distance (Å) (default ``2.5``)
        buffer_shells: neighbour shells of buffer around the core (default ``1``)
        buffer_width: buffer by distance (Å) instead of by shells (default ``None``: shells)
    """
    return adsorbate_host(
        expert,
        default_expert,
        host,
        adsorbates,
        coordination_cutoff=coordination_cutoff,
        bulk_coordination=bulk_coordination,
        bond_cutoff=bond_cutoff,
        buffer_shells=buffer_shells,
        buffer_width=buffer_width,
    )


PRESETS = {"adsorbate_host": adsorbate_host, "pt_co_coordination": pt_co_coordination}


def _preset_arguments(preset: Mapping) -> Tuple[str, Dict[str, Any]]:
    if not isinstance(preset, Mapping) or preset.get("name") not in PRESETS:
        raise ValueError(
            f"preset must be a mapping with `name`, one of {list(PRESETS)}, and the preset's "
            f"arguments; got {preset!r}"
        )
    return preset["name"], {k: v for k, v in preset.items() if k != "name"}


def preset_rules(preset: Mapping) -> Tuple[List[Rule], Dict[str, Any]]:
    """Rules and settings of a named preset.

    Args:
        preset: mapping with ``name`` (one of ``PRESETS``) and the preset's arguments, e.g.
            ``{"name": "adsorbate_host", "expert": "big", "default_expert": "small",
            "host": "Fe", "adsorbates": ["H"]}``
    """
    name, options = _preset_arguments(preset)
    try:
        return PRESETS[name](**options)
    except TypeError as e:
        raise ValueError(f"preset `{name}` {options}: {e}") from None


def preset_host(preset: Mapping) -> Optional[str]:
    """The host element of a preset (its ``host`` argument, given or default), else ``None``.

    Args:
        preset: mapping with ``name`` and the preset's arguments, as for ``preset_rules``
    """
    name, options = _preset_arguments(preset)
    parameters = inspect.signature(PRESETS[name]).parameters
    if "host" not in parameters:
        return None
    default = parameters["host"].default
    host = options.get("host", None if default is inspect.Parameter.empty else default)
    return None if host is None else str(host)
