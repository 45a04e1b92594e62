"""LayerNorm / RMSNorm modules: parameters and defaults, agreement with the functional API and the
reference, backward and its gradients, and agreement with torch.nn."""

import numpy as np
import pytest

import lnorm
from reference import (assert_close, layer_norm_backward_ref, layer_norm_ref, max_rel_err,
                       rand_param, rand_x, rms_norm_backward_ref, rms_norm_ref)


def _trailing(k, ndim):
    return tuple(range(ndim - k, ndim))


# ----------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("shape", [8, (8,), (3, 5)], ids=str)
def test_layer_norm_parameters(shape):
    pshape = (shape,) if isinstance(shape, int) else tuple(shape)
    m = lnorm.LayerNorm(shape)
    assert isinstance(m.weight, np.ndarray) and m.weight.dtype == np.float32
    assert m.weight.shape == pshape and (m.weight == 1).all()
    assert isinstance(m.bias, np.ndarray) and m.bias.dtype == np.float32
    assert m.bias.shape == pshape and (m.bias == 0).all()
    m = lnorm.LayerNorm(shape, dtype=np.float64)
    assert m.weight.dtype == m.bias.dtype == np.float64
    m = lnorm.LayerNorm(shape, bias=False)
    assert m.bias is None and m.weight.shape == pshape
    m = lnorm.LayerNorm(shape, elementwise_affine=False)
    assert m.weight is None and m.bias is None


@pytest.mark.parametrize("shape", [8, (8,), (3, 5)], ids=str)
def test_rms_norm_parameters(shape):
    pshape = (shape,) if isinstance(shape, int) else tuple(shape)
    m = lnorm.RMSNorm(shape)
    assert isinstance(m.weight, np.ndarray) and m.weight.dtype == np.float32
    assert m.weight.shape == pshape and (m.weight == 1).all()
    m = lnorm.RMSNorm(shape, dtype=np.float64)
    assert m.weight.dtype == np.float64
    m = lnorm.RMSNorm(shape, elementwise_affine=False)
    assert m.weight is None


def test_module_default_eps():
    """LayerNorm's eps defaults to 1e-5, RMSNorm's to 1e-6 (visible at variance ~1e-6)."""
    rng = np.random.default_rng(80)
    x = (rng.standard_normal((4, 64)) * 1e-3).astype(np.float64)
    y = lnorm.LayerNorm(64, dtype=np.float64)(x)
    assert_close(y, layer_norm_ref(x, eps=1e-5)[0], np.float64)
    assert max_rel_err(y, layer_norm_ref(x, eps=1e-6)[0]) > 1e-3
    y = lnorm.RMSNorm(64, dtype=np.float64)(x)
    assert_close(y, rms_norm_ref(x, eps=1e-6)[0], np.float64)
    assert max_rel_err(y, rms_norm_ref(x, eps=1e-5)[0]) > 1e-3
    y = lnorm.LayerNorm(64, eps=0.5, dtype=np.float64)(x)
    assert_close(y, layer_norm_ref(x, eps=0.5)[0], np.float64)
    y = lnorm.RMSNorm(64, eps=0.5, dtype=np.float64)(x)
    assert_close(y, rms_norm_ref(x, eps=0.5)[0], np.float64)


# ----------------------------------------------------------------------------------------------
# Forward and backward against the functional API / reference


MODULE_CASES = [((5, 16), 16), ((2, 3, 33), (33,)), ((2, 3, 4, 5), (4, 5)), ((7,), 7),
                ((3, 2, 4), (3, 2, 4))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape,nshape", MODULE_CASES, ids=[str(c) for c in MODULE_CASES])
def test_layer_norm_module(xshape, nshape, dtype):
    rng = np.random.default_rng([len(xshape), 81])
    k = 1 if isinstance(nshape, int) else len(nshape)
    axes = _trailing(k, len(xshape))
    m = lnorm.LayerNorm(nshape, eps=1e-4, dtype=dtype)
    w = rand_param(rng, m.weight.shape, dtype)
    b = rand_param(rng, m.bias.shape, dtype, center=0.0)
    m.weight[...] = w
    m.bias[...] = b
    x = rand_x(rng, xshape, dtype)
    y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, lnorm.layer_norm(x, w, b, axis=axes, eps=1e-4), dtype)
    y_ref, mean, rstd = layer_norm_ref(x, w, b, axes, 1e-4)
    assert_close(y, y_ref, dtype)

    for _ in range(2):  # twice: gradients are overwritten, not accumulated
        dy = rand_x(rng, xshape, dtype)
        dx = m.backward(dy)
        dx_r, dw_r, db_r = layer_norm_backward_ref(dy, x, mean, rstd, w, axes)
        assert dx.dtype == dtype and dx.shape == x.shape
        sc = float(np.abs(dy).sum(axis=tuple(range(len(xshape) - k))).max()) * 4
        assert_close(dx, dx_r, dtype, scale=float(np.abs(dx_r).max()) * 4, what="dx")
        assert m.weight_grad.shape == m.bias_grad.shape == m.weight.shape
        assert_close(m.weight_grad, dw_r, dtype, scale=sc, what="weight_grad")
        assert_close(m.bias_grad, db_r, dtype, scale=sc, what="bias_grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape,nshape", MODULE_CASES, ids=[str(c) for c in MODULE_CASES])
def test_rms_norm_module(xshape, nshape, dtype):
    rng = np.random.default_rng([len(xshape), 82])
    k = 1 if isinstance(nshape, int) else len(nshape)
    axes = _trailing(k, len(xshape))
    m = lnorm.RMSNorm(nshape, eps=1e-4, dtype=dtype)
    w = rand_param(rng, m.weight.shape, dtype)
    m.weight[...] = w
    x = rand_x(rng, xshape, dtype)
    y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, lnorm.rms_norm(x, w, axis=axes, eps=1e-4), dtype)
    y_ref, rstd = rms_norm_ref(x, w, axes, 1e-4)
    assert_close(y, y_ref, dtype)

    for _ in range(2):
        dy = rand_x(rng, xshape, dtype)
        dx = m.backward(dy)
        dx_r, dw_r = rms_norm_backward_ref(dy, x, rstd, w, axes)
        assert dx.dtype == dtype and dx.shape == x.shape
        assert_close(dx, dx_r, dtype, scale=float(np.abs(dx_r).max()) * 4, what="dx")
        sc = float(np.abs(dy).sum(axis=tuple(range(len(xshape) - k))).max()
                   * np.abs(x * rstd).max())
        assert m.weight_grad.shape == m.weight.shape
        assert_close(m.weight_grad, dw_r, dtype, scale=sc, what="weight_grad")


def test_module_without_affine_and_without_bias():
    rng = np.random.default_rng(83)
    x = rand_x(rng, (4, 20), np.float32)
    dy = rand_x(rng, (4, 20), np.float32)
    m = lnorm.LayerNorm(20, elementwise_affine=False)
    assert_close(m(x), layer_norm_ref(x)[0], np.float32)
    _, mean, rstd = layer_norm_ref(x)
    assert_close(m.backward(dy), layer_norm_backward_ref(dy, x, mean, rstd)[0], np.float32)

    m = lnorm.LayerNorm(20, bias=False)
    m.weight[...] = rand_param(rng, (20,), np.float32)
    assert_close(m(x), layer_norm_ref(x, m.weight)[0], np.float32)
    dx = m.backward(dy)
    dx_r, dw_r, _ = layer_norm_backward_ref(dy, x, mean, rstd, m.weight)
    assert_close(dx, dx_r, np.float32)
    assert_close(m.weight_grad, dw_r, np.float32, scale=float(np.abs(dy).sum(0).max()) * 4)

    m = lnorm.RMSNorm(20, elementwise_affine=False)
    y_r, rstd = rms_norm_ref(x)
    assert_close(m(x), y_r, np.float32)
    assert_close(m.backward(dy), rms_norm_backward_ref(dy, x, rstd)[0], np.float32)


def test_module_backward_uses_last_forward():
    rng = np.random.default_rng(84)
    m = lnorm.LayerNorm(12)
    x1, x2 = rand_x(rng, (3, 12), np.float32), rand_x(rng, (5, 12), np.float32)
    dy = rand_x(rng, (5, 12), np.float32)
    m(x1)
    m(x2)
    _, mean, rstd = layer_norm_ref(x2)
    dx = m.backward(dy)
    assert dx.shape == x2.shape
    assert_close(dx, layer_norm_backward_ref(dy, x2, mean, rstd)[0], np.float32)


def test_module_leaves_input_alone():
    rng = np.random.default_rng(85)
    for m in (lnorm.LayerNorm(9), lnorm.RMSNorm(9)):
        x = rand_x(rng, (3, 9), np.float32)
        dy = rand_x(rng, (3, 9), np.float32)
        xc, dyc = x.copy(), dy.copy()
        m(x)
        x_after_forward = x.copy()
        m.backward(dy)
        assert np.array_equal(x, xc) and np.array_equal(x_after_forward, xc)
        assert np.array_equal(dy, dyc)


def test_module_float64_input_float32_params():
    """A float32 module applied to float64 x: float64 result, float32 parameter gradients."""
    rng = np.random.default_rng(86)
    x = rand_x(rng, (4, 10), np.float64)
    dy = rand_x(rng, (4, 10), np.float64)
    m = lnorm.LayerNorm(10)
    y = m(x)
    assert y.dtype == np.float64
    assert_close(y, layer_norm_ref(x, m.weight, m.bias)[0], np.float64)
    dx = m.backward(dy)
    assert dx.dtype == np.float64
    assert m.weight_grad.dtype == m.bias_grad.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# torch.nn


TORCH_MODULE_CASES = [((6, 32), (32,)), ((2, 3, 4, 17), (4, 17)), ((5, 1025), (1025,))]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape,nshape", TORCH_MODULE_CASES,
                         ids=[str(c) for c in TORCH_MODULE_CASES])
def test_layer_norm_module_against_torch(xshape, nshape, dtype):
    torch = pytest.importorskip("torch")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rng = np.random.default_rng([len(xshape), 87])
    w = rand_param(rng, nshape, dtype)
    b = rand_param(rng, nshape, dtype, center=0.0)
    x = rand_x(rng, xshape, dtype)
    dy = rand_x(rng, xshape, dtype)

    tm = torch.nn.LayerNorm(nshape, eps=1e-5, dtype=tdt)
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(w))
        tm.bias.copy_(torch.from_numpy(b))
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt)
    yt.backward(torch.from_numpy(dy))

    m = lnorm.LayerNorm(nshape, eps=1e-5, dtype=dtype)
    m.weight[...] = w
    m.bias[...] = b
    y = m(x)
    dx = m.backward(dy)
    k = len(nshape)
    sc = float(np.abs(dy).sum(axis=tuple(range(len(xshape) - k))).max()) * 4
    tol = 3e-5 if dtype == np.float32 else 1e-12
    assert_close(y, yt.detach().numpy(), tol=tol, what="y")
    assert_close(dx, xt.grad.numpy(), tol=tol, what="dx")
    assert_close(m.weight_grad, tm.weight.grad.numpy(), tol=tol, scale=sc, what="weight_grad")
    assert_close(m.bias_grad, tm.bias.grad.numpy(), tol=tol, scale=sc, what="bias_grad")


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape,nshape", TORCH_MODULE_CASES,
                         ids=[str(c) for c in TORCH_MODULE_CASES])
def test_rms_norm_module_against_torch(xshape, nshape, dtype):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.nn, "RMSNorm"):
        pytest.skip("torch has no nn.RMSNorm")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rng = np.random.default_rng([len(xshape), 88])
    w = rand_param(rng, nshape, dtype)
    x = rand_x(rng, xshape, dtype)
    dy = rand_x(rng, xshape, dtype)

    tm = torch.nn.RMSNorm(nshape, eps=1e-6, dtype=tdt)
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(w))
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt)
    yt.backward(torch.from_numpy(dy))

    m = lnorm.RMSNorm(nshape, dtype=dtype)  # default eps 1e-6
    m.weight[...] = w
    y = m(x)
    dx = m.backward(dy)
    k = len(nshape)
    sc = float(np.abs(dy).sum(axis=tuple(range(len(xshape) - k))).max()) * 4
    tol = 3e-5 if dtype == np.float32 else 1e-12
    assert_close(y, yt.detach().numpy(), tol=tol, what="y")
    assert_close(dx, xt.grad.numpy(), tol=tol, what="dx")
    assert_close(m.weight_grad, tm.weight.grad.numpy(), tol=tol, scale=sc, what="weight_grad")
