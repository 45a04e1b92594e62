"""Bad input: TypeError for the wrong kind or dtype, ValueError for shapes, axes, eps, out and stats
that do not fit; each message names the argument at fault. Never a crash, inputs left intact."""

import numpy as np
import pytest

import lnorm

X_NAME = r"\bx\b"
N = 8


@pytest.fixture
def x32():
    return np.random.default_rng(70).standard_normal((4, N)).astype(np.float32)


def _forward_calls():
    """(name, f(x, **kw)) for every function whose first argument is x, with a valid rest."""
    return [
        ("layer_norm", lambda x, **kw: lnorm.layer_norm(x, **kw)),
        ("rms_norm", lambda x, **kw: lnorm.rms_norm(x, **kw)),
        ("add_layer_norm", lambda x, **kw: lnorm.add_layer_norm(x, np.ones_like(x), **kw)),
        ("add_rms_norm", lambda x, **kw: lnorm.add_rms_norm(x, np.ones_like(x), **kw)),
    ]


FORWARD_IDS = [n for n, _ in _forward_calls()]
FORWARD = [f for _, f in _forward_calls()]


# ----------------------------------------------------------------------------------------------
# x


BAD_X = [
    np.arange(12, dtype=np.int32).reshape(3, 4),
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.arange(12, dtype=np.uint8).reshape(3, 4),
    np.ones((3, 4), np.complex64),
    np.ones((3, 4), np.complex128),
    np.ones((3, 4), bool),
    np.array([[1.0, "a"], [2.0, None]], dtype=object),
    np.array(["ab", "cd"]),
    None,
    "abc",
]
BAD_X_IDS = ["int32", "int64", "uint8", "complex64", "complex128", "bool", "object", "str-array",
             "None", "str"]


@pytest.mark.parametrize("x", BAD_X, ids=BAD_X_IDS)
def test_bad_x_dtype(x):
    with pytest.raises(TypeError, match=X_NAME):
        lnorm.layer_norm(x)
    with pytest.raises(TypeError, match=X_NAME):
        lnorm.rms_norm(x)
    with pytest.raises(TypeError, match=X_NAME):
        lnorm.add_layer_norm(x, x)
    with pytest.raises(TypeError, match=X_NAME):
        lnorm.add_rms_norm(x, x)


@pytest.mark.parametrize("x", BAD_X[:6], ids=BAD_X_IDS[:6])
def test_bad_x_dtype_backward(x):
    dy = np.ones(x.shape, np.float32)
    stats = np.ones((x.shape[0], 1), np.float32)
    with pytest.raises(TypeError, match=r"\bx\b|\bdy\b"):
        lnorm.layer_norm_backward(dy, x, stats, stats)
    with pytest.raises(TypeError, match=r"\bx\b|\bdy\b"):
        lnorm.rms_norm_backward(dy, x, stats)


def test_zero_dim_x():
    for f in FORWARD:
        with pytest.raises(ValueError):
            f(np.float32(1.5))
        with pytest.raises(ValueError):
            f(np.array(2.0))


@pytest.mark.parametrize("shape,axis", [((3, 0), -1), ((2, 0, 5), 1), ((0, 0), -1),
                                        ((4, 0, 3), (1, 2)), ((0,), 0)])
@pytest.mark.parametrize("f", FORWARD, ids=FORWARD_IDS)
def test_empty_normalized_axis(f, shape, axis):
    with pytest.raises(ValueError):
        f(np.empty(shape, np.float32), axis=axis)


def test_empty_normalized_axis_backward():
    x = np.empty((3, 0), np.float32)
    s = np.empty((3, 1), np.float32)
    with pytest.raises(ValueError):
        lnorm.layer_norm_backward(x, x, s, s)
    with pytest.raises(ValueError):
        lnorm.rms_norm_backward(x, x, s)


# ----------------------------------------------------------------------------------------------
# weight and bias


BAD_PARAM_SHAPES = [(N + 1,), (N - 1,), (1, N), (N, 1), (), (2 * N,), (4, N)]


@pytest.mark.parametrize("shape", BAD_PARAM_SHAPES, ids=str)
def test_weight_bias_wrong_shape(x32, shape):
    p = np.ones(shape, np.float32)
    good = np.ones(N, np.float32)
    with pytest.raises(ValueError, match="weight"):
        lnorm.layer_norm(x32, p, good)
    with pytest.raises(ValueError, match="bias"):
        lnorm.layer_norm(x32, good, p)
    with pytest.raises(ValueError, match="weight"):
        lnorm.rms_norm(x32, p)
    with pytest.raises(ValueError, match="weight"):
        lnorm.add_layer_norm(x32, x32, p, good)
    with pytest.raises(ValueError, match="bias"):
        lnorm.add_layer_norm(x32, x32, good, p)
    with pytest.raises(ValueError, match="weight"):
        lnorm.add_rms_norm(x32, x32, p)


def test_weight_shape_for_several_axes():
    x = np.random.default_rng(71).standard_normal((2, 3, 4)).astype(np.float32)
    lnorm.layer_norm(x, np.ones((2, 4), np.float32), axis=(0, 2))  # fits
    lnorm.layer_norm(x, np.ones((2, 4), np.float32), axis=(2, 0))  # sorted axes: same shape
    for bad in ((4, 2), (8,), (2, 3, 4), (3, 4)):
        with pytest.raises(ValueError, match="weight"):
            lnorm.layer_norm(x, np.ones(bad, np.float32), axis=(0, 2))
        with pytest.raises(ValueError, match="bias"):
            lnorm.layer_norm(x, None, np.ones(bad, np.float32), axis=(0, 2))
        with pytest.raises(ValueError, match="weight"):
            lnorm.rms_norm(x, np.ones(bad, np.float32), axis=(0, 2))
    with pytest.raises(ValueError, match="weight"):
        lnorm.layer_norm(x, np.ones(4, np.float32), axis=1)  # trailing-size weight, axis 1


@pytest.mark.parametrize("pdtype", [np.float64, np.float16, np.int32, np.int64, np.complex64,
                                    bool], ids=lambda d: np.dtype(d).name)
def test_weight_bias_wrong_dtype_float32_x(x32, pdtype):
    p = np.ones(N, pdtype)
    good = np.ones(N, np.float32)
    with pytest.raises(TypeError, match="weight"):
        lnorm.layer_norm(x32, p, good)
    with pytest.raises(TypeError, match="bias"):
        lnorm.layer_norm(x32, good, p)
    with pytest.raises(TypeError, match="weight"):
        lnorm.rms_norm(x32, p)
    with pytest.raises(TypeError, match="weight"):
        lnorm.add_layer_norm(x32, x32, p)
    with pytest.raises(TypeError, match="bias"):
        lnorm.add_layer_norm(x32, x32, None, p)
    with pytest.raises(TypeError, match="weight"):
        lnorm.add_rms_norm(x32, x32, p)


def test_weight_wrong_dtype_float64_x():
    x = np.random.default_rng(72).standard_normal((3, N))
    for pdtype in (np.float16, np.int64):
        with pytest.raises(TypeError, match="weight"):
            lnorm.layer_norm(x, np.ones(N, pdtype))
        with pytest.raises(TypeError, match="bias"):
            lnorm.layer_norm(x, None, np.ones(N, pdtype))
        with pytest.raises(TypeError, match="weight"):
            lnorm.rms_norm(x, np.ones(N, pdtype))


def test_weight_not_numeric(x32):
    with pytest.raises(TypeError, match="weight"):
        lnorm.layer_norm(x32, "weight")
    with pytest.raises(TypeError, match="bias"):
        lnorm.layer_norm(x32, None, ["a"] * N)
    with pytest.raises(TypeError, match="weight"):
        lnorm.rms_norm(x32, {"a": 1})


# ----------------------------------------------------------------------------------------------
# axis


@pytest.mark.parametrize("axis", [2, -3, 100, (0, 2), (-3,), (0, 1, 2)], ids=str)
@pytest.mark.parametrize("f", FORWARD, ids=FORWARD_IDS)
def test_axis_out_of_range(f, x32, axis):
    with pytest.raises(ValueError, match="axis"):
        f(x32, axis=axis)


@pytest.mark.parametrize("axis", [(1, 1), (1, -1), (0, 0, 1), (-2, 0)], ids=str)
@pytest.mark.parametrize("f", FORWARD, ids=FORWARD_IDS)
def test_axis_duplicates(f, x32, axis):
    with pytest.raises(ValueError, match="axis"):
        f(x32, axis=axis)


@pytest.mark.parametrize("axis", [1.0, "1", (1.0,), (0, "1"), 1j], ids=repr)
@pytest.mark.parametrize("f", FORWARD, ids=FORWARD_IDS)
def test_axis_not_int(f, x32, axis):
    f(x32, axis=(1,))  # a valid call first: its cached plan must not let (1.0,) through
    with pytest.raises(TypeError, match="axis"):
        f(x32, axis=axis)


@pytest.mark.parametrize("f", FORWARD, ids=FORWARD_IDS)
def test_axis_empty_tuple(f, x32):
    with pytest.raises(ValueError, match="axis"):
        f(x32, axis=())


def test_axis_errors_backward(x32):
    s = np.ones((4, 1), np.float32)
    for bad, exc in ((2, ValueError), ((1, 1), ValueError), ((), ValueError), (1.0, TypeError),
                     ("1", TypeError)):
        with pytest.raises(exc, match="axis"):
            lnorm.layer_norm_backward(x32, x32, s, s, axis=bad)
        with pytest.raises(exc, match="axis"):
            lnorm.rms_norm_backward(x32, x32, s, axis=bad)


# ----------------------------------------------------------------------------------------------
# eps


EPS_FUNCS = [
    ("layer_norm", lambda x, eps: lnorm.layer_norm(x, eps=eps)),
    ("rms_norm", lambda x, eps: lnorm.rms_norm(x, eps=eps)),
    ("add_layer_norm", lambda x, eps: lnorm.add_layer_norm(x, x, eps=eps)),
    ("add_rms_norm", lambda x, eps: lnorm.add_rms_norm(x, x, eps=eps)),
]


@pytest.mark.parametrize("eps", [-1e-5, -1.0, -0.0 - 1e-300, float("nan"), float("inf"),
                                 -float("inf"), np.float32("nan")], ids=repr)
@pytest.mark.parametrize("f", [f for _, f in EPS_FUNCS], ids=[n for n, _ in EPS_FUNCS])
def test_eps_bad_value(f, x32, eps):
    with pytest.raises(ValueError, match="eps"):
        f(x32, eps)


@pytest.mark.parametrize("eps", ["1e-5", None, 1j, [1e-5], np.array([1e-5, 1e-5])], ids=repr)
@pytest.mark.parametrize("f", [f for _, f in EPS_FUNCS], ids=[n for n, _ in EPS_FUNCS])
def test_eps_bad_type(f, x32, eps):
    with pytest.raises(TypeError, match="eps"):
        f(x32, eps)


@pytest.mark.parametrize("eps", [0, 1, 0.0, np.float32(1e-3), np.float64(0.5), np.int64(2)],
                         ids=repr)
def test_eps_accepted_kinds(x32, eps):
    for _, f in EPS_FUNCS:
        r = f(x32, eps)
        y = r[0] if isinstance(r, tuple) else r
        assert y.shape == x32.shape and np.isfinite(y).all()


# ----------------------------------------------------------------------------------------------
# out


def test_out_wrong_dtype(x32):
    for odt in (np.float64, np.float16, np.int32):
        out = np.empty(x32.shape, odt)
        with pytest.raises(TypeError, match=r"\bout\b"):
            lnorm.layer_norm(x32, out=out)
        with pytest.raises(TypeError, match=r"\bout\b"):
            lnorm.rms_norm(x32, out=out)
    x64 = x32.astype(np.float64)
    with pytest.raises(TypeError, match=r"\bout\b"):
        lnorm.layer_norm(x64, out=np.empty(x64.shape, np.float32))


def test_out_not_an_array(x32):
    with pytest.raises(TypeError, match=r"\bout\b"):
        lnorm.layer_norm(x32, out=[[0.0] * N] * 4)
    with pytest.raises(TypeError, match=r"\bout\b"):
        lnorm.rms_norm(x32, out="out")


@pytest.mark.parametrize("shape", [(4, N + 1), (N, 4), (1, N), (4, 1, N), (4 * N,)], ids=str)
def test_out_wrong_shape(x32, shape):
    out = np.empty(shape, np.float32)
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.layer_norm(x32, out=out)
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.rms_norm(x32, out=out)


def test_out_read_only(x32):
    out = np.empty_like(x32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.layer_norm(x32, out=out)
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.rms_norm(x32, out=out)
    ro = x32.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.layer_norm(ro, out=ro)
    # a read-only x is fine as input
    assert lnorm.layer_norm(ro).shape == ro.shape


def test_out_partial_overlap(x32):
    buf = np.random.default_rng(73).standard_normal((4, N + 1)).astype(np.float32)
    x, out = buf[:, :-1], buf[:, 1:]
    before = buf.copy()
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.layer_norm(x, out=out)
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.rms_norm(x, out=out)
    assert np.array_equal(buf, before), "a rejected call wrote into its inputs"
    buf = np.random.default_rng(74).standard_normal((5, N)).astype(np.float32)
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.layer_norm(buf[:-1], out=buf[1:])
    with pytest.raises(ValueError, match=r"\bout\b"):
        lnorm.layer_norm(buf[:4], out=buf[::-1][:4])


def test_keyword_only_arguments(x32):
    with pytest.raises(TypeError):
        lnorm.layer_norm(x32, None, None, -1)
    with pytest.raises(TypeError):
        lnorm.rms_norm(x32, None, -1)
    s = np.ones((4, 1), np.float32)
    with pytest.raises(TypeError):
        lnorm.layer_norm_backward(x32, x32, s, s, None, -1)
    with pytest.raises(TypeError):
        lnorm.rms_norm_backward(x32, x32, s, None, -1)


# ----------------------------------------------------------------------------------------------
# backward: dy, mean, rstd


@pytest.fixture
def bw():
    rng = np.random.default_rng(75)
    x = rng.standard_normal((4, N)).astype(np.float32)
    dy = rng.standard_normal((4, N)).astype(np.float32)
    _, mean, rstd = lnorm.layer_norm(x, return_stats=True)
    _, rrstd = lnorm.rms_norm(x, return_stats=True)
    return x, dy, mean, rstd, rrstd


def test_backward_dy_wrong_shape(bw):
    x, dy, mean, rstd, rrstd = bw
    for bad in (dy[:, :-1], dy[:1], dy.T, dy[0], dy[None]):
        with pytest.raises(ValueError, match=r"\bdy\b"):
            lnorm.layer_norm_backward(bad, x, mean, rstd)
        with pytest.raises(ValueError, match=r"\bdy\b"):
            lnorm.rms_norm_backward(bad, x, rrstd)


def test_backward_dy_wrong_dtype(bw):
    x, dy, mean, rstd, rrstd = bw
    for odt in (np.float64, np.float16, np.int32):
        with pytest.raises(TypeError, match=r"\bdy\b"):
            lnorm.layer_norm_backward(dy.astype(odt), x, mean, rstd)
        with pytest.raises(TypeError, match=r"\bdy\b"):
            lnorm.rms_norm_backward(dy.astype(odt), x, rrstd)


def test_backward_stats_wrong_shape(bw):
    x, dy, mean, rstd, rrstd = bw
    for bad in (mean[:, 0], mean[:2], np.ones((1, 1), np.float32), np.ones((4, N), np.float32),
                np.ones((1, 4), np.float32), mean[None]):
        with pytest.raises(ValueError, match=r"\bmean\b"):
            lnorm.layer_norm_backward(dy, x, bad, rstd)
        with pytest.raises(ValueError, match=r"\brstd\b"):
            lnorm.layer_norm_backward(dy, x, mean, bad)
        with pytest.raises(ValueError, match=r"\brstd\b"):
            lnorm.rms_norm_backward(dy, x, bad)


def test_backward_stats_wrong_shape_other_axis():
    x = np.random.default_rng(76).standard_normal((2, 3, 4)).astype(np.float32)
    _, mean, rstd = lnorm.layer_norm(x, axis=1, return_stats=True)
    assert mean.shape == (2, 1, 4)
    lnorm.layer_norm_backward(x, x, mean, rstd, axis=1)  # fits
    with pytest.raises(ValueError, match=r"\bmean\b"):
        lnorm.layer_norm_backward(x, x, mean, rstd, axis=-1)
    with pytest.raises(ValueError, match=r"\bmean\b"):
        lnorm.layer_norm_backward(x, x, mean.reshape(2, 4, 1), rstd, axis=1)


def test_backward_stats_wrong_dtype(bw):
    x, dy, mean, rstd, rrstd = bw
    for odt in (np.float64, np.float16, np.int32):
        with pytest.raises(TypeError, match=r"\bmean\b"):
            lnorm.layer_norm_backward(dy, x, mean.astype(odt), rstd)
        with pytest.raises(TypeError, match=r"\brstd\b"):
            lnorm.layer_norm_backward(dy, x, mean, rstd.astype(odt))
        with pytest.raises(TypeError, match=r"\brstd\b"):
            lnorm.rms_norm_backward(dy, x, rrstd.astype(odt))


def test_backward_weight_errors(bw):
    x, dy, mean, rstd, rrstd = bw
    with pytest.raises(ValueError, match="weight"):
        lnorm.layer_norm_backward(dy, x, mean, rstd, np.ones(N + 1, np.float32))
    with pytest.raises(ValueError, match="weight"):
        lnorm.rms_norm_backward(dy, x, rrstd, np.ones((1, N), np.float32))
    with pytest.raises(TypeError, match="weight"):
        lnorm.layer_norm_backward(dy, x, mean, rstd, np.ones(N, np.float64))
    with pytest.raises(TypeError, match="weight"):
        lnorm.rms_norm_backward(dy, x, rrstd, np.ones(N, np.int32))


def test_backward_inputs_unchanged_after_errors(bw):
    x, dy, mean, rstd, rrstd = bw
    copies = [a.copy() for a in (x, dy, mean, rstd)]
    with pytest.raises(ValueError):
        lnorm.layer_norm_backward(dy, x, mean, rstd, np.ones(N + 1, np.float32))
    for a, c in zip((x, dy, mean, rstd), copies):
        assert np.array_equal(a, c)


# ----------------------------------------------------------------------------------------------
# add & norm: residual


def test_residual_wrong_shape(x32):
    for bad in (np.ones(N, np.float32), np.ones((1, N), np.float32), np.ones((4, N + 1),
                np.float32), x32.T.copy(), np.ones((2, 4, N), np.float32)):
        with pytest.raises(ValueError, match="residual"):
            lnorm.add_layer_norm(x32, bad)
        with pytest.raises(ValueError, match="residual"):
            lnorm.add_rms_norm(x32, bad)


def test_residual_wrong_dtype(x32):
    for odt in (np.float64, np.float16, np.int32, np.complex64):
        with pytest.raises(TypeError, match="residual"):
            lnorm.add_layer_norm(x32, x32.astype(odt))
        with pytest.raises(TypeError, match="residual"):
            lnorm.add_rms_norm(x32, x32.astype(odt))
    x64 = x32.astype(np.float64)
    with pytest.raises(TypeError, match="residual"):
        lnorm.add_layer_norm(x64, x32)


# ----------------------------------------------------------------------------------------------
# Modules


def test_module_errors():
    x = np.random.default_rng(77).standard_normal((3, 8)).astype(np.float32)
    for cls in (lnorm.LayerNorm, lnorm.RMSNorm):
        m = cls(8)
        with pytest.raises(RuntimeError):
            m.backward(np.ones((3, 8), np.float32))
        with pytest.raises(ValueError):
            cls(7)(x)
        with pytest.raises(ValueError):
            cls((3, 8))(x[0])
        with pytest.raises(ValueError):
            cls((4, 8))(x)
        with pytest.raises(ValueError):
            cls(-1)
        with pytest.raises(TypeError):
            cls(2.5)
        with pytest.raises(ValueError):
            cls(8, eps=-1.0)(x)
        with pytest.raises(TypeError):
            m(x.astype(np.int32))
        m(x)
        with pytest.raises(ValueError):
            m.backward(np.ones((3, 7), np.float32))
