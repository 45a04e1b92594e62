"""lnorm's CUDA backend on a GPU: verify every configuration first, then time it against its peers.

    python bench/bench_cuda.py                       # full sweep -> appends to bench/RESULTS_CUDA.md
    python bench/bench_cuda.py --quick --out /tmp/r.md
    python bench/bench_cuda.py --dtypes bf16 --hidden 4096,4099 --reps 50

Contenders, per (dtype, hidden size, op): lnorm (layer_norm, rms_norm and their backward passes on
PyTorch CUDA tensors), ``torch.nn.functional.layer_norm`` / ``rms_norm`` (the backward through
autograd, forward excluded from the timing), and a device-to-device copy (``Tensor.copy_``, i.e.
cudaMemcpyAsync) moving the same number of bytes: the memory-bandwidth limit. Rows are chosen so
that rows x hidden >= 16M elements (--min-elements).

Verification: lnorm's output on the timed inputs is compared with a float64 reference (first rows)
before anything is timed; a mismatch aborts.

Timing: CUDA events around one call, repeated --reps times, the median kept. Before each call a
256 MiB buffer is zeroed on the same stream: it evicts the L2 cache (each call reads its inputs
from memory, as in a model) and keeps the GPU busy while Python queues the call, so the events
measure GPU time, not launch overhead (reported separately: host microseconds per small call).
Contenders of one case run interleaved within each repetition. GB/s = (bytes read + bytes written)
/ time, each array counted once: forward reads x and writes y (2 arrays), backward reads x and dy
and writes dx (3); the copy moves the same bytes.

Writes: appends a section (GPU name, versions, command, table, goal summary) to --out
(bench/RESULTS_CUDA.md by default). Without a CUDA GPU, PyTorch or lnorm's CUDA backend it says so
and exits with status 0 having measured nothing; importing this file has no side effects.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "RESULTS_CUDA.md")
HIDDEN_FULL = (768, 1024, 1536, 2048, 3072, 4096, 5120, 6144, 8192, 12288, 16384, 32768, 65536,
               770, 1000, 1023, 1030, 2047, 4099, 5121, 8199, 12290, 16385, 65535)
HIDDEN_QUICK = (768, 1000, 4096, 4099, 16384, 65536)
DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
OPS = ("layer_norm", "rms_norm", "layer_norm_backward", "rms_norm_backward")


def unavailable() -> Optional[str]:
    """Why this machine cannot run the benchmark, or None."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install torch)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    import lnorm

    if not lnorm.config()["cuda_compiled"]:
        return "this lnorm was built without its CUDA backend (pip install . -Ccmake.define.LNORM_CUDA=ON)"
    if lnorm.config()["cuda_devices"] == 0:
        return "lnorm's CUDA backend sees no GPU"
    return None


class Timer:
    """GPU time of one call with CUDA events, the L2 evicted (and the GPU kept busy) before it."""

    def __init__(self, torch):
        self.torch = torch
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def once(self, fn: Callable[[], object]) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.flush.zero_()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3  # seconds


def host_overhead_us(torch, lnorm) -> float:
    """Microseconds of host time per lnorm.layer_norm call on a tiny tensor (launch + Python)."""
    import time

    x = torch.randn(1, 768, device="cuda")
    for _ in range(20):
        lnorm.layer_norm(x)
    torch.cuda.synchronize()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        lnorm.layer_norm(x)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def reference_check(torch, op: str, x, dy, w, b, out, stats) -> float:
    """Largest error of lnorm's result on the first rows against float64, relative to the scale."""
    rows = min(x.shape[0], 64)
    xd = x[:rows].double()
    wd = w.double()
    if op.startswith("layer_norm"):
        m = xd.mean(-1, keepdim=True)
        r = 1 / torch.sqrt(((xd - m) ** 2).mean(-1, keepdim=True) + 1e-5)
    else:
        m = torch.zeros_like(xd[:, :1])
        r = 1 / torch.sqrt((xd * xd).mean(-1, keepdim=True) + 1e-6)
    xhat = (xd - m) * r
    if not op.endswith("backward"):
        want = xhat * wd + (b.double() if op == "layer_norm" else 0)
        got = out.double()[:rows]
    else:
        # Against the statistics lnorm's forward returned (what its backward was given).
        mean_used, rstd_used = stats
        m = torch.zeros_like(xd[:, :1]) if mean_used is None else mean_used[:rows].double()
        r = rstd_used[:rows].double()
        xhat = (xd - m) * r
        g = dy[:rows].double() * wd
        c1 = 0 if op == "rms_norm_backward" else g.mean(-1, keepdim=True)
        want = r * (g - c1 - xhat * (g * xhat).mean(-1, keepdim=True))
        got = out.double()[:rows]
    return float(((got - want).abs() / (1 + want.abs())).max())


def run_case(torch, lnorm, timer: Timer, dtype: str, hidden: int, min_elements: int, reps: int) -> List[Dict]:
    F = torch.nn.functional
    tdt = getattr(torch, dtype)
    rows = max(1, math.ceil(min_elements / hidden))
    g = torch.Generator(device="cuda").manual_seed(hidden)
    x = torch.randn(rows, hidden, device="cuda", generator=g).to(tdt)
    dy = torch.randn(rows, hidden, device="cuda", generator=g).to(tdt)
    w = (torch.randn(hidden, device="cuda", generator=g) * 0.1 + 1).to(tdt)
    b = (torch.randn(hidden, device="cuda", generator=g) * 0.1).to(tdt)
    size = x.element_size()
    n = rows * hidden
    out: List[Dict] = []
    for op in OPS:
        backward = op.endswith("backward")
        rms = op.startswith("rms")
        if not hasattr(F, "rms_norm") and rms:
            continue
        # lnorm: verify, then its timed call.
        if not backward:
            call = (lambda: lnorm.rms_norm(x, w, eps=1e-6)) if rms else (lambda: lnorm.layer_norm(x, w, b, eps=1e-5))
            err = reference_check(torch, op, x, dy, w, b, call(), None)
        else:
            if rms:
                _, rstd = lnorm.rms_norm(x, w, eps=1e-6, return_stats=True)
                mean = None
                call = lambda: lnorm.rms_norm_backward(dy, x, rstd, w)  # noqa: E731
            else:
                _, mean, rstd = lnorm.layer_norm(x, w, b, eps=1e-5, return_stats=True)
                call = lambda: lnorm.layer_norm_backward(dy, x, mean, rstd, w)  # noqa: E731
            err = reference_check(torch, op, x, dy, w, b, call()[0], (mean, rstd))
        limit = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}[dtype] * (10 if backward else 1)
        if not err <= limit:
            raise SystemExit(f"verification failed: {op} {dtype} hidden {hidden}: error {err:.3g} > {limit}")
        # torch.
        if not backward:
            peer = (lambda: F.rms_norm(x, (hidden,), w, 1e-6)) if rms else (lambda: F.layer_norm(x, (hidden,), w, b, 1e-5))
        else:
            xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
            bg = None if rms else b.detach().requires_grad_()
            yg = F.rms_norm(xg, (hidden,), wg, 1e-6) if rms else F.layer_norm(xg, (hidden,), wg, bg, 1e-5)
            inputs = (xg, wg) if rms else (xg, wg, bg)
            peer = lambda: torch.autograd.grad(yg, inputs, dy, retain_graph=True)  # noqa: E731
        # The copy: the same bytes read and written.
        arrays = 3 if backward else 2
        copy_bytes = (arrays * n * size) // 2
        src = torch.empty(copy_bytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        copy = lambda: dst.copy_(src)  # noqa: E731
        times: Dict[str, List[float]] = {"lnorm": [], "torch": [], "copy": []}
        contenders = (("lnorm", call), ("torch", peer), ("copy", copy))
        for fn in (call, peer, copy):  # warm-up
            fn()
        for rep in range(reps):
            for k in range(3):
                name, fn = contenders[(rep + k) % 3]
                times[name].append(timer.once(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        traffic = arrays * n * size
        out.append({
            "dtype": dtype, "hidden": hidden, "rows": rows, "op": op, "max_error": err,
            "lnorm_us": med["lnorm"] * 1e6, "torch_us": med["torch"] * 1e6, "copy_us": med["copy"] * 1e6,
            "lnorm_gbps": traffic / med["lnorm"] / 1e9, "torch_gbps": traffic / med["torch"] / 1e9,
            "copy_gbps": traffic / med["copy"] / 1e9,
            "of_copy": med["copy"] / med["lnorm"], "vs_torch": med["torch"] / med["lnorm"],
        })
        del src, dst
    return out


def goal_summary(rows: List[Dict]) -> List[str]:
    """The design goals checked against these numbers."""
    lines = []

    def worst(pred, key):
        sel = [r for r in rows if pred(r)]
        return (min(sel, key=lambda r: r[key]) if sel else None)

    checks = [
        ("forward, hidden 768..16384, multiple of 8: >= 0.90 of copy",
         lambda r: not r["op"].endswith("backward") and 768 <= r["hidden"] <= 16384 and r["hidden"] % 8 == 0,
         "of_copy", 0.90),
        ("forward, other widths up to 65536: >= 0.80 of copy",
         lambda r: not r["op"].endswith("backward") and not (768 <= r["hidden"] <= 16384 and r["hidden"] % 8 == 0),
         "of_copy", 0.80),
        ("backward, >= 4096 rows: >= 0.75 of copy",
         lambda r: r["op"].endswith("backward") and r["rows"] >= 4096, "of_copy", 0.75),
        ("faster than PyTorch everywhere", lambda r: True, "vs_torch", 1.0),
    ]
    for text, pred, key, goal in checks:
        w = worst(pred, key)
        if w is None:
            lines.append(f"- {text}: no case measured")
            continue
        verdict = "met" if w[key] >= goal else "NOT met"
        lines.append(f"- {text}: {verdict} (worst {w[key]:.2f}: {w['op']} {w['dtype']} hidden {w['hidden']})")
    return lines


def write_section(path: str, torch, lnorm, rows: List[Dict], overhead: float, argv: List[str]) -> str:
    props = torch.cuda.get_device_properties(0)
    archs = lnorm._cuda.native().compiled_architectures()
    head = [
        f"## {props.name}, {datetime.date.today().isoformat()}",
        "",
        f"lnorm {lnorm.__version__} (CUDA archs {archs}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB. "
        f"Command: `python bench/bench_cuda.py {' '.join(argv)}`. Medians of CUDA-event times per call "
        f"(L2 flushed before each); GB/s = bytes read + written / time. Host overhead of "
        f"`lnorm.layer_norm` on a 1x768 tensor: {overhead:.1f} us per call.",
        "",
        "Goals:",
        *goal_summary(rows),
        "",
        "| dtype | hidden | rows | op | lnorm us | lnorm GB/s | of copy | torch GB/s | vs torch | copy GB/s | max err |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        head.append(f"| {r['dtype']} | {r['hidden']} | {r['rows']} | {r['op']} | {r['lnorm_us']:.1f} | "
                    f"{r['lnorm_gbps']:.0f} | {r['of_copy']:.2f} | {r['torch_gbps']:.0f} | {r['vs_torch']:.2f}x | "
                    f"{r['copy_gbps']:.0f} | {r['max_error']:.1e} |")
    text = "\n".join(head) + "\n\n"
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("# lnorm CUDA benchmark results\n\nWritten by `bench/bench_cuda.py`, one section per run "
                    "(newest last).\n\n")
        f.write(text)
    return text


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"hidden sizes {HIDDEN_QUICK}, bf16 only, fewer reps")
    p.add_argument("--dtypes", default="bf16,f32,f16", help="comma list of bf16, f16, f32")
    p.add_argument("--hidden", default="", help="comma list of hidden sizes (default: the sweep)")
    p.add_argument("--min-elements", type=int, default=1 << 24, help="rows x hidden at least this (16M)")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", default=DEFAULT_OUT, help="Markdown file the section is appended to")
    args = p.parse_args(argv)
    why = unavailable()
    if why is not None:
        print(f"bench_cuda.py: nothing to measure here: {why}.", file=sys.stderr)
        return 0
    import torch

    import lnorm

    dtypes = ["bf16"] if args.quick else [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            p.error(f"--dtypes: {d!r} is not one of {sorted(DTYPES)}")
    hidden = ([int(h) for h in args.hidden.split(",")] if args.hidden else
              list(HIDDEN_QUICK if args.quick else HIDDEN_FULL))
    reps = min(args.reps, 10) if args.quick else args.reps
    timer = Timer(torch)
    overhead = host_overhead_us(torch, lnorm)
    rows: List[Dict] = []
    for d in dtypes:
        for h in hidden:
            for r in run_case(torch, lnorm, timer, DTYPES[d], h, args.min_elements, reps):
                rows.append(r)
                print(f"{r['dtype']:>8} {r['hidden']:>6} {r['op']:<20} lnorm {r['lnorm_gbps']:7.0f} GB/s "
                      f"({r['of_copy']:.2f} of copy, {r['vs_torch']:.2f}x torch)", flush=True)
    print("verification passed")
    print(write_section(args.out, torch, lnorm, rows, overhead, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
