"""``nequip-moe types MODEL``: print the composite-type table of a model file."""

from nequip_moe.integrations.model_files import read_metadata, table_from_metadata


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "types",
        help="print the composite-type table (type name -> element, expert) of a model file",
    )
    parser.add_argument("model", help="compiled .nequip.pt2, package .nequip.zip or checkpoint")
    parser.set_defaults(func=run)


def run(args):
    metadata = read_metadata(args.model)
    table = table_from_metadata(metadata, f"`{args.model}`")
    r_max = dict(zip(table.expert_names, metadata.get("moe_expert_r_max", "").split()))
    print(f"{'type':<16}{'element':<10}{'expert':<12}")
    for name, element, expert in zip(table.type_names, table.elements, table.experts):
        print(f"{name:<16}{element:<10}{expert:<12}")
    print("experts (label: name, r_max): " + ", ".join(
        f"{k}: {e} ({r_max.get(e, '?')})" for k, e in enumerate(table.expert_names)
    ))
