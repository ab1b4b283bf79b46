"""The interface between experts: forces on split perfect crystals, and errors near the interface.

- ``split_crystal_forces``: on perfect crystals split between two experts
  (``crystal.split_geometries``), at several strains, the force each atom feels beyond what its
  own expert alone gives it (zero by symmetry for crystals with symmetry-fixed sites: then it
  is the force itself): the interface's artefact;
- ``interface_penalty``: on labelled test frames, the MoE's force error on low-fidelity atoms
  within ``shell_width`` (the low-fidelity expert's cutoff) of the high-fidelity region, over
  the error of the low-fidelity expert alone on the same atoms (1: the interface costs nothing);
- ``core_ratio``: the MoE's force error on the high-fidelity atoms over a reference model's;
- ``force_error_by_distance``: force error against the signed distance from the interface;
- ``errors``: energy and force MAE on labelled frames.

Predictions are lists of ``{"energy", "forces"}`` (``bulk.predict``); forces in eV/Å, results
in meV/Å and meV/atom.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from nequip_moe.data.neighbours import neighbour_pairs
from nequip_moe.validation.bulk import predict
from nequip_moe.validation.crystal import interface_distance, strained

SPLIT_STRAINS = (-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03)
DISTANCE_BINS = tuple(float(x) for x in range(-8, 9))


def _mae(values: List[np.ndarray]) -> Optional[float]:
    values = np.concatenate([np.ravel(v) for v in values]) if values else np.array([])
    return float(values.mean()) if values.size else None


def split_crystal_forces(
    moe: Calculator,
    experts: Sequence[Calculator],
    geometries: Dict[str, Atoms],
    strains: Sequence[float] = SPLIT_STRAINS,
    trained_strains: Optional[Tuple[float, float]] = None,
) -> Dict:
    """Interface force (meV/Å) on split perfect crystals at each strain.

    For every atom, the MoE's force minus its own expert's force alone on the same crystal
    (zero where symmetry fixes the sites); ``max`` and ``rms`` of its norm per geometry and
    strain, the MoE's raw max ``|F|`` beside it, and per-atom norms against the signed distance
    from the interface at the worst strain (the force map).

    Args:
        moe: the MoE with regions from ``atoms.arrays["expert"]`` (0 high fidelity)
        experts: each expert alone, in label order
        geometries: name -> split crystal with ``expert`` labels (``crystal.split_geometries``)
        strains: isotropic linear strains
        trained_strains: ``(lowest, highest)`` strain of the training data; rows outside are
            marked ``outside_training``
    """
    result = {"strains": [float(s) for s in strains], "geometries": {}, "force_map": {}}
    worst = {"max_interface_force_mev_per_a": -1.0}
    for name, crystal in geometries.items():
        rows, maps = [], []
        frames = [strained(crystal, s) for s in strains]
        labels = crystal.arrays["expert"]
        alone = [predict(calc, frames) for calc in experts]
        for k, (atoms, pred) in enumerate(zip(frames, predict(moe, frames))):
            own = np.stack([alone[label][k]["forces"][i] for i, label in enumerate(labels)])
            excess = 1000.0 * np.linalg.norm(pred["forces"] - own, axis=1)
            row = {
                "strain": float(strains[k]),
                "max_interface_force_mev_per_a": float(excess.max()),
                "rms_interface_force_mev_per_a": float(np.sqrt(np.mean(excess**2))),
                "max_force_mev_per_a": float(1000.0 * np.linalg.norm(pred["forces"], axis=1).max()),
            }
            if trained_strains is not None:
                row["outside_training"] = not trained_strains[0] <= strains[k] <= trained_strains[1]
            rows.append(row)
            maps.append(excess)
        k = int(np.argmax([r["max_interface_force_mev_per_a"] for r in rows]))
        result["geometries"][name] = {
            "atoms": len(crystal),
            **{key: crystal.info[key] for key in ("miller", "radius", "half_thickness") if key in crystal.info},
            "rows": rows,
            "worst_max_interface_force_mev_per_a": rows[k]["max_interface_force_mev_per_a"],
        }
        result["force_map"][name] = {
            "strain": rows[k]["strain"],
            "distance_a": interface_distance(crystal, labels == 0).tolist(),
            "interface_force_mev_per_a": maps[k].tolist(),
        }
        if rows[k]["max_interface_force_mev_per_a"] > worst["max_interface_force_mev_per_a"]:
            worst = {"geometry": name, **rows[k]}
    result["worst"] = worst
    result["worst_max_interface_force_mev_per_a"] = worst["max_interface_force_mev_per_a"]
    return result


def interface_shell(atoms: Atoms, high: np.ndarray, width: float) -> np.ndarray:
    """Low-fidelity atoms within ``width`` (Å, minimum image) of a high-fidelity atom."""
    high = np.asarray(high, dtype=bool)
    shell = np.zeros(len(atoms), dtype=bool)
    if high.any() and not high.all():
        i, j = neighbour_pairs(atoms, width)
        shell[i[high[j]]] = True
    return shell & ~high


def interface_penalty(
    frames: Sequence[Atoms], high: Sequence[np.ndarray], moe: Sequence[Dict],
    low_alone: Sequence[Dict], shell_width: float,
) -> Dict:
    """The MoE's force MAE on the interface shell over the low-fidelity expert's alone there.

    The shell: low-fidelity atoms within ``shell_width`` (the low-fidelity expert's cutoff) of
    the high-fidelity region. The low-fidelity expert alone is the MoE's own (every atom it
    knows relabelled): the ratio is what the interface adds to the error, 1.0 when it adds none.

    Args:
        frames: labelled frames (reference forces)
        high: high-fidelity mask of each frame
        moe: the MoE's predictions on the frames
        low_alone: the low-fidelity expert's predictions alone on the frames
        shell_width: width of the shell (Å)
    """
    errors = {"moe": [], "low_alone": []}
    for atoms, mask, a, b in zip(frames, high, moe, low_alone):
        shell = interface_shell(atoms, mask, shell_width)
        reference = atoms.get_forces()[shell]
        errors["moe"].append(1000.0 * np.abs(a["forces"][shell] - reference))
        errors["low_alone"].append(1000.0 * np.abs(b["forces"][shell] - reference))
    moe_mae, low_mae = _mae(errors["moe"]), _mae(errors["low_alone"])
    atoms_in_shell = int(sum(len(e) for e in errors["moe"]))
    return {
        "shell_width_a": float(shell_width),
        "shell_atoms": atoms_in_shell,
        "moe_forces_mae_mev_per_a": moe_mae,
        "low_alone_forces_mae_mev_per_a": low_mae,
        "ratio": moe_mae / low_mae if atoms_in_shell and low_mae else None,
    }


def core_ratio(
    frames: Sequence[Atoms], high: Sequence[np.ndarray], moe: Sequence[Dict], reference: Sequence[Dict]
) -> Dict:
    """The MoE's force MAE on the high-fidelity atoms over a reference model's on them."""
    moe_err = [1000.0 * np.abs(p["forces"][m] - a.get_forces()[m]) for a, m, p in zip(frames, high, moe)]
    ref_err = [1000.0 * np.abs(p["forces"][m] - a.get_forces()[m]) for a, m, p in zip(frames, high, reference)]
    moe_mae, ref_mae = _mae(moe_err), _mae(ref_err)
    return {
        "moe_forces_mae_mev_per_a": moe_mae,
        "reference_forces_mae_mev_per_a": ref_mae,
        "ratio": moe_mae / ref_mae if moe_mae is not None and ref_mae else None,
    }


def force_error_by_distance(
    frames: Sequence[Atoms], high: Sequence[np.ndarray], predictions: Sequence[Dict],
    bins: Sequence[float] = DISTANCE_BINS,
) -> Dict:
    """Mean per-atom force error norm (meV/Å) in bins of signed distance from the interface
    (negative inside the high-fidelity region); frames with one region are left out."""
    distance = np.concatenate([interface_distance(a, m) for a, m in zip(frames, high)])
    error = np.concatenate(
        [1000.0 * np.linalg.norm(p["forces"] - a.get_forces(), axis=1) for a, p in zip(frames, predictions)]
    )
    index = np.digitize(distance, bins)
    rows = []
    for k in range(1, len(bins)):
        selected = (index == k) & ~np.isnan(distance)
        if selected.any():
            rows.append({
                "distance_a": float(0.5 * (bins[k - 1] + bins[k])),
                "force_error_mev_per_a": float(error[selected].mean()),
                "atoms": int(selected.sum()),
            })
    return {"bins": rows}


def errors(frames: Sequence[Atoms], predictions: Sequence[Dict]) -> Dict:
    """Energy MAE (meV/atom) and force MAE (meV/Å, per component) on labelled frames."""
    energy = [1000.0 * abs(p["energy"] - a.get_potential_energy()) / len(a) for a, p in zip(frames, predictions)]
    forces = [1000.0 * np.abs(p["forces"] - a.get_forces()) for a, p in zip(frames, predictions)]
    return {"energy_mae_mev_per_atom": _mae(energy), "forces_mae_mev_per_a": _mae(forces)}
