"""Graph modules of nequip-moe. Packaged with models: import only light code here."""

from .moe import MixtureOfExpertsEnergy, ExpertSpec, DenseCompileGraphModel, ALL_EDGES

__all__ = ["MixtureOfExpertsEnergy", "ExpertSpec", "DenseCompileGraphModel", "ALL_EDGES"]
