"""layer_norm_backward / rms_norm_backward against the analytic float64 reference, central finite
differences of lnorm's own forward, and torch autograd; plus strides, axes, dtypes, NaN rows and
empty batches."""

import numpy as np
import pytest

import lnorm
from checks import check_ln_backward, check_rms_backward
from reference import (SIZES, assert_close, keep_shape, layer_norm_backward_ref, layer_norm_ref,
                       norm_axes, param_shape, rand_param, rand_x, rms_norm_backward_ref,
                       rms_norm_ref, strided_view)

FLOATS = (np.float32, np.float64)


# ----------------------------------------------------------------------------------------------
# Against the analytic reference


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_layer_norm_backward_sizes(dtype, n, seed):
    rng = np.random.default_rng([seed, n, 51])
    rows = int(rng.integers(1, 7))
    x = rand_x(rng, (rows, n), dtype)
    dy = rand_x(rng, (rows, n), dtype)
    w = rand_param(rng, (n,), dtype) if seed == 1 else None
    eps = float(rng.choice([1e-6, 1e-5, 1e-3, 0.1, 1.0, 10.0] + ([0.0] if n > 1 else [])))
    check_ln_backward(dy, x, w, -1, eps)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_rms_norm_backward_sizes(dtype, n, seed):
    rng = np.random.default_rng([seed, n, 52])
    rows = int(rng.integers(1, 7))
    x = rand_x(rng, (rows, n), dtype)
    dy = rand_x(rng, (rows, n), dtype)
    w = rand_param(rng, (n,), dtype) if seed == 1 else None
    eps = float(rng.choice([0.0, 1e-6, 1e-5, 1e-3, 0.1, 1.0, 10.0]))
    check_rms_backward(dy, x, w, -1, eps)


def _backward_cases(rng, dtype):
    """(name, x, dy, axis) with strided and non-trailing layouts."""
    return [
        ("cols::3", strided_view(rng, (5, 40), dtype, (1, 3)),
         strided_view(rng, (5, 40), dtype, (1, -1)), -1),
        ("rows::-2", strided_view(rng, (6, 65), dtype, (-2, 1)), rand_x(rng, (6, 65), dtype), -1),
        ("transposed", rand_x(rng, (33, 6), dtype).T, rand_x(rng, (6, 33), dtype), -1),
        ("axis0", rand_x(rng, (129, 5), dtype), rand_x(rng, (5, 129), dtype).T, 0),
        ("nchw axis1", rand_x(rng, (2, 7, 3, 4), dtype), rand_x(rng, (2, 7, 3, 4), dtype), 1),
        ("axes(1,2)", strided_view(rng, (3, 5, 6), dtype, (1, 2, -1)),
         rand_x(rng, (3, 5, 6), dtype), (1, 2)),
        ("axes(0,2)", rand_x(rng, (4, 3, 17), dtype), rand_x(rng, (4, 3, 17), dtype), (0, 2)),
        ("axes(-2,-1)", rand_x(rng, (2, 3, 4, 5), dtype), rand_x(rng, (2, 3, 4, 5), dtype),
         (-2, -1)),
        ("all axes", rand_x(rng, (3, 4, 5), dtype), rand_x(rng, (3, 4, 5), dtype), (0, 1, 2)),
        ("misaligned", strided_view(rng, (4, 31), dtype, (1, 1), misalign=5),
         rand_x(rng, (4, 31), dtype), -1),
    ]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", FLOATS)
def test_backward_strides_and_axes(dtype, seed):
    rng = np.random.default_rng([seed, 53])
    for name, x, dy, axis in _backward_cases(rng, dtype):
        pshape = param_shape(x.shape, norm_axes(x.ndim, axis))
        w = rand_param(rng, pshape, dtype)
        wv = rand_param(rng, (2,) + pshape, dtype)[1]  # a view with an offset
        try:
            check_ln_backward(dy, x, w, axis, 1e-5)
            check_ln_backward(dy, x, None, axis, 1e-5)
            check_rms_backward(dy, x, wv, axis, 1e-6)
            check_rms_backward(dy, x, None, axis, 1e-6)
        except AssertionError as e:
            raise AssertionError(f"case {name!r}: {e}") from e


# Batches of more than 32K elements per 32K-element chunk: dgamma/dbeta are summed per fixed chunk of
# rows (at most 64) and the chunks reduced in order, the case the small sizes above never reach;
# power-of-two widths (the partials' stride then maps them all to one cache set) and odd ones.
@pytest.mark.parametrize("shape", [(256, 1024), (64, 16384), (70, 4099), (3000, 33)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_backward_parameter_grads_over_many_chunks(dtype, shape):
    rng = np.random.default_rng([shape[0], shape[1], 56])
    x = rand_x(rng, shape, dtype)
    dy = rand_x(rng, shape, dtype)
    w = rand_param(rng, (shape[1],), dtype)
    check_ln_backward(dy, x, w, -1, 1e-5)
    check_rms_backward(dy, x, w, -1, 1e-6)


def test_backward_float32_weight_with_float64_input():
    """dweight/dbias take weight's dtype; without weight, x's dtype."""
    rng = np.random.default_rng(54)
    x = rand_x(rng, (5, 33), np.float64)
    dy = rand_x(rng, (5, 33), np.float64)
    w = rand_param(rng, (33,), np.float32)
    dx, dw, db = check_ln_backward(dy, x, w, -1, 1e-5)
    assert dx.dtype == np.float64 and dw.dtype == np.float32 and db.dtype == np.float32
    dx, dw, db = check_ln_backward(dy, x, None, -1, 1e-5)
    assert dw is None and db.dtype == np.float64
    dx, dw = check_rms_backward(dy, x, w, -1, 1e-6)
    assert dx.dtype == np.float64 and dw.dtype == np.float32


def test_backward_float32_stats_with_float64_input():
    """float32 mean/rstd are accepted for float64 x and used as given."""
    rng = np.random.default_rng(55)
    x = rand_x(rng, (4, 65), np.float64)
    dy = rand_x(rng, (4, 65), np.float64)
    w = rand_param(rng, (65,), np.float64)
    _, mean, rstd = layer_norm_ref(x, eps=1e-5)
    m32, r32 = mean.astype(np.float32), rstd.astype(np.float32)
    dx, dw, db = lnorm.layer_norm_backward(dy, x, m32, r32, w)
    dx_r, dw_r, db_r = layer_norm_backward_ref(dy, x, m32, r32, w)
    assert dx.dtype == np.float64
    assert_close(dx, dx_r, np.float64)
    assert_close(dw, dw_r, np.float64)
    assert_close(db, db_r, np.float64)
    dx, dw = lnorm.rms_norm_backward(dy, x, r32, w)
    dx_r, dw_r = rms_norm_backward_ref(dy, x, r32, w)
    assert_close(dx, dx_r, np.float64)
    assert_close(dw, dw_r, np.float64)


def test_backward_uses_given_stats():
    """The stats passed in are what backward uses (not recomputed from x)."""
    rng = np.random.default_rng(56)
    x = rand_x(rng, (3, 16), np.float64)
    dy = rand_x(rng, (3, 16), np.float64)
    _, mean, rstd = layer_norm_ref(x)
    mean2, rstd2 = mean + 0.25 * np.abs(x).max(), rstd * 1.5
    dx, dw, db = lnorm.layer_norm_backward(dy, x, mean2, rstd2)
    assert_close(dx, layer_norm_backward_ref(dy, x, mean2, rstd2)[0], np.float64)
    dx, dw = lnorm.rms_norm_backward(dy, x, rstd2)
    assert_close(dx, rms_norm_backward_ref(dy, x, rstd2)[0], np.float64)


def test_backward_constant_rows():
    rng = np.random.default_rng(57)
    x = np.repeat(rng.standard_normal((4, 1)), 33, axis=1).astype(np.float32)
    dy = rand_x(rng, (4, 33), np.float32)
    w = rand_param(rng, (33,), np.float32)
    _, mean, rstd = lnorm.layer_norm(x, w, None, eps=1e-5, return_stats=True)
    dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
    assert np.isfinite(dx).all() and np.isfinite(dw).all()
    dx_r, dw_r, db_r = layer_norm_backward_ref(dy, x, mean, rstd, w)
    assert_close(dx, dx_r, np.float32)
    assert_close(dw, dw_r, np.float32, scale=float(np.abs(dy).sum(0).max()))


@pytest.mark.parametrize("n", [7, 64, 1025])
def test_backward_float16(n):
    rng = np.random.default_rng([n, 58])
    x = (rng.standard_normal((3, n)) + 0.5).astype(np.float16)
    dy = rng.standard_normal((3, n)).astype(np.float16)
    w = rand_param(rng, (n,), np.float16)
    _, mean, rstd = lnorm.layer_norm(x, w, None, return_stats=True)
    dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
    assert dx.dtype == np.float16 and dx.shape == x.shape
    assert dw.dtype == db.dtype == np.float16 and dw.shape == db.shape == (n,)
    dx_r = layer_norm_backward_ref(dy, x, mean, rstd, w)[0]
    assert_close(dx, dx_r, tol=2e-3, scale=float(np.abs(dx_r).max()))
    _, rstd = lnorm.rms_norm(x, w, return_stats=True)
    dx, dw = lnorm.rms_norm_backward(dy, x, rstd, w)
    assert dx.dtype == np.float16 and dx.shape == x.shape
    dx_r = rms_norm_backward_ref(dy, x, rstd, w)[0]
    assert_close(dx, dx_r, tol=2e-3, scale=float(np.abs(dx_r).max()))


# ----------------------------------------------------------------------------------------------
# Central finite differences of lnorm's own forward (float64)


def _fd_grad(f, a, h=1e-6):
    """Central differences of scalar f with respect to every element of array a (in place)."""
    g = np.zeros(a.shape)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def _fd_cases(rng):
    return [
        ("trailing", rng.standard_normal((3, 7)) + 0.5, -1),
        ("axis1 nchw", rng.standard_normal((2, 3, 2, 2)), 1),
        ("axes(0,2)", rng.standard_normal((2, 3, 4)), (0, 2)),
        ("axes(-2,-1)", rng.standard_normal((2, 3, 4)) - 1.0, (-2, -1)),
        ("strided", (rng.standard_normal((3, 10)) * 2)[:, ::-2], -1),
        ("transposed axis0", rng.standard_normal((5, 3)).T.copy().T, 0),
    ]


@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_layer_norm_backward_finite_differences(eps):
    rng = np.random.default_rng([int(eps * 10), 59])
    for name, x, axis in _fd_cases(rng):
        axes = norm_axes(x.ndim, axis)
        pshape = param_shape(x.shape, axes)
        w = 1 + 0.5 * rng.standard_normal(pshape)
        b = 0.5 * rng.standard_normal(pshape)
        gout = rng.standard_normal(x.shape)

        def loss():
            return float((lnorm.layer_norm(x, w, b, axis=axis, eps=eps) * gout).sum())

        _, mean, rstd = lnorm.layer_norm(x, w, b, axis=axis, eps=eps, return_stats=True)
        dx, dw, db = lnorm.layer_norm_backward(gout, x, mean, rstd, w, axis=axis)
        # FD perturbs x in place: use a writable copy with x's layout
        fx, fw, fb = _fd_grad(loss, x), _fd_grad(loss, w), _fd_grad(loss, b)
        for what, a, e in (("dx", dx, fx), ("dweight", dw, fw), ("dbias", db, fb)):
            assert_close(a, e, tol=1e-6, what=f"{name} {what}")


@pytest.mark.parametrize("eps", [1e-6, 0.3])
def test_rms_norm_backward_finite_differences(eps):
    rng = np.random.default_rng([int(eps * 10), 60])
    for name, x, axis in _fd_cases(rng):
        axes = norm_axes(x.ndim, axis)
        w = 1 + 0.5 * rng.standard_normal(param_shape(x.shape, axes))
        gout = rng.standard_normal(x.shape)

        def loss():
            return float((lnorm.rms_norm(x, w, axis=axis, eps=eps) * gout).sum())

        _, rstd = lnorm.rms_norm(x, w, axis=axis, eps=eps, return_stats=True)
        dx, dw = lnorm.rms_norm_backward(gout, x, rstd, w, axis=axis)
        fx, fw = _fd_grad(loss, x), _fd_grad(loss, w)
        assert_close(dx, fx, tol=1e-6, what=f"{name} dx")
        assert_close(dw, fw, tol=1e-6, what=f"{name} dweight")


def test_finite_differences_detect_a_wrong_gradient():
    """The FD check is sharp enough to catch a gradient that drops the mean(g*xhat) term."""
    rng = np.random.default_rng(61)
    x = rng.standard_normal((2, 6))
    gout = rng.standard_normal(x.shape)
    fx = _fd_grad(lambda: float((layer_norm_ref(x)[0] * gout).sum()), x)
    _, mean, rstd = layer_norm_ref(x)
    g = gout
    wrong = rstd * (g - g.mean(-1, keepdims=True))
    with pytest.raises(AssertionError):
        assert_close(wrong, fx, tol=1e-6)
    assert_close(layer_norm_backward_ref(gout, x, mean, rstd)[0], fx, tol=1e-6)


# ----------------------------------------------------------------------------------------------
# Against torch autograd (float64)


def _to_trailing(a, axes):
    """Move the normalized axes (in increasing order) to the end."""
    k = len(axes)
    return np.moveaxis(a, axes, tuple(range(a.ndim - k, a.ndim)))


TORCH_CASES = [((4, 33), -1), ((2, 3, 17), (1, 2)), ((2, 5, 3, 4), 1), ((3, 4, 5), (0, 2)),
               ((6, 1025), -1), ((7,), 0)]


@pytest.mark.torch
@pytest.mark.parametrize("shape,axis", TORCH_CASES, ids=[str(c) for c in TORCH_CASES])
def test_layer_norm_against_torch(shape, axis):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng([len(shape), 62])
    axes = norm_axes(len(shape), axis)
    pshape = param_shape(shape, axes)
    x = rng.standard_normal(shape) * 3 + 1
    w = 1 + 0.5 * rng.standard_normal(pshape)
    b = 0.5 * rng.standard_normal(pshape)
    gout = rng.standard_normal(shape)
    eps = 1e-5

    xt = torch.tensor(_to_trailing(x, axes), requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.layer_norm(xt, pshape, wt, bt, eps)
    (yt * torch.tensor(_to_trailing(gout, axes))).sum().backward()
    k = len(axes)
    y_torch = np.moveaxis(yt.detach().numpy(), tuple(range(x.ndim - k, x.ndim)), axes)
    dx_torch = np.moveaxis(xt.grad.numpy(), tuple(range(x.ndim - k, x.ndim)), axes)

    y, mean, rstd = lnorm.layer_norm(x, w, b, axis=axis, eps=eps, return_stats=True)
    dx, dw, db = lnorm.layer_norm_backward(gout, x, mean, rstd, w, axis=axis)
    assert_close(y, y_torch, np.float64, what="y")
    assert_close(dx, dx_torch, np.float64, what="dx")
    assert_close(dw, wt.grad.numpy(), np.float64, what="dweight")
    assert_close(db, bt.grad.numpy(), np.float64, what="dbias")


@pytest.mark.torch
@pytest.mark.parametrize("shape,axis", TORCH_CASES, ids=[str(c) for c in TORCH_CASES])
def test_rms_norm_against_torch(shape, axis):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.nn.functional, "rms_norm"):
        pytest.skip("torch has no rms_norm")
    rng = np.random.default_rng([len(shape), 63])
    axes = norm_axes(len(shape), axis)
    pshape = param_shape(shape, axes)
    x = rng.standard_normal(shape) * 3 + 1
    w = 1 + 0.5 * rng.standard_normal(pshape)
    gout = rng.standard_normal(shape)
    eps = 1e-6

    xt = torch.tensor(_to_trailing(x, axes), requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.rms_norm(xt, pshape, wt, eps)
    (yt * torch.tensor(_to_trailing(gout, axes))).sum().backward()
    k = len(axes)
    y_torch = np.moveaxis(yt.detach().numpy(), tuple(range(x.ndim - k, x.ndim)), axes)
    dx_torch = np.moveaxis(xt.grad.numpy(), tuple(range(x.ndim - k, x.ndim)), axes)

    y, rstd = lnorm.rms_norm(x, w, axis=axis, eps=eps, return_stats=True)
    dx, dw = lnorm.rms_norm_backward(gout, x, rstd, w, axis=axis)
    assert_close(y, y_torch, np.float64, what="y")
    assert_close(dx, dx_torch, np.float64, what="dx")
    assert_close(dw, wt.grad.numpy(), np.float64, what="dweight")


# ----------------------------------------------------------------------------------------------
# NaN rows and empty batches


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_backward_nan_row(dtype, bad):
    rng = np.random.default_rng(64)
    n = 37
    clean = rand_x(rng, (5, n), dtype)
    dy = rand_x(rng, (5, n), dtype)
    w = rand_param(rng, (n,), dtype)
    x = clean.copy()
    x[2, 11] = bad
    others = [0, 1, 3, 4]

    _, m_c, r_c = lnorm.layer_norm(clean, w, None, return_stats=True)
    _, m, r = lnorm.layer_norm(x, w, None, return_stats=True)
    dx_c = lnorm.layer_norm_backward(dy, clean, m_c, r_c, w)[0]
    dx = lnorm.layer_norm_backward(dy, x, m, r, w)[0]
    assert np.isnan(dx[2]).any(), f"layer_norm_backward: row with {bad} gave {dx[2][:6]}"
    assert np.array_equal(dx[others], dx_c[others])
    assert_close(dx[others],
                 layer_norm_backward_ref(dy, clean, m_c, r_c, w)[0][others], dtype, what="dx")

    _, r_c = lnorm.rms_norm(clean, w, return_stats=True)
    _, r = lnorm.rms_norm(x, w, return_stats=True)
    dx_c = lnorm.rms_norm_backward(dy, clean, r_c, w)[0]
    dx = lnorm.rms_norm_backward(dy, x, r, w)[0]
    assert np.isnan(dx[2]).any(), f"rms_norm_backward: row with {bad} gave {dx[2][:6]}"
    assert np.array_equal(dx[others], dx_c[others])
    assert_close(dx[others], rms_norm_backward_ref(dy, clean, r_c, w)[0][others], dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_backward_empty_batch(dtype):
    for shape, axis in (((0, 8), -1), ((0, 3, 4), (1, 2)), ((2, 0, 5), -1)):
        axes = norm_axes(len(shape), axis)
        pshape = param_shape(shape, axes)
        x = np.empty(shape, dtype)
        dy = np.empty(shape, dtype)
        mean = np.empty(keep_shape(shape, axes), dtype)
        rstd = np.empty(keep_shape(shape, axes), dtype)
        w = np.ones(pshape, dtype)
        dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w, axis=axis)
        assert dx.shape == shape and dx.dtype == dtype
        assert dw.shape == db.shape == pshape
        assert np.array_equal(dw, np.zeros(pshape)) and np.array_equal(db, np.zeros(pshape))
        dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, axis=axis)
        assert dw is None and np.array_equal(db, np.zeros(pshape)) and db.dtype == dtype
        dx, dw = lnorm.rms_norm_backward(dy, x, rstd, w, axis=axis)
        assert dx.shape == shape and np.array_equal(dw, np.zeros(pshape))
        dx, dw = lnorm.rms_norm_backward(dy, x, rstd, axis=axis)
        assert dw is None


def test_backward_roundtrip_rows_independent():
    """dx of each row depends only on that row: computing rows separately gives the same dx."""
    rng = np.random.default_rng(65)
    x = rand_x(rng, (9, 100), np.float32)
    dy = rand_x(rng, (9, 100), np.float32)
    w = rand_param(rng, (100,), np.float32)
    _, m, r = lnorm.layer_norm(x, w, None, return_stats=True)
    dx, dw, db = lnorm.layer_norm_backward(dy, x, m, r, w)
    for i in (0, 4, 8):
        dxi, dwi, dbi = lnorm.layer_norm_backward(dy[i:i + 1], x[i:i + 1], m[i:i + 1],
                                                  r[i:i + 1], w)
        assert_close(dxi, dx[i:i + 1], np.float32)
    dw_sum = sum(lnorm.layer_norm_backward(dy[i:i + 1], x[i:i + 1], m[i:i + 1], r[i:i + 1],
                                           w)[1].astype(np.float64) for i in range(9))
    assert_close(dw, dw_sum, np.float32, scale=float(np.abs(dy).sum(0).max() * 3))
    rms_ref = rms_norm_ref(x, w)[1]
    dx_r = rms_norm_backward_ref(dy, x, rms_ref, w)[0]
    assert_close(lnorm.rms_norm_backward(dy, x, rms_ref.astype(np.float32), w)[0], dx_r,
                 np.float32, scale=float(np.abs(dx_r).max()) * 3)
