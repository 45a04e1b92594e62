"""lnorm's channel norms: group_norm, instance_norm, batch_norm, their backward passes.

x has a batch axis 0 and a channel axis (``channel_axis``: 1 for NCHW, -1 for NHWC, any axis but 0),
any strides: NCHW and NHWC arrays, and torch ``channels_last`` tensors as they are, run without a
transposed copy. Every argument is checked here, once, with an error that names it; the C++ core
(``lnorm/channel_norm.hpp``) then runs with the GIL released. Nothing the caller passes is modified,
except ``out`` and, in ``batch_norm``'s training mode, the running statistics.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from . import _buffers, _interop, _lnorm
from . import _checks as rules
from ._checks import (check_activation as _activation, check_channel_axis as _channel_axis, check_eps as _eps,
                      check_flag, check_momentum as _momentum, check_num_groups as _num_groups)
from ._functional import (_any_replaced, _as_array, _copied, _memory, _native, _output, _params, _same_as_x,
                          _stat_dtype)

def _channel_stat(a: Any, name: str, x: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """mean or rstd of a forward pass: float32 or x's dtype, of `shape`, made contiguous."""
    if a is None:
        raise TypeError(f"{name}: must be an array, not None")
    sdt = _stat_dtype(x)
    a = _as_array(a, name, dtype=sdt)
    rules.check_stat(name, str(a.dtype), a.shape, str(x.dtype), shape)
    return a if a.dtype == sdt and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=sdt)


def _running(a: Any, name: str, x: np.ndarray, channels: int, update: bool):
    """A running statistic: (the array the core reads and writes, the caller's array to copy it back
    into, or None). Read-only use takes anything array-like; updating takes a writable ndarray."""
    if a is None:
        return None, None
    sdt = _stat_dtype(x)
    if update and not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: must be a numpy.ndarray (it is updated in place), not {type(a).__name__}")
    given = a
    a = _as_array(a, name, dtype=sdt)
    if a.shape != (channels,):
        raise ValueError(f"{name}: shape {a.shape} does not match the channels ({channels},)")
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise TypeError(f"{name}: dtype {a.dtype} is not a floating-point dtype")
    if not update:
        return (a if a.dtype == sdt and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=sdt)), None
    if not given.flags.writeable:
        raise ValueError(f"{name}: is read-only (it is updated in place)")
    if a is given and a.dtype == sdt and a.flags.c_contiguous:
        return a, None
    return np.ascontiguousarray(a, dtype=sdt), given


def _like_x(x: np.ndarray) -> np.ndarray:
    """A new array of x's shape and dtype in x's memory order (channels-last stays channels-last, so the
    kernels walk both as x's layout)."""
    if x.flags.c_contiguous:
        return _buffers.empty(x.shape, x.dtype)
    # Axes by decreasing stride (stable): a dense buffer in that order, from the buffer cache as any
    # large output, seen in x's axis order.
    order = sorted(range(x.ndim), key=lambda d: -abs(x.strides[d]))
    buf = _buffers.empty(tuple(x.shape[d] for d in order), x.dtype)
    return buf.transpose(np.argsort(order))


def _forward(batch: bool, x: Any, groups: Any, weight: Any, bias: Any, channel_axis: Any, eps: Any,
             activation: Any, out: Any, return_stats: Any, training: bool = False, momentum: Any = 0.1,
             running_mean: Any = None, running_var: Any = None):
    return_stats = check_flag(return_stats, "return_stats")
    given = (x, weight, bias)
    x = _as_array(x, "x")
    ca = _channel_axis(channel_axis, x.ndim)
    channels = x.shape[ca]
    if channels == 0:
        raise ValueError("x: the channel axis is empty")
    g = channels if groups is None else _num_groups(groups, channels)
    weight, bias = _params(x, (channels,), weight=weight, bias=bias)
    e = _eps(eps)
    act = _activation(activation)
    m = 0.0
    rm = rv = rm_back = rv_back = None
    if batch:
        if training:
            m = _momentum(momentum)
            rm, rm_back = _running(running_mean, "running_mean", x, channels, True)
            rv, rv_back = _running(running_var, "running_var", x, channels, True)
            if x.size // channels < 2:  # as torch: no variance to estimate
                raise ValueError(f"x: batch_norm training needs more than one value per channel, got shape "
                                 f"{x.shape}")
        else:
            if running_mean is None or running_var is None:
                missing = "running_mean" if running_mean is None else "running_var"
                raise ValueError(f"{missing}: batch_norm in eval mode (training=False) needs running_mean and "
                                 "running_var")
            rm, _ = _running(running_mean, "running_mean", x, channels, False)
            rv, _ = _running(running_var, "running_var", x, channels, False)
    y = _like_x(x) if out is None else _output(out, "out", x)
    if out is not None and _any_replaced(given, (x, weight, bias)):
        copied = _copied(list(zip(("x", "weight", "bias"), given, (x, weight, bias))))
        if copied:
            rules.check_aliasing([("out", _memory(y))], copied, [("out", "x")])
    mean = rstd = None
    if return_stats:
        shape, sdt = ((channels,) if batch else (x.shape[0], g)), _stat_dtype(x)
        mean, rstd = np.empty(shape, sdt), np.empty(shape, sdt)
    _lnorm.channel_forward(batch, _native(x), _native(y), _native(weight), _native(bias), ca, g, e, act,
                           bool(training), m, rm, rv, mean, rstd)
    for back, used in ((rm_back, rm), (rv_back, rv)):
        if back is not None:
            np.copyto(back, used, casting="unsafe")
    return (y, mean, rstd) if return_stats else y


def _backward(batch: bool, dy: Any, x: Any, mean: Any, rstd: Any, weight: Any, groups: Any,
              channel_axis: Any):
    x = _as_array(x, "x")
    dy = _same_as_x(dy, "dy", x)
    ca = _channel_axis(channel_axis, x.ndim)
    channels = x.shape[ca]
    if channels == 0:
        raise ValueError("x: the channel axis is empty")
    g = channels if groups is None else _num_groups(groups, channels)
    (weight,) = _params(x, (channels,), weight=weight)
    shape = (channels,) if batch else (x.shape[0], g)
    mean = _channel_stat(mean, "mean", x, shape)
    rstd = _channel_stat(rstd, "rstd", x, shape)
    dx = _like_x(x)
    wdt = weight.dtype if weight is not None else x.dtype
    dweight = np.empty((channels,), wdt) if weight is not None else None
    dbias = np.empty((channels,), wdt)
    _lnorm.channel_backward(batch, _native(dy), _native(x), mean, rstd, _native(weight), _native(dx),
                            _native(dweight), _native(dbias), ca, g)
    return dx, dweight, dbias


def _foreign(x: Any) -> bool:
    return type(x) is not np.ndarray and bool(_interop.library_of(x))


def group_norm(x, num_groups, weight=None, bias=None, *, channel_axis=1, eps: float = 1e-5, activation=None,
               out=None, return_stats: bool = False):
    """Group normalization: statistics per (sample, group) over the group's ``C / num_groups``
    channels and every axis but 0; then the per-channel affine ``* weight + bias`` and the optional
    ``activation`` ("silu" or "relu"), in one pass. Returns y, or ``(y, mean, rstd)`` with
    ``return_stats=True`` (shape ``(N, num_groups)``, float32; float64 for float64 x).

    >>> import numpy as np, lnorm
    >>> x = np.random.default_rng(0).standard_normal((2, 8, 4, 4), dtype=np.float32)
    >>> y, mean, rstd = lnorm.group_norm(x, 4, return_stats=True)
    >>> y.shape, mean.shape
    ((2, 8, 4, 4), (2, 4))
    """
    if _foreign(x):
        return _interop.call(group_norm, x, (x, num_groups, weight, bias),
                             dict(channel_axis=channel_axis, eps=eps, activation=activation, out=out,
                                  return_stats=return_stats))
    if num_groups is None:
        raise TypeError("num_groups: must be an int, not None")
    return _forward(False, x, num_groups, weight, bias, channel_axis, eps, activation, out, return_stats)


def instance_norm(x, weight=None, bias=None, *, channel_axis=1, eps: float = 1e-5, activation=None, out=None,
                  return_stats: bool = False):
    """Instance normalization: :func:`group_norm` with one channel per group; mean and rstd are
    ``(N, C)``.

    >>> import numpy as np, lnorm
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 8, 8), dtype=np.float32)
    >>> y = lnorm.instance_norm(x, channel_axis=1)
    >>> bool(abs(y.mean(axis=(2, 3))).max() < 1e-5)
    True
    """
    if _foreign(x):
        return _interop.call(instance_norm, x, (x, weight, bias),
                             dict(channel_axis=channel_axis, eps=eps, activation=activation, out=out,
                                  return_stats=return_stats))
    return _forward(False, x, None, weight, bias, channel_axis, eps, activation, out, return_stats)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *, channel_axis=1,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5, activation=None, out=None,
               return_stats: bool = False):
    """Batch normalization. ``training=False``: ``(x - running_mean) / sqrt(running_var + eps) * weight
    + bias`` (both running statistics required). ``training=True``: statistics per channel over every
    other axis; ``running_mean`` / ``running_var``, where given, are updated in place as torch does:
    ``r = (1 - momentum) * r + momentum * batch``, the unbiased variance for ``running_var``. With
    ``return_stats=True`` returns ``(y, mean, rstd)`` of shape ``(C,)``: the batch's in training, the
    running ones in eval (``rstd = 1 / sqrt(running_var + eps)``).

    >>> import numpy as np, lnorm
    >>> x = np.random.default_rng(0).standard_normal((16, 3, 4, 4), dtype=np.float32)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y = lnorm.batch_norm(x, rm, rv, training=True)
    >>> bool(abs(y.mean(axis=(0, 2, 3))).max() < 1e-5), bool(rm.any())
    (True, True)
    """
    training = check_flag(training, "training")
    if _foreign(x):
        return _interop.call(batch_norm, x, (x, running_mean, running_var, weight, bias),
                             dict(channel_axis=channel_axis, training=training, momentum=momentum, eps=eps,
                                  activation=activation, out=out, return_stats=return_stats))
    return _forward(True, x, None, weight, bias, channel_axis, eps, activation, out, return_stats, training,
                    momentum, running_mean, running_var)


def group_norm_backward(dy, x, mean, rstd, weight=None, *, num_groups, channel_axis=1):
    """Gradients of :func:`group_norm` (without activation): returns ``(dx, dweight, dbias)``;
    ``mean`` and ``rstd`` are the forward's (``return_stats=True``). ``dweight`` is None when
    ``weight`` is None; ``dweight`` and ``dbias`` are sums over the batch, in the weight's dtype."""
    if _foreign(x):
        return _interop.call(group_norm_backward, x, (dy, x, mean, rstd, weight),
                             dict(num_groups=num_groups, channel_axis=channel_axis))
    if num_groups is None:
        raise TypeError("num_groups: must be an int, not None")
    return _backward(False, dy, x, mean, rstd, weight, num_groups, channel_axis)


def instance_norm_backward(dy, x, mean, rstd, weight=None, *, channel_axis=1):
    """Gradients of :func:`instance_norm`: returns ``(dx, dweight, dbias)``."""
    if _foreign(x):
        return _interop.call(instance_norm_backward, x, (dy, x, mean, rstd, weight), dict(channel_axis=channel_axis))
    return _backward(False, dy, x, mean, rstd, weight, None, channel_axis)


def batch_norm_backward(dy, x, mean, rstd, weight=None, *, channel_axis=1):
    """Gradients of :func:`batch_norm` in training mode (batch statistics: the forward's mean and rstd,
    shape ``(C,)``): returns ``(dx, dweight, dbias)``."""
    if _foreign(x):
        return _interop.call(batch_norm_backward, x, (dy, x, mean, rstd, weight), dict(channel_axis=channel_axis))
    return _backward(True, dy, x, mean, rstd, weight, None, channel_axis)
