"""nequip-train -> nequip-package -> nequip-compile (AOTI, `ase` and `pair_allegro` targets):
the compiled files reproduce the eager model for varying atom counts and expert fractions."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule

from allegro._compile import allegro_data_settings
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform

from nequip_moe.data import CompositeTypeMapper
from nequip_moe.integrations.model_files import (
    is_pair_allegro_target,
    load_model,
    read_composite_table,
)

from conftest import run_tool

# (slab size, number of CO, fraction of Pt atoms on the big expert)
STRUCTURES = [
    ((2, 2, 3), 0, 0.0),  # clean slab, all small
    ((2, 2, 3), 1, 0.5),
    ((3, 3, 3), 2, 0.3),
    ((3, 3, 4), 1, 1.0),  # all big
]


def structure(size, num_co, big_fraction, seed=0):
    slab = fcc111("Pt", size, vacuum=5.0, a=3.92)
    for i, site in enumerate(["ontop", "fcc"][:num_co]):
        add_adsorbate(slab, molecule("CO"), 1.9, site, mol_index=1)
    slab.pbc = True
    slab.rattle(0.04, seed=seed)
    is_pt = slab.numbers == 78
    height_rank = np.argsort(np.argsort(-slab.positions[:, 2]))
    num_big_pt = int(round(big_fraction * is_pt.sum()))
    pt_rank = np.argsort(np.argsort(np.where(is_pt, height_rank, 10**6)))
    labels = np.where(~is_pt | (pt_rank < num_big_pt), 0, 1)
    return slab, labels


def graph(atoms, labels, table, r_max):
    data = from_ase(atoms)
    data["expert"] = torch.as_tensor(labels)
    mapper = CompositeTypeMapper(
        table.type_names,
        {t: {"element": e, "expert": x} for t, e, x in zip(table.type_names, table.elements, table.experts)},
        table.expert_names,
    )
    return NeighborListTransform(r_max=r_max)(mapper(data))


@pytest.fixture(scope="module")
def eager(tiny_moe_run):
    model, metadata = load_model(tiny_moe_run / "best.ckpt")
    return model, read_composite_table(tiny_moe_run / "best.ckpt"), float(metadata["r_max"])


def test_package_equals_checkpoint(eager, tiny_moe_package):
    model, table, r_max = eager
    packaged, metadata = load_model(tiny_moe_package)
    assert read_composite_table(tiny_moe_package) == table
    atoms, labels = structure(*STRUCTURES[1])
    data = graph(atoms, labels, table, r_max)
    a, b = model(dict(data)), packaged(dict(data))
    for key in ["atomic_energy", "forces", "stress"]:
        torch.testing.assert_close(a[key], b[key], atol=1e-12, rtol=0)


@pytest.mark.parametrize("size,num_co,big_fraction", STRUCTURES)
def test_compiled_ase_target_equals_eager(eager, tiny_moe_ase_pt2, size, num_co, big_fraction):
    model, table, r_max = eager
    compiled, metadata = load_model(tiny_moe_ase_pt2)
    assert not is_pair_allegro_target(metadata)
    atoms, labels = structure(size, num_co, big_fraction)
    data = graph(atoms, labels, table, r_max)
    ref = model(dict(data))
    out = compiled({k: data[k] for k in metadata["nequip_aoti_inputs"].split()})
    assert (ref["atomic_expert"].view(-1) == 0).float().mean().item() == pytest.approx(
        (labels == 0).mean()
    )
    for key in ["atomic_energy", "total_energy", "forces", "stress"]:
        torch.testing.assert_close(out[key], ref[key], atol=1e-10, rtol=0)


@pytest.mark.parametrize("size,num_co,big_fraction", STRUCTURES)
def test_compiled_pair_allegro_target_equals_eager(
    eager, tiny_moe_pair_allegro_pt2, size, num_co, big_fraction
):
    """The LAMMPS file gets what `pair_style allegro` gives: ghost atoms, local-centre edges, no cell."""
    model, table, r_max = eager
    compiled, metadata = load_model(tiny_moe_pair_allegro_pt2)
    assert is_pair_allegro_target(metadata)
    atoms, labels = structure(size, num_co, big_fraction)
    data = graph(atoms, labels, table, r_max)
    ref = model(dict(data))
    ghosted = allegro_data_settings(dict(data))
    num_local = len(atoms)
    out = compiled({k: ghosted[k] for k in metadata["nequip_aoti_inputs"].split()})
    torch.testing.assert_close(
        out["atomic_energy"][:num_local], ref["atomic_energy"], atol=1e-10, rtol=0
    )
    # ghost forces belong to the periodic images' owners (LAMMPS reverse communication)
    ghost_owner = data[AtomicDataDict.EDGE_INDEX_KEY][1][
        data[AtomicDataDict.EDGE_CELL_SHIFT_KEY].abs().sum(-1) != 0
    ]
    forces = out["forces"][:num_local].index_add(0, ghost_owner, out["forces"][num_local:])
    torch.testing.assert_close(forces, ref["forces"], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["virial"], ref["virial"], atol=1e-10, rtol=0)


def test_types_command_reads_compiled_table(tiny_moe_pair_allegro_pt2, tmp_path):
    out = run_tool(["nequip-moe", "types", tiny_moe_pair_allegro_pt2], cwd=tmp_path).stdout
    assert "Pt_small" in out and "small" in out
    bad = tmp_path / "corrupt.nequip.pt2"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="is not a readable AOTInductor model file"):
        run_tool(["nequip-moe", "types", bad], cwd=tmp_path)
