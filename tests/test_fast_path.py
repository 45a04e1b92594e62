"""The two shortcuts of the Python layer: the native fast path of the common call (C-contiguous x,
last axis, weight/bias of x's dtype) and the cache of large output buffers. Both must give exactly
what the general path gives, and the cache must never hand out memory that a caller can still see."""

import gc

import numpy as np
import pytest

import lnorm
from lnorm import _buffers
from reference import assert_close, layer_norm_ref, rms_norm_ref

FAST_DTYPES = [np.float32, np.float64, np.float16]
try:
    import ml_dtypes

    BF16 = [np.dtype(ml_dtypes.bfloat16)]
except ImportError:
    BF16 = []
FORWARD_FAST_DTYPES = FAST_DTYPES + BF16  # bfloat16 through its uint16 view


def general(fn, x, *params, **kw):
    """The same call through the general path: a one-element axis tuple skips the fast path."""
    return fn(x, *params, axis=(x.ndim - 1,), **kw)


@pytest.mark.parametrize("dtype", FORWARD_FAST_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 17), (2, 3, 768), (33, 4099)])
@pytest.mark.parametrize("affine", [False, True])
def test_fast_path_matches_general_path(dtype, shape, affine):
    rng = np.random.default_rng(sum(shape) + affine)
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    cols = shape[-1]
    w = rng.standard_normal(cols).astype(dtype) if affine else None
    b = rng.standard_normal(cols).astype(dtype) if affine else None
    saved = x.copy()
    y = lnorm.layer_norm(x, w, b)
    np.testing.assert_array_equal(y, general(lnorm.layer_norm, x, w, b))
    assert_close(y, layer_norm_ref(x, w, b, -1, 1e-5)[0], dtype)
    r = lnorm.rms_norm(x, w)
    np.testing.assert_array_equal(r, general(lnorm.rms_norm, x, w))
    assert_close(r, rms_norm_ref(x, w, -1, 1e-6)[0], dtype)
    np.testing.assert_array_equal(x, saved)
    assert y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous and y.flags.writeable


@pytest.mark.parametrize("dtype", FORWARD_FAST_DTYPES)
def test_fast_path_out_and_in_place(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 33)).astype(dtype)
    w, b = rng.standard_normal(33).astype(dtype), rng.standard_normal(33).astype(dtype)
    expected = general(lnorm.layer_norm, x, w, b)
    out = np.full_like(x, np.nan)
    assert lnorm.layer_norm(x, w, b, out=out) is out
    np.testing.assert_array_equal(out, expected)
    inplace = x.copy()
    assert lnorm.layer_norm(inplace, w, b, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, expected)
    assert lnorm.rms_norm(inplace, w, out=inplace) is inplace


@pytest.mark.skipif(not BF16, reason="needs ml_dtypes")
def test_bfloat16_takes_the_fast_path(monkeypatch):
    """bfloat16 arrays (which NumPy cannot export as buffers) reach the native fast path as uint16
    views; the general path is not called. A uint16 array is no bfloat16: a TypeError, as before."""
    from lnorm import _functional

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 768)).astype(BF16[0])
    w, b = rng.standard_normal((2, 768)).astype(BF16[0])
    expected = general(lnorm.layer_norm, x, w, b), general(lnorm.rms_norm, x, w)

    def general_path(*args):
        raise AssertionError("the general path was taken")

    with monkeypatch.context() as m:
        m.setattr(_functional, "_forward", general_path)
        np.testing.assert_array_equal(lnorm.layer_norm(x, w, b).view(np.uint16), expected[0].view(np.uint16))
        np.testing.assert_array_equal(lnorm.rms_norm(x, w).view(np.uint16), expected[1].view(np.uint16))
        out = np.empty_like(x)
        assert lnorm.layer_norm(x, w, b, out=out) is out
        assert lnorm.layer_norm(x).dtype == x.dtype
    with pytest.raises(TypeError, match="x"):
        lnorm.layer_norm(x.view(np.uint16))
    with pytest.raises(TypeError, match="weight"):
        lnorm.layer_norm(x, w.view(np.uint16))
    with pytest.raises(TypeError, match="out"):
        lnorm.layer_norm(x, out=np.empty(x.shape, np.uint16))
    np.testing.assert_array_equal(lnorm.layer_norm(x, w.astype(np.float32)).view(np.uint16),
                                  general(lnorm.layer_norm, x, w.astype(np.float32)).view(np.uint16))


class Subclass(np.ndarray):
    pass


def test_calls_the_fast_path_declines_are_still_right():
    """Each of these leaves the fast path; the general path must give the same numbers or the
    same error it always gave."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w32 = rng.standard_normal(64).astype(np.float32)
    expected = lnorm.layer_norm(x, w32)
    # Non-contiguous x, a list weight, an int eps, numpy-integer axis, a subclass, float32 weight
    # with float16 x: all fine, through the general path.
    np.testing.assert_array_equal(lnorm.layer_norm(np.asfortranarray(x), w32), expected)
    np.testing.assert_array_equal(lnorm.layer_norm(x, list(w32)), expected)
    np.testing.assert_array_equal(lnorm.layer_norm(x, w32, eps=0), lnorm.layer_norm(x, w32, eps=0.0))
    np.testing.assert_array_equal(lnorm.layer_norm(x, w32, axis=np.int64(-1)), expected)
    np.testing.assert_array_equal(np.asarray(lnorm.layer_norm(x.view(Subclass), w32)), expected)
    x16 = x.astype(np.float16)
    assert_close(lnorm.layer_norm(x16, w32), layer_norm_ref(x16, w32, None, -1, 1e-5)[0], np.float16)
    # Errors the fast path must not swallow.
    with pytest.raises(ValueError, match="eps"):
        lnorm.layer_norm(x, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        lnorm.layer_norm(x, eps=float("nan"))
    with pytest.raises(ValueError, match="weight"):
        lnorm.layer_norm(x, w32[:63])
    with pytest.raises(TypeError, match="weight"):
        lnorm.layer_norm(x, w32.astype(np.float64))
    with pytest.raises(ValueError, match="out"):
        lnorm.layer_norm(x, out=np.empty((4, 63), np.float32))
    with pytest.raises(TypeError, match="out"):
        lnorm.layer_norm(x, out=np.empty((4, 64), np.float64))
    with pytest.raises(ValueError, match="out"):
        big = np.zeros((5, 64), np.float32)
        lnorm.layer_norm(big[:4], out=big[1:])  # partial overlap
    readonly = np.empty_like(x)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        lnorm.layer_norm(x, out=readonly)
    with pytest.raises(ValueError, match="axis"):
        lnorm.layer_norm(np.empty((3, 0), np.float32))


@pytest.mark.parametrize("dtype", FAST_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 17), (2, 3, 768), (33, 1025)])
@pytest.mark.parametrize("affine", [False, True])
def test_fast_backward_matches_general_path(dtype, shape, affine):
    rng = np.random.default_rng(sum(shape) + 7 * affine)
    x = (rng.standard_normal(shape) * 2 + 4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype) if affine else None
    _, mean, rstd = lnorm.layer_norm(x, w, return_stats=True)
    saved = [a.copy() for a in (x, dy, mean, rstd)]
    fast = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
    slow = general(lambda x_, *p, **kw: lnorm.layer_norm_backward(dy, x_, mean, rstd, w, **kw), x)
    assert len(fast) == 3 and (fast[1] is None) == (not affine)
    for a, b in zip(fast, slow):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    _, rrstd = lnorm.rms_norm(x, w, return_stats=True)
    fast = lnorm.rms_norm_backward(dy, x, rrstd, w)
    slow = general(lambda x_, **kw: lnorm.rms_norm_backward(dy, x_, rrstd, w, **kw), x)
    assert len(fast) == 2
    np.testing.assert_array_equal(fast[0], slow[0])
    if affine:
        np.testing.assert_array_equal(fast[1], slow[1])
    for a, b in zip((x, dy, mean, rstd), saved):
        np.testing.assert_array_equal(a, b)


def test_backward_calls_the_fast_path_declines_are_still_right():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 40))
    dy = rng.standard_normal((6, 40))
    _, mean, rstd = lnorm.layer_norm(x, return_stats=True)
    expected = lnorm.layer_norm_backward(dy, x, mean, rstd)
    # float32 statistics for float64 data, and statistics without keepdims' shape are refused or
    # converted exactly as before.
    got = lnorm.layer_norm_backward(dy, x, mean.astype(np.float32), rstd.astype(np.float32))
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mean"):
        lnorm.layer_norm_backward(dy, x, mean.ravel(), rstd)
    with pytest.raises(ValueError, match="rstd"):
        lnorm.layer_norm_backward(dy, x, mean, rstd[:5])
    with pytest.raises(TypeError, match="dy"):
        lnorm.layer_norm_backward(dy.astype(np.float32), x, mean, rstd)
    with pytest.raises(ValueError, match="dy"):
        lnorm.layer_norm_backward(dy[:, :39], x, mean, rstd)
    with pytest.raises(ValueError, match="weight"):
        lnorm.layer_norm_backward(dy, x, mean, rstd, np.ones(39))
    np.testing.assert_array_equal(lnorm.layer_norm_backward(np.asfortranarray(dy), x, mean, rstd)[0], expected[0])


# ----------------------------------------------------------------------------------------------
# The buffer cache

LARGE = (_buffers.MIN_BYTES // 4 // 1024, 1024)  # float32, exactly the cache's minimum size


@pytest.fixture
def cache():
    saved = _buffers.limit
    lnorm.set_buffer_cache(256 << 20)
    gc.collect()
    yield
    lnorm.set_buffer_cache(saved)


def large_input(seed=3):
    return np.random.default_rng(seed).standard_normal(LARGE, dtype=np.float32)


def address(a):
    return a.__array_interface__["data"][0]


def test_cache_reuses_a_dropped_output(cache):
    x = large_input()
    y = lnorm.layer_norm(x)
    first, expected = address(y), y.copy()
    del y
    y2 = lnorm.layer_norm(x)
    assert address(y2) == first
    np.testing.assert_array_equal(y2, expected)
    assert y2.flags.c_contiguous and y2.flags.writeable and y2.shape == LARGE and y2.dtype == np.float32


def test_cache_never_hands_out_memory_in_view(cache):
    x = large_input()
    y = lnorm.layer_norm(x)
    keep = y[::7, 3:]  # a view keeps the buffer busy after y is gone
    snapshot = keep.copy()
    del y
    others = [lnorm.layer_norm(x * 2), lnorm.rms_norm(x)]
    for o in others:
        assert not np.shares_memory(o, keep)
    np.testing.assert_array_equal(keep, snapshot)
    dx, dw, db = lnorm.layer_norm_backward(x, x, *lnorm.layer_norm(x, return_stats=True)[1:])
    assert not np.shares_memory(dx, keep) and not any(np.shares_memory(dx, o) for o in others)
    np.testing.assert_array_equal(keep, snapshot)


def test_cache_with_two_outputs_alive(cache):
    x, r = large_input(4), large_input(5)
    y, s = lnorm.add_layer_norm(x, r)
    assert not np.shares_memory(y, s)
    np.testing.assert_array_equal(s, x + r)
    y1 = lnorm.layer_norm(x)
    y2 = lnorm.layer_norm(x)  # y1 still alive: a different buffer
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, y2)


def test_cache_limit_and_off_switch(cache):
    x = large_input()
    lnorm.set_buffer_cache(0)
    assert lnorm.config()["buffer_cache"] == 0 and _buffers.cached_bytes() == 0
    y = lnorm.layer_norm(x)
    first = address(y)
    assert y.base is None or y.base.nbytes == y.nbytes  # a plain NumPy allocation
    del y
    assert _buffers.cached_bytes() == 0
    lnorm.set_buffer_cache(x.nbytes)  # room for one buffer: the second live output is not cached
    y1, y2 = lnorm.layer_norm(x), lnorm.layer_norm(x)
    assert _buffers.cached_bytes() <= x.nbytes
    del first, y1, y2
    with pytest.raises(ValueError, match="nbytes"):
        lnorm.set_buffer_cache(-1)
    with pytest.raises(TypeError, match="nbytes"):
        lnorm.set_buffer_cache(1.5)


def test_cache_with_torch_tensor_views(cache):
    torch = pytest.importorskip("torch")
    x = large_input()
    t = torch.from_numpy(lnorm.layer_norm(x))  # the tensor holds the only reference
    snapshot = t.clone()
    for _ in range(3):
        assert not np.shares_memory(lnorm.layer_norm(x * 3), t.numpy())
    assert torch.equal(t, snapshot)
