"""``nequip-moe types MODEL``: print the type table of a model file.

Static MoE: each composite type name with its (element, expert). Gated MoE: the plain element
type names, the gate and the experts it weighs (``g`` for the first, ``1 - g`` for the second).
"""

from nequip_moe.integrations.model_files import GatedTypes, model_types, read_metadata


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "types",
        help="print the type table of a model file: composite types (type name -> element, "
        "expert) or, for a gated MoE, its element types and gate",
    )
    parser.add_argument("model", help="compiled .nequip.pt2, package .nequip.zip or checkpoint")
    parser.set_defaults(func=run)


def run(args):
    metadata = read_metadata(args.model)
    table = model_types(metadata, f"`{args.model}`")
    r_max = dict(zip(table.expert_names, metadata.get("moe_expert_r_max", "").split()))
    experts = ", ".join(f"{k}: {e} ({r_max.get(e, '?')})" for k, e in enumerate(table.expert_names))
    if isinstance(table, GatedTypes):
        print(f"gated MoE: gate {table.gate}")
        print(f"type names (plain elements): {' '.join(table.type_names)}")
        print(
            "energy of atom i: g_i e_i^"
            + (
                f"{table.expert_names[0]} + (1 - g_i) e_i^{table.expert_names[1]}"
                if len(table.expert_names) == 2
                else "(gated experts)"
            )
            + ", g_i in [0, 1] from the atom's own neighbourhood"
        )
        print(f"experts (name, r_max): {experts}")
        print(
            "no expert labels: LAMMPS `pair_coeff * * MODEL "
            f"{' '.join(table.type_names)}` (one LAMMPS type per element)"
        )
        return
    print(f"{'type':<16}{'element':<10}{'expert':<12}")
    for name, element, expert in zip(table.type_names, table.elements, table.experts):
        print(f"{name:<16}{element:<10}{expert:<12}")
    print(f"experts (label: name, r_max): {experts}")
