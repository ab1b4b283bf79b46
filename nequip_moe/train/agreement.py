"""Co-training metrics: agreement between experts on shared environments, and per-expert errors.

These are metric *fields* for nequip's ``MetricsManager`` (usable in the ``extra_metrics`` of
``EnergyForceStressLoss`` and friends, and in validation/test metrics). They read the
per-expert outputs an MoE model produces when its input carries the per-atom ``shared`` mark
(see :class:`~nequip_moe.nn.MixtureOfExpertsEnergy`). Pair them with :class:`EmptySafeMSE` or
:class:`EmptySafeMAE`, which give a zero term (not NaN) for a batch without shared atoms.
"""

from typing import List, Optional, Sequence, Tuple

import torch

from nequip.data import AtomicDataDict
from nequip.data.modifier import BaseModifier
from nequip.train.metrics import MeanAbsoluteError, MeanSquaredError

from nequip_moe.keys import (
    ATOM_EXPERT_KEY,
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_EDGE_ENERGY_GRADIENT_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
    SHARED_KEY,
)

EDGE_ENERGY_GRADIENT = "edge_energy_gradient"
# quantity name in configs -> per-expert output field
_EXPERT_FIELDS = {
    AtomicDataDict.PER_ATOM_ENERGY_KEY: EXPERT_ATOMIC_ENERGY_KEY,
    AtomicDataDict.FORCE_KEY: EXPERT_FORCES_KEY,
    AtomicDataDict.TOTAL_ENERGY_KEY: EXPERT_TOTAL_ENERGY_KEY,
    EDGE_ENERGY_GRADIENT: EXPERT_EDGE_ENERGY_GRADIENT_KEY,
}


def _expert_field(data: AtomicDataDict.Type, field: str) -> torch.Tensor:
    if field not in data:
        option = ""
        if field == EXPERT_EDGE_ENERGY_GRADIENT_KEY and SHARED_KEY in data:
            option = " built with `cotraining_edge_gradients: true` (strictly local experts)"
        raise KeyError(
            f"model output has no `{field}`: per-expert outputs need the per-atom `{SHARED_KEY}` "
            "field in the data (add nequip_moe.data.SharedEnvironments to the transforms) and "
            f"an MoE model{option}"
        )
    return data[field]


def _shared_mask(data: AtomicDataDict.Type) -> torch.Tensor:
    return data[SHARED_KEY].view(-1) != 0


def _whole_shared_frames(data: AtomicDataDict.Type) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boolean mask ``[num_frames]`` of the frames whose atoms are all shared, and the number
    of atoms of every frame."""
    shared = _shared_mask(data)
    if AtomicDataDict.BATCH_KEY in data:
        batch = data[AtomicDataDict.BATCH_KEY]
        num_atoms = data[AtomicDataDict.NUM_NODES_KEY].view(-1)
    else:
        batch = torch.zeros_like(shared, dtype=torch.long)
        num_atoms = torch.tensor([shared.numel()], device=shared.device)
    shared_count = torch.zeros_like(num_atoms).index_add(0, batch, shared.to(num_atoms.dtype))
    return shared_count == num_atoms, num_atoms


class ExpertAgreement(BaseModifier):
    """Pairs of expert predictions on shared atoms (or their edges), whose mean squared (or
    absolute) difference is the agreement term.

    With ``field: atomic_energy`` it compares per-atom energies; with ``field: forces`` each
    expert's whole-frame forces; with ``field: total_energy`` each expert's frame energy per
    atom, on the frames whose atoms are all shared (e.g. strained bulk frames): the energy that
    an equation of state is fitted to, without asking the experts to split it into the same
    per-atom energies (experts with different cutoffs cannot). With
    ``field: edge_energy_gradient`` (MoEModel ``cotraining_edge_gradients: true``, strictly
    local experts) it compares, on every edge ``e`` centred on a shared atom, the gradient
    ``g_e = d e_centre(e) / d r_e`` of the centre's energy with respect to the edge vector: if
    the experts agree on it, an MoE split of those environments between them has no interface
    force for any cut (giving region ``B`` to expert ``b`` instead of ``a`` adds the force
    ``dF_i = -sum_{e centred in B} (g_e^b - g_e^a) . d r_e / d r_i``), and their whole-frame
    forces and stress agree (forces, frame energies and single cuts only constrain sums of
    these). Pairs are all pairs of experts, or each expert against ``reference``. With a
    frozen expert as ``reference`` the term distils it into the others on the shared atoms.

    Args:
        field (str): ``atomic_energy``, ``forces``, ``total_energy`` or ``edge_energy_gradient``
        experts (Sequence[str]): expert names in label order (the keys of the model's ``experts``)
        reference (str): compare every other expert to this one instead of all pairs (default ``None``)
    """

    def __init__(
        self,
        field: str,
        experts: Sequence[str],
        reference: Optional[str] = None,
    ) -> None:
        if field not in _EXPERT_FIELDS:
            raise ValueError(
                f"ExpertAgreement field must be one of {list(_EXPERT_FIELDS)}, got `{field}`"
            )
        super().__init__(_EXPERT_FIELDS[field])
        self.quantity = field
        self.experts = [str(e) for e in experts]
        if len(self.experts) < 2:
            raise ValueError(
                f"agreement needs at least two experts, but only {self.experts} are given"
            )
        if reference is not None and reference not in self.experts:
            raise ValueError(f"reference expert `{reference}` is not one of {self.experts}")
        num = len(self.experts)
        if reference is None:
            self.pairs = [(a, b) for a in range(num) for b in range(a + 1, num)]
        else:
            ref = self.experts.index(reference)
            self.pairs = [(k, ref) for k in range(num) if k != ref]

    def __call__(
        self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        values = _expert_field(preds, self.field)
        if values.size(1) != len(self.experts):
            raise ValueError(
                f"the model has {values.size(1)} experts but the metric names {self.experts}"
            )
        if self.quantity == AtomicDataDict.TOTAL_ENERGY_KEY:
            # per-atom frame energies of the frames whose atoms are all shared
            whole, num_atoms = _whole_shared_frames(preds)
            values = (values / num_atoms.to(values.dtype).unsqueeze(-1))[whole]
        elif self.quantity == EDGE_ENERGY_GRADIENT:
            centres = preds[AtomicDataDict.EDGE_INDEX_KEY][0]
            values = values[torch.index_select(_shared_mask(preds), 0, centres)]
        else:
            values = values[_shared_mask(preds)]
        first = torch.cat([values[:, a] for a, _ in self.pairs], dim=0)
        second = torch.cat([values[:, b] for _, b in self.pairs], dim=0)
        return first, second

    def __str__(self) -> str:
        return f"{self.quantity}_agreement"


class ExpertError(BaseModifier):
    """One expert's prediction against the reference data, the expert evaluated alone on the frame.

    ``field: forces`` compares the expert's whole-frame forces with the reference forces on the
    shared atoms (``atoms: shared``) or on the shared atoms it owns (``atoms: own``).
    ``field: total_energy`` compares the expert's per-atom frame energy on frames whose atoms
    are all shared (e.g. bulk frames); that is the per-expert data term on whole frames.

    Args:
        field (str): ``forces`` or ``total_energy``
        experts (Sequence[str]): expert names in label order
        expert (str): the expert whose error this is
        atoms (str): ``shared`` or ``own`` (forces only; default ``shared``)
    """

    def __init__(
        self, field: str, experts: Sequence[str], expert: str, atoms: str = "shared"
    ) -> None:
        fields = {
            AtomicDataDict.FORCE_KEY: EXPERT_FORCES_KEY,
            AtomicDataDict.TOTAL_ENERGY_KEY: EXPERT_TOTAL_ENERGY_KEY,
        }
        if field not in fields:
            raise ValueError(f"ExpertError field must be one of {list(fields)}, got `{field}`")
        if atoms not in ("shared", "own"):
            raise ValueError(f"ExpertError atoms must be `shared` or `own`, got `{atoms}`")
        super().__init__(fields[field])
        self.quantity = field
        self.experts: List[str] = [str(e) for e in experts]
        if expert not in self.experts:
            raise ValueError(f"expert `{expert}` is not one of {self.experts}")
        self.expert = expert
        self.expert_idx = self.experts.index(expert)
        self.atoms = atoms

    def __call__(
        self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        values = _expert_field(preds, self.field)[:, self.expert_idx]
        shared = _shared_mask(preds)
        if self.quantity == AtomicDataDict.FORCE_KEY:
            mask = shared
            if self.atoms == "own":
                mask = mask & (preds[ATOM_EXPERT_KEY].view(-1) == self.expert_idx)
            return values[mask], target[AtomicDataDict.FORCE_KEY][mask]
        whole, num_atoms = _whole_shared_frames(preds)
        per_atom = values / num_atoms.to(values.dtype)
        reference = target[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1) / num_atoms.to(values.dtype)
        return per_atom[whole], reference[whole]

    def __str__(self) -> str:
        return f"{self.expert}_{self.quantity}"


class _EmptyIsZero:
    """Mixin for mean metrics: a batch or epoch with nothing to compare contributes zero."""

    def compute(self) -> torch.Tensor:
        count = self.count.clamp(min=1)
        return torch.where(self.count > 0, self.sum / count, torch.zeros_like(self.sum / count))


class EmptySafeMSE(_EmptyIsZero, MeanSquaredError):
    """Mean squared error that is zero (not NaN) when there is nothing to compare, e.g. an
    agreement or per-expert data term on a batch without shared atoms."""


class EmptySafeMAE(_EmptyIsZero, MeanAbsoluteError):
    """Mean absolute error that is zero (not NaN) when there is nothing to compare."""


class InterfaceForceAgreement(BaseModifier):
    """The artificial force of an expert interface on frames whose atoms are all shared.

    Each wholly shared frame (e.g. a strained or rattled bulk cell) is cut in two by the plane
    at fractional coordinate ``0.5`` along the cell axis ``axis``: the atoms below it are given
    to the ``reference`` expert, those above it to the other expert, as an MoE with that split
    would. On a frame the reference describes alone, the split changes every atom's force by

        dF_i = -d/dr_i sum_{j above} (e_j^other - e_j^reference),

    the interface force: zero by symmetry for a perfect crystal split between two experts
    that agree, and otherwise the stress the interface puts on the structure. This modifier
    gives ``(dF, 0)`` for every atom of those frames, so that its mean squared error is the
    mean squared interface force; as a loss term it makes the experts' per-atom energies
    respond to displacements the same way near an interface, which neither per-atom energy nor
    whole-frame force agreement asks for. With more than two experts, every other expert is
    cut against ``reference``.

    For training losses only: the interface force is a derivative of the per-expert energies,
    which needs their autograd graph with respect to positions (kept in training); elsewhere
    the term is empty (zero with :class:`EmptySafeMSE`).

    Args:
        experts (Sequence[str]): expert names in label order
        reference (str): the expert below the cut, e.g. a frozen high-fidelity expert
            (default: the first expert)
        axis (int): cell axis the cut is normal to, ``0``, ``1`` or ``2`` (default ``0``)
        constant_reference (bool): treat the reference expert's energies as constants (no
            second-order graph through it): exact and cheaper when the reference is frozen
            (MoEModel ``frozen_experts``) (default ``False``)
        random_cut (bool): draw, for every frame at every call, the cut's axis and a shift of
            its two planes (uniform over the cell; torch's seeded generator), so that training
            sees interfaces at every position relative to the atomic layers; ``axis`` is then
            unused (default ``False``: the fixed planes ``0`` and ``0.5`` along ``axis``)
        seed (int): seed of the random cuts' own generator (default ``0``)
        min_width (float): leave out frames whose cell is thinner than this along the cut
            axis (the spacing of the cell's planes normal to it, in length units); at twice
            the cutoff every atom near a cut sees its own expert's bulk on the far side, as at
            a real interface, where in a thinner cell it sees the other cut too (default
            ``0.0``: every wholly shared frame)
        own_expert_reference (bool): measure the interface force against each atom's own
            expert alone (the reference below the cut, the other expert above it) instead of
            against the reference everywhere: ``dF_i`` minus, above the cut, the experts'
            whole-frame force difference. The term is then the interface's own force, zero
            away from the cut, and leaves the bulk force disagreement to ``force_agreement``;
            on a perfect crystal the two are the same (default ``False``)
    """

    def __init__(
        self,
        experts: Sequence[str],
        reference: Optional[str] = None,
        axis: int = 0,
        constant_reference: bool = False,
        random_cut: bool = False,
        seed: int = 0,
        min_width: float = 0.0,
        own_expert_reference: bool = False,
    ) -> None:
        super().__init__(EXPERT_ATOMIC_ENERGY_KEY)
        self.experts = [str(e) for e in experts]
        if len(self.experts) < 2:
            raise ValueError(
                f"an interface needs at least two experts, but only {self.experts} are given"
            )
        reference = self.experts[0] if reference is None else reference
        if reference not in self.experts:
            raise ValueError(f"reference expert `{reference}` is not one of {self.experts}")
        if axis not in (0, 1, 2):
            raise ValueError(f"InterfaceForceAgreement axis must be 0, 1 or 2, got {axis}")
        self.reference = self.experts.index(reference)
        self.axis = int(axis)
        self.constant_reference = bool(constant_reference)
        self.random_cut = bool(random_cut)
        self.seed = int(seed)
        self.min_width = float(min_width)
        self.own_expert_reference = bool(own_expert_reference)
        self._generator: Optional[torch.Generator] = None

    def _cuts(self, num_frames: int, pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each frame's cut axis and the shift of its planes (fractional)."""
        if not self.random_cut:
            axis = torch.full((num_frames,), self.axis, dtype=torch.long)
            shift = torch.zeros(num_frames, dtype=pos.dtype)
        else:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(self.seed)
            axis = torch.randint(0, 3, (num_frames,), generator=self._generator)
            shift = torch.rand(num_frames, dtype=pos.dtype, generator=self._generator)
        return axis.to(pos.device), shift.to(pos.device)

    def __call__(
        self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        energies = _expert_field(preds, self.field)
        if energies.size(1) != len(self.experts):
            raise ValueError(
                f"the model has {energies.size(1)} experts but the metric names {self.experts}"
            )
        pos = preds[AtomicDataDict.POSITIONS_KEY]
        whole, _ = _whole_shared_frames(preds)
        if AtomicDataDict.BATCH_KEY in preds:
            batch = preds[AtomicDataDict.BATCH_KEY]
        else:
            batch = torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
        in_frame = whole[batch]
        empty = pos.new_zeros((0, 3))
        if (
            not torch.is_grad_enabled()
            or not energies.requires_grad
            or not pos.requires_grad
            or AtomicDataDict.CELL_KEY not in preds
            or not bool(in_frame.any())
        ):
            return empty, empty
        frame_cells = preds[AtomicDataDict.CELL_KEY].view(-1, 3, 3)
        axis, shift = self._cuts(whole.numel(), pos)
        if self.min_width > 0.0:
            # plane spacing normal to each cell axis: 1 / |reciprocal vector|
            widths = 1.0 / torch.linalg.inv(frame_cells.detach()).norm(dim=1)
            whole = whole & (widths.gather(1, axis.unsqueeze(-1)).squeeze(-1) >= self.min_width)
            in_frame = whole[batch]
            if not bool(in_frame.any()):
                return empty, empty
        fractional = torch.linalg.solve(
            frame_cells[batch].transpose(-1, -2), pos.detach().unsqueeze(-1)
        ).squeeze(-1)
        along = fractional.gather(1, axis[batch].unsqueeze(-1)).squeeze(-1)
        above = (in_frame & (torch.remainder(along - shift[batch], 1.0) >= 0.5))
        above = above.to(energies.dtype)
        reference = energies[:, self.reference]
        # -d/dr sum_j w_j e_j: per-atom weights w are `above` (the cut) and, for the own-expert
        # reference, `in_frame` (the other expert alone on the whole frame)
        weights = [above]
        if self.own_expert_reference:
            weights.append(in_frame.to(energies.dtype))
        forces = []
        for k in range(len(self.experts)):
            if k == self.reference:
                continue
            differences = []
            for w in weights:
                (grad_other,) = torch.autograd.grad(
                    [(w * energies[:, k]).sum()], [pos], create_graph=True, retain_graph=True
                )
                (grad_reference,) = torch.autograd.grad(
                    [(w * reference).sum()],
                    [pos],
                    create_graph=not self.constant_reference,
                    retain_graph=True,
                )
                if self.constant_reference:
                    grad_reference = grad_reference.detach()
                differences.append(grad_reference - grad_other)
            split = differences[0]
            if self.own_expert_reference:
                # above the cut the atom's own expert is the other one: take its force away
                split = split - above.unsqueeze(-1) * differences[1]
            forces.append(split[in_frame])
        delta = torch.cat(forces, dim=0)
        return delta, torch.zeros_like(delta)

    def __str__(self) -> str:
        return "interface_force_agreement"
