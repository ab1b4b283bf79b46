"""Benchmark an MoE against its experts alone (``nequip-moe bench``).

- ``models``: the MoE and its two experts from any model file; compiled with ``nequip-compile``.
- ``untrained``: untrained models of a training config, written as nequip checkpoints.
- ``speed``: speed-up against the ideal ``1 / (f + (1 - f) c)``, scaling, cost weights.
- ``memory``: peak memory of one call.
- ``training``: training-step cost through nequip's training module.
- ``runner``: one run of all of them; ``report``: terminal summary and plots.
"""

from nequip_moe.benchmarking.models import MODEL_NAMES, BenchModel
from nequip_moe.benchmarking.runner import BenchOptions, read_structures, run_benchmark
from nequip_moe.benchmarking.speed import cost_weights, high_fidelity_mask, speed_figures
from nequip_moe.benchmarking.untrained import PRESETS

__all__ = [
    "MODEL_NAMES",
    "PRESETS",
    "BenchModel",
    "BenchOptions",
    "cost_weights",
    "high_fidelity_mask",
    "read_structures",
    "run_benchmark",
    "speed_figures",
]
