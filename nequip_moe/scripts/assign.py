"""``nequip-moe assign STRUCTURE --model MODEL``: give every atom an expert from region rules.

Reads the composite-type table from the model file (so names cannot drift from the model),
assigns experts with ``nequip_moe.data.regions``, writes an extxyz file with the per-atom
``expert`` array and a LAMMPS data file whose atom types are the model's composite types (with
them as ``Atom Type Labels``), and writes (``--out-input``) or prints the matching LAMMPS input
(``nequip_moe.integrations.lammps_input``: type-label check, ``pair_coeff`` from the labels,
load balancing weighted by ``--cost-weights``). Outputs are written to temporary files
and renamed only once everything succeeded, so an error never leaves a half-written output.

A gated MoE (metadata ``moe_gate_model``) takes no labels: its gate weighs the experts from
each atom's neighbourhood at run time. Region rules are refused for it with a message saying
so; without rules, ``assign`` writes the structure's LAMMPS data file typed by species (type
labels = the model's element names) and the matching input (``pair_coeff * * MODEL C O Pt``).
"""

import collections
import os
import pathlib

import ase.io
from ase import Atoms

from nequip_moe._keys import EXPERT_KEY
from nequip_moe.data.regions import (
    RULES_FILE_SETTINGS,
    Depth,
    Near,
    assign_experts,
    expert_summary,
    PRESETS,
    preset_rules,
    read_rules_file,
)
from nequip_moe.integrations.lammps_data import write_lammps_data
from nequip_moe.integrations.lammps_input import (
    GATED_COST_WEIGHTS,
    PAIR_STYLES,
    lammps_input,
    parse_cost_weights,
)
from nequip_moe.integrations.lammps_locality import compiled_pair_style, exact_pair_style
from nequip_moe.integrations.model_files import GatedTypes, is_compiled, model_types, read_metadata
from nequip_moe.scripts.deploy import add_balance_arguments


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
        f"and optionally {', '.join(RULES_FILE_SETTINGS)}",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named rule set applied before the other rules, e.g. pt_co_coordination: C, O, "
        "Pt bonded to them and under-coordinated Pt (surfaces, steps, vertices, vacancies; by "
        "coordination, not height) with one buffer shell get --expert, the rest --default",
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
        "--buffer-width",
        type=float,
        metavar="A",
        help="grow each rule's region by every atom within this distance (A) instead of by "
        "shells, e.g. the small expert's cutoff (the Pt+CO example: --preset "
        "pt_co_coordination --buffer-width 4.5)",
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
        "--out-input",
        metavar="PATH",
        help="output LAMMPS input script for the data file (default: print it)",
    )
    parser.add_argument(
        "--pair-coeff-model",
        metavar="PATH",
        help="model path in the input's pair_coeff line (default: MODEL if it is a "
        ".nequip.pt2)",
    )
    parser.add_argument(
        "--pair-style",
        choices=PAIR_STYLES,
        help="pair style of the input (default: MODEL's compile target; for an uncompiled "
        "MODEL allegro if its experts are strictly local, else nequip)",
    )
    add_balance_arguments(parser)
    parser.set_defaults(func=run)


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


def _write_outputs(args, atoms, expert, table, script):
    """Write the requested extxyz, LAMMPS data and input files, all or none; returns their paths."""
    writers = []
    if args.out_xyz:
        writers.append((args.out_xyz, lambda p: ase.io.write(p, atoms, format="extxyz")))
    if args.out_lammps:
        writers.append((args.out_lammps, lambda p: write_lammps_data(p, atoms, expert, table)))
    if args.out_input:
        writers.append((args.out_input, lambda p: pathlib.Path(p).write_text(script)))
    _write_all_or_nothing(writers)
    return [path for path, _ in writers]


def _report_outputs(args, written, script, lammps_model, pair_style):
    """Print the written paths, the model file the input names and the input if not written."""
    for path in written:
        print(f"wrote {path}")
    if lammps_model is None:
        print(
            "model.nequip.pt2 in the LAMMPS input: the model compiled with `nequip-compile "
            f"--mode aotinductor --target pair_{pair_style}` (or pass --pair-coeff-model)"
        )
    if not args.out_input:
        print("LAMMPS input:")
        print("".join(f"  {line}\n" for line in script.splitlines()), end="")


_RULE_OPTIONS = {
    "preset": "--preset",
    "rules": "--rules",
    "near": "--near",
    "top_layers_depth": "--top-layers-depth",
    "expert": "--expert",
    "default_expert": "--default",
    "buffer_shells": "--buffer-shells",
    "buffer_width": "--buffer-width",
    "shell_cutoff": "--shell-cutoff",
    "surface_species": "--surface-species",
}


def _check_no_rules_for_gated(args, table: GatedTypes):
    given = [
        flag
        for name, flag in _RULE_OPTIONS.items()
        if getattr(args, name, None) not in (None, [], "")
    ]
    if given:
        raise ValueError(
            f"`{args.model}` is a gated MoE (gate {table.gate}): it takes no expert labels, its "
            "gate weighs the experts from each atom's neighbourhood while the simulation runs, "
            f"so there are no regions to assign: drop {', '.join(given)}. Without them, "
            "`nequip-moe assign STRUCTURE --model MODEL --out-lammps FILE` writes the data "
            f"file typed by species ({' '.join(table.type_names)}) and its LAMMPS input"
        )
    if args.cost_weights:
        raise ValueError(f"`{args.model}`: {GATED_COST_WEIGHTS}")


def _write_gated(args, atoms, table: GatedTypes, lammps_model, pair_style):
    """A gated MoE: the data file typed by species, its input; no labels."""
    table.type_index(atoms.numbers)  # every element must be a type of the model
    if "expert" in atoms.arrays:
        del atoms.arrays["expert"]  # labels mean nothing to a gated MoE
    script = lammps_input(
        lammps_model or "model.nequip.pt2",
        table,
        args.out_lammps or "system.data",
        pair_style=pair_style,
        balance=args.balance,
    )
    written = _write_outputs(args, atoms, None, table, script)
    print(
        f"{args.structure}: {len(atoms)} atoms; gated MoE (gate {table.gate}): no expert labels "
        f"to assign, atoms typed by species {' '.join(table.type_names)}"
    )
    _report_outputs(args, written, script, lammps_model, pair_style)


def run(args):
    atoms = _read_structure(args.structure, args.index)
    metadata = read_metadata(args.model)
    table = model_types(metadata, f"`{args.model}`")
    if isinstance(table, GatedTypes):
        _check_no_rules_for_gated(args, table)
    rules, settings = read_rules_file(args.rules) if args.rules else ([], {})
    lammps_model, pair_style = args.pair_coeff_model, exact_pair_style(metadata)
    if is_compiled(args.model):
        try:
            pair_style = compiled_pair_style(metadata, args.model)
            lammps_model = lammps_model or args.model
        except ValueError:
            pass  # a `--target ase` file: the input names the file to compile for LAMMPS
    pair_style = args.pair_style or pair_style
    if isinstance(table, GatedTypes):
        return _write_gated(args, atoms, table, lammps_model, pair_style)
    cost_weights = (
        parse_cost_weights(args.cost_weights, table.expert_names) if args.cost_weights else None
    )
    flag_settings = {
        "default_expert": args.default_expert,
        "buffer_shells": args.buffer_shells,
        "shell_cutoff": args.shell_cutoff,
        "buffer_width": args.buffer_width,
    }
    settings.update({k: v for k, v in flag_settings.items() if v is not None})
    settings.setdefault("default_expert", table.expert_names[-1])
    expert_of_rules = args.expert or table.expert_names[0]
    if args.preset:
        preset, preset_settings = preset_rules(
            {
                "name": args.preset,
                "expert": expert_of_rules,
                "default_expert": settings["default_expert"],
                # a buffer by distance replaces the preset's buffer shell
                **({"buffer_width": settings["buffer_width"]} if "buffer_width" in settings else {}),
            }
        )
        rules = preset + rules
        for key, value in preset_settings.items():
            settings.setdefault(key, value)
    rules = rules + _flag_rules(args, atoms, expert_of_rules)
    if not rules:
        raise ValueError(
            "no region rules: give --preset, --rules, --near or --top-layers-depth"
        )

    expert = assign_experts(atoms, rules, table.expert_names, **settings)
    table.check_labels(atoms.numbers, expert)  # every (species, expert) must exist
    atoms.arrays[EXPERT_KEY] = expert

    script = lammps_input(
        lammps_model or "model.nequip.pt2",
        table,
        args.out_lammps or "system.data",
        pair_style=pair_style,
        cost_weights=cost_weights,
        balance=args.balance,
    )
    written = _write_outputs(args, atoms, expert, table, script)

    print(f"{args.structure}: {len(atoms)} atoms; model types {' '.join(table.type_names)}")
    print(
        f"default expert: {settings['default_expert']}; "
        f"buffer shells: {settings.get('buffer_shells', 0)}; "
        f"buffer width: {settings.get('buffer_width') or 0} A"
    )
    for rule in rules:
        print(f"  rule: {rule}")
    print(f"{'expert':<12}{'atoms':>8}{'fraction':>10}")
    for name, count, fraction in expert_summary(expert, table.expert_names):
        print(f"{name:<12}{count:>8}{fraction:>10.3f}")
    _report_outputs(args, written, script, lammps_model, pair_style)
