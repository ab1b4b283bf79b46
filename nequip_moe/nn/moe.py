"""Graph modules of the spatial Mixture of Experts (packaged: light imports only)."""

import dataclasses

import torch

from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin, scatter, with_edge_vectors_
from nequip.nn.compile import CompileGraphModel
from nequip.nn.graph_model import PER_EDGE_TYPE_CUTOFF_KEY

from nequip_moe._keys import (
    ATOM_EXPERT_KEY,
    SHARED_KEY,
    GATE_KEY,
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
    EXPERT_NAMES_KEY,
    TYPE_ELEMENTS_KEY,
    TYPE_EXPERTS_KEY,
    EXPERT_R_MAX_KEY,
    EXPERT_HALO_HOPS_KEY,
    GATE_MODEL_KEY,
)

from typing import Dict, List, Optional, Tuple

# `halo_hops` value meaning "this expert needs every edge" (receptive field unknown)
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


@dataclasses.dataclass
class ExpertSpec:
    """One expert of a :class:`MixtureOfExpertsEnergy`, as the expert itself knows it.

    Args:
        module (GraphModuleMixin): energy network producing ``atomic_energy`` on the expert's own (element) types
        type_names (List[str]): the expert's own type names (element names), in its type-index order
        cutoffs (List[List[float]]): ``[num_types, num_types]`` cutoff of an edge from a centre of the expert's type ``a`` to a neighbour of type ``b``
        r_max (float): the expert's ``r_max``
        halo_hops (int): ``0`` strictly local (an atom's energy depends only on the edges centred on it, as in Allegro), ``n > 0`` message passing over ``n`` neighbour shells beyond those edges, or ``-1`` (:data:`ALL_EDGES`) unknown receptive field
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

    Each expert is evaluated exactly on the atoms it weighs (``w_ik != 0``): in the default *routed* evaluation each expert runs on a fresh data dict
    holding only the edges it needs: those centred on its own atoms (strictly local experts such
    as Allegro), plus the receptive-field halo of ``halo_hops`` neighbour shells (message-passing
    experts), trimmed to the expert's own cutoffs. In *dense* evaluation every expert sees every
    edge and the result is masked per atom: numerically identical, with static shapes for
    ``torch.compile``. With a gate, atoms of the blend zone (``0 < g < 1``) pay for both
    experts.

    Co-training: when the input holds the per-atom ``shared`` mark, every expert is also
    evaluated on the shared atoms (in a gated MoE the module adds the blend-zone atoms to
    ``shared``, where the experts' disagreement would otherwise act as a force) (plus the atoms whose energies depend on their positions) and
    the module outputs each expert's per-atom energies ``[num_atoms, num_experts]``, whole-frame
    forces ``[num_atoms, num_experts, 3]`` and frame energies ``[num_frames, num_experts]`` there
    (``expert_atomic_energy``, ``expert_forces``, ``expert_total_energy``). Deployed models
    never receive ``shared``, so this costs nothing at inference.

    The module contributes the model metadata that describes it: the composite-type table
    (``moe_expert_names``, ``moe_type_elements``, ``moe_type_experts``; a gated MoE writes the
    expert names and the gate's class, ``moe_gate_model``, instead), each expert's ``r_max``
    (``moe_expert_r_max``) and receptive field (``moe_expert_halo_hops``), and the neighbour
    cutoff of every composite type pair (``per_edge_type_cutoff``, see :meth:`neighbor_cutoffs`).

    Args:
        experts (Dict[str, ExpertSpec]): expert name -> spec, in expert-label order
        type_names (List[str]): composite type names (the model's ``type_names``; element names for a gated MoE)
        type_elements (List[str]): element of each composite type
        type_experts (List[str]): expert of each composite type (``None`` for a gated MoE)
        neighbor_cutoffs (List[List[float]]): ``[num_types, num_types]`` neighbour-list cutoffs over composite types to write into the metadata, at least :meth:`neighbor_cutoffs` (default: exactly that)
        dense (bool): evaluate every expert on every edge (default ``False``)
        gate (GraphModuleMixin): module writing the per-atom gate ``moe_gate`` ``[num_atoms, 1]`` from the graph, with a ``neighbor_cutoffs()`` method giving the edges it reads (e.g. :class:`~nequip_moe.nn.AdsorbateCoordinationGate`); needs exactly two experts, high-fidelity first (default ``None``: static regions)
    """

    dense: bool

    def __init__(
        self,
        experts: Dict[str, ExpertSpec],
        type_names: List[str],
        type_elements: List[str],
        type_experts: Optional[List[str]],
        neighbor_cutoffs: Optional[List[List[float]]] = None,
        dense: bool = False,
        gate: Optional[GraphModuleMixin] = None,
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
        self.num_types = num_types
        self.dense = dense
        self.expert_halo_hops = [int(s.halo_hops) for s in specs]
        self._type_elements = list(type_elements)
        self._type_experts = list(type_experts)
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
        # dummy atoms padding routed edges (see `expert_atomic_energy`) lie this far apart
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
        if self.gate is None:
            regions = {
                TYPE_ELEMENTS_KEY: " ".join(self._type_elements),
                TYPE_EXPERTS_KEY: " ".join(self._type_experts),
            }
        else:
            regions = {GATE_MODEL_KEY: type(self.gate).__name__}
        return {
            EXPERT_NAMES_KEY: " ".join(self.expert_names),
            **regions,
            EXPERT_R_MAX_KEY: " ".join(str(r) for r in self._expert_r_max),
            EXPERT_HALO_HOPS_KEY: " ".join(str(h) for h in self.expert_halo_hops),
            PER_EDGE_TYPE_CUTOFF_KEY: " ".join(
                str(c) for row in self._neighbor_cutoffs for c in row
            ),
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
        atoms: torch.Tensor,
        edge_index: torch.Tensor,
        in_range: torch.Tensor,
        shells: int,
        towards_centres: bool = False,
    ) -> torch.Tensor:
        """Grow an atom mask by ``shells`` shells along the in-range edges.

        Each shell adds the neighbours of the atoms (``edge_index[0] -> edge_index[1]``: the
        atoms whose features a message-passing centre reads), or with ``towards_centres`` the
        centres of edges ending on the atoms (the atoms whose energies read theirs).
        """
        source, target = (1, 0) if towards_centres else (0, 1)
        for _ in range(shells):
            reached = torch.zeros_like(atoms, dtype=torch.int32).index_add(
                0,
                edge_index[target],
                (torch.index_select(atoms, 0, edge_index[source]) & in_range).to(torch.int32),
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

        Returns the edge indices (``None``: all edges, in dense mode) and the mask of atoms
        whose energies are exact: ``centres``, or with ``force_support`` also every atom whose
        energy depends on the positions of ``centres`` (so the gradient of their summed energies
        is the expert's whole-frame force on ``centres``).

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
        assert in_range is not None
        if hops == ALL_EDGES:
            return _routed(in_range), everything
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        exact = centres
        if force_support:
            # atom i's energy reads positions up to (hops + 1) edges away along i -> j edges:
            # the energies that read the centres' positions are (hops + 1) edges back
            exact = self._grow(centres, edge_index, in_range, hops + 1, towards_centres=True)
        # a centre's energy reads the features of atoms up to `hops` edges away (its halo)
        needed = self._grow(exact, edge_index, in_range, hops)
        keep = in_range & torch.index_select(needed, 0, edge_index[0])
        return _routed(keep), exact

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

        Routed edges (``edges`` given) are padded with two dummy atoms joined by two edges far
        beyond any cutoff, as LAMMPS Kokkos pads its lists; the dummies' energies are dropped.
        Every real atom's energy is untouched, and the routed edge count, unknown while tracing
        for export, is then provably at least 2, which layers that broadcast over edges (e.g.
        NequIP's tensor products) need to be exported.

        Args:
            data: graph with edge vectors and lengths
            expert_idx: expert index
            edges: edge indices from :meth:`expert_edges` (``None``: all edges)
        """
        expert_data: AtomicDataDict.Type = {}
        for key in _NODE_AND_GRAPH_INPUTS:
            if key in data:
                expert_data[key] = data[key]
        atom_types = torch.index_select(
            self.expert_type_maps[expert_idx],
            0,
            data[AtomicDataDict.ATOM_TYPE_KEY].view(-1),
        )
        expert_data[AtomicDataDict.ATOM_TYPE_KEY] = atom_types
        for key in _EDGE_INPUTS:
            if key in data:
                value = data[key]
                if edges is not None:
                    edge_dim = 1 if key == AtomicDataDict.EDGE_INDEX_KEY else 0
                    value = torch.index_select(value, edge_dim, edges)
                expert_data[key] = value
        num_atoms = atom_types.size(0)
        if edges is not None:
            expert_data = self._with_dummy_edges(expert_data, num_atoms)
        expert = list(self.experts.values())[expert_idx]
        energy = expert(expert_data)[AtomicDataDict.PER_ATOM_ENERGY_KEY]
        return energy[:num_atoms].view(-1, 1)

    def _with_dummy_edges(self, data: AtomicDataDict.Type, num_atoms: int) -> AtomicDataDict.Type:
        """Append two dummy atoms (type 0, frame 0) joined by two edges longer than any cutoff."""
        pos = data[AtomicDataDict.POSITIONS_KEY]
        far = self._dummy_distance
        offsets = torch.tensor(
            [[0.0, 0.0, 0.0], [far, 0.0, 0.0]], dtype=pos.dtype, device=pos.device
        )
        # the dummies lie beyond the structure and the neighbour list, and far from each other
        dummy_pos = pos.detach().amax(0, keepdim=True) + far + offsets
        data[AtomicDataDict.POSITIONS_KEY] = torch.cat([pos, dummy_pos], 0)
        types = data[AtomicDataDict.ATOM_TYPE_KEY]
        data[AtomicDataDict.ATOM_TYPE_KEY] = torch.cat([types, types.new_zeros(2)], 0)
        if AtomicDataDict.BATCH_KEY in data:
            batch = data[AtomicDataDict.BATCH_KEY]
            data[AtomicDataDict.BATCH_KEY] = torch.cat([batch, batch.new_zeros(2)], 0)
        dummies = torch.arange(num_atoms, num_atoms + 2, device=pos.device)
        data[AtomicDataDict.EDGE_INDEX_KEY] = torch.cat(
            [data[AtomicDataDict.EDGE_INDEX_KEY], torch.stack([dummies, dummies.flip(0)])], 1
        )
        vectors = offsets[1:] * torch.tensor([[1.0], [-1.0]], dtype=pos.dtype, device=pos.device)
        data[AtomicDataDict.EDGE_VECTORS_KEY] = torch.cat(
            [data[AtomicDataDict.EDGE_VECTORS_KEY], vectors], 0
        )
        lengths = data[AtomicDataDict.EDGE_LENGTH_KEY]
        data[AtomicDataDict.EDGE_LENGTH_KEY] = torch.cat(
            [lengths, lengths.new_full((2,) + lengths.shape[1:], far)], 0
        )
        if AtomicDataDict.EDGE_CELL_SHIFT_KEY in data:
            shifts = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY]
            data[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = torch.cat(
                [shifts, shifts.new_zeros((2, 3))], 0
            )
        return data

    def shared_expert_outputs(
        self,
        data: AtomicDataDict.Type,
        shared: torch.Tensor,
        in_range: Optional[List[torch.Tensor]],
    ) -> Dict[str, torch.Tensor]:
        """Every expert's per-atom energies, whole-frame forces and frame energies on shared atoms.

        Forces need positions that require grad (as inside ``ForceStressOutput``); the force
        graph is kept for training (``create_graph`` in training mode) for experts with trainable
        parameters only: a frozen expert's forces are targets.

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
            message = (
                f"shared atoms include species that expert `{self.expert_names[expert_idx]}` "
                "has no composite type for: it cannot be asked to agree there"
            )
            if _traced(data):  # no data-dependent branch while tracing: a runtime assertion
                torch._assert_async(~(shared & ~known).any(), message)
            elif bool((shared & ~known).any()):
                raise ValueError(message)
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
                # a frozen expert's forces are fixed targets: no graph to differentiate them again
                expert = list(self.experts.values())[expert_idx]
                trainable = any(p.requires_grad for p in expert.parameters())
                (grad,) = torch.autograd.grad(
                    [total],
                    [pos],
                    create_graph=self.training and trainable,
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

    @torch.jit.unused
    def _refuse_ghost_atom_export(self, data: AtomicDataDict.Type) -> None:
        """Refuse tracing for ``pair_style allegro``-like inputs unless all experts are strictly local.

        Inputs without ``cell`` and ``edge_cell_shift`` (``nequip-compile --target
        pair_allegro``) hold periodic images and other ranks' atoms as ghost atoms and only the
        edges centred on local atoms: exact for strictly local experts only. nequip's compile
        targets cannot see the model, so the check runs here, when the shapes are symbolic
        (traced for export).
        """
        if (
            AtomicDataDict.CELL_KEY in data
            or AtomicDataDict.EDGE_CELL_SHIFT_KEY in data
            or not _traced(data)
        ):
            return
        for name, hops in zip(self.expert_names, self.expert_halo_hops):
            if hops != 0:
                field = "unknown" if hops == ALL_EDGES else f"{hops} message-passing shell(s)"
                raise ValueError(
                    f"expert `{name}` is not strictly local (receptive field: {field}), so this "
                    "MoE cannot be exported for inputs without `cell`/`edge_cell_shift` "
                    "(`nequip-compile --target pair_allegro`): LAMMPS `pair_style allegro` "
                    "gives the model edges centred on local atoms only and would silently "
                    "give wrong energies and forces. Compile with `--target pair_nequip` "
                    "(LAMMPS `pair_style nequip`: the whole periodic system, one rank) or "
                    "`--target ase` (ASE calculator) instead, or, if the expert is in fact "
                    "strictly local, declare it with the MoEModel option "
                    f"`expert_locality: {{{name}: local}}` and rebuild"
                )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        if not torch.jit.is_scripting():
            self._refuse_ghost_atom_export(data)
        data = with_edge_vectors_(data, with_lengths=True)
        weights = self.expert_weights(data)
        in_range = None if self.dense else self.edges_in_range(data)
        energy = torch.zeros_like(weights[:, :1])
        for expert_idx in range(len(self.experts)):
            weight = weights[:, expert_idx : expert_idx + 1]
            edges, _ = self.expert_edges(
                data,
                expert_idx,
                weight.view(-1) != 0,
                None if in_range is None else in_range[expert_idx],
            )
            expert_energy = self.expert_atomic_energy(data, expert_idx, edges)
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
            data.update(self.shared_expert_outputs(data, shared, in_range))
        return data


def _traced(data: AtomicDataDict.Type) -> bool:
    """Whether the module is being traced with symbolic shapes (``nequip-compile``, or
    nequip's train-time compile), where data-dependent Python branches are not allowed."""
    if torch.jit.is_scripting():
        return False
    return isinstance(data[AtomicDataDict.POSITIONS_KEY].size(0), torch.SymInt)


def _routed(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the edges an expert is routed, from its edge mask (their count is a size:
    tells the exporter, which cannot know the data-dependent count)."""
    edges = torch.nonzero(mask).view(-1)
    torch._check(edges.size(0) >= 0)
    return edges


class DenseCompileGraphModel(CompileGraphModel):
    """``CompileGraphModel`` for MoE models: switches every :class:`MixtureOfExpertsEnergy` to
    dense evaluation, whose static shapes ``torch.compile`` can train through."""

    def __init__(self, model, model_config=None, model_input_fields={}):
        super().__init__(model, model_config, model_input_fields)
        for module in self.modules():
            if isinstance(module, MixtureOfExpertsEnergy):
                module.dense = True
