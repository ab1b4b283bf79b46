"""The experts' bulk response: equations of state and disagreement on shared bulk frames.

- ``fit_eos``: Birch-Murnaghan fit of E(V) per atom (V0, E0, B0, B0');
- ``eos_curves``: E(V) of several calculators on one strained bulk structure, each fitted;
- ``eos_spread``: the largest relative differences of V0 and B0 between fits (in %);
- ``fit_lattice``: the bulk structure rescaled to a calculator's V0;
- ``shared_bulk_frames``: strained and rattled bulk frames, every atom a shared environment;
- ``expert_disagreement``: per-atom energy and force disagreement of experts on shared atoms.

Calculators are ASE calculators (the experts alone: ``ModelUnderTest.expert_calculator``).
"""

import itertools
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.eos import EquationOfState

from nequip_moe.validation.crystal import repeated_to, strained

EOS_STRAINS = (-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03)


def predict(calc: Calculator, frames: Sequence[Atoms], per_atom: bool = False) -> List[Dict]:
    """Energy and forces (and per-atom energies if ``per_atom``) of ``calc`` on every frame.

    Copies of the frames are evaluated, keeping their per-atom arrays (``expert`` labels).
    """
    properties = ["energy", "forces"] + (["energies"] if per_atom else [])
    out = []
    for atoms in frames:
        calc.reset()
        calc.calculate(atoms.copy(), properties)
        out.append({key: np.array(calc.results[key]) for key in properties})
    return out


def fit_eos(volumes: Sequence[float], energies: Sequence[float]) -> Dict:
    """Birch-Murnaghan fit per atom: ``V0`` (Å^3/atom), ``E0`` (eV/atom), ``B0_GPa``,
    ``B0_prime``; ``{"fit_failed": reason}`` without a minimum inside the sampled volumes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ase warns of a minimum outside; checked below
            eos = EquationOfState(list(volumes), list(energies), eos="birchmurnaghan")
            eos.fit()
        e0, b0, bp, v0 = eos.eos_parameters
    except (RuntimeError, ValueError) as e:
        return {"fit_failed": str(e)}
    if not b0 > 0:
        return {"fit_failed": "no minimum (B0 <= 0)"}
    if not min(volumes) <= v0 <= max(volumes):
        return {"fit_failed": f"minimum V0 = {v0:.2f} A^3 outside the sampled volumes"}
    return {"V0": float(v0), "E0": float(e0), "B0_GPa": float(b0 / units.GPa), "B0_prime": float(bp)}


def eos_curves(
    calculators: Dict[str, Calculator], atoms: Atoms, strains: Sequence[float] = EOS_STRAINS
) -> Dict:
    """E(V) per atom of every calculator on ``atoms`` under isotropic linear ``strains``, and its
    Birch-Murnaghan fit.

    Args:
        calculators: name -> ASE calculator
        atoms: bulk structure (at about its equilibrium volume)
        strains: isotropic linear strains
    """
    frames = [strained(atoms, s) for s in strains]
    volumes = [a.get_volume() / len(a) for a in frames]
    energies = {
        name: [p["energy"] / len(a) for a, p in zip(frames, predict(calc, frames))]
        for name, calc in calculators.items()
    }
    return {
        "strains": [float(s) for s in strains],
        "volumes": volumes,
        "energies": energies,
        "fits": {name: fit_eos(volumes, e) for name, e in energies.items()},
    }


def eos_spread(fits: Dict[str, Dict], names: Sequence[str], relative_to: Optional[str] = None) -> Dict:
    """Largest relative difference (%) of V0 and of B0 among the fits ``names`` (pairwise,
    over the first's value), or of each against ``relative_to``; ``None`` where a fit failed.

    Args:
        fits: name -> ``fit_eos`` result
        names: the fits to compare
        relative_to: compare each of ``names`` with this fit instead of pairwise
    """
    pairs = (
        [(relative_to, n) for n in names if n != relative_to]
        if relative_to is not None
        else list(itertools.combinations(names, 2))
    )
    failed = [n for n in set(itertools.chain(*pairs)) if "V0" not in fits[n]]
    if failed or not pairs:
        return {"v0_percent": None, "b0_percent": None, "failed": sorted(failed)}
    v0 = max(100.0 * abs(fits[b]["V0"] - fits[a]["V0"]) / fits[a]["V0"] for a, b in pairs)
    b0 = max(100.0 * abs(fits[b]["B0_GPa"] - fits[a]["B0_GPa"]) / fits[a]["B0_GPa"] for a, b in pairs)
    return {"v0_percent": float(v0), "b0_percent": float(b0), "pairs": [list(p) for p in pairs]}


def fit_lattice(calc: Calculator, atoms: Atoms, widths: Sequence[float] = (0.06, 0.015)) -> Atoms:
    """``atoms`` rescaled isotropically to the Birch-Murnaghan V0 of ``calc``: a fit over
    linear strains within each of ``widths`` in turn, each around the previous V0.

    Args:
        calc: ASE calculator
        atoms: bulk structure near its equilibrium volume
        widths: largest isotropic linear strain of each fit (9 strains each)
    """
    for width in widths:
        fit = eos_curves({"model": calc}, atoms, np.linspace(-width, width, 9))["fits"]["model"]
        if "V0" not in fit:
            raise ValueError(
                f"cannot fit the lattice constant of {atoms.get_chemical_formula()} with the "
                f"model ({fit['fit_failed']}): give the bulk structure (--bulk) or its lattice "
                "constant (--a)"
            )
        atoms = strained(atoms, (fit["V0"] / (atoms.get_volume() / len(atoms))) ** (1.0 / 3.0) - 1.0)
    return atoms


def shared_bulk_frames(
    atoms: Atoms, count: int, min_height: float, seed: int = 0, strain: float = 0.02,
    rattle: float = 0.05,
) -> List[Atoms]:
    """Bulk frames every atom of which is a shared environment: ``atoms`` repeated to at least
    ``min_height``, under a random symmetric strain (each component within ``strain``) and
    rattled (normal, ``rattle`` Å).

    Args:
        atoms: bulk structure
        count: number of frames
        min_height: least face-to-face distance of the cell (Å)
        seed: seed of the strains and displacements
        strain: largest strain component
        rattle: standard deviation of the displacements (Å)
    """
    rng = np.random.default_rng(seed)
    base = repeated_to(atoms, min_height)
    frames = []
    for _ in range(count):
        frame = base.copy()
        epsilon = rng.uniform(-strain, strain, (3, 3))
        frame.set_cell(frame.cell @ (np.eye(3) + 0.5 * (epsilon + epsilon.T)), scale_atoms=True)
        frame.positions += rng.normal(0.0, rattle, frame.positions.shape)
        frames.append(frame)
    return frames


def expert_disagreement(
    experts: Sequence[Calculator], frames: Sequence[Atoms], shared: Optional[Sequence[np.ndarray]] = None
) -> Dict:
    """Per-atom energy (meV/atom) and force (meV/Å) disagreement of experts on shared atoms.

    On each frame, each expert alone gives per-atom energies ``e_i`` and forces; the frame's
    energy disagreement is ``|sum_{i in S} (e_i^a - e_i^b)| / |S|`` over its shared atoms ``S``
    (all atoms: the per-atom energy difference), the largest over pairs of experts. Mean and
    max over frames; force components' mean absolute and largest difference over shared atoms.

    Args:
        experts: each expert alone on whole frames (at least two)
        frames: frames whose shared atoms the experts must agree on
        shared: boolean mask of the shared atoms of each frame (default: every atom)
    """
    shared = [np.ones(len(a), dtype=bool) for a in frames] if shared is None else list(shared)
    kept = [(a, s) for a, s in zip(frames, shared) if np.any(s)]
    if not kept:
        return {"frames": 0}
    frames, shared = zip(*kept)
    predictions = [predict(calc, frames, per_atom=True) for calc in experts]
    energy, forces = [], []
    for k, mask in enumerate(shared):
        pairs = list(itertools.combinations([p[k] for p in predictions], 2))
        energy.append(max(1000.0 * abs(np.sum(a["energies"][mask] - b["energies"][mask])) / mask.sum()
                          for a, b in pairs))
        forces.append(np.max([1000.0 * np.abs(a["forces"][mask] - b["forces"][mask]) for a, b in pairs],
                             axis=0).ravel())
    forces = np.concatenate(forces)
    return {
        "frames": len(frames),
        "atoms": int(sum(m.sum() for m in shared)),
        "energy_mean_mev_per_atom": float(np.mean(energy)),
        "energy_max_mev_per_atom": float(np.max(energy)),
        "forces_mae_mev_per_a": float(forces.mean()),
        "forces_max_mev_per_a": float(forces.max()),
        "energy_by_frame_mev_per_atom": [float(e) for e in energy],
    }
