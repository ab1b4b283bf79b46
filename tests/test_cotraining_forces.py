"""Co-training outputs are each expert alone on the whole frame, restricted to the shared atoms.

With the per-atom ``shared`` mark in the input, an MoE outputs every expert's per-atom energies
and whole-frame forces on the shared atoms (``expert_atomic_energy``, ``expert_forces``). The
reference here is the expert built on its own from the same weights (element types, its own
cutoffs) and evaluated on every atom: partial shared sets, asymmetric per-edge-type cutoffs
(the cutoff of C -> Pt differs from Pt -> C) and message-passing NequIP experts with a halo.
"""

import copy

import numpy as np
import pytest
import torch

from nequip.data import AtomicDataDict

from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    build,
    element_graph,
    float64,
    half_labels,
    pt_co_slab,
    standalone_expert,
    typed_graph,
)
from test_moe_nequip_mixins import (
    NEQUIP_ALLEGRO,
    TWO_ALLEGRO,
    allegro_expert,
    moe_config,
    nequip_expert,
)


def nequip_allegro_asymmetric(num_layers):
    """A NequIP expert (``num_layers - 1`` shells of halo) and an Allegro one, both with
    asymmetric per-edge-type cutoffs."""
    return moe_config(
        {
            "big": nequip_expert(
                num_layers=num_layers,
                per_edge_type_cutoff={"C": 3.2, "Pt": {"C": 3.8, "O": 3.4}},
            ),
            "small": allegro_expert(
                r_max=3.5, per_edge_type_cutoff={"C": 3.0, "O": {"Pt": 3.2}}
            ),
        }
    )


MOE_CONFIGS = {
    "allegro2_asymmetric": TWO_ALLEGRO,
    "nequip2+allegro": NEQUIP_ALLEGRO,
    "nequip2+allegro_asymmetric": nequip_allegro_asymmetric(2),
    "nequip3+allegro_asymmetric": nequip_allegro_asymmetric(3),
}


def shared_sets(atoms, labels):
    """Named partial shared sets of a Pt+CO slab (boolean masks)."""
    numbers = atoms.numbers
    z = atoms.positions[:, 2]
    small_pt = np.flatnonzero(labels == 1)
    return {
        # the case: one C atom (owned by the big expert) evaluated by the small one
        "one_C": numbers == 6,
        # one small-expert Pt right below the big region
        "one_interface_Pt": np.arange(len(atoms)) == small_pt[np.argmax(z[small_pt])],
        "random_third": np.random.default_rng(0).random(len(atoms)) < 1 / 3,
        "all_Pt": numbers == 78,
    }


def expert_alone(moe, config, name, atoms):
    """Per-atom energies and forces of one expert alone on the whole frame."""
    alone, r_max = standalone_expert(moe, config, name)
    out = alone(element_graph(atoms, r_max))
    return out[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1), out[AtomicDataDict.FORCE_KEY]


@pytest.mark.parametrize("config_name", list(MOE_CONFIGS))
def test_expert_forces_on_partial_shared_sets_are_expert_alone(config_name):
    config = MOE_CONFIGS[config_name]
    moe = build(config)
    atoms = pt_co_slab(size=(3, 3, 3))
    labels = half_labels(atoms)
    data = typed_graph(atoms, config, labels)
    references = {name: expert_alone(moe, config, name, atoms) for name in config["experts"]}
    for set_name, shared in shared_sets(atoms, labels).items():
        assert 0 < shared.sum() < len(atoms), set_name
        inputs = dict(data)
        inputs["shared"] = torch.as_tensor(shared, dtype=torch.long).view(-1, 1)
        out = moe(inputs)
        mask = torch.as_tensor(shared)
        for k, name in enumerate(config["experts"]):
            energy, forces = references[name]
            case = f"{config_name}, expert {name}, shared {set_name}"

            def msg(detail):
                return f"{case}: {detail}"

            torch.testing.assert_close(
                out["expert_forces"][:, k][mask], forces[mask], atol=1e-10, rtol=0, msg=msg
            )
            torch.testing.assert_close(
                out["expert_atomic_energy"][:, k][mask], energy[mask], atol=1e-10, rtol=0, msg=msg
            )
            # nothing outside the shared set
            assert torch.all(out["expert_forces"][:, k][~mask] == 0), case
            assert torch.all(out["expert_atomic_energy"][:, k][~mask] == 0), case


@pytest.mark.parametrize("config_name", ["allegro2_asymmetric", "nequip2+allegro_asymmetric"])
def test_batched_frames_partial_and_whole_shared(config_name):
    """In a batch, a frame with one shared C and a wholly shared frame: per-expert forces on the
    shared atoms and, for the wholly shared frame, the frame energy are each expert alone's."""
    config = MOE_CONFIGS[config_name]
    moe = build(config)
    frames = [pt_co_slab(size=(3, 3, 3)), pt_co_slab(size=(2, 2, 3), seed=1)]
    shared = [frames[0].numbers == 6, np.ones(len(frames[1]), dtype=bool)]
    graphs = []
    for atoms, mask in zip(frames, shared):
        graph = typed_graph(atoms, config, half_labels(atoms))
        graph["shared"] = torch.as_tensor(mask, dtype=torch.long).view(-1, 1)
        graphs.append(graph)
    out = moe(AtomicDataDict.batched_from_list(graphs))
    offsets = np.cumsum([0] + [len(a) for a in frames])
    for k, name in enumerate(config["experts"]):
        alone, r_max = standalone_expert(moe, config, name)
        for f, (atoms, mask) in enumerate(zip(frames, shared)):
            ref = alone(element_graph(atoms, r_max))
            mask = torch.as_tensor(mask)
            got = out["expert_forces"][offsets[f] : offsets[f + 1], k]
            torch.testing.assert_close(got[mask], ref["forces"][mask], atol=1e-10, rtol=0)
            if mask.all():
                torch.testing.assert_close(
                    out["expert_total_energy"][f, k], ref["total_energy"].view(()), atol=1e-10, rtol=0
                )


def test_the_slab_holds_edges_between_asymmetric_cutoffs():
    """The one-C case tests asymmetry: the small expert cuts C -> Pt at 3.0 and Pt -> C at its
    r_max 3.5, and the slab's C has Pt neighbours between the two."""
    small = TWO_ALLEGRO["experts"]["small"]
    assert small["per_edge_type_cutoff"]["C"] == 3.0 and small["r_max"] == 3.5
    atoms = pt_co_slab(size=(3, 3, 3))
    (carbon,) = np.flatnonzero(atoms.numbers == 6)
    distances = atoms.get_distances(carbon, np.flatnonzero(atoms.numbers == 78), mic=True)
    assert np.any((distances > 3.0) & (distances < 3.5))


def test_cotraining_under_train_time_compile_matches_eager():
    """`compile_mode: compile` trains like eager with co-training outputs: the same energies,
    forces, stress and per-expert outputs, and the same parameter gradients of a loss on them
    (the agreement force term differentiates the expert forces once more)."""
    config = copy.deepcopy(TWO_ALLEGRO)
    config["experts"]["big"] = allegro_expert()
    eager = build(config)
    compiled = build(config, compile_mode="compile")
    compiled.load_state_dict(eager.state_dict())
    frames = [pt_co_slab(size=(2, 2, 2)), pt_co_slab(size=(2, 2, 3), seed=1)]
    graphs = []
    for atoms in frames:
        graph = typed_graph(atoms, config, half_labels(atoms))
        graph["shared"] = torch.as_tensor(atoms.numbers == 78).long().view(-1, 1)
        graphs.append(graph)
    batch = AtomicDataDict.batched_from_list(graphs)
    keys = ["total_energy", "forces", "stress"]
    keys += ["expert_atomic_energy", "expert_forces", "expert_total_energy"]
    outputs = []
    for model in (eager, compiled):
        model.train()
        out = model(dict(batch))
        forces = out["expert_forces"]
        loss = (forces[:, 0] - forces[:, 1]).square().sum() + out["forces"].square().sum()
        loss = loss + out["total_energy"].square().sum()
        loss.backward()
        outputs.append(out)
    for key in keys:
        torch.testing.assert_close(
            outputs[1][key], outputs[0][key], atol=1e-10, rtol=0, msg=lambda m: f"{key}: {m}"
        )
    grads = dict(eager.named_parameters())
    checked = 0
    for name, param in compiled.named_parameters():
        torch.testing.assert_close(
            param.grad, grads[name].grad, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}"
        )
        checked += int(param.grad.abs().max() > 0)
    assert checked > 0
