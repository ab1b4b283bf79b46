"""Stage 1 of the Pt + CO example: labelled reference frames with per-atom expert labels.

Builds (with ``structures.py``) bulk fcc Pt (equation of state, strained and rattled cells),
Pt(111) slabs with CO at several coverages and sites, CO desorption, gas-phase CO and short
Langevin MD snapshots; labels them with energy, forces and stress from an offline calculator
(``emt`` or ``sevenn``); gives every atom an expert label (0 = big, 1 = small) from region rules; and
writes ``train.xyz``, ``val.xyz``, ``test.xyz`` and a held-out bulk equation-of-state set
``eos.xyz``. Run alone with::

    python examples/pt_co/data.py --out examples/pt_co/out/data [--labeller sevenn]
"""

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Callable, Dict, List

import numpy as np
from ase import Atoms
from ase.io import read, write

from nequip_moe.data.regions import Depth, Near, assign_experts
from structures import (
    attach_labels,
    bulk_eos,
    bulk_eos_heldout,
    bulk_strained,
    clean_slabs,
    desorption,
    gas_co,
    large_slabs_with_co,
    md_snapshots,
    quarter_monolayer,
    slabs_with_co,
)


ELEMENTS = ("C", "O", "Pt")
SPLITS = ("train", "val", "test")
BULK_KINDS = ("bulk", "eos")  # frame kinds (prefixes) without a surface


@dataclasses.dataclass
class FrameCounts:
    """Number of frames of each kind (a small recipe covering bulk, surfaces, CO and MD).

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
    from nequip_moe._composite import expert_label_array
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
    args = parser.parse_args(args)
    start = time.perf_counter()
    summary = make_dataset(args.out, FrameCounts().scaled(args.scale), args.labeller, args.seed)
    print(json.dumps(summary, indent=2))
    print(f"data written to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
