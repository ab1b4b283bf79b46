"""The composite-type table: which (element, expert) pair each model type name means.

An MoE model's ``type_names`` are composite types such as ``C O Pt Pt_small``. The table maps
each of them to a chemical element and an expert, travels in the model metadata (so a compiled
file tells what every LAMMPS type name means) and is what the data transform, the ASE
calculator and the LAMMPS helpers read.

In a config the table is a mapping from composite type name to ``{element, expert}``::

    composite_types:
      Pt: {element: Pt, expert: big}
      Pt_small: {element: Pt, expert: small}
"""

import dataclasses
from typing import Dict, List, Mapping, Sequence

from ase.data import atomic_numbers

# metadata keys (values are space-separated strings aligned with `type_names`)
EXPERT_NAMES_KEY = "moe_expert_names"
TYPE_ELEMENTS_KEY = "moe_type_elements"
TYPE_EXPERTS_KEY = "moe_type_experts"


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
