"""Just enough neural network in NumPy for the examples: layers with hand-written backward passes,
a batch-normalization baseline, an LSTM with and without layer normalization (lnorm's forward and
backward at every time step), softmax cross-entropy, Adam, and the bundled digits data set.

Every layer norm here is lnorm's: ``lnorm.LayerNorm`` modules in the MLP, and ``lnorm.layer_norm``
(``return_stats=True``) with ``lnorm.layer_norm_backward`` inside the LSTM. Everything else is plain
NumPy, so that the examples show what lnorm does and what it leaves to the caller.

Layers follow one small protocol: ``layer(x)`` runs forward and keeps what ``layer.backward(dy)``
needs; ``backward`` returns the gradient with respect to the input and stores the parameter
gradients; ``parameters()`` and ``gradients()`` list the arrays in the same order. Parameters are
updated in place, so the lists stay valid for the whole of training.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> model = mlp(64, 32, 10, norm="layer", rng=rng)
>>> x, labels = rng.standard_normal((5, 64)), np.arange(5)
>>> loss, dlogits = softmax_cross_entropy(model(x), labels)
>>> model.backward(dlogits).shape
(5, 64)
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

import lnorm

# ----------------------------------------------------------------------------------------------
# Data


def single_threaded_blas():
    """A context in which NumPy's BLAS runs on one thread (through threadpoolctl, which
    scikit-learn brings along; a no-op without it).

    The matrices here are tiny (at most a few hundred by a few hundred): waking BLAS threads costs
    far more than they give. On a 2-core machine a 128x64 by 64x256 float32 product took 1.3 ms with
    OpenBLAS's threads and 0.06 ms without.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def load_digits_split(test_fraction: float = 0.25, seed: int = 0, dtype=np.float32):
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1], split once.

    Returns ``(x_train, y_train, x_test, y_test)`` with images as rows of 64 pixels; the split is a
    fixed permutation drawn from ``seed``.

    >>> x_train, y_train, x_test, y_test = load_digits_split()
    >>> x_train.shape, x_test.shape
    ((1348, 64), (449, 64))
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data / 16.0).astype(dtype)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def minibatches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays covering a fresh permutation of ``range(n)``; the last short batch is dropped
    so that every step (and every batch-norm estimate) sees exactly ``batch_size`` examples."""
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start:start + batch_size]


# ----------------------------------------------------------------------------------------------
# Loss


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean negative log-likelihood of ``labels`` under softmax(``logits``), and its gradient.

    >>> loss, dlogits = softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(loss, 4), dlogits.shape
    (1.3863, (2, 4))
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows = np.arange(len(labels))
    loss = float(-log_probs[rows, labels].mean())
    dlogits = np.exp(log_probs)
    dlogits[rows, labels] -= 1.0
    return loss, dlogits / len(labels)


# ----------------------------------------------------------------------------------------------
# Layers


def _layer_gradients(layer) -> List[np.ndarray]:
    """The parameter gradients of one layer, aligned with ``layer.parameters()``.

    lnorm.LayerNorm keeps its gradients in ``.weight_grad`` / ``.bias_grad``; our own layers
    answer ``gradients()``.
    """
    if isinstance(layer, lnorm.LayerNorm):
        return [g for p, g in ((layer.weight, layer.weight_grad), (layer.bias, layer.bias_grad))
                if p is not None]
    return layer.gradients()


class Linear:
    """``y = x @ weight + bias``, weight initialised with He scaling (for the ReLUs that follow).

    >>> layer = Linear(3, 2, np.random.default_rng(0))
    >>> layer(np.ones((4, 3), np.float32)).shape
    (4, 2)
    """

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator, bias: bool = True,
                 dtype=np.float32, scale: Optional[float] = None):
        scale = np.sqrt(2.0 / n_in) if scale is None else scale
        self.weight = (rng.standard_normal((n_in, n_out)) * scale).astype(dtype)
        self.bias = np.zeros(n_out, dtype) if bias else None
        self.weight_grad = np.zeros_like(self.weight)
        self.bias_grad = np.zeros_like(self.bias) if bias else None
        self._x = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.weight_grad = self._x.T @ dy
        if self.bias is not None:
            self.bias_grad = dy.sum(axis=0)
        return dy @ self.weight.T

    def parameters(self) -> List[np.ndarray]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def gradients(self) -> List[np.ndarray]:
        return [self.weight_grad] + ([self.bias_grad] if self.bias is not None else [])


class ReLU:
    """``max(x, 0)``, elementwise."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._positive = x > 0
        return np.where(self._positive, x, 0).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return np.where(self._positive, dy, 0).astype(dy.dtype, copy=False)

    def parameters(self) -> List[np.ndarray]:
        return []

    def gradients(self) -> List[np.ndarray]:
        return []


class BatchNorm:
    """Batch normalization over the batch axis (Ioffe and Szegedy, 2015): the baseline.

    Training mode normalizes each feature with the mean and biased variance of the current
    minibatch and folds them into running averages (``momentum`` 0.1, as torch.nn.BatchNorm1d);
    inference mode (``training = False``) uses the running averages. That is the whole difficulty
    at small batch sizes: a 4-example estimate is noisy while training, and at test time the network
    meets statistics it was never trained with.

    >>> bn = BatchNorm(3)
    >>> y = bn(np.arange(12, dtype=np.float32).reshape(4, 3))
    >>> np.allclose(y.mean(axis=0), 0, atol=1e-6), np.allclose(y.var(axis=0), 1, atol=1e-4)
    (True, True)
    """

    def __init__(self, n: int, eps: float = 1e-5, momentum: float = 0.1, dtype=np.float32):
        self.weight = np.ones(n, dtype)
        self.bias = np.zeros(n, dtype)
        self.weight_grad = np.zeros_like(self.weight)
        self.bias_grad = np.zeros_like(self.bias)
        self.running_mean = np.zeros(n, dtype)
        self.running_var = np.ones(n, dtype)
        self.eps, self.momentum = eps, momentum
        self.training = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.training:
            mean = x.mean(axis=0)
            var = x.var(axis=0)
            n = x.shape[0]
            m = self.momentum
            self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(x.dtype)
            unbiased = var * n / max(n - 1, 1)
            self.running_var = ((1 - m) * self.running_var + m * unbiased).astype(x.dtype)
        else:
            mean, var = self.running_mean, self.running_var
        rstd = 1.0 / np.sqrt(var + self.eps)
        self._xhat, self._rstd = (x - mean) * rstd, rstd
        return self._xhat * self.weight + self.bias

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if not self.training:
            raise RuntimeError("BatchNorm.backward: only the training-mode forward is differentiated")
        xhat, rstd = self._xhat, self._rstd
        self.weight_grad = (dy * xhat).sum(axis=0)
        self.bias_grad = dy.sum(axis=0)
        dxhat = dy * self.weight
        # The batch statistics depend on every row, hence the two batch means in the gradient.
        return rstd * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))

    def parameters(self) -> List[np.ndarray]:
        return [self.weight, self.bias]

    def gradients(self) -> List[np.ndarray]:
        return [self.weight_grad, self.bias_grad]


class Sequential:
    """Layers applied in order; ``backward`` runs them in reverse.

    ``train()`` / ``eval()`` switch the layers that care (batch norm) between batch and running
    statistics; ``lnorm.LayerNorm`` computes the same thing in both modes.
    """

    def __init__(self, layers: Sequence):
        self.layers = list(layers)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode: bool = True) -> "Sequential":
        for layer in self.layers:
            if hasattr(layer, "training"):
                layer.training = mode
        return self

    def eval(self) -> "Sequential":
        return self.train(False)

    def parameters(self) -> List[np.ndarray]:
        return [p for layer in self.layers for p in layer.parameters()]

    def gradients(self) -> List[np.ndarray]:
        return [g for layer in self.layers for g in _layer_gradients(layer)]


def mlp(n_in: int, n_hidden: int, n_out: int, norm: Optional[str], rng: np.random.Generator,
        n_layers: int = 2, dtype=np.float32) -> Sequential:
    """The permutation-invariant classifier: ``n_layers`` x (Linear, norm, ReLU), then Linear.

    ``norm`` is None, ``"batch"`` (:class:`BatchNorm`) or ``"layer"`` (``lnorm.LayerNorm``), applied
    to the summed inputs of every hidden layer, before the non-linearity, as in both papers. The
    hidden Linear layers drop their bias when a norm follows (the norm's own bias replaces it).

    >>> [type(m).__name__ for m in mlp(64, 32, 10, "layer", np.random.default_rng(0)).layers]
    ['Linear', 'LayerNorm', 'ReLU', 'Linear', 'LayerNorm', 'ReLU', 'Linear']
    """
    if norm not in (None, "batch", "layer"):
        raise ValueError(f"norm: must be None, 'batch' or 'layer', got {norm!r}")
    layers, width = [], n_in
    for _ in range(n_layers):
        layers.append(Linear(width, n_hidden, rng, bias=norm is None, dtype=dtype))
        if norm == "batch":
            layers.append(BatchNorm(n_hidden, dtype=dtype))
        elif norm == "layer":
            layers.append(lnorm.LayerNorm(n_hidden, dtype=dtype))
        layers.append(ReLU())
        width = n_hidden
    layers.append(Linear(width, n_out, rng, dtype=dtype, scale=np.sqrt(1.0 / width)))
    return Sequential(layers)


# ----------------------------------------------------------------------------------------------
# LSTM


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow warnings for large |x|


class GateNorm:
    """Layer normalization of each of the four gate groups of an LSTM pre-activation, by lnorm.

    The pre-activation has shape ``(..., 4 * n_hidden)`` laid out as (forget, input, output, cell
    candidate) groups; each group is normalized over its own ``n_hidden`` units with its own gain
    (and, optionally, bias). Each call keeps its statistics on a stack, so one GateNorm serves every
    time step and ``backward`` pops them in reverse order (back-propagation through time).
    """

    def __init__(self, n_hidden: int, n_groups: int = 4, bias: bool = False, gain: float = 1.0,
                 eps: float = 1e-5, dtype=np.float32):
        self.n_hidden, self.n_groups, self.eps = n_hidden, n_groups, eps
        self.weight = np.full((n_groups, n_hidden), gain, dtype)
        self.bias = np.zeros((n_groups, n_hidden), dtype) if bias else None
        self.weight_grad = np.zeros_like(self.weight)
        self.bias_grad = np.zeros_like(self.bias) if bias else None
        self._saved: list = []

    def __call__(self, a: np.ndarray) -> np.ndarray:
        h = self.n_hidden
        y = np.empty_like(a)
        stats = []
        for g in range(self.n_groups):
            group = a[..., g * h:(g + 1) * h]  # a strided view: lnorm takes any strides
            bias = self.bias[g] if self.bias is not None else None
            y[..., g * h:(g + 1) * h], mean, rstd = lnorm.layer_norm(
                group, self.weight[g], bias, eps=self.eps, return_stats=True)
            stats.append((mean, rstd))
        self._saved.append((a, stats))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        a, stats = self._saved.pop()
        h = self.n_hidden
        da = np.empty_like(a)
        for g, (mean, rstd) in enumerate(stats):
            cols = slice(g * h, (g + 1) * h)
            da[..., cols], dweight, dbias = lnorm.layer_norm_backward(
                dy[..., cols], a[..., cols], mean, rstd, self.weight[g])
            self.weight_grad[g] += dweight
            if self.bias is not None:
                self.bias_grad[g] += dbias
        return da

    def zero_grad(self) -> None:
        self.weight_grad[...] = 0
        if self.bias is not None:
            self.bias_grad[...] = 0
        self._saved.clear()

    def parameters(self) -> List[np.ndarray]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def gradients(self) -> List[np.ndarray]:
        return [self.weight_grad] + ([self.bias_grad] if self.bias is not None else [])


class LSTM:
    """A one-layer LSTM over ``(T, batch, n_in)`` sequences, optionally layer-normalized.

    Without layer norm: ``a_t = W_x x_t + W_h h_{t-1} + b``. With ``layer_norm=True``, the paper's
    equations 20-22 (Ba, Kiros and Hinton 2016, supplementary material), with every layer norm
    computed by lnorm, forward and backward::

        a_t = LN(W_h h_{t-1}; alpha_1) + LN(W_x x_t; alpha_2) + b     (each gate group on its own)
        c_t = sigmoid(f_t) * c_{t-1} + sigmoid(i_t) * tanh(g_t)
        h_t = sigmoid(o_t) * tanh(LN(c_t; alpha_3, beta_3))

    Two simplifications, neither changing the function class: the two gate-term norms carry no
    bias of their own (``beta_1 + beta_2 + b`` is one bias, ``b``), and the four gate groups
    (f, i, o, g) are normalized separately, each with its own gain, as common LN-LSTM
    implementations do, rather than as one 4H vector. ``W_x x_t`` does not depend on ``h``, so its
    norm runs once for the whole sequence; the recurrent and cell norms run at every step.

    >>> lstm = LSTM(8, 16, layer_norm=True, rng=np.random.default_rng(0))
    >>> h = lstm(np.zeros((5, 3, 8), np.float32))
    >>> h.shape, lstm.backward(np.ones_like(h)).shape
    ((3, 16), (5, 3, 8))
    """

    def __init__(self, n_in: int, n_hidden: int, layer_norm: bool, rng: np.random.Generator,
                 dtype=np.float32, forget_bias: float = 1.0):
        H = n_hidden
        self.n_hidden, self.layer_norm = H, layer_norm
        self.input_weight = (rng.standard_normal((n_in, 4 * H)) / np.sqrt(n_in)).astype(dtype)
        # Orthogonal recurrent blocks: a standard LSTM initialisation, the same for both models.
        blocks = [np.linalg.qr(rng.standard_normal((H, H)))[0] for _ in range(4)]
        self.recurrent_weight = np.concatenate(blocks, axis=1).astype(dtype)
        self.bias = np.zeros(4 * H, dtype)
        self.bias[:H] = forget_bias  # the forget gate starts open
        self.params = [self.input_weight, self.recurrent_weight, self.bias]
        if layer_norm:
            self.recurrent_norm = GateNorm(H, dtype=dtype)
            self.input_norm = GateNorm(H, dtype=dtype)
            self.cell_norm = lnorm.LayerNorm(H, dtype=dtype)
        self.grads = [np.zeros_like(p) for p in self.params]

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        """Runs the sequence ``xs`` (T, batch, n_in) from zero state; returns the last ``h``."""
        T, B, _ = xs.shape
        H = self.n_hidden
        dtype = self.input_weight.dtype
        if self.layer_norm:
            self.recurrent_norm.zero_grad()
            self.input_norm.zero_grad()
            self.cell_stats = []
        input_terms = xs @ self.input_weight  # (T, B, 4H): one matmul for every step
        if self.layer_norm:
            input_terms = self.input_norm(input_terms)
        h = np.zeros((B, H), dtype)
        c = np.zeros((B, H), dtype)
        self.steps = []
        for t in range(T):
            recurrent_term = h @ self.recurrent_weight
            if self.layer_norm:
                recurrent_term = self.recurrent_norm(recurrent_term)
            a = input_terms[t] + recurrent_term + self.bias
            f, i, o = (_sigmoid(a[:, k * H:(k + 1) * H]) for k in range(3))
            g = np.tanh(a[:, 3 * H:])
            c_new = f * c + i * g
            if self.layer_norm:
                c_normed, mean, rstd = lnorm.layer_norm(c_new, self.cell_norm.weight,
                                                        self.cell_norm.bias, eps=self.cell_norm.eps,
                                                        return_stats=True)
                self.cell_stats.append((mean, rstd))
            else:
                c_normed = c_new
            tanh_c = np.tanh(c_normed)
            h_new = o * tanh_c
            self.steps.append((h, c, f, i, o, g, c_new, tanh_c))
            h, c = h_new, c_new
        self._xs = xs
        return h

    def backward(self, dh_last: np.ndarray) -> np.ndarray:
        """Back-propagation through time from the gradient of the last ``h``; returns d xs."""
        H = self.n_hidden
        xs = self._xs
        T = xs.shape[0]
        d_input_weight = np.zeros_like(self.input_weight)
        d_recurrent_weight = np.zeros_like(self.recurrent_weight)
        d_input_terms = np.empty(xs.shape[:2] + (4 * H,), xs.dtype)
        if self.layer_norm:
            cell_weight_grad = np.zeros_like(self.cell_norm.weight)
            cell_bias_grad = np.zeros_like(self.cell_norm.bias)
        dh, dc = dh_last, np.zeros_like(dh_last)
        for t in reversed(range(T)):
            h_prev, c_prev, f, i, o, g, c_new, tanh_c = self.steps[t]
            do = dh * tanh_c
            dc_normed = dh * o * (1.0 - tanh_c * tanh_c)
            if self.layer_norm:
                mean, rstd = self.cell_stats[t]
                dc_new, dw, db = lnorm.layer_norm_backward(dc_normed, c_new, mean, rstd,
                                                           self.cell_norm.weight)
                cell_weight_grad += dw
                cell_bias_grad += db
                dc = dc + dc_new
            else:
                dc = dc + dc_normed
            da = np.concatenate([dc * c_prev * f * (1.0 - f),   # forget
                                 dc * g * i * (1.0 - i),        # input
                                 do * o * (1.0 - o),            # output
                                 dc * i * (1.0 - g * g)],       # cell candidate
                                axis=1)
            d_input_terms[t] = da
            d_recurrent_term = self.recurrent_norm.backward(da) if self.layer_norm else da
            d_recurrent_weight += h_prev.T @ d_recurrent_term
            dh = d_recurrent_term @ self.recurrent_weight.T
            dc = dc * f
        d_bias = d_input_terms.sum(axis=(0, 1))
        if self.layer_norm:
            d_input_terms = self.input_norm.backward(d_input_terms)
            self.cell_norm.weight_grad, self.cell_norm.bias_grad = cell_weight_grad, cell_bias_grad
        d_input_weight = np.einsum("tbi,tbj->ij", xs, d_input_terms)
        self.grads = [d_input_weight, d_recurrent_weight, d_bias]
        return d_input_terms @ self.input_weight.T

    def parameters(self) -> List[np.ndarray]:
        extra = []
        if self.layer_norm:
            extra = (self.recurrent_norm.parameters() + self.input_norm.parameters()
                     + self.cell_norm.parameters())
        return self.params + extra

    def gradients(self) -> List[np.ndarray]:
        extra = []
        if self.layer_norm:
            extra = (self.recurrent_norm.gradients() + self.input_norm.gradients()
                     + _layer_gradients(self.cell_norm))
        return self.grads + extra


class SequenceClassifier:
    """An LSTM read over the whole sequence, then a Linear layer on its last hidden state.

    >>> model = SequenceClassifier(8, 16, 10, layer_norm=False, rng=np.random.default_rng(0))
    >>> model(np.zeros((8, 2, 8), np.float32)).shape
    (2, 10)
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, layer_norm: bool,
                 rng: np.random.Generator, dtype=np.float32):
        self.lstm = LSTM(n_in, n_hidden, layer_norm, rng, dtype=dtype)
        self.readout = Linear(n_hidden, n_out, rng, dtype=dtype, scale=np.sqrt(1.0 / n_hidden))

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        return self.readout(self.lstm(xs))

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        return self.lstm.backward(self.readout.backward(dlogits))

    def train(self, mode: bool = True) -> "SequenceClassifier":
        return self  # nothing differs between training and inference

    def eval(self) -> "SequenceClassifier":
        return self

    def parameters(self) -> List[np.ndarray]:
        return self.lstm.parameters() + self.readout.parameters()

    def gradients(self) -> List[np.ndarray]:
        return self.lstm.gradients() + self.readout.gradients()


# ----------------------------------------------------------------------------------------------
# Optimisation


def clip_by_global_norm(gradients: Sequence[np.ndarray], max_norm: float) -> float:
    """Scales the gradients in place so that their joint L2 norm is at most ``max_norm``; returns
    the norm before clipping."""
    norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in gradients)))
    if norm > max_norm:
        for g in gradients:
            g *= max_norm / norm
    return norm


class Adam:
    """Adam (Kingma and Ba, 2015) updating the parameter arrays in place.

    >>> w = np.ones(3); opt = Adam([w], lr=0.1); opt.step([np.ones(3)]); w.round(3)
    array([0.9, 0.9, 0.9])
    """

    def __init__(self, parameters: Sequence[np.ndarray], lr: float = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8):
        self.parameters = list(parameters)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.first = [np.zeros_like(p) for p in self.parameters]
        self.second = [np.zeros_like(p) for p in self.parameters]
        self.steps = 0

    def step(self, gradients: Sequence[np.ndarray]) -> None:
        self.steps += 1
        b1, b2 = self.beta1, self.beta2
        # A Python float, so that float32 parameters stay float32 (a NumPy float64 would not).
        lr = float(self.lr * np.sqrt(1 - b2 ** self.steps) / (1 - b1 ** self.steps))
        for p, g, m, v in zip(self.parameters, gradients, self.first, self.second):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            update = np.sqrt(v)
            update += self.eps
            np.divide(m, update, out=update)
            update *= lr
            p -= update


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate(model, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 512,
             batch_axis: int = 0) -> Tuple[float, float]:
    """Mean NLL and error rate of ``model`` in inference mode over the whole set, in chunks."""
    model.eval()
    total_loss, wrong, n = 0.0, 0, len(labels)
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        x = inputs[rows] if batch_axis == 0 else inputs[:, rows]
        logits = model(x)
        loss, _ = softmax_cross_entropy(logits, labels[rows])
        total_loss += loss * len(labels[rows])
        wrong += int((logits.argmax(axis=-1) != labels[rows]).sum())
    model.train()
    return total_loss / n, wrong / n
