"""``SharedEnvironments``: the data transform marking where co-trained experts must agree."""

import pathlib
from typing import Optional, Union

import torch
from ase import Atoms
from ase.data import atomic_numbers

from nequip.data import AtomicDataDict

from nequip_moe.keys import SHARED_KEY
from nequip_moe.data.neighbours import host_shell
from nequip_moe.nn.coordination import neighbour_count


class SharedEnvironments(torch.nn.Module):
    """Marks the *shared* atoms (per-atom ``shared`` field), where co-trained experts must agree.

    An atom is shared if the data says so (a per-atom ``shared`` array read with
    ``include_keys: [shared]``), if ``all_atoms`` is set (e.g. for a dataset of bulk frames),
    or if it passes the bulk-like rule: an atom of the ``host`` element with at least
    ``min_coordination`` host neighbours within ``coordination_cutoff`` and no atom of another
    species within ``foreign_radius``. Use it before ``NeighborListTransform``.

    Without ``coordination_cutoff`` or ``min_coordination`` both come from the bulk
    coordination shell of the host's crystal (``nequip_moe.data.neighbours.host_shell``: fcc
    and hcp 12 nearest neighbours, bcc 8 + 6, diamond 4): a bulk structure file ``bulk``,
    else ``crystal`` and ``nearest_neighbour``, else the host's reference crystal.

    Args:
        from_data (bool): keep the data's own ``shared`` marks where present (default ``True``)
        all_atoms (bool): mark every atom (default ``False``)
        host (str): host element of the bulk-like rule, e.g. ``Fe`` (default ``None``: no rule)
        coordination_cutoff (float): neighbour distance of the coordination count (default: the host crystal's)
        min_coordination (int): bulk coordination (default: the host crystal's)
        foreign_radius (float): no atom of another species within this distance, e.g. the experts' cutoff (default ``4.5``)
        crystal (str): the host's crystal, ``fcc``, ``bcc``, ``hcp``, ``diamond`` or ``sc`` (default: its reference crystal)
        nearest_neighbour (float): the host's nearest-neighbour distance in Å (default: the reference crystal's)
        bulk (str): a bulk structure file of the host crystal (default ``None``)
    """

    def __init__(
        self,
        from_data: bool = True,
        all_atoms: bool = False,
        host: Optional[str] = None,
        coordination_cutoff: Optional[float] = None,
        min_coordination: Optional[int] = None,
        foreign_radius: float = 4.5,
        crystal: Optional[str] = None,
        nearest_neighbour: Optional[float] = None,
        bulk: Optional[Union[str, pathlib.Path, Atoms]] = None,
    ):
        super().__init__()
        if host is not None and host not in atomic_numbers:
            raise ValueError(f"SharedEnvironments host `{host}` is not an element")
        self.from_data = from_data
        self.all_atoms = all_atoms
        self.host_number = None if host is None else atomic_numbers[host]
        if host is not None and (coordination_cutoff is None or min_coordination is None):
            shell = host_shell(host, bulk, crystal, nearest_neighbour)
            coordination_cutoff = shell.cutoff if coordination_cutoff is None else coordination_cutoff
            min_coordination = shell.coordination if min_coordination is None else min_coordination
        self.coordination_cutoff = None if host is None else float(coordination_cutoff)
        self.min_coordination = None if host is None else int(min_coordination)
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
        edge_index = graph[AtomicDataDict.EDGE_INDEX_KEY]
        length = graph[AtomicDataDict.EDGE_LENGTH_KEY]
        is_host = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1) == self.host_number
        num_atoms = is_host.numel()
        coordination = neighbour_count(
            edge_index, length, num_atoms, self.coordination_cutoff, neighbour_mask=is_host
        )
        foreign = neighbour_count(
            edge_index, length, num_atoms, self.foreign_radius, neighbour_mask=~is_host
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
