// lnorm/cuda/testing/selfcheck.hpp: every call of lnorm/cuda/norm.cuh checked against a float64
// reference computed here, on seeded random rows: widths around the vector and block sizes, row
// strides, misaligned starts, every element and weight type, large means, NaN/Inf and overflowing
// rows, eps from 0 up, with and without weight, bias, bias_in and statistics. One program runs it
// on a GPU (a .cu compiled by nvcc) or on the CPU (a .cpp with -DLNORM_CUDA_EMULATE, through
// lnorm/cuda/testing/emulator.hpp):
//
//   #include <lnorm/cuda/testing/selfcheck.hpp>
//   int main(int argc, char** argv) { return lnorm::cuda::testing::selfcheck_main(argc, argv); }
//
// The forward also runs in place, with the outputs the API lets alias an input (y = x; in the fused
// add s = x or residual, y = x or residual, s and y never the same), on every tier; every call is
// checked not to write between rows.
//
// Arguments: --quick (fewer cases: what the emulator can run in a minute), --filter TEXT (cases
// whose name contains TEXT), --list, --seed N (under the emulator: the schedule of its threads and
// blocks; 0, the default, the fixed order, "reversed" the reverse order, any other number a random
// order, each case's from N and its name, so --seed N --filter NAME replays one case; without
// --seed, LNORM_EMULATOR_SEED's). Prints the seed, up to three mismatches and a summary line per
// failed case, "FAILED name" for each at the end, and "N passed, M failed".
#pragma once

#include <lnorm/cuda/norm.cuh>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <functional>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace lnorm {
namespace cuda {
namespace testing {

enum class op { layer_norm, rms_norm, add_layer_norm, add_rms_norm, layer_norm_backward, rms_norm_backward };

inline const char* op_name(op o) {
  static const char* names[] = {"ln", "rms", "add_ln", "add_rms", "ln_bwd", "rms_bwd"};
  return names[static_cast<int>(o)];
}

enum class special { none, nan_row, inf_row, huge_row, constant_row };

/// Outputs of the forward that are an input (in place), as the API allows: y may be x; in the fused
/// add, s and y may each be x or residual, never the same array.
enum class alias { none, y_is_x, s_is_x, s_is_residual, y_is_residual, s_is_x_y_is_residual, s_is_residual_y_is_x };

inline const char* alias_name(alias a) {
  static const char* names[] = {"", "/y=x", "/s=x", "/s=res", "/y=res", "/s=x,y=res", "/s=res,y=x"};
  return names[static_cast<int>(a)];
}
inline bool y_is_x(alias a) { return a == alias::y_is_x || a == alias::s_is_residual_y_is_x; }
inline bool y_is_residual(alias a) { return a == alias::y_is_residual || a == alias::s_is_x_y_is_residual; }
inline bool s_is_x(alias a) { return a == alias::s_is_x || a == alias::s_is_x_y_is_residual; }
inline bool s_is_residual(alias a) { return a == alias::s_is_residual || a == alias::s_is_residual_y_is_x; }

/// One checked call.
struct case_spec {
  op what = op::layer_norm;
  int dtype = 0;       // 0 float, 1 double, 2 __half, 3 __nv_bfloat16
  bool w_float = false;  // weights float (else the element type)
  std::int64_t rows = 4, cols = 64;
  std::int64_t pad = 0;  // row stride = cols + pad
  int offset = 0;        // arrays start `offset` elements past an aligned address
  int y_offset = 0;      // and y (or dx) this many elements further
  double mean = 0;       // rows of this mean and spread `spread`
  double spread = 1;
  special extra = special::none;
  bool weight = true, bias = true, bias_in = false, stats = true;
  double eps = 1e-5;
  int device = 0;
  alias in_place = alias::none;  // the forward only; y_offset 0 where y is an input

  std::string name() const {
    static const char* types[] = {"f32", "f64", "f16", "bf16"};
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s/%s%s/%lldx%lld/pad%lld/off%d%s/mean%g/%s%s%s%s%s/eps%g/dev%d%s", op_name(what),
                  types[dtype], w_float && dtype != 0 ? "+f32w" : "", static_cast<long long>(rows),
                  static_cast<long long>(cols), static_cast<long long>(pad), offset, y_offset ? "+y1" : "", mean,
                  extra == special::nan_row        ? "nan"
                  : extra == special::inf_row      ? "inf"
                  : extra == special::huge_row     ? "huge"
                  : extra == special::constant_row ? "const"
                                                   : "-",
                  weight ? "w" : "", bias ? "b" : "", bias_in ? "i" : "", stats ? "s" : "", eps, device,
                  alias_name(in_place));
    return buf;
  }
};

namespace detail {

// The kernels' own conversions (device.cuh), on the host.
template <class T>
T to_elem(double v) {
  return cuda::detail::narrow<T>(v);
}

template <class T>
double from_elem(T v) {
  return static_cast<double>(cuda::detail::widen(v));
}

/// Output tolerance of a unit-scale value of T: a few of its roundings.
template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return 2e-5;
  if constexpr (std::is_same_v<T, __half>) return 2e-3;
  return 1.6e-2;
}

/// A device buffer of n elements of U starting `offset` elements past an aligned address.
template <class U>
class buffer {
 public:
  buffer(std::size_t n, int offset) : n_(n), offset_(offset) {
    if (cudaMalloc(&raw_, (n + offset + 16) * sizeof(U)) != cudaSuccess) raw_ = nullptr;
  }
  ~buffer() {
    if (raw_ != nullptr) cudaFree(raw_);
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  U* get() const { return raw_ == nullptr ? nullptr : static_cast<U*>(raw_) + offset_; }
  bool ok() const { return raw_ != nullptr; }
  void upload(const std::vector<U>& host) const { cudaMemcpy(get(), host.data(), n_ * sizeof(U), cudaMemcpyHostToDevice); }
  std::vector<U> download() const {
    std::vector<U> host(n_);
    cudaMemcpy(host.data(), get(), n_ * sizeof(U), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  std::size_t n_;
  int offset_;
  void* raw_ = nullptr;
};

/// n elements of device memory at p.
template <class U>
std::vector<U> download(const U* p, std::size_t n) {
  std::vector<U> host(n);
  if (n > 0) cudaMemcpy(host.data(), p, n * sizeof(U), cudaMemcpyDeviceToHost);
  return host;
}

/// Records mismatches; reports the first few, and on finish() their count and the largest error.
struct verdict {
  std::string name;
  int shown = 0;
  bool ok = true;
  std::int64_t count = 0;
  double worst = -1;  // |got - want|, infinity where one of them is NaN
  std::string worst_at = "";
  void fail(const char* what, std::int64_t r, std::int64_t c, double got, double want) {
    ok = false;
    ++count;
    if (shown++ < 3)
      std::printf("FAIL %s: %s[%lld][%lld] = %.9g, expected %.9g\n", name.c_str(), what, static_cast<long long>(r),
                  static_cast<long long>(c), got, want);
    const double err = std::isnan(got) != std::isnan(want) ? std::numeric_limits<double>::infinity()
                                                           : std::fabs(got - want);
    if (err > worst || worst_at.empty()) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s[%lld][%lld] = %.9g, expected %.9g", what, static_cast<long long>(r),
                    static_cast<long long>(c), got, want);
      worst = err;
      worst_at = buf;
    }
  }
  /// A call made without the workspace that a device without memory pools needs: refused with the
  /// workspace message (its plan needs one), or run (the size query bounds every plan the pointers
  /// may choose, and this call's needs none); never anything else.
  void refused_or_ran(const status& without) {
    if (without || (without.message != nullptr &&
                    std::strncmp(without.message, "workspace: this device has no", 29) == 0))
      return;
    std::printf("FAIL %s: without a workspace: %s\n", name.c_str(), without.message ? without.message : "?");
    ok = false;
  }
  void check(const char* what, std::int64_t r, std::int64_t c, double got, double want, double tol) {
    const bool both_nan = std::isnan(got) && std::isnan(want);
    if (!both_nan && got != want && !(std::fabs(got - want) <= tol)) fail(what, r, c, got, want);  // Inf == Inf
  }
  bool finish() const {
    if (!ok && count > 0)
      std::printf("FAIL %s: %lld mismatches, largest |error| %.3g at %s\n", name.c_str(), static_cast<long long>(count),
                  worst, worst_at.c_str());
    return ok;
  }
};

/// The elements between rows (row stride ld > cols) of an output: as they were before the call.
template <class U>
void check_between_rows(verdict& v, const char* what, const std::vector<U>& before, const std::vector<U>& after,
                        std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  for (std::int64_t r = 0; r + 1 < rows; ++r)
    for (std::int64_t c = cols; c < ld; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * ld + c);
      if (std::memcmp(&before[i], &after[i], sizeof(U)) != 0)
        v.fail(what, r, c, from_elem(after[i]), from_elem(before[i]));
    }
}

template <class T, class W>
bool run_case(const case_spec& cs) {
  using S = stat_t<T>;
  verdict v{cs.name()};
  const std::int64_t rows = cs.rows, cols = cs.cols, ld = cols + cs.pad;
  const std::size_t span = rows == 0 ? 0 : static_cast<std::size_t>((rows - 1) * ld + cols);
  const bool add = cs.what == op::add_layer_norm || cs.what == op::add_rms_norm;
  const bool backward = cs.what == op::layer_norm_backward || cs.what == op::rms_norm_backward;
  const bool rms = cs.what == op::rms_norm || cs.what == op::add_rms_norm || cs.what == op::rms_norm_backward;
  std::mt19937_64 rng(std::hash<std::string>{}(v.name));
  std::normal_distribution<double> normal(0.0, 1.0);
  const double tol = tolerance<T>();

  // Inputs, rounded to their types; the elements between rows hold garbage.
  std::vector<T> x(span, to_elem<T>(777.0)), res(span, to_elem<T>(-555.0)), dy(span, to_elem<T>(333.0));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * ld + c);
      double value = cs.mean + cs.spread * normal(rng);
      if (r == rows / 2 && cs.extra == special::huge_row) value = (c % 2 ? 1 : -1) * 1e37 * (1 + 0.5 * normal(rng));
      if (r == rows / 2 && cs.extra == special::constant_row) value = 3.25;
      x[i] = to_elem<T>(value);
      res[i] = to_elem<T>(normal(rng));
      dy[i] = to_elem<T>(normal(rng));
    }
  }
  if (rows > 0 && cs.extra == special::nan_row) x[static_cast<std::size_t>((rows / 2) * ld + cols / 3)] = to_elem<T>(std::nan(""));
  if (rows > 0 && cs.extra == special::inf_row)
    x[static_cast<std::size_t>((rows / 2) * ld + cols / 3)] = to_elem<T>(std::numeric_limits<double>::infinity());
  std::vector<W> gamma(static_cast<std::size_t>(cols)), beta(gamma.size()), bias_in(gamma.size());
  for (std::size_t c = 0; c < gamma.size(); ++c) {
    gamma[c] = to_elem<W>(1 + 0.5 * normal(rng));
    beta[c] = to_elem<W>(0.5 * normal(rng));
    bias_in[c] = to_elem<W>(0.5 * normal(rng));
  }

  // The input that is normalized, in double: x, or s = (x + bias_in) + residual rounded as the kernels do.
  std::vector<double> in(static_cast<std::size_t>(rows * cols));
  std::vector<T> s_expected(span);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * ld + c);
      T value = x[i];
      if (add) {
        S xb = static_cast<S>(from_elem(x[i]));
        if (cs.bias_in) xb = static_cast<S>(xb + static_cast<S>(from_elem(bias_in[static_cast<std::size_t>(c)])));
        value = to_elem<T>(static_cast<double>(static_cast<S>(xb + static_cast<S>(from_elem(res[i])))));
      }
      s_expected[i] = value;
      in[static_cast<std::size_t>(r * cols + c)] = from_elem(value);
    }
  }
  // Reference statistics: two passes in double on x - shift, shift the row's first element; the
  // mean is kept as shift + offset (one double of 1e9 is coarser than the float64 kernels' result).
  std::vector<double> mean_ref(static_cast<std::size_t>(rows)), rstd_ref(mean_ref.size());
  std::vector<double> shift_ref(mean_ref.size()), offset_ref(mean_ref.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* row = &in[static_cast<std::size_t>(r * cols)];
    const double shift = rms ? 0.0 : row[0];
    double m = 0, q = 0;
    if (!rms) {
      for (std::int64_t c = 0; c < cols; ++c) m += row[c] - shift;
      m /= static_cast<double>(cols);
    }
    for (std::int64_t c = 0; c < cols; ++c) q += ((row[c] - shift) - m) * ((row[c] - shift) - m);
    shift_ref[static_cast<std::size_t>(r)] = shift;
    offset_ref[static_cast<std::size_t>(r)] = m;
    mean_ref[static_cast<std::size_t>(r)] = shift + m;
    rstd_ref[static_cast<std::size_t>(r)] = 1.0 / std::sqrt(q / static_cast<double>(cols) + cs.eps);
  }

  const int off = cs.offset;
  buffer<T> dx_buf(span, off + cs.y_offset), x_buf(span, off), res_buf(span, off), s_buf(span, off),
      y_buf(span, off + cs.y_offset), dy_buf(span, off);
  buffer<W> g_buf(gamma.size(), 0), b_buf(gamma.size(), 0), bi_buf(gamma.size(), 0), dg_buf(gamma.size(), 0),
      db_buf(gamma.size(), 0);
  buffer<S> mean_buf(static_cast<std::size_t>(rows), 0), rstd_buf(static_cast<std::size_t>(rows), 0);
  x_buf.upload(x);
  res_buf.upload(res);
  dy_buf.upload(dy);
  g_buf.upload(gamma);
  b_buf.upload(beta);
  bi_buf.upload(bias_in);
  const W* g = cs.weight ? g_buf.get() : nullptr;
  const W* b = cs.bias && !rms ? b_buf.get() : nullptr;
  const W* bi = cs.bias_in ? bi_buf.get() : nullptr;
  S* m_out = cs.stats && !rms ? mean_buf.get() : nullptr;
  S* r_out = cs.stats ? rstd_buf.get() : nullptr;
  // The outputs, in place where the case says so (the expected values come from the host's copies
  // of the inputs).
  const alias al = cs.in_place;
  T* const y = y_is_x(al) ? x_buf.get() : y_is_residual(al) ? res_buf.get() : y_buf.get();
  T* const s_out = s_is_x(al) ? x_buf.get() : s_is_residual(al) ? res_buf.get() : s_buf.get();
  if ((al != alias::none && (backward || (cs.y_offset != 0 && (y_is_x(al) || y_is_residual(al))))) ||
      (!add && al != alias::y_is_x && al != alias::none)) {
    std::printf("FAIL %s: not a case the API allows\n", v.name.c_str());
    return false;
  }

  // A device without memory pools gets the workspace the size query names (the calls refuse to run
  // without one there: checked first); a device with pools lets the calls take it from lnorm's pool.
  int pools = 1;
  if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, cs.device) != cudaSuccess) pools = 1;
  std::size_t ws_bytes = 0;
  const status sized = backward ? backward_workspace_size<T>(rows, cols, cs.weight, !rms, ws_bytes)
                                : forward_workspace_size<T>(rows, cols, ws_bytes);
  if (!sized) {
    std::printf("FAIL %s: %s\n", v.name.c_str(), sized.message ? sized.message : "workspace size");
    return false;
  }
  buffer<unsigned char> ws_buf(pools ? 0 : ws_bytes, 0);
  void* const ws = pools || ws_bytes == 0 ? nullptr : ws_buf.get();
  const std::size_t ws_given = ws == nullptr ? 0 : ws_bytes;

  status st;
  if (!backward) {
    const std::vector<T> y_before = download(y, span), s_before = add ? download(s_out, span) : std::vector<T>();
    auto call_into = [&](T* yy, T* ss, void* work, std::size_t work_bytes) -> status {
      switch (cs.what) {
        case op::layer_norm:
          return layer_norm<T, W>(x_buf.get(), ld, yy, ld, rows, cols, g, b, cs.eps, m_out, r_out, nullptr, work,
                                  work_bytes);
        case op::rms_norm:
          return rms_norm<T, W>(x_buf.get(), ld, yy, ld, rows, cols, g, cs.eps, r_out, nullptr, work, work_bytes);
        case op::add_layer_norm:
          return add_layer_norm<T, W>(x_buf.get(), ld, res_buf.get(), ld, bi, ss, ld, yy, ld, rows, cols, g, b,
                                      cs.eps, m_out, r_out, nullptr, work, work_bytes);
        default:
          return add_rms_norm<T, W>(x_buf.get(), ld, res_buf.get(), ld, bi, ss, ld, yy, ld, rows, cols, g, cs.eps,
                                    r_out, nullptr, work, work_bytes);
      }
    };
    auto call = [&](void* work, std::size_t work_bytes) { return call_into(y, s_out, work, work_bytes); };
    // In place: the same call into separate outputs first; the in-place results must be its bits.
    std::vector<T> y_plain, s_plain;
    std::vector<S> m_plain, r_plain;
    if (al != alias::none) {
      const status plain = call_into(y_buf.get(), s_buf.get(), ws, ws_given);
      cudaDeviceSynchronize();
      if (!plain) {
        std::printf("FAIL %s: %s\n", v.name.c_str(), plain.message ? plain.message : "error");
        return false;
      }
      y_plain = y_buf.download();
      if (add) s_plain = s_buf.download();
      if (m_out) m_plain = mean_buf.download();
      if (r_out) r_plain = rstd_buf.download();
    }
    if (ws != nullptr && al == alias::none) {  // not in place: a second run would see its own output
      v.refused_or_ran(call(nullptr, 0));
      cudaDeviceSynchronize();
    }
    st = call(ws, ws_given);
    cudaDeviceSynchronize();
    if (!st) {
      std::printf("FAIL %s: %s\n", v.name.c_str(), st.message ? st.message : "error");
      return false;
    }
    const std::vector<T> y_got = download(y, span);
    const std::vector<T> s_got = add ? download(s_out, span) : std::vector<T>();
    check_between_rows(v, "y (between rows)", y_before, y_got, rows, cols, ld);
    if (add) check_between_rows(v, "s (between rows)", s_before, s_got, rows, cols, ld);
    const std::vector<S> m_got = m_out ? mean_buf.download() : std::vector<S>();
    const std::vector<S> r_got = r_out ? rstd_buf.download() : std::vector<S>();
    if (al != alias::none) {
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t c = 0; c < cols; ++c) {
          const std::size_t i = static_cast<std::size_t>(r * ld + c);
          if (std::memcmp(&y_got[i], &y_plain[i], sizeof(T)) != 0)
            v.fail("y in place (the bits of the call into separate outputs expected)", r, c, from_elem(y_got[i]),
                   from_elem(y_plain[i]));
          if (add && std::memcmp(&s_got[i], &s_plain[i], sizeof(T)) != 0)
            v.fail("s in place (the bits of the call into separate outputs expected)", r, c, from_elem(s_got[i]),
                   from_elem(s_plain[i]));
        }
        const std::size_t k = static_cast<std::size_t>(r);
        if (m_out && std::memcmp(&m_got[k], &m_plain[k], sizeof(S)) != 0)
          v.fail("mean in place (the bits of the call into separate outputs expected)", r, 0, m_got[k], m_plain[k]);
        if (r_out && std::memcmp(&r_got[k], &r_plain[k], sizeof(S)) != 0)
          v.fail("rstd in place (the bits of the call into separate outputs expected)", r, 0, r_got[k], r_plain[k]);
      }
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      const bool poisoned = (cs.extra == special::nan_row || cs.extra == special::inf_row) && r == rows / 2;
      const double mr = mean_ref[static_cast<std::size_t>(r)], rr = rstd_ref[static_cast<std::size_t>(r)];
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::size_t i = static_cast<std::size_t>(r * ld + c);
        if (add && std::memcmp(&s_got[i], &s_expected[i], sizeof(T)) != 0)
          v.fail("s", r, c, from_elem(s_got[i]), from_elem(s_expected[i]));
        const double dev = (in[static_cast<std::size_t>(r * cols + c)] - shift_ref[static_cast<std::size_t>(r)]) -
                           offset_ref[static_cast<std::size_t>(r)];
        const double xhat = dev == 0 ? 0.0 : dev * rr;  // a constant row with eps = 0: rstd Inf, applied as 0
        const double gw = g ? from_elem(gamma[static_cast<std::size_t>(c)]) : 1.0;
        const double bw = b ? from_elem(beta[static_cast<std::size_t>(c)]) : 0.0;
        const double want = poisoned ? std::nan("") : xhat * gw + bw;
        // Errors scale with the normalized value and the weights; rows of large mean carry the
        // input's own rounding relative to their spread on top (the reference shares it).
        v.check("y", r, c, from_elem(y_got[i]), want, tol * (2 + 2 * std::fabs(xhat * gw) + std::fabs(bw)));
        if (cs.extra == special::constant_row && r == rows / 2 && from_elem(y_got[i]) != from_elem(to_elem<T>(bw)))
          v.fail("y of a constant row (exactly bias expected)", r, c, from_elem(y_got[i]), bw);
      }
      if (m_out) {
        const double got = static_cast<double>(m_got[static_cast<std::size_t>(r)]);
        if (poisoned) {
          if (std::isfinite(got)) v.fail("mean (NaN or Inf expected)", r, 0, got, std::nan(""));
        } else {
          v.check("mean", r, 0, got, mr, 1e-6 * (std::fabs(mr) + 1 / rr) + (std::is_same_v<S, double> ? 0 : 1e-7 * std::fabs(mr)));
        }
      }
      if (r_out) {
        const double got = static_cast<double>(r_got[static_cast<std::size_t>(r)]);
        if (poisoned) {
          if (std::isfinite(got)) v.fail("rstd (NaN or Inf expected)", r, 0, got, std::nan(""));
        } else {
          v.check("rstd", r, 0, got, rr, (std::is_same_v<S, double> ? 1e-12 : 1e-5) * rr);
        }
      }
    }
    return v.finish();
  }

  // Backward: statistics from the reference, rounded to S, are the forward's output here.
  std::vector<S> mean_s(static_cast<std::size_t>(rows)), rstd_s(mean_s.size());
  for (std::size_t r = 0; r < mean_s.size(); ++r) {
    mean_s[r] = static_cast<S>(mean_ref[r]);
    rstd_s[r] = static_cast<S>(rstd_ref[r]);
  }
  mean_buf.upload(mean_s);
  rstd_buf.upload(rstd_s);
  W* dg = cs.weight ? dg_buf.get() : nullptr;
  W* db = rms ? nullptr : db_buf.get();
  const std::vector<T> dx_before = download(dx_buf.get(), span);
  auto call = [&](void* work, std::size_t work_bytes) -> status {
    if (rms) {
      return rms_norm_backward<T, W>(dy_buf.get(), ld, x_buf.get(), ld, rstd_buf.get(), g, dx_buf.get(), ld, rows,
                                     cols, dg, nullptr, work, work_bytes);
    }
    return layer_norm_backward<T, W>(dy_buf.get(), ld, x_buf.get(), ld, mean_buf.get(), rstd_buf.get(), g,
                                     dx_buf.get(), ld, rows, cols, dg, db, nullptr, work, work_bytes);
  };
  if (ws != nullptr) {
    v.refused_or_ran(call(nullptr, 0));
    cudaDeviceSynchronize();
  }
  st = call(ws, ws_given);
  cudaDeviceSynchronize();
  if (!st) {
    std::printf("FAIL %s: %s\n", v.name.c_str(), st.message ? st.message : "error");
    return false;
  }
  const std::vector<T> dx_got = dx_buf.download();
  check_between_rows(v, "dx (between rows)", dx_before, dx_got, rows, cols, ld);
  std::vector<double> dg_ref(static_cast<std::size_t>(cols)), db_ref(dg_ref.size()), dg_abs(dg_ref.size()),
      db_abs(dg_ref.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const bool poisoned = (cs.extra == special::nan_row || cs.extra == special::inf_row) && r == rows / 2;
    const double mu = rms ? 0.0 : static_cast<double>(mean_s[static_cast<std::size_t>(r)]);
    const double rs = static_cast<double>(rstd_s[static_cast<std::size_t>(r)]);
    double sum_g = 0, sum_gx = 0, scale = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * ld + c);
      const double xhat = (from_elem(x[i]) - mu) * rs, d = from_elem(dy[i]);
      const double gd = d * (g ? from_elem(gamma[static_cast<std::size_t>(c)]) : 1.0);
      sum_g += gd;
      sum_gx += gd * xhat;
      scale += std::fabs(gd) + std::fabs(gd * xhat);
      dg_ref[static_cast<std::size_t>(c)] += d * xhat;
      db_ref[static_cast<std::size_t>(c)] += d;
      dg_abs[static_cast<std::size_t>(c)] += std::fabs(d * xhat);
      db_abs[static_cast<std::size_t>(c)] += std::fabs(d);
    }
    const double c1 = rms ? 0.0 : sum_g / static_cast<double>(cols), c2 = sum_gx / static_cast<double>(cols);
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * ld + c);
      const double xhat = (from_elem(x[i]) - mu) * rs, d = from_elem(dy[i]);
      const double gd = d * (g ? from_elem(gamma[static_cast<std::size_t>(c)]) : 1.0);
      const double want = poisoned ? std::nan("") : rs * (gd - c1 - xhat * c2);
      v.check("dx", r, c, from_elem(dx_got[i]), want,
              tol * rs * (2 + std::fabs(gd) + std::fabs(xhat * c2) + 4 * scale / static_cast<double>(cols)));
    }
  }
  const bool any_poison = cs.extra == special::nan_row || cs.extra == special::inf_row;
  // Partial sums over rows: float accumulation adds up to one rounding per row.
  const double sum_tol = std::max(tolerance<W>(), std::numeric_limits<S>::epsilon() * static_cast<double>(rows));
  if (dg) {
    const std::vector<W> got = dg_buf.download();
    for (std::int64_t c = 0; c < cols; ++c)
      if (!any_poison)
        v.check("dgamma", 0, c, from_elem(got[static_cast<std::size_t>(c)]), dg_ref[static_cast<std::size_t>(c)],
                sum_tol * (2 + dg_abs[static_cast<std::size_t>(c)]));
  }
  if (db) {
    const std::vector<W> got = db_buf.download();
    for (std::int64_t c = 0; c < cols; ++c)
      if (!any_poison)
        v.check("dbeta", 0, c, from_elem(got[static_cast<std::size_t>(c)]), db_ref[static_cast<std::size_t>(c)],
                sum_tol * (2 + db_abs[static_cast<std::size_t>(c)]));
  }
  return v.finish();
}

/// The schedule seed of one case: 0 and reversed as they are; another seed mixed with the case's
/// name (FNV-1a, the same on every platform), so that a case replays alone (--filter).
inline std::uint64_t case_seed(std::uint64_t seed, const std::string& name) {
#if defined(LNORM_CUDA_EMULATE)
  if (seed == 0 || seed == emulator::kReversedSchedule) return seed;
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  std::uint64_t state = seed ^ h;
  const std::uint64_t mixed = emulator::splitmix64(state);
  return mixed == 0 || mixed == emulator::kReversedSchedule ? 1 : mixed;
#else
  (void)name;
  return seed;
#endif
}

inline bool run(const case_spec& cs) {
  if (cudaSetDevice(cs.device) != cudaSuccess) return true;  // no such device: nothing to check
  const bool wf = cs.w_float;
  switch (cs.dtype) {
    case 0: return run_case<float, float>(cs);
    case 1: return wf ? run_case<double, float>(cs) : run_case<double, double>(cs);
    case 2: return wf ? run_case<__half, float>(cs) : run_case<__half, __half>(cs);
    default: return wf ? run_case<__nv_bfloat16, float>(cs) : run_case<__nv_bfloat16, __nv_bfloat16>(cs);
  }
}

/// The cases: every width with every op, the element types, strides, offsets and the other options
/// taking turns across them (a fixed rotation), plus dedicated numerics cases.
inline std::vector<case_spec> cases(bool quick) {
  const std::int64_t widths_quick[] = {1,   2,   3,   7,    8,    9,    15,   16,   17,   31,  32,   33,  63,
                                       64,  65,  100, 127,  128,  129,  255,  256,  257,  300, 511,  513, 768,
                                       1000, 1023, 1025, 2048, 4099, 8192, 8200, 16387, 33000};
  const std::int64_t widths_full[] = {1,    2,    3,    4,    5,    7,    8,    9,     15,    16,    17,    24,
                                      31,   32,   33,   63,   64,   65,   100,  127,   128,   129,   255,   256,
                                      257,  300,  511,  512,  513,  768,  1000, 1023,  1024,  1025,  2048,  2049,
                                      3000, 4096, 4099, 5120, 8192, 8200, 12288, 16384, 16387, 24577, 32768,
                                      40000, 65536, 65539, 100003, 262147};
  std::vector<std::int64_t> widths = quick ? std::vector<std::int64_t>(std::begin(widths_quick), std::end(widths_quick))
                                           : std::vector<std::int64_t>(std::begin(widths_full), std::end(widths_full));
  std::vector<case_spec> out;
  int turn = 0;
  const op ops[] = {op::layer_norm, op::rms_norm, op::add_layer_norm, op::add_rms_norm, op::layer_norm_backward,
                    op::rms_norm_backward};
  for (std::int64_t cols : widths) {
    for (op o : ops) {
      const int types = quick ? 2 : 7;  // quick: two (type, weight) pairs per width and op, in turn
      for (int k = 0; k < types; ++k, ++turn) {
        case_spec cs;
        cs.what = o;
        const int pair = quick ? (turn * 3 + k) % 7 : k;  // (f32), (f64, f64w), (f64, f32w), (f16, ...), (bf16, ...)
        static const int dtype_of[] = {0, 1, 1, 2, 2, 3, 3};
        cs.dtype = dtype_of[pair];
        cs.w_float = pair == 2 || pair == 4 || pair == 6;
        cs.cols = cols;
        const std::int64_t budget = quick ? 40000 : 400000;  // elements per case
        cs.rows = std::max<std::int64_t>(2, std::min<std::int64_t>(cols < 64 ? 300 : 9, budget / cols));
        cs.pad = turn % 3 == 0 ? 0 : (turn % 3 == 1 ? 8 : 3);
        cs.offset = turn % 5 == 4 ? 1 : 0;
        cs.y_offset = turn % 7 == 3 ? 1 : 0;
        cs.weight = turn % 4 != 3;
        cs.bias = turn % 6 != 5;
        cs.bias_in = turn % 2 == 1;
        cs.stats = turn % 7 != 6;
        cs.eps = turn % 8 == 7 ? 0.5 : 1e-5;
        cs.device = turn % 5 == 2 ? 1 : 0;
        out.push_back(cs);
      }
    }
  }
  // Numerics: large means, NaN/Inf rows, overflowing squares, eps 0 and 10; each type and op kind.
  for (int dtype = 0; dtype < 4; ++dtype) {
    for (op o : ops) {
      for (std::int64_t cols : {std::int64_t(77), std::int64_t(3000), std::int64_t(20000)}) {
        if (quick && cols == 20000 && dtype != 3) continue;
        case_spec cs;
        cs.what = o;
        cs.dtype = dtype;
        cs.cols = cols;
        cs.rows = 5;
        cs.mean = dtype == 1 ? 1e9 : (dtype == 0 ? 1e5 : (dtype == 2 ? 100 : 1e4));
        cs.spread = dtype >= 2 && cs.mean > 0 ? cs.mean / 50 : 1;
        out.push_back(cs);
        cs.mean = 0;
        cs.spread = 1;
        cs.extra = special::nan_row;
        out.push_back(cs);
        cs.extra = special::inf_row;
        cs.device = 1;
        out.push_back(cs);
        cs.device = 0;
        if (dtype != 2 && o != op::layer_norm_backward && o != op::rms_norm_backward) {
          cs.extra = special::huge_row;  // squares overflow float: the scaled path
          out.push_back(cs);
        }
        if (o == op::layer_norm) {
          cs.extra = special::constant_row;  // mean exactly the value, var exactly 0: y exactly bias
          out.push_back(cs);
          const double eps = cs.eps;
          cs.eps = 0.0;  // var + eps exactly 0: rstd reported Inf, applied as 0, y still exactly bias
          out.push_back(cs);
          cs.eps = eps;
        }
        cs.extra = special::none;
        cs.eps = cols == 77 ? 0.0 : 10.0;
        out.push_back(cs);
      }
    }
  }
  // In place: every aliasing the API allows, on every tier of plan_forward: several rows per warp
  // (64, 100), one row per block (512 and up: two warps and more per row), the rest of the row in
  // shared memory (10000, 20000 on device 0), and split over blocks (10000, 20000 on device 1,
  // which has 3 KiB of shared memory; 3000 there is still one row per block).
  const struct {
    std::int64_t cols;
    int device;
  } tiers[] = {{64, 0},    {100, 0},   {512, 0},   {768, 0},   {1000, 0},  {4099, 0},
               {10000, 0}, {20000, 0}, {3000, 1},  {10000, 1}, {20000, 1}};
  const alias plain[] = {alias::y_is_x};
  const alias fused[] = {alias::y_is_x,        alias::s_is_x,           alias::s_is_residual,
                         alias::y_is_residual, alias::s_is_x_y_is_residual, alias::s_is_residual_y_is_x};
  for (int t = 0; t < static_cast<int>(std::size(tiers)); ++t) {
    int i = 0;  // the case within the tier: with t, turns the options (every option across the tiers)
    for (op o : {op::layer_norm, op::rms_norm, op::add_layer_norm, op::add_rms_norm}) {
      const bool add = o == op::add_layer_norm || o == op::add_rms_norm;
      for (alias al : add ? std::vector<alias>(std::begin(fused), std::end(fused))
                          : std::vector<alias>(std::begin(plain), std::end(plain))) {
        for (int k = 0; k < (quick ? 1 : 3); ++k) {
          case_spec cs;
          cs.what = o;
          cs.in_place = al;
          const int pair = (i + 3 * t + 2 * k) % 7;  // the (type, weight) pairs, as above
          static const int dtype_of[] = {0, 1, 1, 2, 2, 3, 3};
          cs.dtype = dtype_of[pair];
          cs.w_float = pair == 2 || pair == 4 || pair == 6;
          cs.cols = tiers[t].cols;
          cs.device = tiers[t].device;
          cs.rows = cs.cols < 512 ? 37 : (cs.cols < 10000 ? 5 : 3);
          const int turn = i + t + k;
          cs.pad = (i + 2 * t + k) % 3 == 0 ? 0 : ((i + 2 * t + k) % 3 == 1 ? 8 : 3);
          cs.offset = turn % 5 == 4 ? 1 : 0;
          cs.y_offset = !y_is_x(al) && !y_is_residual(al) && turn % 2 == 0 ? 1 : 0;
          cs.bias_in = turn % 2 == 1;
          cs.weight = (i + 3 * t) % 4 != 3;
          cs.stats = turn % 7 != 6;
          cs.mean = turn % 3 == 2 ? 10 : 0;  // a shift that matters: x[row, 0] far from 0
          out.push_back(cs);
        }
        ++i;
      }
    }
  }
  // Empty batches.
  for (op o : ops) {
    case_spec cs;
    cs.what = o;
    cs.rows = 0;
    out.push_back(cs);
  }
  return out;
}

}  // namespace detail

/// Runs the self-check; returns 0 when every case passed.
inline int selfcheck_main(int argc, char** argv) {
  bool quick = false, list = false;
  std::string filter;
  const char* seed_text = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") quick = true;
    else if (arg == "--list") list = true;
    else if (arg == "--filter" && i + 1 < argc) filter = argv[++i];
    else if (arg == "--seed" && i + 1 < argc) seed_text = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument \"%s\" (--quick, --list, --filter TEXT, --seed N|reversed)\n", arg.c_str());
      return 2;
    }
  }
#if defined(LNORM_CUDA_EMULATE)
  std::uint64_t seed = emulator::schedule_seed();  // LNORM_EMULATOR_SEED's, or 0
  if (seed_text != nullptr && !emulator::parse_schedule_seed(seed_text, seed)) {
    std::fprintf(stderr, "--seed: expected a number (0: the fixed order) or \"reversed\", got \"%s\"\n", seed_text);
    return 2;
  }
  if (!list) {
    if (seed == emulator::kReversedSchedule) std::printf("schedule seed: reversed (threads and blocks in reverse order)\n");
    else if (seed == 0) std::printf("schedule seed: 0 (the fixed order)\n");
    else std::printf("schedule seed: %llu (a random order per case, from the seed and the case's name)\n",
                     static_cast<unsigned long long>(seed));
  }
#else
  if (seed_text != nullptr && !list) std::printf("schedule seed: ignored (a GPU schedules its own threads)\n");
#endif
  int passed = 0, failed = 0;
  std::vector<std::string> failures;
  for (const case_spec& cs : detail::cases(quick)) {
    const std::string name = cs.name();
    if (!filter.empty() && name.find(filter) == std::string::npos) continue;
    if (list) {
      std::printf("%s\n", name.c_str());
      continue;
    }
#if defined(LNORM_CUDA_EMULATE)
    emulator::set_schedule_seed(detail::case_seed(seed, name));
#endif
    const bool ok = detail::run(cs);
    (ok ? passed : failed) += 1;
    if (!ok) failures.push_back(name);
    std::fflush(stdout);
  }
  for (const std::string& name : failures) std::printf("FAILED %s\n", name.c_str());
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace testing
}  // namespace cuda
}  // namespace lnorm
