"""Graph modules of the spatial Mixture of Experts (packaged: light imports only)."""

import torch

from nequip.data import AtomicDataDict
from nequip.nn._graph_mixin import GraphModuleMixin
from nequip.nn.compile import CompileGraphModel
from nequip.nn.utils import with_edge_vectors_

from nequip_moe._keys import ATOM_EXPERT_KEY

from typing import Dict, List, Optional

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

    Args:
        experts (Dict[str, GraphModuleMixin]): energy networks producing ``atomic_energy`` on their own (element) atom types
        type_experts (List[int]): expert index of each composite type
        expert_type_maps (List[List[int]]): for each expert, its own type index of each composite type
        expert_cutoffs (List[List[List[float]]]): for each expert, the ``[num_types, num_types]`` cutoff of an edge from a centre of composite type ``i`` to a neighbour of composite type ``j``
        expert_halo_hops (List[int]): for each expert, ``0`` (strictly local), ``n > 0`` neighbour shells of halo, or ``-1`` (all edges)
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
        self._init_irreps(
            irreps_in=irreps_in,
            irreps_out={
                AtomicDataDict.PER_ATOM_ENERGY_KEY: "0e",
                ATOM_EXPERT_KEY: None,
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

    def expert_edges(
        self,
        data: AtomicDataDict.Type,
        expert_idx: int,
        centres: torch.Tensor,
    ) -> Optional[torch.Tensor]:
        """Indices of the edges expert ``expert_idx`` needs so that its energies are exact on ``centres``.

        ``data`` must hold edge lengths. Returns ``None`` in dense mode (all edges).

        Args:
            data: graph with ``edge_lengths``
            expert_idx: expert index
            centres: boolean mask ``[num_atoms]`` of the atoms whose energies are needed
        """
        if self.dense:
            return None
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        edge_type = torch.index_select(
            atom_types, 0, edge_index[0]
        ) * self.num_types + torch.index_select(atom_types, 0, edge_index[1])
        cutoff = torch.index_select(self.expert_cutoffs[expert_idx], 0, edge_type)
        in_range = data[AtomicDataDict.EDGE_LENGTH_KEY].view(-1) < cutoff
        hops = self.expert_halo_hops[expert_idx]
        if hops == ALL_EDGES:
            keep = in_range
        else:
            needed = centres
            for _ in range(hops):
                # grow by one neighbour shell along the expert's own edges
                reached = torch.zeros_like(needed, dtype=torch.int32).index_add(
                    0,
                    edge_index[1],
                    (torch.index_select(needed, 0, edge_index[0]) & in_range).to(
                        torch.int32
                    ),
                )
                needed = needed | (reached > 0)
            keep = in_range & torch.index_select(needed, 0, edge_index[0])
        return torch.nonzero(keep).view(-1)

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

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data = with_edge_vectors_(data, with_lengths=True)
        owner = self.atom_experts(data)
        per_expert = []
        for expert_idx in range(len(self.experts)):
            owned = owner == expert_idx
            energy = self.expert_atomic_energy(
                data, expert_idx, self.expert_edges(data, expert_idx, owned)
            )
            per_expert.append(torch.where(owned.unsqueeze(-1), energy, 0.0))
        data[AtomicDataDict.PER_ATOM_ENERGY_KEY] = torch.stack(per_expert, 0).sum(0)
        data[ATOM_EXPERT_KEY] = owner.unsqueeze(-1)
        return data


class DenseCompileGraphModel(CompileGraphModel):
    """``CompileGraphModel`` for MoE models: switches every :class:`MixtureOfExpertsEnergy` to
    dense evaluation, whose static shapes ``torch.compile`` can train through."""

    def __init__(self, model, model_config=None, model_input_fields={}):
        super().__init__(model, model_config, model_input_fields)
        for module in self.modules():
            if isinstance(module, MixtureOfExpertsEnergy):
                module.dense = True
