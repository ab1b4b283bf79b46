"""``MoEModel``: a spatial Mixture of Experts built from ordinary nequip model builders."""

import copy
import os
import warnings
from typing import Dict, List, Optional, Sequence, Union

import torch
from hydra.utils import get_method

from nequip.data import AtomicDataDict
from nequip.model import model_builder
from nequip.model.saved_models.load_utils import load_saved_model
from nequip.model.utils import _EAGER_MODEL_KEY, fresh_model_builder_context
from nequip.nn import graph_model as graph_model_keys
from nequip.nn import SequentialGraphNetwork, AtomwiseReduce, ForceStressOutput
from nequip.nn.convnetlayer import ConvNetLayer
from nequip.nn.embedding.utils import cutoff_partialdict_to_tensor, cutoff_str_to_fulldict
from nequip.train.lightning import _SOLE_MODEL_KEY
from allegro.nn import Allegro_Module

from nequip_moe._composite import CompositeTypeTable
from nequip_moe.nn import MixtureOfExpertsEnergy, DenseCompileGraphModel, ALL_EDGES

# arguments the MoE builder owns and hands down; an expert config must not set them
_OUTER_ONLY_ARGS = ("seed", "model_dtype", "compile_mode", "do_derivatives")


@model_builder(compile_wrapper_class=DenseCompileGraphModel)
def MoEModel(
    r_max: float,
    type_names: Sequence[str],
    composite_types: Dict[str, Dict[str, str]],
    experts: Dict[str, Dict],
    per_edge_type_cutoff: Optional[Dict[str, Union[float, Dict[str, float]]]] = None,
    dense: bool = False,
    frozen_experts: Sequence[str] = (),
    do_derivatives: bool = True,
):
    """Spatial Mixture-of-Experts potential: each atom's energy comes from its own expert.

    The model's ``type_names`` are composite types, each meaning an (element, expert) pair
    given by ``composite_types``. Every expert is an ordinary nequip model builder config,
    built on the element names (energy only); forces, virial and stress come from one
    autograd pass over the summed energy, so dynamics conserve energy exactly.

    Args:
        seed (int): seed for reproducibility
        model_dtype (str): ``float32`` or ``float64``
        r_max (float): neighbour-list cutoff, at least every expert's ``r_max``; experts without ``r_max`` inherit it
        type_names (Sequence[str]): composite type names, e.g. ``[C, O, Pt, Pt_small]``
        composite_types (Dict[str, Dict[str, str]]): for every composite type, ``{element: ..., expert: ...}``
        experts (Dict[str, Dict]): expert name -> model builder config with ``_target_`` (e.g. ``allegro.model.AllegroModel``); the order of this mapping is the expert-label order; expert configs may set ``type_names`` (element names covering all elements, in any order), ``r_max`` and ``per_edge_type_cutoff`` (over element names)
        per_edge_type_cutoff (Dict): optional neighbour-list cutoffs over composite type names, for the metadata read by LAMMPS; must be at least what the experts use (default ``None``)
        dense (bool): every expert evaluates every edge (masked per atom) instead of only its own; numerically identical and compile-friendly, used automatically under ``compile_mode: compile`` (default ``False``)
        frozen_experts (Sequence[str]): experts whose weights are not trained, e.g. a pretrained high-fidelity expert (default none)
        do_derivatives (bool): compute forces, virial and stress by autograd (default ``True``)
    """
    type_names = [str(t) for t in type_names]
    if len(experts) == 0:
        raise ValueError("`experts` is empty: an MoE model needs at least one expert")
    table = CompositeTypeTable.from_config(type_names, composite_types, list(experts))
    elements = table.element_names
    unused = [e for e in table.expert_names if e not in table.experts]
    if unused:
        raise ValueError(
            f"experts {unused} own no composite type; composite types: {table.describe()}"
        )

    expert_modules, expert_type_maps, expert_cutoffs, halo_hops = {}, [], [], []
    expert_r_max = []
    for name, expert_config in experts.items():
        module, expert_type_names, cutoff_matrix, this_r_max = _build_expert(
            name, expert_config, elements, float(r_max)
        )
        # composite type -> expert's own type index
        type_map = [expert_type_names.index(el) for el in table.elements]
        expert_modules[name] = module
        expert_type_maps.append(type_map)
        expert_cutoffs.append(
            [[cutoff_matrix[ta][tb] for tb in type_map] for ta in type_map]
        )
        halo_hops.append(_halo_hops(name, module))
        expert_r_max.append(this_r_max)

    unknown_frozen = [e for e in frozen_experts if e not in experts]
    if unknown_frozen:
        raise ValueError(f"frozen_experts {unknown_frozen} are not experts {list(experts)}")
    for name in frozen_experts:
        expert_modules[name].requires_grad_(False)

    # expert k has a composite type for the element of composite type t
    pairs = set(zip(table.elements, table.experts))
    expert_known_types = [
        [(element, name) in pairs for element in table.elements] for name in experts
    ]

    if per_edge_type_cutoff is not None:
        _check_neighbor_cutoffs(
            per_edge_type_cutoff, table, float(r_max), expert_cutoffs, halo_hops
        )

    metadata = table.to_metadata()
    metadata["moe_expert_r_max"] = " ".join(str(r) for r in expert_r_max)
    moe_energy = MixtureOfExpertsEnergy(
        experts=expert_modules,
        type_experts=table.type_expert_index,
        expert_type_maps=expert_type_maps,
        expert_cutoffs=expert_cutoffs,
        expert_halo_hops=halo_hops,
        expert_known_types=expert_known_types,
        expert_names=list(experts),
        dense=dense,
        metadata=metadata,
        irreps_in={AtomicDataDict.POSITIONS_KEY: "1o"},
    )
    total_energy_sum = AtomwiseReduce(
        irreps_in=moe_energy.irreps_out,
        reduce="sum",
        field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.TOTAL_ENERGY_KEY,
    )
    energy_model = SequentialGraphNetwork(
        {"moe_energy": moe_energy, "total_energy_sum": total_energy_sum}
    )
    return ForceStressOutput(energy_model, do_derivatives)


def _build_expert(name: str, config: Dict, elements: List[str], r_max: float):
    """Build one expert's energy network on element types (or load a pretrained one).

    Returns the module, its type names, its [type, type] cutoff matrix and its r_max.
    """
    config = dict(copy.deepcopy(config))
    if "_target_" not in config:
        raise ValueError(f"expert `{name}` config has no `_target_` model builder")
    clashes = [k for k in _OUTER_ONLY_ARGS if k in config]
    if clashes:
        raise ValueError(
            f"expert `{name}` sets {clashes}: these belong to the MoE model config, not to an expert"
        )
    builder = get_method(config.pop("_target_"))
    if builder is PretrainedExpert:
        graph_model = builder(**config)
        if graph_model.model_dtype != torch.get_default_dtype():
            raise ValueError(
                f"pretrained expert `{name}` is {graph_model.model_dtype}, the MoE model is "
                f"{torch.get_default_dtype()}"
            )
        metadata = graph_model.metadata
        expert_type_names = metadata[graph_model_keys.TYPE_NAMES_KEY].split(" ")
        this_r_max = float(metadata[graph_model_keys.R_MAX_KEY])
        per_type = None
        if graph_model_keys.PER_EDGE_TYPE_CUTOFF_KEY in metadata:
            per_type = cutoff_str_to_fulldict(
                metadata[graph_model_keys.PER_EDGE_TYPE_CUTOFF_KEY], expert_type_names
            )
        module = graph_model.model
    else:
        expert_type_names = [str(t) for t in config.setdefault("type_names", elements)]
        this_r_max = float(config.setdefault("r_max", r_max))
        per_type = config.get("per_edge_type_cutoff", None)
        module = builder(**config, do_derivatives=False)

    missing = [el for el in elements if el not in expert_type_names]
    if missing:
        raise ValueError(
            f"expert `{name}` type_names {expert_type_names} do not cover the elements "
            f"{missing} of the composite types (every expert must know every element: "
            "its atoms may have neighbours of any element)"
        )
    if this_r_max > r_max:
        raise ValueError(
            f"expert `{name}` has r_max {this_r_max} > the MoE r_max {r_max}: the MoE "
            "r_max sets the neighbour list and must be the largest"
        )
    if per_type is not None:
        cutoff_matrix = cutoff_partialdict_to_tensor(
            dict(per_type), expert_type_names, this_r_max
        ).tolist()
    else:
        n = len(expert_type_names)
        cutoff_matrix = [[this_r_max] * n for _ in range(n)]

    if isinstance(module, ForceStressOutput):
        module = module.func
    if AtomicDataDict.PER_ATOM_ENERGY_KEY not in module.irreps_out:
        raise ValueError(f"expert `{name}` does not produce per-atom energies")
    return module, expert_type_names, cutoff_matrix, this_r_max


def PretrainedExpert(path: str, model_key: str = _SOLE_MODEL_KEY):
    """An expert loaded from a nequip checkpoint or ``.nequip.zip`` package.

    Use it as an expert config (``_target_: nequip_moe.model.PretrainedExpert``) to start an
    expert from a trained model, e.g. a high-fidelity model that a new small expert is
    co-trained to agree with (freeze it with the MoE option ``frozen_experts``). Its type
    names, cutoffs and weights come from the file, which must stay where it is: reloading the
    MoE checkpoint rebuilds the expert from it (as with ``nequip.model.ModelFromCheckpoint``).

    Args:
        path (str): checkpoint or package file
        model_key (str): model to take from a multi-model file (default: the sole model)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained expert file `{path}` does not exist")
    with fresh_model_builder_context():
        return load_saved_model(path, _EAGER_MODEL_KEY, model_key)


def _halo_hops(name: str, module: torch.nn.Module) -> int:
    """Neighbour shells of halo an expert needs beyond its own atoms' edges."""
    if any(isinstance(m, Allegro_Module) for m in module.modules()):
        return 0  # strictly local: an atom's energy depends only on edges centred on it
    num_conv = sum(isinstance(m, ConvNetLayer) for m in module.modules())
    if num_conv > 0:
        return num_conv - 1  # message passing: receptive field of num_layers - 1 extra shells
    warnings.warn(
        f"expert `{name}` is neither Allegro nor NequIP message passing: its receptive field "
        "is unknown, so it evaluates all edges (correct, without the routing speed-up)"
    )
    return ALL_EDGES


def _check_neighbor_cutoffs(
    per_edge_type_cutoff, table: CompositeTypeTable, r_max, expert_cutoffs, halo_hops
):
    """The neighbour list (MoE ``per_edge_type_cutoff``) must keep every edge an expert uses."""
    neighbor = cutoff_partialdict_to_tensor(
        dict(per_edge_type_cutoff), table.type_names, r_max
    ).tolist()
    owner = table.type_expert_index
    n = len(table.type_names)
    for k, cutoffs in enumerate(expert_cutoffs):
        for a in range(n):
            # local experts use only edges centred on their own atoms; halo experts use others' too
            if halo_hops[k] == 0 and owner[a] != k:
                continue
            for b in range(n):
                if neighbor[a][b] < cutoffs[a][b]:
                    raise ValueError(
                        f"per_edge_type_cutoff {table.type_names[a]}-{table.type_names[b]} = "
                        f"{neighbor[a][b]} is below the {cutoffs[a][b]} that expert "
                        f"`{table.expert_names[k]}` uses for that pair"
                    )
