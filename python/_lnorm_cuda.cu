// python/_lnorm_cuda.cu: the nanobind module of lnorm's CUDA backend, built only with LNORM_CUDA=ON.
// Deliberately thin, like python/_lnorm.cpp: CUDA arrays in through DLPack (PyTorch tensors, CuPy
// arrays), as 2-D row views (unit column stride, any row stride) and 1-D parameters, statistics and
// workspace; the calls of lnorm/cuda/norm.cuh queued on the caller's stream, with the GIL released
// and no synchronization. python/lnorm/_cuda.py checks arguments with friendly messages and lays
// the arrays out; this layer re-checks what would be unsafe (shapes, dtypes, devices, strides).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <lnorm/cuda/norm.cuh>

#include "_released_gil.hpp"

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace nb = nanobind;

namespace {

using in_array = nb::ndarray<nb::device::cuda, nb::ro>;
using out_array = nb::ndarray<nb::device::cuda>;

enum class elem { f32, f64, f16, bf16 };

template <class A>
elem elem_of(const A& a, const char* name) {
  const nb::dlpack::dtype d = a.dtype();
  const auto code = static_cast<nb::dlpack::dtype_code>(d.code);
  if (d.lanes == 1 && code == nb::dlpack::dtype_code::Float) {
    if (d.bits == 32) return elem::f32;
    if (d.bits == 64) return elem::f64;
    if (d.bits == 16) return elem::f16;
  }
  if (d.lanes == 1 && code == nb::dlpack::dtype_code::Bfloat && d.bits == 16) return elem::bf16;
  throw nb::type_error((std::string(name) + ": unsupported dtype (float32, float64, float16 or bfloat16)").c_str());
}

elem elem_from_name(const std::string& name) {
  if (name == "float32") return elem::f32;
  if (name == "float64") return elem::f64;
  if (name == "float16") return elem::f16;
  if (name == "bfloat16") return elem::bf16;
  throw std::invalid_argument("dtype: expected float32, float64, float16 or bfloat16");
}

[[noreturn]] void argument_error(const std::string& what) { throw std::invalid_argument(what); }

/// True when the array's elements are contiguous in C order (unit dimensions may have any stride).
template <class A>
bool c_contiguous(const A& a) {
  std::int64_t expect = 1;
  for (std::size_t d = a.ndim(); d-- > 0;) {
    const std::int64_t n = static_cast<std::int64_t>(a.shape(d));
    if (n != 1 && static_cast<std::int64_t>(a.stride(d)) != expect) return false;
    expect *= n;
  }
  return true;
}

/// An array as rows: row r at data + r * ld elements, unit column stride. A 2-D array with
/// contiguous columns (any row stride), or a C-contiguous array of any shape as rows of its last
/// dimension (what the Python side's fast path passes, without making views).
struct matrix {
  void* data = nullptr;
  std::int64_t rows = 0, cols = 0, ld = 0;
  elem type = elem::f32;
  int device = 0;

  template <class A>
  matrix(const A& a, const char* name) : data(const_cast<void*>(static_cast<const void*>(a.data()))), type(elem_of(a, name)),
                                          device(a.device_id()) {
    if (a.ndim() < 1) argument_error(std::string(name) + ": must have at least one dimension");
    cols = static_cast<std::int64_t>(a.shape(a.ndim() - 1));
    rows = cols == 0 ? 0 : static_cast<std::int64_t>(a.size()) / cols;
    if (a.ndim() == 2) {
      if (cols > 1 && a.stride(1) != 1) argument_error(std::string(name) + ": columns must be contiguous");
      ld = rows > 1 ? static_cast<std::int64_t>(a.stride(0)) : cols;
    } else {
      if (!c_contiguous(a)) argument_error(std::string(name) + ": must be 2-D (rows, cols) or C-contiguous");
      ld = cols;
    }
  }
};

/// A contiguous array of any shape taken as a vector (parameters, statistics, workspace).
struct vector {
  void* data = nullptr;
  std::int64_t size = 0;
  std::size_t bytes = 0;
  int device = 0;
  elem type = elem::f32;

  template <class A>
  vector(const A& a, const char* name, bool typed = true)
      : data(const_cast<void*>(static_cast<const void*>(a.data()))), size(static_cast<std::int64_t>(a.size())),
        bytes(a.nbytes()), device(a.device_id()) {
    if (typed) type = elem_of(a, name);
    if (!c_contiguous(a)) argument_error(std::string(name) + ": must be contiguous");
  }
};

/// Sets the current device for the scope of a call; puts the caller's back afterwards.
class device_scope {
 public:
  explicit device_scope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) check(cudaSetDevice(device));
    device_ = device;
  }
  ~device_scope() {
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
  }
  device_scope(const device_scope&) = delete;
  device_scope& operator=(const device_scope&) = delete;

  static void check(cudaError_t e) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("lnorm CUDA: ") + cudaGetErrorString(e));
  }

 private:
  int previous_ = -1, device_ = 0;
};

/// A failed status: ValueError for the library's argument checks, RuntimeError for CUDA's errors.
void throw_if_failed(const lnorm::cuda::status& s) {
  if (s) return;
  const char* cuda_text = cudaGetErrorString(s.error);
  if (s.error == cudaErrorInvalidValue && s.message != nullptr && s.message != cuda_text) argument_error(s.message);
  throw std::runtime_error(std::string("lnorm CUDA: ") + (s.message != nullptr ? s.message : cuda_text));
}

void same_device(int device, int other, const char* name) {
  if (other != device) argument_error(std::string(name) + ": is on another device than x");
}

void same_matrix(const matrix& x, const matrix& a, const char* name) {
  if (a.rows != x.rows || a.cols != x.cols) argument_error(std::string(name) + ": shape does not match x");
  if (a.type != x.type) throw nb::type_error((std::string(name) + ": dtype does not match x").c_str());
  same_device(x.device, a.device, name);
}

elem stat_elem(elem x) { return x == elem::f64 ? elem::f64 : elem::f32; }

/// A parameter (weight, bias, bias_in, dweight, dbias): `cols` elements of x's type or float32 (all
/// of one type, `w`); nullptr for None.
template <class A>
void* param(const std::optional<A>& a, const char* name, const matrix& x, std::optional<elem>& w) {
  if (!a) return nullptr;
  const vector v(*a, name);
  same_device(x.device, v.device, name);
  if (v.size != x.cols) argument_error(std::string(name) + ": size does not match x's columns");
  if (v.type != x.type && v.type != elem::f32)
    throw nb::type_error((std::string(name) + ": dtype must be x's or float32").c_str());
  if (w && *w != v.type) throw nb::type_error((std::string(name) + ": dtype differs from the other parameters'").c_str());
  w = v.type;
  return v.data;
}

/// A statistic (mean, rstd): `rows` elements of float32 (float64 for float64 x); nullptr for None.
template <class A>
void* stat(const std::optional<A>& a, const char* name, const matrix& x) {
  if (!a) return nullptr;
  const vector v(*a, name);
  same_device(x.device, v.device, name);
  if (v.size != x.rows) argument_error(std::string(name) + ": size does not match x's rows");
  if (v.type != stat_elem(x.type)) throw nb::type_error((std::string(name) + ": dtype must be float32 (float64 for float64 x)").c_str());
  return v.data;
}

std::pair<void*, std::size_t> workspace_of(const std::optional<out_array>& a, const matrix& x) {
  if (!a) return {nullptr, 0};
  const vector v(*a, "workspace", false);
  same_device(x.device, v.device, "workspace");
  return {v.data, v.bytes};
}

/// f(T{}, W{}) for the element type and the parameters' type.
template <class F>
void with_types(elem x, elem w, F&& f) {
  switch (x) {
    case elem::f32: return f(float{}, float{});
    case elem::f64: return w == elem::f32 ? f(double{}, float{}) : f(double{}, double{});
    case elem::f16: return w == elem::f32 ? f(__half{}, float{}) : f(__half{}, __half{});
    case elem::bf16: return w == elem::f32 ? f(__nv_bfloat16{}, float{}) : f(__nv_bfloat16{}, __nv_bfloat16{});
  }
}

cudaStream_t stream_of(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

void norm_forward(bool rms, const in_array& x_, const out_array& y_, const std::optional<in_array>& weight,
                  const std::optional<in_array>& bias, double eps, const std::optional<out_array>& mean,
                  const std::optional<out_array>& rstd, const std::optional<out_array>& workspace,
                  std::uintptr_t stream) {
  const matrix x(x_, "x"), y(y_, "out");
  same_matrix(x, y, "out");
  std::optional<elem> w;
  const void* g = param(weight, "weight", x, w);
  const void* b = param(bias, "bias", x, w);
  if (rms && b != nullptr) argument_error("bias: rms_norm has none");
  void* m = stat(mean, "mean", x);
  void* r = stat(rstd, "rstd", x);
  const auto ws = workspace_of(workspace, x);
  lnorm::cuda::status s;
  {
    lnorm_py::released_gil release;
    const device_scope on(x.device);
    with_types(x.type, w.value_or(x.type), [&](auto t, auto wt) {
      using T = decltype(t);
      using W = decltype(wt);
      using S = lnorm::cuda::stat_t<T>;
      if (rms) {
        s = lnorm::cuda::rms_norm<T, W>(static_cast<const T*>(x.data), x.ld, static_cast<T*>(y.data), y.ld, x.rows,
                                        x.cols, static_cast<const W*>(g), eps, static_cast<S*>(r), stream_of(stream),
                                        ws.first, ws.second);
      } else {
        s = lnorm::cuda::layer_norm<T, W>(static_cast<const T*>(x.data), x.ld, static_cast<T*>(y.data), y.ld, x.rows,
                                          x.cols, static_cast<const W*>(g), static_cast<const W*>(b), eps,
                                          static_cast<S*>(m), static_cast<S*>(r), stream_of(stream), ws.first,
                                          ws.second);
      }
    });
  }
  throw_if_failed(s);
}

void add_norm_forward(bool rms, const in_array& x_, const in_array& residual_, const std::optional<in_array>& bias_in,
                      const out_array& s_, const out_array& y_, const std::optional<in_array>& weight,
                      const std::optional<in_array>& bias, double eps, const std::optional<out_array>& mean,
                      const std::optional<out_array>& rstd, const std::optional<out_array>& workspace,
                      std::uintptr_t stream) {
  const matrix x(x_, "x"), res(residual_, "residual"), sum(s_, "residual_out"), y(y_, "out");
  same_matrix(x, res, "residual");
  same_matrix(x, sum, "residual_out");
  same_matrix(x, y, "out");
  std::optional<elem> w;
  const void* g = param(weight, "weight", x, w);
  const void* b = param(bias, "bias", x, w);
  const void* bi = param(bias_in, "bias_in", x, w);
  if (rms && b != nullptr) argument_error("bias: add_rms_norm has none");
  void* m = stat(mean, "mean", x);
  void* r = stat(rstd, "rstd", x);
  const auto ws = workspace_of(workspace, x);
  lnorm::cuda::status st;
  {
    lnorm_py::released_gil release;
    const device_scope on(x.device);
    with_types(x.type, w.value_or(x.type), [&](auto t, auto wt) {
      using T = decltype(t);
      using W = decltype(wt);
      using S = lnorm::cuda::stat_t<T>;
      if (rms) {
        st = lnorm::cuda::add_rms_norm<T, W>(static_cast<const T*>(x.data), x.ld, static_cast<const T*>(res.data), res.ld,
                                             static_cast<const W*>(bi), static_cast<T*>(sum.data), sum.ld,
                                             static_cast<T*>(y.data), y.ld, x.rows, x.cols, static_cast<const W*>(g), eps,
                                             static_cast<S*>(r), stream_of(stream), ws.first, ws.second);
      } else {
        st = lnorm::cuda::add_layer_norm<T, W>(
            static_cast<const T*>(x.data), x.ld, static_cast<const T*>(res.data), res.ld, static_cast<const W*>(bi),
            static_cast<T*>(sum.data), sum.ld, static_cast<T*>(y.data), y.ld, x.rows, x.cols, static_cast<const W*>(g),
            static_cast<const W*>(b), eps, static_cast<S*>(m), static_cast<S*>(r), stream_of(stream), ws.first,
            ws.second);
      }
    });
  }
  throw_if_failed(st);
}

void norm_backward(bool rms, const in_array& dy_, const in_array& x_, const std::optional<in_array>& mean,
                   const in_array& rstd, const std::optional<in_array>& weight, const out_array& dx_,
                   const std::optional<out_array>& dweight, const std::optional<out_array>& dbias,
                   const std::optional<out_array>& workspace, std::uintptr_t stream) {
  const matrix dy(dy_, "dy"), x(x_, "x"), dx(dx_, "dx");
  same_matrix(x, dy, "dy");
  same_matrix(x, dx, "dx");
  std::optional<elem> w;
  const void* g = param(weight, "weight", x, w);
  std::optional<elem> wd = w;  // dweight/dbias: the weight's type, x's without a weight
  if (!wd) wd = x.type;
  void* dg = param(dweight, "dweight", x, wd);
  void* db = param(dbias, "dbias", x, wd);
  const void* m = stat(mean, "mean", x);
  const void* r = stat(std::optional<in_array>(rstd), "rstd", x);
  if (!rms && m == nullptr) argument_error("mean: required for layer_norm_backward");
  if (rms && db != nullptr) argument_error("dbias: rms_norm has no bias");
  const auto ws = workspace_of(workspace, x);
  lnorm::cuda::status s;
  {
    lnorm_py::released_gil release;
    const device_scope on(x.device);
    with_types(x.type, *wd, [&](auto t, auto wt) {
      using T = decltype(t);
      using W = decltype(wt);
      using S = lnorm::cuda::stat_t<T>;
      if (rms) {
        s = lnorm::cuda::rms_norm_backward<T, W>(static_cast<const T*>(dy.data), dy.ld, static_cast<const T*>(x.data), x.ld,
                                                 static_cast<const S*>(r), static_cast<const W*>(g),
                                                 static_cast<T*>(dx.data), dx.ld, x.rows, x.cols, static_cast<W*>(dg),
                                                 stream_of(stream), ws.first, ws.second);
      } else {
        s = lnorm::cuda::layer_norm_backward<T, W>(
            static_cast<const T*>(dy.data), dy.ld, static_cast<const T*>(x.data), x.ld, static_cast<const S*>(m),
            static_cast<const S*>(r), static_cast<const W*>(g), static_cast<T*>(dx.data), dx.ld, x.rows, x.cols,
            static_cast<W*>(dg), static_cast<W*>(db), stream_of(stream), ws.first, ws.second);
      }
    });
  }
  throw_if_failed(s);
}

std::size_t forward_workspace_bytes(std::int64_t rows, std::int64_t cols, const std::string& dtype, int device) {
  std::size_t bytes = 0;
  lnorm::cuda::status s;
  {
    const device_scope on(device);
    with_types(elem_from_name(dtype), elem::f32, [&](auto t, auto) {
      s = lnorm::cuda::forward_workspace_size<decltype(t)>(rows, cols, bytes);
    });
  }
  throw_if_failed(s);
  return bytes;
}

std::size_t backward_workspace_bytes(std::int64_t rows, std::int64_t cols, const std::string& dtype, bool dweight,
                                     bool dbias, int device) {
  std::size_t bytes = 0;
  lnorm::cuda::status s;
  {
    const device_scope on(device);
    with_types(elem_from_name(dtype), elem::f32, [&](auto t, auto) {
      s = lnorm::cuda::backward_workspace_size<decltype(t)>(rows, cols, dweight, dbias, bytes);
    });
  }
  throw_if_failed(s);
  return bytes;
}

/// GPUs the CUDA runtime sees (0 without a driver or a device).
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error: it says only that there is nothing to run on
    return 0;
  }
  return n;
}

std::string compiled_architectures() {
#if defined(__CUDA_ARCH_LIST__)
#define LNORM_STRINGIFY2(...) #__VA_ARGS__
#define LNORM_STRINGIFY(...) LNORM_STRINGIFY2(__VA_ARGS__)
  return LNORM_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace

NB_MODULE(_lnorm_cuda, m) {
  m.doc() = "lnorm's CUDA backend (use the lnorm package, not this module).";
  m.def("norm_forward", &norm_forward, nb::arg("rms"), nb::arg("x"), nb::arg("y"), nb::arg("weight").none(),
        nb::arg("bias").none(), nb::arg("eps"), nb::arg("mean").none(), nb::arg("rstd").none(),
        nb::arg("workspace").none(), nb::arg("stream"),
        "y = layer_norm(x) or rms_norm(x) over the rows of x (2-D with contiguous columns, or C-contiguous: rows of "
        "its last axis); y, mean, rstd preallocated; queued on stream.");
  m.def("add_norm_forward", &add_norm_forward, nb::arg("rms"), nb::arg("x"), nb::arg("residual"),
        nb::arg("bias_in").none(), nb::arg("s"), nb::arg("y"), nb::arg("weight").none(), nb::arg("bias").none(),
        nb::arg("eps"), nb::arg("mean").none(), nb::arg("rstd").none(), nb::arg("workspace").none(), nb::arg("stream"),
        "s = x + bias_in + residual, y = norm(s), in one pass over the rows; queued on stream.");
  m.def("norm_backward", &norm_backward, nb::arg("rms"), nb::arg("dy"), nb::arg("x"), nb::arg("mean").none(),
        nb::arg("rstd"), nb::arg("weight").none(), nb::arg("dx"), nb::arg("dweight").none(), nb::arg("dbias").none(),
        nb::arg("workspace").none(), nb::arg("stream"), "dx (and dweight, dbias) of layer_norm or rms_norm; queued on stream.");
  m.def("forward_workspace_bytes", &forward_workspace_bytes, nb::arg("rows"), nb::arg("cols"), nb::arg("dtype"),
        nb::arg("device"), nb::call_guard<lnorm_py::released_gil>(),
        "Workspace bytes norm_forward/add_norm_forward need (0 for rows one block holds).");
  m.def("backward_workspace_bytes", &backward_workspace_bytes, nb::arg("rows"), nb::arg("cols"), nb::arg("dtype"),
        nb::arg("dweight"), nb::arg("dbias"), nb::arg("device"), nb::call_guard<lnorm_py::released_gil>(),
        "Workspace bytes norm_backward needs for dweight/dbias partial sums.");
  m.def("close_at_exit", &lnorm_py::close_at_exit,
        "Called at exit (atexit): threads coming back from native work afterwards park instead of taking the GIL.");
  lnorm_py::install_gate_fork_handler();
  m.def("device_count", &device_count, "CUDA devices visible (0 without a driver).");
  m.def("compiled_architectures", &compiled_architectures, "The SM architectures compiled in (__CUDA_ARCH_LIST__).");
}
