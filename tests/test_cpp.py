"""The C++ side from pytest: builds cpp/tests with CMake (g++ and clang++) and runs ctest; builds the
C++ example (examples/cpp, an engine's "add & norm" on its own thread pool) with add_subdirectory and
with find_package, and runs it; builds the C++ tests and the example with AddressSanitizer and
UndefinedBehaviorSanitizer and runs them; runs the C++ tests for aarch64 under qemu-aarch64 (the NEON
kernel set, .ci/cross.sh); and runs the C++ tests and a slice of the Python tests under qemu-x86_64
with a CPU that has no AVX, where dispatch must pick the scalar set and nothing may die of SIGILL.

Every test here builds or emulates, so all are marked slow; each skips, saying why, where its tools
are missing. Needs: cmake (ninja optional), g++ (with its libasan and libubsan) and/or clang++,
g++-aarch64-linux-gnu, qemu-user.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)
IS_X86_64_LINUX = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
# An x86-64 CPU model without AVX (the emulated CPUID says so): the portable build's CPU.
OLD_CPU = "Nehalem"
# The C++ test program at -O1: a third less compile time than -O2 (the kernels' -O2/-O3 code runs in
# the Python tests; the header checks and the consumer are built at -O2 whatever this says).
TEST_OPT = "-O1"


def run(cmd, timeout=900, env=None, cwd=ROOT):
    """Runs cmd; fails the test with the output's tail if it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{output[-6000:]}"
    return output


def clean_env(**extra):
    """The environment without a forced kernel set (the tests check the default)."""
    env = {k: v for k, v in os.environ.items() if k != "LNORM_ISA"}
    env.update(extra)
    return env


def expected_isa():
    """The kernel set dispatch should pick on this machine, from the kernel's CPU flags."""
    machine = platform.machine()
    if machine in ("aarch64", "arm64"):
        return "neon"
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(re.search(r"^flags\s*:(.*)$", f.read(), re.MULTILINE).group(1).split())
    except (OSError, AttributeError):
        pytest.skip("no /proc/cpuinfo flags to compare dispatch with")
    avx2 = {"avx", "avx2", "fma", "f16c", "bmi2"}
    if avx2 | {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags:
        return "avx512"
    return "avx2" if avx2 <= flags else "scalar"


def check_summary(output, isa_line):
    """The C++ test program's summary: some checks, none failed, on the expected kernel sets."""
    assert isa_line in output, f"expected {isa_line!r} in:\n{output[-3000:]}"
    counts = SUMMARY.findall(output)
    assert counts, f"no summary line in:\n{output[-3000:]}"
    passed, failed = map(int, counts[-1])
    assert failed == 0 and passed > 1000, counts[-1]


def cmake_build(compiler, build_dir, *defines):
    """Configures and builds cpp/tests (lnorm_tests, header checks, consumer) with `compiler`."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    flags = ["-DCMAKE_BUILD_TYPE=None", f"-DCMAKE_CXX_FLAGS={TEST_OPT}"]
    run(["cmake", "-S", ROOT, "-B", str(build_dir), *generator, f"-DCMAKE_CXX_COMPILER={compiler}",
         "-DLNORM_TESTS=ON", "-DLNORM_PYTHON=OFF", *flags, *defines], timeout=300)
    run(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2)], timeout=1200)
    return build_dir


def need(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")


@pytest.fixture(scope="session")
def gxx_build(tmp_path_factory):
    """cpp/tests built once with g++: run natively, and under the old-CPU emulator."""
    need("cmake", "g++")
    return cmake_build("g++", tmp_path_factory.mktemp("cpp-g++"))


# Tests that use the session's g++ build run on one pytest-xdist worker (--dist loadgroup), which
# builds it once.
same_build = pytest.mark.xdist_group("gxx_build")


@pytest.mark.slow
@pytest.mark.parametrize("compiler", [pytest.param("g++", marks=same_build), "clang++"])
def test_cpp_tests_pass(compiler, request, tmp_path):
    """ctest: every kernel set of this CPU against the oracle, header alone (with and without
    exceptions, -Werror), and a plain -O2 consumer that runs the CPU's best kernel set."""
    need("cmake", compiler)
    # clang++ builds the float32 suite only (the templates are the same for every type; the g++
    # build runs all four), which keeps CI within its time.
    build = (request.getfixturevalue("gxx_build") if compiler == "g++"
             else cmake_build(compiler, tmp_path, "-DLNORM_TEST_SUITE_TYPES=float32"))
    # The test program itself runs below, for its summary line; ctest runs the rest.
    run(["ctest", "--output-on-failure", "-E", "^lnorm_tests$"], cwd=str(build), env=clean_env(), timeout=600)
    tests = os.path.join(build, "cpp", "tests")
    # The cases over 16 MiB (streaming stores) once, in the g++ build.
    env = clean_env() if compiler == "g++" else clean_env(LNORM_TEST_LARGE="0")
    check_summary(run([os.path.join(tests, "lnorm_tests")], env=env), "testing scalar")
    consumer = run([os.path.join(tests, "lnorm_consumer")], env=clean_env()).strip()
    assert consumer == expected_isa(), f"a plain -O2 consumer runs {consumer!r}"


# ---- the C++ example: an inference engine's "add & norm" on its own thread pool ----------------------

EXAMPLE = os.path.join(ROOT, "examples", "cpp")
EXAMPLE_CHECK = re.compile(r"^(float32|bfloat16) .* same bits: ok$", re.MULTILINE)


def need_cxx():
    """cmake, and a C++ compiler for CMake to pick (CXX, else c++, g++ or clang++)."""
    need("cmake")
    cxx = os.environ.get("CXX")
    if not (shutil.which(cxx) if cxx else any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        pytest.skip("needs a C++ compiler (CXX, c++, g++ or clang++)")


def build_example(build_dir, *defines, flags="-O2", targets=()):
    """Configures examples/cpp (plain `flags`, no -m flags) and builds it (and `targets`); returns
    the program's path."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", EXAMPLE, "-B", str(build_dir), *generator, "-DCMAKE_BUILD_TYPE=None",
         f"-DCMAKE_CXX_FLAGS={flags}", *defines], timeout=300)
    target_args = ["--target", "add_norm_engine", *targets] if targets else []
    run(["cmake", "--build", str(build_dir), "--parallel", "2", *target_args], timeout=1200)
    return os.path.join(str(build_dir), "add_norm_engine")


def check_example(output, isa, threads=2):
    """The example's report: the kernel set in use, four passing checks, the verdict."""
    lines = output.splitlines()
    assert lines and re.fullmatch(rf"lnorm \S+, kernel set {isa}, engine pool of {threads} threads", lines[0]), output[-3000:]
    assert len(EXAMPLE_CHECK.findall(output)) == 4, output[-3000:]
    assert lines[-1] == "self-check passed", output[-3000:]


@pytest.mark.slow
def test_example_add_subdirectory(tmp_path):
    """examples/cpp with add_subdirectory of this checkout, plain -O2: it runs the CPU's best kernel
    set (LNORM_ISA=scalar: the scalar one, on odd sizes and 3 threads) and passes its self-check."""
    need_cxx()
    program = build_example(tmp_path, f"-DLNORM_SOURCE_DIR={ROOT}")
    check_example(run([program], env=clean_env()), expected_isa())
    odd = [program, "--threads", "3", "--tokens", "37", "--hidden", "4099"]
    check_example(run(odd, env=clean_env(LNORM_ISA="scalar")), "scalar", threads=3)


@pytest.mark.slow
def test_example_find_package(tmp_path):
    """examples/cpp with find_package(lnorm CONFIG REQUIRED) of this checkout, installed by CMake
    alone (no Python) under a prefix."""
    need_cxx()
    lnorm_build, prefix = tmp_path / "lnorm-build", tmp_path / "prefix"
    run(["cmake", "-S", ROOT, "-B", str(lnorm_build), "-DLNORM_TESTS=OFF", "-DLNORM_PYTHON=OFF"], timeout=300)
    run(["cmake", "--install", str(lnorm_build), "--prefix", str(prefix)], timeout=300)
    program = build_example(tmp_path / "example", f"-DCMAKE_PREFIX_PATH={prefix}")
    check_example(run([program], env=clean_env()), expected_isa())


def same_files(want_dir, got_dir):
    """Whether every file under want_dir is also under got_dir, with the same bytes."""
    for folder, _, files in os.walk(want_dir):
        for name in files:
            want = os.path.join(folder, name)
            got = os.path.join(got_dir, os.path.relpath(want, want_dir))
            if not os.path.isfile(got):
                return False
            with open(want, "rb") as a, open(got, "rb") as b:
                if a.read() != b.read():
                    return False
    return True


@pytest.mark.slow
def test_example_find_package_pip(tmp_path):
    """The README's way: -Dlnorm_DIR="$(python -m lnorm --cmakedir)", the installed Python package
    (when it carries this checkout's headers: after `pip install .`)."""
    need_cxx()
    proc = subprocess.run([sys.executable, "-m", "lnorm", "--cmakedir"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip("lnorm is not installed as a Python package")
    cmakedir = proc.stdout.strip()
    installed = os.path.normpath(os.path.join(cmakedir, os.pardir, os.pardir, os.pardir, "include", "lnorm"))
    if not same_files(os.path.join(ROOT, "cpp", "include", "lnorm"), installed):
        pytest.skip("the installed lnorm's headers are not this checkout's (pip install . first)")
    program = build_example(tmp_path, f"-Dlnorm_DIR={cmakedir}")
    check_example(run([program], env=clean_env()), expected_isa())


# ---- sanitizers --------------------------------------------------------------------------------------

SANITIZE = "-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# The suites the sanitizer build compiles: float32, every kernel set (sanitizers make each suite twice
# as slow to compile, and CI has 30 minutes on 2 cores; the 2-byte kernels' tails and buffers run
# under the sanitizers in lnorm_api_tests and lnorm_hostile_tests). LNORM_SANITIZER_SUITES="all" (or a
# ;-list) builds others; LNORM_SANITIZER_CXX picks the compiler (g++ by default; clang++ where its
# sanitizer runtime is installed).
SANITIZER_SUITES = "float32"
ALL_SUITES = "float64;float16;bfloat16;float32"
TESTED_ISAS = {"scalar": "scalar", "avx2": "scalar avx2", "avx512": "scalar avx2 avx512", "neon": "scalar neon"}


def sanitizer_env(compiler, tmp_path):
    """ASAN_OPTIONS and UBSAN_OPTIONS that make any report fatal, with leak checks where
    LeakSanitizer works here (it needs ptrace, which some containers deny): a program that leaks on
    purpose must be caught. Skips if `compiler` cannot build with the sanitizers."""
    source, program = tmp_path / "leak.cpp", tmp_path / "leak"
    source.write_text("#include <cstdlib>\nint main() { void* volatile p = std::malloc(64); p = nullptr; return 0; }\n")
    built = subprocess.run([compiler, *SANITIZE.split(), str(source), "-o", str(program)], capture_output=True,
                           text=True, timeout=300)
    if built.returncode != 0:
        pytest.skip(f"{compiler} cannot build with -fsanitize=address,undefined here: {built.stderr[-500:]}")
    probe = subprocess.run([str(program)], env=clean_env(ASAN_OPTIONS="detect_leaks=1"), capture_output=True,
                           text=True, timeout=120)
    leaks = int(probe.returncode != 0 and "detected memory leaks" in probe.stderr)
    asan = f"halt_on_error=1:abort_on_error=0:detect_leaks={leaks}:detect_stack_use_after_return=1:check_initialization_order=1"
    return clean_env(ASAN_OPTIONS=asan, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", LNORM_NUM_THREADS="2")


@pytest.mark.slow
def test_cpp_under_sanitizers(tmp_path):
    """The C++ tests (every kernel set of this CPU; the float32 suite; the workspace
    and allocation tests, whose fused add streams 16 MiB; the hostile-argument tests: nulls,
    overflowing sizes and strides, overlapping arrays, the thread pool swapped while another thread
    runs calls) and the example, built at -O1 with AddressSanitizer and UndefinedBehaviorSanitizer
    and run on 2 threads with any report fatal and leaks checked: no report, and every check passes."""
    compiler = os.environ.get("LNORM_SANITIZER_CXX", "g++")
    need("cmake", compiler)
    env = sanitizer_env(compiler, tmp_path)
    suites = os.environ.get("LNORM_SANITIZER_SUITES", SANITIZER_SUITES)
    suites = ALL_SUITES if suites == "all" else suites
    # One build tree: the example's project, with the checkout added by add_subdirectory and its C++
    # tests switched on, so that all five translation units compile two at a time.
    build = tmp_path / "build"
    example = build_example(build, f"-DLNORM_SOURCE_DIR={ROOT}", f"-DCMAKE_CXX_COMPILER={compiler}",
                            "-DLNORM_TESTS=ON", f"-DLNORM_TEST_SUITE_TYPES={suites}", flags=SANITIZE,
                            targets=("lnorm_tests", "lnorm_api_tests", "lnorm_hostile_tests"))
    tests = os.path.join(str(build), "lnorm", "cpp", "tests")
    # The cases over 16 MiB are left out of lnorm_tests (lnorm_api_tests streams one).
    output = run([os.path.join(tests, "lnorm_tests")], env={**env, "LNORM_TEST_LARGE": "0"}, timeout=900)
    check_summary(output, f"testing {TESTED_ISAS[expected_isa()]};")
    output = run([os.path.join(tests, "lnorm_api_tests")], env=env, timeout=600)
    assert re.search(r"^\d{3,} passed, 0 failed$", output, re.MULTILINE), output[-3000:]
    # The in-place cases over 16 MiB are left out here too.
    output = run([os.path.join(tests, "lnorm_hostile_tests")], env={**env, "LNORM_TEST_LARGE": "0"}, timeout=900)
    assert re.search(r"^\d{4,} passed, 0 failed$", output, re.MULTILINE), output[-3000:]
    check_example(run([example], env=env), expected_isa())


@pytest.mark.slow
def test_neon_under_qemu(tmp_path):
    """.ci/cross.sh: the C++ tests cross-compiled for aarch64 pass under qemu-aarch64, with neon
    as the default kernel set."""
    need("aarch64-linux-gnu-g++", "qemu-aarch64")
    env = clean_env(CROSS_OPT=TEST_OPT)
    output = run(["bash", os.path.join(ROOT, ".ci", "cross.sh"), str(tmp_path)], env=env, timeout=1500)
    check_summary(output, "default kernel set neon; testing neon;")


def old_cpu(cmd):
    """cmd under qemu-x86_64 emulating a CPU without AVX (user mode: same files, same Python)."""
    return ["qemu-x86_64", "-cpu", OLD_CPU, *cmd]


old_cpu_only = pytest.mark.skipif(not IS_X86_64_LINUX, reason="qemu-x86_64 user mode runs x86-64 Linux programs")


@pytest.mark.slow
@old_cpu_only
@same_build
def test_old_cpu_cpp_tests(gxx_build):
    """The same g++ binaries on a CPU without AVX: scalar is the default and the only set, and it
    passes (float32 and float16, whose conversions have no F16C there; the native run has the rest)."""
    need("qemu-x86_64")
    tests = os.path.join(gxx_build, "cpp", "tests")
    env = clean_env(LNORM_TEST_SUITES="float32,float16", LNORM_TEST_LARGE="0")
    output = run(old_cpu([os.path.join(tests, "lnorm_tests")]), env=env, timeout=900)
    check_summary(output, "default kernel set scalar; testing scalar;")
    assert run(old_cpu([os.path.join(tests, "lnorm_consumer")]), env=clean_env()).strip() == "scalar"


@pytest.mark.slow
@old_cpu_only
def test_old_cpu_python():
    """The installed Python module on a CPU without AVX: config() reports scalar, and a slice of
    the reference tests passes (134 of them: sizes, axes, large means, NaN/Inf, strides, 16-bit)."""
    need("qemu-x86_64")
    # One interpreter, config() first, then the slice; without the plugins these tests do not use,
    # whose start-up costs three times the tests themselves under emulation.
    program = ("import json, sys, lnorm, pytest; print('CONFIG ' + json.dumps(lnorm.config()), flush=True); "
               "sys.exit(pytest.main(sys.argv[1:]))")
    subset = ("(sizes and float32 and -0]) or axes_nchw or large_mean or nan_inf_poison or float16 "
              "or strided_inputs")
    no_plugins = ["-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:anyio",
                  "-p", "no:xdist"]
    output = run(old_cpu([sys.executable, "-c", program, os.path.join("tests", "test_reference.py"), "-q", "-x",
                          *no_plugins, "-k", subset]), env=clean_env(), timeout=900)
    config = json.loads(re.search(r"^CONFIG (.*)$", output, re.MULTILINE).group(1))
    assert config["isa"] == "scalar", config
    assert config.get("isas_available", ["scalar"]) == ["scalar"], config
    assert re.search(r"\d+ passed", output) and "failed" not in output, output[-3000:]


@pytest.mark.slow
def test_kernel_microbenchmark_builds_and_reports(tmp_path):
    """bench/kernels.cpp (-DLNORM_BENCH=ON, the C++ microbenchmark) builds with -Werror and reports
    every op and dtype for each kernel set this CPU runs, against the copies."""
    need("cmake", "g++")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", ROOT, "-B", str(tmp_path), *generator, "-DCMAKE_CXX_COMPILER=g++", "-DLNORM_TESTS=OFF",
         "-DLNORM_PYTHON=OFF", "-DLNORM_BENCH=ON", "-DCMAKE_BUILD_TYPE=None", f"-DLNORM_BENCH_OPT={TEST_OPT}",
         "-DCMAKE_CXX_FLAGS=-Wall -Wextra -Werror"], timeout=300)
    run(["cmake", "--build", str(tmp_path), "--parallel", str(os.cpu_count() or 2)], timeout=900)
    out = run([str(tmp_path / "lnorm_bench_kernels"), "8", "96", "1", "1"], timeout=300, env=clean_env())
    assert "vs copy" in out and "model name" not in out
    isas = [expected_isa()] if IS_X86_64_LINUX else []
    for op in ("layer_norm", "rms_norm", "add_layer_norm", "layer_norm_backward"):
        for dtype in ("float32", "float16", "bfloat16"):
            for isa in ["scalar"] + isas:
                assert re.search(rf"^{op}\s+{dtype}\s+{isa}\s+[0-9.]+", out, re.MULTILINE), (op, dtype, isa, out[-2000:])
