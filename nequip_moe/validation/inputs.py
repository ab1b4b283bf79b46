"""The user's inputs of a validation, read and checked before any measure runs.

- ``read_test_frames``: labelled frames (energy and forces), with the per-atom ``expert``
  labels a static MoE needs, from the file or from region rules;
- ``host_element``: the crystal the bulk measures use: given, else the element every expert
  knows (the most abundant in the test frames if several);
- ``bulk_structure``: the bulk structure from a file, else built from the element (and the
  lattice and constants given), its lattice constant fitted with a model if not given.
"""

import collections
import pathlib
import warnings
from typing import List, Optional, Sequence, Tuple

from ase import Atoms
from ase.calculators.calculator import Calculator

from nequip_moe.keys import EXPERT_KEY
from nequip_moe.validation.bulk import fit_lattice
from nequip_moe.validation.crystal import host_bulk
from nequip_moe.validation.models import ModelUnderTest


def read_frames(path, what: str) -> List[Atoms]:
    """All frames of a file any ASE reader reads; errors name ``what`` the file is for."""
    import ase.io

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file `{path}` does not exist")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as e:
        raise ValueError(f"cannot read the {what} file `{path}`: {e}") from e
    if not frames:
        raise ValueError(f"the {what} file `{path}` holds no frames")
    return list(frames)


def read_test_frames(path, model: ModelUnderTest, rules=None, what: str = "test",
                     labelled: bool = True) -> List[Atoms]:
    """Frames for the model: energy and forces on each (``labelled``); for a static MoE the
    per-atom ``expert`` labels from ``rules`` (a rules file, as ``nequip-moe assign --rules``)
    or the file's.

    Args:
        path: extxyz (or any ASE-readable) file
        model: the MoE under test
        rules: optional region rules file; labels every frame (replacing the file's labels)
        what: what the file is for, in error messages
        labelled: every frame must carry reference energy and forces
    """
    from nequip_moe.data.regions import assign_experts, read_rules_file

    frames = read_frames(path, what)
    if rules is not None:
        if model.gated:
            raise ValueError(
                f"`{model.path}` is a gated MoE: its gate, not region rules, picks each atom's "
                "experts; drop --rules"
            )
        rule_list, settings = read_rules_file(rules)
        settings.setdefault("default_expert", model.expert_names[-1])
    for k, atoms in enumerate(frames):
        where = f"{what} frame {k} of `{path}`"
        results = atoms.calc.results if atoms.calc is not None else {}
        missing = [key for key in ("energy", "forces") if key not in results]
        if labelled and missing:
            raise ValueError(f"{where} has no {' and '.join(missing)}: {what} frames must be labelled")
        if model.gated:
            model.table.type_index(atoms.numbers)  # every element must be a type
            continue
        if rules is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a rule selecting nothing in a frame is fine
                atoms.arrays[EXPERT_KEY] = assign_experts(atoms, rule_list, model.expert_names, **settings)
        elif EXPERT_KEY not in atoms.arrays:
            raise ValueError(
                f"{where} has no per-atom `expert` labels: pass --rules RULES.yaml, or label the "
                "frames with `nequip-moe assign FRAMES --dataset OUT --experts ... --rules ...`"
            )
        try:
            atoms.arrays[EXPERT_KEY] = model.table.check_labels(atoms.numbers, atoms.arrays[EXPERT_KEY])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return frames


def host_element(model: ModelUnderTest, frames: Sequence[Atoms], element: Optional[str] = None) -> str:
    """The host element: ``element`` if given, else the one element every expert knows, else
    the most abundant of those in the test frames.

    Args:
        model: the MoE under test
        frames: test frames (may be empty)
        element: the element given by the user
    """
    common = [e for e in model.known_elements(0)
              if all(e in model.known_elements(k) for k in range(len(model.expert_names)))]
    if element is not None:
        if element not in common:
            raise ValueError(
                f"--element {element}: every expert of `{model.path}` must know the bulk's "
                f"element; they all know {', '.join(common) or 'none'}"
            )
        return element
    counts = collections.Counter(s for a in frames for s in a.get_chemical_symbols() if s in common)
    if len(common) == 1:
        return common[0]
    if counts:
        return counts.most_common(1)[0][0]
    raise ValueError(
        f"cannot tell the host crystal: the experts all know {', '.join(common) or 'no element'}; "
        "give --element (and --lattice, --a) or --bulk"
    )


def bulk_structure(
    model: ModelUnderTest,
    frames: Sequence[Atoms],
    bulk: Optional[str] = None,
    element: Optional[str] = None,
    lattice: Optional[str] = None,
    a: Optional[float] = None,
    c: Optional[float] = None,
    fitter: Optional[Calculator] = None,
) -> Tuple[Atoms, dict]:
    """The host's bulk structure and how it was obtained.

    Args:
        model: the MoE under test
        frames: test frames (to tell the host element)
        bulk: a bulk structure file (used as it is)
        element, lattice, a, c: the crystal to build (``crystal.host_bulk``)
        fitter: calculator whose equilibrium volume sets the lattice constant when ``a`` is not
            given (e.g. the reference model or the high-fidelity expert)
    """
    from nequip_moe.data.neighbours import read_bulk

    if bulk is not None:
        if any(v is not None for v in (element, lattice, a, c)):
            raise ValueError("give --bulk or --element/--lattice/--a/--c, not both")
        atoms = read_bulk(bulk)
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(model.known_elements(model.low)))
        if unknown:
            raise ValueError(
                f"the bulk structure `{bulk}` holds {', '.join(unknown)}, which the low-fidelity "
                "expert does not know: give the host crystal"
            )
        return atoms, {"source": str(bulk), "formula": atoms.get_chemical_formula()}
    host = host_element(model, frames, element)
    atoms = host_bulk(host, lattice, a, c)
    info = {"source": "built", "element": host, "lattice": lattice or "reference"}
    if a is None:
        if fitter is None:
            raise ValueError(f"no model to fit the lattice constant of {host} with: give --a")
        atoms = fit_lattice(fitter, atoms)
        info["lattice_constant"] = "fitted"
    info["cell_lengths_a"] = [float(x) for x in atoms.cell.lengths()]
    info["formula"] = atoms.get_chemical_formula()
    return atoms, info
