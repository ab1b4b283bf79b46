"""Validation of any MoE: is it trustworthy where it matters, and is it worth it?

``run_validation`` (and ``nequip-moe validate MODEL``) measures, each with a threshold and a
verdict (``report.CHECKS``): the interface force on perfect crystals split by planes and by a
sphere, the experts' equations of state and their disagreement on shared bulk, the fair
interface penalty and errors near the interface on the user's test frames, NVE energy
conservation, and the speed-up beside its ideal bound. Each measure is also a plain function
of ASE calculators and structures, for scripts and examples:

- ``crystal``: ``host_bulk``, ``split_geometries``, ``plane_split``, ``sphere_split``,
  ``strained``, ``interface_distance``;
- ``bulk``: ``predict``, ``fit_eos``, ``eos_curves``, ``eos_spread``, ``fit_lattice``,
  ``shared_bulk_frames``, ``expert_disagreement``;
- ``interface``: ``split_crystal_forces``, ``interface_penalty``, ``core_ratio``,
  ``force_error_by_distance``, ``errors``;
- ``dynamics``: ``nve_drift``, ``nve_timestep_scaling``;
- ``speed``: ``time_calculation``, ``speedup``;
- ``models``: ``ModelUnderTest`` (an MoE file's calculators: as it runs, with given regions,
  each expert alone), ``plain_calculator``, ``NotApplicable``;
- ``report`` / ``plots``: checks, ``validation.md``, figures.
"""

from .bulk import eos_curves, eos_spread, expert_disagreement, fit_eos, fit_lattice, predict, shared_bulk_frames
from .crystal import host_bulk, interface_distance, plane_split, sphere_split, split_geometries, strained
from .dynamics import nve_drift, nve_timestep_scaling
from .interface import core_ratio, errors, force_error_by_distance, interface_penalty, split_crystal_forces
from .models import ModelUnderTest, NotApplicable, plain_calculator
from .report import CHECKS, THRESHOLDS, check, markdown
from .runner import ValidationOptions, run_validation
from .speed import speedup, time_calculation

__all__ = [
    "eos_curves", "eos_spread", "expert_disagreement", "fit_eos", "fit_lattice", "predict",
    "shared_bulk_frames", "host_bulk", "interface_distance", "plane_split", "sphere_split",
    "split_geometries", "strained", "nve_drift", "nve_timestep_scaling", "core_ratio", "errors",
    "force_error_by_distance", "interface_penalty", "split_crystal_forces", "ModelUnderTest",
    "NotApplicable", "plain_calculator", "CHECKS", "THRESHOLDS", "check", "markdown",
    "ValidationOptions", "run_validation", "speedup", "time_calculation",
]
