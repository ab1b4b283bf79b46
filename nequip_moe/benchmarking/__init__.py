"""Benchmark an MoE against its experts (``nequip-moe bench``).

- ``options``: what a run is asked to do (``BenchOptions``), model names, expert presets,
  the default training config (package data ``pt_co_moe.yaml``).
- ``structures``: the default structures, Pt(111) + CO slabs (``BenchSlab``).
- ``models``: the MoE and its two experts from any model file; compiled with ``nequip-compile``.
- ``untrained``: untrained models of a training config, written as nequip checkpoints.
- ``speed``: speed-up against the ideal ``1 / (f + (1 - f) c)``, scaling, cost weights.
- ``memory``: peak memory of one call.
- ``training``: training-step cost through nequip's training module.
- ``runner``: one run of all of them; ``report``: terminal summary and plots.

The names below are imported from their modules on first use, so that importing the package
(e.g. for ``options``) does not import torch.
"""

import importlib

_EXPORTS = {
    "MODEL_NAMES": "options",
    "PRESETS": "options",
    "BenchOptions": "options",
    "BenchSlab": "structures",
    "BenchModel": "models",
    "read_structures": "runner",
    "run_benchmark": "runner",
    "cost_weights": "speed",
    "high_fidelity_mask": "speed",
    "speed_figures": "speed",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
