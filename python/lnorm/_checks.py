"""lnorm's argument rules, one per argument, for every backend (the CPU path, the CUDA path, the
modules, the configuration calls and the environment). No import of NumPy or of any array library:
arrays are described by their dtype's name and their shape; integers are what has ``__index__``,
reals what ``float`` takes. Each check raises TypeError (wrong kind) or ValueError (wrong value)
with a message that starts with the argument's name.

The aliasing rule (which outputs may share memory with which inputs) lives in the C++ core
(``lnorm/rules.hpp``); :func:`check_aliasing` applies it to the caller's arrays.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterable, Optional, Sequence, Tuple

SUPPORTED = "float32, float64, float16 or bfloat16"
DTYPES = ("float32", "float64", "float16", "bfloat16")


def _is_bool(a: Any) -> bool:
    return isinstance(a, bool) or type(a).__name__ == "bool_"


def _kind(a: Any) -> str:
    return "None" if a is None else type(a).__name__


def index_of(a: Any, name: str, what: str) -> int:
    """An exact integer from anything with ``__index__`` (int, NumPy integers, 0-d integer arrays);
    bools and everything else are a TypeError naming `name`."""
    if type(a) is int:
        return a
    if _is_bool(a) or not hasattr(a, "__index__"):
        raise TypeError(f"{name}: must be {what}, not {_kind(a)}")
    try:
        return int(a.__index__())
    except (TypeError, ValueError):  # an array of more than one element, or not of integers
        raise TypeError(f"{name}: must be {what}, not {_kind(a)}") from None


def axes_of(axis: Any, ndim: int) -> Tuple[int, ...]:
    """The normalized axes, non-negative and sorted (NumPy's rules)."""
    if ndim < 1:
        raise ValueError("x: must have at least one dimension")
    what = "an int or a tuple of ints"
    if isinstance(axis, (tuple, list)):
        items: Sequence[Any] = axis
        if not items:
            raise ValueError("axis: must name at least one axis")
    else:
        items = (axis,)
    out = []
    for a in items:
        a = index_of(a, "axis", what)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis: {a} is out of range for an array of {ndim} dimensions")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis: repeated axis in {tuple(items)}")
    return tuple(sorted(out))


def _real(v: Any, name: str) -> float:
    """A real number (Python's, NumPy's or a 0-d array's) as a float; NaN and inf pass through, an int
    beyond the largest double is OverflowError."""
    if _is_bool(v) or not isinstance(v, (int, float)) and not (hasattr(v, "__float__") and getattr(v, "ndim", None) == 0):
        raise TypeError(f"{name}: must be a real number, not {_kind(v)}")
    try:
        return float(v)
    except OverflowError:
        raise
    except (TypeError, ValueError):  # an array of more than one element, a complex
        raise TypeError(f"{name}: must be a real number, not {_kind(v)}") from None


def check_eps(eps: Any) -> float:
    """eps as a float: a real number (Python's, NumPy's or a 0-d array's), finite and >= 0. The C++
    core and the CUDA backend hold the same rule."""
    try:
        e = _real(eps, "eps")
    except OverflowError:  # an int beyond the largest double
        raise ValueError(f"eps: must be finite and >= 0, got {eps!r}") from None
    if not (e >= 0.0 and math.isfinite(e)):
        raise ValueError(f"eps: must be finite and >= 0, got {eps!r}")
    return e


def check_momentum(momentum: Any) -> float:
    """BatchNorm's momentum as a float: a real number in [0, 1] (the C++ core holds the same rule)."""
    try:
        m = _real(momentum, "momentum")
    except OverflowError:
        raise ValueError(f"momentum: must be a number in [0, 1], got {momentum!r}") from None
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum: must be a number in [0, 1], got {momentum!r}")
    return m


def check_activation(activation: Any) -> int:
    """A channel norm's activation: None, "silu" or "relu", as the core's number (0, 1, 2)."""
    if activation is None:
        return 0
    if not isinstance(activation, str):
        raise TypeError(f"activation: must be None, 'silu' or 'relu', not {type(activation).__name__}")
    code = {"silu": 1, "relu": 2}.get(activation)
    if code is None:
        raise ValueError(f"activation: must be None, 'silu' or 'relu', got {activation!r}")
    return code


def check_channel_axis(channel_axis: Any, ndim: int) -> int:
    """A channel norm's channel axis, non-negative: any axis of x but 0 (the batch axis)."""
    if ndim < 2:
        raise ValueError(f"x: must have at least 2 dimensions (a batch axis 0 and a channel axis), got {ndim}")
    a = index_of(channel_axis, "channel_axis", "an int")
    if not -ndim <= a < ndim:
        raise ValueError(f"channel_axis: {a} is out of range for an array of {ndim} dimensions")
    a %= ndim
    if a == 0:
        raise ValueError("channel_axis: must not be 0 (axis 0 is the batch axis)")
    return a


def check_num_groups(num_groups: Any, channels: int) -> int:
    """GroupNorm's group count: an int >= 1 that divides the channel count."""
    g = index_of(num_groups, "num_groups", "an int")
    if g < 1:
        raise ValueError(f"num_groups: must be >= 1, got {g}")
    if channels % g:
        raise ValueError(f"num_groups: {g} does not divide the number of channels {channels}")
    return g


def check_flag(v: Any, name: str) -> bool:
    """A yes/no argument: a bool (Python's or NumPy's)."""
    if not _is_bool(v):
        raise TypeError(f"{name}: must be a bool, not {_kind(v)}")
    return bool(v)


def check_count(n: Any, name: str, low: int, high: Optional[int] = None) -> int:
    """An integer argument in [low, high] (high None: no upper bound)."""
    v = index_of(n, name, "an int")
    if v < low or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name}: must be {bound}, got {v}")
    return v


def env_count(variable: str, low: int, high: Optional[int]) -> Optional[int]:
    """An integer environment variable in [low, high]; None when unset or empty. Anything else is
    a RuntimeWarning naming the variable, and None (the default is used): the one rule for every
    LNORM_* variable that holds a number."""
    text = os.environ.get(variable, "")
    if not text:
        return None
    try:
        return check_count(int(text), variable, low, high)
    except ValueError:
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        warnings.warn(f"{variable}={text!r} is not an integer {bound}; ignoring it", RuntimeWarning, stacklevel=4)
        return None


def env_choice(variable: str, choices: Iterable[str]) -> Optional[str]:
    """A named environment variable's value from `choices`; a RuntimeWarning and None otherwise."""
    text = os.environ.get(variable, "")
    if not text:
        return None
    choices = tuple(choices)
    if text not in choices:
        warnings.warn(f"{variable}={text!r} is not one of {choices} available here; ignoring it", RuntimeWarning,
                      stacklevel=4)
        return None
    return text


# ---- array arguments, by dtype name and shape -------------------------------------------------


def check_dtype(name: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise TypeError(f"{name}: dtype {dtype} is not supported (expected {SUPPORTED})")


def check_like_x(name: str, dtype: str, shape: tuple, x_dtype: str, x_shape: tuple) -> None:
    """An array of x's dtype and shape (dy, residual, out, residual_out)."""
    if dtype != x_dtype:
        raise TypeError(f"{name}: dtype {dtype} differs from x's {x_dtype}")
    if tuple(shape) != tuple(x_shape):
        raise ValueError(f"{name}: shape {tuple(shape)} differs from x's {tuple(x_shape)}")


def check_param(name: str, dtype: str, shape: tuple, x_dtype: str, norm_shape: tuple, like: Optional[str]) -> str:
    """A weight-shaped argument (weight, bias, bias_in): x's dtype or float32, all of one dtype (`like`:
    that of the ones before it), the normalized shape. Returns its dtype."""
    if like is not None:
        if dtype != like:
            raise TypeError(f"{name}: dtype {dtype} differs from the other parameters' {like}")
    elif dtype != x_dtype and dtype != "float32":
        raise TypeError(f"{name}: dtype {dtype} must be x's ({x_dtype}) or float32")
    if tuple(shape) != tuple(norm_shape):
        raise ValueError(f"{name}: shape {tuple(shape)} does not match the normalized shape {tuple(norm_shape)}")
    return dtype


def check_stat(name: str, dtype: str, shape: tuple, x_dtype: str, stats_shape: tuple) -> None:
    """mean or rstd from a forward pass: float32 or x's dtype, x's shape with the normalized axes 1."""
    if dtype != "float32" and dtype != x_dtype:
        raise TypeError(f"{name}: dtype {dtype} must be float32 or x's {x_dtype}")
    if tuple(shape) != tuple(stats_shape):
        raise ValueError(f"{name}: shape {tuple(shape)} does not match {tuple(stats_shape)} (x's shape with the "
                         "normalized axes set to 1)")


def norm_shape_of(x_shape: tuple, axes: Tuple[int, ...]) -> Tuple[int, ...]:
    """The normalized axes' sizes; an empty normalized axis is a ValueError."""
    shape = tuple(x_shape[a] for a in axes)
    if 0 in shape:
        raise ValueError(f"axis: the normalized axes {axes} of x (shape {tuple(x_shape)}) are empty")
    return shape


def stats_shape_of(x_shape: tuple, axes: Tuple[int, ...]) -> Tuple[int, ...]:
    return tuple(1 if d in axes else n for d, n in enumerate(x_shape))


def check_aliasing(outputs: Sequence[Tuple[str, Any]], inputs: Sequence[Tuple[str, Any]],
                   exact_ok: Sequence[Tuple[str, str]] = ()) -> None:
    """The aliasing rule of the C++ core on the caller's arrays, each given as a memory description
    ``(address, shape, byte strides, itemsize)`` or None (absent): no output overlaps itself, an
    input or another output, except an output that is exactly an input named in `exact_ok` as
    ``(output, input)`` (in place). ValueError naming the output otherwise. For arrays the core never
    sees as the caller passed them: ones copied first, and the CUDA path's."""
    from . import _lnorm
    _lnorm.check_aliasing([o for o in outputs if o[1] is not None], [i for i in inputs if i[1] is not None],
                          list(exact_ok))
