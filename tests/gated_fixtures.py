"""Session fixtures of the tiny gated MoE (``configs/tiny_gated.yaml``): trained, packaged and
compiled once per test session, shared by every test that needs them.

A pytest plugin module (pytest only collects fixtures from ``conftest.py`` files and plugins):
load it with ``pytest_plugins = ["gated_fixtures"]`` (``tests/conftest.py`` or a test module;
registering it twice is harmless, the fixtures still run once per session).

- ``tiny_gated_run``: ``nequip-train -cn tiny_gated`` (2 epochs) on the shared EMT frames
- ``tiny_gated_package``: ``nequip-package build``
- ``tiny_gated_deployed``: ``nequip-moe deploy --targets pair_allegro`` (one AOTInductor compile:
  ``tiny_gated_pair_allegro.nequip.pt2``, ``tiny_gated.types.yaml``, ``tiny_gated.lammps.in``)
- ``tiny_gated_pair_allegro_pt2``: that compiled file
- ``tiny_gated_ase_pt2``: ``nequip-compile --target ase`` (compiled only if a test asks for it)
- ``tiny_gated_calculator``: ``MoECalculator`` on the package (eager, float64): the reference
"""

import pytest

from nequip_moe.integrations.ase import MoECalculator

from conftest import compile_ase, deploy_pair_allegro, package_run, train_config


@pytest.fixture(scope="session")
def tiny_gated_run(tmp_path_factory, pt_co_frames_file):
    """Train `configs/tiny_gated.yaml` (gated MoE, 2 Allegro experts) with `nequip-train`."""
    return train_config("tiny_gated", pt_co_frames_file, tmp_path_factory.mktemp("tiny_gated_run"))


@pytest.fixture(scope="session")
def tiny_gated_package(tiny_gated_run):
    return package_run(tiny_gated_run, "tiny_gated")


@pytest.fixture(scope="session")
def tiny_gated_deployed(tiny_gated_package, tmp_path_factory):
    """`nequip-moe deploy` of the gated package for `pair_allegro` (the session's one compile)."""
    return deploy_pair_allegro(
        tiny_gated_package, tmp_path_factory.mktemp("gated_deployed"), "--data-file", "slab.data"
    )


@pytest.fixture(scope="session")
def tiny_gated_pair_allegro_pt2(tiny_gated_deployed):
    """The gated MoE compiled with `nequip-compile --mode aotinductor --target pair_allegro`."""
    return tiny_gated_deployed / "tiny_gated_pair_allegro.nequip.pt2"


@pytest.fixture(scope="session")
def tiny_gated_ase_pt2(tiny_gated_package):
    """The gated MoE compiled with `nequip-compile --target ase` (once per session, on demand)."""
    return compile_ase(tiny_gated_package)


@pytest.fixture(scope="session")
def tiny_gated_calculator(tiny_gated_package):
    """``MoECalculator`` on the gated package (eager float64 model; typed by species)."""
    return MoECalculator.from_file(tiny_gated_package)
