"""The examples in examples/: gradients of their whole models against finite differences, layer
norm's independence of the batch, and short (--quick) runs of batch_size.py and recurrent.py."""

import importlib.util
import os
import sys

import numpy as np
import pytest

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
if EXAMPLES_DIR not in sys.path:
    sys.path.insert(0, EXAMPLES_DIR)

import _nn  # noqa: E402  (examples/_nn.py: NumPy layers, needs only numpy and lnorm)


def _load_example(name):
    """examples/<name>.py as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"lnorm_example_{name}",
                                                  os.path.join(EXAMPLES_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Finite differences


def _loss(model, x, labels):
    return _nn.softmax_cross_entropy(model(x), labels)[0]


def _numerical_gradient(model, x, labels, array, step=1e-6):
    """Central differences of the loss with respect to every element of ``array`` (in place)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        plus = _loss(model, x, labels)
        array[index] = saved - step
        minus = _loss(model, x, labels)
        array[index] = saved
        grad[index] = (plus - minus) / (2 * step)
    return grad


def _relative_error(analytic, numerical):
    a = np.concatenate([g.ravel() for g in analytic])
    b = np.concatenate([g.ravel() for g in numerical])
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _check_whole_model(model, x, labels, tol=1e-6):
    """Back-propagated gradients of every parameter and of the input against central differences."""
    model.train()
    _, dlogits = _nn.softmax_cross_entropy(model(x), labels)
    dx = model.backward(dlogits)
    analytic = [g.copy() for g in model.gradients()] + [dx]
    parameters = model.parameters() + [x]
    assert len(analytic) == len(parameters)
    for g, p in zip(analytic, parameters):
        assert g.shape == p.shape and g.dtype == np.float64
    numerical = [_numerical_gradient(model, x, labels, p) for p in parameters]
    # Whole-model error, then each array on its own (none may hide behind a larger one).
    assert _relative_error(analytic, numerical) < tol
    for name_index, (g, n) in enumerate(zip(analytic, numerical)):
        assert np.linalg.norm(g - n) <= tol * max(np.linalg.norm(n), 1e-8), f"array {name_index}"


@pytest.mark.parametrize("norm", [None, "batch", "layer"], ids=["plain", "batch_norm", "layer_norm"])
def test_mlp_gradients_match_finite_differences(norm):
    rng = np.random.default_rng(11)
    model = _nn.mlp(5, 6, 3, norm, np.random.default_rng(12), dtype=np.float64)
    if norm is not None:  # non-trivial gains and biases, so that their gradients are tested too
        for p in model.parameters():
            if p.ndim == 1:
                p += rng.uniform(-0.5, 0.5, p.shape)
    _check_whole_model(model, rng.standard_normal((4, 5)), np.array([0, 1, 2, 1]))


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_lstm_gradients_match_finite_differences(layer_norm):
    rng = np.random.default_rng(21)
    model = _nn.SequenceClassifier(3, 5, 4, layer_norm, np.random.default_rng(22), dtype=np.float64)
    if layer_norm:
        lstm = model.lstm
        for p in (lstm.recurrent_norm.weight, lstm.input_norm.weight, lstm.cell_norm.weight,
                  lstm.cell_norm.bias):
            p += rng.uniform(-0.5, 0.5, p.shape)
    xs = rng.standard_normal((4, 3, 3))  # 4 steps, batch 3, 3 inputs
    _check_whole_model(model, xs, np.array([0, 3, 2]))


def test_lstm_layer_norm_calls_lnorm_every_step(monkeypatch):
    """The LN-LSTM's norms are lnorm's: forward with stats and backward, at every time step."""
    import lnorm

    calls = {"layer_norm": 0, "layer_norm_backward": 0}

    def counting(name):
        original = getattr(lnorm, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(lnorm, name, counting(name))
    steps = 6
    model = _nn.SequenceClassifier(3, 5, 4, True, np.random.default_rng(0), dtype=np.float64)
    xs = np.random.default_rng(1).standard_normal((steps, 2, 3))
    _, dlogits = _nn.softmax_cross_entropy(model(xs), np.array([0, 1]))
    model.backward(dlogits)
    # Per step: 4 gate groups of W_h h and the cell state; once per sequence: 4 groups of W_x x.
    assert calls["layer_norm"] == steps * (4 + 1) + 4
    assert calls["layer_norm_backward"] == steps * (4 + 1) + 4


# ----------------------------------------------------------------------------------------------
# The claim behind the batch-size example, checked directly


def test_layer_norm_output_does_not_depend_on_the_batch():
    """An example's output with layer norm is the same whatever else is in its batch; with batch
    norm (training mode) it is not."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 16)).astype(np.float32)
    ln_model = _nn.mlp(16, 32, 10, "layer", np.random.default_rng(6))
    bn_model = _nn.mlp(16, 32, 10, "batch", np.random.default_rng(6))
    alone = ln_model(x[:1])
    for batch in (x[:4], x[[0, 4, 5, 6]], x):
        np.testing.assert_allclose(ln_model(batch)[:1], alone, rtol=1e-5, atol=1e-6)
    assert np.abs(bn_model(x[:4])[0] - bn_model(x[[0, 4, 5, 6]])[0]).max() > 1e-2


# ----------------------------------------------------------------------------------------------
# Short runs of both examples


@pytest.fixture
def plotting():
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")


def _final(results, key, metric):
    return float(np.mean([run[metric][-1] for run in results[key]]))


def test_batch_size_example_quick(plotting, tmp_path, capsys):
    example = _load_example("batch_size")
    results = example.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "batch_size.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "training NLL" in printed and "test error" in printed
    assert set(results) == {(m, b) for m in example.METHODS for b in example.BATCH_SIZES}
    for key, runs in results.items():
        for run in runs:
            assert run["train_loss"][-1] < 0.5 * run["train_loss"][0], key
            assert run["test_error"][-1] < 0.2, key
    # Already after 3 epochs batch norm at batch size 4 lags behind layer norm at batch size 4.
    assert (_final(results, ("layer norm", 4), "train_loss")
            < 0.6 * _final(results, ("batch norm", 4), "train_loss"))
    # Normalizing each test batch of 4 with its own statistics: layer norm does not care (the same
    # error up to one example, from rounding), batch norm does.
    ln_run, bn_run = results[("layer norm", 4)][0], results[("batch norm", 4)][0]
    n_test = 449
    assert abs(ln_run["test_error_batch_stats"] - ln_run["test_error"][-1]) <= 1.01 / n_test
    assert bn_run["test_error_batch_stats"] > 2 * ln_run["test_error"][-1] + 0.02


def test_recurrent_example_quick(plotting, tmp_path, capsys):
    example = _load_example("recurrent")
    results = example.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "recurrent.png").stat().st_size > 10_000
    assert "LSTM + layer norm" in capsys.readouterr().out
    for key, runs in results.items():
        for run in runs:
            assert run["train_loss"][-1] < 0.2 * run["train_loss"][0], key
            assert run["test_error"][-1] < 0.2, key
    # After one epoch the layer-normalized LSTM is well ahead (13.6% against 21.2% test error for
    # this seed; the gap was at least 3.8 points for each of 3 seeds).
    ln_run, plain_run = results["LSTM + layer norm"][0], results["LSTM"][0]
    one_epoch = ln_run["epoch"].index(1.0)
    assert ln_run["test_error"][one_epoch] < plain_run["test_error"][one_epoch] - 0.03
