"""Co-training: agreement terms between experts on shared bulk environments."""

import copy

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from ase.eos import EquationOfState
from ase.io import write
from hydra.utils import instantiate

from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform
from nequip.train.metrics import MeanSquaredError

from nequip_moe.data import SharedEnvironments
from nequip_moe.integrations.model_files import load_model
from nequip_moe.train import (
    EmptySafeMSE,
    ExpertAgreement,
    ExpertError,
    InterfaceForceAgreement,
)

from conftest import CONFIGS, run_tool
from pt_co_frames import labelled
from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    TWO_ALLEGRO,
    build,
    float64,
    half_labels,
    pt_co_slab,
    typed_graph,
)

EXPERTS = ["big", "small"]


def train(run_dir, config_name, data_file, *overrides):
    run_dir.mkdir(parents=True, exist_ok=True)
    run_tool(
        [
            "nequip-train",
            "-cp",
            CONFIGS,
            "-cn",
            config_name,
            f"data_file={data_file}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=run_dir,
    )
    return run_dir


def model_weights(ckpt):
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {
        k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
    }


def assert_same_weights(ckpt_a, ckpt_b, atol):
    a, b = model_weights(ckpt_a), model_weights(ckpt_b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_zero_agreement_coefficients_train_like_plain_moe(tmp_path, pt_co_frames_file):
    """Agreement terms with coefficient 0 change nothing: same weights after the same steps."""
    common = ["trainer.max_epochs=2", "data.train_dataloader.shuffle=false"]
    plain = train(tmp_path / "plain", "tiny_moe", pt_co_frames_file, *common)
    cotrain = train(
        tmp_path / "cotrain",
        "tiny_cotrain",
        pt_co_frames_file,
        "energy_agreement_coeff=0.0",
        "force_agreement_coeff=0.0",
        *common,
    )
    assert_same_weights(plain / "last.ckpt", cotrain / "last.ckpt", atol=1e-12)


def test_resumed_cotraining_continues_identically(tmp_path, pt_co_frames_file):
    common = ["data.train_dataloader.shuffle=false"]
    straight = train(tmp_path / "straight", "tiny_cotrain", pt_co_frames_file, "trainer.max_epochs=4", *common)
    first = train(tmp_path / "first", "tiny_cotrain", pt_co_frames_file, "trainer.max_epochs=2", *common)
    resumed = train(
        tmp_path / "resumed",
        "tiny_cotrain",
        pt_co_frames_file,
        "trainer.max_epochs=4",
        f"++ckpt_path={first / 'last.ckpt'}",
        *common,
    )
    assert_same_weights(straight / "last.ckpt", resumed / "last.ckpt", atol=1e-10)


def test_float32_cotraining_end_to_end(tmp_path, pt_co_frames_file):
    """`model_dtype: float32` trains with the agreement terms, tests and predicts in float32, and
    predicts what the float64 model with the same weights predicts, to float32 precision."""
    run = train(
        tmp_path / "f32", "tiny_cotrain", pt_co_frames_file,
        "trainer.max_epochs=1", "training_module.model.model_dtype=float32",
    )
    model32, _ = load_model(run / "last.ckpt")
    assert {p.dtype for p in model32.parameters()} == {torch.float32}
    hyper = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    config64 = {**hyper["info_dict"]["training_module"]["model"], "model_dtype": "float64"}
    model64 = instantiate(config64, _recursive_=False).eval()
    model64.load_state_dict(model32.state_dict())

    atoms = pt_co_slab(size=(2, 2, 3))
    labels = half_labels(atoms)
    data = typed_graph(atoms, TWO_ALLEGRO_TINY, labels)
    data["shared"] = torch.as_tensor(atoms.numbers == 78).long().view(-1, 1)
    out32, out64 = model32(dict(data)), model64(dict(data))
    keys = ["total_energy", "atomic_energy", "forces", "expert_atomic_energy", "expert_forces"]
    for key in keys:
        torch.testing.assert_close(
            out32[key].double(), out64[key], atol=2e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}"
        )
    # float32 arithmetic really happened (float64 round-off alone would be ~1e-15)
    assert (out32["forces"].double() - out64["forces"]).abs().max() > 1e-9


def pt_frames(seed=0):
    """Tiny Pt case: (111) slabs (top two layers big) and bulk frames (small, all shared)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(6):
        slab = fcc111("Pt", (2, 2, 4), vacuum=5.0, a=3.92)
        slab.pbc = True
        slab.positions += rng.normal(0, 0.06, slab.positions.shape)
        z = slab.positions[:, 2]
        frames.append(labelled(slab, expert=np.where(z > np.sort(z)[-9], 0, 1)))
    for a in np.linspace(3.80, 4.04, 8):
        pt = bulk("Pt", "fcc", a=a, cubic=True) * (2, 1, 1)
        pt.positions += rng.normal(0, 0.05, pt.positions.shape)
        pt.arrays["shared"] = np.ones(len(pt), dtype=np.int64)
        frames.append(labelled(pt, expert=np.ones(len(pt), dtype=np.int64)))
    return frames


def expert_disagreement(ckpt, frames):
    """Mean |e_big - e_small| per atom and RMS force difference on all-shared bulk frames."""
    model, _ = load_model(ckpt)
    energy, force = [], []
    for atoms in frames:
        data = typed_graph(atoms, {**TWO_ALLEGRO_TINY}, np.ones(len(atoms), int), r_max=4.5)
        data["shared"] = torch.ones(len(atoms), 1, dtype=torch.long)
        out = model(data)
        e, f = out["expert_atomic_energy"], out["expert_forces"]
        energy.append((e[:, 0] - e[:, 1]).abs().mean().item())
        force.append((f[:, 0] - f[:, 1]).square().mean().sqrt().item())
    return float(np.mean(energy)), float(np.mean(force))


# composite table of configs/tiny_moe.yaml
TWO_ALLEGRO_TINY = {
    "type_names": ["C", "O", "Pt", "Pt_small"],
    "composite_types": {
        "C": {"element": "C", "expert": "big"},
        "O": {"element": "O", "expert": "big"},
        "Pt": {"element": "Pt", "expert": "big"},
        "Pt_small": {"element": "Pt", "expert": "small"},
    },
    "experts": {"big": None, "small": None},
    "r_max": 4.5,
}


def bulk_modulus(ckpt, expert_label):
    """B0 (GPa) of fcc Pt from one expert alone (every atom labelled with that expert)."""
    model, _ = load_model(ckpt)
    volumes, energies = [], []
    for a in np.linspace(3.82, 4.02, 7):
        pt = bulk("Pt", "fcc", a=a, cubic=True)
        data = typed_graph(pt, TWO_ALLEGRO_TINY, np.full(len(pt), expert_label), r_max=4.5)
        volumes.append(pt.get_volume())
        energies.append(model(data)["total_energy"].item())
    _, _, b0 = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return b0 * 160.21766208


def test_agreement_makes_experts_agree_on_bulk(tmp_path):
    frames = pt_frames(seed=0)
    write(tmp_path / "pt.xyz", frames)
    held_out = [f for f in pt_frames(seed=1) if "shared" in f.arrays]
    common = ["trainer.max_epochs=40", "cutoff_radius=4.5"]
    apart = train(
        tmp_path / "apart", "tiny_cotrain", tmp_path / "pt.xyz",
        "energy_agreement_coeff=0.0", "force_agreement_coeff=0.0", *common,
    )
    together = train(
        tmp_path / "together", "tiny_cotrain", tmp_path / "pt.xyz",
        "energy_agreement_coeff=10.0", "force_agreement_coeff=3.0", *common,
    )
    e_apart, f_apart = expert_disagreement(apart / "last.ckpt", held_out)
    e_together, f_together = expert_disagreement(together / "last.ckpt", held_out)
    b_apart = [bulk_modulus(apart / "last.ckpt", k) for k in (0, 1)]
    b_together = [bulk_modulus(together / "last.ckpt", k) for k in (0, 1)]
    print(
        f"\nheld-out bulk disagreement  energy (eV/atom)  force RMS (eV/A)   B0 big / small (GPa)"
        f"\n  trained apart             {e_apart:.4f}            {f_apart:.4f}           {b_apart[0]:.0f} / {b_apart[1]:.0f}"
        f"\n  co-trained                {e_together:.4f}            {f_together:.4f}           {b_together[0]:.0f} / {b_together[1]:.0f}"
    )
    assert e_together < 0.5 * e_apart
    assert f_together < 0.5 * f_apart
    assert abs(b_together[0] - b_together[1]) < abs(b_apart[0] - b_apart[1])


def agreement_loss(model, data):
    out = model(dict(data))
    metric = EmptySafeMSE()
    return metric(*ExpertAgreement("forces", EXPERTS)(out, data))


def test_force_agreement_gradient_matches_finite_differences():
    model = build(TWO_ALLEGRO)
    model.train()
    atoms = pt_co_slab(size=(2, 2, 2))
    data = typed_graph(atoms, TWO_ALLEGRO, half_labels(atoms))
    data["shared"] = torch.as_tensor(atoms.numbers == 78).long().view(-1, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = agreement_loss(model, data)
    grads = torch.autograd.grad(loss, params)
    rng = np.random.default_rng(0)
    h = 1e-6
    checked = 0
    for param, grad in zip(params, grads):
        if grad.abs().max() == 0 or checked == 6:
            continue
        idx = tuple(int(rng.integers(s)) for s in param.shape)
        orig = param[idx].item()
        values = []
        for shifted in (orig + h, orig - h, orig):
            with torch.no_grad():
                param[idx] = shifted
            values.append(agreement_loss(model, data).item())
        numeric = (values[0] - values[1]) / (2 * h)
        assert abs(numeric - grad[idx].item()) < 1e-6 + 1e-4 * abs(numeric)
        checked += 1
    assert checked >= 5


def test_empty_shared_set_is_a_zero_term():
    model = build(TWO_ALLEGRO)
    atoms = pt_co_slab(size=(2, 2, 2))
    data = typed_graph(atoms, TWO_ALLEGRO, half_labels(atoms))
    data["shared"] = torch.zeros(len(atoms), 1, dtype=torch.long)
    out = model(dict(data))
    for field in ["atomic_energy", "forces"]:
        value = EmptySafeMSE()(*ExpertAgreement(field, EXPERTS)(out, data))
        assert value.item() == 0.0
    # nequip's own MSE would give NaN and poison the loss
    assert torch.isnan(MeanSquaredError()(*ExpertAgreement("forces", EXPERTS)(out, data)))
    error = EmptySafeMSE()(*ExpertError("total_energy", EXPERTS, "big")(out, out))
    assert error.item() == 0.0


def test_expert_error_on_whole_shared_frames_is_the_expert_alone():
    model = build(TWO_ALLEGRO)
    atoms = pt_co_slab(size=(2, 2, 2))
    data = typed_graph(atoms, TWO_ALLEGRO, half_labels(atoms))
    data["shared"] = torch.ones(len(atoms), 1, dtype=torch.long)
    data[AtomicDataDict.TOTAL_ENERGY_KEY] = torch.zeros(1, 1)
    out = model(dict(data))
    for k, name in enumerate(EXPERTS):
        alone = model(dict(typed_graph(atoms, TWO_ALLEGRO, np.full(len(atoms), k))))
        pred, _ = ExpertError("total_energy", EXPERTS, name)(out, data)
        torch.testing.assert_close(pred, alone["total_energy"].view(-1) / len(atoms))
        forces, _ = ExpertError("forces", EXPERTS, name)(out, {**data, "forces": out["forces"]})
        torch.testing.assert_close(forces, alone["forces"], atol=1e-10, rtol=0)


def test_frame_energy_agreement_on_whole_shared_frames_only():
    """`ExpertAgreement(total_energy)`: in a batch of a wholly shared frame and a partly shared
    one, the pair is the two experts' frame energies per atom of the wholly shared frame, each
    the expert alone; a batch without a wholly shared frame gives a zero term."""
    model = build(TWO_ALLEGRO)
    frames = [pt_co_slab(size=(2, 2, 2)), pt_co_slab(size=(2, 2, 3), seed=1)]
    shared = [np.ones(len(frames[0]), dtype=bool), frames[1].numbers == 78]
    graphs = []
    for atoms, mask in zip(frames, shared):
        graph = typed_graph(atoms, TWO_ALLEGRO, half_labels(atoms))
        graph["shared"] = torch.as_tensor(mask, dtype=torch.long).view(-1, 1)
        graphs.append(graph)
    batch = AtomicDataDict.batched_from_list(graphs)
    out = model(dict(batch))
    first, second = ExpertAgreement("total_energy", EXPERTS)(out, batch)
    assert first.shape == second.shape == (1,)
    atoms = frames[0]
    alone = [
        model(dict(typed_graph(atoms, TWO_ALLEGRO, np.full(len(atoms), k))))["total_energy"]
        for k in range(len(EXPERTS))
    ]
    torch.testing.assert_close(first, alone[0].view(-1) / len(atoms), atol=1e-10, rtol=0)
    torch.testing.assert_close(second, alone[1].view(-1) / len(atoms), atol=1e-10, rtol=0)
    assert str(ExpertAgreement("total_energy", EXPERTS)) == "total_energy_agreement"
    # only the partly shared frame: nothing to compare, a zero term
    out = model(dict(graphs[1]))
    value = EmptySafeMSE()(*ExpertAgreement("total_energy", EXPERTS)(out, graphs[1]))
    assert value.item() == 0.0


@pytest.mark.parametrize("constant_reference", [False, True])
def test_interface_force_agreement_is_the_split_crystal_force(constant_reference):
    """`InterfaceForceAgreement` on a wholly shared bulk frame is the MoE's force with the frame
    cut in two (big below x = 0.5, small above) minus the big expert alone's force, and its
    gradient reaches the small expert's weights."""
    model = build(TWO_ALLEGRO)
    model.train()
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((3, 2, 2))
    atoms.rattle(0.05, seed=3)
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    data = typed_graph(atoms, TWO_ALLEGRO, np.ones(len(atoms), dtype=int))
    data["shared"] = torch.ones(len(atoms), 1, dtype=torch.long)
    term = InterfaceForceAgreement(EXPERTS, constant_reference=constant_reference)
    delta, zero = term(model(dict(data)), data)
    assert delta.shape == zero.shape == (len(atoms), 3) and not zero.any()

    above = (atoms.get_scaled_positions()[:, 0] % 1.0) >= 0.5
    split = model(dict(typed_graph(atoms, TWO_ALLEGRO, above.astype(int))))["forces"]
    big = model(dict(typed_graph(atoms, TWO_ALLEGRO, np.zeros(len(atoms), dtype=int))))["forces"]
    torch.testing.assert_close(delta.detach(), (split - big).detach(), atol=1e-10, rtol=0)
    assert delta.abs().max() > 1e-4  # untrained experts disagree: a real interface force

    loss = EmptySafeMSE()(delta, zero)
    small = [p for n, p in model.named_parameters() if ".small." in n and p.requires_grad]
    grads = torch.autograd.grad(loss, small, allow_unused=True)
    assert any(g is not None and g.abs().max() > 0 for g in grads)
    assert str(term) == "interface_force_agreement"


def _shared_bulk_cell(seed: int):
    """A training-mode two-expert model, a rattled 2x3x2 conventional Pt cell, its graph with
    every atom shared (labelled small) and the big expert's forces on it."""
    model = build(TWO_ALLEGRO)
    model.train()
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True).repeat((2, 3, 2))
    atoms.rattle(0.05, seed=seed)
    data = typed_graph(atoms, TWO_ALLEGRO, np.ones(len(atoms), dtype=int))
    data["shared"] = torch.ones(len(atoms), 1, dtype=torch.long)
    big = model(dict(typed_graph(atoms, TWO_ALLEGRO, np.zeros(len(atoms), dtype=int))))["forces"]
    return model, atoms, data, big


def test_random_interface_cut_is_a_split_crystal_force():
    """With ``random_cut``, each call cuts the frame along a drawn axis at a drawn shift (from
    the term's own seeded generator): the term is the MoE force of that split minus the big
    expert's, and successive calls see different interfaces."""
    model, atoms, data, big = _shared_bulk_cell(seed=4)
    term = InterfaceForceAgreement(EXPERTS, random_cut=True, seed=7)
    generator = torch.Generator().manual_seed(7)
    deltas = []
    for _ in range(2):
        delta, _ = term(model(dict(data)), data)
        axis = int(torch.randint(0, 3, (1,), generator=generator))
        shift = float(torch.rand(1, dtype=torch.float64, generator=generator))
        above = ((atoms.get_scaled_positions()[:, axis] - shift) % 1.0) >= 0.5
        split = model(dict(typed_graph(atoms, TWO_ALLEGRO, above.astype(int))))["forces"]
        torch.testing.assert_close(delta.detach(), (split - big).detach(), atol=1e-10, rtol=0)
        deltas.append(delta.detach())
    assert (deltas[0] - deltas[1]).abs().max() > 1e-6


def test_own_expert_interface_force_vanishes_away_from_the_cut():
    """``own_expert_reference``: the term is the split MoE's force minus each atom's own expert
    alone (big below the cut, small above), the force the interface alone adds."""
    model, atoms, data, big = _shared_bulk_cell(seed=6)
    small = model(dict(typed_graph(atoms, TWO_ALLEGRO, np.ones(len(atoms), dtype=int))))["forces"]
    term = InterfaceForceAgreement(
        EXPERTS, axis=1, constant_reference=True, own_expert_reference=True
    )
    delta, _ = term(model(dict(data)), data)
    above = (atoms.get_scaled_positions()[:, 1] % 1.0) >= 0.5
    split = model(dict(typed_graph(atoms, TWO_ALLEGRO, above.astype(int))))["forces"]
    own = torch.where(torch.as_tensor(above).unsqueeze(-1), small, big)
    torch.testing.assert_close(delta.detach(), (split - own).detach(), atol=1e-10, rtol=0)
    # the plain term differs by the experts' bulk force difference above the cut
    plain, _ = InterfaceForceAgreement(EXPERTS, axis=1)(model(dict(data)), data)
    assert (plain - delta).detach()[torch.as_tensor(above)].abs().max() > 1e-4


def test_interface_cut_leaves_out_cells_thinner_than_min_width():
    """``min_width`` keeps a frame only where its cell is at least that wide along the cut
    axis: a 2x3x2 conventional cell (7.8 x 11.8 x 7.8 A) cut normal to y is the split crystal's
    force, cut normal to x it is left out."""
    model, atoms, data, big = _shared_bulk_cell(seed=5)
    above = (atoms.get_scaled_positions()[:, 1] % 1.0) >= 0.5
    split = model(dict(typed_graph(atoms, TWO_ALLEGRO, above.astype(int))))["forces"]
    delta, _ = InterfaceForceAgreement(EXPERTS, axis=1, min_width=10.0)(model(dict(data)), data)
    torch.testing.assert_close(delta.detach(), (split - big).detach(), atol=1e-10, rtol=0)
    delta, _ = InterfaceForceAgreement(EXPERTS, axis=0, min_width=10.0)(model(dict(data)), data)
    assert delta.numel() == 0


def test_interface_force_agreement_needs_whole_shared_frames():
    model = build(TWO_ALLEGRO)
    model.train()
    atoms = pt_co_slab(size=(2, 2, 2))
    data = typed_graph(atoms, TWO_ALLEGRO, half_labels(atoms))
    data["shared"] = torch.as_tensor(atoms.numbers == 78).long().view(-1, 1)
    value = EmptySafeMSE()(*InterfaceForceAgreement(EXPERTS)(model(dict(data)), data))
    assert value.item() == 0.0
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        InterfaceForceAgreement(EXPERTS, axis=3)
    with pytest.raises(ValueError, match="reference expert `huge`"):
        InterfaceForceAgreement(EXPERTS, reference="huge")


def test_bad_cotraining_input_names_the_problem():
    with pytest.raises(ValueError, match="agreement needs at least two experts"):
        ExpertAgreement("forces", ["only"])
    with pytest.raises(ValueError, match="reference expert `huge`"):
        ExpertAgreement("forces", EXPERTS, reference="huge")
    # shared atoms of a species one expert has no composite type for
    config = copy.deepcopy(TWO_ALLEGRO)
    del config["composite_types"]["C_small"]
    config["type_names"].remove("C_small")
    model = build(config)
    atoms = pt_co_slab(size=(2, 2, 2))
    data = typed_graph(atoms, config, half_labels(atoms))
    data["shared"] = torch.ones(len(atoms), 1, dtype=torch.long)
    with pytest.raises(ValueError, match="expert `small` has no composite type for"):
        model(data)
    with pytest.raises(KeyError, match="need the per-atom `shared` field"):
        out = model(dict(typed_graph(atoms, config, half_labels(atoms))))
        ExpertAgreement("forces", EXPERTS)(out, out)


def test_bulk_like_rule_marks_interior_host_atoms():
    slab = fcc111("Pt", (3, 3, 5), vacuum=6.0, a=3.92)
    slab.pbc = True
    data = SharedEnvironments(host="Pt")(from_ase(slab))
    z = slab.positions[:, 2]
    interior = (z > z.min() + 0.5) & (z < z.max() - 0.5)
    assert torch.equal(data["shared"].view(-1).bool(), torch.as_tensor(interior))
    # a CO near the surface removes the interior Pt within `foreign_radius` of C or O
    co_slab = pt_co_slab(size=(3, 3, 5))
    shared = SharedEnvironments(host="Pt", foreign_radius=4.5)(from_ase(co_slab))["shared"]
    pt = co_slab.numbers == 78
    z = co_slab.positions[:, 2]
    interior = pt & (z > z[pt].min() + 0.5) & (z < z[pt].max() - 0.5)
    nearest_foreign = co_slab.get_all_distances(mic=True)[:, ~pt].min(axis=1)
    expected = interior & (nearest_foreign >= 4.5)
    assert 0 < expected.sum() < interior.sum()
    assert torch.equal(shared.view(-1).bool(), torch.as_tensor(expected))
    assert SharedEnvironments(all_atoms=True)(from_ase(co_slab))["shared"].all()
