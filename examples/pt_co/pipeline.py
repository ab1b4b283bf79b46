"""How the example runs its jobs: skipped when done with the same inputs, rerun when an input
changed, independent jobs side by side within the thread budget.

A ``Job`` names its outputs, its inputs (options and files) and the jobs it runs after. When
its turn comes, the digest of every input (a file's content, an option's value) is compared
with the stamp the job left when it last finished (``out/stamps.json``): the job is skipped
when every output exists and no input changed; otherwise it runs, and the line it prints names
the inputs that changed. So an option, a config file or an upstream output that changed reruns
exactly the jobs that depend on it, and never leaves a stale output in place.

Jobs whose inputs are ready run side by side, at most as many threads in use as the budget
(``threads.thread_budget``): each gets ``budget // (jobs that could run now)`` threads, at
least one. ``exclusive`` jobs (work in this process, timings) run alone with the whole budget.
Commands run with their thread count in ``OMP_NUM_THREADS`` (``threads.child_environment``).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from threads import child_environment, thread_budget

BIN_DIR = pathlib.Path(sys.executable).parent
Inputs = Dict[str, object]


@dataclasses.dataclass
class Job:
    """One step of the run.

    Args:
        name: unique name (printed, and the key of its stamp and timing)
        outputs: files (or folders) it writes; all must exist for it to be skipped
        action: does the work, given the threads it may use
        inputs: what its outputs depend on, or a function returning it (called when the jobs
            it runs after have finished): name -> option value (JSON-able) or a
            ``pathlib.Path`` (its content counts; a folder: every file in it)
        after: names of the jobs that must finish first
        exclusive: runs alone with the whole thread budget (work in this process, timings)
    """

    name: str
    outputs: Sequence[pathlib.Path]
    action: Callable[[int], None]
    inputs: object = dataclasses.field(default_factory=dict)
    after: Sequence[str] = ()
    exclusive: bool = False


def digest(value) -> str:
    """sha256 of an input: a file's bytes, a folder's files (names and bytes), else the
    value's JSON."""
    h = hashlib.sha256()
    if isinstance(value, pathlib.Path):
        if value.is_dir():
            for path in sorted(p for p in value.rglob("*") if p.is_file()):
                h.update(str(path.relative_to(value)).encode())
                h.update(path.read_bytes())
        elif value.is_file():
            h.update(value.read_bytes())
        else:
            return "missing"
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Pipeline:
    """Runs jobs in dependency order, side by side within the thread budget.

    Args:
        out: output folder (``stamps.json``, ``timings.json``, ``logs/``)
        force: rerun every job
        budget: threads of the whole run (default: ``threads.thread_budget()``)
    """

    def __init__(self, out: pathlib.Path, force: bool = False, budget: Optional[int] = None):
        self.out = out
        self.force = force
        self.budget = budget or thread_budget()
        self.logs = out / "logs"
        self.stamps_file = out / "stamps.json"
        self.timings_file = out / "timings.json"
        self.stamps = self._read(self.stamps_file)
        self.timings: Dict[str, float] = self._read(self.timings_file)
        self._lock = threading.Lock()
        self._count = 0

    @staticmethod
    def _read(path: pathlib.Path) -> Dict:
        return json.loads(path.read_text()) if path.is_file() else {}

    def reason_to_run(self, job: Job, inputs: Dict[str, str]) -> Optional[str]:
        """Why ``job`` must run (``None``: its outputs are up to date)."""
        if self.force:
            return "--force"
        missing = [str(p) for p in job.outputs if not p.exists()]
        if missing:
            return f"no {missing[0]}"
        stamp = self.stamps.get(job.name)
        if stamp is None:
            return "no stamp of its inputs (outputs of an older run)"
        changed = sorted(k for k in set(inputs) | set(stamp) if inputs.get(k) != stamp.get(k))
        return f"inputs changed: {', '.join(changed)}" if changed else None

    def _start(self, job: Job, threads: int) -> Optional[Callable[[], None]]:
        """The work of ``job`` (``None``: skipped), printed."""
        raw = job.inputs() if callable(job.inputs) else job.inputs
        inputs = {key: digest(value) for key, value in raw.items()}
        reason = self.reason_to_run(job, inputs)
        with self._lock:
            self._count += 1
            prefix = f"[{self._count}] {job.name}"
        if reason is None:
            print(f"{prefix}: up to date, skipped", flush=True)
            return None
        print(f"{prefix} ({reason}; {threads} thread{'s' * (threads > 1)}) ...", flush=True)

        def work():
            start = time.perf_counter()
            job.action(threads)
            elapsed = time.perf_counter() - start
            with self._lock:
                self.stamps[job.name] = inputs
                self.timings[job.name] = round(elapsed, 1)
                self.out.mkdir(parents=True, exist_ok=True)
                write_atomic(self.stamps_file, json.dumps(self.stamps, indent=1))
                write_atomic(self.timings_file, json.dumps(self.timings, indent=2))
            print(f"{prefix}: {elapsed:.1f} s", flush=True)

        return work

    def run(self, jobs: Sequence[Job]) -> None:
        """Run ``jobs`` (in dependency order; independent ones side by side); the first
        failure stops new jobs from starting and is raised once the running ones end."""
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names repeat: {names}")
        for job in jobs:
            unknown = [a for a in job.after if a not in names]
            if unknown:
                raise ValueError(f"job `{job.name}` runs after unknown jobs {unknown}")
        pending, done = list(jobs), set()
        running: Dict[concurrent.futures.Future, tuple] = {}
        failure = None
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.budget)) as pool:
            while True:
                if failure is None:
                    self._launch(pending, done, running, pool)
                if not running:
                    if pending and failure is None:
                        raise RuntimeError(f"jobs {[j.name for j in pending]} cannot start")
                    break
                finished, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    job, _ = running.pop(future)
                    if future.exception() is not None:
                        failure = failure or future.exception()
                    else:
                        done.add(job.name)
        if failure is not None:
            raise failure
        with self._lock:
            self.timings["total (wall)"] = round(time.perf_counter() - start, 1)
            write_atomic(self.timings_file, json.dumps(self.timings, indent=2))

    def _launch(self, pending: List[Job], done: set, running: Dict, pool) -> None:
        """Start the ready jobs that fit the budget (skipping those up to date)."""
        while True:
            ready = [j for j in pending if set(j.after) <= done]
            if not ready or any(job.exclusive for job, _ in running.values()):
                return
            job = ready[0]
            in_use = sum(threads for _, threads in running.values())
            if job.exclusive:
                if running:
                    return  # it waits for the running jobs, and the others wait for it
                threads = self.budget
            else:
                candidates = len([j for j in ready if not j.exclusive]) + len(running)
                threads = max(1, self.budget // min(self.budget, candidates))
                if in_use + threads > self.budget:
                    return
            pending.remove(job)
            work = self._start(job, threads)
            if work is None:
                done.add(job.name)
            else:
                running[pool.submit(work)] = (job, threads)

    def command(self, log_name: str, args: Sequence, threads: int,
                cwd: Optional[pathlib.Path] = None) -> None:
        """Run a command line tool of this environment with ``threads`` threads, its output
        in ``out/logs/LOG_NAME.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{log_name}.log"
        tool = BIN_DIR / str(args[0])
        args = [str(tool) if tool.is_file() else str(args[0]), *map(str, args[1:])]
        print(f"    $ {' '.join(args)}", flush=True)
        with open(log, "w") as f:
            proc = subprocess.run(args, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                  env=child_environment(threads))
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
            raise RuntimeError(
                f"`{' '.join(args)}` failed ({proc.returncode}); last lines of {log}:\n{tail}"
            )
