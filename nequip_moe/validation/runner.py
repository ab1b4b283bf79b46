"""``run_validation``: every measure of an MoE on the user's inputs, as one report dict.

The report (written as ``validation.json`` by ``nequip-moe validate``):

- ``model``: path, kind (static / gated), compiled, experts, their ``r_max``, receptive radius;
- ``inputs``: the files and settings used, ``bulk``: how the bulk structure was obtained;
- ``checks``: one record per check (``report.CHECKS``): ``name``, ``title``, ``value``,
  ``threshold``, ``comparison``, ``unit``, ``verdict``, ``detail``;
- ``summary``: checks per verdict; ``passed``: no check failed; ``complete``: every check with
  a threshold ran;
- ``measures``: the measures' own results: ``split_crystal``, ``eos``, ``disagreement``,
  ``interface``, ``nve``, ``speed`` (each a dict, or ``{"not_applicable": why}``);
- ``seconds``: wall time of each measure.
"""

import dataclasses
import pathlib
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms

from nequip_moe.validation.bulk import (
    EOS_STRAINS,
    eos_curves,
    eos_spread,
    expert_disagreement,
    predict,
    shared_bulk_frames,
)
from nequip_moe.validation.crystal import DEFAULT_PLANES, split_geometries
from nequip_moe.validation.dynamics import nve_structure, nve_timestep_scaling
from nequip_moe.validation.inputs import bulk_structure, read_test_frames
from nequip_moe.validation.interface import (
    SPLIT_STRAINS,
    core_ratio,
    errors,
    force_error_by_distance,
    interface_penalty,
    split_crystal_forces,
)
from nequip_moe.validation.models import ModelUnderTest, NotApplicable, plain_calculator
from nequip_moe.validation.report import (
    MEASURES,
    THRESHOLDS,
    Threshold,
    checks_from_measures,
    summary,
)
from nequip_moe.validation.speed import speedup


@dataclasses.dataclass
class ValidationOptions:
    """What to validate and how (``nequip-moe validate``'s flags).

    Args:
        model: the MoE file (compiled ``--target ase``, package or checkpoint)
        test: labelled frames (energy, forces; ``expert`` labels or ``rules`` for a static MoE)
        rules: region rules file labelling the test, NVE and speed frames
        bulk: bulk structure file of the host crystal
        element, lattice, a, c: the host crystal to build when ``bulk`` is not given
        reference: the all-high-fidelity model file (optional)
        speed: structure to time (default: the largest test frame)
        nve: start structure of the NVE runs (default: a test frame with both regions)
        device: device of the models
        strains: split-crystal isotropic strains
        trained_strains: ``(lowest, highest)`` strain of the training data (rows outside marked)
        planes: Miller indices of the split planes, in the bulk cell's basis
        sphere: split by a sphere too
        eos_strains: EOS isotropic strains
        bulk_frames: strained, rattled shared bulk frames for the disagreement
        nve_steps, timestep_fs, temperature_k: the NVE runs (and a run at twice the timestep)
        speed_repeats: timed evaluations (best of)
        skip: measures not to run (``report.MEASURES``)
        thresholds: overrides of ``report.THRESHOLDS``
        seed: seed of the shared bulk frames and the NVE velocities
    """

    model: str
    test: Optional[str] = None
    rules: Optional[str] = None
    bulk: Optional[str] = None
    element: Optional[str] = None
    lattice: Optional[str] = None
    a: Optional[float] = None
    c: Optional[float] = None
    reference: Optional[str] = None
    speed: Optional[str] = None
    nve: Optional[str] = None
    device: str = "cpu"
    strains: Sequence[float] = SPLIT_STRAINS
    trained_strains: Optional[Tuple[float, float]] = None
    planes: Sequence[Tuple[int, int, int]] = DEFAULT_PLANES
    sphere: bool = True
    eos_strains: Sequence[float] = EOS_STRAINS
    bulk_frames: int = 6
    nve_steps: int = 200
    timestep_fs: float = 1.0
    temperature_k: float = 300.0
    speed_repeats: int = 3
    skip: Sequence[str] = ()
    thresholds: Dict[str, Threshold] = dataclasses.field(default_factory=dict)
    seed: int = 0

    def check(self):
        """Refuse bad options before anything runs, naming the problem."""
        for name in ("model", "test", "rules", "bulk", "reference", "speed", "nve"):
            path = getattr(self, name)
            if path is not None and not pathlib.Path(path).is_file():
                raise FileNotFoundError(f"{name} file `{path}` does not exist")
        unknown = [m for m in self.skip if m not in MEASURES]
        if unknown:
            raise ValueError(f"cannot skip {unknown}: the measures are {', '.join(MEASURES)}")
        unknown = [t for t in self.thresholds if t not in THRESHOLDS]
        if unknown:
            raise ValueError(f"unknown thresholds {unknown}; known: {', '.join(THRESHOLDS)}")
        if len(self.strains) == 0 or len(self.eos_strains) < 5:
            raise ValueError("give at least one split-crystal strain and five EOS strains")
        if any(not -0.5 < s < 0.5 for s in list(self.strains) + list(self.eos_strains)):
            raise ValueError("strains are fractions (0.01 for 1 %), between -0.5 and 0.5")
        if self.nve_steps < 4 or self.timestep_fs <= 0 or self.speed_repeats < 1 or self.bulk_frames < 0:
            raise ValueError("need nve_steps >= 4, timestep_fs > 0, speed_repeats >= 1, bulk_frames >= 0")
        if not self.planes and not self.sphere:
            raise ValueError("the split crystal needs at least one plane or the sphere")


class _Measures:
    """Runs each measure once, timing it; ``NotApplicable`` becomes its result's reason."""

    def __init__(self, skip: Sequence[str], log: Callable[[str], None]):
        self.results: Dict[str, Dict] = {}
        self.seconds: Dict[str, float] = {}
        self.skipped = {m: "skipped (--skip)" for m in skip}
        self.log = log

    def run(self, name: str, measure: Callable[[], Dict]):
        if name in self.skipped:
            return
        self.log(f"  {name} ...")
        start = time.perf_counter()
        try:
            self.results[name] = measure()
        except NotApplicable as e:
            self.results[name] = {"not_applicable": str(e)}
        self.seconds[name] = time.perf_counter() - start


def _experts(model: ModelUnderTest):
    """Each expert alone and the region calculator, or the reason they do not exist."""
    try:
        return [model.expert_calculator(k) for k in range(len(model.expert_names))], model.region_calculator(), None
    except NotApplicable as e:
        return None, None, str(e)


def _require(calculators, reason):
    if calculators is None:
        raise NotApplicable(reason)
    return calculators


def _shared_masks(bulk: Atoms, frames: Sequence[Atoms], radius: float) -> List[np.ndarray]:
    """Bulk-like host atoms of each test frame (``SharedEnvironments``' rule, the host being
    the bulk's element); none when the bulk holds several elements (no single host)."""
    from nequip.data import from_ase

    from nequip_moe.data.shared import SharedEnvironments

    elements = set(bulk.get_chemical_symbols())
    if len(elements) > 1:
        return [np.zeros(len(a), dtype=bool) for a in frames]
    rule = SharedEnvironments(host=elements.pop(), bulk=bulk, foreign_radius=radius)
    return [rule.bulk_like(from_ase(a)).numpy() for a in frames]


def _mixed(model: ModelUnderTest, frames: Sequence[Atoms]) -> List[bool]:
    """Whether each frame holds both regions (every frame, where the regions are unknown)."""
    try:
        return [bool(0 < model.high_fidelity(a).sum() < len(a)) for a in frames]
    except NotApplicable:
        return [True] * len(frames)


def _interface(model, frames, experts, reference) -> Dict:
    if not frames:
        raise NotApplicable("needs labelled test frames (--test)")
    high = [model.high_fidelity(a) for a in frames]
    moe = predict(model.calculator(), frames)
    low = predict(experts[model.low], frames)
    width = model.expert_r_max[model.low]
    predictions = {"moe": moe, "low_alone": low}
    result = {"penalty": interface_penalty(frames, high, moe, low, width)}
    if reference is not None:
        predictions["reference"] = predict(reference, frames)
        result["core"] = core_ratio(frames, high, moe, predictions["reference"])
    result["errors"] = {name: errors(frames, p) for name, p in predictions.items()}
    result["by_distance"] = {name: force_error_by_distance(frames, high, p) for name, p in predictions.items()}
    return result


def run_validation(options: ValidationOptions, log: Callable[[str], None] = print) -> Dict:
    """Run every measure (module docstring) and judge it; returns the report.

    Args:
        options: the model, inputs and settings
        log: progress messages
    """
    options.check()
    model = ModelUnderTest(options.model, options.device)
    thresholds = {**THRESHOLDS, **dict(options.thresholds)}
    frames = read_test_frames(options.test, model, options.rules) if options.test else []
    reference = plain_calculator(options.reference, options.device) if options.reference else None
    experts, regions, no_experts = _experts(model)
    fitter = reference or (experts[0] if experts else model.calculator())
    bulk, bulk_info = bulk_structure(
        model, frames, options.bulk, options.element, options.lattice, options.a, options.c,
        fitter=None if options.a is not None else fitter,
    )
    radius = model.receptive_radius
    geometries = split_geometries(bulk, radius, options.planes, options.sphere)
    log(f"validating {options.model}: {len(frames)} test frames, bulk {bulk.get_chemical_formula()}")
    measures = _Measures(options.skip, log)

    measures.run("split_crystal", lambda: split_crystal_forces(
        _require(regions, no_experts), experts, geometries, options.strains, options.trained_strains))

    def eos():
        calcs = dict(zip(model.expert_names, _require(experts, no_experts)))
        if reference is not None:
            calcs["reference"] = reference
        curves = eos_curves(calcs, bulk, options.eos_strains)
        curves["experts"] = eos_spread(curves["fits"], model.expert_names)
        if reference is not None:
            curves["reference"] = eos_spread(curves["fits"], list(calcs), relative_to="reference")
        return curves

    measures.run("eos", eos)

    def disagreement():
        shared = shared_bulk_frames(bulk, options.bulk_frames, 2.0 * max(model.expert_r_max), options.seed)
        masks = [np.ones(len(a), dtype=bool) for a in shared] + _shared_masks(bulk, frames, max(model.expert_r_max))
        result = expert_disagreement(_require(experts, no_experts), shared + frames, masks)
        return {**result, "bulk_frames": len(shared), "test_frames": len(frames)}

    measures.run("disagreement", disagreement)
    measures.run("interface", lambda: _interface(model, frames, _require(experts, no_experts), reference))

    def nve():
        if options.nve:
            atoms = read_test_frames(options.nve, model, options.rules, "NVE", labelled=False)[-1]
        else:
            atoms = nve_structure(frames, _mixed(model, frames)) or geometries[list(geometries)[-1]]
        return nve_timestep_scaling(model.calculator(), atoms, options.nve_steps, options.timestep_fs,
                                    options.temperature_k, options.seed)

    measures.run("nve", nve)

    def speed():
        if options.speed:
            atoms = read_test_frames(options.speed, model, options.rules, "speed", labelled=False)[-1]
        else:
            atoms = max(frames, key=len) if frames else geometries[list(geometries)[-1]]
        try:
            weights = model.expert_weights(atoms)
            f_high, f_low = float(np.mean(weights[:, 0] > 0)), float(np.mean(weights[:, -1] > 0))
        except NotApplicable:  # a compiled gated MoE: no fractions, no experts alone
            f_high, f_low = None, None
        experts_timed = [experts[0], experts[model.low]] if experts else None
        return speedup(model.calculator(), atoms, f_high, f_low, reference, experts_timed,
                       options.speed_repeats)

    measures.run("speed", speed)

    checks = checks_from_measures(measures.results, thresholds, measures.skipped)
    counts = summary(checks)
    return {
        "model": model.describe(),
        "inputs": {
            "test": options.test, "test_frames": len(frames), "rules": options.rules,
            "reference": options.reference, "bulk": bulk_info, "strains": list(options.strains),
            "trained_strains": options.trained_strains, "planes": [list(p) for p in options.planes],
            "sphere": options.sphere, "eos_strains": list(options.eos_strains),
            "device": options.device, "seed": options.seed,
        },
        "checks": checks,
        "summary": counts,
        "passed": counts["fail"] == 0,
        "complete": not any(c["verdict"] == "not applicable" and c["threshold"] is not None for c in checks),
        "measures": measures.results,
        "seconds": measures.seconds,
    }
