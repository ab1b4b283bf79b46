"""Data transforms of nequip-moe."""

from typing import Dict, Optional, Sequence, Union

import torch
import ase.data

from nequip.data import AtomicDataDict

from nequip_moe._composite import CompositeTypeTable
from nequip_moe._keys import EXPERT_KEY, SHARED_KEY


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


class SharedEnvironments(torch.nn.Module):
    """Marks the *shared* atoms (per-atom ``shared`` field), where co-trained experts must agree.

    An atom is shared if the data says so (a per-atom ``shared`` array read with
    ``include_keys: [shared]``), if ``all_atoms`` is set (e.g. for a dataset of bulk frames),
    or if it passes the bulk-like rule: an atom of the ``host`` element with at least
    ``min_coordination`` host neighbours within ``coordination_cutoff`` and no atom of another
    species within ``foreign_radius``. Use it before ``NeighborListTransform``.

    Args:
        from_data (bool): keep the data's own ``shared`` marks where present (default ``True``)
        all_atoms (bool): mark every atom (default ``False``)
        host (str): host element of the bulk-like rule, e.g. ``Pt`` (default ``None``: no rule)
        coordination_cutoff (float): neighbour distance for the coordination count (default ``3.2``)
        min_coordination (int): bulk coordination, e.g. ``12`` for fcc (default ``12``)
        foreign_radius (float): no atom of another species within this distance (default ``4.5``)
    """

    def __init__(
        self,
        from_data: bool = True,
        all_atoms: bool = False,
        host: Optional[str] = None,
        coordination_cutoff: float = 3.2,
        min_coordination: int = 12,
        foreign_radius: float = 4.5,
    ):
        super().__init__()
        if host is not None and host not in ase.data.atomic_numbers:
            raise ValueError(f"SharedEnvironments host `{host}` is not an element")
        self.from_data = from_data
        self.all_atoms = all_atoms
        self.host_number = None if host is None else ase.data.atomic_numbers[host]
        self.coordination_cutoff = float(coordination_cutoff)
        self.min_coordination = int(min_coordination)
        self.foreign_radius = float(foreign_radius)

    def bulk_like(self, data: AtomicDataDict.Type) -> torch.Tensor:
        """Boolean mask of the atoms passing the bulk-like rule."""
        from nequip.data import compute_neighborlist_
        from nequip.nn.utils import with_edge_vectors_

        keys = [
            AtomicDataDict.POSITIONS_KEY,
            AtomicDataDict.CELL_KEY,
            AtomicDataDict.PBC_KEY,
        ]
        graph = {k: data[k] for k in keys if k in data}
        graph = compute_neighborlist_(
            graph, r_max=max(self.coordination_cutoff, self.foreign_radius)
        )
        graph = with_edge_vectors_(graph, with_lengths=True)
        centre, neighbour = graph[AtomicDataDict.EDGE_INDEX_KEY]
        length = graph[AtomicDataDict.EDGE_LENGTH_KEY].view(-1)
        is_host = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1) == self.host_number
        num_atoms = is_host.numel()
        host_bond = is_host[neighbour] & (length < self.coordination_cutoff)
        coordination = torch.zeros(num_atoms, dtype=torch.long).index_add(
            0, centre, host_bond.long()
        )
        foreign = torch.zeros(num_atoms, dtype=torch.long).index_add(
            0, centre, (~is_host[neighbour] & (length < self.foreign_radius)).long()
        )
        return is_host & (coordination >= self.min_coordination) & (foreign == 0)

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        num_atoms = data[AtomicDataDict.POSITIONS_KEY].size(0)
        shared = torch.full((num_atoms,), self.all_atoms, dtype=torch.bool)
        if self.from_data and SHARED_KEY in data:
            shared = shared | (data[SHARED_KEY].view(-1) != 0)
        if self.host_number is not None:
            shared = shared | self.bulk_like(data)
        data[SHARED_KEY] = shared.to(torch.long).view(-1, 1)
        return data
