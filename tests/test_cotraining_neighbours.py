"""Co-training refuses training data whose neighbour list lacks edges the agreement terms need:
a data module built with the model's inference cutoffs (its metadata) is refused on its first
co-training batch, with the cutoffs to use; the co-training cutoffs pass."""

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from nequip_moe.nn import MixtureOfExpertsEnergy

from conftest import CONFIGS
from test_cotraining import TWO_ALLEGRO_TINY
from test_moe_model import build, float64  # noqa: F401  (float64: module-wide float64 fixture)
from test_moe_nequip_mixins import allegro_expert

# the composite table of configs/tiny_moe.yaml; the small expert's 3.5 A cuts fcc Pt's second
# shell (3.9 A), which the big expert (4.5 A) reads when co-training evaluates it there
CONFIG = {
    "seed": 2,
    "r_max": 4.5,
    "type_names": TWO_ALLEGRO_TINY["type_names"],
    "composite_types": copy.deepcopy(TWO_ALLEGRO_TINY["composite_types"]),
    "experts": {"big": allegro_expert(), "small": allegro_expert(r_max=3.5)},
}


def first_shared_batch(data_file, **neighbour_list):
    """The first training batch with shared atoms of configs/tiny_cotrain.yaml's data module,
    its neighbour list built with ``neighbour_list`` (NeighborListTransform options)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        config = compose("tiny_cotrain", overrides=[f"data_file={data_file}"])
    data_config = copy.deepcopy(config.data)
    data_config.transforms[-1] = {
        "_target_": "nequip.data.transforms.NeighborListTransform", **neighbour_list
    }
    datamodule = instantiate(data_config, _recursive_=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    for batch in datamodule.train_dataloader():
        if batch["shared"].any():
            return batch
    raise AssertionError("no training batch with shared atoms")


def test_trimmed_neighbour_list_is_refused(pt_co_frames_file):
    model = build(CONFIG)
    moe = next(m for m in model.modules() if isinstance(m, MixtureOfExpertsEnergy))
    inference = moe.neighbor_cutoffs()
    names = CONFIG["type_names"]
    assert inference[names.index("Pt_small")] == [3.5] * 4  # trimmed for small-expert centres
    trimmed = first_shared_batch(
        pt_co_frames_file,
        r_max=4.5,
        type_names=names,
        per_edge_type_cutoff={a: dict(zip(names, row)) for a, row in zip(names, inference)},
    )
    with pytest.raises(
        ValueError,
        match=r"lacks edges that co-training needs: expert `big` .* co-training cutoffs, "
        r"`neighbor_cutoffs\(cotraining=True\)`: nequip.data.transforms.NeighborListTransform "
        r"with r_max: 4.5$",
    ):
        model(dict(trimmed))
    with pytest.raises(ValueError, match="lacks edges"):  # refused until a batch passes
        model(dict(trimmed))
    # the co-training cutoffs (one r_max for every pair here) pass
    assert moe.neighbor_cutoffs(cotraining=True) == [[4.5] * 4] * 4
    full = first_shared_batch(pt_co_frames_file, r_max=4.5)
    torch.testing.assert_close(full["pos"], trimmed["pos"])
    assert full["edge_index"].shape[1] > trimmed["edge_index"].shape[1]
    out = model(dict(full))
    assert out["expert_forces"].abs().sum() > 0
