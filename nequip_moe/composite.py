"""The composite-type table: which (element, expert) pair each model type name means.

An MoE model's ``type_names`` are composite types such as ``C O Pt Pt_small``. The table maps
each of them to a chemical element and an expert, travels in the model metadata (so a compiled
file tells what every LAMMPS type name means) and is what the data transform, the ASE
calculator and the LAMMPS helpers read.

In a config the table is a mapping from composite type name to ``{element, expert}``::

    composite_types:
      Pt: {element: Pt, expert: big}
      Pt_small: {element: Pt, expert: small}

Expert labels are integers: label ``k`` means ``expert_names[k]``, the ``k``-th key of the
model's ``experts``. **Default expert:** atoms without a label get label 0, the first expert
(``CompositeTypeTable.default_expert``). List the high-fidelity expert first, so that an atom
nobody labelled is never silently given a cheaper expert. The data transform and the ASE
calculator apply this rule to unlabelled atoms; each also accepts an explicit
``default_expert`` (resolved with ``CompositeTypeTable.expert_label``). ``nequip-moe assign``
labels every atom itself (the atoms its rules select get the rules' expert, the rest the
expert it is told), so the files it writes have no unlabelled atoms.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from nequip_moe.keys import (
    EXPERT_NAMES_KEY,
    GATE_MODEL_KEY,
    TYPE_ELEMENTS_KEY,
    TYPE_EXPERTS_KEY,
)


@dataclasses.dataclass(frozen=True)
class CompositeTypeTable:
    """Validated composite-type table.

    Args:
        type_names: composite type names, in model type-index order
        elements: chemical element of each composite type
        experts: expert name of each composite type
        expert_names: all experts, in expert-label order (label ``k`` means ``expert_names[k]``)
    """

    type_names: List[str]
    elements: List[str]
    experts: List[str]
    expert_names: List[str]

    def __post_init__(self):
        if len(self.expert_names) == 0:
            raise ValueError("an MoE model needs at least one expert")
        if len(set(self.expert_names)) != len(self.expert_names):
            raise ValueError(f"duplicate expert names in {self.expert_names}")
        if len(set(self.type_names)) != len(self.type_names):
            raise ValueError(f"duplicate composite type names in {self.type_names}")
        for name, element, expert in zip(self.type_names, self.elements, self.experts):
            if element not in atomic_numbers or element == "X":
                raise ValueError(
                    f"composite type `{name}` names unknown element `{element}`"
                )
            if expert not in self.expert_names:
                raise ValueError(
                    f"composite type `{name}` names unknown expert `{expert}`; "
                    f"experts are {self.expert_names}"
                )
        seen = set()
        for name, element, expert in zip(self.type_names, self.elements, self.experts):
            if (element, expert) in seen:
                raise ValueError(
                    f"composite type `{name}` repeats the pair (element `{element}`, "
                    f"expert `{expert}`): each pair needs exactly one composite type"
                )
            seen.add((element, expert))

    @classmethod
    def from_config(
        cls,
        type_names: Sequence[str],
        composite_types: Mapping[str, Mapping[str, str]],
        expert_names: Sequence[str],
    ) -> "CompositeTypeTable":
        """Build the table from config: ``composite_types`` maps each of ``type_names`` to ``{element, expert}``."""
        type_names = [str(t) for t in type_names]
        missing = [t for t in type_names if t not in composite_types]
        if missing:
            raise ValueError(
                f"type_names {missing} have no entry in composite_types "
                f"(which defines {list(composite_types)})"
            )
        extra = [t for t in composite_types if t not in type_names]
        if extra:
            raise ValueError(
                f"composite_types defines {extra}, which are not in type_names {type_names}"
            )
        elements, experts = [], []
        for t in type_names:
            entry = composite_types[t]
            if not hasattr(entry, "keys") or set(entry.keys()) != {"element", "expert"}:
                raise ValueError(
                    f"composite type `{t}` must be a mapping with exactly the keys "
                    f"`element` and `expert`, got {entry!r}"
                )
            elements.append(str(entry["element"]))
            experts.append(str(entry["expert"]))
        return cls(type_names, elements, experts, [str(e) for e in expert_names])

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "CompositeTypeTable":
        """Read the table back from model metadata (compiled, packaged or checkpoint model)."""
        if GATE_MODEL_KEY in metadata:
            raise ValueError(
                f"this MoE is gated ({metadata[GATE_MODEL_KEY]}): its type names are plain "
                f"elements ({metadata.get('type_names', '?')}) and it takes no expert labels "
                "or composite types (LAMMPS: `pair_coeff * * MODEL` with element names)"
            )
        if TYPE_ELEMENTS_KEY not in metadata:
            raise ValueError(
                "this model has no composite-type table in its metadata: "
                "it is not a nequip-moe MoE model"
            )
        return cls(
            type_names=metadata["type_names"].split(),
            elements=metadata[TYPE_ELEMENTS_KEY].split(),
            experts=metadata[TYPE_EXPERTS_KEY].split(),
            expert_names=metadata[EXPERT_NAMES_KEY].split(),
        )

    def to_metadata(self) -> Dict[str, str]:
        return {
            EXPERT_NAMES_KEY: " ".join(self.expert_names),
            TYPE_ELEMENTS_KEY: " ".join(self.elements),
            TYPE_EXPERTS_KEY: " ".join(self.experts),
        }

    def to_config(self) -> Dict[str, Dict[str, str]]:
        """The table as the ``composite_types`` mapping of a config (inverse of ``from_config``)."""
        return {
            name: {"element": element, "expert": expert}
            for name, element, expert in zip(self.type_names, self.elements, self.experts)
        }

    @property
    def default_expert(self) -> str:
        """Expert of atoms without a label: the first expert (label 0)."""
        return self.expert_names[0]

    def expert_label(self, expert: Optional[Union[str, int]] = None) -> int:
        """Label of ``expert``, given by name or label; ``None`` means ``default_expert``.

        Args:
            expert: expert name, integer label, or ``None``
        """
        if expert is None:
            return 0
        if isinstance(expert, str):
            if expert not in self.expert_names:
                raise ValueError(
                    f"default_expert `{expert}` is not one of the experts {self.expert_names}"
                )
            return self.expert_names.index(expert)
        if isinstance(expert, bool) or not isinstance(expert, (int, np.integer)):
            raise ValueError(
                f"an expert is a name or an integer label, got {expert!r}; the experts are "
                f"{self.expert_names}"
            )
        if not 0 <= expert < len(self.expert_names):
            raise ValueError(
                f"expert label {expert} is out of range: labels must be "
                f"0..{len(self.expert_names) - 1} for experts {self.expert_names}"
            )
        return int(expert)

    def type_lookup(self) -> np.ndarray:
        """``[atomic number, expert label] -> composite type index`` (-1: no such type)."""
        lookup = np.full((len(chemical_symbols), len(self.expert_names)), -1, dtype=np.int64)
        for index, (element, label) in enumerate(zip(self.elements, self.type_expert_index)):
            lookup[atomic_numbers[element], label] = index
        return lookup

    def check_labels(self, numbers, labels=None) -> np.ndarray:
        """Validated expert labels of atoms with atomic ``numbers``; returns them as int64.

        ``labels=None`` means every atom gets ``default_expert``. Errors name the problem:
        a label count or shape that does not match the atoms, non-integer or out-of-range
        labels, atomic numbers that are not elements, elements the model lacks, and elements
        the chosen expert has no composite type for.

        Args:
            numbers: atomic number of every atom, shape ``[num_atoms]``
            labels: one integer label per atom (shape ``[num_atoms]`` or ``[num_atoms, 1]``, as nequip writes per-atom fields), or ``None``
        """
        numbers = np.asarray(numbers)
        if numbers.ndim != 1 or not _is_integer(numbers):
            raise ValueError(
                f"atomic numbers must be one integer per atom, got shape {numbers.shape} "
                f"of {numbers.dtype}"
            )
        numbers = numbers.astype(np.int64)
        if labels is None:
            labels = np.full(len(numbers), self.expert_label(None), dtype=np.int64)
        else:
            labels = expert_label_array(labels, len(numbers), self.expert_names)
        not_elements = sorted(
            set(numbers[(numbers <= 0) | (numbers >= len(chemical_symbols))].tolist())
        )
        if not_elements:
            raise ValueError(f"atomic numbers {not_elements} are not elements")
        types = self.type_lookup()[numbers, labels]
        if (types < 0).any():
            self._raise_missing_types(numbers[types < 0], labels[types < 0])
        return labels

    def type_index(self, numbers, labels=None) -> np.ndarray:
        """Composite type index of every atom from its atomic number and expert label.

        Args:
            numbers: atomic number of every atom, shape ``[num_atoms]``
            labels: one integer expert label per atom, or ``None`` for ``default_expert``

        Returns:
            int64 array of indices into ``type_names``
        """
        labels = self.check_labels(numbers, labels)
        return self.type_lookup()[np.asarray(numbers, dtype=np.int64), labels]

    def _raise_missing_types(self, numbers: np.ndarray, labels: np.ndarray):
        pairs, counts = np.unique(np.stack([numbers, labels], axis=1), axis=0, return_counts=True)
        problems = []
        for (z, label), count in zip(pairs.tolist(), counts.tolist()):
            element, expert = chemical_symbols[z], self.expert_names[label]
            if element not in self.elements:
                why = f"the model has no element {element}"
            else:
                experts = [ex for el, ex in zip(self.elements, self.experts) if el == element]
                why = f"{element} has composite types only for experts {experts}"
            problems.append(f"({element}, {expert}) ({count} atoms: {why})")
        raise ValueError(
            "no composite type for (species, expert) "
            + ", ".join(problems)
            + f"; the model's composite types are {self.describe()}"
        )

    @property
    def element_names(self) -> List[str]:
        """Distinct elements, in order of first appearance in ``type_names``."""
        return list(dict.fromkeys(self.elements))

    @property
    def type_expert_index(self) -> List[int]:
        """Expert label of each composite type."""
        return [self.expert_names.index(e) for e in self.experts]

    def composite_type(self, element: str, expert: str) -> str:
        """Name of the composite type for (element, expert); errors if the model has none."""
        for name, el, ex in zip(self.type_names, self.elements, self.experts):
            if el == element and ex == expert:
                return name
        raise KeyError(
            f"the model has no composite type for element `{element}` with expert "
            f"`{expert}` (composite types: {self.describe()})"
        )

    def describe(self) -> str:
        return ", ".join(
            f"{n}=({el}, {ex})"
            for n, el, ex in zip(self.type_names, self.elements, self.experts)
        )


def expert_label_array(labels, num_atoms: int, expert_names: Sequence[str]) -> np.ndarray:
    """Per-atom expert labels as an int64 array ``[num_atoms]``, checked for shape and range.

    Args:
        labels: one integer label per atom (shape ``[num_atoms]`` or ``[num_atoms, 1]``)
        num_atoms: number of atoms
        expert_names: experts in label order
    """
    labels = np.asarray(labels)
    if labels.shape == (num_atoms, 1):
        labels = labels.reshape(num_atoms)
    if labels.ndim == 1 and len(labels) != num_atoms:
        raise ValueError(
            f"expert labels missing or extra: {len(labels)} labels for {num_atoms} atoms "
            "(one integer label per atom)"
        )
    if labels.shape != (num_atoms,) or not _is_integer(labels):
        raise ValueError(
            f"expert labels must be {num_atoms} integers (one per atom), "
            f"got shape {labels.shape} of {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= len(expert_names))]
    if len(bad):
        raise ValueError(
            f"expert labels {sorted(set(bad.tolist()))} are out of range: labels must be "
            f"0..{len(expert_names) - 1} for experts {list(expert_names)}"
        )
    return labels


def _is_integer(values: np.ndarray) -> bool:
    return values.size == 0 or np.issubdtype(values.dtype, np.integer)
