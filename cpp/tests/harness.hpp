// cpp/tests/harness.hpp: the C++ tests' tiny harness: test cases that count and report their failures,
// a seeded portable random generator, and per-type facts (names, rounding unit, tolerance scale).
#pragma once

#include <lnorm/lnorm.hpp>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

namespace lnorm_test {

// ---- counting and reporting ------------------------------------------------------------------

struct tally {
  long passed = 0, failed = 0;
  long printed = 0;  // failure lines printed so far (capped, so one broken kernel cannot flood the log)
  std::map<std::string, double> worst;  // per check family: largest error / tolerance seen
};

inline tally& results() {
  static tally t;
  return t;
}

/// One named check: counted once as passed or failed when it goes out of scope.
///   { test_case t("layer_norm float32 n=17"); LNORM_CHECK(t, y == 1, "y = %g", y); }
class test_case {
 public:
  explicit test_case(std::string name) : name_(std::move(name)) {}
  test_case(const test_case&) = delete;
  test_case& operator=(const test_case&) = delete;
  ~test_case() {
    if (ok_) ++results().passed;
    else ++results().failed;
  }

  /// Records a failure: prints the case name and the printf-style detail (the first few of a case).
  /// Returns false. Use through LNORM_CHECK, which formats nothing when the condition holds.
#if defined(__GNUC__)
  __attribute__((format(printf, 2, 3)))
#endif
  bool fail(const char* fmt, ...) {
    ok_ = false;
    if (++failures_ <= 3 && ++results().printed <= 200) {
      std::printf("FAIL %s: ", name_.c_str());
      va_list args;
      va_start(args, fmt);
      std::vprintf(fmt, args);
      va_end(args);
      std::printf("\n");
    }
    return false;
  }

  const std::string& name() const { return name_; }
  bool ok() const { return ok_; }

 private:
  std::string name_;
  bool ok_ = true;
  long failures_ = 0;
};

/// Notes the error/tolerance ratio of a passing comparison, for the LNORM_TEST_VERBOSE summary.
inline void note_ratio(const char* family, double ratio) {
  double& w = results().worst[family];
  if (ratio > w) w = ratio;
}

/// Checks `condition` in test case `t`; on failure prints the printf-style message that follows.
/// Evaluates the message's arguments only on failure (the checks run per element).
#define LNORM_CHECK(t, condition, ...) ((condition) || (t).fail(__VA_ARGS__))

// ---- random numbers: splitmix64, the same sequence on every platform ----------------------------

class rng {
 public:
  explicit rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Mean 0, variance 1, bell-shaped (a sum of four uniforms, |value| < 3.47): cheap, which counts
  /// under an emulator, and without outliers.
  double normal() { return (uniform() + uniform() + uniform() + uniform() - 2.0) * 1.7320508075688772; }
  /// Uniform integer in [0, n).
  std::int64_t below(std::int64_t n) { return static_cast<std::int64_t>(next() % static_cast<std::uint64_t>(n)); }
  /// A value that is never zero: a random sign times 2^[lo, hi) in magnitude.
  double magnitude(double lo, double hi) { return (next() & 1 ? -1.0 : 1.0) * std::exp2(uniform(lo, hi)); }

 private:
  std::uint64_t state_;
};

// ---- element types ---------------------------------------------------------------------------

template <class T>
struct type_facts;
template <>
struct type_facts<float> {
  static constexpr const char* name = "float32";
  static constexpr double unit_roundoff = 0x1p-24;  // half the gap above 1: the rounding error bound
  static constexpr double abs_floor = 0x1p-150;     // half the smallest subnormal
  static constexpr double max_finite = 3.4028234663852886e38;
};
template <>
struct type_facts<double> {
  static constexpr const char* name = "float64";
  static constexpr double unit_roundoff = 0x1p-53;
  static constexpr double abs_floor = 0.0;
  static constexpr double max_finite = 1.7976931348623157e308;
};
template <>
struct type_facts<lnorm::float16_t> {
  static constexpr const char* name = "float16";
  static constexpr double unit_roundoff = 0x1p-11;
  static constexpr double abs_floor = 0x1p-25;
  static constexpr double max_finite = 65504.0;
};
template <>
struct type_facts<lnorm::bfloat16_t> {
  static constexpr const char* name = "bfloat16";
  static constexpr double unit_roundoff = 0x1p-8;
  static constexpr double abs_floor = 0x1p-134;
  static constexpr double max_finite = 3.3895313892515355e38;
};

/// The unit roundoff of the arithmetic the SIMD kernels use for T (float, or double for float64).
template <class T>
constexpr double calc_roundoff() {
  return std::is_same_v<lnorm::calc_t<T>, double> ? 0x1p-53 : 0x1p-24;
}

template <class T>
inline double to_double(T v) {
  return static_cast<double>(lnorm::widen(v));
}
template <class T>
inline T from_double(double v) {
  return lnorm::narrow<T>(v);
}

/// The stored bits of a value, to compare results exactly (NaN included).
template <class T>
inline std::uint64_t bits_of(T v) {
  std::uint64_t u = 0;
  std::memcpy(&u, &v, sizeof v);
  return u;
}

/// The tolerance multiplier for statistics accumulated over n elements: float sums of n terms in a
/// few accumulators have errors that grow like sqrt(n) times the unit roundoff for random data.
inline double growth(std::int64_t n) { return 16.0 + 2.0 * std::sqrt(static_cast<double>(n)); }

}  // namespace lnorm_test
