"""Stage 5 of the Pt + CO example: the validation report.

Measures (``measures.py``) every model on the held-out data, judges the example's claims
(``claims.py``; the experts' consistency on the worst of each MoE's training seeds) and
writes ``report.json``, ``report.md`` and PNGs (``render.py``). The gated-MoE section
(``adaptive.py``) and the production-size speed section (``production.py``) join when their
inputs are given.
"""

import contextlib
import importlib.util
import json
import pathlib
import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from ase.io import read

from nequip_moe.validation.dynamics import nve_timestep_scaling

from claims import baseline_claims, family_claims, teacher_claims
from measures import (
    ATOM_CLASSES,
    ATOM_GROUPS,
    BIG,
    BUFFER_WIDTHS,
    ReportModel,
    atom_classes,
    atom_groups,
    buffer_sweep,
    eos_curves,
    expert_cutoffs,
    expert_disagreement,
    force_error_by_distance,
    interface_penalty,
    lammps_nve,
    lattice_constant,
    nve_structure,
    predict,
    response_beyond_cutoff,
    shared_bulk_frames,
    speedup,
    split_crystal_forces,
    teacher_sanity,
    test_errors,
)
from render import markdown, plot_report
from structures import PT_A0, BenchSlab

# the split crystal's strains: past the training volumes (data.py trains within +-3 %)
SPLIT_STRAINS = (-0.04, -0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03, 0.04)

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parent
# the buffer sweep's timed structure: a Pt(111) slab thick enough for a small-expert middle
SWEEP_TIMING_SLAB = BenchSlab(size=6, layers=8)


@contextlib.contextmanager
def section(message: str):
    """Print ``message`` and, when the block ends, the seconds it took."""
    print(f"    {message} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"    {message}: {time.perf_counter() - start:.0f} s", flush=True)


def make_report(
    models: Sequence[ReportModel],
    data_dir,
    out_dir,
    nve_steps: int,
    speed_files: Optional[Dict[str, pathlib.Path]] = None,
    pair_allegro_file: Optional[pathlib.Path] = None,
    bench_file: Optional[pathlib.Path] = None,
    notes: Optional[Dict] = None,
    device: str = "cpu",
    *,
    without_agreement: Optional[Dict[str, str]] = None,
    buffer_widths: Optional[Sequence[float]] = BUFFER_WIDTHS,
    buffer_model: Optional[str] = None,
    time_buffer_sweep: bool = True,
    adaptive: Union[bool, Dict, None] = None,
    big_package: Optional[pathlib.Path] = None,
    seeds: Optional[Dict[str, Sequence[str]]] = None,
    production: Optional[Dict] = None,
) -> Dict:
    """Measure everything, write ``report.json``, ``report.md`` and PNGs; returns the report.

    Args:
        models: models to compare; names ``big`` and ``small`` mark the single-model baselines
        data_dir: the data stage's folder (``test.xyz``, optional ``eos.xyz``)
        out_dir: where the report goes
        nve_steps: steps of each NVE run (at 1 fs; half as many at 2 fs for the dt^2 check)
        speed_files: ``{moe, big, small}`` model files timed here for the speed-up (``None``:
            skipped; ignored with ``bench_file``)
        pair_allegro_file: MoE compiled for pair_allegro for the LAMMPS run (``None``: skipped)
        bench_file: ``nequip-moe bench --json`` of the compiled MoE and its experts: the
            speed-up, ``c`` and the cost weights of the trained experts
        notes: extra facts for the report (sizes, timings; ``labeller`` decides whether the
            teacher's label sanity is judged)
        device: device of the compiled files and of the timings
        without_agreement: ``{co-trained MoE: the same MoE trained without agreement terms}``
            for the split-crystal claims (default: ``{"moe_cotrain": "moe"}`` when both exist)
        buffer_widths: buffer widths (A) of the sweep (``None``: no sweep)
        buffer_model: the MoE the sweep relabels (default: the first co-trained MoE, else the
            first MoE)
        time_buffer_sweep: also time the MoE at every width (eager, on ``SWEEP_TIMING_SLAB``)
        adaptive: the gated-MoE section (``adaptive.adaptive_section``): ``True`` with its
            default inputs (the packaged ``big`` and ``small`` models, ``data_dir``, ``out_dir``,
            ``nve_steps``, ``device``), or a dict of keyword arguments that replace those;
            ``None``/``False`` or no ``adaptive.py``: left out
        big_package: the packaged (eager) all-big model, the MoEs' big expert: the split
            crystal section then gives its response beyond the small expert's cutoff
            (``response_beyond_cutoff``; ``None``: left out)
        seeds: ``{MoE: [its name, the names of its other training seeds]}``: the seeds are
            measured where the experts' consistency is (test errors, EOS, split crystal,
            disagreement) and each consistency claim is judged on the worst seed; dynamics,
            speed and the buffer sweep use the MoE itself
        production: keyword arguments of ``production.production_section`` (``moe_file``,
            ``big_file``, ``steps``, ``device``; needs ``bench_file``), or ``None``
    """
    data_dir, out_dir = pathlib.Path(data_dir), pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = read(data_dir / "test.xyz", index=":")
    moes = [m.name for m in models if m.is_moe]
    seeds = {name: list(members) for name, members in (seeds or {}).items()}
    extra_seeds = {n for members in seeds.values() for n in members[1:]}
    by_name = {m.name: m for m in models}
    if without_agreement is None:  # run.py's names: staged `moe` (agreement), `moe_noagree`
        known = ({"moe": "moe_noagree"}, {"moe_cotrain": "moe"})
        without_agreement = next((p for p in known if {*p, *p.values()} <= set(moes)), {})
    without_agreement = {k: v for k, v in without_agreement.items() if k in moes and v in moes}
    summary_file = data_dir / "summary.json"
    data_summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    notes = dict(notes or {})
    for key in ("labeller", "buffer_width"):
        if key not in notes and key in data_summary:
            notes[key] = data_summary[key]
    report = {"notes": notes, "models": {m.name: m.title for m in models},
              "without_agreement": without_agreement, "seeds": seeds, "data": data_summary}

    with section(f"test errors on {len(test)} frames"):
        predictions = {m.name: predict(m.calculator(), test) for m in models}
    report["errors"] = {name: test_errors(test, p) for name, p in predictions.items()}
    report["atom_counts"] = {
        name: int(sum((atom_classes(a) == name).sum() for a in test)) for name in ATOM_CLASSES
    }
    report["group_counts"] = {
        name: int(sum(atom_groups(a)[name].sum() for a in test)) for name in ATOM_GROUPS
    }
    report["force_error_vs_interface"] = {
        name: force_error_by_distance(test, p) for name, p in predictions.items()
    }
    with section(f"interface penalty of {len(moes)} MoEs (their small experts alone)"):
        report["interface_penalty"] = {
            name: interface_penalty(by_name[name], test, predictions[name]) for name in moes
        }

    eos_file = data_dir / "eos.xyz"
    eos_frames = read(eos_file, index=":") if eos_file.is_file() else []
    report["eos"] = None
    if eos_frames:
        with section(f"equation of state on {len(eos_frames)} held-out bulk frames"):
            report["eos"] = eos_curves(eos_frames, models)
        report["eos"]["outside_training"] = outside_training(report["eos"], data_summary)
    reference_fit = report["eos"]["fits"]["reference"] if report["eos"] else {}

    all_frames = [a for split in ("train", "val", "test") if (data_dir / f"{split}.xyz").is_file()
                  for a in read(data_dir / f"{split}.xyz", index=":")]
    report["teacher"] = teacher_sanity(reference_fit, all_frames)

    report["split_crystal"] = None
    if moes:
        a0 = lattice_constant(reference_fit, PT_A0)
        split_models = [m for m in models if m.is_moe or m.name == "big"]
        with section(f"split perfect crystal at a0 = {a0:.3f} A, {len(split_models)} models"):
            report["split_crystal"] = split_crystal_forces(split_models, a0, SPLIT_STRAINS)
        report["split_crystal"]["outside_training"] = [
            not _in_range(s, data_summary.get("train_bulk_strain")) for s in SPLIT_STRAINS]
        if big_package is not None:
            from nequip.integrations.ase import NequIPCalculator
            from nequip_moe.compat.nequip_api import calculator_from_saved_model

            r_small = expert_cutoffs(by_name[moes[0]])[1]
            big = calculator_from_saved_model(
                NequIPCalculator, str(big_package), device=device,
                chemical_species_to_atom_type_map=True,
            )
            with section(f"big expert's response beyond the small cutoff {r_small} A"):
                report["split_crystal"]["beyond_small_cutoff"] = response_beyond_cutoff(
                    big, a0, r_small, SPLIT_STRAINS
                )

    report["expert_disagreement"] = {}
    shared = shared_bulk_frames(test, eos_frames)
    if shared and moes:
        with section(f"experts' disagreement on {len(shared)} shared bulk frames"):
            for name in moes:
                report["expert_disagreement"][name] = expert_disagreement(by_name[name], shared)

    report["buffer_sweep"] = None
    primary = [name for name in moes if name not in extra_seeds]
    sweep_model = buffer_model or next(iter(without_agreement), primary[0] if primary else None)
    if buffer_widths and sweep_model in moes and "big" in predictions:
        timing = SWEEP_TIMING_SLAB.build() if time_buffer_sweep else None
        with section(f"buffer sweep of {sweep_model}: widths {list(buffer_widths)} A"):
            report["buffer_sweep"] = buffer_sweep(
                by_name[sweep_model], test, predictions["big"], buffer_widths, timing
            )
        report["buffer_sweep"]["data_buffer_width"] = notes.get("buffer_width")

    structure = nve_structure(test)
    report["nve_drift"], report["nve_scaling"] = None, None
    if structure is not None:
        report["nve_drift"], report["nve_scaling"] = {}, {}
        for model in models:
            if model.name in primary + ["big"]:
                with section(f"NVE {model.title}: {nve_steps} steps at 1 and "
                             f"{max(1, nve_steps // 2)} at 2 fs, {len(structure)} atoms"):
                    runs = nve_timestep_scaling(model.calculator(), structure, nve_steps)
                report["nve_drift"][model.name] = runs["dt"]
                report["nve_scaling"][model.name] = runs
    report["lammps_nve"] = None
    if pair_allegro_file is not None and structure is not None:
        with section(f"LAMMPS NVE of the MoE: {nve_steps} steps"):
            report["lammps_nve"] = lammps_nve(pair_allegro_file, structure, nve_steps, device)
        stem = pathlib.Path(pair_allegro_file).name.split(".")[0].removesuffix("_pair_allegro")
        report["lammps_nve"]["model"] = stem if stem in moes else (moes[0] if moes else stem)

    report["speedup"] = None
    bench = json.loads(pathlib.Path(bench_file).read_text()) if bench_file is not None else None
    if bench is not None:
        report["speedup"] = bench_speedup(bench, primary[0] if primary else "moe")
    elif speed_files is not None:
        hf_fraction = float(np.mean(np.concatenate([a.arrays["expert"] for a in test]) == BIG))
        timed = next(m.name for m in models if m.path == speed_files["moe"])
        with section(f"speed-up at high-fidelity fraction {hf_fraction:.2f}"):
            report["speedup"] = {
                "model": timed,
                **speedup(speed_files, hf_fraction, out_dir / "benchmark", device),
            }

    report["production"] = None
    if production is not None and bench is not None:
        from production import production_claims, production_section

        with section("production-size speed in LAMMPS"):
            report["production"] = production_section(
                bench=bench, a0=data_summary.get("a0", PT_A0),
                buffer_width=data_summary.get("buffer_width", 4.5),
                log=lambda message: print(f"    {message}", flush=True), **production)

    report["claims"] = teacher_claims(report)
    report["claims"] += [c for moe in primary for c in family_claims(report, seeds.get(moe, [moe]))]
    report["claims"] += baseline_claims(report)
    if report["production"]:
        report["claims"] += production_claims(report["production"])

    report["adaptive"] = None
    adaptive_module = load_adaptive() if adaptive else None
    if adaptive_module is not None:
        arguments = adaptive_inputs(models, data_dir, out_dir, nve_steps, device)
        arguments.update(adaptive if isinstance(adaptive, dict) else {})
        if arguments.get("big_file") and arguments.get("small_file"):
            with section("gated (adaptive) MoE"):
                report["adaptive"] = adaptive_module.adaptive_section(**arguments)
            for c in report["adaptive"].get("claims", []):
                report["claims"].append({"model": "gated", **c})

    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    figures = plot_report(report, out_dir)
    extra = [adaptive_module.adaptive_markdown(report["adaptive"])] if report["adaptive"] else []
    if report["production"]:
        from production import production_markdown

        extra.append("\n".join(production_markdown(report["production"])))
    (out_dir / "report.md").write_text(markdown(report, figures, extra))
    return report


def _in_range(strain: float, bounds) -> bool:
    return not bounds or bounds[0] - 1e-9 <= strain <= bounds[1] + 1e-9


def outside_training(eos: Dict, data_summary: Dict) -> List[bool]:
    """For each held-out EOS volume: outside the bulk strains trained on (``data.py``'s
    ``train_bulk_strain``, linear strain against the labeller's a0)?"""
    a0 = data_summary.get("a0")
    if not a0:
        return [False] * len(eos["volumes"])
    v0 = a0**3 / 4.0
    return [not _in_range((v / v0) ** (1.0 / 3.0) - 1.0, data_summary.get("train_bulk_strain"))
            for v in eos["volumes"]]


def bench_speedup(bench: Dict, model: str) -> Dict:
    """The report's speed-up entry from ``nequip-moe bench --json`` (its largest structure)."""
    row = max(bench["rows"], key=lambda r: r["n_atoms"])
    return {
        "model": model,
        "measured": row["speedup"],
        "ideal": row["ideal_speedup"],
        "efficiency": row["efficiency"],
        "hf_fraction": row["hf_fraction"],
        "cost_ratio_small_over_big": row["cost_ratio"],
        "cost_weights": bench.get("cost_weights"),
        "atoms": row["n_atoms"],
        "seconds": {"moe": row["t_moe_s"], "big": row["t_big_s"], "small": row["t_small_s"]},
        "compiled": not bench["options"].get("eager", False),
        "load_average": bench.get("machine", {}).get("load_average"),
    }


def adaptive_inputs(models: Sequence[ReportModel], data_dir, out_dir, nve_steps: int,
                    device: str) -> Dict:
    """Default arguments of ``adaptive.adaptive_section``: the packages of the all-big and
    all-small models (the gated MoE evaluates them eagerly)."""

    def package(name):
        model = next((m for m in models if m.name == name), None)
        if model is None:
            return None
        packaged = model.path.parent / f"{name}.nequip.zip"
        return packaged if packaged.is_file() else model.path

    return {"big_file": package("big"), "small_file": package("small"), "data_dir": data_dir,
            "out_dir": out_dir, "nve_steps": max(nve_steps, 400), "device": device}


def load_adaptive():
    """``examples/pt_co/adaptive.py`` (the gated-MoE section) when it exists, else ``None``."""
    path = EXAMPLE_DIR / "adaptive.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("adaptive", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
