// lnorm/kernels/pipeline.hpp: the row pipeline, what a worker's row kernels hand from one row to the
// next. In the rows layout a worker takes its rows in order, and the SIMD kernels sum the statistics
// of the next row during the output sweep of this one, so memory streams through both at once. Those
// sums travel in a row_pipeline that the worker owns (one per block of rows, on its stack) and passes
// to every row call of the block, with the block's prefetch distance. A kernel called
// without one (nullptr) neither takes sums nor leaves any, and fences its own streaming stores.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../reference.hpp"

namespace lnorm {
namespace detail {

// Which sweep left the carried sums: the forward's (x - shift and its square, or x^2), the fused add's
// (the same, of s = x + bias + residual, built in the worker's row buffer half `half`), or the
// backward's (sum g*dy and sum g*dy*xhat).
enum class carried_sums : int { none = 0, forward, add, backward };

// How a worker's row kernels fetch rows from memory (the CPU policy's choice, lnorm/policy.hpp):
//   l1      the next row is prefetched into L1 (else into L2);
//   twice   each line of the next row is hinted from both its halves (two prefetches per line);
//   halves  the statistics sweep reads float32 rows in 256-bit halves, where a kernel set's vectors
//           are wider (an ISA's optional vec<float>::load_halves; others read whole vectors).
// None changes a value: only how fast the same bytes arrive.
struct row_fetch {
  bool l1 = false, twice = false, halves = false;
};

// float16 weights widened to float32 once for a worker's block of rows, so the row kernels read them
// as float32 instead of converting them again for every row. On Zen 4 the conversions bound the
// float16 forward: one 512-bit vcvtph2ps takes two cycles, and a row's output sweep converts x, gamma
// and beta (float16 layer_norm from L1, AVX-512: 0.18 ns per element with float16 weights, 0.135 with
// float32 ones). Up to max_n elements (16 KiB with beta), so the widened weights stay in L1 beside
// the row. The values are exact, so the results are the same bits either way. The backward widens
// gamma alike (it reads gamma in both sweeps; float16 4096x768, AVX-512: 0.34 -> 0.31 ns per element,
// wider rows within the noise).
// A pipeline serves one block of rows of one call, so the weights and n never change under it.
struct widened_weights {
  static constexpr std::int64_t max_n = 2048;
  int rows_seen = 0;  // rows of this block that asked, up to 2: the first runs on the weights as given
  alignas(64) float g[max_n];
  alignas(64) float b[max_n];
};
struct no_widened_weights {};

// How far ahead the carried sweep prefetches the next row (row_pipeline::ahead): `bytes` past the
// statistics sweep (0: none), each line hinted from both halves with `twice` (4-byte rows only: on Zen 4
// float32 add & norm, AVX2, went from 0.79-0.82 ns per element to 0.73-0.78 with it, and 16-bit rows
// slowed down).
struct ahead_fetch {
  std::int64_t bytes = 0;
  bool twice = false;
};

template <class T>
struct row_pipeline {
  using E = calc_t<T>;

  std::int64_t prefetch = 0;  // bytes past the next row's statistics sweep to prefetch (0: none)
  // Rows of at least this many bytes carry the next row's sums in their output sweep; shorter rows
  // take two sweeps of their own, from cache, with the next row prefetched meanwhile (the norms and
  // the backward); add_carry_min_bytes likewise for the fused add & norm (cpu_policy's).
  std::int64_t carry_min_bytes = 0;
  std::int64_t add_carry_min_bytes = 0;
  // Next rows of up to this many bytes are prefetched into L1, longer ones into L2; the default also
  // serves row calls made without a pipeline.
  static constexpr std::int64_t default_prefetch_l1_max = 16384;
  std::int64_t prefetch_l1_max = default_prefetch_l1_max;
  bool prefetch_twice = false;  // row_fetch::twice
  bool split_loads = false;     // row_fetch::halves
  // float16 rows: the block's weights widened to float32 (left uninitialized until used).
  std::conditional_t<std::is_same_v<T, float16_t>, widened_weights, no_widened_weights> wide;

  ahead_fetch ahead() const noexcept { return {prefetch, prefetch_twice && sizeof(T) == 4}; }
  // Whether a row of n elements carries the next row's sums.
  bool carries(std::int64_t n) const noexcept { return n * static_cast<std::int64_t>(sizeof(T)) >= carry_min_bytes; }
  bool carries_add(std::int64_t n) const noexcept {
    return n * static_cast<std::int64_t>(sizeof(T)) >= add_carry_min_bytes;
  }
  // How rows of n elements are fetched by the kernels of `pipe` (may be null: L1 by the default size,
  // one prefetch per line, whole loads).
  static row_fetch fetch(std::int64_t n, const row_pipeline* pipe) noexcept {
    row_fetch f;
    f.l1 = n * static_cast<std::int64_t>(sizeof(T)) <= (pipe ? pipe->prefetch_l1_max : default_prefetch_l1_max);
    f.twice = pipe && pipe->prefetch_twice;
    f.halves = pipe && pipe->split_loads;
    return f;
  }

  // The sums of the row (a, b) of n elements, left by the sweep of the row before it.
  struct sums {
    carried_sums kind = carried_sums::none;
    const void* a = nullptr;  // x (forward, backward, add)
    const void* b = nullptr;  // residual (add), dy (backward)
    std::int64_t n = 0;
    bool centered = false;  // LayerNorm's (shifted) sums, or RMSNorm's
    std::int64_t half = 0;  // add: which half of the row buffer holds the row's s
    E shift{}, s1{}, s2{};
  } carried;

  // Whether the carried sums are those of this row; they are cleared either way (each is for the very
  // next call only).
  bool take(carried_sums kind, const void* a, const void* b, std::int64_t n, bool centered, sums& out) noexcept {
    out = carried;
    carried.kind = carried_sums::none;
    return out.kind == kind && out.a == a && out.b == b && out.n == n && out.centered == centered;
  }
  void leave(const sums& s) noexcept { carried = s; }
};

}  // namespace detail
}  // namespace lnorm
