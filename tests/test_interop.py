"""Arrays from PyTorch through DLPack: results come back as tensors of the input's dtype, without
copies of the inputs, for float32, float64, float16 and bfloat16 (which NumPy cannot import by
DLPack: it travels as its bits)."""

import numpy as np
import pytest

import lnorm

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _ref_layer_norm(x, w, b, eps):
    return torch.nn.functional.layer_norm(x.double(), (x.shape[-1],), w.double(), b.double(), eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_on_tensors(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 5, 77, generator=g) * 2 + 1).to(dtype)
    w = torch.randn(77, generator=g).to(dtype)
    b = torch.randn(77, generator=g).to(dtype)
    x_before = x.clone()
    y, mean, rstd = lnorm.layer_norm(x, w, b, return_stats=True)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert mean.shape == (6, 5, 1)
    assert torch.equal(x, x_before)
    err = (y.double() - _ref_layer_norm(x, w, b, 1e-5)).abs().max().item()
    assert err <= TOL[dtype] * 4
    dy = torch.randn(x.shape, generator=g).to(dtype)
    dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
    assert all(isinstance(t, torch.Tensor) for t in (dx, dw, db))
    assert dx.dtype == dtype and dw.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_out_tensor_is_written_and_returned(dtype):
    x = torch.randn(4, 33).to(dtype)
    out = torch.empty_like(x)
    assert lnorm.rms_norm(x, out=out) is out
    ref = torch.nn.functional.rms_norm(x.double(), (33,), eps=1e-6)
    assert (out.double() - ref).abs().max().item() <= TOL[dtype] * 4
    y, s = lnorm.add_layer_norm(x, x, out=torch.empty_like(x), residual_out=torch.empty_like(x))
    assert isinstance(y, torch.Tensor) and isinstance(s, torch.Tensor)


def test_strided_and_grad_tensors():
    """Views with any strides are read in place; tensors that require grad are read (lnorm does not
    record autograd history)."""
    base = torch.randn(8, 40, 64, requires_grad=True)
    x = base[:, ::3, 1::2].transpose(0, 1)
    y = lnorm.layer_norm(x, axis=(1, 2))
    assert isinstance(y, torch.Tensor) and y.shape == x.shape
    x64 = x.detach().double()
    m = x64.mean(dim=(1, 2), keepdim=True)
    v = ((x64 - m) ** 2).mean(dim=(1, 2), keepdim=True)
    assert (y.double() - (x64 - m) / torch.sqrt(v + 1e-5)).abs().max().item() < 2e-5


def test_mixed_numpy_weight_with_tensor_input():
    x = torch.randn(3, 16)
    w = np.full(16, 2.0, np.float32)
    y = lnorm.layer_norm(x, w)
    assert isinstance(y, torch.Tensor)
    assert torch.allclose(y, 2 * torch.nn.functional.layer_norm(x, (16,)), atol=1e-5)
