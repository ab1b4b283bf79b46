"""``nequip-moe distil FRAMES --model BIG --out OUT.xyz``: the frozen expert's labels on the bulk.

A staged MoE trains its low-fidelity expert beside a frozen high-fidelity one. On frames that
lie wholly in the low-fidelity region (bulk: every atom carries its label) the labeller's
energies pull the low-fidelity expert towards the labeller, and the agreement terms towards
the frozen expert: where those differ (the frozen expert's own error, e.g. in the bulk
modulus) the experts' bulk responses cannot match. This command replaces the energy, forces
and stress of those frames by the model's (the all-high-fidelity model the frozen expert was
trained as), so that on the bulk the low-fidelity expert learns the high-fidelity one; every
other frame keeps its labels and arrays. With ``--frames all`` every frame is relabelled: the
low-fidelity atoms of mixed frames then learn the high-fidelity model too, not the labeller
(the MoE is trained to reproduce the all-high-fidelity model). It prints how far the model is
from the labeller on the relabelled frames.

With ``--cells N --bulk BULK`` it also adds N strained, lightly rattled copies of the host's
bulk crystal labelled by the model (one forward pass each, no labeller): the low-fidelity
expert then learns the high-fidelity one's equation of state over ``--strain``, past the
volumes the labelled data covers. Everything is checked before anything is written, and the
output is written all or nothing. This module imports nothing heavy until the command runs.
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
    parser.add_argument(
        "--frames",
        dest="which_frames",
        choices=("bulk", "all"),
        default="bulk",
        help="which frames to relabel: `bulk` (every atom low-fidelity) or `all` (default: bulk)",
    )
    parser.add_argument(
        "--cells",
        type=int,
        default=0,
        help="strained bulk cells of --bulk to add, labelled by the model (default: 0)",
    )
    parser.add_argument("--bulk", help="the host's bulk crystal (a periodic structure file), for --cells")
    parser.add_argument(
        "--strain",
        type=float,
        default=0.05,
        help="largest isotropic linear strain of the added cells; each cell's strain is drawn "
        "in its own equal part of [-strain, strain] (default: 0.05)",
    )
    parser.add_argument(
        "--shear",
        type=float,
        default=0.01,
        help="largest random symmetric strain per component of the added cells (default: 0.01)",
    )
    parser.add_argument(
        "--rattle",
        type=float,
        default=0.02,
        help="largest standard deviation (A) of the added cells' random displacements (default: 0.02)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the added cells (default: 0)")
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


def _constant_arrays(frames) -> dict:
    """Per-atom arrays (beside ``expert``) that every one of ``frames`` carries with one value on
    every atom, e.g. ``shared`` 1 on bulk frames: the added bulk cells carry them too."""
    import numpy as np

    names = set.intersection(*(set(a.arrays) for a in frames)) - {"numbers", "positions", "expert"}
    values = {}
    for name in sorted(names):
        found = np.unique(np.concatenate([np.ravel(a.arrays[name]) for a in frames]))
        if len(found) == 1 and all(a.arrays[name].ndim == 1 for a in frames):
            values[name] = found[0]
    return values


def strained_cells(bulk, count: int, strain: float, shear: float, rattle: float,
                   min_height: float, seed: int) -> list:
    """``count`` copies of ``bulk``, repeated to faces ``min_height`` apart, each under an
    isotropic strain drawn in its own equal part of ``[-strain, strain]`` plus a random
    symmetric strain <= ``shear`` per component, its atoms displaced with a standard deviation
    drawn in ``[0, rattle]``.

    Args:
        bulk: periodic bulk crystal (ASE ``Atoms``)
        count: number of cells
        strain: largest isotropic linear strain
        shear: largest symmetric strain per component
        rattle: largest standard deviation of the displacements (Å)
        min_height: smallest face-to-face distance of each cell (Å)
        seed: random seed
    """
    import numpy as np

    from nequip_moe.validation.crystal import repeated_to

    rng = np.random.default_rng(seed)
    base = repeated_to(bulk, min_height)
    cells = []
    for k in range(count):
        isotropic = strain * (2.0 * (k + rng.uniform()) / count - 1.0)
        noise = rng.uniform(-shear, shear, (3, 3))
        atoms = base.copy()
        atoms.set_cell(atoms.cell @ (np.eye(3) * (1.0 + isotropic) + 0.5 * (noise + noise.T)),
                       scale_atoms=True)
        atoms.positions += rng.normal(0.0, rng.uniform(0.0, rattle), atoms.positions.shape)
        atoms.info = {"kind": "distil_bulk", "isotropic_strain": float(isotropic)}
        cells.append(atoms)
    return cells


def run(args) -> int:
    import pathlib

    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write

    from nequip_moe.integrations.model_files import read_metadata
    from nequip_moe.scripts.outputs import write_all_or_nothing
    from nequip_moe.validation.models import plain_calculator

    if args.cells < 0 or (args.cells and not args.bulk):
        raise ValueError("--cells N needs N >= 0 and, when N > 0, the host's bulk crystal (--bulk)")
    if not (0.0 <= args.strain < 0.5 and 0.0 <= args.shear < 0.5 and args.rattle >= 0.0):
        raise ValueError("--strain and --shear must lie in [0, 0.5), --rattle must be >= 0")
    for path in (args.frames, args.model, *([args.bulk] if args.cells else [])):
        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"no file `{path}`")
    frames = read(args.frames, index=":")
    metadata = read_metadata(args.model)
    type_names = metadata["type_names"].split()
    label = _check_frames(frames, args.frames, args.label, type_names)
    cells = []
    if args.cells:
        bulk = read(args.bulk)
        if not bulk.pbc.all():
            raise ValueError(f"--bulk {args.bulk}: not periodic in every direction (a bulk crystal is needed)")
        unknown = sorted(set(bulk.get_chemical_symbols()) - set(type_names))
        if unknown:
            raise ValueError(f"--bulk {args.bulk}: the model has no type for {unknown}")
        cells = strained_cells(bulk, args.cells, args.strain, args.shear, args.rattle,
                               float(metadata["r_max"]), args.seed)
    calc = plain_calculator(args.model, args.device)

    bulk_frames = [i for i, atoms in enumerate(frames) if (atoms.arrays["expert"] == label).all()]
    if not bulk_frames:
        raise ValueError(f"{args.frames}: no frame has every atom labelled {label}: nothing to distil")
    relabelled = range(len(frames)) if args.which_frames == "all" else bulk_frames
    energy_diff, force_diff = [], []
    for i in relabelled:
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
    stress = any("stress" in atoms.calc.results for atoms in frames)
    constant = _constant_arrays([frames[i] for i in bulk_frames])
    for atoms in cells:
        atoms.calc = calc
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if stress:
            results["stress"] = atoms.get_stress()
        for name, value in {**constant, "expert": np.int64(label)}.items():
            atoms.arrays[name] = np.full(len(atoms), value)
        atoms.calc = SinglePointCalculator(atoms, **results)
    frames += cells

    write_all_or_nothing([(args.out, lambda tmp: write(tmp, frames, format="extxyz"))])
    print(
        f"{len(relabelled)} of {len(frames) - len(cells)} frames relabelled "
        f"({'all' if args.which_frames == 'all' else f'every atom labelled {label}'}) by "
        f"{args.model}: |energy - labeller's| {1000 * np.mean(energy_diff):.2f} meV/atom mean"
        + (f", force MAE {1000 * np.mean(force_diff):.1f} meV/A" if force_diff else "")
        + (f"; {len(cells)} strained bulk cells of {len(cells[0])} atoms added (isotropic "
           f"strain within +-{args.strain:g})" if cells else "")
        + f"; written to {args.out}"
    )
    return 0
