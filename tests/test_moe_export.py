"""AOTInductor export of routed MoEs whose experts are message-passing NequIP models of 3 and 4
layers (routed edge counts are data-dependent while tracing), and the refusal to export a
non-local MoE for `pair_style allegro`."""

import copy

import numpy as np
import pytest
import torch

from allegro._compile import allegro_data_settings
from nequip.scripts._compile_utils import ASE_TARGET, PAIR_NEQUIP_INPUTS, ASE_OUTPUTS
from nequip.utils.aot import aot_export_model
from nequip.utils.fx import nequip_make_fx
from nequip.nn.compile import ListInputOutputWrapper

from test_moe_model import (  # noqa: F401  (float64: module-wide float64 fixture)
    NEQUIP_ALLEGRO,
    build,
    float64,
    half_labels,
    pt_co_slab,
    typed_graph,
)


def nequip_expert(num_layers, **overrides):
    config = {
        "_target_": "nequip.model.NequIPGNNModel",
        "l_max": 1,
        "num_layers": num_layers,
        "num_features": 4,
        "radial_mlp_depth": 1,
        "radial_mlp_width": 4,
        "avg_num_neighbors": 5.0,
    }
    config.update(overrides)
    return config


DEEP_NEQUIP = copy.deepcopy(NEQUIP_ALLEGRO)
DEEP_NEQUIP["experts"] = {"big": nequip_expert(2), "small": nequip_expert(3, r_max=3.6)}


@pytest.fixture(scope="module")
def deep_nequip_moe():
    model = build(DEEP_NEQUIP)
    model.eval()
    return model


@pytest.fixture(scope="module")
def deep_nequip_pt2(deep_nequip_moe, tmp_path_factory):
    """The routed MoE of a 2- and a 3-layer NequIP expert, AOTI-compiled for the ASE target (once)."""
    atoms = pt_co_slab(size=(2, 2, 2))
    data = ASE_TARGET["data_settings"](typed_graph(atoms, DEEP_NEQUIP, half_labels(atoms)))
    path = str(tmp_path_factory.mktemp("export") / "deep_nequip.nequip.pt2")
    batch_map = ASE_TARGET["batch_map_settings"](
        {
            "graph": torch.export.Dim("num_frames", min=2),
            "node": torch.export.Dim("num_nodes", min=2),
            "edge": torch.export.Dim("num_edges", min=2),
        }
    )
    aot_export_model(
        model=copy.deepcopy(deep_nequip_moe),
        device="cpu",
        input_fields=PAIR_NEQUIP_INPUTS,
        output_fields=ASE_OUTPUTS,
        data=data,
        batch_map=batch_map,
        output_path=path,
    )
    return torch._inductor.aoti_load_package(path)


@pytest.mark.parametrize("labelling", ["mixed", "all_big", "all_small", "one_small"])
def test_routed_deep_nequip_experts_compile(deep_nequip_moe, deep_nequip_pt2, labelling):
    """Compiled == eager for other sizes and expert fractions, including an expert with no atoms."""
    atoms = pt_co_slab(size=(3, 3, 3), seed=1)
    labels = {
        "mixed": half_labels(atoms),
        "all_big": np.zeros(len(atoms), dtype=int),
        "all_small": np.where(atoms.numbers == 78, 1, 0),
        "one_small": np.where(np.arange(len(atoms)) == 0, 1, 0),
    }[labelling]
    data = typed_graph(atoms, DEEP_NEQUIP, labels)
    ref = deep_nequip_moe(dict(data))
    out = deep_nequip_pt2([data[k] for k in PAIR_NEQUIP_INPUTS])
    for key, value in zip(ASE_OUTPUTS, out):
        torch.testing.assert_close(value, ref[key], atol=1e-10, rtol=0, msg=key)


def test_pair_allegro_export_refuses_message_passing_experts():
    """`pair_style allegro` inputs (ghost atoms, no cell) are refused for a NequIP expert."""
    model = build(NEQUIP_ALLEGRO)
    atoms = pt_co_slab(size=(2, 2, 2))
    data = allegro_data_settings(dict(typed_graph(atoms, NEQUIP_ALLEGRO, half_labels(atoms))))
    fields = ["pos", "edge_index", "atom_types"]
    wrapped = ListInputOutputWrapper(model, fields, ["atomic_energy"])
    with pytest.raises(ValueError, match=r"expert `big` is not strictly local .*--target ase"):
        nequip_make_fx(wrapped, data, fields)
    # eager evaluation of the same inputs (no tracing) is not refused
    model(dict(data))
