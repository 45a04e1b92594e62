"""Threads (bitwise determinism), config(), environment overrides (LNORM_ISA,
LNORM_NUM_THREADS) checked in subprocesses, every ISA against the reference, `python -m lnorm`,
the CMake package with a C++ consumer, and the public names."""

import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lnorm
from checks import possible_isas
from reference import (SIZES, assert_close, dx_scale, layer_norm_backward_ref, layer_norm_ref,
                       norm_axes, param_shape, rand_param, rand_x, rms_norm_backward_ref,
                       rms_norm_ref)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
PUBLIC = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward", "add_layer_norm",
          "add_rms_norm", "LayerNorm", "RMSNorm", "set_num_threads", "get_num_threads", "config"]
# The kernel set names API.md promises (config()["isa"], LNORM_ISA, active_isa()); lnorm may add more.
ISAS = ("scalar", "avx2", "avx512", "neon")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNORM_")}
    env.update(extra)
    return env


def run_python(code, env=None, timeout=120, args=()):
    return subprocess.run([sys.executable, "-c", code, *args], env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=TESTS_DIR)


# ----------------------------------------------------------------------------------------------
# Public names, config


def test_public_names():
    for name in PUBLIC:
        obj = getattr(lnorm, name)
        assert callable(obj), name
        assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
    assert set(PUBLIC) <= set(getattr(lnorm, "__all__", PUBLIC))


def test_kernel_set_names_come_from_the_native_table():
    """lnorm.set_isa, available_isas() and the LNORM_ISA check read the kernel sets from the native
    table (lnorm::isa_table, through _lnorm.isa_names()): every name API.md promises is there,
    scalar first, and available_isas() keeps the table's order (worst first)."""
    from lnorm import _config, _lnorm
    names = tuple(_lnorm.isa_names())
    assert _config.ISAS == names
    assert set(ISAS) <= set(names) and names[0] == "scalar" and len(set(names)) == len(names)
    available = lnorm.available_isas()
    assert available == [n for n in names if n in available] and available[0] == "scalar"
    with pytest.raises(ValueError, match=re.escape(f"isa: expected {', '.join(names[:-1])} or {names[-1]}")):
        _lnorm.isa_compiled("sse2")


def test_config():
    c = lnorm.config()
    assert isinstance(c, dict)
    assert isinstance(c["version"], str) and c["version"]
    assert c["isa"] in ISAS
    assert isinstance(c["openmp"], bool)
    assert isinstance(c["cuda_compiled"], bool)
    assert isinstance(c["cuda_devices"], int) and not isinstance(c["cuda_devices"], bool)
    assert c["cuda_devices"] >= 0
    if not c["cuda_compiled"]:
        assert c["cuda_devices"] == 0
    if hasattr(lnorm, "__version__"):
        assert c["version"] == lnorm.__version__


def _built_by_gcc_or_clang(path):
    """Whether the ELF file at `path` says (in its .comment notes) that GCC or Clang built it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[:4] == b"\x7fELF" and (b"GCC: (" in data or b"clang version" in data)


def test_openmp_is_compiled_in():
    """lnorm's threads are OpenMP's: a Linux build by GCC or Clang without it (no libgomp or libomp
    found, or LNORM_OPENMP=OFF) would run every call on one thread, and the thread tests, which
    compare 1 and 2 threads, would still pass. LNORM_EXPECT_OPENMP=0 (or 1) states what to expect."""
    want = os.environ.get("LNORM_EXPECT_OPENMP")
    if want:
        assert want in ("0", "1"), f"LNORM_EXPECT_OPENMP={want!r}: expected 0 or 1"
        assert lnorm.config()["openmp"] is (want == "1"), f"LNORM_EXPECT_OPENMP={want}"
        return
    module = lnorm._lnorm.__file__
    if not sys.platform.startswith("linux") or not _built_by_gcc_or_clang(module):
        pytest.skip(f"not a Linux build by GCC or Clang ({sys.platform}, {os.path.basename(module)}); "
                    "set LNORM_EXPECT_OPENMP to check")
    assert lnorm.config()["openmp"] is True, (
        "this Linux GCC/Clang build has no OpenMP (set LNORM_EXPECT_OPENMP=0 if that is meant)")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _default_isa():
    """lnorm's ISA with no LNORM_ISA in the environment (the test process may have one)."""
    r = run_python("import lnorm; print(lnorm.config()['isa'])")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_default_isa_is_the_best_the_cpu_has():
    flags = _cpu_flags()
    if flags is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("needs /proc/cpuinfo on x86-64")
    isa = _default_isa()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        assert isa == "avx512"
    elif {"avx2", "fma"} <= flags:
        assert isa == "avx2"
    else:
        assert isa == "scalar"


# What the CPU can run, read from /proc/cpuinfo without lnorm: x86-64 flags (AVX2 kernels also use
# FMA, F16C and BMI2; AVX-512 ones need F, DQ, BW and VL on top), NEON on every aarch64.
AVX2_FLAGS = {"avx", "avx2", "fma", "f16c", "bmi2"}
AVX512_FLAGS = AVX2_FLAGS | {"avx512f", "avx512dq", "avx512bw", "avx512vl"}


def _cpu_kernel_sets():
    """The kernel sets this CPU runs, by /proc/cpuinfo; None where that cannot be told."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return {"scalar", "neon"}
    if machine not in ("x86_64", "amd64"):
        return None
    flags = _cpu_flags()
    if flags is None:
        return None
    return {"scalar"} | ({"avx2"} if AVX2_FLAGS <= flags else set()) | (
        {"avx512"} if AVX512_FLAGS <= flags else set())


def test_every_kernel_set_the_cpu_runs_is_available():
    """The tests that run on every kernel set skip those lnorm.available_isas() leaves out; so a
    kernel set this CPU can run but the build lost (or mis-detects) would go untested with nothing
    but a skip line. Here it fails instead."""
    expected = _cpu_kernel_sets()
    if expected is None:
        pytest.skip(f"cannot tell the CPU's features on {platform.machine()} without /proc/cpuinfo")
    available = lnorm.available_isas()
    missing = sorted(expected - set(available))
    assert not missing, (f"the CPU can run {sorted(expected)} but lnorm.available_isas() is "
                         f"{available}: {missing} would go untested")
    assert set(available) <= set(possible_isas())


def test_available_isas_as_the_environment_expects():
    """LNORM_EXPECT_ISAS (a comma list, e.g. "scalar,avx2,avx512"), set by CI, names exactly the
    kernel sets this runner must test: a runner without AVX-512 fails here instead of skipping."""
    want = os.environ.get("LNORM_EXPECT_ISAS")
    if not want:
        pytest.skip("LNORM_EXPECT_ISAS is not set")
    expected = sorted(i.strip() for i in want.split(",") if i.strip())
    assert sorted(lnorm.available_isas()) == expected, (
        f"LNORM_EXPECT_ISAS={want!r} but lnorm.available_isas() is {lnorm.available_isas()}")


# ----------------------------------------------------------------------------------------------
# Threads


def test_set_get_num_threads(restore_threads):
    for n in (1, 2, 3, 1):
        lnorm.set_num_threads(n)
        assert lnorm.get_num_threads() == n
    lnorm.set_num_threads(np.int64(2))
    assert lnorm.get_num_threads() == 2
    assert isinstance(lnorm.get_num_threads(), int)


def test_set_num_threads_errors(restore_threads):
    lnorm.set_num_threads(2)
    for bad in (0, -1, -8):
        with pytest.raises(ValueError):
            lnorm.set_num_threads(bad)
    for bad in (1.5, "2", None, 2.0):
        with pytest.raises(TypeError):
            lnorm.set_num_threads(bad)
    assert lnorm.get_num_threads() == 2, "a rejected call changed the thread count"


def _all_outputs(x, dy, w, b, axis):
    y, mean, rstd = lnorm.layer_norm(x, w, b, axis=axis, return_stats=True)
    dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w, axis=axis)
    yr, rr = lnorm.rms_norm(x, w, axis=axis, return_stats=True)
    dxr, dwr = lnorm.rms_norm_backward(dy, x, rr, w, axis=axis)
    ya, s = lnorm.add_layer_norm(x, dy, w, b, axis=axis)
    yb, _ = lnorm.add_rms_norm(x, dy, w, axis=axis)
    return dict(y=y, mean=mean, rstd=rstd, dx=dx, dw=dw, db=db, yr=yr, rr=rr, dxr=dxr, dwr=dwr,
                ya=ya, s=s, yb=yb)


# lnorm gives each worker at least this many elements (kMinElementsPerThread in
# cpp/include/lnorm/lnorm.hpp): a smaller call runs on one thread whatever the thread count.
MIN_ELEMENTS_PER_THREAD = 32768


def _assert_two_workers_of_work(shape, axis):
    """At 2 threads, every call of _all_outputs on this shape has work for 2 workers: at least
    2 * MIN_ELEMENTS_PER_THREAD elements and at least 2 rows (or rows cut in chunks) to share.
    Smaller, a "2 threads" case compares the one-thread code with itself."""
    axes = norm_axes(len(shape), axis)
    cols = int(np.prod([shape[a] for a in axes]))
    rows = int(np.prod(shape)) // cols
    assert rows * cols >= 2 * MIN_ELEMENTS_PER_THREAD, f"{shape}, axis {axis}: one worker's work"
    assert rows >= 2 or cols >= 65536, f"{shape}, axis {axis}: one row, too short to be cut in chunks"


def test_min_elements_per_thread_matches_the_header():
    header = os.path.join(REPO, "cpp", "include", "lnorm", "lnorm.hpp")
    if not os.path.isfile(header):
        pytest.skip("no source checkout")
    with open(header) as f:
        m = re.search(r"kMinElementsPerThread\s*=\s*(\d+)", f.read())
    assert m and int(m.group(1)) == MIN_ELEMENTS_PER_THREAD, "the thread tests' sizes assume 32768"


# Each case has work for 2 workers at 2 threads, in every operation (see _assert_two_workers_of_work).
THREAD_CASES = [((1000, 4099), -1, np.float32), ((3, 70000), -1, np.float32),
                ((3, 70000), -1, np.float64), ((200, 1025), -1, np.float64),
                ((16, 129, 40), 1, np.float32), ((4, 3, 6, 1025), (0, 2), np.float32),
                ((6, 5, 2200), (0, 2), np.float64)]


@pytest.mark.parametrize("shape,axis,dtype", THREAD_CASES,
                         ids=[f"{s}-axis{a}-{np.dtype(d).name}".replace(" ", "")
                              for s, a, d in THREAD_CASES])
def test_threads_bitwise_identical(shape, axis, dtype, restore_threads):
    """1, 2 and 3 threads give bit-identical forward, stats and backward (dweight/dbias too)."""
    _assert_two_workers_of_work(shape, axis)
    rng = np.random.default_rng([len(shape), shape[0], 90])
    x = rand_x(rng, shape, dtype)
    dy = rand_x(rng, shape, dtype)
    pshape = param_shape(shape, norm_axes(len(shape), axis))
    w = rand_param(rng, pshape, dtype)
    b = rand_param(rng, pshape, dtype, center=0.0)
    lnorm.set_num_threads(1)
    ref = _all_outputs(x, dy, w, b, axis)
    for n in (2, 3, 2):  # 2 twice: repeated calls must agree too (no races)
        lnorm.set_num_threads(n)
        got = _all_outputs(x, dy, w, b, axis)
        for k, v in ref.items():
            assert np.array_equal(got[k], v), f"{k} differs between 1 and {n} threads"
    # and they are right
    sl = (slice(0, 50),) if shape[0] > 50 and axis == -1 else (slice(None),)
    assert_close(ref["y"][sl], layer_norm_ref(x[sl], w, b, axis)[0], dtype)
    assert_close(ref["yr"][sl], rms_norm_ref(x[sl], w, axis)[0], dtype)


def test_threads_many_small_rows(restore_threads):
    """Many rows shorter than a vector, where a partition by rows matters most: 22003 rows of 3,
    two workers' worth of elements at 2 threads, cut at an odd row."""
    rng = np.random.default_rng(91)
    _assert_two_workers_of_work((22003, 3), -1)
    x = rand_x(rng, (22003, 3), np.float32)
    dy = rand_x(rng, (22003, 3), np.float32)
    w = rand_param(rng, (3,), np.float32)
    b = rand_param(rng, (3,), np.float32, center=0.0)
    lnorm.set_num_threads(1)
    ref = _all_outputs(x, dy, w, b, -1)
    lnorm.set_num_threads(2)
    got = _all_outputs(x, dy, w, b, -1)
    for k, v in ref.items():
        assert np.array_equal(got[k], v), f"{k} differs between 1 and 2 threads"
    _, mean, rstd = layer_norm_ref(x)
    dx_r, dw_r, db_r = layer_norm_backward_ref(dy, x, ref["mean"], ref["rstd"], w)
    assert_close(ref["dx"], dx_r, np.float32)
    assert_close(ref["dw"], dw_r, np.float32, scale=float(np.abs(dy).sum(0).max()) * 3)


# ----------------------------------------------------------------------------------------------
# Environment, in subprocesses


def test_env_num_threads():
    for n in (1, 2):
        r = run_python("import lnorm; print(lnorm.get_num_threads())",
                       env=clean_env(LNORM_NUM_THREADS=str(n)))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == str(n)


ISA_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import lnorm
    inp = np.load(sys.argv[1])
    res = {}
    for key in inp.files:
        if not key.startswith("x_"):
            continue
        tag = key[2:]
        x, dy, w, b = inp["x_" + tag], inp["dy_" + tag], inp["w_" + tag], inp["b_" + tag]
        if tag.endswith("_strided"):
            x, dy = x[:, ::-3], dy[:, ::2]
        y, mean, rstd = lnorm.layer_norm(x, w, b, eps=1e-5, return_stats=True)
        dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
        yr, rr = lnorm.rms_norm(x, w, eps=1e-6, return_stats=True)
        dxr, dwr = lnorm.rms_norm_backward(dy, x, rr, w)
        for name, v in dict(y=y, mean=mean, rstd=rstd, dx=dx, dw=dw, db=db, yr=yr, rr=rr,
                            dxr=dxr, dwr=dwr).items():
            res[name + "_" + tag] = v
    np.savez(sys.argv[2], **res)
    print(lnorm.config()["isa"])
""")


def _isa_inputs(path):
    rng = np.random.default_rng(92)
    arrays = {}
    for dtype in (np.float32, np.float64):
        dn = np.dtype(dtype).name
        for n in SIZES:
            tag = f"{dn}_{n}"
            arrays["x_" + tag] = rand_x(rng, (3, n), dtype)
            arrays["dy_" + tag] = rand_x(rng, (3, n), dtype)
            arrays["w_" + tag] = rand_param(rng, (n,), dtype)
            arrays["b_" + tag] = rand_param(rng, (n,), dtype, center=0.0)
        tag = f"{dn}_77_strided"
        arrays["x_" + tag] = rand_x(rng, (4, 231), dtype)
        arrays["dy_" + tag] = rand_x(rng, (4, 154), dtype)
        arrays["w_" + tag] = rand_param(rng, (77,), dtype)
        arrays["b_" + tag] = rand_param(rng, (77,), dtype, center=0.0)
        # large-mean rows
        tag = f"{dn}_1023_largemean"
        arrays["x_" + tag] = (rng.choice([-1, 1], (4, 1)) * 1e5
                              + rng.standard_normal((4, 1023))).astype(dtype)
        arrays["dy_" + tag] = rand_x(rng, (4, 1023), dtype)
        arrays["w_" + tag] = rand_param(rng, (1023,), dtype)
        arrays["b_" + tag] = rand_param(rng, (1023,), dtype, center=0.0)
    np.savez(path, **arrays)
    return arrays


def _supported_isas():
    if hasattr(lnorm, "available_isas"):
        return [i for i in lnorm.available_isas() if i in ISAS]
    best = _default_isa()
    order = ("scalar", "neon") if best == "neon" else ("scalar", "avx2", "avx512")
    return list(order[:order.index(best) + 1]) if best in order else ["scalar"]


@pytest.mark.parametrize("isa", possible_isas())
def test_forced_isa_matches_reference(isa, tmp_path):
    """LNORM_ISA forces each kernel set the CPU supports; config() reports it and the results of
    forward, stats and backward over all sizes (and strided/large-mean rows) match the reference."""
    if isa not in _supported_isas() and isa != "scalar":
        pytest.skip(f"{isa} not available on this CPU/build")
    inputs = _isa_inputs(tmp_path / "in.npz")
    r = run_python(ISA_SCRIPT, env=clean_env(LNORM_ISA=isa),
                   args=(str(tmp_path / "in.npz"), str(tmp_path / "out.npz")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == isa, f"LNORM_ISA={isa} but config says {r.stdout}"
    out = np.load(tmp_path / "out.npz")
    for key in inputs:
        if not key.startswith("x_"):
            continue
        tag = key[2:]
        dtype = inputs[key].dtype
        x, dy = inputs["x_" + tag], inputs["dy_" + tag]
        if tag.endswith("_strided"):
            x, dy = x[:, ::-3], dy[:, ::2]
        w, b = inputs["w_" + tag], inputs["b_" + tag]
        g = {k[:-len(tag) - 1]: out[k] for k in out.files if k.endswith("_" + tag)}
        try:
            y_r, mean_r, rstd_r = layer_norm_ref(x, w, b, -1, 1e-5)
            tol = None
            if tag.endswith("largemean"):  # |mean| = 1e5 * spread (see test_reference)
                tol = 1e-4 if dtype == np.float32 else 64 * np.finfo(np.float64).eps * 1e5
            assert_close(g["y"], y_r, dtype, tol=tol, what="y")
            assert_close(g["mean"], mean_r, dtype, scale=float(np.abs(x).max()), what="mean")
            assert_close(g["rstd"], rstd_r, dtype, tol=tol, scale=0.0, what="rstd")
            dx_r, dw_r, db_r = layer_norm_backward_ref(dy, x, g["mean"], g["rstd"], w)
            assert_close(g["dx"], dx_r, dtype, what="dx",
                         scale=dx_scale(dy, x, g["rstd"], w, -1, g["mean"]))
            sc = float(np.abs(dy).sum(0).max()) * 4
            assert_close(g["dw"], dw_r, dtype, scale=sc, what="dweight")
            assert_close(g["db"], db_r, dtype, scale=sc, what="dbias")
            yr_r, rr_r = rms_norm_ref(x, w, -1, 1e-6)
            assert_close(g["yr"], yr_r, dtype, what="rms y")
            assert_close(g["rr"], rr_r, dtype, scale=0.0, what="rms rstd")
            dxr_r, dwr_r = rms_norm_backward_ref(dy, x, g["rr"], w)
            assert_close(g["dxr"], dxr_r, dtype, scale=dx_scale(dy, x, g["rr"], w),
                         what="rms dx")
            assert_close(g["dwr"], dwr_r, dtype, scale=sc, what="rms dweight")
        except AssertionError as e:
            raise AssertionError(f"LNORM_ISA={isa}, case {tag}: {e}") from e


def test_forced_scalar_agrees_with_default(tmp_path):
    """The default kernels agree with the scalar oracle to the dtype's tolerance."""
    inputs = _isa_inputs(tmp_path / "in.npz")
    r = run_python(ISA_SCRIPT, env=clean_env(LNORM_ISA="scalar"),
                   args=(str(tmp_path / "in.npz"), str(tmp_path / "scalar.npz")))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_python(ISA_SCRIPT, env=clean_env(),
                   args=(str(tmp_path / "in.npz"), str(tmp_path / "best.npz")))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = np.load(tmp_path / "scalar.npz"), np.load(tmp_path / "best.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if "largemean" in k:
            continue
        scale = float(np.abs(a[k]).max()) * (4 if k.startswith(("dw", "db")) else 1)
        tag = k.split("_", 1)[1]
        x, dy, w = inputs["x_" + tag], inputs["dy_" + tag], inputs["w_" + tag]
        if tag.endswith("_strided"):
            x, dy = x[:, ::-3], dy[:, ::2]
        if k.startswith("mean_"):
            scale = float(np.abs(x).max())
        elif k.startswith("dx_"):
            scale = dx_scale(dy, x, a["rstd_" + tag], w, -1, a["mean_" + tag])
        elif k.startswith("dxr_"):
            scale = dx_scale(dy, x, a["rr_" + tag], w)
        assert_close(b[k], a[k], a[k].dtype, scale=scale or 1.0, what=k)


# ----------------------------------------------------------------------------------------------
# python -m lnorm


def test_main_self_check():
    r = subprocess.run([sys.executable, "-m", "lnorm"], capture_output=True, text=True,
                       timeout=120, env=clean_env(), cwd=TESTS_DIR)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.lower()
    assert "self-check" in out or "self check" in out, r.stdout[-2000:]
    assert "ok" in out or "pass" in out, r.stdout[-2000:]
    assert "group_norm/instance_norm/batch_norm (nchw and nhwc) against a float64 reference: ok" in out, r.stdout[-2000:]
    # The timing table: lnorm against the fastest native copy of the same bytes, the CPU named.
    from lnorm._limit import cpu_info

    assert "/ limit" in r.stdout and "copyto GB/s" in r.stdout, r.stdout[-2000:]
    assert cpu_info()["model name"] in r.stdout, r.stdout[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.strip().startswith("32x1024")]
    assert len(rows) == 1 and rows[0][4] in ("(plain)", "(streaming)", "(memcpy)"), r.stdout[-2000:]


def _cmakedir():
    r = subprocess.run([sys.executable, "-m", "lnorm", "--cmakedir"], capture_output=True,
                       text=True, timeout=120, env=clean_env(), cwd=TESTS_DIR)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


def test_main_cmakedir():
    d = _cmakedir()
    assert os.path.isdir(d), d
    assert os.path.isfile(os.path.join(d, "lnormConfig.cmake")), os.listdir(d)


# ----------------------------------------------------------------------------------------------
# C++ consumer: find_package(lnorm) and add_subdirectory, plain -O2


CONSUMER_CPP = textwrap.dedent("""
    // Reads rows x cols floats, gamma, beta; writes layer_norm (affine and plain) and rms_norm.
    #include <lnorm/lnorm.hpp>
    #include <cstdio>
    #include <cstdlib>
    #include <vector>
    int main(int argc, char** argv) {
      if (argc != 6) return 2;
      long rows = std::atol(argv[3]), cols = std::atol(argv[4]);
      float eps = static_cast<float>(std::atof(argv[5]));
      std::vector<float> x(rows * cols), g(cols), b(cols), y(3 * rows * cols);
      FILE* f = std::fopen(argv[1], "rb");
      if (!f) return 3;
      size_t got = std::fread(x.data(), 4, x.size(), f) + std::fread(g.data(), 4, cols, f)
                 + std::fread(b.data(), 4, cols, f);
      std::fclose(f);
      if (got != x.size() + 2 * cols) return 4;
      lnorm::layer_norm(x.data(), y.data(), rows, cols, g.data(), b.data(), eps);
      lnorm::layer_norm(x.data(), y.data() + rows * cols, rows, cols, nullptr, nullptr, eps);
      lnorm::rms_norm(x.data(), y.data() + 2 * rows * cols, rows, cols, g.data(), eps);
      f = std::fopen(argv[2], "wb");
      std::fwrite(y.data(), 4, y.size(), f);
      std::fclose(f);
      std::printf("%s\\n", lnorm::active_isa());
      return 0;
    }
""")


def _build_and_check_consumer(tmp_path, cmake_lists, cmake_args):
    if shutil.which("cmake") is None or (shutil.which("c++") is None
                                         and shutil.which("g++") is None):
        pytest.skip("needs cmake and a C++ compiler")
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(cmake_lists)
    (src / "main.cpp").write_text(CONSUMER_CPP)
    build = tmp_path / "build"
    r = subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=",
                        "-DCMAKE_CXX_FLAGS=-O2", *cmake_args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exe = build / "app"
    rng = np.random.default_rng(93)
    rows, cols, eps = 5, 1027, 1e-5
    x = rand_x(rng, (rows, cols), np.float32)
    x[1] += np.float32(3e4)  # a large-mean row
    gam = rand_param(rng, (cols,), np.float32)
    bet = rand_param(rng, (cols,), np.float32, center=0.0)
    with open(tmp_path / "in.bin", "wb") as f:
        f.write(x.tobytes() + gam.tobytes() + bet.tobytes())
    r = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), str(rows),
                        str(cols), str(eps)], capture_output=True, text=True, timeout=60,
                       env=clean_env())
    assert r.returncode == 0, r.stderr
    y = np.fromfile(tmp_path / "out.bin", np.float32).reshape(3, rows, cols)
    assert_close(y[0], layer_norm_ref(x, gam, bet, -1, eps)[0], np.float32, what="C++ layer_norm")
    assert_close(y[1], layer_norm_ref(x, None, None, -1, eps)[0], np.float32, what="C++ plain")
    assert_close(y[2], rms_norm_ref(x, gam, -1, eps)[0], np.float32, what="C++ rms_norm")
    isa = r.stdout.strip()
    assert isa in ISAS
    assert isa == _default_isa(), "a plain -O2 consumer does not run the best kernels"


@pytest.mark.slow
def test_cpp_consumer_find_package(tmp_path):
    cmakedir = _cmakedir()
    _build_and_check_consumer(tmp_path, textwrap.dedent("""
        cmake_minimum_required(VERSION 3.18)
        project(consumer LANGUAGES CXX)
        find_package(lnorm CONFIG REQUIRED)
        add_executable(app main.cpp)
        target_link_libraries(app PRIVATE lnorm::lnorm)
    """), [f"-Dlnorm_DIR={cmakedir}"])


@pytest.mark.slow
def test_cpp_consumer_add_subdirectory(tmp_path):
    if not os.path.isfile(os.path.join(REPO, "CMakeLists.txt")):
        pytest.skip("no source checkout")
    repo = REPO.replace("\\", "/")
    _build_and_check_consumer(tmp_path, textwrap.dedent(f"""
        cmake_minimum_required(VERSION 3.18)
        project(consumer LANGUAGES CXX)
        add_subdirectory("{repo}" lnorm_build)
        add_executable(app main.cpp)
        target_link_libraries(app PRIVATE lnorm::lnorm)
    """), [])
