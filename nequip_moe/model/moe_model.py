"""``MoEModel``: a spatial Mixture of Experts built from ordinary nequip model builders."""

import copy
import os
import warnings
from typing import Dict, List, Optional, Sequence, Union

import torch
import yaml
from ase.data import atomic_numbers
from hydra.utils import get_method

from nequip.data import AtomicDataDict
from nequip.model import ModelFromCheckpoint, ModelFromPackage, model_builder
from nequip.model.modify_utils import get_all_modifiers
from nequip.model.utils import fresh_model_builder_context
from nequip.nn import graph_model as graph_model_keys
from nequip.nn import SequentialGraphNetwork, AtomwiseReduce, ForceStressOutput
from nequip.nn.convnetlayer import ConvNetLayer
from nequip.nn.embedding.utils import cutoff_partialdict_to_tensor, cutoff_str_to_fulldict

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.keys import EXPERT_NAMES_KEY, GATE_MODEL_KEY
from nequip_moe.compat.nequip_api import SOLE_MODEL_KEY, workflow_state
from nequip_moe.nn import MixtureOfExpertsEnergy, DenseCompileGraphModel, ExpertSpec, ALL_EDGES

# arguments the MoE builder owns and hands down; an expert config must not set them
_OUTER_ONLY_ARGS = ("seed", "model_dtype", "compile_mode", "do_derivatives")

# builders whose receptive field is known from their structure
_ALLEGRO_BUILDER = "allegro.model.AllegroModel"
_NEQUIP_BUILDERS = (
    "nequip.model.NequIPGNNModel",
    "nequip.model.FullNequIPGNNModel",
    "nequip.model.PresetNequIPGNNModel",
)
_LOCALITY_WORDS = {"local": 0, "all": ALL_EDGES}


@model_builder(compile_wrapper_class=DenseCompileGraphModel)
def MoEModel(
    r_max: float,
    type_names: Sequence[str],
    experts: Dict[str, Dict],
    composite_types: Optional[Dict[str, Dict[str, str]]] = None,
    gate: Optional[Dict] = None,
    per_edge_type_cutoff: Optional[Dict[str, Union[float, Dict[str, float]]]] = None,
    expert_locality: Optional[Dict[str, Union[str, int]]] = None,
    dense: bool = False,
    frozen_experts: Sequence[str] = (),
    frozen_expert_cache: bool = True,
    cotraining_edge_gradients: bool = False,
    do_derivatives: bool = True,
):
    """Spatial Mixture-of-Experts potential: each atom's energy comes from its expert(s).

    Regions are either static or gated:

    - *static*: the model's ``type_names`` are composite types, each meaning an (element,
      expert) pair given by ``composite_types``; an atom's energy is its own expert's;
    - *gated* (``gate``): the ``type_names`` are plain element names and a smooth, strictly
      local gate ``g_i`` (e.g. ``nequip_moe.nn.AdsorbateCoordinationGate``) computed from atom
      ``i``'s own neighbourhood weighs two experts, high-fidelity first:
      ``e_i = g_i e_i^big + (1 - g_i) e_i^small``. No labels to prepare: the regions follow the
      chemistry during dynamics, and each expert runs only where its weight is non-zero.

    Every expert is an ordinary nequip model builder config, built on the element names
    (energy only); forces, virial and stress come from one autograd pass over the summed
    energy (through the gate as well), so dynamics conserve energy exactly.

    Each expert's receptive field decides which edges it is routed and where the model can
    run: ``local`` (an atom's energy depends only on the edges centred on it; exact in LAMMPS
    ``pair_style allegro``), ``n`` message-passing neighbour shells beyond those edges, or
    ``all`` (unknown: every edge, exact but without the routing speed-up). It is known for
    ``allegro.model.AllegroModel`` (local), nequip's NequIP GNN builders (``num_layers - 1``
    shells) and ``PretrainedExpert`` files trained from ``AllegroModel``; any other expert
    counts as ``all`` unless ``expert_locality`` declares it. It is written into the metadata
    (``moe_expert_halo_hops``), and ``nequip-compile --target pair_allegro`` refuses MoEs with
    an expert that is not local.

    The metadata's ``per_edge_type_cutoff`` holds the tightest neighbour cutoff of every
    composite type pair that the experts need at inference (an expert's own cutoffs from the
    centres it evaluates, as written, in any ``model_dtype``), so that LAMMPS builds the
    smallest neighbour list; with per-edge-type cutoffs, LAMMPS types must map one-to-one onto
    model types. One cutoff for every pair is written as ``r_max`` alone (no
    ``per_edge_type_cutoff``), so that several LAMMPS types may map onto one model type.
    Co-training evaluates experts on other experts' atoms as well: its training data's
    neighbour list must hold every expert's edges from every centre type
    (``neighbor_cutoffs(cotraining=True)`` of the MoE energy module, e.g. one ``r_max`` for all
    pairs, the default); the first co-training batch is checked and refused otherwise.

    Args:
        seed (int): seed for reproducibility
        model_dtype (str): ``float32`` or ``float64``
        r_max (float): neighbour-list cutoff, at least every expert's ``r_max``; experts without ``r_max`` inherit it
        type_names (Sequence[str]): composite type names, e.g. ``[C, O, Pt, Pt_small]`` (static), or element names, e.g. ``[C, O, Pt]`` (gated)
        experts (Dict[str, Dict]): expert name -> model builder config with ``_target_`` (e.g. ``allegro.model.AllegroModel``); the order of this mapping is the expert-label order; expert configs may set ``type_names`` (element names covering all elements, in any order), ``r_max`` and ``per_edge_type_cutoff`` (over element names)
        composite_types (Dict[str, Dict[str, str]]): static regions: for every composite type, ``{element: ..., expert: ...}`` (default ``None``: needs ``gate``)
        gate (Dict): gated regions: the gate module's config with ``_target_`` (its ``type_names`` default to the model's), e.g. ``{_target_: nequip_moe.nn.AdsorbateCoordinationGate}`` (default ``None``: static regions)
        per_edge_type_cutoff (Dict): neighbour-list cutoffs over composite type names for the metadata, at least what the experts need (default: exactly what they need)
        expert_locality (Dict[str, Union[str, int]]): expert name -> ``local``, number of message-passing halo shells, or ``all``, for experts whose receptive field is not known from their builder (default: none declared)
        dense (bool): every expert evaluates every edge (masked per atom) instead of only its own; numerically identical and compile-friendly, used automatically under ``compile_mode: compile`` (default ``False``)
        frozen_experts (Sequence[str]): experts whose weights are not trained, e.g. a pretrained high-fidelity expert (default none)
        frozen_expert_cache (bool): compute each frozen, strictly local expert once per training frame and reuse it every epoch (same numbers; default ``True``)
        cotraining_edge_gradients (bool): in co-training, also output every expert's per-edge energy gradients on the edges centred on shared atoms (``expert_edge_energy_gradient``), which the agreement term ``ExpertAgreement(field: edge_energy_gradient)`` compares; strictly local experts only (default ``False``: the field is left out; it costs no extra backward pass, only its memory)
        do_derivatives (bool): compute forces, virial and stress by autograd (default ``True``)
    """
    type_names = [str(t) for t in type_names]
    if len(experts) == 0:
        raise ValueError("`experts` is empty: an MoE model needs at least one expert")
    if (composite_types is None) == (gate is None):
        raise ValueError(
            "an MoE model needs exactly one of `composite_types` (static regions: composite "
            "type names such as Pt / Pt_small) and `gate` (gated regions: plain element names)"
        )
    if gate is None:
        table = CompositeTypeTable.from_config(type_names, composite_types, list(experts))
        unused = [e for e in table.expert_names if e not in table.experts]
        if unused:
            raise ValueError(
                f"experts {unused} own no composite type; composite types: {table.describe()}"
            )
        elements, element_names, type_experts = table.elements, table.element_names, table.experts
        gate_module = None
        type_metadata = table.to_metadata()
    else:
        not_elements = [t for t in type_names if t not in atomic_numbers or t == "X"]
        if not_elements:
            raise ValueError(
                f"a gated MoE takes plain element type names; {not_elements} are not elements"
            )
        elements, element_names, type_experts = type_names, type_names, None
        gate_module = _build_gate(gate, type_names)
        type_metadata = {
            EXPERT_NAMES_KEY: " ".join(experts),
            GATE_MODEL_KEY: type(gate_module).__name__,
        }
    declared = _declared_locality(expert_locality, list(experts))
    specs = {
        name: _build_expert(name, config, element_names, float(r_max), declared.get(name))
        for name, config in experts.items()
    }

    unknown_frozen = [e for e in frozen_experts if e not in experts]
    if unknown_frozen:
        raise ValueError(f"frozen_experts {unknown_frozen} are not experts {list(experts)}")
    for name in frozen_experts:
        specs[name].module.requires_grad_(False)

    moe_energy = MixtureOfExpertsEnergy(
        experts=specs,
        type_names=type_names,
        type_elements=elements,
        type_experts=type_experts,
        type_metadata=type_metadata,
        neighbor_cutoffs=None
        if per_edge_type_cutoff is None
        else cutoff_partialdict_to_tensor(
            dict(per_edge_type_cutoff), type_names, float(r_max)
        ).tolist(),
        dense=dense,
        gate=gate_module,
        frozen_expert_cache=frozen_expert_cache,
        cotraining_edge_gradients=cotraining_edge_gradients,
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


def _build_gate(config: Dict, type_names: List[str]) -> torch.nn.Module:
    """Build the gate module of a gated MoE from its ``_target_`` config."""
    config = dict(copy.deepcopy(dict(config)))
    if "_target_" not in config:
        raise ValueError("the `gate` config has no `_target_` (e.g. nequip_moe.nn.AdsorbateCoordinationGate)")
    gate_type_names = [str(t) for t in config.setdefault("type_names", type_names)]
    if gate_type_names != type_names:
        raise ValueError(
            f"the gate's type_names {gate_type_names} differ from the model's {type_names}"
        )
    module = get_method(config.pop("_target_"))(**config)
    if not callable(getattr(module, "neighbor_cutoffs", None)):
        raise ValueError(
            f"gate {type(module).__name__} has no `neighbor_cutoffs()`: the MoE cannot tell "
            "which edges it reads"
        )
    return module


def _declared_locality(expert_locality, expert_names: List[str]) -> Dict[str, int]:
    """``expert_locality`` config -> expert name -> halo hops (0 local, n shells, -1 all)."""
    declared = {}
    for name, value in dict(expert_locality or {}).items():
        if name not in expert_names:
            raise ValueError(
                f"expert_locality names `{name}`, which is not one of the experts {expert_names}"
            )
        if isinstance(value, str) and value in _LOCALITY_WORDS:
            declared[name] = _LOCALITY_WORDS[value]
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            declared[name] = value
        else:
            raise ValueError(
                f"expert_locality of `{name}` is {value!r}: use `local` (strictly local, "
                "e.g. Allegro), a number n >= 0 of message-passing halo shells, or `all`"
            )
    return declared


def _build_expert(
    name: str, config: Dict, elements: List[str], r_max: float, declared_hops: Optional[int]
) -> ExpertSpec:
    """Build one expert's energy network on element types (or load a pretrained one)."""
    config = dict(copy.deepcopy(config))
    if "_target_" not in config:
        raise ValueError(f"expert `{name}` config has no `_target_` model builder")
    clashes = [k for k in _OUTER_ONLY_ARGS if k in config]
    if clashes:
        raise ValueError(
            f"expert `{name}` sets {clashes}: these belong to the MoE model config, not to an expert"
        )
    target = config.pop("_target_")
    builder = get_method(target)
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
        module = _energy_network(graph_model.model)
        target = _saved_model_builder(config["path"], config.get("model_key", SOLE_MODEL_KEY))
    else:
        expert_type_names = [str(t) for t in config.setdefault("type_names", elements)]
        this_r_max = float(config.setdefault("r_max", r_max))
        per_type = config.get("per_edge_type_cutoff", None)
        module = _energy_network(builder(**config, do_derivatives=False))

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
        cutoffs = cutoff_partialdict_to_tensor(dict(per_type), expert_type_names, this_r_max)
    else:
        n = len(expert_type_names)
        cutoffs = torch.full((n, n), this_r_max, dtype=torch.float64)
    if AtomicDataDict.PER_ATOM_ENERGY_KEY not in module.irreps_out:
        raise ValueError(f"expert `{name}` does not produce per-atom energies")
    return ExpertSpec(
        module=module,
        type_names=expert_type_names,
        cutoffs=cutoffs.tolist(),
        r_max=this_r_max,
        halo_hops=_halo_hops(name, target, module, declared_hops),
    )


def _energy_network(module: torch.nn.Module) -> torch.nn.Module:
    """The energy network of a nequip model, without its force output.

    The MoE takes derivatives once, of its summed energy. nequip's own
    ``disable_ForceStressOutput`` model modifier is a classmethod of the model's own
    ``ForceStressOutput`` class, so it finds that class (and switches off any nested force
    output) also in a model loaded from a ``.nequip.zip`` package, whose classes are not the
    installed ones.
    """
    disable = get_all_modifiers(module).get("disable_ForceStressOutput", None)
    if disable is None:
        return module
    if isinstance(module, disable.__self__):
        module = module.func
    return disable(module)


def _halo_hops(
    name: str, target: Optional[str], module: torch.nn.Module, declared: Optional[int]
) -> int:
    """Neighbour shells of halo an expert needs beyond its own atoms' edges.

    Known from the builder (``target``): Allegro is strictly local, NequIP passes messages over
    its ``num_layers - 1`` extra shells. Anything else needs the ``expert_locality``
    declaration, or counts as unknown (all edges).
    """
    known = None
    if target == _ALLEGRO_BUILDER:
        known = 0
    elif target in _NEQUIP_BUILDERS:
        known = sum(isinstance(m, ConvNetLayer) for m in module.modules()) - 1
    if declared is None:
        if known is not None:
            return known
        warnings.warn(
            f"expert `{name}` ({target}) has a receptive field nequip-moe does not know: it "
            "evaluates all edges (exact, without the routing speed-up) and the MoE cannot run "
            "in LAMMPS `pair_style allegro`. Declare it with the MoEModel option "
            f"`expert_locality: {{{name}: local | <halo shells> | all}}`"
        )
        return ALL_EDGES
    if known is not None and known != ALL_EDGES and (declared != ALL_EDGES and declared < known):
        raise ValueError(
            f"expert_locality declares {declared} halo shells for expert `{name}`, but its "
            f"builder {target} needs {known}: routing it fewer edges would give wrong energies"
        )
    return declared


# package files that PretrainedExpert loaded while `nequip-package` builds a model: nequip
# shares one package importer among every package loaded then (to re-export them), so a
# second, different package would be read from the first one's importer
_PACKAGES_LOADED_BY_NEQUIP_PACKAGE: set = set()


def PretrainedExpert(path: str, model_key: str = SOLE_MODEL_KEY):
    """An expert loaded from a nequip checkpoint or ``.nequip.zip`` package.

    Use it as an expert config (``_target_: nequip_moe.model.PretrainedExpert``) to start an
    expert from a trained model, e.g. a high-fidelity model that a new small expert is
    co-trained to agree with (freeze it with the MoE option ``frozen_experts``). Its type
    names, cutoffs and weights come from the file, which must stay where it is: reloading the
    MoE checkpoint rebuilds the expert from it (as with ``nequip.model.ModelFromCheckpoint``).
    Its receptive field is known if the file's model was trained from
    ``allegro.model.AllegroModel``; otherwise declare it (MoEModel ``expert_locality``).

    Args:
        path (str): checkpoint or package file
        model_key (str): model to take from a multi-model file (default: the sole model)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained expert file `{path}` does not exist")
    # nequip's model loaders, as a fine-tuning config uses them (`load_saved_model` would enter
    # nequip's modifier context again when `nequip-package` builds the MoE from a checkpoint);
    # built as a fresh top-level model, not as a raw module of the MoE builder
    loader = ModelFromPackage if str(path).endswith(".nequip.zip") else ModelFromCheckpoint
    if loader is ModelFromPackage and workflow_state() == "package":
        resolved = os.path.realpath(path)
        others = sorted(_PACKAGES_LOADED_BY_NEQUIP_PACKAGE - {resolved})
        if others:
            raise ValueError(
                f"`nequip-package` cannot build an MoE whose pretrained experts come from two "
                f"packages (`{others[0]}` and `{resolved}`): nequip reads every package loaded "
                "while packaging through one importer. Start the other experts from their "
                "checkpoints (PretrainedExpert path=...ckpt)"
            )
        _PACKAGES_LOADED_BY_NEQUIP_PACKAGE.add(resolved)
    with fresh_model_builder_context():
        return loader(path)[model_key]


def _saved_model_builder(path: str, model_key: str) -> Optional[str]:
    """The model builder (``_target_``) a checkpoint's or package's model was trained from."""
    if str(path).endswith(".nequip.zip"):
        importer = torch.package.PackageImporter(path)
        config = yaml.safe_load(importer.load_text("model", "config.yaml"))
    else:
        config = torch.load(path, map_location="cpu", weights_only=False)
        config = config["hyper_parameters"]["info_dict"]
    model = config.get("training_module", {}).get("model", {})
    if "_target_" not in model:  # several models: one config per model key
        model = model.get(model_key, {})
    return model.get("_target_", None)

