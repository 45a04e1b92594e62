"""Module-style LayerNorm and RMSNorm, shaped like torch.nn's, for training small models in NumPy."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _interop
from ._checks import check_eps, check_flag, index_of
from ._functional import _as_array, layer_norm, layer_norm_backward, rms_norm, rms_norm_backward

Shape = Union[int, Sequence[int]]


def _shape(normalized_shape: Shape) -> Tuple[int, ...]:
    what = "an int or a tuple of ints"
    if isinstance(normalized_shape, (tuple, list)):
        shape = tuple(index_of(n, "normalized_shape", what) for n in normalized_shape)
    else:
        shape = (index_of(normalized_shape, "normalized_shape", what),)
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"normalized_shape: must be non-empty with positive sizes, got {normalized_shape!r}")
    return shape


def _params(shape: Tuple[int, ...], dtype: np.dtype, fill: float) -> np.ndarray:
    try:
        return np.full(shape, fill, dtype)
    except ValueError:  # NumPy's "array is too big"
        raise ValueError(f"normalized_shape: {shape} is too large") from None


class _Norm:
    """What LayerNorm and RMSNorm share: shape checks, the saved forward state, the parameters.

    Inputs may be NumPy arrays, anything ``numpy.asarray`` takes, or CPU tensors of PyTorch (and
    other DLPack libraries): the result is of the input's kind, as in the functional API. The
    forward saves a copy of x, so ``backward`` differentiates the forward that ran even if the caller
    changes x in place meanwhile; a forward that fails leaves nothing for ``backward``.
    """

    def __init__(self, normalized_shape: Shape, eps: float, elementwise_affine: bool, dtype):
        self.normalized_shape = _shape(normalized_shape)
        self.eps = check_eps(eps)
        self.elementwise_affine = check_flag(elementwise_affine, "elementwise_affine")
        try:
            self.dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise TypeError(f"dtype: {type(dtype).__name__} is not a NumPy dtype") from None
        if self.dtype.kind != "f" and self.dtype.name != "bfloat16":
            raise TypeError(f"dtype: {self.dtype} is not a floating-point dtype")
        self.weight: Optional[np.ndarray] = (_params(self.normalized_shape, self.dtype, 1.0)
                                             if elementwise_affine else None)
        self.weight_grad: Optional[np.ndarray] = None
        self._saved = None

    @property
    def _axes(self) -> Tuple[int, ...]:
        return tuple(range(-len(self.normalized_shape), 0))

    def _input(self, x) -> Tuple[np.ndarray, str, object]:
        """x as a NumPy array of the normalized shape, and how to give results back in x's kind."""
        self._saved = None
        lib = _interop.library_of(x)
        a = _as_array(x, "x")
        k = len(self.normalized_shape)
        if a.ndim < k or tuple(a.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"x: trailing shape {tuple(a.shape[-k:]) if a.ndim >= k else a.shape} "
                             f"does not match normalized_shape {self.normalized_shape}")
        return a, lib, x

    def _saved_or_raise(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before a forward call (or after one that "
                               "failed)")
        return self._saved

    @staticmethod
    def _back(a: np.ndarray, lib: str, like) -> object:
        return _interop.from_numpy(a, lib, like) if lib else a

    def parameters(self) -> list:
        """The trainable arrays (weight, then bias where present)."""
        return [p for p in (self.weight, getattr(self, "bias", None)) if p is not None]

    def __call__(self, x):
        return self.forward(x)


class LayerNorm(_Norm):
    """Layer normalization over the trailing ``len(normalized_shape)`` axes, like torch.nn.LayerNorm.

    ``.weight`` (ones) and ``.bias`` (zeros) are NumPy arrays of ``normalized_shape``; calling the
    module normalizes and saves what ``.backward(dy)`` needs, which returns ``dx`` and fills
    ``.weight_grad`` and ``.bias_grad``.

    >>> import numpy as np, lnorm
    >>> ln = lnorm.LayerNorm(16)
    >>> x = np.random.default_rng(0).standard_normal((4, 16), dtype=np.float32)
    >>> dx = (ln(x), ln.backward(np.ones((4, 16), np.float32)))[1]
    >>> ln.weight_grad.shape, ln.bias_grad.shape
    ((16,), (16,))
    """

    def __init__(self, normalized_shape: Shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=np.float32):
        super().__init__(normalized_shape, eps, elementwise_affine, dtype)
        with_bias = check_flag(bias, "bias")
        self.bias: Optional[np.ndarray] = (_params(self.normalized_shape, self.dtype, 0.0)
                                           if self.elementwise_affine and with_bias else None)
        self.bias_grad: Optional[np.ndarray] = None

    def forward(self, x):
        a, lib, like = self._input(x)
        y, mean, rstd = layer_norm(a, self.weight, self.bias, axis=self._axes, eps=self.eps,
                                   return_stats=True)
        self._saved = (a.copy(), mean, rstd)
        return self._back(y, lib, like)

    def backward(self, dy):
        x, mean, rstd = self._saved_or_raise()
        lib = _interop.library_of(dy)
        dx, dweight, dbias = layer_norm_backward(_as_array(dy, "dy"), x, mean, rstd, self.weight,
                                                 axis=self._axes)
        self.weight_grad = dweight
        self.bias_grad = dbias if self.bias is not None else None
        return self._back(dx, lib, dy)

    def __repr__(self) -> str:
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None})")


class RMSNorm(_Norm):
    """RMS normalization over the trailing ``len(normalized_shape)`` axes, like torch.nn.RMSNorm.

    >>> import numpy as np, lnorm
    >>> rms = lnorm.RMSNorm((2, 8))
    >>> y = rms(np.full((3, 2, 8), 2.0, np.float32))
    >>> float(y[0, 0, 0])
    1.0
    """

    def __init__(self, normalized_shape: Shape, eps: float = 1e-6, elementwise_affine: bool = True,
                 dtype=np.float32):
        super().__init__(normalized_shape, eps, elementwise_affine, dtype)

    def forward(self, x):
        a, lib, like = self._input(x)
        y, rstd = rms_norm(a, self.weight, axis=self._axes, eps=self.eps, return_stats=True)
        self._saved = (a.copy(), rstd)
        return self._back(y, lib, like)

    def backward(self, dy):
        x, rstd = self._saved_or_raise()
        lib = _interop.library_of(dy)
        dx, dweight = rms_norm_backward(_as_array(dy, "dy"), x, rstd, self.weight, axis=self._axes)
        self.weight_grad = dweight
        return self._back(dx, lib, dy)

    def __repr__(self) -> str:
        return (f"RMSNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine})")
