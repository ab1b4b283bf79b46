"""Co-training outputs of a Mixture of Experts on shared atoms (packaged: light imports).

When a training input carries the per-atom ``shared`` mark, every expert is also evaluated on
the shared atoms (and on the atoms whose energies depend on their positions), so that
agreement terms (``nequip_moe.train``) can compare the experts there.
"""

import torch

from nequip.data import AtomicDataDict
from nequip.nn import scatter

from nequip_moe._keys import (
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
)
from nequip_moe.compat.torch_api import assert_async
from nequip_moe.nn.routing import expert_edges, traced

from typing import Dict, List, Optional


def shared_expert_outputs(
    moe: torch.nn.Module,
    data: AtomicDataDict.Type,
    shared: torch.Tensor,
    in_range: Optional[List[torch.Tensor]],
) -> Dict[str, torch.Tensor]:
    """Every expert's per-atom energies, whole-frame forces and frame energies on shared atoms.

    Returns ``expert_atomic_energy`` ``[num_atoms, num_experts]`` and ``expert_forces``
    ``[num_atoms, num_experts, 3]`` (zero outside ``shared``), and ``expert_total_energy``
    ``[num_frames, num_experts]`` (meaningful for frames whose atoms are all shared). Forces
    need positions that require grad (as inside ``ForceStressOutput``); the force graph is kept
    for training (``create_graph`` in training mode) for experts with trainable parameters
    only: a frozen expert's forces are targets.

    Args:
        moe (MixtureOfExpertsEnergy): the energy module whose experts are evaluated
        data: graph with edge vectors and lengths
        shared: boolean mask ``[num_atoms]`` of the shared atoms
        in_range: per-expert edge masks (``routing.edges_in_range``; ``None`` in dense mode)
    """
    pos = data[AtomicDataDict.POSITIONS_KEY]
    num_frames = AtomicDataDict.num_frames(data)
    atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
    energies, forces, totals = [], [], []
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
        edges, exact = expert_edges(
            data,
            moe.expert_halo_hops[expert_idx],
            shared,
            None if in_range is None else in_range[expert_idx],
            force_support=True,
        )
        energy = moe.expert_atomic_energy(data, expert_idx, edges)
        energy = torch.where(exact.unsqueeze(-1), energy, 0.0)
        total = energy.sum()
        if pos.requires_grad:
            # a frozen expert's forces are fixed targets: no graph to differentiate them again
            trainable = any(p.requires_grad for p in expert.parameters())
            (grad,) = torch.autograd.grad(
                [total],
                [pos],
                create_graph=moe.training and trainable,
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
