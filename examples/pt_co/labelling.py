"""The reference labeller of the Pt + CO example, run in worker processes of one thread each.

``make_labeller`` builds the calculator (``emt`` or ``sevenn``); ``LabelPool`` labels frames
and runs the labeller's MD trajectories in ``workers`` processes, each with one torch thread
(``threads.py``): small frames keep one thread busy, while several threads per process wait at
barriers for each other, and a competing job on the same cores stalls them all. EMT runs in
this process (milliseconds a frame: starting workers would cost more).
"""

import concurrent.futures
import multiprocessing
from typing import List, Optional, Sequence

import numpy as np
from ase import Atoms

from structures import PT_A0, attach_labels, md_snapshots, pt_bulk
from threads import use_threads

LABELLERS = ("emt", "sevenn")


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
    raise ValueError(f"unknown labeller `{name}`: use one of {', '.join(LABELLERS)}")


def lattice_constant_fit(cells: Sequence[Atoms], guess: float) -> float:
    """fcc lattice constant (A) of labelled cubic 4-atom cells: Birch-Murnaghan minimum,
    checked to lie within the lattice constants tried (``guess`` x 0.96-1.04)."""
    from ase.eos import EquationOfState

    energies = [a.get_potential_energy() for a in cells]
    volumes = [a.get_volume() for a in cells]
    v0, _, _ = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    a0 = float(v0 ** (1.0 / 3.0))
    if not 0.96 * guess < a0 < 1.04 * guess:
        raise ValueError(
            f"the labeller's fcc Pt lattice constant {a0:.3f} A lies outside the range it was "
            f"fitted on ({0.96 * guess:.3f}-{1.04 * guess:.3f} A): is it a Pt potential?"
        )
    return a0


def lattice_cells(guess: float = PT_A0) -> List[Atoms]:
    """The 9 cubic cells (``guess`` x 0.96-1.04) of the lattice-constant fit."""
    return [pt_bulk(guess * s, repeat=1) for s in np.linspace(0.96, 1.04, 9)]


def labeller_lattice_constant(calc, guess: float = PT_A0) -> float:
    """The fcc Pt lattice constant (A) of ``calc``: a Birch-Murnaghan fit to single points of
    the 4-atom cubic cell at ``guess`` x 0.96-1.04. The data stage builds every structure at
    it, so that the frames sample the labeller's own equilibrium (SevenNet's PBE a0 is 1.5 %
    above EMT's).

    Args:
        calc: the labeller (ASE calculator)
        guess: centre of the lattice constants tried (A)
    """
    return lattice_constant_fit(attach_labels(lattice_cells(guess), calc), guess)


# ---------------------------------------------------------------- worker processes

_WORKER_CALC = None


def _start_worker(name: str) -> None:
    global _WORKER_CALC
    use_threads(1)
    _WORKER_CALC = make_labeller(name)


def _label(frames: List[Atoms]) -> List[Atoms]:
    return attach_labels(frames, _WORKER_CALC)


def _trajectory(task) -> List[Atoms]:
    snapshots, seed, a0, trajectory = task
    frames = md_snapshots(snapshots, np.random.default_rng(seed), _WORKER_CALC, a0=a0)
    for atoms in frames:
        atoms.info["trajectory"] = trajectory
    return attach_labels(frames, _WORKER_CALC)


class LabelPool:
    """Labels frames with one labeller in ``workers`` processes of one thread each.

    Use as a context manager; results come back in the order of the frames.

    Args:
        labeller: ``emt`` or ``sevenn`` (``make_labeller``)
        workers: worker processes (``threads.thread_budget``); EMT always runs in this process
    """

    def __init__(self, labeller: str, workers: int = 1):
        if labeller not in LABELLERS:
            raise ValueError(f"unknown labeller `{labeller}`: use one of {', '.join(LABELLERS)}")
        self.labeller = labeller
        self.workers = 1 if labeller == "emt" else max(1, int(workers))
        self._pool: Optional[concurrent.futures.ProcessPoolExecutor] = None

    def __enter__(self) -> "LabelPool":
        if self.workers == 1:
            _start_worker(self.labeller)
        else:
            # spawn: a forked child would inherit this process's OpenMP state
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(self.labeller,),
            )
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _map(self, function, tasks: Sequence) -> List:
        if self._pool is None:
            return [function(task) for task in tasks]
        return list(self._pool.map(function, tasks))

    def label(self, frames: Sequence[Atoms]) -> List[Atoms]:
        """Copies of ``frames`` with the labeller's energy, forces and stress."""
        frames = list(frames)
        # about four chunks per worker, large frames spread by taking every k-th frame
        chunks = max(1, min(len(frames), 4 * self.workers))
        order = [list(range(k, len(frames), chunks)) for k in range(chunks)]
        labelled = self._map(_label, [[frames[i] for i in chunk] for chunk in order])
        result: List[Optional[Atoms]] = [None] * len(frames)
        for chunk, atoms_list in zip(order, labelled):
            for i, atoms in zip(chunk, atoms_list):
                result[i] = atoms
        return result

    def trajectories(self, snapshots: Sequence[int], seed: int, a0: float) -> List[List[Atoms]]:
        """Langevin MD trajectories run with the labeller (``structures.md_snapshots``), one
        per entry of ``snapshots`` (its number of snapshots), each seeded by ``(seed, k)`` and
        tagged ``info["trajectory"] = k``; labelled."""
        tasks = [(n, [seed, k], a0, k) for k, n in enumerate(snapshots) if n > 0]
        return self._map(_trajectory, tasks)

    def lattice_constant(self, guess: float = PT_A0) -> float:
        """``labeller_lattice_constant`` with the cells labelled by the pool."""
        return lattice_constant_fit(self.label(lattice_cells(guess)), guess)
