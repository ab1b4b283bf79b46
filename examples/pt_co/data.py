"""Stage 1 of the Pt + CO example: labelled reference frames with per-atom expert labels.

Builds bulk fcc Pt (equation of state, strained and rattled cells), Pt(111) slabs with CO at
several coverages and sites, CO desorption, gas-phase CO and short Langevin MD snapshots;
labels them with energy, forces and stress from an offline calculator (``emt`` or
``sevenn``); gives every atom an expert label (0 = big, 1 = small) from region rules; and
writes ``train.xyz``, ``val.xyz``, ``test.xyz`` and a held-out bulk equation-of-state set
``eos.xyz``. Run alone with::

    python examples/pt_co/data.py --out examples/pt_co/out/data [--labeller sevenn]
"""

import argparse
import dataclasses
import json
import math
import pathlib
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from nequip_moe.data.regions import Depth, Near, assign_experts


PT_A0 = 3.92  # EMT lattice constant of Pt (A); SevenNet PBE gives 3.98
CO_BOND = 1.15
ADSORPTION_HEIGHT = {"ontop": 1.85, "bridge": 1.55, "fcc": 1.35, "hcp": 1.35}
SITES = tuple(ADSORPTION_HEIGHT)
ELEMENTS = ("C", "O", "Pt")
SPLITS = ("train", "val", "test")
BULK_KINDS = ("bulk", "eos")  # frame kinds (prefixes) without a surface
EOS_SCALES = np.linspace(0.95, 1.05, 9)  # held-out grid, offset from the training grid


@dataclasses.dataclass
class FrameCounts:
    """Number of frames of each kind (the recipe of ``shared/data.md``, trimmed).

    Args:
        bulk_eos: 2x2x2 conventional fcc cells at a = a0 x [0.94 .. 1.06]
        bulk_strained: bulk cells with symmetric strain <= 3 % and rattle 0.02-0.1 A
        clean_slab: Pt(111) 3x3x4 slabs, rattled
        slab_co: 3x3x4 slabs with 1-4 CO on top/bridge/fcc/hcp, tilted <= 15 deg
        quarter_ml: 2x2x4 slabs with one CO (1/4 monolayer)
        large_slab_co: 4x4x4 slabs with 4-8 CO
        desorption: one CO atop at 1.6-6.0 A height
        gas_co: one CO molecule in a 12 A box, C-O 1.03-1.35 A
        md: Langevin snapshots of a CO-covered slab, run with the labeller itself
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

    def scaled(self, factor: float) -> "FrameCounts":
        """The same recipe with every count multiplied by ``factor`` (at least one each)."""
        return FrameCounts(
            **{
                f.name: max(1, round(getattr(self, f.name) * factor))
                for f in dataclasses.fields(self)
            }
        )

    @property
    def total(self) -> int:
        return sum(dataclasses.asdict(self).values())


# ---------------------------------------------------------------- structures


def _with_kind(atoms: Atoms, kind: str) -> Atoms:
    atoms.info = {"kind": kind}
    atoms.pbc = True
    return atoms


def _rattle(atoms: Atoms, rng: np.random.Generator, pt: float, co: float = 0.02) -> Atoms:
    """Random displacements: normal with std ``pt`` for Pt, at most ``co`` A for C and O."""
    disp = rng.normal(0.0, pt, (len(atoms), 3))
    is_co = atoms.numbers != 78
    directions = rng.normal(size=(int(is_co.sum()), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    disp[is_co] = directions * rng.uniform(0.0, co, (len(directions), 1))
    atoms.positions += disp
    return atoms


def _pt_bulk(a: float, repeat: int = 2) -> Atoms:
    return bulk("Pt", "fcc", a=a, cubic=True).repeat(repeat)


def bulk_eos(n: int, rng: np.random.Generator) -> List[Atoms]:
    """Unrattled 32-atom fcc Pt cells on an even grid of lattice constants."""
    return [_with_kind(_pt_bulk(PT_A0 * s), "bulk_eos") for s in np.linspace(0.94, 1.06, n)]


def bulk_eos_heldout(scales: Sequence[float] = EOS_SCALES) -> List[Atoms]:
    """The held-out equation-of-state set (never trained on)."""
    return [_with_kind(_pt_bulk(PT_A0 * s), "eos_heldout") for s in scales]


def bulk_strained(n: int, rng: np.random.Generator) -> List[Atoms]:
    """32- or 108-atom cells, symmetric strain <= 3 %, rattle 0.02-0.1 A."""
    frames = []
    for i in range(n):
        atoms = _pt_bulk(PT_A0, repeat=3 if i % 5 == 4 else 2)
        strain = rng.uniform(-0.03, 0.03, (3, 3))
        strain = 0.5 * (strain + strain.T)
        atoms.set_cell(atoms.cell @ (np.eye(3) + strain), scale_atoms=True)
        frames.append(_with_kind(_rattle(atoms, rng, rng.uniform(0.02, 0.1)), "bulk_strained"))
    return frames


def _slab(size) -> Atoms:
    """Pt(111) slab; keeps ase's adsorption-site table until ``_with_kind`` clears it."""
    return fcc111("Pt", size, a=PT_A0, vacuum=8.0)


def _add_co(slab: Atoms, site: str, offset, rng: np.random.Generator, height=None) -> None:
    """Add CO (C down) at ``site`` of surface cell ``offset``, tilted by up to 15 degrees.

    Heights are above the top Pt layer (ase remembers its index in the site table).
    """
    tilt = math.radians(rng.uniform(0.0, 15.0))
    phi = rng.uniform(0.0, 2.0 * math.pi)
    o_pos = CO_BOND * np.array(
        [math.sin(tilt) * math.cos(phi), math.sin(tilt) * math.sin(phi), math.cos(tilt)]
    )
    co = Atoms("CO", positions=[(0.0, 0.0, 0.0), o_pos])
    height = ADSORPTION_HEIGHT[site] if height is None else height
    add_adsorbate(slab, co, height, site, offset=offset)


def _covered_slab(size, num_co: int, rng: np.random.Generator, kind: str) -> Atoms:
    """Slab with ``num_co`` CO on one kind of site in distinct surface cells."""
    slab = _slab(size)
    site = SITES[rng.integers(len(SITES))]
    cells = [(i, j) for i in range(size[0]) for j in range(size[1])]
    for k in rng.choice(len(cells), num_co, replace=False):
        _add_co(slab, site, cells[k], rng)
    return _with_kind(_rattle(slab, rng, 0.05), kind)


def clean_slabs(n: int, rng: np.random.Generator) -> List[Atoms]:
    return [_with_kind(_rattle(_slab((3, 3, 4)), rng, 0.05), "clean_slab") for _ in range(n)]


def slabs_with_co(n: int, rng: np.random.Generator) -> List[Atoms]:
    return [_covered_slab((3, 3, 4), 1 + i % 4, rng, "slab_co") for i in range(n)]


def quarter_monolayer(n: int, rng: np.random.Generator) -> List[Atoms]:
    frames = []
    for i in range(n):
        slab = _slab((2, 2, 4))
        _add_co(slab, SITES[i % len(SITES)], (0, 0), rng)
        frames.append(_with_kind(_rattle(slab, rng, 0.05), "quarter_ml"))
    return frames


def large_slabs_with_co(n: int, rng: np.random.Generator) -> List[Atoms]:
    return [_covered_slab((4, 4, 4), 4 + 2 * (i % 3), rng, "large_slab_co") for i in range(n)]


def desorption(n: int, rng: np.random.Generator) -> List[Atoms]:
    frames = []
    for height in np.linspace(1.6, 6.0, n):
        slab = _slab((3, 3, 4))
        _add_co(slab, "ontop", (1, 1), rng, height=height)
        frames.append(_with_kind(_rattle(slab, rng, 0.05), "desorption"))
    return frames


def gas_co(n: int, rng: np.random.Generator) -> List[Atoms]:
    frames = []
    for bond in np.linspace(1.03, 1.35, n):
        co = Atoms("CO", positions=[(6.0, 6.0, 6.0), (6.0, 6.0, 6.0 + bond)], cell=[12.0] * 3)
        frames.append(_with_kind(co, "gas_co"))
    return frames


def md_snapshots(
    n: int, rng: np.random.Generator, calc, steps_between: int = 10
) -> List[Atoms]:
    """Snapshots of a 3x3x4 slab with 2 CO, Langevin at 600 K (2 fs) with the labeller."""
    atoms = _covered_slab((3, 3, 4), 2, rng, "md")
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=600.0, rng=rng)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=600.0, friction=0.02, fixcm=False, rng=rng)
    frames = []
    for _ in range(n):
        dyn.run(steps_between)
        snapshot = atoms.copy()
        snapshot.info = {"kind": "md"}
        frames.append(snapshot)
    return frames


# ---------------------------------------------------------------- expert labels

EXPERT_NAMES = ("big", "small")  # label k means EXPERT_NAMES[k], as in configs/pt_co_moe.yaml
TOP_LAYER = Depth(expert="big", depth=1.0, species=["Pt"])
ADSORBATE_SHELL = Near(expert="big", species=["C", "O"], cutoff=4.0)


def label_experts(atoms: Atoms) -> np.ndarray:
    """Expert labels of the example: 0 (big) for C, O, Pt within 4 A of them and the top Pt
    layer of slabs; 1 (small) for the rest. Bulk frames are all small, gas CO all big.

    Args:
        atoms: a frame whose ``info["kind"]`` names its kind of structure
    """
    is_pt = atoms.numbers == 78
    rules = []
    if is_pt.any() and not atoms.info["kind"].startswith(BULK_KINDS):
        rules.append(TOP_LAYER)
    if not is_pt.all():
        rules.append(ADSORBATE_SHELL)
    return assign_experts(atoms, rules, EXPERT_NAMES, default_expert="small")


def mark_shared(atoms: Atoms) -> np.ndarray:
    """Per-atom ``shared`` marks for co-training: 1 for every atom of bulk frames, where both
    experts must agree; 0 elsewhere (``SharedEnvironments`` adds bulk-like Pt of slabs itself).

    Args:
        atoms: a frame whose ``info["kind"]`` names its kind of structure
    """
    is_bulk = atoms.info["kind"].startswith(BULK_KINDS)
    return np.full(len(atoms), int(is_bulk), dtype=np.int64)


# ---------------------------------------------------------------- labelling


def make_labeller(name: str):
    """The reference calculator: ``emt`` (ASE, fast, unphysical for CO) or ``sevenn``.

    Args:
        name: ``emt`` or ``sevenn`` (SevenNet ``7net-mf-0``, PBE modal, CPU)
    """
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if name == "sevenn":
        try:
            from sevenn.calculator import SevenNetCalculator
        except ImportError as e:
            raise RuntimeError(
                "the `sevenn` labeller needs SevenNet: install torch==2.13.0 first, then "
                "`pip install sevenn==0.13.0` (weights ship in the wheel)"
            ) from e
        return SevenNetCalculator("7net-mf-0", modal="PBE", device="cpu")
    raise ValueError(f"unknown labeller `{name}`: use `emt` or `sevenn`")


def attach_labels(frames: List[Atoms], calc) -> List[Atoms]:
    """Energy, forces and stress from ``calc`` stored as single-point results."""
    labelled = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        results = dict(
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(),
        )
        atoms.calc = SinglePointCalculator(atoms, **results)
        labelled.append(atoms)
    return labelled


# ---------------------------------------------------------------- dataset


def build_frames(counts: FrameCounts, calc, seed: int = 0) -> List[Atoms]:
    """All structures of the recipe, labelled by ``calc`` and with expert labels."""
    rng = np.random.default_rng(seed)
    builders: Dict[str, Callable] = {
        "bulk_eos": bulk_eos,
        "bulk_strained": bulk_strained,
        "clean_slab": clean_slabs,
        "slab_co": slabs_with_co,
        "quarter_ml": quarter_monolayer,
        "large_slab_co": large_slabs_with_co,
        "desorption": desorption,
        "gas_co": gas_co,
    }
    frames = []
    for name, builder in builders.items():
        frames += builder(getattr(counts, name), rng)
    frames = attach_labels(frames, calc)
    frames += attach_labels(md_snapshots(counts.md, rng, calc), calc)
    return add_region_arrays(frames)


def add_region_arrays(frames: List[Atoms]) -> List[Atoms]:
    """Set the per-atom ``expert`` and ``shared`` arrays of every frame."""
    for atoms in frames:
        atoms.arrays["expert"] = label_experts(atoms)
        atoms.arrays["shared"] = mark_shared(atoms)
    return frames


def split_by_kind(
    frames: List[Atoms], seed: int = 0, val: float = 0.1, test: float = 0.15
) -> Dict[str, List[Atoms]]:
    """Split every kind of frame into train/val/test; kinds with >= 3 frames reach all three."""
    rng = np.random.default_rng(seed)
    splits = {name: [] for name in SPLITS}
    kinds = dict.fromkeys(a.info["kind"] for a in frames)
    for kind in kinds:
        members = [a for a in frames if a.info["kind"] == kind]
        order = rng.permutation(len(members))
        n_test = max(1, round(test * len(members))) if len(members) >= 3 else 0
        n_val = max(1, round(val * len(members))) if len(members) >= 3 else 0
        splits["test"] += [members[i] for i in order[:n_test]]
        splits["val"] += [members[i] for i in order[n_test : n_test + n_val]]
        splits["train"] += [members[i] for i in order[n_test + n_val :]]
    return splits


def write_dataset(out_dir, splits: Dict[str, List[Atoms]], eos: List[Atoms]) -> Dict:
    """Write ``{train,val,test}.xyz``, ``eos.xyz`` (if ``eos``) and ``summary.json``; returns
    the summary."""
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
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def make_dataset(out_dir, counts: FrameCounts, labeller: str = "emt", seed: int = 0) -> Dict:
    """The whole data stage: build, label, split and write the example's data.

    Args:
        out_dir: folder for ``train.xyz``, ``val.xyz``, ``test.xyz``, ``eos.xyz``
        counts: frames of each kind
        labeller: ``emt`` or ``sevenn``
        seed: seed of every random choice
    """
    calc = make_labeller(labeller)
    frames = build_frames(counts, calc, seed)
    eos = add_region_arrays(attach_labels(bulk_eos_heldout(), calc))
    summary = write_dataset(out_dir, split_by_kind(frames, seed), eos)
    summary["labeller"] = labeller
    return summary


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
    from nequip_moe.data.regions import check_expert_labels
    from nequip_moe.scripts.assign import _read_rules_file

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
        rules, settings = _read_rules_file(rules_file)
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
        atoms.arrays["expert"] = check_expert_labels(
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
    args = parser.parse_args(args)
    start = time.perf_counter()
    summary = make_dataset(args.out, FrameCounts().scaled(args.scale), args.labeller, args.seed)
    print(json.dumps(summary, indent=2))
    print(f"data written to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
