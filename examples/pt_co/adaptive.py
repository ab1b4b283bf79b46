"""Adaptive regions: the gated MoE of two packaged models against static regions and force mixing.

The section of the Pt + CO example's report for the gated MoE (issue 12). From two packaged models
(the example's all-big and all-small ``.nequip.zip``, or any checkpoints) it builds, in Python:

- the **gated MoE** ``E = sum_i [g_i e_i^big + (1 - g_i) e_i^small]`` with the strictly local
  ``nequip_moe.nn.AdsorbateCoordinationGate`` (``gated_model``);
- the **static MoE** on the same two experts, regions from the ``pt_co_coordination`` preset of
  ``nequip_moe.data.regions`` (``static_model``, ``static_labels``);
- **force mixing** ``F_i = g_i F_i^big + (1 - g_i) F_i^small`` of the two models alone, with the
  same gate and no energy whose gradient it is (``ForceMixingCalculator``);

and measures (``adaptive_section``):

1. NVE with moving chemistry: a hot CO gliding over Pt(111) at 700 K (kept on the surface by
   conservative walls), with a gate whose high-fidelity region follows the CO, for (a) gated, (b) all-big,
   (c) static relabelled every N steps, (d) force mixing: energy drift (linear fit) and
   fluctuation, total energy against time (PNG), and the dt^2 scaling of the gated fluctuation;
2. accuracy on the example's test split by class of atom (gated vs all-big, and vs the static
   MoE on the default gate's own region, i.e. at the same high-fidelity atoms; the static MoE
   on the split's buffered labels is shown for reference);
3. speed of gated vs all-big vs static at the same high-fidelity fraction, against the ideal
   bound with the blend zone counted twice.

Standalone::

    python examples/pt_co/adaptive.py --big examples/pt_co/out/models/big.nequip.zip \\
        --small examples/pt_co/out/models/small.nequip.zip --data examples/pt_co/out/data \\
        --out examples/pt_co/out/adaptive
"""

import argparse
import json
import pathlib
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms, units
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import Hookean
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from nequip.data import AtomicDataDict
from nequip.data.transforms import NeighborListTransform
from nequip.integrations.ase import NequIPCalculator
from nequip.nn.embedding.utils import cutoff_str_to_fulldict
from nequip.utils.global_state import set_global_state

from nequip_moe._keys import GATE_KEY
from nequip_moe.data.regions import assign_experts, pt_co_coordination
from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.integrations.model_files import read_metadata
from nequip_moe.nn import MixtureOfExpertsEnergy

ELEMENTS = ("C", "O", "Pt")
EXPERT_NAMES = ("big", "small")  # high-fidelity first: weight g on big, 1 - g on small
STATIC_TYPES = ("C", "O", "Pt", "Pt_small")
GATE_TARGET = "nequip_moe.nn.AdsorbateCoordinationGate"
# the NVE's gate: Pt(111) terrace atoms (9 neighbours) count as regular, so the high-fidelity
# region is the CO and the Pt it touches (plus steps, adatoms: fewer than 9 neighbours) and
# follows the CO across the surface; with the default gate every surface atom is high fidelity
# and a CO moving over a terrace changes nothing
FOLLOWING_GATE = {"bulk_coordination": 9.0}
# NVE: 700 K slab, CO with 0.3 eV of lateral kinetic energy, walls keeping it on the surface
NVE_TEMPERATURE_K = 700.0
CO_KICK_EV = 0.3
RELABEL_EVERY = 20
TIMESTEP_FS = 1.0
DT_SCALING_FS = (0.5, 1.0, 2.0)
# |drift| bound (eV/atom/ps): a drift d heats a solid by d / (3 k_B); 1e-4 eV/atom/ps is 0.39 K/ps,
# under 1 % of the run's 700 K over 10 ps; and it is an order of magnitude above what a linear fit
# over the default 0.6 ps run resolves (Verlet fluctuation at 1 fs ~4e-6 eV/atom: RMS / T ~ 7e-6)
DRIFT_BOUND = 1e-4
ACCURACY_TOLERANCE = 1.05  # gated force MAE <= 1.05 x static on adsorbates, high-fidelity Pt
DT_EXPONENT_RANGE = (1.5, 2.5)  # Verlet: energy fluctuation ~ dt^2
# atom classes (measures.ATOM_CLASSES) of the accuracy claim: adsorbates and high-fidelity Pt
HIGH_FIDELITY_CLASSES = ("adsorbate", "hf_region", "core_pt", "buffer")
# timing on a shared CPU: the gated MoE's per-edge efficiency (ideal time / measured) at least this
SPEED_EFFICIENCY = 0.8

PathLike = Union[str, pathlib.Path]


# ---------------------------------------------------------------- models


def _expert(expert: Union[PathLike, Dict]) -> Dict:
    """Expert config: a model file as ``PretrainedExpert``, or a builder config as it is."""
    if isinstance(expert, dict):
        return dict(expert)
    return {"_target_": "nequip_moe.model.PretrainedExpert", "path": str(pathlib.Path(expert).resolve())}


def _r_max(experts: Sequence[Union[PathLike, Dict]]) -> float:
    """The largest ``r_max`` of the experts (from the files' metadata or the configs)."""
    values = []
    for expert in experts:
        if isinstance(expert, dict):
            values.append(float(expert["r_max"]))
        else:
            values.append(float(read_metadata(expert)["r_max"]))
    return max(values)


def moe_model(
    big: Union[PathLike, Dict],
    small: Union[PathLike, Dict],
    gate_options: Optional[Dict] = None,
    static: bool = False,
    r_max: Optional[float] = None,
    seed: int = 0,
) -> torch.nn.Module:
    """An eager MoE (eval mode) of two experts, high-fidelity ``big`` first.

    Args:
        big: high-fidelity expert: a model file (``.nequip.zip`` or checkpoint) or a builder config
        small: low-fidelity expert, likewise
        gate_options: options of ``AdsorbateCoordinationGate`` (gated MoE; default: its defaults)
        static: static regions (composite types ``C O Pt Pt_small``) instead of the gate
        r_max: neighbour-list cutoff (default: the largest of the experts')
        seed: seed of the builder (experts built from configs)
    """
    from nequip_moe.model import MoEModel

    set_global_state(allow_tf32=False)  # nequip's models need it; float64 default dtype
    experts = {"big": _expert(big), "small": _expert(small)}
    config = dict(
        seed=seed,
        model_dtype="float64",
        r_max=float(r_max if r_max is not None else _r_max([big, small])),
        experts=experts,
    )
    if static:
        config["type_names"] = list(STATIC_TYPES)
        config["composite_types"] = {
            "C": {"element": "C", "expert": "big"},
            "O": {"element": "O", "expert": "big"},
            "Pt": {"element": "Pt", "expert": "big"},
            "Pt_small": {"element": "Pt", "expert": "small"},
        }
    else:
        config["type_names"] = list(ELEMENTS)
        config["gate"] = {"_target_": GATE_TARGET, **dict(gate_options or {})}
    model = MoEModel(**config)
    model.eval()
    return model


class GatedCalculator(MoECalculator):
    """``MoECalculator`` that also keeps the per-atom gate ``g`` in ``results["gate"]``."""

    def save_extra_outputs(self, out: AtomicDataDict.Type):
        if GATE_KEY in out:
            self.results["gate"] = out[GATE_KEY].detach().view(-1).cpu().numpy()


def model_calculator(model: torch.nn.Module, device: str = "cpu") -> MoECalculator:
    """ASE calculator of an eager MoE: species typing (gated) or ``atoms.arrays["expert"]``
    labels (static), with the neighbour list of the model's metadata."""
    metadata = dict(model.metadata)
    type_names = metadata["type_names"].split()
    r_max = float(metadata["r_max"])
    per_edge = metadata.get("per_edge_type_cutoff")
    transforms = [
        NeighborListTransform(
            r_max=r_max,
            per_edge_type_cutoff=cutoff_str_to_fulldict(per_edge, type_names) if per_edge else None,
            type_names=type_names if per_edge else None,
        )
    ]
    return GatedCalculator(model, device=device, transforms=transforms)


def gated_model(
    big_file: Union[PathLike, Dict],
    small_file: Union[PathLike, Dict],
    gate_options: Optional[Dict] = None,
    device: str = "cpu",
    r_max: Optional[float] = None,
) -> MoECalculator:
    """ASE calculator of the gated MoE of two models (eager; ``results["gate"]`` holds ``g``).

    Args:
        big_file: high-fidelity model file (or builder config)
        small_file: low-fidelity model file (or builder config)
        gate_options: ``AdsorbateCoordinationGate`` options, e.g. ``FOLLOWING_GATE``
        device: device of the model
        r_max: neighbour-list cutoff (default: the experts' largest)
    """
    return model_calculator(moe_model(big_file, small_file, gate_options, r_max=r_max), device)


def static_model(
    big_file: Union[PathLike, Dict],
    small_file: Union[PathLike, Dict],
    device: str = "cpu",
    r_max: Optional[float] = None,
) -> MoECalculator:
    """ASE calculator of the static MoE of the same two models; labels from
    ``atoms.arrays["expert"]`` (0 big, 1 small; C and O must be 0), e.g. ``static_labels``."""
    return model_calculator(moe_model(big_file, small_file, static=True, r_max=r_max), device)


def plain_calculator(path: PathLike, device: str = "cpu") -> NequIPCalculator:
    """nequip's calculator of a single model file (all-big, all-small)."""
    set_global_state(allow_tf32=False)
    return NequIPCalculator._from_saved_model(
        str(path), device=device, chemical_species_to_atom_type_map=True
    )


def static_labels(atoms: Atoms, gate_options: Optional[Dict] = None, buffer_shells: int = 0) -> np.ndarray:
    """Static expert labels (0 big, 1 small) matching the gate's ``g >= 0.5`` region.

    The ``pt_co_coordination`` preset with the gate's parameters: C and O, Pt within the middle
    of the gate's adsorbate switching shell of them, and Pt with fewer host neighbours (within
    the middle of the coordination shell) than the gate's ``bulk_coordination``.

    Args:
        atoms: the structure
        gate_options: the gate's options (default: the gate's defaults)
        buffer_shells: neighbour shells grown around the region (the preset's default is 1)
    """
    from nequip_moe.nn import AdsorbateCoordinationGate

    gate = AdsorbateCoordinationGate(ELEMENTS, **dict(gate_options or {}))
    rules, settings = pt_co_coordination(
        expert="big",
        default_expert="small",
        coordination_cutoff=0.5 * (gate.coordination_r_on + gate.coordination_r_off),
        # integer counts z < below <=> g >= 0.5 (deficit half-way between deficit_on and _full)
        bulk_coordination=int(
            np.ceil(gate.bulk_coordination - 0.5 * (gate.deficit_on + gate.deficit_full))
        ),
        bond_cutoff=0.5 * (gate.adsorbate_r_on + gate.adsorbate_r_off),
        buffer_shells=buffer_shells,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "region rule ... selects no atom" on flat terraces
        return assign_experts(atoms, rules, EXPERT_NAMES, **settings)


def gate_values(calc: MoECalculator, atoms: Atoms) -> np.ndarray:
    """Per-atom gate ``g`` of a gated MoE calculator's model on ``atoms`` (the gate alone)."""
    gate = _gate_module(calc.model)
    with torch.no_grad():
        data = calc.atoms_to_data(atoms)
        return gate(data)[GATE_KEY].view(-1).cpu().numpy()


def _gate_module(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, MixtureOfExpertsEnergy) and module.gate is not None:
            return module.gate
    raise ValueError("this model has no gate: not a gated MoE")


class ForceMixingCalculator(Calculator):
    """Force mixing of two models: ``F_i = g_i F_i^big + (1 - g_i) F_i^small``.

    No energy has these forces (they miss ``(e^big - e^small) grad g`` and mix each atom's force
    by its own gate rather than by the gate of the atoms whose energies depend on it), so dynamics
    do not conserve any energy. ``energy`` is the gated MoE's expression
    ``sum_i [g_i e_i^big + (1 - g_i) e_i^small]`` of the same experts, the quantity the mixed
    forces approximate the negative gradient of; ``results["gate"]`` holds ``g``.

    Args:
        big: calculator of the high-fidelity model alone (per-atom ``energies`` and ``forces``)
        small: calculator of the low-fidelity model alone
        gated: gated MoE calculator whose gate gives ``g``
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces"]

    def __init__(self, big: Calculator, small: Calculator, gated: MoECalculator, **kwargs):
        super().__init__(**kwargs)
        self.big, self.small, self.gated = big, small, gated

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        g = gate_values(self.gated, self.atoms)
        out = {}
        for name, calc in (("big", self.big), ("small", self.small)):
            calc.calculate(self.atoms, ["energy", "forces"], all_changes)
            out[name] = (calc.results["energies"], calc.results["forces"])
        energies = g * out["big"][0] + (1.0 - g) * out["small"][0]
        forces = g[:, None] * out["big"][1] + (1.0 - g)[:, None] * out["small"][1]
        self.results = {
            "energy": float(energies.sum()),
            "free_energy": float(energies.sum()),
            "energies": energies,
            "forces": forces,
            "gate": g,
        }


# ---------------------------------------------------------------- NVE with moving chemistry


def co_on_pt111(size=(3, 3, 4), vacuum: float = 8.0, height: float = 1.9) -> Atoms:
    """Periodic Pt(111) slab with one CO on a top site, C down (atoms: Pt..., O, C)."""
    slab = fcc111("Pt", size, vacuum=vacuum, a=3.92)
    add_adsorbate(slab, molecule("CO"), height, "ontop", mol_index=1)
    slab.pbc = True
    slab.info["description"] = (
        f"Pt(111) {size[0]}x{size[1]}, {size[2]} layers, periodic, one CO (C down) on a top site"
    )
    return slab


def nve_start(
    atoms: Optional[Atoms] = None,
    temperature_K: float = NVE_TEMPERATURE_K,
    kick_ev: float = CO_KICK_EV,
    seed: int = 0,
    wall_c: float = 2.3,
    wall_o: float = 3.6,
    wall_k: float = 5.0,
) -> Atoms:
    """Start of the NVE runs: Maxwell-Boltzmann velocities at ``temperature_K``, the CO given
    ``kick_ev`` of extra kinetic energy along x (zero total momentum after), and flat-bottomed
    harmonic walls (``ase.constraints.Hookean`` planes, conservative, counted in the potential
    energy) ``wall_c`` / ``wall_o`` Angstrom above the top Pt layer for C / O: the EMT-trained
    models bind CO by under 0.1 eV, so without them the hot CO desorbs.

    Args:
        atoms: a Pt slab with one CO (default ``co_on_pt111()``)
        temperature_K: initial temperature of all atoms
        kick_ev: extra lateral kinetic energy of the CO (eV)
        seed: seed of the velocities
        wall_c, wall_o: heights of the walls above the top Pt layer (Angstrom)
        wall_k: wall spring constant (eV/A^2)
    """
    atoms = (atoms if atoms is not None else co_on_pt111()).copy()
    symbols = np.array(atoms.get_chemical_symbols())
    pt = np.nonzero(symbols == "Pt")[0]
    c, o = int(np.nonzero(symbols == "C")[0][0]), int(np.nonzero(symbols == "O")[0][0])
    top = atoms.positions[pt, 2].max() - 0.5
    z_top = atoms.positions[pt][atoms.positions[pt, 2] > top, 2].mean()
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    momenta = atoms.get_momenta()
    masses = atoms.get_masses()
    co = [c, o]
    speed = np.sqrt(2.0 * kick_ev / masses[co].sum())
    momenta[co, 0] += masses[co] * speed
    atoms.set_momenta(momenta)
    Stationary(atoms)
    atoms.set_constraint(
        [
            Hookean(c, (0.0, 0.0, 1.0, -(z_top + wall_c)), wall_k),
            Hookean(o, (0.0, 0.0, 1.0, -(z_top + wall_o)), wall_k),
        ]
    )
    atoms.info["nve_start"] = {
        "temperature_K": temperature_K,
        "co_kick_ev": kick_ev,
        "seed": seed,
        "walls_above_top_layer_a": {"C": wall_c, "O": wall_o},
        "wall_k_ev_per_a2": wall_k,
    }
    return atoms


def energy_stats(times_ps: np.ndarray, energies: np.ndarray) -> Dict:
    """Drift (slope of a linear fit, eV/atom/ps), RMS fluctuation about it and largest
    excursion from the start (eV/atom) of a per-atom total-energy series."""
    slope, intercept = np.polyfit(times_ps, energies, 1)
    residual = energies - (slope * times_ps + intercept)
    return {
        "drift_ev_per_atom_per_ps": float(slope),
        "rms_fluctuation_ev_per_atom": float(np.sqrt(np.mean(residual**2))),
        "max_deviation_ev_per_atom": float(np.abs(energies - energies[0]).max()),
    }


def run_nve(
    atoms: Atoms,
    calc: Calculator,
    steps: int,
    timestep_fs: float = TIMESTEP_FS,
    relabel: Optional[Callable[[Atoms], np.ndarray]] = None,
    relabel_every: int = RELABEL_EVERY,
    gate: Optional[Callable[[Atoms], np.ndarray]] = None,
    labels_t0: Optional[np.ndarray] = None,
    sample_every: int = 1,
) -> Dict:
    """Velocity Verlet from ``atoms`` (with momenta, constraints): per-atom total energy against
    time, its drift and fluctuation; a fixed number of steps.

    Args:
        atoms: start (copied)
        calc: ASE calculator
        steps: number of steps
        timestep_fs: timestep
        relabel: static MoE: ``labels = relabel(atoms)`` stored in ``atoms.arrays["expert"]``
            at the start and every ``relabel_every`` steps; the energy jump of each change is
            recorded
        relabel_every: steps between relabellings
        gate: ``g = gate(atoms)`` sampled along the run (moving chemistry)
        labels_t0: static labels of the start, compared with ``g >= 0.5`` along the run
        sample_every: steps between samples
    """
    atoms = atoms.copy()
    symbols = np.array(atoms.get_chemical_symbols())
    carbon = int(np.nonzero(symbols == "C")[0][0]) if "C" in symbols else None
    if relabel is not None:
        atoms.arrays["expert"] = relabel(atoms)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    samples = {"step": [], "energy": [], "stale": [], "co_shift": []}
    jumps = []
    start_xy = atoms.positions[carbon, :2].copy() if carbon is not None else None

    def do_relabel():
        if dyn.nsteps == 0 or dyn.nsteps % relabel_every:
            return
        labels = relabel(atoms)
        if not np.array_equal(labels, atoms.arrays["expert"]):
            before = atoms.get_total_energy()
            atoms.arrays["expert"] = labels
            jumps.append(
                {"step": dyn.nsteps, "jump_ev_per_atom": (atoms.get_total_energy() - before) / len(atoms)}
            )

    def sample():
        if dyn.nsteps % sample_every:
            return
        samples["step"].append(dyn.nsteps)
        samples["energy"].append(atoms.get_total_energy() / len(atoms))
        if gate is not None and labels_t0 is not None:
            region = np.where(gate(atoms) >= 0.5, 0, 1)
            samples["stale"].append(int((region != labels_t0).sum()))
        if carbon is not None:
            samples["co_shift"].append(float(np.linalg.norm(atoms.positions[carbon, :2] - start_xy)))

    if relabel is not None:
        dyn.attach(do_relabel, interval=1)
    dyn.attach(sample, interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    times_ps = np.array(samples["step"]) * timestep_fs / 1000.0
    energies = np.array(samples["energy"])
    result = {
        "atoms": len(atoms),
        "steps": steps,
        "timestep_fs": timestep_fs,
        **energy_stats(times_ps, energies),
        "seconds_per_step": seconds / max(steps, 1),
        "times_ps": times_ps.tolist(),
        "energies_ev_per_atom": energies.tolist(),
        "co_lateral_shift_a": samples["co_shift"],
    }
    if samples["stale"]:
        result["stale_atoms"] = samples["stale"]
    if relabel is not None:
        result["relabelings"] = jumps
        result["relabel_every"] = relabel_every
        result["sum_abs_jumps_ev_per_atom"] = float(sum(abs(j["jump_ev_per_atom"]) for j in jumps))
    return result


def nve_comparison(
    big_file: PathLike,
    small_file: PathLike,
    steps: int,
    device: str = "cpu",
    seed: int = 0,
    gate_options: Optional[Dict] = None,
    timesteps_fs: Sequence[float] = DT_SCALING_FS,
    log: Callable[[str], None] = print,
) -> Dict:
    """NVE of (a) gated, (b) all-big, (c) static relabelled every ``RELABEL_EVERY`` steps,
    (d) force mixing, from one start at ``TIMESTEP_FS``; the gated MoE also at
    ``timesteps_fs`` over the same simulated time (dt^2 scaling of its fluctuation).

    Args:
        big_file, small_file: the two models
        steps: steps at ``TIMESTEP_FS`` (other timesteps: the same simulated time)
        device: device of the models
        seed: seed of the initial velocities
        gate_options: gate options (default ``FOLLOWING_GATE``)
        timesteps_fs: timesteps of the gated MoE's scaling runs
        log: progress messages
    """
    gate_options = dict(FOLLOWING_GATE if gate_options is None else gate_options)
    gated = gated_model(big_file, small_file, gate_options, device)
    big = plain_calculator(big_file, device)
    small = plain_calculator(small_file, device)
    calcs = {
        "gated": gated,
        "big": big,
        "static": static_model(big_file, small_file, device),
        "force_mixing": ForceMixingCalculator(big, small, gated),
    }
    return nve_runs(nve_start(seed=seed), calcs, steps, gate_options, timesteps_fs, log)


def nve_runs(
    start: Atoms,
    calcs: Dict[str, Calculator],
    steps: int,
    gate_options: Optional[Dict] = None,
    timesteps_fs: Sequence[float] = DT_SCALING_FS,
    log: Callable[[str], None] = print,
) -> Dict:
    """The runs of ``nve_comparison`` from ``start`` with the given calculators.

    Args:
        start: start structure with momenta and walls (``nve_start``)
        calcs: ``gated`` (a ``gated_model``), ``big``, ``static`` (a ``static_model``) and
            ``force_mixing`` calculators
        steps: steps at ``TIMESTEP_FS``
        gate_options: the gated model's gate options (for the static labels)
        timesteps_fs: timesteps of the gated MoE's scaling runs
        log: progress messages
    """
    gated = calcs["gated"]
    labels_t0 = static_labels(start, gate_options)

    def gate(atoms):
        # the gated run's own calculator keeps g of the current positions
        if gated.atoms is not None and np.array_equal(gated.atoms.positions, atoms.positions):
            return gated.results["gate"]
        return gate_values(gated, atoms)

    g0 = gate(start)
    runs = {}
    specs = {
        "gated": dict(calc=gated, gate=gate, labels_t0=labels_t0),
        "big": dict(calc=calcs["big"]),
        "static_relabelled": dict(
            calc=calcs["static"], relabel=lambda a: static_labels(a, gate_options)
        ),
        "force_mixing": dict(calc=calcs["force_mixing"]),
    }
    for name, spec in specs.items():
        t = time.perf_counter()
        runs[name] = run_nve(start, steps=steps, timestep_fs=TIMESTEP_FS, **spec)
        log(f"NVE {name}: {steps} steps in {time.perf_counter() - t:.0f} s")
    scaling = {}
    for dt in timesteps_fs:
        if dt == TIMESTEP_FS:
            scaling[dt] = runs["gated"]
            continue
        n = int(round(steps * TIMESTEP_FS / dt))
        t = time.perf_counter()
        scaling[dt] = run_nve(start, gated, n, timestep_fs=dt, sample_every=max(1, int(round(TIMESTEP_FS / dt))))
        log(f"NVE gated at {dt} fs: {n} steps in {time.perf_counter() - t:.0f} s")
    dts = sorted(scaling)
    rms = [scaling[dt]["rms_fluctuation_ev_per_atom"] for dt in dts]
    exponent = float(np.polyfit(np.log(dts), np.log(rms), 1)[0]) if len(dts) > 1 else None
    return {
        "structure": {
            "atoms": len(start),
            "formula": start.get_chemical_formula(),
            "slab": start.info.get("description", "Pt slab with one CO"),
            **start.info["nve_start"],
        },
        "gate_options": dict(gate_options or {}),
        "zones_t0": zone_fractions(g0),
        "static_big_atoms_t0": int((labels_t0 == 0).sum()),
        "runs": runs,
        "dt_scaling": {
            "timesteps_fs": dts,
            "rms_fluctuation_ev_per_atom": rms,
            "drift_ev_per_atom_per_ps": [scaling[dt]["drift_ev_per_atom_per_ps"] for dt in dts],
            "exponent": exponent,
        },
    }


def zone_fractions(g: np.ndarray) -> Dict[str, float]:
    """Fractions of atoms in the gate's zones: big-only ``g == 1``, blend, small-only ``g == 0``."""
    g = np.asarray(g)
    n = max(len(g), 1)
    return {
        "big_only": float((g == 1).sum() / n),
        "blend": float(((g > 0) & (g < 1)).sum() / n),
        "small_only": float((g == 0).sum() / n),
    }


# ---------------------------------------------------------------- accuracy


def accuracy(
    big_file: PathLike, small_file: PathLike, data_dir: PathLike, device: str = "cpu"
) -> Dict:
    """Test errors of the gated MoE (default gate, and the NVE's adsorbate-following gate), the
    static MoE on the same experts and both models alone, by class of atom
    (``measures.atom_classes``: from the split's labels). The static MoE runs twice: on the
    default gate's own region (``static_labels``: the same high-fidelity atoms, the claim's
    comparison) and on the split's labels (the example's buffered regions, for reference)."""
    from ase.io import read

    import measures
    from measures import ATOM_CLASSES, atom_classes, predict, relabelled, test_errors

    test = read(pathlib.Path(data_dir) / "test.xyz", index=":")
    gate_region = [relabelled(a, static_labels(a)) for a in test]
    static = static_model(big_file, small_file, device)
    frames_and_calcs = {
        "gated": (test, gated_model(big_file, small_file, None, device)),
        "gated_following": (test, gated_model(big_file, small_file, FOLLOWING_GATE, device)),
        "static": (gate_region, static),
        "static_split": (test, static),
        "big": (test, plain_calculator(big_file, device)),
        "small": (test, plain_calculator(small_file, device)),
    }
    calcs = {name: calc for name, (_, calc) in frames_and_calcs.items()}
    errors = {
        name: test_errors(test, predict(calc, frames))
        for name, (frames, calc) in frames_and_calcs.items()
    }
    zones = {}
    for name in ("gated", "gated_following"):
        g = np.concatenate([gate_values(calcs[name], a) for a in test])
        zones[name] = zone_fractions(g)
    return {
        "frames": len(test),
        "classes": list(ATOM_CLASSES),
        "class_titles": dict(getattr(measures, "ATOM_CLASS_TITLES", {})),
        "errors": errors,
        "atom_counts": {
            c: int(sum((atom_classes(a) == c).sum() for a in test)) for c in ATOM_CLASSES
        },
        "static_hf_fraction": float(
            np.mean(np.concatenate([a.arrays["expert"] for a in gate_region]) == 0)
        ),
        "static_split_hf_fraction": float(
            np.mean(np.concatenate([a.arrays["expert"] for a in test]) == 0)
        ),
        "gate_zones": zones,
    }


# ---------------------------------------------------------------- speed


def bench_slab(size: int = 6, layers: int = 8, rattle: float = 0.02) -> Atoms:
    """The example's benchmark slab (``structures.BenchSlab``): Pt(111), CO on every 4th top site."""
    from structures import BenchSlab

    return BenchSlab(size, layers, rattle=rattle).build()


# timed structures: the example's benchmark slab, and the same slab rattled by 0.15 A (beyond
# 700 K amplitudes, ~0.1 A), where stretched Pt-Pt bonds put atoms in the default gate's blend zone
SPEED_STRUCTURES = {"bench": 0.02, "bench_rattled": 0.15}


def _edge_fraction(data: AtomicDataDict.Type, atoms: np.ndarray) -> float:
    """Fraction of the edges of ``data`` centred on the masked atoms."""
    centres = data[AtomicDataDict.EDGE_INDEX_KEY][0].cpu().numpy()
    return float(atoms[centres].mean())


def speed(
    big_file: PathLike,
    small_file: PathLike,
    device: str = "cpu",
    repeats: int = 7,
    warmup: int = 1,
    structures: Optional[Dict[str, Atoms]] = None,
) -> Dict:
    """Eager timing, interleaved in one run per structure: gated MoE (default gate), the static
    MoE with the big expert on the same atoms (``g > 0``), all-big and all-small.

    Times are the fastest of ``repeats`` calls (the median is kept as well).
    Ideal times from the zones (fractions of atoms ``f1`` big-only, ``fb`` blend, ``f0``
    small-only) with the blend zone counted twice: gated ``(f1 + fb) t_big + (fb + f0) t_small``,
    static ``(f1 + fb) t_big + f0 t_small``; and the tighter per-edge ideal with each expert's
    share of the edges centred on the atoms it evaluates in place of atom fractions (surface
    atoms have fewer neighbours). Speed-ups are ``t_big / t``.

    Args:
        big_file, small_file: the two models
        device: device of the models
        repeats: timed calls of each model
        warmup: untimed calls first
        structures: name -> structure (default ``SPEED_STRUCTURES`` of ``bench_slab``)
    """
    from nequip_moe.benchmarking.speed import time_call, time_interleaved

    if structures is None:
        structures = {name: bench_slab(rattle=r) for name, r in SPEED_STRUCTURES.items()}
    gated = gated_model(big_file, small_file, None, device)
    static = static_model(big_file, small_file, device)
    big = plain_calculator(big_file, device)
    small = plain_calculator(small_file, device)
    torch_device = torch.device(device)
    rows = {}
    for label, atoms in structures.items():
        atoms = atoms.copy()
        g = gate_values(gated, atoms)
        labelled = atoms.copy()
        labelled.arrays["expert"] = np.where(g > 0, 0, 1)
        inputs = {
            "gated": gated.atoms_to_data(atoms),
            "static": static.atoms_to_data(labelled),
            "big": big.atoms_to_data(atoms),
            "small": small.atoms_to_data(atoms),
        }
        models = {"gated": gated, "static": static, "big": big, "small": small}
        calls = {
            name: (lambda m=models[name].model, d=data: time_call(m, d, torch_device))
            for name, data in inputs.items()
        }
        times = time_interleaved(calls, repeats, warmup)
        # the fastest call: on a shared machine, load only ever adds time (median kept too)
        best = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        zones = zone_fractions(g)
        f1, fb, f0 = zones["big_only"], zones["blend"], zones["small_only"]
        t_big, t_small = best["big"], best["small"]
        e_big = _edge_fraction(inputs["big"], g > 0)
        e_small = _edge_fraction(inputs["small"], g < 1)
        e_small_static = _edge_fraction(inputs["small"], g == 0)
        ideal = {
            "gated": (f1 + fb) * t_big + (fb + f0) * t_small,
            "static": (f1 + fb) * t_big + f0 * t_small,
        }
        ideal_edges = {
            "gated": e_big * t_big + e_small * t_small,
            "static": e_big * t_big + e_small_static * t_small,
        }
        rows[label] = {
            "atoms": len(atoms),
            "rattle_a": float(atoms.info.get("rattle", float("nan"))),
            "zones": zones,
            "hf_fraction": f1 + fb,
            "edge_fractions": {"big": e_big, "small": e_small, "small_static": e_small_static},
            # the neighbour list each model gets: a gated MoE cannot know g before the call, so
            # every centre needs the big expert's cutoff (a static MoE prunes small-expert centres)
            "input_edges": {
                name: int(data[AtomicDataDict.EDGE_INDEX_KEY].shape[1]) for name, data in inputs.items()
            },
            "seconds": best,
            "median_seconds": median,
            "times_s": times,
            "speedup": {k: t_big / best[k] for k in ("gated", "static", "small")},
            "ideal_speedup": {k: t_big / v for k, v in ideal.items()},
            "efficiency": {k: ideal[k] / best[k] for k in ideal},
            "ideal_speedup_edges": {k: t_big / v for k, v in ideal_edges.items()},
            "efficiency_edges": {k: ideal_edges[k] / best[k] for k in ideal_edges},
            "gated_over_static": best["gated"] / best["static"],
            "ideal_gated_over_static": ideal_edges["gated"] / ideal_edges["static"],
        }
    return {
        "structure": "BenchSlab(size=6, layers=8): Pt(111) 6x6x8 + CO on every 4th top site",
        "repeats": repeats,
        "rows": rows,
    }


# ---------------------------------------------------------------- the section


def _claims(nve: Optional[Dict], acc: Optional[Dict], spd: Optional[Dict]) -> List[Dict]:
    claims = []

    def claim(text, value, threshold, holds, detail=""):
        claims.append(
            {"claim": text, "value": value, "threshold": threshold, "holds": bool(holds), "detail": detail}
        )

    if nve is not None:
        runs = nve["runs"]
        drift = {k: abs(v["drift_ev_per_atom_per_ps"]) for k, v in runs.items()}
        claim(
            f"gated MoE NVE |drift| <= {DRIFT_BOUND:g} eV/atom/ps at {TIMESTEP_FS:g} fs "
            f"(heating <= {DRIFT_BOUND / (3 * units.kB):.2f} K/ps)",
            drift["gated"], DRIFT_BOUND, drift["gated"] <= DRIFT_BOUND,
        )
        claim(
            f"all-big NVE |drift| <= {DRIFT_BOUND:g} eV/atom/ps (the same bound)",
            drift["big"], DRIFT_BOUND, drift["big"] <= DRIFT_BOUND,
        )
        stale = max(runs["gated"].get("stale_atoms", [0]))
        claim(
            "the chemistry moves: the gate's high-fidelity region (g >= 0.5) leaves the static "
            "region fixed at t = 0 (atoms whose label would be wrong, largest count)",
            stale, 1, stale >= 1,
            f"CO lateral shift {max(runs['gated']['co_lateral_shift_a']):.1f} A",
        )
        claim(
            "static MoE relabelled during the run: energy jumps at relabelling "
            "(sum |jump|, eV/atom, larger than the gated RMS fluctuation)",
            runs["static_relabelled"]["sum_abs_jumps_ev_per_atom"],
            runs["gated"]["rms_fluctuation_ev_per_atom"],
            runs["static_relabelled"]["sum_abs_jumps_ev_per_atom"]
            > runs["gated"]["rms_fluctuation_ev_per_atom"],
            f"{len(runs['static_relabelled']['relabelings'])} relabellings changed labels",
        )
        claim(
            "force mixing does not conserve energy: |drift| above the bound",
            drift["force_mixing"], DRIFT_BOUND, drift["force_mixing"] > DRIFT_BOUND,
        )
        exponent = nve["dt_scaling"]["exponent"]
        if exponent is not None:
            lo, hi = DT_EXPONENT_RANGE
            claim(
                f"gated energy fluctuation scales as dt^2 (fitted exponent in [{lo}, {hi}])",
                exponent, list(DT_EXPONENT_RANGE), lo <= exponent <= hi,
                f"timesteps {nve['dt_scaling']['timesteps_fs']} fs",
            )
    if acc is not None:
        forces = {k: v["forces_mae_mev_per_a"] for k, v in acc["errors"].items()}
        # adsorbates and the high-fidelity Pt classes (their names follow measures.py)
        for cls in [c for c in acc["classes"] if c in HIGH_FIDELITY_CLASSES]:
            if forces["static"].get(cls) is None:
                continue
            ratio = forces["gated"][cls] / forces["static"][cls]
            claim(
                f"gated MoE force MAE on {cls} <= {ACCURACY_TOLERANCE} x the static MoE's "
                "(same experts, the gate's region as static labels)",
                ratio, ACCURACY_TOLERANCE, ratio <= ACCURACY_TOLERANCE,
                f"gated {forces['gated'][cls]:.1f}, static {forces['static'][cls]:.1f} meV/A",
            )
    if spd is not None:
        rows = spd["rows"]
        slowest = min(rows.values(), key=lambda r: r["speedup"]["gated"])
        claim(
            "gated MoE faster than all-big on every timed slab (smallest measured speed-up > 1)",
            slowest["speedup"]["gated"], 1.0, slowest["speedup"]["gated"] > 1.0,
            f"per-edge ideal {slowest['ideal_speedup_edges']['gated']:.2f}x at hf fraction "
            f"{slowest['hf_fraction']:.2f}",
        )
        blended = max(rows.values(), key=lambda r: r["zones"]["blend"])
        claim(
            "the gated MoE reaches its ideal with the blend zone counted twice: per-edge "
            f"efficiency >= {SPEED_EFFICIENCY} (blend fraction {blended['zones']['blend']:.2f})",
            blended["efficiency_edges"]["gated"], SPEED_EFFICIENCY,
            blended["efficiency_edges"]["gated"] >= SPEED_EFFICIENCY,
            f"gated / static time {blended['gated_over_static']:.3f} (ideal "
            f"{blended['ideal_gated_over_static']:.3f})",
        )
    return claims


def plot_nve(nve: Dict, out_dir: PathLike, name: str = "adaptive_nve.png") -> str:
    """Total energy (meV/atom, from its start) against time for the four runs; below, the CO's
    lateral shift and the atoms a t = 0 static labelling gets wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "gated": "gated MoE",
        "big": "all-big",
        "static_relabelled": f"static MoE, relabelled every {RELABEL_EVERY} steps",
        "force_mixing": "force mixing (energy: gated expression)",
    }
    fig, (top, zoom, bottom) = plt.subplots(
        3, 1, figsize=(7, 8), sharex=True, height_ratios=[2, 1.3, 1]
    )
    for key, title in titles.items():
        run = nve["runs"][key]
        e = 1000.0 * (np.array(run["energies_ev_per_atom"]) - run["energies_ev_per_atom"][0])
        top.plot(run["times_ps"], e, label=title, lw=1)
        if key in ("gated", "big"):
            zoom.plot(run["times_ps"], 1000.0 * e, label=title, lw=1)
    top.set_ylabel("E_total - E_total(0)\n(meV/atom)")
    top.legend(fontsize=8)
    top.set_title(f"NVE, {nve['structure']['formula']}, {nve['structure']['temperature_K']:.0f} K, hot CO")
    zoom.set_ylabel("gated, all-big\n(micro-eV/atom)")
    zoom.legend(fontsize=8)
    gated = nve["runs"]["gated"]
    bottom.plot(gated["times_ps"], gated["co_lateral_shift_a"], label="CO lateral shift (A)")
    if "stale_atoms" in gated:
        bottom.plot(gated["times_ps"], gated["stale_atoms"], label="atoms mislabelled by t=0 labels")
    bottom.set_xlabel("time (ps)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def adaptive_section(
    big_file: PathLike,
    small_file: PathLike,
    data_dir: PathLike,
    out_dir: PathLike,
    nve_steps: int = 600,
    device: str = "cpu",
    seed: int = 0,
    speed_repeats: int = 7,
    parts: Sequence[str] = ("nve", "accuracy", "speed"),
    log: Callable[[str], None] = print,
) -> Dict:
    """Measure the gated MoE of two models against static regions, force mixing and all-big.

    Writes ``adaptive.json`` and ``adaptive_nve.png`` into ``out_dir``.

    Args:
        big_file: high-fidelity model (all-big ``.nequip.zip`` or checkpoint)
        small_file: low-fidelity model
        data_dir: the data stage's folder (``test.xyz``)
        out_dir: where the JSON and figure go
        nve_steps: steps of each NVE run at 1 fs
        device: device of the models
        seed: seed of the NVE velocities
        speed_repeats: timed repeats of each model
        parts: which measurements to run (``nve``, ``accuracy``, ``speed``)
        log: progress messages

    Returns:
        ``{"nve", "accuracy", "speed", "claims", "figures", "seconds", "settings"}``; the
        claims are ``{claim, value, threshold, holds, detail}``
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    section = {
        "models": {"big": str(big_file), "small": str(small_file)},
        "settings": {
            "nve_steps": nve_steps,
            "timestep_fs": TIMESTEP_FS,
            "relabel_every": RELABEL_EVERY,
            "drift_bound_ev_per_atom_per_ps": DRIFT_BOUND,
            "accuracy_tolerance": ACCURACY_TOLERANCE,
            "speed_efficiency": SPEED_EFFICIENCY,
            "seed": seed,
            "device": device,
        },
        "nve": None,
        "accuracy": None,
        "speed": None,
        "figures": [],
        "seconds": {},
    }
    if "nve" in parts:
        t = time.perf_counter()
        section["nve"] = nve_comparison(big_file, small_file, nve_steps, device, seed, log=log)
        section["seconds"]["nve"] = time.perf_counter() - t
        section["figures"].append(plot_nve(section["nve"], out_dir))
    if "accuracy" in parts:
        t = time.perf_counter()
        section["accuracy"] = accuracy(big_file, small_file, data_dir, device)
        section["seconds"]["accuracy"] = time.perf_counter() - t
        log(f"accuracy: {section['seconds']['accuracy']:.0f} s")
    if "speed" in parts:
        t = time.perf_counter()
        section["speed"] = speed(big_file, small_file, device, repeats=speed_repeats)
        section["seconds"]["speed"] = time.perf_counter() - t
        log(f"speed: {section['seconds']['speed']:.0f} s")
    section["claims"] = _claims(section["nve"], section["accuracy"], section["speed"])
    (out_dir / "adaptive.json").write_text(json.dumps(section, indent=2, default=float))
    return section


# ---------------------------------------------------------------- markdown


def _g(value, fmt=".3g"):
    return "-" if value is None else format(value, fmt)


def adaptive_markdown(section: Dict) -> str:
    """The report's markdown for an ``adaptive_section`` result."""
    lines = ["## Adaptive regions: the gated MoE", ""]
    lines += [
        "The gated MoE `E = sum_i [g_i e_i^big + (1 - g_i) e_i^small]` of the all-big and all-small "
        "models (no retraining), with the strictly local `AdsorbateCoordinationGate`, against the "
        "static MoE of the same two models, force mixing `F_i = g_i F_i^big + (1 - g_i) F_i^small` "
        "and all-big.",
        "",
        "### Claims",
        "",
    ]
    for c in section["claims"]:
        verdict = "holds" if c["holds"] else "**does not hold**"
        value = c["value"]
        value = _g(value, ".4g") if isinstance(value, (int, float)) else value
        detail = f"; {c['detail']}" if c.get("detail") else ""
        threshold = c["threshold"]
        threshold = _g(threshold, ".4g") if isinstance(threshold, (int, float)) else threshold
        lines.append(f"- {c['claim']}: {verdict} (value {value}, threshold {threshold}{detail})")
    nve = section.get("nve")
    if nve:
        s = nve["structure"]
        lines += [
            "",
            "### NVE with moving chemistry (ASE velocity Verlet)",
            "",
            f"{s['slab']} ({s['atoms']} atoms); velocities at {s['temperature_K']:.0f} K (seed "
            f"{s['seed']}), the CO given {s['co_kick_ev']} eV of extra kinetic energy along x; "
            "flat-bottomed harmonic walls (conservative, in the potential energy) "
            f"{s['walls_above_top_layer_a']['C']} / {s['walls_above_top_layer_a']['O']} A above "
            "the top layer keep C / O on the surface (the EMT-trained models bind CO by < 0.1 eV). "
            f"Gate options `{nve['gate_options']}`: terrace Pt counts as regular, so the "
            "high-fidelity region is the CO and the Pt it touches and follows the CO. At t = 0: "
            f"zones {', '.join(f'{k} {v:.2f}' for k, v in nve['zones_t0'].items())}; static "
            f"labels (`pt_co_coordination`, same radii) put {nve['static_big_atoms_t0']} atoms on "
            "the big expert. Drift: slope of a linear fit of the total energy; fluctuation: RMS "
            "about it.",
            "",
            "| run | steps x dt (fs) | drift (eV/atom/ps) | RMS fluctuation (eV/atom) | max abs(E - E0) (eV/atom) | s/step |",
            "|---|---|---|---|---|---|",
        ]
        for key, title in (
            ("gated", "gated MoE"),
            ("big", "all-big"),
            ("static_relabelled", "static MoE relabelled"),
            ("force_mixing", "force mixing"),
        ):
            r = nve["runs"][key]
            lines.append(
                f"| {title} | {r['steps']} x {r['timestep_fs']:g} | {r['drift_ev_per_atom_per_ps']:.2e} | "
                f"{r['rms_fluctuation_ev_per_atom']:.2e} | {r['max_deviation_ev_per_atom']:.2e} | "
                f"{r['seconds_per_step']:.3f} |"
            )
        st = nve["runs"]["static_relabelled"]
        lines += [
            "",
            f"The static MoE was relabelled every {st['relabel_every']} steps; "
            f"{len(st['relabelings'])} relabellings changed labels, with energy jumps summing "
            f"to {st['sum_abs_jumps_ev_per_atom']:.2e} eV/atom in absolute value. "
            f"The CO moved up to {max(nve['runs']['gated']['co_lateral_shift_a']):.1f} A "
            "laterally; labels fixed at t = 0 would have been wrong on up to "
            f"{max(nve['runs']['gated'].get('stale_atoms', [0]))} atoms.",
            "",
        ]
        d = nve["dt_scaling"]
        lines.append(
            "Gated MoE, same simulated time at several timesteps: RMS fluctuation "
            + ", ".join(
                f"{r:.2e} eV/atom at {dt:g} fs" for dt, r in zip(d["timesteps_fs"], d["rms_fluctuation_ev_per_atom"])
            )
            + f"; fitted exponent {_g(d['exponent'])} (Verlet: 2)."
        )
        if "adaptive_nve.png" in section.get("figures", []):
            lines += ["", "![NVE total energy](adaptive_nve.png)"]
    acc = section.get("accuracy")
    if acc:
        titles = {
            "gated": "gated MoE (default gate)",
            "gated_following": "gated MoE (NVE's adsorbate-following gate)",
            "static": "static MoE (the default gate's region)",
            "static_split": "static MoE (split's buffered labels)",
            "big": "all-big",
            "small": "all-small",
        }
        classes = ["all"] + list(acc["classes"])
        counts = ", ".join(f"{k} {v}" for k, v in acc["atom_counts"].items())
        lines += [
            "",
            f"### Accuracy on the test split ({acc['frames']} frames)",
            "",
            f"Force MAE (meV/A per component) by class of atom (classes from the split's static "
            f"labels; atoms: {counts}). The static MoE puts {acc['static_hf_fraction']:.2f} of the "
            "atoms on the big expert on the default gate's region (its g >= 0.5 atoms as labels: "
            "the claims compare the gated MoE with this one) and "
            f"{acc.get('static_split_hf_fraction', float('nan')):.2f} on the split's buffered "
            "labels; gated zones (big-only / blend / small-only): "
            + "; ".join(
                f"{titles[k]} {z['big_only']:.2f} / {z['blend']:.2f} / {z['small_only']:.2f}"
                for k, z in acc["gate_zones"].items()
            )
            + ".",
            "",
            "| model | E MAE meV/atom | " + " | ".join(classes) + " |",
            "|---|---|" + "---|" * len(classes),
        ]
        for key, title in titles.items():
            e = acc["errors"][key]
            f = e["forces_mae_mev_per_a"]
            lines.append(
                f"| {title} | {_g(e['energy_mae_mev_per_atom']['all'], '.1f')} | "
                + " | ".join(_g(f.get(c), ".1f") for c in classes)
                + " |"
            )
        lines.append("")
        lines += [f"- {k}: {v}" for k, v in acc.get("class_titles", {}).items()]
    spd = section.get("speed")
    if spd:
        lines += [
            "",
            "### Speed (eager, CPU, interleaved in one run)",
            "",
            f"{spd['structure']}, fastest of {spd['repeats']} calls (forces included), as built "
            "(rattle 0.02 A) and rattled by 0.15 A (beyond 700 K amplitudes) so that the default "
            "gate has a blend zone. The static MoE puts the same atoms (g > 0) on the big expert. "
            "Ideal: the experts' own times weighted by the atoms they evaluate (per edge: by "
            "their share of the edges centred on them), the blend zone counted twice for the "
            "gated MoE; efficiency = ideal time / measured time (above 1: the experts' cost is "
            "not linear in atoms or edges, so the ideal is no strict bound).",
            "",
            "| structure | zones big / blend / small | model | time (s) | speed-up vs all-big | ideal (atoms) | ideal (edges) | efficiency (edges) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, row in spd["rows"].items():
            z = row["zones"]
            zones = f"{z['big_only']:.3f} / {z['blend']:.3f} / {z['small_only']:.3f}"
            head = f"| {label} ({row['atoms']} atoms) | {zones} "
            lines.append(f"{head}| all-big | {row['seconds']['big']:.3f} | 1 | - | - | - |")
            for key, title in (("gated", "gated MoE"), ("static", "static MoE")):
                lines.append(
                    f"{head}| {title} | {row['seconds'][key]:.3f} | {row['speedup'][key]:.2f} | "
                    f"{row['ideal_speedup'][key]:.2f} | {row['ideal_speedup_edges'][key]:.2f} | "
                    f"{row['efficiency_edges'][key]:.2f} |"
                )
            lines.append(
                f"{head}| all-small | {row['seconds']['small']:.3f} | {row['speedup']['small']:.2f} | - | - | - |"
            )
        lines += [
            "",
            "Edges in each model's neighbour list (the gated MoE cannot know g before the call, so "
            "every centre gets the big expert's cutoff; the static MoE's list is pruned on "
            "small-expert centres): "
            + "; ".join(
                f"{label}: " + ", ".join(f"{k} {v}" for k, v in row["input_edges"].items())
                for label, row in spd["rows"].items()
                if "input_edges" in row
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main(args: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description="Gated MoE section of the Pt + CO report.")
    parser.add_argument("--big", required=True, help="all-big model (.nequip.zip or checkpoint)")
    parser.add_argument("--small", required=True, help="all-small model")
    parser.add_argument("--data", required=True, help="data folder with test.xyz")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--nve-steps", type=int, default=600)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", default=["nve", "accuracy", "speed"],
                        choices=["nve", "accuracy", "speed"])
    args = parser.parse_args(args)
    section = adaptive_section(
        args.big, args.small, args.data, args.out, args.nve_steps, args.device, args.seed,
        parts=args.parts,
    )
    text = adaptive_markdown(section)
    (pathlib.Path(args.out) / "adaptive.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    main()
