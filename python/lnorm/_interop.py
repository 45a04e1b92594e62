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


_OUTPUTS = ("out", "residual_out", "running_mean", "running_var")


def _checked_torch(t: Any, name: str, output: bool) -> Any:
    """The one set of rules for a torch tensor argument, on every backend: a dense tensor of a
    supported dtype; its lazy negation or conjugation bit resolved for an input (torch exports the
    raw memory through DLPack, so the bit would be lost: a silent sign flip) and refused for an
    output (lnorm cannot write through it); an output must not require grad (torch's out= rule)."""
    import torch
    if not isinstance(t, torch.Tensor):  # another object of torch's (DLPack has its own say)
        return t
    kind = None
    if t.layout != torch.strided:
        kind = f"layout {t.layout}"
    elif t.is_quantized:
        kind = "quantized tensors"
    elif getattr(t, "is_nested", False):
        kind = "nested tensors"
    if kind:
        raise TypeError(f"{name}: torch {kind} are not supported; pass a dense float tensor")
    if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: dtype {str(t.dtype).replace('torch.', '')} is not supported (expected "
                        "float32, float64, float16 or bfloat16)")
    lazy = t.is_neg() or t.is_conj()
    if output:
        if lazy:
            raise ValueError(f"{name}: has torch's lazy negation bit (is_neg()); lnorm cannot write through it: "
                             "pass a tensor without it")
        if t.requires_grad:
            raise ValueError(f"{name}: requires grad; an out= tensor cannot take part in autograd (as in torch)")
        return t
    t = t.detach()
    return t.resolve_neg().resolve_conj() if lazy else t


def to_numpy(a: Any, name: str) -> np.ndarray:
    """A NumPy view of a DLPack array on the CPU (no copy, except to resolve a torch tensor's lazy
    negation bit)."""
    lib = library_of(a)
    if lib == "torch":
        t = _checked_torch(a, name, name in _OUTPUTS)
        if t.device.type != "cpu":  # GPU arrays go to _cuda before this; other devices stop here
            raise ValueError(f"{name}: is on device {t.device}; lnorm runs on the CPU and on CUDA GPUs")
        import torch
        if t.dtype == torch.bfloat16:
            return np.from_dlpack(t.view(torch.int16)).view(_bfloat16())
        return np.from_dlpack(t)
    if lib in ("jax", "jaxlib"):
        try:
            return np.asarray(a)  # JAX's CPU arrays convert without a copy; bfloat16 comes as ml_dtypes'
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: cannot be read as a host array ({e})") from None
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


def _written(kwargs: dict) -> None:
    """Torch output tensors were written behind torch's back: their version counters move on, so that
    autograd refuses a graph that saved them before the write (as after any in-place operation)."""
    for k in _OUTPUTS:
        if library_of(kwargs.get(k)) == "torch":
            import torch
            if not kwargs[k].is_inference():  # inference tensors keep no version counter
                torch.autograd.graph.increment_version(kwargs[k])


def call(fn: Callable, like: Any, args: tuple, kwargs: dict):
    """Runs fn with every DLPack argument as a NumPy view; returns its arrays as `like`'s kind.
    An `out=` argument is returned as the caller's own object. A call with any array on a GPU runs
    on the GPU instead (the CUDA backend), or is a ValueError naming the argument on the wrong device.
    `stream` (for GPU arrays) means nothing on the CPU and is dropped."""
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    named = [(names[i] if i < len(names) else "argument", v) for i, v in enumerate(args)] + list(kwargs.items())
    # The torch rules before either backend sees a tensor: inputs resolved, outputs checked.
    named = [(k, _checked_torch(v, k, k in _OUTPUTS) if library_of(v) == "torch" else v) for k, v in named]
    args, kwargs = tuple(v for _, v in named[:len(args)]), dict(named[len(args):])
    if _cuda.any_on_gpu(args, kwargs):
        if not _cuda.has_call(fn.__name__):
            raise ValueError(f"x: {fn.__name__} runs on the CPU only; its arrays are on a GPU (move them to "
                             "the CPU, or use the GPU library's own)")
        result = _cuda.call(fn.__name__, args, kwargs)
        _written(kwargs)
        return result
    if "stream" in kwargs:
        kwargs = {k: v for k, v in kwargs.items() if k != "stream"}
    lib = library_of(like)
    np_args = tuple(to_numpy(v, name) if library_of(v) else v for name, v in named[:len(args)])
    np_kwargs = {k: (to_numpy(v, k) if library_of(v) else v) for k, v in kwargs.items()}
    caller_outs = {id(np_kwargs[k]): kwargs[k] for k in _OUTPUTS if library_of(kwargs.get(k))}
    result = fn(*np_args, **np_kwargs)
    _written(kwargs)

    def back(r):
        if isinstance(r, np.ndarray):
            own = caller_outs.get(id(r))
            return own if own is not None else from_numpy(r, lib, like)
        return r

    return tuple(back(r) for r in result) if isinstance(result, tuple) else back(result)
