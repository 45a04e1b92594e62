"""lnorm's functional API: layer_norm, rms_norm, their backward passes and the fused add + norm.

Every argument is checked here, once, with an error that names it; the native module then runs the
kernels with the GIL released. Nothing the caller passes is modified, except ``out``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _buffers, _interop, _lnorm
from . import _checks as rules
from ._checks import axes_of as _axes, check_eps as _eps

Axis = Union[int, Sequence[int]]

_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_SUPPORTED = "float32, float64, float16 or bfloat16"


_U16 = np.dtype(np.uint16)
_bfloat16: Optional[np.dtype] = None  # the bfloat16 dtype, once one has been seen


def _is_bfloat16(dtype: np.dtype) -> bool:
    # ml_dtypes.bfloat16 is a 2-byte dtype of kind 'V'; checking kind first keeps float32 cheap, and
    # the first one seen is remembered (dtype.name is slow to ask).
    global _bfloat16
    if dtype is _bfloat16:
        return True
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16":
        _bfloat16 = dtype
        return True
    return False


def _as_array(a: Any, name: str, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """``a`` as an ndarray of a supported float dtype that the native module can take: lists take
    ``dtype`` when it is given; arrays of other libraries come through DLPack (``_interop``); an
    array whose strides are not whole elements, or whose data is not aligned, is copied."""
    if type(a) is not np.ndarray:
        if a is None:  # numpy.asarray would make it a 0-d NaN
            raise TypeError(f"{name}: must be an array, not None")
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{name}: masked arrays are not supported (lnorm would ignore the mask); pass "
                            f"{name}.filled(value) or {name}.data")
        if isinstance(a, np.ndarray):
            a = a.view(np.ndarray)  # a subclass (np.matrix, np.memmap, ...): its data as a plain array
        elif _interop.library_of(a):
            a = _interop.to_numpy(a, name)
        else:
            _interop.check_on_host(a, name)
            try:
                a = np.asarray(a, dtype=dtype)
            except (TypeError, ValueError, RuntimeError, OverflowError) as e:
                raise TypeError(f"{name}: cannot be converted to a NumPy array ({e})") from None
    dt = a.dtype
    if dt not in _NATIVE_DTYPES and not _is_bfloat16(dt):
        raise TypeError(f"{name}: dtype {dt} is not supported (expected {_SUPPORTED})")
    if not a.flags.aligned:  # misaligned data, or strides that are not whole elements
        a = np.ascontiguousarray(a)
    return a


def _native(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The array as the native module takes it: bfloat16 travels as its uint16 bits."""
    if a is not None and _is_bfloat16(a.dtype):
        return a.view(np.uint16)
    return a


def _stat_dtype(x: np.ndarray) -> np.dtype:
    return _FLOAT64 if x.dtype == _FLOAT64 else _FLOAT32


def _mask(axes: Tuple[int, ...]) -> int:
    m = 0
    for a in axes:
        m |= 1 << a
    return m


def _param(w: Any, name: str, x: np.ndarray, norm_shape: Tuple[int, ...],
           like: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """A weight-shaped argument: x's dtype or float32 (or the dtype of ``like``), contiguous."""
    if w is None:
        return None
    w = _as_array(w, name, dtype=x.dtype)
    rules.check_param(name, str(w.dtype), w.shape, str(x.dtype), norm_shape,
                      None if like is None else str(like.dtype))
    if not w.flags.c_contiguous:
        w = np.ascontiguousarray(w)
    return w


def _params(x: np.ndarray, norm_shape: Tuple[int, ...], **named: Any) -> list:
    """Checks weight-shaped arguments; all given ones must share one dtype (that of the first)."""
    out, first = [], None
    for name, w in named.items():
        p = _param(w, name, x, norm_shape, like=first)
        first = first if first is not None else p
        out.append(p)
    return out


def _same_as_x(a: Any, name: str, x: np.ndarray) -> np.ndarray:
    a = _as_array(a, name, dtype=x.dtype)
    if a.dtype != x.dtype or a.shape != x.shape:
        rules.check_like_x(name, str(a.dtype), a.shape, str(x.dtype), x.shape)
    return a


def _memory(a: Any) -> Optional[tuple]:
    """Where an ndarray's elements lie, for the aliasing rule: (address, shape, byte strides, itemsize);
    None for what is not an ndarray (a list, None: fresh memory, nothing to overlap)."""
    if not isinstance(a, np.ndarray):
        return None
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.itemsize)


def _copied(named_pairs: Sequence[Tuple[str, Any, Any]]) -> list:
    """The caller's arrays that were replaced (by copies, or by plain views of a subclass) before the
    native call, as (name, memory). The C++ core applies the aliasing rule to the arrays it gets, so
    these are the only ones Python must hold to it (rules.check_aliasing), for an out= that overlaps
    what was copied."""
    return [(name, _memory(given)) for name, given, used in named_pairs
            if used is not given and isinstance(given, np.ndarray)]


def _any_replaced(given: tuple, used: tuple) -> bool:
    return any(g is not u for g, u in zip(given, used))


def _output(out: Any, name: str, x: np.ndarray) -> np.ndarray:
    """A caller's output array (x's dtype and shape, writable), or a new one for None."""
    if out is None:
        return _buffers.empty(x.shape, x.dtype)
    if type(out) is not np.ndarray:
        if isinstance(out, np.ma.MaskedArray):
            raise TypeError(f"{name}: masked arrays are not supported (lnorm would ignore the mask)")
        if not isinstance(out, np.ndarray):
            _interop.check_on_host(out, name)
            raise TypeError(f"{name}: must be a numpy.ndarray, not {type(out).__name__}")
    if out.dtype != x.dtype or out.shape != x.shape:
        rules.check_like_x(name, str(out.dtype), out.shape, str(x.dtype), x.shape)
    flags = out.flags
    if not flags.writeable:
        raise ValueError(f"{name}: is read-only")
    if not flags.aligned:
        raise ValueError(f"{name}: its elements must be aligned and a whole number of elements apart")
    return out


def _stat(a: Any, name: str, x: np.ndarray, axes: Tuple[int, ...]) -> np.ndarray:
    """mean or rstd from a forward pass: keepdims shape, float32 or x's dtype, made contiguous."""
    sdt = _stat_dtype(x)
    a = _as_array(a, name, dtype=sdt)
    shape = rules.stats_shape_of(x.shape, axes)
    if (a.dtype != _FLOAT32 and a.dtype != x.dtype) or a.shape != shape:
        rules.check_stat(name, str(a.dtype), a.shape, str(x.dtype), shape)
    return a if a.dtype == sdt and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=sdt)


def _norm_shape(x: np.ndarray, axes: Tuple[int, ...]) -> Tuple[int, ...]:
    xs = x.shape
    if len(axes) == 1 and xs[axes[0]]:
        return (xs[axes[0]],)
    return rules.norm_shape_of(xs, axes)


# (axis, ndim) -> (sorted axes, bit mask): the axis arithmetic of a call shape, done once.
_AXIS_PLANS: dict = {}


def _plain_axis(axis: Any) -> bool:
    """An int or a tuple of ints, exactly: only those are cached (1.0 == 1 and hashes like it)."""
    t = type(axis)
    return t is int or (t is tuple and all(type(a) is int for a in axis))


def _axis_plan(axis: Axis, ndim: int) -> Tuple[Tuple[int, ...], int]:
    plain = _plain_axis(axis)
    if plain:
        plan = _AXIS_PLANS.get((axis, ndim))
        if plan is not None:
            return plan
    axes = _axes(axis, ndim)
    plan = (axes, _mask(axes))
    if plain and len(_AXIS_PLANS) < 4096:
        _AXIS_PLANS[axis, ndim] = plan
    return plan


def _fast_param(w: Any, x: np.ndarray, norm_shape: Tuple[int, ...]) -> bool:
    """True when w needs no conversion: an ndarray of x's dtype, the right shape, contiguous."""
    return type(w) is np.ndarray and w.dtype == x.dtype and w.shape == norm_shape and w.flags.c_contiguous


def _forward(rms: bool, x: Any, weight: Any, bias: Any, axis: Axis, eps: Any, out: Any,
             return_stats: bool):
    return_stats = return_stats is True or rules.check_flag(return_stats, "return_stats")
    given = (x, weight, bias)
    if type(x) is not np.ndarray or x.dtype not in _NATIVE_DTYPES or not x.flags.aligned:
        x = _as_array(x, "x")
    axes, mask = _axis_plan(axis, x.ndim)
    norm_shape = _norm_shape(x, axes)
    if not ((weight is None or _fast_param(weight, x, norm_shape))
            and (bias is None or _fast_param(bias, x, norm_shape))):
        weight, bias = _params(x, norm_shape, weight=weight, bias=bias)
    e = eps if type(eps) is float and 0.0 <= eps < math.inf else _eps(eps)
    y = _output(out, "out", x)
    if out is not None and _any_replaced(given, (x, weight, bias)):
        copied = _copied(list(zip(("x", "weight", "bias"), given, (x, weight, bias))))
        if copied:
            rules.check_aliasing([("out", _memory(y))], copied, [("out", "x")])
    mean = rstd = None
    if return_stats:
        shape, sdt = rules.stats_shape_of(x.shape, axes), _stat_dtype(x)
        mean = None if rms else np.empty(shape, sdt)
        rstd = np.empty(shape, sdt)
    if x.dtype.kind == "V":  # bfloat16 travels as its bits
        _lnorm.norm_forward(rms, _native(x), _native(y), _native(weight), _native(bias), mask, e, mean, rstd)
    else:
        _lnorm.norm_forward(rms, x, y, weight, bias, mask, e, mean, rstd)
    if not return_stats:
        return y
    return (y, rstd) if rms else (y, mean, rstd)


# The native fast path of the most common call (see python/_lnorm.cpp): None when it does not apply.
_fast_forward = _lnorm.fast_forward
_fast_backward = _lnorm.fast_backward


def _fast_forward_bf16(rms: bool, x: Any, weight: Any, bias: Any, eps: Any, out: Any):
    """The fast path for bfloat16 ndarrays, which NumPy cannot hand over as buffers: their uint16
    views, marked as bfloat16's bits. None when it does not apply."""
    if type(x) is not np.ndarray or not _is_bfloat16(x.dtype):
        return None
    if weight is not None:
        if type(weight) is not np.ndarray or weight.dtype is not _bfloat16:
            return None
        weight = weight.view(_U16)
    if bias is not None:
        if type(bias) is not np.ndarray or bias.dtype is not _bfloat16:
            return None
        bias = bias.view(_U16)
    if out is not None and (type(out) is not np.ndarray or out.dtype is not _bfloat16):
        return None
    y = _fast_forward(rms, x.view(_U16), weight, bias, eps, None if out is None else out.view(_U16),
                      _buffers.fast_max_bytes, True)
    if y is None:
        return None
    return out if out is not None else y.view(_bfloat16)


def layer_norm(x, weight=None, bias=None, *, axis: Axis = -1, eps: float = 1e-5, out=None,
               return_stats: bool = False, stream=None):
    """Layer normalization: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    ``mean`` and the biased ``var`` are taken over ``axis`` (an int or a tuple; they need not be
    trailing: ``axis=1`` on an NCHW array normalizes over channels). ``weight`` and ``bias`` have the
    shape of the normalized axes, in x's dtype or float32. ``out`` may be ``x`` (in place). With
    ``return_stats=True`` returns ``(y, mean, rstd)``, keepdims shapes, float32 (float64 for float64).

    >>> import numpy as np, lnorm
    >>> x = np.random.default_rng(0).standard_normal((4, 768), dtype=np.float32)
    >>> y = lnorm.layer_norm(x, np.ones(768, np.float32), np.zeros(768, np.float32))
    >>> bool(abs(y.mean(-1)).max() < 1e-5)
    True
    """
    if type(axis) is int and axis == -1 and return_stats is False:
        y = _fast_forward(False, x, weight, bias, eps, out, _buffers.fast_max_bytes)
        if y is None:
            y = _fast_forward_bf16(False, x, weight, bias, eps, out)
        if y is not None:
            return y
    if type(x) is not np.ndarray and _interop.library_of(x):
        return _interop.call(layer_norm, x, (x, weight, bias), dict(axis=axis, eps=eps, out=out, return_stats=return_stats, stream=stream))
    return _forward(False, x, weight, bias, axis, eps, out, return_stats)


def rms_norm(x, weight=None, *, axis: Axis = -1, eps: float = 1e-6, out=None,
             return_stats: bool = False, stream=None):
    """RMS normalization: ``y = x / sqrt(mean(x**2) + eps) * weight``.

    Same conventions as :func:`layer_norm`; with ``return_stats=True`` returns ``(y, rstd)``.

    >>> import numpy as np, lnorm
    >>> x = np.random.default_rng(0).standard_normal((2, 4096), dtype=np.float32)
    >>> y, rstd = lnorm.rms_norm(x, return_stats=True)
    >>> rstd.shape
    (2, 1)
    """
    if type(axis) is int and axis == -1 and return_stats is False:
        y = _fast_forward(True, x, weight, None, eps, out, _buffers.fast_max_bytes)
        if y is None:
            y = _fast_forward_bf16(True, x, weight, None, eps, out)
        if y is not None:
            return y
    if type(x) is not np.ndarray and _interop.library_of(x):
        return _interop.call(rms_norm, x, (x, weight), dict(axis=axis, eps=eps, out=out, return_stats=return_stats, stream=stream))
    return _forward(True, x, weight, None, axis, eps, out, return_stats)


def _backward(rms: bool, dy: Any, x: Any, mean: Any, rstd: Any, weight: Any, axis: Axis):
    x = _as_array(x, "x")
    dy = _same_as_x(dy, "dy", x)
    axes = _axes(axis, x.ndim)
    norm_shape = _norm_shape(x, axes)
    (weight,) = _params(x, norm_shape, weight=weight)
    mean = None if rms else _stat(mean, "mean", x, axes)
    rstd = _stat(rstd, "rstd", x, axes)
    dx = _buffers.empty(x.shape, x.dtype)
    wdt = weight.dtype if weight is not None else x.dtype
    dweight = np.empty(norm_shape, wdt) if weight is not None else None
    dbias = None if rms else np.empty(norm_shape, wdt)
    _lnorm.norm_backward(rms, _native(dy), _native(x), mean, rstd, _native(weight), _native(dx),
                         _native(dweight), _native(dbias), _mask(axes))
    return (dx, dweight) if rms else (dx, dweight, dbias)


def layer_norm_backward(dy, x, mean, rstd, weight=None, *, axis: Axis = -1, stream=None):
    """Gradients of :func:`layer_norm`: returns ``(dx, dweight, dbias)``.

    ``mean`` and ``rstd`` are the statistics the forward pass returned (``return_stats=True``).
    ``dweight`` is None when ``weight`` is None; ``dweight`` and ``dbias`` are sums over the batch
    axes, in the weight's dtype.

    >>> import numpy as np, lnorm
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.standard_normal((8, 64)), rng.standard_normal(64)
    >>> y, mean, rstd = lnorm.layer_norm(x, w, return_stats=True)
    >>> dx, dw, db = lnorm.layer_norm_backward(np.ones_like(y), x, mean, rstd, w)
    >>> dx.shape, dw.shape, db.shape
    ((8, 64), (64,), (64,))
    """
    if type(axis) is int and axis == -1:
        grads = _fast_backward(False, dy, x, mean, rstd, weight, _buffers.fast_max_bytes)
        if grads is not None:
            return grads
    if type(x) is not np.ndarray and _interop.library_of(x):
        return _interop.call(layer_norm_backward, x, (dy, x, mean, rstd, weight), dict(axis=axis, stream=stream))
    return _backward(False, dy, x, mean, rstd, weight, axis)


def rms_norm_backward(dy, x, rstd, weight=None, *, axis: Axis = -1, stream=None):
    """Gradients of :func:`rms_norm`: returns ``(dx, dweight)`` (``dweight`` None without weight).

    >>> import numpy as np, lnorm
    >>> x = np.random.default_rng(0).standard_normal((8, 64))
    >>> y, rstd = lnorm.rms_norm(x, return_stats=True)
    >>> dx, dw = lnorm.rms_norm_backward(np.ones_like(y), x, rstd)
    >>> dw is None
    True
    """
    if type(axis) is int and axis == -1:
        grads = _fast_backward(True, dy, x, None, rstd, weight, _buffers.fast_max_bytes)
        if grads is not None:
            return grads
    if type(x) is not np.ndarray and _interop.library_of(x):
        return _interop.call(rms_norm_backward, x, (dy, x, rstd, weight), dict(axis=axis, stream=stream))
    return _backward(True, dy, x, None, rstd, weight, axis)


def _add_forward(rms: bool, x: Any, residual: Any, weight: Any, bias: Any, bias_in: Any,
                 axis: Axis, eps: Any, out: Any, residual_out: Any, return_stats: bool):
    return_stats = rules.check_flag(return_stats, "return_stats")
    names, given = ("x", "residual", "weight", "bias", "bias_in"), (x, residual, weight, bias, bias_in)
    x = _as_array(x, "x")
    axes = _axes(axis, x.ndim)
    residual = _same_as_x(residual, "residual", x)
    norm_shape = _norm_shape(x, axes)
    weight, bias, bias_in = _params(x, norm_shape, weight=weight, bias=bias, bias_in=bias_in)
    e = _eps(eps)
    s = _output(residual_out, "residual_out", x)
    y = _output(out, "out", x)
    if out is not None or residual_out is not None:
        copied = _copied(list(zip(names, given, (x, residual, weight, bias, bias_in))))
        if copied:
            rules.check_aliasing([("out", _memory(out)), ("residual_out", _memory(residual_out))], copied,
                                 [("out", "x"), ("out", "residual"), ("residual_out", "x"), ("residual_out", "residual")])
    mean = rstd = None
    if return_stats:
        shape, sdt = rules.stats_shape_of(x.shape, axes), _stat_dtype(x)
        mean = None if rms else np.empty(shape, sdt)
        rstd = np.empty(shape, sdt)
    _lnorm.add_norm_forward(rms, _native(x), _native(residual), _native(bias_in), _native(s),
                            _native(y), _native(weight), _native(bias), _mask(axes), e, mean, rstd)
    if not return_stats:
        return y, s
    return (y, s, rstd) if rms else (y, s, mean, rstd)


def add_layer_norm(x, residual, weight=None, bias=None, *, axis: Axis = -1, eps: float = 1e-5,
                   bias_in=None, out=None, residual_out=None, return_stats: bool = False, stream=None):
    """Fused "add & norm": ``s = x + bias_in + residual`` (rounded to x's dtype), ``y = layer_norm(s)``.

    Returns ``(y, s)`` (``(y, s, mean, rstd)`` with ``return_stats=True``). ``out`` and
    ``residual_out`` may be ``x`` or ``residual`` themselves, for in-place use.

    >>> import numpy as np, lnorm
    >>> rng = np.random.default_rng(0)
    >>> x, r = rng.standard_normal((2, 3, 64), dtype=np.float32), rng.standard_normal((2, 3, 64), dtype=np.float32)
    >>> y, s = lnorm.add_layer_norm(x, r)
    >>> bool(np.array_equal(s, x + r))
    True
    """
    if type(x) is not np.ndarray and _interop.library_of(x):
        return _interop.call(add_layer_norm, x, (x, residual, weight, bias), dict(axis=axis, eps=eps, bias_in=bias_in, out=out, residual_out=residual_out, return_stats=return_stats, stream=stream))
    return _add_forward(False, x, residual, weight, bias, bias_in, axis, eps, out, residual_out,
                        return_stats)


def add_rms_norm(x, residual, weight=None, *, axis: Axis = -1, eps: float = 1e-6, bias_in=None,
                 out=None, residual_out=None, return_stats: bool = False, stream=None):
    """Fused "add & norm" with RMSNorm: ``s = x + bias_in + residual``, ``y = rms_norm(s)``.

    Returns ``(y, s)`` (``(y, s, rstd)`` with ``return_stats=True``).

    >>> import numpy as np, lnorm
    >>> x = np.ones((2, 8), np.float32)
    >>> y, s = lnorm.add_rms_norm(x, x)
    >>> float(y[0, 0])
    1.0
    """
    if type(x) is not np.ndarray and _interop.library_of(x):
        return _interop.call(add_rms_norm, x, (x, residual, weight), dict(axis=axis, eps=eps, bias_in=bias_in, out=out, residual_out=residual_out, return_stats=return_stats, stream=stream))
    return _add_forward(True, x, residual, weight, None, bias_in, axis, eps, out, residual_out,
                        return_stats)
