"""Threads and large inputs: fork safety, huge rows split across threads, streaming stores."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lnorm
from reference import layer_norm_ref, rms_norm_ref, assert_close


def test_forked_child_after_threads_does_not_hang():
    """A child forked after lnorm's OpenMP workers ran can still call lnorm (libgomp's pool does not
    survive fork; lnorm runs such a child on its calling thread)."""
    script = textwrap.dedent("""
        import multiprocessing as mp, numpy as np, lnorm
        def work(i):
            x = np.random.default_rng(i).standard_normal((512, 4096), dtype=np.float32)
            return float(np.abs(lnorm.layer_norm(x).mean(-1)).max())
        if __name__ == "__main__":
            lnorm.set_num_threads(2)
            x = np.random.default_rng(0).standard_normal((2048, 4096), dtype=np.float32)
            for _ in range(3):
                lnorm.layer_norm(x)   # the worker pool is up now
            with mp.get_context("fork").Pool(2) as pool:
                print(max(pool.map(work, range(4))) < 1e-5)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


@pytest.mark.parametrize("shape", [(1, 300_001), (2, 131_072), (3, 65_536), (5, 70_000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_rows_match_reference_and_any_thread_count(shape, dtype, restore_threads):
    """Rows of 65536 elements and more are cut into fixed chunks whose moments are merged in order:
    the result must not depend on the thread count, forward or backward."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype)
    b = rng.standard_normal(shape[-1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    for threads in (1, 2, 3):
        lnorm.set_num_threads(threads)
        y, mean, rstd = lnorm.layer_norm(x, w, b, return_stats=True)
        grads = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
        yr, rr = lnorm.rms_norm(x, w, return_stats=True)
        rgrads = lnorm.rms_norm_backward(dy, x, rr, w)
        results.append((y, mean, rstd, *grads, yr, rr, *rgrads))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert np.array_equal(a, b_)
    assert_close(results[0][0], layer_norm_ref(x, w, b, -1, 1e-5)[0], dtype, what="huge-row y")
    assert_close(results[0][6], rms_norm_ref(x, w, -1, 1e-6)[0], dtype, what="huge-row rms y")


def test_huge_row_with_nan_is_nan_and_others_exact():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 70_000)).astype(np.float32)
    clean = lnorm.layer_norm(x)
    x[1, 12345] = np.nan
    y = lnorm.layer_norm(x)
    assert np.isnan(y[1]).all()
    assert np.array_equal(y[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_large_output_streaming_stores(offset):
    """Outputs large enough for this CPU's policy to stream (16 or 32 MiB) are written with
    non-temporal stores after an aligning head (float32 where the policy streams it): the head, the
    body and the tail must all be right, for aligned and misaligned outputs."""
    rng = np.random.default_rng(offset)
    cols = 4099
    rows = lnorm.config()["policy"]["stream_min_bytes"] // (cols * 4) + 1
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    w = rng.standard_normal(cols, dtype=np.float32)
    b = rng.standard_normal(cols, dtype=np.float32)
    assert x.nbytes >= lnorm.config()["policy"]["stream_min_bytes"]
    buf = np.empty(rows * cols + offset, np.float32)
    out = buf[offset:].reshape(rows, cols)
    assert lnorm.layer_norm(x, w, b, out=out) is out
    assert_close(out, layer_norm_ref(x, w, b, -1, 1e-5)[0], np.float32, what="streamed y")
    assert lnorm.rms_norm(x, w, out=out) is out
    assert_close(out, rms_norm_ref(x, w, -1, 1e-6)[0], np.float32, what="streamed rms y")


def test_concurrent_calls_from_python_threads(restore_threads):
    """The GIL is released around the kernels: calls from several Python threads at once, small and
    large, give the same results as one at a time."""
    import concurrent.futures as cf
    lnorm.set_num_threads(2)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + 97 * (i % 3), 768), dtype=np.float32) for i in range(48)]
    expect = [lnorm.layer_norm(x) for x in xs]
    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lnorm.layer_norm, xs))
    for a, b in zip(expect, got):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("rms", [False, True])
def test_large_fused_add_norm(in_place, rms):
    """add_layer_norm / add_rms_norm on outputs of 16 MiB and more: s is built in a row buffer and
    both outputs are streamed (or, in place, written over the inputs)."""
    rng = np.random.default_rng(int(in_place) + 2 * int(rms))
    rows, cols = 1031, 4097
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    res = rng.standard_normal((rows, cols), dtype=np.float32)
    w = rng.standard_normal(cols, dtype=np.float32)
    b = rng.standard_normal(cols, dtype=np.float32)
    s_expect = x + res
    y_expect = (rms_norm_ref(s_expect, w, -1, 1e-6) if rms else layer_norm_ref(s_expect, w, b, -1, 1e-5))[0]
    kwargs = dict(out=x, residual_out=res) if in_place else {}
    if rms:
        y, s = lnorm.add_rms_norm(x, res, w, **kwargs)
    else:
        y, s = lnorm.add_layer_norm(x, res, w, b, **kwargs)
    if in_place:
        assert y is x and s is res
    assert np.array_equal(s, s_expect)
    assert_close(y, y_expect, np.float32, what="fused y")
