// python/_lnorm.cpp: the nanobind module, deliberately thin. NumPy arrays in (any strides, element
// types float32/float64/float16, and bfloat16 passed by Python as a uint16 view), the N-d calls of
// lnorm.hpp out, the GIL released around them. Argument checking with friendly messages lives in
// python/lnorm; this layer re-checks what would be unsafe and turns a failed status into ValueError.
// copy_rows (private: bench/bench.py and python -m lnorm) is the copy of the same bytes that lnorm's
// calls are measured against, lnorm/copy.hpp on lnorm's threads; it checks its own arguments.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <lnorm/copy.hpp>

#include "_lnorm_calls.hpp"
#include "_released_gil.hpp"

namespace nb = nanobind;

namespace {

using in_array = nb::ndarray<nb::device::cpu, nb::ro>;
using out_array = nb::ndarray<nb::device::cpu>;

enum class elem { f32, f64, f16, bf16 };

template <class A>
elem elem_of(const A& a, const char* name) {
  const nb::dlpack::dtype d = a.dtype();
  if (d == nb::dtype<float>()) return elem::f32;
  if (d == nb::dtype<double>()) return elem::f64;
  if (d.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float) && d.bits == 16 && d.lanes == 1) return elem::f16;
  if (d == nb::dtype<std::uint16_t>()) return elem::bf16;  // ml_dtypes.bfloat16 viewed as uint16
  throw nb::type_error((std::string(name) + ": unsupported dtype").c_str());
}

// A status message of the C++ core in the Python API's words: the core names its arguments as its
// C++ parameters (y, s, gamma, ...), the Python functions as out, residual_out, weight, ...
std::string python_words(const char* message) {
  static const char* const names[][2] = {{"y", "out"},          {"s", "residual_out"}, {"gamma", "weight"},
                                         {"beta", "bias"},      {"dgamma", "dweight"}, {"dbeta", "dbias"},
                                         {"groups", "num_groups"}};
  std::string out, word;
  auto flush = [&] {
    for (const auto& n : names)
      if (word == n[0]) word = n[1];
    out += word;
    word.clear();
  };
  for (const char* p = message; *p; ++p) {
    const char c = *p;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') {
      word += c;
    } else {
      flush();
      out += c;
    }
  }
  flush();
  return out;
}

// A failed status as the Python exception: MemoryError for memory, else ValueError naming the argument.
void raise_for(const lnorm::status& s) {
  if (s.code == lnorm::status_code::ok) return;
  if (s.code == lnorm::status_code::out_of_memory) throw std::bad_alloc();
  throw std::invalid_argument(python_words(s.message));
}

// The shape, strides and data of one array, as the N-d calls take them.
struct view {
  const void* data = nullptr;
  int ndim = 0;
  std::int64_t shape[lnorm::kMaxDims] = {};
  std::int64_t strides[lnorm::kMaxDims] = {};
  elem type = elem::f32;
  std::int64_t size = 1;
  bool contiguous = true;

  template <class A>
  view(const A& a, const char* name) : data(a.data()), ndim(static_cast<int>(a.ndim())), type(elem_of(a, name)) {
    if (ndim > lnorm::kMaxDims) throw std::invalid_argument(std::string(name) + ": too many dimensions");
    std::int64_t expect = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      shape[d] = static_cast<std::int64_t>(a.shape(d));
      strides[d] = static_cast<std::int64_t>(a.stride(d));
      if (shape[d] != 1 && strides[d] != expect) contiguous = false;
      expect *= shape[d];
      size *= shape[d];
    }
    if (size == 0) contiguous = true;
  }
  lnorm::strided arg() const { return {data, strides}; }
};

void same_shape(const view& a, const view& b, const char* name) {
  bool same = a.ndim == b.ndim;
  for (int d = 0; same && d < a.ndim; ++d) same = a.shape[d] == b.shape[d];
  if (!same) throw std::invalid_argument(std::string(name) + ": shape does not match x");
  if (a.type != b.type) throw nb::type_error((std::string(name) + ": dtype does not match x").c_str());
}

// Everything one call needs about the normalized axes.
struct problem {
  int ndim = 0;
  bool normalized[lnorm::kMaxDims] = {};
  std::int64_t rows = 1, cols = 1;
  problem(const view& x, std::uint64_t mask) : ndim(x.ndim) {
    if (x.ndim < 1) throw std::invalid_argument("x: must have at least one dimension");
    if (x.ndim < 64 && (mask >> x.ndim) != 0) throw std::invalid_argument("axis: out of range");
    for (int d = 0; d < x.ndim; ++d) {
      normalized[d] = (mask >> d) & 1;
      (normalized[d] ? cols : rows) *= x.shape[d];
    }
  }
};

// A parameter over the normalized axes (weight, bias) or a statistic over the others (mean, rstd):
// contiguous, `count` elements of an expected type. Returns its data (nullptr for None).
template <class A>
const void* checked(const std::optional<A>& a, const char* name, std::int64_t count, elem t1, elem t2) {
  if (!a) return nullptr;
  const view v(*a, name);
  if (v.type != t1 && v.type != t2) throw nb::type_error((std::string(name) + ": unexpected dtype").c_str());
  if (v.size != count) throw std::invalid_argument(std::string(name) + ": wrong number of elements");
  if (!v.contiguous) throw std::invalid_argument(std::string(name) + ": must be contiguous");
  return v.data;
}

// The weight type W: weight's dtype, else bias's, else x's (Python checks they agree).
elem weight_elem(const std::optional<in_array>& weight, const std::optional<in_array>& bias, elem x) {
  if (weight) return elem_of(*weight, "weight");
  if (bias) return elem_of(*bias, "bias");
  return x;
}

template <class F>
void with_types(elem x, elem w, F&& f) {
  switch (x) {
    case elem::f32: return f(float{}, float{});
    case elem::f64: return w == elem::f32 ? f(double{}, float{}) : f(double{}, double{});
    case elem::f16: return w == elem::f32 ? f(lnorm::float16_t{}, float{}) : f(lnorm::float16_t{}, lnorm::float16_t{});
    case elem::bf16: return w == elem::f32 ? f(lnorm::bfloat16_t{}, float{}) : f(lnorm::bfloat16_t{}, lnorm::bfloat16_t{});
  }
}

elem stat_elem(elem x) { return x == elem::f64 ? elem::f64 : elem::f32; }

void norm_forward(bool rms, const in_array& x_, const out_array& y_, const std::optional<in_array>& weight,
                  const std::optional<in_array>& bias, std::uint64_t mask, double eps,
                  const std::optional<out_array>& mean, const std::optional<out_array>& rstd) {
  const view x(x_, "x"), y(y_, "out");
  same_shape(x, y, "out");
  const problem p(x, mask);
  const elem w = weight_elem(weight, bias, x.type), st = stat_elem(x.type);
  const void* g = checked(weight, "weight", p.cols, x.type, elem::f32);
  const void* b = checked(bias, "bias", p.cols, w, w);
  void* m = const_cast<void*>(checked(mean, "mean", p.rows, st, st));
  void* r = const_cast<void*>(checked(rstd, "rstd", p.rows, st, st));
  lnorm::status s;
  with_types(x.type, w, [&](auto t, auto wt) {
    lnorm_py::released_gil release;
    s = lnorm_py::norm_forward_call<decltype(t), decltype(wt)>(rms, p.ndim, x.shape, p.normalized, x.arg(), y.arg(), g,
                                                               b, eps, m, r);
  });
  raise_for(s);
}

void add_norm_forward(bool rms, const in_array& x_, const in_array& residual_, const std::optional<in_array>& bias_in,
                      const out_array& s_, const out_array& y_, const std::optional<in_array>& weight,
                      const std::optional<in_array>& bias, std::uint64_t mask, double eps,
                      const std::optional<out_array>& mean, const std::optional<out_array>& rstd) {
  const view x(x_, "x"), res(residual_, "residual"), s(s_, "residual_out"), y(y_, "out");
  same_shape(x, res, "residual");
  same_shape(x, s, "residual_out");
  same_shape(x, y, "out");
  const problem p(x, mask);
  const elem w = weight_elem(weight, bias, x.type), st = stat_elem(x.type);
  const void* g = checked(weight, "weight", p.cols, x.type, elem::f32);
  const void* b = checked(bias, "bias", p.cols, w, w);
  const void* bi = checked(bias_in, "bias_in", p.cols, w, w);
  void* m = const_cast<void*>(checked(mean, "mean", p.rows, st, st));
  void* r = const_cast<void*>(checked(rstd, "rstd", p.rows, st, st));
  lnorm::status status;
  with_types(x.type, w, [&](auto t, auto wt) {
    lnorm_py::released_gil release;
    status = lnorm_py::add_norm_call<decltype(t), decltype(wt)>(rms, p.ndim, x.shape, p.normalized, x.arg(), res.arg(),
                                                                bi, s.arg(), y.arg(), g, b, eps, m, r);
  });
  raise_for(status);
}

void norm_backward(bool rms, const in_array& dy_, const in_array& x_, const std::optional<in_array>& mean,
                   const in_array& rstd, const std::optional<in_array>& weight, const out_array& dx_,
                   const std::optional<out_array>& dweight, const std::optional<out_array>& dbias, std::uint64_t mask) {
  const view dy(dy_, "dy"), x(x_, "x"), dx(dx_, "dx");
  same_shape(x, dy, "dy");
  same_shape(x, dx, "dx");
  const problem p(x, mask);
  const elem w = weight_elem(weight, std::nullopt, x.type), st = stat_elem(x.type);
  const void* g = checked(weight, "weight", p.cols, x.type, elem::f32);
  const void* m = checked(mean, "mean", p.rows, st, st);
  const void* r = checked(std::optional<in_array>(rstd), "rstd", p.rows, st, st);
  void* dg = const_cast<void*>(checked(dweight, "dweight", p.cols, w, w));
  void* db = const_cast<void*>(checked(dbias, "dbias", p.cols, w, w));
  if (!rms && !m) throw std::invalid_argument("mean: required for layer_norm_backward");
  lnorm::status s;
  with_types(x.type, w, [&](auto t, auto wt) {
    lnorm_py::released_gil release;
    s = lnorm_py::norm_backward_call<decltype(t), decltype(wt)>(rms, p.ndim, x.shape, p.normalized, dy.arg(), x.arg(),
                                                                m, r, g, dx.arg(), dg, db);
  });
  raise_for(s);
}

// A channel norm's channel count and statistics count (units: N * groups, or C for BatchNorm).
struct channel_counts {
  std::int64_t channels = 0, units = 0;
  channel_counts(const view& x, int channel_axis, bool batch, std::int64_t groups) {
    if (x.ndim < 2) throw std::invalid_argument("x: must have at least two dimensions (batch and channel)");
    const int ca = channel_axis < 0 ? channel_axis + x.ndim : channel_axis;
    if (ca < 1 || ca >= x.ndim) throw std::invalid_argument("channel_axis: out of range");
    channels = x.shape[ca];
    units = batch ? channels : x.shape[0] * groups;
  }
};

// The channel norms: GroupNorm (InstanceNorm: groups = C) or, with `batch`, BatchNorm. weight/bias (C,)
// of x's dtype or float32; running statistics, mean and rstd of the statistics' dtype, contiguous (the
// running statistics are written in training mode only, where python/lnorm has checked them writable).
void channel_forward(bool batch, const in_array& x_, const out_array& y_, const std::optional<in_array>& weight,
                     const std::optional<in_array>& bias, int channel_axis, std::int64_t groups, double eps, int act,
                     bool training, double momentum, const std::optional<in_array>& running_mean,
                     const std::optional<in_array>& running_var, const std::optional<out_array>& mean,
                     const std::optional<out_array>& rstd) {
  const view x(x_, "x"), y(y_, "out");
  same_shape(x, y, "out");
  const channel_counts n(x, channel_axis, batch, groups);
  const std::int64_t C = n.channels, units = n.units;
  const elem w = weight_elem(weight, bias, x.type), st = stat_elem(x.type);
  const void* g = checked(weight, "weight", C, x.type, elem::f32);
  const void* b = checked(bias, "bias", C, w, w);
  void* rm = const_cast<void*>(checked(running_mean, "running_mean", C, st, st));
  void* rv = const_cast<void*>(checked(running_var, "running_var", C, st, st));
  void* m = const_cast<void*>(checked(mean, "mean", units, st, st));
  void* r = const_cast<void*>(checked(rstd, "rstd", units, st, st));
  lnorm::status s;
  with_types(x.type, w, [&](auto t, auto wt) {
    lnorm_py::released_gil release;
    s = lnorm_py::channel_forward_call<decltype(t), decltype(wt)>(batch, x.ndim, x.shape, channel_axis, groups, x.arg(),
                                                                  y.arg(), g, b, eps, act, training, momentum, rm, rv, m, r);
  });
  raise_for(s);
}

void channel_backward(bool batch, const in_array& dy_, const in_array& x_, const in_array& mean, const in_array& rstd,
                      const std::optional<in_array>& weight, const out_array& dx_,
                      const std::optional<out_array>& dweight, const std::optional<out_array>& dbias, int channel_axis,
                      std::int64_t groups) {
  const view dy(dy_, "dy"), x(x_, "x"), dx(dx_, "dx");
  same_shape(x, dy, "dy");
  same_shape(x, dx, "dx");
  const channel_counts n(x, channel_axis, batch, groups);
  const std::int64_t C = n.channels, units = n.units;
  const elem w = weight_elem(weight, std::nullopt, x.type), st = stat_elem(x.type);
  const void* g = checked(weight, "weight", C, x.type, elem::f32);
  const void* m = checked(std::optional<in_array>(mean), "mean", units, st, st);
  const void* r = checked(std::optional<in_array>(rstd), "rstd", units, st, st);
  void* dg = const_cast<void*>(checked(dweight, "dweight", C, w, w));
  void* db = const_cast<void*>(checked(dbias, "dbias", C, w, w));
  lnorm::status s;
  with_types(x.type, w, [&](auto t, auto wt) {
    lnorm_py::released_gil release;
    s = lnorm_py::channel_backward_call<decltype(t), decltype(wt)>(batch, x.ndim, x.shape, channel_axis, groups,
                                                                   dy.arg(), x.arg(), m, r, g, dx.arg(), dg, db);
  });
  raise_for(s);
}

// The common call from Python, without the general argument machinery: x an exact, C-contiguous
// float32/float64/float16 ndarray (or, with bf16_bits, a uint16 view of a bfloat16 one) normalized over its last axis; weight and bias None or exact,
// contiguous 1-d ndarrays of x's dtype and length; eps a non-negative finite float; y allocated here
// with numpy.empty_like or out=. Anything else (and allocated outputs of max_bytes or more, which python/lnorm takes
// from its buffer cache) returns None, and python/lnorm takes the general path, which also raises
// the errors. Arrays are read through the buffer protocol: a few hundred nanoseconds in all.
struct fast_calls {
  PyTypeObject* ndarray = nullptr;
  nb::handle empty_like;  // a reference held for the life of the process (never released at exit)
};
// NumPy is imported on the first fast call, not when the module loads (the stub generator imports
// the module where NumPy may be absent).
fast_calls& fast() {
  static fast_calls f;
  if (!f.ndarray) {
    nb::module_ np = nb::module_::import_("numpy");
    f.empty_like = nb::object(np.attr("empty_like")).release();
    f.ndarray = reinterpret_cast<PyTypeObject*>(np.attr("ndarray").ptr());
  }
  return f;
}

// A Py_buffer of an exact ndarray, released on scope exit; ok() is false (and no error is set) when
// the object is something else or its buffer cannot be had with these flags.
class buffer {
 public:
  buffer(nb::handle h, int flags) {
    if (Py_TYPE(h.ptr()) != fast().ndarray) return;
    ok_ = PyObject_GetBuffer(h.ptr(), &b_, flags) == 0;
    if (!ok_) PyErr_Clear();
  }
  ~buffer() {
    if (ok_) PyBuffer_Release(&b_);
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  bool ok() const { return ok_; }
  const Py_buffer& operator*() const { return b_; }

 private:
  Py_buffer b_{};
  bool ok_ = false;
};

// With bf16_bits, only uint16 ('H'), read as bfloat16's bits (NumPy exports no buffer of bfloat16, so
// python/lnorm passes uint16 views of bfloat16 arrays and says so).
bool elem_of_format(const char* f, elem& out, bool bf16_bits = false) {
  if (f == nullptr || f[0] == '\0' || f[1] != '\0') return false;
  if (bf16_bits) {
    out = elem::bf16;
    return f[0] == 'H';
  }
  switch (f[0]) {
    case 'f': out = elem::f32; return true;
    case 'd': out = elem::f64; return true;
    case 'e': out = elem::f16; return true;
    default: return false;
  }
}

// A weight or bias for the fast path: None, or a 1-d contiguous ndarray of type t and length cols.
bool fast_param(nb::handle h, const buffer& b, elem t, std::int64_t cols, const void*& data, bool bf16_bits) {
  data = nullptr;
  if (h.is_none()) return true;
  elem e;
  if (!b.ok() || (*b).ndim != 1 || (*b).shape[0] != cols || !elem_of_format((*b).format, e, bf16_bits) || e != t) return false;
  data = (*b).buf;
  return true;
}

// out: None (y allocated with numpy.empty_like) or an exact C-contiguous writable ndarray of x's
// format and size; the core refuses it (a ValueError naming out) when it overlaps x other than
// exactly, or the weight or bias.
nb::object fast_forward(bool rms, nb::handle x_, nb::handle weight_, nb::handle bias_, nb::handle eps_,
                        nb::handle out_, std::int64_t max_bytes, bool bf16_bits) {
  const buffer x(x_, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT);
  elem t;
  if (!x.ok() || (*x).ndim < 1 || (*x).len == 0 || !elem_of_format((*x).format, t, bf16_bits)) return nb::none();
  if (out_.is_none() && (*x).len >= max_bytes) return nb::none();
  const std::int64_t cols = (*x).shape[(*x).ndim - 1];
  if (cols == 0 || !PyFloat_CheckExact(eps_.ptr())) return nb::none();
  const double eps = PyFloat_AsDouble(eps_.ptr());
  if (!(eps >= 0.0 && eps <= std::numeric_limits<double>::max())) return nb::none();
  const buffer w(weight_, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT), b(bias_, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT);
  const void* g;
  const void* bb;
  if (!fast_param(weight_, w, t, cols, g, bf16_bits) || !fast_param(bias_, b, t, cols, bb, bf16_bits)) return nb::none();
  nb::object y_ = out_.is_none() ? fast().empty_like(x_) : nb::borrow(out_);
  const buffer y(y_, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT);
  elem ty;
  if (!y.ok() || !elem_of_format((*y).format, ty, bf16_bits) || ty != t || (*y).ndim != (*x).ndim) return nb::none();
  for (int d = 0; d < (*x).ndim; ++d)
    if ((*y).shape[d] != (*x).shape[d]) return nb::none();
  const std::int64_t rows = (*x).len / (*x).itemsize / cols;
  const std::int64_t shape[2] = {rows, cols}, strides[2] = {cols, 1};
  const bool normalized[2] = {false, true};
  const lnorm::strided xs{(*x).buf, strides}, ys{(*y).buf, strides};
  lnorm::status s;
  with_types(t, t, [&](auto tt, auto wt) {
    lnorm_py::released_gil release;
    s = lnorm_py::norm_forward_call<decltype(tt), decltype(wt)>(rms, 2, shape, normalized, xs, ys, g, bb, eps, nullptr,
                                                                nullptr);
  });
  raise_for(s);
  return y_;
}

// The backward of the common call, on the same terms as fast_forward: dy and x exact C-contiguous
// ndarrays of one float format and shape, mean (LayerNorm) and rstd exact C-contiguous keepdims
// arrays of the statistics' format (float64 for float64, else float32), weight None or a contiguous
// 1-d array of x's format. Returns (dx, dweight, dbias) or (dx, dweight), or None to decline.
nb::object fast_backward(bool rms, nb::handle dy_, nb::handle x_, nb::handle mean_, nb::handle rstd_,
                         nb::handle weight_, std::int64_t max_bytes) {
  const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
  const buffer x(x_, flags), dy(dy_, flags);
  elem t, tdy;
  if (!x.ok() || !dy.ok() || (*x).ndim < 1 || (*x).len == 0 || (*x).len >= max_bytes) return nb::none();
  if (!elem_of_format((*x).format, t) || !elem_of_format((*dy).format, tdy) || tdy != t || (*dy).ndim != (*x).ndim)
    return nb::none();
  const int nd = (*x).ndim;
  for (int d = 0; d < nd; ++d)
    if ((*dy).shape[d] != (*x).shape[d]) return nb::none();
  const std::int64_t cols = (*x).shape[nd - 1];
  const std::int64_t rows = (*x).len / (*x).itemsize / cols;
  // A statistic: x's shape with the last axis 1, in the statistics' format.
  const elem st = stat_elem(t);
  const auto stat_fits = [&](const buffer& b) {
    elem e;
    if (!b.ok() || (*b).ndim != nd || !elem_of_format((*b).format, e) || e != st) return false;
    for (int d = 0; d < nd - 1; ++d)
      if ((*b).shape[d] != (*x).shape[d]) return false;
    return (*b).shape[nd - 1] == 1;
  };
  const buffer mean(mean_, flags), rstd(rstd_, flags), w(weight_, flags);
  if (!stat_fits(rstd) || (!rms && !stat_fits(mean))) return nb::none();
  const void* g;
  if (!fast_param(weight_, w, t, cols, g, false)) return nb::none();
  nb::object dx_ = fast().empty_like(x_);
  const buffer dx(dx_, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE);
  if (!dx.ok()) return nb::none();
  // dweight and dbias: the weight's dtype (x's when there is no weight); one row of x is the template.
  nb::object dw_ = g ? fast().empty_like(weight_) : nb::none();
  nb::object db_ = rms ? nb::none() : fast().empty_like(g ? weight_ : x_.attr("reshape")(rows, cols)[nb::int_(0)]);
  const buffer dw(dw_, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE), db(db_, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE);
  if ((g && !dw.ok()) || (!rms && !db.ok())) return nb::none();
  const std::int64_t shape[2] = {rows, cols}, strides[2] = {cols, 1};
  const bool normalized[2] = {false, true};
  const lnorm::strided dys{(*dy).buf, strides}, xs{(*x).buf, strides}, dxs{(*dx).buf, strides};
  lnorm::status s;
  with_types(t, t, [&](auto tt, auto wt) {
    lnorm_py::released_gil release;
    s = lnorm_py::norm_backward_call<decltype(tt), decltype(wt)>(
        rms, 2, shape, normalized, dys, xs, rms ? nullptr : (*mean).buf, (*rstd).buf, g, dxs, g ? (*dw).buf : nullptr,
        rms ? nullptr : (*db).buf);
  });
  raise_for(s);
  if (rms) return nb::make_tuple(dx_, dw_);
  return nb::make_tuple(dx_, dw_, db_);
}

// The aliasing rule of the core (lnorm::arrays_overlap and friends) on arrays described from Python
// as (name, (address, shape, byte strides, itemsize)): the CPU path's caller arrays before any copy,
// and the CUDA path's device arrays. A byte is the unit (an element is a trailing axis of `itemsize`
// bytes), so strides that are not whole elements are described exactly.
struct described {
  std::string name;
  std::vector<std::int64_t> shape, strides;
  lnorm::array_view view{};
};

std::vector<described> describe(const std::vector<std::pair<std::string, nb::tuple>>& arrays) {
  std::vector<described> out(arrays.size());
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    described& d = out[i];
    const nb::tuple& t = arrays[i].second;
    d.name = arrays[i].first;
    if (t.size() != 4) throw std::invalid_argument(d.name + ": expected (address, shape, strides, itemsize)");
    const auto address = nb::cast<std::uintptr_t>(t[0]);
    d.shape = nb::cast<std::vector<std::int64_t>>(t[1]);
    d.strides = nb::cast<std::vector<std::int64_t>>(t[2]);
    if (d.shape.size() != d.strides.size() || d.shape.size() + 1 > static_cast<std::size_t>(lnorm::kMaxDims))
      throw std::invalid_argument(d.name + ": shape and strides do not match");
    d.shape.push_back(nb::cast<std::int64_t>(t[3]));
    d.strides.push_back(1);
    d.view = {reinterpret_cast<const void*>(address), static_cast<int>(d.shape.size()), d.shape.data(),
              d.strides.data(), 1};
  }
  return out;
}

void check_aliasing(const std::vector<std::pair<std::string, nb::tuple>>& outputs,
                    const std::vector<std::pair<std::string, nb::tuple>>& inputs,
                    const std::vector<std::pair<std::string, std::string>>& exact_ok) {
  const std::vector<described> outs = describe(outputs), ins = describe(inputs);
  auto allowed = [&](const std::string& out, const std::string& in) {
    for (const auto& p : exact_ok)
      if (p.first == out && p.second == in) return true;
    return false;
  };
  for (std::size_t i = 0; i < outs.size(); ++i) {
    const described& o = outs[i];
    if (lnorm::has_internal_overlap(o.view)) throw std::invalid_argument(o.name + ": its elements overlap each other");
    for (const described& in : ins)
      if (lnorm::arrays_overlap(o.view, in.view) && !(allowed(o.name, in.name) && lnorm::same_view(o.view, in.view)))
        throw std::invalid_argument(o.name + ": overlaps " + in.name +
                                    "; an output may only be exactly its input (in place)");
    for (std::size_t j = 0; j < i; ++j)
      if (lnorm::arrays_overlap(o.view, outs[j].view))
        throw std::invalid_argument(o.name + ": overlaps " + outs[j].name + "; two outputs must not share memory");
  }
}

// ---- copy_rows: the copies lnorm's benchmarks set its calls against (lnorm/copy.hpp) -----------

// One NumPy array of any dtype as rows of bytes: `rows` rows of `row_bytes` contiguous bytes, row r at
// data() + r * ld (ld in bytes, any sign). The buffer is asked for without a format, so dtypes that
// export none (ml_dtypes.bfloat16) come in as bytes too. Checks what copy_rows needs, naming `name`.
class byte_rows {
 public:
  byte_rows(nb::handle a, const char* name, bool writable)
      : name_(name), held_(ndarray_named(a, name_), PyBUF_STRIDES | (writable ? PyBUF_WRITABLE : 0)) {
    if (!held_.ok) {
      if (writable && !nb::cast<bool>(a.attr("flags").attr("writeable")))
        throw std::invalid_argument(name_ + ": is read-only (flags.writeable is False)");
      throw std::invalid_argument(name_ + ": its memory cannot be read as a strided buffer");
    }
    const Py_buffer& b = held_.b;
    if (b.ndim < 1) throw std::invalid_argument(name_ + ": must have at least one dimension");
    itemsize = b.itemsize;
    cols = b.shape[b.ndim - 1];
    for (int d = 0; d < b.ndim - 1; ++d) rows *= b.shape[d];
    row_bytes = cols * itemsize;
    ld = row_bytes;
    if (rows > 0 && cols > 0) check_layout();
    shape_[0] = rows;
    shape_[1] = row_bytes;
    strides_[0] = ld;
  }

  void* data() const { return held_.b.buf; }
  const Py_buffer& buffer() const { return held_.b; }
  // The array as lnorm's aliasing rule sees it: rows x row_bytes bytes.
  lnorm::array_view bytes() const { return {held_.b.buf, 2, shape_, strides_, 1}; }

  std::int64_t rows = 1, cols = 0, itemsize = 1, row_bytes = 0, ld = 0;

 private:
  // A Py_buffer, released when its owner goes (also when the owner's constructor throws).
  struct held_buffer {
    Py_buffer b{};
    bool ok = false;
    held_buffer(nb::handle a, int flags) : ok(PyObject_GetBuffer(a.ptr(), &b, flags) == 0) {
      if (!ok) PyErr_Clear();
    }
    ~held_buffer() {
      if (ok) PyBuffer_Release(&b);
    }
    held_buffer(const held_buffer&) = delete;
    held_buffer& operator=(const held_buffer&) = delete;
  };

  static nb::handle ndarray_named(nb::handle a, const std::string& name) {
    const int is = PyObject_IsInstance(a.ptr(), reinterpret_cast<PyObject*>(fast().ndarray));
    if (is < 0) throw nb::python_error();
    if (!is) {
      const nb::handle type(reinterpret_cast<PyObject*>(Py_TYPE(a.ptr())));
      throw nb::type_error((name + ": expected a numpy.ndarray, got " + nb::cast<std::string>(type.attr("__name__"))).c_str());
    }
    return a;
  }

  // The last axis contiguous; the rows (all leading axes together) one evenly strided sequence: the
  // innermost leading axis of size > 1 gives the row stride, each outer one steps over all rows inside it.
  void check_layout() {
    const Py_buffer& b = held_.b;
    const int last = b.ndim - 1;
    if (cols > 1 && b.strides[last] != itemsize)
      throw std::invalid_argument(name_ + ": the last axis must be contiguous (stride " + std::to_string(b.strides[last]) +
                                  " bytes, itemsize " + std::to_string(itemsize) + ")");
    bool first = true;
    std::int64_t expect = 0;
    for (int d = last - 1; d >= 0; --d) {
      if (b.shape[d] == 1) continue;
      if (first) {
        ld = b.strides[d];
        first = false;
      } else if (b.strides[d] != expect) {
        throw std::invalid_argument(name_ + ": its rows are not evenly strided (axis " + std::to_string(d) +
                                    " has stride " + std::to_string(b.strides[d]) + " bytes, " +
                                    std::to_string(expect) + " expected)");
      }
      expect = b.strides[d] * b.shape[d];
    }
  }

  std::string name_;
  held_buffer held_;
  std::int64_t shape_[2] = {}, strides_[2] = {0, 1};
};

// str(obj), for a message.
std::string text(nb::handle obj) { return nb::str(obj).c_str(); }

lnorm::store_kind store_kind_from(nb::handle kind) {
  if (!PyUnicode_Check(kind.ptr())) throw nb::type_error("kind: expected a str ('plain', 'streaming' or 'memcpy')");
  const std::string k = nb::cast<std::string>(kind);
  if (k == "plain") return lnorm::store_kind::plain;
  if (k == "streaming") return lnorm::store_kind::streaming;
  if (k == "memcpy") return lnorm::store_kind::memcpy;
  throw std::invalid_argument("kind: expected 'plain', 'streaming' or 'memcpy', got '" + k + "'");
}

// An element of N bytes: copy_rows<T> only moves T's bytes, and sizing T as the dtype's item splits
// the rows among threads as lnorm's calls on that dtype split them (by element count).
template <std::size_t N>
struct item_bytes {
  unsigned char b[N];
};

template <class F>
void with_item(std::int64_t itemsize, F&& f) {
  switch (itemsize) {
    case 1: return f(item_bytes<1>{});
    case 2: return f(item_bytes<2>{});
    case 4: return f(item_bytes<4>{});
    case 8: return f(item_bytes<8>{});
    case 16: return f(item_bytes<16>{});
    default: return f(item_bytes<1>{});  // other sizes: bytes (a split by bytes, not elements)
  }
}

// dst[...] = src[...] with lnorm::copy_rows on lnorm's threads: the benchmarks' limit. src and dst:
// NumPy arrays of one dtype (any, bfloat16 included: bytes are copied) and shape; the last axis
// contiguous, the rows (all leading axes) evenly strided; dst writable and apart from src.
void copy_rows(nb::handle src_, nb::handle dst_, nb::handle kind_) {
  byte_rows src(src_, "src", false), dst(dst_, "dst", true);
  const nb::object src_dtype = src_.attr("dtype"), dst_dtype = dst_.attr("dtype");
  if (!src_dtype.equal(dst_dtype))
    throw nb::type_error(("dst: dtype " + text(dst_dtype) + " does not match src's " + text(src_dtype)).c_str());
  const Py_buffer &s = src.buffer(), &d = dst.buffer();
  bool same_shape = s.ndim == d.ndim;
  for (int i = 0; same_shape && i < s.ndim; ++i) same_shape = s.shape[i] == d.shape[i];
  if (!same_shape)
    throw std::invalid_argument("dst: shape " + text(dst_.attr("shape")) + " does not match src's " +
                                text(src_.attr("shape")));
  const lnorm::store_kind kind = store_kind_from(kind_);
  if (src.rows == 0 || src.cols == 0) return;
  if (lnorm::has_internal_overlap(dst.bytes())) throw std::invalid_argument("dst: its rows overlap each other");
  if (lnorm::arrays_overlap(src.bytes(), dst.bytes())) throw std::invalid_argument("dst: overlaps src");
  const std::int64_t n = src.itemsize;
  const bool whole_items = src.ld % n == 0 && dst.ld % n == 0;  // else bytes (an odd stride of a field view)
  with_item(whole_items ? n : 1, [&](auto t) {
    using T = decltype(t);
    const std::int64_t k = static_cast<std::int64_t>(sizeof(T));
    lnorm_py::released_gil release;
    lnorm::copy_rows(static_cast<const T*>(src.data()), src.ld / k, static_cast<T*>(dst.data()), dst.ld / k, src.rows,
                     src.row_bytes / k, kind);
  });
}

lnorm::isa isa_from(const std::string& name) {
  lnorm::isa i;
  if (lnorm::parse_isa(name.c_str(), i)) return i;
  std::string expected = "isa: expected ";  // "scalar, avx2, avx512 or neon", from lnorm::isa_table
  const std::size_t n = std::size(lnorm::isa_table);
  for (std::size_t k = 0; k < n; ++k)
    expected += std::string(k == 0 ? "" : k + 1 == n ? " or " : ", ") + lnorm::isa_table[k].name;
  throw std::invalid_argument(expected);
}

}  // namespace

NB_MODULE(_lnorm, m) {
  m.doc() = "lnorm's native core (use the lnorm package, not this module).";
  m.attr("version") = LNORM_VERSION_STRING;

  m.def("norm_forward", &norm_forward, nb::arg("rms"), nb::arg("x"), nb::arg("y"), nb::arg("weight").none(),
        nb::arg("bias").none(), nb::arg("mask"), nb::arg("eps"), nb::arg("mean").none(), nb::arg("rstd").none(),
        "y = layer_norm(x) or rms_norm(x) over the axes in the bit mask; y, mean, rstd preallocated.");
  m.def("add_norm_forward", &add_norm_forward, nb::arg("rms"), nb::arg("x"), nb::arg("residual"),
        nb::arg("bias_in").none(), nb::arg("s"), nb::arg("y"), nb::arg("weight").none(), nb::arg("bias").none(),
        nb::arg("mask"), nb::arg("eps"), nb::arg("mean").none(), nb::arg("rstd").none(),
        "s = x + bias_in + residual, y = norm(s), in one pass.");
  m.def("norm_backward", &norm_backward, nb::arg("rms"), nb::arg("dy"), nb::arg("x"), nb::arg("mean").none(),
        nb::arg("rstd"), nb::arg("weight").none(), nb::arg("dx"), nb::arg("dweight").none(), nb::arg("dbias").none(),
        nb::arg("mask"), "dx (and dweight, dbias) of layer_norm or rms_norm.");

  m.def("channel_forward", &channel_forward, nb::arg("batch"), nb::arg("x"), nb::arg("y"), nb::arg("weight").none(),
        nb::arg("bias").none(), nb::arg("channel_axis"), nb::arg("groups"), nb::arg("eps"), nb::arg("act"),
        nb::arg("training"), nb::arg("momentum"), nb::arg("running_mean").none(), nb::arg("running_var").none(),
        nb::arg("mean").none(), nb::arg("rstd").none(),
        "GroupNorm (InstanceNorm: groups = C) or, with batch, BatchNorm; arguments checked by python/lnorm.");
  m.def("channel_backward", &channel_backward, nb::arg("batch"), nb::arg("dy"), nb::arg("x"), nb::arg("mean"),
        nb::arg("rstd"), nb::arg("weight").none(), nb::arg("dx"), nb::arg("dweight").none(), nb::arg("dbias").none(),
        nb::arg("channel_axis"), nb::arg("groups"), "Backward of channel_forward (BatchNorm: training mode).");
  m.def("fast_forward", &fast_forward, nb::arg("rms"), nb::arg("x").none(), nb::arg("weight").none(), nb::arg("bias").none(),
        nb::arg("eps").none(), nb::arg("out").none(), nb::arg("max_bytes"), nb::arg("bf16_bits") = false,
        "layer_norm/rms_norm of a C-contiguous array over its last axis, y allocated; None when the call does not fit. "
        "With bf16_bits, the arrays are uint16 views of bfloat16 ones.");
  m.def("fast_backward", &fast_backward, nb::arg("rms"), nb::arg("dy").none(), nb::arg("x").none(), nb::arg("mean").none(),
        nb::arg("rstd").none(), nb::arg("weight").none(), nb::arg("max_bytes"),
        "the backward of fast_forward's calls; None when the call does not fit.");

  // Any object comes in (None, another dtype, a bad kind): copy_rows raises the errors that name it.
  m.def("copy_rows", &copy_rows, nb::arg("src").none(), nb::arg("dst").none(), nb::arg("kind").none(),
        nb::sig("def copy_rows(src: numpy.ndarray, dst: numpy.ndarray, kind: typing.Literal['plain', 'streaming', "
                "'memcpy']) -> None"),
        "dst[...] = src[...] with lnorm::copy_rows on lnorm's threads (kind: 'plain', 'streaming' or 'memcpy' "
        "stores): the copy of the same bytes that the benchmarks set lnorm's calls against. Arrays of one dtype "
        "(any; bytes are copied) and shape, last axis contiguous, rows evenly strided, dst writable and apart from "
        "src.");
  m.def("check_aliasing", &check_aliasing, nb::arg("outputs"), nb::arg("inputs"), nb::arg("exact_ok"),
        "The core's aliasing rule on (name, (address, shape, byte strides, itemsize)) arrays: ValueError naming the "
        "output that overlaps itself, an input (other than exactly one of its exact_ok pairs) or another output.");
  m.def("last_call", [] {
    const lnorm::call_record r = lnorm::last_call();
    return nb::make_tuple(std::string(lnorm::isa_name(r.kernels)), r.workers, r.threads);
  }, "(kernel set, workers planned, distinct threads that ran) of the last native call on this thread.");
  m.attr("max_threads") = lnorm::kMaxThreads;
  m.def("close_at_exit", &lnorm_py::close_at_exit,
        "Called at exit (atexit): threads coming back from native work afterwards park instead of taking the GIL.");
  m.def("in_main_interpreter", &lnorm_py::in_main_interpreter, "Whether this is the main interpreter.");
  lnorm_py::install_gate_fork_handler();

  m.def("isa_names", [] {
    nb::list names;
    for (const lnorm::isa_info& k : lnorm::isa_table) names.append(std::string(k.name));
    return names;
  }, "Every kernel set's name, worst first (lnorm::isa_table's rows), whether or not this build or CPU has it.");
  m.def("active_isa", [] { return std::string(lnorm::active_isa()); });
  m.def("set_isa", [](const std::string& name) { return lnorm::set_isa(isa_from(name)); }, nb::arg("name"));
  m.def("choose_isa", [] { lnorm::choose_isa(); });
  m.def("isa_forced", [] { return lnorm::isa_forced(); });
  m.def("isa_compiled", [](const std::string& name) { return lnorm::isa_compiled(isa_from(name)); }, nb::arg("name"));
  m.def("cpu_supports", [](const std::string& name) { return lnorm::cpu_supports(isa_from(name)); }, nb::arg("name"));
  m.def("get_num_threads", &lnorm::get_num_threads);
  m.def("set_num_threads", &lnorm::set_num_threads, nb::arg("n"));
  m.def("openmp", &lnorm::openmp_enabled);
  m.def("policy", [] {
    const lnorm::cpu_policy& p = lnorm::policy();
    nb::dict d;
    d["stream_float32"] = p.stream_4byte;
    d["stream_16bit"] = p.stream_2byte;
    d["stream_min_bytes"] = p.stream_min_bytes;
    d["prefetch_float32"] = p.prefetch_4byte;
    d["prefetch_16bit"] = p.prefetch_2byte;
    d["carry_min_bytes"] = p.carry_min_bytes;
    d["add_carry_min_bytes"] = p.add_carry_min_bytes;
    d["prefetch_l1_max"] = p.prefetch_l1_max;
    d["prefetch_twice"] = p.prefetch_twice;
    d["split_loads"] = p.split_loads;
    nb::list narrow;
    if (p.narrow_ops & lnorm::use_forward_4byte) narrow.append("forward_float32");
    d["avx2_ops"] = narrow;
    d["source"] = std::string(p.source);
    return d;
  }, "The store and prefetch policy the kernels follow on this CPU (lnorm/policy.hpp).");
  m.def("cuda_compiled", [] { return false; });
  m.def("cuda_devices", [] { return 0; });
}
