"""How nequip-moe runs ``nequip-compile --mode aotinductor``: with a fixed thread count.

Inductor writes the compile's torch thread count into the CPU kernels it generates: above one
thread they are OpenMP-parallel loops, at one plain loops. A file compiled with two threads and
run on one (LAMMPS with one thread per MPI rank, ``nequip-moe bench --threads 1``) is slower,
by a different factor for each model: the Pt+CO example's MoE, compiled with two threads, ran
its big expert's share 1.2x and its small expert's 2x slower on one thread than compiled with
one, while all-big, compiled with one, did not, so their speed-up read 2.64x instead of 3.58x
(ideal 3.32x). Files that are timed against each other must be compiled alike: every compile
of this package goes through ``compile_model`` with the threads of the runs they are for.
"""

import os
import pathlib
import subprocess
import sys
from typing import Dict

# one thread per MPI rank: how pair_style allegro runs on CPUs
COMPILE_THREADS = 1


def nequip_tool(name: str) -> str:
    """The nequip (or nequip-moe) command ``name`` of this Python environment, else on PATH."""
    local = pathlib.Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def compile_environment(threads: int = COMPILE_THREADS) -> Dict[str, str]:
    """This process's environment with ``threads`` torch (OpenMP, MKL) threads, for a compile.

    Args:
        threads: threads the compiled file will run with
    """
    if threads < 1:
        raise ValueError(f"compile threads must be >= 1, not {threads}")
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def compile_model(model, out, target: str, device: str = "cpu", threads: int = COMPILE_THREADS,
                  cwd=None) -> pathlib.Path:
    """``nequip-compile MODEL OUT --mode aotinductor --target TARGET`` with ``threads`` threads.

    Args:
        model: checkpoint or ``.nequip.zip`` package
        out: compiled file to write, ending in ``.nequip.pt2``
        target: ``ase``, ``pair_allegro`` or ``pair_nequip``
        device: device to compile for
        threads: threads the compiled file will run with (default: one)
        cwd: folder to run in (a checkpoint's training data paths may be relative to its own)
    """
    cmd = [nequip_tool("nequip-compile"), str(model), str(out), "--mode", "aotinductor", "--device", device,
           "--target", target]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env=compile_environment(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return pathlib.Path(out)
