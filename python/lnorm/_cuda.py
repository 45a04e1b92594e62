"""CUDA arrays (PyTorch tensors and CuPy arrays on a GPU) through lnorm's CUDA backend.

The public functions send an array that lives on a GPU here (by way of ``_interop.call``). The
checks and messages are the CPU path's; results are arrays of the caller's kind on the same device.
The work is queued on the caller's current stream (``torch.cuda.current_stream()``, CuPy's current
stream) or on ``stream=``, without synchronizing: like any GPU operation, the call returns before
the result is computed. The native module ``_lnorm_cuda`` exists only in builds with
``-Ccmake.define.LNORM_CUDA=ON``; without it a CUDA array is a ValueError that says so.

Layout: the kernels normalize rows (the normalized axes, contiguous) that are any fixed stride
apart. An array whose normalized axes are trailing and contiguous, and whose other axes merge into
one stride, is used in place; any other layout (normalized axes not trailing, strided columns) is
copied once into rows first, and its results are views with the input's shape.
"""

from __future__ import annotations

import atexit
import math
from typing import Any, Optional, Sequence, Tuple

from . import _checks as rules
from ._checks import axes_of, check_eps

_NOT_LOADED = object()
_native_module: Any = _NOT_LOADED

_DL_CUDA, _DL_CUDA_MANAGED = 2, 13  # DLPack device types of memory on a GPU
_INSTALL_HINT = "rebuild it with: pip install . -Ccmake.define.LNORM_CUDA=ON"


def native():
    """The native module _lnorm_cuda, or None in a build without the CUDA backend (imported once)."""
    global _native_module
    if _native_module is _NOT_LOADED:
        try:
            from . import _lnorm_cuda as module
        except ImportError:
            module = None
        else:
            atexit.register(module.close_at_exit)  # see python/_released_gil.hpp
        _native_module = module
    return _native_module


def compiled() -> bool:
    """True when this build has the CUDA backend."""
    return native() is not None


def device_count() -> int:
    """GPUs the CUDA backend can use (0 without the backend, a driver or a GPU)."""
    module = native()
    return int(module.device_count()) if module is not None else 0


# ---- what kind of array, and where ------------------------------------------------------------


def _module_of(a: Any) -> str:
    return type(a).__module__.split(".", 1)[0]


def place(a: Any) -> Optional[Tuple[str, int]]:
    """("cuda", index) for an array on a GPU, ("cpu", 0) for one in host memory, None for anything
    that is not an array (None, lists, scalars)."""
    module = _module_of(a)
    if module == "numpy":
        return ("cpu", 0) if hasattr(a, "__array_interface__") else None
    if module == "torch" and hasattr(a, "is_cuda"):
        return ("cuda", a.device.index or 0) if a.is_cuda else ("cpu", 0)
    if module == "cupy" and hasattr(a, "device"):
        return ("cuda", a.device.id)
    dlpack_device = getattr(a, "__dlpack_device__", None)
    if dlpack_device is None:
        return None
    try:
        kind, index = dlpack_device()
    except Exception:  # noqa: BLE001 - an object that cannot say where it lives is not ours to judge
        return None
    return ("cuda", int(index)) if int(kind) in (_DL_CUDA, _DL_CUDA_MANAGED) else ("cpu", 0)


def on_gpu(a: Any) -> bool:
    """True for an array on a GPU."""
    if a is None:
        return False
    p = place(a)
    return p is not None and p[0] == "cuda"


def any_on_gpu(args: Sequence[Any], kwargs: dict) -> bool:
    """True when any argument is an array on a GPU (the call goes to the CUDA backend)."""
    return any(on_gpu(v) for v in args) or any(on_gpu(v) for v in kwargs.values())


def _where(p: Optional[Tuple[str, int]]) -> str:
    return "the CPU" if p is None or p[0] == "cpu" else f"cuda:{p[1]}"


# ---- the array libraries ------------------------------------------------------------------------


class _Torch:
    """The few PyTorch operations the CUDA path needs (allocation, views, copies, streams)."""

    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.names = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                      torch.bfloat16: "bfloat16", torch.uint8: "uint8"}
        self.types = {v: k for k, v in self.names.items()}
        # The fast path's tables: element types, and the parameter types each allows.
        self.elements = {t: n for t, n in self.names.items() if n != "uint8"}
        self.param_types = {t: (t, torch.float32) for t in self.elements}
        self.stat_types = {t: torch.float64 if t == torch.float64 else torch.float32 for t in self.elements}

    def dtype_name(self, a) -> str:
        return self.names.get(a.dtype, str(a.dtype).replace("torch.", ""))

    def strides(self, a) -> Tuple[int, ...]:
        return tuple(a.stride())

    def data_ptr(self, a) -> int:
        return a.data_ptr()

    def itemsize(self, a) -> int:
        return a.element_size()

    def exported(self, a):
        return a.detach() if a.requires_grad else a  # DLPack refuses tensors that record gradients

    def empty(self, shape, dtype: str, device: int):
        return self.torch.empty(shape, dtype=self.types[dtype], device=f"cuda:{device}")

    def zeros(self, shape, dtype: str, device: int):
        return self.torch.zeros(shape, dtype=self.types[dtype], device=f"cuda:{device}")

    def as_rows(self, a, rows: int, cols: int, ld: int):
        return a.as_strided((rows, cols), (ld, 1))

    def permute(self, a, perm):
        return a.permute(perm)

    def contiguous(self, a, dtype: Optional[str] = None):
        if dtype is not None and self.names.get(a.dtype) != dtype:
            a = a.to(self.types[dtype])
        return a.contiguous()

    def reshape(self, a, shape):
        return a.reshape(shape)

    def copy_into(self, dst, src) -> None:
        dst.copy_(src)

    def scope(self, device: int, stream: Any) -> "_Scope":
        """Where a call's allocations, copies and kernels go: entering it gives the stream handle."""
        cuda = self.torch.cuda
        if stream is None:
            return _Scope((), lambda: cuda.current_stream(device).cuda_stream)
        if not isinstance(stream, cuda.Stream):
            stream = cuda.ExternalStream(stream_handle(stream), device=f"cuda:{device}")
        return _Scope((cuda.stream(stream),), lambda: stream.cuda_stream)


class _CuPy:
    """The few CuPy operations the CUDA path needs."""

    name = "cupy"

    def __init__(self):
        import cupy

        self.cupy = cupy

    def dtype_name(self, a) -> str:
        return a.dtype.name

    def strides(self, a) -> Tuple[int, ...]:
        size = a.itemsize
        if any(s % size for s in a.strides):
            return tuple(-(10 ** 18) for _ in a.strides)  # not a whole number of elements: never viewable
        return tuple(s // size for s in a.strides)

    def data_ptr(self, a) -> int:
        return a.data.ptr

    def itemsize(self, a) -> int:
        return a.itemsize

    def exported(self, a):
        return a

    def empty(self, shape, dtype: str, device: int):
        return self.cupy.empty(shape, dtype=dtype)  # inside the device's scope

    def zeros(self, shape, dtype: str, device: int):
        return self.cupy.zeros(shape, dtype=dtype)

    def as_rows(self, a, rows: int, cols: int, ld: int):
        return self.cupy.lib.stride_tricks.as_strided(a, (rows, cols), (ld * a.itemsize, a.itemsize))

    def permute(self, a, perm):
        return a.transpose(perm)

    def contiguous(self, a, dtype: Optional[str] = None):
        return self.cupy.ascontiguousarray(a, dtype=dtype)

    def reshape(self, a, shape):
        return a.reshape(shape)

    def copy_into(self, dst, src) -> None:
        dst[...] = src

    def scope(self, device: int, stream: Any) -> "_Scope":
        cuda = self.cupy.cuda
        if stream is None:  # CuPy's current stream, read inside the device's scope
            return _Scope((cuda.Device(device),), lambda: cuda.get_current_stream().ptr)
        if not isinstance(stream, cuda.Stream):
            stream = cuda.ExternalStream(stream_handle(stream))
        return _Scope((cuda.Device(device), stream), lambda: stream.ptr)


class _Scope:
    """Enters the library's contexts (device, stream) in order; `with` gives the raw stream handle."""

    def __init__(self, contexts: tuple, handle):
        self.contexts, self.handle = contexts, handle

    def __enter__(self) -> int:
        for c in self.contexts:
            c.__enter__()
        return int(self.handle())

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)
        return False


_LIBS: dict = {}


def _lib(module: str):
    lib = _LIBS.get(module)
    if lib is None:
        lib = _LIBS[module] = _Torch() if module == "torch" else _CuPy()
    return lib


def stream_handle(stream: Any) -> int:
    """The raw cudaStream_t of `stream`: an int handle, a torch.cuda.Stream, a cupy.cuda.Stream, or
    an object with __cuda_stream__ (the CUDA stream protocol)."""
    if isinstance(stream, bool):
        raise TypeError("stream: must be a CUDA stream, not bool")
    if isinstance(stream, int):
        if stream < 0:
            raise ValueError(f"stream: a stream handle is >= 0, got {stream}")
        return stream
    for attribute in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        handle = getattr(stream, attribute, None)
        if isinstance(handle, int):
            return handle
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        return int(protocol()[1])
    raise TypeError(f"stream: must be a CUDA stream (an int handle, torch.cuda.Stream, cupy.cuda.Stream or an "
                    f"object with __cuda_stream__), not {type(stream).__name__}")


# ---- argument checks (the messages of the CPU path) ---------------------------------------------


def rows_layout(shape: Sequence[int], strides: Sequence[int], axes: Tuple[int, ...]):
    """How an array of `shape` and `strides` (in elements) is rows of the normalized `axes` (sorted):
    (perm, rows, cols, ld). perm lists the other axes, then `axes`; the array is the 2-D view
    (rows, cols) with unit column stride and row stride ld, or ld is None when no such view exists
    (the normalized block is not contiguous, or the other axes do not merge into one stride).

    >>> rows_layout((8, 128, 768), (98304, 768, 1), (2,))
    ((0, 1, 2), 1024, 768, 768)
    >>> rows_layout((2, 96, 56, 56), (301056, 3136, 56, 1), (1,))[3] is None
    True
    """
    batch = tuple(d for d in range(len(shape)) if d not in axes)
    perm = batch + tuple(axes)
    rows = math.prod(shape[d] for d in batch)
    cols = math.prod(shape[d] for d in axes)
    expect = 1
    for d in reversed(axes):
        if shape[d] != 1:
            if strides[d] != expect:
                return perm, rows, cols, None
            expect *= shape[d]
    ld = inner = None
    for d in reversed(batch):
        if shape[d] == 1:
            continue
        if inner is None:
            ld = strides[d]
        elif strides[d] != inner:
            return perm, rows, cols, None
        inner = strides[d] * shape[d]
    if rows > 1 and cols > 1 and ld is not None and -cols < ld < cols:
        return perm, rows, cols, None  # rows that overlap: only an input could be read that way
    return perm, rows, cols, (cols if ld is None else ld)


class _Operand:
    """One array argument: its library, dtype, shape, strides and device."""

    __slots__ = ("a", "lib", "dtype", "shape", "strides", "device", "name")

    def __init__(self, a, name: str, lib, device: int):
        self.a, self.name, self.lib, self.device = a, name, lib, device
        self.dtype = lib.dtype_name(a)
        self.shape = tuple(a.shape)
        self.strides = lib.strides(a)

    def memory(self) -> tuple:
        """Where its elements lie, for the aliasing rule: (address, shape, byte strides, itemsize)."""
        size = self.lib.itemsize(self.a)
        return (self.lib.data_ptr(self.a), self.shape, tuple(st * size for st in self.strides), size)


def _operand(a: Any, name: str, device: Optional[int]) -> _Operand:
    """`a` as an operand on `device` (x's; None: `a` is x and sets it), or the error that says why not."""
    p = place(a)
    if p is None:
        kind = "None" if a is None else type(a).__name__
        raise TypeError(f"{name}: must be an array on {_where(('cuda', device or 0))} like x, not {kind}")
    module = _module_of(a)
    if device is not None and p != ("cuda", device):
        raise ValueError(f"{name}: is on {_where(p)} but x is on cuda:{device}; pass arrays on one device")
    if p[0] != "cuda":
        raise ValueError(f"{name}: is on {_where(p)}, not on a GPU")
    if module not in ("torch", "cupy"):
        raise TypeError(f"{name}: lnorm's CUDA backend takes PyTorch tensors and CuPy arrays, not "
                        f"{type(a).__module__}.{type(a).__name__} (move it to the host, or to torch/cupy)")
    if native() is None:
        raise ValueError(f"{name}: is on cuda:{p[1]}, but this lnorm was built without its CUDA backend; "
                         f"{_INSTALL_HINT}")
    op = _Operand(a, name, _lib(module), p[1])
    rules.check_dtype(name, op.dtype)
    return op


def _check_x_on_gpu(x: Any, names: Sequence[str], args: Sequence[Any], kwargs: dict) -> None:
    """A CPU x with a GPU array elsewhere: the ValueError names the GPU argument."""
    if on_gpu(x):
        return
    for name, v in list(zip(names, args)) + list(kwargs.items()):
        if on_gpu(v):
            raise ValueError(f"{name}: is on {_where(place(v))} but x is on {_where(place(x))}; pass arrays on one "
                             "device")


# ---- rows in and out ------------------------------------------------------------------------------


class _Plan:
    """The normalized axes of x and how x's data is rows."""

    def __init__(self, x: _Operand, axis: Any):
        self.axes = axes_of(axis, len(x.shape))
        self.norm_shape = rules.norm_shape_of(x.shape, self.axes)
        self.perm, self.rows, self.cols, _ = rows_layout(x.shape, x.strides, self.axes)
        self.identity = self.perm == tuple(range(len(x.shape)))
        self.inverse = tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__))
        self.row_shape = tuple(x.shape[d] for d in self.perm)
        self.stats_shape = rules.stats_shape_of(x.shape, self.axes)
        self.stat_dtype = "float64" if x.dtype == "float64" else "float32"

    def rows_of(self, op: _Operand):
        """A 2-D (rows, cols) view of an input, or a copy of it in rows when no view exists."""
        lib, a = op.lib, op.lib.exported(op.a)
        _, _, _, ld = rows_layout(op.shape, op.strides, self.axes)
        if ld is not None:
            return lib.as_rows(a, self.rows, self.cols, ld)
        return lib.reshape(lib.contiguous(lib.permute(a, self.perm)), (self.rows, self.cols))

    def output(self, out: Any, name: str, x: _Operand):
        """(result, 2-D view written by the kernel, copy-back target or None) for an output (its
        aliasing is checked by the caller, with every argument in view)."""
        lib = x.lib
        if out is None:
            buf = lib.empty(self.row_shape, x.dtype, x.device)
            result = buf if self.identity else lib.permute(buf, self.inverse)
            return result, lib.reshape(buf, (self.rows, self.cols)), None
        o = _like_x(out, name, x)
        _, _, _, ld = rows_layout(o.shape, o.strides, self.axes)
        if ld is not None:
            return out, o.lib.as_rows(o.lib.exported(out), self.rows, self.cols, ld), None
        buf = lib.empty(self.row_shape, x.dtype, x.device)
        back = buf if self.identity else lib.permute(buf, self.inverse)
        return out, lib.reshape(buf, (self.rows, self.cols)), back

    def param(self, w: Any, name: str, x: _Operand, like: Optional[str]):
        """A weight-shaped argument as a contiguous 1-D array, and its dtype (None: w is None)."""
        if w is None:
            return None, like
        p = _operand(w, name, x.device)
        rules.check_param(name, p.dtype, p.shape, x.dtype, self.norm_shape, like)
        flat = p.lib.reshape(p.lib.contiguous(p.lib.exported(w)), (self.cols,))
        return flat, p.dtype

    def stat(self, a: Any, name: str, x: _Operand):
        """mean or rstd from a forward pass as a contiguous 1-D array of the statistics' dtype."""
        p = _operand(a, name, x.device)
        rules.check_stat(name, p.dtype, p.shape, x.dtype, self.stats_shape)
        return p.lib.reshape(p.lib.contiguous(p.lib.exported(a), self.stat_dtype), (self.rows,))

    def new_stat(self, x: _Operand):
        a = x.lib.empty(self.stats_shape, self.stat_dtype, x.device)
        return a, x.lib.reshape(a, (self.rows,))

    def new_stats(self, x: _Operand, rms: bool, wanted: bool):
        """(mean, rstd, mean_rows, rstd_rows) for return_stats (mean None for RMSNorm), else Nones."""
        mean = rstd = mean_rows = rstd_rows = None
        if wanted:
            if not rms:
                mean, mean_rows = self.new_stat(x)
            rstd, rstd_rows = self.new_stat(x)
        return mean, rstd, mean_rows, rstd_rows


def _workspace(lib, nbytes: int, device: int):
    return lib.empty((nbytes,), "uint8", device) if nbytes else None


# ---- the calls ------------------------------------------------------------------------------------
#
# Each call first tries its fast path, the common call on PyTorch tensors (contiguous, over the last
# axis, on the current stream, no out=) without the general path's bookkeeping: the native module
# takes such tensors as rows as they are. Anything else, including anything wrong, goes the general
# way, which checks every argument and says what is wrong.


def _fast_param(lib, w: Any, x: Any, cols: int, like: Any):
    """A weight-shaped tensor the fast path can pass as it is (detached), None for None, or False."""
    if w is None:
        return None
    t = lib.torch
    if not isinstance(w, t.Tensor) or w.device != x.device or w.dtype not in lib.param_types[x.dtype]:
        return False
    if (like is not None and w.dtype != like) or w.dim() != 1 or w.shape[0] != cols or not w.is_contiguous():
        return False
    return w.detach() if w.requires_grad else w


def _fast_x(x: Any, axis: Any, stream: Any):
    """(torch adapter, cols) when x qualifies for a fast path, else None."""
    if stream is not None or type(axis) is not int or axis != -1 or _module_of(x) != "torch" or native() is None:
        return None
    lib = _lib("torch")
    if not isinstance(x, lib.torch.Tensor) or x.dtype not in lib.elements or x.dim() == 0 or x.requires_grad:
        return None
    cols = x.shape[-1]
    return (lib, cols) if cols > 0 and x.is_contiguous() else None


def _torch_forward(rms, x, weight, bias, axis, eps, out, return_stats, stream):
    fast = None if out is not None or type(eps) is not float or not 0.0 <= eps < math.inf else _fast_x(x, axis, stream)
    if fast is None:
        return None
    lib, cols = fast
    w = _fast_param(lib, weight, x, cols, None)
    if w is False:
        return None
    b = _fast_param(lib, bias, x, cols, None if w is None else w.dtype)
    if b is False:
        return None
    t = lib.torch
    y = t.empty_like(x)
    mean = rstd = None
    if return_stats:
        stats_shape, stat_type = x.shape[:-1] + (1,), lib.stat_types[x.dtype]
        mean = None if rms else t.empty(stats_shape, dtype=stat_type, device=x.device)
        rstd = t.empty(stats_shape, dtype=stat_type, device=x.device)
    if x.numel():
        module = native()
        ws = None
        if cols > 8192:  # rows a block holds need none (and without one the library allocates its own)
            nbytes = module.forward_workspace_bytes(x.numel() // cols, cols, lib.elements[x.dtype], x.device.index)
            ws = t.empty(nbytes, dtype=t.uint8, device=x.device) if nbytes else None
        module.norm_forward(rms, x, y, w, b, eps, mean, rstd, ws, t.cuda.current_stream(x.device).cuda_stream)
    if not return_stats:
        return y
    return (y, rstd) if rms else (y, mean, rstd)


def _torch_backward(rms, dy, x, mean, rstd, weight, axis, stream):
    fast = _fast_x(x, axis, stream)
    if fast is None:
        return None
    lib, cols = fast
    t = lib.torch
    stat_type, stats_shape = lib.stat_types[x.dtype], x.shape[:-1] + (1,)
    for a in (dy,) + ((rstd,) if rms else (mean, rstd)):
        if type(a) is not t.Tensor or a.device != x.device or a.requires_grad or not a.is_contiguous():
            return None
    if dy.dtype != x.dtype or dy.shape != x.shape:
        return None
    if any(s.dtype != stat_type or s.shape != stats_shape for s in ((rstd,) if rms else (mean, rstd))):
        return None
    w = _fast_param(lib, weight, x, cols, None)
    if w is False:
        return None
    dx = t.empty_like(x)
    make = t.zeros if x.numel() == 0 else t.empty
    ptype = x.dtype if w is None else w.dtype
    dweight = make(cols, dtype=ptype, device=x.device) if w is not None else None
    dbias = None if rms else make(cols, dtype=ptype, device=x.device)
    if x.numel():
        module = native()
        rows = x.numel() // cols
        nbytes = module.backward_workspace_bytes(rows, cols, lib.elements[x.dtype], dweight is not None,
                                                 dbias is not None, x.device.index)
        ws = t.empty(nbytes, dtype=t.uint8, device=x.device) if nbytes else None
        module.norm_backward(rms, dy, x, None if rms else mean, rstd, w, dx, dweight, dbias, ws,
                             t.cuda.current_stream(x.device).cuda_stream)
    return (dx, dweight) if rms else (dx, dweight, dbias)


def _forward(rms: bool, x: Any, weight: Any, bias: Any, axis: Any, eps: Any, out: Any, return_stats: bool,
             stream: Any):
    fast = _torch_forward(rms, x, weight, bias, axis, eps, out, return_stats, stream)
    if fast is not None:
        return fast
    xo = _operand(x, "x", None)
    plan = _Plan(xo, axis)
    e = check_eps(eps)
    lib = xo.lib
    with lib.scope(xo.device, stream) as handle:
        w, wdt = plan.param(weight, "weight", xo, None)
        b, _ = plan.param(bias, "bias", xo, wdt)
        _check_aliasing(xo, {"out": out}, {"x": x, "weight": weight, "bias": bias}, [("out", "x")])
        y, y_rows, back = plan.output(out, "out", xo)
        mean, rstd, mean_rows, rstd_rows = plan.new_stats(xo, rms, return_stats)
        if plan.rows:
            module = native()
            ws = _workspace(lib, module.forward_workspace_bytes(plan.rows, plan.cols, xo.dtype, xo.device), xo.device)
            module.norm_forward(rms, plan.rows_of(xo), y_rows, w, b, e, mean_rows, rstd_rows, ws, handle)
            if back is not None:
                lib.copy_into(y, back)
    if not return_stats:
        return y
    return (y, rstd) if rms else (y, mean, rstd)


def _like_x(a: Any, name: str, x: _Operand) -> _Operand:
    """`a` as an operand on x's device, of x's dtype and shape (else the error naming it)."""
    o = _operand(a, name, x.device)
    rules.check_like_x(name, o.dtype, o.shape, x.dtype, x.shape)
    return o


def _check_aliasing(x: _Operand, outputs: dict, inputs: dict, exact_ok) -> None:
    """The core's aliasing rule on the caller's arrays (absent ones None)."""
    def memory(items):
        return [(k, None if v is None else _operand(v, k, x.device).memory()) for k, v in items.items()]
    if any(v is not None for v in outputs.values()):
        rules.check_aliasing(memory(outputs), memory(inputs), exact_ok)


def _backward(rms: bool, dy: Any, x: Any, mean: Any, rstd: Any, weight: Any, axis: Any, stream: Any):
    fast = _torch_backward(rms, dy, x, mean, rstd, weight, axis, stream)
    if fast is not None:
        return fast
    xo = _operand(x, "x", None)
    dyo = _like_x(dy, "dy", xo)
    plan = _Plan(xo, axis)
    lib = xo.lib
    with lib.scope(xo.device, stream) as handle:
        w, wdt = plan.param(weight, "weight", xo, None)
        m = None if rms else plan.stat(mean, "mean", xo)
        r = plan.stat(rstd, "rstd", xo)
        dx, dx_rows, _ = plan.output(None, "dx", xo)
        pdt = wdt or xo.dtype
        make = lib.zeros if plan.rows == 0 else lib.empty
        dweight = make(plan.norm_shape, pdt, xo.device) if weight is not None else None
        dbias = None if rms else make(plan.norm_shape, pdt, xo.device)
        if plan.rows:
            module = native()
            nbytes = module.backward_workspace_bytes(plan.rows, plan.cols, xo.dtype, dweight is not None,
                                                     dbias is not None, xo.device)
            flat = (lambda a: None if a is None else lib.reshape(a, (plan.cols,)))
            module.norm_backward(rms, plan.rows_of(dyo), plan.rows_of(xo), m, r, w, dx_rows, flat(dweight), flat(dbias),
                                 _workspace(lib, nbytes, xo.device), handle)
    return (dx, dweight) if rms else (dx, dweight, dbias)


def _add_forward(rms: bool, x: Any, residual: Any, weight: Any, bias: Any, bias_in: Any, axis: Any, eps: Any,
                 out: Any, residual_out: Any, return_stats: bool, stream: Any):
    xo = _operand(x, "x", None)
    ro = _like_x(residual, "residual", xo)
    plan = _Plan(xo, axis)
    e = check_eps(eps)
    lib = xo.lib
    with lib.scope(xo.device, stream) as handle:
        w, wdt = plan.param(weight, "weight", xo, None)
        b, wdt = plan.param(bias, "bias", xo, wdt)
        bi, _ = plan.param(bias_in, "bias_in", xo, wdt)
        _check_aliasing(xo, {"out": out, "residual_out": residual_out},
                        {"x": x, "residual": residual, "weight": weight, "bias": bias, "bias_in": bias_in},
                        [("out", "x"), ("out", "residual"), ("residual_out", "x"), ("residual_out", "residual")])
        s, s_rows, s_back = plan.output(residual_out, "residual_out", xo)
        y, y_rows, y_back = plan.output(out, "out", xo)
        mean, rstd, mean_rows, rstd_rows = plan.new_stats(xo, rms, return_stats)
        if plan.rows:
            module = native()
            ws = _workspace(lib, module.forward_workspace_bytes(plan.rows, plan.cols, xo.dtype, xo.device), xo.device)
            module.add_norm_forward(rms, plan.rows_of(xo), plan.rows_of(ro), bi, s_rows, y_rows, w, b, e, mean_rows,
                                    rstd_rows, ws, handle)
            if s_back is not None:
                lib.copy_into(s, s_back)
            if y_back is not None:
                lib.copy_into(y, y_back)
    if not return_stats:
        return y, s
    return (y, s, rstd) if rms else (y, s, mean, rstd)


def layer_norm(x, weight=None, bias=None, *, axis=-1, eps=1e-5, out=None, return_stats=False, stream=None):
    """:func:`lnorm.layer_norm` on a GPU array; `stream`: where to queue the work (default: current)."""
    return _forward(False, x, weight, bias, axis, eps, out, return_stats, stream)


def rms_norm(x, weight=None, *, axis=-1, eps=1e-6, out=None, return_stats=False, stream=None):
    """:func:`lnorm.rms_norm` on a GPU array."""
    return _forward(True, x, weight, None, axis, eps, out, return_stats, stream)


def layer_norm_backward(dy, x, mean, rstd, weight=None, *, axis=-1, stream=None):
    """:func:`lnorm.layer_norm_backward` on GPU arrays."""
    return _backward(False, dy, x, mean, rstd, weight, axis, stream)


def rms_norm_backward(dy, x, rstd, weight=None, *, axis=-1, stream=None):
    """:func:`lnorm.rms_norm_backward` on GPU arrays."""
    return _backward(True, dy, x, None, rstd, weight, axis, stream)


def add_layer_norm(x, residual, weight=None, bias=None, *, axis=-1, eps=1e-5, bias_in=None, out=None,
                   residual_out=None, return_stats=False, stream=None):
    """:func:`lnorm.add_layer_norm` on GPU arrays."""
    return _add_forward(False, x, residual, weight, bias, bias_in, axis, eps, out, residual_out, return_stats, stream)


def add_rms_norm(x, residual, weight=None, *, axis=-1, eps=1e-6, bias_in=None, out=None, residual_out=None,
                 return_stats=False, stream=None):
    """:func:`lnorm.add_rms_norm` on GPU arrays."""
    return _add_forward(True, x, residual, weight, None, bias_in, axis, eps, out, residual_out, return_stats, stream)


_CALLS = {f.__name__: f for f in (layer_norm, rms_norm, layer_norm_backward, rms_norm_backward, add_layer_norm,
                                  add_rms_norm)}
# The position of x among each call's positional arguments (the backward passes take dy first).
_X_AT = {"layer_norm_backward": 1, "rms_norm_backward": 1}


def has_call(name: str) -> bool:
    """Whether the CUDA backend runs the public function `name`."""
    return name in _CALLS


def call(name: str, args: tuple, kwargs: dict):
    """Runs the public function `name` on arguments of which at least one is on a GPU."""
    fn = _CALLS[name]
    at = _X_AT.get(name, 0)
    x = args[at] if len(args) > at else kwargs.get("x")
    if not on_gpu(x):
        _check_x_on_gpu(x, fn.__code__.co_varnames[:fn.__code__.co_argcount], args, kwargs)
    return fn(*args, **kwargs)
