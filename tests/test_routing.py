"""Routing pads each expert's edges with two dummy atoms in a frame of their own: an expert that
normalises by the atoms of its frame sees the real atoms only (routed == dense == the expert
alone), batched or single-frame."""

import numpy as np
import pytest
import torch

from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin, scatter, with_edge_vectors_

from test_cotraining import TWO_ALLEGRO_TINY
from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    ELEMENTS,
    build,
    element_graph,
    float64,
    half_labels,
    pt_co_slab,
    typed_graph,
)


class PerFrameExpert(GraphModuleMixin, torch.nn.Module):
    """A strictly local test expert whose per-atom energy is normalised by its frame's atom
    count: ``e_i = (1 + 10 / N_frame(i)) sum_j w(t_i, t_j) (1 - r_ij / r_max)^3``. It counts
    the atoms of each frame itself (over ``batch``; one frame of ``pos.size(0)`` atoms
    without it) and refuses a ``num_nodes`` that disagrees."""

    def __init__(self, type_names, r_max):
        super().__init__()
        num_types = len(type_names)
        generator = torch.Generator().manual_seed(num_types)
        self.pair = torch.nn.Parameter(torch.rand(num_types, num_types, generator=generator) + 0.5)
        self.r_max = float(r_max)
        self._init_irreps(irreps_out={AtomicDataDict.PER_ATOM_ENERGY_KEY: "0e"})

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data = with_edge_vectors_(data, with_lengths=True)
        centre, neighbour = data[AtomicDataDict.EDGE_INDEX_KEY]
        types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        num_atoms = types.numel()
        x = (data[AtomicDataDict.EDGE_LENGTH_KEY].view(-1) / self.r_max).clamp(max=1.0)
        pair = (1.0 - x) ** 3 * self.pair[types[centre], types[neighbour]]
        pair_energy = scatter(pair.unsqueeze(-1), centre, dim=0, dim_size=num_atoms)
        if AtomicDataDict.BATCH_KEY in data:
            batch = data[AtomicDataDict.BATCH_KEY]
            num_nodes = data[AtomicDataDict.NUM_NODES_KEY].view(-1)
            counts = torch.zeros_like(num_nodes).index_add(0, batch, torch.ones_like(batch))
            if not torch.equal(counts, num_nodes):
                raise ValueError(f"num_nodes {num_nodes.tolist()} but frames of {counts.tolist()} atoms")
        else:
            batch = torch.zeros_like(types)
            counts = torch.full((1,), num_atoms, device=types.device)
        norm = 1.0 + 10.0 / counts.to(pair_energy.dtype)
        data[AtomicDataDict.PER_ATOM_ENERGY_KEY] = pair_energy * norm[batch].unsqueeze(-1)
        return data


def per_frame_expert(type_names, r_max, do_derivatives=False):
    """Model builder of :class:`PerFrameExpert` (an MoE expert ``_target_``)."""
    return PerFrameExpert(type_names, r_max)


PER_FRAME = {
    "seed": 1,
    "r_max": 4.0,
    "type_names": TWO_ALLEGRO_TINY["type_names"],
    "composite_types": TWO_ALLEGRO_TINY["composite_types"],
    "experts": {
        "big": {"_target_": "test_routing.per_frame_expert"},
        "small": {"_target_": "test_routing.per_frame_expert", "r_max": 3.0},
    },
    "expert_locality": {"big": "local", "small": "local"},
}


def test_dummy_atoms_never_enter_a_frame_count():
    routed = build(PER_FRAME)
    dense = build(PER_FRAME, dense=True)
    dense.load_state_dict(routed.state_dict())
    moe_energy = next(m for m in routed.modules() if hasattr(m, "expert_names"))
    frames = [pt_co_slab(size=(2, 2, 3)), pt_co_slab(size=(3, 3, 3), seed=1)]
    labels = [half_labels(atoms) for atoms in frames]
    graphs = [typed_graph(atoms, PER_FRAME, lab) for atoms, lab in zip(frames, labels)]
    # a single frame as pair_allegro gives it (no `batch`, no `num_nodes`) and a batch of two
    single = {
        k: v for k, v in graphs[0].items()
        if k not in (AtomicDataDict.BATCH_KEY, AtomicDataDict.NUM_NODES_KEY)
    }
    batch = AtomicDataDict.batched_from_list(graphs)
    for case, data, atoms_list, labels_list in [
        ("single", single, frames[:1], labels[:1]),
        ("batch", batch, frames, labels),
    ]:
        out_routed, out_dense = routed(dict(data)), dense(dict(data))
        for key in ["atomic_energy", "forces", "stress"]:
            torch.testing.assert_close(
                out_routed[key], out_dense[key], atol=1e-10, rtol=0, msg=lambda m: f"{case} {key}: {m}"
            )
        # each atom's energy is its own expert's, the expert alone on the atom's frame
        reference = []
        for atoms, lab in zip(atoms_list, labels_list):
            energies = torch.zeros(len(atoms))
            for k, (name, config) in enumerate(PER_FRAME["experts"].items()):
                r_max = config.get("r_max", PER_FRAME["r_max"])
                alone = PerFrameExpert(ELEMENTS, r_max)
                alone.load_state_dict(moe_energy.experts[name].state_dict())
                e = alone(element_graph(atoms, r_max))[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1)
                energies = torch.where(torch.as_tensor(lab) == k, e.detach(), energies)
            reference.append(energies)
        torch.testing.assert_close(
            out_routed["atomic_energy"].view(-1).detach(), torch.cat(reference), atol=1e-10, rtol=0
        )
    assert set(np.concatenate(labels).tolist()) == {0, 1}


@pytest.mark.parametrize("frames", [1, 2])
def test_padded_expert_inputs_count_real_atoms_per_frame(frames):
    """The padding's own frame: `num_nodes` of the real frames unchanged, the dummies' frame 2."""
    from nequip_moe.nn.routing import expert_inputs

    slabs = [pt_co_slab(size=(2, 2, 2), seed=seed) for seed in range(frames)]
    graphs = [typed_graph(atoms, PER_FRAME, half_labels(atoms)) for atoms in slabs]
    data = AtomicDataDict.batched_from_list(graphs) if frames > 1 else dict(graphs[0])
    assert (AtomicDataDict.NUM_NODES_KEY in data) == (frames > 1)
    data = with_edge_vectors_(data, with_lengths=True)
    num_atoms = len(data[AtomicDataDict.POSITIONS_KEY])
    padded = expert_inputs(data, torch.tensor([0, 1, 2, 2]), torch.arange(5), dummy_distance=108.0)
    assert padded[AtomicDataDict.NUM_NODES_KEY].tolist() == [len(a) for a in slabs] + [2]
    assert padded[AtomicDataDict.BATCH_KEY][num_atoms:].tolist() == [frames, frames]
    assert padded[AtomicDataDict.CELL_KEY].shape == (frames + 1, 3, 3)
    assert padded[AtomicDataDict.EDGE_INDEX_KEY].shape[1] == 5 + 2
    assert torch.all(padded[AtomicDataDict.EDGE_LENGTH_KEY][5:] == 108.0)
