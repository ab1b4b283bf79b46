"""Read MoE models and their type tables from any saved form.

Accepts a compiled AOTInductor file (``.nequip.pt2``), a package (``.nequip.zip``) or a
training checkpoint (any other path), as nequip's own tools do.

Two kinds of MoE exist (``model_types``): static MoEs, whose type names are composite types
(``CompositeTypeTable``: an atom's expert travels as its type), and gated MoEs (metadata
``moe_gate_model``), whose type names are plain elements (``GatedTypes``): a smooth gate
computed from each atom's neighbourhood weighs the experts, so LAMMPS types, data files and
``pair_coeff`` lines are typed by species and carry no expert labels.

Light to import (the command line's type tables and checks): torch and nequip are imported by
the functions that load a model.
"""

import dataclasses
import pathlib
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import numpy as np

from ase.data import atomic_numbers, chemical_symbols

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.keys import EXPERT_NAMES_KEY, EXPERT_R_MAX_KEY, GATE_MODEL_KEY

if TYPE_CHECKING:
    import torch


def is_compiled(path) -> bool:
    return str(path).endswith(".nequip.pt2")


def _check_exists(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file `{path}` does not exist")
    return path


def load_model(path, device="cpu") -> Tuple["torch.nn.Module", Dict[str, str]]:
    """Load a model for inference; returns ``(model, metadata)`` with string metadata values.

    The model maps an ``AtomicDataDict`` to its outputs. For compiled files the inputs are the
    ones the compile target fixed (``compiled_input_fields``).
    """
    path = _check_exists(path)
    if is_compiled(path):
        from nequip.model.inference_models import load_compiled_model

        from nequip_moe.integrations.compiled_model import ContiguousInputs

        try:
            model, _ = load_compiled_model(str(path), device)
        except Exception as e:
            raise ValueError(f"`{path}` could not be loaded as a compiled model: {e}") from e
        # `model` is nequip's `DictInputOutputWrapper` around the AOTI runner; the runner's own
        # metadata keeps every value as the string nequip-compile wrote
        metadata = dict(model.model.get_metadata())
        return ContiguousInputs(model), metadata

    from nequip.model.saved_models import load_saved_model
    from nequip.utils.global_state import global_state_initialized, set_global_state

    if not global_state_initialized():
        set_global_state(allow_tf32=False)
    try:
        model = load_saved_model(str(path))
    except Exception as e:
        raise ValueError(
            f"`{path}` could not be loaded as a nequip checkpoint or package: {e}"
        ) from e
    model = model.to(device).eval()
    return model, dict(model.metadata)


def read_metadata(path) -> Dict[str, str]:
    """Model metadata (string values) without building the model where possible."""
    path = _check_exists(path)
    if is_compiled(path):
        from nequip_moe.compat.nequip_api import compiled_model_metadata

        try:
            return compiled_model_metadata(path)
        except Exception as e:
            raise ValueError(f"`{path}` is not a readable AOTInductor model file: {e}") from e
    return load_model(path)[1]


def read_composite_table(path) -> CompositeTypeTable:
    """The composite-type table stored in a model file."""
    return table_from_metadata(read_metadata(path), f"`{path}`")


def table_from_metadata(metadata: Dict[str, str], source: str) -> CompositeTypeTable:
    """The composite-type table of model metadata; errors name ``source`` (e.g. the file)."""
    try:
        return CompositeTypeTable.from_metadata(metadata)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def is_gated(metadata: Dict[str, str]) -> bool:
    """True for a gated MoE (metadata ``moe_gate_model``): plain element type names, no labels."""
    return GATE_MODEL_KEY in metadata


@dataclasses.dataclass(frozen=True)
class GatedTypes:
    """The types of a gated MoE: plain element names; the gate, not the type, picks the experts.

    Stands in for ``CompositeTypeTable`` where only the LAMMPS typing matters (data files,
    ``pair_coeff`` names, masses): ``type_names``, ``elements`` (the same names) and
    ``type_index`` (by species alone). Expert labels do not exist: ``gate`` names the gate.

    Args:
        type_names: the model's type names (element symbols), in model type-index order
        gate: the gate's class name (metadata ``moe_gate_model``)
        expert_names: the experts, high fidelity first (weights ``g`` and ``1 - g``)
        expert_r_max: each expert's ``r_max`` as the metadata gives it (may be empty)
    """

    type_names: List[str]
    gate: str
    expert_names: List[str]
    expert_r_max: List[str] = dataclasses.field(default_factory=list)

    gated = True

    def __post_init__(self):
        bad = [t for t in self.type_names if t not in atomic_numbers or t == "X"]
        if bad:
            raise ValueError(
                f"gated MoE type names {bad} are not element symbols (a gated MoE types atoms "
                "by species alone)"
            )

    @classmethod
    def from_metadata(cls, metadata: Dict[str, str]) -> "GatedTypes":
        if not is_gated(metadata):
            raise ValueError(f"this model is not a gated MoE (no `{GATE_MODEL_KEY}` metadata)")
        return cls(
            type_names=str(metadata["type_names"]).split(),
            gate=str(metadata[GATE_MODEL_KEY]),
            expert_names=str(metadata.get(EXPERT_NAMES_KEY, "")).split(),
            expert_r_max=str(metadata.get(EXPERT_R_MAX_KEY, "")).split(),
        )

    @property
    def elements(self) -> List[str]:
        return list(self.type_names)

    def type_index(self, numbers, labels=None) -> np.ndarray:
        """Model type index of each atom, from its species (``labels`` must be ``None``)."""
        if labels is not None:
            raise ValueError(
                f"a gated MoE ({self.gate}) takes no expert labels: its gate weighs the experts "
                "from each atom's neighbourhood; type atoms by species alone"
            )
        numbers = np.asarray(numbers, dtype=np.int64)
        lookup = np.full(len(chemical_symbols), -1, dtype=np.int64)
        for k, t in enumerate(self.type_names):
            lookup[atomic_numbers[t]] = k
        index = lookup[numbers]
        if (index < 0).any():
            missing = sorted({chemical_symbols[z] for z in numbers[index < 0].tolist()})
            raise ValueError(
                f"elements {missing} are not types of the gated MoE, whose types are "
                f"{' '.join(self.type_names)}"
            )
        return index

    def describe(self) -> str:
        experts = ", ".join(
            f"{e} (weight {'g' if k == 0 else '1 - g'})" for k, e in enumerate(self.expert_names)
        )
        return f"{' '.join(self.type_names)} (plain elements; gate {self.gate}: {experts})"


TypeTable = Union[CompositeTypeTable, GatedTypes]


def model_types(metadata: Dict[str, str], source: Optional[str] = None) -> TypeTable:
    """The model's types: a ``CompositeTypeTable`` (static MoE) or ``GatedTypes`` (gated MoE).

    Args:
        metadata: model metadata (string values)
        source: names the model in error messages (e.g. the file)
    """
    if is_gated(metadata):
        return GatedTypes.from_metadata(metadata)
    return table_from_metadata(metadata, source or "the model")


def compiled_input_fields(metadata: Dict[str, str]):
    """Input fields a compiled model takes (``pair_allegro``: no cell; ``ase``: with cell)."""
    from nequip.utils.aoti_metadata import NEQUIP_AOTI_INPUTS_KEY

    return metadata[NEQUIP_AOTI_INPUTS_KEY].split()


def is_pair_allegro_target(metadata: Dict[str, str]) -> bool:
    """True for files compiled with ``--target pair_allegro`` (ghost atoms, no cell)."""
    from nequip.data import AtomicDataDict

    return AtomicDataDict.CELL_KEY not in compiled_input_fields(metadata)
