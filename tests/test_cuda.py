"""lnorm's CUDA backend.

Without a GPU (every machine): config() reports the backend; GPU arrays are routed to it, and a
call mixing host and GPU arrays is a ValueError naming the argument; the layout and argument
helpers; nvcc compiles every kernel for every dtype without a warning (slow); and the kernels' logic
runs on the CPU under lnorm's CUDA emulator against a float64 reference (slow).

With a GPU (marked `cuda`, skipped elsewhere): PyTorch tensors and CuPy arrays against a float64
reference over many widths, strides, large means, NaN rows, every dtype, the backward and the fused
add, in place, streams, and device-mixing errors.
"""

import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import lnorm
from lnorm import _cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "cpp", "include")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)


# ---- no GPU needed --------------------------------------------------------------------------------


def test_config_reports_the_backend():
    c = lnorm.config()
    assert isinstance(c["cuda_compiled"], bool) and c["cuda_compiled"] == _cuda.compiled()
    assert isinstance(c["cuda_devices"], int) and not isinstance(c["cuda_devices"], bool)
    assert c["cuda_devices"] >= 0
    if not c["cuda_compiled"]:
        assert c["cuda_devices"] == 0
    else:
        assert _cuda.native().compiled_architectures()  # e.g. "800,900"


class _FakeDevice:
    def __init__(self, index):
        self.index = index
        self.type = "cuda"


class FakeGpuTensor:
    """Looks like a torch tensor on cuda:0 to lnorm's routing (no GPU, no data)."""

    def __init__(self, shape=(4, 8), index=0):
        self.shape = shape
        self.is_cuda = True
        self.device = _FakeDevice(index)

    def __dlpack__(self, *args, **kwargs):  # pragma: no cover - never exported
        raise BufferError("fake")

    def __dlpack_device__(self):
        return (2, self.device.index)


FakeGpuTensor.__module__ = "torch.fake"


class FakeDlpackGpuArray:
    """A GPU array of some other library (as JAX's would be)."""

    shape = (4, 8)

    def __dlpack__(self, *args, **kwargs):  # pragma: no cover
        raise BufferError("fake")

    def __dlpack_device__(self):
        return (2, 0)


def test_places():
    assert _cuda.place(np.zeros(3)) == ("cpu", 0)
    assert _cuda.place([1.0, 2.0]) is None and _cuda.place(None) is None and _cuda.place(1.5) is None
    assert _cuda.place(FakeGpuTensor(index=1)) == ("cuda", 1)
    assert _cuda.place(FakeDlpackGpuArray()) == ("cuda", 0)
    assert _cuda.any_on_gpu((np.zeros(3), None), {"weight": FakeGpuTensor()})
    assert not _cuda.any_on_gpu((np.zeros(3), [1.0]), {"out": None})


def test_gpu_array_of_another_library_is_a_clear_error():
    with pytest.raises(TypeError, match=r"^x: lnorm's CUDA backend takes PyTorch tensors and CuPy arrays"):
        lnorm.layer_norm(FakeDlpackGpuArray())


@pytest.mark.skipif(_cuda.compiled(), reason="this build has the CUDA backend")
def test_gpu_tensor_without_the_backend_says_how_to_build_it():
    with pytest.raises(ValueError, match=r"^x: is on cuda:0, but this lnorm was built without its CUDA backend.*"
                                         r"LNORM_CUDA=ON"):
        lnorm.rms_norm(FakeGpuTensor())
    assert lnorm.config()["cuda_devices"] == 0


def test_host_x_with_a_gpu_argument_names_that_argument():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"^weight: is on cuda:0 but x is on the CPU"):
        lnorm.layer_norm(x, FakeGpuTensor((8,)))
    with pytest.raises(ValueError, match=r"^bias: is on cuda:1 but x is on the CPU"):
        lnorm.layer_norm(x, None, FakeGpuTensor((8,), index=1))
    with pytest.raises(ValueError, match=r"^out: is on cuda:0 but x is on the CPU"):
        lnorm.rms_norm(x, out=FakeGpuTensor())
    with pytest.raises(ValueError, match=r"^residual: is on cuda:0 but x is on the CPU"):
        lnorm.add_layer_norm(x, FakeGpuTensor())
    with pytest.raises(ValueError, match=r"^dy: is on cuda:0 but x is on the CPU"):
        lnorm.layer_norm_backward(FakeGpuTensor(), x, torch.zeros(4, 1), torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"^rstd: is on cuda:0 but x is on the CPU"):
        lnorm.rms_norm_backward(x, x, FakeGpuTensor((4, 1)))


def test_check_on_host_names_the_argument():
    from lnorm import _interop

    _interop.check_on_host(np.zeros(3), "weight")
    with pytest.raises(ValueError, match=r"^weight: is on cuda:0 but x is on the CPU"):
        _interop.check_on_host(FakeGpuTensor(), "weight")


def _numpy_layout(shape, axes, view):
    """rows_layout's answer checked against NumPy on a real strided view."""
    a = view(np.arange(int(np.prod(shape)) * 4, dtype=np.float32).reshape(-1))
    strides = tuple(s // a.itemsize for s in a.strides)
    perm, rows, cols, ld = _cuda.rows_layout(a.shape, strides, axes)
    moved = np.transpose(a, perm).reshape(rows, cols)
    if ld is not None:  # the 2-D view must hold exactly the rows NumPy makes
        flat = np.lib.stride_tricks.as_strided(a, (rows, cols), (ld * a.itemsize, a.itemsize))
        assert np.array_equal(flat, moved)
    return perm, rows, cols, ld


def test_rows_layout():
    assert _numpy_layout((8, 128, 768), (2,), lambda f: f[:8 * 128 * 768].reshape(8, 128, 768)) == ((0, 1, 2), 1024, 768, 768)
    # A row stride of its own (a slice of wider rows): a view, ld 1000.
    assert _numpy_layout((6, 770), (1,), lambda f: f[:6 * 1000].reshape(6, 1000)[:, :770])[3] == 1000
    # Misaligned start: still a view.
    assert _numpy_layout((5, 33), (1,), lambda f: f[1:1 + 5 * 33].reshape(5, 33))[3] == 33
    # Every other row: ld doubles.
    assert _numpy_layout((4, 16), (1,), lambda f: f[:8 * 16].reshape(8, 16)[::2])[3] == 32
    # Batch axes that merge (a 3-D slice of rows) and that do not.
    assert _numpy_layout((2, 3, 16), (2,), lambda f: f[:2 * 3 * 16].reshape(2, 3, 16))[3] == 16
    assert _numpy_layout((2, 3, 16), (2,), lambda f: f[:2 * 4 * 16].reshape(2, 4, 16)[:, :3])[3] is None
    # Strided columns, and normalized axes that are not trailing: copies.
    assert _numpy_layout((4, 8), (1,), lambda f: f[:4 * 16].reshape(4, 16)[:, ::2])[3] is None
    perm, rows, cols, ld = _numpy_layout((2, 6, 3, 3), (1,), lambda f: f[:108].reshape(2, 6, 3, 3))
    assert perm == (0, 2, 3, 1) and (rows, cols) == (18, 6) and ld is None
    # Several normalized axes, trailing and contiguous; unit dimensions anywhere.
    assert _numpy_layout((2, 1, 4, 5), (2, 3), lambda f: f[:40].reshape(2, 1, 4, 5))[1:] == (2, 20, 20)
    assert _numpy_layout((1, 7), (1,), lambda f: f[:7].reshape(1, 7))[3] == 7
    assert _numpy_layout((7, 1), (0,), lambda f: f[:7].reshape(7, 1))[1:] == (1, 7, 7)
    # Broadcast rows (stride 0) overlap: never a view for the kernels.
    assert _cuda.rows_layout((4, 8), (0, 1), (1,))[3] is None


def test_axes_eps_and_stream_checks():
    assert _cuda.axes_of(-1, 3) == (2,) and _cuda.axes_of((0, -1), 3) == (0, 2)
    assert _cuda.axes_of(np.int64(1), 2) == (1,)
    with pytest.raises(TypeError, match="^axis: "):
        _cuda.axes_of(1.0, 2)
    with pytest.raises(TypeError, match="^axis: "):
        _cuda.axes_of(True, 2)
    with pytest.raises(ValueError, match="^axis: 2 is out of range"):
        _cuda.axes_of(2, 2)
    with pytest.raises(ValueError, match="^axis: repeated"):
        _cuda.axes_of((1, -1), 2)
    assert _cuda.check_eps(0) == 0.0 and _cuda.check_eps(np.float32(1e-5)) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="^eps: "):
        _cuda.check_eps(-1.0)
    with pytest.raises(ValueError, match="^eps: "):
        _cuda.check_eps(float("nan"))
    with pytest.raises(TypeError, match="^eps: "):
        _cuda.check_eps("1e-5")

    class TorchLikeStream:
        cuda_stream = 1234

    class CupyLikeStream:
        ptr = 99

    class ProtocolStream:
        def __cuda_stream__(self):
            return (0, 77)

    assert _cuda.stream_handle(0) == 0 and _cuda.stream_handle(5) == 5
    assert _cuda.stream_handle(TorchLikeStream()) == 1234
    assert _cuda.stream_handle(CupyLikeStream()) == 99
    assert _cuda.stream_handle(ProtocolStream()) == 77
    with pytest.raises(TypeError, match="^stream: "):
        _cuda.stream_handle(True)
    with pytest.raises(TypeError, match="^stream: "):
        _cuda.stream_handle("default")
    with pytest.raises(ValueError, match="^stream: "):
        _cuda.stream_handle(-1)


class FakeNative:
    """Stands in for _lnorm_cuda: the same calls on 2-D row views, computed by lnorm's CPU kernels on
    NumPy views of (CPU) torch tensors, checking what the real module checks about the layout."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def _rows(a, name):
        """As the real module: 2-D with contiguous columns, or C-contiguous rows of the last axis."""
        if a.dim() != 2:
            assert a.is_contiguous(), f"{name}: neither 2-D nor contiguous"
            a = a.view(-1, a.shape[-1])
        assert a.shape[1] <= 1 or a.stride(1) == 1, f"{name}: not rows {a.shape} {a.stride()}"
        return a.numpy()

    @staticmethod
    def _vec(a):
        if a is None:
            return None
        assert a.is_contiguous()
        return a.reshape(-1).numpy()

    def forward_workspace_bytes(self, rows, cols, dtype, device):
        return 0

    def backward_workspace_bytes(self, rows, cols, dtype, dweight, dbias, device):
        return 256

    def norm_forward(self, rms, x, y, weight, bias, eps, mean, rstd, workspace, stream):
        self.calls.append(("norm_forward", stream))
        xn, w = self._rows(x, "x"), self._vec(weight)
        if rms:
            yy, r = lnorm.rms_norm(xn, w, eps=eps, return_stats=True)
        else:
            yy, m, r = lnorm.layer_norm(xn, w, self._vec(bias), eps=eps, return_stats=True)
            if mean is not None:
                self._vec(mean)[...] = m[:, 0]
        self._rows(y, "y")[...] = yy
        if rstd is not None:
            self._vec(rstd)[...] = r[:, 0]

    def add_norm_forward(self, rms, x, residual, bias_in, s, y, weight, bias, eps, mean, rstd, workspace, stream):
        self.calls.append(("add_norm_forward", stream))
        args = (self._rows(x, "x").copy(), self._rows(residual, "residual").copy(), self._vec(weight))
        kw = dict(eps=eps, bias_in=self._vec(bias_in), return_stats=True)
        if rms:
            yy, ss, r = lnorm.add_rms_norm(*args, **kw)
        else:
            yy, ss, m, r = lnorm.add_layer_norm(*args, self._vec(bias), **kw)
            if mean is not None:
                self._vec(mean)[...] = m[:, 0]
        self._rows(s, "s")[...] = ss
        self._rows(y, "y")[...] = yy
        if rstd is not None:
            self._vec(rstd)[...] = r[:, 0]

    def norm_backward(self, rms, dy, x, mean, rstd, weight, dx, dweight, dbias, workspace, stream):
        self.calls.append(("norm_backward", stream))
        assert workspace is not None and workspace.numel() == 256
        r = self._vec(rstd)[:, None]
        if rms:
            out = lnorm.rms_norm_backward(self._rows(dy, "dy"), self._rows(x, "x"), r, self._vec(weight))
        else:
            out = lnorm.layer_norm_backward(self._rows(dy, "dy"), self._rows(x, "x"), self._vec(mean)[:, None], r,
                                            self._vec(weight))
        self._rows(dx, "dx")[...] = out[0]
        if dweight is not None:
            self._vec(dweight)[...] = out[1]
        if dbias is not None:
            self._vec(dbias)[...] = out[2]


@pytest.fixture
def fake_gpu(monkeypatch):
    """CPU torch tensors count as tensors on cuda:0, and FakeNative runs the calls."""
    torch = pytest.importorskip("torch")
    real_place = _cuda.place
    fake = FakeNative()

    def place(a):
        if isinstance(a, torch.Tensor):
            return ("cuda", 0)
        return real_place(a)

    class FakeScope:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self.handle

        def __exit__(self, *exc):
            return False

    class CurrentStream:
        cuda_stream = 1234

    monkeypatch.setattr(_cuda, "place", place)
    monkeypatch.setattr(_cuda, "native", lambda: fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: CurrentStream())
    monkeypatch.setattr(_cuda._Torch, "empty", lambda self, shape, dtype, device: torch.empty(shape, dtype=self.types[dtype]))
    monkeypatch.setattr(_cuda._Torch, "zeros", lambda self, shape, dtype, device: torch.zeros(shape, dtype=self.types[dtype]))
    monkeypatch.setattr(_cuda._Torch, "scope",
                        lambda self, device, stream: FakeScope(1234 if stream is None else _cuda.stream_handle(stream)))
    return fake


def _np(t):
    return t.detach().numpy().copy()


def test_python_path_lays_out_rows_and_returns_tensors(fake_gpu):
    """_cuda.py end to end with a stand-in for the GPU: views in place, copies where no view
    exists, results of x's shape, statistics' shapes, out= and in place, the fused add, backward."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 40, 64, generator=g)
    cases = {
        "contiguous": (base, -1),
        "row stride": (base[:, :, :50], -1),
        "strided columns": (base[:, :, ::2], -1),
        "every other row": (base[::2], (1, 2)),
        "not trailing": (base, 1),
        "two axes, not trailing": (base.permute(2, 0, 1), (0, 2)),
    }
    for name, (x, axis) in cases.items():
        xn = _np(x)
        y, mean, rstd = lnorm.layer_norm(x, axis=axis, return_stats=True)
        want_y, want_m, want_r = lnorm.layer_norm(xn, axis=axis, return_stats=True)
        assert isinstance(y, torch.Tensor) and y.shape == x.shape and mean.shape == want_m.shape, name
        np.testing.assert_allclose(_np(y), want_y, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(_np(mean), want_m, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(_np(rstd), want_r, rtol=1e-6, err_msg=name)
        w = torch.randn(*[x.shape[a] for a in _cuda.axes_of(axis, x.dim())], generator=g)
        y, r = lnorm.rms_norm(x, w, axis=axis, return_stats=True)
        want_y, want_r = lnorm.rms_norm(xn, _np(w), axis=axis, return_stats=True)
        np.testing.assert_allclose(_np(y), want_y, rtol=1e-6, atol=1e-6, err_msg=name)
        dy = torch.randn(x.shape, generator=g)
        dx, dw = lnorm.rms_norm_backward(dy, x, r, w, axis=axis)
        want = lnorm.rms_norm_backward(_np(dy), xn, want_r, _np(w), axis=axis)
        np.testing.assert_allclose(_np(dx), want[0], rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(_np(dw), want[1], rtol=1e-5, atol=1e-4, err_msg=name)
    assert all(stream == 1234 for _, stream in fake_gpu.calls)

    # out=: a view is written in place; another layout through a copy; x itself (in place).
    x = torch.randn(8, 33, generator=g)
    want = lnorm.layer_norm(_np(x))
    out = torch.empty(8, 40)[:, :33]
    assert lnorm.layer_norm(x, out=out) is out
    np.testing.assert_allclose(_np(out), want, rtol=1e-6, atol=1e-6)
    out = torch.empty(33, 8).t()
    assert lnorm.layer_norm(x, out=out) is out
    np.testing.assert_allclose(_np(out), want, rtol=1e-6, atol=1e-6)
    assert lnorm.layer_norm(x, out=x) is x
    np.testing.assert_allclose(_np(x), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="^out: overlaps x; an output may only be exactly its input"):
        big = torch.randn(9, 16)
        lnorm.layer_norm(big[:8], out=big[1:])

    # The fused add, in place into residual and x.
    x, res = torch.randn(5, 3, 24, generator=g), torch.randn(5, 3, 24, generator=g)
    b_in = torch.randn(24, generator=g)
    want_y, want_s = lnorm.add_layer_norm(_np(x), _np(res), bias_in=_np(b_in))
    y, s = lnorm.add_layer_norm(x, res, bias_in=b_in, out=x, residual_out=res)
    assert y is x and s is res
    np.testing.assert_allclose(_np(s), want_s, rtol=1e-6)
    np.testing.assert_allclose(_np(y), want_y, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="^residual_out: overlaps out; two outputs must not share memory"):
        lnorm.add_rms_norm(x, res, out=res, residual_out=res)

    # Layer norm's backward with a weight, from a tensor that records gradients; and stream=.
    x = torch.randn(7, 96, generator=g, requires_grad=True)
    w = torch.randn(96, generator=g)
    _, mean, rstd = lnorm.layer_norm(x, w, return_stats=True)
    dy = torch.randn(7, 96, generator=g)
    dx, dw, db = _cuda.layer_norm_backward(dy, x, mean, rstd, w, stream=77)
    want = lnorm.layer_norm_backward(_np(dy), _np(x), _np(mean), _np(rstd), _np(w))
    for got, exp in zip((dx, dw, db), want):
        np.testing.assert_allclose(_np(got), exp, rtol=1e-5, atol=1e-5)
    assert fake_gpu.calls[-1] == ("norm_backward", 77)

    # Empty batches: no call, empty results, zero parameter gradients.
    n = len(fake_gpu.calls)
    e = torch.randn(0, 16)
    assert lnorm.rms_norm(e).shape == (0, 16)
    dx, dw, db = lnorm.layer_norm_backward(e, e, torch.zeros(0, 1), torch.ones(0, 1), torch.ones(16))
    assert dx.shape == (0, 16) and not dw.any() and not db.any() and len(fake_gpu.calls) == n


def test_python_path_checks_like_the_cpu_path(fake_gpu):
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match=r"^weight: dtype float64 must be x's \(float32\) or float32"):
        lnorm.layer_norm(x, torch.ones(8, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^bias: dtype float16 differs from the other parameters' float32"):
        lnorm.layer_norm(x, torch.ones(8), torch.ones(8, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"^weight: shape \(7,\) does not match the normalized shape \(8,\)"):
        lnorm.layer_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match=r"^weight: is on the CPU but x is on cuda:0"):
        lnorm.layer_norm(x, np.ones(8, np.float32))
    with pytest.raises(TypeError, match=r"^weight: must be an array on cuda:0 like x, not list"):
        lnorm.layer_norm(x, [1.0] * 8)
    with pytest.raises(TypeError, match=r"^x: dtype int64 is not supported"):
        lnorm.layer_norm(torch.ones(4, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^axis: the normalized axes \(1,\) of x \(shape \(4, 0\)\) are empty"):
        lnorm.layer_norm(torch.ones(4, 0))
    with pytest.raises(ValueError, match=r"^rstd: shape \(4,\) does not match \(4, 1\)"):
        lnorm.rms_norm_backward(x, x, torch.ones(4))
    with pytest.raises(TypeError, match=r"^mean: must be an array on cuda:0 like x, not None"):
        lnorm.layer_norm_backward(x, x, None, torch.ones(4, 1))
    with pytest.raises(TypeError, match=r"^out: dtype float64 differs from x's float32"):
        lnorm.rms_norm(x, out=torch.empty(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^residual: shape \(4, 7\) differs from x's \(4, 8\)"):
        lnorm.add_rms_norm(x, torch.ones(4, 7))
    with pytest.raises(TypeError, match=r"^stream: "):
        _cuda.rms_norm(x, stream="now")


def test_bench_cuda_is_import_safe_and_says_why_it_cannot_run():
    import importlib.util

    path = os.path.join(ROOT, "bench", "bench_cuda.py")
    spec = importlib.util.spec_from_file_location("lnorm_bench_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no side effects: nothing runs, nothing is written
    why = module.unavailable()
    if why is None:
        pytest.skip("a GPU is here: bench/bench_cuda.py would measure")
    proc = subprocess.run([sys.executable, path, "--quick", "--out", os.devnull], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "nothing to measure here" in proc.stderr and why in proc.stderr


def _nvcc():
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)


def _cuda_include():
    """The CUDA toolkit's include folder (cuda_fp16.h, cuda_runtime_api.h), or None."""
    candidates = []
    nvcc = _nvcc()
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"))
    return next((c for c in candidates if os.path.exists(os.path.join(c, "cuda_fp16.h"))), None)


from cuda_sources import INSTANTIATE_ALL  # noqa: E402  (shared with test_cuda_static.py, bench/cuda_sass.py)


@pytest.mark.slow
def test_nvcc_compiles_every_kernel(tmp_path):
    """nvcc (no GPU needed) compiles every kernel for sm_90 with warnings as errors; each kernel's
    static shared memory stays within what the planners reserve for it (static_smem_v: 4 KiB with
    double statistics, 2 KiB with float)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = tmp_path / "all_kernels.cu"
    src.write_text(INSTANTIATE_ALL)
    cmd = [nvcc, "-std=c++17", "-arch=sm_90", "-O3", f"-I{INCLUDE}", "-Xcompiler=-Wall,-Wextra",
           "-Werror=all-warnings", "-Xptxas=-v", "-c", str(src), "-o", str(tmp_path / "all_kernels.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-6000:]}"
    # ptxas prints a block per kernel: "Compiling entry function '<mangled>'", then "... N bytes smem"
    # (no smem figure for a kernel without static shared memory).
    blocks = re.split(r"Compiling entry function '", output)[1:]
    assert len(blocks) >= 50, f"expected every kernel compiled, got {len(blocks)}"
    for block in blocks:
        mangled = block.split("'", 1)[0]
        smem = re.search(r"(\d+) bytes smem", block)
        # The first template argument is the element (statistics) type: "..._kernelId..." for double.
        limit = 4096 if "kernelId" in mangled else 2048
        assert smem is None or int(smem.group(1)) <= limit, f"{mangled}: {smem.group(1)} bytes smem > {limit}"


SELFCHECK_MAIN = r"""
#include <lnorm/cuda/testing/selfcheck.hpp>
int main(int argc, char** argv) { return lnorm::cuda::testing::selfcheck_main(argc, argv); }
"""

# The emulator's schedules: 0 the fixed order (threads 0..n-1, blocks in order), then a random one
# (each barrier interval's threads and the blocks in a seeded random order). A race between the
# threads of a block, or between blocks, shows under one order and hides under another. Two, one per
# core of a CI machine; the self-check program takes any other with --seed.
EMULATOR_SEEDS = ("0", "1")
FAILED_CASE = re.compile(r"^FAILED (\S+)$", re.MULTILINE)
CASE_SUMMARY = re.compile(r"^FAIL (\S+): \d+ mismatches, largest .*$", re.MULTILINE)


def _emulator_program(tmp_path, name, source):
    """Builds `source` with a host compiler under lnorm/cuda/testing/emulator.hpp (as a user of the
    emulator would); skips where there is no compiler, no CUDA headers or no ucontext."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++") or shutil.which("clang++")
    cuda_include = _cuda_include()
    if cxx is None:
        pytest.skip("no C++ compiler")
    if cuda_include is None:
        pytest.skip("CUDA headers (cuda_fp16.h) not found: install the CUDA toolkit or set CUDA_HOME")
    if not sys.platform.startswith("linux"):
        pytest.skip("the emulator's fibers use ucontext (Linux)")
    src = tmp_path / f"{name}.cpp"
    src.write_text(source)
    exe = tmp_path / name
    build = [cxx, "-std=c++17", "-O1", "-DLNORM_CUDA_EMULATE", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Werror",
             f"-I{INCLUDE}", f"-I{cuda_include}", str(src), "-o", str(exe)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(build)} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return exe


@pytest.mark.slow
def test_kernels_under_the_cpu_emulator(tmp_path):
    """The kernels' logic on the CPU: lnorm/cuda/testing/selfcheck.hpp (every call against a float64
    reference: widths 1..33000, strides, misaligned starts, every dtype, large means, NaN/Inf and
    overflowing rows, backward, fused add, and the forward in place, every aliasing the API allows
    on every tier; an emulated device with little shared memory takes the split paths) built with a
    host compiler under lnorm/cuda/testing/emulator.hpp, run under the fixed schedule and under a
    random one (EMULATOR_SEEDS). A failure names each failed case per seed."""
    exe = _emulator_program(tmp_path, "selfcheck", SELFCHECK_MAIN)
    listed = subprocess.run([str(exe), "--quick", "--list"], capture_output=True, text=True, timeout=60)
    names = listed.stdout.split()
    in_place = [n for n in names if re.search(r"/(y|s)=(x|res)", n)]
    assert len(in_place) >= 150, f"expected the in-place cases in --quick, got {len(in_place)}"
    # Rows per warp, one row per block, rows in shared memory (device 0), split rows (device 1).
    for width, dev in (("x64/", "dev0/"), ("x512/", "dev0/"), ("x20000/", "dev0/"), ("x20000/", "dev1/")):
        assert any(width in n and dev in n for n in in_place), f"no in-place case {width}...{dev}"

    def run_seed(seed):
        start = time.monotonic()
        run = subprocess.run([str(exe), "--quick", "--seed", seed], capture_output=True, text=True, timeout=1800)
        return run, time.monotonic() - start

    # Two at a time (CI machines have two cores; each run is one thread).
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(run_seed, EMULATOR_SEEDS))
    problems = []
    for seed, (run, took) in zip(EMULATOR_SEEDS, runs):
        output = run.stdout + run.stderr
        summary = SUMMARY.search(output)
        if not summary:
            problems.append(f"seed {seed}: no summary (exit {run.returncode}, {took:.0f} s):\n{output[-4000:]}")
            continue
        assert f"schedule seed: {seed}" in output, output[:2000]
        passed, failed = int(summary.group(1)), int(summary.group(2))
        assert passed + failed >= 800, output[-6000:]
        if run.returncode != 0 or failed != 0:
            failures = FAILED_CASE.findall(output)
            details = {m.group(1): m.group(0) for m in CASE_SUMMARY.finditer(output)}
            lines = [details.get(name, f"FAIL {name}") for name in failures]
            problems.append(f"seed {seed}: {passed} passed, {failed} failed ({took:.0f} s):\n  " + "\n  ".join(lines))
    assert not problems, "\n".join(problems)


EMULATOR_UNIT = r"""
// The emulator's own pieces: its schedules, shuffles and votes, and memory pools.
#include <lnorm/cuda/testing/emulator.hpp>
#include <algorithm>
#include <string>
#include <vector>

namespace emu = lnorm::cuda::emulator;
static int failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::printf("FAIL line %d: %s\n", __LINE__, #cond);                  \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

static std::vector<int> order_log;  // (block, thread) of each fiber's turn, in the order they ran

__global__ void record_order(int phases) {
  const int who = static_cast<int>(blockIdx.x) * 1000 + static_cast<int>(threadIdx.x);
  for (int p = 0; p < phases; ++p) {
    order_log.push_back(who);
    __syncthreads();
  }
}

static std::vector<int> run_order(unsigned blocks, unsigned threads, int phases) {
  order_log.clear();
  const cudaError_t e = emu::launch(record_order, dim3(blocks), dim3(threads), 0, nullptr, phases);
  CHECK(e == cudaSuccess);
  return order_log;
}

static std::vector<int> access_log;  // the thread of each vector access, in the order they ran
alignas(16) static float access_data[64 * 4];

__global__ void vector_accesses(int steps) {
  for (int k = 0; k < steps; ++k) {
    LNORM_CUDA_CHECK_ALIGNED(&access_data[threadIdx.x * 4], 16);
    access_log.push_back(static_cast<int>(threadIdx.x));
  }
}

/// Whether some thread's accesses were interrupted by another's (no barrier in between).
static bool interleaved(std::uint64_t seed) {
  emu::set_schedule_seed(seed);
  access_log.clear();
  CHECK(emu::launch(vector_accesses, dim3(1), dim3(64), 0, nullptr, 8) == cudaSuccess);
  CHECK(access_log.size() == 64u * 8);
  std::vector<int> runs(64, 0);  // stretches of consecutive accesses per thread
  for (std::size_t i = 0; i < access_log.size(); ++i)
    if (i == 0 || access_log[i] != access_log[i - 1]) ++runs[static_cast<std::size_t>(access_log[i])];
  return *std::max_element(runs.begin(), runs.end()) > 1;
}

__global__ void skip_barrier() {
  if (threadIdx.x != 3) __syncthreads();
}

static int* shfl_out;
__global__ void shuffles() {
  const int lane = static_cast<int>(threadIdx.x) & 31, t = static_cast<int>(threadIdx.x);
  int* o = shfl_out + t * 8;
  o[0] = __shfl_sync(0xffffffffu, lane * 10, 5);
  o[1] = __shfl_sync(0xffffffffu, lane * 10, 3, 8);
  o[2] = __shfl_up_sync(0xffffffffu, lane * 10, 2, 16);
  o[3] = __shfl_down_sync(0xffffffffu, lane * 10, 3, 8);
  o[4] = __shfl_xor_sync(0xffffffffu, lane * 10, 4, 8);
  o[5] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[6] = __all_sync(0xffffffffu, lane < 40) * 2 + __all_sync(0xffffffffu, lane < 31);
  o[7] = static_cast<int>(__shfl_sync(0xffffffffu, static_cast<double>(lane) + 0.5, 31 - lane) * 2);
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  if (mode == "env") {  // LNORM_EMULATOR_SEED set by the caller: print the seed and the order
    std::printf("seed %llu order", static_cast<unsigned long long>(emu::schedule_seed()));
    for (int who : run_order(1, 8, 1)) std::printf(" %d", who);
    std::printf("\n");
    return 0;
  }

  // The fixed order: threads 0..n-1, blocks in order; the last thread to reach a barrier goes on.
  emu::set_schedule_seed(0);
  const std::vector<int> fixed = run_order(3, 64, 2);
  std::vector<int> expect;
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 64; ++t) expect.push_back(b * 1000 + t);
    expect.push_back(b * 1000 + 63);
    for (int t = 0; t < 63; ++t) expect.push_back(b * 1000 + t);
  }
  CHECK(fixed == expect);

  // Reversed: blocks and threads in reverse order.
  emu::set_schedule_seed(emu::kReversedSchedule);
  expect.clear();
  for (int b = 2; b >= 0; --b)
    for (int p = 0; p < 2; ++p)
      for (int t = 63; t >= 0; --t) expect.push_back(b * 1000 + t);
  CHECK(run_order(3, 64, 2) == expect);

  // Random: each interval a permutation of the block's threads, a new one each interval; the same
  // seed the same schedule, another seed another; every block once, not always in order.
  emu::set_schedule_seed(12345);
  const std::vector<int> a = run_order(5, 64, 4);
  emu::set_schedule_seed(12345);
  CHECK(run_order(5, 64, 4) == a);
  emu::set_schedule_seed(777);
  CHECK(run_order(5, 64, 4) != a);
  CHECK(a.size() == 5u * 4 * 64);
  std::vector<int> block_order;
  bool intervals_differ = false;
  for (std::size_t i = 0; i < a.size(); i += 64) {
    std::vector<int> interval(a.begin() + static_cast<long>(i), a.begin() + static_cast<long>(i) + 64), sorted = interval;
    std::sort(sorted.begin(), sorted.end());
    const int b = interval[0] / 1000;
    for (int t = 0; t < 64; ++t) CHECK(sorted[static_cast<std::size_t>(t)] == b * 1000 + t);
    std::vector<int> in_order = sorted;
    CHECK(interval != in_order);
    if (i % 256 == 0) block_order.push_back(b);
    else if (interval != std::vector<int>(a.begin() + static_cast<long>(i) - 64, a.begin() + static_cast<long>(i)))
      intervals_differ = true;
  }
  CHECK(intervals_differ);
  std::vector<int> blocks_sorted = block_order;
  std::sort(blocks_sorted.begin(), blocks_sorted.end());
  CHECK((blocks_sorted == std::vector<int>{0, 1, 2, 3, 4}));
  bool blocks_shuffled = block_order != blocks_sorted;
  for (std::uint64_t s = 2; s < 6 && !blocks_shuffled; ++s) {  // one seed may keep the order by chance
    emu::set_schedule_seed(s);
    const std::vector<int> o = run_order(5, 32, 1);
    for (std::size_t i = 0; i < 5 && !blocks_shuffled; ++i) blocks_shuffled = o[i * 32] / 1000 != static_cast<int>(i);
  }
  CHECK(blocks_shuffled);

  // Within a barrier interval, threads interleave at vector accesses under a random schedule only.
  CHECK(!interleaved(0));
  CHECK(!interleaved(emu::kReversedSchedule));
  CHECK(interleaved(12345));

  // A barrier one thread skips is a deadlock under every schedule.
  for (std::uint64_t s : {std::uint64_t(0), emu::kReversedSchedule, std::uint64_t(99)}) {
    emu::set_schedule_seed(s);
    CHECK(emu::launch(skip_barrier, dim3(2), dim3(64), 0, nullptr) == cudaErrorLaunchFailure);
  }

  // Shuffles and votes, under a random schedule.
  emu::set_schedule_seed(4242);
  std::vector<int> out(64 * 8, -1);
  shfl_out = out.data();
  CHECK(emu::launch(shuffles, dim3(1), dim3(64), 0, nullptr) == cudaSuccess);
  for (int t = 0; t < 64; ++t) {
    const int lane = t & 31, *o = &out[static_cast<std::size_t>(t) * 8];
    CHECK(o[0] == 50);
    CHECK(o[1] == ((lane & ~7) + 3) * 10);
    CHECK(o[2] == ((lane & 15) >= 2 ? lane - 2 : lane) * 10);
    CHECK(o[3] == ((lane & 7) + 3 < 8 ? lane + 3 : lane) * 10);
    CHECK(o[4] == (lane ^ 4) * 10);
    CHECK(static_cast<unsigned>(o[5]) == 0x49249249u);
    CHECK(o[6] == 2);
    CHECK(o[7] == (31 - lane) * 2 + 1);
  }

  // Memory pools: device 0 has them, device 1 not.
  int supported = -1;
  CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0) == cudaSuccess && supported == 1);
  CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 1) == cudaSuccess && supported == 0);
  cudaMemPool_t pool = nullptr, def = nullptr;
  CHECK(cudaDeviceGetDefaultMemPool(&def, 0) == cudaSuccess && def != nullptr);
  CHECK(cudaDeviceGetDefaultMemPool(&pool, 1) == cudaErrorNotSupported);
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 1;
  CHECK(cudaMemPoolCreate(&pool, &props) == cudaErrorNotSupported);
  props.location.id = 0;
  CHECK(cudaMemPoolCreate(&pool, &props) == cudaSuccess && pool != nullptr && pool != def);
  unsigned long long threshold = ~0ull, got = 0;
  CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) == cudaSuccess);
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &got) == cudaSuccess && got == threshold);
  void* p = nullptr;
  CHECK(cudaMallocFromPoolAsync(&p, 1000, pool, nullptr) == cudaSuccess && p != nullptr);
  CHECK(static_cast<unsigned char*>(p)[0] == 0xAB && static_cast<unsigned char*>(p)[999] == 0xAB);
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &got) == cudaSuccess && got == 1000);
  CHECK(cudaFreeAsync(p, nullptr) == cudaSuccess);
  CHECK(cudaFreeAsync(p, nullptr) == cudaErrorInvalidValue);  // twice: not an allocation any more
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &got) == cudaSuccess && got == 0);
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &got) == cudaSuccess && got == 1000);
  CHECK(cudaStreamSynchronize(nullptr) == cudaSuccess);
  CHECK(cudaMemPoolDestroy(pool) == cudaSuccess);
  CHECK(cudaMallocFromPoolAsync(&p, 8, pool, nullptr) == cudaErrorInvalidValue);
  CHECK(cudaMemPoolDestroy(def) == cudaErrorInvalidValue);
  CHECK(cudaMallocFromPoolAsync(&p, 8, def, nullptr) == cudaSuccess && cudaFreeAsync(p, nullptr) == cudaSuccess);
  CHECK(cudaFree(nullptr) == cudaSuccess);

  std::printf("%s\n", failures == 0 ? "emulator unit checks passed" : "emulator unit checks FAILED");
  return failures == 0 ? 0 : 1;
}
"""


def test_emulator_schedules_shuffles_and_pools(tmp_path):
    """The emulator itself: the fixed, reversed and seeded random schedules (a permutation of the
    block's threads per barrier interval, the blocks in a random order, the same seed the same
    schedule, threads interleaved at vector accesses), a skipped barrier a deadlock under each, the shuffles and votes, memory pools (device
    0 has them, device 1 not) and LNORM_EMULATOR_SEED."""
    exe = _emulator_program(tmp_path, "emulator_unit", EMULATOR_UNIT)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "emulator unit checks passed" in run.stdout, run.stdout + run.stderr[-3000:]

    def env_run(value):
        env = dict(os.environ, LNORM_EMULATOR_SEED=value)
        return subprocess.run([str(exe), "env"], capture_output=True, text=True, timeout=60, env=env)

    assert env_run("reversed").stdout.split("order")[1].split() == [str(t) for t in range(7, -1, -1)]
    assert env_run("0").stdout.split("order")[1].split() == [str(t) for t in range(8)]
    first, again, other = env_run("5").stdout, env_run("5").stdout, env_run("6").stdout
    assert first.startswith("seed 5 order") and first == again and first.split("order")[1] != other.split("order")[1]
    assert sorted(first.split("order")[1].split(), key=int) == [str(t) for t in range(8)]
    bad = env_run("soon")
    assert bad.returncode != 0 and "LNORM_EMULATOR_SEED" in bad.stderr


# ---- on a GPU -------------------------------------------------------------------------------------

torch_or_none = None
try:  # torch is optional; the GPU tests skip without it (and without CuPy for CuPy's)
    import torch as torch_or_none  # noqa: N813
except ImportError:  # pragma: no cover
    pass


def _has_gpu() -> bool:
    if not _cuda.compiled() or lnorm.config()["cuda_devices"] == 0:
        return False
    return torch_or_none is not None and torch_or_none.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _has_gpu(), reason="needs lnorm's CUDA backend, PyTorch and a CUDA GPU")
gpu = [pytest.mark.cuda, needs_gpu]

WIDTHS = (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 255, 257, 511, 513, 768, 1000, 1023,
          1025, 2048, 4096, 4099, 5120, 8192, 8200, 12288, 16384, 16387, 32768, 40000, 65536)
TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16")
TOL = {"float32": 2e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}


def _t(name):
    return getattr(torch_or_none, name)


def _host(a):
    return a.detach().to("cpu", torch_or_none.float64).numpy()


def _ref_forward(x, w, b, eps, rms):
    """float64 LayerNorm/RMSNorm over the last axis, shifted by each row's first element."""
    x = np.asarray(x, np.float64)
    if rms:
        rstd = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        y, mean = x * rstd, None
    else:
        d = x - x[..., :1]
        m = d.mean(-1, keepdims=True)
        rstd = 1 / np.sqrt(((d - m) ** 2).mean(-1, keepdims=True) + eps)
        y, mean = (d - m) * rstd, x[..., :1] + m
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y, mean, rstd


def _close_sums(got, want, abs_sums, dtype, rows, what=""):
    """Sums over rows (dweight, dbias): one float32 rounding per row at most, relative to |terms|."""
    tol = max(TOL[dtype], rows * float(np.finfo(np.float32).eps)) * (2 + np.asarray(abs_sums))
    bad = ~(np.abs(np.asarray(got, np.float64) - want) <= tol)
    assert not bad.any(), f"{what}: {bad.sum()} mismatches, first at {np.argwhere(bad)[0]}"


def _close(got, want, dtype, scale=1.0, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    tol = TOL[dtype] * (2 + 2 * np.abs(want)) * scale
    bad = ~((np.abs(got - want) <= tol) | (np.isnan(got) & np.isnan(want)))
    assert not bad.any(), f"{what}: {bad.sum()} mismatches, first at {np.argwhere(bad)[0]}: {got[bad][0]} vs {want[bad][0]}"


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.cuda
@needs_gpu
def test_forward_every_width(dtype, rms):
    torch = torch_or_none
    g = torch.Generator(device="cuda").manual_seed(0)
    for cols in WIDTHS:
        rows = max(2, min(300, (1 << 20) // cols))
        x = (torch.randn(rows, cols, generator=g, device="cuda") * 2 + 0.5).to(_t(dtype))
        w = (torch.randn(cols, generator=g, device="cuda") + 1).to(_t(dtype))
        b = (torch.randn(cols, generator=g, device="cuda")).to(_t(dtype))
        eps = 1e-5
        if rms:
            y, rstd = lnorm.rms_norm(x, w, eps=eps, return_stats=True)
            want, _, rstd_ref = _ref_forward(_host(x), _host(w), None, eps, True)
        else:
            y, mean, rstd = lnorm.layer_norm(x, w, b, eps=eps, return_stats=True)
            want, mean_ref, rstd_ref = _ref_forward(_host(x), _host(w), _host(b), eps, False)
            _close(_host(mean), mean_ref, "float32" if dtype != "float64" else dtype, what=f"mean {cols}")
        assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == x.dtype and y.shape == x.shape
        _close(_host(y), want, dtype, scale=1 + np.abs(_host(w)).max(), what=f"y {dtype} {cols}")
        _close(_host(rstd), rstd_ref, "float32" if dtype != "float64" else dtype, what=f"rstd {cols}")


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.cuda
@needs_gpu
def test_strides_offsets_and_non_trailing_axes(dtype):
    torch = torch_or_none
    base = torch.randn(10, 1031, device="cuda").to(_t(dtype))
    views = {
        "row stride": base[:, :1000],
        "misaligned start": base[:, 3:],
        "every other row": base[::2, 5:777],
        "strided columns": base[:, ::2],
        "transposed": base[:, :64].t(),
    }
    for name, x in views.items():
        y = lnorm.layer_norm(x)
        want, _, _ = _ref_forward(_host(x), None, None, 1e-5, False)
        _close(_host(y), want, dtype, what=name)
    img = torch.randn(2, 96, 7, 9, device="cuda").to(_t(dtype))  # NCHW, over channels
    y = lnorm.layer_norm(img, torch.ones(96, device="cuda", dtype=_t(dtype)), axis=1)
    want, _, _ = _ref_forward(np.moveaxis(_host(img), 1, -1), None, None, 1e-5, False)
    _close(np.moveaxis(_host(y), 1, -1), want, dtype, what="axis=1")
    y = lnorm.rms_norm(img, axis=(1, 2, 3))
    want, _, _ = _ref_forward(_host(img).reshape(2, -1), None, None, 1e-6, True)
    _close(_host(y).reshape(2, -1), want, dtype, what="axis=(1,2,3)")


@pytest.mark.cuda
@needs_gpu
def test_large_means_nan_rows_and_constant_rows():
    torch = torch_or_none
    for dtype, mean in (("float32", 1e5), ("float64", 1e9), ("bfloat16", 1e4)):
        x = (mean + torch.randn(64, 3000, device="cuda", dtype=torch.float64) * (mean / 50 if dtype == "bfloat16" else 1))
        x = x.to(_t(dtype))
        y = lnorm.layer_norm(x)
        want, _, _ = _ref_forward(_host(x), None, None, 1e-5, False)
        _close(_host(y), want, dtype, what=f"large mean {dtype}")
    x = torch.randn(6, 4096, device="cuda")
    x[2, 100] = float("nan")
    x[4, 7] = float("inf")
    for fn in (lnorm.layer_norm, lnorm.rms_norm):
        y = _host(fn(x))
        assert np.isnan(y[2]).all() and np.isnan(y[4]).all()
        assert np.isfinite(np.delete(y, [2, 4], axis=0)).all()
    c = torch.full((3, 777), 3.25, device="cuda")
    b = torch.randn(777, device="cuda")
    assert torch.equal(lnorm.layer_norm(c, None, b), b.expand(3, 777))  # a constant row gives exactly bias


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.cuda
@needs_gpu
def test_backward(dtype, rms):
    torch = torch_or_none
    g = torch.Generator(device="cuda").manual_seed(1)
    for cols in (1, 7, 64, 257, 768, 4099, 8192, 12288, 20000, 65536):
        for wdt in {dtype, "float32"}:
            rows = max(2, min(512, (1 << 21) // cols))
            x = torch.randn(rows, cols, generator=g, device="cuda").to(_t(dtype))
            dy = torch.randn(rows, cols, generator=g, device="cuda").to(_t(dtype))
            w = (torch.randn(cols, generator=g, device="cuda") + 1).to(_t(wdt))
            xd, dyd, wd = _host(x), _host(dy), _host(w)
            if rms:
                _, rstd = lnorm.rms_norm(x, w, return_stats=True)
                dx, dw = lnorm.rms_norm_backward(dy, x, rstd, w)
                db, mu = None, 0.0
            else:
                _, mean, rstd = lnorm.layer_norm(x, w, return_stats=True)
                dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
                mu = _host(mean)
            r = _host(rstd)
            xhat = (xd - mu) * r
            gd = dyd * wd
            c1 = 0.0 if rms else gd.mean(-1, keepdims=True)
            want = r * (gd - c1 - xhat * (gd * xhat).mean(-1, keepdims=True))
            assert dx.dtype == x.dtype and dw.dtype == w.dtype
            _close(_host(dx), want, dtype, scale=4 * (1 + np.abs(wd).max()), what=f"dx {cols}")
            _close_sums(_host(dw), (dyd * xhat).sum(0), np.abs(dyd * xhat).sum(0), wdt, rows, f"dweight {cols}")
            if not rms:
                _close_sums(_host(db), dyd.sum(0), np.abs(dyd).sum(0), wdt, rows, f"dbias {cols}")
                again = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
                assert torch.equal(again[1], dw) and torch.equal(again[2], db)  # deterministic


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.cuda
@needs_gpu
def test_fused_add(dtype):
    torch = torch_or_none
    for cols in (5, 768, 4099, 16384, 40000):
        x = torch.randn(37, cols, device="cuda").to(_t(dtype))
        res = torch.randn(37, cols, device="cuda").to(_t(dtype))
        bias_in = torch.randn(cols, device="cuda").to(_t(dtype))
        w = torch.randn(cols, device="cuda").to(_t(dtype))
        for rms in (False, True):
            fn = lnorm.add_rms_norm if rms else lnorm.add_layer_norm
            y, s = fn(x, res, w, bias_in=bias_in)
            calc = torch.float64 if dtype == "float64" else torch.float32
            s_want = ((x.to(calc) + bias_in.to(calc)) + res.to(calc)).to(x.dtype)
            assert torch.equal(s, s_want), f"s {dtype} {cols}"
            want, _, _ = _ref_forward(_host(s_want), _host(w), None, 1e-6 if rms else 1e-5, rms)
            _close(_host(y), want, dtype, scale=1 + np.abs(_host(w)).max(), what=f"add y {cols}")
    # In place: residual_out=residual and out=x.
    x = torch.randn(8, 512, device="cuda").to(_t(dtype))
    res = torch.randn(8, 512, device="cuda").to(_t(dtype))
    y_want, s_want = lnorm.add_layer_norm(x.clone(), res.clone())
    y, s = lnorm.add_layer_norm(x, res, out=x, residual_out=res)
    assert y is x and s is res and torch.equal(x, y_want) and torch.equal(res, s_want)


@pytest.mark.cuda
@needs_gpu
def test_out_in_place_grad_tensors_and_empty_batches():
    torch = torch_or_none
    x = torch.randn(16, 1000, device="cuda")
    want = lnorm.layer_norm(x.clone())
    assert lnorm.layer_norm(x, out=x) is x and torch.equal(x, want)
    p = torch.randn(4, 64, device="cuda", requires_grad=True)
    assert lnorm.rms_norm(p).shape == (4, 64)
    with pytest.raises(ValueError, match="^out: overlaps x; an output may only be exactly its input"):
        big = torch.randn(9, 64, device="cuda")
        lnorm.layer_norm(big[:8], out=big[1:])
    e = torch.randn(0, 32, device="cuda")
    assert lnorm.layer_norm(e).shape == (0, 32)
    dx, dw, db = lnorm.layer_norm_backward(e, e, torch.zeros(0, 1, device="cuda"), torch.ones(0, 1, device="cuda"),
                                           torch.ones(32, device="cuda"))
    assert dx.shape == (0, 32) and torch.equal(dw, torch.zeros(32, device="cuda")) and torch.equal(db, dw)


@pytest.mark.cuda
@needs_gpu
def test_device_mixing_is_a_value_error_naming_the_argument():
    torch = torch_or_none
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match=r"^weight: is on the CPU but x is on cuda:0"):
        lnorm.layer_norm(x, torch.ones(8))
    with pytest.raises(ValueError, match=r"^weight: is on the CPU but x is on cuda:0"):
        lnorm.layer_norm(x, np.ones(8, np.float32))
    with pytest.raises(ValueError, match=r"^weight: is on cuda:0 but x is on the CPU"):
        lnorm.layer_norm(x.cpu(), torch.ones(8, device="cuda"))
    with pytest.raises(ValueError, match=r"^residual: is on the CPU"):
        lnorm.add_rms_norm(x, x.cpu())
    with pytest.raises(ValueError, match=r"^rstd: is on the CPU"):
        lnorm.rms_norm_backward(x, x, torch.ones(4, 1))
    with pytest.raises(TypeError, match=r"^weight: dtype float16 must be x's \(float32\) or float32"):
        lnorm.layer_norm(x, torch.ones(8, device="cuda", dtype=torch.float16))
    with pytest.raises(ValueError, match=r"^weight: shape \(7,\) does not match"):
        lnorm.layer_norm(x, torch.ones(7, device="cuda"))
    with pytest.raises(ValueError, match=r"^eps: "):
        lnorm.layer_norm(x, eps=-1.0)
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match=r"^weight: is on cuda:1 but x is on cuda:0"):
            lnorm.layer_norm(x, torch.ones(8, device="cuda:1"))


def _public_takes_stream():
    import inspect

    return "stream" in inspect.signature(lnorm.layer_norm).parameters


@pytest.mark.cuda
@needs_gpu
def test_streams_current_and_explicit_without_synchronizing():
    torch = torch_or_none
    x = torch.randn(4096, 4096, device="cuda")
    want = lnorm.layer_norm(x)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    # The caller's current stream: queued behind a long kernel on it, and the call does not wait.
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on `side`
        t0 = time.perf_counter()
        y = lnorm.layer_norm(x)
        returned = time.perf_counter() - t0
        assert not side.query(), "the work should still be queued on the current (side) stream"
    assert returned < 0.05, f"the call blocked for {returned:.3f} s"
    side.synchronize()
    assert torch.equal(y, want)
    # An explicit stream: through the public API when it takes stream=, else through _cuda.
    other = torch.cuda.Stream()
    with torch.cuda.stream(other):
        torch.cuda._sleep(200_000_000)
    fn = lnorm.layer_norm if _public_takes_stream() else _cuda.layer_norm
    y2 = fn(x, stream=other)
    assert not other.query()
    other.synchronize()
    assert torch.equal(y2, want)
    y3 = _cuda.layer_norm(x, stream=other.cuda_stream)  # a raw handle
    other.synchronize()
    assert torch.equal(y3, want)


@pytest.mark.cuda
@needs_gpu
def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64", "float16"):
        xh = rng.standard_normal((33, 1025)).astype(dtype)
        x = cupy.asarray(xh)
        w = cupy.asarray(rng.standard_normal(1025).astype(dtype))
        y, mean, rstd = lnorm.layer_norm(x, w, return_stats=True)
        assert isinstance(y, cupy.ndarray) and y.dtype == x.dtype and y.shape == x.shape
        want, _, _ = _ref_forward(xh, cupy.asnumpy(w), None, 1e-5, False)
        _close(cupy.asnumpy(y), want, dtype, scale=1 + float(abs(cupy.asnumpy(w)).max()), what=f"cupy {dtype}")
        dx, dw, db = lnorm.layer_norm_backward(cupy.ones_like(x), x, mean, rstd, w)
        assert isinstance(dx, cupy.ndarray) and isinstance(dw, cupy.ndarray)
        y2, s2 = lnorm.add_rms_norm(x, x)
        assert isinstance(s2, cupy.ndarray) and bool((s2 == x + x).all())
    with pytest.raises(ValueError, match=r"^weight: is on the CPU"):
        lnorm.layer_norm(cupy.ones((2, 4), cupy.float32), np.ones(4, np.float32))
    s = cupy.cuda.Stream()
    with s:
        y = lnorm.rms_norm(cupy.ones((4, 64), cupy.float32))
    s.synchronize()
    assert bool(cupy.allclose(y, 1.0, atol=1e-5))
