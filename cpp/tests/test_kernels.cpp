// cpp/tests/test_kernels.cpp: checks every kernel set this machine can run (scalar, avx2, avx512, neon),
// each forced with lnorm::set_isa, against the scalar oracle and a double / long-double reference:
// forward with statistics, fused add, backward; float32, float64, float16, bfloat16 with weights of the
// data type or float32; trailing rows, row strides, column tiles, gathers; eps 0 to 10; large means;
// NaN/Inf rows; constant rows. Prints "N passed, M failed"; exits non-zero on any failure.
//
// Environment: LNORM_TEST_SEED (default 1234) changes the data; LNORM_TEST_VERBOSE=1 prints, per
// check family, the worst error / tolerance ratio seen.

#include "harness.hpp"
#include "reference_nd.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace lnorm_test {
namespace {

using lnorm::isa;
using lnorm::stat_t;

/// The kernel sets this machine can run, scalar (the oracle) first.
std::vector<isa> g_isas;

constexpr std::int64_t kSizes[] = {1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 255, 257, 1023, 1025, 4099};
constexpr double kEpsilons[] = {0.0, 1e-5, 10.0};

enum class op { layer_norm, rms_norm, add_layer_norm, add_rms_norm };
constexpr op kOps[] = {op::layer_norm, op::rms_norm, op::add_layer_norm, op::add_rms_norm};

bool is_rms(op o) { return o == op::rms_norm || o == op::add_rms_norm; }
bool is_add(op o) { return o == op::add_layer_norm || o == op::add_rms_norm; }
const char* op_name(op o) {
  switch (o) {
    case op::layer_norm: return "layer_norm";
    case op::rms_norm: return "rms_norm";
    case op::add_layer_norm: return "add_layer_norm";
    default: return "add_rms_norm";
  }
}

/// Forces a kernel set for the calls that follow; a failure here is a dispatch bug.
void use_isa(isa i) {
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
weights weight_variant(int k) { return {k % 4 != 3, k % 3 != 2, k % 2 == 1}; }

/// The value every output element starts as, so that untouched elements can be recognized.
template <class T>
T fill_value(std::size_t i) {
  return from_double<T>(-1000.0 - static_cast<double>(i % 17));
}
template <class T>
std::vector<T> filled(std::int64_t n) {
  std::vector<T> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = fill_value<T>(i);
  return v;
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
    p.x[i] = from_double<T>(g.normal());
    p.residual[i] = from_double<T>(g.normal());
    p.dy[i] = from_double<T>(g.normal());
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
        p.x[at] = from_double<T>(constant);
        p.residual[at] = from_double<T>(residual_constant);
      } else {
        p.x[at] = from_double<T>(mean + spread * g.normal());
      }
    }
  }
  auto weight_vector = [&](bool present, double lo, double hi) {
    std::vector<W> v;
    if (present)
      for (std::int64_t j = 0; j < p.cols(); ++j) v.push_back(from_double<W>(g.magnitude(lo, hi)));
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
  using R = wide_t<T>;
  std::vector<T> s;        // rows x cols
  std::vector<R> y;        // rows x cols
  std::vector<R> mean, rstd, y_scale, spread;  // per row
};

template <class T, class W>
expected_forward<T, W> reference_forward(const problem<T, W>& p, op o) {
  using R = wide_t<T>;
  using E = lnorm::calc_t<T>;
  const std::int64_t rows = p.rows(), n = p.cols();
  expected_forward<T, W> e;
  e.s.resize(static_cast<std::size_t>(rows * n));
  e.y.resize(e.s.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    // The fused add: (x + bias) + residual, each sum rounded to the calculation type, then to T.
    std::vector<R> v(static_cast<std::size_t>(n));
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t at = static_cast<std::size_t>(p.in.at(r, j));
      if (is_add(o)) {
        E sum = static_cast<E>(lnorm::widen(p.x[at]));
        if (!p.bias.empty()) sum = static_cast<E>(sum + static_cast<E>(lnorm::widen(p.bias[static_cast<std::size_t>(j)])));
        sum = static_cast<E>(sum + static_cast<E>(lnorm::widen(p.residual[at])));
        e.s[static_cast<std::size_t>(r * n + j)] = from_double<T>(static_cast<double>(sum));
        v[static_cast<std::size_t>(j)] = static_cast<R>(lnorm::widen(e.s[static_cast<std::size_t>(r * n + j)]));
      } else {
        v[static_cast<std::size_t>(j)] = static_cast<R>(lnorm::widen(p.x[at]));
      }
    }
    const exact_moments<R> m = row_moments<R>(n, [&](std::int64_t j) { return v[static_cast<std::size_t>(j)]; });
    const R var = is_rms(o) ? m.mean_square : m.var;
    const R center = is_rms(o) ? R(0) : m.mean;
    const R rstd = inv_sqrt(var + static_cast<R>(p.eps));
    const R rstd_apply = var + static_cast<R>(p.eps) > 0 ? rstd : R(0);  // a constant row gives beta
    R scale = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j);
      R y = (v[jj] - center) * rstd_apply;
      if (!p.gamma.empty()) y *= static_cast<R>(lnorm::widen(p.gamma[jj]));
      if (!p.beta.empty() && !is_rms(o)) y += static_cast<R>(lnorm::widen(p.beta[jj]));
      e.y[static_cast<std::size_t>(r * n) + jj] = y;
      scale = std::max(scale, std::fabs(y));
    }
    e.mean.push_back(m.mean);
    e.rstd.push_back(rstd);
    e.y_scale.push_back(scale);
    e.spread.push_back(std::sqrt(m.var));
  }
  return e;
}

/// The backward reference from the statistics the kernels are given.
template <class T, class W>
struct expected_backward {
  using R = wide_t<T>;
  std::vector<R> dx, dx_scale;                          // rows x cols, per row
  std::vector<R> dgamma, dbeta, dgamma_scale, dbeta_scale;  // per column
};

template <class T, class W>
expected_backward<T, W> reference_backward(const problem<T, W>& p, bool rms, const result<T, W>& stats) {
  using R = wide_t<T>;
  const std::int64_t rows = p.rows(), n = p.cols();
  expected_backward<T, W> e;
  e.dx.resize(static_cast<std::size_t>(rows * n));
  e.dgamma.assign(static_cast<std::size_t>(n), 0);
  e.dbeta = e.dgamma_scale = e.dbeta_scale = e.dgamma;
  std::vector<R> xh(static_cast<std::size_t>(n)), gd(xh.size()), d(xh.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const R mean = rms ? R(0) : static_cast<R>(stats.mean[static_cast<std::size_t>(r)]);
    const R rstd = static_cast<R>(stats.rstd[static_cast<std::size_t>(r)]);
    R sum_gd = 0, sum_gdx = 0, max_gd = 0, max_xh = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j), at = static_cast<std::size_t>(p.in.at(r, j));
      xh[jj] = (static_cast<R>(lnorm::widen(p.x[at])) - mean) * rstd;
      d[jj] = static_cast<R>(lnorm::widen(p.dy[at]));
      gd[jj] = p.gamma.empty() ? d[jj] : d[jj] * static_cast<R>(lnorm::widen(p.gamma[jj]));
      sum_gd += gd[jj];
      sum_gdx += gd[jj] * xh[jj];
      max_gd = std::max(max_gd, std::fabs(gd[jj]));
      max_xh = std::max(max_xh, std::fabs(xh[jj]));
      e.dgamma[jj] += d[jj] * xh[jj];
      e.dgamma_scale[jj] += std::fabs(d[jj] * xh[jj]);
      e.dbeta[jj] += d[jj];
      e.dbeta_scale[jj] += std::fabs(d[jj]);
    }
    const R c1 = rms ? R(0) : sum_gd / static_cast<R>(n), c2 = sum_gdx / static_cast<R>(n);
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

/// |got - want| <= tol, where a result rounded to U also gets half an ulp of U (u * |want|) and U's
/// subnormal step. Records the error/tolerance ratio under `family`.
template <class U, class R>
bool within(test_case& t, const std::string& family, const char* what, std::int64_t r, std::int64_t j, U got, R want,
            double tol) {
  const double g = to_double(got), w = static_cast<double>(want);
  const double bound = type_facts<U>::unit_roundoff * std::fabs(w) * (1 + 1e-6) + (1 + type_facts<U>::unit_roundoff) * tol +
                       type_facts<U>::abs_floor;
  const double err = std::fabs(g - w);
  const bool ok = err <= bound;  // false for NaN
  if (ok && bound > 0) note_ratio(family.c_str(), err / bound);
  return t.expect(ok, "%s[%lld,%lld] = %.9g, want %.9g (error %.3g > tolerance %.3g)", what, static_cast<long long>(r),
                  static_cast<long long>(j), g, w, err, bound);
}

/// Output elements outside the problem and guard elements keep their fill.
template <class U>
void untouched(test_case& t, const char* what, const std::vector<U>& got, const std::vector<char>& written) {
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!written[i] && !t.expect(bits_of(got[i]) == bits_of(fill_value<U>(i)), "%s[%zu] outside the problem was written",
                                 what, i))
      return;
}

std::vector<char> written_mask(const row_table& table, std::int64_t size) {
  std::vector<char> m(static_cast<std::size_t>(size), 0);
  for (std::int64_t o : table.offsets) m[static_cast<std::size_t>(o)] = 1;
  return m;
}
std::vector<char> first_n_mask(std::int64_t n, std::int64_t size) {
  std::vector<char> m(static_cast<std::size_t>(size), 0);
  for (std::int64_t i = 0; i < n; ++i) m[static_cast<std::size_t>(i)] = 1;
  return m;
}

/// Tolerance growth for statistics over n elements (large-mean float rows lose more in the variance).
template <class T, class W>
double growth_of(const problem<T, W>& p, isa i) {
  double k = growth(p.cols());
  if (p.kind == rows_kind::large_mean && i != isa::scalar && calc_roundoff<T>() > 0x1p-30) k *= 16;
  return k;
}

template <class T, class W>
void check_forward(test_case& t, const problem<T, W>& p, op o, isa i, const expected_forward<T, W>& e,
                   const result<T, W>& got) {
  if (!t.expect(got.status.code == lnorm::status_code::ok, "status: %s", got.status.message)) return;
  const std::string fam = std::string(type_facts<T>::name) + (p.kind == rows_kind::large_mean ? " large-mean " : " ") +
                          lnorm::isa_name(i);
  const double u = roundoff_of<T>(i), k = growth_of(p, i);
  const std::int64_t rows = p.rows(), n = p.cols();
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::size_t rr = static_cast<std::size_t>(r);
    const double y_tol = k * u * static_cast<double>(e.y_scale[rr]);
    bool row_ok = true;
    for (std::int64_t j = 0; j < n && row_ok; ++j) {
      const std::size_t at = static_cast<std::size_t>(p.out.at(r, j)), idx = static_cast<std::size_t>(r * n + j);
      row_ok = within(t, "y " + fam, "y", r, j, got.y[at], e.y[idx], y_tol);
      if (is_add(o)) {
        // s is defined exactly: (x + bias) + residual in the calculation type, rounded once to T.
        const bool same = bits_of(got.s[at]) == bits_of(e.s[idx]) || (std::isnan(to_double(got.s[at])) && std::isnan(to_double(e.s[idx])));
        row_ok &= t.expect(same, "s[%lld,%lld] = %.9g, want exactly %.9g", static_cast<long long>(r),
                           static_cast<long long>(j), to_double(got.s[at]), to_double(e.s[idx]));
      }
    }
    // Statistics: float32 (float64 for float64 data), so they carry that rounding too.
    using S = stat_t<T>;
    const double want_rstd = static_cast<double>(e.rstd[rr]);
    if (std::isinf(want_rstd)) {
      t.expect(std::isinf(static_cast<double>(got.rstd[rr])), "rstd[%lld] = %g, want inf", static_cast<long long>(r),
               static_cast<double>(got.rstd[rr]));
    } else {
      within<S>(t, "rstd " + fam, "rstd", r, 0, got.rstd[rr], e.rstd[rr], k * u * want_rstd);
    }
    if (!is_rms(o))
      within<S>(t, "mean " + fam, "mean", r, 0, got.mean[rr], e.mean[rr],
                k * u * static_cast<double>(e.spread[rr]) + 2 * type_facts<S>::unit_roundoff * std::fabs(static_cast<double>(e.mean[rr])));
  }
  const std::vector<char> y_written = written_mask(p.out, p.out_size());
  untouched(t, "y", got.y, y_written);
  untouched(t, "s", got.s, is_add(o) ? y_written : std::vector<char>(got.s.size(), 0));
  untouched(t, "mean", got.mean, first_n_mask(is_rms(o) ? 0 : rows, rows + 1));
  untouched(t, "rstd", got.rstd, first_n_mask(rows, rows + 1));
}

template <class T, class W>
void check_backward(test_case& t, const problem<T, W>& p, bool rms, isa i, const expected_backward<T, W>& e,
                    const result<T, W>& got) {
  if (!t.expect(got.status.code == lnorm::status_code::ok, "status: %s", got.status.message)) return;
  const std::string fam = std::string(type_facts<T>::name) + " " + lnorm::isa_name(i);
  const double u = roundoff_of<T>(i);
  const std::int64_t rows = p.rows(), n = p.cols();
  const double k = growth(std::max(n, rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    const double tol = k * u * static_cast<double>(e.dx_scale[static_cast<std::size_t>(r)]);
    for (std::int64_t j = 0; j < n; ++j)
      if (!within(t, "dx " + fam, "dx", r, j, got.dx[static_cast<std::size_t>(p.out.at(r, j))],
                  e.dx[static_cast<std::size_t>(r * n + j)], tol))
        break;
  }
  for (std::int64_t j = 0; j < n; ++j) {
    const std::size_t jj = static_cast<std::size_t>(j);
    if (!p.gamma.empty() &&
        !within(t, "dgamma " + fam, "dgamma", 0, j, got.dgamma[jj], e.dgamma[jj], k * u * static_cast<double>(e.dgamma_scale[jj])))
      break;
    if (!p.beta.empty() && !rms &&
        !within(t, "dbeta " + fam, "dbeta", 0, j, got.dbeta[jj], e.dbeta[jj], k * u * static_cast<double>(e.dbeta_scale[jj])))
      break;
  }
  untouched(t, "dx", got.dx, written_mask(p.out, p.out_size()));
  untouched(t, "dgamma", got.dgamma, first_n_mask(p.gamma.empty() ? 0 : n, n + 1));
  untouched(t, "dbeta", got.dbeta, first_n_mask(p.beta.empty() || rms ? 0 : n, n + 1));
}

/// Every operation on one problem, on every kernel set: results against the reference, and each SIMD
/// set's against the oracle's within the sum of both tolerances (implied by the reference check).
template <class T, class W>
void check_problem(const problem<T, W>& p, bool with_backward) {
  for (op o : kOps) {
    const expected_forward<T, W> e = reference_forward(p, o);
    for (isa i : g_isas) {
      use_isa(i);
      test_case t(describe(p, op_name(o)));
      check_forward(t, p, o, i, e, run_forward(p, o));
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
    for (isa i : g_isas) {
      use_isa(i);
      test_case t(describe(p, rms ? "rms_norm_backward" : "layer_norm_backward"));
      check_backward(t, p, rms, i, e, run_backward(p, rms, stats));
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
  for (isa i : g_isas) {
    use_isa(i);
    char what[64];
    std::snprintf(what, sizeof what, "%s with %g at [%lld,%lld]", op_name(o), bad, static_cast<long long>(bad_row),
                  static_cast<long long>(bad_col));
    test_case t(describe(p, what));
    const result<T, W> clean = run_forward(p, o), got = run_forward(poisoned, o);
    for (std::int64_t r = 0; r < p.rows(); ++r) {
      const std::size_t rr = static_cast<std::size_t>(r);
      for (std::int64_t j = 0; j < p.cols(); ++j) {
        const std::size_t at = static_cast<std::size_t>(p.out.at(r, j));
        if (r == bad_row) {
          t.expect(std::isnan(to_double(got.y[at])), "y[%lld,%lld] = %g in the poisoned row, want NaN",
                   static_cast<long long>(r), static_cast<long long>(j), to_double(got.y[at]));
        } else {
          t.expect(bits_of(got.y[at]) == bits_of(clean.y[at]), "y[%lld,%lld] = %.9g changed (was %.9g)",
                   static_cast<long long>(r), static_cast<long long>(j), to_double(got.y[at]), to_double(clean.y[at]));
          if (is_add(o)) t.expect(bits_of(got.s[at]) == bits_of(clean.s[at]), "s[%lld,%lld] changed", static_cast<long long>(r), static_cast<long long>(j));
        }
      }
      if (r == bad_row) {
        t.expect(std::isnan(static_cast<double>(got.rstd[rr])), "rstd of the poisoned row = %g, want NaN", static_cast<double>(got.rstd[rr]));
        if (!is_rms(o)) t.expect(std::isnan(static_cast<double>(got.mean[rr])), "mean of the poisoned row = %g, want NaN", static_cast<double>(got.mean[rr]));
      } else {
        t.expect(bits_of(got.rstd[rr]) == bits_of(clean.rstd[rr]), "rstd[%lld] changed", static_cast<long long>(r));
        t.expect(bits_of(got.mean[rr]) == bits_of(clean.mean[rr]), "mean[%lld] changed", static_cast<long long>(r));
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
  for (isa i : g_isas) {
    use_isa(i);
    test_case t(describe(p, op_name(o)));
    const result<T, W> got = run_forward(p, o);
    check_forward(t, p, o, i, e, got);
    for (std::int64_t r = 0; r < p.rows(); r += 2)
      for (std::int64_t j = 0; j < p.cols(); ++j) {
        const double y = to_double(got.y[static_cast<std::size_t>(p.out.at(r, j))]);
        const double beta = p.beta.empty() ? 0.0 : to_double(from_double<T>(to_double(p.beta[static_cast<std::size_t>(j)])));
        if (!t.expect(y == beta, "constant row %lld: y[%lld] = %.9g, want exactly beta = %.9g", static_cast<long long>(r),
                      static_cast<long long>(j), y, beta))
          break;
      }
  }
}

// ---- the suite for one pair of types -----------------------------------------------------------

template <class T, class W>
void test_types(rng& g) {
  int variant = 0;
  // Trailing rows: every size around the vector widths, eps 0 / 1e-5 / 10.
  for (std::int64_t n : kSizes)
    for (double eps : kEpsilons) {
      const geometry geo = trailing_rows(3, n, n, n);
      check_problem(make_problem<T, W>(geo, eps, weight_variant(variant++), rows_kind::random, 0, g), true);
    }
  // Row strides (x and y differ) and misaligned starts, through the row-stride API.
  for (std::int64_t n : {1, 7, 16, 33, 255, 1025})
    check_problem(make_problem<T, W>(trailing_rows(4, n, n + 3, n + 5, 1), 1e-5, weight_variant(variant++),
                                     rows_kind::random, 0, g),
                  true);
  // A non-trailing axis: column tiles of 1..130 lanes (tiles are 64 lanes), normalized axes of 1..33.
  constexpr std::int64_t kAxisSizes[] = {3, 7, 16, 33, 1};
  for (std::int64_t width = 1; width <= 130; ++width) {
    const double eps = kEpsilons[width % 3];
    check_problem(make_problem<T, W>(middle_axis(2, kAxisSizes[width % 5], width), eps, weight_variant(variant++),
                                     rows_kind::random, 0, g),
                  true);
  }
  // Gathers: a normalized axis with stride 2, and two normalized axes around a batch axis.
  for (std::int64_t n : {1, 7, 33, 257})
    check_problem(make_problem<T, W>(strided_axis(3, n, 2), 1e-5, weight_variant(variant++), rows_kind::random, 0, g), true);
  for (const geometry& geo : {outer_axes(3, 5, 7), outer_axes(2, 3, 33)})
    check_problem(make_problem<T, W>(geo, 1e-5, weight_variant(variant++), rows_kind::random, 0, g), true);
  // Many rows: the work is split over threads.
  check_problem(make_problem<T, W>(trailing_rows(40, 4099, 4099, 4099), 1e-5, weight_variant(variant++), rows_kind::random, 0, g),
                true);

  // Large means: 1e4..1e6 times the spread (1e2, 1e3 for 16-bit data, which could hold no spread at 1e4).
  const bool narrow_type = sizeof(T) == 2;
  for (double ratio : narrow_type ? std::vector<double>{1e2, 1e3} : std::vector<double>{1e4, 1e5, 1e6})
    for (std::int64_t n : {7, 64, 1023, 4099}) {
      check_problem(make_problem<T, W>(trailing_rows(3, n, n, n), 1e-5, weight_variant(variant++), rows_kind::large_mean, ratio, g),
                    false);
    }
  check_problem(make_problem<T, W>(middle_axis(2, 33, 70), 1e-5, weight_variant(variant++), rows_kind::large_mean,
                                   narrow_type ? 1e3 : 1e6, g),
                false);

  // NaN and Inf: rows, column tiles and gathers; the plain and the fused forward.
  const double kBad[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                         -std::numeric_limits<double>::infinity()};
  for (std::int64_t n : {1, 7, 64, 129, 1025})
    for (double bad : kBad)
      for (op o : kOps) check_poisoned_row<T, W>(trailing_rows(4, n, n, n), o, bad, g, variant++);
  for (std::int64_t width : {1, 5, 64, 70, 130})
    for (op o : kOps) check_poisoned_row<T, W>(middle_axis(2, 9, width), o, kBad[width % 3], g, variant++);
  for (op o : kOps) check_poisoned_row<T, W>(strided_axis(4, 33, 2), o, kBad[0], g, variant++);

  // Constant rows (and lanes) give exactly beta, whatever eps.
  for (std::int64_t n : {1, 3, 7, 16, 33, 255, 1023, 4099})
    for (double eps : kEpsilons)
      for (op o : {op::layer_norm, op::add_layer_norm}) check_constant_rows<T, W>(trailing_rows(4, n, n, n), o, eps, g, variant++);
  for (std::int64_t width : {1, 7, 64, 130})
    for (double eps : kEpsilons) check_constant_rows<T, W>(middle_axis(2, 17, width), op::layer_norm, eps, g, variant++);
}

// ---- dispatch ----------------------------------------------------------------------------------

/// The kernel set that with_kernels (the one switch every call goes through) really calls.
const char* dispatched_kernels() {
  const char* name = "";
  (void)lnorm::detail::with_kernels([&](auto k) {
    name = decltype(k)::name;
    return lnorm::status{};
  });
  return name;
}

void check_dispatch(isa initial) {
  {
    test_case t("default kernel set");
    const char* forced = std::getenv("LNORM_ISA");
    isa want = lnorm::best_isa();
    isa parsed;
    if (forced && lnorm::parse_isa(forced, parsed) && lnorm::isa_available(parsed)) want = parsed;
    t.expect(initial == want, "the initial kernel set is %s, want %s", lnorm::isa_name(initial), lnorm::isa_name(want));
#if defined(__aarch64__)
    t.expect(lnorm::isa_available(isa::neon), "neon is not available on aarch64");
    if (!forced) t.expect(initial == isa::neon, "the default on aarch64 is %s, want neon", lnorm::isa_name(initial));
#endif
  }
  for (isa i : {isa::scalar, isa::avx2, isa::avx512, isa::neon}) {
    test_case t(std::string("set_isa(") + lnorm::isa_name(i) + ")");
    const isa before = lnorm::current_isa();
    const bool taken = lnorm::set_isa(i);
    if (lnorm::isa_available(i)) {
      t.expect(taken, "refused although available");
      t.expect(std::strcmp(lnorm::active_isa(), lnorm::isa_name(i)) == 0, "active_isa() = %s", lnorm::active_isa());
      t.expect(std::strcmp(dispatched_kernels(), lnorm::isa_name(i)) == 0, "the calls run the %s kernels", dispatched_kernels());
    } else {
      t.expect(!taken, "accepted although this build or CPU cannot run it");
      t.expect(lnorm::current_isa() == before, "a refused set_isa changed the kernel set to %s", lnorm::active_isa());
    }
  }
  {
    test_case t("parse_isa");
    isa out = isa::avx2;
    t.expect(!lnorm::parse_isa("sse2", out) && !lnorm::parse_isa(nullptr, out) && out == isa::avx2, "accepted a bad name");
    t.expect(lnorm::parse_isa("neon", out) && out == isa::neon, "rejected neon");
  }
  // A SIMD set computes float32 statistics in float, the scalar set in double: on a long row some
  // outputs differ in the last bit, which shows that a different kernel really ran.
  rng g(99);
  const problem<float, float> p = make_problem<float, float>(trailing_rows(1, 4099, 4099, 4099), 1e-5, {}, rows_kind::random, 0, g);
  use_isa(isa::scalar);
  const result<float, float> oracle = run_forward(p, op::layer_norm);
  for (isa i : g_isas) {
    if (i == isa::scalar) continue;
    use_isa(i);
    test_case t(std::string("the ") + lnorm::isa_name(i) + " kernels compute differently from the scalar ones");
    const result<float, float> got = run_forward(p, op::layer_norm);
    t.expect(std::memcmp(got.y.data(), oracle.y.data(), got.y.size() * sizeof(float)) != 0, "bitwise the scalar result");
  }
}

/// The throwing calls of API.md: same results as the try_ calls, std::invalid_argument on bad input.
void check_throwing_api() {
  rng g(7);
  std::vector<float> x(5 * 33), gamma(33), beta(33), y1(x.size()), y2(x.size());
  for (float& v : x) v = static_cast<float>(g.normal());
  for (float& v : gamma) v = static_cast<float>(g.magnitude(-1, 1));
  for (float& v : beta) v = static_cast<float>(g.normal());
  for (isa i : g_isas) {
    use_isa(i);
    test_case t(std::string("lnorm::layer_norm / rms_norm [") + lnorm::isa_name(i) + "]");
    lnorm::layer_norm(x.data(), y1.data(), 5, 33, gamma.data(), beta.data(), 1e-5f);
    (void)lnorm::try_layer_norm<float>(x.data(), 33, y2.data(), 33, 5, 33, gamma.data(), beta.data(), 1e-5f);
    t.expect(y1 == y2, "layer_norm differs from try_layer_norm");
    lnorm::rms_norm(x.data(), y1.data(), 5, 33, gamma.data(), 1e-6f);
    (void)lnorm::try_rms_norm<float>(x.data(), 33, y2.data(), 33, 5, 33, gamma.data(), 1e-6f);
    t.expect(y1 == y2, "rms_norm differs from try_rms_norm");
    bool threw = false;
    try {
      lnorm::layer_norm<float>(x.data(), y1.data(), 5, 0, nullptr, nullptr, 1e-5f);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    t.expect(threw, "cols = 0 did not throw std::invalid_argument");
  }
}

}  // namespace
}  // namespace lnorm_test

int main() {
  using namespace lnorm_test;
  const isa initial = lnorm::current_isa();  // before any set_isa: the default
  const char* seed_env = std::getenv("LNORM_TEST_SEED");
  const std::uint64_t seed = seed_env ? std::strtoull(seed_env, nullptr, 10) : 1234;
  std::string names;
  for (isa i : {isa::scalar, isa::avx2, isa::avx512, isa::neon})
    if (lnorm::isa_available(i)) {
      g_isas.push_back(i);
      names += std::string(" ") + lnorm::isa_name(i);
    }
  std::printf("lnorm %s: default kernel set %s; testing%s; seed %llu\n", LNORM_VERSION_STRING, lnorm::isa_name(initial),
              names.c_str(), static_cast<unsigned long long>(seed));

  check_dispatch(initial);
  check_throwing_api();
  rng g(seed);
  test_types<float, float>(g);
  test_types<double, double>(g);
  test_types<double, float>(g);
  test_types<lnorm::float16_t, lnorm::float16_t>(g);
  test_types<lnorm::float16_t, float>(g);
  test_types<lnorm::bfloat16_t, lnorm::bfloat16_t>(g);
  test_types<lnorm::bfloat16_t, float>(g);

  const char* verbose = std::getenv("LNORM_TEST_VERBOSE");
  if (verbose && *verbose && *verbose != '0') {
    std::printf("worst error / tolerance per check:\n");
    for (const auto& [family, ratio] : results().worst) std::printf("  %-34s %.3f\n", family.c_str(), ratio);
  }
  std::printf("%ld passed, %ld failed\n", results().passed, results().failed);
  return results().failed == 0 ? 0 : 1;
}
