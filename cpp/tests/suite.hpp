// cpp/tests/suite.hpp: the checks of the C++ tests, as templates over the data type T and the weight
// type W: problems (random, large-mean, constant rows; every layout), the runs on each kernel set,
// and the comparisons with the reference (reference_nd.hpp) and the scalar oracle. Each suite_*.cpp
// instantiates it for some types, so the build compiles in parallel.
#pragma once

#include "harness.hpp"
#include "reference_nd.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

namespace lnorm_test {

using lnorm::isa;
using lnorm::stat_t;

/// Whether `name` is one of the comma-separated names in `list`.
inline bool listed(const char* list, const char* name) {
  const std::string names = std::string(",") + list + ",";
  return names.find(std::string(",") + name + ",") != std::string::npos;
}

/// The kernel sets to test: those this machine can run, scalar first, or of those the ones named in
/// LNORM_TEST_ISAS (e.g. "neon" under an emulator, where the scalar set would only repeat the native
/// run). The scalar set is the oracle either way.
inline std::vector<isa>& tested_isas() {
  static std::vector<isa> sets = [] {
    const char* only = std::getenv("LNORM_TEST_ISAS");
    std::vector<isa> v;
    for (const lnorm::isa_info& k : lnorm::isa_table)
      if (lnorm::isa_available(k.id) && (!only || listed(only, k.name))) v.push_back(k.id);
    return v;
  }();
  return sets;
}

constexpr std::int64_t kSizes[] = {1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 255, 257, 1023, 1025, 4099};
constexpr double kEpsilons[] = {0.0, 1e-5, 10.0};

enum class op { layer_norm, rms_norm, add_layer_norm, add_rms_norm };
constexpr op kOps[] = {op::layer_norm, op::rms_norm, op::add_layer_norm, op::add_rms_norm};

inline bool is_rms(op o) { return o == op::rms_norm || o == op::add_rms_norm; }
inline bool is_add(op o) { return o == op::add_layer_norm || o == op::add_rms_norm; }
inline const char* op_name(op o) {
  switch (o) {
    case op::layer_norm: return "layer_norm";
    case op::rms_norm: return "rms_norm";
    case op::add_layer_norm: return "add_layer_norm";
    default: return "add_rms_norm";
  }
}

/// Forces a kernel set for the calls that follow; a failure here is a dispatch bug.
inline void use_isa(isa i) {
  if (!lnorm::set_isa(i) || lnorm::current_isa() != i) {
    std::printf("FATAL: set_isa(%s) did not take effect\n", lnorm::isa_name(i));
    std::exit(2);
  }
}

// ---- problems ----------------------------------------------------------------------------------

/// What the rows hold: random data, a mean `ratio` times the spread, or one value per row.
enum class rows_kind { random, large_mean, constant };

/// Which optional weights a problem has.
struct weights {
  bool gamma = true, beta = true, bias = false;
};
inline weights weight_variant(int k) { return {k % 4 != 3, k % 3 != 2, k % 2 == 1}; }

/// The values output elements start as, repeating, so that untouched elements can be recognized.
template <class T>
const std::array<T, 17>& fill_pattern() {
  static const std::array<T, 17> pattern = [] {
    std::array<T, 17> p{};
    for (std::size_t k = 0; k < p.size(); ++k) p[k] = from_double<T>(-1000.0 - static_cast<double>(k));
    return p;
  }();
  return pattern;
}
template <class T>
std::vector<T> filled(std::int64_t n) {
  const std::array<T, 17>& pattern = fill_pattern<T>();
  std::vector<T> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0, k = 0; i < v.size(); ++i, k = k + 1 == pattern.size() ? 0 : k + 1) v[i] = pattern[k];
  return v;
}

/// A random input value as T: data need no correctly rounded conversion, only a fast one.
template <class T>
T random_value(double v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else if constexpr (std::is_same_v<T, float>) return static_cast<float>(v);
  else return T::from_float(static_cast<float>(v));
}

/// The inputs of one N-d problem; buffers span the strided extents. Absent weights are empty.
template <class T, class W>
struct problem {
  geometry geo;
  row_table in, out;
  std::vector<T> x, residual, dy;
  std::vector<W> gamma, beta, bias;
  double eps = 1e-5;
  rows_kind kind = rows_kind::random;

  std::int64_t rows() const { return in.rows; }
  std::int64_t cols() const { return in.cols; }
  const W* gamma_ptr() const { return gamma.empty() ? nullptr : gamma.data(); }
  const W* beta_ptr() const { return beta.empty() ? nullptr : beta.data(); }
  const W* bias_ptr() const { return bias.empty() ? nullptr : bias.data(); }
  std::int64_t out_size() const { return buffer_size(geo, geo.out_strides, geo.out_base); }
};

template <class T, class W>
std::string describe(const problem<T, W>& p, const char* what) {
  char eps[32];
  std::snprintf(eps, sizeof eps, "%g", p.eps);
  std::string s = std::string(what) + " " + type_facts<T>::name;
  if (!std::is_same_v<T, W>) s += "/w:float32";
  s += " " + p.geo.name + " eps=" + eps;
  if (p.kind == rows_kind::large_mean) s += " large-mean";
  if (p.kind == rows_kind::constant) s += " constant-rows";
  s += p.gamma.empty() ? " -g" : " +g";
  s += p.beta.empty() ? "-b" : "+b";
  if (!p.bias.empty()) s += "+bias";
  return s + " [" + lnorm::active_isa() + "]";
}

template <class T, class W>
problem<T, W> make_problem(const geometry& geo, double eps, weights w, rows_kind kind, double ratio, rng& g) {
  problem<T, W> p;
  p.geo = geo;
  p.eps = eps;
  p.kind = kind;
  p.in = enumerate_rows(geo, geo.in_strides, geo.in_base);
  p.out = enumerate_rows(geo, geo.out_strides, geo.out_base);
  const std::int64_t in_size = buffer_size(geo, geo.in_strides, geo.in_base);
  // Gaps between rows hold random values too: a kernel that read them would show.
  p.x.resize(static_cast<std::size_t>(in_size));
  p.residual.resize(p.x.size());
  p.dy.resize(p.x.size());
  for (std::size_t i = 0; i < p.x.size(); ++i) {
    p.x[i] = random_value<T>(g.normal());
    p.residual[i] = random_value<T>(g.normal());
    p.dy[i] = random_value<T>(g.normal());
  }
  for (std::int64_t r = 0; r < p.rows(); ++r) {
    const double spread = std::exp2(g.uniform(-2, 2));
    double mean = spread * g.uniform(-3, 3);
    if (kind == rows_kind::large_mean) mean = (g.next() & 1 ? ratio : -ratio) * spread;
    const double constant = g.magnitude(-2, 2), residual_constant = g.magnitude(-2, 0);
    for (std::int64_t j = 0; j < p.cols(); ++j) {
      const std::size_t at = static_cast<std::size_t>(p.in.at(r, j));
      // Constant rows: every other row, so constant and ordinary rows meet in one call.
      if (kind == rows_kind::constant && r % 2 == 0) {
        p.x[at] = random_value<T>(constant);
        p.residual[at] = random_value<T>(residual_constant);
      } else {
        p.x[at] = random_value<T>(mean + spread * g.normal());
      }
    }
  }
  auto weight_vector = [&](bool present, double lo, double hi) {
    std::vector<W> v;
    if (present)
      for (std::int64_t j = 0; j < p.cols(); ++j) v.push_back(random_value<W>(g.magnitude(lo, hi)));
    return v;
  };
  p.gamma = weight_vector(w.gamma, -1, 1);
  p.beta = weight_vector(w.beta, -3, 0);
  p.bias = weight_vector(w.bias && kind != rows_kind::constant, -3, 0);
  return p;
}

// ---- running one kernel set --------------------------------------------------------------------

/// What one call wrote: whole output buffers (gaps must keep their fill) and statistics with one
/// guard element past the end.
template <class T, class W>
struct result {
  lnorm::status status;
  std::vector<T> y, s, dx;
  std::vector<stat_t<T>> mean, rstd;
  std::vector<W> dgamma, dbeta;
};

template <class T, class W>
result<T, W> run_forward(const problem<T, W>& p, op o) {
  result<T, W> r;
  r.y = filled<T>(p.out_size());
  r.s = filled<T>(p.out_size());
  r.mean = filled<stat_t<T>>(p.rows() + 1);
  r.rstd = filled<stat_t<T>>(p.rows() + 1);
  const geometry& g = p.geo;
  const T* x = p.x.data() + g.in_base;
  const T* res = p.residual.data() + g.in_base;
  T* y = r.y.data() + g.out_base;
  T* s = r.s.data() + g.out_base;
  const lnorm::strided xs{x, g.in_strides.data()}, ress{res, g.in_strides.data()};
  const lnorm::strided ys{y, g.out_strides.data()}, ss{s, g.out_strides.data()};
  const bool* norm = g.normalized.data();
  switch (o) {
    case op::layer_norm:
      r.status = g.row_api ? lnorm::try_layer_norm<T, W>(x, g.in_strides[0], y, g.out_strides[0], g.shape[0], g.shape[1],
                                                         p.gamma_ptr(), p.beta_ptr(), p.eps, r.mean.data(), r.rstd.data())
                           : lnorm::try_layer_norm_nd<T, W>(g.ndim(), g.shape.data(), norm, xs, ys, p.gamma_ptr(),
                                                            p.beta_ptr(), p.eps, r.mean.data(), r.rstd.data());
      break;
    case op::rms_norm:
      r.status = g.row_api ? lnorm::try_rms_norm<T, W>(x, g.in_strides[0], y, g.out_strides[0], g.shape[0], g.shape[1],
                                                       p.gamma_ptr(), p.eps, r.rstd.data())
                           : lnorm::try_rms_norm_nd<T, W>(g.ndim(), g.shape.data(), norm, xs, ys, p.gamma_ptr(), p.eps,
                                                          r.rstd.data());
      break;
    default:
      r.status = lnorm::try_add_norm_nd<T, W>(is_rms(o), g.ndim(), g.shape.data(), norm, xs, ress, p.bias_ptr(), ss, ys,
                                              p.gamma_ptr(), p.beta_ptr(), p.eps, r.mean.data(), r.rstd.data());
  }
  return r;
}

/// Backward from the given statistics (the oracle's); dgamma/dbeta asked for where gamma/beta exist.
template <class T, class W>
result<T, W> run_backward(const problem<T, W>& p, bool rms, const result<T, W>& stats) {
  result<T, W> r;
  r.dx = filled<T>(p.out_size());
  r.dgamma = filled<W>(p.cols() + 1);
  r.dbeta = filled<W>(p.cols() + 1);
  const geometry& g = p.geo;
  const lnorm::strided dys{p.dy.data() + g.in_base, g.in_strides.data()};
  const lnorm::strided xs{p.x.data() + g.in_base, g.in_strides.data()};
  const lnorm::strided dxs{r.dx.data() + g.out_base, g.out_strides.data()};
  r.status = lnorm::try_norm_backward_nd<T, W>(rms, g.ndim(), g.shape.data(), g.normalized.data(), dys, xs,
                                               rms ? nullptr : stats.mean.data(), stats.rstd.data(), p.gamma_ptr(), dxs,
                                               p.gamma.empty() ? nullptr : r.dgamma.data(),
                                               p.beta.empty() || rms ? nullptr : r.dbeta.data());
  return r;
}

// ---- the reference -----------------------------------------------------------------------------

/// The forward reference: s (as lnorm defines it, rounded to T), y, statistics, per-row output scale.
template <class T, class W>
struct expected_forward {
  std::vector<T> s;                      // rows x cols
  std::vector<double> y;                 // rows x cols
  std::vector<double> mean, rstd, spread;  // per row
  std::vector<double> y_scale;           // per row: max |xhat * gamma| + max |beta|, the output scale
};

template <class T, class W>
expected_forward<T, W> reference_forward(const problem<T, W>& p, op o) {
  using E = lnorm::calc_t<T>;
  const std::int64_t rows = p.rows(), n = p.cols();
  expected_forward<T, W> e;
  e.s.resize(static_cast<std::size_t>(rows * n));
  e.y.resize(e.s.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    // The fused add: (x + bias) + residual, each sum rounded to the calculation type, then to T.
    std::vector<double> v(static_cast<std::size_t>(n));
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t at = static_cast<std::size_t>(p.in.at(r, j));
      if (is_add(o)) {
        E sum = static_cast<E>(lnorm::widen(p.x[at]));
        if (!p.bias.empty()) sum = static_cast<E>(sum + static_cast<E>(lnorm::widen(p.bias[static_cast<std::size_t>(j)])));
        sum = static_cast<E>(sum + static_cast<E>(lnorm::widen(p.residual[at])));
        e.s[static_cast<std::size_t>(r * n + j)] = from_double<T>(static_cast<double>(sum));
        v[static_cast<std::size_t>(j)] = static_cast<double>(lnorm::widen(e.s[static_cast<std::size_t>(r * n + j)]));
      } else {
        v[static_cast<std::size_t>(j)] = static_cast<double>(lnorm::widen(p.x[at]));
      }
    }
    const exact_moments m = row_moments(n, [&](std::int64_t j) { return v[static_cast<std::size_t>(j)]; });
    const double var = is_rms(o) ? m.mean_square : m.var;
    const double center_hi = is_rms(o) ? 0.0 : m.mean_hi, center_lo = is_rms(o) ? 0.0 : m.mean_lo;
    const double rstd = inv_sqrt(var + p.eps);
    const double rstd_apply = var + p.eps > 0 ? rstd : 0.0;  // a constant row gives beta
    double max_scaled = 0, max_beta = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j);
      double y = ((v[jj] - center_hi) - center_lo) * rstd_apply;
      if (!p.gamma.empty()) y *= static_cast<double>(lnorm::widen(p.gamma[jj]));
      max_scaled = std::max(max_scaled, std::fabs(y));
      if (!p.beta.empty() && !is_rms(o)) {
        const double b = static_cast<double>(lnorm::widen(p.beta[jj]));
        y += b;
        max_beta = std::max(max_beta, std::fabs(b));
      }
      e.y[static_cast<std::size_t>(r * n) + jj] = y;
    }
    e.mean.push_back(m.mean);
    e.rstd.push_back(rstd);
    e.y_scale.push_back(max_scaled + max_beta);
    e.spread.push_back(std::sqrt(m.var));
  }
  return e;
}

/// The backward reference from the statistics the kernels are given.
template <class T, class W>
struct expected_backward {
  std::vector<double> dx, dx_scale;                              // rows x cols, per row
  std::vector<double> dgamma, dbeta, dgamma_scale, dbeta_scale;  // per column
};

template <class T, class W>
expected_backward<T, W> reference_backward(const problem<T, W>& p, bool rms, const result<T, W>& stats) {
  const std::int64_t rows = p.rows(), n = p.cols();
  expected_backward<T, W> e;
  e.dx.resize(static_cast<std::size_t>(rows * n));
  e.dgamma.assign(static_cast<std::size_t>(n), 0);
  e.dbeta = e.dgamma_scale = e.dbeta_scale = e.dgamma;
  std::vector<double> xh(static_cast<std::size_t>(n)), gd(xh.size()), d(xh.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const double mean = rms ? 0.0 : static_cast<double>(stats.mean[static_cast<std::size_t>(r)]);
    const double rstd = static_cast<double>(stats.rstd[static_cast<std::size_t>(r)]);
    compensated_sum sum_gd, sum_gdx;
    double max_gd = 0, max_xh = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j), at = static_cast<std::size_t>(p.in.at(r, j));
      xh[jj] = (static_cast<double>(lnorm::widen(p.x[at])) - mean) * rstd;
      d[jj] = static_cast<double>(lnorm::widen(p.dy[at]));
      gd[jj] = p.gamma.empty() ? d[jj] : d[jj] * static_cast<double>(lnorm::widen(p.gamma[jj]));
      sum_gd.add(gd[jj]);
      sum_gdx.add(gd[jj] * xh[jj]);
      max_gd = std::max(max_gd, std::fabs(gd[jj]));
      max_xh = std::max(max_xh, std::fabs(xh[jj]));
      e.dgamma[jj] += d[jj] * xh[jj];
      e.dgamma_scale[jj] += std::fabs(d[jj] * xh[jj]);
      e.dbeta[jj] += d[jj];
      e.dbeta_scale[jj] += std::fabs(d[jj]);
    }
    const double c1 = rms ? 0.0 : sum_gd.value() / static_cast<double>(n), c2 = sum_gdx.value() / static_cast<double>(n);
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j);
      e.dx[static_cast<std::size_t>(r * n) + jj] = rstd * (gd[jj] - c1 - xh[jj] * c2);
    }
    e.dx_scale.push_back(rstd * max_gd * (1 + max_xh) * (1 + max_xh));
  }
  return e;
}

// ---- comparisons -------------------------------------------------------------------------------

/// The roundoff of the arithmetic a kernel set uses for T: the scalar set works in double.
template <class T>
double roundoff_of(isa i) {
  return i == isa::scalar ? 0x1p-53 : calc_roundoff<T>();
}

/// The error bound of a result rounded to U: tol for the arithmetic, plus half an ulp of U (u * |want|)
/// and half U's subnormal step.
template <class U>
double bound_of(double want, double tol) {
  return type_facts<U>::unit_roundoff * std::fabs(want) * (1 + 1e-6) + (1 + type_facts<U>::unit_roundoff) * tol +
         type_facts<U>::abs_floor;
}

/// Element-wise comparisons of one output of one test case; remembers the worst error/tolerance
/// ratio of its family (output, type, kernel set) for the LNORM_TEST_VERBOSE summary.
class comparison {
 public:
  comparison(test_case& t, const char* what, std::string family) : t_(t), what_(what), family_(std::move(family)) {}
  comparison(const comparison&) = delete;
  comparison& operator=(const comparison&) = delete;
  ~comparison() {
    if (compared_) note_ratio(family_.c_str(), worst_);
  }

  /// |got - want| <= bound_of<U>(want, tol); NaN never passes.
  template <class U, class R>
  bool operator()(std::int64_t r, std::int64_t j, U got, R want, double tol) {
    const double g = to_double(got), w = static_cast<double>(want), bound = bound_of<U>(w, tol);
    const double err = std::fabs(g - w);
    const bool ok = err <= bound;
    compared_ = true;
    if (ok && bound > 0) worst_ = std::max(worst_, err / bound);
    return LNORM_CHECK(t_, ok, "%s[%lld,%lld] = %.9g, want %.9g (error %.3g > tolerance %.3g)", what_, static_cast<long long>(r),
                     static_cast<long long>(j), g, w, err, bound);
  }

 private:
  test_case& t_;
  const char* what_;
  std::string family_;
  double worst_ = 0;
  bool compared_ = false;
};

/// Output elements outside the problem and guard elements keep their fill.
template <class U>
void untouched(test_case& t, const char* what, const std::vector<U>& got, const std::vector<char>& written) {
  const std::array<U, 17>& pattern = fill_pattern<U>();
  for (std::size_t i = 0, k = 0; i < got.size(); ++i, k = k + 1 == pattern.size() ? 0 : k + 1)
    if (!written[i] && !LNORM_CHECK(t, bits_of(got[i]) == bits_of(pattern[k]), "%s[%zu] outside the problem was written", what, i))
      return;
}

inline std::vector<char> written_mask(const row_table& table, std::int64_t size) {
  std::vector<char> m(static_cast<std::size_t>(size), 0);
  for (std::int64_t o : table.offsets) m[static_cast<std::size_t>(o)] = 1;
  return m;
}
inline std::vector<char> first_n_mask(std::int64_t n, std::int64_t size) {
  std::vector<char> m(static_cast<std::size_t>(size), 0);
  for (std::int64_t i = 0; i < n; ++i) m[static_cast<std::size_t>(i)] = 1;
  return m;
}

/// The tolerance of y in one row: the kernel's arithmetic, roundoff u relative to the output scale,
/// growing with n. Nothing for the size of the mean: every kernel set keeps the mean as two parts
/// (m0 + c), so x - m0 is exact on a large-mean row and a float64 row whose mean is 1e8 times its
/// spread normalizes to float64 precision (a mean folded into one double would be off by 1e-8 of
/// the spread there, 1e7 times this tolerance).
template <class T, class W>
double y_tolerance(const problem<T, W>& p, const expected_forward<T, W>& e, std::size_t row, double u) {
  return growth(p.cols()) * u * static_cast<double>(e.y_scale[row]);
}

/// A forward result against the reference and, for a SIMD set, against the oracle's result (within
/// the sum of both error bounds; s exactly).
template <class T, class W>
void check_forward(test_case& t, const problem<T, W>& p, op o, isa i, const expected_forward<T, W>& e,
                   const result<T, W>& got, const result<T, W>* oracle) {
  using S = stat_t<T>;
  if (!LNORM_CHECK(t, got.status.code == lnorm::status_code::ok, "status: %s", got.status.message)) return;
  const std::string fam = std::string(type_facts<T>::name) + (p.kind == rows_kind::large_mean ? " large-mean " : " ") +
                          lnorm::isa_name(i);
  comparison y_vs_reference(t, "y", "y " + fam), y_vs_oracle(t, "y (vs scalar)", "y-vs-scalar " + fam);
  comparison rstd_vs_reference(t, "rstd", "rstd " + fam), mean_vs_reference(t, "mean", "mean " + fam);
  const double u = roundoff_of<T>(i), k = growth(p.cols());
  const std::int64_t rows = p.rows(), n = p.cols();
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::size_t rr = static_cast<std::size_t>(r);
    const double y_tol = y_tolerance(p, e, rr, u), oracle_tol = y_tolerance(p, e, rr, roundoff_of<T>(isa::scalar));
    bool row_ok = true;
    for (std::int64_t j = 0; j < n && row_ok; ++j) {
      const std::size_t at = static_cast<std::size_t>(p.out.at(r, j)), idx = static_cast<std::size_t>(r * n + j);
      const double want = static_cast<double>(e.y[idx]);
      row_ok = y_vs_reference(r, j, got.y[at], e.y[idx], y_tol);
      if (oracle)
        row_ok &= y_vs_oracle(r, j, got.y[at], to_double(oracle->y[at]),
                              bound_of<T>(want, y_tol) + bound_of<T>(want, oracle_tol));
      if (is_add(o)) {
        // s is defined exactly: (x + bias) + residual in the calculation type, rounded once to T.
        const bool same = bits_of(got.s[at]) == bits_of(e.s[idx]) ||
                          (std::isnan(to_double(got.s[at])) && std::isnan(to_double(e.s[idx])));
        row_ok &= LNORM_CHECK(t, same, "s[%lld,%lld] = %.9g, want exactly %.9g", static_cast<long long>(r),
                           static_cast<long long>(j), to_double(got.s[at]), to_double(e.s[idx]));
      }
    }
    // Statistics are float32 (float64 for float64 data), so they carry that rounding too. The SIMD
    // sets sum x - m0, m0 the mean of the first few elements, |mean - m0| <= 2 spreads: their sums'
    // errors scale with up to 3 spreads.
    const double want_rstd = static_cast<double>(e.rstd[rr]), shifted = 3 * k * u;
    if (std::isinf(want_rstd))
      LNORM_CHECK(t, std::isinf(static_cast<double>(got.rstd[rr])), "rstd[%lld] = %g, want inf", static_cast<long long>(r),
                  static_cast<double>(got.rstd[rr]));
    else
      rstd_vs_reference(r, 0, got.rstd[rr], e.rstd[rr], shifted * want_rstd);
    if (!is_rms(o))
      mean_vs_reference(r, 0, got.mean[rr], e.mean[rr],
                        shifted * static_cast<double>(e.spread[rr]) +
                            2 * type_facts<S>::unit_roundoff * std::fabs(static_cast<double>(e.mean[rr])));
  }
  const std::vector<char> y_written = written_mask(p.out, p.out_size());
  untouched(t, "y", got.y, y_written);
  untouched(t, "s", got.s, is_add(o) ? y_written : std::vector<char>(got.s.size(), 0));
  untouched(t, "mean", got.mean, first_n_mask(is_rms(o) ? 0 : rows, rows + 1));
  untouched(t, "rstd", got.rstd, first_n_mask(rows, rows + 1));
}

/// A backward result against the reference. dgamma/dbeta partials are summed in float32 (float64)
/// by every kernel set, the scalar one included.
template <class T, class W>
void check_backward(test_case& t, const problem<T, W>& p, bool rms, isa i, const expected_backward<T, W>& e,
                    const result<T, W>& got) {
  if (!LNORM_CHECK(t, got.status.code == lnorm::status_code::ok, "status: %s", got.status.message)) return;
  const std::string fam = std::string(type_facts<T>::name) + " " + lnorm::isa_name(i);
  comparison dx_vs_reference(t, "dx", "dx " + fam), dgamma_vs_reference(t, "dgamma", "dgamma " + fam),
      dbeta_vs_reference(t, "dbeta", "dbeta " + fam);
  const double u = roundoff_of<T>(i), u_partials = calc_roundoff<T>();
  const std::int64_t rows = p.rows(), n = p.cols();
  const double k = growth(std::max(n, rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    const double tol = k * u * static_cast<double>(e.dx_scale[static_cast<std::size_t>(r)]);
    for (std::int64_t j = 0; j < n; ++j)
      if (!dx_vs_reference(r, j, got.dx[static_cast<std::size_t>(p.out.at(r, j))], e.dx[static_cast<std::size_t>(r * n + j)], tol))
        break;
  }
  for (std::int64_t j = 0; j < n; ++j) {
    const std::size_t jj = static_cast<std::size_t>(j);
    if (!p.gamma.empty() &&
        !dgamma_vs_reference(0, j, got.dgamma[jj], e.dgamma[jj], k * u_partials * static_cast<double>(e.dgamma_scale[jj])))
      break;
    if (!p.beta.empty() && !rms &&
        !dbeta_vs_reference(0, j, got.dbeta[jj], e.dbeta[jj], k * u_partials * static_cast<double>(e.dbeta_scale[jj])))
      break;
  }
  untouched(t, "dx", got.dx, written_mask(p.out, p.out_size()));
  untouched(t, "dgamma", got.dgamma, first_n_mask(p.gamma.empty() ? 0 : n, n + 1));
  untouched(t, "dbeta", got.dbeta, first_n_mask(p.beta.empty() || rms ? 0 : n, n + 1));
}

// ---- the same results by other routes ---------------------------------------------------------

/// Rows short enough that try_ calls run each row whole (longer ones are cut into chunks).
constexpr std::int64_t kWholeRowCols = 4 * 16384;
/// Problems up to this size are also run in place and through the row-range API.
constexpr std::int64_t kRoutesMaxElements = std::int64_t{1} << 20;

/// The forward in place (y over x; for the fused add, s over the residual) and, for rows, through
/// the calling-thread row-range API: bitwise the out-of-place try_ result `got` (same kernel set).
template <class T, class W>
void check_other_routes(test_case& t, const problem<T, W>& p, op o, const result<T, W>& got) {
  const geometry& g = p.geo;
  const bool* norm = g.normalized.data();
  const std::int64_t rows = p.rows(), n = p.cols();
  auto same_outputs = [&](const char* route, const std::vector<T>& y, const std::vector<T>* s, const result<T, W>& stats) {
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::size_t rr = static_cast<std::size_t>(r);
      for (std::int64_t j = 0; j < n; ++j) {
        const std::size_t at = static_cast<std::size_t>(p.out.at(r, j));
        if (!LNORM_CHECK(t, bits_of(y[at]) == bits_of(got.y[at]), "%s: y[%lld,%lld] = %.9g, not %.9g", route,
                         static_cast<long long>(r), static_cast<long long>(j), to_double(y[at]), to_double(got.y[at])))
          return;
        if (s && !LNORM_CHECK(t, bits_of((*s)[at]) == bits_of(got.s[at]), "%s: s[%lld,%lld] differs", route,
                              static_cast<long long>(r), static_cast<long long>(j)))
          return;
      }
      LNORM_CHECK(t, bits_of(stats.rstd[rr]) == bits_of(got.rstd[rr]), "%s: rstd[%lld] differs", route, static_cast<long long>(r));
      if (!is_rms(o))
        LNORM_CHECK(t, bits_of(stats.mean[rr]) == bits_of(got.mean[rr]), "%s: mean[%lld] differs", route, static_cast<long long>(r));
    }
  };
  const bool same_layout = g.in_strides == g.out_strides && g.in_base == g.out_base;
  if (same_layout) {
    result<T, W> r;
    r.mean = filled<stat_t<T>>(rows + 1);
    r.rstd = filled<stat_t<T>>(rows + 1);
    std::vector<T> in_place = p.x, y = filled<T>(p.out_size());
    const lnorm::strided io{in_place.data() + g.in_base, g.in_strides.data()};
    if (!is_add(o)) {
      r.status = is_rms(o) ? lnorm::try_rms_norm_nd<T, W>(g.ndim(), g.shape.data(), norm, io, io, p.gamma_ptr(), p.eps, r.rstd.data())
                           : lnorm::try_layer_norm_nd<T, W>(g.ndim(), g.shape.data(), norm, io, io, p.gamma_ptr(),
                                                            p.beta_ptr(), p.eps, r.mean.data(), r.rstd.data());
      if (LNORM_CHECK(t, r.status.code == lnorm::status_code::ok, "in place: %s", r.status.message))
        same_outputs("in place", in_place, nullptr, r);
    } else {
      std::vector<T> residual = p.residual;  // s over the residual: the residual stream updated in place
      const lnorm::strided xs{p.x.data() + g.in_base, g.in_strides.data()};
      const lnorm::strided rs{residual.data() + g.in_base, g.in_strides.data()};
      const lnorm::strided ys{y.data() + g.out_base, g.out_strides.data()};
      r.status = lnorm::try_add_norm_nd<T, W>(is_rms(o), g.ndim(), g.shape.data(), norm, xs, rs, p.bias_ptr(), rs, ys,
                                              p.gamma_ptr(), p.beta_ptr(), p.eps, r.mean.data(), r.rstd.data());
      if (LNORM_CHECK(t, r.status.code == lnorm::status_code::ok, "s over residual: %s", r.status.message))
        same_outputs("s over residual", y, &residual, r);
    }
  }
  if (!g.row_api || n >= kWholeRowCols) return;
  result<T, W> r;
  r.y = filled<T>(p.out_size());
  r.s = filled<T>(p.out_size());
  r.mean = filled<stat_t<T>>(rows + 1);
  r.rstd = filled<stat_t<T>>(rows + 1);
  const T* x = p.x.data() + g.in_base;
  T* y = r.y.data() + g.out_base;
  const std::int64_t ldx = g.in_strides[0], ldy = g.out_strides[0];
  switch (o) {
    case op::layer_norm:
      r.status = lnorm::layer_norm_rows<T, W>(x, ldx, y, ldy, rows, n, p.gamma_ptr(), p.beta_ptr(), p.eps, r.mean.data(), r.rstd.data());
      break;
    case op::rms_norm:
      r.status = lnorm::rms_norm_rows<T, W>(x, ldx, y, ldy, rows, n, p.gamma_ptr(), p.eps, r.rstd.data());
      break;
    default:
      r.status = lnorm::add_norm_rows<T, W>(is_rms(o), x, ldx, p.residual.data() + g.in_base, ldx, p.bias_ptr(),
                                            r.s.data() + g.out_base, ldy, y, ldy, rows, n, p.gamma_ptr(), p.beta_ptr(),
                                            p.eps, r.mean.data(), r.rstd.data());
  }
  if (LNORM_CHECK(t, r.status.code == lnorm::status_code::ok, "row-range call: %s", r.status.message))
    same_outputs("row-range call", r.y, is_add(o) ? &r.s : nullptr, r);
}

/// The backward through the row-range API: dx bitwise the try_ call's; dgamma/dbeta, accumulated
/// into float32 (float64) buffers in another order, against the reference.
template <class T, class W>
void check_backward_rows(test_case& t, const problem<T, W>& p, bool rms, const result<T, W>& stats,
                         const expected_backward<T, W>& e, const result<T, W>& got) {
  const geometry& g = p.geo;
  const std::int64_t rows = p.rows(), n = p.cols();
  if (!g.row_api || n >= kWholeRowCols) return;
  std::vector<T> dx = filled<T>(p.out_size());
  std::vector<stat_t<T>> dgamma(static_cast<std::size_t>(n), 0), dbeta(dgamma.size(), 0);
  const lnorm::status st = lnorm::norm_backward_rows<T, W>(
      rms, p.dy.data() + g.in_base, g.in_strides[0], p.x.data() + g.in_base, g.in_strides[0], stats.mean.data(),
      stats.rstd.data(), p.gamma_ptr(), dx.data() + g.out_base, g.out_strides[0], rows, n, dgamma.data(), dbeta.data());
  if (!LNORM_CHECK(t, st.code == lnorm::status_code::ok, "row-range backward: %s", st.message)) return;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t at = static_cast<std::size_t>(p.out.at(r, j));
      if (!LNORM_CHECK(t, bits_of(dx[at]) == bits_of(got.dx[at]), "row-range backward: dx[%lld,%lld] differs",
                       static_cast<long long>(r), static_cast<long long>(j)))
        return;
    }
  comparison dgamma_ok(t, "row-range dgamma", "dgamma-rows"), dbeta_ok(t, "row-range dbeta", "dbeta-rows");
  const double tol = growth(std::max(n, rows)) * calc_roundoff<T>();
  for (std::int64_t j = 0; j < n; ++j) {
    const std::size_t jj = static_cast<std::size_t>(j);
    if (!dgamma_ok(0, j, dgamma[jj], e.dgamma[jj], tol * static_cast<double>(e.dgamma_scale[jj]))) break;
    if (!rms && !dbeta_ok(0, j, dbeta[jj], e.dbeta[jj], tol * static_cast<double>(e.dbeta_scale[jj]))) break;
  }
}

/// Every operation on one problem, on every kernel set: results against the reference, each SIMD
/// set's forward results against the oracle's, and other routes to the same results.
/// `simd_only`: forward only, on the SIMD sets only, against the reference (for the paths that only
/// they have, such as streaming stores).
template <class T, class W>
void check_problem(const problem<T, W>& p, bool with_backward,
                   const std::vector<op>& ops = std::vector<op>(std::begin(kOps), std::end(kOps)), bool simd_only = false) {
  for (op o : ops) {
    const expected_forward<T, W> e = reference_forward(p, o);
    use_isa(isa::scalar);
    const result<T, W> oracle = simd_only ? result<T, W>{} : run_forward(p, o);
    for (isa i : tested_isas()) {
      if (simd_only && i == isa::scalar) continue;
      use_isa(i);
      test_case t(describe(p, op_name(o)));
      const result<T, W> got = i == isa::scalar ? oracle : run_forward(p, o);
      check_forward(t, p, o, i, e, got, i == isa::scalar || simd_only ? nullptr : &oracle);
      if (p.out_size() < kRoutesMaxElements) check_other_routes(t, p, o, got);
    }
  }
  if (!with_backward) return;
  for (bool rms : {false, true}) {
    // The statistics every kernel set's backward gets: the oracle's.
    use_isa(isa::scalar);
    const result<T, W> stats = run_forward(p, rms ? op::rms_norm : op::layer_norm);
    bool finite = true;
    for (std::int64_t r = 0; r < p.rows(); ++r) finite &= std::isfinite(static_cast<double>(stats.rstd[static_cast<std::size_t>(r)]));
    if (!finite) continue;  // eps = 0 on a one-element row: no derivative
    const expected_backward<T, W> e = reference_backward(p, rms, stats);
    for (isa i : tested_isas()) {
      use_isa(i);
      test_case t(describe(p, rms ? "rms_norm_backward" : "layer_norm_backward"));
      const result<T, W> got = run_backward(p, rms, stats);
      check_backward(t, p, rms, i, e, got);
      check_backward_rows(t, p, rms, stats, e, got);
    }
  }
}

// ---- special rows ------------------------------------------------------------------------------

/// A NaN, +Inf or -Inf in one row (lane) makes that row NaN, statistics included, and leaves every
/// other row bitwise as it was without it.
template <class T, class W>
void check_poisoned_row(const geometry& geo, op o, double bad, rng& g, int variant) {
  problem<T, W> p = make_problem<T, W>(geo, 1e-5, weight_variant(variant), rows_kind::random, 0, g);
  problem<T, W> poisoned = p;
  const std::int64_t bad_row = g.below(p.rows()), bad_col = g.below(p.cols());
  poisoned.x[static_cast<std::size_t>(p.in.at(bad_row, bad_col))] = from_double<T>(bad);
  for (isa i : tested_isas()) {
    use_isa(i);
    char what[64];
    std::snprintf(what, sizeof what, "%s with %g at [%lld,%lld]", op_name(o), bad, static_cast<long long>(bad_row),
                  static_cast<long long>(bad_col));
    test_case t(describe(p, what));
    const result<T, W> clean = run_forward(p, o), got = run_forward(poisoned, o);
    for (std::int64_t r = 0; r < p.rows(); ++r) {
      const std::size_t rr = static_cast<std::size_t>(r);
      const long long rl = r;
      for (std::int64_t j = 0; j < p.cols(); ++j) {
        const std::size_t at = static_cast<std::size_t>(p.out.at(r, j));
        const long long jl = j;
        if (r == bad_row) {
          LNORM_CHECK(t, std::isnan(to_double(got.y[at])), "y[%lld,%lld] = %g in the poisoned row, want NaN", rl, jl,
                      to_double(got.y[at]));
        } else {
          LNORM_CHECK(t, bits_of(got.y[at]) == bits_of(clean.y[at]), "y[%lld,%lld] = %.9g changed (was %.9g)", rl, jl,
                      to_double(got.y[at]), to_double(clean.y[at]));
          if (is_add(o)) LNORM_CHECK(t, bits_of(got.s[at]) == bits_of(clean.s[at]), "s[%lld,%lld] changed", rl, jl);
        }
      }
      const double rstd = static_cast<double>(got.rstd[rr]), mean = static_cast<double>(got.mean[rr]);
      if (r == bad_row) {
        LNORM_CHECK(t, std::isnan(rstd), "rstd of the poisoned row = %g, want NaN", rstd);
        if (!is_rms(o)) LNORM_CHECK(t, std::isnan(mean), "mean of the poisoned row = %g, want NaN", mean);
      } else {
        LNORM_CHECK(t, bits_of(got.rstd[rr]) == bits_of(clean.rstd[rr]), "rstd[%lld] changed", rl);
        LNORM_CHECK(t, bits_of(got.mean[rr]) == bits_of(clean.mean[rr]), "mean[%lld] changed", rl);
      }
    }
  }
}

/// LayerNorm of a constant row (lane) is exactly beta (0 without beta), whatever eps; checked on a
/// problem whose even rows are constant and odd rows random, against the reference elsewhere.
template <class T, class W>
void check_constant_rows(const geometry& geo, op o, double eps, rng& g, int variant) {
  const problem<T, W> p = make_problem<T, W>(geo, eps, weight_variant(variant), rows_kind::constant, 0, g);
  const expected_forward<T, W> e = reference_forward(p, o);
  use_isa(isa::scalar);
  const result<T, W> oracle = run_forward(p, o);
  for (isa i : tested_isas()) {
    use_isa(i);
    test_case t(describe(p, op_name(o)));
    const result<T, W> got = run_forward(p, o);
    check_forward(t, p, o, i, e, got, i == isa::scalar ? nullptr : &oracle);
    for (std::int64_t r = 0; r < p.rows(); r += 2)
      for (std::int64_t j = 0; j < p.cols(); ++j) {
        const double y = to_double(got.y[static_cast<std::size_t>(p.out.at(r, j))]);
        const double beta = p.beta.empty() ? 0.0 : to_double(from_double<T>(to_double(p.beta[static_cast<std::size_t>(j)])));
        if (!LNORM_CHECK(t, y == beta, "constant row %lld: y[%lld] = %.9g, want exactly beta = %.9g", static_cast<long long>(r),
                      static_cast<long long>(j), y, beta))
          break;
      }
  }
}

// ---- the suite for one pair of types -----------------------------------------------------------

/// Whether to run the cases that stream (over 16 or 32 MiB): on unless LNORM_TEST_LARGE=0, which the
/// emulated runs set (there the scalar and NEON sets stream with plain stores anyway).
inline bool large_cases() {
  const char* v = std::getenv("LNORM_TEST_LARGE");
  return !(v && v[0] == '0');
}

/// Every layout, size, eps and special row for data T and weights W. With weights of float32 on
/// 16-bit or float64 data (`full` false), the layouts only: the special rows do not involve weights.
template <class T, class W>
void test_types(rng& g, bool full) {
  int variant = 0;
  auto random_problem = [&](const geometry& geo, double eps) {
    return make_problem<T, W>(geo, eps, weight_variant(variant++), rows_kind::random, 0, g);
  };
  // Trailing rows: every size around the vector widths, eps 0 / 1e-5 / 10.
  for (std::int64_t n : kSizes)
    for (double eps : kEpsilons) check_problem(random_problem(trailing_rows(3, n, n, n), eps), true);
  // Row strides (x and y differ) and misaligned starts, through the row-stride API.
  for (std::int64_t n : {1, 7, 16, 33, 255, 1025}) check_problem(random_problem(trailing_rows(4, n, n + 3, n + 5, 1), 1e-5), true);
  // A non-trailing axis: column tiles of 1..130 lanes (a tile is 64), normalized axes of 1 to 16.
  constexpr std::int64_t kAxisSizes[] = {3, 7, 16, 5, 1};
  for (std::int64_t width = 1; width <= 130; ++width)
    check_problem(random_problem(middle_axis(2, kAxisSizes[width % 5], width), kEpsilons[width % 3]), true);
  // Gathers: a normalized axis with stride 2, and two normalized axes around a batch axis.
  for (std::int64_t n : {1, 7, 33, 257}) check_problem(random_problem(strided_axis(3, n, 2), 1e-5), true);
  for (const geometry& geo : {outer_axes(3, 5, 7), outer_axes(2, 3, 33)}) check_problem(random_problem(geo, 1e-5), true);
  // Enough rows for two threads, and rows long enough to be split into chunks across threads.
  check_problem(random_problem(trailing_rows(17, 4099, 4099, 4099), 1e-5), true);
  if (!full) return;
  check_problem(random_problem(trailing_rows(2, 4 * 16384 + 5, 4 * 16384 + 5, 4 * 16384 + 5), 1e-5), true);
  // Outputs large enough for this CPU's policy to stream (lnorm/policy.hpp: 16 or 32 MiB), which the
  // SIMD sets then write with streaming stores, from a misaligned start.
  if (large_cases() && (tested_isas().size() > 1 || tested_isas()[0] != isa::scalar)) {
    const std::int64_t cols = 4099, rows = lnorm::policy().stream_min_bytes / (cols * static_cast<std::int64_t>(sizeof(T))) + 1;
    check_problem(random_problem(trailing_rows(rows, cols, cols, cols, 1), 1e-5), false, {op::layer_norm, op::add_rms_norm},
                  true);
  }

  // Large means: 1e4..1e6 times the spread for float32 (1e2, 1e3 for 16-bit data, which could hold no
  // spread at 1e4), up to 1e8 for float64, all held to the dtype's precision (see y_tolerance).
  const std::vector<double> ratios = sizeof(T) == 2               ? std::vector<double>{1e2, 1e3}
                                     : std::is_same_v<T, double> ? std::vector<double>{1e4, 1e6, 1e8}
                                                                 : std::vector<double>{1e4, 1e5, 1e6};
  for (double ratio : ratios)
    for (std::int64_t n : {7, 64, 1023})
      check_problem(make_problem<T, W>(trailing_rows(3, n, n, n), 1e-5, weight_variant(variant++), rows_kind::large_mean, ratio, g),
                    false);
  check_problem(make_problem<T, W>(trailing_rows(3, 4099, 4099, 4099), 1e-5, weight_variant(variant++), rows_kind::large_mean,
                                   ratios.back(), g),
                false);
  check_problem(make_problem<T, W>(middle_axis(2, 33, 70), 1e-5, weight_variant(variant++), rows_kind::large_mean,
                                   ratios.back(), g),
                false);

  // NaN, +Inf and -Inf: rows, column tiles and gathers; the plain and the fused forward.
  const double kBad[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                         -std::numeric_limits<double>::infinity()};
  int bad = 0;
  for (std::int64_t n : {1, 7, 64, 129, 1025})
    for (op o : kOps) check_poisoned_row<T, W>(trailing_rows(4, n, n, n), o, kBad[bad++ % 3], g, variant++);
  for (std::int64_t width : {1, 5, 64, 70, 130})
    for (op o : kOps) check_poisoned_row<T, W>(middle_axis(2, 9, width), o, kBad[bad++ % 3], g, variant++);
  for (op o : kOps) check_poisoned_row<T, W>(strided_axis(4, 33, 2), o, kBad[bad++ % 3], g, variant++);

  // Constant rows (and lanes) give exactly beta, whatever eps.
  for (std::int64_t n : {1, 3, 7, 16, 33, 255, 1025})
    for (double eps : kEpsilons)
      for (op o : {op::layer_norm, op::add_layer_norm}) check_constant_rows<T, W>(trailing_rows(4, n, n, n), o, eps, g, variant++);
  check_constant_rows<T, W>(trailing_rows(2, 4099, 4099, 4099), op::layer_norm, 0.0, g, variant++);
  for (std::int64_t width : {1, 7, 64, 130})
    for (double eps : kEpsilons) check_constant_rows<T, W>(middle_axis(2, 17, width), op::layer_norm, eps, g, variant++);
}

// The suites, one per data type (suite_<type>.cpp), each with weights of the type and of float32.
void run_float32_suite(rng& g);
void run_float64_suite(rng& g);
void run_float16_suite(rng& g);
void run_bfloat16_suite(rng& g);

}  // namespace lnorm_test
