"""The oracle of the channel norms: float64 NumPy GroupNorm, InstanceNorm and BatchNorm (forward with
activation and statistics, analytic backward, BatchNorm's running statistics), for a channel axis
anywhere but axis 0.

Like reference.py, this is plain NumPy in float64 and shares no code with lnorm. Every function
takes x in its own layout: the channel axis is moved to position 1 ("NC..."), the work is done
there, and the results are moved back.

Conventions (those of torch.nn.functional and of lnorm's contract):
- group norm: statistics per (n, group) over the group's C / num_groups channels and every other
  axis but 0; mean and rstd have shape (N, num_groups); the variance is biased.
- instance norm: group norm with num_groups = C; mean and rstd (N, C).
- batch norm, training: statistics per channel over every axis but the channel axis; mean and rstd
  (C,); the running statistics move as torch's do: r = (1 - momentum) * r + momentum * batch, with
  the unbiased variance (n / (n - 1) times the biased one, n the count per channel) for running_var.
- batch norm, eval: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias.
- a constant group (all elements equal) gives exactly the bias (x_hat is taken as 0), eps = 0
  included.
- activation None, "silu" (v * sigmoid(v)) or "relu" (max(v, 0), NaN kept), after the affine.
"""

import numpy as np

ACTIVATIONS = (None, "silu", "relu")


def channel_axis_of(ndim, channel_axis):
    """channel_axis as a non-negative axis (in 1..ndim-1)."""
    a = channel_axis % ndim
    assert 0 < a < ndim, f"channel axis {channel_axis} of a {ndim}-D array is the batch axis"
    return a


def to_nc(x, channel_axis):
    """x (any layout) as float64 with the channel axis at position 1."""
    x = np.asarray(x, dtype=np.float64)
    return np.moveaxis(x, channel_axis_of(x.ndim, channel_axis), 1)


def from_nc(y, ndim, channel_axis):
    """The inverse of to_nc (for an array of x's ndim)."""
    return np.moveaxis(y, 1, channel_axis_of(ndim, channel_axis))


def _per_channel(p, ndim):
    """A (C,) parameter as float64, broadcastable against an NC... array."""
    return np.asarray(p, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def activate(v, activation):
    v = np.asarray(v, dtype=np.float64)
    if activation is None:
        return v
    with np.errstate(all="ignore"):
        if activation == "relu":
            return np.where(np.isnan(v), v, np.maximum(v, 0.0))
        if activation == "silu":
            # v * sigmoid(v), written so that neither branch overflows
            e = np.exp(-np.abs(v))
            sig = np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            return v * sig
    raise ValueError(f"unknown activation {activation!r}")


def _affine(xhat, weight, bias, activation):
    y = xhat
    with np.errstate(all="ignore"):
        if weight is not None:
            y = y * _per_channel(weight, y.ndim)
        if bias is not None:
            y = y + _per_channel(bias, y.ndim)
    return activate(y, activation)


def _grouped(xc, num_groups):
    """NC... float64 as (N, G, C/G * prod(spatial)) (a copy when needed)."""
    n, c = xc.shape[:2]
    assert c % num_groups == 0, (c, num_groups)
    return xc.reshape(n, num_groups, (c // num_groups) * int(np.prod(xc.shape[2:], dtype=np.int64)))


# ----------------------------------------------------------------------------------------------
# Group norm (and instance norm)


def group_norm_ref(x, num_groups, weight=None, bias=None, channel_axis=1, eps=1e-5, activation=None):
    """float64 GroupNorm: returns (y, mean, rstd), y in x's layout, mean/rstd (N, num_groups)."""
    xc = to_nc(x, channel_axis)
    g = _grouped(xc, num_groups)
    with np.errstate(all="ignore"):
        mean = g.mean(axis=2)
        d = g - mean[..., None]
        var = (d * d).mean(axis=2)
        rstd = 1.0 / np.sqrt(var + eps)
        # a constant group (all elements equal: its float64 mean may still be off by a rounding)
        const = (g.max(axis=2, initial=-np.inf) == g.min(axis=2, initial=np.inf)) | (var == 0)
        xhat = np.where(const[..., None], 0.0, d * rstd[..., None]).reshape(xc.shape)
    y = _affine(xhat, weight, bias, activation)
    return from_nc(y, xc.ndim, channel_axis), mean, rstd


def group_norm_backward_ref(dy, x, mean, rstd, weight=None, num_groups=1, channel_axis=1):
    """Analytic GroupNorm backward from the given stats (N, G): (dx, dweight, dbias).

    Per (n, group), over its m elements: x_hat = (x - mean) * rstd, g = dy * weight[c],
    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)); dweight[c] = sum over n and the spatial
    axes of dy * x_hat, dbias[c] = sum of dy. dweight is None when weight is None; dbias is always
    computed."""
    xc = to_nc(x, channel_axis)
    dyc = to_nc(dy, channel_axis)
    n, c = xc.shape[:2]
    mean = np.asarray(mean, np.float64).reshape(n, num_groups, 1)
    rstd = np.asarray(rstd, np.float64).reshape(n, num_groups, 1)
    with np.errstate(all="ignore"):
        xhat = ((_grouped(xc, num_groups) - mean) * rstd).reshape(xc.shape)
        gr = dyc if weight is None else dyc * _per_channel(weight, xc.ndim)
        gg = _grouped(gr, num_groups)
        xg = _grouped(xhat, num_groups)
        dx = rstd * (gg - gg.mean(axis=2, keepdims=True) - xg * (gg * xg).mean(axis=2, keepdims=True))
        other = tuple(i for i in range(xc.ndim) if i != 1)
        dweight = None if weight is None else (dyc * xhat).sum(axis=other)
        dbias = dyc.sum(axis=other)
    return from_nc(dx.reshape(xc.shape), xc.ndim, channel_axis), dweight, dbias


def instance_norm_ref(x, weight=None, bias=None, channel_axis=1, eps=1e-5, activation=None):
    """float64 InstanceNorm: group norm with num_groups = C; mean/rstd (N, C)."""
    c = np.shape(x)[channel_axis_of(np.ndim(x), channel_axis)]
    return group_norm_ref(x, c, weight, bias, channel_axis, eps, activation)


def instance_norm_backward_ref(dy, x, mean, rstd, weight=None, channel_axis=1):
    c = np.shape(x)[channel_axis_of(np.ndim(x), channel_axis)]
    return group_norm_backward_ref(dy, x, mean, rstd, weight, c, channel_axis)


# ----------------------------------------------------------------------------------------------
# Batch norm


def batch_count(shape, channel_axis):
    """Elements per channel: the product of every axis but the channel axis."""
    a = channel_axis_of(len(shape), channel_axis)
    return int(np.prod([d for i, d in enumerate(shape) if i != a]))


def _channel_rows(xc):
    """NC... as (C, N * prod(spatial))."""
    return np.moveaxis(xc, 1, 0).reshape(xc.shape[1], int(np.prod(xc.shape, dtype=np.int64)) // max(xc.shape[1], 1))


def batch_norm_train_ref(x, weight=None, bias=None, channel_axis=1, eps=1e-5, activation=None):
    """float64 BatchNorm with batch statistics: (y, mean, rstd), mean/rstd (C,), var biased."""
    xc = to_nc(x, channel_axis)
    rows = _channel_rows(xc)
    with np.errstate(all="ignore"):
        mean = rows.mean(axis=1)
        d = rows - mean[:, None]
        var = (d * d).mean(axis=1)
        rstd = 1.0 / np.sqrt(var + eps)
        const = (rows.max(axis=1, initial=-np.inf) == rows.min(axis=1, initial=np.inf)) | (var == 0)
        xhat_rows = np.where(const[:, None], 0.0, d * rstd[:, None])
    xhat = np.moveaxis(xhat_rows.reshape((xc.shape[1], xc.shape[0]) + xc.shape[2:]), 0, 1)
    y = _affine(xhat, weight, bias, activation)
    return from_nc(y, xc.ndim, channel_axis), mean, rstd


def batch_norm_eval_ref(x, running_mean, running_var, weight=None, bias=None, channel_axis=1,
                        eps=1e-5, activation=None):
    """float64 BatchNorm with running statistics: (y, mean, rstd) with mean = running_mean and
    rstd = 1 / sqrt(running_var + eps), both (C,)."""
    xc = to_nc(x, channel_axis)
    rm = np.asarray(running_mean, np.float64)
    with np.errstate(all="ignore"):
        rstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
        xhat = (xc - _per_channel(rm, xc.ndim)) * _per_channel(rstd, xc.ndim)
    y = _affine(xhat, weight, bias, activation)
    return from_nc(y, xc.ndim, channel_axis), rm, rstd


def batch_var_ref(x, channel_axis=1):
    """Biased and unbiased batch variance per channel: (var, var * n / (n - 1))."""
    rows = _channel_rows(to_nc(x, channel_axis))
    n = rows.shape[1]
    var = rows.var(axis=1)
    with np.errstate(all="ignore"):
        return var, var * n / (n - 1)


def running_stats_update_ref(running_mean, running_var, x, channel_axis=1, momentum=0.1):
    """torch's update of the running statistics after one training step: the new (mean, var) in
    float64: (1 - momentum) * r + momentum * batch, with the unbiased batch variance."""
    rows = _channel_rows(to_nc(x, channel_axis))
    mean = rows.mean(axis=1)
    _, unbiased = batch_var_ref(x, channel_axis)
    with np.errstate(all="ignore"):
        new_mean = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean
        new_var = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * unbiased
    return new_mean, new_var


def batch_norm_backward_ref(dy, x, mean, rstd, weight=None, channel_axis=1):
    """Analytic backward of training-mode BatchNorm (batch statistics (C,)): (dx, dweight, dbias).

    Per channel, over its n elements: dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with
    g = dy * weight[c]; dweight = sum(dy * x_hat), dbias = sum(dy)."""
    xc = to_nc(x, channel_axis)
    dyc = to_nc(dy, channel_axis)
    c = xc.shape[1]
    rows, drows = _channel_rows(xc), _channel_rows(dyc)
    mean = np.asarray(mean, np.float64).reshape(c, 1)
    rstd = np.asarray(rstd, np.float64).reshape(c, 1)
    w = np.ones((c, 1)) if weight is None else np.asarray(weight, np.float64).reshape(c, 1)
    with np.errstate(all="ignore"):
        xhat = (rows - mean) * rstd
        g = drows * w
        dx_rows = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
        dweight = None if weight is None else (drows * xhat).sum(axis=1)
        dbias = drows.sum(axis=1)
    dx = np.moveaxis(dx_rows.reshape((c, xc.shape[0]) + xc.shape[2:]), 0, 1)
    return from_nc(dx, xc.ndim, channel_axis), dweight, dbias


def batch_norm_eval_backward_ref(dy, running_var, weight=None, channel_axis=1, eps=1e-5):
    """Backward of eval-mode BatchNorm with respect to x (an affine map): dy * weight * rstd."""
    dyc = to_nc(dy, channel_axis)
    rstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    k = rstd if weight is None else rstd * np.asarray(weight, np.float64)
    return from_nc(dyc * _per_channel(k, dyc.ndim), dyc.ndim, channel_axis)


# ----------------------------------------------------------------------------------------------
# Error scales (like reference.dx_scale / param_grad_scale, per group)


def group_dx_scale(dy, x, mean, rstd, weight, num_groups, channel_axis=1):
    """max over groups of rstd * max|dy * weight| * (1 + max|x_hat|): the size of dx's terms."""
    xc, dyc = to_nc(x, channel_axis), to_nc(dy, channel_axis)
    n = xc.shape[0]
    g = np.abs(dyc) if weight is None else np.abs(dyc * _per_channel(weight, xc.ndim))
    r = np.abs(np.asarray(rstd, np.float64)).reshape(n, num_groups, 1)
    m = np.asarray(mean, np.float64).reshape(n, num_groups, 1)
    with np.errstate(all="ignore"):
        xhat = np.abs((_grouped(xc, num_groups) - m) * r)
        s = r[..., 0] * _grouped(g, num_groups).max(axis=2, initial=0.0) * (1 + xhat.max(axis=2, initial=0.0))
    s = s[np.isfinite(s)]
    return float(s.max(initial=0.0)) or 1.0


def channel_dx_scale(dy, x, mean, rstd, weight, channel_axis=1):
    """group_dx_scale for per-channel (C,) statistics (batch norm)."""
    xc, dyc = to_nc(x, channel_axis), to_nc(dy, channel_axis)
    c = xc.shape[1]
    rows, drows = _channel_rows(xc), _channel_rows(dyc)
    w = np.ones((c, 1)) if weight is None else np.asarray(weight, np.float64).reshape(c, 1)
    r = np.abs(np.asarray(rstd, np.float64)).reshape(c, 1)
    with np.errstate(all="ignore"):
        xhat = np.abs((rows - np.asarray(mean, np.float64).reshape(c, 1)) * r)
        s = r[:, 0] * np.abs(drows * w).max(axis=1, initial=0.0) * (1 + xhat.max(axis=1, initial=0.0))
    s = s[np.isfinite(s)]
    return float(s.max(initial=0.0)) or 1.0


def channel_param_grad_scale(dy, x, channel_axis=1, xhat_abs_max=None):
    """Scale for dweight/dbias: per channel, the sum of |dy| times (1 + max|x_hat|)."""
    drows = _channel_rows(to_nc(dy, channel_axis))
    s = np.abs(drows).sum(axis=1).max(initial=0.0)
    return max(float(s) * (1.0 + (xhat_abs_max or 0.0)), 1e-300)
