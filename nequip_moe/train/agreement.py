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

from nequip_moe._keys import (
    ATOM_EXPERT_KEY,
    EXPERT_ATOMIC_ENERGY_KEY,
    EXPERT_FORCES_KEY,
    EXPERT_TOTAL_ENERGY_KEY,
    SHARED_KEY,
)

# quantity name in configs -> per-expert output field
_EXPERT_FIELDS = {
    AtomicDataDict.PER_ATOM_ENERGY_KEY: EXPERT_ATOMIC_ENERGY_KEY,
    AtomicDataDict.FORCE_KEY: EXPERT_FORCES_KEY,
}


def _expert_field(data: AtomicDataDict.Type, field: str) -> torch.Tensor:
    if field not in data:
        raise KeyError(
            f"model output has no `{field}`: per-expert outputs need the per-atom `{SHARED_KEY}` "
            "field in the data (add nequip_moe.data.SharedEnvironments to the transforms) and "
            "an MoE model"
        )
    return data[field]


def _shared_mask(data: AtomicDataDict.Type) -> torch.Tensor:
    return data[SHARED_KEY].view(-1) != 0


class ExpertAgreement(BaseModifier):
    """Pairs of expert predictions on shared atoms, whose mean squared (or absolute) difference is
    the agreement term.

    With ``field: atomic_energy`` it compares per-atom energies; with ``field: forces`` each
    expert's whole-frame forces. Pairs are all pairs of experts, or each expert against
    ``reference``.

    Args:
        field (str): ``atomic_energy`` or ``forces``
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
        shared = _shared_mask(preds)
        values = values[shared]
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
        # frames whose atoms are all shared
        if AtomicDataDict.BATCH_KEY in preds:
            batch = preds[AtomicDataDict.BATCH_KEY]
            num_atoms = preds[AtomicDataDict.NUM_NODES_KEY].view(-1)
        else:
            batch = torch.zeros_like(shared, dtype=torch.long)
            num_atoms = torch.tensor([shared.numel()], device=shared.device)
        shared_count = torch.zeros_like(num_atoms).index_add(0, batch, shared.to(num_atoms.dtype))
        whole = shared_count == num_atoms
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
