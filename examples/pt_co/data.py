"""Stage 1 of the Pt + CO example: labelled reference frames with per-atom expert labels.

Builds (with ``structures.py``) bulk fcc Pt (equation of state, strained and rattled cells,
cells with vacancies), Pt(111) slabs (thin and thick) with CO at several coverages and sites,
stepped Pt(211) and Pt(331) slabs with CO, Pt nanoparticles (cuboctahedra and truncated
octahedra) with 0-8 CO on top, bridge and hollow sites, CO desorption, gas-phase CO and short
Langevin MD snapshots (whole trajectories in one split), each frame tagged with its ``kind`` and built at the labeller's own
fcc Pt lattice constant (fitted first); labels them with energy, forces and stress from an
offline calculator (``emt`` or ``sevenn``); gives every atom an expert label
(0 = big, 1 = small) with the ``pt_co_coordination`` region preset (the *core*: C, O, Pt
bonded to them and under-coordinated Pt, plus a buffer of ``buffer_width`` A); and writes
``train.xyz``, ``val.xyz``, ``test.xyz`` and a held-out bulk equation-of-state set
``eos.xyz``. Run alone with::

    python examples/pt_co/data.py --out examples/pt_co/out/data [--labeller sevenn]

The labeller runs in one process of one thread per thread of the budget (``OMP_NUM_THREADS``,
else the CPUs: ``threads.py``).
"""

import argparse
import dataclasses
import json
import pathlib
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import threads  # noqa: F401  (first: OpenMP's wait policy before torch starts)
import numpy as np
from ase import Atoms
from ase.io import read, write

from labelling import LabelPool, labeller_lattice_constant, make_labeller  # noqa: F401
from nequip_moe.data.regions import assign_experts, pt_co_coordination
from structures import (
    PARTICLES,
    PT_A0,
    SMALL_PARTICLES,
    attach_labels,
    bulk_columns,
    EOS_SCALES,
    ISOTROPIC_STRAIN,
    bulk_eos,
    bulk_eos_heldout,
    bulk_strained,
    bulk_vacancies,
    clean_slabs,
    desorption,
    gas_co,
    large_slabs_with_co,
    nanoparticles,
    pt_bulk,  # noqa: F401  (the tests' and users' bulk cells)
    quarter_monolayer,
    slabs_with_co,
    stepped_with_co,
    thick_slabs_with_co,
)


ELEMENTS = ("C", "O", "Pt")
SPLITS = ("train", "val", "test")
BULK_KINDS = ("bulk", "eos", "vacancy")  # frame kinds (prefixes) without a surface
MD_SNAPSHOTS_PER_TRAJECTORY = 3


@dataclasses.dataclass
class FrameCounts:
    """Number of frames of each kind (a small recipe covering bulk, surfaces, CO and MD).

    Args:
        bulk_eos: 2x2x2 conventional fcc cells at a = a0 x [0.97 .. 1.03] (the held-out
            EOS set reaches 0.96 .. 1.04)
        bulk_strained: bulk cells with isotropic strain <= 2 % plus symmetric strain <= 1 %
            per component, rattle 0.02-0.1 A
        clean_slab: Pt(111) 3x3x4 slabs, rattled
        slab_co: 3x3x4 slabs with 1-4 CO on top/bridge/fcc/hcp, tilted <= 15 deg
        quarter_ml: 2x2x4 slabs with one CO (1/4 monolayer)
        large_slab_co: 4x4x4 slabs with 4-8 CO
        desorption: one CO atop at 1.6-6.0 A height
        gas_co: one CO molecule in a 12 A box, C-O 1.03-1.35 A
        md: Langevin snapshots of CO-covered slabs, run with the labeller itself, in
            trajectories of at most ``MD_SNAPSHOTS_PER_TRAJECTORY`` (each in one split)
        nanoparticle: Pt cuboctahedra and truncated octahedra with 0-8 CO (top, bridge,
            hollow); 38-79 atoms, up to 147 with ``large_particles``
        stepped: Pt(211) (36 atoms) and Pt(331) (40 atoms) slabs with 0-4 CO
        vacancy: 108-site bulk cells with 1-2 vacancies
        thick_slab_co: Pt(111) 3x3x8 slabs with 1-3 CO (small-expert middle layers)
        large_particles: add the 116-147-atom particles (``--full``; labelling cost grows
            with the atoms)
    """

    bulk_eos: int = 11
    bulk_strained: int = 30
    clean_slab: int = 6
    slab_co: int = 40
    quarter_ml: int = 8
    large_slab_co: int = 3
    desorption: int = 6
    gas_co: int = 12
    md: int = 10
    nanoparticle: int = 12
    stepped: int = 8
    vacancy: int = 10
    thick_slab_co: int = 10
    large_particles: bool = False

    def scaled(self, factor: float, large_particles: Optional[bool] = None) -> "FrameCounts":
        """The same recipe with every count multiplied by ``factor`` (at least one each);
        ``large_particles`` defaults to ``factor >= 2`` (the ``--full`` sizes)."""
        counts = {
            name: max(1, round(getattr(self, name) * factor)) for name in self.count_names()
        }
        large = factor >= 2 if large_particles is None else large_particles
        return FrameCounts(**counts, large_particles=large)

    @classmethod
    def count_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls) if f.type in (int, "int")]

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in self.count_names())

    @property
    def particle_sizes(self) -> Sequence[str]:
        return tuple(PARTICLES) if self.large_particles else SMALL_PARTICLES


# ---------------------------------------------------------------- expert labels

EXPERT_NAMES = ("big", "small")  # label k means EXPERT_NAMES[k], as in configs/pt_co_moe.yaml
# buffer (A) of big-expert atoms around the core: the small expert's cutoff (4.5 A), so no
# core atom's force carries a small-expert term; it lies between the second (a0: 3.98 A with
# SevenNet) and third (1.22 a0: 4.87 A) fcc Pt neighbour shells, so rattled frames keep whole
# shells. The report's buffer sweep measures accuracy and speed-up against the width.
DEFAULT_BUFFER_WIDTH = 4.5


def region_rules(buffer_width: float = DEFAULT_BUFFER_WIDTH):
    """The example's region rules: the ``pt_co_coordination`` preset (core: C, O, Pt within
    2.5 A of them, Pt with fewer than 12 Pt neighbours within 3.3 A) with a buffer of every
    atom within ``buffer_width`` A of the core; returns ``(rules, assign_experts settings)``."""
    return pt_co_coordination(
        "big", "small", buffer_shells=0, buffer_width=float(buffer_width)
    )


def core_atoms(atoms: Atoms) -> np.ndarray:
    """Boolean mask of the core atoms (adsorbates, Pt bonded to them, under-coordinated Pt):
    the atoms whose accuracy the MoE is for, without the buffer."""
    rules, _ = region_rules(0.0)
    core = np.zeros(len(atoms), dtype=bool)
    for rule in rules:
        core |= rule.select(atoms)
    return core


def label_experts(atoms: Atoms, buffer_width: float = DEFAULT_BUFFER_WIDTH) -> np.ndarray:
    """Expert labels of the example: 0 (big) for the core (``core_atoms``) and every atom within
    ``buffer_width`` A of it, 1 (small) for the rest. Perfect bulk is all small, gas CO all big.

    Args:
        atoms: a frame
        buffer_width: buffer (A) of big-expert atoms around the core
    """
    rules, settings = region_rules(buffer_width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rule selecting nothing (bulk, clean Pt) is fine
        return assign_experts(atoms, rules, EXPERT_NAMES, **settings)


def mark_shared(atoms: Atoms) -> np.ndarray:
    """Per-atom ``shared`` marks for co-training: 1 for the non-core atoms of bulk frames
    (perfect, strained or with vacancies), where both experts must agree; 0 elsewhere
    (``SharedEnvironments`` adds bulk-like Pt of slabs itself).

    Args:
        atoms: a frame whose ``info["kind"]`` names its kind of structure
    """
    is_bulk = atoms.info["kind"].startswith(BULK_KINDS)
    return (is_bulk & ~core_atoms(atoms)).astype(np.int64)


# ---------------------------------------------------------------- dataset


def build_structures(counts: FrameCounts, seed: int = 0, a0: float = PT_A0) -> List[Atoms]:
    """Every structure of the recipe but the MD snapshots, at lattice constant ``a0``,
    unlabelled."""
    rng = np.random.default_rng(seed)
    builders: Dict[str, Callable] = {
        "bulk_eos": bulk_eos,
        "bulk_strained": bulk_strained,
        "clean_slab": clean_slabs,
        "slab_co": slabs_with_co,
        "quarter_ml": quarter_monolayer,
        "large_slab_co": large_slabs_with_co,
        "desorption": desorption,
        "gas_co": lambda n, rng, a0: gas_co(n, rng),  # no Pt
        "nanoparticle": lambda n, rng, a0: nanoparticles(n, rng, counts.particle_sizes, a0),
        "stepped": stepped_with_co,
        "vacancy": bulk_vacancies,
        "thick_slab_co": thick_slabs_with_co,
    }
    frames = []
    for name, builder in builders.items():
        frames += builder(getattr(counts, name), rng, a0=a0)
    return frames


def trajectory_lengths(snapshots: int) -> List[int]:
    """Snapshots of each MD trajectory: ``snapshots`` spread over trajectories of at most
    ``MD_SNAPSHOTS_PER_TRAJECTORY`` (a whole trajectory goes to one split)."""
    count = -(-snapshots // MD_SNAPSHOTS_PER_TRAJECTORY)
    return [snapshots // count + (k < snapshots % count) for k in range(count)]


def build_frames(
    counts: FrameCounts, pool: LabelPool, seed: int = 0,
    buffer_width: float = DEFAULT_BUFFER_WIDTH, a0: float = PT_A0,
) -> List[Atoms]:
    """All frames of the recipe at lattice constant ``a0``, labelled by ``pool`` and with
    expert labels; the MD snapshots come from ``trajectory_lengths(counts.md)`` trajectories
    (``info["trajectory"]``)."""
    frames = pool.label(build_structures(counts, seed, a0))
    for trajectory in pool.trajectories(trajectory_lengths(counts.md), seed, a0):
        frames += trajectory
    return add_region_arrays(frames, buffer_width)


def add_region_arrays(
    frames: List[Atoms], buffer_width: float = DEFAULT_BUFFER_WIDTH
) -> List[Atoms]:
    """Set the per-atom ``expert``, ``shared`` and ``core`` arrays of every frame."""
    for atoms in frames:
        atoms.arrays["expert"] = label_experts(atoms, buffer_width)
        atoms.arrays["shared"] = mark_shared(atoms)
        atoms.arrays["core"] = core_atoms(atoms).astype(np.int64)
    return frames


def split_by_kind(
    frames: List[Atoms], seed: int = 0, val: float = 0.1, test: float = 0.15
) -> Dict[str, List[Atoms]]:
    """Split every kind of frame into train/val/test; kinds with >= 3 units reach all three.

    A unit is one frame, or every frame of one MD trajectory (``info["trajectory"]``): the
    snapshots of a trajectory are 20 fs apart, so one in training and the next in the test
    split would test on what was trained.
    """
    rng = np.random.default_rng(seed)
    splits = {name: [] for name in SPLITS}
    kinds = dict.fromkeys(a.info["kind"] for a in frames)
    for kind in kinds:
        units: Dict = {}
        for index, atoms in enumerate(frames):
            if atoms.info["kind"] == kind:
                units.setdefault(atoms.info.get("trajectory", f"frame {index}"), []).append(atoms)
        units = list(units.values())
        order = rng.permutation(len(units))
        n_test = max(1, round(test * len(units))) if len(units) >= 3 else 0
        n_val = max(1, round(val * len(units))) if len(units) >= 3 else 0
        for name, chosen in (("test", order[:n_test]), ("val", order[n_test : n_test + n_val]),
                             ("train", order[n_test + n_val :])):
            splits[name] += [atoms for i in chosen for atoms in units[i]]
    return splits


def bulk_strain_range(frames: Sequence[Atoms], a0: float) -> List[float]:
    """Smallest and largest linear strain ``(V / V0)^(1/3) - 1`` of the bulk frames
    (``bulk_eos``, ``bulk_strained``) against fcc Pt at ``a0``: the volumes trained on."""
    v0 = a0**3 / 4.0
    strains = [(a.get_volume() / len(a) / v0) ** (1.0 / 3.0) - 1.0 for a in frames
               if a.info.get("kind") in ("bulk_eos", "bulk_strained")]
    return [float(min(strains)), float(max(strains))] if strains else []


def write_dataset(
    out_dir, splits: Dict[str, List[Atoms]], eos: List[Atoms], notes: Optional[Dict] = None
) -> Dict:
    """Write ``{train,val,test}.xyz``, ``eos.xyz`` (if ``eos``) and ``summary.json``; returns
    the summary.

    Args:
        out_dir: output folder
        splits: frames of each split
        eos: held-out equation-of-state frames (may be empty)
        notes: extra entries of the summary (e.g. ``labeller``, ``buffer_width``)
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frames in {**splits, **({"eos": eos} if eos else {})}.items():
        write(out_dir / f"{name}.xyz", frames, format="extxyz")
    labels = np.concatenate([a.arrays["expert"] for a in splits["test"]])
    summary = {
        "frames": {name: len(frames) for name, frames in splits.items()},
        "eos_frames": len(eos),
        "kinds": {
            kind: sum(a.info.get("kind") == kind for f in splits.values() for a in f)
            for kind in dict.fromkeys(a.info.get("kind") for f in splits.values() for a in f)
        },
        "test_hf_fraction": float(np.mean(labels == 0)),
        "atoms": {
            name: int(sum(len(a) for a in frames)) for name, frames in splits.items()
        },
        **dict(notes or {}),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def make_dataset(
    out_dir, counts: FrameCounts, labeller: str = "emt", seed: int = 0,
    buffer_width: float = DEFAULT_BUFFER_WIDTH, workers: int = 1,
) -> Dict:
    """The whole data stage: fit the labeller's lattice constant, build the structures at it,
    label, split and write the example's data.

    Args:
        out_dir: folder for ``train.xyz``, ``val.xyz``, ``test.xyz``, ``eos.xyz``
        counts: frames of each kind
        labeller: ``emt`` or ``sevenn``
        seed: seed of every random choice
        buffer_width: buffer (A) of big-expert atoms around the core (``label_experts``)
        workers: labelling processes of one thread each (``labelling.LabelPool``)
    """
    with LabelPool(labeller, workers) as pool:
        a0 = pool.lattice_constant()
        frames = build_frames(counts, pool, seed, buffer_width, a0)
        eos = add_region_arrays(pool.label(bulk_eos_heldout(a0=a0)), buffer_width)
    splits = split_by_kind(frames, seed)
    return write_dataset(
        out_dir, splits, eos,
        notes={"labeller": labeller, "buffer_width": buffer_width, "a0": a0,
               "train_bulk_strain": bulk_strain_range(splits["train"], a0),
               "eos_strains": [float(s - 1.0) for s in EOS_SCALES]},
    )


def distilled_frames(
    frames: Sequence[Atoms], calc, extra: int, seed: int = 1, columns: int = 0,
    a0: float = PT_A0, isotropic_strain: float = ISOTROPIC_STRAIN,
) -> List[Atoms]:
    """Training frames of the staged MoE, whose big expert is frozen: ``frames`` with every
    wholly shared frame (all atoms ``shared``: bulk Pt) relabelled by ``calc`` (the frozen big
    expert), plus ``extra`` strained and rattled bulk cells and ``columns`` long ones
    (``structures.bulk_columns``: cells an interface cut normal to z splits like the split
    perfect crystal) labelled by it.

    On shared bulk the small expert should learn the big expert, not the labeller: with the
    labeller's targets there the data terms pull it away from what the agreement terms ask
    (the big expert's error), and the experts' bulk response cannot match. Extra cells cost one
    forward pass of the big expert each, so they can reach volumes the labeller's data does not
    (``isotropic_strain`` past the training split's): there the small expert learns the big
    expert's extrapolation instead of making its own.

    Args:
        frames: the training split (with ``shared`` arrays)
        calc: ASE calculator of the frozen big expert
        extra: number of extra bulk cells
        seed: seed of the extra cells' strains and rattles
        columns: number of extra long bulk cells
        a0: lattice constant (A) of the extra cells (the data's, ``summary.json``)
        isotropic_strain: largest isotropic linear strain of the extra cells
    """
    shared = [i for i, atoms in enumerate(frames) if atoms.arrays["shared"].all()]
    distilled = list(frames)
    for i, atoms in zip(shared, attach_labels([frames[i] for i in shared], calc)):
        distilled[i] = atoms
    rng = np.random.default_rng(seed)
    cells = (bulk_strained(extra, rng, a0, isotropic_strain)
             + bulk_columns(columns, rng, a0=a0, isotropic_strain=isotropic_strain))
    for atoms in cells:
        atoms.info["kind"] = "bulk_distil"
    return distilled + add_region_arrays(attach_labels(cells, calc))


def read_user_frames(path, rules_file=None) -> List[Atoms]:
    """Read and check a user's extxyz before any training starts.

    Every frame needs energy, forces and stress, only the example's elements (C, O, Pt),
    and a per-atom integer ``expert`` array unless ``rules_file`` gives region rules (the
    format of ``nequip-moe assign --rules``), which then label every frame. An optional
    per-atom ``shared`` array (1: co-trained experts must agree there) defaults to 0.

    Args:
        path: extxyz file
        rules_file: optional YAML file of region rules
    """
    from nequip_moe.composite import expert_label_array
    from nequip_moe.data.regions import read_rules_file

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file `{path}` does not exist")
    try:
        frames = read(path, index=":")
    except Exception as e:
        raise ValueError(f"cannot read `{path}` as extxyz: {e}") from e
    if len(frames) < 3:
        raise ValueError(f"`{path}` has {len(frames)} frames: at least 3 are needed (train, "
                         "validation and test)")
    if rules_file is not None:
        rules, settings = read_rules_file(rules_file)
        settings.setdefault("default_expert", EXPERT_NAMES[-1])
    for index, atoms in enumerate(frames):
        where = f"`{path}` frame {index}"
        results = atoms.calc.results if atoms.calc is not None else {}
        missing = [key for key in ("energy", "forces", "stress") if key not in results]
        if missing:
            raise ValueError(
                f"{where} has no {', '.join(missing)}: every frame needs energy, forces and "
                "stress (extxyz `energy=` and `stress=` in the comment line, a `forces` array)"
            )
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(ELEMENTS))
        if unknown:
            raise ValueError(
                f"{where} contains {', '.join(unknown)}: the example's models know only "
                f"{', '.join(ELEMENTS)} (model_type_names and composite_types in "
                "configs/pt_co_moe.yaml)"
            )
        if rules_file is not None:
            atoms.arrays["expert"] = assign_experts(atoms, rules, EXPERT_NAMES, **settings)
        elif "expert" not in atoms.arrays:
            raise ValueError(
                f"{where} has no per-atom `expert` array and no region rules were given: "
                "add the array (0 = big, 1 = small) or pass a rules file"
            )
        atoms.arrays["expert"] = expert_label_array(
            atoms.arrays["expert"], len(atoms), EXPERT_NAMES
        )
        atoms.arrays.setdefault("shared", np.zeros(len(atoms), dtype=np.int64))
        atoms.info.setdefault("kind", "user")
    return frames


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=pathlib.Path(__file__).parent / "out" / "data")
    parser.add_argument("--labeller", choices=["emt", "sevenn"], default="emt")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every frame count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buffer-width", type=float, default=DEFAULT_BUFFER_WIDTH,
                        help="big-expert buffer (A) around the core (default: %(default)s)")
    args = parser.parse_args(args)
    start = time.perf_counter()
    summary = make_dataset(args.out, FrameCounts().scaled(args.scale), args.labeller, args.seed,
                           args.buffer_width, workers=threads.thread_budget())
    print(json.dumps(summary, indent=2))
    print(f"data written to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
