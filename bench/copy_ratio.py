"""The copy-limit goals alone, measured closely: lnorm's `layer_norm` and `rms_norm` with `out=`
against the copy limit of the same bytes, float32, float16 and bfloat16, over many interleaved rounds.

The copy limit is the fastest of lnorm's native copies of the same bytes on the same threads
(lnorm/copy.hpp through lnorm._lnorm.copy_rows: plain vector stores, streaming stores, memcpy), as in
bench.py; np.copyto (one thread) is reported beside it for reference only.

bench.py times every contender of a case 7 times; on a shared machine a goal that sits a few per cent
from its line can land either side of it from one run to the next. This script times only these
ratios, each round as copies, norm, copies (a pause between calls; each copy taken as the mean of its
two runs around the norm, the limit as the fastest of them), and reports the median ratio with its
interquartile range.

    python bench/copy_ratio.py                  # 8192x4096, 1 and 2 threads, 31 rounds
    python bench/copy_ratio.py --threads 1 --rounds 61
"""

import argparse
import statistics
import time

import numpy as np

import lnorm
from lnorm._limit import COPY_KINDS, copy_rows, cpu_description

try:
    import ml_dtypes
except ImportError:  # bfloat16 rows need ml_dtypes
    ml_dtypes = None


def timed(fn, pause):
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    time.sleep(pause)
    return elapsed


def ratios(x, weight, bias, rounds, pause):
    """Per round, copy-limit time / norm time for layer_norm and rms_norm (out=), and np.copyto's time /
    norm time; with how often each native copy was the limit."""
    y, copy = np.empty_like(x), np.empty_like(x)
    calls = {
        "layer_norm": lambda: lnorm.layer_norm(x, weight, bias, out=y),
        "rms_norm": lambda: lnorm.rms_norm(x, weight, out=y),
    }
    copies = {kind: (lambda kind=kind: copy_rows(x, copy, kind)) for kind in COPY_KINDS}
    copies["np.copyto"] = lambda: np.copyto(copy, x)
    result = {op: {"limit": [], "np.copyto": []} for op in calls}
    fastest = dict.fromkeys(COPY_KINDS, 0)
    for _ in range(rounds):
        for op, call in calls.items():
            before = {name: timed(fn, pause) for name, fn in copies.items()}
            norm = timed(call, pause)
            after = {name: timed(fn, pause) for name, fn in copies.items()}
            mean = {name: (before[name] + after[name]) / 2 for name in copies}
            limit = min(COPY_KINDS, key=mean.get)
            fastest[limit] += 1
            result[op]["limit"].append(mean[limit] / norm)
            result[op]["np.copyto"].append(mean["np.copyto"] / norm)
    return result, fastest


def summary(values):
    q1, q3 = np.percentile(values, [25, 75])
    return f"{statistics.median(values):.3f} (IQR {q1:.3f}-{q3:.3f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--pause-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    dtypes = [np.float32, np.float16] + ([ml_dtypes.bfloat16] if ml_dtypes is not None else [])
    print(f"lnorm {lnorm.__version__} [{lnorm.config()['isa']}], {args.rows}x{args.cols}, {args.rounds} rounds; "
          f"CPU {cpu_description()}")
    print("copy-limit time / norm out= time (goal >= 0.90; the limit: the fastest of copy_rows "
          + ", ".join(COPY_KINDS) + " on the same threads); np.copyto's for reference")
    for threads in (int(t) for t in args.threads.split(",")):
        lnorm.set_num_threads(threads)
        for dtype in dtypes:
            # Rows with their own offsets (never zeros), weights near 1.
            x = (rng.standard_normal((args.rows, args.cols)) + 3 * rng.standard_normal((args.rows, 1))).astype(dtype)
            weight = (1 + 0.1 * rng.standard_normal(args.cols)).astype(dtype)
            bias = rng.standard_normal(args.cols).astype(dtype)
            measured, fastest = ratios(x, weight, bias, args.rounds, args.pause_ms / 1e3)
            print(f"{threads} thread{'s' * (threads > 1)}, {np.dtype(dtype).name:8s}: "
                  + "; ".join(f"{op} {summary(v['limit'])} (np.copyto {statistics.median(v['np.copyto']):.3f})"
                              for op, v in measured.items())
                  + "; limit copy " + ", ".join(f"{k} {n}x" for k, n in fastest.items() if n), flush=True)


if __name__ == "__main__":
    main()
