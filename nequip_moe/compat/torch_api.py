"""torch internals that nequip-moe's graph modules need (checked on torch 2.13.0).

Light: imports torch only, so packaged graph modules (``nequip_moe.nn``) may use it. torch has
no public equivalent of either function; ``tests/test_compat_torch.py`` fails loudly when an
upgrade changes one.
"""

import torch


def check_size(condition: bool) -> None:
    """Tell ``torch.export`` a fact about a data-dependent size it cannot infer (e.g. that the
    number of ``nonzero`` entries is a valid size), so that tracing can go on.

    Wraps the private ``torch._check`` (torch 2.13.0); eager: raises if ``condition`` is false.

    Args:
        condition (bool): the fact, e.g. ``edges.size(0) >= 0``
    """
    torch._check(condition)


def assert_async(condition: torch.Tensor, message: str) -> None:
    """A runtime assertion on a tensor without a host synchronisation or a data-dependent
    Python branch (both impossible while tracing for export or ``torch.compile``).

    Wraps the private ``torch._assert_async`` (torch 2.13.0); eager: raises ``RuntimeError``
    with ``message`` when ``condition`` (a one-element boolean tensor) is false.

    Args:
        condition (torch.Tensor): one-element boolean tensor
        message (str): error message
    """
    torch._assert_async(condition, message)
