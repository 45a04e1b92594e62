"""Run-time configuration: kernel set, threads, what was compiled in."""

from __future__ import annotations

import atexit
from pathlib import Path

from . import _lnorm

if not _lnorm.in_main_interpreter():
    raise ImportError("lnorm cannot run in a subinterpreter (its native module keeps per-process state, and "
                      "calls made there could hang); import it in the main interpreter")
# Threads still inside native calls at exit park there instead of aborting the process (see
# python/_released_gil.hpp).
atexit.register(_lnorm.close_at_exit)

from . import _buffers, _cuda  # noqa: E402
from ._checks import check_count, env_choice, env_count  # noqa: E402

__version__ = _lnorm.version

ISAS = tuple(_lnorm.isa_names())  # every kernel set, worst first: lnorm::isa_table (dispatch.hpp)


def available_isas() -> list:
    """The kernel sets this build carries and this CPU can run, worst first."""
    return [i for i in ISAS if _lnorm.isa_compiled(i) and _lnorm.cpu_supports(i)]


def set_isa(name: str) -> None:
    """Force a kernel set (one of :func:`available_isas`), as ``LNORM_ISA`` does at start-up; "auto"
    goes back to the CPU's choice: the best set, with the CPU policy's per-op choice
    (``config()["policy"]["avx2_ops"]``), which a forced set overrides.

    >>> import lnorm
    >>> lnorm.set_isa("scalar"); lnorm.config()["isa"]
    'scalar'
    >>> lnorm.set_isa("auto"); lnorm.config()["isa_forced"]
    False
    """
    if type(name) is not str:
        raise TypeError(f"name: must be a str, not {type(name).__name__}")
    if name == "auto":
        _lnorm.choose_isa()
        return
    if name not in ISAS:
        raise ValueError(f"name: {name!r} is not one of {ISAS} or 'auto'")
    if not _lnorm.set_isa(name):
        raise ValueError(f"name: kernel set {name!r} is not available here (available: {available_isas()})")


def get_num_threads() -> int:
    """The number of threads lnorm uses (``LNORM_NUM_THREADS``, ``OMP_NUM_THREADS`` or the CPUs)."""
    return int(_lnorm.get_num_threads())


MAX_THREADS = int(_lnorm.max_threads)


def set_num_threads(n: int) -> None:
    """Set the number of threads lnorm uses, from 1 to ``MAX_THREADS`` (1024). Small inputs always
    run on the calling thread. A call already running keeps the count it started with.

    >>> import lnorm
    >>> lnorm.set_num_threads(1); lnorm.get_num_threads()
    1
    """
    _lnorm.set_num_threads(check_count(n, "n", 1, MAX_THREADS))


def set_buffer_cache(nbytes: int) -> None:
    """Cap the cache of large outputs (16 MiB and up) that allocating calls reuse, in bytes; 0 turns
    it off and forgets what it holds. The default is 512 MiB, or ``LNORM_BUFFER_CACHE`` at start-up.

    Fresh pages of a large output cost as much to fault in as the normalization itself; a cached
    buffer is reused once every array viewing it is gone.

    >>> import lnorm
    >>> lnorm.set_buffer_cache(256 << 20); lnorm.config()["buffer_cache"]
    268435456
    """
    _buffers.set_limit(check_count(nbytes, "nbytes", 0))


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
        "isa_forced": bool(_lnorm.isa_forced()),  # set_isa or LNORM_ISA chose it (else the CPU's choice)
        "isas_available": available_isas(),
        "num_threads": get_num_threads(),
        "buffer_cache": _buffers.limit,
        "openmp": bool(_lnorm.openmp()),
        "policy": _lnorm.policy(),             # store kind and prefetch per element size, and where from
        "cuda_compiled": _cuda.compiled(),     # this build has the CUDA backend (LNORM_CUDA=ON)
        "cuda_devices": _cuda.device_count(),  # GPUs it can run on (0 without a driver or a GPU)
    }


def _check_environment() -> None:
    """The environment's settings under one rule: a value that is not valid here is a RuntimeWarning
    naming the variable, and the default is used (the native side, which reads LNORM_ISA,
    LNORM_NUM_THREADS, LNORM_STORES, LNORM_PREFETCH, LNORM_CARRY and LNORM_FETCH itself, ignores such values too)."""
    env_choice("LNORM_ISA", available_isas() + ["auto"])
    env_count("LNORM_NUM_THREADS", 1, MAX_THREADS)
    env_choice("LNORM_STORES", ("plain", "streaming", "auto"))
    env_count("LNORM_PREFETCH", 0, 65536)
    env_count("LNORM_CARRY", 0, 1 << 30)
    env_choice("LNORM_FETCH", ("split", "plain", "auto"))
