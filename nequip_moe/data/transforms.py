"""Data transforms of nequip-moe."""

from typing import Dict, Optional, Sequence, Union

import torch

from nequip.data import AtomicDataDict

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.keys import EXPERT_KEY


class CompositeTypeMapper(torch.nn.Module):
    """Maps (chemical species, expert label) of every atom to the model's composite ``atom_types``.

    Use it in MoE configs in place of ``ChemicalSpeciesToAtomTypeMapper``. The per-atom expert
    label is the integer field ``expert`` (an extxyz per-atom array read with
    ``include_keys: [expert]``); label ``k`` means ``experts[k]``. A frame without labels is an
    error, unless ``default_expert`` names the expert of its atoms: nequip's data modules drop
    per-atom arrays missing from ``include_keys``, and guessing an expert would train it on the
    other experts' atoms without a word. The lookup and its errors are the composite-type
    table's (``CompositeTypeTable.type_index``).

    Args:
        type_names (Sequence[str]): the model's composite type names
        composite_types (Dict[str, Dict[str, str]]): composite type -> ``{element, expert}``, as in the model config
        experts (Sequence[str]): expert names in label order, as the keys of the model's ``experts``
        default_expert (str or int): expert (name or label) of every atom of a frame without labels (default ``None``: such a frame is an error)
    """

    def __init__(
        self,
        type_names: Sequence[str],
        composite_types: Dict[str, Dict[str, str]],
        experts: Sequence[str],
        default_expert: Optional[Union[str, int]] = None,
    ):
        super().__init__()
        self.table = CompositeTypeTable.from_config(type_names, composite_types, experts)
        self.default_expert = (
            None if default_expert is None else self.table.expert_label(default_expert)
        )
        self.register_buffer("lookup_table", torch.as_tensor(self.table.type_lookup()))

    @classmethod
    def from_table(
        cls, table: CompositeTypeTable, default_expert: Optional[Union[str, int]] = None
    ) -> "CompositeTypeMapper":
        """The mapper of a model's composite-type table (e.g. read from its metadata)."""
        return cls(table.type_names, table.to_config(), table.expert_names, default_expert)

    def _missing_labels_message(self) -> str:
        return (
            f"a frame without per-atom `{EXPERT_KEY}` labels reached CompositeTypeMapper: "
            "nequip's data modules drop per-atom arrays they are not asked to read, so add "
            f"`include_keys: [{EXPERT_KEY}]` to the data module (e.g. ASEDataModule) and give "
            f"every frame an `{EXPERT_KEY}` array (nequip-moe assign writes one); to put every "
            "atom of unlabelled frames on one expert instead, name it in the transform: "
            f"`default_expert: NAME` (one of {', '.join(self.table.expert_names)})"
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        if AtomicDataDict.ATOM_TYPE_KEY in data:
            raise RuntimeError(f"Data already contains {AtomicDataDict.ATOM_TYPE_KEY}")
        numbers = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1)
        if EXPERT_KEY in data:
            labels = data[EXPERT_KEY]
        elif self.default_expert is None:
            raise ValueError(self._missing_labels_message())
        else:
            labels = torch.full_like(numbers, self.default_expert)
        num_elements, num_experts = self.lookup_table.shape
        flat = labels.reshape(-1).to(torch.long)
        valid = (
            not labels.is_floating_point()
            and flat.numel() == numbers.numel()
            and bool(((flat >= 0) & (flat < num_experts)).all())
            and bool(((numbers > 0) & (numbers < num_elements)).all())
        )
        if valid:
            atom_types = self.lookup_table[numbers, flat]
            valid = bool((atom_types >= 0).all())
        if not valid:
            # the table's lookup raises, naming the problem (labels, species, missing types)
            atom_types = torch.as_tensor(
                self.table.type_index(numbers.cpu().numpy(), labels.cpu().numpy()),
                device=numbers.device,
            )
        data[AtomicDataDict.ATOM_TYPE_KEY] = atom_types
        return data
