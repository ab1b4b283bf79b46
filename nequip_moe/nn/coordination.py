"""Coordination of atoms: the bulk neighbour shell of a crystal, and neighbour counts on a graph.

One home for coordination counting, used by the region rules (``nequip_moe.data.rules``), the
shared-environment transform (``nequip_moe.data.SharedEnvironments``) and the gate
(``nequip_moe.nn.AdsorbateCoordinationGate``). Light imports only (torch, nequip's ``scatter``):
packaged models use it.

- ``neighbour_count``: per-atom count of neighbours from ``edge_index`` and edge lengths, hard
  (edges shorter than a cutoff) or smooth (a C2 switching function), optionally counting only
  neighbours of some atoms (e.g. the host element's);
- ``BulkShell`` / ``bulk_shell``: the coordination shell of a crystal from its neighbour shells:
  how many neighbours a bulk atom has and where the cutoff between shells lies, for any crystal
  (fcc 12, bcc 8 + 6 = 14, hcp 12, diamond 4, simple cubic 6);
- ``crystal_shells`` / ``reference_shells``: the neighbour shells of the ideal fcc, bcc, hcp,
  diamond and simple cubic crystals from their nearest-neighbour distance, and of an element's
  reference crystal (``REFERENCE_CRYSTALS``, ase's ``reference_states``).
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from nequip.nn import scatter


def smooth_step(x: torch.Tensor) -> torch.Tensor:
    """0 for ``x <= 0``, 1 for ``x >= 1``, the quintic ``6x^5 - 15x^4 + 10x^3`` in between (C2)."""
    x = x.clamp(0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def switch(r: torch.Tensor, r_on: float, r_off: float) -> torch.Tensor:
    """1 for ``r <= r_on``, 0 for ``r >= r_off``, ``1 - smooth_step`` in between (C2)."""
    return 1.0 - smooth_step((r - r_on) / (r_off - r_on))


def neighbour_count(
    edge_index: torch.Tensor,
    edge_length: torch.Tensor,
    num_atoms: int,
    r_off: float,
    r_on: Optional[float] = None,
    neighbour_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Number of neighbours of every atom (the centres ``edge_index[0]``), ``[num_atoms]``.

    Hard count (``r_on`` is ``None``): edges shorter than ``r_off``. Smooth count: the sum over
    edges of ``switch(r, r_on, r_off)``, twice continuously differentiable in the positions.

    Args:
        edge_index: ``[2, num_edges]`` centre and neighbour of every edge
        edge_length: ``[num_edges]`` edge lengths
        num_atoms: number of atoms
        r_off: cutoff (hard count) or where the switch reaches 0
        r_on: where the switch leaves 1 (default ``None``: hard count)
        neighbour_mask: ``[num_atoms]`` boolean: count only neighbours where it is true
            (default: every neighbour)
    """
    edge_length = edge_length.view(-1)
    if r_on is None:
        weight = (edge_length < r_off).to(edge_length.dtype)
    else:
        weight = switch(edge_length, r_on, r_off)
    if neighbour_mask is not None:
        weight = weight * neighbour_mask[edge_index[1]].to(weight.dtype)
    return scatter(weight, edge_index[0], dim=0, dim_size=num_atoms)


# ---------------------------------------------------------------- the bulk shell of a crystal

# neighbour shells of ideal crystals: (distance / nearest-neighbour distance, neighbours)
CRYSTAL_SHELLS: Dict[str, Tuple[Tuple[float, int], ...]] = {
    "fcc": ((1.0, 12), (math.sqrt(2.0), 6), (math.sqrt(3.0), 24), (2.0, 12)),
    "bcc": ((1.0, 8), (2.0 / math.sqrt(3.0), 6), (math.sqrt(8.0 / 3.0), 12), (math.sqrt(11.0 / 3.0), 24)),
    "hcp": ((1.0, 12), (math.sqrt(2.0), 6), (math.sqrt(8.0 / 3.0), 2), (math.sqrt(3.0), 18)),
    "diamond": ((1.0, 4), (math.sqrt(8.0 / 3.0), 12), (math.sqrt(11.0 / 3.0), 12), (math.sqrt(16.0 / 3.0), 6)),
    "sc": ((1.0, 6), (math.sqrt(2.0), 12), (math.sqrt(3.0), 8), (2.0, 6)),
}

# nearest-neighbour distance (A) of the elements whose reference crystal (ase's
# `ase.data.reference_states`) is fcc, bcc, hcp, diamond or simple cubic; hcp with its own c/a.
# Here rather than read from ase because packaged modules (the gate) cannot import ase;
# tests/test_coordination.py checks it against ase.
REFERENCE_CRYSTALS: Dict[str, Tuple[str, float]] = {
    "Li": ("bcc", 3.0224), "Be": ("hcp", 2.2287), "C": ("diamond", 1.5459),
    "Ne": ("fcc", 3.1325), "Na": ("bcc", 3.6633), "Mg": ("hcp", 3.1982),
    "Al": ("fcc", 2.8638), "Si": ("diamond", 2.3513), "Ar": ("fcc", 3.7194),
    "K": ("bcc", 4.5293), "Ca": ("fcc", 3.9457), "Sc": ("hcp", 3.2575),
    "Ti": ("hcp", 2.8961), "V": ("bcc", 2.6154), "Cr": ("bcc", 2.4942),
    "Fe": ("bcc", 2.4855), "Co": ("hcp", 2.4987), "Ni": ("fcc", 2.489),
    "Cu": ("fcc", 2.5527), "Zn": ("hcp", 2.66), "Ge": ("diamond", 2.4509),
    "Se": ("hcp", 3.5312), "Kr": ("fcc", 4.0447), "Rb": ("bcc", 4.8411),
    "Sr": ("fcc", 4.2992), "Y": ("hcp", 3.5582), "Zr": ("hcp", 3.1775),
    "Nb": ("bcc", 2.8579), "Mo": ("bcc", 2.728), "Tc": ("hcp", 2.7077),
    "Ru": ("hcp", 2.6463), "Rh": ("fcc", 2.687), "Pd": ("fcc", 2.7506),
    "Ag": ("fcc", 2.8921), "Cd": ("hcp", 2.98), "Te": ("hcp", 3.9189),
    "Xe": ("fcc", 4.3841), "Cs": ("bcc", 5.2395), "Ba": ("bcc", 4.3474),
    "La": ("hcp", 3.7286), "Ce": ("fcc", 3.6487), "Pr": ("hcp", 3.6416),
    "Nd": ("hcp", 3.6317), "Eu": ("bcc", 3.9924), "Gd": ("hcp", 3.5735),
    "Tb": ("hcp", 3.524), "Dy": ("hcp", 3.5026), "Ho": ("hcp", 3.4885),
    "Er": ("hcp", 3.4691), "Tm": ("hcp", 3.4496), "Yb": ("fcc", 3.882),
    "Lu": ("hcp", 3.4416), "Hf": ("hcp", 3.1337), "Ta": ("bcc", 2.8665),
    "W": ("bcc", 2.7366), "Re": ("hcp", 2.7398), "Os": ("hcp", 2.6799),
    "Ir": ("fcc", 2.7153), "Pt": ("fcc", 2.7719), "Au": ("fcc", 2.885),
    "Tl": ("hcp", 3.4122), "Pb": ("fcc", 3.5002), "Po": ("sc", 3.35),
    "Ac": ("fcc", 3.7547), "Th": ("fcc", 3.5921),
}


@dataclasses.dataclass(frozen=True)
class BulkShell:
    """The coordination shell of a bulk atom: ``coordination`` neighbours up to ``inner`` (Å),
    the next neighbours at ``outer`` (Å).

    ``cutoff`` (midway) separates them for hard counts; ``switch_on`` / ``switch_off`` (28.5 %
    and 63.5 % of the way from ``inner`` to ``outer``: 3.10 and 3.50 Å for fcc Pt, the switch the
    gated Pt + CO MoE was measured with) bound the switching function of smooth counts.
    """

    coordination: int
    inner: float
    outer: float

    @property
    def cutoff(self) -> float:
        return self.inner + 0.5 * (self.outer - self.inner)

    @property
    def switch_on(self) -> float:
        return self.inner + 0.285 * (self.outer - self.inner)

    @property
    def switch_off(self) -> float:
        return self.inner + 0.635 * (self.outer - self.inner)


def bulk_shell(shells: Sequence[Tuple[float, int]]) -> BulkShell:
    """The bulk coordination shell from a crystal's neighbour shells (distance, neighbours).

    The shell ends after the first or the second neighbour shell, whichever is followed by the
    larger relative gap (``d[k+1] / d[k]``): fcc, hcp, diamond and simple cubic count their
    nearest neighbours (12, 12, 4, 6), bcc its first two shells (8 + 6, 15 % apart, then a
    41 % gap), so that thermal noise does not move atoms across the cutoff.

    Args:
        shells: ``(distance, neighbours)`` of at least three shells, nearest first
    """
    shells = sorted((float(d), int(n)) for d, n in shells)
    if len(shells) < 3 or shells[0][0] <= 0:
        raise ValueError(f"bulk_shell needs at least three neighbour shells, got {shells}")
    gaps = [shells[k + 1][0] / shells[k][0] for k in (0, 1)]
    last = 0 if gaps[0] >= gaps[1] else 1
    return BulkShell(
        coordination=sum(n for _, n in shells[: last + 1]),
        inner=shells[last][0],
        outer=shells[last + 1][0],
    )


def crystal_shells(crystal: str, nearest_neighbour: float) -> List[Tuple[float, int]]:
    """Neighbour shells ``(distance, neighbours)`` of an ideal crystal (``CRYSTAL_SHELLS``).

    Args:
        crystal: ``fcc``, ``bcc``, ``hcp`` (ideal c/a), ``diamond`` or ``sc``
        nearest_neighbour: nearest-neighbour distance (Å)
    """
    if crystal not in CRYSTAL_SHELLS:
        raise ValueError(f"unknown crystal `{crystal}`: use one of {list(CRYSTAL_SHELLS)}")
    if not nearest_neighbour > 0:
        raise ValueError(f"nearest_neighbour must be positive, got {nearest_neighbour}")
    return [(ratio * float(nearest_neighbour), n) for ratio, n in CRYSTAL_SHELLS[crystal]]


def reference_shells(
    element: str, crystal: Optional[str] = None, nearest_neighbour: Optional[float] = None
) -> List[Tuple[float, int]]:
    """Neighbour shells of an element's crystal: ``crystal`` and ``nearest_neighbour`` where
    given, else the element's reference crystal (``REFERENCE_CRYSTALS``).

    Args:
        element: element symbol of the host
        crystal: ``fcc``, ``bcc``, ``hcp``, ``diamond`` or ``sc`` (default: the reference's)
        nearest_neighbour: nearest-neighbour distance (Å); with the reference crystal it may be
            given alone, e.g. the labeller's own (default: the reference's)
    """
    reference = REFERENCE_CRYSTALS.get(element)
    if crystal is None and reference is not None:
        crystal = reference[0]
    if nearest_neighbour is None and reference is not None and crystal == reference[0]:
        nearest_neighbour = reference[1]
    if crystal is None or nearest_neighbour is None:
        raise ValueError(
            f"no reference crystal for `{element}` (known: fcc, bcc, hcp, diamond and sc "
            "elements): give its crystal (fcc, bcc, hcp, diamond or sc) and nearest-neighbour "
            "distance (A), or a bulk cell"
        )
    return crystal_shells(crystal, nearest_neighbour)
