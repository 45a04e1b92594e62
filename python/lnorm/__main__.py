"""``python -m lnorm``: a self-check against a float64 NumPy reference, then a short timing table (lnorm
against the fastest native copy of the same bytes at the same thread count, the CPU named).

``python -m lnorm --cmakedir`` prints the folder holding lnormConfig.cmake (for ``-Dlnorm_DIR``);
``--includedir`` the folder holding lnorm/lnorm.hpp.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import lnorm
from lnorm._limit import COPY_KINDS, copy_rows, cpu_description


def _reference(x, axes, weight, bias, eps, rms):
    """float64 LayerNorm / RMSNorm, straight from the definitions."""
    x = x.astype(np.float64)
    if rms:
        rstd = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
        y = x * rstd
    else:
        mean = x.mean(axis=axes, keepdims=True)
        rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
        y = (x - mean) * rstd
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    if weight is not None:
        y = y * weight.astype(np.float64).reshape(shape)
    if bias is not None:
        y = y + bias.astype(np.float64).reshape(shape)
    return y


def _backward_reference(dy, x, weight, axes, eps, rms):
    """float64 dx by the analytic formula."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    g = dy * (weight.astype(np.float64).reshape(shape) if weight is not None else 1.0)
    if rms:
        rstd = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
        xhat = x * rstd
        return rstd * (g - xhat * np.mean(g * xhat, axis=axes, keepdims=True))
    mean = x.mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    return rstd * (g - g.mean(axis=axes, keepdims=True)
                   - xhat * np.mean(g * xhat, axis=axes, keepdims=True))


def self_check(seed: int = 0) -> int:
    """Compares forward and backward with the float64 reference; returns the number of failures."""
    rng = np.random.default_rng(seed)
    cases = [((4, 768), (1,)), ((3, 17), (1,)), ((2, 8, 5, 6), (1,)), ((5, 6, 7), (1, 2)),
             ((33, 4099), (1,)), ((2, 3, 4), (0, 2))]
    failures = checked = 0
    for dtype, tol in ((np.float32, 3e-5), (np.float64, 1e-12)):
        for shape, axes in cases:
            for rms in (False, True):
                x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
                nshape = tuple(shape[a] for a in axes)
                w = rng.standard_normal(nshape).astype(dtype)
                b = None if rms else rng.standard_normal(nshape).astype(dtype)
                eps = float(rng.uniform(0, 1e-3))
                if rms:
                    y, rstd = lnorm.rms_norm(x, w, axis=axes, eps=eps, return_stats=True)
                    dx, _ = lnorm.rms_norm_backward(np.ones_like(x), x, rstd, w, axis=axes)
                else:
                    y, mean, rstd = lnorm.layer_norm(x, w, b, axis=axes, eps=eps, return_stats=True)
                    dx, _, _ = lnorm.layer_norm_backward(np.ones_like(x), x, mean, rstd, w, axis=axes)
                ref = _reference(x, axes, w, b, eps, rms)
                dref = _backward_reference(np.ones_like(x), x, w, axes, eps, rms)
                scale = 1.0 + np.abs(ref).max()
                dscale = 1.0 + np.abs(dref).max()
                ok = (np.abs(y - ref).max() <= tol * scale and np.abs(dx - dref).max() <= tol * 10 * dscale)
                checked += 1
                if not ok:
                    failures += 1
                    print(f"  MISMATCH {np.dtype(dtype).name} shape={shape} axes={axes} rms={rms}")
    status = "ok" if failures == 0 else f"FAILED ({failures} of {checked})"
    print(f"self-check: {checked} cases of layer_norm/rms_norm forward and backward against a float64 "
          f"reference: {status}")
    return failures + channel_check(rng)


def channel_check(rng) -> int:
    """group_norm, instance_norm and batch_norm (training) in NCHW and NHWC against float64 NumPy, the
    group norm's backward too; returns the number of failures."""
    failures = checked = 0
    for dtype, tol in ((np.float32, 3e-5), (np.float64, 1e-12)):
        for shape in ((2, 8, 5, 7), (3, 32, 17), (4, 16)):
            x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
            c = shape[1]
            w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
            bc = (1, c) + (1,) * (len(shape) - 2)
            for layout in ("nchw", "nhwc"):
                xl = x if layout == "nchw" else np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
                for op, groups in (("group", 4), ("instance", c), ("batch", None)):
                    if op == "instance" and len(shape) == 2:
                        continue
                    x64 = x.astype(np.float64)
                    if op == "batch":
                        y = lnorm.batch_norm(xl, None, None, w, b, training=True)
                        axes, xs = (0,) + tuple(range(2, len(shape))), x64
                    else:
                        y, mean, rstd = (lnorm.group_norm(xl, groups, w, b, return_stats=True) if op == "group"
                                         else lnorm.instance_norm(xl, w, b, return_stats=True))
                        xs, axes = x64.reshape(shape[0], groups, -1), (2,)
                    # The statistics' axes of xs, then the per-channel affine: LayerNorm's references.
                    ref = _reference(xs, axes, None, None, 1e-5, False).reshape(shape) * w.reshape(bc) + b.reshape(bc)
                    ok = np.abs(y - ref).max() <= tol * (1 + np.abs(ref).max())
                    if op == "group":
                        dy = np.ones_like(x)
                        dx, _, _ = lnorm.group_norm_backward(dy, xl, mean, rstd, w, num_groups=groups)
                        g = (dy.astype(np.float64) * w.reshape(bc)).reshape(xs.shape)  # dy * weight, grouped
                        dref = _backward_reference(g, xs, None, axes, 1e-5, False).reshape(shape)
                        ok = ok and np.abs(dx - dref).max() <= tol * 10 * (1 + np.abs(dref).max())
                    checked += 1
                    if not ok:
                        failures += 1
                        print(f"  MISMATCH {op}_norm {np.dtype(dtype).name} shape={shape} {layout}")
    status = "ok" if failures == 0 else f"FAILED ({failures} of {checked})"
    print(f"self-check: {checked} cases of group_norm/instance_norm/batch_norm (NCHW and NHWC) against a "
          f"float64 reference: {status}")
    return failures


def _median_time(fn, repeat: int, number: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t) / number)
    return float(np.median(times))


def timing_table(quick: bool = False) -> None:
    """layer_norm (float32, out=) against the copy limit: the fastest copy of the same bytes at the same
    thread count (lnorm/copy.hpp with plain, streaming or memcpy stores), with np.copyto and a NumPy
    expression for reference. All of a shape's contenders run interleaved, 5 rounds; medians."""
    rng = np.random.default_rng(1)
    shapes = [(1, 768), (32, 1024), (4096, 768), (2048, 4096)]
    if quick:
        shapes = shapes[:2]
    threads = lnorm.get_num_threads()
    config = lnorm.config()
    isa = config["isa"]
    if not config["isa_forced"] and isa == "avx512" and "forward_float32" in config["policy"]["avx2_ops"]:
        isa += " (this op on avx2, by the CPU policy)"
    print(f"\ntiming: layer_norm float32 out=, {threads} thread{'s' * (threads > 1)}, isa {isa}, "
          f"CPU {cpu_description()}")
    print("/ limit: the time of the fastest copy of the same bytes on the same threads (plain or streaming stores,\n"
          "memcpy) over lnorm's; np.copyto (one thread) for reference. GB/s: (bytes read + written) / time; medians.")
    print(f"{'shape':>10} {'lnorm us':>9} {'GB/s':>7} {'limit GB/s':>11} {'(copy)':>11} {'/ limit':>7} "
          f"{'copyto GB/s':>11} {'numpy us':>9} {'speedup':>7}")
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        y, dst = np.empty_like(x), np.empty_like(x)
        w = rng.standard_normal(shape[-1], dtype=np.float32)
        b = rng.standard_normal(shape[-1], dtype=np.float32)
        nbytes = 2 * x.nbytes
        number = max(1, int(2e7 // x.size))
        calls = {"lnorm": (lambda: lnorm.layer_norm(x, w, b, out=y), number),
                 "np.copyto": (lambda: np.copyto(dst, x), number),
                 "numpy": (lambda: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b,
                           max(1, number // 4))}
        for kind in COPY_KINDS:
            calls[kind] = (lambda kind=kind: copy_rows(x, dst, kind), number)
        # Interleave them all, so that machine noise hits each alike.
        samples = {name: [] for name in calls}
        for _ in range(5):
            for name, (fn, n) in calls.items():
                samples[name].append(_median_time(fn, 1, n))
        t = {name: float(np.median(v)) for name, v in samples.items()}
        limit = min(COPY_KINDS, key=t.get)
        print(f"{'x'.join(map(str, shape)):>10} {t['lnorm'] * 1e6:9.1f} {nbytes / t['lnorm'] / 1e9:7.2f} "
              f"{nbytes / t[limit] / 1e9:11.2f} {'(' + limit + ')':>11} {t[limit] / t['lnorm']:7.2f} "
              f"{nbytes / t['np.copyto'] / 1e9:11.2f} {t['numpy'] * 1e6:9.1f} {t['numpy'] / t['lnorm']:6.1f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lnorm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cmakedir", action="store_true", help="print the folder of lnormConfig.cmake")
    parser.add_argument("--includedir", action="store_true", help="print the folder of lnorm/lnorm.hpp")
    parser.add_argument("--quick", action="store_true", help="a shorter timing table")
    args = parser.parse_args(argv)
    if args.cmakedir:
        print(lnorm.cmake_dir())
        return 0
    if args.includedir:
        print(lnorm.include_dir())
        return 0
    print(f"lnorm {lnorm.__version__}: {lnorm.config()}")
    failures = self_check()
    timing_table(quick=args.quick)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
