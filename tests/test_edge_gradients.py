"""Per-edge energy gradients of strictly local experts (MoEModel ``cotraining_edge_gradients``)
and their agreement term ``ExpertAgreement(field: edge_energy_gradient)``.

For strictly local experts atom ``i``'s energy depends only on the edges centred on ``i``, so
``g_e = d e_centre(e) / d r_e`` is well defined, and giving a region ``B`` of a structure to
expert ``b`` instead of ``a`` adds the force

    dF_i = -sum_{e centred in B} (g_e^b - g_e^a) . d r_e / d r_i.

The tests check the field against finite differences, its equivariance, the frozen expert's
cached field against its evaluation, that identity for cuts of several geometries, that it
vanishes when the edge gradients agree, a control whose experts agree on every whole-frame force
and frame energy (what the other terms measure) yet have an interface force, which the edge
term sees, and that a few training steps with the term lower it.
"""

import copy

import numpy as np
import pytest
import torch
from ase.build import bulk

from nequip.data import AtomicDataDict
from nequip.nn import scatter

from nequip_moe.train import EmptySafeMSE, ExpertAgreement

from conftest import CONFIGS, run_tool
from test_frozen_cache import gated_batch, moe_energy, static_batch
from test_gated_moe import GATED_TWO_ALLEGRO
from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    NEQUIP_ALLEGRO,
    TWO_ALLEGRO,
    build,
    float64,
    half_labels,
    pt_co_slab,
    typed_graph,
)
from test_moe_nequip_mixins import allegro_expert, moe_config
from test_pretrained_expert import trained_allegro  # noqa: F401  (module fixture)

EXPERTS = ["big", "small"]
FIELD = "expert_edge_energy_gradient"
# two experts of one architecture and cutoff (the controls modify the second)
TWIN_ALLEGRO = moe_config({"big": allegro_expert(), "small": allegro_expert()})


def energies_with_edge_vectors(energy_module, data, vectors):
    """Every expert's per-atom energies ``[num_atoms, num_experts]`` on the shared atoms, from
    the MoE energy module given these edge vectors."""
    inputs = dict(data)
    inputs[AtomicDataDict.EDGE_VECTORS_KEY] = vectors
    inputs[AtomicDataDict.EDGE_LENGTH_KEY] = vectors.square().sum(1, keepdim=True).sqrt()
    with torch.no_grad():
        return energy_module(inputs)["expert_atomic_energy"]


def shared_slab():
    """A Pt+CO slab with a random half of its atoms shared, and the MoE's graph of it."""
    atoms = pt_co_slab(size=(3, 3, 3))
    shared = np.random.default_rng(0).random(len(atoms)) < 0.5
    data = typed_graph(atoms, TWO_ALLEGRO, half_labels(atoms))
    data["shared"] = torch.as_tensor(shared, dtype=torch.long).view(-1, 1)
    return atoms, data, torch.as_tensor(shared)


def test_edge_gradients_are_finite_differences_of_per_atom_energies():
    """Each expert's field on an edge centred on a shared atom is the central difference of its
    centre's energy over that edge vector (no other shared atom's energy moves: strict
    locality), zero on edges centred elsewhere; by the chain rule (r_e = r_neighbour - r_centre
    + shift) it gives the finite differences of the per-atom energies over positions."""
    model = build(TWO_ALLEGRO, cotraining_edge_gradients=True)
    _, data, shared = shared_slab()
    field = model(dict(data))[FIELD].detach()
    centres, neighbours = data[AtomicDataDict.EDGE_INDEX_KEY]
    assert field.shape == (centres.numel(), 2, 3)
    assert torch.all(field[~shared[centres]] == 0)

    energy_module = moe_energy(model)
    vectors = energy_module(dict(data))[AtomicDataDict.EDGE_VECTORS_KEY].detach()
    rng = np.random.default_rng(1)
    h = 1e-5
    for k in range(2):
        nonzero = torch.nonzero(field[:, k].abs().sum(-1) > 0).view(-1).numpy()
        # the small expert's shorter cutoffs leave some shared centres' edges out: gradient 0
        beyond = torch.nonzero(shared[centres] & (field[:, k].abs().sum(-1) == 0)).view(-1)
        picks = list(rng.choice(nonzero, 4, replace=False)) + list(beyond[:1].numpy())
        assert k == 0 or beyond.numel() > 0
        for edge in picks:
            for c in range(3):
                step = torch.zeros_like(vectors)
                step[edge, c] = h
                plus = energies_with_edge_vectors(energy_module, data, vectors + step)
                minus = energies_with_edge_vectors(energy_module, data, vectors - step)
                difference = (plus - minus)[:, k] / (2 * h)
                centre = int(centres[edge])
                assert abs(float(difference[centre] - field[edge, k, c])) < 1e-7
                others = torch.arange(difference.numel()) != centre
                assert float(difference[others].abs().max()) < 1e-9

    # positions: d e_c / d r_m = sum_{e: c -> m} g_e - [c == m] sum_{e centred on c} g_e
    for atom in (int(torch.nonzero(shared)[0]), int(torch.nonzero(~shared)[0])):
        for c in range(3):
            energies = []
            for sign in (1.0, -1.0):
                moved = dict(data)
                pos = data[AtomicDataDict.POSITIONS_KEY].clone()
                pos[atom, c] += sign * h
                moved[AtomicDataDict.POSITIONS_KEY] = pos
                with torch.no_grad():
                    energies.append(energy_module(moved)["expert_atomic_energy"])
            difference = (energies[0] - energies[1]) / (2 * h)
            chain = torch.zeros_like(difference)
            chain.index_add_(0, centres, field[:, :, c] * (neighbours == atom).unsqueeze(-1))
            chain[atom] -= field[centres == atom, :, c].sum(0)
            torch.testing.assert_close(difference, chain, atol=1e-7, rtol=0)
            assert difference.abs().max() > 1e-5


def test_edge_gradients_are_equivariant():
    """nequip's equivariance check (rotations, translations, atom permutations: an edge field)
    covers the field through its declared irreps (a 1o vector per expert)."""
    from nequip.utils.test import assert_AtomicData_equivariant

    model = build(TWO_ALLEGRO, cotraining_edge_gradients=True)
    assert str(model.irreps_out[FIELD]) == "1x1o"
    _, data, _ = shared_slab()
    assert FIELD in assert_AtomicData_equivariant(model, data)


@pytest.mark.parametrize("kind", ["static", "gated"])
def test_batched_field_is_each_frames_and_frozen_cache_serves_it(kind):
    """The field is registered per edge: a frame taken from the batched output is the frame's
    own; a frozen expert served by the per-frame cache gives the field (and the edge term's
    parameter gradients) of its evaluation, on first sight and on reuse, to 1e-10; static
    regions and a gated MoE (blend-zone atoms shared)."""
    config, make_batch = {
        "static": (TWO_ALLEGRO, static_batch),
        "gated": (GATED_TWO_ALLEGRO, gated_batch),
    }[kind]
    cached = build(config, frozen_experts=["big"], cotraining_edge_gradients=True)
    evaluated = build(
        config, frozen_experts=["big"], frozen_expert_cache=False, cotraining_edge_gradients=True
    )
    evaluated.load_state_dict(cached.state_dict())
    batch = make_batch(config)
    term = ExpertAgreement("edge_energy_gradient", EXPERTS, reference="big")
    for step in range(2):
        results = []
        for model in (cached, evaluated):
            model.train()
            model.zero_grad()
            out = model(dict(batch))
            loss = EmptySafeMSE()(*term(out, batch))
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((out, loss, grads))
        (out, loss, grads), (ref, ref_loss, ref_grads) = results
        torch.testing.assert_close(out[FIELD], ref[FIELD], atol=1e-10, rtol=0)
        torch.testing.assert_close(loss, ref_loss, atol=1e-12, rtol=1e-10)
        assert loss > 0 and grads.keys() == ref_grads.keys() and len(grads) > 0
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], atol=1e-10, rtol=1e-9, msg=name)
    cache = moe_energy(cached)._frozen
    assert cache.frames_computed == 2 and cache.frames_reused == 2

    graphs = [AtomicDataDict.frame_from_batched(batch, f) for f in range(2)]
    evaluated.eval()
    whole = evaluated(dict(batch))
    for f, graph in enumerate(graphs):
        alone = evaluated(dict(graph))[FIELD]
        from_batch = AtomicDataDict.frame_from_batched(whole, f)[FIELD]
        torch.testing.assert_close(from_batch, alone, atol=1e-12, rtol=0)


class ModifiedExpert(torch.nn.Module):
    """An expert whose per-atom energies get a constant ``offset`` and, optionally, the sum over
    the atom's edges of ``strength (u . r_e) (1 - |r_e| / cutoff)^2``: odd in ``r_e``, so over
    a whole frame (every edge with its reverse) it sums to zero and the frame energy and every
    whole-frame force are the expert's, while the per-atom energies and edge gradients are not.

    Args:
        expert: the expert module (its output's ``atomic_energy`` is modified)
        offset: energy added to every atom
        strength: the odd edge term's strength (``0``: none)
        cutoff: the odd edge term's cutoff, within the expert's
    """

    def __init__(self, expert, offset=0.0, strength=0.0, cutoff=3.5):
        super().__init__()
        self.expert = expert
        self.offset, self.strength, self.cutoff = offset, strength, cutoff

    def forward(self, data):
        out = self.expert(data)
        energy = out[AtomicDataDict.PER_ATOM_ENERGY_KEY] + self.offset
        vectors = out[AtomicDataDict.EDGE_VECTORS_KEY]
        lengths = out[AtomicDataDict.EDGE_LENGTH_KEY].view(-1)
        direction = torch.tensor([0.3, -0.5, 0.8], dtype=vectors.dtype)
        envelope = torch.where(lengths < self.cutoff, (1 - lengths / self.cutoff) ** 2, 0.0)
        term = self.strength * (vectors @ direction) * envelope
        centres = out[AtomicDataDict.EDGE_INDEX_KEY][0]
        energy = energy + scatter(term.unsqueeze(-1), centres, dim=0, dim_size=energy.size(0))
        out[AtomicDataDict.PER_ATOM_ENERGY_KEY] = energy
        return out


def twin_experts(**modification):
    """The TWIN_ALLEGRO MoE, its small expert the big one (same weights) modified."""
    model = build(TWIN_ALLEGRO, cotraining_edge_gradients=True)
    experts = moe_energy(model).experts
    experts["small"] = ModifiedExpert(copy.deepcopy(experts["big"]), **modification)
    return model


def different_experts():
    return build(TWO_ALLEGRO, cotraining_edge_gradients=True)


def strained_bulk():
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=2)
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    return atoms


def regions(atoms):
    """Named regions ``B`` given to the small expert: plane cuts of three orientations (one
    oblique), a sphere of 4.5 A around the middle atom, a random half."""
    pos = atoms.positions
    middle = pos[np.argmin(np.linalg.norm(pos - atoms.cell.sum(0) / 2, axis=1))]
    fractional = atoms.get_scaled_positions()

    def plane(normal):
        return (pos - middle) @ (np.asarray(normal) / np.linalg.norm(normal)) > 0

    return {
        "plane_x": (fractional[:, 0] % 1.0) >= 0.5,
        "plane_110": plane([1, 1, 0]),
        "plane_123": plane([1, 2, 3]),
        "sphere": np.linalg.norm(pos - middle, axis=1) < 4.5,
        "random_half": np.random.default_rng(3).random(len(atoms)) < 0.5,
    }


def interface_forces(model, config, atoms):
    """For each region: the split MoE's force minus the big expert alone's (from the model run
    on the split), and the force the edge-gradient formula gives from the co-training field."""
    data = typed_graph(atoms, config, np.ones(len(atoms), dtype=int))
    data["shared"] = torch.ones(len(atoms), 1, dtype=torch.long)
    out = model(dict(data))
    difference = (out[FIELD][:, 1] - out[FIELD][:, 0]).detach()
    centres, neighbours = data[AtomicDataDict.EDGE_INDEX_KEY]
    big = model(dict(typed_graph(atoms, config, np.zeros(len(atoms), dtype=int))))["forces"]
    forces = {}
    for name, region in regions(atoms).items():
        assert 0 < region.sum() < len(atoms), name
        split = model(dict(typed_graph(atoms, config, region.astype(int))))["forces"]
        weighted = difference * torch.as_tensor(region)[centres].unsqueeze(-1)
        # -d/dr_i: +g on the neighbour's position, -g on the centre's
        formula = -(
            torch.zeros(len(atoms), 3).index_add(0, neighbours, weighted)
            - torch.zeros(len(atoms), 3).index_add(0, centres, weighted)
        )
        forces[name] = ((split - big).detach(), formula)
    return out, data, forces


def agreement_terms(out, data):
    return {
        field: EmptySafeMSE()(*ExpertAgreement(field, EXPERTS)(out, data)).item()
        for field in ("atomic_energy", "forces", "total_energy", "edge_energy_gradient")
    }


def test_interface_force_of_any_cut_is_the_edge_gradient_difference():
    """Two different tiny experts on a rattled, strained bulk: for cuts by planes of three
    orientations, a sphere and a random half, the split MoE's force minus the big expert's is
    the edge-gradient formula to 1e-10, and a real force."""
    atoms = strained_bulk()
    out, data, forces = interface_forces(different_experts(), TWO_ALLEGRO, atoms)
    for name, (split, formula) in forces.items():
        torch.testing.assert_close(split, formula, atol=1e-10, rtol=0, msg=name)
        assert split.abs().max() > 1e-3, name
    # far above round-off (the terms of agreeing experts below are < 1e-24)
    assert agreement_terms(out, data)["edge_energy_gradient"] > 1e-12


@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_agreeing_edge_gradients_leave_no_interface_force(offset):
    """Experts whose edge gradients agree (the same weights, per-atom energies apart by a
    constant ``offset``): zero edge term, and no interface force for any cut, whatever the
    per-atom energy disagreement."""
    atoms = strained_bulk()
    out, data, forces = interface_forces(twin_experts(offset=offset), TWIN_ALLEGRO, atoms)
    terms = agreement_terms(out, data)
    assert terms["edge_energy_gradient"] < 1e-24
    assert terms["atomic_energy"] == pytest.approx(offset**2, abs=1e-12)
    for name, (split, formula) in forces.items():
        assert split.abs().max() < 1e-10, name
        assert formula.abs().max() < 1e-10, name


def test_control_equal_forces_but_different_splits_have_an_interface_force():
    """Control: the small expert is the big one plus an edge term odd in the edge vector,
    which cancels over a whole frame. Whole-frame forces and frame energies agree (their
    terms are zero) and the per-atom energies differ, yet every cut has an interface force
    (the formula's), which only the edge-gradient term sees."""
    atoms = strained_bulk()
    out, data, forces = interface_forces(twin_experts(strength=0.05), TWIN_ALLEGRO, atoms)
    terms = agreement_terms(out, data)
    assert terms["forces"] < 1e-24 and terms["total_energy"] < 1e-24
    assert terms["atomic_energy"] > 1e-12 and terms["edge_energy_gradient"] > 1e-12
    for name, (split, formula) in forces.items():
        torch.testing.assert_close(split, formula, atol=1e-10, rtol=0, msg=name)
        assert split.abs().max() > 1e-3, name


def test_edge_gradients_need_strictly_local_experts_and_the_option():
    with pytest.raises(ValueError, match=r"needs strictly local experts, but \['big'\]"):
        build(NEQUIP_ALLEGRO, cotraining_edge_gradients=True)
    model = build(TWO_ALLEGRO)
    _, data, _ = shared_slab()
    out = model(dict(data))
    assert FIELD not in out
    with pytest.raises(KeyError, match="cotraining_edge_gradients: true"):
        ExpertAgreement("edge_energy_gradient", EXPERTS)(out, data)
    assert str(ExpertAgreement("edge_energy_gradient", EXPERTS)) == (
        "edge_energy_gradient_agreement"
    )


def test_edge_gradient_term_lowers_the_disagreement_in_training(
    trained_allegro, pt_co_frames_file, tmp_path
):
    """`nequip-train` of configs/tiny_staged.yaml (frozen big expert, every agreement term, the
    edge-gradient term with its weight there) for 10 epochs (20 steps): the experts'
    edge-gradient disagreement on the training batches ends below where it started and well
    below the same run's with the term's weight 0 (same seed, same batches)."""
    import csv

    epochs = {}
    first_steps = []
    for coeff in ("default", "0.0"):
        run_dir = tmp_path / f"coeff_{coeff}"
        run_dir.mkdir()
        override = [] if coeff == "default" else [f"edge_gradient_agreement_coeff={coeff}"]
        run_tool(
            [
                "nequip-train", "-cp", CONFIGS, "-cn", "tiny_staged",
                f"big_model={trained_allegro}", f"data_file={pt_co_frames_file}",
                "trainer.max_epochs=10", *override,
                "+trainer.logger={_target_:lightning.pytorch.loggers.CSVLogger,save_dir:.,name:log}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=run_dir,
        )
        (metrics_file,) = run_dir.glob("log/*/metrics.csv")
        with open(metrics_file) as f:
            rows = list(csv.DictReader(f))

        def logged(key):
            return [float(row[key]) for row in rows if row.get(key)]

        epochs[coeff] = logged("train_loss_epoch/edge_gradient_agreement")
        first_steps.append(logged("train_loss_step/edge_gradient_agreement")[0])
    assert len(epochs["default"]) == len(epochs["0.0"]) == 10
    # the same start: the term's weight changes nothing before the first update
    assert first_steps[0] == pytest.approx(first_steps[1], rel=1e-12) and first_steps[0] > 0
    with_term, without = (np.mean(epochs[c][-3:]) for c in ("default", "0.0"))
    print(
        f"\nedge-gradient disagreement (eV/A)^2: first step {first_steps[0]:.2e}; mean of the "
        f"last 3 epochs with the term {with_term:.2e}, without {without:.2e}"
    )
    assert with_term < 0.5 * first_steps[0]
    assert with_term < 0.2 * without
