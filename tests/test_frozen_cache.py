"""Frozen experts computed once per training frame (``MoEModel(frozen_expert_cache=True)``):
training steps with the cache give the same energies, forces, stress, co-training outputs,
agreement losses (interface cuts included) and parameter gradients as evaluating the frozen
expert, on the first sight of a frame and when reusing it; the cache never goes stale and
never acts outside eager training."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk

from nequip.data import AtomicDataDict

from nequip_moe.nn import MixtureOfExpertsEnergy
from nequip_moe.train import EmptySafeMSE, ExpertAgreement, InterfaceForceAgreement

from test_gated_moe import GATED_TWO_ALLEGRO, blend_zone_slab, graph, hot_bulk
from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    NEQUIP_ALLEGRO,
    TWO_ALLEGRO,
    build,
    float64,
    half_labels,
    pt_co_slab,
    typed_graph,
)

EXPERTS = ["big", "small"]
OUTPUTS = [
    "total_energy",
    "atomic_energy",
    "forces",
    "stress",
    "expert_atomic_energy",
    "expert_forces",
    "expert_total_energy",
]


def static_batch(config):
    """A slab with shared Pt and a wholly shared rattled bulk cell, batched."""
    slab = pt_co_slab(size=(3, 3, 3))
    cell = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((2, 2, 2))
    cell.rattle(0.05, seed=1)
    graphs = []
    for atoms, labels, shared in [
        (slab, half_labels(slab), slab.numbers == 78),
        (cell, np.ones(len(cell), dtype=int), np.ones(len(cell), dtype=bool)),
    ]:
        data = typed_graph(atoms, config, labels)
        data["shared"] = torch.as_tensor(shared, dtype=torch.long).view(-1, 1)
        graphs.append(data)
    return AtomicDataDict.batched_from_list(graphs)


def gated_batch(config):
    graphs = []
    for atoms in (blend_zone_slab(), hot_bulk()):
        data = graph(atoms)
        data["shared"] = torch.as_tensor(atoms.numbers == 78, dtype=torch.long).view(-1, 1)
        graphs.append(data)
    return AtomicDataDict.batched_from_list(graphs)


def twins(config):
    """The MoE with its big expert frozen, with and without the cache, same weights."""
    cached = build(config, frozen_experts=["big"])
    evaluated = build(config, frozen_experts=["big"], frozen_expert_cache=False)
    evaluated.load_state_dict(cached.state_dict())
    return cached, evaluated


def moe_energy(model):
    return next(m for m in model.modules() if isinstance(m, MixtureOfExpertsEnergy))


def training_step(model, batch, seed):
    """Outputs, agreement losses (random interface cuts, big frozen as constant reference) and
    the trainable parameters' gradients of their sum with the data terms."""
    model.train()
    model.zero_grad()
    out = model(dict(batch))
    terms = {
        "forces": EmptySafeMSE()(*ExpertAgreement("forces", EXPERTS)(out, batch)),
        "energy": EmptySafeMSE()(*ExpertAgreement("atomic_energy", EXPERTS)(out, batch)),
        "frame": EmptySafeMSE()(*ExpertAgreement("total_energy", EXPERTS)(out, batch)),
        "interface": EmptySafeMSE()(
            *InterfaceForceAgreement(
                EXPERTS, reference="big", constant_reference=True, random_cut=True, seed=seed
            )(out, batch)
        ),
        "data": out["forces"].square().mean() + out["stress"].square().sum(),
    }
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, terms, grads


@pytest.mark.parametrize("kind", ["static", "gated"])
def test_cached_training_steps_equal_evaluated(kind):
    config, make_batch = {
        "static": (TWO_ALLEGRO, static_batch),
        "gated": (GATED_TWO_ALLEGRO, gated_batch),
    }[kind]
    cached, evaluated = twins(config)
    batch = make_batch(config)
    cache = moe_energy(cached)._frozen
    for step in range(2):  # the first sight of the frames, then reused
        results = [training_step(model, batch, seed=step) for model in (cached, evaluated)]
        (out, terms, grads), (ref_out, ref_terms, ref_grads) = results
        for key in OUTPUTS:
            torch.testing.assert_close(out[key], ref_out[key], atol=1e-10, rtol=0, msg=key)
        for name, value in terms.items():
            torch.testing.assert_close(value, ref_terms[name], atol=1e-10, rtol=1e-10, msg=name)
        assert grads.keys() == ref_grads.keys() and len(grads) > 0
        assert not any(".big." in n for n in grads)  # the big expert is frozen
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], atol=1e-10, rtol=1e-9, msg=name)
        assert terms["interface"] > 0 and terms["forces"] > 0
    assert cache.frames_computed == 2 and cache.frames_reused == 2


def test_cache_is_dropped_when_the_expert_changes_and_idle_outside_training():
    cached, evaluated = twins(TWO_ALLEGRO)
    batch = static_batch(TWO_ALLEGRO)
    cache = moe_energy(cached)._frozen
    training_step(cached, batch, seed=0)
    # new weights for the frozen expert (e.g. a state dict loaded): recomputed, not reused
    state = {k: v + 0.01 if ".big." in k and v.is_floating_point() else v for k, v in cached.state_dict().items()}
    cached.load_state_dict(state)
    evaluated.load_state_dict(state)
    out, _, _ = training_step(cached, batch, seed=0)
    ref, _, _ = training_step(evaluated, batch, seed=0)
    torch.testing.assert_close(out["forces"], ref["forces"], atol=1e-10, rtol=0)
    assert cache.frames_computed == 4 and cache.frames_reused == 0
    # evaluation (validation, inference) evaluates every expert
    cached.eval()
    cached(dict(batch))
    assert cache.frames_computed == 4 and cache.frames_reused == 0
    # a packaged or copied model starts with an empty cache
    for copied in (pickle.loads(pickle.dumps(cached)), copy.deepcopy(cached)):
        assert moe_energy(copied)._frozen.frames_computed == 0
        assert len(moe_energy(copied)._frozen._frames) == 0


def test_message_passing_frozen_expert_is_evaluated():
    cached, evaluated = twins(NEQUIP_ALLEGRO)
    batch = static_batch(NEQUIP_ALLEGRO)
    with pytest.warns(UserWarning, match="frozen expert `big` is not strictly local"):
        out, _, _ = training_step(cached, batch, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        training_step(cached, batch, seed=0)
    ref, _, _ = training_step(evaluated, batch, seed=0)
    torch.testing.assert_close(out["forces"], ref["forces"], atol=1e-10, rtol=0)
    assert moe_energy(cached)._frozen.frames_computed == 0


def test_frames_beyond_the_memory_bound_are_computed_each_time():
    cached, evaluated = twins(TWO_ALLEGRO)
    cache = moe_energy(cached)._frozen
    cache.max_bytes = 0
    batch = static_batch(TWO_ALLEGRO)
    for _ in range(2):
        out, _, _ = training_step(cached, batch, seed=0)
    ref, _, _ = training_step(evaluated, batch, seed=0)
    torch.testing.assert_close(out["forces"], ref["forces"], atol=1e-10, rtol=0)
    assert cache.frames_computed == 4 and cache.frames_reused == 0 and len(cache._frames) == 0
