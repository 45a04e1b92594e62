"""Run-time configuration: kernel set, threads, what was compiled in."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from . import _buffers, _cuda, _lnorm

__version__ = _lnorm.version

ISAS = ("scalar", "avx2", "avx512", "neon")


def available_isas() -> list:
    """The kernel sets this build carries and this CPU can run, worst first."""
    return [i for i in ISAS if _lnorm.isa_compiled(i) and _lnorm.cpu_supports(i)]


def set_isa(name: str) -> None:
    """Force a kernel set (one of :func:`available_isas`), as ``LNORM_ISA`` does at start-up.

    >>> import lnorm
    >>> lnorm.set_isa("scalar"); lnorm.config()["isa"]
    'scalar'
    """
    if not isinstance(name, str):
        raise TypeError(f"name: must be a str, not {type(name).__name__}")
    if name not in ISAS:
        raise ValueError(f"name: {name!r} is not one of {ISAS}")
    if not _lnorm.set_isa(name):
        raise ValueError(f"name: kernel set {name!r} is not available here (available: {available_isas()})")


def get_num_threads() -> int:
    """The number of threads lnorm uses (``LNORM_NUM_THREADS``, ``OMP_NUM_THREADS`` or the CPUs)."""
    return int(_lnorm.get_num_threads())


def set_num_threads(n: int) -> None:
    """Set the number of threads lnorm uses (>= 1). Small inputs always run on the calling thread.

    >>> import lnorm
    >>> lnorm.set_num_threads(1); lnorm.get_num_threads()
    1
    """
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"n: must be an int, not {type(n).__name__}")
    n = int(n.__index__()) if not isinstance(n, int) else n
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    _lnorm.set_num_threads(n)


def set_buffer_cache(nbytes: int) -> None:
    """Cap the cache of large outputs (16 MiB and up) that allocating calls reuse, in bytes; 0 turns
    it off and forgets what it holds. The default is 512 MiB, or ``LNORM_BUFFER_CACHE`` at start-up.

    Fresh pages of a large output cost as much to fault in as the normalization itself; a cached
    buffer is reused once every array viewing it is gone.

    >>> import lnorm
    >>> lnorm.set_buffer_cache(256 << 20); lnorm.config()["buffer_cache"]
    268435456
    """
    if isinstance(nbytes, bool) or not hasattr(nbytes, "__index__"):
        raise TypeError(f"nbytes: must be an int, not {type(nbytes).__name__}")
    nbytes = int(nbytes.__index__())
    if nbytes < 0:
        raise ValueError(f"nbytes: must be >= 0, got {nbytes}")
    _buffers.set_limit(nbytes)


def cmake_dir() -> str:
    """The folder holding lnormConfig.cmake, for ``-Dlnorm_DIR=...``."""
    return str(Path(__file__).resolve().parent / "share" / "cmake" / "lnorm")


def include_dir() -> str:
    """The folder holding lnorm/lnorm.hpp."""
    return str(Path(__file__).resolve().parent / "include")


def config() -> dict:
    """What this lnorm is and runs: version, kernel set, threads, OpenMP, CUDA.

    >>> import lnorm
    >>> sorted(k for k in lnorm.config() if k in ("isa", "version"))
    ['isa', 'version']
    """
    return {
        "version": __version__,
        "isa": _lnorm.active_isa(),
        "isas_available": available_isas(),
        "num_threads": get_num_threads(),
        "buffer_cache": _buffers.limit,
        "openmp": bool(_lnorm.openmp()),
        "cuda_compiled": _cuda.compiled(),     # this build has the CUDA backend (LNORM_CUDA=ON)
        "cuda_devices": _cuda.device_count(),  # GPUs it can run on (0 without a driver or a GPU)
    }


def _check_environment() -> None:
    forced = os.environ.get("LNORM_ISA")
    if forced and forced not in available_isas():
        warnings.warn(f"LNORM_ISA={forced!r} cannot run here (available: {available_isas()}); "
                      f"using {_lnorm.active_isa()!r}", RuntimeWarning, stacklevel=3)
