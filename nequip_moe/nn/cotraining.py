"""Co-training outputs of a Mixture of Experts on shared atoms (packaged: light imports).

When a training input carries the per-atom ``shared`` mark, every expert is also evaluated on
the shared atoms (and on the atoms whose energies depend on their positions), so that
agreement terms (``nequip_moe.train``) can compare the experts there. The first such input is
checked to hold every edge that needs (:func:`check_cotraining_neighbours`).
"""

import torch

from nequip.data import AtomicDataDict
from nequip.nn import scatter

from nequip_moe.keys import (
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_EDGE_ENERGY_GRADIENT_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
)
from nequip_moe.compat.torch_api import assert_async
from nequip_moe.nn.routing import edge_centres, edges_in_range, traced

from typing import Dict, List, Optional


def shared_expert_outputs(
    moe: torch.nn.Module,
    data: AtomicDataDict.Type,
    shared: torch.Tensor,
    in_range: Optional[List[torch.Tensor]],
    cached: Optional[Dict[int, torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """Every expert's per-atom energies, whole-frame forces and frame energies on shared atoms.

    Returns ``expert_atomic_energy`` ``[num_atoms, num_experts]`` and ``expert_forces``
    ``[num_atoms, num_experts, 3]`` (zero outside ``shared``), and ``expert_total_energy``
    ``[num_frames, num_experts]`` (meaningful for frames whose atoms are all shared). Forces
    need positions that require grad (as inside ``ForceStressOutput``); the force graph is kept
    for training (``create_graph`` in training mode) for experts with trainable parameters
    only: a frozen expert's forces are targets.

    A strictly local expert's forces come from one backward pass with respect to the edge
    vectors ``r_e = r_neighbour - r_centre + shift``: it gives the edge gradients
    ``g_e = d e_centre(e) / d r_e`` (an edge vector enters only its centre's energy), and the
    gradient of the energy with respect to atom ``i``'s position is the sum of ``g_e`` over the
    edges ending on ``i`` minus the sum over the edges centred on ``i``. With
    ``edge_gradients`` the edge gradients on the edges centred on shared atoms are returned as
    well, ``expert_edge_energy_gradient`` ``[num_edges, num_experts, 3]`` (zero on other
    edges). For a frozen expert served by the per-frame cache (``cached``) that backward pass
    reaches only the cache's zero-valued edge term, whose gradients are the cached ones.
    ``moe.cotraining_edge_gradients`` asks for the edge gradients (every expert strictly local).

    Args:
        moe (MixtureOfExpertsEnergy): the energy module whose experts are evaluated
        data: graph with edge vectors and lengths
        shared: boolean mask ``[num_atoms]`` of the shared atoms
        in_range: per-expert edge masks (``routing.edges_in_range``; ``None`` in dense mode)
        cached: expert index -> its per-atom energies of every atom, where already known
            (``MixtureOfExpertsEnergy.frozen_energies``; default none)
    """
    cached = {} if cached is None else cached
    edge_gradients = bool(moe.cotraining_edge_gradients)
    pos = data[AtomicDataDict.POSITIONS_KEY]
    vectors = data[AtomicDataDict.EDGE_VECTORS_KEY]
    edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
    # the edges centred on shared atoms
    shared_edges = torch.index_select(shared, 0, edge_index[0]).unsqueeze(-1)
    num_frames = AtomicDataDict.num_frames(data)
    atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
    energies, forces, totals, edge_grads = [], [], [], []
    for expert_idx, expert in enumerate(moe.experts.values()):
        known = torch.index_select(moe.expert_known_types[expert_idx], 0, atom_types)
        message = (
            f"shared atoms include species that expert `{moe.expert_names[expert_idx]}` "
            "has no composite type for: it cannot be asked to agree there"
        )
        if traced(data):  # no data-dependent branch while tracing: a runtime assertion
            assert_async(~(shared & ~known).any(), message)
        elif bool((shared & ~known).any()):
            raise ValueError(message)
        energy, exact = moe.expert_energy_on(
            data, expert_idx, shared, in_range, cached, force_support=True
        )
        energy = torch.where(exact.unsqueeze(-1), energy, 0.0)
        total = energy.sum()
        if pos.requires_grad:
            # strictly local: through the edge vectors (the edge gradients on the way)
            local = moe.expert_halo_hops[expert_idx] == 0
            wrt = vectors if local else pos
            # a frozen expert's forces are fixed targets: no graph to differentiate them again
            trainable = any(p.requires_grad for p in expert.parameters())
            (grad,) = torch.autograd.grad(
                [total],
                [wrt],
                create_graph=moe.training and trainable,
                retain_graph=True,
                allow_unused=True,
            )
            if grad is None:  # no energy depends on positions (no edges)
                grad = torch.zeros_like(wrt)
            if local:
                if edge_gradients:
                    edge_grads.append(torch.where(shared_edges, grad, 0.0))
                # d r_e / d r_neighbour = 1, d r_e / d r_centre = -1
                grad = (
                    torch.zeros_like(pos)
                    .index_add(0, edge_index[1], grad)
                    .index_add(0, edge_index[0], -grad)
                )
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
    if edge_gradients and len(edge_grads) > 0:
        out[EXPERT_EDGE_ENERGY_GRADIENT_KEY] = torch.stack(edge_grads, dim=1)
    return out


def refuse_nonlocal_edge_gradients(expert_names: List[str], halo_hops: List[int]) -> None:
    """Refuse edge-gradient outputs for an MoE with an expert that is not strictly local.

    Args:
        expert_names: the experts, in label order
        halo_hops: each expert's halo shells (``0``: strictly local)
    """
    nonlocal_experts = [name for name, hops in zip(expert_names, halo_hops) if hops != 0]
    if nonlocal_experts:
        raise ValueError(
            f"cotraining_edge_gradients needs strictly local experts, but {nonlocal_experts} "
            "are not (message passing or unknown receptive field): an atom's energy then "
            "depends on edges not centred on it, so there is no per-edge gradient of one "
            "atom's energy to compare. Leave the edge-gradient agreement term and "
            "`cotraining_edge_gradients` out, or declare an expert that is in fact strictly "
            "local with `expert_locality: {name: local}`"
        )


def check_cotraining_neighbours(
    moe: torch.nn.Module, data: AtomicDataDict.Type, shared: torch.Tensor
) -> None:
    """Refuse a neighbour list that lacks edges the co-training outputs need (eager only).

    Every expert is evaluated exactly on the shared atoms and on the atoms whose energies
    depend on their positions: each centre of those evaluations (``routing.edge_centres``)
    needs all its edges within the expert's own cutoffs, also where the expert does not own the
    atom, so a neighbour list cut to the model's inference cutoffs (its metadata) would give
    wrong agreement targets without an error. The edges are found by brute force (every atom of
    the frame and its periodic images along the directions the data's edges cross) and each such centre's count within each expert's cutoffs is
    compared with the data's; a shortfall raises ``ValueError`` naming the cutoffs to build the
    list with (``neighbor_cutoffs(cotraining=True)``).

    Args:
        moe (MixtureOfExpertsEnergy): the energy module
        data: graph with edge lengths
        shared: boolean mask ``[num_atoms]`` of the shared atoms
    """
    atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
    cutoffs = moe.expert_cutoffs.view(-1, moe.num_types, moe.num_types)
    brute_edges, brute_lengths = _brute_force_edges(data, shared, float(cutoffs.max()))
    brute = {
        AtomicDataDict.EDGE_INDEX_KEY: brute_edges,
        AtomicDataDict.ATOM_TYPE_KEY: atom_types,
        # an edge right at a cutoff may round either way in the data's neighbour list
        AtomicDataDict.EDGE_LENGTH_KEY: brute_lengths + 1e-6,
    }
    data_edges = data[AtomicDataDict.EDGE_INDEX_KEY][0]
    data_in_range = edges_in_range(data, moe.expert_cutoffs, moe.num_types)
    brute_in_range = edges_in_range(brute, moe.expert_cutoffs, moe.num_types)
    for expert_idx, name in enumerate(moe.expert_names):
        centres, _ = edge_centres(
            brute_edges, moe.expert_halo_hops[expert_idx], shared, brute_in_range[expert_idx], True
        )
        have = torch.zeros_like(atom_types).index_add(
            0, data_edges, data_in_range[expert_idx].long()
        )
        need = torch.zeros_like(atom_types).index_add(
            0, brute_edges[0], brute_in_range[expert_idx].long()
        )
        missing = torch.nonzero(centres & (need > have)).view(-1)
        if missing.numel() > 0:
            atom = int(missing[0])
            raise ValueError(
                "the training data's neighbour list lacks edges that co-training needs: expert "
                f"`{name}` is evaluated on the shared atoms and the atoms around them, also "
                f"where it does not own them, and atom {atom} "
                f"({moe.type_names[int(atom_types[atom])]}) has {int(need[atom])} neighbours "
                f"within the expert's cutoffs but {int(have[atom])} edges ({missing.numel()} "
                "atoms lack edges). Build the training data's neighbour list with the model's "
                f"co-training cutoffs, `neighbor_cutoffs(cotraining=True)`: {_transform_hint(moe)}"
            )


def _transform_hint(moe: torch.nn.Module) -> str:
    """The ``NeighborListTransform`` options giving the co-training cutoffs."""
    cutoffs = moe.neighbor_cutoffs(cotraining=True)
    r_max = max(max(row) for row in cutoffs)
    text = f"nequip.data.transforms.NeighborListTransform with r_max: {r_max}"
    if any(c != r_max for row in cutoffs for c in row):
        per_type = {
            a: {b: c for b, c in zip(moe.type_names, row)} for a, row in zip(moe.type_names, cutoffs)
        }
        text += f", per_edge_type_cutoff: {per_type} and type_names: {moe.type_names}"
    return text


def _brute_force_edges(data: AtomicDataDict.Type, shared: torch.Tensor, cutoff: float):
    """Every edge shorter than ``cutoff`` (periodic images included) centred on an atom of a
    frame that holds shared atoms: edge index ``[2, num_edges]`` and lengths ``[num_edges]``."""
    pos = data[AtomicDataDict.POSITIONS_KEY].detach().to(torch.float64)
    if AtomicDataDict.BATCH_KEY in data:
        batch = data[AtomicDataDict.BATCH_KEY]
    else:
        batch = torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
    edges, lengths = [pos.new_zeros((2, 0), dtype=torch.long)], [pos.new_zeros(0)]
    for frame in range(AtomicDataDict.num_frames(data)):
        atoms = torch.nonzero(batch == frame).view(-1)
        if not bool(shared[atoms].any()):
            continue
        cell, pbc = _frame_cell(data, frame)
        if cell is None:
            images = pos.new_zeros((1, 3))
        else:
            # periodic images within `cutoff` of the minimum image (|fractional| <= 1/2)
            spacing = 1.0 / torch.linalg.inv(cell).norm(dim=0)
            reach = torch.where(pbc, torch.ceil(cutoff / spacing + 0.5), 0.0).long()
            images = torch.cartesian_prod(
                *[torch.arange(-n, n + 1, device=pos.device) for n in reach.tolist()]
            ).to(pos.dtype).view(-1, 3)
        chunk_size = max(1, 2_000_000 // (atoms.numel() * images.size(0)))
        for chunk in atoms.split(chunk_size):
            # [centres, atoms, 3] -> [centres, atoms, images, 3]
            vectors = pos[atoms].unsqueeze(0) - pos[chunk].unsqueeze(1)
            if cell is not None:
                fractional = vectors @ torch.linalg.inv(cell)
                fractional = fractional - torch.where(pbc, torch.round(fractional), 0.0)
                vectors = (fractional.unsqueeze(2) + images) @ cell
            else:
                vectors = vectors.unsqueeze(2)
            chunk_lengths = vectors.norm(dim=-1)
            # every atom but the centre itself
            keep = (chunk_lengths < cutoff) & (chunk_lengths > 1e-8)
            centre, neighbour, _ = torch.nonzero(keep, as_tuple=True)
            edges.append(torch.stack([chunk[centre], atoms[neighbour]]))
            lengths.append(chunk_lengths[keep])
    return torch.cat(edges, 1), torch.cat(lengths)


def _frame_cell(data: AtomicDataDict.Type, frame: int):
    """The cell ``[3, 3]`` of one frame and its periodic directions ``[3]``: those along which
    some edge of the frame crosses the cell (``None, None``: none). The model does not receive
    ``pbc``; a periodic direction without a crossing edge has no atom within the data's cutoff
    of a periodic image, so leaving its images out only ever misses edges, never invents them."""
    if AtomicDataDict.CELL_KEY not in data or AtomicDataDict.EDGE_CELL_SHIFT_KEY not in data:
        return None, None
    shifts = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY]
    if AtomicDataDict.BATCH_KEY in data:
        edge_frames = data[AtomicDataDict.BATCH_KEY][data[AtomicDataDict.EDGE_INDEX_KEY][0]]
        shifts = shifts[edge_frames == frame]
    pbc = (shifts != 0).any(0)
    if not bool(pbc.any()):
        return None, None
    return data[AtomicDataDict.CELL_KEY].view(-1, 3, 3)[frame].detach().to(torch.float64), pbc
