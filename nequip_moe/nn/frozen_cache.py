"""Frozen experts computed once per training frame (packaged: light imports only).

A frozen expert's outputs on a training frame never change, yet co-training asks for them every
step: its per-atom energies (MoE energy, agreement terms) and their position derivatives
(forces, stress, whole-frame expert forces, interface forces). For a *strictly local* expert
(Allegro: ``e_i`` depends only on the edges centred on ``i``) both are kept per frame:

- the per-atom energies ``e_i`` of every atom;
- the edge gradients ``g_e = d e_centre(e) / d r_e`` with respect to the edge vectors
  (one backward pass of ``sum_i e_i``: an edge's vector enters only its centre's energy).

For any per-atom weights ``w``, ``d/dR sum_i w_i e_i = sum_e w_centre(e) g_e . d r_e / dR``: the
cached energies plus the zero-valued term ``sum_e g_e . (r_e - detach(r_e))`` scattered onto the
centres, with ``r_e`` the edge vectors the model computes from the (strained) positions and
cell, carry exactly the expert's first derivatives with respect to positions and strain. A
frozen expert has no second derivatives that training needs (none with respect to trainable
parameters), so every force, stress and agreement term comes out as with the expert evaluated;
the co-training edge gradients (``expert_edge_energy_gradient``, a gradient with respect to
``r_e``) are then the cached ``g_e`` themselves.
"""

import hashlib
import logging
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from nequip.data import AtomicDataDict
from nequip.nn import scatter

from nequip_moe.nn.routing import edges_in_range, routed

_LOGGER = logging.getLogger(__name__)


class FrozenExpertCache:
    """Per-frame memo of frozen, strictly local experts' per-atom energies and edge gradients.

    A frame's entry is keyed by the expert and a hash of everything its outputs depend on
    (positions, cell, composite atom types, its edges and their cell shifts); it is dropped
    when the expert's parameters, buffers or the MoE's routing of it change. It lives only in
    the training process: a model that is pickled (``nequip-package``) or copied starts empty.
    Frames that never come back (e.g. randomly augmented data) are computed as they come; past
    ``max_bytes`` of entries no new frame is kept.

    Args:
        max_bytes (int): memory the entries may take (default 1 GiB)
    """

    def __init__(self, max_bytes: int = 2**30):
        self.max_bytes = int(max_bytes)
        self._frames: Dict[Tuple[int, bytes], Tuple[torch.Tensor, torch.Tensor]] = {}
        self._snapshots: Dict[int, List[torch.Tensor]] = {}
        self._bytes = 0
        self.frames_computed = 0
        self.frames_reused = 0
        self._warned_uncached = False

    def __getstate__(self):
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(**state)

    def frozen_energies(
        self, moe: torch.nn.Module, data: AtomicDataDict.Type
    ) -> Dict[int, torch.Tensor]:
        """Per-atom energies ``[num_atoms, 1]`` of every atom for each frozen (no parameter
        requires grad), strictly local expert of ``moe``, from the cache (see :meth:`energies`).
        A frozen expert with a message-passing halo is left out (evaluated as usual; a warning
        says so once).

        Args:
            moe (MixtureOfExpertsEnergy): the energy module
            data: graph with edge vectors (computed from positions and cell) and lengths
        """
        in_range: Optional[List[torch.Tensor]] = None
        out: Dict[int, torch.Tensor] = {}
        for expert_idx, (name, expert) in enumerate(moe.experts.items()):
            if any(p.requires_grad for p in expert.parameters()):
                continue
            if moe.expert_halo_hops[expert_idx] != 0:
                if not self._warned_uncached:
                    warnings.warn(
                        f"frozen expert `{name}` is not strictly local: its outputs are "
                        "evaluated at every training step, not computed once per frame"
                    )
                    self._warned_uncached = True
                continue
            if in_range is None:
                in_range = edges_in_range(data, moe.expert_cutoffs, moe.num_types)
            out[expert_idx] = self.energies(moe, data, expert_idx, in_range[expert_idx])
        return out

    def energies(
        self,
        moe: torch.nn.Module,
        data: AtomicDataDict.Type,
        expert_idx: int,
        in_range: torch.Tensor,
    ) -> torch.Tensor:
        """Per-atom energies ``[num_atoms, 1]`` of a frozen, strictly local expert on every atom,
        with its first derivatives with respect to the edge vectors in ``data`` (see module).

        Args:
            moe (MixtureOfExpertsEnergy): the energy module holding the expert
            data: graph with edge vectors (computed from positions and cell) and lengths
            expert_idx: the expert
            in_range: the expert's edge mask (``routing.edges_in_range``)
        """
        self._check_unchanged(moe, expert_idx)
        frames = _frames(data)
        keys = [(expert_idx, _frame_hash(data, *frame)) for frame in frames]
        if all(key in self._frames for key in keys):
            if self.frames_reused == 0:
                _LOGGER.info(
                    f"frozen expert `{moe.expert_names[expert_idx]}`: reusing its outputs on "
                    "training frames seen before (frozen_expert_cache)"
                )
            self.frames_reused += len(keys)
            energy = torch.cat([self._frames[key][0] for key in keys], 0)
            grads = torch.cat([self._frames[key][1] for key in keys], 0)
        else:
            energy, grads = _evaluate(moe, data, expert_idx, in_range)
            self.frames_computed += len(keys)
            for key, (atoms, edges, _) in zip(keys, frames):
                entry = (energy[atoms[0] : atoms[1]].clone(), grads[edges[0] : edges[1]].clone())
                size = sum(t.numel() * t.element_size() for t in entry)
                if key not in self._frames and self._bytes + size <= self.max_bytes:
                    self._frames[key] = entry
                    self._bytes += size
        vectors = data[AtomicDataDict.EDGE_VECTORS_KEY]
        carrier = (grads * (vectors - vectors.detach())).sum(-1, keepdim=True)
        return energy + scatter(
            carrier, data[AtomicDataDict.EDGE_INDEX_KEY][0], dim=0, dim_size=energy.size(0)
        )

    def _check_unchanged(self, moe: torch.nn.Module, expert_idx: int) -> None:
        """Drop the expert's entries if what it computes changed since they were made."""
        expert = list(moe.experts.values())[expert_idx]
        state = [*expert.parameters(), *expert.buffers()]
        state += [moe.expert_cutoffs[expert_idx], moe.expert_type_maps[expert_idx]]
        snapshot = self._snapshots.get(expert_idx)
        if snapshot is not None and len(snapshot) == len(state) and all(
            a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(snapshot, state)
        ):
            return
        self._frames = {k: v for k, v in self._frames.items() if k[0] != expert_idx}
        self._bytes = sum(t.numel() * t.element_size() for v in self._frames.values() for t in v)
        self._snapshots[expert_idx] = [t.detach().clone() for t in state]


def _evaluate(
    moe: torch.nn.Module, data: AtomicDataDict.Type, expert_idx: int, in_range: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The expert's per-atom energies of every atom and the gradient of their sum with respect
    to each edge vector (zero for edges beyond its cutoffs), both detached."""
    vectors = data[AtomicDataDict.EDGE_VECTORS_KEY].detach().requires_grad_(True)
    inputs = dict(data)
    inputs[AtomicDataDict.POSITIONS_KEY] = data[AtomicDataDict.POSITIONS_KEY].detach()
    if AtomicDataDict.CELL_KEY in data:
        inputs[AtomicDataDict.CELL_KEY] = data[AtomicDataDict.CELL_KEY].detach()
    inputs[AtomicDataDict.EDGE_VECTORS_KEY] = vectors
    # as nequip's `with_edge_vectors_` computes them
    inputs[AtomicDataDict.EDGE_LENGTH_KEY] = vectors.square().sum(1, keepdim=True).sqrt()
    with torch.enable_grad():
        energy = moe.expert_atomic_energy(inputs, expert_idx, routed(in_range))
        (grads,) = torch.autograd.grad([energy.sum()], [vectors], allow_unused=True)
    if grads is None:  # no edge within the expert's cutoffs
        grads = torch.zeros_like(vectors)
    return energy.detach(), grads.detach()


def _frames(data: AtomicDataDict.Type) -> List[Tuple[Tuple[int, int], ...]]:
    """``((first atom, end), (first edge, end), (first frame, end))`` of each frame of a batch
    (one segment for the whole input if its edges are not grouped by frame)."""
    num_atoms = data[AtomicDataDict.POSITIONS_KEY].size(0)
    edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
    num_frames = AtomicDataDict.num_frames(data)
    whole = [((0, num_atoms), (0, edge_index.size(1)), (0, num_frames))]
    if AtomicDataDict.BATCH_KEY not in data:
        return whole
    num_nodes = data[AtomicDataDict.NUM_NODES_KEY].view(-1)
    edge_frames = data[AtomicDataDict.BATCH_KEY][edge_index[0]]
    if edge_frames.numel() > 1 and not bool((edge_frames[1:] >= edge_frames[:-1]).all()):
        return whole
    num_edges = torch.bincount(edge_frames, minlength=num_nodes.numel())
    atom_ends = torch.cumsum(num_nodes, 0).tolist()
    edge_ends = torch.cumsum(num_edges, 0).tolist()
    atom_starts, edge_starts = [0] + atom_ends[:-1], [0] + edge_ends[:-1]
    return [
        ((a0, a1), (e0, e1), (frame, frame + 1))
        for frame, (a0, a1, e0, e1) in enumerate(
            zip(atom_starts, atom_ends, edge_starts, edge_ends)
        )
    ]


def _frame_hash(
    data: AtomicDataDict.Type,
    atoms: Tuple[int, int],
    edges: Tuple[int, int],
    frames: Tuple[int, int],
) -> bytes:
    """Hash of everything a frame's expert outputs depend on."""
    digest = hashlib.blake2b(digest_size=20)
    edge_index = data[AtomicDataDict.EDGE_INDEX_KEY][:, edges[0] : edges[1]] - atoms[0]
    fields: List[Optional[torch.Tensor]] = [
        data[AtomicDataDict.POSITIONS_KEY][atoms[0] : atoms[1]],
        data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)[atoms[0] : atoms[1]],
        edge_index,
    ]
    if AtomicDataDict.EDGE_CELL_SHIFT_KEY in data:
        fields.append(data[AtomicDataDict.EDGE_CELL_SHIFT_KEY][edges[0] : edges[1]])
    if AtomicDataDict.CELL_KEY in data:
        fields.append(data[AtomicDataDict.CELL_KEY].view(-1, 3, 3)[frames[0] : frames[1]])
    for field in fields:
        value = field.detach().cpu().contiguous()
        digest.update(str((value.dtype, tuple(value.shape))).encode())
        digest.update(value.numpy().tobytes())
    return digest.digest()
