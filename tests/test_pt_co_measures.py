"""The Pt + CO example's structures, region labels and report measures, fast (EMT and an
untrained tiny MoE; no training)."""

import pathlib
import sys

import numpy as np
import pytest
from ase.calculators.emt import EMT

from nequip_moe.validation.dynamics import nve_timestep_scaling

from pt_co_frames import slab_with_co

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples" / "pt_co"
sys.path.insert(0, str(EXAMPLE_DIR))
import data as example_data  # noqa: E402
import measures  # noqa: E402
import structures  # noqa: E402
from claims import THRESHOLDS, check_claims  # noqa: E402


@pytest.mark.parametrize("strain", [-0.02, 0.0, 0.02])
def test_split_crystal_is_symmetric(strain):
    atoms = structures.split_crystal(structures.PT_A0, strain, repeat=(2, 2, 4))
    assert len(atoms) == 64 and np.bincount(atoms.arrays["expert"]).tolist() == [32, 32]
    assert atoms.pbc.all()
    a = structures.PT_A0 * (1 + strain)
    assert atoms.cell.lengths() == pytest.approx([2 * a, 2 * a, 4 * a])
    atoms.calc = EMT()  # the reference force is zero by symmetry
    assert np.abs(atoms.get_forces()).max() < 1e-10


def test_co_on_nanoparticle_sites():
    particle = structures.nanoparticle("co55")
    assert len(structures.surface_sites(particle, "top")) == 42  # 12 vertices, 24 edges, 6 (100)
    for kind in ("bridge", "hollow"):
        assert len(structures.surface_sites(particle, kind)) > 0
    rng = np.random.default_rng(0)
    assert structures.add_co_on_sites(particle, 8, rng) == 8
    is_pt = particle.numbers == 78
    carbons = np.flatnonzero(particle.numbers == 6)
    distances = particle.get_all_distances(mic=True)
    for c in carbons:
        assert particle.numbers[c + 1] == 8
        assert distances[c, c + 1] == pytest.approx(structures.CO_BOND)
        assert 1 <= (distances[c, is_pt] < 2.3).sum() <= 3  # top, bridge or hollow
        assert distances[c + 1, is_pt].min() > 2.6  # O points away from the particle
    assert distances[np.ix_(carbons, carbons)][~np.eye(len(carbons), dtype=bool)].min() >= 2.8


def test_frame_kinds_and_region_labels():
    rng = np.random.default_rng(1)
    frames = (structures.nanoparticles(3, rng) + structures.stepped_with_co(2, rng)
              + structures.bulk_vacancies(2, rng) + structures.thick_slabs_with_co(1, rng))
    assert [a.info["kind"] for a in frames] == (
        ["nanoparticle"] * 3 + ["stepped"] * 2 + ["vacancy"] * 2 + ["thick_slab_co"])
    assert [int((a.numbers == 78).sum()) for a in frames[:3]] == [38, 55, 79]
    for atoms in frames:
        core = example_data.core_atoms(atoms)
        assert core[atoms.numbers != 78].all()
        previous = None
        for width in (0.0, 3.0, 4.5):
            big = example_data.label_experts(atoms, width) == 0
            assert (big >= core).all() and (big[core]).all()
            if width == 0.0:
                np.testing.assert_array_equal(big, core)
            if previous is not None:
                assert (big >= previous).all()  # a wider buffer only adds big-expert atoms
            previous = big
    vacancy = frames[5]
    assert example_data.core_atoms(vacancy).sum() in (12, 24, 23, 22)  # neighbours of 1-2 vacancies
    assert (example_data.label_experts(vacancy) == 1).any()
    assert (example_data.label_experts(frames[-1]) == 1).sum() == 36  # 4 middle layers of 8
    shared = example_data.mark_shared(vacancy)
    np.testing.assert_array_equal(shared, ~example_data.core_atoms(vacancy))


def test_frame_counts_scale():
    counts = example_data.FrameCounts()
    assert not counts.large_particles and counts.particle_sizes == structures.SMALL_PARTICLES
    full = counts.scaled(5.0)
    assert full.large_particles and full.nanoparticle == 5 * counts.nanoparticle
    tiny = counts.scaled(0.01)  # at least one frame of every kind
    assert tiny.total == len(example_data.FrameCounts.count_names())
    assert "large_particles" not in example_data.FrameCounts.count_names()


def test_distilled_frames_take_the_big_experts_labels_on_shared_bulk():
    """The staged MoE's training split: wholly shared (bulk) frames and extra bulk cells carry
    the frozen big expert's labels (here Lennard-Jones standing in for it), every other frame
    keeps the labeller's (EMT)."""
    from ase.calculators.lj import LennardJones

    rng = np.random.default_rng(2)
    frames = example_data.add_region_arrays(structures.attach_labels(
        structures.bulk_strained(2, rng) + structures.bulk_vacancies(1, rng)
        + structures.slabs_with_co(1, rng), EMT()))
    big = LennardJones(sigma=2.5, epsilon=0.5, rc=5.0)
    distilled = example_data.distilled_frames(frames, big, extra=3, columns=1)
    assert len(distilled) == len(frames) + 4
    assert len(distilled[-1]) == 96 and distilled[-1].cell.lengths()[2] > 22.0
    for atoms in distilled:
        whole = bool(atoms.arrays["shared"].all())
        assert whole == atoms.info["kind"].startswith(("bulk_strained", "bulk_distil"))
        reference = atoms.copy()
        reference.calc = big if whole else EMT()
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy())
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-10)
    extra = distilled[len(frames):]
    assert all(a.info["kind"] == "bulk_distil" and (a.arrays["expert"] == 1).all() for a in extra)
    # the extra cells are new structures, not copies of the training frames
    assert not any(np.allclose(a.positions, b.positions) for a in extra for b in frames
                   if len(a) == len(b))


def test_distilled_cells_reach_past_the_labellers_strains():
    """The big expert labels its extra bulk cells up to ``isotropic_strain`` (the labeller's
    strained cells stop at ``ISOTROPIC_STRAIN`` plus the shear part)."""
    from ase.calculators.lj import LennardJones

    def strains(isotropic_strain):
        cells = example_data.distilled_frames(
            [], LennardJones(sigma=2.5, epsilon=0.5, rc=5.0), extra=40,
            isotropic_strain=isotropic_strain)
        v0 = structures.PT_A0 ** 3 / 4.0
        return np.array([(a.get_volume() / len(a) / v0) ** (1 / 3) - 1 for a in cells])

    narrow, wide = strains(structures.ISOTROPIC_STRAIN), strains(0.05)
    assert np.abs(narrow).max() < structures.ISOTROPIC_STRAIN + 1.5 * structures.SHEAR_STRAIN
    assert wide.min() < -0.04 and wide.max() > 0.04


class TinyModel:
    """A stand-in for ``measures.ReportModel``: an untrained tiny MoE (or one expert alone)."""

    def __init__(self, name, moe=True):
        self.name, self.title, self.is_moe, self._moe = name, name, moe, moe

    def calculator(self):
        import torch
        from nequip.data.transforms import NeighborListTransform

        from nequip_moe.integrations.ase import MoECalculator
        from nequip_moe.model import MoEModel

        expert = dict(
            _target_="allegro.model.AllegroModel", l_max=1, num_layers=1, num_scalar_features=4,
            num_tensor_features=2, allegro_mlp_hidden_layers_depth=1,
            allegro_mlp_hidden_layers_width=4, readout_mlp_hidden_layers_depth=1,
            readout_mlp_hidden_layers_width=4,
            radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
                                   "num_bessels": 4},
            avg_num_neighbors=20.0, per_type_energy_scales=0.5,
        )
        composite = {"C": {"element": "C", "expert": "big"}, "O": {"element": "O", "expert": "big"},
                     "Pt": {"element": "Pt", "expert": "big"},
                     "Pt_small": {"element": "Pt", "expert": "small"}}
        torch.manual_seed(0)
        model = MoEModel(
            seed=0, model_dtype="float64", r_max=4.5, type_names=["C", "O", "Pt", "Pt_small"],
            composite_types=composite,
            experts={"big": expert, "small": {**expert, "r_max": 4.0}},
        )
        model.eval()
        calc = MoECalculator(model, device="cpu", transforms=[NeighborListTransform(r_max=4.5)])
        if self._moe:
            return calc
        return _AllBig(calc)


class _AllBig:
    """The MoE with every atom on its big expert: a single model (no interface)."""

    def __init__(self, calc):
        self.calc = calc

    def __getattr__(self, name):
        return getattr(self.calc, name)

    def get_property(self, name, atoms, allow_calculation=True):
        atoms = atoms.copy()
        atoms.arrays["expert"] = np.zeros(len(atoms), dtype=np.int64)
        return self.calc.get_property(name, atoms, allow_calculation)

    def get_potential_energy(self, atoms, force_consistent=False):
        return self.get_property("energy", atoms)

    def get_forces(self, atoms):
        return self.get_property("forces", atoms)


def test_split_crystal_forces_of_an_moe():
    """Three planes and a sphere split the crystal; all-big (one model) feels no force there,
    the untrained MoE's disagreeing experts do."""
    result = measures.split_crystal_forces(
        [TinyModel("moe"), TinyModel("big", moe=False)], structures.PT_A0, (-0.01, 0.01),
        receptive_radius=2.0,
    )
    assert set(result["geometries"]) == {"plane_100", "plane_110", "plane_111", "sphere"}
    assert result["atoms"] == sum(result["geometries"].values())
    assert result["strains"] == [-0.01, 0.01]
    big = result["models"]["big"]
    assert big["worst_max_force_mev_per_a"] < 1e-6  # one model: no interface, zero force
    moe = result["models"]["moe"]["rows"]
    assert all(r["max_force_mev_per_a"] > 1e-3 for r in moe)  # untrained experts disagree
    assert all(r["rms_force_mev_per_a"] <= r["max_force_mev_per_a"] for r in moe)


def test_buffer_sweep_and_disagreement_of_an_moe():
    rng = np.random.default_rng(2)
    frames = example_data.add_region_arrays(
        [structures.emt_labelled(a) for a in structures.thick_slabs_with_co(1, rng)]
    )
    model = TinyModel("moe")
    reference = measures.predict(TinyModel("big", moe=False).calculator(), frames)
    sweep = measures.buffer_sweep(model, frames, reference, widths=(0.0, 4.5), repeats=1)
    rows = sweep["rows"]
    assert [r["buffer_width_a"] for r in rows] == [0.0, 4.5]
    assert rows[0]["hf_fraction"] < rows[1]["hf_fraction"] < 1.0
    c = sweep["cost_ratio_small_over_big"]
    for r in rows:
        f = r["hf_fraction"]
        assert r["ideal_speedup"] == pytest.approx(1.0 / (f + (1.0 - f) * c))
        assert r["core_ratio_to_all_big"] == pytest.approx(
            r["core_forces_mae_mev_per_a"] / sweep["all_big"]["core_forces_mae_mev_per_a"])
    bulk = [structures.emt_labelled(structures.pt_bulk(structures.PT_A0 * s)) for s in (0.99, 1.01)]
    agreement = measures.expert_disagreement(model, bulk)
    assert agreement["frames"] == 2 and agreement["energy_mae_mev_per_atom"] > 0


def test_errors_partition_and_claims():
    rng = np.random.default_rng(3)
    frames = example_data.add_region_arrays(
        [structures.emt_labelled(a) for a in structures.thick_slabs_with_co(2, rng)]
        + [structures.emt_labelled(a) for a in structures.bulk_vacancies(1, rng)]
    )
    def shifted(shift):
        return [{"energy": a.get_potential_energy() + shift * len(a),
                 "forces": a.get_forces() + shift} for a in frames]

    errors = {"big": measures.test_errors(frames, shifted(0.005)),
              "moe": measures.test_errors(frames, shifted(0.010))}
    counts = {c: sum(int((measures.atom_classes(a) == c).sum()) for a in frames)
              for c in measures.ATOM_CLASSES}
    assert sum(counts.values()) == sum(len(a) for a in frames) and counts["interface"] > 0
    forces = errors["moe"]["forces_mae_mev_per_a"]
    assert forces["core"] == pytest.approx(10.0) and forces["interface_far"] == pytest.approx(10.0)
    assert set(errors["moe"]["by_kind"]) == {"thick_slab_co", "vacancy"}
    assert errors["moe"]["by_kind"]["vacancy"]["energy_mae_mev_per_atom"] == pytest.approx(10.0)
    # the interface penalty: the MoE's error on the shell over its small expert's alone there
    from nequip_moe.validation.interface import interface_penalty

    high = [a.arrays["expert"] == measures.BIG for a in frames]

    def penalty_of(small_alone_shift):
        return interface_penalty(frames, high, shifted(0.010), shifted(small_alone_shift), 4.5)

    report = {"models": {"big": "all-big", "moe": "MoE"}, "errors": errors, "eos": None,
              "notes": {}, "interface_penalty": {"moe": penalty_of(0.010)}}
    claims = check_claims(report, "moe")
    by_text = {c["claim"]: c for c in claims}
    penalty = next(c for text, c in by_text.items() if "no interface penalty" in text)
    assert penalty["holds"] and penalty["value"] == pytest.approx(1.0)
    assert penalty["threshold"] == THRESHOLDS["interface_penalty"] == 1.05
    assert "all-big's 1.00x" in penalty["detail"]  # the all-big-relative ratio, information only
    # the small expert alone is twice as accurate there as inside the MoE: the interface costs
    failing = check_claims({**report, "interface_penalty": {"moe": penalty_of(0.005)}}, "moe")
    claim = next(c for c in failing if "no interface penalty" in c["claim"])
    assert not claim["holds"] and claim["value"] == pytest.approx(2.0)
    core = next(c for text, c in by_text.items() if "accurate as all-big on the core" in text)
    assert not core["holds"] and core["value"] == pytest.approx(2.0)
    for c in claims:  # every claim with a number carries its threshold
        assert (c["value"] is None) == (c["threshold"] is None)


def test_teacher_sanity_and_dt_scaling_with_emt():
    gas = [structures.emt_labelled(a) for a in structures.gas_co(12, None)]
    assert measures.co_bond_length(gas) == pytest.approx(1.056, abs=0.01)  # EMT's, not PBE's 1.14
    eos = [structures.emt_labelled(a) for a in structures.bulk_eos_heldout()]
    fit = measures.fit_eos([a.get_volume() / len(a) for a in eos],
                           [a.get_potential_energy() / len(a) for a in eos])
    sanity = measures.teacher_sanity(fit, gas)
    assert sanity["a0_A"] == pytest.approx((4 * fit["V0"]) ** (1 / 3))
    assert sanity["a0_A"] == pytest.approx(3.92, abs=0.01)
    slab = slab_with_co()
    runs = nve_timestep_scaling(EMT(), slab, steps=40, timestep_fs=1.0)
    assert runs["2dt"]["steps"] == 20 and runs["2dt"]["timestep_fs"] == 2.0
    assert 1.5 <= runs["exponent"] <= 2.5  # Verlet: fluctuation ~ dt^2
    assert abs(runs["dt"]["drift_mev_per_atom_per_ps"]) < 0.5


def test_nve_structure_falls_back_to_a_mixed_slab():
    slab = slab_with_co()
    slab.arrays["expert"] = np.zeros(len(slab), dtype=np.int64)  # no small-expert atom
    atoms = measures.nve_structure([slab])
    assert (atoms.numbers != 78).any() and set(atoms.arrays["expert"].tolist()) == {0, 1}
    assert measures.nve_structure([]) is None


@pytest.fixture(scope="module")
def tiny_allegro_calc():
    """An untrained tiny Allegro model (cutoff 5 A) on C, O, Pt and its eager calculator."""
    import torch
    from allegro.model import AllegroModel
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator

    torch.manual_seed(0)
    model = AllegroModel(
        seed=0, model_dtype="float64", r_max=5.0, type_names=["C", "O", "Pt"], l_max=1,
        num_layers=1, num_scalar_features=4, num_tensor_features=2,
        allegro_mlp_hidden_layers_depth=1, allegro_mlp_hidden_layers_width=4,
        readout_mlp_hidden_layers_depth=1, readout_mlp_hidden_layers_width=4,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
                               "num_bessels": 4},
        avg_num_neighbors=40.0, per_type_energy_scales=0.5,
    )
    model.eval()
    transforms = [ChemicalSpeciesToAtomTypeMapper(["C", "O", "Pt"]),
                  NeighborListTransform(r_max=5.0)]
    return NequIPCalculator(model, device="cpu", transforms=transforms)


def test_unseen_interface_forces_are_the_small_region_energy_gradient(tiny_allegro_calc):
    """With r_cut 0 every edge is unseen: on big-expert atoms the result is the gradient of the
    small region's per-atom energies, computed here directly by autograd."""
    import torch
    from nequip.data import AtomicDataDict

    atoms = structures.split_crystal(structures.PT_A0, -0.02, repeat=(2, 2, 4))
    atoms.rattle(0.05, seed=1)  # no symmetry left to hide an error
    calc = tiny_allegro_calc
    unseen = measures.unseen_interface_forces(calc, atoms, 0.0)

    data = calc.atoms_to_data(atoms)
    pos = data[AtomicDataDict.POSITIONS_KEY].clone().requires_grad_(True)
    data[AtomicDataDict.POSITIONS_KEY] = pos
    calc.model.train()  # keeps the graph of the per-atom energies after the force pass
    try:
        energies = calc.model(data)[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1)
    finally:
        calc.model.eval()
    small = torch.as_tensor(atoms.arrays["expert"] == 1)
    direct = torch.autograd.grad(energies[small].sum(), pos)[0].detach().numpy()
    big = ~small.numpy()
    assert np.abs(direct[big]).max() > 1e-4
    np.testing.assert_allclose(unseen[big], direct[big], atol=1e-10)


def test_response_beyond_cutoff_vanishes_at_the_model_cutoff(tiny_allegro_calc):
    """At -2 % strain the third fcc shell (4.70 A) lies inside the model's 5 A cutoff: a small
    expert of cutoff 4.5 A cannot see it; one of 5 A sees every neighbour."""
    strains = (-0.02, 0.0)
    short = measures.response_beyond_cutoff(
        tiny_allegro_calc, structures.PT_A0, 4.5, strains, repeat=(2, 2, 4))
    full = measures.response_beyond_cutoff(
        tiny_allegro_calc, structures.PT_A0, 5.0, strains, repeat=(2, 2, 4))
    assert short["rows"][0]["max_force_mev_per_a"] > 1e-3
    assert full["worst_max_force_mev_per_a"] == 0.0


def _split_report(worst: dict) -> dict:
    """A report whose split crystal gives each model ``worst`` max |F| (meV/A)."""
    seeds = {"moe": ["moe", "moe_s2", "moe_s3"],
             "moe_noagree": ["moe_noagree", "moe_noagree_s2", "moe_noagree_s3"]}
    models = {name: name for members in seeds.values() for name in members}
    errors = {name: {"forces_mae_mev_per_a": {}, "energy_mae_mev_per_atom": {}}
              for name in models}
    split = {"strains": [0.0], "models": {
        name: {"worst_max_force_mev_per_a": value, "rows": []} for name, value in worst.items()}}
    return {"models": models, "errors": errors, "split_crystal": split, "seeds": seeds,
            "without_agreement": {"moe": "moe_noagree"}, "notes": {}}


def test_consistency_claims_are_judged_on_the_worst_seed():
    """One seed over the bound fails the claim, whose value is that seed's and whose detail
    names every seed; each seed is compared with the same seed of the control."""
    from claims import family_claims, margin

    bound = THRESHOLDS["split_max_force_mev_per_a"]
    worst = {"moe": 10.0, "moe_s2": 12.0, "moe_s3": bound + 1.0,
             "moe_noagree": 100.0, "moe_noagree_s2": 100.0, "moe_noagree_s3": 30.0}
    claims = {c["key"]: c for c in family_claims(_split_report(worst), _split_report(worst)
                                                 ["seeds"]["moe"])}
    split = claims["split_max_force"]
    assert not split["holds"] and split["value"] == bound + 1.0
    assert split["seeds"] == {"moe": 10.0, "moe_s2": 12.0, "moe_s3": bound + 1.0}
    assert all(name in split["detail"] for name in ("moe_s2", "moe_s3"))
    improvement = claims["split_improvement"]  # seed 3: 30 / 21, the smallest factor
    assert improvement["value"] == pytest.approx(30.0 / (bound + 1.0))
    assert not improvement["holds"] and margin(improvement) > 1.0
    # every seed within the bounds: the claims hold, at the worst seed's value
    worst.update(moe_s3=15.0, moe_noagree_s3=90.0)
    claims = {c["key"]: c for c in family_claims(_split_report(worst), ["moe", "moe_s2",
                                                                         "moe_s3"])}
    assert claims["split_max_force"]["holds"] and claims["split_max_force"]["value"] == 15.0
    assert claims["split_improvement"]["value"] == pytest.approx(90.0 / 15.0)


def test_bulk_terminated_bottom_keeps_the_top_surfaces_region():
    """The remedy for slabs: the bottom surface is not core (no big-expert Pt in the lower
    half beyond the top's buffer), the top half is labelled as by the example's rules."""
    import production

    slab = structures.pt111_slab((4, 4, 10), vacuum=8.0)
    structures.add_co(slab, "ontop", (1, 1))
    slab.pbc = True
    rules = example_data.label_experts(slab, 4.5)
    remedy = production.bulk_bottom_labels(slab, 4.5)
    z = slab.positions[:, 2]
    is_pt = slab.numbers == 78
    middle = 0.5 * (z[is_pt].min() + z[is_pt].max())
    lower = is_pt & (z < middle)
    assert (rules[lower] == 0).any() and (remedy[lower] == 1).all()
    np.testing.assert_array_equal(remedy[~lower], rules[~lower])
    assert (remedy[~is_pt] == 0).all()


def test_production_claim_needs_speed_and_efficiency():
    import production

    def section(speedup, ideal):
        run = {"speedup": speedup, "efficiency": speedup / ideal, "all_big_s_per_step": 1.0,
               "moe_s_per_step": 1.0 / speedup, "cpu_speedup": speedup,
               "load_average": {"all_big": [1.0], "moe": [1.0]}}
        row = {"atoms": 5346, "hf_fraction": 0.2, "ideal_speedup": ideal,
               "lower_half_hf_fraction": 0.1, "runs": {"1": run, "2": run}}
        return {"systems": {"slab": row, "slab (bulk-terminated bottom)": row},
                "cost_ratio_small_over_big": 0.05, "cost_weights": {"big": 20.0, "small": 1.0},
                "steps": 3, "warmup_steps": 1}

    for speedup, ideal, holds in ((2.5, 2.8, True), (1.9, 2.0, False), (2.1, 3.0, False)):
        claims = production.production_claims(section(speedup, ideal))
        assert len(claims) == 2 and all(c["holds"] == holds for c in claims)
    text = "\n".join(production.production_markdown(section(2.5, 2.8)))
    assert "10.0 % of its atoms" in text and "| slab | 5346 |" in text
