"""``nequip-moe distil FRAMES --model BIG --out OUT.xyz``: the frozen expert's labels on the bulk.

A staged MoE trains its low-fidelity expert beside a frozen high-fidelity one. On frames that
lie wholly in the low-fidelity region (bulk: every atom carries its label) the labeller's
energies pull the low-fidelity expert towards the labeller, and the agreement terms towards
the frozen expert: where those differ (the frozen expert's own error, e.g. in the bulk
modulus) the experts' bulk responses cannot match. This command replaces the energy, forces
and stress of those frames by the model's (the all-high-fidelity model the frozen expert was
trained as), so that on the bulk the low-fidelity expert learns the high-fidelity one; every
other frame keeps its labels and arrays. It prints how far the model is from the labeller on
the relabelled frames. Everything is checked before anything is written, and the output is
written all or nothing. This module imports nothing heavy until the command runs.
"""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "distil",
        help="relabel a dataset's wholly low-fidelity (bulk) frames with the high-fidelity "
        "model's energy, forces and stress, for a staged MoE",
    )
    parser.add_argument("frames", help="extxyz with energy, forces and the per-atom `expert` array")
    parser.add_argument(
        "--model",
        required=True,
        help="the all-high-fidelity model (checkpoint, package or compiled --target ase file)",
    )
    parser.add_argument("--out", required=True, help="the distilled extxyz to write")
    parser.add_argument(
        "--label",
        type=int,
        default=None,
        help="the low-fidelity expert's label in `expert`: frames whose every atom has it are "
        "relabelled (default: the largest label in the file)",
    )
    parser.add_argument("--device", default="cpu", help="device of the model (default: cpu)")
    parser.set_defaults(func=run)
    return parser


def _check_frames(frames, path, label, type_names):
    """The low-fidelity label, after checking every frame has labels, the ``expert`` array and
    only elements the model has."""
    missing = [i for i, atoms in enumerate(frames) if "expert" not in atoms.arrays]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} frame(s) have no per-atom `expert` array (first: frame "
            f"{missing[0]}); label them first with `nequip-moe assign --dataset`"
        )
    unlabelled = [i for i, atoms in enumerate(frames) if atoms.calc is None or "energy" not in atoms.calc.results]
    if unlabelled:
        raise ValueError(f"{path}: frame {unlabelled[0]} has no energy (a labelled dataset is needed)")
    unknown = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()} - set(type_names))
    if unknown:
        raise ValueError(f"the model has no type for {unknown} (its types: {' '.join(type_names)})")
    found = sorted({int(e) for atoms in frames for e in atoms.arrays["expert"].ravel()})
    if label is None:
        return found[-1]
    if label not in found:
        raise ValueError(f"--label {label}: no atom of {path} carries it (labels found: {found})")
    return label


def run(args) -> int:
    import pathlib

    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write

    from nequip_moe.integrations.model_files import read_metadata
    from nequip_moe.scripts.outputs import write_all_or_nothing
    from nequip_moe.validation.models import plain_calculator

    for path in (args.frames, args.model):
        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"no file `{path}`")
    frames = read(args.frames, index=":")
    type_names = read_metadata(args.model)["type_names"].split()
    label = _check_frames(frames, args.frames, args.label, type_names)
    calc = plain_calculator(args.model, args.device)

    bulk = [i for i, atoms in enumerate(frames) if (atoms.arrays["expert"] == label).all()]
    if not bulk:
        raise ValueError(f"{args.frames}: no frame has every atom labelled {label}: nothing to distil")
    energy_diff, force_diff = [], []
    for i in bulk:
        atoms = frames[i]
        old = atoms.calc.results
        probe = atoms.copy()
        probe.calc = calc
        results = {"energy": probe.get_potential_energy(), "forces": probe.get_forces()}
        if "stress" in old:
            results["stress"] = probe.get_stress()
        energy_diff.append(abs(results["energy"] - old["energy"]) / len(atoms))
        if "forces" in old:
            force_diff.append(np.abs(results["forces"] - old["forces"]).mean())
        atoms.calc = SinglePointCalculator(atoms, **results)

    write_all_or_nothing([(args.out, lambda tmp: write(tmp, frames, format="extxyz"))])
    print(
        f"{len(bulk)} of {len(frames)} frames relabelled (every atom labelled {label}) by "
        f"{args.model}: |energy - labeller's| {1000 * np.mean(energy_diff):.2f} meV/atom mean"
        + (f", force MAE {1000 * np.mean(force_diff):.1f} meV/A" if force_diff else "")
        + f"; written to {args.out}"
    )
    return 0
