// lnorm/policy.hpp: how the kernels write and prefetch on this CPU. Large outputs (they would not stay
// in cache) may be written with streaming (non-temporal) stores, which skip the read of every output
// line that a plain store costs, and the pipelined row sweep may prefetch the next row some bytes ahead
// of its statistics. What pays off differs between CPUs, so each choice comes from a table by vendor
// and family, filled from measurements (bench/kernels.cpp, bench/bench.py), and can be overridden:
//
//   LNORM_STORES=plain|streaming|auto   the store kind of large outputs, every element size
//   LNORM_PREFETCH=<bytes>              the pipelined sweep's prefetch distance (0: none; at most 65536)
//   LNORM_CARRY=<bytes>                 rows of at least this many bytes carry the next row's statistics
//                                       in their output sweep (0: every row; at most 2^30), the fused
//                                       add & norm's included
//   LNORM_FETCH=split|plain|auto        rows fetched with two prefetches per line and float32 rows read
//                                       in 256-bit halves by AVX-512 statistics sweeps, or neither
//
// "auto" (or a value that cannot be used) keeps the table's choice; the Python package warns about a
// value that cannot be used.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "dispatch.hpp"
#include "kernels/pipeline.hpp"

namespace lnorm {

/// What a call does, for the policy's per-op choice of kernel set (cpu_policy::narrow_ops).
enum op_use : unsigned {
  use_other = 0,
  use_forward_4byte = 1u << 0,  // LayerNorm/RMSNorm forward of float32, fused add & norm included (every
                                 // layout and entry point, so strides or fusing never change a bit)
};

/// The CPU policy lnorm's kernels follow (see policy()).
struct cpu_policy {
  bool stream_4byte = false;  // float32 outputs of at least stream_min_bytes: streaming stores
  bool stream_2byte = true;   // float16/bfloat16 outputs likewise (float64: always plain)
  std::int64_t stream_min_bytes = std::int64_t{16} << 20;
  int prefetch_4byte = 0;     // float32 rows: the pipelined sweep's prefetch distance in bytes (and
                              // the channel norms' line sweeps', channel_norm.hpp)
  int prefetch_2byte = 2048;  // 16-bit rows likewise
  // Rows (in the rows layout, several per worker) of at least this many bytes carry the next row's
  // statistics in their output sweep (kernels/pipeline.hpp); shorter ones take two sweeps of their
  // own. The norms and the backward follow it; the fused add & norm follows add_carry_min_bytes.
  std::int64_t carry_min_bytes = 0;
  // The fused add & norm's rows (streamed out) of at least this many bytes carry the next row's s and
  // sums; shorter ones take two sweeps: the add into the row buffer with its statistics, then y and s
  // from the buffer, the next row prefetched meanwhile.
  std::int64_t add_carry_min_bytes = 0;
  // A row's next row is prefetched into L1 while it is no longer than this, else into L2.
  std::int64_t prefetch_l1_max = detail::row_pipeline<float>::default_prefetch_l1_max;
  // How rows are fetched from memory (kernels/pipeline.hpp's row_fetch; values never change): each
  // line of the next row prefetched twice (and, for float32 rows, each line of the carried sweep's
  // prefetch ahead: pipeline.hpp's ahead_fetch), and float32 rows read in 256-bit halves in the
  // statistics sweep of an AVX-512 set.
  bool prefetch_twice = false;
  bool split_loads = false;
  // Ops (op_use bits) that run on the AVX2 set where the set in use is AVX-512 and was not forced
  // (isa_forced): on this CPU they measured faster on the narrower vectors.
  unsigned narrow_ops = use_other;
  const char* source = "default";  // the table row, or the LNORM_* variables that override it

  bool streams(std::size_t elem) const noexcept { return elem == 4 ? stream_4byte : elem == 2 ? stream_2byte : false; }
  int prefetch(std::size_t elem) const noexcept { return elem == 4 ? prefetch_4byte : elem == 2 ? prefetch_2byte : 0; }
};

namespace detail {

struct cpu_id {
  char vendor[13] = {};
  unsigned family = 0, model = 0;
};

inline cpu_id identify_cpu() noexcept {
  cpu_id id;
#if defined(LNORM_X86)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &c, &d)) {
    std::memcpy(id.vendor, &b, 4);
    std::memcpy(id.vendor + 4, &d, 4);
    std::memcpy(id.vendor + 8, &c, 4);
  }
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    const unsigned base = (a >> 8) & 0xf, ext = (a >> 20) & 0xff;
    id.family = base == 0xf ? base + ext : base;
    id.model = ((a >> 4) & 0xf) | (base == 0xf || base == 0x6 ? ((a >> 16) & 0xf) << 4 : 0);
  }
#endif
  return id;
}

// The table: one row per CPU class measured. A CPU no row names gets the first row's choices (the ones
// measured first, on an Intel Xeon).
//   Intel (Xeon Cascade Lake, AVX-512): float32 keeps up with plain stores (streaming ones stalled its
//     sweep, -10 %); 16-bit outputs gain 10-20 % from streaming; a 2 KiB prefetch helps 16-bit rows.
//   AMD Zen (family 0x17 and later; measured on Zen 4, 32 MiB of L3 per CCD): out of cache a streaming
//     copy moves 1.7-2x the bytes of a plain one at any element size, so outputs of 32 MiB and more
//     stream at every element size (float32 8192x1024 layer_norm 0.40-0.50 ns per element against
//     0.47-0.57 plain, add & norm 0.71-0.85 against 1.19-1.34); a 16 MiB output, whose arrays still
//     fit the L3 together, is faster with plain stores (float16 layer_norm 0.22-0.23 against
//     0.29-0.32). The 2 KiB prefetch helps the float32 sweep (add & norm 0.71-0.76 against 0.85-1.05).
//     Rows of up to 64 KiB take two sweeps of their own instead of carrying the next row's statistics,
//     and the next row is prefetched into L2: the carried sweep reads four arrays at once (the next
//     row, x, gamma, beta) that do not stay in the 32 KiB L1, and a next row fetched into L1 evicts the
//     row in hand and the weights (1 thread, ns per element, two sweeps against carried:
//     float32 layer_norm 8192x1024 0.30-0.32 against 0.47-0.51, 8192x4096 0.39-0.41 against 0.44;
//     rms_norm 8192x4096 float32 0.32-0.33 against 0.36-0.42, float16 0.14-0.17 against 0.20;
//     with the fetch below, 512x16384 float32 layer_norm 0.28-0.31 against 0.42-0.44, rms_norm
//     0.21-0.26 against 0.33-0.39, 16-bit rows of 32 KiB even). The backward takes the same rule (its
//     carried sweep reads six arrays): 8192x4096 float16 0.44 ns against 0.68, 16384x2048 float32
//     0.70-0.72 against 0.89-0.90.
//     Fetch: one software prefetch per line of the next row left much of it to demand misses (the
//     carried sweep's prefetch ahead too: float32 add & norm 8192x4096, 1 thread, AVX2 0.69-0.70 ns per
//     element with two hints per line against 0.82-0.83, AVX-512 0.64-0.69 against 0.74-0.76), and
//     512-bit loads of data not in L1 stream about 10 % slower than two 256-bit loads of the same
//     bytes; so each line is hinted twice and AVX-512 reads float32 rows in halves (float32 8192x4096
//     AVX-512 layer_norm 0.30-0.33 ns against 0.38-0.44, rms_norm 0.25-0.27 against 0.32, backward
//     0.68 against 0.76). The AVX2 set still leads for the float32 forward (layer_norm 0.25-0.26,
//     rms_norm 0.23-0.26 at 8192x4096; 0.28-0.32 against 0.35-0.36 at 8192x1024; even at 768 and
//     16384 wide), so a chosen AVX-512 set gives it to AVX2 (narrow_ops), the float32 add & norm
//     with it (its y must be the norm of its s bit for bit; it runs about 5 % slower there); 16-bit
//     data and the backward stay on AVX-512, 10-25 % faster there for bfloat16 and the 16-bit
//     backward. The fused add & norm always carries: its two
//     sweeps (the add, the statistics, then y and s from the row buffer) measured no faster at 4-16
//     KiB rows (float32 8192x4096 0.81-0.85 ns against 0.73-0.77 carried).
//   AMD Zen 3 (family 0x19, models 0x00-0x0f and 0x20-0x5f; measured on an EPYC of model 1, AVX2
//     only): as Zen 4, but the fused add & norm takes two sweeps at every row size. Its carried sweep
//     loads the next row's x and residual while y and s stream out of the same positions of this row;
//     with rows a multiple of 4 KiB those addresses match in their low 12 bits, and this core holds
//     such loads behind the streaming stores (float32 4096x4096, 1 thread, AVX2: 1.9-2.9 ns per
//     element carried against 0.92 in two sweeps; 4096 x 4160, no such match: 0.80 against 1.10;
//     float16 1.66 against 0.57, bfloat16 4.2 against 0.67). On Zen 4 the carried sweep was not held
//     up (float32 8192x4096 0.73-0.77 against 0.81-0.85).
inline bool zen3(const cpu_id& id) noexcept {
  return std::strcmp(id.vendor, "AuthenticAMD") == 0 && id.family == 0x19 &&
         (id.model < 0x10 || (id.model >= 0x20 && id.model < 0x60));
}

inline cpu_policy table_policy(const cpu_id& id) noexcept {
  cpu_policy p;
  p.source = "Intel and other CPUs";
  if (std::strcmp(id.vendor, "AuthenticAMD") == 0 && id.family >= 0x17) {
    p.stream_4byte = true;
    p.stream_2byte = true;
    p.prefetch_4byte = 2048;
    p.prefetch_2byte = 2048;
    p.stream_min_bytes = std::int64_t{32} << 20;
    p.carry_min_bytes = 65537;
    p.prefetch_l1_max = 0;
    p.prefetch_twice = true;
    p.split_loads = true;
    p.narrow_ops = use_forward_4byte;
    p.source = "AMD Zen";
  }
  if (zen3(id)) {
    p.add_carry_min_bytes = std::int64_t{1} << 62;  // never
    p.source = "AMD Zen 3";
  }
  return p;
}

inline cpu_policy initial_policy() noexcept {
  cpu_policy p = table_policy(identify_cpu());
  const char* s = std::getenv("LNORM_STORES");
  const bool stores = s && (std::strcmp(s, "plain") == 0 || std::strcmp(s, "streaming") == 0);
  if (stores) p.stream_4byte = p.stream_2byte = std::strcmp(s, "streaming") == 0;
  const long long pf = env_integer("LNORM_PREFETCH", 0, 65536, -1);
  if (pf >= 0) p.prefetch_4byte = p.prefetch_2byte = static_cast<int>(pf);
  const long long carry = env_integer("LNORM_CARRY", 0, 1LL << 30, -1);
  if (carry >= 0) p.carry_min_bytes = p.add_carry_min_bytes = carry;
  const char* f = std::getenv("LNORM_FETCH");
  const bool fetch = f && (std::strcmp(f, "plain") == 0 || std::strcmp(f, "split") == 0);
  if (fetch) p.prefetch_twice = p.split_loads = std::strcmp(f, "split") == 0;
  // The source: the table row, or the variables that override it, in this order.
  static char overridden[64];  // written once, under policy()'s static initialization
  const bool set[4] = {stores, pf >= 0, carry >= 0, fetch};
  const char* const names[4] = {"LNORM_STORES", "LNORM_PREFETCH", "LNORM_CARRY", "LNORM_FETCH"};
  for (int k = 0; k < 4; ++k) {
    if (!set[k]) continue;
    if (overridden[0]) std::strcat(overridden, ", ");
    std::strcat(overridden, names[k]);
  }
  if (overridden[0]) p.source = overridden;
  return p;
}

}  // namespace detail

/// The policy in use: chosen once, at first use, from the CPU table and LNORM_STORES/LNORM_PREFETCH/LNORM_CARRY/
/// LNORM_FETCH.
///   std::printf("%s\n", lnorm::policy().source);
inline const cpu_policy& policy() noexcept {
  static const cpu_policy p = detail::initial_policy();
  return p;
}

}  // namespace lnorm
