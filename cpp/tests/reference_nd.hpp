// cpp/tests/reference_nd.hpp: the C++ tests' own reference, independent of lnorm's kernels: N-d
// strided problems enumerated element by element, and LayerNorm / RMSNorm (forward, fused add,
// backward) computed in double with compensated sums, straight from the definitions.
#pragma once

#include "harness.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace lnorm_test {

// ---- problems ----------------------------------------------------------------------------------

constexpr int kMaxTestDims = 6;

/// An N-d problem: shape, the normalized axes, and element strides of the inputs (x, residual, dy)
/// and of the outputs (y, s, dx), each starting `base` elements into its buffer.
struct geometry {
  std::string name;
  std::vector<std::int64_t> shape;
  std::array<bool, kMaxTestDims> normalized{};
  std::vector<std::int64_t> in_strides, out_strides;
  std::int64_t in_base = 0, out_base = 0;
  bool row_api = false;  // call the row-stride API (try_layer_norm, ...) instead of the N-d one

  int ndim() const { return static_cast<int>(shape.size()); }
};

inline std::vector<std::int64_t> contiguous_strides(const std::vector<std::int64_t>& shape) {
  std::vector<std::int64_t> s(shape.size(), 1);
  for (int d = static_cast<int>(shape.size()) - 2; d >= 0; --d) s[d] = s[d + 1] * shape[d + 1];
  return s;
}

/// `rows` rows of `cols` elements, x rows `ld_in` apart and y rows `ld_out` apart (the row API).
inline geometry trailing_rows(std::int64_t rows, std::int64_t cols, std::int64_t ld_in, std::int64_t ld_out,
                              std::int64_t base = 0) {
  geometry g;
  g.name = "rows " + std::to_string(rows) + "x" + std::to_string(cols);
  if (ld_in != cols || ld_out != cols || base != 0)
    g.name += " ld " + std::to_string(ld_in) + "/" + std::to_string(ld_out) + " +" + std::to_string(base);
  g.shape = {rows, cols};
  g.normalized = {false, true};
  g.in_strides = {ld_in, 1};
  g.out_strides = {ld_out, 1};
  g.in_base = g.out_base = base;
  g.row_api = true;
  return g;
}

/// Contiguous (outer, n, width) normalized over the middle axis: column tiles of `width` lanes.
inline geometry middle_axis(std::int64_t outer, std::int64_t n, std::int64_t width) {
  geometry g;
  g.name = "axis 1 of " + std::to_string(outer) + "x" + std::to_string(n) + "x" + std::to_string(width);
  g.shape = {outer, n, width};
  g.normalized = {false, true, false};
  g.in_strides = g.out_strides = contiguous_strides(g.shape);
  return g;
}

/// (rows, cols) normalized over cols whose elements lie `step` apart: the gather layout.
inline geometry strided_axis(std::int64_t rows, std::int64_t cols, std::int64_t step) {
  geometry g;
  g.name = "rows " + std::to_string(rows) + "x" + std::to_string(cols) + " step " + std::to_string(step);
  g.shape = {rows, cols};
  g.normalized = {false, true};
  g.in_strides = {cols * step + 1, step};
  g.out_strides = {cols * step + 3, step};
  g.in_base = 1;
  return g;
}

/// (a, b, c) normalized over axes 0 and 2: two normalized axes, the gather layout.
inline geometry outer_axes(std::int64_t a, std::int64_t b, std::int64_t c) {
  geometry g;
  g.name = "axes 0,2 of " + std::to_string(a) + "x" + std::to_string(b) + "x" + std::to_string(c);
  g.shape = {a, b, c};
  g.normalized = {true, false, true};
  g.in_strides = g.out_strides = contiguous_strides(g.shape);
  return g;
}

/// Elements a buffer needs for these strides (all >= 0) and base.
inline std::int64_t buffer_size(const geometry& g, const std::vector<std::int64_t>& strides, std::int64_t base) {
  std::int64_t last = base;
  for (int d = 0; d < g.ndim(); ++d) last += (g.shape[d] - 1) * strides[d];
  return last + 1;
}

/// Buffer offsets of every element as rows x cols: rows are the row-major index over the batch axes,
/// columns the row-major index over the normalized axes (the order of mean/rstd and of gamma/beta).
struct row_table {
  std::int64_t rows = 0, cols = 0;
  std::vector<std::int64_t> offsets;
  std::int64_t at(std::int64_t r, std::int64_t j) const { return offsets[static_cast<std::size_t>(r * cols + j)]; }
};

inline row_table enumerate_rows(const geometry& g, const std::vector<std::int64_t>& strides, std::int64_t base) {
  std::vector<int> batch_axes, norm_axes;
  for (int d = 0; d < g.ndim(); ++d) (g.normalized[d] ? norm_axes : batch_axes).push_back(d);
  // Offsets of each index over a list of axes, row-major.
  auto offsets_over = [&](const std::vector<int>& axes) {
    std::vector<std::int64_t> out{0};
    for (int d : axes) {
      std::vector<std::int64_t> next;
      for (std::int64_t o : out)
        for (std::int64_t i = 0; i < g.shape[d]; ++i) next.push_back(o + i * strides[d]);
      out.swap(next);
    }
    return out;
  };
  const std::vector<std::int64_t> row_off = offsets_over(batch_axes), col_off = offsets_over(norm_axes);
  row_table t;
  t.rows = static_cast<std::int64_t>(row_off.size());
  t.cols = static_cast<std::int64_t>(col_off.size());
  for (std::int64_t r : row_off)
    for (std::int64_t c : col_off) t.offsets.push_back(base + r + c);
  return t;
}

// ---- the reference ---------------------------------------------------------------------------

/// A sum of doubles with Neumaier's compensation: as accurate as a sum in twice the precision, so the
/// reference's sums over thousands of elements add no error of their own (it stays a few units of
/// double's roundoff, against tolerances of 16 or more).
class compensated_sum {
 public:
  void add(double v) {
    const double t = sum_ + v;
    correction_ += std::fabs(sum_) >= std::fabs(v) ? (sum_ - t) + v : (v - t) + sum_;
    sum_ = t;
  }
  double value() const { return sum_ + correction_; }

 private:
  double sum_ = 0, correction_ = 0;
};

/// Statistics of one row: two passes with compensated sums, never E[x^2] - E[x]^2. The mean also as
/// two parts, mean_hi + mean_lo, for (x - mean_hi) - mean_lo: exact to double precision on a row whose
/// mean is 1e8 times its spread, where x - mean would carry the rounding of the mean (1e-8 spreads).
struct exact_moments {
  double mean = 0, var = 0, mean_square = 0;
  double mean_hi = 0, mean_lo = 0;
};

template <class Get>
exact_moments row_moments(std::int64_t n, Get get) {
  exact_moments m;
  compensated_sum sum, sum_sq;
  for (std::int64_t j = 0; j < n; ++j) {
    sum.add(get(j));
    sum_sq.add(get(j) * get(j));
  }
  m.mean = sum.value() / static_cast<double>(n);
  m.mean_square = sum_sq.value() / static_cast<double>(n);
  compensated_sum d_sum, d_sq;
  for (std::int64_t j = 0; j < n; ++j) {
    const double d = get(j) - m.mean;
    d_sum.add(d);
    d_sq.add(d * d);
  }
  const double c = d_sum.value() / static_cast<double>(n);
  m.mean_hi = m.mean;
  m.mean_lo = c;
  m.mean += c;
  m.var = d_sq.value() / static_cast<double>(n) - c * c;
  if (m.var < 0) m.var = 0;
  return m;
}

/// 1 / sqrt(v), +inf for v == 0.
inline double inv_sqrt(double v) { return v > 0 ? 1.0 / std::sqrt(v) : INFINITY; }

}  // namespace lnorm_test
