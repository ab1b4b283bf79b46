"""The wrapper every compiled (AOTInductor) model is called through."""

import torch

from nequip.data import AtomicDataDict


class ContiguousInputs(torch.nn.Module):
    """Makes every input contiguous: compiled models assume it, and a strided view (e.g. a
    column slice of positions) gives wrong results without an error.

    Args:
        model: the compiled model, as nequip's loader wraps it
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        return self.model({k: v.contiguous() for k, v in data.items()})
