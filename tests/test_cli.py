"""The command line starts light, and nequip-moe's fields are registered with nequip whichever
of the two is imported first (the command imports nequip only when it runs)."""

import ast
import subprocess
import sys

import pytest

HEAVY = ("torch", "nequip", "allegro", "lightning", "hydra", "matscipy", "scipy", "matplotlib")


def imported_after(code: str) -> list:
    """Top-level packages among ``HEAVY`` that a fresh interpreter has imported after ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_cli_module_imports_nothing_heavy():
    assert imported_after("import nequip_moe.scripts.cli") == []


@pytest.mark.parametrize(
    "name", ["types", "assign", "distil", "deploy", "check_lammps", "validate", "bench"]
)
def test_subcommand_parsers_import_nothing_heavy(name):
    code = (
        "import argparse, importlib\n"
        f"module = importlib.import_module('nequip_moe.scripts.{name}')\n"
        "module.add_parser(argparse.ArgumentParser().add_subparsers())"
    )
    assert imported_after(code) == []


@pytest.mark.parametrize("first", ["nequip_moe", "nequip.data"])
def test_fields_registered_whichever_is_imported_first(first):
    code = (
        f"import {first}\nimport nequip_moe\nfrom nequip.data import get_field_type\n"
        "from nequip.data._key_registry import _LONG_FIELDS\n"
        "assert get_field_type('expert') == 'node' and 'expert' in _LONG_FIELDS\n"
        "assert get_field_type('expert_total_energy') == 'graph'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_the_subcommands(capsys):
    from nequip_moe.scripts.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("types", "assign", "distil", "deploy", "check-lammps", "validate", "bench"):
        assert name in out
