"""The README's results, rendered from one reference run's ``report.json`` and ``timings.json``.

``examples/pt_co/reference/`` holds the two files of the run the README quotes; the README's
block between ``BEGIN`` and ``END`` is ``render(report, timings)``, never typed by hand (a test
checks it). After a new reference run::

    python examples/pt_co/readme.py --from examples/pt_co/out   # copy its files, rewrite README
    python examples/pt_co/readme.py --check                      # README == rendering?
"""

import argparse
import json
import pathlib
import shutil
import sys
from typing import Dict, Optional

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parent
REFERENCE = EXAMPLE_DIR / "reference"
README = EXAMPLE_DIR / "README.md"
BEGIN = "<!-- BEGIN results: rendered by readme.py from reference/, do not edit -->"
END = "<!-- END results -->"


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def _cell(text: str) -> str:
    """``text`` as one markdown table cell (its ``|`` escaped)."""
    return str(text).replace("|", "\\|")


def _seeds(claim: Dict) -> str:
    """Every training seed's value of a worst-seed claim (``-`` for the others)."""
    seeds = claim.get("seeds")
    if not seeds:
        return "-"
    return "; ".join(f"{name}: {_value(value)}" for name, value in seeds.items())


def render(report: Dict, timings: Dict) -> str:
    """The README's results block: the run, every claim with its number and threshold, the
    speed (bench and production size) and the time each job took."""
    notes = report.get("notes", {})
    sizes = notes.get("sizes", {})
    total = timings.get("total (wall)")
    lines = [
        f"Reference run: labeller `{notes.get('labeller')}`, frame scale "
        f"{sizes.get('frame_scale')}, {sizes.get('seeds', 1)} training seed(s) per staged MoE, "
        f"{notes.get('threads', '?')} threads, device `{notes.get('device')}`"
        + (f"; the last invocation of `run.py` took {total / 60:.1f} min (wall; jobs it found "
           "up to date keep the time of the run that made them)" if total else "") + ".",
        "",
        "| claim | model | value (worst seed) | threshold | every seed | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for claim in report["claims"]:
        cells = [claim["claim"], claim["model"], _value(claim.get("value")),
                 _value(claim.get("threshold")), _seeds(claim),
                 "holds" if claim["holds"] else "**fails**"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    speed = report.get("speedup")
    if speed:
        weights = speed.get("cost_weights")
        lines += ["", f"Bench ({speed['atoms']} atoms, one thread, "
                      f"{'compiled' if speed.get('compiled') else 'eager'}): c = "
                      f"{speed['cost_ratio_small_over_big']:.3f}"
                  + (f", cost weights {_value(weights)}" if weights else "")
                  + f"; MoE {speed['measured']:.2f}x all-big at f = {speed['hf_fraction']:.2f} "
                  f"(ideal {speed['ideal']:.2f}x)."]
    production = report.get("production")
    if production:
        lines += ["", "| production system | atoms | f | ideal | MPI ranks | speed-up | "
                      "efficiency |", "|---|---|---|---|---|---|---|"]
        for name, row in production["systems"].items():
            for ranks, run in row["runs"].items():
                lines.append(f"| {name} | {row['atoms']} | {row['hf_fraction']:.3f} | "
                             f"{row['ideal_speedup']:.2f}x | {ranks} | {run['speedup']:.2f}x | "
                             f"{100 * run['efficiency']:.0f} % |")
    trained = notes.get("trained")
    if trained:
        lines += ["", "Training: " + "; ".join(f"`{k}` {v}" for k, v in trained.items()) + "."]
    jobs = [(k, v) for k, v in timings.items() if k != "total (wall)"]
    lines += ["", "Job times (s; side by side where independent): "
              + ", ".join(f"{k} {v:.0f}" for k, v in jobs) + "."]
    return "\n".join(lines)


def readme_with(text: str, block: str) -> str:
    """``text`` (the README) with its results block replaced by ``block``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{README} has no results block ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def reference_block(reference: Optional[pathlib.Path] = None) -> str:
    """The rendering of ``reference`` (default: ``REFERENCE``)'s report and timings."""
    reference = REFERENCE if reference is None else reference
    report = json.loads((reference / "report.json").read_text())
    timings = json.loads((reference / "timings.json").read_text())
    return render(report, timings)


def main(args=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=pathlib.Path,
                        help="a run's output folder: copy its report.json and timings.json to "
                        "reference/ first")
    parser.add_argument("--check", action="store_true",
                        help="only check that README.md equals the rendering")
    args = parser.parse_args(args)
    if args.source is not None:
        REFERENCE.mkdir(exist_ok=True)
        for name in ("report.json", "timings.json"):
            shutil.copyfile(args.source / name, REFERENCE / name)
    text = README.read_text()
    rendered = readme_with(text, reference_block())
    if args.check:
        if rendered != text:
            print(f"{README} differs from the rendering of {REFERENCE}: run readme.py")
            return 1
        return 0
    README.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
