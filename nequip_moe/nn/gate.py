"""A smooth, strictly local per-atom gate between a high- and a low-fidelity expert."""

from typing import List, Optional, Sequence

import torch

from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin, with_edge_vectors_

from nequip_moe.keys import GATE_KEY
from nequip_moe.nn.coordination import (  # noqa: F401  (smooth_step: public name of this module)
    REFERENCE_CRYSTALS,
    bulk_shell,
    neighbour_count,
    reference_shells,
    smooth_step,
)


class AdsorbateCoordinationGate(GraphModuleMixin, torch.nn.Module):
    """Per-atom gate ``g_i`` in [0, 1] (``moe_gate``): 1 where the high-fidelity expert is needed.

    Computed only from the edges centred on ``i`` (neighbour types and distances), so a model
    using it stays strictly local. Adsorbate atoms always get ``g = 1``. A host atom ``i`` gets
    ``g_i = 1 - (1 - a_i)(1 - c_i)`` (a smooth "or") of

    - adsorbate contact ``a_i = S(n_i)``, where ``n_i = sum_j s(r_ij)`` runs over adsorbate
      neighbours with the switching function ``s`` going from 1 at ``adsorbate_r_on`` to 0 at
      ``adsorbate_r_off``: one bonded adsorbate saturates it;
    - coordination deficit ``c_i = S((Z - z_i - deficit_on) / (deficit_full - deficit_on))``,
      where ``z_i = sum_j s(r_ij)`` runs over host neighbours (switching from
      ``coordination_r_on`` to ``coordination_r_off``, between the bulk coordination shell and
      the next one) and ``Z = bulk_coordination``: surfaces, steps, vertices and vacancy
      neighbours.

    ``S`` is the C2 quintic ``smooth_step`` and ``s(r) = 1 - S((r - r_on) / (r_off - r_on))``
    (``nequip_moe.nn.coordination``), so ``g`` is twice continuously differentiable in the
    positions. The graph's edges must reach ``max(adsorbate_r_off, coordination_r_off)`` for
    every pair of types involved.

    The coordination settings come from the hosts' crystal (``coordination.bulk_shell``): fcc
    and hcp hosts count 12 nearest neighbours, bcc hosts 8 + 6 (their first two shells),
    diamond 4. The crystal is ``crystal`` with ``nearest_neighbour`` where given, else the
    hosts' reference crystal (``coordination.REFERENCE_CRYSTALS``; all hosts must share one).
    Give the labeller's own nearest-neighbour distance where it differs much from the
    reference's.

    Args:
        type_names (Sequence[str]): the model's type names (element names)
        adsorbates (Sequence[str]): adsorbate type names (default ``C``, ``O``)
        hosts (Sequence[str]): host type names whose coordination is counted (default: every type that is not an adsorbate)
        crystal (str): the hosts' crystal, ``fcc``, ``bcc``, ``hcp``, ``diamond`` or ``sc`` (default: the hosts' reference crystal)
        nearest_neighbour (float): the hosts' nearest-neighbour distance in Å (default: the reference crystal's)
        adsorbate_r_on (float): adsorbate neighbours closer than this count fully (default: 0.9 x the nearest-neighbour distance)
        adsorbate_r_off (float): adsorbate neighbours beyond this do not count (default: 1.08 x the nearest-neighbour distance; for Pt 2.49 and 2.99 A)
        coordination_r_on (float): host neighbours closer than this count fully (default: the bulk shell's ``switch_on``)
        coordination_r_off (float): host neighbours beyond this do not count (default: the bulk shell's ``switch_off``)
        bulk_coordination (float): host neighbours of a bulk host atom (default: the bulk shell's)
        deficit_on (float): missing neighbours below which ``c = 0`` (default ``0.25``, thermal noise)
        deficit_full (float): missing neighbours from which ``c = 1`` (default ``1.0``: a vacancy neighbour)
    """

    def __init__(
        self,
        type_names: Sequence[str],
        adsorbates: Sequence[str] = ("C", "O"),
        hosts: Optional[Sequence[str]] = None,
        crystal: Optional[str] = None,
        nearest_neighbour: Optional[float] = None,
        adsorbate_r_on: Optional[float] = None,
        adsorbate_r_off: Optional[float] = None,
        coordination_r_on: Optional[float] = None,
        coordination_r_off: Optional[float] = None,
        bulk_coordination: Optional[float] = None,
        deficit_on: float = 0.25,
        deficit_full: float = 1.0,
        irreps_in=None,
    ):
        super().__init__()
        type_names = [str(t) for t in type_names]
        adsorbates = [str(t) for t in adsorbates]
        hosts = [t for t in type_names if t not in adsorbates] if hosts is None else list(hosts)
        for role, names in (("adsorbates", adsorbates), ("hosts", hosts)):
            unknown = [t for t in names if t not in type_names]
            if unknown:
                raise ValueError(
                    f"gate {role} {unknown} are not among the model's type names {type_names}"
                )
        both = sorted(set(adsorbates) & set(hosts))
        if both:
            raise ValueError(f"gate types {both} cannot be both adsorbates and hosts")
        shells = _host_shells(hosts, crystal, nearest_neighbour)
        shell = bulk_shell(shells)
        nearest = shells[0][0]
        self.adsorbate_r_on = float(0.9 * nearest if adsorbate_r_on is None else adsorbate_r_on)
        self.adsorbate_r_off = float(1.08 * nearest if adsorbate_r_off is None else adsorbate_r_off)
        self.coordination_r_on = float(
            shell.switch_on if coordination_r_on is None else coordination_r_on
        )
        self.coordination_r_off = float(
            shell.switch_off if coordination_r_off is None else coordination_r_off
        )
        self.bulk_coordination = float(
            shell.coordination if bulk_coordination is None else bulk_coordination
        )
        for name, (r_on, r_off) in {
            "adsorbate": (self.adsorbate_r_on, self.adsorbate_r_off),
            "coordination": (self.coordination_r_on, self.coordination_r_off),
        }.items():
            if not 0 < r_on < r_off:
                raise ValueError(
                    f"gate needs 0 < {name}_r_on < {name}_r_off, got {r_on} and {r_off}"
                )
        if not 0 <= deficit_on < deficit_full:
            raise ValueError(
                f"gate needs 0 <= deficit_on < deficit_full, got {deficit_on} and {deficit_full}"
            )
        self.deficit_on = float(deficit_on)
        self.deficit_full = float(deficit_full)
        self.register_buffer(
            "is_adsorbate", torch.tensor([t in adsorbates for t in type_names], dtype=torch.bool)
        )
        self.register_buffer(
            "is_host", torch.tensor([t in hosts for t in type_names], dtype=torch.bool)
        )
        self._init_irreps(irreps_in=irreps_in, irreps_out={GATE_KEY: "1x0e"})

    @torch.jit.unused
    def neighbor_cutoffs(self) -> List[List[float]]:
        """The edges the gate reads, ``[num_types, num_types]``: from every non-adsorbate centre
        to adsorbate neighbours within ``adsorbate_r_off`` and host neighbours within
        ``coordination_r_off`` (adsorbate centres read none: their gate is 1)."""
        is_adsorbate, is_host = self.is_adsorbate.tolist(), self.is_host.tolist()
        return [
            [
                (self.adsorbate_r_off if ads else self.coordination_r_off if host else 0.0)
                if not centre_is_adsorbate
                else 0.0
                for ads, host in zip(is_adsorbate, is_host)
            ]
            for centre_is_adsorbate in is_adsorbate
        ]

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data = with_edge_vectors_(data, with_lengths=True)
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        length = data[AtomicDataDict.EDGE_LENGTH_KEY].view(-1)
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        num_atoms = atom_types.numel()
        adsorbate_count = neighbour_count(
            edge_index, length, num_atoms, self.adsorbate_r_off, self.adsorbate_r_on,
            neighbour_mask=self.is_adsorbate[atom_types],
        )
        coordination = neighbour_count(
            edge_index, length, num_atoms, self.coordination_r_off, self.coordination_r_on,
            neighbour_mask=self.is_host[atom_types],
        )
        contact = smooth_step(adsorbate_count)
        deficit = smooth_step(
            (self.bulk_coordination - coordination - self.deficit_on)
            / (self.deficit_full - self.deficit_on)
        )
        gate = 1.0 - (1.0 - contact) * (1.0 - deficit)
        gate = torch.where(self.is_adsorbate[atom_types], torch.ones_like(gate), gate)
        data[GATE_KEY] = gate.view(-1, 1)
        return data


def _host_shells(hosts: List[str], crystal: Optional[str], nearest_neighbour: Optional[float]):
    """Neighbour shells of the hosts' crystal (``coordination.reference_shells``); without
    ``crystal``, every host must have the same reference crystal."""
    if not hosts:
        raise ValueError("the gate has no host types: every type is an adsorbate")
    references = {REFERENCE_CRYSTALS.get(h, (None,))[0] for h in hosts}
    if crystal is None and len(references) > 1:
        raise ValueError(
            f"gate hosts {hosts} have different reference crystals: give `crystal` and "
            "`nearest_neighbour` of the host lattice"
        )
    try:
        return reference_shells(hosts[0], crystal, nearest_neighbour)
    except ValueError as e:
        raise ValueError(f"gate hosts {hosts}: {e}") from None
