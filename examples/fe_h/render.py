"""The validation table of the Fe + H example's README, rendered from a ``validation.json``.

The table is the one ``nequip-moe validate`` writes into ``validation.md`` (its headline and
checks rows, from ``nequip_moe.validation.markdown``), without the machine-specific parts (model
path, timings). ``README.md`` holds it between the ``BEGIN`` and ``END`` markers;
``tests/test_fe_h_example.py`` checks that it is the rendering of ``reference/validation.json``.

    python examples/fe_h/render.py examples/fe_h/out/validation/validation.json       # print
    python examples/fe_h/render.py examples/fe_h/reference/validation.json --readme   # update README.md
"""

import argparse
import json
import pathlib

from nequip_moe.validation import markdown

HERE = pathlib.Path(__file__).resolve().parent
README = HERE / "README.md"
REFERENCE = HERE / "reference" / "validation.json"
BEGIN = "<!-- BEGIN validation table (render.py from reference/validation.json) -->"
END = "<!-- END validation table -->"


def table(report: dict) -> str:
    """The headline and the checks table of ``validation.md`` for ``report``."""
    lines = markdown(report).splitlines()
    headline = next(line for line in lines if line.startswith("**"))
    rows = [line for line in lines if line.startswith("|")]
    return "\n".join([headline, ""] + rows) + "\n"


def readme_block(readme_text: str) -> str:
    """The text between the README's markers."""
    start = readme_text.index(BEGIN) + len(BEGIN)
    return readme_text[start:readme_text.index(END)].strip("\n") + "\n"


def with_table(readme_text: str, rendered: str) -> str:
    """``readme_text`` with the block between its markers replaced by ``rendered``."""
    start = readme_text.index(BEGIN) + len(BEGIN)
    return readme_text[:start] + "\n" + rendered + readme_text[readme_text.index(END):]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", nargs="?", type=pathlib.Path, default=REFERENCE, help="a validation.json")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args(argv)
    rendered = table(json.loads(args.report.read_text()))
    if args.readme:
        README.write_text(with_table(README.read_text(), rendered))
        print(f"wrote the table of {args.report} into {README}")
    else:
        print(rendered, end="")


if __name__ == "__main__":
    main()
