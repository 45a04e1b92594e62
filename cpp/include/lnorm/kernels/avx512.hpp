// lnorm/kernels/avx512.hpp: the AVX-512 kernel set (F, DQ, BW, VL; with FMA and F16C), 16 floats or
// 8 doubles per register, masked tails. Compiled in a target region: a consumer built with plain -O2
// still carries these kernels, and dispatch.hpp runs them only on a CPU (and OS) that has AVX-512.
#pragma once

#include <cmath>
#include <cstdint>

#include "../dispatch.hpp"
#include "../reference.hpp"
#include "family.hpp"
#include "pipeline.hpp"

#if defined(LNORM_HAVE_AVX512_KERNELS)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c,bmi2"))), \
                             apply_to = function)
#pragma float_control(push)
#pragma clang fp contract(off)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c,bmi2")
// No FP contraction: the kernels write their FMAs explicitly, so every path computing the same
// value (a row's sweep of its own or the pipelined one, whichever thread runs it) rounds the same.
#pragma GCC optimize("fp-contract=off")
// GCC 12's AVX-512 headers build "undefined" vectors as `__m256d __Y = __Y;`, which -Wuninitialized
// reports wherever the intrinsic is inlined. Nothing of lnorm's is uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace lnorm {
namespace avx512 {

template <class E>
struct vec;

template <>
struct vec<float> {
  using reg = __m512;
  static constexpr std::int64_t lanes = 16;
  LNORM_VEC_INLINE static __mmask16 mask(std::int64_t n) noexcept {
    return n >= 16 ? static_cast<__mmask16>(0xffff) : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1);
  }
  LNORM_VEC_INLINE static reg zero() noexcept { return _mm512_setzero_ps(); }
  LNORM_VEC_INLINE static reg set1(float v) noexcept { return _mm512_set1_ps(v); }
  LNORM_VEC_INLINE static reg load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  // The same 16 floats as two 256-bit loads (vec_interface.inl's optional load_halves): a sweep that
  // reads a row from memory streams faster so on Zen 4 (row_fetch::halves).
  LNORM_VEC_INLINE static reg load_halves(const float* p) noexcept {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(p)), _mm256_loadu_ps(p + 8), 1);
  }
  LNORM_VEC_INLINE static reg load(const float16_t* p) noexcept {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  LNORM_VEC_INLINE static reg load(const bfloat16_t* p) noexcept {
    return from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  LNORM_VEC_INLINE static reg load_n(const float* p, std::int64_t n) noexcept { return _mm512_maskz_loadu_ps(mask(n), p); }
  LNORM_VEC_INLINE static reg load_n(const float16_t* p, std::int64_t n) noexcept {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p));
  }
  LNORM_VEC_INLINE static reg load_n(const bfloat16_t* p, std::int64_t n) noexcept {
    return from_bf16(_mm256_maskz_loadu_epi16(mask(n), p));
  }
  LNORM_VEC_INLINE static void store(float* p, reg v) noexcept { _mm512_storeu_ps(p, v); }
  LNORM_VEC_INLINE static void store(float16_t* p, reg v) noexcept {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  LNORM_VEC_INLINE static void store(bfloat16_t* p, reg v) noexcept { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16(v)); }
  LNORM_VEC_INLINE static void store_n(float* p, reg v, std::int64_t n) noexcept { _mm512_mask_storeu_ps(p, mask(n), v); }
  LNORM_VEC_INLINE static void store_n(float16_t* p, reg v, std::int64_t n) noexcept {
    _mm256_mask_storeu_epi16(p, mask(n), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  LNORM_VEC_INLINE static void store_n(bfloat16_t* p, reg v, std::int64_t n) noexcept { _mm256_mask_storeu_epi16(p, mask(n), to_bf16(v)); }
  // Non-temporal stores of a full vector; p aligned to lanes * sizeof(X) bytes.
  LNORM_VEC_INLINE static void stream(float* p, reg v) noexcept { _mm512_stream_ps(p, v); }
  LNORM_VEC_INLINE static void stream(float16_t* p, reg v) noexcept {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  LNORM_VEC_INLINE static void stream(bfloat16_t* p, reg v) noexcept { _mm256_stream_si256(reinterpret_cast<__m256i*>(p), to_bf16(v)); }
  // Two vectors (a then b) non-temporally, p aligned to 2 * lanes * sizeof(X): 16-bit data as one
  // full-line store (two half-line streaming stores cost more than a plain store would).
  LNORM_VEC_INLINE static void stream2(float* p, reg a, reg b) noexcept {
    _mm512_stream_ps(p, a);
    _mm512_stream_ps(p + 16, b);
  }
  LNORM_VEC_INLINE static void stream2(float16_t* p, reg a, reg b) noexcept {
    const int rc = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), join(_mm512_cvtps_ph(a, rc), _mm512_cvtps_ph(b, rc)));
  }
  LNORM_VEC_INLINE static void stream2(bfloat16_t* p, reg a, reg b) noexcept {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), high_halves(bf16_rounded(a), bf16_rounded(b)));
  }
  // A non-temporal copy of the bits of 2 * lanes 16-bit elements (p aligned as for stream2).
  template <class X>
  LNORM_VEC_INLINE static void stream2_bits(X* p, const X* src) noexcept {
    static_assert(sizeof(X) == 2, "16-bit elements");
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), _mm512_loadu_si512(static_cast<const void*>(src)));
  }
  // bfloat16 in split order (see simd_body.inl's normalize_pair): 2 * lanes elements as their even
  // (a) and odd (b) elements, one instruction each from the raw bits; the stores round to nearest
  // even without a NaN guard, for values whose NaNs all came from bfloat16 data (low 16 bits zero).
  LNORM_VEC_INLINE static void load_split(const bfloat16_t* p, reg& a, reg& b) noexcept {
    const __m512i u = _mm512_loadu_si512(static_cast<const void*>(p));
    a = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    b = _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  LNORM_VEC_INLINE static void store_split(bfloat16_t* p, reg a, reg b) noexcept {
    _mm512_storeu_si512(static_cast<void*>(p), joined_split(a, b));
  }
  LNORM_VEC_INLINE static void stream_split(bfloat16_t* p, reg a, reg b) noexcept {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), joined_split(a, b));
  }
  LNORM_VEC_INLINE static void fence() noexcept { _mm_sfence(); }
  LNORM_VEC_INLINE static reg add(reg a, reg b) noexcept { return _mm512_add_ps(a, b); }
  LNORM_VEC_INLINE static reg sub(reg a, reg b) noexcept { return _mm512_sub_ps(a, b); }
  LNORM_VEC_INLINE static reg mul(reg a, reg b) noexcept { return _mm512_mul_ps(a, b); }
  LNORM_VEC_INLINE static reg fma(reg a, reg b, reg c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  // The activations' extras (simd_channels.inl): min/max return b where either is NaN (so min(k, v)
  // and max(k, v) keep v's NaN), round to nearest even, and a * 2^n for integral n in [-126, 127].
  LNORM_VEC_INLINE static reg min(reg a, reg b) noexcept { return _mm512_min_ps(a, b); }
  LNORM_VEC_INLINE static reg max(reg a, reg b) noexcept { return _mm512_max_ps(a, b); }
  LNORM_VEC_INLINE static reg div(reg a, reg b) noexcept { return _mm512_div_ps(a, b); }
  LNORM_VEC_INLINE static reg round(reg a) noexcept { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  LNORM_VEC_INLINE static reg scale2(reg a, reg n) noexcept { return _mm512_scalef_ps(a, n); }
  LNORM_VEC_INLINE static reg head(reg v, std::int64_t n) noexcept { return _mm512_maskz_mov_ps(mask(n), v); }
  LNORM_VEC_INLINE static float sum(reg v) noexcept {
    // Pairwise: 16 -> 8 -> 4 -> then the 128-bit tree.
    // (A lane shuffle rather than _mm512_extractf64x4_pd, whose GCC 12 header trips -Wuninitialized.)
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0x4e)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }

 private:
  LNORM_VEC_INLINE static __m512i join(__m256i lo, __m256i hi) noexcept { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
  LNORM_VEC_INLINE static reg from_bf16(__m256i h) noexcept { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  // Round to nearest even on the bits, the result in the high 16 bits of each lane; NaN stays a
  // (quiet) NaN. Without NanGuard, only for NaNs whose low 16 bits are zero.
  template <bool NanGuard = true>
  LNORM_VEC_INLINE static __m512i bf16_rounded(reg v) noexcept {
    const __m512i u = _mm512_castps_si512(v);
    // + 0x7fff, and 1 more where the lowest kept bit (bit 16) is set: ties go to even.
    const __m512i half = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
    const __m512i r = _mm512_mask_add_epi32(half, _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000)), half, _mm512_set1_epi32(1));
    if constexpr (!NanGuard) return r;
    return _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x00400000));
  }
  // The high 16 bits of every lane of a, then of b, in order: one two-source word permute.
  LNORM_VEC_INLINE static __m512i high_halves(__m512i a, __m512i b) noexcept {
    const __m512i odd_words = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23,
                                               21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(a, odd_words, b);
  }
  LNORM_VEC_INLINE static __m256i to_bf16(reg v) noexcept { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rounded(v), 16)); }
  // Rounded b keeps its high halves (the odd elements) in place; rounded a's high halves move down into
  // the even words by one byte shuffle under a mask.
  LNORM_VEC_INLINE static __m512i joined_split(reg a, reg b) noexcept {
    const __m512i down = _mm512_set4_epi32(0x0f0e0f0e, 0x0b0a0b0a, 0x07060706, 0x03020302);
    return _mm512_mask_shuffle_epi8(bf16_rounded<false>(b), static_cast<__mmask64>(0x3333333333333333ull), bf16_rounded<false>(a), down);
  }
};

template <>
struct vec<double> {
  using reg = __m512d;
  static constexpr std::int64_t lanes = 8;
  LNORM_VEC_INLINE static __mmask8 mask(std::int64_t n) noexcept {
    return n >= 8 ? static_cast<__mmask8>(0xff) : n <= 0 ? static_cast<__mmask8>(0) : static_cast<__mmask8>((1u << n) - 1);
  }
  LNORM_VEC_INLINE static reg zero() noexcept { return _mm512_setzero_pd(); }
  LNORM_VEC_INLINE static reg set1(double v) noexcept { return _mm512_set1_pd(v); }
  LNORM_VEC_INLINE static reg load(const double* p) noexcept { return _mm512_loadu_pd(p); }
  LNORM_VEC_INLINE static reg load(const float* p) noexcept { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
  LNORM_VEC_INLINE static reg load_n(const double* p, std::int64_t n) noexcept { return _mm512_maskz_loadu_pd(mask(n), p); }
  LNORM_VEC_INLINE static reg load_n(const float* p, std::int64_t n) noexcept { return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask(n), p)); }
  LNORM_VEC_INLINE static void store(double* p, reg v) noexcept { _mm512_storeu_pd(p, v); }
  LNORM_VEC_INLINE static void store_n(double* p, reg v, std::int64_t n) noexcept { _mm512_mask_storeu_pd(p, mask(n), v); }
  LNORM_VEC_INLINE static void stream(double* p, reg v) noexcept { _mm512_stream_pd(p, v); }
  LNORM_VEC_INLINE static void stream2(double* p, reg a, reg b) noexcept {
    _mm512_stream_pd(p, a);
    _mm512_stream_pd(p + 8, b);
  }
  LNORM_VEC_INLINE static void fence() noexcept { _mm_sfence(); }
  LNORM_VEC_INLINE static reg add(reg a, reg b) noexcept { return _mm512_add_pd(a, b); }
  LNORM_VEC_INLINE static reg sub(reg a, reg b) noexcept { return _mm512_sub_pd(a, b); }
  LNORM_VEC_INLINE static reg mul(reg a, reg b) noexcept { return _mm512_mul_pd(a, b); }
  LNORM_VEC_INLINE static reg fma(reg a, reg b, reg c) noexcept { return _mm512_fmadd_pd(a, b, c); }
  LNORM_VEC_INLINE static reg head(reg v, std::int64_t n) noexcept { return _mm512_maskz_mov_pd(mask(n), v); }
  LNORM_VEC_INLINE static double sum(reg v) noexcept {
    const __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_castpd512_pd256(_mm512_shuffle_f64x2(v, v, 0x4e)));
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    q = _mm_add_sd(q, _mm_unpackhi_pd(q, q));
    return _mm_cvtsd_f64(q);
  }
};

#include "vec_interface.inl"
#define LNORM_SIMD_NAME "avx512"
#include "simd_body.inl"
#undef LNORM_SIMD_NAME

}  // namespace avx512
}  // namespace lnorm

#if defined(__clang__)
#pragma float_control(pop)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

#else

namespace lnorm {
namespace avx512 {
using kernels = not_built<isa::avx512>;  // not in this build (LNORM_HAVE_AVX512_KERNELS)
}  // namespace avx512
}  // namespace lnorm

#endif
