"""Module-style LayerNorm, RMSNorm, GroupNorm, InstanceNorm and BatchNorm, shaped like torch.nn's, for
training small models in NumPy."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _interop
from ._checks import check_eps, check_flag, check_momentum, index_of
from ._channel import (batch_norm, batch_norm_backward, group_norm, group_norm_backward, instance_norm,
                       instance_norm_backward)
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


class _Module:
    """What every module shares: the saved forward state, results in the input's kind, parameters()
    (weight, then bias, those present) and calling the module as its forward."""

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


class _Norm(_Module):
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


# ---- the channel norms ------------------------------------------------------------------------------


class _ChannelNorm(_Module):
    """What GroupNorm, InstanceNorm and BatchNorm share: the channel count, the affine parameters
    (``.weight`` ones and ``.bias`` zeros of shape ``(C,)``, or None), the saved forward state and
    ``.backward(dy)``, which returns dx and fills ``.weight_grad`` and ``.bias_grad``. Inputs as for
    LayerNorm: NumPy arrays, array-likes, CPU tensors of DLPack libraries (results in the input's kind)."""

    def __init__(self, num_channels, eps: float, affine: bool, channel_axis, dtype, name: str):
        self.num_channels = index_of(num_channels, name, "an int")
        if self.num_channels < 1:
            raise ValueError(f"{name}: must be >= 1, got {self.num_channels}")
        self.eps = check_eps(eps)
        self.affine = check_flag(affine, "affine")
        self.channel_axis = index_of(channel_axis, "channel_axis", "an int")
        if self.channel_axis == 0:
            raise ValueError("channel_axis: must not be 0 (axis 0 is the batch axis)")
        try:
            self.dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise TypeError(f"dtype: {type(dtype).__name__} is not a NumPy dtype") from None
        if self.dtype.kind != "f" and self.dtype.name != "bfloat16":
            raise TypeError(f"dtype: {self.dtype} is not a floating-point dtype")
        shape = (self.num_channels,)
        self.weight: Optional[np.ndarray] = _params(shape, self.dtype, 1.0) if self.affine else None
        self.bias: Optional[np.ndarray] = _params(shape, self.dtype, 0.0) if self.affine else None
        self.weight_grad: Optional[np.ndarray] = None
        self.bias_grad: Optional[np.ndarray] = None
        self._saved = None

    def _input(self, x):
        self._saved = None
        lib = _interop.library_of(x)
        a = _as_array(x, "x")
        if a.ndim < 2:
            raise ValueError(f"x: must have at least 2 dimensions (a batch axis 0 and a channel axis), got {a.ndim}")
        if not -a.ndim <= self.channel_axis < a.ndim:
            raise ValueError(f"channel_axis: {self.channel_axis} is out of range for x of {a.ndim} dimensions")
        if a.shape[self.channel_axis] != self.num_channels:
            raise ValueError(f"x: {a.shape[self.channel_axis]} channels on axis {self.channel_axis}, expected "
                             f"{self.num_channels}")
        return a, lib, x

    def _finish_backward(self, dx, dweight, dbias, dy):
        self.weight_grad = dweight if self.weight is not None else None
        self.bias_grad = dbias if self.bias is not None else None
        return self._back(dx, _interop.library_of(dy), dy)


class GroupNorm(_ChannelNorm):
    """Group normalization over ``num_groups`` groups of channels, like torch.nn.GroupNorm, for NCHW
    (``channel_axis=1``) or NHWC (``channel_axis=-1``) arrays.

    >>> import numpy as np, lnorm
    >>> gn = lnorm.GroupNorm(2, 4)
    >>> x = np.random.default_rng(0).standard_normal((3, 4, 5, 5), dtype=np.float32)
    >>> dx = (gn(x), gn.backward(np.ones_like(x)))[1]
    >>> gn.weight_grad.shape, dx.shape
    ((4,), (3, 4, 5, 5))
    """

    def __init__(self, num_groups, num_channels, eps: float = 1e-5, affine: bool = True, channel_axis=1,
                 dtype=np.float32):
        super().__init__(num_channels, eps, affine, channel_axis, dtype, "num_channels")
        self.num_groups = index_of(num_groups, "num_groups", "an int")
        if self.num_groups < 1 or self.num_channels % self.num_groups:
            raise ValueError(f"num_groups: {self.num_groups} does not divide num_channels {self.num_channels}")

    def forward(self, x):
        a, lib, like = self._input(x)
        y, mean, rstd = group_norm(a, self.num_groups, self.weight, self.bias, channel_axis=self.channel_axis,
                                   eps=self.eps, return_stats=True)
        self._saved = (a.copy(), mean, rstd)
        return self._back(y, lib, like)

    def backward(self, dy):
        x, mean, rstd = self._saved_or_raise()
        dx, dweight, dbias = group_norm_backward(_as_array(dy, "dy"), x, mean, rstd, self.weight,
                                                 num_groups=self.num_groups, channel_axis=self.channel_axis)
        return self._finish_backward(dx, dweight, dbias, dy)

    def __repr__(self) -> str:
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"channel_axis={self.channel_axis})")


class InstanceNorm(_ChannelNorm):
    """Instance normalization (statistics per sample and channel), like torch.nn.InstanceNorm2d with
    ``affine=False`` by default; any number of spatial axes.

    >>> import numpy as np, lnorm
    >>> inorm = lnorm.InstanceNorm(3)
    >>> y = inorm(np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32))
    >>> inorm.weight is None, y.shape
    (True, (2, 3, 8, 8))
    """

    def __init__(self, num_features, eps: float = 1e-5, affine: bool = False, channel_axis=1, dtype=np.float32):
        super().__init__(num_features, eps, affine, channel_axis, dtype, "num_features")

    @property
    def num_features(self) -> int:
        return self.num_channels

    def forward(self, x):
        a, lib, like = self._input(x)
        y, mean, rstd = instance_norm(a, self.weight, self.bias, channel_axis=self.channel_axis, eps=self.eps,
                                      return_stats=True)
        self._saved = (a.copy(), mean, rstd)
        return self._back(y, lib, like)

    def backward(self, dy):
        x, mean, rstd = self._saved_or_raise()
        dx, dweight, dbias = instance_norm_backward(_as_array(dy, "dy"), x, mean, rstd, self.weight,
                                                    channel_axis=self.channel_axis)
        return self._finish_backward(dx, dweight, dbias, dy)

    def __repr__(self) -> str:
        return f"InstanceNorm({self.num_channels}, eps={self.eps}, affine={self.affine}, channel_axis={self.channel_axis})"


class BatchNorm(_ChannelNorm):
    """Batch normalization like torch.nn.BatchNorm2d (any number of spatial axes): starts in training
    mode (batch statistics, ``.running_mean`` / ``.running_var`` updated with ``momentum`` and the
    unbiased variance); ``.eval()`` normalizes with the running statistics, ``.train()`` goes back.
    With ``track_running_stats=False`` it keeps none and always uses the batch's.

    >>> import numpy as np, lnorm
    >>> bn = lnorm.BatchNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4), dtype=np.float32) + 5
    >>> y = bn(x)
    >>> bool(abs(bn.running_mean - 0.5).max() < 0.05), bn.eval().training
    (True, False)
    """

    def __init__(self, num_features, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, channel_axis=1, dtype=np.float32):
        super().__init__(num_features, eps, affine, channel_axis, dtype, "num_features")
        self.momentum = check_momentum(momentum)
        self.track_running_stats = check_flag(track_running_stats, "track_running_stats")
        sdt = np.float64 if self.dtype == np.float64 else np.float32
        self.running_mean: Optional[np.ndarray] = (np.zeros(self.num_channels, sdt) if self.track_running_stats
                                                   else None)
        self.running_var: Optional[np.ndarray] = (np.ones(self.num_channels, sdt) if self.track_running_stats
                                                  else None)
        self.training = True

    @property
    def num_features(self) -> int:
        return self.num_channels

    def train(self, mode: bool = True) -> "BatchNorm":
        self.training = check_flag(mode, "mode")
        return self

    def eval(self) -> "BatchNorm":
        return self.train(False)

    def _running_for(self, a: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        # The statistics' dtype follows x (float64 for float64 x): kept as such between calls.
        sdt = np.float64 if a.dtype == np.float64 else np.float32
        for name in ("running_mean", "running_var"):
            r = getattr(self, name)
            if r is not None and r.dtype != sdt:
                setattr(self, name, r.astype(sdt))
        return self.running_mean, self.running_var

    def forward(self, x):
        a, lib, like = self._input(x)
        batch_stats = self.training or not self.track_running_stats
        rm, rv = self._running_for(a)
        if batch_stats:
            y, mean, rstd = batch_norm(a, rm if self.training else None, rv if self.training else None,
                                       self.weight, self.bias, channel_axis=self.channel_axis, training=True,
                                       momentum=self.momentum, eps=self.eps, return_stats=True)
        else:
            y, mean, rstd = batch_norm(a, rm, rv, self.weight, self.bias, channel_axis=self.channel_axis,
                                       training=False, eps=self.eps, return_stats=True)
        self._saved = (a.copy(), mean, rstd, batch_stats)
        return self._back(y, lib, like)

    def backward(self, dy):
        x, mean, rstd, batch_stats = self._saved_or_raise()
        g = _as_array(dy, "dy")
        if batch_stats:
            dx, dweight, dbias = batch_norm_backward(g, x, mean, rstd, self.weight, channel_axis=self.channel_axis)
            return self._finish_backward(dx, dweight, dbias, dy)
        # Eval mode: the running statistics are constants, so the norm is a per-channel affine.
        return self._finish_backward(*self._eval_backward(g, x, mean, rstd), dy)

    def _eval_backward(self, dy: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
        if dy.shape != x.shape:
            raise ValueError(f"dy: shape {dy.shape} differs from x's {x.shape}")
        ca = self.channel_axis % x.ndim
        shape = [1] * x.ndim
        shape[ca] = x.shape[ca]
        calc = np.float64
        g = dy.astype(calc)
        r = rstd.astype(calc).reshape(shape)
        w = (self.weight.astype(calc) if self.weight is not None else np.ones(x.shape[ca], calc)).reshape(shape)
        dx = (g * r * w).astype(x.dtype)
        axes = tuple(d for d in range(x.ndim) if d != ca)
        xhat = (x.astype(calc) - mean.astype(calc).reshape(shape)) * r
        wdt = self.weight.dtype if self.weight is not None else x.dtype
        dweight = (g * xhat).sum(axis=axes).astype(wdt) if self.weight is not None else None
        dbias = g.sum(axis=axes).astype(wdt)
        return dx, dweight, dbias

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_channels}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, channel_axis={self.channel_axis})")
