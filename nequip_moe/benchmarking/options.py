"""What a benchmark run is asked to do: ``BenchOptions``, the names of its three models and
the named expert sizes. Light to import (the ``nequip-moe bench`` parser reads it)."""

import dataclasses
import pathlib
from typing import Dict, Optional, Sequence

# the three models of a benchmark: the MoE and each of its two experts alone
MODEL_NAMES = ("moe", "big", "small")

# the default training config: a Pt + CO MoE of two Allegro experts (package data)
DEFAULT_CONFIG = pathlib.Path(__file__).with_name("pt_co_moe.yaml")

# named expert architectures: overrides of the (high-fidelity, low-fidelity) experts' configs
PRESETS = {
    # the expert sizes of the published Allegro MoE benchmark
    "paper": (
        {"l_max": 3, "num_layers": 4, "num_scalar_features": 128, "num_tensor_features": 64,
         "r_max": 7.0},
        {"l_max": 1, "num_layers": 2, "num_scalar_features": 32, "num_tensor_features": 32,
         "r_max": 7.0},
    ),
}


@dataclasses.dataclass
class BenchOptions:
    """What to benchmark and how.

    Args:
        structure: extxyz file of the structures to time (each frame is one size)
        supercells: in-plane repeats ``(k, k, 1)`` of every frame, each one more size
        config: MoE training config whose untrained models are benchmarked (unless
            ``model_files``; default ``DEFAULT_CONFIG``)
        model_files: ``{moe, big, small}`` -> compiled file, package or checkpoint
        hf_expert: the MoE's high-fidelity expert (default: its first expert)
        model_dtype: overrides the config's ``model_dtype``
        fractions: target high-fidelity fractions (highest atoms first)
        repeats: timed calls per model and structure (median reported)
        warmup: untimed calls before timing
        device: ``cpu`` or ``cuda``
        clock: ``wall`` (default) or ``cpu``: the process's CPU time per call (CPU runs; with
            one torch thread the call's own work, unaffected by other jobs on a shared machine)
        eager: time eager models instead of AOTInductor-compiled ones
        memory: measure peak memory at the largest size
        memory_fraction: high-fidelity fraction of the memory and training measurements
        training: time training steps (needs checkpoints: a config or ``.ckpt`` model files)
        train_frames: frames in the training batch (copies of the smallest structure, rattled)
        preset: named expert sizes (``PRESETS``) timed beside the sweep, built from ``config``
        preset_dtypes: ``model_dtype`` s of the preset rows
        preset_fractions: target high-fidelity fractions of the preset rows
        preset_max_atoms: the preset rows use the largest structure up to this size (default: the largest)
        preset_memory_gib: memory budget of one preset model call; a model predicted to need
            more is timed on smaller structures and extrapolated (``preset``)
        fit_slabs: bench slab sizes (``structures.BenchSlab``) on which to find the largest
            system the MoE and the big expert evaluate on the device (``capacity``; default
            ``None``: not searched)
        out_dir: where checkpoints and compiled models go
    """

    structure: Optional[str] = None
    supercells: Sequence[int] = (1,)
    config: Optional[str] = str(DEFAULT_CONFIG)
    model_files: Optional[Dict[str, str]] = None
    hf_expert: Optional[str] = None
    model_dtype: Optional[str] = None
    fractions: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0)
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    clock: str = "wall"
    eager: bool = False
    memory: bool = True
    memory_fraction: float = 0.25
    training: bool = True
    train_frames: int = 4
    preset: Optional[str] = None
    preset_dtypes: Sequence[str] = ("float64", "float32")
    preset_fractions: Sequence[float] = (0.1, 0.25, 0.5)
    preset_max_atoms: Optional[int] = None
    preset_memory_gib: float = 16.0
    fit_slabs: Optional[Sequence[int]] = None
    out_dir: str = "nequip_moe_bench"
