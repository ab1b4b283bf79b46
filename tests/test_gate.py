"""``AdsorbateCoordinationGate``: range, smoothness (finite differences), strict locality, and
which atoms it marks on Pt + CO structures whose coordinations are known from geometry."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.geometry import get_distances

from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase

from nequip_moe.nn.gate import GATE_KEY, AdsorbateCoordinationGate, smooth_step

TYPE_NAMES = ["C", "O", "Pt"]
PT_A = 3.92
R_MAX = 4.0


def graph(atoms):
    data = compute_neighborlist_(from_ase(atoms), r_max=R_MAX)
    data[AtomicDataDict.ATOM_TYPE_KEY] = torch.as_tensor(
        [TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()]
    )
    data[AtomicDataDict.POSITIONS_KEY] = data[AtomicDataDict.POSITIONS_KEY].to(torch.float64)
    data[AtomicDataDict.CELL_KEY] = data[AtomicDataDict.CELL_KEY].to(torch.float64)
    return data


def gate_values(gate, atoms):
    return gate(graph(atoms))[GATE_KEY].view(-1).detach().numpy()


def slab_with_co(layers=5, height=1.85):
    """Pt(111) 3x3 slab, CO C-down ontop at the cell corner, C ``height`` above its Pt."""
    slab = fcc111("Pt", (3, 3, layers), a=PT_A, vacuum=8.0)
    add_adsorbate(slab, molecule("CO"), height, "ontop", mol_index=1)
    slab.pbc = True
    return slab


def blend_zone_structure():
    """Rattled, strained slab + CO with atoms inside both switching shells."""
    slab = slab_with_co(layers=4, height=2.75)
    slab.set_cell(slab.cell * [1.08, 1.08, 1.0], scale_atoms=True)
    slab.rattle(0.12, seed=3)
    return slab


def test_smooth_step_is_c2():
    x = torch.linspace(-0.5, 1.5, 2001, dtype=torch.float64, requires_grad=True)
    y = smooth_step(x)
    (dy,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (d2y,) = torch.autograd.grad(dy.sum(), x)
    assert y.min() == 0 and y.max() == 1
    for edge in (0.0, 1.0):  # value, slope and curvature continuous at the joins
        near = torch.isclose(x.detach(), torch.tensor(edge, dtype=torch.float64), atol=1.5e-3)
        assert dy[near].abs().max() < 1e-4 and d2y[near].abs().max() < 0.2


def test_range_and_blend_zone():
    gate = AdsorbateCoordinationGate(TYPE_NAMES)
    g = gate_values(gate, blend_zone_structure())
    assert (g >= 0).all() and (g <= 1).all()
    assert ((g > 0.01) & (g < 0.99)).sum() >= 3  # the structure exercises the blend zone


def test_gradient_matches_finite_differences():
    gate = AdsorbateCoordinationGate(TYPE_NAMES)
    atoms = blend_zone_structure()
    weights = torch.as_tensor(np.random.default_rng(0).uniform(0.5, 1.5, len(atoms)))

    def weighted_sum(positions):
        data = graph(atoms)
        data[AtomicDataDict.POSITIONS_KEY] = positions
        return (gate(data)[GATE_KEY].view(-1) * weights).sum()

    positions = graph(atoms)[AtomicDataDict.POSITIONS_KEY].clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(weighted_sum(positions), positions)
    assert autograd.abs().max() > 0.1
    eps = 1e-5
    numerical = torch.zeros_like(autograd)
    with torch.no_grad():
        for a in range(len(atoms)):
            for k in range(3):
                shift = torch.zeros_like(positions)
                shift[a, k] = eps
                numerical[a, k] = (
                    weighted_sum(positions + shift) - weighted_sum(positions - shift)
                ) / (2 * eps)
    torch.testing.assert_close(autograd, numerical, atol=1e-6, rtol=0)


def test_gate_depends_only_on_edges_centred_on_the_atom():
    gate = AdsorbateCoordinationGate(TYPE_NAMES)
    data = graph(blend_zone_structure())
    reference = gate(dict(data))[GATE_KEY].view(-1)
    centre = data[AtomicDataDict.EDGE_INDEX_KEY][0]
    for i in range(len(reference)):
        own = {k: v for k, v in data.items() if k != AtomicDataDict.EDGE_LENGTH_KEY}
        keep = centre == i
        own[AtomicDataDict.EDGE_INDEX_KEY] = data[AtomicDataDict.EDGE_INDEX_KEY][:, keep]
        own[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY][keep]
        alone = gate(own)[GATE_KEY].view(-1)
        assert alone[i] == reference[i]


def test_species_and_coordination_on_slab_with_co():
    gate = AdsorbateCoordinationGate(TYPE_NAMES)
    slab = slab_with_co()
    g = gate_values(gate, slab)
    pt = np.arange(45)
    z = slab.positions[pt, 2]
    surface = np.isclose(z, z.max()) | np.isclose(z, z.min())
    assert (g[45:] == 1).all()  # C and O
    assert (g[pt[surface]] == 1).all()  # CN 9: three neighbours missing
    assert (g[pt[~surface]] == 0).all()  # three bulk-like layers, CO out of reach

    # adsorbate contact alone (surfaces counted as bulk): only the Pt bonded to C is marked,
    # fully when bonded, partly inside the switching shell, not at all beyond it
    contact_only = AdsorbateCoordinationGate(TYPE_NAMES, bulk_coordination=9)
    bonded = int(np.argmin(np.linalg.norm(slab.positions[:45] - slab.positions[45], axis=1)))
    for height, low, high in [(1.85, 1.0, 1.0), (2.75, 0.01, 0.99), (3.2, 0.0, 0.0)]:
        g = gate_values(contact_only, slab_with_co(height=height))
        assert low <= g[bonded] <= high
        others = np.delete(g[:45], bonded)
        assert (others == 0).all()


def test_vacancy_neighbours_and_bulk():
    gate = AdsorbateCoordinationGate(TYPE_NAMES)
    pt = bulk("Pt", "fcc", a=PT_A, cubic=True).repeat(3)
    assert (gate_values(gate, pt) == 0).all()
    del pt[0]
    g = gate_values(gate, pt)
    _, from_vacancy = get_distances([0.0, 0.0, 0.0], pt.positions, cell=pt.cell, pbc=True)
    nearest = np.isclose(from_vacancy[0], PT_A / np.sqrt(2))
    assert nearest.sum() == 12
    assert (g[nearest] == 1).all() and (g[~nearest] == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adsorbates": ["N"]}, r"adsorbates \['N'\] are not among"),
        ({"hosts": ["Pt", "C"]}, r"\['C'\] cannot be both"),
        ({"adsorbate_r_on": 3.0, "adsorbate_r_off": 2.5}, "adsorbate_r_on < adsorbate_r_off"),
        ({"deficit_on": 1.0, "deficit_full": 1.0}, "deficit_on < deficit_full"),
    ],
)
def test_bad_gate_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdsorbateCoordinationGate(TYPE_NAMES, **kwargs)
