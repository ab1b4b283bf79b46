"""Stage 5 of the Pt + CO example: the validation report.

Measures (``measures.py``) every model on the held-out data, judges the example's claims
(``claims.py``) and writes ``report.json``, ``report.md`` and PNGs (``render.py``).
"""

import contextlib
import json
import pathlib
import time
from typing import Dict, Optional, Sequence

import numpy as np
from ase.io import read

from claims import check_claims
from measures import (
    ATOM_CLASSES,
    BIG,
    ReportModel,
    atom_classes,
    eos_curves,
    force_error_by_distance,
    lammps_nve,
    nve_drift,
    nve_structure,
    predict,
    speedup,
    test_errors,
)
from render import markdown, plot_report


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
    notes: Optional[Dict] = None,
    device: str = "cpu",
) -> Dict:
    """Measure everything, write ``report.json``, ``report.md`` and PNGs; returns the report.

    Args:
        models: models to compare; names ``big`` and ``small`` mark the single-model baselines
        data_dir: the data stage's folder (``test.xyz``, optional ``eos.xyz``)
        out_dir: where the report goes
        nve_steps: steps of each NVE run
        speed_files: ``{moe, big, small}`` model files for the speed-up (``None``: skipped)
        pair_allegro_file: MoE compiled for pair_allegro for the LAMMPS run (``None``: skipped)
        notes: extra facts for the report (sizes, timings)
        device: device of the compiled files and of the timings
    """
    data_dir, out_dir = pathlib.Path(data_dir), pathlib.Path(out_dir)
    test = read(data_dir / "test.xyz", index=":")
    moes = [m.name for m in models if m.is_moe]
    report = {"notes": notes or {}, "models": {m.name: m.title for m in models}}

    with section(f"test errors on {len(test)} frames"):
        predictions = {m.name: predict(m.calculator(), test) for m in models}
    report["errors"] = {name: test_errors(test, p) for name, p in predictions.items()}
    report["atom_counts"] = {
        name: int(sum((atom_classes(a) == name).sum() for a in test)) for name in ATOM_CLASSES
    }
    report["force_error_vs_interface"] = {
        name: force_error_by_distance(test, p) for name, p in predictions.items()
    }

    eos_file = data_dir / "eos.xyz"
    eos_frames = read(eos_file, index=":") if eos_file.is_file() else []
    report["eos"] = None
    if eos_frames:
        with section(f"equation of state on {len(eos_frames)} held-out bulk frames"):
            report["eos"] = eos_curves(eos_frames, models)

    structure = nve_structure(test)
    report["nve_drift"] = None
    if structure is not None:
        report["nve_drift"] = {}
        for model in models:
            if model.name in moes + ["big"]:
                with section(f"NVE {model.title}: {nve_steps} steps, {len(structure)} atoms"):
                    report["nve_drift"][model.name] = nve_drift(
                        model.calculator(), structure, nve_steps
                    )
    report["lammps_nve"] = None
    if pair_allegro_file is not None and structure is not None:
        with section(f"LAMMPS NVE of the MoE: {nve_steps} steps"):
            report["lammps_nve"] = lammps_nve(pair_allegro_file, structure, nve_steps, device)

    report["speedup"] = None
    if speed_files is not None:
        hf_fraction = float(np.mean(np.concatenate([a.arrays["expert"] for a in test]) == BIG))
        timed = next(m.name for m in models if m.path == speed_files["moe"])
        with section(f"speed-up at high-fidelity fraction {hf_fraction:.2f}"):
            report["speedup"] = {
                "model": timed,
                **speedup(speed_files, hf_fraction, out_dir / "benchmark", device),
            }

    report["claims"] = [c for moe in moes for c in check_claims(report, moe)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    figures = plot_report(report, out_dir)
    (out_dir / "report.md").write_text(markdown(report, figures))
    return report
