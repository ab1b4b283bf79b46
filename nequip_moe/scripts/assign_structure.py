"""``nequip-moe assign STRUCTURE --model MODEL``: label one structure for a simulation.

Reads the composite-type table from the model file, assigns experts from region rules
(``nequip_moe.scripts.assign``), and writes the extxyz with the per-atom ``expert`` array, the
LAMMPS data file typed by composite types and the LAMMPS input, all or none. A gated MoE takes
no labels: its data file is typed by species.
"""

from nequip_moe.scripts.assign import flag_rules, read_frames, region_rules


def _read_structure(path, index):
    from ase import Atoms

    atoms = read_frames(path, index)
    if not isinstance(atoms, Atoms):
        raise ValueError(f"--index `{index}` must select one frame of `{path}`")
    return atoms


def _write_outputs(args, atoms, expert, table, script):
    """Write the requested extxyz, LAMMPS data and input files, all or none; returns their paths."""
    import pathlib

    import ase.io

    from nequip_moe.integrations.lammps_data import write_lammps_data
    from nequip_moe.scripts.outputs import write_all_or_nothing

    writers = []
    if args.out_xyz:
        writers.append((args.out_xyz, lambda p: ase.io.write(p, atoms, format="extxyz")))
    if args.out_lammps:
        writers.append((args.out_lammps, lambda p: write_lammps_data(p, atoms, expert, table)))
    if args.out_input:
        writers.append((args.out_input, lambda p: pathlib.Path(p).write_text(script)))
    write_all_or_nothing(writers)
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
    "host": "--host",
    "adsorbates": "--adsorbates",
}


def check_no_rules_for_gated(args, table):
    """Refuse region rules for a gated MoE (``GatedTypes``), naming the flags given."""
    from nequip_moe.integrations.lammps_input import GATED_COST_WEIGHTS

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
    if getattr(args, "cost_weights", None):
        raise ValueError(f"`{args.model}`: {GATED_COST_WEIGHTS}")


def _write_gated(args, atoms, table, lammps_model, pair_style):
    """A gated MoE: the data file typed by species, its input; no labels."""
    from nequip_moe.integrations.lammps_input import lammps_input

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


def _pair_style(args, metadata):
    """The input's pair style and the model file its ``pair_coeff`` names (``None``: unknown)."""
    from nequip_moe.integrations.lammps_input import PAIR_STYLES
    from nequip_moe.integrations.lammps_locality import compiled_pair_style, exact_pair_style
    from nequip_moe.integrations.model_files import is_compiled

    if args.pair_style is not None and args.pair_style not in PAIR_STYLES:
        raise ValueError(f"--pair-style `{args.pair_style}`: use one of {list(PAIR_STYLES)}")
    lammps_model, pair_style = args.pair_coeff_model, exact_pair_style(metadata)
    if is_compiled(args.model):
        try:
            pair_style = compiled_pair_style(metadata, args.model)
            lammps_model = lammps_model or args.model
        except ValueError:
            pass  # a `--target ase` file: the input names the file to compile for LAMMPS
    return lammps_model, args.pair_style or pair_style


def run_structure(args):
    """Label one structure for ``--model`` and write its extxyz, LAMMPS data and input."""
    from nequip_moe.keys import EXPERT_KEY
    from nequip_moe.data.regions import assign_experts, expert_summary
    from nequip_moe.integrations.lammps_input import lammps_input, parse_cost_weights
    from nequip_moe.integrations.model_files import GatedTypes, model_types, read_metadata

    atoms = _read_structure(args.structure, args.index or "-1")
    metadata = read_metadata(args.model)
    table = model_types(metadata, f"`{args.model}`")
    if isinstance(table, GatedTypes):
        check_no_rules_for_gated(args, table)
    lammps_model, pair_style = _pair_style(args, metadata)
    if isinstance(table, GatedTypes):
        return _write_gated(args, atoms, table, lammps_model, pair_style)
    cost_weights = (
        parse_cost_weights(args.cost_weights, table.expert_names) if args.cost_weights else None
    )
    if args.experts and args.experts.split(",") != list(table.expert_names):
        raise ValueError(
            f"--experts {args.experts} differ from the model's experts "
            f"{','.join(table.expert_names)}"
        )
    rules, settings, expert_of_rules = region_rules(args, table.expert_names)
    rules = rules + flag_rules(args, atoms, expert_of_rules)

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
