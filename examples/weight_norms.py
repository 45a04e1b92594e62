"""Weight standardization and weight normalization, written with lnorm's row norms.

Both normalize each output unit's incoming weights: the slice ``w[o]`` of a weight whose axis 0 is
the output axis and whose other axes are the fan-in (a linear weight ``(out, in)``, a conv weight
``(out, in, kh, kw)``). With those axes as the normalized ones, each is one lnorm call:

- **Weight standardization** (Qiao et al., 2019),
  ``w_hat[o] = (w[o] - mean(w[o])) / sqrt(var(w[o]) + eps)`` with the biased variance, is
  ``lnorm.layer_norm(w, axis=(1, ..., w.ndim - 1), eps=eps)``. This is the form most
  standardized convolutions use; the paper's own code divides by the unbiased standard deviation plus eps
  instead, which differs by the factor ``sqrt(n / (n - 1))`` (``n`` = fan-in) and in where eps goes.
- **Weight normalization** (Salimans and Kingma, 2016), ``w[o] = g[o] * v[o] / ||v[o]||``, is
  ``lnorm.rms_norm(v, axis=(1, ..., v.ndim - 1), eps=0)`` times ``g[o] / sqrt(n)``: rms_norm divides
  by ``sqrt(mean(v[o]**2)) = ||v[o]|| / sqrt(n)``, so ``rms_norm(v) = sqrt(n) * v / ||v||``. This is
  ``torch.nn.utils.weight_norm(module, dim=0)`` (the norm over every axis but 0). eps must be 0 for
  the identity to be exact; a positive eps would be added to ``||v[o]||**2 / n``.

Run this file to check both against plain NumPy:

    python examples/weight_norms.py
"""

from __future__ import annotations

import math
import sys

import numpy as np

import lnorm


def _fan_in_axes(w: np.ndarray) -> tuple:
    if w.ndim < 2:
        raise ValueError(f"expected a weight with an output axis 0 and fan-in axes, "
                         f"got shape {w.shape}")
    return tuple(range(1, w.ndim))


def weight_standardize(w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Each output unit's weights ``w[o]`` to mean 0 and (biased) variance 1; eps inside the
    square root."""
    return lnorm.layer_norm(w, axis=_fan_in_axes(w), eps=eps)


def weight_normalize(v: np.ndarray, g) -> np.ndarray:
    """``g[o] * v[o] / ||v[o]||`` for each output unit ``o``; ``g`` is a scalar or has shape
    ``(out,)``."""
    axes = _fan_in_axes(v)
    fan_in = math.prod(v.shape[1:])
    unit_rms = lnorm.rms_norm(v, axis=axes, eps=0.0)  # sqrt(fan_in) * v[o] / ||v[o]||
    scale = np.asarray(g, dtype=np.float64) / math.sqrt(fan_in)
    scale = np.broadcast_to(scale, v.shape[:1]).reshape((-1,) + (1,) * (v.ndim - 1))
    return (unit_rms * scale.astype(v.dtype)).astype(v.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# Plain NumPy, float64: what the two recipes must equal


def weight_standardize_numpy(w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    axes = _fan_in_axes(w)
    mean = w.mean(axis=axes, keepdims=True)
    var = ((w - mean) ** 2).mean(axis=axes, keepdims=True)
    return (w - mean) / np.sqrt(var + eps)


def weight_normalize_numpy(v: np.ndarray, g) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    norm = np.sqrt((v ** 2).sum(axis=_fan_in_axes(v), keepdims=True))
    g = np.broadcast_to(np.asarray(g, dtype=np.float64), v.shape[:1])
    return g.reshape((-1,) + (1,) * (v.ndim - 1)) * v / norm


def self_check(verbose: bool = True) -> bool:
    """Both recipes against plain NumPy for a few linear and conv shapes, float32 and float64."""
    rng = np.random.default_rng(0)
    ok = True
    for shape in [(8, 16), (6, 3, 3, 3), (4, 5, 1, 1), (3, 2, 5)]:
        for dtype, tol in [(np.float64, 1e-12), (np.float32, 2e-6)]:
            w = (rng.standard_normal(shape) * 0.3 + 0.1).astype(dtype)
            g = rng.uniform(0.5, 2.0, shape[0])
            ws = weight_standardize(w, eps=1e-5)
            wn = weight_normalize(w, g)
            err_ws = np.abs(ws - weight_standardize_numpy(w, 1e-5)).max()
            err_wn = np.abs(wn - weight_normalize_numpy(w, g)).max() / np.abs(g).max()
            good = (ws.dtype == dtype and wn.dtype == dtype and ws.shape == shape
                    and wn.shape == shape and err_ws < tol and err_wn < tol)
            ok &= bool(good)
            if verbose:
                print(f"{str(shape):14s} {np.dtype(dtype).name:8s} max error: weight_standardize "
                      f"{err_ws:.1e}, weight_normalize {err_wn:.1e}  {'ok' if good else 'FAILED'}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if self_check() else 1)
