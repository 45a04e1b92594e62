"""Forward LayerNorm / RMSNorm / add&norm against the float64 NumPy reference: sizes around the
vector width, strides, axes, eps, large means, NaN/Inf, constant rows, extreme magnitudes, empty
batches, dtypes and `out=`."""

import math
import zlib

import numpy as np
import pytest

import lnorm
from checks import check_layer_norm, check_rms_norm, isa_setting, possible_isas, require_isa, watch
from reference import (SIZES, assert_close, corrected_two_pass_layer_norm_f32, keep_shape,
                       layer_norm_ref, max_rel_err, naive_layer_norm_f32, norm_axes,
                       param_shape, rand_param, rand_x, rms_norm_ref, strided_view, tol_for)

FLOATS = (np.float32, np.float64)
EPS_CHOICES = (0.0, 1e-6, 1e-5, 1e-3, 0.1, 1.0, 10.0)


def params(rng, pshape, dtype, kind):
    """kind 0: no affine, 1: weight only, 2: weight and bias, 3: bias only."""
    w = rand_param(rng, pshape, dtype) if kind in (1, 2) else None
    b = rand_param(rng, pshape, dtype, center=0.0) if kind in (2, 3) else None
    return w, b


# ----------------------------------------------------------------------------------------------
# Sizes around the vector width


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_layer_norm_sizes(dtype, n, seed):
    rng = np.random.default_rng([seed, n, 11])
    rows = int(rng.integers(1, 6))
    x = rand_x(rng, (rows, n), dtype)
    w, b = params(rng, (n,), dtype, seed if seed < 2 else 2 + int(rng.integers(0, 2)))
    eps = float(rng.choice(EPS_CHOICES))
    check_layer_norm(x, w, b, -1, eps)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_rms_norm_sizes(dtype, n, seed):
    rng = np.random.default_rng([seed, n, 12])
    rows = int(rng.integers(1, 6))
    x = rand_x(rng, (rows, n), dtype)
    w = rand_param(rng, (n,), dtype) if seed != 0 else None
    eps = float(rng.choice(EPS_CHOICES))
    check_rms_norm(x, w, -1, eps)


@pytest.mark.parametrize("n", [16, 33, 257])
@pytest.mark.parametrize("misalign", [1, 2, 3, 5, 7, 9, 15])
@pytest.mark.parametrize("dtype", FLOATS)
def test_misaligned_starts(dtype, misalign, n):
    """Rows starting at every offset inside a vector (x = big[:, m:m+n])."""
    rng = np.random.default_rng([misalign, n, 13])
    big = rand_x(rng, (4, n + 16), dtype)
    x = big[:, misalign:misalign + n]
    w = rand_param(rng, (n,), dtype)
    b = rand_param(rng, (n,), dtype, center=0.0)
    check_layer_norm(x, w, b, -1, 1e-5)
    check_rms_norm(x, w, -1, 1e-6)


# ----------------------------------------------------------------------------------------------
# Strides and layouts


def _views(rng, dtype):
    """(name, x, axis) for a set of non-contiguous layouts."""
    a = rand_x(rng, (6, 37, 3), dtype)
    return [
        ("cols::3", strided_view(rng, (5, 40), dtype, (1, 3)), -1),
        ("rows::2", strided_view(rng, (5, 129), dtype, (2, 1)), -1),
        ("cols::-1", strided_view(rng, (4, 33), dtype, (1, -1)), -1),
        ("both::-2", strided_view(rng, (3, 65), dtype, (-2, -2)), -1),
        ("cols::-3 misaligned", strided_view(rng, (3, 17), dtype, (1, -3), misalign=3), -1),
        ("transposed", rand_x(rng, (33, 6), dtype).T, -1),
        ("transposed axis0", rand_x(rng, (33, 6), dtype).T, 0),
        ("fortran", np.asfortranarray(rand_x(rng, (7, 31), dtype)), -1),
        ("3d::2,::3 axis1", strided_view(rng, (3, 10, 4), dtype, (2, 1, 3)), 1),
        ("3d transposed axes(1,2)", np.transpose(a, (2, 0, 1)), (1, 2)),
        ("3d transposed axis0", np.transpose(a, (1, 2, 0)), 0),
        ("3d neg axes(0,2)", strided_view(rng, (4, 5, 6), dtype, (-1, 2, -2)), (0, 2)),
        ("broadcast-free 1d::-1", rand_x(rng, (50,), dtype)[::-2], -1),
    ]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", FLOATS)
def test_strided_inputs(dtype, seed):
    rng = np.random.default_rng([seed, 14])
    for name, x, axis in _views(rng, dtype):
        assert not x.flags.c_contiguous or x.ndim == 1 or name == "fortran", name
        pshape = param_shape(x.shape, norm_axes(x.ndim, axis))
        w, b = params(rng, pshape, dtype, 2)
        eps = float(rng.choice(EPS_CHOICES))
        try:
            check_layer_norm(x, w, b, axis, eps)
            check_rms_norm(x, w, axis, eps)
        except AssertionError as e:
            raise AssertionError(f"view {name!r}: {e}") from e


@pytest.mark.parametrize("dtype", FLOATS)
def test_strided_weight_and_bias(dtype):
    """weight/bias given as views with steps 2 and -1 (and a list for the weight)."""
    rng = np.random.default_rng(15)
    n = 67
    x = rand_x(rng, (5, n), dtype)
    w = rand_param(rng, (2 * n,), dtype)[::2]
    b = rand_param(rng, (n,), dtype, center=0.0)[::-1]
    assert not w.flags.c_contiguous and not b.flags.c_contiguous
    check_layer_norm(x, w, b, -1, 1e-5)
    check_rms_norm(x, w, -1, 1e-6)
    # 2-D weight over two axes, transposed layout
    x3 = rand_x(rng, (3, 4, 9), dtype)
    w2 = rand_param(rng, (9, 4), dtype).T
    b2 = rand_param(rng, (4, 18), dtype, center=0.0)[:, ::2]
    check_layer_norm(x3, w2, b2, (1, 2), 1e-5)
    check_rms_norm(x3, w2, (-2, -1), 1e-6)


def test_weight_as_list_is_converted():
    rng = np.random.default_rng(16)
    for dtype in FLOATS:
        x = rand_x(rng, (3, 5), dtype)
        w = [0.5, 1.5, -1.0, 2.0, 0.25]
        b = [0.1, -0.2, 0.3, 0.0, 1.0]
        y = lnorm.layer_norm(x, w, b)
        assert y.dtype == dtype
        assert_close(y, layer_norm_ref(x, np.asarray(w, dtype), np.asarray(b, dtype))[0])
        y = lnorm.rms_norm(x, w)
        assert y.dtype == dtype
        assert_close(y, rms_norm_ref(x, np.asarray(w, dtype))[0])


def test_float32_weight_with_float64_input():
    """A float32 weight/bias is allowed for float64 x; the arithmetic stays float64."""
    rng = np.random.default_rng(17)
    x = rand_x(rng, (4, 129), np.float64)
    w = rand_param(rng, (129,), np.float32)
    b = rand_param(rng, (129,), np.float32, center=0.0)
    y, _, _ = check_layer_norm(x, w, b, -1, 1e-5)
    assert y.dtype == np.float64
    y, _ = check_rms_norm(x, w, -1, 1e-6)
    assert y.dtype == np.float64


# ----------------------------------------------------------------------------------------------
# Axes


AXES_4D = [1, 0, -1, 3, (1, 2), (-2, -1), (0, 2), (0, 1, 2, 3), (2, 1), (-1, 1), (3, 0),
           (0, -1, 1), np.int64(2), (np.int32(1), -1)]


@pytest.mark.parametrize("axis", AXES_4D, ids=[str(a) for a in AXES_4D])
@pytest.mark.parametrize("dtype", FLOATS)
def test_axes_nchw(dtype, axis):
    rng = np.random.default_rng([zlib.crc32(str(axis).encode()), 18])
    x = rand_x(rng, (2, 3, 4, 5), dtype)
    pshape = param_shape(x.shape, norm_axes(4, axis))
    w, b = params(rng, pshape, dtype, 2)
    check_layer_norm(x, w, b, axis, 1e-5)
    check_rms_norm(x, w, axis, 1e-6)


def test_axis_order_does_not_matter():
    rng = np.random.default_rng(19)
    x = rand_x(rng, (3, 4, 5, 6), np.float32)
    w = rand_param(rng, (4, 6), np.float32)
    b = rand_param(rng, (4, 6), np.float32, center=0.0)
    y1 = lnorm.layer_norm(x, w, b, axis=(1, 3))
    y2 = lnorm.layer_norm(x, w, b, axis=(3, 1))
    y3 = lnorm.layer_norm(x, w, b, axis=(-1, -3))
    assert_close(y2, y1, np.float32)
    assert_close(y3, y1, np.float32)
    assert_close(y1, layer_norm_ref(x, w, b, (1, 3))[0], np.float32)


def test_one_dimensional_input():
    rng = np.random.default_rng(20)
    for dtype in FLOATS:
        x = rand_x(rng, (300,), dtype)
        check_layer_norm(x, None, None, -1, 1e-5)
        check_layer_norm(x, rand_param(rng, (300,), dtype), None, 0, 1e-5)
        check_rms_norm(x, None, 0, 1e-6)


# ----------------------------------------------------------------------------------------------
# eps


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-6, 1e-5, 1e-3, 0.1, 1.0, 10.0, 0, 1])
@pytest.mark.parametrize("dtype", FLOATS)
def test_eps_range(dtype, eps):
    """eps from 0 to 10 on inputs at scales where eps matters (variance ~1e-4 .. 1e2)."""
    rng = np.random.default_rng([int(eps * 1e6) % 9973, 21])
    for scale in (1e-2, 1e-1, 1.0, 10.0):
        x = (rng.standard_normal((4, 33)) * scale + scale).astype(dtype)
        w = rand_param(rng, (33,), dtype)
        check_layer_norm(x, w, None, -1, eps)
        check_rms_norm(x, w, -1, eps)


def test_eps_changes_result():
    """eps is used: with variance 1e-4, eps=1e-2 must give a much smaller output than eps=0."""
    rng = np.random.default_rng(22)
    x = (rng.standard_normal((2, 64)) * 1e-2).astype(np.float32)
    y0 = lnorm.layer_norm(x, eps=0.0)
    y1 = lnorm.layer_norm(x, eps=1e-2)
    assert np.abs(y1).max() < 0.2 * np.abs(y0).max()
    r0 = lnorm.rms_norm(x, eps=0.0)
    r1 = lnorm.rms_norm(x, eps=1e-2)
    assert np.abs(r1).max() < 0.2 * np.abs(r0).max()


def test_default_eps():
    """Defaults: layer_norm eps=1e-5, rms_norm eps=1e-6 (visible at variance ~1e-6)."""
    rng = np.random.default_rng(23)
    x = (rng.standard_normal((3, 256)) * 1e-3).astype(np.float64)
    assert_close(lnorm.layer_norm(x), layer_norm_ref(x, eps=1e-5)[0])
    assert max_rel_err(lnorm.layer_norm(x), layer_norm_ref(x, eps=1e-6)[0]) > 1e-3
    assert_close(lnorm.rms_norm(x), rms_norm_ref(x, eps=1e-6)[0])
    assert max_rel_err(lnorm.rms_norm(x), rms_norm_ref(x, eps=1e-5)[0]) > 1e-3


# ----------------------------------------------------------------------------------------------
# Large means: the test that separates a careful two-pass from E[x^2] - E[x]^2

LARGE_MEAN_TOL = 1e-4  # max abs error relative to the output scale, float32


def _large_mean_rows(rng, ratio, n, dtype):
    """Rows with |mean| = ratio * (1..10) * spread, random sign, spread 1e-3..1e3."""
    rows = 6
    spread = 10.0 ** rng.uniform(-3, 3, (rows, 1))
    mean = rng.choice([-1.0, 1.0], (rows, 1)) * ratio * rng.uniform(1, 10, (rows, 1)) * spread
    return (mean + spread * rng.standard_normal((rows, n))).astype(dtype)


@pytest.mark.parametrize("n", [7, 64, 1023, 4099])
@pytest.mark.parametrize("ratio", [1e4, 1e5, 1e6])
def test_large_mean_float32(ratio, n):
    """float32 rows whose mean is 1e4..1e6 times their spread. The float64 reference is computed on
    the same float32 inputs, and the output must match it to LARGE_MEAN_TOL of the output scale.

    The tolerance is checked to be meaningful: a float32 model of the two-pass algorithm with the
    mean correction meets it, the naive E[x^2] - E[x]^2 model fails it.
    """
    rng = np.random.default_rng([int(np.log10(ratio)), n, 24])
    x = _large_mean_rows(rng, ratio, n, np.float32)
    w = rand_param(rng, (n,), np.float32)
    b = rand_param(rng, (n,), np.float32, center=0.0)
    y_ref, mean_ref, rstd_ref = layer_norm_ref(x, w, b)
    scale = float(np.abs(y_ref).max())

    # the tolerance separates the algorithms
    assert max_rel_err(naive_layer_norm_f32(x), layer_norm_ref(x)[0]) > LARGE_MEAN_TOL
    assert max_rel_err(corrected_two_pass_layer_norm_f32(x), layer_norm_ref(x)[0]) \
        <= LARGE_MEAN_TOL / 10

    y, mean, rstd = lnorm.layer_norm(x, w, b, return_stats=True)
    err = max_rel_err(y, y_ref, scale)
    assert err <= LARGE_MEAN_TOL, f"layer_norm error {err:.3e} of the output scale"
    assert_close(mean, mean_ref, tol=1e-6, scale=0.0, what="mean")
    assert_close(rstd, rstd_ref, tol=LARGE_MEAN_TOL, scale=0.0, what="rstd")

    y0 = lnorm.layer_norm(x)
    assert max_rel_err(y0, layer_norm_ref(x)[0]) <= LARGE_MEAN_TOL

    # rms_norm is well conditioned here: ordinary float32 tolerance
    assert_close(lnorm.rms_norm(x, w), rms_norm_ref(x, w)[0], np.float32)


@pytest.mark.parametrize("ratio", [1e4, 1e6, 1e8])
def test_large_mean_float64(ratio):
    """float64 rows with huge means: error within a small multiple of eps64 * (mean / spread), the
    conditioning of the inputs' own rounding."""
    rng = np.random.default_rng([int(np.log10(ratio)), 25])
    for n in (7, 129, 4099):
        x = _large_mean_rows(rng, ratio, n, np.float64)
        y_ref = layer_norm_ref(x)[0]
        err = max_rel_err(lnorm.layer_norm(x), y_ref)
        assert err <= max(1e-12, 64 * np.finfo(np.float64).eps * ratio * 10), err
        assert_close(lnorm.rms_norm(x), rms_norm_ref(x)[0], np.float64)


def _layer_norm_two_part_mean(x, eps=1e-5):
    """LayerNorm of float64 rows with the mean kept as hi + lo from exact sums: accurate to float64
    precision however large the mean (x - hi is exact where hi is within a factor 2 of every x)."""
    y = np.empty_like(x)
    for r, row in enumerate(x):
        hi = math.fsum(row) / row.size
        d = row - hi
        lo = math.fsum(d) / row.size
        c = d - lo
        y[r] = c / math.sqrt(math.fsum(c * c) / row.size + eps)
    return y


@pytest.mark.parametrize("isa", possible_isas())
def test_large_mean_float64_full_precision(isa):
    """float64 rows whose mean is 1e8 to 1e9 times their spread normalize to float64 precision on
    every kernel set, the scalar one (the fallback without AVX) included, along the last axis (row
    kernels) and along axis 0 (column kernels): the mean is kept as two parts, a rough mean and its
    correction, never folded into one double, which would be off by up to 1e-7 spreads here."""
    require_isa(isa)
    rng = np.random.default_rng([8, 27])
    before = isa_setting()
    lnorm.set_isa(isa)
    try:
        for n in (7, 129, 4099):
            x = _large_mean_rows(rng, 1e8, n, np.float64)
            y_ref = _layer_norm_two_part_mean(x)
            err = max_rel_err(lnorm.layer_norm(x), y_ref)
            assert err <= 1e-13, f"{isa}, n={n}: error {err:.3e} of the output scale"
            err = max_rel_err(lnorm.layer_norm(np.ascontiguousarray(x.T), axis=0).T, y_ref)
            assert err <= 1e-13, f"{isa}, n={n}, axis 0: error {err:.3e} of the output scale"
    finally:
        lnorm.set_isa(before)


def test_large_mean_non_trailing_axis():
    """Large-mean columns normalized over axis 0 (strided reduction path)."""
    rng = np.random.default_rng(26)
    x = np.ascontiguousarray(_large_mean_rows(rng, 1e5, 1025, np.float32).T)  # (1025, 6)
    y_ref = layer_norm_ref(x, axis=0)[0]
    assert max_rel_err(lnorm.layer_norm(x, axis=0), y_ref) <= LARGE_MEAN_TOL


# ----------------------------------------------------------------------------------------------
# NaN and Inf: only the affected row


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("n", [1, 7, 64, 129, 1025])
@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_inf_poison_one_row(dtype, n, bad):
    rng = np.random.default_rng([n, 27])
    clean = rand_x(rng, (6, n), dtype)
    w = rand_param(rng, (n,), dtype)
    b = rand_param(rng, (n,), dtype, center=0.0)
    row, col = 3, int(rng.integers(0, n))
    x = clean.copy()
    x[row, col] = bad
    others = [i for i in range(6) if i != row]

    y_c, m_c, r_c = lnorm.layer_norm(clean, w, b, return_stats=True)
    y, m, r = lnorm.layer_norm(x, w, b, return_stats=True)
    assert np.isnan(y[row]).all(), f"layer_norm row with {bad}: {y[row][:8]}"
    assert np.array_equal(y[others], y_c[others]), "other rows changed"
    assert np.array_equal(m[others], m_c[others]) and np.array_equal(r[others], r_c[others])
    assert_close(y[others], layer_norm_ref(clean, w, b)[0][others], dtype)

    y_c, r_c = lnorm.rms_norm(clean, w, return_stats=True)
    y, r = lnorm.rms_norm(x, w, return_stats=True)
    assert np.isnan(y[row, col]), f"rms_norm at the {bad}: {y[row, col]}"
    assert not np.isinf(y[row]).any(), "rms_norm row has Inf instead of NaN"
    assert np.array_equal(y[others], y_c[others]), "other rows changed"
    assert np.array_equal(r[others], r_c[others])
    assert_close(y[others], rms_norm_ref(clean, w)[0][others], dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_inf_non_trailing_axis(bad):
    """NCHW normalized over C: a NaN at (n, c, h, w) poisons exactly the (n, :, h, w) fiber."""
    rng = np.random.default_rng(28)
    clean = rand_x(rng, (2, 5, 3, 4), np.float32)
    x = clean.copy()
    x[1, 2, 0, 3] = bad
    poisoned = np.zeros(x.shape, bool)
    poisoned[1, :, 0, 3] = True
    y_c = lnorm.layer_norm(clean, axis=1)
    y = lnorm.layer_norm(x, axis=1)
    assert np.isnan(y[poisoned]).all()
    assert np.array_equal(y[~poisoned], y_c[~poisoned])
    yr_c = lnorm.rms_norm(clean, axis=1)
    yr = lnorm.rms_norm(x, axis=1)
    assert np.isnan(yr[1, 2, 0, 3])
    assert np.array_equal(yr[~poisoned], yr_c[~poisoned])


def test_nan_in_several_rows():
    rng = np.random.default_rng(29)
    x = rand_x(rng, (50, 100), np.float32)
    bad_rows = [0, 17, 49]
    x[bad_rows, rng.integers(0, 100, 3)] = [np.nan, np.inf, -np.inf]
    good = [i for i in range(50) if i not in bad_rows]
    y = lnorm.layer_norm(x)
    assert np.isnan(y[bad_rows]).all()
    assert_close(y[good], layer_norm_ref(x[good])[0], np.float32)


# ----------------------------------------------------------------------------------------------
# Constant rows: exactly the bias, never NaN, eps = 0 included


@pytest.mark.parametrize("eps", [0.0, 1e-5, 1.0])
@pytest.mark.parametrize("n", [1, 3, 7, 16, 33, 255, 1023, 4099])
@pytest.mark.parametrize("dtype", FLOATS)
def test_constant_rows_give_bias(dtype, n, eps):
    rng = np.random.default_rng([n, int(eps * 10), 30])
    consts = np.array([rng.standard_normal(), 1e5 * rng.standard_normal(),
                       1e-20 * rng.standard_normal(), 0.1, -3.7, 1 / 3], dtype=dtype)
    x = np.repeat(consts[:, None], n, axis=1)
    w = rand_param(rng, (n,), dtype)
    b = rand_param(rng, (n,), dtype, center=0.0)

    y, mean, rstd = lnorm.layer_norm(x, w, b, eps=eps, return_stats=True)
    assert np.array_equal(y, np.broadcast_to(b, x.shape)), \
        f"constant rows: max |y - bias| = {np.nanmax(np.abs(y - b))}, NaN: {np.isnan(y).any()}"
    assert_close(mean, consts[:, None].astype(np.float64), tol=tol_for(dtype), scale=0.0)
    if eps > 0:
        assert_close(rstd, np.full(rstd.shape, 1 / np.sqrt(eps)), tol=tol_for(dtype), scale=0.0)

    for ww, bb in ((None, None), (w, None), (None, b)):
        y = lnorm.layer_norm(x, ww, bb, eps=eps)
        want = np.zeros(x.shape, dtype) if bb is None else np.broadcast_to(bb, x.shape)
        assert np.array_equal(y, want), f"weight={ww is not None} bias={bb is not None}"


def test_constant_rows_non_trailing_axis():
    rng = np.random.default_rng(31)
    x = np.broadcast_to(rand_x(rng, (2, 1, 3, 4), np.float32), (2, 6, 3, 4)).copy()
    b = rand_param(rng, (6,), np.float32, center=0.0)
    for eps in (0.0, 1e-5):
        y = lnorm.layer_norm(x, None, b, axis=1, eps=eps)
        assert np.array_equal(y, np.broadcast_to(b[None, :, None, None], x.shape))


def test_constant_rows_mixed_with_others():
    rng = np.random.default_rng(32)
    x = rand_x(rng, (8, 129), np.float32)
    x[[1, 5]] = np.float32(2.718281828)
    b = rand_param(rng, (129,), np.float32, center=0.0)
    w = rand_param(rng, (129,), np.float32)
    y = lnorm.layer_norm(x, w, b, eps=0.0)
    assert np.array_equal(y[[1, 5]], np.broadcast_to(b, (2, 129)))
    good = [0, 2, 3, 4, 6, 7]
    assert_close(y[good], layer_norm_ref(x[good], w, b, eps=0.0)[0], np.float32)
    check_rms_norm(x, w, -1, 0.0)


# ----------------------------------------------------------------------------------------------
# Extreme magnitudes


@pytest.mark.parametrize("n", [7, 64, 1025, 4099])
def test_values_near_float32_max(n):
    """Rows of values up to ~3.4e38: sums and squares overflow float32, results must not."""
    rng = np.random.default_rng([n, 33])
    fmax = float(np.finfo(np.float32).max)
    x = np.stack([
        rng.uniform(-fmax, fmax, n),
        rng.uniform(0.3 * fmax, fmax, n),
        -rng.uniform(0.3 * fmax, fmax, n),
        np.where(np.arange(n) % 2 == 0, 3e38, -3e38) * rng.uniform(0.9, 1.0, n),
    ]).astype(np.float32)
    assert np.isfinite(x).all()
    w = rand_param(rng, (n,), np.float32)
    b = rand_param(rng, (n,), np.float32, center=0.0)
    y, mean, rstd = lnorm.layer_norm(x, w, b, return_stats=True)
    assert np.isfinite(y).all() and np.isfinite(mean).all(), "overflow in layer_norm"
    check_layer_norm(x, w, b, -1, 1e-5)
    y, rstd = lnorm.rms_norm(x, w, return_stats=True)
    assert np.isfinite(y).all(), "overflow in rms_norm"
    check_rms_norm(x, w, -1, 1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_tiny_values_eps_zero(dtype):
    """Scale invariance with eps=0: rows of magnitude 1e-30 (squares underflow float32) still
    normalize to unit scale."""
    rng = np.random.default_rng(34)
    x = (rng.standard_normal((4, 129)) * 1e-30 + 1e-30).astype(dtype)
    check_layer_norm(x, None, None, -1, 0.0)
    check_rms_norm(x, None, -1, 0.0)


# ----------------------------------------------------------------------------------------------
# Empty batch


EMPTY_CASES = [((0, 8), -1), ((0, 3, 4), (1, 2)), ((2, 0, 5), -1), ((3, 0, 4), (0, 2)),
               ((0, 7), 1), ((4, 0), 0)]


@pytest.mark.parametrize("shape,axis", EMPTY_CASES, ids=[str(c) for c in EMPTY_CASES])
@pytest.mark.parametrize("dtype", FLOATS)
def test_empty_batch(dtype, shape, axis):
    axes = norm_axes(len(shape), axis)
    pshape = param_shape(shape, axes)
    x = np.empty(shape, dtype)
    w = np.ones(pshape, dtype)
    b = np.zeros(pshape, dtype)
    y, mean, rstd = lnorm.layer_norm(x, w, b, axis=axis, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == rstd.shape == keep_shape(shape, axes)
    assert lnorm.layer_norm(x, axis=axis).shape == shape
    y, rstd = lnorm.rms_norm(x, w, axis=axis, return_stats=True)
    assert y.shape == shape and y.dtype == dtype and rstd.shape == keep_shape(shape, axes)
    y, s = lnorm.add_layer_norm(x, x.copy(), w, b, axis=axis)
    assert y.shape == s.shape == shape
    y, s = lnorm.add_rms_norm(x, x.copy(), w, axis=axis)
    assert y.shape == s.shape == shape


# ----------------------------------------------------------------------------------------------
# dtypes


def test_list_input_gives_float64():
    data = [[1.0, 2.0, 4.0, -0.5], [3.0, -1.0, 0.5, 0.25]]
    y = lnorm.layer_norm(data)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == (2, 4)
    assert_close(y, layer_norm_ref(np.array(data))[0], np.float64)
    y = lnorm.rms_norm(data, [1.0, 2.0, 3.0, 4.0])
    assert y.dtype == np.float64
    assert_close(y, rms_norm_ref(np.array(data), np.array([1.0, 2.0, 3.0, 4.0]))[0], np.float64)


@pytest.mark.parametrize("n", [1, 7, 16, 33, 257, 1025])
def test_float16(n):
    rng = np.random.default_rng([n, 35])
    x = (rng.standard_normal((4, n)) * 3 + 1).astype(np.float16)
    w = rand_param(rng, (n,), np.float16)
    b = rand_param(rng, (n,), np.float16, center=0.0)
    y, mean, rstd = lnorm.layer_norm(x, w, b, return_stats=True)
    assert y.dtype == np.float16 and y.shape == x.shape
    assert mean.dtype == rstd.dtype == np.float32 and mean.shape == (4, 1)
    assert_close(y, layer_norm_ref(x, w, b)[0], tol=2e-3, scale=1.0)
    y, rstd = lnorm.rms_norm(x, w, return_stats=True)
    assert y.dtype == np.float16 and rstd.dtype == np.float32
    assert_close(y, rms_norm_ref(x, w)[0], tol=2e-3, scale=1.0)
    # float32 weight is allowed with float16 x
    w32 = w.astype(np.float32)
    y = lnorm.layer_norm(x, w32, None)
    assert y.dtype == np.float16
    assert_close(y, layer_norm_ref(x, w32)[0], tol=2e-3, scale=1.0)


@pytest.mark.parametrize("n", [1, 7, 33, 1025])
def test_bfloat16(n):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng([n, 36])
    x = (rng.standard_normal((4, n)) * 3 + 1).astype(bf16)
    w = rand_param(rng, (n,), np.float32).astype(bf16)
    y, mean, rstd = lnorm.layer_norm(x, w, None, return_stats=True)
    assert y.dtype == bf16 and y.shape == x.shape
    assert mean.dtype == rstd.dtype == np.float32
    # bfloat16 keeps 8 significant bits: rounding alone is up to 2**-8 relative
    assert_close(y, layer_norm_ref(x.astype(np.float64), w.astype(np.float64))[0],
                 tol=1e-2, scale=1.0)
    y = lnorm.rms_norm(x, w)
    assert y.dtype == bf16
    assert_close(y, rms_norm_ref(x.astype(np.float64), w.astype(np.float64))[0],
                 tol=1e-2, scale=1.0)


# ----------------------------------------------------------------------------------------------
# out=


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_identity_and_values(dtype):
    rng = np.random.default_rng(37)
    x = rand_x(rng, (5, 65), dtype)
    w = rand_param(rng, (65,), dtype)
    b = rand_param(rng, (65,), dtype, center=0.0)
    x0 = x.copy()
    out = np.full_like(x, np.nan)
    r = lnorm.layer_norm(x, w, b, out=out)
    assert r is out
    assert np.array_equal(x, x0)
    assert_close(out, layer_norm_ref(x, w, b)[0])
    assert np.array_equal(out, lnorm.layer_norm(x, w, b))

    out = np.full_like(x, np.nan)
    r = lnorm.layer_norm(x, w, b, out=out, return_stats=True)
    assert isinstance(r, tuple) and len(r) == 3 and r[0] is out
    assert_close(out, layer_norm_ref(x, w, b)[0])

    out = np.full_like(x, np.nan)
    r = lnorm.rms_norm(x, w, out=out)
    assert r is out
    assert_close(out, rms_norm_ref(x, w)[0])
    out = np.full_like(x, np.nan)
    r = lnorm.rms_norm(x, w, out=out, return_stats=True)
    assert isinstance(r, tuple) and len(r) == 2 and r[0] is out
    assert_close(out, rms_norm_ref(x, w)[0])


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_in_place(dtype):
    rng = np.random.default_rng(38)
    for x, axis in ((rand_x(rng, (7, 129), dtype), -1),
                    (rand_x(rng, (3, 10, 40), dtype)[:, ::2, ::-3], (1, 2)),
                    (rand_x(rng, (2, 6, 3, 3), dtype), 1)):
        pshape = param_shape(x.shape, norm_axes(x.ndim, axis))
        w = rand_param(rng, pshape, dtype)
        b = rand_param(rng, pshape, dtype, center=0.0)
        want = layer_norm_ref(x, w, b, axis)[0]
        r = lnorm.layer_norm(x, w, b, axis=axis, out=x)
        assert r is x
        assert_close(x, want)
        want = rms_norm_ref(x, w, axis)[0]
        r = lnorm.rms_norm(x, w, axis=axis, out=x)
        assert r is x
        assert_close(x, want)


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_strided(dtype):
    rng = np.random.default_rng(39)
    x = rand_x(rng, (6, 33), dtype)
    w = rand_param(rng, (33,), dtype)
    buf = np.full((12, 99), 7.0, dtype)
    out = buf[::2, ::-3]
    r = lnorm.layer_norm(x, w, None, out=out)
    assert r is out
    assert_close(out, layer_norm_ref(x, w)[0])
    mask = np.ones(buf.shape, bool)
    mask[::2, ::-3] = False
    assert (buf[mask] == 7.0).all(), "wrote outside out"
    out = np.empty((33, 6), dtype).T
    assert lnorm.rms_norm(x, w, out=out) is out
    assert_close(out, rms_norm_ref(x, w)[0])


# ----------------------------------------------------------------------------------------------
# add & norm


@pytest.mark.parametrize("n", [1, 7, 16, 33, 64, 129, 1025, 4099])
@pytest.mark.parametrize("dtype", FLOATS)
def test_add_layer_norm(dtype, n):
    rng = np.random.default_rng([n, 40])
    x = rand_x(rng, (3, n), dtype)
    res = rand_x(rng, (3, n), dtype)
    w = rand_param(rng, (n,), dtype)
    b = rand_param(rng, (n,), dtype, center=0.0)
    eps = float(rng.choice(EPS_CHOICES))
    check = watch(x, res, w, b)
    y, s = lnorm.add_layer_norm(x, res, w, b, eps=eps)
    check()
    assert y.dtype == s.dtype == dtype and y.shape == s.shape == x.shape
    assert np.array_equal(s, x + res), "s must be x + residual rounded to x's dtype"
    assert_close(y, layer_norm_ref(x + res, w, b, eps=eps)[0])
    y2, s2 = lnorm.add_rms_norm(x, res, w, eps=eps)
    check()
    assert y2.dtype == s2.dtype == dtype
    assert np.array_equal(s2, x + res)
    assert_close(y2, rms_norm_ref(x + res, w, eps=eps)[0])


@pytest.mark.parametrize("dtype", FLOATS)
def test_add_norm_axes_strides_defaults(dtype):
    rng = np.random.default_rng(41)
    x = rand_x(rng, (2, 6, 20), dtype)[:, :, ::-2]
    res = rand_x(rng, (2, 10, 6), dtype).transpose(0, 2, 1)
    w = rand_param(rng, (6,), dtype)
    b = rand_param(rng, (6,), dtype, center=0.0)
    y, s = lnorm.add_layer_norm(x, res, w, b, axis=1)
    assert np.array_equal(s, x + res)
    assert_close(y, layer_norm_ref(x + res, w, b, 1)[0])
    y, s = lnorm.add_rms_norm(x, res, w, axis=(1,))
    assert_close(y, rms_norm_ref(x + res, w, 1)[0])
    # defaults: eps 1e-5 / 1e-6, no affine
    xs = (rng.standard_normal((3, 64)) * 1e-3).astype(dtype)
    rs = (rng.standard_normal((3, 64)) * 1e-3).astype(dtype)
    y, s = lnorm.add_layer_norm(xs, rs)
    assert_close(y, layer_norm_ref(xs + rs, eps=1e-5)[0])
    y, s = lnorm.add_rms_norm(xs, rs)
    assert_close(y, rms_norm_ref(xs + rs, eps=1e-6)[0])


def test_add_norm_large_mean_and_nan():
    rng = np.random.default_rng(42)
    x = _large_mean_rows(rng, 1e5, 1023, np.float32)
    res = (rng.standard_normal(x.shape)).astype(np.float32)
    y, s = lnorm.add_layer_norm(x, res)
    assert max_rel_err(y, layer_norm_ref(x + res)[0]) <= LARGE_MEAN_TOL
    x = rand_x(rng, (4, 33), np.float32)
    res = rand_x(rng, (4, 33), np.float32)
    res[2, 5] = np.nan
    y, s = lnorm.add_layer_norm(x, res)
    assert np.isnan(y[2]).all()
    assert_close(y[[0, 1, 3]], layer_norm_ref((x + res)[[0, 1, 3]])[0], np.float32)
    y, s = lnorm.add_rms_norm(x, res)
    assert np.isnan(y[2, 5])
    assert_close(y[[0, 1, 3]], rms_norm_ref((x + res)[[0, 1, 3]])[0], np.float32)


def test_add_norm_float16():
    rng = np.random.default_rng(43)
    x = rng.standard_normal((3, 40)).astype(np.float16)
    r = rng.standard_normal((3, 40)).astype(np.float16)
    y, s = lnorm.add_layer_norm(x, r)
    assert y.dtype == s.dtype == np.float16
    assert np.array_equal(s, x + r)
    assert_close(y, layer_norm_ref(x + r)[0], tol=2e-3, scale=1.0)
