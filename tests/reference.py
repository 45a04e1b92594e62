"""The tests' oracle: float64 NumPy LayerNorm / RMSNorm (forward and analytic backward), tolerances
scaled by dtype and magnitude, and seeded random inputs.

Everything here is plain NumPy in float64 and independent of lnorm, so a test compares lnorm
against an implementation that shares none of its code.
"""

import numpy as np

# Sizes of the normalized axis around the SIMD vector widths (4/8/16 lanes, unrolled x4).
SIZES = (1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 257, 511, 1023, 1025,
         4096, 4099)

# Tolerance on unit-scale outputs: a small multiple of the dtype's rounding (float32: ~170 ulps of
# 1.0, which covers summation over 4099 elements; float64: ~4500 ulps, same reasoning).
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12, np.dtype(np.float16): 2e-3}
try:  # bfloat16 (8 significant bits): twice its half-ulp of 1.0
    import ml_dtypes

    TOL[np.dtype(ml_dtypes.bfloat16)] = 8e-3
except ImportError:
    pass


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


def norm_axes(ndim, axis):
    """`axis` (int or tuple, negative allowed) as a sorted tuple of non-negative axes."""
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    axes = tuple(sorted(a % ndim for a in axis))
    assert len(set(axes)) == len(axes), "duplicate axis in a test"
    return axes


def param_shape(shape, axes):
    """Shape of weight/bias: the normalized dims in increasing axis order."""
    return tuple(shape[a] for a in sorted(axes))


def keep_shape(shape, axes):
    """Shape of mean/rstd: x's shape with the normalized axes set to 1 (keepdims)."""
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _bcast(p, shape, axes):
    """weight/bias (param_shape) reshaped to broadcast against x."""
    return np.asarray(p, dtype=np.float64).reshape(
        tuple(d if i in axes else 1 for i, d in enumerate(shape)))


def layer_norm_ref(x, weight=None, bias=None, axis=-1, eps=1e-5):
    """float64 LayerNorm: returns (y, mean, rstd); var biased; a constant row gives exactly bias."""
    x = np.asarray(x, dtype=np.float64)
    axes = norm_axes(x.ndim, axis)
    with np.errstate(all="ignore"):
        mean = x.mean(axis=axes, keepdims=True)
        d = x - mean
        var = (d * d).mean(axis=axes, keepdims=True)
        rstd = 1.0 / np.sqrt(var + eps)
        xhat = np.where(var == 0, 0.0, d * rstd)
        y = xhat
        if weight is not None:
            y = y * _bcast(weight, x.shape, axes)
        if bias is not None:
            y = y + _bcast(bias, x.shape, axes)
    return y, mean, rstd


def rms_norm_ref(x, weight=None, axis=-1, eps=1e-6):
    """float64 RMSNorm: returns (y, rstd) with rstd = 1/sqrt(mean(x**2) + eps)."""
    x = np.asarray(x, dtype=np.float64)
    axes = norm_axes(x.ndim, axis)
    with np.errstate(all="ignore"):
        rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
        y = x * rstd
        if weight is not None:
            y = y * _bcast(weight, x.shape, axes)
    return y, rstd


def layer_norm_backward_ref(dy, x, mean, rstd, weight=None, axis=-1):
    """Analytic LayerNorm backward in float64 from the given stats: (dx, dweight, dbias).

    xhat = (x - mean) * rstd, g = dy * weight,
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dweight = sum_batch(dy * xhat),
    dbias = sum_batch(dy).  Exact for any eps (eps only enters through rstd).
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = norm_axes(x.ndim, axis)
    batch = tuple(i for i in range(x.ndim) if i not in axes)
    mean = np.asarray(mean, dtype=np.float64)
    rstd = np.asarray(rstd, dtype=np.float64)
    with np.errstate(all="ignore"):
        xhat = (x - mean) * rstd
        g = dy if weight is None else dy * _bcast(weight, x.shape, axes)
        dx = rstd * (g - g.mean(axis=axes, keepdims=True)
                     - xhat * (g * xhat).mean(axis=axes, keepdims=True))
        pshape = param_shape(x.shape, axes)
        dweight = None if weight is None else (dy * xhat).sum(axis=batch).reshape(pshape)
        dbias = dy.sum(axis=batch).reshape(pshape)
    return dx, dweight, dbias


def rms_norm_backward_ref(dy, x, rstd, weight=None, axis=-1):
    """Analytic RMSNorm backward in float64: (dx, dweight).

    xhat = x * rstd, g = dy * weight, dx = rstd * (g - xhat * mean(g * xhat)),
    dweight = sum_batch(dy * xhat).
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = norm_axes(x.ndim, axis)
    batch = tuple(i for i in range(x.ndim) if i not in axes)
    rstd = np.asarray(rstd, dtype=np.float64)
    with np.errstate(all="ignore"):
        xhat = x * rstd
        g = dy if weight is None else dy * _bcast(weight, x.shape, axes)
        dx = rstd * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True))
        pshape = param_shape(x.shape, axes)
        dweight = None if weight is None else (dy * xhat).sum(axis=batch).reshape(pshape)
    return dx, dweight


def dx_scale(dy, x, rstd, weight=None, axis=-1, mean=None):
    """Scale for dx errors: rstd * max|dy * weight| * (1 + max|xhat|) per row, maximized over rows;
    the size of the terms that dx is made of, which stays meaningful when dx itself cancels (a row
    of one element has dx = 0 exactly)."""
    x = np.asarray(x, dtype=np.float64)
    axes = norm_axes(x.ndim, axis)
    r = np.abs(np.asarray(rstd, dtype=np.float64))
    g = np.abs(np.asarray(dy, dtype=np.float64))
    if weight is not None:
        g = g * np.abs(_bcast(weight, x.shape, axes))
    xc = x if mean is None else x - np.asarray(mean, dtype=np.float64)
    with np.errstate(all="ignore"):
        xhat = np.abs(xc * r)
        s = r * g.max(axis=axes, keepdims=True) * (1 + xhat.max(axis=axes, keepdims=True))
    s = s[np.isfinite(s)]
    return float(s.max(initial=0.0)) or 1.0


def param_grad_scale(dy, x_hat_abs, axes):
    """Scale for dweight/dbias errors: the sum over the batch of |terms| (not |sum|), so that a
    sum that cancels is still held to the rounding of its terms."""
    batch = tuple(i for i in range(dy.ndim) if i not in axes)
    a = np.abs(np.asarray(dy, dtype=np.float64))
    return max(float((a * x_hat_abs).sum(axis=batch).max(initial=0.0)),
               float(a.sum(axis=batch).max(initial=0.0)), 1e-300)


# ----------------------------------------------------------------------------------------------
# Comparisons


def assert_close(actual, expected, dtype=None, *, tol=None, scale=None, what="result"):
    """|actual - expected| <= tol * (scale + |expected|) elementwise, scale defaulting to the
    largest finite |expected| (so the check is absolute near zero and relative away from it).

    NaN must sit exactly where `expected` has NaN; infinities must match exactly.
    """
    a = np.asarray(actual)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if tol is None:
        tol = tol_for(dtype if dtype is not None else a.dtype)
    a = a.astype(np.float64)
    nan_e, nan_a = np.isnan(e), np.isnan(a)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN at {np.argwhere(nan_a != nan_e)[:5].tolist()} (actual NaN count "
        f"{nan_a.sum()}, expected {nan_e.sum()})")
    inf_e = np.isinf(e)
    assert np.array_equal(a[inf_e], e[inf_e]) and not np.isinf(a[~inf_e]).any(), \
        f"{what}: infinities differ"
    fin = np.isfinite(e)
    if not fin.any():
        return
    ef, af = e[fin], a[fin]
    if scale is None:
        scale = float(np.abs(ef).max())
        scale = scale if scale > 0 else 1.0
    err = np.abs(af - ef)
    bound = tol * (scale + np.abs(ef))
    bad = err > bound
    if bad.any():
        with np.errstate(all="ignore"):
            i = int(np.argmax(err / bound))
            rel = err.max() / scale
        raise AssertionError(
            f"{what}: {bad.sum()} of {err.size} elements off; worst actual={af[i]!r} "
            f"expected={ef[i]!r} err={err[i]:.3e} bound={bound[i]:.3e} (tol={tol:g}, "
            f"scale={scale:.3e}); max err/scale = {rel:.3e}")


def max_rel_err(actual, expected, scale=None):
    """max |actual - expected| / scale (NaN/Inf count as an infinite error)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if scale is None:
        scale = max(float(np.abs(e).max(initial=0.0)), 1e-300)
    with np.errstate(all="ignore"):
        err = np.abs(a - e)
    err = np.where(np.isfinite(err), err, np.inf)
    return float(err.max(initial=0.0)) / scale


# ----------------------------------------------------------------------------------------------
# Inputs


def rand_x(rng, shape, dtype=np.float32, *, offset=3.0):
    """Random input: normal noise at a random scale (1e-2..1e2) plus a random offset of up to a few
    times that scale. Never zeros."""
    scale = 10.0 ** rng.uniform(-2, 2)
    x = rng.standard_normal(shape) * scale + rng.normal(0.0, offset) * scale
    return np.asarray(x).astype(dtype)


def rand_param(rng, shape, dtype=np.float32, *, center=1.0):
    """Random weight (center 1) or bias (center 0)."""
    return (center + 0.5 * rng.standard_normal(shape)).astype(dtype)


def strided_view(rng, base_shape, dtype, steps, *, misalign=0):
    """A view of a bigger random array with the given per-axis steps (negative = reversed) and an
    optional element offset of the start along the last axis (misaligned vector loads)."""
    big_shape = tuple(d * abs(s) + (misalign if i == len(base_shape) - 1 else 0)
                      for i, (d, s) in enumerate(zip(base_shape, steps)))
    big = rand_x(rng, big_shape, dtype)
    sl = []
    for i, s in enumerate(steps):
        start = misalign if i == len(base_shape) - 1 else 0
        if s > 0:
            sl.append(slice(start, None, s))
        else:
            sl.append(slice(None, start - 1 if start > 0 else None, s))
    v = big[tuple(sl)]
    assert v.shape == tuple(base_shape), (v.shape, base_shape)
    return v


# ----------------------------------------------------------------------------------------------
# Models of float32 algorithms, to show that the large-mean tolerance separates them.


def naive_layer_norm_f32(x, axis=-1, eps=1e-5):
    """float32 LayerNorm with var = E[x^2] - E[x]^2 (the formula the project forbids)."""
    f = np.float32
    x = np.asarray(x, dtype=f)
    n = f(np.prod([x.shape[a] for a in norm_axes(x.ndim, axis)]))
    axes = norm_axes(x.ndim, axis)
    with np.errstate(all="ignore"):
        mu = (x.sum(axis=axes, keepdims=True, dtype=f) / n).astype(f)
        m2 = ((x * x).sum(axis=axes, keepdims=True, dtype=f) / n).astype(f)
        var = (m2 - mu * mu).astype(f)
        return ((x - mu) * (f(1) / np.sqrt(var + f(eps)))).astype(f)


def corrected_two_pass_layer_norm_f32(x, axis=-1, eps=1e-5):
    """float32 two-pass LayerNorm with the mean correction term (Chan/Golub/LeVeque): the
    deviations x - mean are exact (Sterbenz) and their own mean removes the mean's rounding."""
    f = np.float32
    x = np.asarray(x, dtype=f)
    axes = norm_axes(x.ndim, axis)
    n = f(np.prod([x.shape[a] for a in axes]))
    mu = (x.sum(axis=axes, keepdims=True, dtype=f) / n).astype(f)
    d = (x - mu).astype(f)
    d = (d - (d.sum(axis=axes, keepdims=True, dtype=f) / n).astype(f)).astype(f)
    var = ((d * d).sum(axis=axes, keepdims=True, dtype=f) / n).astype(f)
    return (d * (f(1) / np.sqrt(var + f(eps)))).astype(f)
