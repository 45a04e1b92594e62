// lnorm/kernels/line_fetch.hpp: the streamed output's shared end line, fetched early; used by every
// kernel set (the row kernels of the SIMD sets and the channel norms' kernels of all of them).
#pragma once

#include <cstdint>

#include "../dispatch.hpp"  // LNORM_VEC_INLINE

namespace lnorm {
namespace detail {

// A streamed row (or line, or pixel) stores the part of its last cache line that it owns (unless it
// ends on a line boundary) with plain stores, which must read the line first; that line is shared
// with the head of what follows (rows of 4096 float16 that start 16 bytes past a line, as NumPy's
// large arrays do). Fetched for writing when the sweep starts, the read is done by the time the end
// is stored, instead of holding up the streaming stores queued behind it.
template <class T>
LNORM_VEC_INLINE void fetch_tail_line(const T* y, std::int64_t n) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(y + n);
  if (end % 64 != 0) __builtin_prefetch(reinterpret_cast<const void*>(end - 1), 1, 3);
#else
  (void)y;
  (void)n;
#endif
}

}  // namespace detail
}  // namespace lnorm
