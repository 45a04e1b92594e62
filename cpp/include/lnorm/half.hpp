// lnorm/half.hpp: the 16-bit storage types (IEEE float16, bfloat16) as plain PODs, with portable,
// round-to-nearest-even conversions to and from float. SIMD kernels convert with F16C/AVX512-BF16/NEON;
// these are the scalar definitions the kernels and the tests agree with.
#pragma once

#include <cstdint>
#include <cstring>

namespace lnorm {

/// IEEE 754 binary16, stored as its bits. `lnorm::float16_t h = lnorm::float16_t::from_float(1.5f);`
struct float16_t {
  std::uint16_t bits;
  static inline float16_t from_float(float f) noexcept;
  inline float to_float() const noexcept;
};

/// bfloat16 (the top 16 bits of a float32), stored as its bits. Same layout as ml_dtypes.bfloat16.
struct bfloat16_t {
  std::uint16_t bits;
  static inline bfloat16_t from_float(float f) noexcept;
  inline float to_float() const noexcept;
};

namespace detail {
inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace detail

inline bfloat16_t bfloat16_t::from_float(float f) noexcept {
  std::uint32_t u = detail::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x0040u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return {static_cast<std::uint16_t>(u >> 16)};
}

inline float bfloat16_t::to_float() const noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(bits) << 16);
}

inline float16_t float16_t::from_float(float f) noexcept {
  const std::uint32_t u = detail::float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};  // NaN
  if (a >= 0x477ff000u) return {static_cast<std::uint16_t>(sign | 0x7c00u)};  // rounds to >= 65520: Inf
  if (a < 0x38800000u) {
    // Subnormal half (or zero): add 0.5 so the float adder rounds the value to a multiple of 2^-24.
    const float r = detail::bits_float(a) + 0.5f;
    return {static_cast<std::uint16_t>(sign | (detail::float_bits(r) - 0x3f000000u))};
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
  const std::uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u) - ((127u - 15u) << 23);
  return {static_cast<std::uint16_t>(sign | (rounded >> 13))};
}

inline float float16_t::to_float() const noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1fu;
  const std::uint32_t man = bits & 0x3ffu;
  if (exp == 0x1fu) return detail::bits_float(sign | 0x7f800000u | (man << 13));  // Inf / NaN
  if (exp == 0) {
    // Zero or subnormal: the value is man * 2^-24, exact in float.
    const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return detail::bits_float(detail::float_bits(v) | sign);
  }
  return detail::bits_float(sign | ((exp + 127u - 15u) << 23) | (man << 13));
}

/// Widening load used by every kernel: one overload set for all element types.
inline float widen(float v) noexcept { return v; }
inline double widen(double v) noexcept { return v; }
inline float widen(float16_t v) noexcept { return v.to_float(); }
inline float widen(bfloat16_t v) noexcept { return v.to_float(); }

namespace detail {
// double -> float rounding to odd: then rounding that float to a 16-bit type (to nearest even) gives
// the same result as rounding the double directly, since float keeps more than two extra bits.
inline float round_to_odd_float(double v) noexcept {
  const float f = static_cast<float>(v);
  if (static_cast<double>(f) == v || f != f) return f;
  const double a = v < 0 ? -v : v;
  std::uint32_t u = float_bits(static_cast<float>(a));
  if (static_cast<double>(bits_float(u)) > a) u -= 1;  // rounded away from zero: step back toward it
  u |= 1u;
  return bits_float(v < 0 ? (u | 0x80000000u) : u);
}
}  // namespace detail

template <class T>
struct narrow_t;
template <>
struct narrow_t<float> {
  static float cvt(double v) noexcept { return static_cast<float>(v); }
};
template <>
struct narrow_t<double> {
  static double cvt(double v) noexcept { return v; }
};
template <>
struct narrow_t<float16_t> {
  static float16_t cvt(double v) noexcept { return float16_t::from_float(detail::round_to_odd_float(v)); }
};
template <>
struct narrow_t<bfloat16_t> {
  static bfloat16_t cvt(double v) noexcept { return bfloat16_t::from_float(detail::round_to_odd_float(v)); }
};

/// `T y = lnorm::narrow<T>(v);` rounds v to nearest even into the storage type T.
template <class T>
inline T narrow(double v) noexcept {
  return narrow_t<T>::cvt(v);
}

}  // namespace lnorm
