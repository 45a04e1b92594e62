// lnorm/kernels/scalar_vec.hpp: a one-lane `vec` for the scalar kernel set, with the members that
// channel_body.inl uses, so the channel norms' kernels are written once for every set. Plain C++:
// load widens, store narrows (round to nearest even), min/max return b where either is NaN, as the
// SIMD sets' do.
#pragma once

#include <cmath>
#include <cstdint>

#include "../dispatch.hpp"  // LNORM_VEC_INLINE, LNORM_LAMBDA_INLINE
#include "../half.hpp"

namespace lnorm {
namespace scalar {

template <class E>
struct vec {
  using reg = E;
  static constexpr std::int64_t lanes = 1;
  static reg zero() noexcept { return E(0); }
  static reg set1(E v) noexcept { return v; }
  template <class X>
  static reg load(const X* p) noexcept {
    return static_cast<E>(widen(*p));
  }
  template <class X>
  static reg load_n(const X* p, std::int64_t n) noexcept {
    return n > 0 ? static_cast<E>(widen(*p)) : E(0);
  }
  template <class X>
  static void store(X* p, reg v) noexcept {
    *p = narrow<X>(static_cast<double>(v));
  }
  template <class X>
  static void store_n(X* p, reg v, std::int64_t n) noexcept {
    if (n > 0) *p = narrow<X>(static_cast<double>(v));
  }
  template <class X>
  static void stream(X* p, reg v) noexcept {  // no non-temporal stores here: a plain one
    store(p, v);
  }
  static void fence() noexcept {}
  static reg add(reg a, reg b) noexcept { return a + b; }
  static reg sub(reg a, reg b) noexcept { return a - b; }
  static reg mul(reg a, reg b) noexcept { return a * b; }
  static reg fma(reg a, reg b, reg c) noexcept { return std::fma(a, b, c); }
  static reg head(reg v, std::int64_t n) noexcept { return n > 0 ? v : E(0); }
  static E sum(reg v) noexcept { return v; }
  static reg min(reg a, reg b) noexcept { return a < b ? a : b; }
  static reg max(reg a, reg b) noexcept { return a > b ? a : b; }
  static reg div(reg a, reg b) noexcept { return a / b; }
  static reg round(reg a) noexcept { return std::nearbyint(a); }
  static reg scale2(reg a, reg n) noexcept { return std::ldexp(a, static_cast<int>(n)); }
};

}  // namespace scalar
}  // namespace lnorm
