"""The models of the example's adaptive-regions section (``adaptive.py``).

From two model files (the example's all-big and all-small ``.nequip.zip``, or any checkpoints):

- the **gated MoE** ``E = sum_i [g_i e_i^big + (1 - g_i) e_i^small]`` with the strictly local
  ``nequip_moe.nn.AdsorbateCoordinationGate`` (``gated_model``), also written as a checkpoint
  that ``nequip-moe deploy`` packages and compiles (``write_gated_checkpoint``);
- the **static MoE** on the same two experts, regions from the ``pt_co_coordination`` preset of
  ``nequip_moe.data.regions`` (``static_model``, ``static_labels``);
- **force mixing** ``F_i = g_i F_i^big + (1 - g_i) F_i^small`` of the two models alone, with the
  same gate and no energy whose gradient it is (``ForceMixingCalculator``).
"""

import pathlib
import warnings
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from nequip.data import AtomicDataDict
from nequip.data.transforms import NeighborListTransform
from nequip.integrations.ase import NequIPCalculator
from nequip.nn.embedding.utils import cutoff_str_to_fulldict
from nequip.utils.global_state import set_global_state

from nequip_moe.compat.nequip_api import calculator_from_saved_model
from nequip_moe.keys import GATE_KEY
from nequip_moe.data.regions import assign_experts, pt_co_coordination
from nequip_moe.integrations.ase import MoECalculator
from nequip_moe.integrations.model_files import read_metadata
from nequip_moe.nn import MixtureOfExpertsEnergy

ELEMENTS = ("C", "O", "Pt")
EXPERT_NAMES = ("big", "small")  # high-fidelity first: weight g on big, 1 - g on small
STATIC_TYPES = ("C", "O", "Pt", "Pt_small")
GATE_TARGET = "nequip_moe.nn.AdsorbateCoordinationGate"
# the NVE's gate: Pt(111) terrace atoms (9 neighbours) count as regular, so the high-fidelity
# region is the CO and the Pt it touches (plus steps, adatoms: fewer than 9 neighbours) and
# follows the CO across the surface; with the default gate every surface atom is high fidelity
# and a CO moving over a terrace changes nothing
FOLLOWING_GATE = {"bulk_coordination": 9.0}
# the training config whose loss and optimizer a written gated checkpoint carries
CONFIG_FILE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "pt_co_moe.yaml"

PathLike = Union[str, pathlib.Path]


def _expert(expert: Union[PathLike, Dict]) -> Dict:
    """Expert config: a model file as ``PretrainedExpert``, or a builder config as it is."""
    if isinstance(expert, dict):
        return dict(expert)
    return {"_target_": "nequip_moe.model.PretrainedExpert", "path": str(pathlib.Path(expert).resolve())}


def _r_max(experts: Sequence[Union[PathLike, Dict]]) -> float:
    """The largest ``r_max`` of the experts (from the files' metadata or the configs)."""
    values = []
    for expert in experts:
        if isinstance(expert, dict):
            values.append(float(expert["r_max"]))
        else:
            values.append(float(read_metadata(expert)["r_max"]))
    return max(values)


def moe_model(
    big: Union[PathLike, Dict],
    small: Union[PathLike, Dict],
    gate_options: Optional[Dict] = None,
    static: bool = False,
    r_max: Optional[float] = None,
    seed: int = 0,
) -> torch.nn.Module:
    """An eager MoE (eval mode) of two experts, high-fidelity ``big`` first.

    Args:
        big: high-fidelity expert: a model file (``.nequip.zip`` or checkpoint) or a builder config
        small: low-fidelity expert, likewise
        gate_options: options of ``AdsorbateCoordinationGate`` (gated MoE; default: its defaults)
        static: static regions (composite types ``C O Pt Pt_small``) instead of the gate
        r_max: neighbour-list cutoff (default: the largest of the experts')
        seed: seed of the builder (experts built from configs)
    """
    from nequip_moe.model import MoEModel

    set_global_state(allow_tf32=False)  # nequip's models need it; float64 default dtype
    experts = {"big": _expert(big), "small": _expert(small)}
    config = dict(
        seed=seed,
        model_dtype="float64",
        r_max=float(r_max if r_max is not None else _r_max([big, small])),
        experts=experts,
    )
    if static:
        config["type_names"] = list(STATIC_TYPES)
        config["composite_types"] = {
            "C": {"element": "C", "expert": "big"},
            "O": {"element": "O", "expert": "big"},
            "Pt": {"element": "Pt", "expert": "big"},
            "Pt_small": {"element": "Pt", "expert": "small"},
        }
    else:
        config["type_names"] = list(ELEMENTS)
        config["gate"] = {"_target_": GATE_TARGET, **dict(gate_options or {})}
    model = MoEModel(**config)
    model.eval()
    return model


class GatedCalculator(MoECalculator):
    """``MoECalculator`` that also keeps the per-atom gate ``g`` in ``results["gate"]``."""

    def save_extra_outputs(self, out: AtomicDataDict.Type):
        if GATE_KEY in out:
            self.results["gate"] = out[GATE_KEY].detach().view(-1).cpu().numpy()


def model_calculator(model: torch.nn.Module, device: str = "cpu") -> MoECalculator:
    """ASE calculator of an eager MoE: species typing (gated) or ``atoms.arrays["expert"]``
    labels (static), with the neighbour list of the model's metadata."""
    metadata = dict(model.metadata)
    type_names = metadata["type_names"].split()
    r_max = float(metadata["r_max"])
    per_edge = metadata.get("per_edge_type_cutoff")
    transforms = [
        NeighborListTransform(
            r_max=r_max,
            per_edge_type_cutoff=cutoff_str_to_fulldict(per_edge, type_names) if per_edge else None,
            type_names=type_names if per_edge else None,
        )
    ]
    return GatedCalculator(model, device=device, transforms=transforms)


def gated_model(
    big_file: Union[PathLike, Dict],
    small_file: Union[PathLike, Dict],
    gate_options: Optional[Dict] = None,
    device: str = "cpu",
    r_max: Optional[float] = None,
) -> MoECalculator:
    """ASE calculator of the gated MoE of two models (eager; ``results["gate"]`` holds ``g``).

    Args:
        big_file: high-fidelity model file (or builder config)
        small_file: low-fidelity model file (or builder config)
        gate_options: ``AdsorbateCoordinationGate`` options, e.g. ``FOLLOWING_GATE``
        device: device of the model
        r_max: neighbour-list cutoff (default: the experts' largest)
    """
    return model_calculator(moe_model(big_file, small_file, gate_options, r_max=r_max), device)


def static_model(
    big_file: Union[PathLike, Dict],
    small_file: Union[PathLike, Dict],
    device: str = "cpu",
    r_max: Optional[float] = None,
) -> MoECalculator:
    """ASE calculator of the static MoE of the same two models; labels from
    ``atoms.arrays["expert"]`` (0 big, 1 small; C and O must be 0), e.g. ``static_labels``."""
    return model_calculator(moe_model(big_file, small_file, static=True, r_max=r_max), device)


def plain_calculator(path: PathLike, device: str = "cpu") -> NequIPCalculator:
    """nequip's calculator of a single model file (all-big, all-small)."""
    set_global_state(allow_tf32=False)
    return calculator_from_saved_model(
        NequIPCalculator, str(path), device=device, chemical_species_to_atom_type_map=True
    )


def static_labels(atoms: Atoms, gate_options: Optional[Dict] = None, buffer_shells: int = 0) -> np.ndarray:
    """Static expert labels (0 big, 1 small) matching the gate's ``g >= 0.5`` region.

    The ``pt_co_coordination`` preset with the gate's parameters: C and O, Pt within the middle
    of the gate's adsorbate switching shell of them, and Pt with fewer host neighbours (within
    the middle of the coordination shell) than the gate's ``bulk_coordination``.

    Args:
        atoms: the structure
        gate_options: the gate's options (default: the gate's defaults)
        buffer_shells: neighbour shells grown around the region (the preset's default is 1)
    """
    from nequip_moe.nn import AdsorbateCoordinationGate

    gate = AdsorbateCoordinationGate(ELEMENTS, **dict(gate_options or {}))
    rules, settings = pt_co_coordination(
        expert="big",
        default_expert="small",
        coordination_cutoff=0.5 * (gate.coordination_r_on + gate.coordination_r_off),
        # integer counts z < below <=> g >= 0.5 (deficit half-way between deficit_on and _full)
        bulk_coordination=int(
            np.ceil(gate.bulk_coordination - 0.5 * (gate.deficit_on + gate.deficit_full))
        ),
        bond_cutoff=0.5 * (gate.adsorbate_r_on + gate.adsorbate_r_off),
        buffer_shells=buffer_shells,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "region rule ... selects no atom" on flat terraces
        return assign_experts(atoms, rules, EXPERT_NAMES, **settings)


def gate_values(calc: MoECalculator, atoms: Atoms) -> np.ndarray:
    """Per-atom gate ``g`` of a gated MoE calculator's model on ``atoms`` (the gate alone)."""
    gate = _gate_module(calc.model)
    with torch.no_grad():
        data = calc.atoms_to_data(atoms)
        return gate(data)[GATE_KEY].view(-1).cpu().numpy()


def _gate_module(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, MixtureOfExpertsEnergy) and module.gate is not None:
            return module.gate
    raise ValueError("this model has no gate: not a gated MoE")


class ForceMixingCalculator(Calculator):
    """Force mixing of two models: ``F_i = g_i F_i^big + (1 - g_i) F_i^small``.

    No energy has these forces (they miss ``(e^big - e^small) grad g`` and mix each atom's force
    by its own gate rather than by the gate of the atoms whose energies depend on it), so dynamics
    do not conserve any energy. ``energy`` is the gated MoE's expression
    ``sum_i [g_i e_i^big + (1 - g_i) e_i^small]`` of the same experts, the quantity the mixed
    forces approximate the negative gradient of; ``results["gate"]`` holds ``g``.

    Args:
        big: calculator of the high-fidelity model alone (per-atom ``energies`` and ``forces``)
        small: calculator of the low-fidelity model alone
        gated: gated MoE calculator whose gate gives ``g``
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces"]

    def __init__(self, big: Calculator, small: Calculator, gated: MoECalculator, **kwargs):
        super().__init__(**kwargs)
        self.big, self.small, self.gated = big, small, gated

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        g = gate_values(self.gated, self.atoms)
        out = {}
        for name, calc in (("big", self.big), ("small", self.small)):
            calc.calculate(self.atoms, ["energy", "forces"], all_changes)
            out[name] = (calc.results["energies"], calc.results["forces"])
        energies = g * out["big"][0] + (1.0 - g) * out["small"][0]
        forces = g[:, None] * out["big"][1] + (1.0 - g)[:, None] * out["small"][1]
        self.results = {
            "energy": float(energies.sum()),
            "free_energy": float(energies.sum()),
            "energies": energies,
            "forces": forces,
            "gate": g,
        }


def gated_config(big_file: PathLike, small_file: PathLike, gate_options: Optional[Dict] = None,
                 r_max: Optional[float] = None) -> Dict:
    """Builder config (``nequip_moe.model.MoEModel``) of the gated MoE of two model files."""
    return {
        "_target_": "nequip_moe.model.MoEModel",
        "seed": 0,
        "model_dtype": "float64",
        "r_max": float(r_max if r_max is not None else _r_max([big_file, small_file])),
        "type_names": list(ELEMENTS),
        "experts": {"big": _expert(big_file), "small": _expert(small_file)},
        "gate": {"_target_": GATE_TARGET, **dict(gate_options or {})},
    }


def write_gated_checkpoint(path: PathLike, big_file: PathLike, small_file: PathLike,
                           structure_file: PathLike, gate_options: Optional[Dict] = None
                           ) -> pathlib.Path:
    """Write the gated MoE of two model files as a nequip checkpoint (no training: the gate
    has no labels to learn), which ``nequip-package``, ``nequip-compile`` and
    ``nequip-moe deploy`` take like a trained one.

    Args:
        path: the checkpoint to write (written whole or not at all)
        big_file: high-fidelity model: a package (the one packaged expert a package may hold)
            or a checkpoint
        small_file: low-fidelity model: a checkpoint
        structure_file: extxyz of C/O/Pt frames: the example input ``nequip-compile`` runs
        gate_options: ``AdsorbateCoordinationGate`` options (default: its defaults)
    """
    import os

    from nequip_moe.benchmarking.untrained import untrained_training_module, write_checkpoint

    set_global_state(allow_tf32=False)  # nequip builds models only after it
    path = pathlib.Path(path)
    # the loss, optimizer and metrics a checkpoint carries: the example's own
    module = untrained_training_module(CONFIG_FILE)
    tmp = path.with_name("tmp_" + path.name)
    write_checkpoint(module, gated_config(big_file, small_file, gate_options),
                     pathlib.Path(structure_file).resolve(), tmp)
    os.replace(tmp, path)
    return path
