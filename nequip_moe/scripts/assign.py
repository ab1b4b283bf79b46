"""``nequip-moe assign``: give every atom an expert from region rules.

Two modes, sharing the rules (a YAML file, ``--preset``, ``--near``, ``--top-layers-depth``;
``nequip_moe.data.regions``):

- ``nequip-moe assign FRAMES.xyz --dataset OUT.xyz --experts big,small --rules R.yaml`` labels
  every frame of a (multi-frame) file with the per-atom ``expert`` array, no model needed: a
  training set for ``nequip-train`` (``assign_dataset``);
- ``nequip-moe assign STRUCTURE --model MODEL`` labels one structure for a simulation with a
  trained model and writes its extxyz, LAMMPS data file (composite types) and LAMMPS input
  (``assign_structure``).

Outputs are written to temporary files and renamed only once everything succeeded, so an error
never leaves a half-written output. This module imports nothing heavy until a command runs.
"""

import collections
import os

# rules-file settings (``nequip_moe.data.regions.RULES_FILE_SETTINGS``), for the help text
_SETTINGS_HELP = "default_expert, buffer_shells, shell_cutoff, buffer_width"


def add_parser(subparsers):
    from nequip_moe.scripts.deploy import add_balance_arguments

    parser = subparsers.add_parser(
        "assign",
        help="assign an expert to every atom from region rules: a dataset's frames "
        "(--dataset) or a structure for a model (--model)",
        description=(
            "Assign an expert to every atom from region rules (a YAML file and/or flags; "
            "later rules override earlier ones, flag rules come after file rules). With "
            "--dataset: label every frame of a file with the per-atom `expert` array (no model "
            "needed; --experts names the experts, high fidelity first). With --model: label one "
            "structure and write extxyz with the `expert` array and a LAMMPS data file whose "
            "atom types are the model's composite types."
        ),
    )
    parser.add_argument("structure", help="structure or frames file (any format ASE reads)")
    parser.add_argument(
        "--index",
        default=None,
        help="frame(s) to read: one frame with --model (default: the last), a slice with "
        "--dataset (default: all, `:`)",
    )
    parser.add_argument(
        "--model",
        help="the MoE model: compiled .nequip.pt2, package .nequip.zip or checkpoint (needed "
        "without --dataset; with it, the expert names and composite types are checked against it)",
    )
    parser.add_argument(
        "--dataset",
        metavar="OUT.xyz",
        help="label every frame and write them (extxyz, energies and forces kept) with the "
        "per-atom `expert` array; no model needed",
    )
    parser.add_argument(
        "--experts",
        metavar="NAMES",
        help="expert names in label order, high fidelity first, e.g. big,small (with --dataset; "
        "default: the --model's)",
    )
    parser.add_argument(
        "--host",
        metavar="ELEMENT",
        help="host element of --preset (e.g. Fe with --preset adsorbate_host); with --dataset "
        "every frame must contain it (default: the preset's host, if any)",
    )
    parser.add_argument(
        "--adsorbates",
        metavar="ELEMENTS",
        help="adsorbate elements (comma-separated) of --preset adsorbate_host, e.g. H; --host "
        "is its host",
    )
    parser.add_argument(
        "--allow-no-host",
        action="store_true",
        help="with --dataset: accept frames without a host atom (e.g. gas-phase molecules)",
    )
    parser.add_argument(
        "--rules",
        metavar="YAML",
        help="YAML file: a list of rules (mappings with `kind`), or a mapping with `rules` "
        f"and optionally `preset`, {_SETTINGS_HELP}",
    )
    parser.add_argument(
        "--preset",
        help="a named rule set applied before the other rules: adsorbate_host (--adsorbates, "
        "host atoms bonded to them and under-coordinated --host atoms, the bulk coordination "
        "from the host's crystal, with one buffer shell, get --expert, the rest --default) or "
        "pt_co_coordination (the same for CO on Pt with the Pt+CO example's settings)",
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
        help="expert of the atoms selected by --preset, --near and --top-layers-depth "
        "(default: the first expert)",
    )
    parser.add_argument(
        "--default",
        dest="default_expert",
        metavar="EXPERT",
        help="expert of atoms no rule selects (default: the rules file's, else the last expert)",
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
        "shells, e.g. the low-fidelity expert's cutoff",
    )
    parser.add_argument(
        "--shell-cutoff",
        type=float,
        metavar="R",
        help="neighbour distance (A) of one buffer shell, between two neighbour shells "
        "(default: the preset's, else 1.2 x the median nearest-neighbour distance)",
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
        help="pair style of the input, allegro or nequip (default: MODEL's compile target; for "
        "an uncompiled MODEL allegro if its experts are strictly local, else nequip)",
    )
    add_balance_arguments(parser)
    parser.set_defaults(func=run)


def _near_rule(text, expert):
    from nequip_moe.data.rules import Near

    species, _, cutoff = text.partition(":")
    try:
        return Near(expert=expert, species=species.split(","), cutoff=float(cutoff))
    except ValueError as e:
        raise ValueError(
            f"--near `{text}`: expected SPECIES:CUTOFF such as C,O:4.0 ({e})"
        ) from None


def flag_rules(args, atoms, expert):
    """The rules of ``--near`` and ``--top-layers-depth`` for ``atoms``."""
    from nequip_moe.data.rules import Depth

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


def region_rules(args, expert_names):
    """Rules of the rules file and ``--preset`` (in that order: preset first), the
    ``assign_experts`` settings (flags over file over preset) and the expert of flag rules."""
    from nequip_moe.data.regions import preset_rules, read_rules_file

    rules, settings = read_rules_file(args.rules) if args.rules else ([], {})
    flag_settings = {
        "default_expert": args.default_expert,
        "buffer_shells": args.buffer_shells,
        "shell_cutoff": args.shell_cutoff,
        "buffer_width": args.buffer_width,
    }
    settings.update({k: v for k, v in flag_settings.items() if v is not None})
    settings.setdefault("default_expert", expert_names[-1])
    expert_of_rules = args.expert or expert_names[0]
    if args.preset:
        preset, preset_settings = preset_rules(
            {
                "name": args.preset,
                "expert": expert_of_rules,
                "default_expert": settings["default_expert"],
                **({"host": args.host} if args.host else {}),
                **({"adsorbates": args.adsorbates.split(",")} if args.adsorbates else {}),
                # a buffer by distance replaces the preset's buffer shell
                **({"buffer_width": settings["buffer_width"]} if "buffer_width" in settings else {}),
            }
        )
        rules = preset + rules
        for key, value in preset_settings.items():
            settings.setdefault(key, value)
    if not rules and not args.near and args.top_layers_depth is None:
        raise ValueError(
            "no region rules: give --preset, --rules, --near or --top-layers-depth"
        )
    return rules, settings, expert_of_rules


def read_frames(path, index):
    """The frames ``index`` selects in ``path`` (a list; one ``Atoms`` for a single index)."""
    import ase.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f"structure file `{path}` does not exist")
    try:
        return ase.io.read(path, index=index)
    except Exception as e:
        raise ValueError(f"cannot read structure `{path}`: {e}") from e


def run(args):
    if args.dataset:
        from nequip_moe.scripts.assign_dataset import run_dataset

        return run_dataset(args)
    if not args.model:
        raise ValueError(
            "give --model MODEL (label one structure for a simulation) or --dataset OUT.xyz "
            "with --experts (label every frame of a training set, no model needed)"
        )
    from nequip_moe.scripts.assign_structure import run_structure

    return run_structure(args)
