"""Hostile use: lnorm tried as a careless or adversarial caller would. Every case gets the right
answer or a TypeError/ValueError whose message starts with the argument at fault; never an abort,
a hang, a leaked internal error or a result that depends on the thread count.

Classes, in order: exit with threads inside lnorm; fork; subinterpreters; threads racing the buffer
cache and the settings; the aliasing rule over every pair of array arguments; torch tensors with
lazy bits and odd layouts; a fuzz of argument kinds over every public function; the modules' saved
state; what really ran (kernel set, threads) seen from the native side; the environment.
"""

import gc
import itertools
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import lnorm
from lnorm import _lnorm
from checks import isa_setting
from reference import layer_norm_ref, rms_norm_ref, layer_norm_backward_ref

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    BF16 = None

try:
    import torch
except ImportError:  # pragma: no cover - torch is in CI
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNORM_")}
    env.update(extra)
    return env


def run_python(code, timeout=120, env=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env or clean_env())


def raises_naming(exc, names, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises `exc` with a message that starts with one of `names` and a colon."""
    names = (names,) if isinstance(names, str) else names
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert any(message.startswith(n + ":") for n in names), f"message does not start with {names}: {message!r}"
    return message


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % (2**32))


@pytest.fixture
def restore_settings():
    threads, isa = lnorm.get_num_threads(), isa_setting()
    cache = lnorm.config()["buffer_cache"]
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)
    lnorm.set_num_threads(threads)
    lnorm.set_isa(isa)
    lnorm.set_buffer_cache(cache)


# ==============================================================================================
# Exit while daemon threads are inside lnorm
# ==============================================================================================

EXIT_CALLS = {
    "fast_path": "lnorm.layer_norm(x)",
    "general_path": "lnorm.layer_norm(x, axis=0)",
    "add_norm": "lnorm.add_rms_norm(x, x)",
    "backward": "lnorm.layer_norm_backward(x, x, m, r)",
    "cached_output": "lnorm.rms_norm(big)",
    "two_workers": "lnorm.layer_norm(big, axis=-1)",
}


@pytest.mark.parametrize("call", list(EXIT_CALLS), ids=list(EXIT_CALLS))
def test_exit_with_daemon_threads_inside_calls(call):
    """The interpreter exits cleanly (status 0, no 'terminate called') while daemon threads are
    inside lnorm calls, three times in a row: they park at exit instead of unwinding through C++."""
    program = f"""
        import sys, threading, time, numpy as np, lnorm
        lnorm.set_num_threads(2)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 1024), dtype=np.float32)
        big = rng.standard_normal((4096, 1100), dtype=np.float32)  # 18 MB: the cached, threaded path
        _, m, r = lnorm.layer_norm(x, return_stats=True)
        started = threading.Event()
        def work():
            started.set()
            while True:
                {EXIT_CALLS[call]}
        for _ in range(3):
            threading.Thread(target=work, daemon=True).start()
        started.wait()
        time.sleep(0.05)
        print("leaving", flush=True)
    """
    for _ in range(3):
        r = run_python(program, timeout=60)
        assert r.returncode == 0, f"exit status {r.returncode}: {r.stderr[-2000:]}"
        assert "terminate" not in r.stderr and "leaving" in r.stdout, r.stderr[-2000:]


def test_exit_from_sys_exit_in_a_thread_while_others_compute():
    """sys.exit in the main thread, an exception escaping in another: still a clean exit."""
    program = """
        import sys, threading, numpy as np, lnorm
        x = np.random.default_rng(0).standard_normal((512, 768), dtype=np.float32)
        def work():
            while True:
                lnorm.layer_norm(x, axis=(0, 1))
        for _ in range(2):
            threading.Thread(target=work, daemon=True).start()
        def fail():
            lnorm.layer_norm(x)
            raise RuntimeError("escapes its thread")
        t = threading.Thread(target=fail)
        t.start(); t.join()
        sys.exit(3)
    """
    r = run_python(program, timeout=60)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "terminate" not in r.stderr


# ==============================================================================================
# fork
# ==============================================================================================


@needs_fork
def test_fork_while_other_threads_are_inside_lnorm():
    """A child forked while other threads are inside lnorm (holding the buffer cache's lock, inside
    OpenMP regions) can call lnorm on every path, gets right answers, and exits; five forks."""
    program = """
        import os, sys, threading, time, numpy as np, lnorm
        lnorm.set_num_threads(2)
        rng = np.random.default_rng(1)
        big = rng.standard_normal((4096, 1100), dtype=np.float32)
        x = rng.standard_normal((64, 512), dtype=np.float32)
        want_big, want_x = lnorm.rms_norm(big).copy(), lnorm.layer_norm(x, axis=0).copy()
        stop = False
        def work():
            while not stop:
                lnorm.rms_norm(big)
                lnorm.layer_norm(x, axis=0)
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads: t.start()
        for i in range(5):
            time.sleep(0.02)
            pid = os.fork()
            if pid == 0:
                ok = (np.array_equal(lnorm.rms_norm(big), want_big)
                      and np.array_equal(lnorm.layer_norm(x, axis=0), want_x)
                      and np.array_equal(lnorm.rms_norm(big, axis=-1), want_big))
                os._exit(0 if ok else 1)
            deadline = time.time() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.time() > deadline:
                    os.kill(pid, 9)
                    print("child hung"); sys.exit(2)
                time.sleep(0.01)
            if os.waitstatus_to_exitcode(status) != 0:
                print("child failed", os.waitstatus_to_exitcode(status)); sys.exit(1)
        stop = True
        for t in threads: t.join()
        print("ok")
    """
    r = run_python(program, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr[-2000:])


# ==============================================================================================
# Subinterpreters
# ==============================================================================================


def _subinterpreter_runner():
    try:
        import _testcapi  # noqa: F401
        return "import _testcapi; rc = _testcapi.run_in_subinterp({code!r})"
    except ImportError:
        pytest.skip("this Python has no _testcapi.run_in_subinterp")


@pytest.mark.parametrize("main_first", [True, False], ids=["imported-in-main-first", "subinterpreter-first"])
def test_subinterpreter_is_refused_at_import_without_hanging(main_first):
    """lnorm refuses to be imported in a subinterpreter with an ImportError that says why (its calls
    would hang there), whether or not the main interpreter imported it first; the process goes on."""
    runner = _subinterpreter_runner()
    inner = textwrap.dedent("""
        try:
            import lnorm
        except ImportError as e:
            print("refused:", e)
        else:
            import numpy as np
            lnorm.layer_norm(np.ones((4, 8), np.float32), axis=0)
            print("ran")
    """)
    program = ("import sys\n" + ("import lnorm\n" if main_first else "") + runner.format(code=inner) +
               "\nimport numpy as np, lnorm\nprint('main still works', float(lnorm.layer_norm(np.arange(4.0))[0]))\n")
    r = run_python(program, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused:" in r.stdout and "subinterpreter" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "main still works" in r.stdout


# ==============================================================================================
# Threads racing shared state
# ==============================================================================================


def _race(workers, seconds=1.5):
    """Runs each worker(stop) on its own thread under a tiny switch interval; returns the errors."""
    errors = []
    stop = threading.Event()

    def guarded(w):
        try:
            w(stop)
        except BaseException as e:  # noqa: BLE001 - every error is a finding
            errors.append(e)
            stop.set()

    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=guarded, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return errors


def test_shared_state_races(rng, restore_settings):
    """Every piece of shared state raced, under a tiny switch interval. First the cache: eight
    threads make 16-23 MiB outputs (the cached ones) and keep some alive while another changes the
    cache's limit without pause. Then everything: two of those, two threads making small calls
    (forward, a whole-array row, backward), the cache resized and the thread count and the kernel set
    changed. No error; every result is bit for bit the result of some kernel set run alone (never
    dependent on the thread count: a call keeps the settings it started with); and results kept
    through other calls are still right (no buffer is handed to two callers)."""
    isas = lnorm.available_isas()
    big = [rng.standard_normal((1024, 4096 + 256 * k), dtype=np.float32) for k in range(8)]
    x = rng.standard_normal((512, 1024), dtype=np.float32)
    w, b = rng.standard_normal(1024, dtype=np.float32), rng.standard_normal(1024, dtype=np.float32)
    _, m, r = lnorm.layer_norm(x, return_stats=True)  # one set of statistics for every backward

    def small():
        return (lnorm.layer_norm(x, w, b), lnorm.layer_norm(x, axis=(0, 1)),
                *lnorm.layer_norm_backward(x, x, m, r, w)[:2])

    lnorm.set_num_threads(1)
    lnorm.set_isa(isas[-1])  # the kernel set of the first part
    wanted_big = [[lnorm.rms_norm(a).copy() for a in big]]
    wanted_small = []
    for isa in isas:
        lnorm.set_isa(isa)
        wanted_small.append([a.copy() for a in small()])
        if isa != isas[-1]:
            wanted_big.append([lnorm.rms_norm(a).copy() if k < 2 else None for k, a in enumerate(big)])
    lnorm.set_isa(isas[-1])

    def big_calls(k, count):
        def work(stop):
            kept = []
            for n in itertools.count():
                if stop.is_set():
                    break
                i = (k + n) % count
                kept.append((i, lnorm.rms_norm(big[i])))
                if len(kept) > 3:
                    kept.pop(0)
            for i, y in kept:  # checked at the end: checks hold the GIL and would keep the race away
                if not any(np.array_equal(y, want[i]) for want in wanted_big if want[i] is not None):
                    raise AssertionError("a kept large result matches no kernel set's")
        return work

    def small_calls(stop):
        while not stop.is_set():
            for k, got in enumerate(small()):
                if not any(np.array_equal(got, want[k]) for want in wanted_small):
                    raise AssertionError(f"small result {k} matches no kernel set's")

    def resize(stop):
        sizes = itertools.cycle([512 << 20, 300 << 20, 512 << 20, 200 << 20])  # each shrink drops some
        while not stop.is_set():
            lnorm.set_buffer_cache(next(sizes))

    def settle(stop):
        counts = itertools.cycle(range(1, 5))
        while not stop.is_set():
            lnorm.set_num_threads(next(counts))
            lnorm.set_isa((isas + ["auto"])[next(counts) % (len(isas) + 1)])
            lnorm.config()

    errors = _race([big_calls(k, len(big)) for k in range(8)] + [resize], seconds=6)
    assert not errors, repr(errors[:3])
    errors = _race([big_calls(k, 2) for k in range(2)] + [small_calls, small_calls, resize, settle], seconds=2)
    assert not errors, repr(errors[:3])


def test_threaded_results_independent_of_thread_count(rng, restore_settings):
    """Every operation, at 1 and 2 threads, on inputs large enough that 2 workers really run (the
    native side says how many threads ran): bit for bit the same."""
    x = rng.standard_normal((256, 1030), dtype=np.float32) * 3 + 1
    dy = rng.standard_normal((256, 1030), dtype=np.float32)
    w, b = rng.standard_normal(1030, dtype=np.float32), rng.standard_normal(1030, dtype=np.float32)
    calls = {
        "layer_norm": lambda: lnorm.layer_norm(x, w, b, return_stats=True),
        "layer_norm_columns": lambda: lnorm.layer_norm(x, axis=0),
        "rms_norm": lambda: lnorm.rms_norm(x, w, return_stats=True),
        "add_layer_norm": lambda: lnorm.add_layer_norm(x, dy, w, b, return_stats=True),
        "backward": lambda: lnorm.layer_norm_backward(dy, x, *lnorm.layer_norm(x, return_stats=True)[1:], w),
        "rms_backward": lambda: lnorm.rms_norm_backward(dy, x, lnorm.rms_norm(x, return_stats=True)[1], w),
    }
    for name, call in calls.items():
        lnorm.set_num_threads(1)
        one = call()
        lnorm.set_num_threads(2)
        two = call()
        kernels, workers, threads = _lnorm.last_call()
        assert workers == 2, f"{name}: planned {workers} workers at 2 threads"
        if lnorm.config()["openmp"]:
            assert threads == 2, f"{name}: {threads} distinct threads ran 2 workers"
        for a, c in zip(one, two):
            assert (a is None and c is None) or np.array_equal(a, c), name


# ==============================================================================================
# The aliasing rule: every pair of (output, other array argument)
# ==============================================================================================
#
# An output may be exactly an input where the function allows it (in place); any other sharing of
# memory between an output and an input or another output, or between an output's own elements, is
# a ValueError naming the output, and nothing is written.

ROWS, COLS = 6, 40


def _arrays(names, base, offsets, dtype):
    """Views into one buffer `base`: the arrays named, each at its element offset. x-shaped ones are
    (ROWS, COLS) rows of COLS; weight-shaped ones are (COLS,)."""
    out = {}
    for name in names:
        o = offsets[name]
        shape = (COLS,) if name in ("weight", "bias", "bias_in") else (ROWS, COLS)
        n = int(np.prod(shape))
        out[name] = base[o:o + n].reshape(shape)
    return out


# Per function: its array arguments (outputs last), its outputs, and the in-place pairs it allows.
ALIAS_FUNCS = {
    "layer_norm": (("x", "weight", "bias", "out"), ("out",), {("out", "x")}),
    "rms_norm": (("x", "weight", "out"), ("out",), {("out", "x")}),
    "add_layer_norm": (("x", "residual", "weight", "bias", "bias_in", "out", "residual_out"), ("out", "residual_out"),
                       {("out", "x"), ("out", "residual"), ("residual_out", "x"), ("residual_out", "residual")}),
    "add_rms_norm": (("x", "residual", "weight", "bias_in", "out", "residual_out"), ("out", "residual_out"),
                     {("out", "x"), ("out", "residual"), ("residual_out", "x"), ("residual_out", "residual")}),
}
SIZE = ROWS * COLS


def _call(fn_name, arrays, return_stats):
    a = dict(arrays)
    fn = getattr(lnorm, fn_name)
    positional = [a.pop("x")] + ([a.pop("residual")] if "residual" in a else [])
    return fn(*positional, **a, return_stats=return_stats)


def _alias_cases():
    """(function, output, other, how): 'partial' (other starts a few elements into the output, or
    the output starts inside the other) and, for pairs of x-shaped arrays, 'same' (exactly the
    same view)."""
    for fn_name, (names, outputs, allowed) in ALIAS_FUNCS.items():
        for o in outputs:
            for other in names:
                if other == o:
                    continue
                yield fn_name, o, other, "partial"
                if other not in ("weight", "bias", "bias_in"):
                    yield fn_name, o, other, "same"


ALIAS_CASES = sorted(set(_alias_cases()))


@pytest.mark.parametrize("return_stats", [False, True], ids=["fast-path", "general-path"])
@pytest.mark.parametrize("fn_name,output,other,how", ALIAS_CASES, ids=["-".join(c) for c in ALIAS_CASES])
def test_aliasing_rule(fn_name, output, other, how, return_stats, rng):
    names, outputs, allowed = ALIAS_FUNCS[fn_name]
    # Every array its own stretch of one buffer, then `output` moved onto `other`.
    offsets = {n: i * 2 * SIZE for i, n in enumerate(names)}
    if how == "same":
        offsets[output] = offsets[other]
    else:
        offsets[output] = offsets[other] + 3  # partial: shifted by three elements
    base = rng.standard_normal(len(names) * 2 * SIZE + 64).astype(np.float32)
    arrays = _arrays(names, base, offsets, np.float32)
    if how == "same" and (output, other) in allowed:
        # In place: the answer of the same call with fresh outputs, bit for bit.
        fresh = {n: (a.copy() if n not in outputs else np.empty_like(a)) for n, a in arrays.items()}
        want = _call(fn_name, fresh, return_stats)
        got = _call(fn_name, arrays, return_stats)
        for g, w_ in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert np.array_equal(g, w_), f"{output} = {other} in place gives another answer"
        return
    before = base.copy()
    message = raises_naming(ValueError, outputs, _call, fn_name, arrays, return_stats)
    assert "overlap" in message, message
    assert np.array_equal(base, before, equal_nan=True), "a refused call wrote something"


@pytest.mark.parametrize("return_stats", [False, True], ids=["fast-path", "general-path"])
def test_output_overlapping_weight_is_refused(rng, return_stats):
    """The issue's example: out whose last row is the weight (12 different results in 20 runs at
    2 threads before the rule)."""
    x = rng.standard_normal((8, 64), dtype=np.float32)
    o = rng.standard_normal((8, 64), dtype=np.float32)
    raises_naming(ValueError, "out", lnorm.layer_norm, x, o[-1], None, out=o, return_stats=return_stats)
    # A weight lnorm copies first (not contiguous: a column of out) is held to the same rule.
    x, o = rng.standard_normal((64, 64), dtype=np.float32), rng.standard_normal((64, 64), dtype=np.float32)
    before = o.copy()
    raises_naming(ValueError, "out", lnorm.layer_norm, x, o[:, 3], None, out=o, return_stats=return_stats)
    raises_naming(ValueError, "out", lnorm.add_layer_norm, x, x, None, o[:, 5], out=o)
    assert np.array_equal(o, before)


@pytest.mark.parametrize("fn_name", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
def test_outputs_whose_elements_overlap_are_refused(fn_name, rng):
    """Zero strides (np.broadcast_to made writable, as_strided) and rows closer than a row: refused."""
    x = rng.standard_normal((4, 16), dtype=np.float32)
    buf = np.zeros(80, np.float32)
    views = [np.lib.stride_tricks.as_strided(buf, (4, 16), (0, 4)),
             np.lib.stride_tricks.as_strided(buf, (4, 16), (8 * 4, 4)),
             np.lib.stride_tricks.as_strided(buf, (4, 16), (4, 0))]
    fn = getattr(lnorm, fn_name)
    for out in views:
        args = (x, x.copy()) if fn_name.startswith("add") else (x,)
        raises_naming(ValueError, "out", fn, *args, out=out)
        raises_naming(ValueError, "out", fn, *args, out=out, return_stats=True)
        assert not buf.any(), "a refused call wrote something"


def test_sharing_that_is_allowed(rng):
    """Views of one buffer that share no element are fine (out in the right half of rows whose left
    half is x; even and odd columns; out and residual_out interleaved), and inputs may overlap each
    other freely (only read): each gives the answer of copies."""
    a = rng.standard_normal((8, 128), dtype=np.float32)
    x = a[:, :64]
    want = lnorm.layer_norm(x.copy())
    assert np.array_equal(lnorm.layer_norm(x, out=a[:, 64:]), want)
    assert np.array_equal(a[:, 64:], want)
    b = rng.standard_normal((8, 128), dtype=np.float32)
    even = b[:, ::2]
    want = lnorm.rms_norm(even.copy())
    lnorm.rms_norm(even, out=b[:, 1::2])
    assert np.array_equal(b[:, 1::2], want)
    c = rng.standard_normal((8, 128), dtype=np.float32)
    y, s = lnorm.add_layer_norm(b[:, ::2], b[:, 1::2], out=c[:, ::2], residual_out=c[:, 1::2])
    assert np.array_equal(s, b[:, ::2] + b[:, 1::2])
    assert np.array_equal(y, lnorm.layer_norm(b[:, ::2] + b[:, 1::2]))
    x = rng.standard_normal((6, 32), dtype=np.float32)
    assert np.array_equal(lnorm.add_layer_norm(x, x)[0], lnorm.add_layer_norm(x, x.copy())[0])
    assert np.array_equal(lnorm.layer_norm(x, x[0]), lnorm.layer_norm(x, x[0].copy()))
    _, m, r = lnorm.layer_norm(x, return_stats=True)
    got, want = lnorm.layer_norm_backward(x, x, m, r, x[1]), lnorm.layer_norm_backward(x.copy(), x, m, r, x[1].copy())
    for g, w_ in zip(got, want):
        assert np.array_equal(g, w_)


@needs_torch
def test_torch_expanded_output_is_refused():
    x = torch.randn(4, 16)
    out = torch.zeros(16).expand(4, 16)
    raises_naming(ValueError, "out", lnorm.layer_norm, x, out=out)
    assert not out.any()


# ==============================================================================================
# torch tensors: lazy bits, layouts, dtypes, autograd
# ==============================================================================================


def _negated(t):
    """A tensor equal to t whose memory holds -t, with torch's lazy negation bit set."""
    n = torch.complex(torch.zeros_like(t), -t).conj().imag  # is_neg(): reads as t, stored as -t
    assert n.is_neg() and torch.equal(n, t)
    return n


@needs_torch
@pytest.mark.parametrize("where", ["x", "weight", "residual", "dy"])
def test_torch_negation_bit_inputs_are_resolved(where):
    """Inputs with the lazy negation bit (a complex tensor's .conj().imag) give the answer of the
    same values without it (torch's DLPack export hands over the raw memory: the sign was lost)."""
    g = torch.Generator().manual_seed(1)
    x, r, dy = (torch.randn(3, 16, generator=g) for _ in range(3))
    w = torch.randn(16, generator=g)
    plain = dict(x=x, weight=w, residual=r, dy=dy)
    lazy = dict(plain, **{where: _negated(plain[where])})
    for a in (plain, lazy):
        a["y"], a["mean"], a["rstd"] = lnorm.layer_norm(a["x"], a["weight"], eps=0.5, return_stats=True)
        a["add"] = lnorm.add_rms_norm(a["x"], a["residual"], a["weight"], eps=0.5)
        a["grads"] = lnorm.layer_norm_backward(a["dy"], a["x"], plain["mean"], plain["rstd"], a["weight"])
    for key in ("y", "add", "grads"):
        for p, q in zip(*(v[key] if isinstance(v[key], tuple) else (v[key],) for v in (plain, lazy))):
            assert torch.equal(p, q), f"{where} with the negation bit changes {key}"


@needs_torch
def test_torch_negation_bit_output_is_refused():
    x = torch.randn(3, 16)
    out = _negated(torch.zeros(3, 16))
    raises_naming(ValueError, "out", lnorm.layer_norm, x, out=out)
    raises_naming(ValueError, "residual_out", lnorm.add_layer_norm, x, x, residual_out=out)
    assert torch.equal(out, torch.zeros(3, 16))


@needs_torch
def test_torch_out_tensor_bumps_its_version():
    """An out= tensor written by lnorm is an in-place change for autograd: a graph that saved it
    refuses to run backward, as torch does after any in-place operation."""
    x = torch.randn(3, 16)
    a = torch.randn(3, 16, requires_grad=True)
    buf = torch.randn(3, 16)
    loss = (a * buf).sum()  # saves buf for a's gradient
    lnorm.layer_norm(x, out=buf)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@needs_torch
def test_torch_out_that_requires_grad_is_refused():
    x = torch.randn(3, 16)
    raises_naming(ValueError, "out", lnorm.layer_norm, x, out=torch.zeros(3, 16, requires_grad=True))


def _torch_oddities():
    if torch is None:
        return []
    cases = [("int64", lambda: torch.ones(3, 16, dtype=torch.int64)),
             ("bool", lambda: torch.ones(3, 16, dtype=torch.bool)),
             ("complex64", lambda: torch.ones(3, 16, dtype=torch.complex64)),
             ("sparse_coo", lambda: torch.eye(16).to_sparse()),
             ("sparse_csr", lambda: torch.eye(16).to_sparse_csr()),
             ("meta", lambda: torch.ones(3, 16, device="meta"))]
    for name in ("float8_e4m3fn", "float8_e5m2", "uint16", "int8"):
        if hasattr(torch, name):
            cases.append((name, lambda d=getattr(torch, name): torch.ones(3, 16).to(d)))
    cases.append(("quantized", lambda: torch.quantize_per_tensor(torch.ones(3, 16), 0.1, 0, torch.quint8)))
    cases.append(("nested", lambda: torch.nested.nested_tensor([torch.ones(16), torch.ones(16)])))
    return cases


TORCH_ODDITIES = _torch_oddities()


@needs_torch
@pytest.mark.parametrize("where", ["x", "weight", "out"])
@pytest.mark.parametrize("kind,make", TORCH_ODDITIES, ids=[k for k, _ in TORCH_ODDITIES])
def test_torch_tensors_of_odd_kinds_are_refused_by_name(kind, make, where):
    """Every torch dtype lnorm does not support and every non-dense layout: TypeError or ValueError
    naming the argument, never torch's or DLPack's own RuntimeError/BufferError."""
    try:
        odd = make()
    except (RuntimeError, NotImplementedError) as e:  # pragma: no cover - not in this torch build
        pytest.skip(f"this torch cannot make it: {e}")
    x, w = torch.randn(3, 16), torch.randn(16)
    args = dict(x=x, weight=w, out=None)
    args[where] = odd
    raises_naming((TypeError, ValueError), where, lnorm.layer_norm, args["x"], args["weight"], out=args["out"])


# ==============================================================================================
# A fuzz of argument kinds over every public function
# ==============================================================================================


def _hostile_values():
    values = {
        "None": None, "True": True, "zero": 0, "minus_one": -1, "huge_int": 2**64, "huge_negative": -2**100,
        "float": 1.5, "nan": float("nan"), "inf": float("inf"), "str": "x", "bytes": b"x", "empty_list": [],
        "nested_empty_list": [[]], "list_of_8": [1.0] * 8, "ragged_list": [[1.0], [1.0, 2.0]],
        "np_float32": np.float32(1), "np_int64": np.int64(3), "np_bool": np.bool_(True), "zero_d": np.array(1.0),
        "one_element": np.array([1.0]), "two_elements": np.array([1.0, 2.0]), "str_array": np.array(["a"] * 8),
        "object_array": np.array([object()] * 8, dtype=object), "int_array": np.ones(8, np.int32),
        "complex_array": np.ones(8, np.complex64), "big_endian": np.ones(8, ">f4"),
        "masked": np.ma.masked_array(np.ones((4, 8), np.float32), mask=np.eye(4, 8, dtype=bool)),
        "empty_columns": np.zeros((4, 0), np.float32), "read_only": np.ones((4, 8), np.float32)[::1],
        "x_shaped_float64": np.ones((4, 8)), "object": object(), "dict": {}, "set": set(), "slice": slice(1),
        "ellipsis": Ellipsis, "function": len,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        values["matrix"] = np.matrix(np.ones((4, 8), np.float32))
    values["read_only"].flags.writeable = False
    unaligned = np.frombuffer(bytearray(4 * 32 + 1), np.uint8)[1:].view(np.float32).reshape(4, 8)
    values["unaligned"] = unaligned
    values["field_view"] = np.zeros((4, 8), dtype=[("a", "<f4"), ("b", "u1")])["a"]
    if torch is not None:
        values["torch_int"] = torch.ones(8, dtype=torch.int64)
        values["torch_sparse"] = torch.eye(8).to_sparse()
        values["torch_negated"] = _negated(torch.ones(4, 8))
        values["torch_float64"] = torch.ones(4, 8, dtype=torch.float64)
        if hasattr(torch, "float8_e4m3fn"):
            values["torch_float8"] = torch.ones(4, 8).to(torch.float8_e4m3fn)
    return values


HOSTILE = _hostile_values()


def _base_arguments():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8), dtype=np.float32)
    _, mean, rstd = lnorm.layer_norm(x, return_stats=True)
    return dict(x=x, residual=rng.standard_normal((4, 8), dtype=np.float32), dy=rng.standard_normal((4, 8), dtype=np.float32),
                weight=rng.standard_normal(8, dtype=np.float32), bias=rng.standard_normal(8, dtype=np.float32),
                bias_in=rng.standard_normal(8, dtype=np.float32), mean=mean, rstd=rstd)


# function -> (positional argument names, keyword argument names); every name is fuzzed.
FUZZ_FUNCS = {
    "layer_norm": (("x", "weight", "bias"), ("axis", "eps", "out", "return_stats")),
    "rms_norm": (("x", "weight"), ("axis", "eps", "out", "return_stats")),
    "layer_norm_backward": (("dy", "x", "mean", "rstd", "weight"), ("axis",)),
    "rms_norm_backward": (("dy", "x", "rstd", "weight"), ("axis",)),
    "add_layer_norm": (("x", "residual", "weight", "bias"), ("axis", "eps", "bias_in", "out", "residual_out",
                                                             "return_stats")),
    "add_rms_norm": (("x", "residual", "weight"), ("axis", "eps", "bias_in", "out", "residual_out", "return_stats")),
}
FUZZ_CASES = [(f, a) for f, (pos, kw) in FUZZ_FUNCS.items() for a in pos + kw]


def _clean_failure(e, name, every=()):
    """A TypeError or ValueError naming `name`; for x and axis, which set the shapes the others must
    have, naming any argument of the call (`every`) is right too (a weight that no longer fits)."""
    message = str(e)
    names = (name,) + (tuple(every) if name in ("x", "axis") else ())
    assert isinstance(e, (TypeError, ValueError)), f"{type(e).__name__}: {message}"
    assert any(message.startswith(n + ":") for n in names), f"{name}: message {message!r}"


@pytest.mark.parametrize("fn_name,arg", FUZZ_CASES, ids=[f"{f}-{a}" for f, a in FUZZ_CASES])
def test_argument_fuzz(fn_name, arg):
    """Every hostile value in every argument of every function: a result, or a TypeError or
    ValueError whose message starts with that argument's name; the other arguments unchanged."""
    positional, keywords = FUZZ_FUNCS[fn_name]
    fn = getattr(lnorm, fn_name)
    for label, value in HOSTILE.items():
        base = _base_arguments()
        snapshot = {k: v.copy() for k, v in base.items()}
        args = [base[n] for n in positional]
        kwargs = {n: base[n] for n in keywords if n in base}
        if arg in positional:
            args[positional.index(arg)] = value
        else:
            kwargs[arg] = value
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the kind and the message are what is tested
            try:
                _clean_failure(e, arg, positional + keywords + ("out", "residual_out"))
            except AssertionError as failure:
                raise AssertionError(f"{fn_name}({arg}={label}): {failure}") from e
        for k, v in base.items():
            if k != arg:
                assert np.array_equal(v, snapshot[k], equal_nan=True), f"{fn_name}({arg}={label}) modified {k}"


SETTER_CASES = [("set_num_threads", "n"), ("set_buffer_cache", "nbytes"), ("set_isa", "name")]


@pytest.mark.parametrize("fn_name,arg", SETTER_CASES, ids=[f for f, _ in SETTER_CASES])
def test_setter_fuzz(fn_name, arg, restore_settings):
    fn = getattr(lnorm, fn_name)
    for label, value in HOSTILE.items():
        try:
            fn(value)
        except Exception as e:  # noqa: BLE001
            try:
                _clean_failure(e, arg)
            except AssertionError as failure:
                raise AssertionError(f"{fn_name}({label}): {failure}") from e
        finally:
            lnorm.set_buffer_cache(512 << 20)
            lnorm.set_num_threads(2)


MODULE_ARGS = [("LayerNorm", "normalized_shape"), ("LayerNorm", "eps"), ("LayerNorm", "elementwise_affine"),
               ("LayerNorm", "bias"), ("LayerNorm", "dtype"), ("RMSNorm", "normalized_shape"), ("RMSNorm", "eps"),
               ("RMSNorm", "dtype")]


@pytest.mark.parametrize("cls,arg", MODULE_ARGS, ids=[f"{c}-{a}" for c, a in MODULE_ARGS])
def test_module_constructor_fuzz(cls, arg):
    """Module constructors: a module, or an error naming the argument (a size that overflows is a
    ValueError, one that is only too big for this machine's memory a MemoryError)."""
    for label, value in list(HOSTILE.items()) + [("overflowing", 2**62), ("huge", [2**40, 2**40])]:
        kwargs = {"normalized_shape": 8, arg: value}
        try:
            getattr(lnorm, cls)(**kwargs)
        except MemoryError:
            assert arg == "normalized_shape"
        except Exception as e:  # noqa: BLE001
            try:
                _clean_failure(e, arg)
            except AssertionError as failure:
                raise AssertionError(f"{cls}({arg}={label}): {failure}") from e


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_module_call_fuzz(cls):
    """A module's call and backward with every hostile value: a result or an error naming x or dy."""
    m = getattr(lnorm, cls)(8)
    good = np.random.default_rng(3).standard_normal((4, 8), dtype=np.float32)
    for label, value in HOSTILE.items():
        for step in ("x", "dy"):
            m(good)
            try:
                m(value) if step == "x" else m.backward(value)
            except Exception as e:  # noqa: BLE001
                try:
                    _clean_failure(e, step)
                except AssertionError as failure:
                    raise AssertionError(f"{cls} {step}={label}: {failure}") from e


# ==============================================================================================
# The errors the issue saw, one by one
# ==============================================================================================


def test_errors_name_the_argument():
    x = np.ones((2, 3), np.float32)
    raises_naming(TypeError, "x", lnorm.layer_norm, None)
    raises_naming(TypeError, "x", lnorm.rms_norm, None)
    raises_naming(TypeError, "x", lnorm.layer_norm_backward, x, None, x[:, :1], x[:, :1])
    raises_naming(TypeError, "dy", lnorm.rms_norm_backward, None, x, x[:, :1])
    raises_naming(TypeError, "residual", lnorm.add_layer_norm, x, None)
    raises_naming(ValueError, "n", lnorm.set_num_threads, 2**31)
    raises_naming(ValueError, "n", lnorm.set_num_threads, lnorm.MAX_THREADS + 1)
    raises_naming(ValueError, "eps", lnorm.layer_norm, x, eps=10**400)
    raises_naming(TypeError, "axis", lnorm.layer_norm, x, axis=np.array([1]))
    raises_naming(TypeError, "eps", lnorm.layer_norm, x, eps=np.array([1e-5]))
    raises_naming(TypeError, "return_stats", lnorm.layer_norm, x, return_stats=np.array([1, 0]))


def test_one_eps_rule_everywhere():
    """eps: any finite number >= 0, in the functions, the modules and the C++ core alike; a huge
    one gives the limit (y = bias)."""
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    b = np.arange(8, dtype=np.float32)
    for eps in (1e301, 1e308, np.finfo(np.float64).max):
        assert np.array_equal(lnorm.layer_norm(x, None, b, eps=eps), np.broadcast_to(b, x.shape))
        assert np.array_equal(lnorm.layer_norm(x, None, b[:3], eps=eps, axis=0), np.broadcast_to(b[:3, None], (3, 8)))
        assert np.array_equal(lnorm.LayerNorm(8, eps=eps)(x), np.zeros_like(x))
        assert np.array_equal(lnorm.rms_norm(x, eps=eps), np.zeros_like(x))
    for bad in (-1e-9, float("nan"), float("inf"), 10**400):
        raises_naming(ValueError, "eps", lnorm.layer_norm, x, eps=bad)
        raises_naming(ValueError, "eps", lnorm.LayerNorm, 8, eps=bad)
        raises_naming(ValueError, "eps", lnorm.add_rms_norm, x, x, eps=bad)


# ==============================================================================================
# The modules' saved state
# ==============================================================================================


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_backward_after_a_failed_forward_is_refused(cls):
    m = getattr(lnorm, cls)(8)
    m(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError):
        m(np.ones((2, 9), np.float32))
    with pytest.raises(RuntimeError, match="before a forward call"):
        m.backward(np.ones((2, 8), np.float32))


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_backward_differentiates_the_forward_that_ran(cls, rng):
    """x changed in place between forward and backward: the gradients are those of the forward that
    ran (the module keeps its own copy of x), not of the changed x."""
    x = rng.standard_normal((5, 16), dtype=np.float32)
    dy = rng.standard_normal((5, 16), dtype=np.float32)
    ref = getattr(lnorm, cls)(16)
    ref(x.copy())
    want = ref.backward(dy), ref.weight_grad
    m = getattr(lnorm, cls)(16)
    m(x)
    x *= 3
    x += 1
    got = m.backward(dy), m.weight_grad
    for g, w_ in zip(got, want):
        assert np.array_equal(g, w_)


@needs_torch
@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_modules_take_torch_tensors_like_the_functions(cls):
    """A module takes what the functional API takes (tensors that require grad, bfloat16 ones) and
    answers in kind: y and dx as torch tensors, equal to the NumPy call's bits."""
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 16, generator=g).to(dtype).requires_grad_()
        dy = torch.randn(3, 16, generator=g).to(dtype)
        m, ref = getattr(lnorm, cls)(16), getattr(lnorm, cls)(16)
        y = m(x)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype
        dx = m.backward(dy)
        assert isinstance(dx, torch.Tensor) and dx.dtype == dtype
        as_np = (lambda t: t.detach().view(torch.int16).numpy().view(BF16)) if dtype == torch.bfloat16 else (
            lambda t: t.detach().numpy())
        bits = (lambda t: t.view(torch.int16).numpy()) if dtype == torch.bfloat16 else (lambda t: t.numpy())
        want_y = ref(as_np(x))
        want_dx = ref.backward(as_np(dy))
        assert np.array_equal(bits(y), want_y.view(np.int16) if dtype == torch.bfloat16 else want_y)
        assert np.array_equal(bits(dx), want_dx.view(np.int16) if dtype == torch.bfloat16 else want_dx)
        assert isinstance(m.weight_grad, np.ndarray)


def test_layer_norm_without_bias_has_no_bias_grad(rng):
    m = lnorm.LayerNorm(8, bias=False)
    m(rng.standard_normal((3, 8), dtype=np.float32))
    m.backward(rng.standard_normal((3, 8), dtype=np.float32))
    assert m.bias is None and m.bias_grad is None and m.weight_grad is not None


def test_fused_add_returns_exactly_what_it_says(rng):
    """(y, s) without stats; (y, s, mean, rstd) and (y, s, rstd) with them: no extra statistics."""
    x, r = rng.standard_normal((3, 8), dtype=np.float32), rng.standard_normal((3, 8), dtype=np.float32)
    assert len(lnorm.add_layer_norm(x, r)) == 2 and len(lnorm.add_rms_norm(x, r)) == 2
    assert len(lnorm.add_layer_norm(x, r, return_stats=True)) == 4
    assert len(lnorm.add_rms_norm(x, r, return_stats=True)) == 3
    assert len(lnorm.layer_norm(x, return_stats=True)) == 3 and len(lnorm.rms_norm(x, return_stats=True)) == 2


# ==============================================================================================
# What really ran, from the native side
# ==============================================================================================


def _every_path(x, dy, w, b):
    """(label, call) for each native entry: the fast forward, the general one, the column layout,
    the fused add, the backward (fast and general) and a huge row."""
    _, m, r = lnorm.layer_norm(x, w, b, return_stats=True)
    return [("fast_forward", lambda: lnorm.layer_norm(x, w, b)),
            ("general_forward", lambda: lnorm.rms_norm(x, w, return_stats=True)),
            ("columns", lambda: lnorm.layer_norm(x, axis=0)),
            ("add_norm", lambda: lnorm.add_layer_norm(x, dy, w, b)),
            ("fast_backward", lambda: lnorm.layer_norm_backward(dy, x, m, r, w)),
            ("general_backward", lambda: lnorm.layer_norm_backward(dy, x, m, r, w, axis=(1,))),
            ("huge_row", lambda: lnorm.layer_norm(x, axis=(0, 1)))]


@pytest.mark.parametrize("isa", _lnorm.isa_names())
def test_the_forced_kernel_set_is_the_one_that_runs(isa, rng, restore_settings):
    """set_isa(isa): every native entry reports (from the kernels it really called, not from the
    setting) that isa's kernels ran."""
    if isa not in lnorm.available_isas():
        pytest.skip(f"{isa} is not available on this CPU or build")
    lnorm.set_isa(isa)
    x = rng.standard_normal((300, 300), dtype=np.float32)
    dy = rng.standard_normal((300, 300), dtype=np.float32)
    w, b = rng.standard_normal(300, dtype=np.float32), rng.standard_normal(300, dtype=np.float32)
    for label, call in _every_path(x, dy, w, b):
        call()
        assert _lnorm.last_call()[0] == isa, f"{label}: forced {isa}, ran {_lnorm.last_call()[0]}"


def test_two_workers_run_on_two_threads(rng, restore_settings):
    """A call with two workers' worth of work runs on two distinct threads when OpenMP is compiled
    in (tests/test_misc.py checks that it is), and one with one thread on one."""
    lnorm.set_num_threads(2)
    x = rng.standard_normal((128, 1024), dtype=np.float32)  # 4 workers' worth
    lnorm.layer_norm(x)
    _, workers, threads = _lnorm.last_call()
    assert workers == 2
    assert threads == (2 if lnorm.config()["openmp"] else 1)
    lnorm.set_num_threads(1)
    lnorm.layer_norm(x)
    assert _lnorm.last_call()[1:] == (1, 1)


# ==============================================================================================
# The environment: one rule for every variable
# ==============================================================================================


@pytest.mark.parametrize("variable,value", [("LNORM_NUM_THREADS", "abc"), ("LNORM_NUM_THREADS", "0"),
                                            ("LNORM_NUM_THREADS", "99999999999"), ("LNORM_ISA", "abc"),
                                            ("LNORM_ISA", "neon" if os.uname().machine == "x86_64" else "avx2"),
                                            ("LNORM_BUFFER_CACHE", "-5"), ("LNORM_BUFFER_CACHE", "lots")])
def test_bad_environment_values_warn_and_are_ignored(variable, value):
    """A value that cannot be used is a RuntimeWarning naming the variable, at import, and the
    default is used: the same for every LNORM_* variable."""
    program = """
        import warnings, json
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lnorm
        print(json.dumps([str(w.message) for w in caught if w.category is RuntimeWarning]))
        print(json.dumps(lnorm.config()))
    """
    clean = run_python(program)
    r = run_python(program, env=clean_env(**{variable: value}))
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    warned, config = (json.loads(line) for line in r.stdout.strip().splitlines()[-2:])
    assert any(m.startswith(f"{variable}=") for m in warned), warned
    assert config == json.loads(clean.stdout.strip().splitlines()[-1]), "the default was not used"
