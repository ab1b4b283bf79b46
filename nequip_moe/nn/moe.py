"""Graph modules of the spatial Mixture of Experts (packaged: light imports only)."""

import torch

from nequip.data import AtomicDataDict
from nequip.nn._graph_mixin import GraphModuleMixin
from nequip.nn.compile import CompileGraphModel
from nequip.nn.utils import scatter, with_edge_vectors_

from nequip_moe._keys import (
    ATOM_EXPERT_KEY,
    SHARED_KEY,
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
)

from typing import Dict, List, Optional, Tuple

# `halo_hops` value meaning "this expert needs every edge" (message passing of unknown range)
ALL_EDGES: int = -1

# fields copied from the raw input into each expert's fresh data dict
_NODE_AND_GRAPH_INPUTS = (
    AtomicDataDict.POSITIONS_KEY,
    AtomicDataDict.CELL_KEY,
    AtomicDataDict.BATCH_KEY,
    AtomicDataDict.NUM_NODES_KEY,
)
_EDGE_INPUTS = (
    AtomicDataDict.EDGE_INDEX_KEY,
    AtomicDataDict.EDGE_CELL_SHIFT_KEY,
    AtomicDataDict.EDGE_VECTORS_KEY,
    AtomicDataDict.EDGE_LENGTH_KEY,
)


class MixtureOfExpertsEnergy(GraphModuleMixin, torch.nn.Module):
    """Per-atom energies of a spatial Mixture of Experts.

    Every composite atom type belongs to one expert; an atom's energy is its own expert's
    per-atom energy. In the default *routed* evaluation each expert runs on a fresh data dict
    holding only the edges it needs: those centred on its own atoms (strictly local experts such
    as Allegro), plus the receptive-field halo of ``halo_hops`` neighbour shells (message-passing
    experts), trimmed to the expert's own cutoffs. In *dense* evaluation every expert sees every
    edge and the result is masked per atom: numerically identical, with static shapes for
    ``torch.compile``.

    Co-training: when the input holds the per-atom ``shared`` mark, every expert is also
    evaluated on the shared atoms (plus the neighbour shells their forces depend on) and the
    module outputs each expert's per-atom energies, whole-frame forces and frame energies there
    (``expert_atomic_energy``, ``expert_forces``, ``expert_total_energy``). Deployed models
    never receive ``shared``, so this costs nothing at inference.

    Args:
        experts (Dict[str, GraphModuleMixin]): energy networks producing ``atomic_energy`` on their own (element) atom types
        type_experts (List[int]): expert index of each composite type
        expert_type_maps (List[List[int]]): for each expert, its own type index of each composite type
        expert_cutoffs (List[List[List[float]]]): for each expert, the ``[num_types, num_types]`` cutoff of an edge from a centre of composite type ``i`` to a neighbour of composite type ``j``
        expert_halo_hops (List[int]): for each expert, ``0`` (strictly local), ``n > 0`` neighbour shells of halo, or ``-1`` (all edges)
        expert_known_types (List[List[bool]]): for each expert, whether it has a composite type for the element of each composite type (where it may be asked to agree)
        expert_names (List[str]): expert names, for error messages
        dense (bool): evaluate every expert on every edge (default ``False``)
        metadata (Dict[str, str]): model metadata this module contributes (the composite-type table)
    """

    dense: bool

    def __init__(
        self,
        experts: Dict[str, GraphModuleMixin],
        type_experts: List[int],
        expert_type_maps: List[List[int]],
        expert_cutoffs: List[List[List[float]]],
        expert_halo_hops: List[int],
        expert_known_types: List[List[bool]],
        expert_names: List[str],
        dense: bool = False,
        metadata: Optional[Dict[str, str]] = None,
        irreps_in=None,
    ):
        super().__init__()
        num_types = len(type_experts)
        assert len(expert_type_maps) == len(experts) == len(expert_cutoffs)
        self.experts = torch.nn.ModuleDict(experts)
        self.num_types = num_types
        self.dense = dense
        self.expert_halo_hops = [int(h) for h in expert_halo_hops]
        self.expert_names = list(expert_names)
        self.register_buffer(
            "expert_known_types", torch.as_tensor(expert_known_types, dtype=torch.bool)
        )
        self._metadata = dict(metadata) if metadata is not None else {}
        self.register_buffer("type_experts", torch.as_tensor(type_experts, dtype=torch.long))
        self.register_buffer(
            "expert_type_maps", torch.as_tensor(expert_type_maps, dtype=torch.long)
        )
        # flattened (centre type, neighbour type) -> cutoff, per expert
        self.register_buffer(
            "expert_cutoffs",
            torch.as_tensor(expert_cutoffs, dtype=torch.get_default_dtype()).view(
                len(experts), num_types * num_types
            ),
        )
        # `shared` is an optional input: declare it so GraphModel lets it through
        irreps_in = dict(irreps_in or {})
        irreps_in[SHARED_KEY] = None
        self._init_irreps(
            irreps_in=irreps_in,
            irreps_out={
                AtomicDataDict.PER_ATOM_ENERGY_KEY: "0e",
                ATOM_EXPERT_KEY: None,
                EXPERT_ATOMIC_ENERGY_KEY: None,
                EXPERT_FORCES_KEY: None,
                EXPERT_TOTAL_ENERGY_KEY: None,
            },
        )

    @torch.jit.unused
    def _get_metadata_contributions(self) -> Dict[str, str]:
        return self._metadata.copy()

    def atom_experts(self, data: AtomicDataDict.Type) -> torch.Tensor:
        """Expert index of every atom, shape ``[num_atoms]``."""
        return torch.index_select(
            self.type_experts, 0, data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        )

    def edges_in_range(self, data: AtomicDataDict.Type) -> List[torch.Tensor]:
        """For each expert, the mask of edges within its own (per-edge-type) cutoff.

        Args:
            data: graph with ``edge_lengths``
        """
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        edge_type = torch.index_select(
            atom_types, 0, edge_index[0]
        ) * self.num_types + torch.index_select(atom_types, 0, edge_index[1])
        lengths = data[AtomicDataDict.EDGE_LENGTH_KEY].view(-1)
        return [
            lengths < torch.index_select(self.expert_cutoffs[expert_idx], 0, edge_type)
            for expert_idx in range(len(self.experts))
        ]

    @staticmethod
    def _grow(
        atoms: torch.Tensor, edge_index: torch.Tensor, in_range: torch.Tensor, shells: int
    ) -> torch.Tensor:
        """Grow an atom mask by ``shells`` neighbour shells along the in-range edges."""
        for _ in range(shells):
            reached = torch.zeros_like(atoms, dtype=torch.int32).index_add(
                0,
                edge_index[1],
                (torch.index_select(atoms, 0, edge_index[0]) & in_range).to(torch.int32),
            )
            atoms = atoms | (reached > 0)
        return atoms

    def expert_edges(
        self,
        data: AtomicDataDict.Type,
        expert_idx: int,
        centres: torch.Tensor,
        in_range: Optional[torch.Tensor],
        force_support: bool = False,
    ) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """Edges expert ``expert_idx`` needs for exact energies on a set of atoms.

        Returns the edge indices (``None``: all edges, in dense
        mode or for experts of unknown receptive field) and the mask of atoms whose energies
        are exact: ``centres``, or with ``force_support`` every atom whose energy depends on
        the positions of ``centres`` (so the gradient of their summed energies is the expert's
        whole-frame force on ``centres``).

        Args:
            data: graph
            expert_idx: expert index
            centres: boolean mask ``[num_atoms]``
            in_range: the expert's mask from :meth:`edges_in_range` (``None`` in dense mode)
            force_support: also cover the atoms whose energies depend on ``centres``
        """
        hops = self.expert_halo_hops[expert_idx]
        everything = torch.ones_like(centres) if force_support else centres
        if self.dense:
            return None, everything
        if hops == ALL_EDGES:
            return torch.nonzero(in_range).view(-1), everything
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        # an atom's energy depends on positions up to (hops + 1) shells away
        exact = self._grow(centres, edge_index, in_range, hops + 1) if force_support else centres
        needed = self._grow(exact, edge_index, in_range, hops)
        keep = in_range & torch.index_select(needed, 0, edge_index[0])
        return torch.nonzero(keep).view(-1), exact

    def expert_atomic_energy(
        self,
        data: AtomicDataDict.Type,
        expert_idx: int,
        edges: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Per-atom energies ``[num_atoms, 1]`` of expert ``expert_idx`` evaluated on the given edges.

        The expert gets a fresh data dict (its own atom types, the selected edges), so no cached
        field of one expert leaks into another. Only atoms whose edges were all selected get
        meaningful energies.

        Args:
            data: graph with edge vectors and lengths
            expert_idx: expert index
            edges: edge indices from :meth:`expert_edges` (``None``: all edges)
        """
        expert_data: AtomicDataDict.Type = {}
        for key in _NODE_AND_GRAPH_INPUTS:
            if key in data:
                expert_data[key] = data[key]
        expert_data[AtomicDataDict.ATOM_TYPE_KEY] = torch.index_select(
            self.expert_type_maps[expert_idx],
            0,
            data[AtomicDataDict.ATOM_TYPE_KEY].view(-1),
        )
        for key in _EDGE_INPUTS:
            if key in data:
                value = data[key]
                if edges is not None:
                    edge_dim = 1 if key == AtomicDataDict.EDGE_INDEX_KEY else 0
                    value = torch.index_select(value, edge_dim, edges)
                expert_data[key] = value
        expert = list(self.experts.values())[expert_idx]
        return expert(expert_data)[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1, 1)

    def shared_expert_outputs(
        self,
        data: AtomicDataDict.Type,
        shared: torch.Tensor,
        in_range: Optional[List[torch.Tensor]],
    ) -> Dict[str, torch.Tensor]:
        """Every expert's per-atom energies, whole-frame forces and frame energies on shared atoms.

        Forces need positions that require grad (as inside ``ForceStressOutput``); the force
        graph is kept for training (``create_graph`` in training mode).

        Args:
            data: graph with edge vectors and lengths
            shared: boolean mask ``[num_atoms]`` of the shared atoms
            in_range: per-expert masks from :meth:`edges_in_range` (``None`` in dense mode)
        """
        pos = data[AtomicDataDict.POSITIONS_KEY]
        num_frames = AtomicDataDict.num_frames(data)
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        energies, forces, totals = [], [], []
        for expert_idx in range(len(self.experts)):
            known = torch.index_select(self.expert_known_types[expert_idx], 0, atom_types)
            if bool((shared & ~known).any()):
                raise ValueError(
                    f"shared atoms include species that expert `{self.expert_names[expert_idx]}` "
                    "has no composite type for: it cannot be asked to agree there"
                )
            edges, exact = self.expert_edges(
                data,
                expert_idx,
                shared,
                None if in_range is None else in_range[expert_idx],
                force_support=True,
            )
            energy = self.expert_atomic_energy(data, expert_idx, edges)
            energy = torch.where(exact.unsqueeze(-1), energy, 0.0)
            total = energy.sum()
            if pos.requires_grad:
                (grad,) = torch.autograd.grad(
                    [total],
                    [pos],
                    create_graph=self.training,
                    retain_graph=True,
                    allow_unused=True,
                )
                if grad is None:  # no energy depends on positions (no edges)
                    grad = torch.zeros_like(pos)
                forces.append(torch.where(shared.unsqueeze(-1), -grad, 0.0))
            energies.append(torch.where(shared.unsqueeze(-1), energy, 0.0))
            if AtomicDataDict.BATCH_KEY in data:
                totals.append(
                    scatter(energy, data[AtomicDataDict.BATCH_KEY], dim=0, dim_size=num_frames)
                )
            else:
                totals.append(total.view(1, 1))
        out = {
            EXPERT_ATOMIC_ENERGY_KEY: torch.cat(energies, dim=-1),
            EXPERT_TOTAL_ENERGY_KEY: torch.cat(totals, dim=-1),
        }
        if len(forces) > 0:
            out[EXPERT_FORCES_KEY] = torch.stack(forces, dim=1)
        return out

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data = with_edge_vectors_(data, with_lengths=True)
        owner = self.atom_experts(data)
        in_range = None if self.dense else self.edges_in_range(data)
        per_expert = []
        for expert_idx in range(len(self.experts)):
            owned = owner == expert_idx
            edges, _ = self.expert_edges(
                data, expert_idx, owned, None if in_range is None else in_range[expert_idx]
            )
            energy = self.expert_atomic_energy(data, expert_idx, edges)
            per_expert.append(torch.where(owned.unsqueeze(-1), energy, 0.0))
        data[AtomicDataDict.PER_ATOM_ENERGY_KEY] = torch.stack(per_expert, 0).sum(0)
        data[ATOM_EXPERT_KEY] = owner.unsqueeze(-1)
        if SHARED_KEY in data:
            data.update(
                self.shared_expert_outputs(data, data[SHARED_KEY].view(-1) != 0, in_range)
            )
        return data


class DenseCompileGraphModel(CompileGraphModel):
    """``CompileGraphModel`` for MoE models: switches every :class:`MixtureOfExpertsEnergy` to
    dense evaluation, whose static shapes ``torch.compile`` can train through."""

    def __init__(self, model, model_config=None, model_input_fields={}):
        super().__init__(model, model_config, model_input_fields)
        for module in self.modules():
            if isinstance(module, MixtureOfExpertsEnergy):
                module.dense = True
