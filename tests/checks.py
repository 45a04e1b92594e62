"""Comparisons that call lnorm and hold it to the float64 reference: forward with stats, backward
from lnorm's own stats; each also checks dtypes, shapes and that the inputs were left intact."""

import platform

import numpy as np
import pytest

import lnorm
from reference import (assert_close, dx_scale, keep_shape, layer_norm_backward_ref,
                       layer_norm_ref, norm_axes, param_grad_scale, param_shape,
                       rms_norm_backward_ref, rms_norm_ref, tol_for)


def possible_isas():
    """Every kernel set a build for this machine's architecture can carry, worst first. Tests
    parametrize over these, not over lnorm.available_isas(), so that a kernel set this CPU or build
    lacks shows as a skip (see require_isa) instead of silently having no cases."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return ("scalar", "avx2", "avx512")
    if machine in ("aarch64", "arm64"):
        return ("scalar", "neon")
    return ("scalar",)


def isa_setting():
    """What set_isa takes to restore the present setting: the forced set, or "auto" (the CPU's choice,
    with the policy's per-op choice, which a forced set would override)."""
    config = lnorm.config()
    return config["isa"] if config["isa_forced"] else "auto"


def require_isa(isa):
    """Skip (with the reason in -ra) when kernel set `isa` cannot run here."""
    available = lnorm.available_isas()
    if isa not in available:
        pytest.skip(f"kernel set {isa!r} is not available on this CPU/build (available: {available})")


def watch(*arrays):
    """Snapshot the ndarray arguments; the returned function asserts they are unchanged."""
    snap = [(a, a.copy()) for a in arrays if isinstance(a, np.ndarray)]

    def check():
        for a, before in snap:
            assert np.array_equal(a, before, equal_nan=True), "an input array was modified"
    return check


def stats_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def check_layer_norm(x, weight, bias, axis, eps, *, tol=None):
    """Call lnorm.layer_norm with and without stats; compare y, mean, rstd to the reference."""
    dtype = np.asarray(x).dtype
    axes = norm_axes(np.ndim(x), axis)
    check = watch(x, weight, bias)
    y, mean, rstd = lnorm.layer_norm(x, weight, bias, axis=axis, eps=eps, return_stats=True)
    y_only = lnorm.layer_norm(x, weight, bias, axis=axis, eps=eps)
    check()
    y_ref, mean_ref, rstd_ref = layer_norm_ref(x, weight, bias, axis, eps)
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == x.shape
    assert mean.shape == rstd.shape == keep_shape(x.shape, axes)
    assert mean.dtype == rstd.dtype == stats_dtype(dtype)
    assert np.array_equal(y, y_only, equal_nan=True), "return_stats changed y"
    t = tol if tol is not None else tol_for(dtype)
    assert_close(y, y_ref, tol=t, what="y")
    xs = float(np.abs(np.asarray(x, np.float64)).max(initial=0.0))
    assert_close(mean, mean_ref, tol=t, scale=xs, what="mean")
    assert_close(rstd, rstd_ref, tol=t, scale=0.0, what="rstd")
    return y, mean, rstd


def check_rms_norm(x, weight, axis, eps, *, tol=None):
    dtype = np.asarray(x).dtype
    axes = norm_axes(np.ndim(x), axis)
    check = watch(x, weight)
    y, rstd = lnorm.rms_norm(x, weight, axis=axis, eps=eps, return_stats=True)
    y_only = lnorm.rms_norm(x, weight, axis=axis, eps=eps)
    check()
    y_ref, rstd_ref = rms_norm_ref(x, weight, axis, eps)
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == x.shape
    assert rstd.shape == keep_shape(x.shape, axes) and rstd.dtype == stats_dtype(dtype)
    assert np.array_equal(y, y_only, equal_nan=True), "return_stats changed y"
    t = tol if tol is not None else tol_for(dtype)
    assert_close(y, y_ref, tol=t, what="y")
    assert_close(rstd, rstd_ref, tol=t, scale=0.0, what="rstd")
    return y, rstd


def check_ln_backward(dy, x, weight, axis, eps, *, tol=None):
    """Forward with stats, then backward; compare (dx, dweight, dbias) to the analytic reference
    evaluated on the same stats. Returns lnorm's grads."""
    dtype = x.dtype
    axes = norm_axes(x.ndim, axis)
    pshape = param_shape(x.shape, axes)
    _, mean, rstd = lnorm.layer_norm(x, weight, None, axis=axis, eps=eps, return_stats=True)
    check = watch(dy, x, mean, rstd, weight)
    dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, weight, axis=axis)
    check()
    dx_r, dw_r, db_r = layer_norm_backward_ref(dy, x, mean, rstd, weight, axis)
    pdtype = np.asarray(weight).dtype if weight is not None else dtype
    assert isinstance(dx, np.ndarray) and dx.dtype == dtype and dx.shape == x.shape
    assert isinstance(db, np.ndarray) and db.shape == pshape and db.dtype == pdtype
    t = tol if tol is not None else tol_for(dtype)
    m64, r64 = np.asarray(mean, np.float64), np.asarray(rstd, np.float64)
    xhat_abs = np.abs((np.asarray(x, np.float64) - m64) * r64)
    assert_close(dx, dx_r, tol=t, scale=dx_scale(dy, x, rstd, weight, axis, mean), what="dx")
    tp = max(t, tol_for(pdtype))  # dweight/dbias are rounded to the weight's dtype
    assert_close(db, db_r, tol=tp, scale=param_grad_scale(dy, xhat_abs, axes), what="dbias")
    if weight is None:
        assert dw is None
    else:
        assert isinstance(dw, np.ndarray) and dw.shape == pshape and dw.dtype == pdtype
        assert_close(dw, dw_r, tol=tp, scale=param_grad_scale(dy, xhat_abs, axes),
                     what="dweight")
    return dx, dw, db


def check_rms_backward(dy, x, weight, axis, eps, *, tol=None):
    dtype = x.dtype
    axes = norm_axes(x.ndim, axis)
    pshape = param_shape(x.shape, axes)
    _, rstd = lnorm.rms_norm(x, weight, axis=axis, eps=eps, return_stats=True)
    check = watch(dy, x, rstd, weight)
    dx, dw = lnorm.rms_norm_backward(dy, x, rstd, weight, axis=axis)
    check()
    dx_r, dw_r = rms_norm_backward_ref(dy, x, rstd, weight, axis)
    pdtype = np.asarray(weight).dtype if weight is not None else dtype
    assert isinstance(dx, np.ndarray) and dx.dtype == dtype and dx.shape == x.shape
    t = tol if tol is not None else tol_for(dtype)
    xhat_abs = np.abs(np.asarray(x, np.float64) * np.asarray(rstd, np.float64))
    assert_close(dx, dx_r, tol=t, scale=dx_scale(dy, x, rstd, weight, axis), what="dx")
    if weight is None:
        assert dw is None
    else:
        assert isinstance(dw, np.ndarray) and dw.shape == pshape and dw.dtype == pdtype
        assert_close(dw, dw_r, tol=max(t, tol_for(pdtype)),
                     scale=param_grad_scale(dy, xhat_abs, axes), what="dweight")
    return dx, dw
