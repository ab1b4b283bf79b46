"""nequip internals that have no public equivalent (checked on nequip 0.19.1).

Heavy: imports nequip's training module. Never import this from ``nequip_moe.nn``.
"""

# nequip names the single model of a training run "sole_model" and exports the name only as
# the private `nequip.train.lightning._SOLE_MODEL_KEY` (nequip 0.19.1); `nequip-compile
# --model` and `load_saved_model` default to it
from nequip.train.lightning import _SOLE_MODEL_KEY as SOLE_MODEL_KEY  # noqa: F401
from nequip.scripts._workflow_utils import get_workflow_state


def workflow_state():
    """The nequip workflow this process runs (``"train"``, ``"package"``, ``"compile"``, ...,
    or ``None``), from the private ``nequip.scripts._workflow_utils`` (nequip 0.19.1)."""
    return get_workflow_state()
