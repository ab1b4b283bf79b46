"""``nequip-moe validate MODEL --out DIR``: is this MoE trustworthy where it matters, and fast?

Runs ``nequip_moe.validation.run_validation`` on any MoE (compiled ``--target ase`` file,
package or checkpoint; static or gated) with the user's files, and writes ``validation.json``
(every number), ``validation.md`` (the checks: value, threshold, verdict) and PNG plots into
``--out``, all or none. Exit status 0 when no check fails, 1 when one does (``--allow-fail``:
0), 2 on bad inputs. This module imports nothing heavy until the command runs.
"""

import re

_MEASURES = "split_crystal, eos, disagreement, interface, nve, speed"
_THRESHOLDS = (
    "split_crystal_force (20 meV/A), eos_v0 (0.5 %%), eos_b0 (3 %%), reference_v0, reference_b0, "
    "energy_disagreement_mean (2 meV/atom), energy_disagreement_max (5), "
    "force_disagreement_mean (none), interface_penalty (1.05), core_ratio (none), "
    "nve_drift (0.5 meV/atom/ps), nve_dt_exponent (1.5:2.5), speedup (none)"
)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "validate",
        help="validate an MoE: split-crystal interface force, experts' EOS and disagreement, "
        "interface penalty, NVE, speed; writes validation.json, validation.md and plots",
        description=(
            "Measure an MoE (compiled --target ase file, package or checkpoint; static or gated) "
            "with thresholds and verdicts. Strains are in percent; give negative lists with `=`, "
            "e.g. --strains=-3,0,3."
        ),
    )
    parser.add_argument("model", help="the MoE: .nequip.pt2 (--target ase), .nequip.zip or checkpoint")
    parser.add_argument("--out", default="validation", help="output folder (default: validation)")
    parser.add_argument(
        "--test",
        metavar="FRAMES",
        help="labelled frames (energy, forces; per-atom `expert` labels or --rules for a static MoE)",
    )
    parser.add_argument("--rules", metavar="YAML", help="region rules labelling the frames (as `assign --rules`)")
    parser.add_argument("--bulk", metavar="FILE", help="a bulk structure of the host crystal (any crystal)")
    parser.add_argument("--element", help="host element of the bulk to build (default: from the model)")
    parser.add_argument("--lattice", help="its crystal: fcc, bcc, hcp, diamond, ... (default: reference)")
    parser.add_argument("--a", type=float, help="its lattice constant in A (default: fitted with the model)")
    parser.add_argument("--c", type=float, help="its second lattice constant in A (hcp)")
    parser.add_argument("--reference", metavar="MODEL", help="the all-high-fidelity model (optional)")
    parser.add_argument("--speed", metavar="STRUCTURE", help="structure to time (default: largest test frame)")
    parser.add_argument("--nve", metavar="STRUCTURE", help="NVE start structure (default: a test frame)")
    parser.add_argument("--device", default="cpu", help="device of the models (default: cpu)")
    parser.add_argument("--strains", help="split-crystal strains in %% (default: -3,-2,-1,0,1,2,3)")
    parser.add_argument("--trained-strains", metavar="LOW,HIGH", help="strain range (%%) of the training data: rows outside are marked")
    parser.add_argument("--planes", help="split planes, Miller indices in the bulk cell's basis (default: 100,110,111)")
    parser.add_argument("--no-sphere", action="store_true", help="no sphere split")
    parser.add_argument("--eos-strains", help="EOS strains in %% (default: -3,-2,-1,0,1,2,3)")
    parser.add_argument("--bulk-frames", type=int, default=6, help="rattled, strained shared bulk frames (default: 6)")
    parser.add_argument("--nve-steps", type=int, default=200, help="NVE steps (default: 200, and half at twice dt)")
    parser.add_argument("--timestep", type=float, default=1.0, help="NVE timestep in fs (default: 1)")
    parser.add_argument("--temperature", type=float, default=300.0, help="NVE start temperature in K (default: 300)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="timed evaluations, best of (default: 3)")
    parser.add_argument("--skip", default="", help=f"measures not to run, comma-separated: {_MEASURES}")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"override a threshold (NAME=none: information only): {_THRESHOLDS}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of bulk frames and velocities (default: 0)")
    parser.add_argument("--allow-fail", action="store_true", help="exit 0 even when a check fails")
    parser.set_defaults(func=run)


def _percents(text, flag):
    try:
        return [float(v) / 100.0 for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} `{text}`: expected comma-separated percentages, e.g. -3,0,3") from None


def _planes(text):
    planes = []
    for token in text.split(","):
        digits = re.fullmatch(r"\s*(-?\d)(-?\d)(-?\d)\s*", token)
        if digits is None:
            raise ValueError(f"--planes `{text}`: expected Miller indices such as 100,110,111 or 1-10")
        planes.append(tuple(int(d) for d in digits.groups()))
    return planes


def options_from_args(args):
    """``ValidationOptions`` from the parsed flags."""
    from nequip_moe.validation import ValidationOptions
    from nequip_moe.validation.report import parse_threshold

    options = ValidationOptions(
        model=args.model, test=args.test, rules=args.rules, bulk=args.bulk, element=args.element,
        lattice=args.lattice, a=args.a, c=args.c, reference=args.reference, speed=args.speed,
        nve=args.nve, device=args.device, sphere=not args.no_sphere, bulk_frames=args.bulk_frames,
        nve_steps=args.nve_steps, timestep_fs=args.timestep, temperature_k=args.temperature,
        speed_repeats=args.speed_repeats, seed=args.seed,
        skip=[m.strip() for m in args.skip.split(",") if m.strip()],
        thresholds=dict(parse_threshold(t) for t in args.threshold),
    )
    if args.strains:
        options.strains = _percents(args.strains, "--strains")
    if args.eos_strains:
        options.eos_strains = _percents(args.eos_strains, "--eos-strains")
    if args.trained_strains:
        low_high = _percents(args.trained_strains, "--trained-strains")
        if len(low_high) != 2:
            raise ValueError(f"--trained-strains `{args.trained_strains}`: expected LOW,HIGH")
        options.trained_strains = (min(low_high), max(low_high))
    if args.planes:
        options.planes = _planes(args.planes)
    return options


def run(args):
    import json
    import pathlib

    from nequip_moe.scripts.outputs import write_all_or_nothing
    from nequip_moe.validation import markdown, run_validation
    from nequip_moe.validation.plots import plot_writers
    from nequip_moe.validation.report import headline

    options = options_from_args(args)
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out `{out}` exists and is not a folder")
    report = run_validation(options)
    plots = plot_writers(report)
    report["plots"] = {name: name for name in plots}
    out.mkdir(parents=True, exist_ok=True)
    writers = [(out / name, write) for name, write in plots.items()]
    writers += [
        (out / "validation.json", lambda p: pathlib.Path(p).write_text(json.dumps(report, indent=1) + "\n")),
        (out / "validation.md", lambda p: pathlib.Path(p).write_text(markdown(report))),
    ]
    write_all_or_nothing(writers)
    for c in report["checks"]:
        value = "-" if c["value"] is None else f"{c['value']:.4g}"
        print(f"  {c['verdict']:>14}  {c['name']:<26} {value:>10} {c['unit']}")
    counts = report["summary"]
    print(
        f"{headline(report)}: {counts['pass']} pass, {counts['fail']} fail, {counts['info']} information, "
        f"{counts['not applicable']} not applicable; wrote {out / 'validation.json'}, "
        f"{out / 'validation.md'} and {len(plots)} plots"
    )
    return 0 if report["passed"] or args.allow_fail else 1
