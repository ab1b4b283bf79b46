"""``nequip-moe assign STRUCTURE --model MODEL``: give every atom an expert from region rules.

Reads the composite-type table from the model file (so names cannot drift from the model),
assigns experts with ``nequip_moe.data.regions``, writes an extxyz file with the per-atom
``expert`` array and a LAMMPS data file whose atom types are the model's composite types, and
prints a summary and the matching ``pair_coeff`` line. Outputs are written to temporary files
and renamed only once everything succeeded, so an error never leaves a half-written output.
"""

import collections
import os

import ase.io
import yaml
from ase import Atoms

from nequip_moe._keys import EXPERT_KEY
from nequip_moe.data.regions import (
    Depth,
    Near,
    assign_experts,
    expert_summary,
    rule_from_dict,
)
from nequip_moe.integrations.lammps_data import (
    composite_type_indices,
    pair_coeff_line,
    write_lammps_data,
)
from nequip_moe.integrations.model_files import is_compiled, read_composite_table

_FILE_SETTINGS = ("default_expert", "buffer_shells", "shell_cutoff")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "assign",
        help="assign an expert to every atom of a structure from region rules",
        description=(
            "Assign an expert to every atom from region rules (a YAML file and/or flags; "
            "later rules override earlier ones, flag rules come after file rules), then "
            "write extxyz with the per-atom `expert` array and a LAMMPS data file whose "
            "atom types are the model's composite types."
        ),
    )
    parser.add_argument("structure", help="structure file (any format ASE reads)")
    parser.add_argument(
        "--index", default="-1", help="frame of a multi-frame file (default: the last)"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the MoE model: compiled .nequip.pt2, package .nequip.zip or checkpoint",
    )
    parser.add_argument(
        "--rules",
        metavar="YAML",
        help="YAML file: a list of rules (mappings with `kind`), or a mapping with `rules` "
        f"and optionally {', '.join(_FILE_SETTINGS)}",
    )
    parser.add_argument(
        "--near",
        action="append",
        default=[],
        metavar="SPECIES:CUTOFF",
        help="select atoms of SPECIES (comma-separated) and atoms within CUTOFF (A) of them, "
        "e.g. C,O:4.0; may repeat",
    )
    parser.add_argument(
        "--top-layers-depth",
        type=float,
        metavar="DEPTH",
        help="select atoms at most DEPTH (A) below the surface along z (and all above it)",
    )
    parser.add_argument(
        "--surface",
        choices=["top", "bottom", "both"],
        default="top",
        help="surface(s) for --top-layers-depth (default: top)",
    )
    parser.add_argument(
        "--surface-species",
        metavar="SPECIES",
        help="elements (comma-separated) whose outermost atom defines the surface for "
        "--top-layers-depth (default: the most abundant element)",
    )
    parser.add_argument(
        "--expert",
        help="expert of the atoms selected by --near and --top-layers-depth "
        "(default: the model's first expert)",
    )
    parser.add_argument(
        "--default",
        dest="default_expert",
        metavar="EXPERT",
        help="expert of atoms no rule selects (default: the rules file's, else the model's "
        "last expert)",
    )
    parser.add_argument(
        "--buffer-shells",
        type=int,
        metavar="N",
        help="grow each rule's region by this many neighbour shells (default: 0)",
    )
    parser.add_argument(
        "--shell-cutoff",
        type=float,
        metavar="R",
        help="neighbour distance (A) of one buffer shell, between the first and second "
        "neighbour shell (e.g. 3.3 for Pt; default: 1.2 x the median nearest-neighbour distance)",
    )
    parser.add_argument(
        "--out-xyz", metavar="PATH", help="output extxyz with the per-atom `expert` array"
    )
    parser.add_argument(
        "--out-lammps", metavar="PATH", help="output LAMMPS data file (composite atom types)"
    )
    parser.add_argument(
        "--pair-coeff-model",
        metavar="PATH",
        help="model path in the printed pair_coeff line (default: MODEL if it is a "
        ".nequip.pt2)",
    )
    parser.set_defaults(func=run)


def _read_rules_file(path):
    """Rules and settings (``default_expert``, ``buffer_shells``, ``shell_cutoff``) of a file."""
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"rules file `{path}` is not valid YAML: {e}") from e
    if isinstance(config, list):
        return [rule_from_dict(rule) for rule in config], {}
    if not isinstance(config, dict) or not isinstance(config.get("rules"), list):
        raise ValueError(
            f"rules file `{path}` must hold a list of rules or a mapping with a `rules` list"
        )
    unknown = sorted(set(config) - {"rules", *_FILE_SETTINGS})
    if unknown:
        raise ValueError(
            f"rules file `{path}`: unknown keys {unknown}; allowed: rules, "
            + ", ".join(_FILE_SETTINGS)
        )
    rules = [rule_from_dict(rule) for rule in config["rules"]]
    return rules, {k: config[k] for k in _FILE_SETTINGS if k in config}


def _near_rule(text, expert):
    species, _, cutoff = text.partition(":")
    try:
        return Near(expert=expert, species=species.split(","), cutoff=float(cutoff))
    except ValueError as e:
        raise ValueError(
            f"--near `{text}`: expected SPECIES:CUTOFF such as C,O:4.0 ({e})"
        ) from None


def _flag_rules(args, atoms, expert):
    rules = [_near_rule(text, expert) for text in args.near]
    if args.top_layers_depth is not None:
        if args.surface_species:
            species = args.surface_species.split(",")
        else:
            species = [collections.Counter(atoms.get_chemical_symbols()).most_common(1)[0][0]]
        rules.append(
            Depth(
                expert=expert,
                depth=args.top_layers_depth,
                surface=args.surface,
                species=species,
            )
        )
    return rules


def _read_structure(path, index):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"structure file `{path}` does not exist")
    try:
        atoms = ase.io.read(path, index=index)
    except Exception as e:
        raise ValueError(f"cannot read structure `{path}`: {e}") from e
    if not isinstance(atoms, Atoms):
        raise ValueError(f"--index `{index}` must select one frame of `{path}`")
    return atoms


def _write_all_or_nothing(writers):
    """Run ``write(tmp_path)`` for each ``(path, write)``; rename into place only if all succeed."""
    temporary = {}
    try:
        for path, write in writers:
            directory, name = os.path.split(os.path.abspath(path))
            temporary[path] = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
            write(temporary[path])
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def run(args):
    atoms = _read_structure(args.structure, args.index)
    rules, settings = _read_rules_file(args.rules) if args.rules else ([], {})
    table = read_composite_table(args.model)
    flag_settings = {
        "default_expert": args.default_expert,
        "buffer_shells": args.buffer_shells,
        "shell_cutoff": args.shell_cutoff,
    }
    settings.update({k: v for k, v in flag_settings.items() if v is not None})
    settings.setdefault("default_expert", table.expert_names[-1])
    rules = rules + _flag_rules(args, atoms, args.expert or table.expert_names[0])
    if not rules:
        raise ValueError("no region rules: give --rules, --near or --top-layers-depth")

    expert = assign_experts(atoms, rules, table.expert_names, **settings)
    composite_type_indices(atoms, expert, table)  # every (species, expert) must exist
    atoms.arrays[EXPERT_KEY] = expert

    writers = []
    if args.out_xyz:
        writers.append((args.out_xyz, lambda p: ase.io.write(p, atoms, format="extxyz")))
    if args.out_lammps:
        writers.append((args.out_lammps, lambda p: write_lammps_data(p, atoms, expert, table)))
    _write_all_or_nothing(writers)

    print(f"{args.structure}: {len(atoms)} atoms; model types {' '.join(table.type_names)}")
    print(
        f"default expert: {settings['default_expert']}; "
        f"buffer shells: {settings.get('buffer_shells', 0)}"
    )
    for rule in rules:
        print(f"  rule: {rule}")
    print(f"{'expert':<12}{'atoms':>8}{'fraction':>10}")
    for name, count, fraction in expert_summary(expert, table.expert_names):
        print(f"{name:<12}{count:>8}{fraction:>10.3f}")
    for path, _ in writers:
        print(f"wrote {path}")

    model_file = args.pair_coeff_model or (args.model if is_compiled(args.model) else None)
    print("LAMMPS input:")
    print("  units metal\n  atom_style atomic\n  newton on")
    if args.out_lammps:
        print(f"  read_data {args.out_lammps}")
    print("  pair_style allegro")
    print("  " + pair_coeff_line(table, model_file or "model.nequip.pt2"))
    if model_file is None:
        print(
            "  # model.nequip.pt2: the model compiled with `nequip-compile --mode aotinductor "
            "--target pair_allegro` (or pass --pair-coeff-model)"
        )
