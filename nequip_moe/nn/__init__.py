"""Graph modules of nequip-moe. Packaged with models: import only light code here."""

from .moe import MixtureOfExpertsEnergy, ExpertSpec, DenseCompileGraphModel
from .routing import ALL_EDGES
from .frozen_cache import FrozenExpertCache
from .gate import AdsorbateCoordinationGate

__all__ = [
    "MixtureOfExpertsEnergy",
    "ExpertSpec",
    "DenseCompileGraphModel",
    "ALL_EDGES",
    "FrozenExpertCache",
    "AdsorbateCoordinationGate",
]
