// lnorm/kernels/neon.hpp: the NEON kernel set (aarch64 Advanced SIMD), 4 floats or 2 doubles per
// register; tails go through a small stack buffer. Advanced SIMD (with the float16 <-> float32
// conversions) is baseline on aarch64, so there is no target region: every aarch64 CPU runs these.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../dispatch.hpp"
#include "../reference.hpp"
#include "family.hpp"
#include "pipeline.hpp"

#if defined(LNORM_HAVE_NEON_KERNELS)
#include <arm_neon.h>

// No FP contraction: the kernels write their FMAs explicitly, so every path computing the same value
// (a row's sweep of its own or the pipelined one, whichever thread runs it) rounds the same. (Clang
// has no scoped switch for aarch64, but its default contracts only within one source expression,
// never across the intrinsics' inline functions.)
#if !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

namespace lnorm {
namespace neon {

// The bits of 16-bit storage types, as NEON loads and stores them. (arm_neon.h has its own global
// `float16_t`; inside namespace lnorm the name means lnorm::float16_t.)
LNORM_VEC_INLINE const std::uint16_t* bits_of(const float16_t* p) noexcept { return reinterpret_cast<const std::uint16_t*>(p); }
LNORM_VEC_INLINE const std::uint16_t* bits_of(const bfloat16_t* p) noexcept { return reinterpret_cast<const std::uint16_t*>(p); }
LNORM_VEC_INLINE std::uint16_t* bits_of(float16_t* p) noexcept { return reinterpret_cast<std::uint16_t*>(p); }
LNORM_VEC_INLINE std::uint16_t* bits_of(bfloat16_t* p) noexcept { return reinterpret_cast<std::uint16_t*>(p); }

// Lanes [0, n) all ones, the rest zero.
LNORM_VEC_INLINE uint32x4_t lane_mask32(std::int64_t n) noexcept {
  static constexpr std::uint32_t lane_index[4] = {0, 1, 2, 3};
  const std::uint32_t k = n <= 0 ? 0u : n >= 4 ? 4u : static_cast<std::uint32_t>(n);
  return vcltq_u32(vld1q_u32(lane_index), vdupq_n_u32(k));
}
LNORM_VEC_INLINE uint64x2_t lane_mask64(std::int64_t n) noexcept {
  static constexpr std::uint64_t lane_index[2] = {0, 1};
  const std::uint64_t k = n <= 0 ? 0u : n >= 2 ? 2u : static_cast<std::uint64_t>(n);
  return vcltq_u64(vld1q_u64(lane_index), vdupq_n_u64(k));
}

template <class E>
struct vec;

template <>
struct vec<float> {
  using reg = float32x4_t;
  static constexpr std::int64_t lanes = 4;
  LNORM_VEC_INLINE static reg zero() noexcept { return vdupq_n_f32(0.0f); }
  LNORM_VEC_INLINE static reg set1(float v) noexcept { return vdupq_n_f32(v); }
  LNORM_VEC_INLINE static reg load(const float* p) noexcept { return vld1q_f32(p); }
  LNORM_VEC_INLINE static reg load(const float16_t* p) noexcept { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bits_of(p)))); }
  LNORM_VEC_INLINE static reg load(const bfloat16_t* p) noexcept { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(bits_of(p)), 16)); }
  LNORM_VEC_INLINE static void store(float* p, reg v) noexcept { vst1q_f32(p, v); }
  // FCVTN rounds by FPCR, which is round to nearest even unless a program changed it.
  LNORM_VEC_INLINE static void store(float16_t* p, reg v) noexcept { vst1_u16(bits_of(p), vreinterpret_u16_f16(vcvt_f16_f32(v))); }
  LNORM_VEC_INLINE static void store(bfloat16_t* p, reg v) noexcept { vst1_u16(bits_of(p), to_bf16(v)); }
  // Advanced SIMD's only non-temporal store is STNP of a register pair, which no intrinsic reaches;
  // streaming is a plain store here, and nothing needs ordering.
  template <class X>
  LNORM_VEC_INLINE static void stream(X* p, reg v) noexcept { store(p, v); }
  template <class X>
  LNORM_VEC_INLINE static void stream2(X* p, reg a, reg b) noexcept {
    store(p, a);
    store(p + lanes, b);
  }
  // A copy of the bits of 2 * lanes 16-bit elements (a plain store, as stream2).
  template <class X>
  LNORM_VEC_INLINE static void stream2_bits(X* p, const X* src) noexcept {
    static_assert(sizeof(X) == 2, "16-bit elements");
    vst1q_u16(bits_of(p), vld1q_u16(bits_of(src)));
  }
  // bfloat16 in split order (see avx512.hpp): even elements in a, odd ones in b.
  LNORM_VEC_INLINE static void load_split(const bfloat16_t* p, reg& a, reg& b) noexcept {
    const uint32x4_t u = vreinterpretq_u32_u16(vld1q_u16(bits_of(p)));
    a = vreinterpretq_f32_u32(vshlq_n_u32(u, 16));
    b = vreinterpretq_f32_u32(vandq_u32(u, vdupq_n_u32(0xffff0000u)));
  }
  // Rounded b keeps its high halves in place; rounded a's are shifted into the low halves (SRI).
  LNORM_VEC_INLINE static void store_split(bfloat16_t* p, reg a, reg b) noexcept {
    vst1q_u16(bits_of(p), vreinterpretq_u16_u32(vsriq_n_u32(bf16_rounded(b), bf16_rounded(a), 16)));
  }
  LNORM_VEC_INLINE static void stream_split(bfloat16_t* p, reg a, reg b) noexcept { store_split(p, a, b); }
  LNORM_VEC_INLINE static void fence() noexcept {}
#include "buffered_tail.inl"
  LNORM_VEC_INLINE static reg add(reg a, reg b) noexcept { return vaddq_f32(a, b); }
  LNORM_VEC_INLINE static reg sub(reg a, reg b) noexcept { return vsubq_f32(a, b); }
  LNORM_VEC_INLINE static reg mul(reg a, reg b) noexcept { return vmulq_f32(a, b); }
  LNORM_VEC_INLINE static reg fma(reg a, reg b, reg c) noexcept { return vfmaq_f32(c, a, b); }
  // The activations' extras (simd_channels.inl): min/max propagate NaN from either operand, round to
  // nearest even, and a * 2^n for integral n in [-126, 127].
  LNORM_VEC_INLINE static reg min(reg a, reg b) noexcept { return vminq_f32(a, b); }
  LNORM_VEC_INLINE static reg max(reg a, reg b) noexcept { return vmaxq_f32(a, b); }
  LNORM_VEC_INLINE static reg div(reg a, reg b) noexcept { return vdivq_f32(a, b); }
  LNORM_VEC_INLINE static reg round(reg a) noexcept { return vrndnq_f32(a); }
  LNORM_VEC_INLINE static reg scale2(reg a, reg n) noexcept {
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(a, vreinterpretq_f32_s32(e));
  }
  LNORM_VEC_INLINE static reg head(reg v, std::int64_t n) noexcept {
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), lane_mask32(n)));
  }
  // Pairwise: FADDP adds neighbours, (v0 + v1) + (v2 + v3).
  LNORM_VEC_INLINE static float sum(reg v) noexcept { return vaddvq_f32(v); }

 private:
  // Round to nearest even on the bits; NaN stays a (quiet) NaN.
  LNORM_VEC_INLINE static uint16x4_t to_bf16(reg v) noexcept {
    const uint32x4_t rounded = bf16_rounded(v);
    const uint32x4_t is_number = vceqq_f32(v, v);
    const uint32x4_t quiet_nan = vorrq_u32(vreinterpretq_u32_f32(v), vdupq_n_u32(0x00400000));
    return vshrn_n_u32(vbslq_u32(is_number, rounded, quiet_nan), 16);
  }
  // Rounded to nearest even in the high 16 bits of each lane (no NaN guard).
  LNORM_VEC_INLINE static uint32x4_t bf16_rounded(reg v) noexcept {
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    return vaddq_u32(u, vaddq_u32(vdupq_n_u32(0x7fff), lsb));
  }
};

template <>
struct vec<double> {
  using reg = float64x2_t;
  static constexpr std::int64_t lanes = 2;
  LNORM_VEC_INLINE static reg zero() noexcept { return vdupq_n_f64(0.0); }
  LNORM_VEC_INLINE static reg set1(double v) noexcept { return vdupq_n_f64(v); }
  LNORM_VEC_INLINE static reg load(const double* p) noexcept { return vld1q_f64(p); }
  LNORM_VEC_INLINE static reg load(const float* p) noexcept { return vcvt_f64_f32(vld1_f32(p)); }
  LNORM_VEC_INLINE static void store(double* p, reg v) noexcept { vst1q_f64(p, v); }
  LNORM_VEC_INLINE static void stream(double* p, reg v) noexcept { store(p, v); }  // a plain store (see vec<float>)
  LNORM_VEC_INLINE static void stream2(double* p, reg a, reg b) noexcept {
    store(p, a);
    store(p + lanes, b);
  }
  LNORM_VEC_INLINE static void fence() noexcept {}
#include "buffered_tail.inl"
  LNORM_VEC_INLINE static reg add(reg a, reg b) noexcept { return vaddq_f64(a, b); }
  LNORM_VEC_INLINE static reg sub(reg a, reg b) noexcept { return vsubq_f64(a, b); }
  LNORM_VEC_INLINE static reg mul(reg a, reg b) noexcept { return vmulq_f64(a, b); }
  LNORM_VEC_INLINE static reg fma(reg a, reg b, reg c) noexcept { return vfmaq_f64(c, a, b); }
  LNORM_VEC_INLINE static reg head(reg v, std::int64_t n) noexcept {
    return vreinterpretq_f64_u64(vandq_u64(vreinterpretq_u64_f64(v), lane_mask64(n)));
  }
  LNORM_VEC_INLINE static double sum(reg v) noexcept { return vaddvq_f64(v); }
};

#include "vec_interface.inl"
#define LNORM_SIMD_NAME "neon"
#include "simd_body.inl"
#undef LNORM_SIMD_NAME

}  // namespace neon
}  // namespace lnorm

#if !defined(__clang__)
#pragma GCC pop_options
#endif

#else

namespace lnorm {
namespace neon {
using kernels = not_built<isa::neon>;  // not in this build (LNORM_HAVE_NEON_KERNELS)
}  // namespace neon
}  // namespace lnorm

#endif
