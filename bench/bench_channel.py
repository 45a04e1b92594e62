"""lnorm's channel norms against their bound, PyTorch and ONNX Runtime: verify first, then time.

    python bench/bench_channel.py                      # full run (~10 min on 2 cores) -> bench/
    python bench/bench_channel.py --quick --out /tmp/c # smoke run, used by tests/test_bench.py

Cases: GroupNorm(32), InstanceNorm, BatchNorm eval and BatchNorm training (forward, ``out=``), and the
backward of GroupNorm, InstanceNorm and BatchNorm training, on (8, 512, 64, 64) and a diffusion-sized
(1, 512, 128, 128), NCHW and NHWC (torch: ``channels_last``), float32 and bfloat16, 1 and 2 threads.
Every contender's result is compared with a float64 NumPy reference before it is timed.

The bound of a case is a multiple of its copy limit (the fastest of lnorm's native copies of x's bytes
at the same thread count: plain, streaming or memcpy stores, timed in the same round-robin):
  1 copy     where a statistic's data fits in L2 and is normalized while there (NCHW groups and
             instances, BatchNorm training over NCHW: each channel's N * H * W values), or no statistic
             is computed (BatchNorm eval);
  1.5 copies where x must be read twice because a statistic's data does not fit (NHWC groups and
             instances of large images, BatchNorm training over NHWC);
the backward reads dy and x and writes dx: 1.5 copies where a unit fits, 2.5 where it is read twice.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import lnorm
from lnorm._limit import COPY_KINDS, copy_rows, cpu_description

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None
try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None
try:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover
    onnxruntime = None

EPS = 1e-5
GROUPS = 32
OPS = ("group_norm", "instance_norm", "batch_norm_eval", "batch_norm_train",
       "group_norm_backward", "instance_norm_backward", "batch_norm_backward")
SHAPES = ((8, 512, 64, 64), (1, 512, 128, 128))


def bound_copies(op: str, layout: str) -> float:
    """The case's bound in copies of x's bytes (see the module docstring)."""
    backward = op.endswith("_backward")
    if op == "batch_norm_eval":
        return 1.0
    twice = layout == "nhwc"  # NCHW units fit in L2 and are normalized while there
    if backward:
        return 2.5 if twice else 1.5
    return 1.5 if twice else 1.0


# ---- inputs and references ----------------------------------------------------------------------


@dataclass
class Inputs:
    x: np.ndarray  # logical NCHW, memory NCHW or NHWC
    dy: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray


def make_inputs(shape, dtype, layout, seed) -> Inputs:
    rng = np.random.default_rng(seed)
    n, c, h, w = shape

    def tensor():
        a = (rng.standard_normal((n, h, w, c), dtype=np.float32) * 1.5 + 0.5)
        a = a if layout == "nhwc" else np.ascontiguousarray(a.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        return a.astype(dtype).transpose(0, 3, 1, 2)  # logical NCHW

    x, dy = tensor(), tensor()
    weight = rng.standard_normal(c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(np.float32) * 0.1 + 0.5
    rv = rng.uniform(0.5, 3.0, c).astype(np.float32)
    return Inputs(x, dy, weight, bias, rm, rv)


def reference(op: str, inp: Inputs) -> np.ndarray:
    """float64 result of op (dx for the backward ops)."""
    x = inp.x.astype(np.float64)
    n, c = x.shape[:2]
    w, b = inp.weight.astype(np.float64), inp.bias.astype(np.float64)
    bc = lambda v: v.reshape(1, c, 1, 1)  # noqa: E731
    if op == "batch_norm_eval":
        return (x - bc(inp.running_mean.astype(np.float64))) / np.sqrt(bc(inp.running_var.astype(np.float64)) + EPS) * bc(w) + bc(b)
    base = op.replace("_backward", "")
    if base == "batch_norm_train" or base == "batch_norm":
        axes, xs = (0, 2, 3), x
    else:
        g = GROUPS if base == "group_norm" else c
        xs, axes = x.reshape(n, g, -1), (2,)
    mean = xs.mean(axis=axes, keepdims=True)
    var = xs.var(axis=axes, keepdims=True)
    xhat = ((xs - mean) / np.sqrt(var + EPS)).reshape(x.shape)
    if not op.endswith("_backward"):
        return xhat * bc(w) + bc(b)
    dy = inp.dy.astype(np.float64)
    gw = (dy * bc(w)).reshape(xs.shape)
    xh = xhat.reshape(xs.shape)
    m1 = gw.mean(axis=axes, keepdims=True)
    m2 = (gw * xh).mean(axis=axes, keepdims=True)
    return ((gw - m1 - xh * m2) / np.sqrt(var + EPS)).reshape(x.shape)


def max_error(actual, expected) -> float:
    a = np.asarray(actual).astype(np.float64)
    return float(np.max(np.abs(a - expected)) / (1.0 + np.max(np.abs(expected))))


# ---- contenders -----------------------------------------------------------------------------------


@dataclass
class Contender:
    label: str
    run: Callable[[], object]
    result: Callable[[], np.ndarray]  # one call, the output to verify (NumPy, logical NCHW)
    spin_down: float = 0.0


def lnorm_contender(op: str, inp: Inputs) -> Contender:
    x, w, b = inp.x, inp.weight, inp.bias
    y = np.empty_like(x)  # x's memory order (NCHW or NHWC)
    assert y.strides == x.strides
    rm, rv = inp.running_mean.copy(), inp.running_var.copy()
    if op.endswith("_backward"):
        base = op.replace("_backward", "")
        if base == "group_norm":
            _, mean, rstd = lnorm.group_norm(x, GROUPS, w, b, return_stats=True)
            run = lambda: lnorm.group_norm_backward(inp.dy, x, mean, rstd, w, num_groups=GROUPS)  # noqa: E731
        elif base == "instance_norm":
            _, mean, rstd = lnorm.instance_norm(x, w, b, return_stats=True)
            run = lambda: lnorm.instance_norm_backward(inp.dy, x, mean, rstd, w)  # noqa: E731
        else:
            _, mean, rstd = lnorm.batch_norm(x, None, None, w, b, training=True, return_stats=True)
            run = lambda: lnorm.batch_norm_backward(inp.dy, x, mean, rstd, w)  # noqa: E731
        return Contender("lnorm", run, lambda: run()[0])
    if op == "group_norm":
        run = lambda: lnorm.group_norm(x, GROUPS, w, b, out=y)  # noqa: E731
    elif op == "instance_norm":
        run = lambda: lnorm.instance_norm(x, w, b, out=y)  # noqa: E731
    elif op == "batch_norm_eval":
        run = lambda: lnorm.batch_norm(x, inp.running_mean, inp.running_var, w, b, out=y)  # noqa: E731
    else:
        run = lambda: lnorm.batch_norm(x, rm, rv, w, b, training=True, out=y)  # noqa: E731
    return Contender("lnorm", run, lambda: np.array(run()))


def torch_contender(op: str, inp: Inputs, layout: str):
    if torch is None:
        return None
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format

    def tt(a):
        a = np.ascontiguousarray(a) if a.ndim == 1 else a
        if a.dtype == BF16:
            t = torch.from_numpy(np.ascontiguousarray(a.view(np.int16)) if a.ndim == 1 else a.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(a)
        return t.contiguous(memory_format=fmt) if a.ndim == 4 else t

    x, dy, w, b = tt(inp.x), tt(inp.dy), tt(inp.weight), tt(inp.bias)
    if op.startswith("batch_norm") and x.dtype == torch.bfloat16:  # torch's CPU BatchNorm: float32 parameters
        w, b = w.float(), b.float()
    rm, rv = torch.from_numpy(inp.running_mean.copy()), torch.from_numpy(inp.running_var.copy())
    n, c, h, wd = inp.x.shape
    to_np = lambda t: t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()  # noqa: E731
    if op == "group_norm":
        run = lambda: F.group_norm(x, GROUPS, w, b, EPS)  # noqa: E731
    elif op == "instance_norm":
        run = lambda: F.instance_norm(x, weight=w, bias=b, eps=EPS)  # noqa: E731
    elif op == "batch_norm_eval":
        run = lambda: F.batch_norm(x, rm, rv, w, b, training=False, eps=EPS)  # noqa: E731
    elif op == "batch_norm_train":
        run = lambda: F.batch_norm(x, rm, rv, w, b, training=True, eps=EPS)  # noqa: E731
    else:
        base = op.replace("_backward", "")
        if base == "batch_norm":
            _, mean, invstd = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, 0.1, EPS)
            run = lambda: torch.ops.aten.native_batch_norm_backward(  # noqa: E731
                dy, x, w, None, None, mean, invstd, True, EPS, [True, True, True])
        else:
            g = GROUPS if base == "group_norm" else c
            _, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, n, c, h * wd, g, EPS)
            run = lambda: torch.ops.aten.native_group_norm_backward(  # noqa: E731
                dy, x, mean, rstd, w, n, c, h * wd, g, [True, True, True])
        return Contender("torch", run, lambda: to_np(run()[0]))
    return Contender("torch", run, lambda: to_np(run()))


def onnxruntime_contender(op: str, inp: Inputs, layout: str, threads: int):
    """ONNX Runtime, NCHW only (its CPU kernels take no channels-last input), float32 forward ops."""
    if onnxruntime is None or layout != "nchw" or inp.x.dtype != np.float32 or op.endswith("_backward") \
            or op == "batch_norm_train":
        return None
    c = inp.x.shape[1]
    inits = [numpy_helper.from_array(inp.weight, "W"), numpy_helper.from_array(inp.bias, "B")]
    if op == "group_norm":
        node, opset = helper.make_node("GroupNormalization", ["X", "W", "B"], ["Y"], epsilon=EPS,
                                       num_groups=GROUPS), 21
    elif op == "instance_norm":
        node, opset = helper.make_node("InstanceNormalization", ["X", "W", "B"], ["Y"], epsilon=EPS), 17
    else:
        inits += [numpy_helper.from_array(inp.running_mean, "M"), numpy_helper.from_array(inp.running_var, "V")]
        node, opset = helper.make_node("BatchNormalization", ["X", "W", "B", "M", "V"], ["Y"], epsilon=EPS), 15
    shape = list(inp.x.shape)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # an ORT without the opset
        print(f"  onnxruntime: {op} unavailable ({type(e).__name__})", file=sys.stderr)
        return None
    feed = {"X": np.ascontiguousarray(inp.x)}
    run = lambda: session.run(None, feed)  # noqa: E731
    _ = c
    return Contender("onnxruntime", run, lambda: run()[0], spin_down=0.05 if threads > 1 else 0.0)


def copy_contenders(inp: Inputs):
    src = np.ascontiguousarray(inp.x).reshape(inp.x.shape[0] * inp.x.shape[1], -1)
    dst = np.empty_like(src)
    return [Contender(f"copy.{k}", (lambda k=k: copy_rows(src, dst, k)), lambda: None) for k in COPY_KINDS]


# ---- timing ---------------------------------------------------------------------------------------


def time_round_robin(contenders, repeat: int, rep_seconds: float):
    calls = {}
    for c in contenders:
        n, start = 0, time.perf_counter()
        while True:
            c.run()
            n += 1
            if time.perf_counter() - start >= rep_seconds / 4:
                break
        calls[c.label] = max(1, math.ceil(rep_seconds / ((time.perf_counter() - start) / n)))
    times = {c.label: [] for c in contenders}
    for rep in range(repeat):
        shift = rep % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            time.sleep(max(0.01, c.spin_down))
            k, run = calls[c.label], c.run
            start = time.perf_counter()
            for _ in range(k):
                run()
            times[c.label].append((time.perf_counter() - start) / k)
    return times


@dataclass
class Row:
    op: str
    shape: tuple
    layout: str
    dtype: str
    threads: int
    times: dict = field(repr=False)
    bound: float = 1.0

    def med(self, label):
        return statistics.median(self.times[label]) if label in self.times else float("nan")

    @property
    def copy_seconds(self):
        return min(self.med(f"copy.{k}") for k in COPY_KINDS)

    def paired(self, num: str, den: str) -> float:
        """Median of per-repetition time ratios num / den."""
        if num not in self.times or den not in self.times:
            return float("nan")
        return statistics.median(a / b for a, b in zip(self.times[num], self.times[den]))

    @property
    def of_bound(self):
        # paired: per repetition, the bound (bound * fastest copy of that repetition) over lnorm's time
        reps = len(self.times["lnorm"])
        vals = []
        for i in range(reps):
            copy = min(self.times[f"copy.{k}"][i] for k in COPY_KINDS)
            vals.append(self.bound * copy / self.times["lnorm"][i])
        return statistics.median(vals)


def run(args) -> list:
    rows = []
    dtypes = [np.dtype(np.float32)] + ([BF16] if BF16 is not None and not args.quick else [])
    if args.dtypes:
        dtypes = [np.dtype(np.float32) if d == "float32" else BF16 for d in args.dtypes.split(",")]
    shapes = ((2, 64, 16, 16),) if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    ops = args.ops.split(",") if args.ops else OPS
    for shape in shapes:
        for dtype in dtypes:
            for layout in ("nchw", "nhwc"):
                inp = make_inputs(shape, dtype, layout, seed=hash((shape, layout)) % 1000)
                for op in ops:
                    expected = reference(op, inp)
                    for threads in args.threads:
                        lnorm.set_num_threads(threads)
                        if torch is not None:
                            torch.set_num_threads(threads)
                        cs = [lnorm_contender(op, inp), torch_contender(op, inp, layout),
                              onnxruntime_contender(op, inp, layout, threads)] + copy_contenders(inp)
                        cs = [c for c in cs if c is not None]
                        tol = 2e-2 if dtype == BF16 else 2e-4
                        for c in cs:
                            if c.label.startswith("copy"):
                                continue
                            err = max_error(c.result(), expected)
                            if not err <= tol:
                                raise SystemExit(f"verification failed: {c.label} {op} {shape} {layout} {dtype}: {err:.3g}")
                        times = time_round_robin(cs, args.repeat, args.rep_ms / 1000)
                        row = Row(op, shape, layout, dtype.name, threads, times, bound_copies(op, layout))
                        rows.append(row)
                        print(f"{op:24s} {str(shape):18s} {layout} {dtype.name:8s} t={threads}: "
                              f"{row.of_bound:.2f} of bound ({row.bound:g} copies), "
                              f"torch/lnorm {row.paired('torch', 'lnorm'):.2f}x, "
                              f"ORT/lnorm {row.paired('onnxruntime', 'lnorm'):.2f}x", flush=True)
    return rows


def geomean(values):
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def write_results(rows, out_dir, command):
    os.makedirs(out_dir, exist_ok=True)
    lines = [f"# Channel norms: lnorm against its bound, torch and ONNX Runtime", "",
             f"CPU: {cpu_description()}", "", f"Command: `{command}`", "",
             "Bound: a multiple of the copy limit (the fastest native copy of x's bytes at the same thread "
             "count): 1 copy for NCHW groups/instances and BatchNorm training over NCHW (each unit is normalized "
             "while in L2) and for BatchNorm eval; 1.5 for NHWC groups/instances and BatchNorm training over NHWC "
             "(x read twice); backward 1.5 / 2.5. `of bound` = bound time / lnorm time (1.0 = at the bound). "
             "Ratios are medians of per-repetition paired ratios.", "",
             "| op | shape | layout | dtype | threads | lnorm ms | of bound | torch / lnorm | ORT / lnorm |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.op} | {'x'.join(map(str, r.shape))} | {r.layout} | {r.dtype} | {r.threads} | "
                     f"{r.med('lnorm') * 1e3:.2f} | {r.of_bound:.2f} | {r.paired('torch', 'lnorm'):.2f} | "
                     f"{r.paired('onnxruntime', 'lnorm'):.2f} |")
    fw = [r for r in rows if not r.op.endswith("_backward")]
    bw = [r for r in rows if r.op.endswith("_backward")]
    lines += ["", "## Goals", ""]
    for name, group, goal_bound, goal_torch in (("forward", fw, 0.85, 3.0), ("backward", bw, 0.7, 2.0)):
        if not group:
            continue
        worst = min(group, key=lambda r: r.of_bound)
        worst_t = min(group, key=lambda r: r.paired("torch", "lnorm"))
        lines.append(f"- {name}: of bound geomean {geomean([r.of_bound for r in group]):.2f}, min "
                     f"{worst.of_bound:.2f} ({worst.op} {worst.layout} {worst.dtype} t={worst.threads}; goal "
                     f">= {goal_bound}); vs torch geomean {geomean([r.paired('torch', 'lnorm') for r in group]):.2f}x, "
                     f"min {worst_t.paired('torch', 'lnorm'):.2f}x ({worst_t.op} {worst_t.layout} {worst_t.dtype} "
                     f"t={worst_t.threads}; goal >= {goal_torch}x)")
    with open(os.path.join(out_dir, "RESULTS_channel.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "results_channel.csv"), "w") as f:
        f.write("op,shape,layout,dtype,threads,lnorm_ms,copy_ms,bound_copies,of_bound,torch_over_lnorm,ort_over_lnorm\n")
        for r in rows:
            f.write(f"{r.op},{'x'.join(map(str, r.shape))},{r.layout},{r.dtype},{r.threads},{r.med('lnorm') * 1e3:.4f},"
                    f"{r.copy_seconds * 1e3:.4f},{r.bound},{r.of_bound:.4f},{r.paired('torch', 'lnorm'):.4f},"
                    f"{r.paired('onnxruntime', 'lnorm'):.4f}\n")
    plot([{"op": r.op, "shape": "x".join(map(str, r.shape)), "layout": r.layout, "dtype": r.dtype,
           "threads": r.threads, "of_bound": r.of_bound, "torch_over_lnorm": r.paired("torch", "lnorm")} for r in rows],
         os.path.join(out_dir, "channel_norms.png"))


def plot(records, path):
    """Fraction of the bound, lnorm and torch, float32: one panel per shape and layout, the ops along x,
    1 and 2 threads side by side. `records`: dicts with the CSV's fields."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    recs = [r for r in records if r["dtype"] == "float32"]
    if not recs:
        return
    shapes = sorted({r["shape"] for r in recs}, key=lambda s: [int(d) for d in s.split("x")], reverse=True)
    layouts = ["nchw", "nhwc"]
    ops = [op for op in OPS if any(r["op"] == op for r in recs)]
    threads = sorted({int(r["threads"]) for r in recs})
    fig, axes = plt.subplots(len(shapes), len(layouts), figsize=(12, 3.2 * len(shapes)), squeeze=False, sharey=True)
    width = 0.8 / (2 * len(threads))
    for i, shape in enumerate(shapes):
        for j, layout in enumerate(layouts):
            ax = axes[i][j]
            for k, t in enumerate(threads):
                sel = {r["op"]: r for r in recs if r["shape"] == shape and r["layout"] == layout and int(r["threads"]) == t}
                xs = np.arange(len(ops))
                ours = [float(sel[o]["of_bound"]) if o in sel else 0 for o in ops]
                theirs = [float(sel[o]["of_bound"]) / float(sel[o]["torch_over_lnorm"]) if o in sel else 0 for o in ops]
                ax.bar(xs + (2 * k - len(threads)) * width, ours, width, label=f"lnorm, {t} thr", color=f"C{k}")
                ax.bar(xs + (2 * k + 1 - len(threads)) * width, theirs, width, label=f"torch, {t} thr",
                       color=f"C{k}", alpha=0.35)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks(np.arange(len(ops)))
            ax.set_xticklabels([o.replace("_norm", "").replace("_backward", "\nbackward") for o in ops], fontsize=7)
            ax.set_title(f"{shape.replace('x', ' x ')}, {layout.upper()}", fontsize=9)
            if j == 0:
                ax.set_ylabel("fraction of the bound")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"channel norms, float32, of their bound (1 = bound): {cpu_description()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small shape, float32, few repetitions")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--rep-ms", type=float, default=None)
    p.add_argument("--ops", default="", help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--dtypes", default="", help="float32,bfloat16")
    p.add_argument("--shapes", default="", help="e.g. 8x512x64x64,1x512x128x128")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--replot", default="", help="redraw channel_norms.png in --out from a results_channel.csv")
    args = p.parse_args(argv)
    if args.replot:
        import csv
        with open(args.replot, newline="") as f:
            plot(list(csv.DictReader(f)), os.path.join(args.out, "channel_norms.png"))
        return 0
    args.threads = [int(t) for t in args.threads.split(",")]
    args.repeat = args.repeat or (3 if args.quick else 7)
    args.rep_ms = args.rep_ms or (20.0 if args.quick else 150.0)
    rows = run(args)
    write_results(rows, args.out, "python bench/bench_channel.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.abspath(args.out) == here and not (args.quick or args.ops or args.dtypes or args.shapes):
        # A full run into bench/ is also kept in bench/by_cpu/<CPU>/, as bench.py keeps its own.
        sys.path.insert(0, here)
        from bench import keep_per_cpu
        keep_per_cpu(here, ("RESULTS_channel.md", "results_channel.csv", "channel_norms.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
