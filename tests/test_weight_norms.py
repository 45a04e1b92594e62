"""examples/weight_norms.py: weight standardization (lnorm.layer_norm over each filter's fan-in) and
weight normalization (lnorm.rms_norm over the fan-in, times g / sqrt(fan_in)) against plain NumPy
in float64."""

import importlib.util
import math
import os

import numpy as np
import pytest

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"lnorm_example_{name}",
                                                  os.path.join(EXAMPLES_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipes():
    return _load_example("weight_norms")


# Linear (out, in), conv (out, in, kh, kw), 1x1 conv, conv1d (out, in, k), a large fan-in.
SHAPES = [(8, 16), (16, 8, 3, 3), (4, 5, 1, 1), (3, 2, 5), (1, 7), (32, 64, 3, 3)]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _ws_numpy(w, eps):
    """(w - mean) / sqrt(var + eps) per output unit, biased variance, in float64."""
    flat = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    mean = flat.mean(axis=1, keepdims=True)
    var = flat.var(axis=1, keepdims=True)
    return ((flat - mean) / np.sqrt(var + eps)).reshape(w.shape)


def _wn_numpy(v, g):
    """g[o] * v[o] / ||v[o]|| in float64."""
    flat = np.asarray(v, np.float64).reshape(v.shape[0], -1)
    g = np.broadcast_to(np.asarray(g, np.float64), (v.shape[0],))
    return (g[:, None] * flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(v.shape)


def _weight(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 0.05 + rng.uniform(-0.1, 0.1)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_weight_standardize_matches_numpy(recipes, shape, dtype, eps):
    w = _weight(shape, dtype, 1)
    saved = w.copy()
    got = recipes.weight_standardize(w, eps=eps)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(w, saved)  # the weight itself is not modified
    want = _ws_numpy(w, eps)
    assert np.abs(got - want).max() <= TOL[dtype] * max(1.0, np.abs(want).max())
    if eps == 0.0:  # each filter: mean 0, biased standard deviation 1
        flat = got.astype(np.float64).reshape(shape[0], -1)
        np.testing.assert_allclose(flat.mean(axis=1), 0.0, atol=10 * TOL[dtype])
        np.testing.assert_allclose(flat.std(axis=1), 1.0, rtol=10 * TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES + [(5, 1)], ids=str)
@pytest.mark.parametrize("g", ["vector", "scalar"])
def test_weight_normalize_matches_numpy(recipes, shape, dtype, g):
    v = _weight(shape, dtype, 2)
    saved = v.copy()
    gain = np.random.default_rng(3).uniform(-2.0, 2.0, shape[0]) if g == "vector" else 1.7
    got = recipes.weight_normalize(v, gain)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(v, saved)
    want = _wn_numpy(v, gain)
    assert np.abs(got - want).max() <= TOL[dtype] * np.abs(gain).max()
    # Each unit's weight vector has norm |g[o]|.
    norms = np.linalg.norm(got.astype(np.float64).reshape(shape[0], -1), axis=1)
    np.testing.assert_allclose(norms, np.broadcast_to(np.abs(gain), norms.shape),
                               rtol=10 * TOL[dtype])


def test_weight_normalize_is_rms_norm_over_sqrt_fan_in():
    """The identity behind the recipe: rms_norm(v) = sqrt(fan_in) * v / ||v|| with eps = 0."""
    import lnorm

    v = _weight((6, 4, 3, 3), np.float64, 4)
    unit = lnorm.rms_norm(v, axis=(1, 2, 3), eps=0.0)
    np.testing.assert_allclose(unit / math.sqrt(4 * 3 * 3), _wn_numpy(v, 1.0), rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_recipes_take_strided_weights(recipes, dtype):
    """A conv weight stored as (kh, kw, in, out) and viewed as (out, in, kh, kw): not contiguous."""
    w = _weight((3, 3, 8, 16), dtype, 5).transpose(3, 2, 0, 1)
    assert not w.flags.c_contiguous
    g = np.linspace(0.5, 1.5, 16)
    err = np.abs(recipes.weight_standardize(w, eps=1e-5) - _ws_numpy(w, 1e-5)).max()
    assert err <= 10 * TOL[dtype]
    assert np.abs(recipes.weight_normalize(w, g) - _wn_numpy(w, g)).max() <= 10 * TOL[dtype]


def test_recipes_reject_a_vector(recipes):
    with pytest.raises(ValueError, match="fan-in"):
        recipes.weight_standardize(np.ones(4))
    with pytest.raises(ValueError, match="fan-in"):
        recipes.weight_normalize(np.ones(4), 1.0)


def test_recipes_match_torch(recipes):
    """The same two recipes as PyTorch writes them: torch._weight_norm (what weight_norm(dim=0)
    computes) and a standardized conv weight as a standardized convolution computes it (batch_norm over each
    filter: biased variance, eps inside the root)."""
    torch = pytest.importorskip("torch")
    v = _weight((16, 8, 3, 3), np.float64, 6)
    g = np.random.default_rng(7).uniform(0.5, 2.0, 16)
    tv = torch.from_numpy(v)
    want_wn = torch._weight_norm(tv, torch.from_numpy(g).reshape(16, 1, 1, 1), 0).numpy()
    np.testing.assert_allclose(recipes.weight_normalize(v, g), want_wn, rtol=1e-12, atol=1e-14)
    want_ws = torch.nn.functional.batch_norm(tv.reshape(1, 16, -1), None, None, training=True,
                                             momentum=0.0, eps=1e-6).reshape_as(tv).numpy()
    np.testing.assert_allclose(recipes.weight_standardize(v, eps=1e-6), want_ws, rtol=1e-12,
                               atol=1e-12)


def test_weight_norms_self_check(recipes, capsys):
    assert recipes.self_check()
    assert "FAILED" not in capsys.readouterr().out
