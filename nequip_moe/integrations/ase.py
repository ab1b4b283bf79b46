"""ASE calculator for MoE models: sets composite ``atom_types`` from per-atom expert labels.

nequip's ``NequIPCalculator`` maps each chemical species to one model type, which cannot say
which expert an atom belongs to. ``MoECalculator`` reuses it (loading, neighbour list, device
handling, results) and only replaces the typing: every atom's composite type comes from its
species and its expert label (``CompositeTypeTable.type_index``). Gated MoEs have plain element
type names and need no labels: the calculator types them by species alone (as nequip's own
calculator would).
"""

import pathlib
from typing import Callable, Dict, Optional, Union

import numpy as np
import torch
from ase import Atoms

from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
from nequip.integrations.ase import NequIPCalculator
from nequip.nn.compile import DictInputOutputWrapper
from nequip.utils.aoti_metadata import NEQUIP_AOTI_OUTPUTS_KEY

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.keys import EXPERT_KEY, GATE_MODEL_KEY
from nequip_moe.compat.nequip_api import (
    ase_compile_target,
    calculator_from_saved_model,
    transforms_run_on_device,
)
from nequip_moe.integrations.model_files import (
    _check_exists,
    compiled_input_fields,
    is_compiled,
    is_pair_allegro_target,
    read_metadata,
    table_from_metadata,
)

# a per-atom expert-label rule: ``labels = rule(atoms)``, one integer label per atom
LabelRule = Callable[[Atoms], np.ndarray]


class MoECalculator(NequIPCalculator):
    """ASE calculator for nequip-moe Mixture-of-Experts models.

    Static regions: each atom's expert label ``k`` (meaning ``expert_names[k]`` of the model) comes from
    ``label_rule(atoms)`` if given, else from the per-atom array ``atoms.arrays["expert"]``,
    else every atom gets ``default_expert`` (the composite-type table's rule: the first
    expert, label 0, unless another is named). The label
    rule is evaluated at every calculation: for dynamics with fixed regions store the labels
    in ``atoms.arrays["expert"]`` instead. Changing that array invalidates cached results.
    Gated MoEs (metadata ``moe_gate_model``): atoms are typed by species alone; labels are
    neither needed nor read.

    Results: ``energy``, ``free_energy``, ``energies`` (per atom), ``forces`` and ``stress``.

    Build it with ``from_compiled_model`` (a ``nequip-compile --target ase`` file),
    ``from_saved_model`` (checkpoint or package) or ``from_file`` (any of them).

    Args:
        model: a nequip-moe model in eval mode
        device (str/torch.device): device for model to evaluate on, e.g. ``cpu`` or ``cuda``
        composite_table (CompositeTypeTable): the model's composite-type table (default: read from the model's metadata, which saved and compiled models carry; ``None`` for a gated MoE)
        label_rule (Callable): optional ``labels = label_rule(atoms)`` giving one integer expert label per atom
        default_expert (str or int): expert (name or label) of atoms without labels (default: ``composite_table.default_expert``, the first expert)
        transforms (List[Callable]): data transforms after typing, e.g. the neighbour list; a ``ChemicalSpeciesToAtomTypeMapper`` among them is replaced by the composite typing
        **kwargs: forwarded to ``NequIPCalculator`` (``energy_units_to_eV``, ``length_units_to_A``, ASE ``Calculator`` options)
    """

    @classmethod
    def from_compiled_model(
        cls,
        compile_path: Union[str, pathlib.Path],
        device: Union[str, torch.device] = "cpu",
        **kwargs,
    ):
        """Build the calculator from a ``nequip-compile --mode aotinductor --target ase`` file.

        Args:
            compile_path: path to the ``.nequip.pt2`` file
            device: device the file was compiled for
            **kwargs: ``label_rule``, ``default_expert``, neighbour-list options of ``NequIPCalculator.from_compiled_model`` and calculator options
        """
        _check_exists(compile_path)
        try:
            return super().from_compiled_model(
                compile_path, device=device, chemical_species_to_atom_type_map={}, **kwargs
            )
        except ValueError:
            # only on failure read the file a second time, to say if it has the wrong target
            _check_ase_target(compile_path, read_metadata(compile_path))
            raise

    @classmethod
    def from_saved_model(
        cls,
        model_path: Union[str, pathlib.Path],
        device: Union[str, torch.device] = "cpu",
        **kwargs,
    ):
        """Build the calculator from a checkpoint or a ``.nequip.zip`` package (eager model).

        Args:
            model_path: path to the checkpoint or package
            device: device to evaluate the model on
            **kwargs: ``label_rule``, ``default_expert``, options of nequip's saved-model loader (``allow_tf32``, ``model_name``, ``compile_mode``, neighbour-list options) and calculator options
        """
        _check_exists(model_path)
        return calculator_from_saved_model(
            cls, model_path, device=device, chemical_species_to_atom_type_map={}, **kwargs
        )

    @classmethod
    def from_file(
        cls,
        path: Union[str, pathlib.Path],
        device: Union[str, torch.device] = "cpu",
        **kwargs,
    ):
        """``from_compiled_model`` for ``.nequip.pt2`` files, else ``from_saved_model``."""
        if is_compiled(path):
            return cls.from_compiled_model(path, device=device, **kwargs)
        return cls.from_saved_model(path, device=device, **kwargs)

    def __init__(
        self,
        model: torch.nn.Module,
        device: Union[str, torch.device],
        composite_table: Optional[CompositeTypeTable] = None,
        label_rule: Optional[LabelRule] = None,
        default_expert: Optional[Union[str, int]] = None,
        transforms=(),
        **kwargs,
    ):
        # gated MoE: plain element type names, typed by species
        self.element_type_names: Optional[list] = None
        if composite_table is None:
            metadata = _model_metadata(model)
            if GATE_MODEL_KEY in metadata:
                self.element_type_names = metadata["type_names"].split()
            else:
                composite_table = table_from_metadata(metadata, "model")
        self.composite_table = composite_table
        self.label_rule = label_rule
        if composite_table is not None:
            self.default_expert = composite_table.expert_label(default_expert)
        # the composite typing replaces nequip's species typing (see `atoms_to_data`)
        transforms = [
            t for t in transforms if not isinstance(t, ChemicalSpeciesToAtomTypeMapper)
        ]
        super().__init__(model=model, device=device, transforms=transforms, **kwargs)

    def expert_labels(self, atoms: Atoms) -> np.ndarray:
        """Validated per-atom expert labels of ``atoms``.

        Args:
            atoms: the structure
        """
        if self.label_rule is not None:
            labels, source = self.label_rule(atoms), "label_rule(atoms)"
        elif EXPERT_KEY in atoms.arrays:
            labels, source = atoms.arrays[EXPERT_KEY], f'atoms.arrays["{EXPERT_KEY}"]'
        else:
            labels = np.full(len(atoms), self.default_expert, dtype=np.int64)
            source = f"default expert `{self.composite_table.expert_names[self.default_expert]}`"
        try:
            return self.composite_table.check_labels(atoms.numbers, labels)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    def atom_types(self, atoms: Atoms) -> np.ndarray:
        """Model type index of every atom: by species and expert label, or by species alone
        for a gated MoE.

        Args:
            atoms: the structure
        """
        if self.composite_table is not None:
            return self.composite_table.type_index(atoms.numbers, self.expert_labels(atoms))
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(self.element_type_names))
        if unknown:
            raise ValueError(
                f"species {unknown} are not among the gated MoE's types {self.element_type_names}"
            )
        return np.array([self.element_type_names.index(s) for s in symbols], dtype=np.int64)

    def atoms_to_data(self, atoms: Atoms) -> AtomicDataDict.Type:
        """nequip's ``atoms_to_data`` with the composite atom types set before the transforms
        (the neighbour list may need them), which its own has no hook for."""
        data = from_ase(atoms)
        data[AtomicDataDict.ATOM_TYPE_KEY] = torch.as_tensor(self.atom_types(atoms))
        on_device = transforms_run_on_device(self)
        if on_device:
            data = AtomicDataDict.to_(data, self.device)
        for t in self.transforms:
            data = t(data)
        if not on_device:
            data = AtomicDataDict.to_(data, self.device)
        return data

    def check_state(self, atoms: Atoms, tol: float = 1e-15):
        """ASE's state check, plus changes of the per-atom ``expert`` array."""
        changes = super().check_state(atoms, tol=tol)
        if self.atoms is not None and not np.array_equal(
            self.atoms.arrays.get(EXPERT_KEY), atoms.arrays.get(EXPERT_KEY)
        ):
            changes = changes + [EXPERT_KEY]
        return changes


def _model_metadata(model: torch.nn.Module) -> Dict[str, str]:
    """String metadata of a saved model, or of a compiled one as nequip's loader wraps it."""
    if hasattr(model, "metadata"):
        return dict(model.metadata)
    if isinstance(model, DictInputOutputWrapper):
        return dict(model.model.get_metadata())
    raise ValueError("this model carries no metadata: pass its composite_table")


def _check_ase_target(compile_path, metadata: Dict[str, str]):
    """Refuse, naming the fix, a compiled file whose inputs/outputs are not the ASE target's."""
    target = ase_compile_target()
    inputs = compiled_input_fields(metadata)
    outputs = metadata[NEQUIP_AOTI_OUTPUTS_KEY].split()
    if inputs != list(target["input"]) or outputs != list(target["output"]):
        compiled_for = (
            "`--target pair_allegro` (LAMMPS)"
            if is_pair_allegro_target(metadata)
            else f"another target (inputs {inputs}, outputs {outputs})"
        )
        raise ValueError(
            f"`{compile_path}` was compiled for {compiled_for}; the ASE calculator needs "
            "`nequip-compile MODEL OUT.nequip.pt2 --mode aotinductor --device DEVICE "
            "--target ase`"
        )
