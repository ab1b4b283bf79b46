"""The benchmark run: models prepared once, then speed rows, scaling, cost weights, memory,
training steps and the preset rows, as one JSON-ready dictionary."""

import dataclasses
import datetime
import os
import pathlib
import platform
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

import ase
from ase.io import read

from nequip_moe.benchmarking.capacity import capacity_section
from nequip_moe.benchmarking.memory import memory_section
from nequip_moe.benchmarking.models import BenchModel, load_bench_model, prepare_models
from nequip_moe.benchmarking.options import MODEL_NAMES, BenchOptions
from nequip_moe.benchmarking.preset import preset_section
from nequip_moe.benchmarking.speed import cost_weights, scaling_from_rows, speed_rows
from nequip_moe.benchmarking.structures import bench_slabs
from nequip_moe.benchmarking.training import training_section
from nequip_moe.benchmarking.untrained import untrained_checkpoints


def read_structures(path, supercells: Sequence[int] = (1,)) -> List[ase.Atoms]:
    """Every frame of an extxyz file, repeated ``(k, k, 1)`` for each ``k``, smallest first.

    Args:
        path: extxyz file
        supercells: in-plane repeats
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file `{path}` does not exist")
    try:
        frames = read(path, index=":")
    except Exception as e:
        raise ValueError(f"cannot read `{path}` as extxyz: {e}") from e
    if any(k < 1 for k in supercells):
        raise ValueError(f"supercells must be positive integers, got {list(supercells)}")
    structures = []
    for atoms in frames:
        for k in supercells:
            big = atoms.repeat((k, k, 1))
            big.info = {**atoms.info, "source": str(path), "supercell": [k, k, 1]}
            structures.append(big)
    return sorted(structures, key=len)


def machine_info(device: torch.device) -> Dict:
    """Date, host, CPU or GPU, threads, load average and versions."""
    import allegro
    import nequip

    from nequip_moe import __version__

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "nequip": nequip.__version__,
            "nequip-allegro": allegro.__version__,
            "nequip-moe": __version__,
            "ase": ase.__version__,
            "numpy": np.__version__,
        },
    }


def sweep(
    models: Dict[str, BenchModel],
    structures: Sequence[ase.Atoms],
    fractions: Sequence[float],
    options: BenchOptions,
    device: torch.device,
    log: Callable[[str], None],
) -> List[Dict]:
    """Speed rows of every structure at every fraction."""
    rows = []
    for atoms in structures:
        start = time.perf_counter()
        new = speed_rows(
            models, atoms, fractions, options.repeats, options.warmup, device, options.clock
        )
        rows.extend(new)
        moe_times = ", ".join(f"moe f={r['hf_fraction']:.2f} {r['t_moe_s']:.3g} s" for r in new)
        log(
            f"N={len(atoms)}: big {new[0]['t_big_s']:.3g} s, small {new[0]['t_small_s']:.3g} s, "
            f"{moe_times} ({time.perf_counter() - start:.0f} s)"
        )
    return rows


def model_files(options: BenchOptions, example: ase.Atoms) -> Dict[str, str]:
    """The user's model files, or checkpoints of the config's untrained models."""
    if options.model_files is not None:
        return {name: str(options.model_files[name]) for name in MODEL_NAMES}
    return untrained_checkpoints(
        options.config, example, options.out_dir, options.model_dtype, options.hf_expert
    )


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> Dict:
    """Run the speed, scaling, memory, training and preset benchmarks; returns the results.

    Args:
        options: what to run
        log: progress messages
    """
    from nequip.utils.global_state import set_global_state

    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available")
    if options.clock == "cpu" and device.type != "cpu":
        raise ValueError("--clock cpu times CPU runs only: use --clock wall on a GPU")
    if options.structure is None:
        raise ValueError("no structure: pass an extxyz file (--structure)")
    if options.model_files is None and options.config is None:
        raise ValueError("give a training config or the three model files")
    if options.preset is not None and options.config is None:
        raise ValueError(f"--preset {options.preset} builds its models from a training config")
    set_global_state(allow_tf32=False)
    results = {"machine": machine_info(device), "options": dataclasses.asdict(options)}
    structures = read_structures(options.structure, options.supercells)
    out_dir = pathlib.Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    files = model_files(options, structures[0])
    models = prepare_models(files, options.eager, out_dir, device, options.hf_expert, log)
    rows = sweep(models, structures, options.fractions, options, device, log)
    results["model_dtype"] = {name: models[name].metadata.get("model_dtype") for name in models}
    results["rows"] = rows
    results["scaling"] = scaling_from_rows(rows)
    results["cost_weights"] = cost_weights(rows, models["moe"].experts)

    results["memory"] = None
    if options.memory:
        log(f"peak memory at {len(structures[-1])} atoms (one subprocess per model)")
        results["memory"] = memory_section(models, structures[-1], options.memory_fraction, device)

    results["capacity"] = None
    if options.fit_slabs:
        log(f"largest system on {device}: slabs of sizes {list(options.fit_slabs)}")
        results["capacity"] = capacity_section(
            models, bench_slabs(options.fit_slabs), options.memory_fraction, device, log
        )

    results["training"] = None
    if options.training:
        checkpoints = {n: files[n] for n in ("moe", "big") if files[n].endswith(".ckpt")}
        if len(checkpoints) < 2:
            results["training"] = {
                "skipped": "training steps need nequip checkpoints of the MoE and the big "
                "expert (a config or .ckpt model files), not packages or compiled files"
            }
        else:
            log("training steps (nequip training module, eager)")
            eager = {n: load_bench_model(n, checkpoints[n], device, options.hf_expert)
                     for n in checkpoints}
            rng = np.random.default_rng(0)
            frames = []
            for _ in range(options.train_frames):
                atoms = structures[0].copy()
                atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
                frames.append(atoms)
            results["training"] = training_section(
                checkpoints, eager, frames, options.memory_fraction, options.repeats,
                options.warmup, device,
            )

    results["presets"] = None
    if options.preset is not None:
        results["presets"] = {options.preset: preset_section(options, structures, device, log)}
    results["machine"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    return results
