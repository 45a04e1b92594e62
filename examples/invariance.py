"""Table 1 of the Layer Normalization paper (Ba, Kiros and Hinton, 2016), checked numerically.

The paper's Table 1 lists, for batch, weight and layer normalization, which transformations of the
weights or of the data leave the normalized summed inputs unchanged. This script measures every
entry on a small layer with lnorm's norms, compares the paper's three rows with the paper, and adds
rows the paper does not have: RMSNorm, weight standardization, instance norm, group norm, and
weight standardization followed by group norm.

Two small layers, float64, with no bias, eps = 0 and no gain or bias after the norm (the table is
about the normalized summed inputs):

- linear: ``h = W x`` for a batch of ``N = 8`` cases, ``x`` in R^6, ``W`` of shape ``(5, 6)``. The
  rows of the paper, RMSNorm and weight standardization: each normalizes per unit over the batch
  (batch norm), over the units of one case (layer norm, RMSNorm), or normalizes each unit's
  incoming weight vector ``w_i`` (weight norm, weight standardization).
- 1x1 convolution on images ``x`` of shape ``(N, C_in, H, W) = (4, 6, 4, 4)``, ``W`` of shape
  ``(8, 6, 1, 1)``: ``h[n, :, p] = W x[n, :, p]`` at each position ``p``. The norms with spatial
  axes: batch norm per channel over (N, H, W), layer norm over (C, H, W), instance norm per
  (n, channel) over (H, W), group norm with 4 groups of 2 channels, and weight standardization +
  group norm.

The transformations, as the paper defines them (``delta``, ``delta_i`` > 0; ``gamma`` a vector with
one entry per input, i.e. per input channel for the convolution, the same at every position):

- weight matrix re-scaling:        ``W -> delta * W``
- weight matrix re-centering:      ``W -> W + 1 gamma^T`` (gamma added to every unit's weights)
- weight vector re-scaling:        ``w_i -> delta_i * w_i`` (each unit's weights by its own factor)
- dataset re-scaling:              ``x_n -> delta * x_n`` for every case n
- dataset re-centering:            ``x_n -> x_n + gamma`` for every case n
- single training case re-scaling: ``x_1 -> delta * x_1`` for one case, the others unchanged

An entry is "invariant" when the normalized output of the whole batch changes by less than 1e-8
relative to its size, and "no" when it changes by more than 1e-3; anything in between is reported as
undecided (and fails). The exit status is 0 when the paper's three rows agree with the paper and the
added rows agree with the derivation written next to them (``EXPECTED`` below), 1 otherwise.

    python examples/invariance.py            # the table, in Markdown (well under a second)
    python examples/invariance.py --verbose  # and the relative change behind every entry
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

import lnorm

EXAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
if EXAMPLES_DIR not in sys.path:
    sys.path.insert(0, EXAMPLES_DIR)
from weight_norms import weight_normalize, weight_standardize  # noqa: E402

TRANSFORMS = (
    ("weight matrix re-scaling", "W re-scaling"),
    ("weight matrix re-centering", "W re-centering"),
    ("weight vector re-scaling", "w_i re-scaling"),
    ("dataset re-scaling", "data re-scaling"),
    ("dataset re-centering", "data re-centering"),
    ("single training case re-scaling", "case re-scaling"),
)

INVARIANT, NOT_INVARIANT = True, False
Y, N = INVARIANT, NOT_INVARIANT

# The paper's Table 1 (Ba, Kiros and Hinton, 2016), in the order of TRANSFORMS.
PAPER = {
    "Batch norm": (Y, N, Y, Y, Y, N),
    "Weight norm": (Y, N, Y, N, N, N),
    "Layer norm": (Y, Y, N, Y, N, Y),
}

# The added rows, derived by hand. What each transformation does to the summed inputs h:
# W re-scaling multiplies all of h by delta; W re-centering adds gamma . x[n, :, p], the same for
# every unit of one case at one position p but different across cases and positions; w_i re-scaling
# multiplies unit i by delta_i; dataset re-scaling multiplies all of h by delta; dataset re-centering
# adds (W gamma)_i to unit i, the same for every case and position; single case re-scaling
# multiplies one case's h by delta. A norm takes its statistics over groups of elements; it removes
# a factor if all elements of each group are multiplied by the same one, and a shift if it subtracts
# a mean and all elements of each group are shifted by the same amount.
EXPECTED = {
    ("RMSNorm", "linear"): (Y, N, N, Y, N, Y),                 # layer norm without the mean
    ("Weight standardization", "linear"): (Y, N, Y, N, N, N),  # like weight norm
    ("Batch norm", "1x1 conv"): (Y, N, Y, Y, Y, N),            # as for the linear layer
    ("Layer norm", "1x1 conv"): (Y, N, N, Y, N, Y),            # the shift varies over positions
    ("Instance norm", "1x1 conv"): (Y, N, Y, Y, Y, Y),         # the shift varies over positions
    ("Group norm", "1x1 conv"): (Y, N, N, Y, N, Y),            # 2 channels per group
    ("WS + group norm", "1x1 conv"): (Y, N, Y, Y, N, Y),       # GN's, plus WS's w_i re-scaling
}

RTOL_INVARIANT = 1e-8  # a change below this (relative to the output's size) is rounding
RTOL_CHANGED = 1e-3    # a change above this is a real one

GROUPS = 4


# ----------------------------------------------------------------------------------------------
# The layers and the norms


def linear(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """h = W x for each case: x (N, in), w (out, in) -> (N, out)."""
    return x @ w.T


def conv1x1(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A 1x1 convolution: x (N, C_in, H, W), w (C_out, C_in, 1, 1) -> (N, C_out, H, W)."""
    return np.einsum("oi,nihw->nohw", w[:, :, 0, 0], x)


# Each norm: (layer, W, x) -> the normalized output of the layer, with no gain or bias.


def _unit_axes(h: np.ndarray) -> Tuple[int, ...]:
    return tuple(range(1, h.ndim))  # every axis but the batch: (units,), or (C, H, W)


def batch_norm(layer, w, x):
    """Batch statistics: per unit (per channel for the convolution) over every other axis."""
    return lnorm.batch_norm(layer(w, x), training=True, eps=0.0)


def weight_norm(layer, w, x):
    """Each unit's weight vector divided by its norm (g = 1)."""
    return layer(weight_normalize(w, 1.0), x)


def layer_norm(layer, w, x):
    h = layer(w, x)
    return lnorm.layer_norm(h, axis=_unit_axes(h), eps=0.0)


def rms_norm(layer, w, x):
    h = layer(w, x)
    return lnorm.rms_norm(h, axis=_unit_axes(h), eps=0.0)


def weight_standardization(layer, w, x):
    """Each unit's weight vector to mean 0 and variance 1."""
    return layer(weight_standardize(w, eps=0.0), x)


def instance_norm(layer, w, x):
    return lnorm.instance_norm(layer(w, x), eps=0.0)


def group_norm(layer, w, x):
    return lnorm.group_norm(layer(w, x), GROUPS, eps=0.0)


def ws_group_norm(layer, w, x):
    return lnorm.group_norm(layer(weight_standardize(w, eps=0.0), x), GROUPS, eps=0.0)


NORMS: Dict[str, Callable] = {
    "Batch norm": batch_norm,
    "Weight norm": weight_norm,
    "Layer norm": layer_norm,
    "RMSNorm": rms_norm,
    "Weight standardization": weight_standardization,
    "Instance norm": instance_norm,
    "Group norm": group_norm,
    "WS + group norm": ws_group_norm,
}

# (row name, layer name): the table's rows, in order.
ROWS: List[Tuple[str, str]] = [
    ("Batch norm", "linear"), ("Weight norm", "linear"), ("Layer norm", "linear"),
    ("RMSNorm", "linear"), ("Weight standardization", "linear"),
    ("Batch norm", "1x1 conv"), ("Layer norm", "1x1 conv"), ("Instance norm", "1x1 conv"),
    ("Group norm", "1x1 conv"), ("WS + group norm", "1x1 conv"),
]


# ----------------------------------------------------------------------------------------------
# The transformations


def _transforms(rng: np.random.Generator, w: np.ndarray, x: np.ndarray):
    """(W', x') for each transformation, in the order of TRANSFORMS. The weight's axis 0 is the
    output unit and its axis 1 the input; the data's axis 0 is the case and axis 1 the input."""
    n_out, n_in = w.shape[:2]
    weight_shape = (1, n_in) + (1,) * (w.ndim - 2)  # gamma along the weight's input axis
    data_shape = (1, n_in) + (1,) * (x.ndim - 2)    # gamma along the data's input axis
    gamma_w = rng.uniform(-1.0, 1.0, n_in).reshape(weight_shape)
    gamma_x = rng.uniform(-1.0, 1.0, n_in).reshape(data_shape)
    delta_i = rng.uniform(0.3, 3.0, n_out).reshape((n_out,) + (1,) * (w.ndim - 1))
    one_case = np.ones((x.shape[0],) + (1,) * (x.ndim - 1))
    one_case[0] = 2.7
    return [
        (3.1 * w, x),
        (w + gamma_w, x),  # W + 1 gamma^T: the same gamma added to every unit's weight vector
        (delta_i * w, x),
        (w, 0.4 * x),
        (w, x + gamma_x),
        (w, one_case * x),
    ]


def _relative_change(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.abs(after - before).max() / np.abs(before).max())


def measure(seed: int = 0) -> Dict[Tuple[str, str], List[float]]:
    """The relative change of each row's normalized output under each transformation."""
    rng = np.random.default_rng(seed)
    layers = {
        "linear": (linear, rng.standard_normal((5, 6)), rng.standard_normal((8, 6)) + 0.5),
        "1x1 conv": (conv1x1, rng.standard_normal((8, 6, 1, 1)),
                     rng.standard_normal((4, 6, 4, 4)) + 0.5),
    }
    transformed = {name: _transforms(rng, w, x) for name, (_, w, x) in layers.items()}
    changes = {}
    for row, layer_name in ROWS:
        layer, w, x = layers[layer_name]
        norm = NORMS[row]
        before = norm(layer, w, x)
        assert before.dtype == np.float64 and np.isfinite(before).all(), (row, layer_name)
        changes[(row, layer_name)] = [_relative_change(before, norm(layer, w2, x2))
                                      for w2, x2 in transformed[layer_name]]
    return changes


def decide(change: float):
    """True (invariant), False (changes) or None (undecided)."""
    if change < RTOL_INVARIANT:
        return INVARIANT
    if change > RTOL_CHANGED:
        return NOT_INVARIANT
    return None


def reference(row: str, layer_name: str) -> Tuple[str, Sequence[bool]]:
    if layer_name == "linear" and row in PAPER:
        return "paper", PAPER[row]
    return "derived", EXPECTED[(row, layer_name)]


# ----------------------------------------------------------------------------------------------
# The table


def _word(value) -> str:
    return {INVARIANT: "invariant", NOT_INVARIANT: "no", None: "undecided"}[value]


def table(changes: Dict[Tuple[str, str], List[float]]) -> Tuple[str, bool, bool]:
    """The Markdown table; whether the paper's rows agree with the paper; whether the added rows
    agree with their derivation."""
    header = ["normalization", "layer"] + [short for _, short in TRANSFORMS] + ["reference"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + [":---:"] * len(TRANSFORMS) + ["---"]) + "|"]
    paper_ok = added_ok = True
    for row, layer_name in ROWS:
        source, expected = reference(row, layer_name)
        cells, differs = [], []
        for (long_name, _), change, want in zip(TRANSFORMS, changes[(row, layer_name)], expected):
            got = decide(change)
            cell = _word(got)
            if got is not want:
                cell = f"**{cell}** (expected {_word(want)})"
                differs.append(long_name)
            cells.append(cell)
        if differs:
            if source == "paper":
                paper_ok = False
            else:
                added_ok = False
            verdict = f"{source}: DIFFERS ({', '.join(differs)})"
        else:
            verdict = f"{source}: agrees"
        lines.append("| " + " | ".join([row, layer_name] + cells + [verdict]) + " |")
    return "\n".join(lines), paper_ok, added_ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true",
                        help="print the relative change behind every entry")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    changes = measure(args.seed)
    text, paper_ok, added_ok = table(changes)
    print("Invariance of the normalized summed inputs (float64, eps = 0): "
          "Table 1 of Ba, Kiros and Hinton (2016), measured with lnorm\n")
    print(text)

    values = [c for row in changes.values() for c in row]
    invariant = [c for c in values if decide(c) is INVARIANT]
    changed = [c for c in values if decide(c) is NOT_INVARIANT]
    print(f"\nlargest relative change of an invariant entry: {max(invariant):.1e}; "
          f"smallest of a non-invariant one: {min(changed):.1e}")
    if args.verbose:
        print("\nrelative change of the normalized output, max |y' - y| / max |y|:\n")
        print(f"{'normalization':24s} {'layer':9s}" + "".join(f"{s:>18s}" for _, s in TRANSFORMS))
        for (row, layer_name), row_changes in changes.items():
            print(f"{row:24s} {layer_name:9s}" + "".join(f"{c:18.1e}" for c in row_changes))

    print("\nthe paper's rows (batch, weight and layer norm on the linear layer): "
          + ("agree with the paper" if paper_ok else "DIFFER FROM THE PAPER"))
    print("the added rows: " + ("agree with their derivation" if added_ok
                                 else "DIFFER FROM THEIR DERIVATION"))
    return 0 if paper_ok and added_ok else 1


if __name__ == "__main__":
    sys.exit(main())
