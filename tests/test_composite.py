"""``CompositeTypeTable``: type lookup, label checks with errors that name the problem, the
default-expert rule, and the data transform built from the table."""

import numpy as np
import pytest
import torch
from ase import Atoms

from nequip.data import from_ase

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.data import CompositeTypeMapper

from test_assign_cli import TABLE  # C and O only with the big expert, Pt with both

C, O, PT = 6, 8, 78


def test_type_index_from_numbers_and_labels():
    numbers = np.array([PT, PT, C, O, PT])
    labels = np.array([0, 1, 0, 0, 1])
    # type of each atom recomputed by name: (element, expert) -> position in type_names
    expected = [
        TABLE.type_names.index(TABLE.composite_type(el, TABLE.expert_names[k]))
        for el, k in zip(["Pt", "Pt", "C", "O", "Pt"], labels)
    ]
    assert TABLE.type_index(numbers, labels).tolist() == expected == [2, 3, 0, 1, 3]
    # nequip's per-atom field shape [num_atoms, 1] is accepted
    assert TABLE.type_index(numbers, labels.reshape(-1, 1)).tolist() == expected


def test_default_expert_is_the_first_expert():
    assert TABLE.default_expert == "big"
    assert TABLE.expert_label(None) == 0
    assert TABLE.expert_label("small") == 1 and TABLE.expert_label(1) == 1
    numbers = np.array([PT, C, O])
    assert TABLE.type_index(numbers).tolist() == TABLE.type_index(numbers, [0, 0, 0]).tolist()
    with pytest.raises(ValueError, match="`huge` is not one of the experts"):
        TABLE.expert_label("huge")
    with pytest.raises(ValueError, match="label 2 is out of range"):
        TABLE.expert_label(2)


def test_to_config_round_trips():
    config = TABLE.to_config()
    assert config["Pt_small"] == {"element": "Pt", "expert": "small"}
    assert CompositeTypeTable.from_config(TABLE.type_names, config, TABLE.expert_names) == TABLE


@pytest.mark.parametrize(
    "numbers, labels, message",
    [
        ([PT, PT, C], [0, 1], r"labels missing or extra: 2 labels for 3 atoms"),
        ([PT, PT], [[0, 1], [1, 0]], r"must be 2 integers .* shape \(2, 2\)"),
        ([PT, PT], [0.0, 1.0], r"must be 2 integers .*float64"),
        ([PT, PT], [0, 2], r"labels \[2\] are out of range: labels must be 0..1"),
        ([PT, PT], [-1, 0], r"labels \[-1\] are out of range"),
        ([PT, O, O], [1, 1, 0], r"\(O, small\) \(1 atoms: O has composite types only for experts \['big'\]\)"),
        ([PT, 1], [0, 0], r"\(H, big\) \(1 atoms: the model has no element H\)"),
        ([PT, 0], [0, 0], r"atomic numbers \[0\] are not elements"),
        ([PT, 200], [0, 0], r"atomic numbers \[200\] are not elements"),
    ],
)
def test_bad_labels_and_species_are_named(numbers, labels, message):
    with pytest.raises(ValueError, match=message):
        TABLE.check_labels(np.array(numbers), labels)
    with pytest.raises(ValueError, match=message):
        TABLE.type_index(np.array(numbers), labels)


def test_mapper_uses_the_table():
    atoms = Atoms("PtPtCO", positions=np.arange(12.0).reshape(4, 3) * 1.5)
    labels = np.array([1, 0, 0, 0])
    data = from_ase(atoms)
    data["expert"] = torch.as_tensor(labels).view(-1, 1)
    mapper = CompositeTypeMapper.from_table(TABLE)
    assert mapper(data)["atom_types"].tolist() == TABLE.type_index(atoms.numbers, labels).tolist()
    # unlabelled frames take an expert only where one is named
    only_pt = from_ase(Atoms("Pt2", positions=[[0, 0, 0], [2.8, 0, 0]]))
    small = CompositeTypeMapper.from_table(TABLE, default_expert="small")
    assert small(only_pt)["atom_types"].tolist() == [3, 3]
    big = CompositeTypeMapper.from_table(TABLE, default_expert=0)
    assert big(from_ase(atoms))["atom_types"].tolist() == [2, 2, 0, 1]
    # errors come from the table
    bad = from_ase(atoms)
    bad["expert"] = torch.as_tensor([1, 1, 1, 0]).view(-1, 1)
    with pytest.raises(ValueError, match=r"\(C, small\) \(1 atoms"):
        mapper(bad)
    fractional = from_ase(atoms)
    fractional["expert"] = torch.full((4, 1), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="integers"):
        mapper(fractional)


def test_frames_without_labels_are_refused_unless_a_default_is_named():
    """nequip's ``from_ase`` (as its data modules call it) keeps a per-atom array only if it is
    in ``include_keys``: without it every atom would silently land on one expert."""
    atoms = Atoms("Pt2CO", positions=np.arange(12.0).reshape(4, 3) * 1.5)
    atoms.arrays["expert"] = np.array([1, 0, 0, 0])
    mapper = CompositeTypeMapper.from_table(TABLE)
    dropped = from_ase(atoms)
    assert "expert" not in dropped
    with pytest.raises(ValueError, match=r"include_keys: \[expert\].*default_expert: NAME"):
        mapper(dropped)
    read = from_ase(atoms, include_keys=["expert"])
    assert mapper(read)["atom_types"].tolist() == [3, 2, 0, 1]
