"""Physical facts behind the example's adaptive-regions section (examples/pt_co/adaptive.py),
on tiny untrained experts (float64): the gated MoE's forces are conservative (zero work around
a closed loop through the blend zone, energy-conserving NVE), force mixing of the same two
experts with the same gate is not, and the static labels used for comparison are the gate's
``g >= 0.5`` region."""

import pathlib
import sys

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule

from nequip.data import from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
from nequip.integrations.ase import NequIPCalculator

from nequip_moe.nn import AdsorbateCoordinationGate

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "pt_co"))
from adaptive import _claims  # noqa: E402
from adaptive_models import (  # noqa: E402
    FOLLOWING_GATE,
    ForceMixingCalculator,
    gate_values,
    model_calculator,
    moe_model,
    static_labels,
)
from adaptive_nve import co_on_pt111, energy_stats, nve_runs, nve_start, run_nve  # noqa: E402
from adaptive_render import adaptive_markdown, plot_nve  # noqa: E402
from test_moe_model import float64, standalone_expert  # noqa: E402,F401  (module-wide float64)
from test_moe_nequip_mixins import allegro_expert  # noqa: E402

ELEMENTS = ["C", "O", "Pt"]
R_MAX = 4.0
BIG = allegro_expert(l_max=2, num_layers=2, num_scalar_features=16, num_tensor_features=4)
SMALL = allegro_expert(r_max=3.5)


@pytest.fixture(scope="module")
def tiny():
    """Gated MoE (adsorbate-following gate) of two tiny untrained Allegro experts, its
    calculator, and calculators of each expert alone with the same weights."""
    config = {"r_max": R_MAX, "experts": {"big": BIG, "small": SMALL}}
    moe = moe_model(BIG, SMALL, FOLLOWING_GATE, r_max=R_MAX, seed=5)
    gated = model_calculator(moe)
    alone = {}
    for name in ("big", "small"):
        model, r_max = standalone_expert(moe, config, name)
        model.eval()
        alone[name] = NequIPCalculator(
            model,
            device="cpu",
            transforms=[
                ChemicalSpeciesToAtomTypeMapper(ELEMENTS),
                NeighborListTransform(r_max=r_max),
            ],
        )
    mixing = ForceMixingCalculator(alone["big"], alone["small"], gated)
    return gated, mixing, alone["big"]


def loop_structure():
    """Pt(111) with CO on top, C 2.75 A above its Pt: inside the gate's adsorbate switching
    shell (2.5-3.0 A), so that Pt has 0 < g < 1 and g changes as it moves (rattled)."""
    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0, a=3.92)
    add_adsorbate(slab, molecule("CO"), 2.75, "ontop", mol_index=1)
    slab.pbc = True
    slab.rattle(0.03, seed=4)  # no mirror symmetry that would cancel the loop work
    pt = int(np.argmin(np.linalg.norm(slab.positions[:12] - slab.positions[-1], axis=1)))
    return slab, pt


def loop_work(calc, atoms, index, radius=0.1, points=64):
    """Work ``-sum F . dl`` of the force on atom ``index`` moved once around a circle in the
    x-z plane (all else fixed), by the trapezoid rule (spectrally exact for smooth periodic
    integrands): zero for a conservative force."""
    atoms = atoms.copy()
    atoms.calc = calc
    centre = atoms.positions[index].copy()
    work = 0.0
    for theta in np.linspace(0.0, 2.0 * np.pi, points, endpoint=False):
        atoms.positions[index] = centre + radius * np.array([np.cos(theta), 0.0, np.sin(theta)])
        tangent = radius * np.array([-np.sin(theta), 0.0, np.cos(theta)])
        work -= atoms.get_forces()[index] @ tangent * (2.0 * np.pi / points)
    return work


def test_closed_loop_work_gated_zero_force_mixing_not(tiny):
    gated, mixing, _ = tiny
    atoms, pt = loop_structure()
    g = gate_values(gated, atoms)
    assert 0.0 < g[pt] < 1.0
    # along the whole loop the Pt stays inside the blend zone, so g changes along it
    w_gated = loop_work(gated, atoms, pt)
    w_mixing = loop_work(mixing, atoms, pt)
    assert abs(w_gated) < 1e-8
    assert abs(w_mixing) > 1e-5
    assert abs(w_mixing) > 1e4 * abs(w_gated)


def test_force_mixing_energy_is_the_gated_energy(tiny):
    """The energy that force mixing is judged by is the gated MoE's energy; only the forces
    differ, and only by the missing (e^big - e^small) grad g and cross-gate terms."""
    gated, mixing, _ = tiny
    atoms, pt = loop_structure()
    atoms.calc = gated
    e_gated, f_gated = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = mixing
    e_mixing, f_mixing = atoms.get_potential_energy(), atoms.get_forces()
    assert e_mixing == pytest.approx(e_gated, abs=1e-10)
    assert np.abs(f_mixing - f_gated).max() > 1e-4


def test_gated_nve_conserves_energy(tiny):
    """Velocity Verlet of the gated MoE from the example's start (hot CO kicked along the
    surface): the energy fluctuation shrinks as dt^2 and stays tiny; force mixing of the same
    experts from the same start departs from its energy by orders of magnitude more."""
    gated, mixing, _ = tiny
    start = nve_start(co_on_pt111(size=(2, 2, 3), vacuum=6.0), temperature_K=300.0, seed=1)
    runs = {dt: run_nve(start, gated, int(20 / dt), timestep_fs=dt) for dt in (0.5, 1.0)}
    ratio = runs[1.0]["rms_fluctuation_ev_per_atom"] / runs[0.5]["rms_fluctuation_ev_per_atom"]
    assert 3.0 < ratio < 5.5  # dt^2: 4
    assert runs[0.5]["max_deviation_ev_per_atom"] < 1e-4
    mixed = run_nve(start, mixing, 40, timestep_fs=0.5)
    assert mixed["max_deviation_ev_per_atom"] > 10 * runs[0.5]["max_deviation_ev_per_atom"]


@pytest.mark.parametrize("gate_options", [None, FOLLOWING_GATE], ids=["default", "following"])
@pytest.mark.parametrize("rattle", [0.0, 0.05])
def test_static_labels_are_the_gates_half_region(gate_options, rattle):
    """The static MoE of the comparison is labelled by the ``pt_co_coordination`` preset with the
    gate's radii: its big region is the gate's ``g >= 0.5`` region (C at 1.9 / 2.6 / 2.9 A above
    its Pt: inside, in the blend zone above and below g = 0.5)."""
    gate = AdsorbateCoordinationGate(ELEMENTS, **dict(gate_options or {}))
    for height in (1.9, 2.6, 2.9):
        atoms = co_on_pt111(size=(3, 3, 4), height=height)
        atoms.rattle(rattle, seed=3)
        data = ChemicalSpeciesToAtomTypeMapper(ELEMENTS)(from_ase(atoms))
        with torch.no_grad():
            g = gate(NeighborListTransform(r_max=R_MAX)(data))["moe_gate"].view(-1).numpy()
        labels = static_labels(atoms, gate_options)
        assert np.array_equal(labels == 0, g >= 0.5)


def test_nve_section_claims_markdown_and_plot(tiny, tmp_path):
    """The four NVE runs with the dt scaling, their claims, markdown and figure (a few steps)."""
    gated, mixing, big = tiny
    static = model_calculator(moe_model(BIG, SMALL, static=True, r_max=R_MAX))
    calcs = {"gated": gated, "big": big, "static": static, "force_mixing": mixing}
    start = nve_start(co_on_pt111(size=(2, 2, 3), vacuum=6.0), temperature_K=300.0, seed=1)
    nve = nve_runs(start, calcs, 8, FOLLOWING_GATE, timesteps_fs=(0.5, 1.0), log=lambda m: None)
    assert set(nve["runs"]) == {"gated", "big", "static_relabelled", "force_mixing"}
    assert nve["dt_scaling"]["exponent"] is not None
    section = {
        "nve": nve,
        "claims": _claims(nve, None, None),
        "figures": [plot_nve(nve, tmp_path)],
    }
    assert (tmp_path / "adaptive_nve.png").is_file()
    assert {"claim", "value", "threshold", "holds"} <= set(section["claims"][0])
    text = adaptive_markdown(section)
    assert "NVE with moving chemistry" in text and "force mixing" in text


def test_energy_stats_linear_drift():
    t = np.linspace(0.0, 1.0, 101)
    e = 2e-5 * t + 1e-6 * np.sin(40 * t)
    stats = energy_stats(t, e)
    assert stats["drift_ev_per_atom_per_ps"] == pytest.approx(2e-5, rel=0.05)
    assert 0 < stats["rms_fluctuation_ev_per_atom"] < 1e-6
