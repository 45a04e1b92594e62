"""Module-style LayerNorm and RMSNorm, shaped like torch.nn's, for training small models in NumPy."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ._functional import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward

Shape = Union[int, Sequence[int]]


def _shape(normalized_shape: Shape) -> Tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        shape: Tuple[int, ...] = (int(normalized_shape),)
    elif isinstance(normalized_shape, (tuple, list)) and all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in normalized_shape):
        shape = tuple(int(n) for n in normalized_shape)
    else:
        raise TypeError("normalized_shape: must be an int or a tuple of ints")
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"normalized_shape: must be non-empty with positive sizes, got {normalized_shape!r}")
    return shape


class _Norm:
    """What LayerNorm and RMSNorm share: shape checks, the saved forward state, the parameters."""

    def __init__(self, normalized_shape: Shape, eps: float, elementwise_affine: bool, dtype):
        self.normalized_shape = _shape(normalized_shape)
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
            raise TypeError("eps: must be a real number")
        if not (eps >= 0 and np.isfinite(eps)):
            raise ValueError(f"eps: must be finite and >= 0, got {eps!r}")
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f" and self.dtype.name != "bfloat16":
            raise TypeError(f"dtype: {self.dtype} is not a floating-point dtype")
        self.weight: Optional[np.ndarray] = (np.ones(self.normalized_shape, self.dtype)
                                             if elementwise_affine else None)
        self.weight_grad: Optional[np.ndarray] = None
        self._saved = None

    @property
    def _axes(self) -> Tuple[int, ...]:
        return tuple(range(-len(self.normalized_shape), 0))

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"x: trailing shape {tuple(x.shape[-k:]) if x.ndim >= k else x.shape} "
                             f"does not match normalized_shape {self.normalized_shape}")
        return x

    def _saved_or_raise(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before a forward call")
        return self._saved

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
        self.bias: Optional[np.ndarray] = (np.zeros(self.normalized_shape, self.dtype)
                                           if elementwise_affine and bias else None)
        self.bias_grad: Optional[np.ndarray] = None

    def forward(self, x):
        x = self._check(x)
        y, mean, rstd = layer_norm(x, self.weight, self.bias, axis=self._axes, eps=self.eps,
                                   return_stats=True)
        self._saved = (x, mean, rstd)
        return y

    def backward(self, dy):
        x, mean, rstd = self._saved_or_raise()
        dx, dweight, dbias = layer_norm_backward(dy, x, mean, rstd, self.weight, axis=self._axes)
        self.weight_grad = dweight
        self.bias_grad = dbias if self.bias is not None else None
        return dx

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
        x = self._check(x)
        y, rstd = rms_norm(x, self.weight, axis=self._axes, eps=self.eps, return_stats=True)
        self._saved = (x, rstd)
        return y

    def backward(self, dy):
        x, rstd = self._saved_or_raise()
        dx, dweight = rms_norm_backward(dy, x, rstd, self.weight, axis=self._axes)
        self.weight_grad = dweight
        return dx

    def __repr__(self) -> str:
        return (f"RMSNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine})")
