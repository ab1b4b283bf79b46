"""``nequip-moe check-lammps INPUT``: verify a LAMMPS input's type mapping before running it.

Reads the input script, the data file it reads and the model its ``pair_coeff`` names, and
checks the ``pair_coeff`` type names against the model's composite types, the data file's
``Atom Type Labels`` and masses, and the pair style against the model's compile target and
locality (``nequip_moe.integrations.lammps_check``). Exits with status 2 and a list of the
problems, each with its fix, if anything is off.
"""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "check-lammps",
        help="check a LAMMPS input + data file against an MoE model's composite types",
    )
    parser.add_argument("input", help="LAMMPS input script (pair_style allegro or nequip)")
    parser.add_argument(
        "--model",
        help="the model file (default: the one the input's pair_coeff names, relative to it)",
    )
    parser.set_defaults(func=run)


def run(args):
    from nequip_moe.integrations.lammps_check import check_lammps_input

    print(check_lammps_input(args.input, args.model))
