"""LAMMPS data files whose atom types are an MoE model's type names.

``pair_style allegro`` passes nothing but the atom type of each atom to the model. For a
static MoE an atom's expert therefore travels as its composite type: the data files written
here have one LAMMPS type per composite type, in the model's type order, with the element's
mass and the composite type name as type label, so that
``pair_coeff * * model.nequip.pt2 <type names>`` maps LAMMPS type ``t`` to model type ``t - 1``.
A gated MoE (``model_files.GatedTypes``) has plain element type names and no labels: its data
files are typed by species alone (``C O Pt``), the gate picks each atom's experts at run time.
Units are LAMMPS ``metal`` (Å), atom style ``atomic``.
"""

import dataclasses
import re
import warnings
from typing import Dict, List, Optional, Sequence

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.lammps import Prism
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from nequip_moe.keys import EXPERT_KEY
from nequip_moe.integrations.model_files import GatedTypes, TypeTable

# LAMMPS type labels: no leading digit, `#` or `*`, no whitespace
_TYPE_LABEL = re.compile(r"^[^\d#*\s]\S*$")


def write_lammps_data(path, atoms: Atoms, expert, table: TypeTable) -> None:
    """Write a LAMMPS data file with one atom type per type name of the model.

    Atoms are wrapped into the cell along periodic directions; along non-periodic ones they
    must lie inside it, as LAMMPS ``read_data`` drops atoms outside a non-periodic box.

    Args:
        path: output file
        atoms: the structure, with a 3D cell
        expert: per-atom expert labels; label ``k`` means ``table.expert_names[k]`` (ignored,
            may be ``None``, for a gated MoE: its atoms are typed by species)
        table: the model's composite-type table, or ``GatedTypes`` of a gated MoE
    """
    gated = isinstance(table, GatedTypes)
    types = table.type_index(atoms.numbers, None if gated else expert) + 1
    if atoms.cell.rank != 3:
        raise ValueError(
            "a LAMMPS data file needs a 3D cell; give the structure one "
            "(e.g. `atoms.center(vacuum=10.0)`)"
        )
    fractional = atoms.cell.scaled_positions(atoms.positions)
    outside = (~atoms.pbc) & np.any((fractional < -1e-8) | (fractional > 1 + 1e-8), axis=0)
    if outside.any():
        raise ValueError(
            f"atoms lie outside the cell along non-periodic cell vector(s) "
            f"{np.flatnonzero(outside).tolist()}; LAMMPS would lose them: enlarge the cell "
            "or make those directions periodic"
        )
    prism = Prism(np.asarray(atoms.cell), pbc=atoms.pbc)
    xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
    positions = prism.vector_to_lammps(atoms.positions, wrap=True)

    lines = [
        (
            "LAMMPS data file written by nequip-moe; atom types are the gated MoE's elements "
            f"(no expert labels, the gate {table.gate} weighs the experts): "
            if gated
            else "LAMMPS data file written by nequip-moe; atom types are the model's composite "
            "types: "
        )
        + " ".join(table.type_names),
        "",
        f"{len(atoms)} atoms",
        f"{len(table.type_names)} atom types",
        "",
        f"0.0 {xhi:.17g} xlo xhi",
        f"0.0 {yhi:.17g} ylo yhi",
        f"0.0 {zhi:.17g} zlo zhi",
    ]
    if prism.is_skewed():
        lines.append(f"{xy:.17g} {xz:.17g} {yz:.17g} xy xz yz")
    if all(_TYPE_LABEL.match(name) for name in table.type_names):
        lines += ["", "Atom Type Labels", ""]
        lines += [f"{t} {name}" for t, name in enumerate(table.type_names, start=1)]
    lines += ["", "Masses", ""]
    lines += [
        f"{t} {atomic_masses[atomic_numbers[element]]:.17g} # {name}"
        for t, (name, element) in enumerate(zip(table.type_names, table.elements), start=1)
    ]
    lines += ["", "Atoms # atomic", ""]
    lines += [
        f"{i} {t} {x:.17g} {y:.17g} {z:.17g}"
        for i, t, (x, y, z) in zip(range(1, len(atoms) + 1), types.tolist(), positions.tolist())
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# section names of LAMMPS data files (read_data); a section runs to the next one
_SECTIONS = {
    "Atoms", "Velocities", "Masses", "Ellipsoids", "Lines", "Triangles", "Bodies", "Bonds",
    "Angles", "Dihedrals", "Impropers", "Pair Coeffs", "PairIJ Coeffs", "Bond Coeffs",
    "Angle Coeffs", "Dihedral Coeffs", "Improper Coeffs", "BondBond Coeffs",
    "BondAngle Coeffs", "MiddleBondTorsion Coeffs", "EndBondTorsion Coeffs",
    "AngleTorsion Coeffs", "AngleAngleTorsion Coeffs", "BondBond13 Coeffs",
    "AngleAngle Coeffs", "Atom Type Labels", "Bond Type Labels", "Angle Type Labels",
    "Dihedral Type Labels", "Improper Type Labels",
}


@dataclasses.dataclass
class DataFileTypes:
    """The atom types of a LAMMPS data file: their number, type labels and masses.

    Args:
        num_types: number of atom types
        labels: type label of each labelled type (``Atom Type Labels``)
        masses: mass of each type given in ``Masses``
    """

    num_types: int
    labels: Dict[int, str]
    masses: Dict[int, float]


def read_data_file_types(path) -> DataFileTypes:
    """Number of atom types, ``Atom Type Labels`` and ``Masses`` of a LAMMPS data file.

    Args:
        path: LAMMPS data file
    """
    num_types, section = None, None
    sections: Dict[str, List[List[str]]] = {"Atom Type Labels": [], "Masses": []}
    with open(path) as f:
        next(f, None)  # the first line is a comment
        for line in f:
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            if text in _SECTIONS:
                section = text
            elif section is None and text.endswith("atom types"):
                num_types = int(text.split()[0])
            elif section in sections:
                sections[section].append(text.split())
    if num_types is None:
        raise ValueError(f"`{path}` is not a LAMMPS data file: it has no `N atom types` line")
    labels = {int(fields[0]): fields[1] for fields in sections["Atom Type Labels"]}
    label_types = {label: t for t, label in labels.items()}
    masses = {}
    for fields in sections["Masses"]:
        t = int(fields[0]) if fields[0].isdigit() else label_types.get(fields[0])
        if t is None:
            raise ValueError(
                f"`{path}`: Masses names type label `{fields[0]}`, which is not defined"
            )
        masses[t] = float(fields[1])
    return DataFileTypes(num_types, labels, masses)


def read_lammps_data(
    path, table: TypeTable, type_names: Optional[Sequence[str]] = None
) -> Atoms:
    """Read a data file and recover each atom's element and expert from its LAMMPS type.

    Args:
        path: LAMMPS data file (units ``metal``)
        table: the model's composite-type table, or ``GatedTypes`` of a gated MoE (elements
            only: no ``expert`` array)
        type_names: model type name of each LAMMPS type, as in the ``pair_coeff`` line
            (default: the file's type labels if it has them, else the model's type names in
            order)

    Returns:
        the structure (in the LAMMPS frame), with the per-atom ``expert`` array (static MoE) and
        the LAMMPS ``type`` array
    """
    if type_names is None:
        labels = read_data_file_types(path).labels
        type_names = (
            [labels.get(t, "") for t in range(1, max(labels) + 1)]
            if labels
            else table.type_names
        )
    unknown = [name for name in type_names if name not in table.type_names]
    if unknown:
        raise ValueError(
            f"`{path}`: atom type names {unknown} are not types of the model "
            f"(its types: {table.describe()})"
        )
    atoms = ase.io.read(path, format="lammps-data", units="metal")
    lammps_types = atoms.arrays["type"]
    bad = sorted(set(lammps_types[(lammps_types < 1) | (lammps_types > len(type_names))].tolist()))
    if bad:
        raise ValueError(
            f"`{path}`: atom types {bad} have no model type: the {len(type_names)} LAMMPS "
            f"types map to {list(type_names)}"
        )
    model_type = np.array([table.type_names.index(name) for name in type_names])
    model_type = model_type[lammps_types - 1]
    elements = np.array([atomic_numbers[element] for element in table.elements])
    if atoms.has("masses"):
        _warn_on_mass_mismatch(path, atoms.get_masses(), lammps_types, elements[model_type])
    atoms.numbers = elements[model_type]
    if not isinstance(table, GatedTypes):
        expert = np.array(table.type_expert_index, dtype=np.int64)
        atoms.arrays[EXPERT_KEY] = expert[model_type]
    return atoms


def _warn_on_mass_mismatch(path, masses, lammps_types, numbers):
    wrong = np.abs(masses - atomic_masses[numbers]) > 0.01 * atomic_masses[numbers]
    for t in sorted(set(lammps_types[wrong].tolist())):
        first = np.flatnonzero(wrong & (lammps_types == t))[0]
        warnings.warn(
            f"`{path}`: LAMMPS type {t} has mass {masses[first]:.4g} but maps to element "
            f"{chemical_symbols[numbers[first]]} ({atomic_masses[numbers[first]]:.4g}): "
            "is the type order the model's?",
            stacklevel=3,
        )
