"""The models a validation evaluates, as ASE calculators.

``ModelUnderTest`` loads an MoE (compiled ``--target ase`` file, package or checkpoint; static
or gated) once and gives the calculators the measures need:

- ``calculator()``: the MoE as it runs (static: regions from ``atoms.arrays["expert"]``;
  gated: its gate);
- ``region_calculator()``: the MoE with the regions of ``atoms.arrays["expert"]`` (label 0 high
  fidelity) on any model: a gated MoE's gate replaced by those fixed weights;
- ``expert_calculator(k)``: expert ``k`` alone on the whole frame (every atom relabelled ``k``
  where the expert knows its element; a gated MoE's gate fixed to ``k``'s weight 1);
- ``expert_weights(atoms)`` / ``high_fidelity(atoms)``: each expert's weight on each atom, and
  the atoms of the high-fidelity region (label 0, or ``g > 0``).

A compiled gated MoE cannot have its gate replaced: those calls raise ``NotApplicable`` (the
measures report it and name the package to validate instead). ``plain_calculator`` loads a
plain (single-model) nequip file, e.g. the all-high-fidelity reference.
"""

import dataclasses
import functools
import pathlib
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from nequip_moe.keys import EXPERT_HALO_HOPS_KEY, EXPERT_KEY, EXPERT_R_MAX_KEY, GATE_KEY


class NotApplicable(Exception):
    """A measure cannot run on this model; the message says why."""


def plain_calculator(path, device: str = "cpu") -> Calculator:
    """nequip's ASE calculator of a plain (single-model) nequip file, typed by species.

    Args:
        path: compiled ``--target ase`` file, package or checkpoint
        device: device to evaluate on (the compile device for compiled files)
    """
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator
    from nequip.nn.embedding.utils import cutoff_str_to_fulldict

    from nequip_moe.integrations.model_files import is_compiled, load_model, read_metadata

    if "moe_expert_names" in read_metadata(path):
        raise ValueError(
            f"`{path}` is an MoE: the reference is a single model (e.g. the all-high-fidelity "
            "model the MoE's big expert was trained as)"
        )
    if is_compiled(path):
        return NequIPCalculator.from_compiled_model(
            str(path), device=device, chemical_species_to_atom_type_map=True
        )
    model, metadata = load_model(path, device)
    type_names = metadata["type_names"].split()
    per_edge = metadata.get("per_edge_type_cutoff")
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(type_names),
        NeighborListTransform(
            r_max=float(metadata["r_max"]),
            per_edge_type_cutoff=cutoff_str_to_fulldict(per_edge, type_names) if per_edge else None,
            type_names=type_names if per_edge else None,
        ),
    ]
    return NequIPCalculator(model, device=device, transforms=transforms)


class _FixableGate(torch.nn.Module):
    """A gated MoE's gate, or fixed per-atom weights in its place while ``weights`` is set."""

    def __init__(self, gate: torch.nn.Module):
        super().__init__()
        self.gate = gate
        self.weights: Optional[torch.Tensor] = None

    def forward(self, data):
        if self.weights is None:
            return self.gate(data)
        positions = data["pos"]
        data[GATE_KEY] = self.weights.to(dtype=positions.dtype, device=positions.device).view(-1, 1)
        return data

    def neighbor_cutoffs(self):
        return self.gate.neighbor_cutoffs()


class RegionCalculator(Calculator):
    """An MoE evaluated with per-atom regions chosen by ``regions(atoms)`` (label 0 high
    fidelity) at every calculation; the results are the MoE calculator's.

    Args:
        model: the ``ModelUnderTest``
        regions: ``labels = regions(atoms)``, one integer expert label per atom
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: "ModelUnderTest", regions: Callable[[Atoms], np.ndarray]):
        super().__init__()
        self.model_under_test = model
        self.regions = regions

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        labelled = self.atoms.copy()
        labelled.arrays[EXPERT_KEY] = np.asarray(self.regions(self.atoms), dtype=np.int64)
        self.results = self.model_under_test.evaluate(labelled, list(properties))


@dataclasses.dataclass
class ModelUnderTest:
    """An MoE model file and the calculators the measures evaluate (module docstring).

    Args:
        path: compiled ``--target ase`` file (``.nequip.pt2``), package or checkpoint
        device: device to evaluate on (the compile device for compiled files)
    """

    path: pathlib.Path
    device: str = "cpu"

    def __post_init__(self):
        from nequip_moe.integrations.model_files import model_types, read_metadata

        self.path = pathlib.Path(self.path)
        self.metadata: Dict[str, str] = read_metadata(self.path)
        if "moe_expert_names" not in self.metadata:
            raise ValueError(
                f"`{self.path}` is not a nequip-moe MoE (no `moe_expert_names` metadata): pass "
                "the MoE as MODEL and a single model as --reference"
            )
        self.table = model_types(self.metadata, f"`{self.path}`")

    @property
    def gated(self) -> bool:
        return bool(getattr(self.table, "gated", False))

    @property
    def compiled(self) -> bool:
        from nequip_moe.integrations.model_files import is_compiled

        return is_compiled(self.path)

    @property
    def expert_names(self) -> List[str]:
        return list(self.table.expert_names)

    @property
    def low(self) -> int:
        """Label of the low-fidelity expert: the last (the first is the high-fidelity one)."""
        return len(self.expert_names) - 1

    @property
    def expert_r_max(self) -> List[float]:
        """Each expert's cutoff (Å); the model's ``r_max`` where the metadata has none."""
        radii = [float(r) for r in self.metadata.get(EXPERT_R_MAX_KEY, "").split()]
        return radii if len(radii) == len(self.expert_names) else [float(self.metadata["r_max"])] * len(self.expert_names)

    @property
    def receptive_radius(self) -> float:
        """How far (Å) an atom's energy may reach: the largest ``r_max x (1 + halo hops)``
        over the experts (halo unknown: counted as none)."""
        hops = [int(h) for h in self.metadata.get(EXPERT_HALO_HOPS_KEY, "").split()]
        hops = hops if len(hops) == len(self.expert_names) else [0] * len(self.expert_names)
        return max(r * (1 + max(h, 0)) for r, h in zip(self.expert_r_max, hops))

    def describe(self) -> Dict:
        return {
            "path": str(self.path),
            "kind": "gated" if self.gated else "static",
            "compiled": self.compiled,
            "experts": self.expert_names,
            "expert_r_max": self.expert_r_max,
            "r_max": float(self.metadata["r_max"]),
            "receptive_radius": self.receptive_radius,
            "type_names": self.metadata["type_names"].split(),
        }

    @functools.cached_property
    def _calculator(self):
        from nequip_moe.integrations.ase import MoECalculator

        calc = MoECalculator.from_file(self.path, device=self.device)
        self._gate = None
        if self.gated and not self.compiled:
            owner = next(
                (m for m in calc.model.modules() if isinstance(getattr(m, "gate", None), torch.nn.Module)
                 and hasattr(m.gate, "neighbor_cutoffs")),
                None,
            )
            if owner is None:
                raise ValueError(f"`{self.path}`: a gated MoE without a gate module")
            self._gate = _FixableGate(owner.gate)
            owner.gate = self._gate
        return calc

    def calculator(self) -> Calculator:
        """The MoE as it runs: static regions from ``atoms.arrays["expert"]``, or its gate."""
        self._calculator.reset()
        return self._calculator

    def _require_regions(self, what: str):
        if self.gated and self.compiled:
            raise NotApplicable(
                f"{what} needs the gated MoE with fixed regions, and a compiled gated MoE's gate "
                "cannot be replaced: validate its package (.nequip.zip) for this measure"
            )

    def evaluate(self, atoms: Atoms, properties=("energy", "forces")) -> Dict:
        """Results of the MoE on ``atoms`` with the regions of ``atoms.arrays["expert"]``."""
        self._require_regions("this measure")
        calc = self._calculator
        if self._gate is not None:
            self._gate.weights = torch.as_tensor(atoms.arrays[EXPERT_KEY] == 0, dtype=torch.float64)
        try:
            calc.calculate(atoms, list(properties), all_changes)
        finally:
            if self._gate is not None:
                self._gate.weights = None
        return dict(calc.results)

    def region_calculator(self) -> Calculator:
        """The MoE with the regions of ``atoms.arrays["expert"]`` (label 0 high fidelity)."""
        self._require_regions("a region given by labels")
        return RegionCalculator(self, lambda atoms: atoms.arrays[EXPERT_KEY])

    def expert_labels(self, atoms: Atoms, expert: int) -> np.ndarray:
        """Labels putting every atom on ``expert`` where it knows the atom's element (static);
        other atoms keep their own label, else the first expert that knows them."""
        if self.gated:
            return np.full(len(atoms), expert, dtype=np.int64)
        lookup = self.table.type_lookup()[atoms.numbers]
        own = atoms.arrays.get(EXPERT_KEY, np.argmax(lookup >= 0, axis=1))
        return np.where(lookup[:, expert] >= 0, expert, own).astype(np.int64)

    def expert_calculator(self, expert: int) -> Calculator:
        """Expert ``expert`` (label) alone on every atom whose element it knows."""
        self._require_regions("an expert alone")
        return RegionCalculator(self, lambda atoms: self.expert_labels(atoms, expert))

    def expert_weights(self, atoms: Atoms) -> np.ndarray:
        """Weight of each expert on each atom, ``[num_atoms, num_experts]``: one-hot on the label
        (static), ``[g, 1 - g]`` from the gate (gated); an expert runs where its weight is not 0."""
        if not self.gated:
            labels = np.asarray(atoms.arrays[EXPERT_KEY])
            return (labels[:, None] == np.arange(len(self.expert_names))[None, :]).astype(float)
        self._require_regions("the gate's weights")
        calc = self._calculator
        with torch.no_grad():
            g = self._gate.gate(calc.atoms_to_data(atoms))[GATE_KEY].view(-1).cpu().numpy()
        return np.stack([g, 1.0 - g], axis=1)

    def high_fidelity(self, atoms: Atoms) -> np.ndarray:
        """Boolean mask of the high-fidelity region: label 0 (static), ``g > 0`` (gated)."""
        return self.expert_weights(atoms)[:, 0] > 0

    def known_elements(self, expert: int) -> List[str]:
        """Elements expert ``expert`` has a type for (every element of a gated MoE)."""
        if self.gated:
            return list(self.table.type_names)
        name = self.expert_names[expert]
        return [e for e, x in zip(self.table.elements, self.table.experts) if x == name]
