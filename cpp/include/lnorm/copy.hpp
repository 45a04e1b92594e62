// lnorm/copy.hpp: the copies lnorm's speed is measured against. A normalization reads x once and writes
// y once, so its limit is the fastest copy of the same bytes at the same thread count: with plain
// stores (memcpy per row) or with streaming (non-temporal) stores, which skip the read of every
// output line that a plain store costs. Which one is faster depends on the CPU and the size; the
// benchmarks (bench/kernels.cpp, bench/bench.py, python -m lnorm) time both and take the faster.
//
// The rows are split among workers as lnorm's own calls split them (same minimum work per thread,
// same contiguous blocks), so the copy and the kernel it is set against run the same way.
//
//   lnorm::copy_rows(x, cols, y, cols, rows, cols, lnorm::store_kind::streaming);
#pragma once

#include <cstdint>
#include <cstring>

#include "lnorm.hpp"

#if defined(LNORM_X86)
#include <immintrin.h>
#endif

namespace lnorm {

/// How a copy writes its output: plain vector stores, non-temporal (streaming) vector stores, or the C
/// library's memcpy (which picks its own, by size).
enum class store_kind : int { plain = 0, streaming = 1, memcpy = 2 };

namespace detail {

#if defined(LNORM_X86)
// Copy of `bytes` (a multiple of 128) from src to dst, dst aligned to 128 bytes, with streaming or
// plain stores. One variant per register width; the widest the CPU runs is used.
template <bool Stream>
__attribute__((target("avx512f"))) inline void copy_lines_avx512(const char* src, char* dst, std::size_t bytes) noexcept {
  for (std::size_t i = 0; i < bytes; i += 128) {
    const __m512i a = _mm512_loadu_si512(static_cast<const void*>(src + i));
    const __m512i b = _mm512_loadu_si512(static_cast<const void*>(src + i + 64));
    if constexpr (Stream) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), a);
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i + 64), b);
    } else {
      _mm512_store_si512(static_cast<void*>(dst + i), a);
      _mm512_store_si512(static_cast<void*>(dst + i + 64), b);
    }
  }
}
template <bool Stream>
__attribute__((target("avx"))) inline void copy_lines_avx(const char* src, char* dst, std::size_t bytes) noexcept {
  for (std::size_t i = 0; i < bytes; i += 64) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    if constexpr (Stream) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), a);
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    } else {
      _mm256_store_si256(reinterpret_cast<__m256i*>(dst + i), a);
      _mm256_store_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    }
  }
}
template <bool Stream>
inline void copy_lines_sse2(const char* src, char* dst, std::size_t bytes) noexcept {
  for (std::size_t i = 0; i < bytes; i += 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    if constexpr (Stream) _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    else _mm_store_si128(reinterpret_cast<__m128i*>(dst + i), a);
  }
}
template <bool Stream>
inline void copy_lines(const char* src, char* dst, std::size_t bytes, int width) noexcept {
  if (width == 512) copy_lines_avx512<Stream>(src, dst, bytes);
  else if (width == 256) copy_lines_avx<Stream>(src, dst, bytes);
  else copy_lines_sse2<Stream>(src, dst, bytes);
}
#endif

// dst = src (bytes): vector stores (streamed or not) past a head that aligns dst to 128 bytes, or
// memcpy; no fence (the caller's).
inline void copy_bytes(const void* src_v, void* dst_v, std::size_t bytes, store_kind kind, int width) noexcept {
  const char* src = static_cast<const char*>(src_v);
  char* dst = static_cast<char*>(dst_v);
#if defined(LNORM_X86)
  if (kind != store_kind::memcpy && bytes >= 256) {
    const std::size_t head = (128 - reinterpret_cast<std::uintptr_t>(dst) % 128) % 128;
    const std::size_t body = (bytes - head) / 128 * 128;
    std::memcpy(dst, src, head);
    if (kind == store_kind::streaming) copy_lines<true>(src + head, dst + head, body, width);
    else copy_lines<false>(src + head, dst + head, body, width);
    std::memcpy(dst + head + body, src + head + body, bytes - head - body);
    return;
  }
#else
  (void)kind;
  (void)width;
#endif
  std::memcpy(dst, src, bytes);
}

// The widest vector copy this CPU runs.
inline int stream_width() noexcept {
  return cpu_supports(isa::avx512) ? 512 : cpu_supports(isa::avx2) ? 256 : 128;
}

inline void store_fence() noexcept {
#if defined(LNORM_X86)
  _mm_sfence();
#endif
}

}  // namespace detail

/// dst = src over `rows` rows of `cols` elements (row r at src + r*ld_src, dst + r*ld_dst), on the
/// threads lnorm's calls would use for rows x cols, with plain or streaming vector stores or memcpy. The
/// rows of a worker's block are copied as one span where both arrays are contiguous. Arrays must not
/// overlap; nothing is checked (a measuring tool, not a kernel).
template <class T>
void copy_rows(const T* src, std::int64_t ld_src, T* dst, std::int64_t ld_dst, std::int64_t rows, std::int64_t cols,
               store_kind kind) noexcept {
  if (rows <= 0 || cols <= 0) return;
  const detail::team tm = detail::current_team();
  const int workers = detail::workers_for(rows * cols, rows, tm.threads);
  const int width = detail::stream_width();
  detail::parallel_for_on(tm, rows, workers, [&](std::int64_t r0, std::int64_t r1, int) {
    const std::size_t row_bytes = static_cast<std::size_t>(cols) * sizeof(T);
    if (ld_src == cols && ld_dst == cols) {
      detail::copy_bytes(src + r0 * cols, dst + r0 * cols, row_bytes * static_cast<std::size_t>(r1 - r0), kind, width);
    } else {
      for (std::int64_t r = r0; r < r1; ++r) detail::copy_bytes(src + r * ld_src, dst + r * ld_dst, row_bytes, kind, width);
    }
    if (kind == store_kind::streaming) detail::store_fence();
  });
}

}  // namespace lnorm
