"""Check a LAMMPS input + data file + MoE model before running them.

``pair_style allegro`` / ``nequip`` map LAMMPS type ``k`` to the model type named ``k``-th in
``pair_coeff * * MODEL NAME1 NAME2 ...``; any name the model knows is accepted, so swapped
experts (``C O Pt_small Pt``) or element names only (``C O Pt Pt``) run silently with wrong
energies, and several LAMMPS types on one model type leave pair_allegro's per-edge-type cutoffs
of the extra types unset (refused, ``lammps_input.one_to_one_problem``). ``check_lammps_input``
verifies the names against the model's composite-type table, the data file's ``Atom Type
Labels`` (written by ``nequip-moe assign``) and its masses, and the pair style against the
model's compile target and its experts' locality.

Gated MoEs (metadata ``moe_gate_model``) have plain element type names (``pair_coeff * * MODEL
C O Pt``): the names must be the model's elements, and the data file's types are tied to them
by their type labels if it has any, else by their masses (a data file typed by species needs no
labels, unless the input checks them, as the inputs ``nequip-moe deploy`` writes do).
"""

import pathlib
from typing import List, Optional

from ase.data import atomic_masses, atomic_numbers
from nequip.nn.graph_model import PER_EDGE_TYPE_CUTOFF_KEY

from nequip_moe.integrations.lammps_data import read_data_file_types
from nequip_moe.integrations.lammps_input import LABELS_VARIABLE, one_to_one_problem
from nequip_moe.integrations.lammps_locality import (
    check_strictly_local,
    compiled_pair_style,
)
from nequip_moe.integrations.model_files import (
    GatedTypes,
    is_compiled,
    model_types,
    read_metadata,
)

_NEWTON = {"allegro": "on", "nequip": "off"}


def _commands(path: pathlib.Path) -> List[List[str]]:
    """The words of each command of an input script (comments dropped, ``&`` lines joined)."""
    commands, pending = [], ""
    for line in path.read_text().splitlines():
        text = pending + line.split("#", 1)[0].rstrip()
        if text.endswith("&"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.strip():
            commands.append(text.split())
    return commands


def _only(commands, name: str, path, example: str) -> List[str]:
    found = [c for c in commands if c[0] == name]
    if len(found) != 1:
        raise ValueError(f"`{path}` needs exactly one `{example}` line, it has {len(found)}")
    if any("$" in word for word in found[0]):
        raise ValueError(
            f"`{path}`: `{' '.join(found[0])}` uses a variable; check-lammps reads literal "
            "file names and type names only"
        )
    return found[0]


def check_lammps_input(input_file, model: Optional[str] = None) -> str:
    """Verify the type mapping of a LAMMPS input against its data file and the model.

    Args:
        input_file: LAMMPS input script with ``read_data``, ``pair_style allegro|nequip`` and
            ``pair_coeff * * MODEL NAMES...``
        model: the model file (default: the ``pair_coeff`` line's, relative to the input)

    Returns:
        a summary of the mapping (LAMMPS type -> label -> composite type (element, expert))

    Raises:
        ValueError: listing every problem found, each with its fix
    """
    input_file = pathlib.Path(input_file)
    if not input_file.is_file():
        raise FileNotFoundError(f"LAMMPS input `{input_file}` does not exist")
    commands = _commands(input_file)
    style = _only(commands, "pair_style", input_file, "pair_style allegro")
    coeff = _only(commands, "pair_coeff", input_file, "pair_coeff * * MODEL NAMES...")
    read_data = _only(commands, "read_data", input_file, "read_data FILE")
    if len(style) != 2 or style[1] not in _NEWTON:
        raise ValueError(
            f"`{input_file}`: check-lammps checks `pair_style allegro` or `pair_style nequip` "
            f"inputs, not `{' '.join(style)}`"
        )
    pair_style = style[1]
    if coeff[1:3] != ["*", "*"] or len(coeff) < 4:
        raise ValueError(f"`{input_file}`: write `pair_coeff * * MODEL NAMES...`")
    names = coeff[4:]
    model_path = pathlib.Path(model) if model else input_file.parent / coeff[3]
    data_path = input_file.parent / read_data[1]

    metadata = read_metadata(model_path)
    table = model_types(metadata, f"`{model_path.name}`")
    gated = isinstance(table, GatedTypes)
    kind = "types" if gated else "composite types"
    data = read_data_file_types(data_path)
    label_types = {label: t for t, label in data.labels.items()}
    for command in (c for c in commands if c[0] == "mass" and len(c) >= 3):
        t = int(command[1]) if command[1].isdigit() else label_types.get(command[1])
        if t is not None:  # `mass` commands after read_data override the data file's masses
            data.masses[t] = float(command[2])
    fix = f"pair_coeff * * {coeff[3]} {' '.join(table.type_names)}"
    problems = []

    if is_compiled(model_path):
        try:
            compiled = compiled_pair_style(metadata, model_path.name)
            if compiled != pair_style:
                problems.append(
                    f"`{model_path.name}` is compiled for pair_style {compiled}, the input "
                    f"says `pair_style {pair_style}`: use `pair_style {compiled}` "
                    f"(or compile with --target pair_{pair_style})"
                )
        except ValueError as e:
            problems.append(str(e))
    if pair_style == "allegro":
        try:
            check_strictly_local(metadata, model_path.name, "pair_style allegro")
        except ValueError as e:
            problems.append(str(e))
    newton = [c for c in commands if c[0] == "newton"]
    newton = newton[-1][1] if newton else "on"  # LAMMPS' default
    if newton != _NEWTON[pair_style]:
        problems.append(
            f"pair_style {pair_style} needs `newton {_NEWTON[pair_style]}`, the input has "
            f"`newton {newton}`"
        )

    unknown = [
        f"`{n}` (LAMMPS type {k})" for k, n in enumerate(names, 1) if n not in table.type_names
    ]
    if unknown:
        problems.append(
            f"pair_coeff names {', '.join(unknown)}, which the model does not have; its "
            + (
                f"types are plain elements: {table.describe()} (a gated MoE has no composite "
                "types or expert labels)"
                if gated
                else f"composite types are {table.describe()}"
            )
        )
    shared = one_to_one_problem(names, PER_EDGE_TYPE_CUTOFF_KEY in metadata)
    if shared:
        problems.append(shared)
    if len(names) != data.num_types:
        problems.append(
            f"`{data_path.name}` has {data.num_types} atom types but pair_coeff names "
            f"{len(names)}: name one {'element' if gated else 'composite type'} per LAMMPS type"
        )
    checks_labels = any(LABELS_VARIABLE in word for c in commands for word in c)
    if not data.labels and gated and checks_labels:
        problems.append(
            f"`{data_path.name}` has no Atom Type Labels, which the input checks: write it with "
            "`nequip-moe assign STRUCTURE --model MODEL --out-lammps FILE` (labels = elements)"
        )
    elif not data.labels and not gated:
        problems.append(
            f"`{data_path.name}` has no Atom Type Labels, so nothing ties its types to experts: "
            "write it with `nequip-moe assign` (labels = composite type names)"
        )
    for k, name in enumerate(names, 1):
        label = data.labels.get(k)
        if label is not None and label != name:
            problems.append(
                f"LAMMPS type {k} is labelled `{label}` in `{data_path.name}` but pair_coeff "
                f"maps it to `{name}`"
                + (
                    " (an element name: name the composite type)"
                    if name in atomic_numbers and not gated
                    else ""
                )
            )
        if name in table.type_names and k in data.masses:
            element = table.elements[table.type_names.index(name)]
            expected = atomic_masses[atomic_numbers[element]]
            if abs(data.masses[k] - expected) > 0.01 * expected:
                problems.append(
                    f"LAMMPS type {k} has mass {data.masses[k]:.4g} in `{data_path.name}`, but "
                    f"pair_coeff maps it to `{name}`, element {element} ({expected:.4g})"
                )
    if problems:
        labels = [data.labels.get(k) for k in range(1, data.num_types + 1)]
        if all(label in table.type_names for label in labels):
            fix = f"pair_coeff * * {coeff[3]} {' '.join(labels)}"
        raise ValueError(
            f"`{input_file}` does not map its LAMMPS types onto the model's {kind}:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + f"\n  fix: write the input with `nequip-moe deploy`/`assign`, or use `{fix}`"
        )
    if gated:
        rows = [
            f"  LAMMPS type {k} `{data.labels.get(k, '-')}` -> {name} (element; gate {table.gate})"
            for k, name in enumerate(names, 1)
        ]
    else:
        rows = [
            f"  LAMMPS type {k} `{data.labels[k]}` -> {name} "
            f"({table.elements[table.type_names.index(name)]}, "
            f"{table.experts[table.type_names.index(name)]})"
            for k, name in enumerate(names, 1)
        ]
    return (
        f"{input_file}: pair_style {pair_style} with `{model_path.name}` and "
        f"`{data_path.name}`: the type mapping checks out\n" + "\n".join(rows)
    )
