"""Routing: which edges each expert of a Mixture of Experts is given (packaged: light imports).

An expert evaluated on a set of centre atoms needs the edges centred on them within its own
cutoffs (strictly local experts, e.g. Allegro) plus the receptive-field halo of message-passing
experts; it runs on a fresh data dict holding only those edges (:func:`expert_inputs`), padded
for export with two dummy atoms in a frame of their own (:func:`with_dummy_atoms`).
"""

import torch

from nequip.data import AtomicDataDict

from nequip_moe.compat.torch_api import check_size

from typing import List, Optional, Tuple

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


def traced(data: AtomicDataDict.Type) -> bool:
    """Whether the module is being traced with symbolic shapes (``nequip-compile``, or
    nequip's train-time compile), where data-dependent Python branches are not allowed."""
    if torch.jit.is_scripting():
        return False
    return isinstance(data[AtomicDataDict.POSITIONS_KEY].size(0), torch.SymInt)


def edges_in_range(
    data: AtomicDataDict.Type, expert_cutoffs: torch.Tensor, num_types: int
) -> List[torch.Tensor]:
    """For each expert, the mask of edges within its own (per-edge-type) cutoff.

    Args:
        data: graph with ``edge_lengths``
        expert_cutoffs: ``[num_experts, num_types * num_types]`` cutoff of each expert for each (centre, neighbour) type pair
        num_types: number of (composite) atom types
    """
    edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
    atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
    edge_type = torch.index_select(atom_types, 0, edge_index[0]) * num_types + torch.index_select(
        atom_types, 0, edge_index[1]
    )
    lengths = data[AtomicDataDict.EDGE_LENGTH_KEY].view(-1)
    return [
        lengths < torch.index_select(expert_cutoffs[expert_idx], 0, edge_type)
        for expert_idx in range(expert_cutoffs.size(0))
    ]


def grow(
    atoms: torch.Tensor,
    edge_index: torch.Tensor,
    in_range: torch.Tensor,
    shells: int,
    towards_centres: bool = False,
) -> torch.Tensor:
    """Grow an atom mask by ``shells`` shells along the in-range edges.

    Each shell adds the neighbours of the atoms (``edge_index[0] -> edge_index[1]``: the atoms
    whose features a message-passing centre reads), or with ``towards_centres`` the centres of
    edges ending on the atoms (the atoms whose energies read theirs).

    Args:
        atoms: boolean mask ``[num_atoms]``
        edge_index: ``[2, num_edges]``
        in_range: boolean mask ``[num_edges]`` of the edges to grow along
        shells: number of shells
        towards_centres: grow from neighbours to centres instead
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


def edge_centres(
    edge_index: torch.Tensor,
    hops: int,
    centres: torch.Tensor,
    in_range: torch.Tensor,
    force_support: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The atoms whose in-range edges an expert needs for exact energies on ``centres``.

    Returns that mask and the mask of atoms whose energies are exact: ``centres``, or with
    ``force_support`` also every atom whose energy depends on the positions of ``centres`` (so
    the gradient of their summed energies is the expert's whole-frame force on ``centres``).

    Args:
        edge_index: ``[2, num_edges]``
        hops: the expert's halo shells (``0`` strictly local, :data:`ALL_EDGES` unknown)
        centres: boolean mask ``[num_atoms]``
        in_range: the expert's mask from :func:`edges_in_range`
        force_support: also cover the atoms whose energies depend on ``centres``
    """
    if hops == ALL_EDGES:
        everything = torch.ones_like(centres)
        return everything, everything if force_support else centres
    exact = centres
    if force_support:
        # atom i's energy reads positions up to (hops + 1) edges away along i -> j edges: the
        # energies that read the centres' positions are (hops + 1) edges back
        exact = grow(centres, edge_index, in_range, hops + 1, towards_centres=True)
    # a centre's energy reads the features of atoms up to `hops` edges away (its halo)
    return grow(exact, edge_index, in_range, hops), exact


def expert_edges(
    data: AtomicDataDict.Type,
    hops: int,
    centres: torch.Tensor,
    in_range: Optional[torch.Tensor],
    force_support: bool = False,
) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Edge indices an expert needs for exact energies on ``centres`` (``None``: all edges, in
    dense mode, ``in_range=None``) and the mask of atoms whose energies are then exact (see
    :func:`edge_centres`).

    Args:
        data: graph
        hops: the expert's halo shells
        centres: boolean mask ``[num_atoms]``
        in_range: the expert's mask from :func:`edges_in_range` (``None`` in dense mode)
        force_support: also cover the atoms whose energies depend on ``centres``
    """
    if in_range is None:
        return None, torch.ones_like(centres) if force_support else centres
    edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
    if hops == ALL_EDGES:
        _, exact = edge_centres(edge_index, hops, centres, in_range, force_support)
        return routed(in_range), exact
    needed, exact = edge_centres(edge_index, hops, centres, in_range, force_support)
    return routed(in_range & torch.index_select(needed, 0, edge_index[0])), exact


def routed(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the edges an expert is routed, from its edge mask (their count is a size:
    tells the exporter, which cannot know the data-dependent count)."""
    edges = torch.nonzero(mask).view(-1)
    check_size(edges.size(0) >= 0)
    return edges


def expert_inputs(
    data: AtomicDataDict.Type,
    type_map: torch.Tensor,
    edges: Optional[torch.Tensor],
    dummy_distance: float,
) -> AtomicDataDict.Type:
    """A fresh data dict for one expert: its own atom types and the selected edges.

    A fresh dict keeps one expert's cached fields (edge embeddings, normalised lengths, ...)
    from leaking into another. Routed edges (``edges`` given) are padded by
    :func:`with_dummy_atoms`; the expert's outputs for atoms past the real ones are to be
    dropped.

    Args:
        data: graph with edge vectors and lengths
        type_map: ``[num_types]`` the expert's own type index of each (composite) type
        edges: edge indices from :func:`expert_edges` (``None``: all edges, no padding)
        dummy_distance: distance of the padding atoms from the structure and each other, beyond any cutoff
    """
    expert_data: AtomicDataDict.Type = {}
    for key in _NODE_AND_GRAPH_INPUTS:
        if key in data:
            expert_data[key] = data[key]
    atom_types = torch.index_select(type_map, 0, data[AtomicDataDict.ATOM_TYPE_KEY].view(-1))
    expert_data[AtomicDataDict.ATOM_TYPE_KEY] = atom_types
    for key in _EDGE_INPUTS:
        if key in data:
            value = data[key]
            if edges is not None:
                edge_dim = 1 if key == AtomicDataDict.EDGE_INDEX_KEY else 0
                value = torch.index_select(value, edge_dim, edges)
            expert_data[key] = value
    if edges is not None:
        expert_data = with_dummy_atoms(expert_data, atom_types.size(0), dummy_distance)
    return expert_data


def with_dummy_atoms(
    data: AtomicDataDict.Type, num_atoms: int, far: float
) -> AtomicDataDict.Type:
    """Append two dummy atoms (type 0) in a frame of their own, joined by two edges of length
    ``far``, as LAMMPS Kokkos pads its lists.

    Every real atom's energy is untouched, and the routed edge count, unknown while tracing for
    export, is then provably at least 2, which layers that broadcast over edges (e.g. NequIP's
    tensor products) need to be exported. Their own frame keeps them out of every per-frame
    count and reduction of the real frames (``num_nodes``: an expert that normalises by the
    atoms of a frame sees the real ones only); single-frame inputs get ``batch`` and
    ``num_nodes`` for that.

    Args:
        data: an expert's fresh data dict (modified in place)
        num_atoms: number of real atoms
        far: edge length of the dummies, beyond any cutoff (also their distance from the structure)
    """
    pos = data[AtomicDataDict.POSITIONS_KEY]
    offsets = torch.tensor([[0.0, 0.0, 0.0], [far, 0.0, 0.0]], dtype=pos.dtype, device=pos.device)
    # the dummies lie beyond the structure and the neighbour list, and far from each other
    dummy_pos = pos.detach().amax(0, keepdim=True) + far + offsets
    data[AtomicDataDict.POSITIONS_KEY] = torch.cat([pos, dummy_pos], 0)
    types = data[AtomicDataDict.ATOM_TYPE_KEY]
    data[AtomicDataDict.ATOM_TYPE_KEY] = torch.cat([types, types.new_zeros(2)], 0)
    if AtomicDataDict.BATCH_KEY in data:
        batch = data[AtomicDataDict.BATCH_KEY]
        num_nodes = data[AtomicDataDict.NUM_NODES_KEY]
        dummy_frame = batch.new_zeros(2) + num_nodes.size(0)
        data[AtomicDataDict.BATCH_KEY] = torch.cat([batch, dummy_frame], 0)
        data[AtomicDataDict.NUM_NODES_KEY] = torch.cat([num_nodes, num_nodes.new_full((1,), 2)], 0)
    else:
        batch = torch.cat([types.new_zeros(num_atoms), types.new_ones(2)], 0)
        data[AtomicDataDict.BATCH_KEY] = batch
        data[AtomicDataDict.NUM_NODES_KEY] = batch.new_zeros(2).index_add(
            0, batch, torch.ones_like(batch)
        )
    if AtomicDataDict.CELL_KEY in data:
        # an invertible cell for the dummies' frame (their edge vectors are given)
        cell = data[AtomicDataDict.CELL_KEY].view(-1, 3, 3)
        dummy_cell = torch.eye(3, dtype=cell.dtype, device=cell.device).unsqueeze(0) * (4.0 * far)
        data[AtomicDataDict.CELL_KEY] = torch.cat([cell, dummy_cell], 0)
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
        data[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = torch.cat([shifts, shifts.new_zeros((2, 3))], 0)
    return data


def refuse_ghost_atom_export(
    data: AtomicDataDict.Type, expert_names: List[str], halo_hops: List[int]
) -> None:
    """Refuse tracing for ``pair_style allegro``-like inputs unless all experts are strictly local.

    Inputs without ``cell`` and ``edge_cell_shift`` (``nequip-compile --target pair_allegro``)
    hold periodic images and other ranks' atoms as ghost atoms and only the edges centred on
    local atoms: exact for strictly local experts only. nequip's compile targets cannot see the
    model, so the check runs in the model, when the shapes are symbolic (traced for export).

    Args:
        data: the model's input
        expert_names: the experts, in label order
        halo_hops: each expert's halo shells
    """
    if (
        AtomicDataDict.CELL_KEY in data
        or AtomicDataDict.EDGE_CELL_SHIFT_KEY in data
        or not traced(data)
    ):
        return
    for name, hops in zip(expert_names, halo_hops):
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
