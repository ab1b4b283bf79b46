"""ASE calculator for MoE models: sets composite ``atom_types`` from per-atom expert labels.

nequip's ``NequIPCalculator`` maps each chemical species to one model type, which cannot say
which expert an atom belongs to. ``MoECalculator`` reuses it (loading, neighbour list, device
handling, results) and only replaces the typing: every atom's composite type comes from its
species and its expert label.
"""

import pathlib
from typing import Callable, Dict, Optional, Union

import numpy as np
import torch
from ase import Atoms

from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
from nequip.integrations.ase import NequIPCalculator
from nequip.utils.aoti_metadata import NEQUIP_AOTI_OUTPUTS_KEY

from nequip_moe._composite import CompositeTypeTable
from nequip_moe._keys import EXPERT_KEY
from nequip_moe.data.regions import check_expert_labels
from nequip_moe.data.transforms import CompositeTypeMapper
from nequip_moe.integrations.model_files import (
    _check_exists,
    compiled_input_fields,
    is_compiled,
    is_pair_allegro_target,
    read_metadata,
)

# a per-atom expert-label rule: ``labels = rule(atoms)``, one integer label per atom
LabelRule = Callable[[Atoms], np.ndarray]


class MoECalculator(NequIPCalculator):
    """ASE calculator for nequip-moe Mixture-of-Experts models.

    Each atom's expert label ``k`` (meaning ``expert_names[k]`` of the model) comes from
    ``label_rule(atoms)`` if given, else from the per-atom array ``atoms.arrays["expert"]``,
    else from ``default_expert``; with none of these the calculation is refused. The label
    rule is evaluated at every calculation: for dynamics with fixed regions store the labels
    in ``atoms.arrays["expert"]`` instead. Changing that array invalidates cached results.

    Results: ``energy``, ``free_energy``, ``energies`` (per atom), ``forces`` and ``stress``.

    Build it with ``from_compiled_model`` (a ``nequip-compile --target ase`` file),
    ``from_saved_model`` (checkpoint or package) or ``from_file`` (any of them).

    Args:
        model: a nequip-moe model in eval mode
        device (str/torch.device): device for model to evaluate on, e.g. ``cpu`` or ``cuda``
        composite_table (CompositeTypeTable): the model's composite-type table (default: read from ``model.metadata``, which saved models carry; compiled models must pass it)
        label_rule (Callable): optional ``labels = label_rule(atoms)`` giving one integer expert label per atom
        default_expert (str or int): expert (name or label) of atoms without labels (default ``None``: labels are required)
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
        metadata = read_metadata(compile_path)
        target = cls._get_aoti_compile_target()
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
        return super().from_compiled_model(
            compile_path,
            device=device,
            chemical_species_to_atom_type_map={},
            composite_table=_table_from_metadata(f"`{compile_path}`", metadata),
            **kwargs,
        )

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
            **kwargs: ``label_rule``, ``default_expert``, options of ``NequIPCalculator._from_saved_model`` (``allow_tf32``, ``model_name``, ``compile_mode``, neighbour-list options) and calculator options
        """
        _check_exists(model_path)
        return cls._from_saved_model(
            model_path, device=device, chemical_species_to_atom_type_map={}, **kwargs
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
        if composite_table is None:
            if not hasattr(model, "metadata"):
                raise ValueError(
                    "this model carries no metadata (a compiled model?): pass its composite_table"
                )
            composite_table = _table_from_metadata("model", dict(model.metadata))
        self.composite_table = composite_table
        self.label_rule = label_rule
        type_mapper = CompositeTypeMapper(
            type_names=composite_table.type_names,
            composite_types=_composite_types_config(composite_table),
            experts=composite_table.expert_names,
            default_expert=default_expert,
        )
        # the validated label of `default_expert` (None: atoms must carry labels)
        self.default_expert = None if default_expert is None else type_mapper.default_expert
        transforms = [type_mapper] + [
            t for t in transforms if not isinstance(t, ChemicalSpeciesToAtomTypeMapper)
        ]
        super().__init__(model=model, device=device, transforms=transforms, **kwargs)

    def expert_labels(self, atoms: Atoms) -> Optional[np.ndarray]:
        """Per-atom expert labels of ``atoms``; ``None`` where the default expert applies.

        Args:
            atoms: the structure
        """
        if self.label_rule is not None:
            labels, source = self.label_rule(atoms), "label_rule(atoms)"
        elif EXPERT_KEY in atoms.arrays:
            labels, source = atoms.arrays[EXPERT_KEY], f'atoms.arrays["{EXPERT_KEY}"]'
        elif self.default_expert is not None:
            return None
        else:
            raise ValueError(
                f'the atoms have no expert labels (per-atom array "{EXPERT_KEY}") and the '
                "calculator has neither a label_rule nor a default_expert; labels are "
                + ", ".join(
                    f"{k} = {name}" for k, name in enumerate(self.composite_table.expert_names)
                )
            )
        try:
            return check_expert_labels(labels, len(atoms), self.composite_table.expert_names)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    def atoms_to_data(self, atoms: Atoms) -> AtomicDataDict.Type:
        missing = sorted(
            set(atoms.get_chemical_symbols()) - set(self.composite_table.element_names)
        )
        if missing:
            raise ValueError(
                f"the model has no element {', '.join(missing)}; its composite types are "
                f"{self.composite_table.describe()}"
            )
        data = from_ase(atoms)
        labels = self.expert_labels(atoms)
        if labels is not None:
            data[EXPERT_KEY] = torch.as_tensor(labels, dtype=torch.long).view(-1, 1)
        if self._move_to_device_before_transforms:
            data = AtomicDataDict.to_(data, self.device)
        for t in self.transforms:
            data = t(data)
        if not self._move_to_device_before_transforms:
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


def _table_from_metadata(source, metadata: Dict[str, str]) -> CompositeTypeTable:
    try:
        return CompositeTypeTable.from_metadata(metadata)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def _composite_types_config(table: CompositeTypeTable) -> Dict[str, Dict[str, str]]:
    """The table as the ``composite_types`` mapping of a config."""
    return {
        name: {"element": element, "expert": expert}
        for name, element, expert in zip(table.type_names, table.elements, table.experts)
    }
