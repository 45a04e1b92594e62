"""Layer normalization speeds up recurrent training (Ba, Kiros and Hinton 2016, "Layer
Normalization", section 3.1 and the LSTM equations 20-22), shown with lnorm on sequential digits.

Each 8x8 digit of scikit-learn's bundled set is read by an LSTM as a sequence, a few pixels per
time step (``--pixels-per-step``: 8 reads it row by row, 1 pixel by pixel), and the class is read
off the last hidden state. Two networks with the same initial weights, optimizer and data order are
trained: a plain LSTM, and the same LSTM with layer normalization of the recurrent term, the input
term and the cell state at every time step (``_nn.LSTM``; every norm is lnorm's forward and
backward). The table and the plot give the training NLL and the test error per epoch; the LSTM with
layer norm gets there in fewer epochs.

    python examples/recurrent.py             # full run: a few minutes on 2 cores
    python examples/recurrent.py --quick     # a few epochs, one seed (what the tests run)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _nn import (Adam, SequenceClassifier, clip_by_global_norm, evaluate,  # noqa: E402
                 load_digits_split, minibatches, single_threaded_blas, softmax_cross_entropy)

#: The two networks compared: label -> ``layer_norm`` of ``_nn.LSTM``.
METHODS = {"LSTM": False, "LSTM + layer norm": True}
#: Adam learning rate per method, each the best of a small grid (see the README section).
LEARNING_RATES = {"LSTM": 3e-3, "LSTM + layer norm": 3e-3}
HIDDEN = 64
BATCH_SIZE = 32
CLIP_NORM = 5.0


def as_sequences(images: np.ndarray, pixels_per_step: int) -> np.ndarray:
    """``(n, 64)`` images -> ``(T, n, pixels_per_step)`` sequences read in row-major order.

    >>> as_sequences(np.arange(128, dtype=np.float32).reshape(2, 64), 8).shape
    (8, 2, 8)
    """
    n, size = images.shape
    if size % pixels_per_step:
        raise ValueError(f"pixels_per_step: {pixels_per_step} does not divide {size}")
    return np.ascontiguousarray(images.reshape(n, size // pixels_per_step, pixels_per_step)
                                .transpose(1, 0, 2))


def train(layer_norm: bool, lr: float, epochs: int, seed: int, data,
          pixels_per_step: int) -> Dict[str, List[float]]:
    """Trains one sequence classifier; returns its training NLL and test error after each epoch,
    the first entries being those of the untrained network.

    >>> history = train(True, 3e-3, 1, 0, load_digits_split(), 8)
    >>> len(history["train_loss"])
    2
    """
    x_train, y_train, x_test, y_test = data
    seq_train = as_sequences(x_train, pixels_per_step)
    seq_test = as_sequences(x_test, pixels_per_step)
    model = SequenceClassifier(pixels_per_step, HIDDEN, 10, layer_norm, np.random.default_rng(seed))
    optimizer = Adam(model.parameters(), lr=lr)
    data_order = np.random.default_rng(seed + 1000)
    history: Dict[str, List[float]] = {"train_loss": [], "test_error": []}

    def record():
        history["train_loss"].append(evaluate(model, seq_train, y_train, batch_axis=1)[0])
        history["test_error"].append(evaluate(model, seq_test, y_test, batch_axis=1)[1])

    record()
    for _ in range(epochs):
        for rows in minibatches(len(y_train), BATCH_SIZE, data_order):
            _, dlogits = softmax_cross_entropy(model(seq_train[:, rows]), y_train[rows])
            model.backward(dlogits)
            gradients = model.gradients()
            clip_by_global_norm(gradients, CLIP_NORM)
            optimizer.step(gradients)
        record()
    return history


def plot(results, epochs: int, pixels_per_step: int, path: str) -> None:
    """Training NLL (left) and test error (right) per epoch for both networks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"LSTM": "tab:gray", "LSTM + layer norm": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(epochs + 1)
    for label in METHODS:
        for ax, key in zip(axes, ("train_loss", "test_error")):
            curves = np.array([run[key] for run in results[label]])
            if key == "test_error":
                curves = curves * 100
            ax.plot(x, curves.mean(axis=0), color=colors[label], lw=2,
                    label=f"{label} (lr {LEARNING_RATES[label]:g})")
            if len(curves) > 1:
                ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=colors[label],
                                alpha=0.15, lw=0)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training NLL")
    axes[1].set_ylabel("test error (%)")
    axes[1].set_ylim(0, 100)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=9)
    steps = 64 // pixels_per_step
    n_seeds = len(results["LSTM"])
    fig.suptitle(f"Digits read {pixels_per_step} pixels per step ({steps} steps), LSTM {HIDDEN} "
                 f"units, Adam, batch {BATCH_SIZE}: layer norm converges faster\n"
                 f"(mean of {n_seeds} seeds, band: min to max)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    """Trains both networks, prints the table, writes ``recurrent.png``; returns the results as
    ``{method: [history per seed]}``."""
    with single_threaded_blas():
        return _main(argv)


def _main(argv) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 epochs, one seed (for the tests)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 30; 3 with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per network (default 3)")
    parser.add_argument("--pixels-per-step", type=int, default=8,
                        help="pixels read per time step (8: row by row; 1: pixel by pixel)")
    parser.add_argument("--lr", type=float, default=None, help="one Adam learning rate for both")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for recurrent.png (default: next to this script)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 30)
    n_seeds = args.seeds or (1 if args.quick else 3)
    if args.lr is not None:
        for label in LEARNING_RATES:
            LEARNING_RATES[label] = args.lr

    import lnorm
    steps = 64 // args.pixels_per_step
    print(f"lnorm {lnorm.__version__} ({lnorm.config()['isa']}); digits as {steps} steps of "
          f"{args.pixels_per_step} pixels, LSTM {HIDDEN} units, Adam, batch {BATCH_SIZE}, "
          f"{epochs} epochs, {n_seeds} seed(s)")
    data = load_digits_split()
    results = {}
    start = time.perf_counter()
    for label, layer_norm in METHODS.items():
        t = time.perf_counter()
        results[label] = [train(layer_norm, LEARNING_RATES[label], epochs, seed, data,
                                args.pixels_per_step) for seed in range(n_seeds)]
        print(f"  trained {label} in {time.perf_counter() - t:5.1f} s", flush=True)

    every = max(1, epochs // 10)
    shown = sorted(set(range(0, epochs + 1, every)) | {epochs})
    print(f"\nmean over {n_seeds} seed(s)")
    print(f"{'epoch':>5} " + " ".join(f"{f'{lab} NLL':>24} {f'{lab} err %':>24}" for lab in METHODS))
    for e in shown:
        cells = []
        for label in METHODS:
            cells.append(f"{np.mean([r['train_loss'][e] for r in results[label]]):24.4f}")
            cells.append(f"{100 * np.mean([r['test_error'][e] for r in results[label]]):24.2f}")
        print(f"{e:>5} " + " ".join(cells))
    print("\nlearning rates: " + ", ".join(f"{lab} {lr:g}" for lab, lr in LEARNING_RATES.items()))
    print(f"total training time {time.perf_counter() - start:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "recurrent.png")
    plot(results, epochs, args.pixels_per_step, path)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
