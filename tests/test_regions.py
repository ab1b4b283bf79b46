"""Region rules on structures whose answers are known from geometry (fcc Pt, Pt(111) + CO)."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, fcc211, molecule
from ase.cluster import Octahedron
from ase.geometry import get_distances
from ase.neighborlist import neighbor_list

from nequip_moe.data.regions import (
    Box,
    Coordination,
    Depth,
    Indices,
    Near,
    Sphere,
    assign_experts,
    coordination_numbers,
    expert_summary,
    pt_co_coordination,
    read_rules_file,
    rule_from_dict,
)

EXPERTS = ["big", "small"]
PT_A = 3.92  # fcc Pt: nearest neighbours at 2.77 A, second shell at 3.92 A
SHELL_CUTOFF = 3.3


def pt111_slab(with_co=True):
    """Pt(111) 3x3x4 (36 Pt, layers 2.263 A apart); CO C-down ontop at the cell corner.

    From C: one Pt at 1.90 A, six at 3.36 A, three (second layer) at 4.46 A.
    From O: one Pt at 3.05 A, six at 4.12 A.
    """
    slab = fcc111("Pt", (3, 3, 4), vacuum=8.0, a=PT_A)
    if with_co:
        add_adsorbate(slab, molecule("CO"), 1.9, "ontop", mol_index=1)
    slab.info.pop("adsorbate_info", None)
    slab.pbc = True
    return slab


def count(labels, expert):
    return int(np.sum(labels == EXPERTS.index(expert)))


def test_near_counts_on_pt111_with_co():
    slab = pt111_slab()
    for cutoff, expected in [(4.0, 2 + 7), (4.5, 2 + 10)]:
        rule = Near(expert="big", species=["C", "O"], cutoff=cutoff)
        labels = assign_experts(slab, [rule], EXPERTS, default_expert="small")
        assert count(labels, "big") == expected
        assert count(labels, "small") == len(slab) - expected
        assert labels.dtype == np.int64


def test_depth_counts_on_pt111_with_co():
    slab = pt111_slab()

    def selected(**kwargs):
        return int(Depth(expert="big", **kwargs).select(slab).sum())

    # surface from Pt: CO above it is always selected
    assert selected(depth=1.0, species=["Pt"]) == 9 + 2
    assert selected(depth=2.5, species=["Pt"]) == 18 + 2
    assert selected(depth=1.0, species=["Pt"], surface="bottom") == 9
    assert selected(depth=1.0, species=["Pt"], surface="both") == 18 + 2
    # surface from all atoms: the top-most atom is O, C lies 1.15 A below it
    assert selected(depth=1.0) == 1
    assert selected(depth=1.2) == 2


def test_rules_apply_in_order():
    slab = pt111_slab()
    carbon = len(slab) - 1
    rules = [
        Depth(expert="big", depth=1.0, species=["Pt"]),
        Indices(expert="small", indices=[carbon]),
    ]
    labels = assign_experts(slab, rules, EXPERTS, default_expert="small")
    assert count(labels, "big") == 9 + 1
    assert labels[carbon] == EXPERTS.index("small")
    # reversed order: the depth rule overrides the index rule
    labels = assign_experts(slab, rules[::-1], EXPERTS, default_expert="small")
    assert labels[carbon] == EXPERTS.index("big")


@pytest.mark.parametrize("shells, expected", [(0, 1), (1, 13), (2, 55), (3, 147)])
def test_buffer_grows_by_fcc_shells(shells, expected):
    # fcc coordination sequence 1, 12, 42, 92: atoms within 0..3 nearest-neighbour hops
    pt = bulk("Pt", "fcc", a=PT_A, cubic=True).repeat((5, 5, 5))
    labels = assign_experts(
        pt,
        [Indices(expert="big", indices=[0])],
        EXPERTS,
        default_expert="small",
        buffer_shells=shells,
        shell_cutoff=SHELL_CUTOFF,
    )
    assert count(labels, "big") == expected


def test_buffer_grows_slab_region_layer_by_layer():
    slab = pt111_slab(with_co=False)
    rule = Depth(expert="big", depth=1.0)
    for shells, expected in [(0, 9), (1, 18), (2, 27)]:
        labels = assign_experts(
            slab, [rule], EXPERTS, "small", buffer_shells=shells, shell_cutoff=SHELL_CUTOFF
        )
        assert count(labels, "big") == expected


def test_default_shell_cutoff_lies_between_fcc_shells():
    pt = bulk("Pt", "fcc", a=PT_A, cubic=True).repeat((5, 5, 5))
    pt.rattle(0.03, seed=1)
    labels = assign_experts(
        pt, [Indices(expert="big", indices=[0])], EXPERTS, default_expert="small", buffer_shells=2
    )
    assert count(labels, "big") == 55


def test_distances_use_minimum_image():
    slab = pt111_slab()
    rule = Near(expert="big", species=["C", "O"], cutoff=4.0)
    reference = rule.select(slab)
    # the CO sits on the cell corner: its six in-plane Pt neighbours span periodic images
    shifted = slab.copy()
    shifted.positions += [1.3, 0.7, 0.0]
    shifted.wrap()
    np.testing.assert_array_equal(rule.select(shifted), reference)
    # without in-plane periodicity only the neighbours at +a1 and +a2 remain
    open_slab = slab.copy()
    open_slab.pbc = [False, False, True]
    assert rule.select(open_slab).sum() == 2 + 1 + 2

    pt = bulk("Pt", "fcc", a=PT_A, cubic=True).repeat((3, 3, 3))
    sphere = Sphere(expert="big", center=pt.positions[0], radius=3.0)
    assert sphere.select(pt).sum() == 13
    assert Sphere(expert="big", center=[0, 0, 0], radius=3.0, inside=False).select(
        pt
    ).sum() == len(pt) - 13
    pt.pbc = False
    assert sphere.select(pt).sum() == 4  # the atom and its 3 neighbours in the octant


def test_coordination_on_slab():
    slab = pt111_slab(with_co=False)
    cn = coordination_numbers(slab, SHELL_CUTOFF)
    z = slab.positions[:, 2]
    surface = (z == z.max()) | (z == z.min())
    assert np.all(cn[surface] == 9)
    assert np.all(cn[~surface] == 12)
    selected = Coordination(expert="big", cutoff=SHELL_CUTOFF, below=12).select(slab)
    np.testing.assert_array_equal(selected, surface)


def test_box_selects_top_layers():
    slab = pt111_slab()
    z_top = slab.positions[:36, 2].max()
    box = Box(expert="big", lower=[None, None, z_top - 3.0])
    assert box.select(slab).sum() == 18 + 2
    outside = Box(expert="big", lower=[None, None, z_top - 3.0], inside=False)
    assert outside.select(slab).sum() == 18


def test_rules_from_dicts():
    slab = pt111_slab()
    rules = [
        {"kind": "near", "expert": "big", "species": ["C", "O"], "cutoff": 4.0},
        {"kind": "depth", "expert": "big", "depth": 2.5, "species": ["Pt"]},
    ]
    labels = assign_experts(slab, rules, EXPERTS, default_expert="small")
    assert count(labels, "big") == 18 + 2
    assert isinstance(rule_from_dict(rules[1]), Depth)
    single = rule_from_dict({"kind": "depth", "expert": "big", "depth": 1.0, "species": "Pt"})
    assert single.species == ["Pt"]
    box = rule_from_dict({"kind": "box", "expert": "big", "upper": [None, None, 10.0]})
    assert box.lower == (None, None, None)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"expert": "big", "cutoff": 4.0}, "needs `kind`"),
        ({"kind": "near", "expert": "big", "species": ["C"]}, r"missing keys \['cutoff'\]"),
        ({"kind": "near", "expert": "big", "species": ["C"], "cutoff": 4, "r": 1}, "unknown"),
        ({"kind": "near", "expert": "big", "species": ["Cx"], "cutoff": 4.0}, "element"),
        ({"kind": "near", "expert": "big", "species": ["C"], "cutoff": "far"}, "near"),
        ({"kind": "depth", "expert": "big", "depth": 1.0, "axis": "w"}, "axis"),
    ],
)
def test_bad_rule_configs(config, message):
    with pytest.raises(ValueError, match=message):
        rule_from_dict(config)


def test_rule_selecting_nothing_warns():
    slab = pt111_slab(with_co=False)
    rules = [Near(expert="big", species=["C", "O"], cutoff=4.0)]
    with pytest.warns(UserWarning, match=r"Near\(expert='big', species=\['C', 'O'\]"):
        labels = assign_experts(slab, rules, EXPERTS, default_expert="small")
    assert count(labels, "small") == len(slab)


def test_assignment_errors():
    slab = pt111_slab()
    near = Near(expert="big", species=["C"], cutoff=4.0)
    with pytest.raises(ValueError, match="unknown expert `medium`"):
        assign_experts(slab, [near], EXPERTS, default_expert="medium")
    lone = Atoms("Pt", positions=[[0, 0, 0]], cell=[20, 20, 20], pbc=True)
    with pytest.raises(ValueError, match="no two atoms within 6.0 A: give the buffer's shell_cutoff"):
        assign_experts(lone, [Indices(expert="big", indices=[0])], EXPERTS, "small", buffer_shells=1)
    with pytest.raises(ValueError, match=r"indices \[38\] are out of range"):
        assign_experts(slab, [Indices(expert="big", indices=[0, 38])], EXPERTS, "small")


def test_expert_summary():
    summary = expert_summary(np.array([0, 1, 1, 1]), EXPERTS)
    assert summary == [("big", 1, 0.25), ("small", 3, 0.75)]
    with pytest.raises(ValueError, match=r"labels \[2\] are out of range"):
        expert_summary(np.array([0, 2]), EXPERTS)


def preset_labels(atoms, buffer_shells):
    rules, settings = pt_co_coordination("big", "small", buffer_shells=buffer_shells)
    return assign_experts(atoms, rules, EXPERTS, **settings)


def grown_by_one_shell(atoms, core):
    """``core`` plus its neighbours within SHELL_CUTOFF, with ASE's own neighbour list."""
    i, j = neighbor_list("ij", atoms, SHELL_CUTOFF)
    grown = core.copy()
    grown[i[core[j]]] = True
    return grown


def test_preset_on_cuboctahedron_with_co():
    # 55-atom Pt cuboctahedron: 12 vertices (CN 5), 24 edge atoms (CN 7), 6 (100) centres
    # (CN 8) and a 13-atom core (CN 12); CO ontop of a vertex, C 1.85 A above it
    particle = Octahedron("Pt", length=5, cutoff=2, latticeconstant=PT_A)
    particle.center()
    cn = coordination_numbers(particle, SHELL_CUTOFF)
    assert np.bincount(cn).tolist() == [0] * 5 + [12, 0, 24, 6, 0, 0, 0, 13]
    vertex = int(np.argmax(particle.positions[:, 2]))
    direction = particle.positions[vertex] - particle.positions.mean(axis=0)
    direction /= np.linalg.norm(direction)
    particle += Atoms("CO", positions=particle.positions[vertex] + np.outer([1.85, 1.85 + 1.15], direction))
    labels = preset_labels(particle, buffer_shells=0)
    big = labels == EXPERTS.index("big")
    # every facet counts (the top-most and bottom-most Pt too), the core stays small
    assert big.sum() == 42 + 2
    assert big[np.argmin(particle.positions[:, 2])]
    np.testing.assert_array_equal(big[:55], cn < 12)
    # one buffer shell reaches every atom but the centre (whose neighbours are all bulk-like)
    centre = int(np.argmin(np.linalg.norm(particle.positions[:55] - particle.positions[:55].mean(axis=0), axis=1)))
    small = preset_labels(particle, buffer_shells=1) == EXPERTS.index("small")
    assert np.flatnonzero(small).tolist() == [centre]


def test_preset_on_pt211_step_with_co():
    # Pt(211): step-edge atoms CN 7, terrace CN 9, step-corner CN 10 (top and bottom side)
    step = fcc211("Pt", (3, 3, 4), a=PT_A, vacuum=8.0)
    step.pbc = True
    z = step.positions[:, 2]
    cn = coordination_numbers(step, SHELL_CUTOFF)
    assert sorted(cn[z > z.max() - 2.0].tolist()) == [7] * 3 + [9] * 3 + [10] * 3
    edge = int(np.argmax(z))
    add_adsorbate(step, molecule("CO"), 1.85, position=step.positions[edge, :2], mol_index=1)
    z = step.positions[:, 2]
    big = preset_labels(step, buffer_shells=0) == 0
    core = np.zeros(len(step), dtype=bool)
    core[:36] = cn < 12
    core[36:] = True
    np.testing.assert_array_equal(big, core)
    # the step-corner atoms lie 1.6 A below the edge, below the top terrace atoms: selected by
    # coordination, while fully coordinated atoms at nearly the same height are not
    pt_z, pt_big = z[:36], big[:36]
    corner = (cn == 10) & (pt_z > pt_z.mean())
    bulk_like = cn == 12
    assert pt_big[corner].all() and not pt_big[bulk_like].any()
    assert pt_z[corner].min() - pt_z[bulk_like].max() < 1.0
    np.testing.assert_array_equal(
        preset_labels(step, buffer_shells=1) == 0, grown_by_one_shell(step, core)
    )


@pytest.mark.parametrize("buffer_shells, expected", [(0, 12), (1, 12 + 6 + 24 + 12)])
def test_preset_on_bulk_with_vacancy(buffer_shells, expected):
    # the vacancy's 12 nearest neighbours are under-coordinated; one buffer shell adds every
    # site two nearest-neighbour hops from the vacancy: fcc shells 2-4 (6, 24, 12 sites)
    pt = bulk("Pt", "fcc", a=PT_A, cubic=True).repeat((3, 3, 3))
    del pt[0]
    big = preset_labels(pt, buffer_shells) == 0
    assert big.sum() == expected
    if buffer_shells == 0:
        _, from_vacancy = get_distances([0.0, 0.0, 0.0], pt.positions, cell=pt.cell, pbc=True)
        np.testing.assert_array_equal(big, np.isclose(from_vacancy[0], PT_A / np.sqrt(2)))
    assert (preset_labels(bulk("Pt", "fcc", a=PT_A, cubic=True).repeat(3), 1) == 1).all()


def test_rules_file_with_preset(tmp_path):
    step = fcc211("Pt", (3, 3, 4), a=PT_A, vacuum=8.0)
    step.pbc = True
    path = tmp_path / "rules.yaml"
    path.write_text(
        "preset: {name: pt_co_coordination, expert: big, default_expert: small}\n"
        "buffer_shells: 0\n"
        "rules:\n  - {kind: indices, expert: big, indices: [20]}\n"
    )
    rules, settings = read_rules_file(path)
    assert settings == {"default_expert": "small", "buffer_shells": 0, "shell_cutoff": 3.3}
    with pytest.warns(UserWarning, match=r"Near\(expert='big', species=\['C', 'O'\].* selects no atom"):
        labels = assign_experts(step, rules, EXPERTS, **settings)
    expected = coordination_numbers(step, SHELL_CUTOFF) < 12
    expected[20] = True
    np.testing.assert_array_equal(labels == 0, expected)
    path.write_text("- {kind: indices, expert: big, indices: [0]}\n")
    assert read_rules_file(path)[1] == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("rules: [\n", "not valid YAML"),
        ("default_expert: small\n", "a `rules` list and/or a `preset`"),
        ("rules: []\nbuffer: 1\n", r"unknown keys \['buffer'\]"),
        ("preset: pt_co_coordination\n", "preset must be a mapping with `name`"),
        ("preset: {name: pt_co, expert: big}\n", r"one of \['adsorbate_host', 'pt_co_coordination'\]"),
        ("preset: {name: pt_co_coordination, expert: big}\n", "default_expert"),
    ],
)
def test_bad_rules_files(tmp_path, text, message):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_rules_file(path)


@pytest.mark.parametrize(
    "width, expected",
    # the vacancy's 12 neighbours are the core; a buffer by distance adds every site within the
    # width of a core atom: 2.0 A reaches no site, 3.0 A the nearest neighbours (2.77 A), the
    # same sites as one buffer shell
    [(0.0, 12), (2.0, 12), (3.0, 12 + 6 + 24 + 12)],
)
def test_distance_buffer_on_bulk_with_vacancy(width, expected):
    pt = bulk("Pt", "fcc", a=PT_A, cubic=True).repeat((3, 3, 3))
    del pt[0]
    rules, settings = pt_co_coordination("big", "small", buffer_width=width)
    assert settings["buffer_width"] == width and settings["buffer_shells"] == 0
    with pytest.warns(UserWarning, match="selects no atom"):  # no C, O
        big = assign_experts(pt, rules, EXPERTS, **settings) == 0
    assert big.sum() == expected
    if width == 3.0:
        np.testing.assert_array_equal(big, preset_labels(pt, buffer_shells=1) == 0)


def test_distance_buffer_is_every_atom_within_the_width():
    slab = pt111_slab()
    core = np.zeros(len(slab), dtype=bool)
    core[-2:] = True  # C and O
    for width in (2.5, 4.5, 6.0):
        labels = assign_experts(slab, [Indices(expert="big", indices=[36, 37])], EXPERTS,
                                "small", buffer_width=width)
        _, d = get_distances(slab.positions[core], slab.positions, cell=slab.cell, pbc=True)
        np.testing.assert_array_equal(labels == 0, core | (d.min(axis=0) <= width))
    with pytest.raises(ValueError, match="buffer_shells or buffer_width, not both"):
        assign_experts(slab, [Indices(expert="big", indices=[0])], EXPERTS, "small",
                       buffer_shells=1, buffer_width=3.0)
    with pytest.raises(ValueError, match="buffer_width must not be negative"):
        assign_experts(slab, [Indices(expert="big", indices=[0])], EXPERTS, "small",
                       buffer_width=-1.0)


def test_rules_file_with_buffer_width(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("preset: {name: pt_co_coordination, expert: big, default_expert: small, "
                    "buffer_width: 4.5}\n")
    rules, settings = read_rules_file(path)
    assert settings == {"default_expert": "small", "buffer_shells": 0, "shell_cutoff": 3.3,
                        "buffer_width": 4.5}
    path.write_text("preset: {name: pt_co_coordination, expert: big, default_expert: small}\n"
                    "buffer_shells: 0\nbuffer_width: 3.0\n")
    assert read_rules_file(path)[1]["buffer_width"] == 3.0
