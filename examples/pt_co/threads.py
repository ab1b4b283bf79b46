"""Thread budget of the example's processes: no oversubscription, no spin-waiting, no page
faults on every tensor.

The budget is ``OMP_NUM_THREADS`` when it is set (the threads of the whole run, not of each
process), else the CPUs this process may run on. Jobs that run side by side split it
(``split_budget``); every child process gets its share in ``OMP_NUM_THREADS`` (torch reads
it at start-up), and ``OMP_WAIT_POLICY=PASSIVE``, so that an OpenMP thread waiting at a barrier
sleeps instead of spinning on a core another job needs. With spinning threads and one
competing job on 2 cores, the SevenNet labelling (2 torch threads) ran 14x slower than idle.

glibc's malloc hands allocations above its mmap threshold (128 kB, rising with use) to
``mmap`` and gives them back on ``free``, so every large tensor of a training step is fresh
pages the kernel faults in and zeroes: on nequip-train's double backward that was 0.6 s of
system time per second of user time (530,000 minor faults in 5 steps of 8 frames).
``MALLOC_SETTINGS`` (a 32 MB mmap threshold, the most glibc allows, and a 256 MB trim
threshold) keep those pages in the heap for reuse: no faults, the same results.

Import this module before torch: OpenMP reads ``OMP_WAIT_POLICY`` when it starts; the malloc
settings reach this process through ``mallopt`` and child processes through the environment.
"""

import ctypes
import os
from typing import Dict, Tuple

MALLOC_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024,
    "MALLOC_TRIM_THRESHOLD_": 256 * 1024 * 1024,
    "MALLOC_TOP_PAD_": 64 * 1024 * 1024,
}
# mallopt parameters of glibc's malloc.h, in the order of MALLOC_SETTINGS
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2}


def _tune_malloc() -> None:
    """Apply ``MALLOC_SETTINGS`` to this process (glibc; elsewhere nothing to do) and to the
    environment its children inherit."""
    for name, value in MALLOC_SETTINGS.items():
        os.environ.setdefault(name, str(value))
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for name, value in MALLOC_SETTINGS.items():
        libc.mallopt(_MALLOPT[name], int(os.environ[name]))


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_tune_malloc()


def thread_budget() -> int:
    """Threads the whole run may use: ``OMP_NUM_THREADS`` if set, else the usable CPUs."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"OMP_NUM_THREADS={text!r}: set a positive number of threads")
        return int(text)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def split_budget(budget: int, jobs: int) -> Tuple[int, int]:
    """``(jobs run at once, threads of each)`` for ``jobs`` independent jobs within
    ``budget`` threads: as many at once as there are threads, the threads split evenly."""
    concurrent = max(1, min(jobs, budget))
    return concurrent, max(1, budget // concurrent)


def child_environment(threads: int) -> Dict[str, str]:
    """This process's environment for a child process that may use ``threads`` threads."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    for name, value in MALLOC_SETTINGS.items():
        env.setdefault(name, str(value))
    return env


def use_threads(threads: int) -> None:
    """Let this process's torch use ``threads`` threads (intra-op)."""
    import torch

    torch.set_num_threads(threads)
