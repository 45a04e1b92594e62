// lnorm/kernels/avx2.hpp: the AVX2 kernel set (with FMA and F16C), 8 floats or 4 doubles per register;
// tails go through a small stack buffer. Compiled in a target region, run only where the CPU has AVX2.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../dispatch.hpp"
#include "../reference.hpp"
#include "family.hpp"
#include "pipeline.hpp"

#if defined(LNORM_HAVE_AVX2_KERNELS)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi2"))), apply_to = function)
#pragma float_control(push)
#pragma clang fp contract(off)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi2")
// No FP contraction: the kernels write their FMAs explicitly, so every path computing the same
// value (a row's sweep of its own or the pipelined one, whichever thread runs it) rounds the same.
#pragma GCC optimize("fp-contract=off")
#endif

namespace lnorm {
namespace avx2 {

// Lanes [0, n) all ones, the rest zero, as a 256-bit mask.
LNORM_VEC_INLINE __m256i lane_mask32(std::int64_t n) noexcept {
  const int k = n <= 0 ? 0 : n >= 8 ? 8 : static_cast<int>(n);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <class E>
struct vec;

template <>
struct vec<float> {
  using reg = __m256;
  static constexpr std::int64_t lanes = 8;
  LNORM_VEC_INLINE static reg zero() noexcept { return _mm256_setzero_ps(); }
  LNORM_VEC_INLINE static reg set1(float v) noexcept { return _mm256_set1_ps(v); }
  LNORM_VEC_INLINE static reg load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  LNORM_VEC_INLINE static reg load(const float16_t* p) noexcept { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  LNORM_VEC_INLINE static reg load(const bfloat16_t* p) noexcept {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  LNORM_VEC_INLINE static void store(float* p, reg v) noexcept { _mm256_storeu_ps(p, v); }
  LNORM_VEC_INLINE static void store(float16_t* p, reg v) noexcept {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  LNORM_VEC_INLINE static void store(bfloat16_t* p, reg v) noexcept { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bf16(v)); }
  // Non-temporal stores of a full vector; p aligned to lanes * sizeof(X) bytes.
  LNORM_VEC_INLINE static void stream(float* p, reg v) noexcept { _mm256_stream_ps(p, v); }
  LNORM_VEC_INLINE static void stream(float16_t* p, reg v) noexcept {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  LNORM_VEC_INLINE static void stream(bfloat16_t* p, reg v) noexcept { _mm_stream_si128(reinterpret_cast<__m128i*>(p), to_bf16(v)); }
  // Two vectors (a then b) non-temporally, p aligned to 2 * lanes * sizeof(X): 16-bit data as one
  // 32-byte store.
  LNORM_VEC_INLINE static void stream2(float* p, reg a, reg b) noexcept {
    _mm256_stream_ps(p, a);
    _mm256_stream_ps(p + 8, b);
  }
  LNORM_VEC_INLINE static void stream2(float16_t* p, reg a, reg b) noexcept {
    const int rc = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm256_set_m128i(_mm256_cvtps_ph(b, rc), _mm256_cvtps_ph(a, rc)));
  }
  LNORM_VEC_INLINE static void stream2(bfloat16_t* p, reg a, reg b) noexcept {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm256_set_m128i(to_bf16(b), to_bf16(a)));
  }
  // A non-temporal copy of the bits of 2 * lanes 16-bit elements (p aligned as for stream2).
  template <class X>
  LNORM_VEC_INLINE static void stream2_bits(X* p, const X* src) noexcept {
    static_assert(sizeof(X) == 2, "16-bit elements");
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  }
  // bfloat16 in split order (see avx512.hpp): even elements in a, odd ones in b.
  LNORM_VEC_INLINE static void load_split(const bfloat16_t* p, reg& a, reg& b) noexcept {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    a = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    b = _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  LNORM_VEC_INLINE static void store_split(bfloat16_t* p, reg a, reg b) noexcept {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), joined_split(a, b));
  }
  LNORM_VEC_INLINE static void stream_split(bfloat16_t* p, reg a, reg b) noexcept {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), joined_split(a, b));
  }
  LNORM_VEC_INLINE static void fence() noexcept { _mm_sfence(); }
  // Round to nearest even on the bits; NaN stays a (quiet) NaN. 8 floats -> 8 bfloat16 in 128 bits.
  LNORM_VEC_INLINE static __m128i to_bf16(reg v) noexcept {
    const __m256i r = _mm256_srli_epi32(bf16_rounded<true>(v), 16);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    return _mm256_castsi256_si128(packed);
  }
  // The rounded value in the high 16 bits of each lane. Without NanGuard, only for NaNs whose low 16
  // bits are zero.
  template <bool NanGuard>
  LNORM_VEC_INLINE static __m256i bf16_rounded(reg v) noexcept {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    if constexpr (!NanGuard) return r;
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x00400000)), nan);
  }
  // Rounded b keeps its high halves (the odd elements) in place; rounded a's move down into the even
  // words.
  LNORM_VEC_INLINE static __m256i joined_split(reg a, reg b) noexcept {
    return _mm256_blend_epi16(bf16_rounded<false>(b), _mm256_srli_epi32(bf16_rounded<false>(a), 16), 0x55);
  }
#include "buffered_tail.inl"
  LNORM_VEC_INLINE static reg add(reg a, reg b) noexcept { return _mm256_add_ps(a, b); }
  LNORM_VEC_INLINE static reg sub(reg a, reg b) noexcept { return _mm256_sub_ps(a, b); }
  LNORM_VEC_INLINE static reg mul(reg a, reg b) noexcept { return _mm256_mul_ps(a, b); }
  LNORM_VEC_INLINE static reg fma(reg a, reg b, reg c) noexcept { return _mm256_fmadd_ps(a, b, c); }
  // The activations' extras (simd_channels.inl): min/max return b where either is NaN (so min(k, v)
  // and max(k, v) keep v's NaN), round to nearest even, and a * 2^n for integral n in [-126, 127].
  LNORM_VEC_INLINE static reg min(reg a, reg b) noexcept { return _mm256_min_ps(a, b); }
  LNORM_VEC_INLINE static reg max(reg a, reg b) noexcept { return _mm256_max_ps(a, b); }
  LNORM_VEC_INLINE static reg div(reg a, reg b) noexcept { return _mm256_div_ps(a, b); }
  LNORM_VEC_INLINE static reg round(reg a) noexcept { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  LNORM_VEC_INLINE static reg scale2(reg a, reg n) noexcept {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
  }
  LNORM_VEC_INLINE static reg head(reg v, std::int64_t n) noexcept { return _mm256_and_ps(v, _mm256_castsi256_ps(lane_mask32(n))); }
  LNORM_VEC_INLINE static float sum(reg v) noexcept {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};

template <>
struct vec<double> {
  using reg = __m256d;
  static constexpr std::int64_t lanes = 4;
  LNORM_VEC_INLINE static reg zero() noexcept { return _mm256_setzero_pd(); }
  LNORM_VEC_INLINE static reg set1(double v) noexcept { return _mm256_set1_pd(v); }
  LNORM_VEC_INLINE static reg load(const double* p) noexcept { return _mm256_loadu_pd(p); }
  LNORM_VEC_INLINE static reg load(const float* p) noexcept { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
  LNORM_VEC_INLINE static void store(double* p, reg v) noexcept { _mm256_storeu_pd(p, v); }
  LNORM_VEC_INLINE static void stream(double* p, reg v) noexcept { _mm256_stream_pd(p, v); }
  LNORM_VEC_INLINE static void stream2(double* p, reg a, reg b) noexcept {
    _mm256_stream_pd(p, a);
    _mm256_stream_pd(p + 4, b);
  }
  LNORM_VEC_INLINE static void fence() noexcept { _mm_sfence(); }
#include "buffered_tail.inl"
  LNORM_VEC_INLINE static reg add(reg a, reg b) noexcept { return _mm256_add_pd(a, b); }
  LNORM_VEC_INLINE static reg sub(reg a, reg b) noexcept { return _mm256_sub_pd(a, b); }
  LNORM_VEC_INLINE static reg mul(reg a, reg b) noexcept { return _mm256_mul_pd(a, b); }
  LNORM_VEC_INLINE static reg fma(reg a, reg b, reg c) noexcept { return _mm256_fmadd_pd(a, b, c); }
  LNORM_VEC_INLINE static reg head(reg v, std::int64_t n) noexcept {
    const int k = n <= 0 ? 0 : n >= 4 ? 4 : static_cast<int>(n);
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(k), _mm256_setr_epi64x(0, 1, 2, 3));
    return _mm256_and_pd(v, _mm256_castsi256_pd(m));
  }
  LNORM_VEC_INLINE static double sum(reg v) noexcept {
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    q = _mm_add_sd(q, _mm_unpackhi_pd(q, q));
    return _mm_cvtsd_f64(q);
  }
};

#include "vec_interface.inl"
#define LNORM_SIMD_NAME "avx2"
#include "simd_body.inl"
#undef LNORM_SIMD_NAME

}  // namespace avx2
}  // namespace lnorm

#if defined(__clang__)
#pragma float_control(pop)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else

namespace lnorm {
namespace avx2 {
using kernels = not_built<isa::avx2>;  // not in this build (LNORM_HAVE_AVX2_KERNELS)
}  // namespace avx2
}  // namespace lnorm

#endif
