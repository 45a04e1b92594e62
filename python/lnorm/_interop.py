"""Arrays from other libraries (PyTorch, JAX, CuPy) through DLPack: zero-copy NumPy views in, results
back as the caller's kind of array; arrays on a GPU go to the CUDA backend (``_cuda``) instead.

NumPy cannot import bfloat16 through DLPack, so a bfloat16 tensor travels as its 16-bit integer bits
and is viewed as ``ml_dtypes.bfloat16`` on the NumPy side (no copy either way).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import _cuda


def library_of(a: Any) -> str:
    """'torch', 'jax', 'cupy', 'dlpack' (another DLPack producer) or '' for what is not one."""
    if isinstance(a, np.ndarray) or not hasattr(a, "__dlpack__"):
        return ""
    module = type(a).__module__.split(".", 1)[0]
    return module if module in ("torch", "jax", "jaxlib", "cupy") else "dlpack"


def check_on_host(a: Any, name: str) -> None:
    """ValueError naming `name` when `a` is an array on a GPU (for a call on host arrays)."""
    if _cuda.on_gpu(a):
        raise ValueError(f"{name}: is on cuda:{_cuda.place(a)[1]} but x is on the CPU; pass arrays on one device")


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
        raise TypeError("bfloat16 arrays need the ml_dtypes package (pip install ml_dtypes)") from None
    return ml_dtypes.bfloat16


def to_numpy(a: Any, name: str) -> np.ndarray:
    """A NumPy view of a DLPack array on the CPU (no copy)."""
    lib = library_of(a)
    if lib == "torch":
        import torch
        t = a.detach()
        if t.device.type != "cpu":  # GPU arrays go to _cuda before this; other devices stop here
            raise ValueError(f"{name}: is on device {t.device}; lnorm runs on the CPU and on CUDA GPUs")
        if t.dtype == torch.bfloat16:
            return np.from_dlpack(t.view(torch.int16)).view(_bfloat16())
        return np.from_dlpack(t)
    if lib in ("jax", "jaxlib"):
        return np.asarray(a)  # JAX's CPU arrays convert without a copy; bfloat16 comes as ml_dtypes'
    try:
        return np.from_dlpack(a)
    except (TypeError, ValueError, RuntimeError, BufferError) as e:
        raise TypeError(f"{name}: cannot be read through DLPack ({e})") from None


def from_numpy(a: np.ndarray, lib: str, like: Any) -> Any:
    """`a` as the kind of array `like` is (no copy where the library allows one)."""
    if lib == "torch":
        import torch
        if a.dtype.name == "bfloat16":
            return torch.from_dlpack(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_dlpack(a)
    if lib in ("jax", "jaxlib"):
        import jax.numpy as jnp
        return jnp.asarray(a)
    return a


def call(fn: Callable, like: Any, args: tuple, kwargs: dict):
    """Runs fn with every DLPack argument as a NumPy view; returns its arrays as `like`'s kind.
    An `out=` argument is returned as the caller's own object. A call with any array on a GPU runs
    on the GPU instead (the CUDA backend), or is a ValueError naming the argument on the wrong device.
    `stream` (for GPU arrays) means nothing on the CPU and is dropped."""
    if _cuda.any_on_gpu(args, kwargs):
        return _cuda.call(fn.__name__, args, kwargs)
    if "stream" in kwargs:
        kwargs = {k: v for k, v in kwargs.items() if k != "stream"}
    lib = library_of(like)
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    np_args = tuple(to_numpy(v, names[i] if i < len(names) else "argument") if library_of(v) else v
                    for i, v in enumerate(args))
    np_kwargs = {k: (to_numpy(v, k) if library_of(v) else v) for k, v in kwargs.items()}
    caller_outs = {id(np_kwargs[k]): kwargs[k] for k in ("out", "residual_out")
                   if library_of(kwargs.get(k))}
    result = fn(*np_args, **np_kwargs)

    def back(r):
        if isinstance(r, np.ndarray):
            own = caller_outs.get(id(r))
            return own if own is not None else from_numpy(r, lib, like)
        return r

    return tuple(back(r) for r in result) if isinstance(result, tuple) else back(result)
