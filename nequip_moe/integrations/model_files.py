"""Read MoE models and their composite-type tables from any saved form.

Accepts a compiled AOTInductor file (``.nequip.pt2``), a package (``.nequip.zip``) or a
training checkpoint (any other path), as nequip's own tools do.
"""

import pathlib
from typing import Dict, Tuple

import torch

from nequip.utils.aoti_metadata import NEQUIP_AOTI_INPUTS_KEY
from nequip.data import AtomicDataDict

from nequip_moe._composite import CompositeTypeTable


def is_compiled(path) -> bool:
    return str(path).endswith(".nequip.pt2")


def _check_exists(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file `{path}` does not exist")
    return path


def load_model(path, device="cpu") -> Tuple[torch.nn.Module, Dict[str, str]]:
    """Load a model for inference; returns ``(model, metadata)`` with string metadata values.

    The model maps an ``AtomicDataDict`` to its outputs. For compiled files the inputs are the
    ones the compile target fixed (``compiled_input_fields``).
    """
    path = _check_exists(path)
    if is_compiled(path):
        from nequip.model.inference_models import load_compiled_model

        try:
            model, _ = load_compiled_model(str(path), device)
        except Exception as e:
            raise ValueError(f"`{path}` could not be loaded as a compiled model: {e}") from e
        # `model` is nequip's `DictInputOutputWrapper` around the AOTI runner; the runner's own
        # metadata keeps every value as the string nequip-compile wrote
        metadata = dict(model.model.get_metadata())
        return _ContiguousInputs(model), metadata

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


class _ContiguousInputs(torch.nn.Module):
    """Compiled models assume contiguous inputs (a strided view gives wrong results silently)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        return self.model({k: v.contiguous() for k, v in data.items()})


def read_metadata(path) -> Dict[str, str]:
    """Model metadata (string values) without building the model where possible."""
    path = _check_exists(path)
    if is_compiled(path):
        try:
            return dict(torch._inductor.aoti_load_package(str(path)).get_metadata())
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


def compiled_input_fields(metadata: Dict[str, str]):
    """Input fields a compiled model takes (``pair_allegro``: no cell; ``ase``: with cell)."""
    return metadata[NEQUIP_AOTI_INPUTS_KEY].split()


def is_pair_allegro_target(metadata: Dict[str, str]) -> bool:
    """True for files compiled with ``--target pair_allegro`` (ghost atoms, no cell)."""
    return AtomicDataDict.CELL_KEY not in compiled_input_fields(metadata)
