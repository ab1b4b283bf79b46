"""``nequip-moe``: command-line tools for Mixture-of-Experts potentials.

Each subcommand lives in its own module of ``nequip_moe.scripts`` that provides
``add_parser(subparsers)``; the parser's ``func`` default runs it. The modules import heavy
code (torch, nequip, ase's readers) only inside the function that runs the command, so
``nequip-moe --help`` and every subcommand's ``--help`` start in well under a second.
"""

import argparse
import sys

from . import assign, bench, check_lammps, deploy, distil, types, validate

# in the order `--help` lists them
_SUBCOMMANDS = (types, assign, distil, deploy, check_lammps, validate, bench)


def main(args=None) -> int:
    parser = argparse.ArgumentParser(
        prog="nequip-moe",
        description="Tools for multi-fidelity Mixture-of-Experts nequip potentials.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in _SUBCOMMANDS:
        module.add_parser(subparsers)
    parsed = parser.parse_args(args)
    try:
        return parsed.func(parsed) or 0
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"nequip-moe {parsed.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
