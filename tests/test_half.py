"""float16 and bfloat16: every operation on every kernel set against a float64 reference, with
weights in the data's dtype or float32, and conversions that round exactly like NumPy's."""

import numpy as np
import pytest

import lnorm
from checks import isa_setting, possible_isas, require_isa
from reference import (dx_scale, layer_norm_backward_ref, layer_norm_ref, param_grad_scale,
                       rms_norm_backward_ref, rms_norm_ref)

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
# Norm-wise error bounds: the rounding of the output type and nothing more.
BOUND = {F16: 1e-3, BF16: 6e-3}
SIZES = [1, 3, 7, 15, 16, 17, 31, 33, 64, 127, 257, 1000, 4099]


@pytest.fixture(params=possible_isas())
def isa(request):
    require_isa(request.param)
    before = isa_setting()
    lnorm.set_isa(request.param)
    yield request.param
    lnorm.set_isa(before)


def _norm_error(y, ref):
    """max |y - ref| over max(1, max |ref|), in float64."""
    y = np.asarray(y, np.float64)
    return float(np.abs(y - ref).max() / max(1.0, np.abs(ref).max()))


# What float32 arithmetic may add before the one rounding to 16 bits, as a fraction of the result's
# scale: float32 keeps 2**-24, and sums of up to a thousand terms lose a few hundred times that at
# worst. Far below a half-ulp of bfloat16 (2**-9) or float16 (2**-12).
F32_NOISE = 1e-5


def _assert_rounded(actual, exact, atol, what):
    """Each element of `actual` is `exact`, computed in float32 (within atol) and rounded once to
    actual's dtype: off by at most half a unit in the last place (of the binade above |actual|)
    plus atol. A result scaled by 1.01 or an eps lost on the way is off by several half-ulps."""
    a = np.asarray(actual)
    exact = np.asarray(exact, np.float64)
    assert a.shape == exact.shape, f"{what}: shape {a.shape}, expected {exact.shape}"
    half_ulp = np.spacing(np.abs(a)).astype(np.float64) / 2
    err = np.abs(a.astype(np.float64) - exact)
    bound = half_ulp * 1.0001 + atol
    bad = ~(err <= bound)  # NaN is bad too
    if bad.any():
        i = int(np.argmax(np.where(bad, np.nan_to_num(err / bound, nan=np.inf), 0)))
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} elements ({a.dtype}) are not the exact value rounded "
            f"once; worst at {tuple(int(k) for k in np.unravel_index(i, a.shape))}: got {float(a.flat[i])!r}, exact "
            f"{exact.flat[i]!r}, error {err.flat[i]:.3e} > half-ulp + atol = {bound.flat[i]:.3e}")


def _check_backward(dy, x, w, eps, what):
    """layer_norm_backward's dx, dweight, dbias and rms_norm_backward's dx, dweight, fed lnorm's own
    statistics at eps, against the float64 reference fed exact statistics at eps: each output the
    exact value rounded once (dx to x's dtype, dweight and dbias to the weight's)."""
    dtype, wdtype = x.dtype, w.dtype
    x64 = x.astype(np.float64)
    _, mean, rstd = lnorm.layer_norm(x, w, None, eps=eps, return_stats=True)
    _, mean_r, rstd_r = layer_norm_ref(x64, None, None, -1, eps)
    np.testing.assert_allclose(rstd, rstd_r, rtol=2e-6, err_msg=f"layer_norm rstd, {what}")
    dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
    assert dx.dtype == dtype and dw.dtype == wdtype and db.dtype == wdtype, what
    dx_r, dw_r, db_r = layer_norm_backward_ref(dy, x64, mean_r, rstd_r, w)
    pscale = param_grad_scale(dy, np.abs((x64 - mean_r) * rstd_r), (1,))
    _assert_rounded(dx, dx_r, F32_NOISE * dx_scale(dy, x64, rstd_r, w, -1, mean_r), f"layer_norm dx, {what}")
    _assert_rounded(dw, dw_r, F32_NOISE * pscale, f"layer_norm dweight, {what}")
    _assert_rounded(db, db_r, F32_NOISE * pscale, f"layer_norm dbias, {what}")
    _, rstd = lnorm.rms_norm(x, w, eps=eps, return_stats=True)
    rstd_r = rms_norm_ref(x64, None, -1, eps)[1]
    np.testing.assert_allclose(rstd, rstd_r, rtol=2e-6, err_msg=f"rms_norm rstd, {what}")
    dx, dw = lnorm.rms_norm_backward(dy, x, rstd, w)
    assert dx.dtype == dtype and dw.dtype == wdtype, what
    dx_r, dw_r = rms_norm_backward_ref(dy, x64, rstd_r, w)
    pscale = param_grad_scale(dy, np.abs(x64 * rstd_r), (1,))
    _assert_rounded(dx, dx_r, F32_NOISE * dx_scale(dy, x64, rstd_r, w), f"rms_norm dx, {what}")
    _assert_rounded(dw, dw_r, F32_NOISE * pscale, f"rms_norm dweight, {what}")


def _inputs(rng, shape, dtype, wdtype):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(wdtype)
    b = rng.standard_normal(shape[-1]).astype(wdtype)
    return x, w, b


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("weights", ["same", "float32"])
def test_forward_all_sizes(isa, dtype, weights):
    rng = np.random.default_rng(len(isa) + dtype.itemsize)
    wdtype = dtype if weights == "same" else np.float32
    for cols in SIZES:
        x, w, b = _inputs(rng, (5, cols), dtype, wdtype)
        y, mean, rstd = lnorm.layer_norm(x, w, b, return_stats=True)
        assert y.dtype == dtype and mean.dtype == np.float32 and rstd.dtype == np.float32
        ref, rmean, rrstd = layer_norm_ref(x, w, b, -1, 1e-5)
        assert _norm_error(y, ref) <= BOUND[dtype], (isa, cols)
        np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rstd, rrstd, rtol=1e-5)
        yr, rr = lnorm.rms_norm(x, w, return_stats=True)
        assert yr.dtype == dtype
        assert _norm_error(yr, rms_norm_ref(x, w, -1, 1e-6)[0]) <= BOUND[dtype], (isa, cols)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["rows", "columns", "gather"])
def test_forward_layouts(isa, dtype, layout):
    """Trailing rows, a non-trailing axis (column tiles) and a strided normalized axis (gathered)."""
    rng = np.random.default_rng(7)
    base = (rng.standard_normal((4, 70, 3, 37)) + 1).astype(dtype)
    x, axis = {"rows": (base, -1), "columns": (base, 1), "gather": (base[:, ::2, :, ::-3], (1, 3))}[layout]
    shape = tuple(x.shape[a] for a in np.atleast_1d(axis) % x.ndim)
    w = rng.standard_normal(shape).astype(np.float32)
    y = lnorm.layer_norm(x, w, axis=axis)
    assert _norm_error(y, layer_norm_ref(x, w, None, axis, 1e-5)[0]) <= BOUND[dtype]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("weights", ["same", "float32"])
def test_backward(isa, dtype, weights):
    """dx in the data's dtype, dweight/dbias in the weight's, accumulated in float32 and rounded
    once: every value of both backward calls within half an ulp of the float64 reference."""
    rng = np.random.default_rng(11)
    wdtype = np.dtype(dtype if weights == "same" else np.float32)
    for cols in (7, 64, 1000):
        x, w, _ = _inputs(rng, (33, cols), dtype, wdtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        _check_backward(dy, x, w, 1e-5, f"{isa}, {cols} columns")


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("weights", ["same", "float32"])
def test_eps_comparable_to_the_variance(isa, dtype, weights):
    """An eps of the order of the variance (0.25 to 10, against variances of 1 and 4) changes
    every output by far more than the dtype's rounding: forward (the fast path and the one with
    stats), RMS, the fused add and both backward calls, each within half an ulp of the float64
    reference at that eps."""
    rng = np.random.default_rng(21)
    wdtype = np.dtype(dtype if weights == "same" else np.float32)
    for eps, sd in ((0.25, 2.0), (1.0, 1.0), (4.0, 2.0), (10.0, 1.0)):
        for cols in (13, 1000):
            what = f"{isa}, eps={eps}, variance {sd ** 2}, {cols} columns"
            x, res, dy = ((rng.standard_normal((9, cols)) * sd + 0.5).astype(dtype) for _ in range(3))
            w = (1 + 0.5 * rng.standard_normal(cols)).astype(wdtype)
            b = rng.standard_normal(cols).astype(wdtype)
            s_exact = (x.astype(np.float32) + res.astype(np.float32)).astype(dtype)
            for name, y_ref, calls in [
                    ("layer_norm", layer_norm_ref(x, w, b, -1, eps)[0],
                     [lambda: lnorm.layer_norm(x, w, b, eps=eps),
                      lambda: lnorm.layer_norm(x, w, b, eps=eps, return_stats=True)[0]]),
                    ("rms_norm", rms_norm_ref(x, w, -1, eps)[0],
                     [lambda: lnorm.rms_norm(x, w, eps=eps),
                      lambda: lnorm.rms_norm(x, w, eps=eps, return_stats=True)[0]]),
                    ("add_layer_norm", layer_norm_ref(s_exact, w, b, -1, eps)[0],
                     [lambda: lnorm.add_layer_norm(x, res, w, b, eps=eps)]),
                    ("add_rms_norm", rms_norm_ref(s_exact, w, -1, eps)[0],
                     [lambda: lnorm.add_rms_norm(x, res, w, eps=eps)])]:
                for call in calls:
                    out = call()
                    if name.startswith("add_"):
                        out, s = out
                        np.testing.assert_array_equal(s.view(np.uint16), s_exact.view(np.uint16))
                    assert out.dtype == dtype
                    _assert_rounded(out, y_ref, F32_NOISE * max(1.0, np.abs(y_ref).max()), f"{name} y, {what}")
            _check_backward(dy, x, w, eps, what)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_fused_add_rounds_like_numpy(isa, dtype):
    """s = x + residual, computed in float32 and rounded to nearest even: the same bits as NumPy's
    own conversion, on every kernel set, ties, overflow, Inf and NaN included."""
    rng = np.random.default_rng(3)
    n = 4099
    x = rng.standard_normal((3, n)).astype(np.float32)
    r = rng.standard_normal((3, n)).astype(np.float32)
    if dtype == F16:
        x[0, :8] = [65504, 65504, -65504, 2.0 ** -24, 1.0, np.inf, np.nan, 0.0]
        r[0, :8] = [16, 65504, -32, 2.0 ** -25, 2.0 ** -11, 1.0, 1.0, -0.0]
    else:
        x[0, :6] = [1.0, 1.0, 3.0e38, np.inf, np.nan, -1.0]
        r[0, :6] = [2.0 ** -8, 3 * 2.0 ** -9, 3.0e38, -np.inf, 0.0, 2.0 ** -8]
    xh, rh = x.astype(dtype), r.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        expect = (xh.astype(np.float32) + rh.astype(np.float32)).astype(dtype)
    y, s = lnorm.add_layer_norm(xh, rh)
    assert s.dtype == dtype
    np.testing.assert_array_equal(s.view(np.uint16)[~np.isnan(expect)], expect.view(np.uint16)[~np.isnan(expect)])
    assert np.isnan(s[np.isnan(expect)]).all()
    # The two finite rows normalize within the dtype's rounding; the row with Inf/NaN is NaN.
    assert np.isnan(y[0]).all()
    ref = layer_norm_ref(expect[1:].astype(np.float64), None, None, -1, 1e-5)[0]
    assert _norm_error(y[1:], ref) <= BOUND[dtype]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("rows", [64, 8256], ids=["cached", "streamed"])  # 16.9 MB: streamed
def test_output_rounding_is_nearest_even(isa, dtype, rows):
    """y computed in float32 is rounded once, to nearest: within half a unit in the last place of
    the exact value, plus float32's own error (it shows near zero, where x - mean cancels, and near
    ties). So it equals NumPy's rounding of the float64 reference in all but a few elements. Also
    for outputs over 16 MiB, which take the streaming stores and their own rounding code."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, 1024)).astype(dtype)
    sample = np.r_[0, rng.choice(rows, 40, replace=False), rows - 1] if rows > 64 else slice(None)
    y = lnorm.layer_norm(x)[sample]
    exact = layer_norm_ref(x[sample], None, None, -1, 1e-5)[0]
    ref = exact.astype(np.float32).astype(dtype)
    assert np.mean(y.view(np.uint16) != ref.view(np.uint16)) < 0.01
    half_ulp = np.spacing(np.abs(y)).astype(np.float64) / 2  # the ulp of the binade above |y|
    assert (np.abs(y.astype(np.float64) - exact) <= half_ulp * 1.0001 + 1e-6).all()


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("weights", ["same", "float32"])
def test_nan_and_inf_weights_propagate(isa, dtype, weights):
    """NaN weights of any payload (largest, signaling, sign set) and infinite ones give NaN or Inf
    exactly where the float64 reference does, also on the streaming path (an output over 16 MiB),
    whose bfloat16 rounding relies on every NaN there coming from 16-bit data or being the default."""
    rng = np.random.default_rng(11)
    rows, n = 2100, 4099  # 17.2 MB of 16-bit output: streamed
    wdtype = dtype if weights == "same" else np.dtype(np.float32)
    x = (rng.standard_normal((rows, n)) + 0.5).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(n)).astype(wdtype)
    b = rng.standard_normal(n).astype(wdtype)
    if wdtype == F16:
        nan_bits = np.array([0x7FFF, 0xFFFF, 0x7E01, 0x7C01], np.uint16)  # the last one signaling
    elif wdtype == BF16:
        nan_bits = np.array([0x7FFF, 0xFFFF, 0x7FC0, 0x7F81], np.uint16)
    else:
        nan_bits = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FBFFFFF], np.uint32)
    nans = nan_bits.view(wdtype)
    assert np.isnan(nans.astype(np.float32)).all()
    w[[5, 700, 2049, 4098]] = nans
    b[[6, 701, 2050, 3000]] = nans
    w[[7, 1000]] = np.inf
    b[[7, 1001]] = -np.inf
    sample = np.r_[0, rng.choice(rows, 40, replace=False), rows - 1]  # rows checked against float64
    for fused in (False, True):
        # The fused call normalizes s = x + x, rounded to the dtype as the fused kernel rounds it.
        y, s = lnorm.add_layer_norm(x, x, w, b) if fused else (lnorm.layer_norm(x, w, b), None)
        xs = (x.astype(np.float32) * 2).astype(dtype) if fused else x
        if fused:  # s itself, streamed: NumPy's rounding of x + x, bit for bit
            np.testing.assert_array_equal(s.view(np.uint16), xs.view(np.uint16))
        y = y[sample]
        with np.errstate(invalid="ignore", over="ignore"):
            ref = layer_norm_ref(xs[sample], w.astype(np.float64), b.astype(np.float64), -1, 1e-5)[0].astype(dtype)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        inf = np.isinf(ref)
        np.testing.assert_array_equal(y[inf], ref[inf])
        finite = np.isfinite(ref)
        err = np.abs(y.astype(np.float64)[finite] - ref.astype(np.float64)[finite]).max()
        assert err <= BOUND[dtype] * max(1.0, np.abs(ref[finite].astype(np.float64)).max())


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_streamed_output_rounds_ties_like_numpy(isa, dtype):
    """Outputs over 16 MiB are rounded by the streaming stores' own code: with gamma = 0, y is beta
    (float32) rounded to the dtype, so ties, near-ties, overflow and tiny values must give NumPy's
    bits exactly, in every row."""
    rng = np.random.default_rng(8)
    rows, n = 8256, 1024  # 16.9 MB of output
    x = rng.standard_normal((rows, n)).astype(dtype)
    ulp = 2.0 ** (-10 if dtype == F16 else -7)
    ties = np.array([1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2), 2 + ulp, 1 + ulp / 2 + 2.0 ** -20, 1 + ulp / 2 - 2.0 ** -20,
                     65520.0 if dtype == F16 else 3.4e38, 2.0 ** -25, 3 * 2.0 ** -26, 1e-8, 0.1, -0.3])
    beta = np.resize(np.r_[ties, rng.standard_normal(n)], n).astype(np.float32)
    y = lnorm.layer_norm(x, np.zeros(n, np.float32), beta)
    with np.errstate(over="ignore"):
        expect = beta.astype(dtype)
    np.testing.assert_array_equal(y.view(np.uint16), np.broadcast_to(expect.view(np.uint16), y.shape))


@pytest.mark.parametrize("rows", [64, 8256], ids=["cached", "streamed"])  # 16.9 MB: streamed
def test_bfloat16_weights_round_ties_like_numpy(isa, rows):
    """bfloat16 rows with bfloat16 weights have their own load and store code (a pair of vectors
    holds the even and the odd elements). On rows of alternating -1 and 1 with eps = 0, y is exactly
    +-gamma + beta before rounding; with beta a half, a quarter or three quarters of gamma's last
    place, many outputs are ties. Every output must be NumPy's rounding, bit for bit, in its place."""
    rng = np.random.default_rng(9)
    n = 1024
    sign = np.where((np.arange(rows)[:, None] + np.arange(n)) % 2 == 0, 1.0, -1.0)
    x = sign.astype(BF16)
    gamma = (1 + rng.integers(0, 128, n) * 2.0 ** -7) * rng.choice([1.0, -1.0], n)
    beta = rng.choice([2.0 ** -8, -(2.0 ** -8), 3 * 2.0 ** -9, 2.0 ** -9, 0.0, 0.75], n)
    y = lnorm.layer_norm(x, gamma.astype(BF16), beta.astype(BF16), eps=0.0)
    exact = sign * gamma + beta  # exact in float64
    np.testing.assert_array_equal(y.view(np.uint16), exact.astype(BF16).view(np.uint16))
    assert np.mean(np.abs(exact) % 2.0 ** -7 == 2.0 ** -8) > 0.1  # ties are common


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("weights", ["same", "float32"])
@pytest.mark.parametrize("rows", [3, 2100], ids=["cached", "streamed"])  # 17.2 MB: streamed
def test_fused_add_with_bias_in(isa, dtype, weights, rows):
    """s = (x + bias_in) + residual, each sum in float32 and s rounded once: NumPy's bits, with
    bias_in in x's dtype or float32 (the first keeps bfloat16 on its own path); y normalizes s."""
    rng = np.random.default_rng(12)
    n = 4099
    wdtype = dtype if weights == "same" else np.dtype(np.float32)
    x = (rng.standard_normal((rows, n)) + 0.5).astype(dtype)
    res = rng.standard_normal((rows, n)).astype(dtype)
    w, b, bias_in = (rng.standard_normal((3, n)) * [[0.1], [1], [1]] + [[1], [0], [0]]).astype(wdtype)
    expect = ((x.astype(np.float32) + bias_in.astype(np.float32)) + res.astype(np.float32)).astype(dtype)
    sample = np.r_[0, rng.choice(rows, 20, replace=False), rows - 1] if rows > 3 else slice(None)
    for rms in (False, True):
        if rms:
            y, s = lnorm.add_rms_norm(x, res, w, bias_in=bias_in)
            ref = rms_norm_ref(expect[sample].astype(np.float64), w.astype(np.float64), -1, 1e-6)[0]
        else:
            y, s = lnorm.add_layer_norm(x, res, w, b, bias_in=bias_in)
            ref = layer_norm_ref(expect[sample].astype(np.float64), w.astype(np.float64), b.astype(np.float64), -1, 1e-5)[0]
        assert y.dtype == s.dtype == dtype
        np.testing.assert_array_equal(s.view(np.uint16), expect.view(np.uint16))
        assert _norm_error(y[sample], ref) <= BOUND[dtype], (isa, rms)
