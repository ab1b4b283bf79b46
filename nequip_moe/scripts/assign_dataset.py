"""``nequip-moe assign FRAMES --dataset OUT.xyz --experts big,small --rules R.yaml``: label a dataset.

Every frame of the file gets the per-atom ``expert`` array from the region rules (label ``k``
means the ``k``-th of ``--experts``, high fidelity first), no model needed; energies, forces,
stress and other arrays are kept. Prints each frame's high-fidelity fraction. Everything is
checked before anything is written, and the output is written all or nothing:

- the rules name only experts of ``--experts`` and only elements found in the frames;
- every frame holds the host element (``--host``, else the preset's), unless
  ``--allow-no-host`` (e.g. gas-phase molecules);
- with ``--model``: the expert names are the model's and every (element, expert) pair is one
  of its composite types.
"""

import warnings

from nequip_moe.scripts.assign import flag_rules, read_frames, region_rules


def _expert_names(args, table):
    """Expert names from ``--experts`` and/or the model's table (which must agree)."""
    names = [name.strip() for name in args.experts.split(",")] if args.experts else None
    if names is not None and (len(names) < 2 or not all(names) or len(set(names)) < len(names)):
        raise ValueError(
            f"--experts `{args.experts}`: give at least two distinct expert names, high "
            "fidelity first, e.g. big,small"
        )
    if table is None:
        if names is None:
            raise ValueError("--dataset needs --experts (e.g. big,small) or --model")
        return names
    if names is not None and names != list(table.expert_names):
        raise ValueError(
            f"--experts {','.join(names)} differ from the model's experts "
            f"{','.join(table.expert_names)}"
        )
    return list(table.expert_names)


def _model_table(args):
    if not args.model:
        return None
    from nequip_moe.integrations.model_files import GatedTypes, model_types, read_metadata

    table = model_types(read_metadata(args.model), f"`{args.model}`")
    if isinstance(table, GatedTypes):
        raise ValueError(
            f"`{args.model}` is a gated MoE (gate {table.gate}): it takes no expert labels, so "
            "there is no dataset to label for it; train it on unlabelled frames"
        )
    return table


def _host(args):
    """The host element frames must contain: ``--host``, else the preset's, else ``None``."""
    from nequip_moe.data.regions import preset_host, rules_file_host

    if args.host:
        return args.host
    if args.preset:
        return preset_host({"name": args.preset})
    return rules_file_host(args.rules) if args.rules else None


def _check_frames(frames, rules, host, args):
    """Refuse rules naming elements no frame holds, and frames without the host."""
    from nequip_moe.data.regions import rule_elements

    present = {symbol for atoms in frames for symbol in atoms.get_chemical_symbols()}
    absent = [e for e in rule_elements(rules) if e not in present]
    if absent:
        raise ValueError(
            f"the rules name {', '.join(absent)}, which no frame of `{args.structure}` contains "
            f"(its elements: {', '.join(sorted(present))})"
        )
    if host is None or args.allow_no_host:
        return
    hostless = [k for k, atoms in enumerate(frames) if host not in atoms.get_chemical_symbols()]
    if hostless:
        shown = ", ".join(map(str, hostless[:10])) + (" ..." if len(hostless) > 10 else "")
        raise ValueError(
            f"{len(hostless)} frame(s) of `{args.structure}` have no host atom ({host}): frames "
            f"{shown}; pass --allow-no-host to label them anyway, or --host for another host"
        )


def run_dataset(args):
    """Label every frame and write ``--dataset``; print each frame's high-fidelity fraction."""
    import os

    import ase.io
    import numpy as np
    from ase import Atoms

    from nequip_moe.keys import EXPERT_KEY
    from nequip_moe.data.regions import assign_experts
    from nequip_moe.scripts.outputs import write_all_or_nothing

    if any(getattr(args, name) for name in ("out_xyz", "out_lammps", "out_input")):
        raise ValueError("--dataset writes one extxyz file: drop --out-xyz, --out-lammps, --out-input")
    table = _model_table(args)
    expert_names = _expert_names(args, table)
    frames = read_frames(args.structure, args.index or ":")
    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    if not frames:
        raise ValueError(f"`{args.structure}` holds no frames")
    rules, settings, expert_of_rules = region_rules(args, expert_names)
    shown_rules = rules + flag_rules(args, frames[0], expert_of_rules)
    _check_frames(frames, shown_rules, _host(args), args)

    selected_nothing = 0
    for k, atoms in enumerate(frames):
        frame_rules = rules + flag_rules(args, atoms, expert_of_rules)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                expert = assign_experts(atoms, frame_rules, expert_names, **settings)
            except ValueError as e:
                raise ValueError(f"frame {k} of `{args.structure}`: {e}") from None
        selected_nothing += sum("selects no atom" in str(w.message) for w in caught)
        if table is not None:
            try:
                table.check_labels(atoms.numbers, expert)
            except ValueError as e:
                raise ValueError(f"frame {k} of `{args.structure}`: {e}") from None
        atoms.arrays[EXPERT_KEY] = expert

    write_all_or_nothing(
        [(args.dataset, lambda path: ase.io.write(path, frames, format="extxyz"))]
    )
    high = expert_names[0]
    print(
        f"{args.structure}: {len(frames)} frames; experts {', '.join(expert_names)} "
        f"(high fidelity: {high}); default expert: {settings['default_expert']}"
    )
    for rule in shown_rules:
        print(f"  rule: {rule}")
    if selected_nothing:
        print(f"  ({selected_nothing} rule applications selected no atom)")
    print(f"{'frame':>6}{'atoms':>8}{high + ' atoms':>14}{'fraction':>10}")
    counts = []
    for k, atoms in enumerate(frames):
        n_high = int(np.sum(atoms.arrays[EXPERT_KEY] == 0))
        counts.append((n_high, len(atoms)))
        print(f"{k:>6}{len(atoms):>8}{n_high:>14}{n_high / len(atoms):>10.3f}")
    n_high, n_atoms = map(sum, zip(*counts))
    print(f"{'all':>6}{n_atoms:>8}{n_high:>14}{n_high / n_atoms:>10.3f}")
    print(f"wrote {os.path.abspath(args.dataset)}")
