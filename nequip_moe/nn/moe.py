"""The energy module of the spatial Mixture of Experts (packaged: light imports only).

Per-expert energies, the experts' weights on each atom (owner selection or gate), the sum, and
the model metadata that describes the MoE. Edge routing lives in :mod:`.routing`, the
co-training outputs in :mod:`.cotraining`.
"""

import dataclasses

import torch

from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin, with_edge_vectors_
from nequip.nn.compile import CompileGraphModel
from nequip.nn.graph_model import PER_EDGE_TYPE_CUTOFF_KEY, R_MAX_KEY

from nequip_moe.keys import (
    ATOM_EXPERT_KEY,
    SHARED_KEY,
    GATE_KEY,
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
    EXPERT_EDGE_ENERGY_GRADIENT_KEY,
    EXPERT_R_MAX_KEY,
    EXPERT_HALO_HOPS_KEY,
)
from nequip_moe.nn.cotraining import check_cotraining_neighbours, shared_expert_outputs
from nequip_moe.nn.cotraining import refuse_nonlocal_edge_gradients
from nequip_moe.nn.frozen_cache import FrozenExpertCache
from nequip_moe.nn.routing import (
    edges_in_range,
    expert_edges,
    expert_inputs,
    refuse_ghost_atom_export,
    traced,
)

from typing import Dict, List, Optional, Tuple


@dataclasses.dataclass
class ExpertSpec:
    """One expert of a :class:`MixtureOfExpertsEnergy`, as the expert itself knows it.

    Args:
        module (GraphModuleMixin): energy network producing ``atomic_energy`` on the expert's own (element) types
        type_names (List[str]): the expert's own type names (element names), in its type-index order
        cutoffs (List[List[float]]): ``[num_types, num_types]`` cutoff of an edge from a centre of the expert's type ``a`` to a neighbour of type ``b``
        r_max (float): the expert's ``r_max``
        halo_hops (int): ``0`` strictly local (an atom's energy depends only on the edges centred on it, as in Allegro), ``n > 0`` message passing over ``n`` neighbour shells beyond those edges, or ``-1`` (:data:`~nequip_moe.nn.routing.ALL_EDGES`) unknown receptive field
    """

    module: torch.nn.Module
    type_names: List[str]
    cutoffs: List[List[float]]
    r_max: float
    halo_hops: int


class MixtureOfExpertsEnergy(GraphModuleMixin, torch.nn.Module):
    """Per-atom energies of a spatial Mixture of Experts.

    Each expert ``k`` has a weight ``w_ik`` on each atom ``i`` (:meth:`expert_weights`) and the
    atom's energy is ``sum_k w_ik e_i^k``. Two kinds of weights:

    - *static regions*: every composite atom type is an (element, expert) pair and the weight is
      one-hot on the atom's own expert, so its energy is its own expert's per-atom energy;
    - *gated* (``gate`` given): the type names are plain elements and a strictly local gate
      module computes ``g_i`` in [0, 1] from the edges centred on ``i``; the weights of the two
      experts (high-fidelity first) are ``g_i`` and ``1 - g_i``. The gate is part of the energy,
      so forces and stress include ``(e_i^big - e_i^small) grad g_i`` and dynamics conserve
      energy exactly.

    Each expert is evaluated exactly on the atoms it weighs (``w_ik != 0``): in the default
    *routed* evaluation (:mod:`.routing`) each expert runs on a fresh data dict holding only
    the edges it needs: those centred on its own atoms (strictly local experts such as
    Allegro), plus the receptive-field halo of ``halo_hops`` neighbour shells (message-passing
    experts), trimmed to the expert's own cutoffs. In *dense* evaluation every expert sees every
    edge and the result is masked per atom: numerically identical, with static shapes for
    ``torch.compile``. With a gate, atoms of the blend zone (``0 < g < 1``) pay for both
    experts.

    Co-training (:mod:`.cotraining`): when the input holds the per-atom ``shared`` mark, every
    expert is also evaluated on the shared atoms (plus the atoms whose energies depend on their
    positions; a gated MoE adds the blend-zone atoms to ``shared``, where the experts'
    disagreement would otherwise act as a force) and the module outputs each expert's per-atom
    energies ``[num_atoms, num_experts]``, whole-frame forces ``[num_atoms, num_experts, 3]``
    and frame energies ``[num_frames, num_experts]`` there (``expert_atomic_energy``,
    ``expert_forces``, ``expert_total_energy``; with ``cotraining_edge_gradients``, strictly
    local experts' edge gradients ``expert_edge_energy_gradient`` ``[num_edges, num_experts,
    3]``). The first such input is checked to carry every edge this needs (the co-training
    cutoffs, :meth:`neighbor_cutoffs`). Deployed models never receive ``shared``, so this costs
    nothing at inference.

    Frozen experts (no parameter that requires grad) that are strictly local are computed once
    per training frame (``frozen_expert_cache``, :mod:`.frozen_cache`): in eager training their
    per-atom energies and edge gradients come from a per-frame cache, with the same energies,
    forces, stress and co-training outputs as evaluating them.

    The module contributes the model metadata that describes it: what its type names mean
    (``type_metadata``: the composite-type table's ``CompositeTypeTable.to_metadata``, or a
    gated MoE's expert names and gate class), each expert's ``r_max`` (``moe_expert_r_max``)
    and receptive field (``moe_expert_halo_hops``), and the neighbour cutoff of every composite
    type pair (``per_edge_type_cutoff``, see :meth:`neighbor_cutoffs`; left out for one cutoff
    everywhere, then written as ``r_max``).

    Args:
        experts (Dict[str, ExpertSpec]): expert name -> spec, in expert-label order
        type_names (List[str]): composite type names (the model's ``type_names``; element names for a gated MoE)
        type_elements (List[str]): element of each composite type
        type_experts (List[str]): expert of each composite type (``None`` for a gated MoE)
        type_metadata (Dict[str, str]): model metadata saying what the type names mean (the composite-type table, or the gate)
        neighbor_cutoffs (List[List[float]]): ``[num_types, num_types]`` neighbour-list cutoffs over composite types to write into the metadata, at least :meth:`neighbor_cutoffs` (default: exactly that)
        dense (bool): evaluate every expert on every edge (default ``False``)
        gate (GraphModuleMixin): module writing the per-atom gate ``moe_gate`` ``[num_atoms, 1]`` from the graph, with a ``neighbor_cutoffs()`` method giving the edges it reads (e.g. :class:`~nequip_moe.nn.AdsorbateCoordinationGate`); needs exactly two experts, high-fidelity first (default ``None``: static regions)
        frozen_expert_cache (bool): compute frozen, strictly local experts once per training frame (default ``True``)
        cotraining_edge_gradients (bool): also output each expert's gradient of its centre atom's energy with respect to every edge vector centred on a shared atom, for ``ExpertAgreement(field: edge_energy_gradient)``; every expert must be strictly local (default ``False``)
    """

    dense: bool

    def __init__(
        self,
        experts: Dict[str, ExpertSpec],
        type_names: List[str],
        type_elements: List[str],
        type_experts: Optional[List[str]],
        type_metadata: Dict[str, str],
        neighbor_cutoffs: Optional[List[List[float]]] = None,
        dense: bool = False,
        gate: Optional[GraphModuleMixin] = None,
        frozen_expert_cache: bool = True,
        cotraining_edge_gradients: bool = False,
        irreps_in=None,
    ):
        super().__init__()
        names = list(experts)
        specs = list(experts.values())
        num_types = len(type_names)
        if gate is not None:
            if len(specs) != 2:
                raise ValueError(
                    f"a gate weighs exactly two experts (high-fidelity first), got {names}"
                )
            if type_experts is not None or list(type_elements) != list(type_names):
                raise ValueError(
                    "a gated MoE takes plain element type names (no composite types): "
                    f"got type names {list(type_names)} for elements {list(type_elements)}"
                )
            # every expert may weigh every atom: no type belongs to one expert
            type_experts = [names[0]] * num_types
        assert type_experts is not None
        assert len(type_elements) == len(type_experts) == num_types
        self.experts = torch.nn.ModuleDict({name: s.module for name, s in experts.items()})
        self.gate = gate
        self.expert_names = names
        self.type_names = list(type_names)
        self.num_types = num_types
        self.dense = dense
        self.frozen_expert_cache = frozen_expert_cache
        self._frozen = FrozenExpertCache()
        self.expert_halo_hops = [int(s.halo_hops) for s in specs]
        if cotraining_edge_gradients:
            refuse_nonlocal_edge_gradients(names, self.expert_halo_hops)
        self.cotraining_edge_gradients = cotraining_edge_gradients
        self._type_metadata = dict(type_metadata)
        self._expert_r_max = [float(s.r_max) for s in specs]

        # composite type -> owning expert; per expert: composite type -> its own type index
        self.register_buffer(
            "type_experts",
            torch.as_tensor([names.index(e) for e in type_experts], dtype=torch.long),
        )
        type_maps = [[s.type_names.index(el) for el in type_elements] for s in specs]
        self.register_buffer("expert_type_maps", torch.as_tensor(type_maps, dtype=torch.long))
        # expert k has a composite type for the element of composite type t (may agree there)
        pairs = set(zip(type_elements, type_experts))
        self.register_buffer(
            "expert_known_types",
            torch.as_tensor(
                [[gate is not None or (el, name) in pairs for el in type_elements] for name in names],
                dtype=torch.bool,
            ),
        )
        # per expert: (centre composite type, neighbour composite type) -> cutoff, as written
        # (Python floats: the precision the user gave them in, whatever the model's dtype)
        cutoffs = [
            [[float(s.cutoffs[a][b]) for b in type_map] for a in type_map]
            for s, type_map in zip(specs, type_maps)
        ]
        self._expert_cutoffs = cutoffs
        # flattened for the forward pass, in float64 like nequip's own per-edge-type cutoffs and
        # edge lengths (whatever `model_dtype`): an edge is routed to an expert exactly when
        # the expert's own cutoff envelope keeps it, in float32 models too
        self.register_buffer(
            "expert_cutoffs",
            torch.as_tensor(cutoffs, dtype=torch.float64).view(len(specs), num_types * num_types),
        )
        # dummy atoms padding routed edges (`routing.with_dummy_atoms`) lie this far apart
        self._dummy_distance = 2.0 * max(max(max(row) for row in c) for c in cutoffs) + 100.0
        needed = self.neighbor_cutoffs()
        if neighbor_cutoffs is None:
            neighbor_cutoffs = needed
        for a, row in enumerate(neighbor_cutoffs):
            for b, cutoff in enumerate(row):
                if cutoff < needed[a][b]:
                    raise ValueError(
                        f"per_edge_type_cutoff {type_names[a]}-{type_names[b]} = {cutoff} is "
                        f"below the {needed[a][b]} that the experts use for that pair"
                    )
        self._neighbor_cutoffs = [[float(c) for c in row] for row in neighbor_cutoffs]

        num_experts = len(specs)
        # `shared` is an optional input: declare it so GraphModel lets it through
        irreps_in = dict(irreps_in or {})
        irreps_in[SHARED_KEY] = None
        # the first co-training input's neighbour list is checked (eager), once
        self._cotraining_neighbours_checked = False
        gate_out = {} if gate is None else {GATE_KEY: "0e"}
        self._init_irreps(
            irreps_in=irreps_in,
            irreps_out={
                **gate_out,
                AtomicDataDict.PER_ATOM_ENERGY_KEY: "0e",
                ATOM_EXPERT_KEY: None,
                EXPERT_ATOMIC_ENERGY_KEY: f"{num_experts}x0e",
                # [num_atoms, num_experts, 3]: a 1o vector per expert (rotates in its last dim)
                EXPERT_FORCES_KEY: "1o",
                EXPERT_EDGE_ENERGY_GRADIENT_KEY: "1o",  # [num_edges, num_experts, 3]: likewise
                EXPERT_TOTAL_ENERGY_KEY: f"{num_experts}x0e",
            },
        )

    @torch.jit.unused
    def neighbor_cutoffs(self, cotraining: bool = False) -> List[List[float]]:
        """The tightest neighbour-list cutoff of each (centre, neighbour) composite type pair.

        A strictly local expert uses only edges centred on its own atoms; an expert with a halo
        (or unknown receptive field) uses edges centred on any atom. In co-training
        (``cotraining=True``) every expert is also evaluated on other experts' atoms (the shared
        atoms and those whose energies depend on them), so every expert needs its edges from
        every centre type. In a gated MoE any atom may weigh any expert, and the gate's own
        edges (its ``neighbor_cutoffs()``) are added.

        Args:
            cotraining (bool): the cutoffs co-training needs instead of inference's
        """
        owner = self.type_experts.tolist()
        cutoffs = self._expert_cutoffs
        gated = self.gate is not None
        out = [[0.0] * self.num_types for _ in range(self.num_types)]
        if gated:
            out = [[float(c) for c in row] for row in self.gate.neighbor_cutoffs()]
        for k, expert_cutoffs in enumerate(cutoffs):
            for a in range(self.num_types):
                if self.expert_halo_hops[k] == 0 and owner[a] != k and not (cotraining or gated):
                    continue
                for b in range(self.num_types):
                    out[a][b] = max(out[a][b], expert_cutoffs[a][b])
        return out

    @torch.jit.unused
    def _get_metadata_contributions(self) -> Dict[str, str]:
        cutoffs = [c for row in self._neighbor_cutoffs for c in row]
        if len(set(cutoffs)) == 1:
            # one cutoff for every pair: `r_max` alone says it, and LAMMPS may then map several
            # of its types onto one model type (pair_allegro leaves per-type cutoffs of the
            # types left out of its map unset)
            neighbours = {R_MAX_KEY: str(cutoffs[0])}
        else:
            # nequip sets `r_max` to the largest of these
            neighbours = {PER_EDGE_TYPE_CUTOFF_KEY: " ".join(str(c) for c in cutoffs)}
        return {
            **self._type_metadata,
            EXPERT_R_MAX_KEY: " ".join(str(r) for r in self._expert_r_max),
            EXPERT_HALO_HOPS_KEY: " ".join(str(h) for h in self.expert_halo_hops),
            **neighbours,
        }

    def expert_weights(self, data: AtomicDataDict.Type) -> torch.Tensor:
        """Weight of each expert's energy on each atom, ``[num_atoms, num_experts]``.

        Static regions: one-hot on the atom's own expert (its composite type's). Gated:
        ``[g, 1 - g]`` from the gate, which also writes ``moe_gate`` into ``data``. The energy of
        atom ``i`` is ``sum_k weight[i, k] * e_i^k``, and expert ``k`` is evaluated exactly on
        the atoms with ``weight[:, k] != 0``.
        """
        if self.gate is not None:
            gate = self.gate(data)[GATE_KEY].view(-1, 1)
            data[GATE_KEY] = gate
            return torch.cat([gate, 1.0 - gate], dim=-1)
        owner = torch.index_select(
            self.type_experts, 0, data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        )
        experts = torch.arange(len(self.experts), device=owner.device)
        return (owner.unsqueeze(-1) == experts).to(data[AtomicDataDict.POSITIONS_KEY].dtype)

    def expert_atomic_energy(
        self,
        data: AtomicDataDict.Type,
        expert_idx: int,
        edges: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Per-atom energies ``[num_atoms, 1]`` of expert ``expert_idx`` evaluated on the given edges.

        The expert runs on a fresh data dict (``routing.expert_inputs``: its own atom types,
        the selected edges, padded with dummy atoms when routed). Only atoms whose edges were
        all selected get meaningful energies.

        Args:
            data: graph with edge vectors and lengths
            expert_idx: expert index
            edges: edge indices from ``routing.expert_edges`` (``None``: all edges)
        """
        num_atoms = data[AtomicDataDict.ATOM_TYPE_KEY].size(0)
        expert_data = expert_inputs(
            data, self.expert_type_maps[expert_idx], edges, self._dummy_distance
        )
        expert = list(self.experts.values())[expert_idx]
        energy = expert(expert_data)[AtomicDataDict.PER_ATOM_ENERGY_KEY]
        return energy[:num_atoms].view(-1, 1)

    def expert_energy_on(
        self,
        data: AtomicDataDict.Type,
        expert_idx: int,
        centres: torch.Tensor,
        in_range: Optional[List[torch.Tensor]],
        cached: Dict[int, torch.Tensor],
        force_support: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies ``[num_atoms, 1]`` of an expert, exact on ``centres``, and the mask
        of atoms where they are exact: the cached energies of every atom, or the expert
        evaluated on the edges it needs (``routing.expert_edges``).

        Args:
            data: graph with edge vectors and lengths
            expert_idx: expert index
            centres: boolean mask ``[num_atoms]``
            in_range: per-expert edge masks (``None`` in dense mode)
            cached: expert index -> per-atom energies of every atom (frozen experts)
            force_support: also exact on the atoms whose energies depend on ``centres``
        """
        if expert_idx in cached:
            return cached[expert_idx], torch.ones_like(centres)
        edges, exact = expert_edges(
            data,
            self.expert_halo_hops[expert_idx],
            centres,
            None if in_range is None else in_range[expert_idx],
            force_support,
        )
        return self.expert_atomic_energy(data, expert_idx, edges), exact

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        if not torch.jit.is_scripting():
            refuse_ghost_atom_export(data, self.expert_names, self.expert_halo_hops)
        data = with_edge_vectors_(data, with_lengths=True)
        weights = self.expert_weights(data)
        in_range = None if self.dense else edges_in_range(data, self.expert_cutoffs, self.num_types)
        # frozen, strictly local experts in eager training: from the per-frame cache
        cached: Dict[int, torch.Tensor] = {}
        if self.training and self.frozen_expert_cache and not traced(data):
            cached = self._frozen.frozen_energies(self, data)
        energy = torch.zeros_like(weights[:, :1])
        for expert_idx in range(len(self.experts)):
            weight = weights[:, expert_idx : expert_idx + 1]
            expert_energy, _ = self.expert_energy_on(
                data, expert_idx, weight.view(-1) != 0, in_range, cached
            )
            # atoms the expert does not weigh may get inexact (even non-finite) energies: mask
            # them before the product, so that neither they nor their gradients reach the sum
            energy = energy + weight * torch.where(weight != 0, expert_energy, 0.0)
        data[AtomicDataDict.PER_ATOM_ENERGY_KEY] = energy
        # the expert with the largest weight (the own expert of static regions)
        data[ATOM_EXPERT_KEY] = torch.argmax(weights, dim=-1).unsqueeze(-1)
        if SHARED_KEY in data:
            shared = data[SHARED_KEY].view(-1) != 0
            if self.gate is not None:
                # agreement in the blend zone, where e^big - e^small multiplies grad g
                shared = shared | ((weights[:, 0] > 0) & (weights[:, 0] < 1))
                data[SHARED_KEY] = shared.to(data[SHARED_KEY].dtype).view(data[SHARED_KEY].shape)
            if not (self._cotraining_neighbours_checked or torch.jit.is_scripting() or traced(data)):
                check_cotraining_neighbours(self, data, shared)
                self._cotraining_neighbours_checked = True
            data.update(shared_expert_outputs(self, data, shared, in_range, cached))
        return data


class DenseCompileGraphModel(CompileGraphModel):
    """``CompileGraphModel`` for MoE models: switches every :class:`MixtureOfExpertsEnergy` to
    dense evaluation, whose static shapes ``torch.compile`` can train through."""

    def __init__(self, model, model_config=None, model_input_fields={}):
        super().__init__(model, model_config, model_input_fields)
        for module in self.modules():
            if isinstance(module, MixtureOfExpertsEnergy):
                module.dense = True
