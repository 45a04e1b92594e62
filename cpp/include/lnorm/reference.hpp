// lnorm/reference.hpp: the scalar kernel set. Plain portable C++ that compiles for any CPU; it is the
// fallback where no SIMD set applies and the oracle the SIMD sets are tested against.
//
// Every kernel set (scalar, avx2, avx512, neon) is a struct `kernels` in its own namespace with the same
// static member templates, so the layout and threading code above it (lnorm.hpp) is written once.
// Kernels see one row (or one tile of columns); they know nothing of threads, never allocate, never
// throw. Statistics are accumulated in double for every input type: a float32 row whose mean is 10^6
// times its spread still normalizes to float32 precision, and values near FLT_MAX cannot overflow.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "half.hpp"
#include "kernels/line_fetch.hpp"
#include "kernels/scalar_vec.hpp"

namespace lnorm {

/// The dtype of the returned statistics (mean, rstd): float64 for float64 data, else float32.
template <class T>
using stat_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// What the kernels compute in: float for float32 and the 16-bit types, double for float64 (the
/// scalar set widens its statistics further, to double, for all types).
template <class T>
using calc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// Widest tile of unit-stride columns a column kernel handles at once (the non-trailing-axis case).
inline constexpr std::int64_t kColumnTile = 64;

namespace scalar {

/// One row's statistics as the kernels apply them: y = ((x * scale - mean) - mean_lo) * rstd * gamma + beta.
/// The mean is kept as two parts, the rough mean of the first pass and its correction (as the SIMD
/// sets keep m0 and c): for a float64 row whose mean is 1e8 times its spread, x - mean is then exact
/// and the correction is applied to a small number, where folding the two into one double would
/// round the mean by an ulp of 1e8, 1e-8 of the spread. `scale` is 1 except for float64 rows whose
/// squares overflow, which are rescaled by a power of two.
struct row_stats {
  double mean = 0;        // the rough mean m0 of x * scale
  double mean_lo = 0;     // the correction c: the mean of x * scale is mean + mean_lo
  double rstd = 0;        // 1 / sqrt(var(x) + eps): the statistic returned to callers
  double rstd_apply = 0;  // rstd of the scaled row; 0 where var + eps == 0 (a constant row gives beta)
  double scale = 1;
};

namespace detail {

// 1 / sqrt(var + eps), but 0 where that is 0 (a constant input with eps = 0 gives beta). A NaN (or a
// negative running variance BatchNorm eval is given) stays NaN, so it poisons its own output, not
// turns it into beta.
inline double rstd_or_zero(double var_plus_eps) noexcept {
  return var_plus_eps == 0 ? 0.0 : 1.0 / std::sqrt(var_plus_eps);
}

// Corrected two-pass statistics (Bjorck) over n elements `stride` apart: a first pass for a rough mean
// m0, a second for the sums of d = x*scale - m0 and d^2. The correction c = sum(d)/n absorbs m0's
// rounding error; var = sum(d^2)/n - c^2 cancels nothing because |c| is tiny next to the spread.
// Never E[x^2] - E[x]^2. The mean is returned as the pair (m0, c), not folded into m0 + c.
template <class T>
inline void two_pass(const T* x, std::int64_t stride, std::int64_t n, double scale, double& m0_out,
                     double& c_out, double& var) noexcept {
  // 4 accumulators: independent add chains hide the FP add latency.
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += widen(x[i * stride]) * scale;
    s1 += widen(x[(i + 1) * stride]) * scale;
    s2 += widen(x[(i + 2) * stride]) * scale;
    s3 += widen(x[(i + 3) * stride]) * scale;
  }
  for (; i < n; ++i) s0 += widen(x[i * stride]) * scale;
  const double m0 = ((s0 + s1) + (s2 + s3)) / static_cast<double>(n);
  double d0 = 0, d1 = 0, q0 = 0, q1 = 0;
  i = 0;
  for (; i + 2 <= n; i += 2) {
    const double a = widen(x[i * stride]) * scale - m0, b = widen(x[(i + 1) * stride]) * scale - m0;
    d0 += a;
    d1 += b;
    q0 += a * a;
    q1 += b * b;
  }
  for (; i < n; ++i) {
    const double a = widen(x[i * stride]) * scale - m0;
    d0 += a;
    q0 += a * a;
  }
  const double c = (d0 + d1) / static_cast<double>(n);
  m0_out = m0;
  c_out = c;
  var = (q0 + q1) / static_cast<double>(n) - c * c;
  if (var < 0) var = 0;
}

template <class T>
inline double mean_square(const T* x, std::int64_t stride, std::int64_t n, double scale) noexcept {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const double a = widen(x[i * stride]) * scale, b = widen(x[(i + 1) * stride]) * scale;
    const double c = widen(x[(i + 2) * stride]) * scale, d = widen(x[(i + 3) * stride]) * scale;
    s0 += a * a;
    s1 += b * b;
    s2 += c * c;
    s3 += d * d;
  }
  for (; i < n; ++i) {
    const double a = widen(x[i * stride]) * scale;
    s0 += a * a;
  }
  return ((s0 + s1) + (s2 + s3)) / static_cast<double>(n);
}

// A power of two that brings the row's largest magnitude near 1, or 0 if the row holds Inf or NaN.
template <class T>
inline double rescale_factor(const T* x, std::int64_t stride, std::int64_t n) noexcept {
  double amax = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double a = std::fabs(static_cast<double>(widen(x[i * stride])));
    if (!(a <= std::numeric_limits<double>::max())) return 0.0;
    if (a > amax) amax = a;
  }
  int e = 0;
  std::frexp(amax, &e);
  return std::ldexp(1.0, -e);
}

inline row_stats nan_stats() noexcept {
  row_stats st;
  st.mean = st.mean_lo = st.rstd = st.rstd_apply = std::numeric_limits<double>::quiet_NaN();
  return st;
}

// Statistics from a scaled mean (mean + mean_lo) and variance; `scale` is the factor applied to x.
inline row_stats finish_stats(double mean, double mean_lo, double var, double eps, double scale) noexcept {
  row_stats st;
  st.mean = mean;
  st.mean_lo = mean_lo;
  st.scale = scale;
  st.rstd = scale / std::sqrt(var + eps * scale * scale);
  st.rstd_apply = rstd_or_zero(var + eps * scale * scale);
  return st;
}

// Only float64 rows can overflow (float32 squares fit in double): such rows are rescaled by a power of
// two and recomputed. A row holding Inf or NaN gets NaN statistics, so that row alone turns NaN.
template <class T>
inline row_stats layer_norm_stats(const T* x, std::int64_t stride, std::int64_t n, double eps) noexcept {
  double m0 = 0, c = 0, var = 0;
  two_pass(x, stride, n, 1.0, m0, c, var);
  if (std::isfinite(var) && std::isfinite(m0 + c)) return finish_stats(m0, c, var, eps, 1.0);
  const double s = rescale_factor(x, stride, n);
  if (s == 0.0) return nan_stats();
  two_pass(x, stride, n, s, m0, c, var);
  return finish_stats(m0, c, var, eps, s);
}

template <class T>
inline row_stats rms_norm_stats(const T* x, std::int64_t stride, std::int64_t n, double eps) noexcept {
  const double ms = mean_square(x, stride, n, 1.0);
  if (std::isfinite(ms)) return finish_stats(0.0, 0.0, ms, eps, 1.0);
  const double s = rescale_factor(x, stride, n);
  if (s == 0.0) return nan_stats();
  return finish_stats(0.0, 0.0, mean_square(x, stride, n, s), eps, s);
}

template <class W>
inline double weight_at(const W* w, std::int64_t i, double absent) noexcept {
  return w ? static_cast<double>(widen(w[i])) : absent;
}

}  // namespace detail

struct kernels {
  static constexpr const char* name = "scalar";
  // The scalar set neither pipelines rows nor streams its stores: its row kernels take the row alone
  // (lnorm.hpp's ops call the SIMD sets' with the worker's pipeline, see kernels/pipeline.hpp).
  static constexpr bool pipelined = false;

  // ---- rows: contiguous, n elements ------------------------------------------------------------

  /// y = layer_norm(x) over one contiguous row; writes mean/rstd if not null.
  template <class T, class W>
  static void layer_norm_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double eps,
                             stat_t<T>* mean, stat_t<T>* rstd) noexcept {
    const row_stats st = detail::layer_norm_stats(x, 1, n, eps);
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = ((widen(x[i]) * st.scale - st.mean) - st.mean_lo) * st.rstd_apply;
      y[i] = narrow<T>(xhat * detail::weight_at(gamma, i, 1.0) + detail::weight_at(beta, i, 0.0));
    }
    if (mean) *mean = static_cast<stat_t<T>>((st.mean + st.mean_lo) / st.scale);
    if (rstd) *rstd = static_cast<stat_t<T>>(st.rstd);
  }

  /// y = rms_norm(x) over one contiguous row; writes rstd if not null.
  template <class T, class W>
  static void rms_norm_row(const T* x, T* y, std::int64_t n, const W* gamma, double eps,
                           stat_t<T>* rstd) noexcept {
    const row_stats st = detail::rms_norm_stats(x, 1, n, eps);
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = widen(x[i]) * st.scale * st.rstd_apply;
      y[i] = narrow<T>(xhat * detail::weight_at(gamma, i, 1.0));
    }
    if (rstd) *rstd = static_cast<stat_t<T>>(st.rstd);
  }

  /// The row of norm N (kernels/family.hpp): LayerNorm's when N is centered, else RMSNorm's (beta and
  /// mean unused).
  template <class N, class T, class W>
  static void norm_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double eps, stat_t<T>* mean,
                       stat_t<T>* rstd) noexcept {
    if constexpr (N::centered) layer_norm_row(x, y, n, gamma, beta, eps, mean, rstd);
    else rms_norm_row(x, y, n, gamma, eps, rstd);
  }

  /// The backward of norm N's row (mean and db unused when N is not centered).
  template <class N, class T, class W>
  static void norm_backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean,
                                double rstd, stat_t<T>* dg, stat_t<T>* db) noexcept {
    if constexpr (N::centered) layer_norm_backward_row(x, dy, dx, n, gamma, mean, rstd, dg, db);
    else rms_norm_backward_row(x, dy, dx, n, gamma, rstd, dg);
  }

  /// dx of layer_norm for one row, and dgamma/dbeta partials accumulated into dg/db (if not null).
  template <class T, class W>
  static void layer_norm_backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma,
                                      double mean, double rstd, stat_t<T>* dg, stat_t<T>* db) noexcept {
    double sum_g = 0, sum_gx = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = (widen(x[i]) - mean) * rstd;
      const double d = widen(dy[i]);
      const double gd = d * detail::weight_at(gamma, i, 1.0);
      sum_g += gd;
      sum_gx += gd * xhat;
      if (dg) dg[i] += d * xhat;
      if (db) db[i] += d;
    }
    const double c1 = sum_g / static_cast<double>(n), c2 = sum_gx / static_cast<double>(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = (widen(x[i]) - mean) * rstd;
      const double gd = widen(dy[i]) * detail::weight_at(gamma, i, 1.0);
      dx[i] = narrow<T>(rstd * (gd - c1 - xhat * c2));
    }
  }

  /// dx of rms_norm for one row, and dgamma partials accumulated into dg (if not null).
  template <class T, class W>
  static void rms_norm_backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma,
                                    double rstd, stat_t<T>* dg) noexcept {
    double sum_gx = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = widen(x[i]) * rstd;
      const double d = widen(dy[i]);
      sum_gx += d * detail::weight_at(gamma, i, 1.0) * xhat;
      if (dg) dg[i] += d * xhat;
    }
    const double c2 = sum_gx / static_cast<double>(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = widen(x[i]) * rstd;
      const double gd = widen(dy[i]) * detail::weight_at(gamma, i, 1.0);
      dx[i] = narrow<T>(rstd * (gd - xhat * c2));
    }
  }

  /// s = (x + bias_in) + residual in calc_t<T>, rounded to T (bias_in may be null): for float32 the
  /// same two roundings as adding a linear layer's bias and then the residual in float32.
  template <class T, class W>
  static void add_row(const T* x, const T* residual, const W* bias_in, T* s, std::int64_t n) noexcept {
    using E = calc_t<T>;
    for (std::int64_t i = 0; i < n; ++i) {
      const E xb = bias_in ? static_cast<E>(static_cast<E>(widen(x[i])) + static_cast<E>(widen(bias_in[i])))
                           : static_cast<E>(widen(x[i]));
      s[i] = narrow<T>(static_cast<E>(xb + static_cast<E>(widen(residual[i]))));
    }
  }

  /// dst = src over n elements.
  template <class T>
  static void copy_row(const T* src, T* dst, std::int64_t n) noexcept {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }

  /// The fused add & norm of one row for large outputs: s built in buf (a row), normalized into y,
  /// then copied to s.
  template <class N, class T, class W>
  static void add_norm_row(const T* x, const T* res, const W* bias_in, T* s, T* y, std::int64_t n, const W* gamma,
                           const W* beta, double eps, stat_t<T>* mean, stat_t<T>* rstd, T* buf) noexcept {
    add_row(x, res, bias_in, buf, n);
    norm_row<N>(buf, y, n, gamma, beta, eps, mean, rstd);
    copy_row(buf, s, n);
  }

  // ---- pieces of a row: a huge row is cut into fixed chunks whose moments are merged in order ----

  /// Mean and sum of squared deviations (M2) of n contiguous elements.
  template <class T>
  static void moments(const T* x, std::int64_t n, double& mean, double& m2) noexcept {
    double m0 = 0, c = 0, var = 0;
    detail::two_pass(x, 1, n, 1.0, m0, c, var);
    mean = m0 + c;
    m2 = var * static_cast<double>(n);
  }

  /// Sum of squares of n contiguous elements.
  template <class T>
  static void sum_squares(const T* x, std::int64_t n, double& ss) noexcept {
    ss = detail::mean_square(x, 1, n, 1.0) * static_cast<double>(n);
  }

  /// y = (x - mean) * r * gamma + beta over n elements (gamma, beta may be null).
  template <class T, class W>
  static void apply_norm(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double mean, double r,
                         bool /*stream*/) noexcept {
    for (std::int64_t i = 0; i < n; ++i) {
      y[i] = narrow<T>((widen(x[i]) - mean) * r * detail::weight_at(gamma, i, 1.0) + detail::weight_at(beta, i, 0.0));
    }
  }

  /// The backward's row sums over n elements, sum(g*dy) and sum(g*dy*xhat), and this piece's
  /// dgamma/dbeta partials (RMSNorm: mean = 0, db unused).
  template <class N, class T, class W>
  static void backward_sums(const T* x, const T* dy, std::int64_t n, const W* gamma, double mean, double rstd,
                            stat_t<T>* dg, stat_t<T>* db, double& sum_g, double& sum_gx) noexcept {
    sum_g = sum_gx = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = (widen(x[i]) - (N::centered ? mean : 0.0)) * rstd;
      const double d = widen(dy[i]);
      const double gd = d * detail::weight_at(gamma, i, 1.0);
      sum_g += gd;
      sum_gx += gd * xhat;
      if (dg) dg[i] += static_cast<stat_t<T>>(d * xhat);
      if (db) db[i] += static_cast<stat_t<T>>(d);
    }
  }

  /// dx = rstd * (g*dy - c1 - xhat*c2) over n elements, c1 = mean(g*dy) (0 for RMSNorm),
  /// c2 = mean(g*dy*xhat) over the whole row.
  template <class N, class T, class W>
  static void backward_apply(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean,
                             double rstd, double c1, double c2) noexcept {
    for (std::int64_t i = 0; i < n; ++i) {
      const double xhat = (widen(x[i]) - (N::centered ? mean : 0.0)) * rstd;
      const double gd = widen(dy[i]) * detail::weight_at(gamma, i, 1.0);
      dx[i] = narrow<T>(rstd * (gd - c1 - xhat * c2));
    }
  }

  // ---- column tiles: `width` (<= kColumnTile) unit-stride lanes, each normalized over `n` elements
  // ---- that lie `xs` (`ys`, ...) elements apart. Statistics are per lane, lane-contiguous.

  template <class T, class W>
  static void layer_norm_cols(const T* x, std::int64_t xs, T* y, std::int64_t ys, std::int64_t n,
                              std::int64_t width, const W* gamma, const W* beta, double eps,
                              stat_t<T>* mean, stat_t<T>* rstd) noexcept {
    double m0[kColumnTile], d[kColumnTile], q[kColumnTile], scale[kColumnTile];
    for (std::int64_t l = 0; l < width; ++l) m0[l] = d[l] = q[l] = 0;
    for (std::int64_t c = 0; c < n; ++c)
      for (std::int64_t l = 0; l < width; ++l) m0[l] += widen(x[c * xs + l]);
    for (std::int64_t l = 0; l < width; ++l) m0[l] /= static_cast<double>(n);
    for (std::int64_t c = 0; c < n; ++c)
      for (std::int64_t l = 0; l < width; ++l) {
        const double a = widen(x[c * xs + l]) - m0[l];
        d[l] += a;
        q[l] += a * a;
      }
    row_stats st[kColumnTile];
    for (std::int64_t l = 0; l < width; ++l) {
      const double cor = d[l] / static_cast<double>(n);
      double var = q[l] / static_cast<double>(n) - cor * cor;
      if (var < 0) var = 0;
      // A non-finite lane (float64 overflow, or Inf/NaN data) takes the strided row path's cold branch.
      st[l] = std::isfinite(var) && std::isfinite(m0[l] + cor) ? detail::finish_stats(m0[l], cor, var, eps, 1.0)
                                                              : detail::layer_norm_stats(x + l, xs, n, eps);
      scale[l] = st[l].scale;
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const double g = detail::weight_at(gamma, c, 1.0), b = detail::weight_at(beta, c, 0.0);
      for (std::int64_t l = 0; l < width; ++l) {
        const double xhat = ((widen(x[c * xs + l]) * scale[l] - st[l].mean) - st[l].mean_lo) * st[l].rstd_apply;
        y[c * ys + l] = narrow<T>(xhat * g + b);
      }
    }
    for (std::int64_t l = 0; l < width; ++l) {
      if (mean) mean[l] = static_cast<stat_t<T>>((st[l].mean + st[l].mean_lo) / st[l].scale);
      if (rstd) rstd[l] = static_cast<stat_t<T>>(st[l].rstd);
    }
  }

  template <class T, class W>
  static void rms_norm_cols(const T* x, std::int64_t xs, T* y, std::int64_t ys, std::int64_t n,
                            std::int64_t width, const W* gamma, double eps, stat_t<T>* rstd) noexcept {
    double q[kColumnTile];
    row_stats st[kColumnTile];
    for (std::int64_t l = 0; l < width; ++l) q[l] = 0;
    for (std::int64_t c = 0; c < n; ++c)
      for (std::int64_t l = 0; l < width; ++l) {
        const double a = widen(x[c * xs + l]);
        q[l] += a * a;
      }
    for (std::int64_t l = 0; l < width; ++l) {
      const double ms = q[l] / static_cast<double>(n);
      st[l] = std::isfinite(ms) ? detail::finish_stats(0.0, 0.0, ms, eps, 1.0) : detail::rms_norm_stats(x + l, xs, n, eps);
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const double g = detail::weight_at(gamma, c, 1.0);
      for (std::int64_t l = 0; l < width; ++l) {
        y[c * ys + l] = narrow<T>(widen(x[c * xs + l]) * st[l].scale * st[l].rstd_apply * g);
      }
    }
    if (rstd)
      for (std::int64_t l = 0; l < width; ++l) rstd[l] = static_cast<stat_t<T>>(st[l].rstd);
  }

  template <class T, class W>
  static void layer_norm_backward_cols(const T* x, std::int64_t xs, const T* dy, std::int64_t dys, T* dx,
                                       std::int64_t dxs, std::int64_t n, std::int64_t width, const W* gamma,
                                       const stat_t<T>* mean, const stat_t<T>* rstd, stat_t<T>* dg,
                                       stat_t<T>* db) noexcept {
    double sg[kColumnTile], sgx[kColumnTile];
    for (std::int64_t l = 0; l < width; ++l) sg[l] = sgx[l] = 0;
    for (std::int64_t c = 0; c < n; ++c) {
      const double g = detail::weight_at(gamma, c, 1.0);
      double dgc = 0, dbc = 0;
      for (std::int64_t l = 0; l < width; ++l) {
        const double xhat = (static_cast<double>(widen(x[c * xs + l])) - mean[l]) * rstd[l];
        const double d = widen(dy[c * dys + l]);
        sg[l] += d * g;
        sgx[l] += d * g * xhat;
        dgc += d * xhat;
        dbc += d;
      }
      if (dg) dg[c] += dgc;
      if (db) db[c] += dbc;
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const double g = detail::weight_at(gamma, c, 1.0);
      for (std::int64_t l = 0; l < width; ++l) {
        const double r = rstd[l];
        const double xhat = (static_cast<double>(widen(x[c * xs + l])) - mean[l]) * r;
        const double gd = widen(dy[c * dys + l]) * g;
        dx[c * dxs + l] =
            narrow<T>(r * (gd - sg[l] / static_cast<double>(n) - xhat * (sgx[l] / static_cast<double>(n))));
      }
    }
  }

  template <class T, class W>
  static void rms_norm_backward_cols(const T* x, std::int64_t xs, const T* dy, std::int64_t dys, T* dx,
                                     std::int64_t dxs, std::int64_t n, std::int64_t width, const W* gamma,
                                     const stat_t<T>* rstd, stat_t<T>* dg) noexcept {
    double sgx[kColumnTile];
    for (std::int64_t l = 0; l < width; ++l) sgx[l] = 0;
    for (std::int64_t c = 0; c < n; ++c) {
      const double g = detail::weight_at(gamma, c, 1.0);
      double dgc = 0;
      for (std::int64_t l = 0; l < width; ++l) {
        const double xhat = static_cast<double>(widen(x[c * xs + l])) * rstd[l];
        const double d = widen(dy[c * dys + l]);
        sgx[l] += d * g * xhat;
        dgc += d * xhat;
      }
      if (dg) dg[c] += dgc;
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const double g = detail::weight_at(gamma, c, 1.0);
      for (std::int64_t l = 0; l < width; ++l) {
        const double r = rstd[l];
        const double xhat = widen(x[c * xs + l]) * r;
        dx[c * dxs + l] = narrow<T>(r * (widen(dy[c * dys + l]) * g - xhat * (sgx[l] / static_cast<double>(n))));
      }
    }
  }

  // Lanes of one channel: s = (x + bias_in[0]) + residual, as add_row does element by element.
  template <class T, class W>
  static void add_lanes(const T* x, const T* residual, const W* bias, T* s, std::int64_t width) noexcept {
    using E = calc_t<T>;
    for (std::int64_t l = 0; l < width; ++l) {
      const E xb = bias ? static_cast<E>(static_cast<E>(widen(x[l])) + static_cast<E>(widen(bias[0])))
                        : static_cast<E>(widen(x[l]));
      s[l] = narrow<T>(static_cast<E>(xb + static_cast<E>(widen(residual[l]))));
    }
  }

  template <class T, class W>
  static void add_cols(const T* x, std::int64_t xs, const T* residual, std::int64_t rs, const W* bias_in,
                       T* s, std::int64_t ss, std::int64_t n, std::int64_t width) noexcept {
    for (std::int64_t c = 0; c < n; ++c) add_lanes(x + c * xs, residual + c * rs, bias_in ? bias_in + c : nullptr, s + c * ss, width);
  }

  // ---- the channel norms' kernels (kernels/channel_body.inl), over the one-lane vec ----------------
 private:
  template <class T>
  using CV = vec<calc_t<T>>;

#include "kernels/channel_body.inl"
};

}  // namespace scalar
}  // namespace lnorm
