"""Layer normalization does not depend on the batch; batch normalization does (Ba, Kiros and Hinton
2016, "Layer Normalization", Figure 6), shown with lnorm on scikit-learn's bundled digits.

A permutation-invariant MLP (64-256-256-10, the pixels as a flat vector) is trained with Adam three
ways: without normalization, with batch normalization (written in NumPy in ``_nn.py``, the
baseline), and with ``lnorm.LayerNorm`` (lnorm's forward and backward), at batch sizes 128 and 4.
Every configuration runs over the same seeds; the table gives means over the seeds, and the plot
draws the training NLL and test error per epoch for each batch size.

Layer norm computes each example's statistics from that example alone, so the network it trains and
evaluates is the same whatever the batch; batch norm's statistics come from the other examples in
the batch, so at batch size 4 it trains on noisy estimates and is tested with running averages it
never saw, and it falls behind.

    python examples/batch_size.py            # full run: a few minutes on 2 cores
    python examples/batch_size.py --quick    # a few epochs, one seed (what the tests run)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _nn import (Adam, evaluate, load_digits_split, minibatches, mlp, single_threaded_blas,  # noqa: E402
                 softmax_cross_entropy)

#: The three networks compared: label -> the ``norm`` argument of ``_nn.mlp``.
METHODS = {"no norm": None, "batch norm": "batch", "layer norm": "layer"}
BATCH_SIZES = (128, 4)
#: Adam learning rate per (method, batch size), each the best of the grid {3e-4, 1e-3, 3e-3} by
#: final test error (mean over the seeds) in a full run; ``--lr`` overrides them all.
LEARNING_RATES = {
    ("no norm", 128): 3e-3, ("batch norm", 128): 3e-3, ("layer norm", 128): 3e-3,
    ("no norm", 4): 3e-4, ("batch norm", 4): 3e-4, ("layer norm", 4): 3e-4,
}
HIDDEN = 256


def train(norm: Optional[str], batch_size: int, lr: float, epochs: int, seed: int,
          data) -> Dict[str, List[float]]:
    """Trains one MLP; returns its training NLL and test error (inference mode) after each epoch,
    the first entries being those of the untrained network.

    >>> data = load_digits_split()
    >>> history = train("layer", 128, 3e-3, 1, 0, data)
    >>> len(history["test_error"])
    2
    """
    x_train, y_train, x_test, y_test = data
    rng = np.random.default_rng(seed)
    model = mlp(x_train.shape[1], HIDDEN, 10, norm, rng)
    optimizer = Adam(model.parameters(), lr=lr)
    history: Dict[str, List[float]] = {"train_loss": [], "test_error": []}

    def record():
        history["train_loss"].append(evaluate(model, x_train, y_train)[0])
        history["test_error"].append(evaluate(model, x_test, y_test)[1])

    record()
    for _ in range(epochs):
        for rows in minibatches(len(y_train), batch_size, rng):
            _, dlogits = softmax_cross_entropy(model(x_train[rows]), y_train[rows])
            model.backward(dlogits)
            optimizer.step(model.gradients())
        record()
    return history


def batch_dependence(seed: int = 0) -> Dict[str, float]:
    """How much one example's output changes when the rest of its batch of 4 changes: the largest
    difference over a few batches, for an untrained MLP with each norm in training mode."""
    x_train = load_digits_split()[0]
    rng = np.random.default_rng(seed)
    out = {}
    for label, norm in METHODS.items():
        model = mlp(x_train.shape[1], HIDDEN, 10, norm, np.random.default_rng(seed))
        worst = 0.0
        for _ in range(8):
            rows = rng.choice(len(x_train), 7, replace=False)
            first = model(x_train[rows[:4]])[0]
            second = model(x_train[np.r_[rows[:1], rows[4:]]])[0]
            worst = max(worst, float(np.abs(first - second).max()))
        out[label] = worst
    return out


def plot(results, epochs: int, path: str) -> None:
    """Training NLL (top) and test error (bottom) per epoch; one column per batch size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"no norm": "tab:gray", "batch norm": "tab:blue", "layer norm": "tab:red"}
    fig, axes = plt.subplots(2, len(BATCH_SIZES), figsize=(10, 6.5), sharex=True, sharey="row")
    x = np.arange(epochs + 1)
    for col, batch_size in enumerate(BATCH_SIZES):
        for label in METHODS:
            runs = results[(label, batch_size)]
            for row, key in enumerate(("train_loss", "test_error")):
                curves = np.array([run[key] for run in runs])
                if key == "test_error":
                    curves = curves * 100
                ax = axes[row, col]
                ax.plot(x, curves.mean(axis=0), color=colors[label], lw=2,
                        label=f"{label} (lr {LR(label, batch_size):g})")
                if len(curves) > 1:
                    ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=colors[label],
                                    alpha=0.15, lw=0)
        axes[0, col].set_title(f"batch size {batch_size}")
        axes[0, col].set_yscale("log")
        axes[1, col].set_ylim(0, 12)
        axes[1, col].set_xlabel("epoch")
        axes[0, col].legend(loc="upper right", fontsize=9)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("training NLL (inference mode)")
    axes[1, 0].set_ylabel("test error (%)")
    n_seeds = len(results[(next(iter(METHODS)), BATCH_SIZES[0])])
    fig.suptitle(f"Digits MLP 64-{HIDDEN}-{HIDDEN}-10, Adam: layer norm trains alike at batch sizes "
                 f"128 and 4, batch norm does not\n(mean of {n_seeds} seeds, band: min to max)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_lr_override: Optional[float] = None


def LR(label: str, batch_size: int) -> float:
    """The learning rate used for one configuration (``--lr`` if given, else the tuned one)."""
    return _lr_override if _lr_override is not None else LEARNING_RATES[(label, batch_size)]


def main(argv=None) -> dict:
    """Runs every configuration, prints the table, writes ``batch_size.png``; returns the results
    as ``{(method, batch size): [history per seed]}``."""
    with single_threaded_blas():
        return _main(argv)


def _main(argv) -> dict:
    global _lr_override
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 epochs, one seed (for the tests)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 30; 3 with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3)")
    parser.add_argument("--lr", type=float, default=None, help="one Adam learning rate for all")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for batch_size.png (default: next to this script)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 30)
    n_seeds = args.seeds or (1 if args.quick else 3)
    _lr_override = args.lr

    import lnorm
    print(f"lnorm {lnorm.__version__} ({lnorm.config()['isa']}); digits MLP 64-{HIDDEN}-{HIDDEN}-10, "
          f"Adam, {epochs} epochs, {n_seeds} seed(s)")
    dependence = batch_dependence()
    print("largest change of one example's output when the other 3 of its batch change "
          "(training mode): " + ", ".join(f"{k} {v:.2g}" for k, v in dependence.items()))

    data = load_digits_split()
    results = {}
    start = time.perf_counter()
    for batch_size in BATCH_SIZES:
        for label, norm in METHODS.items():
            t = time.perf_counter()
            results[(label, batch_size)] = [
                train(norm, batch_size, LR(label, batch_size), epochs, seed, data)
                for seed in range(n_seeds)]
            print(f"  trained {label:>10} at batch size {batch_size:>3} in "
                  f"{time.perf_counter() - t:5.1f} s", flush=True)

    columns = [(label, b) for b in BATCH_SIZES for label in METHODS]
    every = max(1, epochs // 6)
    shown = sorted(set(range(0, epochs + 1, every)) | {epochs})
    for key, title, scale in (("train_loss", "training NLL", 1.0), ("test_error", "test error (%)", 100.0)):
        print(f"\n{title}, mean over {n_seeds} seed(s)")
        print(f"{'epoch':>5} " + " ".join(f"{f'{lab} b{b}':>15}" for lab, b in columns))
        for e in shown:
            values = [scale * np.mean([run[key][e] for run in results[c]]) for c in columns]
            print(f"{e:>5} " + " ".join(f"{v:15.4f}" if scale == 1.0 else f"{v:15.2f}" for v in values))
    print(f"\nlearning rates: " + ", ".join(f"{lab} b{b} {LR(lab, b):g}" for lab, b in columns))
    print(f"total training time {time.perf_counter() - start:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "batch_size.png")
    plot(results, epochs, path)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
