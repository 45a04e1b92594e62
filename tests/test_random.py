"""Property tests with hypothesis: random shapes (empty batches included), axis sets written every
way NumPy allows, steps and transpositions, dtypes, eps and affine choices, forward and backward,
all against the float64 reference. Derandomized (reproducible) with a bounded example count."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lnorm  # noqa: E402
from checks import (check_layer_norm, check_ln_backward, check_rms_backward,  # noqa: E402
                    check_rms_norm)
from reference import (assert_close, layer_norm_ref, norm_axes, param_shape,  # noqa: E402
                       rand_param, rand_x, rms_norm_ref)

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, allow_empty_batch=True):
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    if ndim > 1 and draw(st.integers(0, 7)) == 0:  # sometimes a long normalized axis
        shape[-1] = draw(st.sampled_from([31, 33, 64, 65, 127, 257, 1025]))
    naxes = draw(st.integers(1, ndim))
    axes = draw(st.permutations(range(ndim)))[:naxes]
    batch = [i for i in range(ndim) if i not in axes]
    if allow_empty_batch and batch and draw(st.integers(0, 9)) == 0:
        shape[draw(st.sampled_from(batch))] = 0
    # how the axis argument is written: int or tuple, in any order, negative or not
    written = tuple(a - ndim if draw(st.booleans()) else a for a in axes)
    axis = written[0] if len(written) == 1 and draw(st.booleans()) else written
    steps = [draw(st.sampled_from([1, 1, 2, 3, -1, -2])) for _ in range(ndim)]
    perm = draw(st.permutations(range(ndim)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    eps = draw(st.sampled_from([0.0, 1e-6, 1e-5, 1e-2, 1.0, 10.0]))
    affine = draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    return tuple(shape), axis, steps, tuple(perm), dtype, eps, affine, seed


def make_array(rng, shape, steps, perm, dtype):
    """An array of `shape` laid out as a strided view of a transposed bigger array."""
    inv = np.argsort(perm)
    big_shape = [shape[p] * abs(steps[p]) for p in perm]
    big = rand_x(rng, big_shape, dtype)
    v = big[tuple(slice(None, None, steps[p]) for p in perm)]
    v = v.transpose(inv)
    assert v.shape == shape
    return v


def make_params(rng, shape, axis, dtype, affine):
    pshape = param_shape(shape, norm_axes(len(shape), axis))
    w = rand_param(rng, pshape, dtype) if affine in (1, 2) else None
    b = rand_param(rng, pshape, dtype, center=0.0) if affine in (2, 3) else None
    return w, b


@SETTINGS
@given(problems())
def test_random_forward(problem):
    shape, axis, steps, perm, dtype, eps, affine, seed = problem
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, steps, perm, dtype)
    w, b = make_params(rng, shape, axis, dtype, affine)
    if eps == 0.0 and all(x.shape[a] == 1 for a in norm_axes(x.ndim, axis)):
        eps = 1e-5  # one-element rows with eps = 0 have rstd = inf; covered elsewhere
    check_layer_norm(x, w, b, axis, eps)
    check_rms_norm(x, w, axis, eps)


@SETTINGS
@given(problems())
def test_random_backward(problem):
    shape, axis, steps, perm, dtype, eps, affine, seed = problem
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, steps, perm, dtype)
    dy = make_array(rng, shape, steps[::-1], perm[::-1], dtype)
    w, _ = make_params(rng, shape, axis, dtype, affine)
    eps = max(eps, 1e-6)  # one-element rows with eps = 0: rstd = inf, dx = NaN by definition
    check_ln_backward(dy, x, w, axis, eps)
    check_rms_backward(dy, x, w, axis, eps)


@SETTINGS
@given(problems(allow_empty_batch=False), st.sampled_from(["layer", "rms"]))
def test_random_out_and_add(problem, kind):
    """out= (in place and separate, any layout) and add&norm on random layouts."""
    shape, axis, steps, perm, dtype, eps, affine, seed = problem
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, steps, perm, dtype)
    res = make_array(rng, shape, steps[::-1], perm, dtype)
    w, b = make_params(rng, shape, axis, dtype, affine)
    eps = max(eps, 1e-6)
    if kind == "layer":
        f = lambda a, **kw: lnorm.layer_norm(a, w, b, axis=axis, eps=eps, **kw)  # noqa: E731
        y_ref = layer_norm_ref(x, w, b, axis, eps)[0]
        ys, s = lnorm.add_layer_norm(x, res, w, b, axis=axis, eps=eps)
        ys_ref = layer_norm_ref(x + res, w, b, axis, eps)[0]
    else:
        f = lambda a, **kw: lnorm.rms_norm(a, w, axis=axis, eps=eps, **kw)  # noqa: E731
        y_ref = rms_norm_ref(x, w, axis, eps)[0]
        ys, s = lnorm.add_rms_norm(x, res, w, axis=axis, eps=eps)
        ys_ref = rms_norm_ref(x + res, w, axis, eps)[0]
    assert np.array_equal(s, x + res)
    assert_close(ys, ys_ref, dtype, what="add&norm y")
    out = make_array(rng, shape, steps, perm[::-1], dtype)
    assert f(x, out=out) is out
    assert_close(out, y_ref, dtype, what="out")
    xc = x.copy()
    assert f(x, out=x) is x
    assert_close(x, y_ref, dtype, what="in place")
    assert_close(x, f(xc), dtype, what="in place vs fresh")
