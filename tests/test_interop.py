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
# eps of the order of the data's variance (~1): an eps lost on the way changes nearly every output.
EPS = 0.5


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


# ----------------------------------------------------------------------------------------------
# Tensors and NumPy arrays give the same bits: the tensor path is only a view on the NumPy one, so
# every argument must reach the kernels unchanged (an eps dropped on the way is far inside any
# tolerance against a reference at the default eps, but not inside an exact comparison).


def _as_numpy(t):
    """A NumPy view of a CPU tensor; bfloat16 as ml_dtypes.bfloat16, through its int16 bits."""
    if t.dtype == torch.bfloat16:
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _same_bits(got, expect, what):
    assert isinstance(got, torch.Tensor), f"{what}: a {type(got).__name__}, not a tensor"
    g = _as_numpy(got)
    assert g.dtype == expect.dtype and g.shape == expect.shape, (what, g.dtype, g.shape)
    u = np.dtype(f"u{expect.dtype.itemsize}")
    differ = g.view(u) != expect.view(u)
    if differ.any():
        i = tuple(int(k) for k in np.argwhere(differ)[0])
        raise AssertionError(f"{what}: {differ.sum()} of {differ.size} elements differ from the NumPy "
                             f"call's bits, first at {i}: tensor {g[i]!r}, NumPy {expect[i]!r}")


def _inputs(dtype):
    """x, residual, dy (variance ~1), weight, bias, bias_in: tensors of `dtype`."""
    g = torch.Generator().manual_seed(int(dtype.itemsize))
    x, r, dy = (torch.randn(6, 5, 77, generator=g).to(dtype) for _ in range(3))
    w, b, bias_in = (torch.randn(77, generator=g).to(dtype) for _ in range(3))
    return dict(x=x, r=r, dy=dy, w=w, b=b, bias_in=bias_in)


def _forward(name, a, outs=None, eps=EPS):
    """The public forward `name` on the arrays of dict `a` (tensors or NumPy), with stats and
    without, with out=/residual_out= from `outs` (a function giving an output like x) if given."""
    o = (lambda: outs(a["x"])) if outs else (lambda: None)
    if name == "layer_norm":
        return (lnorm.layer_norm(a["x"], a["w"], a["b"], eps=eps, out=o()),
                *lnorm.layer_norm(a["x"], a["w"], a["b"], eps=eps, out=o(), return_stats=True))
    if name == "rms_norm":
        return (lnorm.rms_norm(a["x"], a["w"], eps=eps, out=o()),
                *lnorm.rms_norm(a["x"], a["w"], eps=eps, out=o(), return_stats=True))
    if name == "add_layer_norm":
        return (*lnorm.add_layer_norm(a["x"], a["r"], a["w"], a["b"], eps=eps, bias_in=a["bias_in"],
                                      out=o(), residual_out=o()),
                *lnorm.add_layer_norm(a["x"], a["r"], a["w"], a["b"], eps=eps, out=o(),
                                      residual_out=o(), return_stats=True))
    assert name == "add_rms_norm"
    return (*lnorm.add_rms_norm(a["x"], a["r"], a["w"], eps=eps, bias_in=a["bias_in"], out=o(),
                                residual_out=o()),
            *lnorm.add_rms_norm(a["x"], a["r"], a["w"], eps=eps, out=o(), residual_out=o(),
                                return_stats=True))


FORWARDS = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]


@pytest.mark.parametrize("out", [False, True], ids=["allocated", "out"])
@pytest.mark.parametrize("name", FORWARDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_tensors_match_numpy_bit_for_bit(dtype, name, out):
    """Every forward call on tensors, with an eps that matters (and out= tensors, which must be
    the objects returned), gives the bits of the same call on NumPy views of the same data."""
    t = _inputs(dtype)
    n = {k: _as_numpy(v) for k, v in t.items()}
    before = {k: v.clone() for k, v in t.items()}
    outs = []

    def make_out(x):
        outs.append(torch.empty_like(x))
        return outs[-1]

    got = _forward(name, t, make_out if out else None)
    expect = _forward(name, n)
    assert len(got) == len(expect)
    for i, (g, e) in enumerate(zip(got, expect)):
        _same_bits(g, e, f"{name}, output {i}")
    if out:  # every out= tensor passed in came back as itself, in order
        returned = [g for g in got if g.shape == t["x"].shape]
        assert len(returned) == len(outs) and all(g is o for g, o in zip(returned, outs))
    assert all(torch.equal(t[k], before[k]) for k in t), "an input tensor was modified"
    # and eps matters here: a small eps gives other values in most places
    small = _forward(name, n, eps=1e-6)[0].astype(np.float64)
    assert np.mean(small != expect[0].astype(np.float64)) > 0.5


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm_backward", "rms_norm_backward"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_tensors_match_numpy_bit_for_bit(dtype, rms):
    """The backward calls on tensors (stats as tensors, from a forward at eps = 0.5) give the
    bits of the same calls on NumPy views, with and without weight."""
    t = _inputs(dtype)
    n = {k: _as_numpy(v) for k, v in t.items()}
    if rms:
        _, rstd = lnorm.rms_norm(n["x"], n["w"], eps=EPS, return_stats=True)
        stats = (rstd,)
        fn = lnorm.rms_norm_backward
    else:
        _, mean, rstd = lnorm.layer_norm(n["x"], n["w"], n["b"], eps=EPS, return_stats=True)
        stats = (mean, rstd)
        fn = lnorm.layer_norm_backward
    tstats = tuple(torch.from_numpy(s) for s in stats)
    for w in ("w", None):
        got = fn(t["dy"], t["x"], *tstats, t[w] if w else None)
        expect = fn(n["dy"], n["x"], *stats, n[w] if w else None)
        assert len(got) == len(expect)
        for i, (g, e) in enumerate(zip(got, expect)):
            if e is None:
                assert g is None, f"output {i}"
            else:
                _same_bits(g, e, f"{fn.__name__} (weight {w}), output {i}")
