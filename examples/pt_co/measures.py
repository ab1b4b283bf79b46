"""Measurements of the Pt + CO example's report, each a function of models and frames.

Test errors (energy per atom by kind of frame, forces by class of atom), the bulk Pt equation
of state (of each MoE expert alone too), the force error against the distance from the
expert interface, the split-crystal interface test (and the part of it a small expert of a
shorter cutoff cannot see), the experts' energy disagreement on shared
bulk, the buffer-width sweep, the NVE energy drift (and its dt^2 scaling) in ASE and in LAMMPS,
the teacher's label sanity, and the speed-up of the MoE over the all-big model with its ideal
bound (``nequip_moe.benchmarking``).
"""

import dataclasses
import pathlib
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase import Atoms, units

from nequip.integrations.ase import NequIPCalculator

from nequip_moe.compat.nequip_api import calculator_from_saved_model
from nequip_moe.composite import TYPE_ELEMENTS_KEY
from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.integrations.model_files import is_compiled, read_metadata
from nequip_moe.validation.bulk import fit_eos

ATOM_CLASSES = ("adsorbate", "core_pt", "buffer", "interface", "bulk")
ATOM_CLASS_TITLES = {
    "adsorbate": "adsorbate (C, O)",
    "core_pt": "core Pt (bonded to C/O or under-coordinated)",
    "buffer": "buffer (big-expert Pt around the core)",
    "interface": "interface shell (small-expert Pt next to the big region)",
    "bulk": "bulk (small-expert Pt beyond the shell)",
}
# unions of classes the claims use: the core (adsorbate + core Pt), the small-expert region,
# and its far part in frames with both experts (the control of the interface-penalty claim)
ATOM_GROUPS = ("core", "small", "interface_far")
INTERFACE_SHELL = 3.0  # A: one Pt nearest-neighbour shell (2.77 A) around the big region
FRAME_GROUPS = ("bulk", "surface", "gas")
BIG, SMALL = 0, 1


@dataclasses.dataclass
class ReportModel:
    """A model of the report.

    Args:
        name: short name (keys of ``report.json``)
        title: name in tables and plots
        path: the file the report evaluates (compiled ``--target ase`` file, else package)
        device: device to evaluate on (the compile device for compiled files)
    """

    name: str
    title: str
    path: pathlib.Path
    device: str = "cpu"

    @property
    def is_moe(self) -> bool:
        return TYPE_ELEMENTS_KEY in self.metadata

    @property
    def metadata(self) -> Dict[str, str]:
        if not hasattr(self, "_metadata"):
            self._metadata = read_metadata(self.path)
        return self._metadata

    def calculator(self):
        """ASE calculator: ``MoECalculator`` (labels from ``atoms.arrays["expert"]``) for MoE models."""
        if self.is_moe:
            return MoECalculator.from_file(self.path, device=self.device)
        if is_compiled(self.path):
            return NequIPCalculator.from_compiled_model(
                self.path, device=self.device, chemical_species_to_atom_type_map=True
            )
        return calculator_from_saved_model(
            NequIPCalculator, self.path, device=self.device, chemical_species_to_atom_type_map=True
        )


# ---------------------------------------------------------------- atom classes


def interface_distance(atoms: Atoms) -> np.ndarray:
    """Signed distance (A) of every atom from the expert interface: the distance to the
    nearest atom of the other expert, negative inside the big region; ``nan`` in frames with
    one expert only.

    Args:
        atoms: frame with the per-atom ``expert`` array
    """
    expert = atoms.arrays["expert"]
    if len(set(expert.tolist())) < 2:
        return np.full(len(atoms), np.nan)
    distances = atoms.get_all_distances(mic=True)
    other = expert[None, :] != expert[:, None]
    nearest = np.where(other, distances, np.inf).min(axis=1)
    return np.where(expert == BIG, -nearest, nearest)


def core_mask(atoms: Atoms) -> np.ndarray:
    """The frame's ``core`` array (the data stage's), else the core recomputed from geometry
    (``data.core_atoms``: C, O, Pt bonded to them, under-coordinated Pt)."""
    if "core" in atoms.arrays:
        return atoms.arrays["core"].astype(bool)
    from data import core_atoms

    return core_atoms(atoms)


def atom_classes(atoms: Atoms) -> np.ndarray:
    """Class of every atom (``ATOM_CLASSES``): C and O are adsorbates, core Pt (``core_mask``),
    other big-expert Pt the buffer, small-expert Pt within ``INTERFACE_SHELL`` of the big region
    the interface shell, and other small-expert Pt bulk.

    Args:
        atoms: frame with the per-atom ``expert`` array
    """
    distance = interface_distance(atoms)
    is_pt = atoms.numbers == 78
    big = atoms.arrays["expert"] == BIG
    shell = ~big & (distance < INTERFACE_SHELL)  # nan compares False
    return np.select(
        [~is_pt, is_pt & core_mask(atoms), big, shell],
        ["adsorbate", "core_pt", "buffer", "interface"],
        default="bulk",
    )


def atom_groups(atoms: Atoms, classes: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Masks of ``ATOM_GROUPS``: ``core`` (adsorbate + core Pt), ``small`` (every small-expert
    atom) and ``interface_far`` (small-expert atoms beyond the shell, in frames with both
    experts: the same structures as the interface shell, away from the interface)."""
    classes = atom_classes(atoms) if classes is None else classes
    mixed = len(set(atoms.arrays["expert"].tolist())) > 1
    return {
        "core": np.isin(classes, ["adsorbate", "core_pt"]),
        "small": atoms.arrays["expert"] == SMALL,
        "interface_far": (classes == "bulk") & mixed,
    }


def frame_kind(atoms: Atoms) -> str:
    """The frame's ``kind`` (``user`` when it has none)."""
    return str(atoms.info.get("kind", "user"))


def frame_group(atoms: Atoms) -> str:
    """``bulk`` (all small expert), ``gas`` (no Pt) or ``surface``."""
    if not (atoms.numbers == 78).any():
        return "gas"
    if (atoms.arrays["expert"] == SMALL).all():
        return "bulk"
    return "surface"


# ---------------------------------------------------------------- test errors


def predict(calc, frames: Sequence[Atoms]) -> List[Dict[str, np.ndarray]]:
    """Energy and forces of ``calc`` on every frame (copies keep the ``expert`` array)."""
    predictions = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        predictions.append(
            {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        )
    return predictions


def _mean(values) -> Optional[float]:
    values = np.concatenate([np.ravel(v) for v in values]) if values else np.array([])
    return float(values.mean()) if values.size else None


def test_errors(frames: Sequence[Atoms], predictions) -> Dict:
    """Energy MAE (meV/atom) by frame group and force MAE (meV/A, per component) by atom class
    and group (``ATOM_CLASSES``, ``ATOM_GROUPS``); both by kind of frame too (``by_kind``)."""
    energy = {group: [] for group in ("all",) + FRAME_GROUPS}
    forces = {name: [] for name in ("all",) + ATOM_CLASSES + ATOM_GROUPS}
    kinds: Dict[str, Dict[str, list]] = {}
    for atoms, pred in zip(frames, predictions):
        e_err = 1000.0 * abs(pred["energy"] - atoms.get_potential_energy()) / len(atoms)
        energy["all"].append(e_err)
        energy[frame_group(atoms)].append(e_err)
        f_err = 1000.0 * np.abs(pred["forces"] - atoms.get_forces())
        forces["all"].append(f_err)
        classes = atom_classes(atoms)
        for name in ATOM_CLASSES:
            forces[name].append(f_err[classes == name])
        groups = atom_groups(atoms, classes)
        for name in ATOM_GROUPS:
            forces[name].append(f_err[groups[name]])
        kind = kinds.setdefault(frame_kind(atoms), {"energy": [], "forces": [], "core": []})
        kind["energy"].append(e_err)
        kind["forces"].append(f_err)
        kind["core"].append(f_err[groups["core"]])

    return {
        "energy_mae_mev_per_atom": {k: _mean(v) for k, v in energy.items()},
        "forces_mae_mev_per_a": {k: _mean(v) for k, v in forces.items()},
        "by_kind": {
            kind: {
                "frames": len(v["energy"]),
                "energy_mae_mev_per_atom": _mean(v["energy"]),
                "forces_mae_mev_per_a": _mean(v["forces"]),
                "core_forces_mae_mev_per_a": _mean(v["core"]),
            }
            for kind, v in kinds.items()
        },
    }


def force_error_by_distance(frames, predictions, bins=np.arange(-6.0, 6.5, 1.0)) -> Dict:
    """Mean per-atom force error norm (meV/A) in bins of signed distance from the interface."""
    distance = np.concatenate([interface_distance(a) for a in frames])
    error = np.concatenate(
        [
            1000.0 * np.linalg.norm(p["forces"] - a.get_forces(), axis=1)
            for a, p in zip(frames, predictions)
        ]
    )
    index = np.digitize(distance, bins)
    rows = []
    for k in range(1, len(bins)):
        selected = (index == k) & ~np.isnan(distance)
        if selected.any():
            rows.append(
                {
                    "distance_a": float(0.5 * (bins[k - 1] + bins[k])),
                    "force_error_mev_per_a": float(error[selected].mean()),
                    "atoms": int(selected.sum()),
                }
            )
    return {"bins": rows}


# ---------------------------------------------------------------- equation of state


def eos_curves(eos_frames: Sequence[Atoms], models: Sequence[ReportModel]) -> Dict:
    """E(V) per atom of the reference and every model on the held-out bulk set; each MoE
    expert alone too (all atoms labelled with that expert)."""
    volumes = [a.get_volume() / len(a) for a in eos_frames]
    curves = {"reference": [a.get_potential_energy() / len(a) for a in eos_frames]}
    for model in models:
        calc = model.calculator()
        labellings = {model.name: None}
        if model.is_moe:
            labellings = {f"{model.name}:big_expert": BIG, f"{model.name}:small_expert": SMALL}
        for key, label in labellings.items():
            frames = [a.copy() for a in eos_frames]
            if label is not None:
                for atoms in frames:
                    atoms.arrays["expert"] = np.full(len(atoms), label)
            curves[key] = [p["energy"] / len(a) for a, p in zip(frames, predict(calc, frames))]
    return {
        "volumes": volumes,
        "energies": curves,
        "fits": {key: fit_eos(volumes, energies) for key, energies in curves.items()},
    }


# ---------------------------------------------------------------- the experts' interface

SPLIT_STRAINS = (-0.02, -0.01, 0.0, 0.01, 0.02)


def lattice_constant(fit: Dict, default: float) -> float:
    """fcc lattice constant (A) from a Birch-Murnaghan fit's V0 (A^3/atom), else ``default``."""
    return float((4.0 * fit["V0"]) ** (1.0 / 3.0)) if "V0" in fit else float(default)


def split_crystal_forces(
    models: Sequence[ReportModel], a0: float, strains: Sequence[float] = SPLIT_STRAINS,
    receptive_radius: Optional[float] = None,
) -> Dict:
    """Max and RMS force norm (meV/A) of every model on perfect fcc Pt split between the
    experts by the (100), (110) and (111) planes and by a sphere of big-expert atoms in a
    small-expert matrix (``nequip_moe.validation.crystal.split_geometries``: interfaces farther
    apart than twice the receptive radius), at each strain. The reference force is zero on every
    atom by symmetry: any force is the interface's artefact. Models without expert labels
    (all-big) see the same crystals and are the numerical control. Each strain's row gives the
    largest max |F| over the geometries (``geometry``: which) and the RMS over all their atoms.

    Args:
        models: models to evaluate
        a0: zero-strain lattice constant (A), the reference's
        strains: isotropic linear strains
        receptive_radius: how far (A) an atom's energy reaches (default: the largest expert
            cutoff of the MoE models)
    """
    from nequip_moe.validation.crystal import split_geometries, strained

    from structures import pt_bulk

    if receptive_radius is None:
        receptive_radius = max(max(expert_cutoffs(m)) for m in models if m.is_moe)
    geometries = split_geometries(pt_bulk(a0, repeat=1), receptive_radius)
    result = {"a0": a0, "strains": list(strains), "receptive_radius_a": float(receptive_radius),
              "geometries": {name: len(atoms) for name, atoms in geometries.items()},
              "atoms": sum(len(atoms) for atoms in geometries.values()), "models": {}}
    for model in models:
        calc = model.calculator()
        norms = {name: [1000.0 * np.linalg.norm(p["forces"], axis=1) for p in
                        predict(calc, [strained(atoms, s) for s in strains])]
                 for name, atoms in geometries.items()}
        rows = []
        for k, strain in enumerate(strains):
            largest = max(norms, key=lambda name: norms[name][k].max())
            every = np.concatenate([norms[name][k] for name in norms])
            rows.append({"strain": float(strain), "geometry": largest,
                         "max_force_mev_per_a": float(norms[largest][k].max()),
                         "rms_force_mev_per_a": float(np.sqrt(np.mean(every ** 2)))})
        worst = max(rows, key=lambda r: r["max_force_mev_per_a"])
        result["models"][model.name] = {
            "rows": rows, "worst_max_force_mev_per_a": worst["max_force_mev_per_a"],
            "worst_geometry": worst["geometry"],
        }
    return result


def interface_penalty(model: ReportModel, frames: Sequence[Atoms], moe: Sequence[Dict]) -> Dict:
    """The MoE's force MAE on small-expert atoms within the small expert's cutoff of the big
    region over its own small expert's alone (every Pt relabelled small) on the same atoms:
    what the interface adds to the small expert's error (1.0: nothing;
    ``nequip_moe.validation.interface.interface_penalty``).

    Args:
        model: the MoE
        frames: labelled frames with ``expert`` arrays
        moe: the MoE's predictions on them (``predict``)
    """
    from nequip_moe.validation.interface import interface_penalty as penalty
    from nequip_moe.validation.models import ModelUnderTest

    under_test = ModelUnderTest(model.path, model.device)
    alone = predict(under_test.expert_calculator(under_test.low), frames)
    high = [a.arrays["expert"] == BIG for a in frames]
    return penalty(frames, high, moe, alone, under_test.expert_r_max[under_test.low])


def unseen_interface_forces(calc: NequIPCalculator, atoms: Atoms, r_cut: float) -> np.ndarray:
    """Per-atom part (eV/A, ``(n, 3)``) of the gradient of the small region's per-atom energies
    under ``calc``'s (big, Allegro) model that comes through neighbours farther than ``r_cut``:
    what a small expert of cutoff ``r_cut`` cannot see. A small expert that matched the big one
    on every neighbour it sees would leave exactly this force at an interface.

    A strictly local (Allegro) model's energy depends on an edge vector ``r_ij`` only through
    ``e_i``, so the edge forces nequip's ``ForceStressOutput`` returns for data with edge vectors
    (``dE/dr_ij``) are ``d e_i / d r_j``; atom ``j`` gets the sum over the edges ``i -> j``
    longer than ``r_cut`` whose centre ``i`` is a small-expert atom. Zero when ``r_cut`` is at
    least the model's cutoff.

    Args:
        calc: ``NequIPCalculator`` of the eager (packaged) big model, Allegro
        atoms: frame with the per-atom ``expert`` array
        r_cut: the small expert's cutoff (A)
    """
    import torch
    from nequip.data import AtomicDataDict
    from nequip.nn import scatter, with_edge_vectors_

    data = with_edge_vectors_(calc.atoms_to_data(atoms), with_lengths=False)
    edge_forces = calc.model(data)[AtomicDataDict.EDGE_FORCE_KEY].detach()
    centre, neighbour = data[AtomicDataDict.EDGE_INDEX_KEY]
    length = data[AtomicDataDict.EDGE_VECTORS_KEY].detach().norm(dim=1)
    small = torch.as_tensor(atoms.arrays["expert"] == SMALL, device=length.device)
    unseen = small[centre] & (length > r_cut)
    forces = scatter(edge_forces[unseen], neighbour[unseen], dim=0, dim_size=len(atoms))
    return forces.cpu().numpy()


def response_beyond_cutoff(
    calc: NequIPCalculator, a0: float, r_cut: float, strains: Sequence[float] = SPLIT_STRAINS,
    repeat=(2, 2, 8),
) -> Dict:
    """``unseen_interface_forces`` on the split perfect crystal at each strain: the interface
    force (max norm, meV/A) that a small expert of cutoff ``r_cut`` leaves even when it matches
    the big model on every neighbour it sees.

    Args:
        calc: ``NequIPCalculator`` of the eager (packaged) big model, Allegro
        a0: zero-strain lattice constant (A)
        r_cut: the small expert's cutoff (A)
        strains: isotropic linear strains
        repeat: conventional cells along x, y, z (``structures.split_crystal``)
    """
    from structures import split_crystal

    rows = []
    for strain in strains:
        forces = unseen_interface_forces(calc, split_crystal(a0, strain, repeat), r_cut)
        rows.append({"strain": float(strain),
                     "max_force_mev_per_a": 1000.0 * float(np.linalg.norm(forces, axis=1).max())})
    return {"r_cut": float(r_cut), "rows": rows,
            "worst_max_force_mev_per_a": max(r["max_force_mev_per_a"] for r in rows)}


def expert_disagreement(model: ReportModel, frames: Sequence[Atoms]) -> Dict:
    """Per-atom energy (meV/atom) and force (meV/A) disagreement of an MoE's two experts on
    shared bulk frames: every atom on the big expert vs every atom on the small expert.

    Args:
        model: an MoE with composite types
        frames: bulk frames (perfect, strained, rattled)
    """
    labelled = {}
    for label in (BIG, SMALL):
        copies = [a.copy() for a in frames]
        for atoms in copies:
            atoms.arrays["expert"] = np.full(len(atoms), label, dtype=np.int64)
        labelled[label] = predict(model.calculator(), copies)
    energy = [1000.0 * abs(b["energy"] - s["energy"]) / len(a)
              for a, b, s in zip(frames, labelled[BIG], labelled[SMALL])]
    forces = np.concatenate([1000.0 * np.abs(b["forces"] - s["forces"]).ravel()
                             for b, s in zip(labelled[BIG], labelled[SMALL])])
    return {
        "frames": len(frames),
        "energy_mae_mev_per_atom": float(np.mean(energy)),
        "energy_max_mev_per_atom": float(np.max(energy)),
        "forces_mae_mev_per_a": float(forces.mean()),
    }


def shared_bulk_frames(test_frames: Sequence[Atoms], eos_frames: Sequence[Atoms]) -> List[Atoms]:
    """Bulk frames without defects (test ``bulk_*`` kinds and the held-out EOS set): every atom
    a shared environment of the co-training."""
    return [a for a in test_frames if frame_kind(a).startswith("bulk")] + list(eos_frames)


# ---------------------------------------------------------------- buffer width

BUFFER_WIDTHS = (0.0, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0)
CORE_PARITY = 1.05  # core force MAE / all-big's that counts as parity (claims.THRESHOLDS)


def _time_energy_forces(calc, atoms: Atoms, repeats: int) -> float:
    """Best of ``repeats`` wall times (s) of one energy + forces evaluation."""
    best = np.inf
    for _ in range(repeats):
        copy = atoms.copy()
        copy.calc = calc
        calc.reset()
        start = time.perf_counter()
        copy.get_forces()
        best = min(best, time.perf_counter() - start)
    return float(best)


def expert_cutoffs(model) -> tuple:
    """(big, small) expert cutoffs (A) of an MoE from its metadata (``5.0`` each if unknown)."""
    metadata = getattr(model, "metadata", {}) or {}
    r_max = float(metadata.get("r_max", 5.0))
    radii = [float(r) for r in str(metadata.get("moe_expert_r_max", "")).split()]
    return (radii[0], radii[1]) if len(radii) >= 2 else (r_max, r_max)


def edge_counts(atoms: Atoms, cutoff: float) -> np.ndarray:
    """Neighbours of every atom within ``cutoff`` (the edges it centres)."""
    from nequip_moe.data.regions import coordination_numbers

    return coordination_numbers(atoms, cutoff)


def edge_cost(frames: Sequence[Atoms], cutoffs: tuple, edge_ratio: float) -> float:
    """Cost of the MoE over all-big by edge count: a strictly local expert pays per edge it
    centres, the big one within its cutoff for big-expert atoms, the small one (``edge_ratio``
    times cheaper per edge) within its cutoff for the others; all-big pays every edge within
    the big cutoff."""
    moe, big = 0.0, 0.0
    for atoms in frames:
        n_big, n_small = edge_counts(atoms, cutoffs[0]), edge_counts(atoms, cutoffs[1])
        is_big = atoms.arrays["expert"] == BIG
        moe += n_big[is_big].sum() + edge_ratio * n_small[~is_big].sum()
        big += n_big.sum()
    return float(moe / big)


def relabelled(atoms: Atoms, expert: np.ndarray) -> Atoms:
    """A copy of a labelled frame (reference results kept) with new ``expert`` labels."""
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    copy.arrays["expert"] = np.asarray(expert, dtype=np.int64)
    copy.calc = SinglePointCalculator(copy, **atoms.calc.results)
    return copy


def buffer_sweep(
    model: ReportModel, test_frames: Sequence[Atoms], reference_predictions,
    widths: Sequence[float] = BUFFER_WIDTHS, timing_structure: Optional[Atoms] = None,
    repeats: int = 2,
) -> Dict:
    """Core force MAE, energy MAE and small-region force MAE of an MoE against the buffer
    width, with the expert labels of the test frames recomputed at each width
    (``data.label_experts``), next to all-big's (``reference_predictions``); the high-fidelity
    fraction ``f`` and the ideal speed-up ``1 / (f + (1 - f) c)`` at each width, ``c`` the
    measured cost of the MoE with every Pt small over every Pt big, and the edge-count speed-up
    (``edge_cost``: surface atoms centre fewer edges, so it exceeds the atom-count bound);
    optionally the measured speed-up on ``timing_structure`` (relabelled at each width, against
    every atom big, timed in turn).

    Args:
        model: MoE with composite types (static labels)
        test_frames: the test split
        reference_predictions: all-big's predictions on ``test_frames``
        widths: buffer widths (A)
        timing_structure: larger structure to time (``None``: no timing; ``c`` is then timed on
            the largest test frame)
        repeats: timed evaluations per width (best of)
    """
    from data import label_experts

    calc = model.calculator()
    ref = test_errors(test_frames, reference_predictions)
    timed = timing_structure if timing_structure is not None else max(test_frames, key=len)
    timed = timed.copy()
    pt_only = timed[timed.numbers == 78]  # the small expert knows only Pt
    seconds = {}
    pt_only.arrays["expert"] = np.full(len(pt_only), BIG, dtype=np.int64)
    _time_energy_forces(calc, pt_only, 1)  # warm-up
    for name, label in (("all_big", BIG), ("all_small", SMALL)):
        pt_only.arrays["expert"] = np.full(len(pt_only), label, dtype=np.int64)
        seconds[name] = _time_energy_forces(calc, pt_only, repeats)
    cost_ratio = seconds["all_small"] / seconds["all_big"]
    cutoffs = expert_cutoffs(model)
    edges = edge_counts(pt_only, cutoffs[0]).sum() / max(edge_counts(pt_only, cutoffs[1]).sum(), 1)
    edge_ratio = float(cost_ratio * edges)  # cost of a small-expert edge over a big-expert edge
    rows = []
    for width in widths:
        frames = [relabelled(a, label_experts(a, width)) for a in test_frames]
        errors = test_errors(frames, predict(calc, frames))
        labels = np.concatenate([a.arrays["expert"] for a in frames])
        f = float(np.mean(labels == BIG))
        row = {
            "buffer_width_a": float(width),
            "hf_fraction": f,
            "core_forces_mae_mev_per_a": errors["forces_mae_mev_per_a"]["core"],
            "energy_mae_mev_per_atom": errors["energy_mae_mev_per_atom"]["all"],
            "small_forces_mae_mev_per_a": errors["forces_mae_mev_per_a"]["small"],
            "ideal_speedup": 1.0 / (f + (1.0 - f) * cost_ratio),
            "edge_speedup": 1.0 / edge_cost(frames, cutoffs, edge_ratio),
        }
        row["core_ratio_to_all_big"] = (
            row["core_forces_mae_mev_per_a"] / ref["forces_mae_mev_per_a"]["core"])
        row["energy_ratio_to_all_big"] = (
            row["energy_mae_mev_per_atom"] / ref["energy_mae_mev_per_atom"]["all"])
        if timing_structure is not None:  # interleaved with all-big timings: load drifts
            labels = label_experts(timed, width)
            timed.arrays["expert"] = np.full(len(timed), BIG, dtype=np.int64)
            t_big = _time_energy_forces(calc, timed, repeats)
            timed.arrays["expert"] = labels
            row["timed_hf_fraction"] = float(np.mean(labels == BIG))
            row["timed_edge_speedup"] = 1.0 / edge_cost([timed], cutoffs, edge_ratio)
            row["measured_speedup"] = t_big / _time_energy_forces(calc, timed, repeats)
        rows.append(row)
    meets = [r["buffer_width_a"] for r in rows if r["core_ratio_to_all_big"] <= CORE_PARITY]
    return {
        "model": model.name,
        "smallest_width_at_parity_a": min(meets) if meets else None,
        "cost_ratio_small_over_big": cost_ratio,
        "edge_cost_ratio_small_over_big": edge_ratio,
        "expert_cutoffs_a": list(cutoffs),
        "timing_atoms": len(timed),
        "timed": timing_structure is not None,
        "all_big": {
            "core_forces_mae_mev_per_a": ref["forces_mae_mev_per_a"]["core"],
            "energy_mae_mev_per_atom": ref["energy_mae_mev_per_atom"]["all"],
        },
        "rows": rows,
    }


# ---------------------------------------------------------------- the teacher

# PBE: a0 3.97 A, B0 ~245-255 GPa (experiment ~280), CO bond 1.14 A
PBE_REFERENCE = {"a0_A": 3.97, "B0_GPa": (245.0, 280.0), "co_bond_A": 1.14}


def co_bond_length(frames: Sequence[Atoms]) -> Optional[float]:
    """Equilibrium C-O distance (A) of the reference: minimum of a quartic fit of E(d) over the
    gas-phase CO frames (``None`` with fewer than 5)."""
    gas = [a for a in frames if frame_kind(a) == "gas_co"]
    if len(gas) < 5:
        return None
    d = np.array([a.get_distance(0, 1) for a in gas])
    e = np.array([a.get_potential_energy() for a in gas])
    poly = np.polynomial.Polynomial.fit(d, e, 4)
    grid = np.linspace(d.min(), d.max(), 2001)
    return float(grid[np.argmin(poly(grid))])


def teacher_sanity(reference_fit: Dict, frames: Sequence[Atoms]) -> Dict:
    """The labeller's bulk Pt a0 (A), B0 (GPa) and CO bond length (A) next to PBE references."""
    return {
        "a0_A": lattice_constant(reference_fit, float("nan")) if "V0" in reference_fit else None,
        "B0_GPa": reference_fit.get("B0_GPa"),
        "co_bond_A": co_bond_length(frames),
        "pbe_reference": PBE_REFERENCE,
    }


# ---------------------------------------------------------------- dynamics


def nve_structure(test_frames: Sequence[Atoms]) -> Optional[Atoms]:
    """The test frame of median size among those with C or O and both experts; when the test
    split has none (tiny runs), a generated Pt(111) 3x3x8 slab with 2 CO (small-expert middle
    layers) labelled by the example's region rules; ``None`` only if no test frame has Pt."""
    mixed = [
        a for a in test_frames
        if frame_group(a) == "surface" and (a.numbers != 78).any()
        and (a.arrays["expert"] == SMALL).any()
    ]
    if mixed:
        return sorted(mixed, key=len)[len(mixed) // 2].copy()
    if not any((a.numbers == 78).any() for a in test_frames):
        return None
    from data import core_atoms, label_experts
    from structures import thick_slabs_with_co

    atoms = thick_slabs_with_co(2, np.random.default_rng(0))[1]
    atoms.arrays["expert"] = label_experts(atoms)
    atoms.arrays["core"] = core_atoms(atoms).astype(np.int64)
    return atoms


def lammps_nve(
    pair_allegro_file, atoms: Atoms, steps: int, device: str = "cpu", chunk: int = 10
) -> Dict:
    """NVE of the MoE in LAMMPS (``fix external`` stand-in for ``pair_style allegro``).

    Args:
        pair_allegro_file: MoE compiled with ``--target pair_allegro``
        atoms: start structure with ``expert`` labels
        steps: number of 1 fs steps
        device: device the file was compiled for
        chunk: steps between total-energy samples
    """
    import tempfile

    from nequip_moe.integrations.lammps_data import write_lammps_data
    from nequip_moe.integrations.lammps_driver import run_lammps_input
    from nequip_moe.integrations.lammps_input import lammps_input
    from nequip_moe.integrations.lammps_runtime import start_lammps
    from nequip_moe.integrations.model_files import read_composite_table

    table = read_composite_table(pair_allegro_file)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = pathlib.Path(tmp) / "structure.data"
        write_lammps_data(data_file, atoms, atoms.arrays["expert"], table)
        lmp = start_lammps()
        script = lammps_input(pair_allegro_file, table, data_file, num_steps=0)
        run_lammps_input(lmp, script, device=device)
        energies = [lmp.get_thermo("etotal")]
        for _ in range(steps // chunk):
            lmp.command(f"run {chunk}")
            energies.append(lmp.get_thermo("etotal"))
        lmp.close()
    energies = np.array(energies) / len(atoms)
    times_ps = np.arange(len(energies)) * chunk / 1000.0
    return {
        "atoms": len(atoms),
        "steps": steps,
        "timestep_fs": 1.0,
        "drift_mev_per_atom_per_ps": float(1000.0 * np.polyfit(times_ps, energies, 1)[0]),
        "max_deviation_mev_per_atom": float(1000.0 * np.abs(energies - energies[0]).max()),
    }


# ---------------------------------------------------------------- speed


def speedup(
    files: Dict[str, pathlib.Path], hf_fraction: float, out_dir, device: str = "cpu", size: int = 6
) -> Dict:
    """MoE vs all-big speed-up on a Pt(111) + CO slab at ``hf_fraction``, with the ideal bound
    ``1 / (f + (1 - f) c)``, ``c`` the measured small/big cost ratio (``nequip_moe.benchmarking``).

    Args:
        files: ``{moe, big, small}`` -> model files (compiled ``--target ase`` files are timed as they are)
        hf_fraction: high-fidelity fraction of the timed slab
        out_dir: where the benchmark may put compiled models
        device: device of the models
        size: surface atoms along each direction of the slab
    """
    from ase.io import write

    from nequip_moe.benchmarking import BenchOptions, run_benchmark
    from nequip_moe.benchmarking.structures import bench_slabs

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir / "slab.xyz", bench_slabs([size]), format="extxyz")
    options = BenchOptions(
        structure=str(out_dir / "slab.xyz"),
        model_files={k: str(v) for k, v in files.items()},
        fractions=(hf_fraction,),
        repeats=5,
        memory=False,
        training=False,
        device=device,
        eager=not all(is_compiled(p) for p in files.values()),
        out_dir=str(out_dir),
    )
    row = run_benchmark(options, log=lambda message: print(f"    {message}"))["rows"][0]
    return {
        "measured": row["speedup"],
        "ideal": row["ideal_speedup"],
        "efficiency": row["efficiency"],
        "hf_fraction": row["hf_fraction"],
        "cost_ratio_small_over_big": row["cost_ratio"],
        "atoms": row["n_atoms"],
        "seconds": {"moe": row["t_moe_s"], "big": row["t_big_s"], "small": row["t_small_s"]},
        "compiled": not options.eager,
    }
