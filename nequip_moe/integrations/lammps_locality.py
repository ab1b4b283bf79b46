"""Which LAMMPS route is exact for an MoE model, from the locality its experts declare.

``pair_style allegro`` (files compiled with ``--target pair_allegro``) and the fix-external
driver standing in for it give the model the local atoms as edge centres and the ghost atoms
as neighbours only, and sum the energies of the local atoms. That is exact only when every
expert is strictly local (an atom's energy depends on its own edges, as in Allegro). A
message-passing expert (NequIP) also needs the neighbours of its neighbours, which a ghost
atom does not have, so its energies near subdomain boundaries and periodic images would be
silently wrong.

``pair_style nequip`` (``--target pair_nequip``, ``newton off``, one MPI rank) hands the model
the whole periodic system (local atoms, cell and ``edge_cell_shift``) like the ASE calculator
does, so it is exact for any MoE; so is ``MoECalculator`` on a ``--target ase`` file.

A gated MoE's gate reads only the edges centred on each atom (its neighbours' species and
distances), so it adds no halo: a gated MoE is strictly local exactly when its experts are,
and the same check applies (its gate's radii are part of the metadata's
``per_edge_type_cutoff``, which the pair style and the driver cut the neighbour list with).

The model declares each expert's halo in its metadata ``moe_expert_halo_hops``: one integer
per expert of ``moe_expert_names``; ``0`` strictly local, ``n > 0`` message passing over ``n``
extra neighbour shells, ``-1`` unknown receptive field.
"""

from typing import Dict, Mapping, Optional

from nequip_moe.keys import EXPERT_HALO_HOPS_KEY as HALO_HOPS_KEY
from nequip_moe.keys import EXPERT_NAMES_KEY
from nequip_moe.integrations.model_files import compiled_input_fields, is_pair_allegro_target
EXACT_ROUTES = (
    "`nequip-moe deploy --targets pair_nequip` (pair_style nequip: newton off, one MPI rank; "
    "or the fix-external driver on that file), or the ASE calculator "
    "`nequip_moe.integrations.ase.MoECalculator` on a `--target ase` file"
)
RECOMPILE = (
    "compile it with `nequip-compile MODEL OUT.nequip.pt2 --mode aotinductor "
    "--target pair_allegro` (strictly local experts) or `--target pair_nequip` (any MoE)"
)


def expert_halo_hops(metadata: Mapping[str, str]) -> Optional[Dict[str, int]]:
    """Halo (neighbour shells) of each expert, or ``None`` if the model does not declare it.

    Args:
        metadata: model metadata (string values)
    """
    if HALO_HOPS_KEY not in metadata:
        return None
    names = str(metadata[EXPERT_NAMES_KEY]).split()
    hops = str(metadata[HALO_HOPS_KEY]).split()
    if len(hops) != len(names):
        raise ValueError(
            f"model metadata `{HALO_HOPS_KEY}` ({' '.join(hops)}) does not give one value per "
            f"expert of `{EXPERT_NAMES_KEY}` ({' '.join(names)})"
        )
    return {name: int(h) for name, h in zip(names, hops)}


def check_strictly_local(metadata: Mapping[str, str], model: str, route: str) -> None:
    """Refuse ``route`` (a local-centres route: ``pair_style allegro``, the driver) unless every
    expert of the MoE is strictly local; models that are not MoEs pass.

    Args:
        metadata: model metadata (string values)
        model: the model's file name, for the message
        route: what is being refused, for the message
    """
    if EXPERT_NAMES_KEY not in metadata:
        return
    hops = expert_halo_hops(metadata)
    if hops is None:
        raise ValueError(
            f"`{model}` does not declare its experts' locality (metadata `{HALO_HOPS_KEY}`; "
            f"the model was built by an older nequip-moe), so {route} cannot be shown exact: "
            "rebuild it with this nequip-moe (retrain, or `nequip-package build` the "
            f"checkpoint again), or use {EXACT_ROUTES}"
        )
    nonlocal_experts = [
        f"`{name}` ({'unknown receptive field' if h < 0 else f'message passing, {h}-shell halo'})"
        for name, h in hops.items()
        if h != 0
    ]
    if nonlocal_experts:
        raise ValueError(
            f"`{model}`: {route} is exact only for strictly local experts, and expert(s) "
            f"{', '.join(nonlocal_experts)} are not: their energies need neighbours of ghost "
            f"atoms, which that route does not have. Use {EXACT_ROUTES}"
        )


def is_strictly_local(metadata: Mapping[str, str]) -> bool:
    """True if the model is not an MoE or declares every expert strictly local."""
    if EXPERT_NAMES_KEY not in metadata:
        return True
    hops = expert_halo_hops(metadata)
    return hops is not None and all(h == 0 for h in hops.values())


def exact_pair_style(metadata: Mapping[str, str]) -> str:
    """``allegro`` if every expert is strictly local (any number of MPI ranks), else ``nequip``."""
    return "allegro" if is_strictly_local(metadata) else "nequip"


def compiled_pair_style(metadata: Mapping[str, str], model: str) -> str:
    """``allegro`` or ``nequip``: the LAMMPS pair style a compiled file's target is for.

    Args:
        metadata: metadata of a ``.nequip.pt2`` file (string values)
        model: the model's file name, for the message
    """
    from nequip.data import AtomicDataDict
    from nequip.utils.aoti_metadata import NEQUIP_AOTI_OUTPUTS_KEY

    if is_pair_allegro_target(metadata):
        return "allegro"
    outputs = str(metadata.get(NEQUIP_AOTI_OUTPUTS_KEY, "")).split()
    if AtomicDataDict.VIRIAL_KEY in outputs:
        return "nequip"
    inputs = compiled_input_fields(metadata)
    raise ValueError(
        f"`{model}` was not compiled for LAMMPS (it takes {inputs} and gives {outputs}): "
        f"{RECOMPILE}"
    )
