"""The private torch functions nequip-moe wraps (``nequip_moe.compat.torch_api``, torch 2.13):
each still does what the graph modules rely on, eager and while exporting."""

import pytest
import torch

from nequip_moe.compat.torch_api import assert_async, check_size


def test_check_size_raises_eagerly_and_informs_export():
    check_size(True)
    with pytest.raises(RuntimeError):
        check_size(False)

    class Routed(torch.nn.Module):
        def forward(self, mask):
            edges = torch.nonzero(mask).view(-1)
            check_size(edges.size(0) >= 0)
            return torch.ones(edges.size(0) + 2).sum() + edges.sum()

    # the data-dependent count of `nonzero` exports once it is declared a size
    exported = torch.export.export(
        Routed(),
        (torch.tensor([True, False, True]),),
        dynamic_shapes=({0: torch.export.Dim("num_edges", min=2)},),
    )
    mask = torch.tensor([False, True, True, True])
    assert exported.module()(mask) == Routed()(mask) == (3 + 2) + (1 + 2 + 3)


def test_assert_async_raises_with_its_message():
    assert_async(torch.tensor(True), "never shown")
    with pytest.raises(RuntimeError, match="shared atoms include"):
        assert_async(torch.tensor(False), "shared atoms include species")
