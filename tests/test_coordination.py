"""One coordination function and the bulk shell of any crystal: checked against ASE's crystals
and neighbour lists; region presets, shared environments and the gate on non-fcc hosts (bcc Fe,
hcp Ti, diamond Si), where fcc's 12 neighbours would mark every atom or none."""

import math

import numpy as np
import pytest
import torch
from ase.build import bulk, hcp0001
from ase.data import chemical_symbols, reference_states
from ase.geometry import get_distances
from ase.neighborlist import neighbor_list

from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase

from nequip_moe.data import SharedEnvironments
from nequip_moe.data.neighbours import coordination_numbers, host_shell, structure_shells
from nequip_moe.data.regions import adsorbate_host, assign_experts, read_rules_file
from nequip_moe.nn.coordination import (
    CRYSTAL_SHELLS,
    REFERENCE_CRYSTALS,
    bulk_shell,
    crystal_shells,
    neighbour_count,
)
from nequip_moe.nn.gate import GATE_KEY, AdsorbateCoordinationGate

EXPERTS = ["big", "small"]


def nearest_neighbour(state):
    a = state["a"]
    if state["symmetry"] == "hcp":
        return min(a, math.sqrt(a * a / 3 + (a * state["c/a"]) ** 2 / 4))
    return a * {"fcc": 1 / math.sqrt(2), "bcc": math.sqrt(3) / 2, "diamond": math.sqrt(3) / 4,
                "sc": 1.0}[state["symmetry"]]


def test_reference_crystals_are_ases():
    expected = {
        chemical_symbols[z]: (s["symmetry"], round(nearest_neighbour(s), 4))
        for z, s in enumerate(reference_states)
        if s and s["symmetry"] in CRYSTAL_SHELLS
    }
    assert REFERENCE_CRYSTALS == expected


@pytest.mark.parametrize("crystal", sorted(CRYSTAL_SHELLS))
def test_crystal_shells_are_the_crystals(crystal):
    """The ideal shells equal those of ASE's crystal (hcp at the ideal c/a)."""
    extra = {"covera": math.sqrt(8 / 3)} if crystal == "hcp" else {}
    atoms = bulk("X" if crystal != "hcp" else "Mg", crystal, a=3.0, **extra)
    atoms.numbers[:] = 12
    measured = structure_shells(atoms.repeat(2), "Mg")
    ideal = crystal_shells(crystal, measured[0][0])
    assert len(measured) >= 3
    for (d, n), (d_ideal, n_ideal) in zip(measured, ideal):
        assert d == pytest.approx(d_ideal, rel=1e-6) and n == pytest.approx(n_ideal)


@pytest.mark.parametrize(
    "crystal, coordination, inner, outer",
    [("fcc", 12, 1.0, math.sqrt(2)), ("hcp", 12, 1.0, math.sqrt(2)), ("sc", 6, 1.0, math.sqrt(2)),
     ("bcc", 14, 2 / math.sqrt(3), math.sqrt(8 / 3)), ("diamond", 4, 1.0, math.sqrt(8 / 3))],
)
def test_bulk_shell_ends_at_the_larger_gap(crystal, coordination, inner, outer):
    shell = bulk_shell(crystal_shells(crystal, 2.0))
    assert shell.coordination == coordination
    assert (shell.inner, shell.outer) == pytest.approx((2 * inner, 2 * outer))
    assert shell.inner < shell.switch_on < shell.cutoff < shell.switch_off < shell.outer


def test_bad_crystals():
    with pytest.raises(ValueError, match="unknown crystal `bct`"):
        crystal_shells("bct", 2.0)
    with pytest.raises(ValueError, match="no reference crystal for `Ga`"):
        host_shell("Ga")
    with pytest.raises(ValueError, match="at least three"):
        bulk_shell([(1.0, 12), (1.4, 6)])


def test_hard_and_smooth_counts():
    atoms = bulk("Fe", "bcc", a=2.87, cubic=True).repeat(3)
    atoms.rattle(0.1, seed=0)
    data = compute_neighborlist_(from_ase(atoms), r_max=4.0)
    edges = data[AtomicDataDict.EDGE_INDEX_KEY]
    shifts = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY].to(torch.float64) @ data[
        AtomicDataDict.CELL_KEY
    ].view(3, 3)
    pos = data[AtomicDataDict.POSITIONS_KEY]
    length = (pos[edges[1]] - pos[edges[0]] + shifts).norm(dim=-1)
    hard = neighbour_count(edges, length, len(atoms), 3.3)
    np.testing.assert_array_equal(
        hard.numpy(), np.bincount(neighbor_list("i", atoms, 3.3), minlength=len(atoms))
    )
    # the smooth count lies between the hard counts at its two ends
    smooth = neighbour_count(edges, length, len(atoms), 3.3, r_on=2.6)
    assert (neighbour_count(edges, length, len(atoms), 2.6) <= smooth).all()
    assert (smooth <= hard).all()
    # neighbours of some atoms only
    mask = torch.arange(len(atoms)) % 2 == 0
    only = neighbour_count(edges, length, len(atoms), 3.3, neighbour_mask=mask)
    i, j = neighbor_list("ij", atoms, 3.3)
    np.testing.assert_array_equal(only.numpy(), np.bincount(i[j % 2 == 0], minlength=len(atoms)))


def vacancy(atoms):
    """``atoms`` without atom 0 and the distance of every other atom from the vacant site."""
    site = atoms.positions[0].copy()
    del atoms[0]
    _, d = get_distances(site, atoms.positions, cell=atoms.cell, pbc=True)
    return atoms, d[0]


@pytest.mark.parametrize(
    "host, build, neighbours",
    [
        ("Fe", lambda: bulk("Fe", "bcc", a=2.87, cubic=True).repeat(4), 14),  # 8 + 6
        ("Si", lambda: bulk("Si", "diamond", a=5.43, cubic=True).repeat(2), 4),
        ("Ti", lambda: bulk("Ti", "hcp", a=2.95, c=4.68).repeat((4, 4, 3)), 12),
    ],
)
def test_preset_gate_and_shared_on_other_crystals(host, build, neighbours):
    """Perfect bulk: no core, gate 0, every atom shared. A vacancy: exactly its bulk-shell
    neighbours are under-coordinated (core, gate 1, not shared)."""
    shell = host_shell(host)
    perfect = build()
    rules, settings = adsorbate_host("big", "small", host, ["H"], buffer_shells=0)
    with pytest.warns(UserWarning, match="selects no atom"):
        assert (assign_experts(perfect, rules, EXPERTS, **settings) == 1).all()
    gate = AdsorbateCoordinationGate([host, "H"], adsorbates=["H"])
    shared = SharedEnvironments(host=host)

    def graph(atoms):
        data = compute_neighborlist_(from_ase(atoms), r_max=gate.coordination_r_off + 0.5)
        data[AtomicDataDict.ATOM_TYPE_KEY] = torch.zeros(len(atoms), dtype=torch.long)
        return data

    assert (gate(graph(perfect))[GATE_KEY] == 0).all()
    assert shared(from_ase(perfect))["shared"].all()

    defect, distance = vacancy(build())
    bulk_shell_sites = distance < shell.cutoff
    assert bulk_shell_sites.sum() == neighbours
    with pytest.warns(UserWarning, match="selects no atom"):  # no H
        big = assign_experts(defect, rules, EXPERTS, **settings) == 0
    np.testing.assert_array_equal(big, bulk_shell_sites)
    np.testing.assert_array_equal(gate(graph(defect))[GATE_KEY].view(-1) == 1, bulk_shell_sites)
    np.testing.assert_array_equal(shared(from_ase(defect))["shared"].view(-1) == 0, bulk_shell_sites)


def test_fcc_settings_miss_a_bcc_vacancy():
    """The control: fcc's 12 neighbours within 3.3 A mark none of a bcc Fe vacancy's neighbours
    (they keep 13 of 14 within 3.3 A), the crystal's own shell marks all 14."""
    defect, distance = vacancy(bulk("Fe", "bcc", a=2.87, cubic=True).repeat(4))
    assert not (coordination_numbers(defect, 3.3) < 12).any()
    shell = host_shell("Fe")
    assert ((coordination_numbers(defect, shell.cutoff) < shell.coordination)
            == (distance < shell.cutoff)).all()


def test_host_shell_from_bulk_file_and_nearest_neighbour(tmp_path):
    """A bulk file of the labeller's crystal (strained Fe) and the nearest-neighbour distance
    alone give the same shell; a rules file reads its preset's bulk file relative to itself."""
    strained = bulk("Fe", "bcc", a=2.80, cubic=True)
    strained.write(tmp_path / "fe.xyz")
    from_file = host_shell("Fe", bulk=tmp_path / "fe.xyz")
    from_distance = host_shell("Fe", nearest_neighbour=2.80 * math.sqrt(3) / 2)
    assert from_file.coordination == from_distance.coordination == 14
    assert from_file.cutoff == pytest.approx(from_distance.cutoff)
    assert host_shell("Fe").cutoff > from_file.cutoff  # the reference a is 2.87 A
    (tmp_path / "rules.yaml").write_text(
        "preset: {name: adsorbate_host, expert: big, default_expert: small, host: Fe, "
        "adsorbates: [H], bulk: fe.xyz}\n"
    )
    _, settings = read_rules_file(tmp_path / "rules.yaml")
    assert settings["shell_cutoff"] == pytest.approx(from_file.cutoff)
    # bond cutoff from covalent radii: Fe-H 1.2 x (1.32 + 0.31) A
    rules, _ = adsorbate_host("big", "small", "Fe", ["H"])
    assert rules[1].cutoff == pytest.approx(1.2 * (1.32 + 0.31))
    with pytest.raises(ValueError, match="has no Fe"):
        host_shell("Fe", bulk=bulk("Cu", "fcc", a=3.6))


def test_hcp_slab_surfaces_are_the_core():
    slab = hcp0001("Ti", (3, 3, 6), a=2.95, c=4.68, vacuum=8.0)
    slab.pbc = True
    rules, settings = adsorbate_host("big", "small", "Ti", ["O"], buffer_shells=0)
    with pytest.warns(UserWarning, match="selects no atom"):
        big = assign_experts(slab, rules, EXPERTS, **settings) == 0
    z = slab.positions[:, 2]
    outer = np.isclose(z, z.max()) | np.isclose(z, z.min())
    np.testing.assert_array_equal(big, outer)
