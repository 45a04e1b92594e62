"""Layer normalization does not depend on the batch; batch normalization does (Ba, Kiros and Hinton
2016, "Layer Normalization", Figure 6), shown with lnorm on scikit-learn's bundled digits.

A permutation-invariant MLP (64-256-256-10, the pixels as a flat vector) is trained with Adam three
ways: without normalization, with batch normalization (written in NumPy in ``_nn.py``, the
baseline), and with ``lnorm.LayerNorm`` (lnorm's forward and backward), at batch sizes 128 and 4.
Every configuration runs over the same seeds (a seed fixes the initial weights and the data order);
the tables give means over the seeds, and the plot draws the training NLL and the test error per
epoch for each batch size.

Layer norm computes each example's statistics from that example alone, so the network it trains and
evaluates is the same whatever the batch; batch norm's statistics come from the other examples in
the batch, so at batch size 4 it trains on noisy estimates and is tested with running averages it
never saw, and it falls behind. The last table makes the dependence explicit: the test error when
each test batch is normalized with its own statistics, as during training.

    python examples/batch_size.py            # full run: a few minutes on 2 cores
    python examples/batch_size.py --quick    # a few epochs, one seed (what the tests run)
    python examples/batch_size.py --lr-grid  # redo the learning-rate search (three times longer)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # _nn.py sits next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _nn import (Adam, evaluate, load_digits_split, minibatches, mlp, single_threaded_blas,  # noqa: E402
                 softmax_cross_entropy)

#: The three networks compared: label -> the ``norm`` argument of ``_nn.mlp``.
METHODS = {"no norm": None, "batch norm": "batch", "layer norm": "layer"}
BATCH_SIZES = (128, 4)
#: Adam learning rate per (method, batch size): the best of LR_GRID by test error over the last 5
#: epochs (mean of 3 seeds) in a full run (``--lr-grid`` redoes that search); ``--lr`` overrides.
LEARNING_RATES = {
    ("no norm", 128): 3e-3, ("batch norm", 128): 1e-3, ("layer norm", 128): 1e-3,
    ("no norm", 4): 1e-3, ("batch norm", 4): 3e-4, ("layer norm", 4): 3e-4,
}
LR_GRID = (3e-4, 1e-3, 3e-3)
HIDDEN = 256


def train(norm: Optional[str], batch_size: int, lr: float, epochs: int, seed: int,
          data) -> Dict[str, List[float]]:
    """Trains one MLP; returns its training NLL and test error (inference mode) after each epoch,
    the first entries being those of the untrained network, and ``test_error_batch_stats``: the
    final test error with every test batch of ``batch_size`` normalized by its own statistics.

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
    history["test_error_batch_stats"] = error_with_batch_statistics(model, x_test, y_test,
                                                                    batch_size, seed)
    return history


def error_with_batch_statistics(model, images, labels, batch_size: int, seed: int) -> float:
    """Error rate with the model in training mode, over shuffled batches of ``batch_size``: batch
    norm then normalizes each batch with that batch's own statistics (and folds them into its running
    averages, so call this last). Every example is counted once; the last batch is filled up with
    examples from the start. Layer norm's answer is its inference-mode error, whatever the batch.
    """
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    padded = np.concatenate([order, order[:(-n) % batch_size]])
    model.train()
    predictions = np.concatenate([model(images[padded[start:start + batch_size]]).argmax(axis=-1)
                                  for start in range(0, len(padded), batch_size)])[:n]
    return float(np.mean(predictions != labels[order]))


def batch_dependence(seed: int = 0) -> Dict[str, float]:
    """How much one example's output changes when the rest of its batch of 4 changes: the largest
    difference over a few batches, for an untrained MLP with each norm in training mode.

    >>> batch_dependence()["layer norm"]
    0.0
    """
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


def late_test_error(runs: List[Dict[str, List[float]]], last: int = 5) -> float:
    """Test error over the last ``last`` epochs, mean over the runs: the learning-rate criterion."""
    return float(np.mean([run["test_error"][-last:] for run in runs]))


def plot(results, lrs, epochs: int, path: str) -> None:
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
                        label=f"{label} (lr {lrs[(label, batch_size)]:g})")
                if len(curves) > 1:
                    ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=colors[label],
                                    alpha=0.15, lw=0)
        axes[0, col].set_title(f"batch size {batch_size}")
        axes[0, col].set_yscale("log")
        axes[1, col].set_ylim(0, 8)
        axes[1, col].set_xlabel("epoch")
        axes[0, col].legend(loc="upper right", fontsize=9)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("training NLL (inference mode)")
    axes[1, 0].set_ylabel("test error (%)")
    n_seeds = len(results[(next(iter(METHODS)), BATCH_SIZES[0])])
    fig.suptitle(f"Digits MLP 64-{HIDDEN}-{HIDDEN}-10, Adam: layer norm works at batch size 4 as at "
                 f"128, batch norm falls behind at 4\n(mean of {n_seeds} seeds, band: min to max)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tables(results, lrs, epochs: int, n_seeds: int) -> None:
    """The per-epoch tables (training NLL, test error) and the final summary."""
    columns = [(label, b) for b in BATCH_SIZES for label in METHODS]
    every = max(1, epochs // 6)
    shown = sorted(set(range(0, epochs + 1, every)) | {epochs})
    for key, title, scale in (("train_loss", "training NLL (inference mode)", 1.0),
                              ("test_error", "test error (%)", 100.0)):
        print(f"\n{title}, mean over {n_seeds} seed(s)")
        print(f"{'epoch':>5} " + " ".join(f"{f'{lab} b{b}':>15}" for lab, b in columns))
        for e in shown:
            values = [scale * np.mean([run[key][e] for run in results[c]]) for c in columns]
            print(f"{e:>5} " + " ".join(f"{v:15.4f}" if scale == 1.0 else f"{v:15.2f}" for v in values))
    print(f"\nafter {epochs} epochs, mean over {n_seeds} seed(s)")
    print(f"{'method':>10} {'batch':>5} {'lr':>7} {'train NLL':>10} {'test err %':>10} "
          f"{'test err % with test-batch statistics':>38}")
    for label, b in columns:
        runs = results[(label, b)]
        print(f"{label:>10} {b:>5} {lrs[(label, b)]:7g} "
              f"{np.mean([r['train_loss'][-1] for r in runs]):10.4f} "
              f"{100 * np.mean([r['test_error'][-1] for r in runs]):10.2f} "
              f"{100 * np.mean([r['test_error_batch_stats'] for r in runs]):38.2f}")


def main(argv=None) -> dict:
    """Runs every configuration, prints the tables, writes ``batch_size.png``; returns the results
    as ``{(method, batch size): [history per seed]}``."""
    with single_threaded_blas():
        return _main(argv)


def _main(argv) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 epochs, one seed (for the tests)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 30; 3 with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3)")
    parser.add_argument("--lr", type=float, default=None, help="one Adam learning rate for all")
    parser.add_argument("--lr-grid", action="store_true",
                        help=f"try every learning rate of {LR_GRID} and keep the best per configuration")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for batch_size.png (default: next to this script)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 30)
    n_seeds = args.seeds or (1 if args.quick else 3)

    import lnorm
    print(f"lnorm {lnorm.__version__} ({lnorm.config()['isa']}); digits MLP 64-{HIDDEN}-{HIDDEN}-10, "
          f"Adam, {epochs} epochs, {n_seeds} seed(s)")
    dependence = batch_dependence()
    print("largest change of one example's logits when the other 3 of its batch change "
          "(training mode, untrained net): " + ", ".join(f"{k} {v:.2g}" for k, v in dependence.items()))

    data = load_digits_split()
    results, lrs = {}, {}
    start = time.perf_counter()
    for batch_size in BATCH_SIZES:
        for label, norm in METHODS.items():
            config = (label, batch_size)
            if args.lr_grid:
                candidates = LR_GRID
            else:
                candidates = (args.lr if args.lr is not None else LEARNING_RATES[config],)
            t = time.perf_counter()
            tried = {lr: [train(norm, batch_size, lr, epochs, seed, data) for seed in range(n_seeds)]
                     for lr in candidates}
            lrs[config] = min(tried, key=lambda lr: late_test_error(tried[lr]))
            results[config] = tried[lrs[config]]
            scores = ", ".join(f"lr {lr:g}: {100 * late_test_error(runs):.2f}%"
                               for lr, runs in tried.items())
            grid_note = f"; test error over the last 5 epochs: {scores}" if args.lr_grid else ""
            print(f"  trained {label:>10} at batch size {batch_size:>3} in "
                  f"{time.perf_counter() - t:5.1f} s{grid_note}", flush=True)

    print_tables(results, lrs, epochs, n_seeds)
    print(f"\ntotal training time {time.perf_counter() - start:.1f} s")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "batch_size.png")
    plot(results, lrs, epochs, path)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
