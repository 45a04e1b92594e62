"""Layer normalization speeds up recurrent training (Ba, Kiros and Hinton 2016, "Layer
Normalization", section 3.1 and the LSTM equations 20-22), shown with lnorm on sequential digits.

Each 8x8 digit of scikit-learn's bundled set is read by an LSTM as a sequence, a few pixels per
time step (``--pixels-per-step``: 8 reads it row by row, 1 pixel by pixel), and the class is read
off the last hidden state. Two networks with the same initial weights, optimizer and data order are
trained: a plain LSTM, and the same LSTM with layer normalization of the recurrent term, the input
term and the cell state at every time step (``_nn.LSTM``; every norm is lnorm's forward and
backward). Each gets its own learning rate, the best of a small grid. The test error and training
NLL are measured four times per epoch; the LSTM with layer norm gets there in fewer epochs.

    python examples/recurrent.py             # full run: a few minutes on 2 cores
    python examples/recurrent.py --quick     # a few epochs, one seed (what the tests run)
    python examples/recurrent.py --lr-grid   # redo the learning-rate search (three times longer)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

import numpy as np

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # _nn.py sits next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _nn import (Adam, SequenceClassifier, clip_by_global_norm, evaluate,  # noqa: E402
                 load_digits_split, minibatches, single_threaded_blas, softmax_cross_entropy)

#: The two networks compared: label -> ``layer_norm`` of ``_nn.LSTM``.
METHODS = {"LSTM": False, "LSTM + layer norm": True}
#: Adam learning rate per method: the best of LR_GRID by test error averaged over the whole run
#: (the area under the curve: speed and end point both count; mean of 3 seeds) in a full run
#: (``--lr-grid`` redoes that search); ``--lr`` overrides both.
LEARNING_RATES = {"LSTM": 3e-2, "LSTM + layer norm": 1e-2}
LR_GRID = (3e-3, 1e-2, 3e-2)
HIDDEN = 64
BATCH_SIZE = 32
CLIP_NORM = 5.0
EVALS_PER_EPOCH = 4


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
    """Trains one sequence classifier; returns its training NLL and test error, measured
    ``EVALS_PER_EPOCH`` times per epoch, with the (fractional) epoch of each measurement, the first
    entries being those of the untrained network.

    >>> history = train(True, 1e-2, 1, 0, load_digits_split(), 8)
    >>> history["epoch"]
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    x_train, y_train, x_test, y_test = data
    seq_train = as_sequences(x_train, pixels_per_step)
    seq_test = as_sequences(x_test, pixels_per_step)
    model = SequenceClassifier(pixels_per_step, HIDDEN, 10, layer_norm, np.random.default_rng(seed))
    optimizer = Adam(model.parameters(), lr=lr)
    data_order = np.random.default_rng(seed + 1000)
    steps_per_epoch = len(y_train) // BATCH_SIZE
    checkpoints = {round(k * steps_per_epoch / EVALS_PER_EPOCH): k for k in range(1, EVALS_PER_EPOCH + 1)}
    history: Dict[str, List[float]] = {"epoch": [], "train_loss": [], "test_error": []}

    def record(epoch: float):
        history["epoch"].append(epoch)
        history["train_loss"].append(evaluate(model, seq_train, y_train, batch_axis=1)[0])
        history["test_error"].append(evaluate(model, seq_test, y_test, batch_axis=1)[1])

    record(0.0)
    for epoch in range(epochs):
        for step, rows in enumerate(minibatches(len(y_train), BATCH_SIZE, data_order), start=1):
            _, dlogits = softmax_cross_entropy(model(seq_train[:, rows]), y_train[rows])
            model.backward(dlogits)
            gradients = model.gradients()
            clip_by_global_norm(gradients, CLIP_NORM)
            optimizer.step(gradients)
            if step in checkpoints:
                record(epoch + checkpoints[step] / EVALS_PER_EPOCH)
    return history


def mean_test_error(runs: List[Dict[str, List[float]]]) -> float:
    """Test error averaged over every measurement after the start and over the runs: the
    learning-rate criterion (lower is faster, better, or both)."""
    return float(np.mean([run["test_error"][1:] for run in runs]))


def epochs_to_reach(runs: List[Dict[str, List[float]]], error: float) -> float:
    """The first measured epoch at which the test error, mean over the runs, is at most ``error``
    (NaN if never)."""
    mean = np.mean([run["test_error"] for run in runs], axis=0)
    reached = np.flatnonzero(mean <= error)
    return float(runs[0]["epoch"][reached[0]]) if len(reached) else float("nan")


def plot(results, lrs, pixels_per_step: int, path: str) -> None:
    """Training NLL (left) and test error (right, log scale) against epochs for both networks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colors = {"LSTM": "tab:gray", "LSTM + layer norm": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for label in METHODS:
        x = results[label][0]["epoch"]
        for ax, key in zip(axes, ("train_loss", "test_error")):
            curves = np.array([run[key] for run in results[label]])
            if key == "test_error":
                curves = curves * 100
            ax.plot(x, curves.mean(axis=0), color=colors[label], lw=2,
                    label=f"{label} (lr {lrs[label]:g})")
            if len(curves) > 1:
                ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=colors[label],
                                alpha=0.15, lw=0)
    axes[0].set_ylabel("training NLL")
    axes[1].set_ylabel("test error (%), log scale")
    axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper right", fontsize=9)
    axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    steps = 64 // pixels_per_step
    n_seeds = len(results["LSTM"])
    fig.suptitle(f"Digits read {pixels_per_step} pixels per step ({steps} steps), LSTM {HIDDEN} "
                 f"units, Adam, batch {BATCH_SIZE}: layer norm converges faster\n"
                 f"(mean of {n_seeds} seeds, band: min to max)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tables(results, lrs, epochs: int, n_seeds: int) -> None:
    """Training NLL and test error at chosen epochs, then the speed summary."""
    epoch_marks = results["LSTM"][0]["epoch"]
    wanted = [e for e in (0, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 20, 30, 40) if e <= epochs]
    wanted = sorted(set(wanted) | {float(epochs)})
    print(f"\nmean over {n_seeds} seed(s)")
    print(f"{'epoch':>6} " + " ".join(f"{f'{lab} NLL':>24} {f'{lab} err %':>24}" for lab in METHODS))
    for e in wanted:
        i = epoch_marks.index(e)
        cells = []
        for label in METHODS:
            cells.append(f"{np.mean([r['train_loss'][i] for r in results[label]]):24.4f}")
            cells.append(f"{100 * np.mean([r['test_error'][i] for r in results[label]]):24.2f}")
        print(f"{e:>6g} " + " ".join(cells))
    print(f"\n{'network':>18} {'lr':>6} {'epochs to 10% err':>18} {'epochs to 5% err':>17} "
          f"{'err % averaged over the run':>28} {'final err %':>12}")
    for label in METHODS:
        runs = results[label]
        print(f"{label:>18} {lrs[label]:6g} {epochs_to_reach(runs, 0.10):18g} "
              f"{epochs_to_reach(runs, 0.05):17g} {100 * mean_test_error(runs):28.2f} "
              f"{100 * np.mean([r['test_error'][-1] for r in runs]):12.2f}")


def main(argv=None) -> dict:
    """Trains both networks, prints the tables, writes ``recurrent.png``; returns the results as
    ``{method: [history per seed]}``."""
    with single_threaded_blas():
        return _main(argv)


def _main(argv) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 epochs, one seed (for the tests)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 20; 2 with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per network (default 5)")
    parser.add_argument("--pixels-per-step", type=int, default=8,
                        help="pixels read per time step (8: row by row; 1: pixel by pixel)")
    parser.add_argument("--lr", type=float, default=None, help="one Adam learning rate for both")
    parser.add_argument("--lr-grid", action="store_true",
                        help=f"try every learning rate of {LR_GRID} and keep the best per network")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for recurrent.png (default: next to this script)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 20)
    n_seeds = args.seeds or (1 if args.quick else 5)

    import lnorm
    steps = 64 // args.pixels_per_step
    print(f"lnorm {lnorm.__version__} ({lnorm.config()['isa']}); digits as {steps} steps of "
          f"{args.pixels_per_step} pixels, LSTM {HIDDEN} units, Adam, batch {BATCH_SIZE}, "
          f"{epochs} epochs, {n_seeds} seed(s)")
    data = load_digits_split()
    results, lrs = {}, {}
    start = time.perf_counter()
    for label, layer_norm in METHODS.items():
        if args.lr_grid:
            candidates = LR_GRID
        else:
            candidates = (args.lr if args.lr is not None else LEARNING_RATES[label],)
        t = time.perf_counter()
        tried = {lr: [train(layer_norm, lr, epochs, seed, data, args.pixels_per_step)
                      for seed in range(n_seeds)] for lr in candidates}
        lrs[label] = min(tried, key=lambda lr: mean_test_error(tried[lr]))
        results[label] = tried[lrs[label]]
        scores = ", ".join(f"lr {lr:g}: {100 * mean_test_error(runs):.2f}%" for lr, runs in tried.items())
        print(f"  trained {label} in {time.perf_counter() - t:5.1f} s"
              + (f"; test error averaged over the run: {scores}" if args.lr_grid else ""), flush=True)

    print_tables(results, lrs, epochs, n_seeds)
    print(f"\ntotal training time {time.perf_counter() - start:.1f} s")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "recurrent.png")
    plot(results, lrs, args.pixels_per_step, path)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
