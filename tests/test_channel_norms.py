"""GroupNorm, InstanceNorm and BatchNorm (lnorm.group_norm, instance_norm, batch_norm, their backward
calls and modules) against the float64 oracle in channel_reference.py, which is itself checked
against torch's float64 functions and autograd here first.

Covered: float32, float64, float16 and bfloat16 data with weights in the data's dtype or float32;
channel axis 1 (NCHW), -1 (NHWC) and others, on 2-D to 5-D arrays; spatial sizes and channel
counts around the vector widths; steps, negative steps, transposed views and torch tensors
(channels_last included); eps from 0 to 10; out= and in place; return_stats; silu and relu;
large means, constant groups, NaN and Inf; every kernel set; thread counts; backward (against the
oracle and torch autograd); BatchNorm's running statistics; the modules against torch.nn; and
hostile arguments, each refused with an error that names it.
"""

import math
import re

import numpy as np
import pytest

import lnorm
from channel_reference import (activate, batch_count, batch_norm_backward_ref, batch_norm_eval_ref,
                               batch_norm_eval_backward_ref, batch_norm_train_ref, batch_var_ref,
                               channel_dx_scale, group_dx_scale, group_norm_backward_ref,
                               group_norm_ref, instance_norm_backward_ref, instance_norm_ref,
                               running_stats_update_ref, to_nc)
from checks import isa_setting, possible_isas, require_isa, watch
from reference import TOL, assert_close, max_rel_err, naive_layer_norm_f32

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    BF16 = None

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = [pytest.mark.torch, pytest.mark.skipif(torch is None, reason="needs PyTorch")]

F32, F64, F16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)
DTYPES = [F32, F64, F16] + ([BF16] if BF16 is not None else [])
DTYPE_IDS = [str(d) for d in DTYPES]
SPATIAL = [1, 3, 7, 15, 16, 17, 31, 33, 64, 127, 257, 4099]
CHANNELS = {1: [1], 3: [1, 3], 16: [1, 2, 4, 16], 17: [1, 17], 32: [1, 8, 32], 64: [1, 4, 32, 64],
            96: [1, 3, 32, 96]}
KINDS = ["group", "instance", "batch", "batch_eval"]
LARGE_MEAN_TOL = 1e-4  # as tests/test_reference.py: of the output scale, float32 data


def stats_dtype(dtype):
    return F64 if np.dtype(dtype) == F64 else F32


def tol(dtype, count=1):
    """TOL of the dtype; float32/float64 sums of more than 4096 terms get sqrt(count / 4096) more."""
    t = TOL[np.dtype(dtype)]
    if np.dtype(dtype) in (F32, F64):
        t *= max(1.0, math.sqrt(count / 4096))
    return t


def as_np(a):
    """A result as a NumPy array (a torch tensor through .numpy(); bfloat16 through its bits)."""
    if torch is not None and isinstance(a, torch.Tensor):
        a = a.detach()
        if a.dtype == torch.bfloat16:
            return a.view(torch.int16).numpy().view(BF16)
        return a.numpy()
    return np.asarray(a)


def names_argument(message, name):
    """The message names `name`: it starts with "name:" (the project's convention) or names it as a
    word."""
    return message.startswith(name + ":") or re.search(r"(?<![\w.])" + re.escape(name) + r"(?!\w)",
                                                       message) is not None


def raises_naming(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert names_argument(message, name), f"{exc.__name__} does not name {name!r}: {message!r}"
    return message


# ----------------------------------------------------------------------------------------------
# Inputs


def layout_shape(nc_shape, channel_axis):
    """An NC... shape laid out with the channel axis at channel_axis."""
    nd = len(nc_shape)
    return tuple(np.moveaxis(np.empty(nc_shape, dtype=np.uint8), 1, channel_axis % nd).shape)


def make_x(rng, shape, dtype, *, spread=None, offset=None):
    """Normal noise times a spread (random 1e-2..1e2 unless given) plus an offset (a few spreads)."""
    s = 10.0 ** rng.uniform(-2, 2) if spread is None else spread
    o = rng.normal(0.0, 2.0) * s if offset is None else offset
    return (rng.standard_normal(shape) * s + o).astype(dtype)


def make_params(rng, c, dtype):
    w = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    b = (0.5 * rng.standard_normal(c)).astype(dtype)
    return w, b


def make_running(rng, c, dtype):
    rm = rng.standard_normal(c).astype(dtype)
    rv = (0.5 + rng.uniform(0, 2, c)).astype(dtype)
    return rm, rv


def channels_of(x, channel_axis):
    return np.shape(x)[channel_axis % np.ndim(x)]


# ----------------------------------------------------------------------------------------------
# One interface over the three norms (kind: "group", "instance", "batch" = training, "batch_eval")


def forward(kind, x, w=None, b=None, *, groups=None, channel_axis=1, eps=1e-5, activation=None,
            out=None, return_stats=False, rm=None, rv=None, momentum=0.1):
    if kind == "group":
        return lnorm.group_norm(x, groups, w, b, channel_axis=channel_axis, eps=eps,
                                activation=activation, out=out, return_stats=return_stats)
    if kind == "instance":
        return lnorm.instance_norm(x, w, b, channel_axis=channel_axis, eps=eps, activation=activation,
                                   out=out, return_stats=return_stats)
    return lnorm.batch_norm(x, rm, rv, w, b, channel_axis=channel_axis, training=(kind == "batch"),
                            momentum=momentum, eps=eps, activation=activation, out=out,
                            return_stats=return_stats)


def forward_ref(kind, x, w=None, b=None, *, groups=None, channel_axis=1, eps=1e-5, activation=None,
                rm=None, rv=None):
    if kind == "group":
        return group_norm_ref(x, groups, w, b, channel_axis, eps, activation)
    if kind == "instance":
        return instance_norm_ref(x, w, b, channel_axis, eps, activation)
    if kind == "batch":
        return batch_norm_train_ref(x, w, b, channel_axis, eps, activation)
    return batch_norm_eval_ref(x, rm, rv, w, b, channel_axis, eps, activation)


def backward(kind, dy, x, mean, rstd, w=None, *, groups=None, channel_axis=1):
    if kind == "group":
        return lnorm.group_norm_backward(dy, x, mean, rstd, w, num_groups=groups,
                                         channel_axis=channel_axis)
    if kind == "instance":
        return lnorm.instance_norm_backward(dy, x, mean, rstd, w, channel_axis=channel_axis)
    assert kind == "batch"
    return lnorm.batch_norm_backward(dy, x, mean, rstd, w, channel_axis=channel_axis)


def backward_ref(kind, dy, x, mean, rstd, w=None, *, groups=None, channel_axis=1):
    if kind == "group":
        return group_norm_backward_ref(dy, x, mean, rstd, w, groups, channel_axis)
    if kind == "instance":
        return instance_norm_backward_ref(dy, x, mean, rstd, w, channel_axis)
    return batch_norm_backward_ref(dy, x, mean, rstd, w, channel_axis)


def stats_shape(kind, x, groups, channel_axis):
    c = channels_of(x, channel_axis)
    return {"group": (x.shape[0], groups), "instance": (x.shape[0], c)}.get(kind, (c,))


def group_count(kind, x, groups, channel_axis):
    """Elements per statistic."""
    c = channels_of(x, channel_axis)
    if kind == "group":
        return x.size // x.shape[0] // groups
    if kind == "instance":
        return x.size // x.shape[0] // c
    return x.size // c


def check_forward(kind, x, w=None, b=None, *, groups=None, channel_axis=1, eps=1e-5, activation=None,
                  rm=None, rv=None, momentum=0.1, t=None, what=""):
    """lnorm's forward with and without stats against the oracle: dtypes, shapes, y, mean, rstd,
    inputs intact, running statistics (training batch norm) updated as torch updates them."""
    xa = as_np(x)
    dtype = xa.dtype
    c = channels_of(xa, channel_axis)
    check = watch(xa, w, b)
    rm0, rv0 = (None if rm is None else rm.copy()), (None if rv is None else rv.copy())
    kw = dict(groups=groups, channel_axis=channel_axis, eps=eps, activation=activation)
    y, mean, rstd = forward(kind, x, w, b, return_stats=True, rm=rm, rv=rv, momentum=momentum, **kw)
    if kind == "batch" and rm is not None:  # the second call must start from the same state
        rm_after, rv_after = rm.copy(), rv.copy()
        rm[...], rv[...] = rm0, rv0
    y_only = forward(kind, x, w, b, rm=rm, rv=rv, momentum=momentum, **kw)
    check()
    y, mean, rstd, y_only = as_np(y), as_np(mean), as_np(rstd), as_np(y_only)
    y_ref, mean_ref, rstd_ref = forward_ref(kind, xa, w, b, rm=rm0, rv=rv0, **kw)
    assert y.dtype == dtype and y.shape == xa.shape, (what, y.dtype, y.shape)
    shape = stats_shape(kind, xa, groups, channel_axis)
    assert mean.shape == rstd.shape == shape, (what, mean.shape, rstd.shape, shape)
    assert mean.dtype == rstd.dtype == stats_dtype(dtype), (what, mean.dtype, rstd.dtype)
    assert np.array_equal(y, y_only, equal_nan=True), f"{what}: return_stats changed y"
    t = tol(dtype, group_count(kind, xa, groups, channel_axis)) if t is None else t
    assert_close(y, y_ref, tol=t, what=f"{what} y")
    with np.errstate(all="ignore"):
        xs = float(np.nanmax(np.abs(np.where(np.isfinite(xa.astype(np.float64)), xa.astype(np.float64), 0)),
                             initial=0.0))
    assert_close(mean, mean_ref, tol=t, scale=xs, what=f"{what} mean")
    assert_close(rstd, rstd_ref, tol=t, scale=0.0, what=f"{what} rstd")
    if kind == "batch" and rm is not None:
        assert np.array_equal(rm, rm_after, equal_nan=True) and np.array_equal(rv, rv_after, equal_nan=True), \
            f"{what}: the second call moved the running statistics differently"
        rm_ref, rv_ref = running_stats_update_ref(rm0, rv0, xa, channel_axis, momentum)
        ts = max(t, tol(stats_dtype(dtype)))
        assert_close(rm, rm_ref, tol=ts, scale=xs, what=f"{what} running_mean")
        assert_close(rv, rv_ref, tol=ts, what=f"{what} running_var")
    if kind == "batch_eval" and rm is not None:
        assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0), f"{what}: eval moved the running stats"
    return y, mean, rstd


def check_backward(kind, dy, x, w=None, *, groups=None, channel_axis=1, eps=1e-5, t=None, what=""):
    """Forward with stats, then backward from lnorm's own stats; against the analytic oracle on
    the same stats. dx in x's dtype; dweight (None without weight) and dbias in the weight's dtype
    (x's without weight)."""
    dtype = x.dtype
    c = channels_of(x, channel_axis)
    _, mean, rstd = forward(kind, x, w, None, groups=groups, channel_axis=channel_axis, eps=eps,
                            return_stats=True)
    check = watch(dy, x, mean, rstd, w)
    dx, dw, db = backward(kind, dy, x, mean, rstd, w, groups=groups, channel_axis=channel_axis)
    check()
    dx, db = as_np(dx), as_np(db)
    dx_r, dw_r, db_r = backward_ref(kind, dy, x, mean, rstd, w, groups=groups, channel_axis=channel_axis)
    pdtype = np.asarray(w).dtype if w is not None else dtype
    assert dx.dtype == dtype and dx.shape == x.shape, (what, dx.dtype, dx.shape)
    assert db.shape == (c,) and db.dtype == pdtype, (what, db.shape, db.dtype)
    t = tol(dtype, group_count(kind, x, groups, channel_axis)) if t is None else t
    g = groups if kind == "group" else c
    if kind == "batch":
        sc = channel_dx_scale(dy, x, mean, rstd, w, channel_axis)
        xhat_max = float(np.nanmax(np.abs((to_nc(x, channel_axis) - np.asarray(mean, np.float64).reshape((1, c) + (1,) * (x.ndim - 2)))
                                          * np.asarray(rstd, np.float64).reshape((1, c) + (1,) * (x.ndim - 2)))))
    else:
        sc = group_dx_scale(dy, x, mean, rstd, w, g, channel_axis)
        xg = to_nc(x, channel_axis).reshape(x.shape[0], g, -1)
        xhat_max = float(np.nanmax(np.abs((xg - np.asarray(mean, np.float64)[..., None])
                                          * np.asarray(rstd, np.float64)[..., None])))
    assert_close(dx, dx_r, tol=t, scale=sc, what=f"{what} dx")
    psc = float(np.abs(to_nc(dy, channel_axis)).sum(axis=tuple(i for i in range(x.ndim) if i != 1)).max())
    psc = max(psc * (1 + xhat_max), 1e-300)
    tp = max(t, TOL[pdtype])
    assert_close(db, db_r, tol=tp, scale=psc, what=f"{what} dbias")
    if w is None:
        assert dw is None, f"{what}: dweight without weight"
    else:
        dw = as_np(dw)
        assert dw.shape == (c,) and dw.dtype == pdtype, (what, dw.shape, dw.dtype)
        assert_close(dw, dw_r, tol=tp, scale=psc, what=f"{what} dweight")
    return dx, dw, db


# Shapes in NC... order with a few channel axes each; (nc_shape, groups, channel axes).
SHAPES = [
    ((2, 8, 5, 7), 4, (1, -1, 2)),
    ((3, 6, 9), 3, (1, -1)),
    ((5, 12), 4, (1, -1)),
    ((2, 4, 3, 2, 5), 2, (1, -1, 3)),
    ((1, 16, 33), 16, (1, 2)),
    ((4, 3, 1, 1), 1, (1, -1)),
]


def _cases():
    for nc_shape, g, axes in SHAPES:
        for ca in axes:
            yield nc_shape, g, ca


# ----------------------------------------------------------------------------------------------
# The oracle against torch (float64): independent of lnorm


def _torch_layout(x, ca):
    """x (any layout) as a float64 torch tensor in NC... order, requiring grad."""
    return torch.tensor(np.ascontiguousarray(to_nc(x, ca)), dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("activation", [None, "silu", "relu"])
@pytest.mark.parametrize("nc_shape,groups,ca", list(_cases()), ids=str)
def test_oracle_group_and_instance_norm_against_torch(nc_shape, groups, ca, activation):
    if torch is None:
        pytest.skip("needs PyTorch")
    import torch.nn.functional as F
    rng = np.random.default_rng(1)
    x = make_x(rng, layout_shape(nc_shape, ca), np.float64)
    c = nc_shape[1]
    w, b = make_params(rng, c, np.float64)
    act = {None: lambda v: v, "silu": F.silu, "relu": F.relu}[activation]
    for kind, g in (("group", groups), ("instance", c)):
        if kind == "instance" and np.prod(nc_shape[2:]) < 2:
            continue  # torch refuses instance norm of one element per channel
        xt = _torch_layout(x, ca)
        wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
        if kind == "group":
            yt = act(F.group_norm(xt, g, wt, bt, 1e-3))
        else:
            yt = act(F.instance_norm(xt, weight=wt, bias=bt, eps=1e-3))
        y, mean, rstd = forward_ref(kind, x, w, b, groups=g, channel_axis=ca, eps=1e-3, activation=activation)
        assert mean.shape == rstd.shape == (nc_shape[0], g)
        assert_close(to_nc(y, ca), yt.detach().numpy(), tol=1e-12, what=f"{kind} y")
        xg = xt.detach().reshape(nc_shape[0], g, -1)
        var_t, mean_t = torch.var_mean(xg, dim=2, correction=0)
        assert_close(mean, mean_t.numpy(), tol=1e-12, what=f"{kind} mean")
        assert_close(rstd, (1 / torch.sqrt(var_t + 1e-3)).numpy(), tol=1e-12, what=f"{kind} rstd")
        if activation is None:  # the analytic backward against autograd
            dy = rng.standard_normal(x.shape)
            yt.backward(torch.tensor(np.ascontiguousarray(to_nc(dy, ca))))
            dx, dw, db = backward_ref(kind, dy, x, mean, rstd, w, groups=g, channel_axis=ca)
            assert_close(to_nc(dx, ca), xt.grad.numpy(), tol=1e-10, what=f"{kind} dx")
            assert_close(dw, wt.grad.numpy(), tol=1e-10, what=f"{kind} dweight")
            assert_close(db, bt.grad.numpy(), tol=1e-10, what=f"{kind} dbias")
            dx0, dw0, db0 = backward_ref(kind, dy, x, mean, rstd, None, groups=g, channel_axis=ca)
            assert dw0 is None
            assert_close(db0, db, tol=1e-12, what="dbias without weight")


@pytest.mark.parametrize("nc_shape,groups,ca", list(_cases()), ids=str)
def test_oracle_batch_norm_against_torch(nc_shape, groups, ca):
    if torch is None:
        pytest.skip("needs PyTorch")
    import torch.nn.functional as F
    rng = np.random.default_rng(2)
    x = make_x(rng, layout_shape(nc_shape, ca), np.float64)
    c = nc_shape[1]
    w, b = make_params(rng, c, np.float64)
    rm, rv = make_running(rng, c, np.float64)
    if batch_count(x.shape, ca) > 1:
        # training: y, the batch statistics, the running statistics (momentum 0.3), autograd
        xt = _torch_layout(x, ca)
        wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
        rmt, rvt = torch.tensor(rm), torch.tensor(rv)
        yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=True, momentum=0.3, eps=1e-3)
        y, mean, rstd = batch_norm_train_ref(x, w, b, ca, 1e-3)
        assert mean.shape == rstd.shape == (c,)
        assert_close(to_nc(y, ca), yt.detach().numpy(), tol=1e-12, what="train y")
        rm_r, rv_r = running_stats_update_ref(rm, rv, x, ca, 0.3)
        assert_close(rm_r, rmt.numpy(), tol=1e-12, what="running_mean")
        assert_close(rv_r, rvt.numpy(), tol=1e-12, what="running_var")
        var_b, var_u = batch_var_ref(x, ca)
        n = batch_count(x.shape, ca)
        assert_close(var_u, var_b * n / (n - 1), tol=1e-14)
        assert_close(rstd, 1 / np.sqrt(var_b + 1e-3), tol=1e-12, what="rstd")
        dy = rng.standard_normal(x.shape)
        yt.backward(torch.tensor(np.ascontiguousarray(to_nc(dy, ca))))
        dx, dw, db = batch_norm_backward_ref(dy, x, mean, rstd, w, ca)
        assert_close(to_nc(dx, ca), xt.grad.numpy(), tol=1e-10, what="train dx")
        assert_close(dw, wt.grad.numpy(), tol=1e-10, what="train dweight")
        assert_close(db, bt.grad.numpy(), tol=1e-10, what="train dbias")
    # eval
    xt = _torch_layout(x, ca)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.batch_norm(xt, torch.tensor(rm), torch.tensor(rv), wt, torch.tensor(b), training=False, eps=1e-3)
    y, mean, rstd = batch_norm_eval_ref(x, rm, rv, w, b, ca, 1e-3)
    assert_close(to_nc(y, ca), yt.detach().numpy(), tol=1e-12, what="eval y")
    assert_close(rstd, 1 / np.sqrt(rv + 1e-3), tol=1e-14)
    dy = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(np.ascontiguousarray(to_nc(dy, ca))))
    assert_close(to_nc(batch_norm_eval_backward_ref(dy, rv, w, ca, 1e-3), ca), xt.grad.numpy(), tol=1e-12,
                 what="eval dx")


def test_oracle_constant_groups_and_activations():
    """The oracle's own edge cases: constant groups give the bias exactly (eps = 0 too); silu and
    relu are what torch computes, NaN kept; the group count check."""
    x = np.full((2, 4, 3), 7.25)
    b = np.array([0.5, -1.0, 2.0, 0.0])
    for eps in (0.0, 1e-5):
        y, _, rstd = group_norm_ref(x, 2, np.full(4, 3.0), b, 1, eps)
        assert np.array_equal(y, np.broadcast_to(b[None, :, None], x.shape))
        y, _, _ = batch_norm_train_ref(x, None, b, 1, eps, "relu")
        assert np.array_equal(y, np.broadcast_to(np.maximum(b, 0)[None, :, None], x.shape))
    v = np.array([-800.0, -3.0, -0.5, 0.0, 0.5, 3.0, 800.0, np.nan])
    assert np.isnan(activate(v, "relu")[-1]) and np.isnan(activate(v, "silu")[-1])
    if torch is not None:
        vt = torch.tensor(v[:-1])
        assert_close(activate(v[:-1], "silu"), torch.nn.functional.silu(vt).numpy(), tol=1e-15)
        assert_close(activate(v[:-1], "relu"), torch.relu(vt).numpy(), tol=0.0)


# ----------------------------------------------------------------------------------------------
# Forward against the oracle: dtypes, weights' dtypes, layouts


@pytest.mark.parametrize("weights", ["same", "float32", "none", "weight_only"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_dtypes_and_layouts(kind, dtype, weights):
    rng = np.random.default_rng([KINDS.index(kind), dtype.itemsize, len(weights)])
    for nc_shape, g, ca in _cases():
        x = make_x(rng, layout_shape(nc_shape, ca), dtype)
        c = nc_shape[1]
        wdt = dtype if weights == "same" else F32
        w, b = make_params(rng, c, wdt)
        if weights == "none":
            w = b = None
        elif weights == "weight_only":
            b = None
        rm, rv = make_running(rng, c, stats_dtype(dtype))
        if kind == "batch" and batch_count(x.shape, ca) < 2:
            continue
        check_forward(kind, x, w, b, groups=g, channel_axis=ca, rm=rm, rv=rv,
                      what=f"{kind} {dtype} {nc_shape} axis {ca}")


@pytest.mark.parametrize("ca", [1, -1], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", KINDS)
def test_spatial_sizes_around_vector_widths(kind, ca):
    """(N, C, S) / (N, S, C) with S in SPATIAL, C = 16 (4 groups) and C = 3."""
    rng = np.random.default_rng([KINDS.index(kind), ca % 3, 3])
    for s in SPATIAL:
        for c, g in ((16, 4), (3, 3)):
            n = 2 if s > 1 or kind != "batch" else 3
            x = make_x(rng, layout_shape((n, c, s), ca), np.float32)
            w, b = make_params(rng, c, np.float32)
            rm, rv = make_running(rng, c, F32)
            check_forward(kind, x, w, b, groups=g, channel_axis=ca, rm=rm, rv=rv,
                          what=f"{kind} S={s} C={c} axis {ca}")


@pytest.mark.parametrize("ca", [1, -1], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", KINDS)
def test_channel_counts_and_groups(kind, ca):
    """C in 1, 3, 16, 17, 32, 64, 96, each with several group counts, on 4-D (N, C, 3, 11)."""
    rng = np.random.default_rng([KINDS.index(kind), ca % 3, 4])
    for c, groups in CHANNELS.items():
        for g in groups if kind == "group" else groups[:1]:
            x = make_x(rng, layout_shape((2, c, 3, 11), ca), np.float32)
            w, b = make_params(rng, c, np.float32)
            rm, rv = make_running(rng, c, F32)
            check_forward(kind, x, w, b, groups=g, channel_axis=ca, rm=rm, rv=rv,
                          what=f"{kind} C={c} G={g} axis {ca}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("ca", [1, -1, 2], ids=["NCHW", "NHWC", "axis2"])
def test_sweep_spatial_by_channels(dtype, ca):
    """Every spatial size by every channel count and group count, all kinds (slow)."""
    rng = np.random.default_rng([dtype.itemsize, ca % 4, 5])
    for s in SPATIAL:
        for c, groups in CHANNELS.items():
            nc = (2, c, s) if ca != 2 else (2, c, s, 2)
            x = make_x(rng, layout_shape(nc, ca), dtype)
            w, b = make_params(rng, c, F32)
            rm, rv = make_running(rng, c, stats_dtype(dtype))
            for g in groups:
                check_forward("group", x, w, b, groups=g, channel_axis=ca, what=f"S={s} C={c} G={g}")
            check_forward("instance", x, w, b, channel_axis=ca, what=f"S={s} C={c}")
            check_forward("batch", x, w, b, channel_axis=ca, rm=rm, rv=rv, what=f"S={s} C={c}")
            check_forward("batch_eval", x, w, b, channel_axis=ca, rm=rm, rv=rv, what=f"S={s} C={c}")


@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-5, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("kind", KINDS)
def test_eps(kind, eps):
    """eps from 0 to 10 on data of variance 1..4: eps of the variance's order changes every output
    far beyond the tolerance, so an eps lost or doubled on the way fails."""
    rng = np.random.default_rng([KINDS.index(kind), int(eps * 100), 6])
    for dtype in (F32, F64):
        for ca in (1, -1):
            x = make_x(rng, layout_shape((3, 8, 4, 5), ca), dtype, spread=float(rng.uniform(1, 2)), offset=0.5)
            w, b = make_params(rng, 8, dtype)
            rm, rv = make_running(rng, 8, stats_dtype(dtype))
            y, _, _ = check_forward(kind, x, w, b, groups=2, channel_axis=ca, eps=eps, rm=rm, rv=rv,
                                    what=f"{kind} eps={eps} {dtype} axis {ca}")
            if eps >= 0.1:
                wrong = forward_ref(kind, x, w, b, groups=2, channel_axis=ca, eps=eps * 1.5, rm=rm, rv=rv)[0]
                assert max_rel_err(y, wrong) > 20 * TOL[dtype]


@pytest.mark.parametrize("activation", ["silu", "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_activation(kind, dtype, activation):
    """The activation after the affine, in the same call: y = act(norm(x) * w + b); relu gives
    exact zeros (never negative) and keeps NaN."""
    rng = np.random.default_rng([KINDS.index(kind), dtype.itemsize, len(activation)])
    for ca in (1, -1):
        x = make_x(rng, layout_shape((2, 12, 5, 6), ca), dtype)
        w, b = make_params(rng, 12, dtype)
        rm, rv = make_running(rng, 12, stats_dtype(dtype))
        y, _, _ = check_forward(kind, x, w, b, groups=3, channel_axis=ca, activation=activation, rm=rm, rv=rv,
                                what=f"{kind} {activation} axis {ca}")
        plain = as_np(forward(kind, x, w, b, groups=3, channel_axis=ca, rm=rm, rv=rv))
        if activation == "relu":
            assert (y.astype(np.float64) >= 0).all()
            assert (y.astype(np.float64) == 0).sum() > y.size // 10
            neg = plain.astype(np.float64) <= 0
            assert (y.astype(np.float64)[neg] == 0).all()
        assert max_rel_err(y, plain) > 10 * TOL[dtype], "the activation changed nothing"


# ----------------------------------------------------------------------------------------------
# Strides: steps, reversed axes, transposed views, torch tensors


def _strided_views(rng, dtype):
    """(x, channel axis, groups): views that are not C-contiguous."""
    big = make_x(rng, (4, 24, 10, 14), dtype)
    yield big[::2, ::2, 1::3, ::2], 1, 3            # steps everywhere (C = 12)
    yield big[:, ::-2, ::-1, 3:], 1, 4              # negative steps
    nhwc = make_x(rng, (3, 6, 7, 16), dtype)
    yield nhwc.transpose(0, 3, 1, 2), 1, 4           # NHWC memory seen as NCHW (channels_last)
    yield nhwc[:, :, ::2, ::-1], -1, 2               # NHWC with steps, reversed channels
    yield big.transpose(0, 2, 1, 3)[:, :, 4:20], 2, 4  # channel axis 2 of a transposed view
    base = make_x(rng, (10, 33), dtype)
    yield base.T[1:, :], -1, 5                        # 2-D (N, C) transposed (C = 10)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_strided_inputs(kind, dtype):
    rng = np.random.default_rng([KINDS.index(kind), dtype.itemsize, 7])
    for i, (x, ca, g) in enumerate(_strided_views(rng, dtype)):
        assert not x.flags.c_contiguous
        c = channels_of(x, ca)
        w, b = make_params(rng, c, F32)
        rm, rv = make_running(rng, c, stats_dtype(dtype))
        y, _, _ = check_forward(kind, x, w, b, groups=g, channel_axis=ca, rm=rm, rv=rv,
                                what=f"{kind} view {i}")
        assert isinstance(y, np.ndarray)
        if kind != "batch_eval":
            dy = make_x(rng, x.shape, dtype, spread=1.0, offset=0.0)
            check_backward("batch" if kind == "batch" else kind, dy, x, w, groups=g, channel_axis=ca,
                           what=f"{kind} view {i} backward")


@pytest.mark.parametrize("tdtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_tensors(kind, tdtype):
    """Torch tensors go in as they are (DLPack), channels_last ones included; like layer_norm, the
    results come back as tensors of x's dtype, and x is left alone."""
    if torch is None:
        pytest.skip("needs PyTorch")
    dt = getattr(torch, tdtype)
    g = torch.Generator().manual_seed(KINDS.index(kind))
    base = (torch.randn(3, 16, 6, 9, generator=g) * 2 + 1).to(dt)
    c = 16
    rng = np.random.default_rng(8)
    w, b = make_params(rng, c, np.float32)
    for name, xt, ca in (("contiguous", base, 1), ("channels_last", base.contiguous(memory_format=torch.channels_last), 1),
                         ("nhwc", base.permute(0, 2, 3, 1).contiguous(), -1)):
        before = xt.clone()
        rm, rv = make_running(rng, c, F64 if tdtype == "float64" else F32)
        kw = dict(groups=4, channel_axis=ca, rm=rm.copy(), rv=rv.copy())
        res = forward(kind, xt, w, b, return_stats=True, **kw)
        assert all(isinstance(r, torch.Tensor) for r in res), (name, [type(r) for r in res])
        y = res[0]
        assert y.dtype == dt and tuple(y.shape) == tuple(xt.shape)
        assert torch.equal(xt, before), "x was modified"
        xn = as_np(xt)
        y_ref = forward_ref(kind, xn, w, b, groups=4, channel_axis=ca, rm=rm, rv=rv)[0]
        assert_close(as_np(y), y_ref, tol=tol(xn.dtype), what=f"{kind} {name}")
        # the NumPy call on the same values gives the same result within rounding
        y_np = as_np(forward(kind, np.array(xn), w, b, groups=4, channel_axis=ca, rm=rm.copy(), rv=rv.copy()))
        assert_close(as_np(y), y_np.astype(np.float64), tol=tol(xn.dtype), what=f"{kind} {name} vs NumPy")
        if kind in ("group", "instance", "batch") and tdtype in ("float32", "float64"):
            _, mean, rstd = res
            dy = torch.randn(xt.shape, generator=g).to(dt)
            grads = backward(kind, dy, xt, mean, rstd, w, groups=4, channel_axis=ca)
            assert isinstance(grads[0], torch.Tensor) and grads[0].dtype == dt
            dx_r = backward_ref(kind, as_np(dy), xn, as_np(mean), as_np(rstd), w, groups=4, channel_axis=ca)[0]
            assert_close(as_np(grads[0]), dx_r, tol=tol(xn.dtype) * 4,
                         scale=float(np.abs(dx_r).max()) * 4, what=f"{kind} {name} dx")


# ----------------------------------------------------------------------------------------------
# out= and in place; return_stats


@pytest.mark.parametrize("dtype", [F32, F64, F16] + ([BF16] if BF16 is not None else []), ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_out_and_in_place(kind, dtype):
    """out= is written and returned (also a strided out); out=x works in place; both give the bits
    of the call without out (with return_stats too: the stats are the same)."""
    rng = np.random.default_rng([KINDS.index(kind), dtype.itemsize, 9])
    for ca in (1, -1):
        x = make_x(rng, layout_shape((2, 8, 6, 5), ca), dtype)
        w, b = make_params(rng, 8, dtype)
        rm, rv = make_running(rng, 8, stats_dtype(dtype))
        kw = dict(groups=2, channel_axis=ca, activation="silu")
        st = lambda: dict(rm=rm.copy(), rv=rv.copy())  # noqa: E731 (each call from the same state)
        y = forward(kind, x, w, b, **kw, **st())
        y2, mean, rstd = forward(kind, x, w, b, return_stats=True, **kw, **st())
        out = np.empty_like(x)
        assert forward(kind, x, w, b, out=out, **kw, **st()) is out
        assert np.array_equal(out, y, equal_nan=True)
        big = np.zeros((2 * x.shape[0],) + x.shape[1:], dtype)
        strided_out = big[::2]
        assert forward(kind, x, w, b, out=strided_out, **kw, **st()) is strided_out
        assert np.array_equal(strided_out, y) and not big[1::2].astype(np.float64).any()
        res = forward(kind, x, w, b, out=np.empty_like(x), return_stats=True, **kw, **st())
        assert np.array_equal(res[0], y2) and np.array_equal(res[1], mean) and np.array_equal(res[2], rstd)
        xi = x.copy()
        assert forward(kind, xi, w, b, out=xi, **kw, **st()) is xi
        assert np.array_equal(xi, y), f"{kind}: in place differs from out of place"
        xi = x.copy()
        yi, mi, ri = forward(kind, xi, w, b, out=xi, return_stats=True, **kw, **st())
        assert yi is xi and np.array_equal(xi, y) and np.array_equal(mi, mean) and np.array_equal(ri, rstd)
        # in place on a strided view (NHWC memory seen as NCHW): only the view's elements change
        big = make_x(rng, (2, 6, 5, 17), dtype)
        before = big.copy()
        view = big[:, :, :, 1:9].transpose(0, 3, 1, 2)
        expect = forward(kind, view.copy(), w, b, groups=2, channel_axis=1, **st())
        assert forward(kind, view, w, b, groups=2, channel_axis=1, out=view, **st()) is view
        assert_close(view, expect.astype(np.float64), tol=tol(dtype), what="in place on a view")
        assert np.array_equal(big[..., [0] + list(range(9, 17))], before[..., [0] + list(range(9, 17))])


@pytest.mark.parametrize("kind", KINDS)
def test_return_stats_values(kind):
    """return_stats: (y, mean, rstd), shapes (N, G) / (N, C) / (C,), float32 for float32, float16
    and bfloat16 data, float64 for float64; in eval mode batch_norm returns the running mean and
    1 / sqrt(running_var + eps) as float stats; the flag must be a bool."""
    rng = np.random.default_rng([KINDS.index(kind), 10])
    for dtype in DTYPES:
        x = make_x(rng, (3, 6, 5), dtype)
        rm, rv = make_running(rng, 6, stats_dtype(dtype))
        y, mean, rstd = forward(kind, x, groups=2, return_stats=True, eps=0.5, rm=rm.copy(), rv=rv.copy())
        assert mean.shape == rstd.shape == stats_shape(kind, x, 2, 1)
        assert mean.dtype == rstd.dtype == stats_dtype(dtype)
        if kind == "batch_eval":
            assert_close(mean, rm, tol=0.0, what="eval mean")
            assert_close(rstd, 1 / np.sqrt(rv.astype(np.float64) + 0.5), tol=tol(stats_dtype(dtype)), what="eval rstd")
        if kind == "batch":
            var_b, _ = batch_var_ref(x)
            assert_close(rstd, 1 / np.sqrt(var_b + 0.5), tol=tol(dtype) if dtype in (F32, F64) else 1e-5,
                         what="train rstd (biased variance)")
    for flag in (1, "yes", None):
        raises_naming(TypeError, "return_stats", forward, kind, x, groups=2, return_stats=flag,
                      rm=rm.copy(), rv=rv.copy())


def test_empty_batch():
    """N = 0: an empty result (stats (0, G) / (0, C)) for group and instance norm and eval batch norm,
    as layer_norm does with an empty batch."""
    x = np.zeros((0, 8, 3), np.float32)
    y, mean, rstd = lnorm.group_norm(x, 2, return_stats=True)
    assert y.shape == x.shape and mean.shape == rstd.shape == (0, 2)
    y, mean, rstd = lnorm.instance_norm(x, return_stats=True)
    assert y.shape == x.shape and mean.shape == (0, 8)
    y = lnorm.batch_norm(x, np.zeros(8, np.float32), np.ones(8, np.float32))
    assert y.shape == x.shape


def test_batch_norm_training_needs_two_values_per_channel():
    """As torch: training with one value per channel (no variance to estimate) is a ValueError
    naming x; eval mode is fine."""
    x = np.ones((1, 4), np.float32)
    raises_naming(ValueError, "x", lnorm.batch_norm, x, np.zeros(4, np.float32), np.ones(4, np.float32),
                  training=True)
    raises_naming(ValueError, "x", lnorm.batch_norm, np.ones((1, 4, 1), np.float32), training=True)
    raises_naming(ValueError, "x", lnorm.batch_norm, np.ones((0, 4, 3), np.float32), training=True)
    y = lnorm.batch_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32), eps=0.0)
    assert np.array_equal(y, x)


# ----------------------------------------------------------------------------------------------
# Accuracy: large means, constant groups, NaN and Inf


@pytest.mark.parametrize("ca", [1, -1], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", ["group", "instance", "batch"])
def test_large_mean_float32(kind, ca):
    """float32 data whose mean is 1e5 times its spread, per group (each group its own mean):
    float32-level precision in both layouts against the float64 oracle on the same float32 values.
    The tolerance is shown to separate the algorithms: the naive E[x^2] - E[x]^2 fails it."""
    rng = np.random.default_rng([ca % 3, len(kind), 11])
    n, c, s, g = 2, 16, 257, 4
    spread = 10.0 ** rng.uniform(-2, 2)
    nc = rng.standard_normal((n, c, s)) * spread
    if kind == "group":
        means = np.repeat(rng.choice([-1, 1], (n, g)) * rng.uniform(1, 10, (n, g)), c // g, axis=1)
    elif kind == "instance":
        means = rng.choice([-1, 1], (n, c)) * rng.uniform(1, 10, (n, c))
    else:
        means = np.broadcast_to(rng.choice([-1, 1], c) * rng.uniform(1, 10, c), (n, c))
    nc = (nc + 1e5 * spread * means[..., None]).astype(np.float32)
    x = np.ascontiguousarray(np.moveaxis(nc, 1, ca % 3))
    w, b = make_params(rng, c, np.float32)
    y_ref, mean_ref, rstd_ref = forward_ref(kind, x, w, b, groups=g, channel_axis=ca)
    groups = {"group": g, "instance": c}.get(kind)
    # the naive float32 algorithm on the same groups fails the tolerance
    rows = (np.moveaxis(nc, 1, 0).reshape(c, -1) if kind == "batch" else nc.reshape(n, groups, -1).reshape(n * groups, -1))
    from reference import layer_norm_ref
    assert max_rel_err(naive_layer_norm_f32(rows), layer_norm_ref(rows)[0]) > LARGE_MEAN_TOL
    rm, rv = make_running(rng, c, F32)
    y, mean, rstd = as_np(forward(kind, x, w, b, groups=g, channel_axis=ca, return_stats=True, rm=rm, rv=rv)[0]), \
        *forward(kind, x, w, b, groups=g, channel_axis=ca, return_stats=True, rm=rm.copy(), rv=rv.copy())[1:]
    err = max_rel_err(y, y_ref, float(np.abs(y_ref).max()))
    assert err <= LARGE_MEAN_TOL, f"{kind}: error {err:.3e} of the output scale"
    assert_close(mean, mean_ref, tol=1e-6, scale=0.0, what="mean")
    assert_close(rstd, rstd_ref, tol=LARGE_MEAN_TOL, scale=0.0, what="rstd")
    if kind == "batch":  # the running variance too (unbiased), relative to the spread
        _, rv_ref = running_stats_update_ref(rm * 0, rv * 0 + 1, x, ca, 0.1)
        rv1 = np.ones(c, np.float32)
        forward(kind, x, w, b, channel_axis=ca, rm=np.zeros(c, np.float32), rv=rv1)
        assert_close(rv1, rv_ref, tol=LARGE_MEAN_TOL, scale=0.0, what="running_var")


@pytest.mark.parametrize("eps", [0.0, 1e-5, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ["group", "instance", "batch"])
def test_constant_groups_give_bias(kind, dtype, eps):
    """A constant group (channel for batch norm) gives exactly the bias, eps = 0 included (never
    NaN); relu of it is exactly max(bias, 0); without bias, exactly 0."""
    rng = np.random.default_rng([len(kind), dtype.itemsize, int(eps * 10), 12])
    for ca in (1, -1):
        for s in (1, 7, 33):
            c, g = 8, 4
            if kind == "batch":
                vals = np.array([0.1, 3e4, -3.7, 1 / 3, 1e-20, 2.5, -0.25, 7.0])[:c]  # 3e4: finite in float16
                nc = np.broadcast_to(vals[None, :, None], (3, c, s))
            else:
                vals = np.array([[0.1, 3e4, -3.7, 1 / 3], [1e-20, 2.5, -0.25, 7.0]])  # per (n, group)
                nc = np.broadcast_to(np.repeat(vals, c // g, axis=1)[..., None], (2, c, s))
                if kind == "instance":
                    nc = nc * np.linspace(1, 2, c)[None, :, None]  # each channel its own constant
            x = np.ascontiguousarray(np.moveaxis(nc.astype(dtype), 1, ca % 3))
            w, b = make_params(rng, c, dtype)
            bshape = np.moveaxis(np.broadcast_to(b[None, :, None], (x.shape[0], c, s)), 1, ca % 3)
            y = forward(kind, x, w, b, groups=g, channel_axis=ca, eps=eps)
            assert np.array_equal(y, bshape), f"{kind} s={s}: max |y - bias| = {np.nanmax(np.abs(y.astype(np.float64) - bshape.astype(np.float64)))}"
            y = forward(kind, x, w, b, groups=g, channel_axis=ca, eps=eps, activation="relu")
            assert np.array_equal(y, np.maximum(bshape, np.zeros((), dtype)))
            y = forward(kind, x, w, None, groups=g, channel_axis=ca, eps=eps)
            assert np.array_equal(y, np.zeros(x.shape, dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("ca", [1, -1], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [F32, F64, F16], ids=["float32", "float64", "float16"])
def test_nan_inf_poison_one_group(dtype, ca, bad):
    """NaN or Inf in one group gives NaN in that (n, group) only (its mean/rstd too), for group and
    instance norm; for training batch norm it poisons its channel for every n (and that channel's
    running statistics) and nothing else; for eval batch norm, only that element."""
    rng = np.random.default_rng([dtype.itemsize, ca % 3, 13])
    n, c, s, g = 3, 12, 17, 4
    nc = rng.standard_normal((n, c, s)) + 1
    nc[1, 5, 3] = bad    # group 1 of n = 1; channel 5
    nc[2, 11, 16] = bad  # group 3 of n = 2; channel 11
    x = np.ascontiguousarray(np.moveaxis(nc, 1, ca % 3)).astype(dtype)
    w, b = make_params(rng, c, dtype)
    for kind in KINDS:
        rm, rv = make_running(rng, c, stats_dtype(dtype))
        rm0, rv0 = rm.copy(), rv.copy()
        y, mean, rstd = forward(kind, x, w, b, groups=g, channel_axis=ca, return_stats=True, rm=rm, rv=rv)
        ync = to_nc(y, ca)
        poisoned = np.zeros((n, c, s), bool)
        if kind == "group":
            poisoned[1, 3:6] = poisoned[2, 9:12] = True
        elif kind == "instance":
            poisoned[1, 5] = poisoned[2, 11] = True
        elif kind == "batch":
            poisoned[:, 5] = poisoned[:, 11] = True
        else:
            poisoned[1, 5, 3] = poisoned[2, 11, 16] = True
        y_ref = forward_ref(kind, x, w, b, groups=g, channel_axis=ca, rm=rm0, rv=rv0)[0]
        if kind == "batch_eval":  # elementwise: +-inf stays infinite (through the scale's sign)
            assert not np.isfinite(ync[poisoned]).any() and np.isfinite(ync[~poisoned]).all()
            assert_close(y, y_ref, tol=tol(dtype), what="eval batch norm")
            continue
        assert np.isnan(ync[poisoned]).all(), f"{kind}: the poisoned group is not all NaN"
        assert_close(ync[~poisoned], to_nc(y_ref, ca)[~poisoned], tol=tol(dtype), what=f"{kind} clean groups")
        if kind in ("group", "instance"):
            bad_stats = np.zeros(mean.shape, bool)
            if kind == "group":
                bad_stats[1, 1] = bad_stats[2, 3] = True
            else:
                bad_stats[1, 5] = bad_stats[2, 11] = True
            assert np.isnan(rstd[bad_stats]).all() and np.isfinite(rstd[~bad_stats]).all()
            assert np.isfinite(mean[~bad_stats]).all()
        if kind == "batch":
            assert np.isnan(rv[[5, 11]]).all() and np.isfinite(rv[np.r_[0:5, 6:11]]).all()
            assert np.isfinite(rm[np.r_[0:5, 6:11]]).all() and not np.isfinite(rm[[5, 11]]).any()
            assert np.isnan(rstd[[5, 11]]).all() and np.isfinite(rstd[np.r_[0:5, 6:11]]).all()


# ----------------------------------------------------------------------------------------------
# Kernel sets and thread counts


@pytest.fixture(params=possible_isas())
def isa(request):
    require_isa(request.param)
    before = isa_setting()
    lnorm.set_isa(request.param)
    yield request.param
    lnorm.set_isa(before)


def float32_with_bits(v, at):
    """A float32 copy of v with the given bit patterns at the given indices."""
    v = np.array(v, np.float32)
    for i, bits in at.items():
        v.view(np.uint32)[i] = bits
    return v


@pytest.mark.skipif(BF16 is None, reason="needs ml_dtypes")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy widening signaling NaNs
@pytest.mark.parametrize("ca", [1, -1], ids=["NCHW", "NHWC"])
def test_nan_payloads_of_float32_parameters_stay_nan(isa, ca):
    """bfloat16 x with float32 weights, bias and running statistics that hold NaNs of any payload (all
    bits set, signaling, negative) and a NaN running variance: y is NaN exactly where the float64
    reference is, on every kernel set. The bfloat16 lines round in split order without a NaN guard,
    where a payload reaching the rounding would carry into the sign and exponent: NaN turned into 0."""
    rng = np.random.default_rng([len(isa), ca % 3, 21])
    n, c, s, g = 2, 8, 67, 4  # lines of 67: split pairs, then a plain tail
    nc = rng.standard_normal((n, c, s)) * 2 + 1
    nc[1, 6, 40] = np.nan  # group 3 of n = 1; channel 6
    x = np.ascontiguousarray(np.moveaxis(nc, 1, ca % 3)).astype(BF16)
    w, b = make_params(rng, c, F32)
    w = float32_with_bits(w, {1: 0xFFFFFFFF, 4: 0x7F800001})
    b = float32_with_bits(b, {2: 0x7FFFFFFF, 5: 0xFFBFFFFF})
    dy = make_x(rng, x.shape, BF16, spread=1.0, offset=0.0)
    for kind in KINDS:
        for act in (None, "silu"):
            rm, rv = make_running(rng, c, F32)
            rm, rv = float32_with_bits(rm, {0: 0xFFFFFFFF}), float32_with_bits(rv, {3: 0x7FFFFFFF, 7: 0x7FC01234})
            y_ref = forward_ref(kind, x, w, b, groups=g, channel_axis=ca, activation=act, rm=rm.copy(), rv=rv.copy())[0]
            y, mean, rstd = forward(kind, x, w, b, groups=g, channel_axis=ca, activation=act, return_stats=True,
                                    rm=rm, rv=rv)
            assert np.isnan(y_ref).any() and np.isfinite(y_ref).any()
            assert_close(y, y_ref, tol=tol(BF16), what=f"{isa} {kind} {act}")
            if kind != "batch_eval":
                dx_ref = backward_ref(kind, dy, x, mean, rstd, w, groups=g, channel_axis=ca)[0]
                dx = backward(kind, dy, x, mean, rstd, w, groups=g, channel_axis=ca)[0]
                assert np.isnan(dx_ref).any() and np.isfinite(dx_ref).any()
                assert_close(dx, dx_ref, tol=tol(BF16), what=f"{isa} {kind} backward")


@pytest.mark.skipif(BF16 is None, reason="needs ml_dtypes")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy widening signaling NaNs
def test_split_pixel_runs_give_the_bits_of_single_pixels(isa):
    """bfloat16 NHWC with C a multiple of 32: a run of contiguous pixels goes as one line in split
    order, its coefficients from a table rotated by y's head before a pair-aligned address. With y at
    every element offset of 64 bytes (every head), in place, with SiLU, a NaN in x and NaN payloads in
    float32 parameters, y is the same bits as the pixel-by-pixel walk gives for an output whose pixels
    are not contiguous, and within rounding of the float64 reference; dx likewise, against dy whose
    pixels are not contiguous."""
    rng = np.random.default_rng([len(isa), 22])
    for c, g in ((32, 4), (96, 8)):
        x = make_x(rng, (2, 5, 7, c), BF16, spread=2.0, offset=1.0)
        x[1, 2, 3, 17] = np.nan
        w, b = make_params(rng, c, F32)
        w = float32_with_bits(w, {1: 0xFFFFFFFF, 20: 0x7F800001})
        b = float32_with_bits(b, {2: 0x7FFFFFFF, 31: 0xFFBFFFFF})
        dy = make_x(rng, x.shape, BF16, spread=1.0, offset=0.0)
        dy_apart = np.empty(x.shape[:3] + (c + 16,), BF16)[..., :c]
        dy_apart[...] = dy
        for kind in KINDS:
            for act in (None, "silu"):
                rm, rv = make_running(rng, c, F32)
                args = dict(groups=g, channel_axis=-1, activation=act, rm=rm, rv=rv)
                apart = np.empty(x.shape[:3] + (c + 16,), BF16)[..., :c]
                forward(kind, x, w, b, out=apart, **args)
                y_ref = forward_ref(kind, x, w, b, groups=g, channel_axis=-1, activation=act, rm=rm, rv=rv)[0]
                assert_close(apart, y_ref, tol=tol(BF16), what=f"{isa} {kind} {act} C={c}")
                for off in range(32):
                    y = np.empty(x.size + 32, BF16)[off:off + x.size].reshape(x.shape)
                    forward(kind, x, w, b, out=y, **args)
                    assert np.array_equal(y.view(np.uint16), apart.view(np.uint16)), (isa, kind, act, c, off)
                inplace = x.copy()
                forward(kind, inplace, w, b, out=inplace, **args)
                assert np.array_equal(inplace.view(np.uint16), apart.view(np.uint16)), (isa, kind, act, c)
            if kind == "batch_eval":
                continue
            _, mean, rstd = forward(kind, x, w, b, groups=g, channel_axis=-1, return_stats=True, rm=rm, rv=rv)
            dx = backward(kind, dy, x, mean, rstd, w, groups=g, channel_axis=-1)[0]
            dx_apart = backward(kind, dy_apart, x, mean, rstd, w, groups=g, channel_axis=-1)[0]
            assert np.array_equal(dx.view(np.uint16), dx_apart.view(np.uint16)), (isa, kind, c)
            dx_ref = backward_ref(kind, dy, x, mean, rstd, w, groups=g, channel_axis=-1)[0]
            assert_close(dx, dx_ref, tol=tol(BF16), what=f"{isa} {kind} backward C={c}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_kernel_set(isa, dtype):
    """Forward and backward of every kind on the forced kernel set, both layouts, sizes around the
    vector widths, weights in float32."""
    rng = np.random.default_rng([len(isa), dtype.itemsize, 14])
    for ca in (1, -1):
        for s, c, g in ((1, 16, 4), (7, 3, 1), (17, 32, 8), (33, 17, 17), (257, 16, 2)):
            x = make_x(rng, layout_shape((2, c, s), ca), dtype)
            w, b = make_params(rng, c, F32)
            dy = make_x(rng, x.shape, dtype, spread=1.0, offset=0.0)
            for kind in KINDS:
                rm, rv = make_running(rng, c, stats_dtype(dtype))
                check_forward(kind, x, w, b, groups=g, channel_axis=ca, activation="silu", rm=rm, rv=rv,
                              what=f"{isa} {kind} S={s} C={c}")
                if kind != "batch_eval":
                    check_backward(kind, dy, x, w, groups=g, channel_axis=ca, what=f"{isa} {kind} S={s} C={c}")


@pytest.mark.parametrize("ca", [1, -1, 2], ids=["NCHW", "NHWC", "axis2"])
def test_thread_counts_give_identical_bits(ca, restore_threads):
    """1, 2 and 3 threads: the same bits, forward (stats and running statistics included) and
    backward, for every kind."""
    rng = np.random.default_rng([ca % 4, 15])
    for dtype in (F32, F16):
        nc = (6, 64, 24, 33) if dtype == F32 else (4, 32, 17, 31)
        x = make_x(rng, layout_shape(nc, ca), dtype)
        c = nc[1]
        w, b = make_params(rng, c, dtype)
        dy = make_x(rng, x.shape, dtype, spread=1.0, offset=0.0)
        rm, rv = make_running(rng, c, F32)
        results = []
        for threads in (1, 2, 3):
            lnorm.set_num_threads(threads)
            got = []
            for kind in KINDS:
                rmk, rvk = rm.copy(), rv.copy()
                y, mean, rstd = forward(kind, x, w, b, groups=8, channel_axis=ca, return_stats=True,
                                        rm=rmk, rv=rvk)
                got += [y, mean, rstd, rmk, rvk]
                if kind != "batch_eval":
                    dx, dw, db = backward(kind, dy, x, mean, rstd, w, groups=8, channel_axis=ca)
                    got += [dx, dw, db]
            results.append(got)
        for other in results[1:]:
            for i, (a, b_) in enumerate(zip(results[0], other)):
                assert np.array_equal(a, b_), f"{dtype}: result {i} depends on the thread count"
        assert lnorm.get_num_threads() == 3


# ----------------------------------------------------------------------------------------------
# Backward


@pytest.mark.parametrize("weights", ["same", "float32", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ["group", "instance", "batch"])
def test_backward(kind, dtype, weights):
    """dx, dweight, dbias from lnorm's own stats against the analytic oracle; dweight None without
    weight, dbias computed all the same (as layer_norm_backward)."""
    rng = np.random.default_rng([len(kind), dtype.itemsize, len(weights), 16])
    for nc_shape, g, ca in _cases():
        x = make_x(rng, layout_shape(nc_shape, ca), dtype)
        if kind == "batch" and batch_count(x.shape, ca) < 2:
            continue
        w = None if weights == "none" else make_params(rng, nc_shape[1], dtype if weights == "same" else F32)[0]
        dy = make_x(rng, x.shape, dtype, spread=1.0, offset=0.0)
        check_backward(kind, dy, x, w, groups=g, channel_axis=ca, eps=1e-3, what=f"{kind} {nc_shape} axis {ca}")


@pytest.mark.parametrize("ca", [1, -1, 2], ids=["NCHW", "NHWC", "axis2"])
@pytest.mark.parametrize("kind", ["group", "instance", "batch"])
def test_backward_against_torch_autograd(kind, ca):
    """float64: lnorm's forward and backward against torch's autograd of F.group_norm /
    F.instance_norm / F.batch_norm(training=True)."""
    if torch is None:
        pytest.skip("needs PyTorch")
    import torch.nn.functional as F
    rng = np.random.default_rng([len(kind), ca % 4, 17])
    nc = (3, 12, 5, 7)
    x = make_x(rng, layout_shape(nc, ca), np.float64)
    w, b = make_params(rng, 12, np.float64)
    dy = rng.standard_normal(x.shape)
    xt = _torch_layout(x, ca)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    if kind == "group":
        yt = F.group_norm(xt, 3, wt, bt, 1e-5)
    elif kind == "instance":
        yt = F.instance_norm(xt, weight=wt, bias=bt, eps=1e-5)
    else:
        yt = F.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    yt.backward(torch.tensor(np.ascontiguousarray(to_nc(dy, ca))))
    y, mean, rstd = forward(kind, x, w, b, groups=3, channel_axis=ca, return_stats=True)
    assert_close(to_nc(y, ca), yt.detach().numpy(), tol=1e-12, what="y")
    dx, dw, db = backward(kind, dy, x, mean, rstd, w, groups=3, channel_axis=ca)
    assert_close(to_nc(dx, ca), xt.grad.numpy(), tol=1e-10, what="dx")
    assert_close(dw, wt.grad.numpy(), tol=1e-10, what="dweight")
    assert_close(db, bt.grad.numpy(), tol=1e-10, what="dbias")


# ----------------------------------------------------------------------------------------------
# BatchNorm's running statistics against torch


@pytest.mark.parametrize("momentum", [0.1, 0.3, 1.0, 0.0])
@pytest.mark.parametrize("ca", [1, -1], ids=["NCHW", "NHWC"])
def test_running_stats_against_torch(ca, momentum):
    """Several training steps then eval: running_mean / running_var (unbiased) as torch's
    F.batch_norm moves them, in float32 and float64; x in float16 moves float32 statistics."""
    if torch is None:
        pytest.skip("needs PyTorch")
    import torch.nn.functional as F
    rng = np.random.default_rng([ca % 3, int(momentum * 10), 18])
    for dtype in (F32, F64, F16):
        sdt = stats_dtype(dtype)
        rm, rv = np.zeros(8, sdt), np.ones(8, sdt)
        rmt, rvt = torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
        for step in range(3):
            x = make_x(rng, layout_shape((4, 8, 3, 5), ca), dtype, spread=2.0, offset=3.0 * step)
            lnorm.batch_norm(x, rm, rv, training=True, momentum=momentum, channel_axis=ca)
            F.batch_norm(torch.tensor(np.ascontiguousarray(to_nc(x, ca)), dtype=torch.float64), rmt, rvt,
                         training=True, momentum=momentum)
            t = tol(sdt) * 4
            assert_close(rm, rmt.numpy(), tol=t, scale=10.0, what=f"{dtype} step {step} running_mean")
            assert_close(rv, rvt.numpy(), tol=t, what=f"{dtype} step {step} running_var")
        x = make_x(rng, layout_shape((4, 8, 3, 5), ca), dtype)
        y = lnorm.batch_norm(x, rm, rv, channel_axis=ca)  # eval: the running statistics
        yt = F.batch_norm(torch.tensor(np.ascontiguousarray(to_nc(x, ca)), dtype=torch.float64),
                          torch.tensor(rm.astype(np.float64)), torch.tensor(rv.astype(np.float64)), training=False)
        assert_close(to_nc(y, ca), yt.numpy(), tol=tol(dtype), what=f"{dtype} eval y")


def test_training_without_running_stats_and_running_stats_dtype():
    """training=True works without running statistics (None, None); with them, float32 running
    statistics serve float16 and bfloat16 data, and are updated in place (same objects)."""
    rng = np.random.default_rng(19)
    x = make_x(rng, (4, 6, 9), np.float32)
    y = lnorm.batch_norm(x, training=True)
    assert_close(y, batch_norm_train_ref(x)[0], tol=tol(F32))
    for dtype in DTYPES:
        xd = x.astype(dtype)
        rm, rv = np.zeros(6, stats_dtype(dtype)), np.ones(6, stats_dtype(dtype))
        ids = (id(rm), id(rv))
        lnorm.batch_norm(xd, rm, rv, training=True)
        assert (id(rm), id(rv)) == ids
        rm_r, rv_r = running_stats_update_ref(np.zeros(6), np.ones(6), xd, 1, 0.1)
        assert_close(rm, rm_r, tol=1e-5, scale=float(np.abs(x).max()), what=f"{dtype} running_mean")
        assert_close(rv, rv_r, tol=1e-5, what=f"{dtype} running_var")


# ----------------------------------------------------------------------------------------------
# Modules


def test_module_parameters():
    m = lnorm.GroupNorm(4, 16)
    assert m.weight.shape == m.bias.shape == (16,) and m.weight.dtype == m.bias.dtype == F32
    assert (m.weight == 1).all() and (m.bias == 0).all()
    m = lnorm.GroupNorm(4, 16, affine=False, dtype=np.float64)
    assert m.weight is None and m.bias is None
    assert lnorm.GroupNorm(2, 8, dtype=np.float64).weight.dtype == F64
    m = lnorm.InstanceNorm(8)
    assert m.weight is None and m.bias is None
    m = lnorm.InstanceNorm(8, affine=True)
    assert m.weight.shape == (8,) and (m.weight == 1).all() and (m.bias == 0).all()
    m = lnorm.BatchNorm(8)
    assert m.training is True
    assert m.weight.shape == (8,) and (m.weight == 1).all() and (m.bias == 0).all()
    assert m.running_mean.shape == m.running_var.shape == (8,)
    assert (m.running_mean == 0).all() and (m.running_var == 1).all()
    assert m.eval() is m and m.training is False
    assert m.train() is m and m.training is True
    m = lnorm.BatchNorm(8, affine=False, track_running_stats=False)
    assert m.weight is None and m.bias is None
    assert m.running_mean is None and m.running_var is None
    raises_naming(ValueError, "num_groups", lnorm.GroupNorm, 3, 16)
    raises_naming(ValueError, "num_groups", lnorm.GroupNorm, 0, 16)
    raises_naming(ValueError, "eps", lnorm.GroupNorm, 2, 16, eps=-1.0)
    raises_naming(ValueError, "momentum", lnorm.BatchNorm, 8, momentum=float("nan"))


def _torch_module_copy(tm, m):
    with torch.no_grad():
        if m.weight is not None:
            tm.weight.copy_(torch.from_numpy(m.weight.astype(np.float64)))
            tm.bias.copy_(torch.from_numpy(m.bias.astype(np.float64)))


@pytest.mark.parametrize("ca", [1, -1], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_modules_against_torch(dtype, ca):
    """GroupNorm, InstanceNorm (affine and not) and BatchNorm (train, eval, track_running_stats
    False) against torch.nn's modules in float64: outputs, dx, weight_grad, bias_grad, running
    statistics. Gradients are overwritten by each backward, never accumulated."""
    if torch is None:
        pytest.skip("needs PyTorch")
    rng = np.random.default_rng([dtype.itemsize, ca % 3, 20])
    c = 12
    t = tol(dtype) * 4
    mods = [(lnorm.GroupNorm(3, c, eps=1e-4, channel_axis=ca, dtype=dtype), torch.nn.GroupNorm(3, c, eps=1e-4)),
            (lnorm.InstanceNorm(c, channel_axis=ca, dtype=dtype), torch.nn.InstanceNorm2d(c)),
            (lnorm.InstanceNorm(c, affine=True, eps=1e-3, channel_axis=ca, dtype=dtype),
             torch.nn.InstanceNorm2d(c, affine=True, eps=1e-3)),
            (lnorm.BatchNorm(c, momentum=0.2, channel_axis=ca, dtype=dtype), torch.nn.BatchNorm2d(c, momentum=0.2)),
            (lnorm.BatchNorm(c, track_running_stats=False, channel_axis=ca, dtype=dtype),
             torch.nn.BatchNorm2d(c, track_running_stats=False))]
    for m, tm in mods:
        tm = tm.double()
        if m.weight is not None:
            m.weight[...] = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
            m.bias[...] = rng.standard_normal(c).astype(dtype)
            _torch_module_copy(tm, m)
        for step, mode in enumerate(["train", "train", "eval", "train"]):
            if isinstance(m, lnorm.BatchNorm):
                getattr(m, mode)()
                getattr(tm, mode)()
            x = make_x(rng, layout_shape((4, c, 5, 6), ca), dtype, spread=1.5, offset=float(step))
            dy = make_x(rng, x.shape, dtype, spread=1.0, offset=0.0)
            what = f"{type(m).__name__} step {step} ({mode})"
            xt = _torch_layout(x, ca)
            yt = tm(xt)
            y = m(x)
            assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == x.shape
            assert_close(to_nc(y, ca), yt.detach().numpy(), tol=t, what=f"{what} y")
            tm.zero_grad()
            yt.backward(torch.tensor(np.ascontiguousarray(to_nc(dy, ca))))
            dx = m.backward(dy)
            assert isinstance(dx, np.ndarray) and dx.dtype == dtype and dx.shape == x.shape
            assert_close(to_nc(dx, ca), xt.grad.numpy(), tol=t, scale=float(np.abs(xt.grad.numpy()).max()) * 4,
                         what=f"{what} dx")
            if m.weight is None:
                assert getattr(m, "weight_grad", None) is None
            else:
                sc = float(np.abs(dy).sum(axis=tuple(i for i in range(4) if i != ca % 4)).max()) * 4
                assert_close(m.weight_grad, tm.weight.grad.numpy(), tol=t, scale=sc, what=f"{what} weight_grad")
                assert_close(m.bias_grad, tm.bias.grad.numpy(), tol=t, scale=sc, what=f"{what} bias_grad")
            if isinstance(m, lnorm.BatchNorm) and m.running_mean is not None:
                assert_close(m.running_mean, tm.running_mean.numpy(), tol=t, scale=10.0, what=f"{what} running_mean")
                assert_close(m.running_var, tm.running_var.numpy(), tol=t, what=f"{what} running_var")


def test_module_backward_uses_last_forward_and_leaves_input_alone():
    rng = np.random.default_rng(21)
    for m in (lnorm.GroupNorm(2, 6), lnorm.InstanceNorm(6, affine=True), lnorm.BatchNorm(6)):
        x1 = make_x(rng, (3, 6, 5), np.float32)
        x2 = make_x(rng, (4, 6, 7), np.float32)
        dy = make_x(rng, x2.shape, np.float32)
        x2c, dyc = x2.copy(), dy.copy()
        m(x1)
        m(x2)
        x2[...] = x2c  # (unchanged; the module must have kept its own copy anyway)
        dx = m.backward(dy)
        assert dx.shape == x2.shape
        assert np.array_equal(x2, x2c) and np.array_equal(dy, dyc)
        if isinstance(m, lnorm.InstanceNorm):  # first: it may be a subclass of GroupNorm
            _, mean, rstd = instance_norm_ref(x2)
            ref = instance_norm_backward_ref(dy, x2, mean, rstd, m.weight)[0]
        elif isinstance(m, lnorm.GroupNorm):
            _, mean, rstd = group_norm_ref(x2, 2)
            ref = group_norm_backward_ref(dy, x2, mean, rstd, m.weight, 2)[0]
        else:
            _, mean, rstd = batch_norm_train_ref(x2)
            ref = batch_norm_backward_ref(dy, x2, mean, rstd, m.weight)[0]
        assert_close(dx, ref, tol=tol(F32) * 4, scale=float(np.abs(ref).max()) * 4, what=type(m).__name__)
    with pytest.raises(RuntimeError):
        lnorm.GroupNorm(2, 6).backward(np.zeros((1, 6, 2), np.float32))
    raises_naming(ValueError, "x", lnorm.GroupNorm(2, 6), np.zeros((2, 5, 3), np.float32))
    raises_naming(ValueError, "x", lnorm.BatchNorm(6), np.zeros((2, 5, 3), np.float32))


def test_module_eval_batch_norm_keeps_running_stats_and_torch_input():
    rng = np.random.default_rng(22)
    m = lnorm.BatchNorm(4)
    m.running_mean[...] = rng.standard_normal(4)
    m.running_var[...] = rng.uniform(0.5, 2, 4)
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    m.eval()
    x = make_x(rng, (5, 4, 3), np.float32)
    y = m(x)
    assert np.array_equal(m.running_mean, rm) and np.array_equal(m.running_var, rv)
    assert_close(y, batch_norm_eval_ref(x, rm, rv, m.weight, m.bias)[0], tol=tol(F32))
    if torch is not None:
        yt = lnorm.GroupNorm(2, 4)(torch.from_numpy(x))
        assert isinstance(yt, torch.Tensor)
        assert_close(yt.numpy(), group_norm_ref(x, 2)[0], tol=tol(F32))


# ----------------------------------------------------------------------------------------------
# Hostile arguments: the right exception, naming the argument; nothing modified


@pytest.fixture
def x4():
    return np.random.default_rng(23).standard_normal((2, 4, 3, 5)).astype(np.float32)


def _all_forwards(x, **kw):
    """The four forward calls, as (name, function of keyword arguments)."""
    c = x.shape[kw.get("channel_axis", 1)] if abs(kw.get("channel_axis", 1)) < x.ndim else 4
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    return [("group_norm", lambda **k: lnorm.group_norm(x, 2, **{**kw, **k})),
            ("instance_norm", lambda **k: lnorm.instance_norm(x, **{**kw, **k})),
            ("batch_norm train", lambda **k: lnorm.batch_norm(x, rm, rv, training=True, **{**kw, **k})),
            ("batch_norm eval", lambda **k: lnorm.batch_norm(x, rm, rv, **{**kw, **k}))]


def test_bad_x():
    for bad, exc in ((None, TypeError), ("abc", TypeError), (np.zeros((2, 4), np.int32), TypeError),
                     (np.zeros((2, 4), np.complex64), TypeError), (np.zeros(4, np.float32), ValueError),
                     (np.float32(1.0), ValueError)):
        raises_naming(exc, "x", lnorm.group_norm, bad, 2)
        raises_naming(exc, "x", lnorm.instance_norm, bad)
        raises_naming(exc, "x", lnorm.batch_norm, bad, training=True)
        raises_naming(exc, "x", lnorm.batch_norm, bad, np.zeros(4, np.float32), np.ones(4, np.float32))


@pytest.mark.parametrize("g,exc", [(0, ValueError), (-1, ValueError), (-4, ValueError), (3, ValueError),
                                   (8, ValueError), (2**70, ValueError), (2.0, TypeError), (True, TypeError),
                                   (None, TypeError), ("2", TypeError), (np.float64(2), TypeError)],
                         ids=str)
def test_bad_num_groups(x4, g, exc):
    check = watch(x4)
    raises_naming(exc, "num_groups", lnorm.group_norm, x4, g)
    dy = np.ones_like(x4)
    mean, rstd = np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32)
    raises_naming(exc, "num_groups", lnorm.group_norm_backward, dy, x4, mean, rstd, num_groups=g)
    check()
    assert lnorm.group_norm(x4, np.int64(2)).shape == x4.shape  # NumPy integers are ints


@pytest.mark.parametrize("ca,exc", [(0, ValueError), (-4, ValueError), (4, ValueError), (-5, ValueError),
                                    (10**30, ValueError), (1.0, TypeError), ("1", TypeError), (True, TypeError),
                                    (None, TypeError), ((1,), TypeError)], ids=str)
def test_bad_channel_axis(x4, ca, exc):
    for name, f in _all_forwards(x4):
        raises_naming(exc, "channel_axis", f, channel_axis=ca)
    dy = np.ones_like(x4)
    raises_naming(exc, "channel_axis", lnorm.group_norm_backward, dy, x4, np.zeros((2, 2), np.float32),
                  np.ones((2, 2), np.float32), num_groups=2, channel_axis=ca)
    raises_naming(exc, "channel_axis", lnorm.instance_norm_backward, dy, x4, np.zeros((2, 4), np.float32),
                  np.ones((2, 4), np.float32), channel_axis=ca)
    raises_naming(exc, "channel_axis", lnorm.batch_norm_backward, dy, x4, np.zeros(4, np.float32),
                  np.ones(4, np.float32), channel_axis=ca)


def test_bad_weight_and_bias(x4):
    for name, f in _all_forwards(x4):
        for arg in ("weight", "bias"):
            raises_naming(ValueError, arg, f, **{arg: np.ones(5, np.float32)})
            raises_naming(ValueError, arg, f, **{arg: np.ones((1, 4), np.float32)})
            raises_naming(ValueError, arg, f, **{arg: np.ones(3 * 5, np.float32)})  # spatial size, not C
            raises_naming(TypeError, arg, f, **{arg: np.ones(4, np.int64)})
            raises_naming(TypeError, arg, f, **{arg: np.ones(4, np.float64)})  # neither x's nor float32
        f(weight=[1.0, 2.0, 3.0, 4.0])  # a list is fine (NumPy's asarray)
    # a weight for the NHWC layout is (C,) of the last axis
    raises_naming(ValueError, "weight", lnorm.group_norm, x4, 1, np.ones(4, np.float32), channel_axis=-1)


def test_bad_out(x4):
    for name, f in _all_forwards(x4):
        raises_naming(ValueError, "out", f, out=np.empty((2, 4, 3, 6), np.float32))
        raises_naming(TypeError, "out", f, out=np.empty(x4.shape, np.float64))
        ro = np.empty_like(x4)
        ro.flags.writeable = False
        raises_naming(ValueError, "out", f, out=ro)
        raises_naming(TypeError, "out", f, out=[[0.0]])
    # out overlapping x partially: refused, nothing written
    buf = np.random.default_rng(24).standard_normal((3, 4, 3, 5)).astype(np.float32)
    before = buf.copy()
    for name, f in _all_forwards(buf[:2]):
        raises_naming(ValueError, "out", f, out=buf[1:])
        raises_naming(ValueError, "out", f, out=buf[::-1][:2])
    assert np.array_equal(buf, before), "a refused call wrote into memory"
    flat = np.random.default_rng(25).standard_normal(2 * 4 * 15 + 1).astype(np.float32)
    for name, f in _all_forwards(flat[:-1].reshape(2, 4, 3, 5)):
        raises_naming(ValueError, "out", f, out=flat[1:].reshape(2, 4, 3, 5))


def test_bad_activation_eps_momentum(x4):
    for name, f in _all_forwards(x4):
        raises_naming(ValueError, "activation", f, activation="gelu")
        raises_naming(ValueError, "activation", f, activation="SiLU ")
        raises_naming(TypeError, "activation", f, activation=1)
        for eps in (-1.0, -1e-30, float("nan"), float("inf")):
            raises_naming(ValueError, "eps", f, eps=eps)
        raises_naming(TypeError, "eps", f, eps="1e-5")
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    for mom in (float("nan"), float("inf"), -float("inf")):
        raises_naming(ValueError, "momentum", lnorm.batch_norm, x4, rm, rv, training=True, momentum=mom)
    raises_naming(TypeError, "momentum", lnorm.batch_norm, x4, rm, rv, training=True, momentum="0.1")
    raises_naming(TypeError, "training", lnorm.batch_norm, x4, rm, rv, training=1)
    assert np.array_equal(rm, np.zeros(4)) and np.array_equal(rv, np.ones(4)), "a refused call moved the stats"


def test_bad_running_stats(x4):
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    raises_naming(ValueError, "running_mean", lnorm.batch_norm, x4)
    raises_naming(ValueError, "running_mean", lnorm.batch_norm, x4, None, rv)
    raises_naming(ValueError, "running_var", lnorm.batch_norm, x4, rm, None)
    for training in (False, True):
        raises_naming(ValueError, "running_mean", lnorm.batch_norm, x4, np.zeros(5, np.float32), rv, training=training)
        raises_naming(ValueError, "running_var", lnorm.batch_norm, x4, rm, np.ones((1, 4), np.float32), training=training)
        raises_naming(TypeError, "running_mean", lnorm.batch_norm, x4, np.zeros(4, np.int32), rv, training=training)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    raises_naming(ValueError, "running_mean", lnorm.batch_norm, x4, ro, rv.copy(), training=True)
    assert np.array_equal(rv, np.ones(4))
    lnorm.batch_norm(x4, ro, rv)  # eval reads them only: read-only is fine


def test_bad_backward_arguments(x4):
    dy = np.ones_like(x4)
    g_stats = (np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32))
    i_stats = (np.zeros((2, 4), np.float32), np.ones((2, 4), np.float32))
    b_stats = (np.zeros(4, np.float32), np.ones(4, np.float32))
    calls = [(lambda dy, x, m, r, w=None, **k: lnorm.group_norm_backward(dy, x, m, r, w, num_groups=2, **k), g_stats),
             (lnorm.instance_norm_backward, i_stats), (lnorm.batch_norm_backward, b_stats)]
    for f, (m, r) in calls:
        check = watch(dy, x4, m, r)
        raises_naming(ValueError, "mean", f, dy, x4, np.zeros((2, 3), np.float32), r)
        raises_naming(ValueError, "rstd", f, dy, x4, m, np.ones(m.shape + (1,), np.float32))
        raises_naming(ValueError, "mean", f, dy, x4, m.ravel()[:1], r)
        raises_naming(TypeError, "rstd", f, dy, x4, m, r.astype(np.int32))
        raises_naming(ValueError, "dy", f, dy[:, :, :2], x4, m, r)
        raises_naming(TypeError, "dy", f, dy.astype(np.float64), x4, m, r)
        raises_naming(ValueError, "weight", f, dy, x4, m, r, np.ones(5, np.float32))
        raises_naming(TypeError, "x", f, dy, None, m, r)
        raises_naming(ValueError, "x", f, dy[0, 0, 0], x4[0, 0, 0], m, r)  # 1-D
        check()
    with pytest.raises(TypeError):  # num_groups is required (keyword-only)
        lnorm.group_norm_backward(dy, x4, *g_stats)


def test_inputs_not_modified():
    """Nothing the caller passes is written, except out and (training) the running statistics."""
    rng = np.random.default_rng(26)
    x = make_x(rng, (3, 8, 5), np.float32)
    w, b = make_params(rng, 8, np.float32)
    dy = make_x(rng, x.shape, np.float32)
    rm, rv = make_running(rng, 8, F32)
    check = watch(x, w, b, dy, rm, rv)
    for kind in KINDS:
        _, mean, rstd = forward(kind, x, w, b, groups=4, return_stats=True, activation="relu",
                                rm=rm if kind == "batch_eval" else rm.copy(), rv=rv if kind == "batch_eval" else rv.copy())
        if kind != "batch_eval":
            check2 = watch(mean, rstd)
            backward(kind, dy, x, mean, rstd, w, groups=4)
            check2()
    check()
