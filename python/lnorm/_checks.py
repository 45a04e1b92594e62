"""Argument checks shared by the CPU and CUDA paths (one set of rules and messages), with no import
of NumPy or of any array library: integers are what has ``__index__``, reals what ``float`` takes."""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple


def axes_of(axis: Any, ndim: int) -> Tuple[int, ...]:
    """The normalized axes, non-negative and sorted (NumPy's rules)."""
    if ndim < 1:
        raise ValueError("x: must have at least one dimension")
    if isinstance(axis, int) and not isinstance(axis, bool):
        items: Sequence[Any] = (axis,)
    elif isinstance(axis, (tuple, list)):
        items = axis
        if not items:
            raise ValueError("axis: must name at least one axis")
    elif hasattr(axis, "__index__") and not isinstance(axis, bool) and type(axis).__name__ != "bool_":
        items = (axis,)
    else:
        raise TypeError(f"axis: must be an int or a tuple of ints, not {type(axis).__name__}")
    out = []
    for a in items:
        if isinstance(a, bool) or type(a).__name__ == "bool_" or not hasattr(a, "__index__"):
            raise TypeError(f"axis: must be an int or a tuple of ints, got {a!r}")
        a = a.__index__()
        if not -ndim <= a < ndim:
            raise ValueError(f"axis: {a} is out of range for an array of {ndim} dimensions")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis: repeated axis in {tuple(items)}")
    return tuple(sorted(out))


def check_eps(eps: Any) -> float:
    """eps as a float: a real number (Python's, NumPy's or a 0-d array's), finite and >= 0."""
    if isinstance(eps, bool) or type(eps).__name__ == "bool_" or not isinstance(eps, (int, float)) and not (
            hasattr(eps, "__float__") and hasattr(eps, "dtype")):
        raise TypeError(f"eps: must be a real number, not {type(eps).__name__}")
    try:
        e = float(eps)
    except (TypeError, ValueError):  # an array of more than one element
        raise TypeError(f"eps: must be a real number, not {type(eps).__name__}") from None
    if not (e >= 0.0 and math.isfinite(e)):
        raise ValueError(f"eps: must be finite and >= 0, got {eps!r}")
    return e
