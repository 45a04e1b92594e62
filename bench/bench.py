"""lnorm benchmark: verify every timed configuration first, then time it against its peers.

    python bench/bench.py                         # full run (~10 min on 2 cores) -> bench/
    python bench/bench.py --quick --out /tmp/b    # smoke run (< 60 s), used by tests/test_bench.py
    python bench/bench.py --threads 1,2 --repeat 9

Contenders: lnorm (each kernel set via lnorm.set_isa, with and without ``out=``), lnorm's native copies
of the same bytes (``lnorm._lnorm.copy_rows``: plain vector stores, streaming stores, memcpy; on
lnorm's threads, rows split as lnorm's calls split them), ``np.copyto`` of the same bytes (one thread,
for reference), a NumPy expression, PyTorch (forward and autograd backward) and ONNX Runtime's
LayerNormalization (opset 17). Every configuration's result is compared with a float64 NumPy reference
on the same seeded random inputs before it is timed; a mismatch aborts.

The copy limit of a shape, dtype and thread count is the fastest (median) of the native copies timed
with it: every ratio to "copy" or "limit" in the output is against it, never against ``np.copyto``
(single-threaded, and on AMD Zen 4 half as fast as a copy with streaming stores).

Timing: after a warm-up, the contenders of one case run round-robin inside each repetition (start
rotated each time), each for a calibrated number of calls lasting about ``--rep-ms``, with a short
pause between contenders so one library's spinning worker threads do not eat into the next one's
time. Times are medians over ``--repeat`` repetitions; ratios are medians of the per-repetition
ratios (paired within a repetition), which cancels slow drift on a shared machine. GB/s is (bytes
read + bytes written) / time, counting each array once.

Writes to --out: RESULTS.md (machine, command, tables, geomeans), results.csv (every row),
gbps_vs_hidden.png (GB/s against hidden size, one panel per thread count, copy limit drawn in). With
the default --out (bench/), also refreshes the headline block of bench/README.md and keeps a copy of
the three files in bench/by_cpu/<vendor-family-model>/, the latest run on each CPU class.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import lnorm
from lnorm._limit import COPY_KINDS, copy_rows, cpu_description, cpu_info

try:
    import torch
    import torch.nn.functional as torch_F
except ImportError:  # the bench still runs, without the torch columns
    torch = None
try:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    onnxruntime = None
try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BEST_ISA = lnorm.available_isas()[-1]  # the set the CPU chooses
# What a user gets without set_isa: the CPU's choice ("auto": the best set, with the CPU policy's
# per-op choice, e.g. the float32 forward on AVX2 on AMD Zen), timed beside every forced set.
DEFAULT_ISA = "auto"
ISAS = list(lnorm.available_isas())
SETS = ISAS + [DEFAULT_ISA]  # each set forced, then the default
LN_EPS = 1e-5
RMS_EPS = 1e-6

# Shapes named in the project's goals.
COPY_GOAL_SHAPE = (8192, 4096)
PEER_GOAL_SHAPES = [(1, 768), (1, 4096), (32, 1024), (4096, 768), (8192, 1024), (2048, 4096), (512, 16384)]
SWEEP_HIDDEN = [64, 128, 256, 512, 768, 1000, 1024, 2048, 4096, 4099, 8192, 16384, 32768, 65536]
SWEEP_SMALL_BATCHES = [1, 32]
SWEEP_BYTES = 32 << 20  # x of about 32 MiB for the large-batch sweep: x + y are well past the L3


@dataclass
class Plan:
    """What one run times: the shapes of each section, repetitions and the timing knobs."""

    goal_shapes: list  # copy goal first, then the peer goals
    sweep_hidden: list
    sweep_large: list  # (rows, cols): batch chosen for a fixed input size at each hidden size
    sweep_small_batches: list
    half_shape: tuple
    repeat: int
    rep_seconds: float
    settle_seconds: float
    quick: bool


def make_plan(quick: bool, repeat: int | None, rep_ms: float | None, settle_ms: float | None) -> Plan:
    if quick:
        hidden, sweep_bytes, batches = [64, 1024, 16384], 2 << 20, [1]
        goal_shapes, half_shape = [(256, 4096), (1, 768), (32, 1024)], (128, 4096)
        default_repeat, default_rep_ms, default_settle_ms = 3, 4.0, 1.0
    else:
        hidden, sweep_bytes, batches = SWEEP_HIDDEN, SWEEP_BYTES, SWEEP_SMALL_BATCHES
        goal_shapes, half_shape = [COPY_GOAL_SHAPE] + PEER_GOAL_SHAPES, COPY_GOAL_SHAPE
        default_repeat, default_rep_ms, default_settle_ms = 7, 20.0, 5.0
    return Plan(
        goal_shapes=goal_shapes,
        sweep_hidden=hidden,
        sweep_large=[(max(1, sweep_bytes // (4 * h)), h) for h in hidden],
        sweep_small_batches=batches,
        half_shape=half_shape,
        repeat=repeat or default_repeat,
        rep_seconds=(rep_ms or default_rep_ms) / 1e3,
        settle_seconds=(default_settle_ms if settle_ms is None else settle_ms) / 1e3,
        quick=quick,
    )


# ---------------------------------------------------------------------------------------------------
# float64 references


def reference_layer_norm(x, weight, bias, eps=LN_EPS):
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(np.mean(centered * centered, -1, keepdims=True) + eps)
    return centered * rstd * weight.astype(np.float64) + bias.astype(np.float64)


def reference_rms_norm(x, weight, eps=RMS_EPS):
    x64 = x.astype(np.float64)
    rstd = 1.0 / np.sqrt(np.mean(x64 * x64, -1, keepdims=True) + eps)
    return x64 * rstd * weight.astype(np.float64)


def reference_layer_norm_backward(dy, x, weight, eps=LN_EPS):
    """(dx, dweight, dbias) of layer_norm over the last axis, in float64."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    centered = x64 - x64.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(np.mean(centered * centered, -1, keepdims=True) + eps)
    x_hat = centered * rstd
    dx_hat = dy64 * weight.astype(np.float64)
    dx = rstd * (dx_hat - dx_hat.mean(-1, keepdims=True) - x_hat * np.mean(dx_hat * x_hat, -1, keepdims=True))
    return dx, np.sum(dy64 * x_hat, 0), np.sum(dy64, 0)


def rounded_sum(x, residual):
    """x + residual rounded once to x's dtype, as the fused add & norm promise."""
    return (x.astype(np.float64) + residual.astype(np.float64)).astype(x.dtype)


# ---------------------------------------------------------------------------------------------------
# NumPy expressions (a peer: what one writes without a library)


def numpy_layer_norm(x, weight, bias, eps=LN_EPS):
    centered = x - x.mean(-1, keepdims=True)
    variance = np.mean(np.square(centered), -1, keepdims=True)
    centered *= 1.0 / np.sqrt(variance + eps)
    centered *= weight
    centered += bias
    return centered


def numpy_rms_norm(x, weight, eps=RMS_EPS):
    mean_square = np.mean(np.square(x), -1, keepdims=True)
    y = x * (1.0 / np.sqrt(mean_square + eps))
    y *= weight
    return y


# ---------------------------------------------------------------------------------------------------
# Contenders, verification and round-robin timing


class VerificationError(RuntimeError):
    pass


@dataclass
class Contender:
    """One timed configuration: a library's call on a case's inputs."""

    library: str  # "lnorm", "lnorm.copy_rows", "numpy.copyto", "numpy", "torch", "onnxruntime"
    op: str  # "layer_norm", "rms_norm", "layer_norm_backward", "add_layer_norm", "copy", ...
    variant: str  # "out" (preallocated), "alloc" (allocates its result), "unfused", a copy's store kind, ...
    run: Callable[[], object]  # one timed call
    outputs: Callable[[], dict]  # one call, returning {name: array} to compare with the reference
    bytes_moved: int
    isa: str = ""  # lnorm's kernel set; "" for other libraries
    spin_down_seconds: float = 0.0  # how long its worker threads keep spinning after a call

    @property
    def label(self) -> str:
        isa = f"[{self.isa}]" if self.isa else ""
        return f"{self.library}{isa} {self.op} ({self.variant})"

    def prepare(self) -> None:
        lnorm.set_isa(self.isa or DEFAULT_ISA)


def tolerance(dtype) -> float:
    """Largest accepted max|got - ref| / (1 + |ref|): a few units of the dtype's rounding, float32 looser
    than its epsilon because sums over up to 65536 elements are accumulated in float32."""
    if np.dtype(dtype) == np.float32:
        return 1e-4
    finfo = ml_dtypes.finfo if ml_dtypes is not None else np.finfo  # np.finfo does not know bfloat16
    return 4.0 * float(finfo(dtype).eps)


BATCH_SUMS = ("dweight", "dbias")  # outputs summed over the batch: their rounding grows with it


def batch_sum_tolerance(dtype, rows) -> float:
    """A float32 sum of `rows` terms may be off by ~rows * eps32 of its terms' scale (naive order)."""
    return max(tolerance(dtype), 2.0 * float(np.finfo(np.float32).eps) * rows)


def max_relative_error(actual, expected, block=1 << 18) -> float:
    """max |actual - expected| / (1 + |expected|), in cache-sized blocks (the arrays reach 256 MB)."""
    actual, expected = np.ravel(actual), np.ravel(expected)
    worst = 0.0
    for start in range(0, expected.size, block):
        reference = expected[start:start + block]
        difference = actual[start:start + block].astype(np.float64)
        difference -= reference
        np.abs(difference, out=difference)
        difference /= np.abs(reference) + 1.0
        block_worst = float(difference.max())
        if math.isnan(block_worst):
            return block_worst  # fails any tolerance check
        worst = max(worst, block_worst)
    return worst


def verify_contender(contender: Contender, reference: dict, tol: float, batch_sum_tol: float | None = None) -> float:
    """Run the contender once and compare each output with the float64 reference; returns the worst
    relative error, raises VerificationError past ``tol`` (``batch_sum_tol`` for dweight, dbias)."""
    contender.prepare()
    got = contender.outputs()
    worst = 0.0
    for name, expected in reference.items():
        limit = batch_sum_tol if name in BATCH_SUMS and batch_sum_tol is not None else tol
        actual = np.asarray(got[name])
        if actual.shape != expected.shape:
            raise VerificationError(f"{contender.label}: {name} has shape {actual.shape}, expected {expected.shape}")
        error = max_relative_error(actual, expected)
        if not error <= limit:  # also catches NaN
            raise VerificationError(f"{contender.label}: {name} is off by {error:.3g} (tolerance {limit:.3g})")
        worst = max(worst, error)
    return worst


def time_round_robin(contenders, repeat: int, rep_seconds: float, settle_seconds: float):
    """Per-call seconds of each contender in each repetition: {label: [t_rep0, t_rep1, ...]}, and the
    number of calls per repetition {label: n}."""
    calls_per_rep = {}
    for contender in contenders:  # warm-up doubles as calibration
        contender.prepare()
        calls, start = 0, time.perf_counter()
        while True:
            contender.run()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= rep_seconds / 4:
                break
        calls_per_rep[contender.label] = max(1, math.ceil(rep_seconds / (elapsed / calls)))
    seconds_per_call = {c.label: [] for c in contenders}
    previous = contenders[-1]
    for rep in range(repeat):
        shift = rep % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            contender.prepare()
            time.sleep(max(settle_seconds, previous.spin_down_seconds))
            previous = contender
            calls, run = calls_per_rep[contender.label], contender.run
            start = time.perf_counter()
            for _ in range(calls):
                run()
            seconds_per_call[contender.label].append((time.perf_counter() - start) / calls)
    return seconds_per_call, calls_per_rep


@dataclass
class Row:
    """One measured configuration: a CSV row."""

    section: str
    dtype: str
    rows: int
    cols: int
    threads: int
    library: str
    op: str
    isa: str
    variant: str
    bytes_moved: int
    calls_per_rep: int
    max_rel_error: float
    rep_seconds: list = field(repr=False)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.rep_seconds)

    @property
    def gbps(self) -> float:
        return self.bytes_moved / self.median_seconds / 1e9

    @property
    def spread(self) -> float:
        """Interquartile range of the repetitions over their median: the noise of this row."""
        q = np.percentile(self.rep_seconds, [25, 75])
        return float((q[1] - q[0]) / self.median_seconds)


def paired_ratio(numerator: Row, denominator: Row) -> float:
    """Median over repetitions of numerator time / denominator time: the speedup of `denominator`."""
    return statistics.median(a / b for a, b in zip(numerator.rep_seconds, denominator.rep_seconds))


# ---------------------------------------------------------------------------------------------------
# Cases: inputs, references and the contenders of each section


def to_torch(a):
    if ml_dtypes is not None and a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def from_torch(t):
    return t.detach().float().numpy()


@dataclass
class CaseInputs:
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    residual: np.ndarray | None = None
    dy: np.ndarray | None = None


def make_inputs(rows, cols, dtype, seed, residual=False, grad=False) -> CaseInputs:
    """Fresh seeded random inputs, never zeros: rows with their own offset, weight near 1."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(2.0)
    x += rng.standard_normal((rows, 1), dtype=np.float32)

    def cast(a):
        return a if dtype == np.float32 else a.astype(dtype)

    inputs = CaseInputs(
        x=cast(x),
        weight=cast(1.0 + 0.1 * rng.standard_normal(cols, dtype=np.float32)),
        bias=cast(0.1 * rng.standard_normal(cols, dtype=np.float32)),
    )
    if residual:
        inputs.residual = cast(rng.standard_normal((rows, cols), dtype=np.float32))
    if grad:
        inputs.dy = cast(rng.standard_normal((rows, cols), dtype=np.float32))
    return inputs


def forward_bytes(op, inputs):
    params = inputs.weight.nbytes + (inputs.bias.nbytes if op == "layer_norm" else 0)
    return 2 * inputs.x.nbytes + params


def lnorm_forward(op, inputs, isa, variant):
    """lnorm.layer_norm / rms_norm, writing into a preallocated `out=` or allocating."""
    if op == "layer_norm":
        fn, args = lnorm.layer_norm, (inputs.x, inputs.weight, inputs.bias)
    else:
        fn, args = lnorm.rms_norm, (inputs.x, inputs.weight)
    if variant == "out":
        y = np.empty_like(inputs.x)
        run = lambda: fn(*args, out=y)  # noqa: E731

        def outputs():
            run()
            return {"y": y}
    else:
        run = lambda: fn(*args)  # noqa: E731

        def outputs():
            return {"y": run()}

    return Contender("lnorm", op, variant, run, outputs, forward_bytes(op, inputs), isa)


def numpy_forward(op, inputs):
    if op == "layer_norm":
        run = lambda: numpy_layer_norm(inputs.x, inputs.weight, inputs.bias)  # noqa: E731
    else:
        run = lambda: numpy_rms_norm(inputs.x, inputs.weight)  # noqa: E731
    return Contender("numpy", op, "expression", run, lambda: {"y": run()}, forward_bytes(op, inputs))


def torch_forward(op, inputs):
    x, weight, bias = to_torch(inputs.x), to_torch(inputs.weight), to_torch(inputs.bias)
    shape = (inputs.x.shape[-1],)
    if op == "layer_norm":
        run = lambda: torch_F.layer_norm(x, shape, weight, bias, LN_EPS)  # noqa: E731
    else:
        run = lambda: torch_F.rms_norm(x, shape, weight, RMS_EPS)  # noqa: E731
    return Contender("torch", op, "alloc", run, lambda: {"y": from_torch(run())}, forward_bytes(op, inputs))


def onnx_layer_norm_session(inputs, threads):
    """An in-memory opset-17 model with one LayerNormalization node; weight and bias are initializers."""
    cols = inputs.x.shape[-1]
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["rows", cols])
    y_info = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", cols])
    node = helper.make_node("LayerNormalization", ["X", "W", "B"], ["Y"], axis=-1, epsilon=LN_EPS)
    initializers = [numpy_helper.from_array(inputs.weight, "W"), numpy_helper.from_array(inputs.bias, "B")]
    graph = helper.make_graph([node], "layer_norm", [x_info], [y_info], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the IR of opset 17; newer onnx writes IRs older runtimes refuse
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnxruntime_forward(inputs, threads):
    session = onnx_layer_norm_session(inputs, threads)
    feed = {"X": inputs.x}
    run = lambda: session.run(None, feed)  # noqa: E731
    # ORT's pool spins ~30 ms after each run (measured here): let it stop before the next contender.
    return Contender("onnxruntime", "layer_norm", "alloc", run, lambda: {"y": run()[0]},
                     forward_bytes("layer_norm", inputs), spin_down_seconds=0.05 if threads > 1 else 0.0)


COPY_LIBRARY = "lnorm.copy_rows"  # the native copies; the fastest kind of a case is its copy limit


def copy_contender(arrays, op="copy", kind=None):
    """A copy of the same bytes into preallocated arrays: lnorm's native copy with `kind` stores on
    lnorm's threads (a candidate for the copy limit), or with kind None np.copyto (for reference)."""
    destinations = [np.empty_like(a) for a in arrays]
    pairs = list(zip(arrays, destinations))
    if kind is None:
        def run():
            for source, destination in pairs:
                np.copyto(destination, source)
    else:
        def run():
            for source, destination in pairs:
                copy_rows(source, destination, kind)

    def outputs():
        run()
        return {f"copy{i}": d for i, d in enumerate(destinations)}

    library, variant = ("numpy.copyto", "out") if kind is None else (COPY_LIBRARY, kind)
    return Contender(library, op, variant, run, outputs, sum(2 * a.nbytes for a in arrays))


def copy_contenders(arrays, op="copy"):
    """Every copy of the same bytes: the native kinds (the limit is the fastest) and np.copyto."""
    return [copy_contender(arrays, op, kind) for kind in COPY_KINDS] + [copy_contender(arrays, op)]


def backward_bytes(inputs, stats_bytes):
    """Reads dy, x, weight, mean, rstd; writes dx, dweight, dbias."""
    return 3 * inputs.x.nbytes + 3 * inputs.weight.nbytes + stats_bytes


def lnorm_backward(inputs, mean, rstd, isa):
    args = (inputs.dy, inputs.x, mean, rstd, inputs.weight)
    run = lambda: lnorm.layer_norm_backward(*args)  # noqa: E731

    def outputs():
        dx, dweight, dbias = run()
        return {"dx": dx, "dweight": dweight, "dbias": dbias}

    return Contender(
        "lnorm", "layer_norm_backward", "alloc", run, outputs, backward_bytes(inputs, mean.nbytes + rstd.nbytes), isa
    )


def torch_backward(inputs):
    """torch autograd: y.backward(dy) on leaves that require grad. The graph is built once and kept
    (retain_graph), the gradients reset to None before each call, so only the backward is timed."""
    x = to_torch(inputs.x).requires_grad_()
    weight = to_torch(inputs.weight).requires_grad_()
    bias = to_torch(inputs.bias).requires_grad_()
    y = torch_F.layer_norm(x, (inputs.x.shape[-1],), weight, bias, LN_EPS)
    dy = to_torch(inputs.dy)

    def run():
        x.grad = weight.grad = bias.grad = None
        y.backward(dy, retain_graph=True)

    def outputs():
        run()
        return {"dx": from_torch(x.grad), "dweight": from_torch(weight.grad), "dbias": from_torch(bias.grad)}

    stats_bytes = 2 * 4 * inputs.x.shape[0]
    return Contender("torch", "layer_norm_backward", "alloc", run, outputs, backward_bytes(inputs, stats_bytes))


def add_norm_bytes(op, inputs):
    """Reads x, residual and the parameters; writes y and s."""
    norm_op = "layer_norm" if op == "add_layer_norm" else "rms_norm"
    return 2 * inputs.x.nbytes + forward_bytes(norm_op, inputs)


def lnorm_add_norm(op, inputs, isa):
    """Fused add & norm into preallocated y and s."""
    y, s = np.empty_like(inputs.x), np.empty_like(inputs.x)
    if op == "add_layer_norm":
        run = lambda: lnorm.add_layer_norm(  # noqa: E731
            inputs.x, inputs.residual, inputs.weight, inputs.bias, out=y, residual_out=s
        )
    else:
        run = lambda: lnorm.add_rms_norm(inputs.x, inputs.residual, inputs.weight, out=y, residual_out=s)  # noqa: E731

    def outputs():
        run()
        return {"y": y, "s": s}

    return Contender("lnorm", op, "out", run, outputs, add_norm_bytes(op, inputs), isa)


def lnorm_unfused_add_norm(op, inputs):
    """np.add(x, residual, out=s), then lnorm's norm with out=: what one writes without the fused call."""
    y, s = np.empty_like(inputs.x), np.empty_like(inputs.x)
    if op == "add_layer_norm":
        norm = lambda: lnorm.layer_norm(s, inputs.weight, inputs.bias, out=y)  # noqa: E731
    else:
        norm = lambda: lnorm.rms_norm(s, inputs.weight, out=y)  # noqa: E731

    def run():
        np.add(inputs.x, inputs.residual, out=s)
        norm()

    def outputs():
        run()
        return {"y": y, "s": s}

    return Contender("numpy+lnorm", op, "unfused", run, outputs, add_norm_bytes(op, inputs), DEFAULT_ISA)


def torch_unfused_add_norm(op, inputs):
    x, residual = to_torch(inputs.x), to_torch(inputs.residual)
    weight, bias, shape = to_torch(inputs.weight), to_torch(inputs.bias), (inputs.x.shape[-1],)

    def run():
        s = x + residual
        if op == "add_layer_norm":
            return torch_F.layer_norm(s, shape, weight, bias, LN_EPS), s
        return torch_F.rms_norm(s, shape, weight, RMS_EPS), s

    def outputs():
        y, s = run()
        return {"y": from_torch(y), "s": from_torch(s)}

    return Contender("torch", op, "unfused", run, outputs, add_norm_bytes(op, inputs))


@dataclass
class Case:
    """A shape and dtype whose contenders are timed together, at each thread count."""

    section: str  # "goal", "sweep", "half"
    rows: int
    cols: int
    dtype: object = np.float32

    @property
    def dtype_name(self) -> str:
        return np.dtype(self.dtype).name

    def build(self, seed):
        """(inputs, references by op, a function threads -> contenders)."""
        if self.section == "goal":
            return self._build_goal(seed)
        if self.section == "sweep":
            return self._build_sweep(seed)
        return self._build_half(seed)

    def _build_goal(self, seed):
        inputs = make_inputs(self.rows, self.cols, self.dtype, seed, grad=True)
        _, mean, rstd = lnorm.layer_norm(inputs.x, inputs.weight, inputs.bias, return_stats=True)
        dx, dweight, dbias = reference_layer_norm_backward(inputs.dy, inputs.x, inputs.weight)
        # The backward reads x and dy and writes dx: the bytes of a copy of x and half of dy.
        dy_half = inputs.dy[: max(1, self.rows // 2)]
        references = {
            "copy": {"copy0": inputs.x.astype(np.float64)},
            "copy x1.5": {"copy0": inputs.x.astype(np.float64), "copy1": dy_half.astype(np.float64)},
            "layer_norm": {"y": reference_layer_norm(inputs.x, inputs.weight, inputs.bias)},
            "rms_norm": {"y": reference_rms_norm(inputs.x, inputs.weight)},
            "layer_norm_backward": {"dx": dx, "dweight": dweight, "dbias": dbias},
        }

        def contenders(threads):
            result = copy_contenders([inputs.x]) + copy_contenders([inputs.x, dy_half], "copy x1.5")
            for op in ("layer_norm", "rms_norm"):
                result += [lnorm_forward(op, inputs, isa, v) for v in ("out", "alloc") for isa in SETS]
                result.append(numpy_forward(op, inputs))
                if torch is not None:
                    result.append(torch_forward(op, inputs))
            if onnxruntime is not None:
                result.append(onnxruntime_forward(inputs, threads))
            result += [lnorm_backward(inputs, mean, rstd, isa) for isa in SETS]
            if torch is not None:
                result.append(torch_backward(inputs))
            return result

        return references, contenders

    def _build_sweep(self, seed):
        inputs = make_inputs(self.rows, self.cols, self.dtype, seed)
        references = {
            "copy": {"copy0": inputs.x.astype(np.float64)},
            "layer_norm": {"y": reference_layer_norm(inputs.x, inputs.weight, inputs.bias)},
        }

        def contenders(threads):
            result = copy_contenders([inputs.x])
            result += [lnorm_forward("layer_norm", inputs, isa, "out") for isa in SETS]
            result.append(lnorm_forward("layer_norm", inputs, DEFAULT_ISA, "alloc"))
            result.append(numpy_forward("layer_norm", inputs))
            if torch is not None:
                result.append(torch_forward("layer_norm", inputs))
            if onnxruntime is not None:
                result.append(onnxruntime_forward(inputs, threads))
            return result

        return references, contenders

    def _build_half(self, seed):
        inputs = make_inputs(self.rows, self.cols, self.dtype, seed, residual=True)
        s = rounded_sum(inputs.x, inputs.residual)
        s64 = s.astype(np.float64)
        references = {
            "copy": {"copy0": inputs.x.astype(np.float64)},
            "copy x2": {"copy0": inputs.x.astype(np.float64), "copy1": inputs.residual.astype(np.float64)},
            "layer_norm": {"y": reference_layer_norm(inputs.x, inputs.weight, inputs.bias)},
            "rms_norm": {"y": reference_rms_norm(inputs.x, inputs.weight)},
            "add_layer_norm": {"y": reference_layer_norm(s, inputs.weight, inputs.bias), "s": s64},
            "add_rms_norm": {"y": reference_rms_norm(s, inputs.weight), "s": s64},
        }

        # The scalar kernel set is left out here: its 16-bit conversions take seconds per call at this
        # size, and the goal section already gives each kernel set's speedup over it.
        vector_isas = ([isa for isa in ISAS if isa != "scalar"] or ISAS) + [DEFAULT_ISA]

        def contenders(threads):
            result = copy_contenders([inputs.x]) + copy_contenders([inputs.x, inputs.residual], "copy x2")
            for op in ("layer_norm", "rms_norm"):
                result += [lnorm_forward(op, inputs, isa, "out") for isa in vector_isas]
                if torch is not None:
                    result.append(torch_forward(op, inputs))
            for op in ("add_layer_norm", "add_rms_norm"):
                result += [lnorm_add_norm(op, inputs, isa) for isa in vector_isas]
                result.append(lnorm_unfused_add_norm(op, inputs))
                if torch is not None:
                    result.append(torch_unfused_add_norm(op, inputs))
            return result

        return references, contenders


HALF_OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")


def make_cases(plan: Plan) -> list:
    cases = [Case("goal", r, c) for r, c in plan.goal_shapes]
    cases += [Case("sweep", r, c) for r, c in plan.sweep_large]
    cases += [Case("sweep", b, h) for b in plan.sweep_small_batches for h in plan.sweep_hidden]
    half_dtypes = [np.float32] + ([np.float16, ml_dtypes.bfloat16] if ml_dtypes is not None else [])
    cases += [Case("half", *plan.half_shape, dtype) for dtype in half_dtypes]
    return cases


def set_threads(threads: int) -> None:
    lnorm.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)


def run_case(case: Case, seed: int, thread_counts, plan: Plan) -> list:
    references, build_contenders = case.build(seed)
    rows = []
    for threads in thread_counts:
        set_threads(threads)
        contenders = build_contenders(threads)
        tol, batch_sum_tol = tolerance(case.dtype), batch_sum_tolerance(case.dtype, case.rows)
        verify_start = time.perf_counter()
        errors = {c.label: verify_contender(c, references[c.op], tol, batch_sum_tol) for c in contenders}
        timing_start = time.perf_counter()
        seconds, calls = time_round_robin(contenders, plan.repeat, plan.rep_seconds, plan.settle_seconds)
        print(f"  {case.section:5s} {case.dtype_name:8s} {shape_name((case.rows, case.cols)):>12s}  {threads_name(threads)}: "
              f"{len(contenders)} contenders verified in {timing_start - verify_start:.1f} s, "
              f"timed in {time.perf_counter() - timing_start:.1f} s", flush=True)
        for c in contenders:
            rows.append(Row(case.section, case.dtype_name, case.rows, case.cols, threads, c.library, c.op,
                            c.isa, c.variant, c.bytes_moved, calls[c.label], errors[c.label], seconds[c.label]))
        del contenders
    lnorm.set_isa(DEFAULT_ISA)
    return rows


# ---------------------------------------------------------------------------------------------------
# Report: lookups, tables, CSV, plot, RESULTS.md, README headline


class Results:
    def __init__(self, rows):
        self.rows = rows
        self._index = {}
        for row in rows:
            key = (row.section, row.dtype, row.rows, row.cols, row.threads, row.library, row.op, row.isa, row.variant)
            self._index[key] = row

    def get(self, section, shape, threads, library, op, isa="", variant="alloc", dtype="float32"):
        return self._index.get((section, dtype, shape[0], shape[1], threads, library, op, isa, variant))

    def copies(self, section, shape, threads, op="copy", dtype="float32"):
        """The copies of the same bytes timed with a case: the native kinds, then np.copyto."""
        found = [self.get(section, shape, threads, COPY_LIBRARY, op, variant=kind, dtype=dtype) for kind in COPY_KINDS]
        found.append(self.get(section, shape, threads, "numpy.copyto", op, variant="out", dtype=dtype))
        return [row for row in found if row is not None]

    def copy_limit(self, section, shape, threads, op="copy", dtype="float32"):
        """The copy limit: the fastest (median time) of the native copies of the same bytes at the same
        thread count, timed in the same round-robin; None where none was timed."""
        native = [row for row in self.copies(section, shape, threads, op, dtype) if row.library == COPY_LIBRARY]
        return min(native, key=lambda row: row.median_seconds) if native else None


def copy_op(op):
    """The copy that moves what `op` moves: x (norms), x and residual (add & norm), x and half of dy
    (the backward: x and dy read, dx written)."""
    return "copy x2" if op.startswith("add_") else "copy x1.5" if op.endswith("_backward") else "copy"


def copy_name(row):
    return "np.copyto" if row.library == "numpy.copyto" else f"copy_rows {row.variant}"


def geomean(values):
    values = [v for v in values if v is not None]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def threads_name(threads):
    return f"{threads} thread{'s' * (threads > 1)}"


def shape_name(shape):
    return f"{shape[0]}x{shape[1]}"


def markdown_table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in line) + " |" for line in body]
    return "\n".join(lines)


def ratio(numerator, denominator):
    return paired_ratio(numerator, denominator) if numerator and denominator else None


def goal_mark(met, goal_text):
    return f" [goal {goal_text}: {'met' if met else 'missed'}]"


class Report:
    """Derives the goal numbers and tables from the measured rows."""

    def __init__(self, results: Results, plan: Plan, thread_counts):
        self.r = results
        self.plan = plan
        self.threads = thread_counts
        self.copy_shape = plan.goal_shapes[0]
        self.peer_shapes = plan.goal_shapes[1:] if not plan.quick else plan.goal_shapes

    # -- goal: copy limit ------------------------------------------------------------------------
    def copy_ratio(self, op, shape, threads, isa=DEFAULT_ISA, section="goal", dtype="float32"):
        """Copy-limit time / lnorm's `out=` time (the backward's allocating call: it has no out=),
        paired per repetition (1.00: at the copy's speed)."""
        limit = self.r.copy_limit(section, shape, threads, copy_op(op), dtype)
        variant = "alloc" if op.endswith("_backward") else "out"
        mine = self.r.get(section, shape, threads, "lnorm", op, isa, variant, dtype)
        return ratio(limit, mine)

    def limit_kind(self, shape, threads, section="goal", op="copy", dtype="float32"):
        limit = self.r.copy_limit(section, shape, threads, op, dtype)
        return limit.variant if limit else "–"

    def copy_goal_table(self, threads):
        shape = self.copy_shape
        limit = self.r.copy_limit("goal", shape, threads)
        body = []
        for copy in self.r.copies("goal", shape, threads):
            name = copy_name(copy) + (" **(limit)**" if copy is limit else "")
            body.append([name, fmt(copy.gbps), fmt(ratio(limit, copy)), fmt(copy.gbps), fmt(ratio(limit, copy))])
        for isa in SETS:
            ln = self.r.get("goal", shape, threads, "lnorm", "layer_norm", isa, "out")
            rms = self.r.get("goal", shape, threads, "lnorm", "rms_norm", isa, "out")
            name = f"lnorm [{isa}]" + (" (default)" if isa == DEFAULT_ISA else "")
            body.append([name, fmt(ln.gbps), fmt(ratio(limit, ln)), fmt(rms.gbps), fmt(ratio(limit, rms))])
        header = ["out= into a preallocated array", "layer_norm GB/s", "/ limit", "rms_norm GB/s", "/ limit"]
        return markdown_table(header, body)

    # -- goal: peers -----------------------------------------------------------------------------
    def speedup(self, shape, threads, library, op, section="goal", dtype="float32", variant="alloc", mine="alloc"):
        """Speedup of lnorm (default ISA) over a peer, paired per repetition."""
        peer = self.r.get(section, shape, threads, library, op, variant=variant, dtype=dtype)
        ours = self.r.get(section, shape, threads, "lnorm", op, DEFAULT_ISA, mine, dtype)
        return ratio(peer, ours)

    PEER_COLUMNS = [
        ("LN vs torch", "torch", "layer_norm"),
        ("LN bwd vs torch", "torch", "layer_norm_backward"),
        ("RMS vs torch", "torch", "rms_norm"),
        ("LN vs ORT", "onnxruntime", "layer_norm"),
        ("LN vs numpy", "numpy", "layer_norm"),
        ("RMS vs numpy", "numpy", "rms_norm"),
    ]

    def peer_speedups(self, threads):
        """{column: [speedup per peer shape]}."""
        table = {}
        for title, library, op in self.PEER_COLUMNS:
            variant = "expression" if library == "numpy" else "alloc"
            table[title] = [self.speedup(s, threads, library, op, variant=variant) for s in self.peer_shapes]
        return table

    def peer_table(self, threads):
        speedups = self.peer_speedups(threads)
        body = []
        for i, shape in enumerate(self.peer_shapes):
            ln = self.r.get("goal", shape, threads, "lnorm", "layer_norm", DEFAULT_ISA, "alloc")
            torch_ln = self.r.get("goal", shape, threads, "torch", "layer_norm")
            ort_ln = self.r.get("goal", shape, threads, "onnxruntime", "layer_norm")
            body.append([shape_name(shape), fmt(ln.gbps), fmt(torch_ln.gbps if torch_ln else None),
                         fmt(ort_ln.gbps if ort_ln else None)] + [fmt(v[i]) for v in speedups.values()])
        body.append(["**geomean**", "", "", ""] + [f"**{fmt(geomean(v))}**" for v in speedups.values()])
        body.append(["min", "", "", ""]
                    + [fmt(min((x for x in v if x is not None), default=None)) for v in speedups.values()])
        header = ["shape", "lnorm LN GB/s", "torch LN GB/s", "ORT LN GB/s"] + [f"{t} (x)" for t in speedups]
        return markdown_table(header, body)

    def limit_and_isa_table(self, threads):
        """Per shape: how close lnorm gets to the copy limit, and each ISA's speedup over scalar."""
        fast_isas = [isa for isa in ISAS if isa != "scalar"]
        body = []
        for shape in [self.copy_shape] + [s for s in self.peer_shapes if s != self.copy_shape]:
            limit = self.r.copy_limit("goal", shape, threads)
            copyto = self.r.get("goal", shape, threads, "numpy.copyto", "copy", variant="out")
            line = [shape_name(shape), fmt(limit.gbps), limit.variant, fmt(copyto.gbps)]
            for op in ("layer_norm", "rms_norm"):
                ours = self.r.get("goal", shape, threads, "lnorm", op, DEFAULT_ISA, "out")
                line.append(fmt(ratio(limit, ours)))
            for op, variant in (("layer_norm", "out"), ("rms_norm", "out"), ("layer_norm_backward", "alloc")):
                scalar = self.r.get("goal", shape, threads, "lnorm", op, "scalar", variant)
                for isa in fast_isas:
                    line.append(fmt(ratio(scalar, self.r.get("goal", shape, threads, "lnorm", op, isa, variant))))
            body.append(line)
        header = ["shape", "limit GB/s", "limit copy", "np.copyto GB/s", "LN out= / limit", "RMS out= / limit"]
        for op in ("LN", "RMS", "LN bwd"):
            header += [f"{op} {isa} / scalar" for isa in fast_isas]
        return markdown_table(header, body)

    # -- half precision and add & norm ----------------------------------------------------------
    def half_dtypes(self):
        timed = {row.dtype for row in self.r.rows if row.section == "half"}
        return [dtype for dtype in ("float32", "float16", "bfloat16") if dtype in timed]

    def half_table(self, threads):
        shape, body = self.plan.half_shape, []
        for dtype in self.half_dtypes():
            for op in HALF_OPS:
                ours = self.r.get("half", shape, threads, "lnorm", op, DEFAULT_ISA, "out", dtype)
                unfused = self.r.get("half", shape, threads, "numpy+lnorm", op, DEFAULT_ISA, "unfused", dtype)
                torch_peer = self.r.get("half", shape, threads, "torch", op, "",
                                        "unfused" if op.startswith("add_") else "alloc", dtype)
                limit = self.r.copy_limit("half", shape, threads, copy_op(op), dtype)
                copyto = self.r.get("half", shape, threads, "numpy.copyto", copy_op(op), variant="out", dtype=dtype)
                body.append([dtype, op + " (out=)", fmt(ours.gbps), fmt(limit.gbps), limit.variant,
                             fmt(copyto.gbps if copyto else None),
                             fmt(self.copy_ratio(op, shape, threads, section="half", dtype=dtype)),
                             fmt(ratio(unfused, ours)), fmt(ratio(torch_peer, ours))])
        header = ["dtype", "lnorm call", "GB/s", "limit GB/s", "limit copy", "np.copyto GB/s", "/ limit",
                  "speedup vs np.add + lnorm norm", "speedup vs torch"]
        return markdown_table(header, body)

    # -- sweep -----------------------------------------------------------------------------------
    SWEEP_COLUMNS = [("numpy.copyto", "copy", "", "out", "np.copyto")] + [
        ("lnorm", "layer_norm", isa, "out", f"lnorm {isa} out=") for isa in SETS
    ] + [
        ("lnorm", "layer_norm", DEFAULT_ISA, "alloc", "lnorm alloc"),
        ("numpy", "layer_norm", "", "expression", "numpy"),
        ("torch", "layer_norm", "", "alloc", "torch"),
        ("onnxruntime", "layer_norm", "", "alloc", "ORT"),
    ]

    def sweep_shapes(self, batch):
        """The sweep's (rows, cols) by hidden size: batch "large" or a small batch size."""
        if batch == "large":
            return self.plan.sweep_large
        return [(batch, h) for h in self.plan.sweep_hidden]

    def sweep_table(self, threads, shapes):
        body = []
        for shape in shapes:
            measured = [self.r.get("sweep", shape, threads, lib, op, isa, variant)
                        for lib, op, isa, variant, _ in self.SWEEP_COLUMNS]
            limit = self.r.copy_limit("sweep", shape, threads)
            best = self.r.get("sweep", shape, threads, "lnorm", "layer_norm", DEFAULT_ISA, "out")
            body.append([str(shape[1]), str(shape[0]), fmt(limit.gbps), limit.variant]
                        + [fmt(row.gbps if row else None) for row in measured] + [fmt(ratio(limit, best))])
        header = (["hidden", "batch", "limit GB/s", "limit copy"] + [c[4] + " GB/s" for c in self.SWEEP_COLUMNS]
                  + [f"lnorm {DEFAULT_ISA} / limit"])
        return markdown_table(header, body)

    # -- headline ----------------------------------------------------------------------------
    def headline(self):
        """The goal numbers as Markdown bullets, each with its verdict."""
        lines = []
        for op in ("layer_norm", "rms_norm"):
            values = [self.copy_ratio(op, self.copy_shape, t) for t in self.threads]
            lines.append(f"- `{op}` float32 `out=` on {shape_name(self.copy_shape)}: "
                         + ", ".join(f"{fmt(v)} of the copy limit ({self.limit_kind(self.copy_shape, t)}) at "
                                     f"{threads_name(t)}" for v, t in zip(values, self.threads))
                         + goal_mark(min(values) >= 0.90, ">= 0.90 of the copy limit"))
        values = [self.copy_ratio("layer_norm_backward", self.copy_shape, t) for t in self.threads]
        if all(v is not None for v in values):
            lines.append(f"- `layer_norm_backward` float32 on {shape_name(self.copy_shape)} (x, dy read, dx written; "
                         "against a copy of 1.5x x's bytes): "
                         + ", ".join(f"{fmt(v)} of the copy limit at {threads_name(t)}" for v, t in zip(values, self.threads))
                         + goal_mark(min(values) >= 0.75, ">= 0.75 of the copy limit"))
        for t in self.threads:
            speedups = {k: [v for v in values if v is not None] for k, values in self.peer_speedups(t).items()}
            compared = [k for k in ("LN vs torch", "LN bwd vs torch", "RMS vs torch", "LN vs ORT") if speedups[k]]
            parts = [f"{k} {fmt(geomean(speedups[k]))}x (min {fmt(min(speedups[k]))}x)" for k in compared]
            met = all(geomean(speedups[k]) >= 2 and min(speedups[k]) >= 1 for k in compared)
            lines.append(f"- {threads_name(t)}, geomean speedup over {len(self.peer_shapes)} shapes: " + "; ".join(parts)
                         + goal_mark(met, "geomean >= 2, no shape < 1"))
        for dtype in self.half_dtypes():
            for t in self.threads:
                parts, met = [], True
                for op in HALF_OPS:
                    fused = op.startswith("add_")
                    if dtype == "float32" and not fused:
                        continue  # float32 layer_norm and rms_norm are the first lines
                    to_copy = self.copy_ratio(op, self.plan.half_shape, t, section="half", dtype=dtype)
                    text, met = f"`{op}` {fmt(to_copy)} of the copy limit", met and to_copy >= (0.85 if fused else 0.90)
                    if fused:
                        shape = self.plan.half_shape
                        unfused = self.r.get("half", shape, t, "numpy+lnorm", op, DEFAULT_ISA, "unfused", dtype)
                        ours = self.r.get("half", shape, t, "lnorm", op, DEFAULT_ISA, "out", dtype)
                        speedup = ratio(unfused, ours)
                        text, met = text + f" and {fmt(speedup)}x the unfused add + norm", met and speedup > 1
                    parts.append(text)
                lines.append(f"- {dtype} {shape_name(self.plan.half_shape)}, {threads_name(t)}: " + "; ".join(parts)
                             + goal_mark(met, "norms >= 0.90 of the copy limit, add & norm >= 0.85 and faster than "
                                                  "unfused"))
        return "\n".join(lines)


def write_csv(path, rows):
    header = ["section", "dtype", "rows", "cols", "threads", "library", "op", "isa", "variant", "bytes_moved",
              "calls_per_rep", "repetitions", "median_s", "gbps", "spread_iqr", "max_rel_error", "rep_seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.section, r.dtype, r.rows, r.cols, r.threads, r.library, r.op, r.isa, r.variant,
                             r.bytes_moved, r.calls_per_rep, len(r.rep_seconds), f"{r.median_seconds:.6g}",
                             f"{r.gbps:.4g}", f"{r.spread:.3f}", f"{r.max_rel_error:.3g}",
                             ";".join(f"{s:.6g}" for s in r.rep_seconds)])


def write_plot(path, report: Report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = report.sweep_shapes("large")
    large_bytes = shapes[0][0] * shapes[0][1] * 4
    fig, axes = plt.subplots(1, len(report.threads), figsize=(6.5 * len(report.threads), 4.8), sharey=True, squeeze=False)
    styles = {"np.copyto": dict(color="gray", ls="--", lw=1.2),
              f"lnorm {DEFAULT_ISA} out=": dict(color="C0", lw=2.2, marker="o", ms=4),
              "lnorm alloc": dict(color="C0", ls=":", lw=1.2), "numpy": dict(color="C3", marker=".", lw=1.2),
              "torch": dict(color="C1", marker="s", ms=3, lw=1.5), "ORT": dict(color="C2", marker="^", ms=3, lw=1.5)}
    other_isa_styles = iter([dict(color="C4", ls="--", lw=1.2), dict(color="C5", ls="-.", lw=1.2), dict(color="C6", ls="--")])
    for isa in ISAS:
        styles.setdefault(f"lnorm {isa} out=", next(other_isa_styles))
    for ax, threads in zip(axes[0], report.threads):
        limits = [(s[1], report.r.copy_limit("sweep", s, threads)) for s in shapes]
        limits = [(h, row.gbps) for h, row in limits if row is not None]
        if limits:
            ax.plot(*zip(*limits), label="copy limit (fastest copy_rows)", color="black", lw=2.2)
        for library, op, isa, variant, name in report.SWEEP_COLUMNS:
            points = [(s[1], report.r.get("sweep", s, threads, library, op, isa, variant)) for s in shapes]
            points = [(h, row.gbps) for h, row in points if row is not None]
            if points:
                label = "np.copyto (1 thread)" if name == "np.copyto" else name
                if library == "lnorm" and isa == DEFAULT_ISA and variant == "out":
                    label += " (default)"
                ax.plot(*zip(*points), label=label, **styles[name])
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"hidden size (batch for ~{large_bytes >> 20} MiB of float32 input)")
        ax.set_title(f"layer_norm float32, {threads_name(threads)}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("GB/s  (bytes read + written) / time")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions():
    found = {"python": platform.python_version(), "numpy": np.__version__}
    if torch is not None:
        found["torch"] = torch.__version__
    if onnxruntime is not None:
        found["onnxruntime"] = onnxruntime.__version__
        found["onnx"] = onnx.__version__
    if ml_dtypes is not None:
        found["ml_dtypes"] = ml_dtypes.__version__
    return ", ".join(f"{k} {v}" for k, v in found.items())


def write_results_md(path, report: Report, rows, command, started, elapsed, plot_name, csv_name):
    plan = report.plan
    worst = {}
    for row in rows:
        worst[row.dtype] = max(worst.get(row.dtype, 0.0), row.max_rel_error)
    spreads = sorted(row.spread for row in rows)
    out = [
        "# lnorm benchmark results" + (" (quick run: a subset of shapes and repetitions)" if plan.quick else ""),
        "",
        f"- Command: `{command}`",
        f"- Date: {started:%Y-%m-%d %H:%M} (run time {elapsed / 60:.1f} min)",
        f"- CPU: {cpu_description()}; timed at {', '.join(threads_name(t) for t in report.threads)}",
        f"- lnorm.config(): `{lnorm.config()}`",
        f"- Versions: {versions()}",
        f"- Method: {plan.repeat} repetitions, each contender ~{plan.rep_seconds * 1e3:.0f} ms (or at least 1 call) per "
        f"repetition, round-robin with the start rotated, {plan.settle_seconds * 1e3:.0f} ms pause between contenders; "
        "medians; ratios are medians of per-repetition ratios. GB/s = (bytes read + bytes written) / median time, "
        "each array counted once.",
        "- Copy limit (every \"/ limit\" and \"of the copy limit\"): the fastest, by median time, of lnorm's native "
        "copies of the same bytes into a preallocated array at the same thread count, timed in the same round-robin: "
        "`lnorm._lnorm.copy_rows` (lnorm/copy.hpp) with plain vector stores, streaming (non-temporal) stores or "
        "memcpy, the rows split among threads as lnorm's calls split them (\"limit copy\" names the fastest). "
        "\"x2\" copies x and residual. `np.copyto(dst, x)` (one thread at any thread count) is shown for reference "
        "only.",
        f"- Noise: the spread of repetitions (interquartile range / median) is {statistics.median(spreads):.0%} for the "
        f"median row, {spreads[int(0.9 * (len(spreads) - 1))]:.0%} at the 90th percentile (per row in the CSV).",
        f"- Verification: passed. All {len(rows)} timed configurations matched the float64 NumPy reference before "
        "timing (worst max|got - ref| / (1 + |ref|): " + ", ".join(f"{k} {v:.2g}" for k, v in worst.items()) + ").",
        "- lnorm \"alloc\" calls and torch allocate their output; ONNX Runtime's `session.run` (numpy in, numpy out) "
        "includes its own allocation of the output in its time, as lnorm's allocating call does. ORT: in-memory "
        "opset-17 `LayerNormalization`, `intra_op_num_threads` = thread count, inter-op 1, sequential execution.",
        "- torch backward: `y.backward(dy, retain_graph=True)` on a graph built once, x/weight/bias leaves requiring "
        "grad, grads reset to None before each call; lnorm: `layer_norm_backward(dy, x, mean, rstd, weight)` with "
        "mean/rstd from `layer_norm(..., return_stats=True)`. Both allocate dx, dweight, dbias.",
        f"- Speedups and ratios use lnorm's default (`{DEFAULT_ISA}`: the CPU's choice, `{BEST_ISA}` with the CPU "
        f"policy's per-op choice, AVX2 for {lnorm.config()['policy']['avx2_ops'] or 'no op'}) unless a column names "
        "a forced kernel set.",
        "",
        "## Headline",
        "",
        report.headline(),
        "",
        f"![GB/s against hidden size]({plot_name})",
        "",
        f"## Copy limit, {shape_name(report.copy_shape)} float32",
        "",
    ]
    for t in report.threads:
        out += [f"{threads_name(t)}:", "", report.copy_goal_table(t), ""]
    out += ["## Against PyTorch, ONNX Runtime and NumPy (float32, allocating calls)", "",
            "Speedup = peer's time / lnorm's time (x). LN = layer_norm, RMS = rms_norm, bwd = layer_norm_backward.", ""]
    for t in report.threads:
        out += [f"{threads_name(t)}:", "", report.peer_table(t), ""]
    out += ["## Distance to the copy limit and kernel-set speedups (float32)", "",
            "`/ limit` = copy-limit time / lnorm `out=` time; `isa / scalar` = scalar time / that kernel set's time.",
            ""]
    for t in report.threads:
        out += [f"{threads_name(t)}:", "", report.limit_and_isa_table(t), ""]
    out += [f"## Half precision and fused add & norm, {shape_name(plan.half_shape)}", "",
            "add & norm reads x and residual, writes y and s: compared with the copy limit of both arrays. Unfused = "
            "`np.add(x, residual, out=s)` then lnorm's norm with `out=`; torch = `x + residual` then "
            "`F.layer_norm` / `F.rms_norm`. The CSV also has the other vector kernel sets; scalar is not timed here "
            "(its 16-bit conversions take seconds per call at this size).", ""]
    for t in report.threads:
        out += [f"{threads_name(t)}:", "", report.half_table(t), ""]
    out += ["## Hidden-size sweep (layer_norm float32, GB/s)", ""]
    large_bytes = plan.sweep_large[0][0] * plan.sweep_large[0][1] * 4
    for t in report.threads:
        for batch in ["large"] + plan.sweep_small_batches:
            title = f"batch for ~{large_bytes >> 20} MiB of input" if batch == "large" else f"batch {batch}"
            out += [f"{threads_name(t)}, {title}:", "", report.sweep_table(t, report.sweep_shapes(batch)), ""]
    out += [f"All rows, with every repetition's time: `{csv_name}`.", ""]
    with open(path, "w") as f:
        f.write("\n".join(out))


HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin -->", "<!-- headline:end -->"


def refresh_readme_headline(readme_path, report: Report, started):
    """Replace the block between the headline markers of bench/README.md with this run's numbers."""
    if not os.path.exists(readme_path):
        return
    with open(readme_path) as f:
        text = f.read()
    if HEADLINE_BEGIN not in text or HEADLINE_END not in text:
        return
    head, rest = text.split(HEADLINE_BEGIN, 1)
    _, tail = rest.split(HEADLINE_END, 1)
    block = (f"\nFrom the run of {started:%Y-%m-%d} on {cpu_description()}; ratios against the copy limit (the "
             "fastest native copy of the same bytes at the same thread count); details in RESULTS.md.\n\n")
    with open(readme_path, "w") as f:
        f.write(head + HEADLINE_BEGIN + block + report.headline() + "\n" + HEADLINE_END + tail)


def cpu_folder() -> str:
    """bench/by_cpu/'s folder for this CPU: vendor, family and model, e.g. 'AuthenticAMD-family25-model17'."""
    info = cpu_info()
    parts = [info["vendor"] or platform.machine()]
    if info["family"]:
        parts += [f"family{info['family']}", f"model{info['model']}"]
    return "-".join(parts)


def keep_per_cpu(bench_dir, names):
    """Copy the run's files into bench/by_cpu/<CPU>/: RESULTS.md holds the latest run, whichever machine it
    was on; by_cpu/ keeps the latest of each CPU class seen, for the per-CPU policy table."""
    folder = os.path.join(bench_dir, "by_cpu", cpu_folder())
    os.makedirs(folder, exist_ok=True)
    for name in names:
        shutil.copyfile(os.path.join(bench_dir, name), os.path.join(folder, name))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few shapes and repetitions (< 60 s): a smoke test")
    parser.add_argument("--out", default=BENCH_DIR, help="folder for RESULTS.md, results.csv and the plot (default: bench/)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeat", type=int, help="repetitions per contender (default 7, quick 3)")
    parser.add_argument("--rep-ms", type=float, help="target milliseconds per contender per repetition (default 20)")
    parser.add_argument("--settle-ms", type=float, help="pause between contenders in milliseconds (default 10)")
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args(argv)
    args.thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    if not args.thread_counts or min(args.thread_counts) < 1:
        parser.error("--threads needs positive integers, e.g. 1,2")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = make_plan(args.quick, args.repeat, args.rep_ms, args.settle_ms)
    command = "python " + " ".join([os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else list(argv)))
    started, start_clock = datetime.datetime.now(), time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    optional = {"torch": torch, "onnxruntime": onnxruntime, "ml_dtypes": ml_dtypes}
    missing = [name for name, module in optional.items() if module is None]
    print(f"lnorm {lnorm.__version__}, kernel sets {ISAS} (default {DEFAULT_ISA}); threads {args.thread_counts}; "
          f"CPU {cpu_description()}"
          + (f"; not installed, skipped: {', '.join(missing)}" if missing else ""), flush=True)

    rows = []
    saved_threads = lnorm.get_num_threads()
    try:
        for index, case in enumerate(make_cases(plan)):
            rows += run_case(case, args.seed + index, args.thread_counts, plan)
    except VerificationError as error:
        print(f"VERIFICATION FAILED, nothing timed is trustworthy: {error}", file=sys.stderr)
        return 1
    finally:
        lnorm.set_isa(DEFAULT_ISA)
        lnorm.set_num_threads(saved_threads)

    elapsed = time.perf_counter() - start_clock
    report = Report(Results(rows), plan, args.thread_counts)
    csv_name, plot_name = "results.csv", "gbps_vs_hidden.png"
    write_csv(os.path.join(args.out, csv_name), rows)
    write_plot(os.path.join(args.out, plot_name), report)
    write_results_md(os.path.join(args.out, "RESULTS.md"), report, rows, command, started, elapsed, plot_name, csv_name)
    if os.path.abspath(args.out) == BENCH_DIR:
        refresh_readme_headline(os.path.join(BENCH_DIR, "README.md"), report, started)
        keep_per_cpu(BENCH_DIR, ("RESULTS.md", csv_name, plot_name))
    print(report.headline())
    print(f"verification passed; wrote {args.out}/RESULTS.md, {csv_name}, {plot_name} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
