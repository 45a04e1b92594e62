"""Checks of bench/bench.py: the quick run writes verified results, and verification catches a wrong
answer before anything is timed."""

import csv
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_SCRIPT = os.path.join(REPO_ROOT, "bench", "bench.py")


@pytest.fixture(scope="module")
def bench():
    """bench/bench.py imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("lnorm_bench", BENCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.slow
def test_quick_run_writes_verified_results(tmp_path):
    pytest.importorskip("matplotlib")
    completed = subprocess.run(
        [sys.executable, BENCH_SCRIPT, "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    assert "verification passed" in completed.stdout

    results_md = (tmp_path / "RESULTS.md").read_text()
    assert "Verification: passed" in results_md
    assert "--quick" in results_md  # the command is recorded
    assert "## Headline" in results_md and "## Hidden-size sweep" in results_md
    # Ratios against the copy limit (the fastest native copy), never against np.copyto; the CPU named.
    from lnorm._limit import cpu_info

    assert "of the copy limit" in results_md and "| / limit |" in results_md, results_md[:3000]
    assert "of `np.copyto`" not in results_md and "/ copy |" not in results_md
    assert f"CPU: {cpu_info()['model name']}" in results_md and "timed at 1 thread, 2 threads" in results_md

    with open(tmp_path / "gbps_vs_hidden.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    import lnorm

    timed_isas = {r["isa"] for r in rows if r["library"] == "lnorm" and r["op"] == "layer_norm"}
    assert timed_isas == set(lnorm.available_isas()) | {"auto"}  # each set forced, and the CPU's choice
    cases = {(r["section"], r["dtype"], r["rows"], r["cols"], r["threads"]) for r in rows}
    for case in cases:  # every case timed each native copy and np.copyto, at its own thread count
        copies = {r["variant"] for r in rows if r["library"] == "lnorm.copy_rows" and r["op"] == "copy"
                  and (r["section"], r["dtype"], r["rows"], r["cols"], r["threads"]) == case}
        assert copies == {"plain", "streaming", "memcpy"}, case
        assert any(r["library"] == "numpy.copyto" and (r["section"], r["dtype"], r["rows"], r["cols"], r["threads"]) == case
                   for r in rows), case
    assert {int(r["threads"]) for r in rows} == {1, 2}
    for r in rows:
        assert float(r["max_rel_error"]) < 0.05, r
        assert math.isfinite(float(r["gbps"])) and float(r["gbps"]) > 0, r


def test_verification_rejects_a_wrong_result(bench):
    inputs = bench.make_inputs(8, 100, np.float32, seed=1)
    reference = {"y": bench.reference_layer_norm(inputs.x, inputs.weight, inputs.bias)}
    tolerance = bench.tolerance(np.float32)

    good = bench.lnorm_forward("layer_norm", inputs, "scalar", "out")
    assert bench.verify_contender(good, reference, tolerance) < tolerance

    y_without_bias = bench.reference_layer_norm(inputs.x, inputs.weight, np.zeros_like(inputs.bias))
    wrong = bench.Contender("fake", "layer_norm", "alloc", run=lambda: None,
                            outputs=lambda: {"y": y_without_bias.astype(np.float32)}, bytes_moved=1)
    with pytest.raises(bench.VerificationError, match="fake"):
        bench.verify_contender(wrong, reference, tolerance)

    nan_result = bench.Contender("fake", "layer_norm", "alloc", run=lambda: None,
                                 outputs=lambda: {"y": np.full_like(inputs.x, np.nan)}, bytes_moved=1)
    with pytest.raises(bench.VerificationError):
        bench.verify_contender(nan_result, reference, tolerance)


def test_copy_limit_is_the_fastest_native_copy(bench):
    """The limit is the fastest native copy of the case (by median), whatever np.copyto does; ratios to
    "the limit" are paired against that copy's repetitions."""
    def row(library, op, variant, seconds, threads=1):
        return bench.Row("goal", "float32", 4, 8, threads, library, op, "", variant, 256, 1, 0.0, seconds)

    rows = [row("lnorm.copy_rows", "copy", "plain", [3.0, 3.0, 3.0]),
            row("lnorm.copy_rows", "copy", "streaming", [2.0, 2.5, 1.0]),
            row("lnorm.copy_rows", "copy", "memcpy", [4.0, 4.0, 4.0]),
            row("numpy.copyto", "copy", "out", [0.5, 0.5, 0.5]),  # faster, but not a native copy
            row("lnorm.copy_rows", "copy", "memcpy", [0.1, 0.1, 0.1], threads=2),  # another thread count
            bench.Row("goal", "float32", 4, 8, 1, "lnorm", "layer_norm", bench.DEFAULT_ISA, "out", 256, 1, 0.0,
                      [4.0, 5.0, 2.0])]
    results = bench.Results(rows)
    limit = results.copy_limit("goal", (4, 8), 1)
    assert (limit.library, limit.variant) == ("lnorm.copy_rows", "streaming")
    assert [bench.copy_name(r) for r in results.copies("goal", (4, 8), 1)] == [
        "copy_rows plain", "copy_rows streaming", "copy_rows memcpy", "np.copyto"]
    assert results.copy_limit("goal", (4, 8), 1, op="copy x2") is None
    plan = bench.make_plan(True, 1, 1.0, 0.0)
    plan.goal_shapes = [(4, 8)]
    report = bench.Report(results, plan, [1])
    assert report.copy_ratio("layer_norm", (4, 8), 1) == 0.5  # median of 2/4, 2.5/5, 1/2


def test_paired_ratio_and_geomean(bench):
    def row(seconds):
        return bench.Row("goal", "float32", 1, 1, 1, "x", "op", "", "alloc", 8, 1, 0.0, seconds)

    slow, fast = row([4.0, 9.0, 2.0]), row([2.0, 3.0, 2.0])
    assert bench.paired_ratio(slow, fast) == 2.0  # median of 2, 3, 1
    assert bench.geomean([2.0, 8.0]) == pytest.approx(4.0)


def test_copy_ratio_script_runs():
    """bench/copy_ratio.py (the copy-limit goals over many rounds) runs and reports every dtype."""
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "copy_ratio.py"), "--rows", "16", "--cols", "64",
         "--rounds", "2", "--threads", "1", "--pause-ms", "0"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("1 thread")]
    assert len(lines) == 3 and all("layer_norm" in line and "rms_norm" in line for line in lines), completed.stdout


CHANNEL_SCRIPT = os.path.join(REPO_ROOT, "bench", "bench_channel.py")


@pytest.mark.slow
def test_channel_quick_run_writes_verified_results(tmp_path):
    """bench/bench_channel.py --quick verifies every contender, then writes its table (each op,
    layout and thread count, its fraction of the bound and the ratios to torch and ONNX Runtime), the
    goals, the CSV and the plot."""
    pytest.importorskip("matplotlib")
    completed = subprocess.run([sys.executable, CHANNEL_SCRIPT, "--quick", "--out", str(tmp_path)],
                               capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    results = (tmp_path / "RESULTS_channel.md").read_text()
    from lnorm._limit import cpu_info

    assert f"CPU: {cpu_info()['model name']}" in results and "## Goals" in results
    with open(tmp_path / "results_channel.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ops = {r["op"] for r in rows}
    assert ops == {"group_norm", "instance_norm", "batch_norm_eval", "batch_norm_train", "group_norm_backward",
                   "instance_norm_backward", "batch_norm_backward"}
    assert {r["layout"] for r in rows} == {"nchw", "nhwc"} and {r["threads"] for r in rows} == {"1", "2"}
    assert all(float(r["of_bound"]) > 0 and float(r["bound_copies"]) in (1.0, 1.5, 2.5) for r in rows)
    with open(tmp_path / "channel_norms.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_channel_bench_catches_a_wrong_answer(monkeypatch):
    """The verification in bench/bench_channel.py fails a contender that computes the wrong thing."""
    spec = importlib.util.spec_from_file_location("lnorm_bench_channel", CHANNEL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        inp = module.make_inputs((2, 64, 4, 4), np.dtype(np.float32), "nhwc", seed=1)
        good = module.max_error(module.lnorm_contender("group_norm", inp).result(), module.reference("group_norm", inp))
        assert good < 1e-5
        wrong = module.reference("instance_norm", inp)  # another op's answer
        assert module.max_error(module.lnorm_contender("group_norm", inp).result(), wrong) > 1e-2
    finally:
        del sys.modules[spec.name]
