"""Graph modules of nequip-moe. Packaged with models: import only light code here."""

from .moe import MixtureOfExpertsEnergy, DenseCompileGraphModel, ALL_EDGES

__all__ = ["MixtureOfExpertsEnergy", "DenseCompileGraphModel", "ALL_EDGES"]
