// lnorm/rules.hpp: the rules every public call of lnorm (CPU and CUDA) applies to its arguments,
// written once: which arrays may share memory (aliasing), the one rule for eps, and the argument
// names that every status message starts with. Plain C++17, no dependency on the rest of lnorm, so
// that lnorm/cuda/norm.cuh includes it too.
//
// The aliasing rule, as every call applies it:
//   - An array is (data pointer, ndim, shape, strides in elements, element size in bytes). The
//     contiguous vectors are 1-d arrays: gamma, beta, bias_in (cols weights), mean, rstd (one value
//     per row), dgamma, dbeta (cols values). An array with no elements overlaps nothing.
//   - No output overlaps itself: no two of its elements share a byte (zero strides, broadcast views,
//     rows closer than a row's width are refused).
//   - No output shares a byte with any input or any other output, except that an output may be
//     exactly an input where the call allows it (in place): the same data pointer and the same
//     strides on every dimension of size > 1. Inputs may overlap each other and themselves freely.
//   - Overlap is decided exactly: byte spans first (the common case, apart), then, for spans that
//     intersect, a bounded search for a shared byte. A search that exceeds its work cap counts as an
//     overlap: a call is refused rather than run on a guess.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

// The span computation is inlined into the checking loop: called, its results went through memory
// and were read back before the stores completed, which cost more than computing them.
#if defined(__GNUC__) || defined(__clang__)
#define LNORM_RULES_INLINE __attribute__((always_inline)) inline
#else
#define LNORM_RULES_INLINE inline
#endif

namespace lnorm {

/// The most dimensions an N-d call takes.
inline constexpr int kMaxDims = 64;

/// One array as the aliasing rule sees it: its first element, its shape, its strides in elements
/// (any sign, zero allowed) and the bytes of one element. The views lnorm's calls build for their
/// arguments are of this kind; the Python bindings build the same from their arrays.
///
///   const std::int64_t shape[2] = {rows, cols}, st[2] = {ld, 1};
///   const lnorm::array_view y{out, 2, shape, st, sizeof(float)};
struct array_view {
  const void* data = nullptr;
  int ndim = 0;
  const std::int64_t* shape = nullptr;
  const std::int64_t* strides = nullptr;  // in elements
  std::size_t elem_bytes = 0;
};

namespace rules {

// An array spans at most this many bytes (first to last byte of its elements): more than any address
// space, and small enough that the overlap search adds and subtracts spans without overflow.
inline constexpr std::uint64_t kMaxSpanBytes = std::uint64_t{1} << 61;
// The overlap search gives up (and says "overlap") after this many steps.
inline constexpr long kOverlapWorkCap = 1L << 15;

// The byte range [lo, hi) of an array's elements.
struct byte_span {
  std::uintptr_t lo = 0, hi = 0;
  bool empty = false;   // no elements: overlaps nothing
  bool nested = false;  // strides nested last dimension first: its elements cannot meet
  bool valid = true;   // false: not describable (ndim out of [0, 64], a null shape or strides, a
                       // negative dimension, elem_bytes 0, a span of kMaxSpanBytes or more, or one
                       // that wraps the address space)
};

inline std::uint64_t magnitude(std::int64_t v) noexcept {
  return v < 0 ? std::uint64_t{0} - static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
}

// a * b, or false when it reaches kMaxSpanBytes (the compilers' overflow check where there is one:
// a call checks a few arrays of a few dimensions, and a division costs as much as the rest).
inline bool span_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  return !__builtin_mul_overflow(a, b, &out) && out < kMaxSpanBytes;
#else
  if (a != 0 && b >= kMaxSpanBytes / a + 1) return false;
  out = a * b;
  return out < kMaxSpanBytes;
#endif
}

// An array's extent around its first element, whatever its address: bytes below it (negative
// strides) and above it (positive strides, plus the element). False for an array that cannot be
// described or spans kMaxSpanBytes or more; `empty` says it has no elements (then nothing else is read).
// `nested`, on the way: each stride, last dimension first, is at least the reach of the dimensions
// after it plus an element, so no two elements meet (a row-major array, or rows at least a row apart);
// false says only "look closer" (positions_collide).
LNORM_RULES_INLINE bool reach_of(const array_view& a, bool& empty, std::uint64_t& below, std::uint64_t& above,
                                 bool& nested) noexcept {
  empty = false;
  nested = true;
  below = above = 0;
  if (a.ndim < 0 || a.ndim > kMaxDims || (a.ndim > 0 && !a.shape)) return false;
  const std::uint64_t elem = a.elem_bytes;
  bool fits = elem - 1 < kMaxSpanBytes - 1;  // 1 <= elem < 2^61
  std::uint64_t total = elem;                // below + above + elem
  for (int d = a.ndim - 1; d >= 0; --d) {     // one pass: a zero dimension anywhere makes the array empty
    const std::int64_t n = a.shape[d];
    if (n <= 1) {
      if (n < 0) return false;
      empty |= n == 0;
      continue;
    }
    std::uint64_t step = 0, reach = 0;
    if (!fits || !a.strides || !span_mul(magnitude(a.strides[d]), elem, step) ||
        !span_mul(static_cast<std::uint64_t>(n - 1), step, reach)) {
      fits = false;
      continue;
    }
    nested &= step >= total;
    (a.strides[d] < 0 ? below : above) += reach;
    total += reach;  // each term and the running sum < 2^61: no wrap
    fits = total < kMaxSpanBytes;
  }
  above += elem;
  return empty || fits;
}

inline bool reach_of(const array_view& a, bool& empty, std::uint64_t& below, std::uint64_t& above) noexcept {
  bool nested = false;
  return reach_of(a, empty, below, above, nested);
}

// The span of `a`, written field by field into `s` (returned whole, the struct went through memory
// and was read back before its stores completed).
LNORM_RULES_INLINE void fill_span(const array_view& a, byte_span& s) noexcept {
  std::uint64_t below = 0, above = 0;
  bool empty = false, nested = false;
  s.lo = s.hi = 0;
  s.valid = reach_of(a, empty, below, above, nested);
  s.empty = empty;
  s.nested = nested;
  if (!s.valid || empty) return;
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(a.data);
  s.valid = base >= below && std::numeric_limits<std::uintptr_t>::max() - base >= above;
  s.lo = base - below;
  s.hi = base + above;
}

// fill_span for the arrays of a call, whose shape the call has checked (ndim in [1, 64], no negative
// dimension, strides given): strides and extents under 2^31 elements, elements of at most 16 bytes,
// counted in elements with no overflow check needed. False (s untouched) for anything else: then
// fill_span decides.
LNORM_RULES_INLINE bool fill_span_common(const array_view& a, byte_span& s) noexcept {
  if (a.elem_bytes - 1 >= 16) return false;
  constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 56;  // times 16 bytes: kMaxSpanBytes / 2
  std::uint64_t below = 0, above = 0, total = 1;  // in elements; total = below + above + 1
  bool nested = true, empty = false, small = true;
  for (int d = a.ndim - 1; d >= 0; --d) {
    const std::int64_t n = a.shape[d];
    if (n <= 1) {
      empty |= n == 0;
      continue;
    }
    const std::int64_t st = a.strides[d];
    const std::uint64_t m = magnitude(st), reach = (static_cast<std::uint64_t>(n) - 1) * m;  // < 2^62 if small
    small &= ((m | static_cast<std::uint64_t>(n)) >> 31) == 0;
    nested &= m >= total;
    (st < 0 ? below : above) += reach;
    total += reach;                  // no wrap while small: total < 2^56 before, reach < 2^62
    small &= total < kMaxElements;   // (once not small, the sums no longer matter)
  }
  if (!small) return false;
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(a.data), lo_bytes = below * a.elem_bytes,
                       hi_bytes = (above + 1) * a.elem_bytes;
  s.empty = empty;
  s.nested = nested;
  s.valid = empty || (base >= lo_bytes && std::numeric_limits<std::uintptr_t>::max() - base >= hi_bytes);
  s.lo = empty ? 0 : base - lo_bytes;
  s.hi = empty ? 0 : base + hi_bytes;
  return true;
}

inline byte_span span_of(const array_view& a) noexcept {
  byte_span s;
  fill_span(a, s);
  return s;
}

inline bool spans_meet(const byte_span& a, const byte_span& b) noexcept { return a.lo < b.hi && b.lo < a.hi; }

inline std::int64_t gcd(std::int64_t a, std::int64_t b) noexcept {
  while (b != 0) {
    const std::int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// floor(a / b) and ceil(a / b) for b > 0, any sign of a.
inline std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept { return a / b - ((a % b != 0) && (a < 0)); }
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) noexcept { return a / b + ((a % b != 0) && (a > 0)); }

// (a * b) mod m for 0 <= a, b < m < 2^62, without overflow (doubling).
inline std::int64_t mul_mod(std::int64_t a, std::int64_t b, std::int64_t m) noexcept {
  std::int64_t r = 0;
  for (; b > 0; b >>= 1) {
    if (b & 1) r = (r + a) % m;
    a = (a + a) % m;
  }
  return r;
}

// The inverse of a modulo m (gcd(a, m) == 1, m >= 1).
inline std::int64_t inverse_mod(std::int64_t a, std::int64_t m) noexcept {
  std::int64_t r0 = m, r1 = a % m, t0 = 0, t1 = 1;
  while (r1 != 0) {
    const std::int64_t q = r0 / r1, r2 = r0 - q * r1, t2 = t0 - q * t1;
    r0 = r1, r1 = r2, t0 = t1, t1 = t2;
  }
  return ((t0 % m) + m) % m;
}

// Whether some integers 0 <= x_k <= bound_k give sum(coef_k * x_k) in [lo, hi] (every coef > 0):
// a bounded linear Diophantine feasibility question. Depth-first over the terms, largest coefficient
// first; each level tries only the x whose remainder can still be reached (the remaining terms' range
// and the gcd of their coefficients). Past kOverlapWorkCap steps it answers true (conservative).
class bounded_sum {
 public:
  static constexpr int kMaxTerms = 2 * kMaxDims;

  // coef_k * bound_k each < 2^61, their sum < 2^62.
  void add(std::int64_t coef, std::int64_t bound) noexcept {
    if (bound > 0 && coef > 0) coef_[n_] = coef, bound_[n_++] = bound;
  }

  bool feasible(std::int64_t lo, std::int64_t hi) noexcept {
    merge();
    rest_max_[n_] = 0;
    rest_gcd_[n_] = 0;
    for (int k = n_ - 1; k >= 0; --k) {
      rest_max_[k] = rest_max_[k + 1] + coef_[k] * bound_[k];
      rest_gcd_[k] = gcd(coef_[k], rest_gcd_[k + 1]);
    }
    return search(0, lo, hi);
  }

 private:
  // Sorts by coefficient, largest first, and merges terms that together take every multiple of the
  // smaller coefficient in a range: equal coefficients (bounds add), and c_big == c_small * (b_small + 1)
  // (an odometer: the bounds multiply). A contiguous row of rows becomes one term, which keeps the
  // search short for the interleaved views the rule must accept.
  void merge() noexcept {
    for (int i = 1; i < n_; ++i)
      for (int j = i; j > 0 && coef_[j - 1] < coef_[j]; --j) {
        const std::int64_t c = coef_[j], b = bound_[j];
        coef_[j] = coef_[j - 1], bound_[j] = bound_[j - 1];
        coef_[j - 1] = c, bound_[j - 1] = b;
      }
    bool merged = true;
    while (merged) {
      merged = false;
      for (int i = n_ - 1; i > 0; --i) {
        const std::int64_t cs = coef_[i], bs = bound_[i], cb = coef_[i - 1], bb = bound_[i - 1];
        if (cb == cs) bound_[i] = bs + bb;
        else if (cb / cs == bs + 1 && cb % cs == 0) bound_[i] = bs + (bs + 1) * bb;
        else continue;
        for (int k = i - 1; k + 1 < n_; ++k) coef_[k] = coef_[k + 1], bound_[k] = bound_[k + 1];
        --n_;
        merged = true;
        break;
      }
    }
  }

  // Whether terms [m, n) reach a sum in [lo, hi].
  bool search(int m, std::int64_t lo, std::int64_t hi) noexcept {
    if (lo < 0) lo = 0;
    if (hi > rest_max_[m]) hi = rest_max_[m];
    if (lo > hi) return false;
    if (m == n_) return true;  // lo <= 0 <= hi
    const std::int64_t g_all = rest_gcd_[m];
    if (floor_div(hi, g_all) * g_all < lo) return false;  // no multiple of the gcd in range
    if (++work_ > kOverlapWorkCap) return true;
    const std::int64_t c = coef_[m];
    const std::int64_t x_lo = lo - rest_max_[m + 1] > 0 ? ceil_div(lo - rest_max_[m + 1], c) : 0;
    const std::int64_t x_hi = floor_div(hi, c) < bound_[m] ? floor_div(hi, c) : bound_[m];
    if (m + 1 == n_) return x_lo <= x_hi;
    const std::int64_t g = rest_gcd_[m + 1];
    if (hi - lo + 1 >= g) {  // every x leaves a remainder range that holds a multiple of g
      for (std::int64_t x = x_lo; x <= x_hi; ++x) {
        if (++work_ > kOverlapWorkCap) return true;
        if (search(m + 1, lo - c * x, hi - c * x)) return true;
      }
      return false;
    }
    // Only the x with c*x = t (mod g) for some t in [lo, hi] leave a multiple of g in range: one
    // residue class of x modulo g/gcd(c, g) per such t.
    const std::int64_t d = gcd(c, g), period = g / d, inv = inverse_mod((c / d) % period, period);
    for (std::int64_t t = ceil_div(lo, d) * d; t <= hi; t += d) {  // c*x is a multiple of d
      const std::int64_t x0 = mul_mod((t / d) % period, inv, period);
      for (std::int64_t x = x_lo + ((x0 - x_lo % period) % period + period) % period; x <= x_hi; x += period) {
        if (++work_ > kOverlapWorkCap) return true;
        if (search(m + 1, lo - c * x, hi - c * x)) return true;
      }
      if (++work_ > kOverlapWorkCap) return true;
    }
    return false;
  }

  std::int64_t coef_[kMaxTerms] = {}, bound_[kMaxTerms] = {};
  std::int64_t rest_max_[kMaxTerms + 1] = {}, rest_gcd_[kMaxTerms + 1] = {};
  int n_ = 0;
  long work_ = 0;
};

// An array's element positions as sorted (byte stride, count) dimensions: strides made positive (the
// span's low end is the first position), unit and zero-stride dimensions dropped, and leading
// dimensions that continue the element contiguously folded into a wider element.
struct positions {
  std::int64_t stride[kMaxDims] = {}, count[kMaxDims] = {};
  int n = 0;
  std::int64_t elem = 0;

  positions(const array_view& a) noexcept : elem(static_cast<std::int64_t>(a.elem_bytes)) {
    for (int d = a.ndim - 1; d >= 0; --d) {  // last first: row-major strides come in sorted
      if (a.shape[d] <= 1 || a.strides[d] == 0) continue;
      const std::int64_t s = static_cast<std::int64_t>(magnitude(a.strides[d])) * elem;  // < 2^61: span checked
      int k = n++;
      for (; k > 0 && stride[k - 1] > s; --k) stride[k] = stride[k - 1], count[k] = count[k - 1];
      stride[k] = s, count[k] = a.shape[d];
    }
    int first = 0;
    while (first < n && stride[first] == elem) elem *= count[first++];
    for (int k = first; k < n; ++k) stride[k - first] = stride[k], count[k - first] = count[k];
    n -= first;
  }
};

// Exact overlap of two valid, non-empty arrays whose spans meet.
inline bool positions_meet(const array_view& a, const byte_span& sa, const array_view& b, const byte_span& sb) noexcept {
  // Element starts: p = a_lo + sum(sa_k * i_k), q = b_lo + sum(sb_k * j_k). Bytes meet iff
  // p - q in [1 - ea, eb - 1]. With j_k = count_k - 1 - j'_k every term is positive:
  //   sum(sa_k * i_k) + sum(sb_k * j'_k) in [1 - ea - K, eb - 1 - K], K = a_lo - b_lo - (b's reach).
  const positions pa(a), pb(b);
  bounded_sum problem;
  std::int64_t b_reach = 0;
  for (int k = 0; k < pa.n; ++k) problem.add(pa.stride[k], pa.count[k] - 1);
  for (int k = 0; k < pb.n; ++k) {
    problem.add(pb.stride[k], pb.count[k] - 1);
    b_reach += pb.stride[k] * (pb.count[k] - 1);
  }
  const std::int64_t delta = sa.lo >= sb.lo ? static_cast<std::int64_t>(sa.lo - sb.lo)
                                            : -static_cast<std::int64_t>(sb.lo - sa.lo);  // |delta| < 2^61
  const std::int64_t k0 = delta - b_reach;
  return problem.feasible(1 - pa.elem - k0, pb.elem - 1 - k0);
}

// Whether two distinct elements of a valid, non-empty array share a byte.
inline bool positions_collide(const array_view& a) noexcept {
  std::int64_t stride[kMaxDims], count[kMaxDims];
  int n = 0;
  const std::int64_t elem = static_cast<std::int64_t>(a.elem_bytes);
  for (int d = a.ndim - 1; d >= 0; --d) {  // last first: row-major strides come in sorted
    if (a.shape[d] <= 1) continue;
    if (a.strides[d] == 0) return true;
    const std::int64_t s = static_cast<std::int64_t>(magnitude(a.strides[d])) * elem;
    int k = n++;
    for (; k > 0 && stride[k - 1] > s; --k) stride[k] = stride[k - 1], count[k] = count[k - 1];
    stride[k] = s, count[k] = a.shape[d];
  }
  // Nested (each stride at least the reach of the smaller ones, plus an element): no collision. The
  // common case: rows at least a row apart, columns of a row-major block, transposes.
  std::int64_t reach = elem;
  bool nested = true;
  for (int k = 0; k < n && nested; ++k) {
    nested = stride[k] >= reach;
    reach += stride[k] * (count[k] - 1);
  }
  if (nested) return false;
  // Exactly: index differences e_k in [-(count_k - 1), count_k - 1], not all zero, with
  // |sum(stride_k * e_k)| < elem. Up to sign, the first nonzero difference (dimension j) is >= 1.
  for (int j = 0; j < n; ++j) {
    bounded_sum problem;
    // e_j = 1 + x_j, x_j in [0, count_j - 2]; e_k = x_k - (count_k - 1), x_k in [0, 2 (count_k - 1)].
    problem.add(stride[j], count[j] - 2);
    std::int64_t shift = stride[j];
    for (int k = j + 1; k < n; ++k) {
      problem.add(stride[k], 2 * (count[k] - 1));
      shift -= stride[k] * (count[k] - 1);
    }
    if (problem.feasible(1 - elem - shift, elem - 1 - shift)) return true;
  }
  return false;
}

}  // namespace rules

/// Whether two distinct elements of `a` share a byte (zero strides, rows closer than a row's width,
/// any self-overlapping view). Exact; an array that cannot be described (see arrays_overlap), or
/// whose check exceeds its work cap, counts as overlapping; one with no elements never does.
///
///   const std::int64_t shape[2] = {4, 8}, st[2] = {6, 1};           // rows 6 apart, 8 wide
///   bool bad = lnorm::has_internal_overlap({p, 2, shape, st, 4});    // true
inline bool has_internal_overlap(const array_view& a) noexcept {
  const rules::byte_span s = rules::span_of(a);
  if (!s.valid) return true;
  if (s.empty) return false;
  return rules::positions_collide(a);
}

/// Whether `a` and `b` are exactly the same elements: the same element size, shape and data pointer,
/// and the same strides on every dimension of size > 1 (dimensions of size 1 may differ). Two arrays
/// of the same shape with no elements are the same view. This is "in place" in the aliasing rule.
///
///   bool in_place = lnorm::same_view({x, 2, shape, st, 4}, {y, 2, shape, st, 4});   // x == y
inline bool same_view(const array_view& a, const array_view& b) noexcept {
  if (a.elem_bytes != b.elem_bytes || a.ndim != b.ndim || a.ndim < 0 || a.ndim > kMaxDims) return false;
  if (a.ndim > 0 && (!a.shape || !b.shape)) return false;
  bool empty = false;
  for (int d = 0; d < a.ndim; ++d) {
    if (a.shape[d] != b.shape[d] || a.shape[d] < 0) return false;
    empty |= a.shape[d] == 0;
  }
  if (empty) return true;
  if (a.data != b.data) return false;
  for (int d = 0; d < a.ndim; ++d) {
    if (a.shape[d] == 1) continue;
    if (!a.strides || !b.strides || a.strides[d] != b.strides[d]) return false;
  }
  return true;
}

/// Whether `a` and `b` share any byte. Exact: byte spans first, then, for spans that meet, a bounded
/// search over both arrays' indices (interleaved views such as the even and odd columns of one
/// matrix do not overlap). An array with no elements overlaps nothing; one that cannot be described
/// (ndim outside [0, 64], a null shape or strides, a negative dimension, elem_bytes 0, a span of
/// 2^61 bytes or more, or one that wraps the address space) overlaps everything, and so does a pair
/// whose search exceeds its work cap (2^15 steps): conservative, never a wrong "no".
///
///   const std::int64_t shape[2] = {n, d}, st[2] = {2 * d, 1};
///   lnorm::arrays_overlap({a, 2, shape, st, 4}, {a + d, 2, shape, st, 4});   // false: columns [0, d), [d, 2d)
inline bool arrays_overlap(const array_view& a, const array_view& b) noexcept {
  const rules::byte_span sa = rules::span_of(a), sb = rules::span_of(b);
  if ((sa.valid && sa.empty) || (sb.valid && sb.empty)) return false;
  if (!sa.valid || !sb.valid) return true;
  if (!rules::spans_meet(sa, sb)) return false;
  if (same_view(a, b)) return true;
  return rules::positions_meet(a, sa, b, sb);
}

namespace rules {

// ---- eps ---------------------------------------------------------------------------------------

/// The one rule for eps, in every call (CPU and CUDA): a finite number >= 0. Null when it holds,
/// else the message. (A huge eps is allowed: rstd then underflows towards 0 and y tends to beta.)
inline const char* check_eps(double eps) noexcept {
  return (eps >= 0.0 && eps <= std::numeric_limits<double>::max()) ? nullptr : "eps: must be finite and >= 0";
}

// ---- the calls' array arguments, and the messages that name them ------------------------------

/// The array arguments of lnorm's calls, by their C++ parameter names.
enum class arg : int { x, residual, bias_in, s, y, gamma, beta, mean, rstd, dy, dx, dgamma, dbeta, running_mean, running_var, count };
inline constexpr int kArgCount = static_cast<int>(arg::count);
inline constexpr const char* kArgNames[kArgCount] = {"x",    "residual", "bias_in", "s",  "y",  "gamma",  "beta",
                                                     "mean", "rstd",     "dy",      "dx", "dgamma", "dbeta",
                                                     "running_mean", "running_var"};

inline constexpr unsigned bit(arg a) noexcept { return 1u << static_cast<int>(a); }

// Every message the rule can give, built at compile time from the names: static strings that start
// with the name of the argument at fault.
struct messages {
  static constexpr int kLen = 96;
  char null_data[kArgCount][kLen] = {};
  char null_strides[kArgCount][kLen] = {};
  char too_wide[kArgCount][kLen] = {};
  char self_overlap[kArgCount][kLen] = {};
  char overlap[2][kArgCount][kArgCount][kLen] = {};  // [whether the other array is an output][output][other]

  static constexpr void put(char* out, int& at, const char* text) noexcept {
    while (*text && at + 1 < kLen) out[at++] = *text++;
    out[at] = '\0';
  }
  static constexpr void line(char* out, const char* a, const char* middle, const char* b = "", const char* end = "") noexcept {
    int at = 0;
    put(out, at, a);
    put(out, at, middle);
    put(out, at, b);
    put(out, at, end);
  }
  static constexpr bool in_place_output(int a) noexcept {
    return a == static_cast<int>(arg::y) || a == static_cast<int>(arg::s);
  }

  constexpr messages() noexcept {
    for (int a = 0; a < kArgCount; ++a) {
      line(null_data[a], kArgNames[a], ": null pointer");
      line(null_strides[a], kArgNames[a], ": strides are null");
      line(too_wide[a], kArgNames[a], ": spans 2^61 bytes or more, or wraps the address space (shape and strides)");
      line(self_overlap[a], kArgNames[a], ": its elements overlap each other");
      for (int b = 0; b < kArgCount; ++b) {
        line(overlap[0][a][b], kArgNames[a], ": overlaps ", kArgNames[b],
             in_place_output(a) ? "; an output may only be exactly its input (in place)"
                                : "; this output must not share memory with another array");
        line(overlap[1][a][b], kArgNames[a], ": overlaps ", kArgNames[b], "; two outputs must not share memory");
      }
    }
  }
};
inline constexpr messages kMessages{};

// Every message fits its buffer (put() would cut one short).
constexpr bool messages_fit() noexcept {
  auto fits = [](const char* m) {
    int n = 0;
    while (m[n]) ++n;
    return n + 1 < messages::kLen;
  };
  for (int a = 0; a < kArgCount; ++a) {
    if (!fits(kMessages.too_wide[a]) || !fits(kMessages.self_overlap[a])) return false;
    for (int b = 0; b < kArgCount; ++b)
      if (!fits(kMessages.overlap[0][a][b]) || !fits(kMessages.overlap[1][a][b])) return false;
  }
  return true;
}
static_assert(messages_fit(), "lnorm: a rule message is longer than its buffer");

/// The array arguments of one call, listed in parameter order, checked by check(). Each is taken in
/// as it is listed (its span computed, a null pointer or an undescribable array noted), so that
/// check() is left with the pairs: a call's checks cost a few hundred instructions.
class operands {
 public:
  static constexpr int kMax = 10;

  /// An N-d (or row-range) argument, of a shape the call has checked (ndim in [1, 64], no negative
  /// dimension, strides given); `v.shape` and `v.strides` must outlive check().
  void input(arg name, const array_view& v) noexcept { add_array(name, v, false, 0); }
  /// An output; `may_be` has a bit (bit(arg)) for each input it may be exactly (in place).
  void output(arg name, const array_view& v, unsigned may_be = 0) noexcept { add_array(name, v, true, may_be); }

  /// A contiguous vector of n elements of `elem_bytes` (gamma, beta, bias_in, mean, rstd, dgamma,
  /// dbeta); `n` must outlive check().
  LNORM_RULES_INLINE void vector(arg name, const void* data, const std::int64_t& n, std::size_t elem_bytes,
                                 bool output) noexcept {
    if (n_ == kMax) return;
    const int i = n_++;
    view_[i].data = data;
    view_[i].shape = &n;
    view_[i].elem_bytes = elem_bytes;
    info_[i] = {name, output, true, true, 0};
    std::uint64_t bytes = 0;
    const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(data);
    lo_[i] = hi_[i] = 0;
    if (n < 0 || !span_mul(static_cast<std::uint64_t>(n), elem_bytes, bytes) ||
        std::numeric_limits<std::uintptr_t>::max() - base < bytes)
      return note(kMessages.too_wide[static_cast<int>(name)]);
    if (bytes == 0) return;  // empty: meets nothing
    if (data == nullptr) return note(kMessages.null_data[static_cast<int>(name)]);
    lo_[i] = base;
    hi_[i] = base + bytes;
    outputs_ |= static_cast<unsigned>(output) << i;
  }

  /// The rule over every listed array: null pointers of arrays with elements, spans, then each output
  /// against itself, every input and every later output. Null when it holds, else the message of the
  /// first argument at fault (outputs in parameter order).
  const char* check() noexcept {
    if (fault_) return fault_;
    const int n = n_;
    const std::uintptr_t *los = lo_, *his = hi_;
    for (unsigned left = outputs_; left != 0; left &= left - 1) {
      const int i = lowest_bit(left);
      if (!info_[i].nested && positions_collide(view_[i])) return kMessages.self_overlap[static_cast<int>(info_[i].name)];
      // Every array whose span meets this output's (in the common call, none but itself), less the
      // outputs before it (those pairs were checked from the other side).
      const std::uintptr_t lo = los[i], hi = his[i];
      unsigned meets = 0;
      for (int j = 0; j < n; ++j) meets |= static_cast<unsigned>((lo < his[j]) & (los[j] < hi)) << j;
      meets &= ~(outputs_ & ((2u << i) - 1u));  // itself, and the outputs before it
      for (; meets != 0; meets &= meets - 1)
        if (const char* m = meet(i, lowest_bit(meets))) return m;
    }
    return nullptr;
  }

 private:
  struct entry {
    arg name;
    bool output;
    bool vector;   // contiguous 1-d: its view is completed only when needed
    bool nested;   // cannot overlap itself (a vector; strides nested last dimension first)
    unsigned may_be;
  };

  static int lowest_bit(unsigned v) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctz(v);
#else
    int i = 0;
    while (!((v >> i) & 1u)) ++i;
    return i;
#endif
  }

  void note(const char* message) noexcept {
    if (!fault_) fault_ = message;  // the first argument at fault, in parameter order
  }

  void add_array(arg name, const array_view& v, bool output, unsigned may_be) noexcept {
    if (n_ == kMax) return;
    const int i = n_++;
    view_[i] = v;
    if (v.ndim > 0 && v.strides == nullptr) {  // an N-d argument's strides are needed even when it is empty
      info_[i] = {name, output, false, true, may_be};
      lo_[i] = hi_[i] = 0;
      return note(kMessages.null_strides[static_cast<int>(name)]);
    }
    byte_span s;
    if (!fill_span_common(v, s)) fill_span(v, s);
    info_[i] = {name, output, false, s.nested, may_be};
    lo_[i] = hi_[i] = 0;
    if (s.valid && s.empty) return;  // meets nothing
    if (v.data == nullptr) return note(kMessages.null_data[static_cast<int>(name)]);
    if (!s.valid) return note(kMessages.too_wide[static_cast<int>(name)]);
    lo_[i] = s.lo;
    hi_[i] = s.hi;
    outputs_ |= static_cast<unsigned>(output) << i;
  }

  const array_view& view(int i) noexcept {
    static constexpr std::int64_t unit[1] = {1};
    if (info_[i].vector) {
      view_[i].ndim = 1;
      view_[i].strides = unit;
    }
    return view_[i];
  }

  // Output i and array j, whose spans meet: null if allowed (in place), else the message.
  const char* meet(int i, int j) noexcept {
    const entry &o = info_[i], &p = info_[j];
    const array_view &a = view(i), &b = view(j);
    const char* message = kMessages.overlap[p.output][static_cast<int>(o.name)][static_cast<int>(p.name)];
    if (same_view(a, b)) return (!p.output && (o.may_be & bit(p.name))) ? nullptr : message;
    byte_span sa, sb;
    sa.lo = lo_[i], sa.hi = hi_[i], sb.lo = lo_[j], sb.hi = hi_[j];
    return positions_meet(a, sa, b, sb) ? message : nullptr;
  }

  std::uintptr_t lo_[kMax], hi_[kMax];  // spans; [0, 0) for an empty array, which meets nothing
  entry info_[kMax];
  union views {  // set as arguments are listed: the unused ones cost nothing
    views() noexcept {}
    array_view at[kMax];
  } views_;
  array_view* const view_ = views_.at;
  unsigned outputs_ = 0;  // non-empty outputs, one bit each
  const char* fault_ = nullptr;
  int n_ = 0;
};

}  // namespace rules
}  // namespace lnorm
