// lnorm/dispatch.hpp: which kernel set runs. CPU feature detection (with the OS check that AVX state is
// saved), the priority list of the kernel sets compiled in, and the LNORM_ISA override.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define LNORM_X86 1
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define LNORM_ARM64 1
#endif

// Which kernel sets this build carries. Each can be left out with LNORM_DISABLE_<ISA>.
#if defined(LNORM_X86) && !defined(LNORM_DISABLE_AVX2)
#define LNORM_HAVE_AVX2_KERNELS 1
#endif
#if defined(LNORM_X86) && !defined(LNORM_DISABLE_AVX512)
#define LNORM_HAVE_AVX512_KERNELS 1
#endif
#if defined(LNORM_ARM64) && (defined(__GNUC__) || defined(__clang__)) && !defined(LNORM_DISABLE_NEON)
#define LNORM_HAVE_NEON_KERNELS 1
#endif

// The kernels' per-vector helpers (loads, conversions, a statistics step) are inlined into their row
// loops whatever the consumer's optimization level: a helper left out of line costs a call and a
// trip through memory for its vectors, per vector (seen with GCC at -O2 and -O3 on 16-bit rows).
#if defined(__GNUC__) || defined(__clang__)
#define LNORM_VEC_INLINE __attribute__((always_inline)) inline
#define LNORM_LAMBDA_INLINE __attribute__((always_inline))  // after a lambda's parameter list
#else
#define LNORM_VEC_INLINE inline
#define LNORM_LAMBDA_INLINE
#endif

namespace lnorm {

/// The kernel sets, best last within each architecture.
enum class isa : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

/// The name of a kernel set: "scalar", "avx2", "avx512" or "neon".
constexpr const char* isa_name(isa i) noexcept {
  switch (i) {
    case isa::avx2: return "avx2";
    case isa::avx512: return "avx512";
    case isa::neon: return "neon";
    default: return "scalar";
  }
}

namespace detail {
constexpr bool same_text(const char* a, const char* b) noexcept {
  for (; *a != '\0' && *a == *b; ++a, ++b) {
  }
  return *a == *b;
}
}  // namespace detail

/// The kernel set a kernels struct names itself (its `name` member), at compile time; scalar for an
/// unknown name. `static_assert(lnorm::isa_named("avx2") == lnorm::isa::avx2);`
constexpr isa isa_named(const char* name) noexcept {
  for (isa i : {isa::avx2, isa::avx512, isa::neon})
    if (detail::same_text(name, isa_name(i))) return i;
  return isa::scalar;
}

/// Parses "scalar", "avx2", "avx512" or "neon"; false for anything else.
inline bool parse_isa(const char* s, isa& out) noexcept {
  if (!s) return false;
  for (isa i : {isa::scalar, isa::avx2, isa::avx512, isa::neon}) {
    if (std::strcmp(s, isa_name(i)) == 0) {
      out = i;
      return true;
    }
  }
  return false;
}

/// Whether this build carries the kernel set (scalar always; the others where their headers compile).
inline bool isa_compiled(isa i) noexcept {
  switch (i) {
    case isa::scalar: return true;
#if defined(LNORM_HAVE_AVX2_KERNELS)
    case isa::avx2: return true;
#endif
#if defined(LNORM_HAVE_AVX512_KERNELS)
    case isa::avx512: return true;
#endif
#if defined(LNORM_HAVE_NEON_KERNELS)
    case isa::neon: return true;
#endif
    default: return false;
  }
}

/// Whether the CPU (and the OS, for AVX register state) can run the kernel set.
inline bool cpu_supports(isa i) noexcept {
  if (i == isa::scalar) return true;
#if defined(LNORM_X86)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return false;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool os_avx = (xcr0_lo & 0x6) == 0x6;             // XMM and YMM state
  const bool os_avx512 = (xcr0_lo & 0xe6) == 0xe6;        // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx2 = (b >> 5) & 1, bmi2 = (b >> 8) & 1;
  const bool avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
  if (i == isa::avx2) return os_avx && avx2 && fma && f16c && bmi2;
  if (i == isa::avx512) return os_avx512 && avx2 && fma && f16c && avx512f && avx512dq && avx512bw && avx512vl;
  return false;
#elif defined(LNORM_ARM64)
  return i == isa::neon;
#else
  return false;
#endif
}

/// Whether `i` can run here: compiled in and supported by this CPU.
inline bool isa_available(isa i) noexcept { return isa_compiled(i) && cpu_supports(i); }

/// The best kernel set this build and CPU allow.
inline isa best_isa() noexcept {
  for (isa i : {isa::avx512, isa::avx2, isa::neon})
    if (isa_available(i)) return i;
  return isa::scalar;
}

namespace detail {
inline std::atomic<int>& isa_slot() noexcept {
  static std::atomic<int> slot{-1};
  return slot;
}
inline int initial_isa() noexcept {
  isa forced;
  if (parse_isa(std::getenv("LNORM_ISA"), forced) && isa_available(forced)) return static_cast<int>(forced);
  return static_cast<int>(best_isa());
}
}  // namespace detail

/// The kernel set in use: LNORM_ISA if set to one this build and CPU can run, else the best.
inline isa current_isa() noexcept {
  int v = detail::isa_slot().load(std::memory_order_relaxed);
  if (v < 0) {
    v = detail::initial_isa();
    detail::isa_slot().store(v, std::memory_order_relaxed);
  }
  return static_cast<isa>(v);
}

/// Forces a kernel set; returns false (and changes nothing) if it cannot run here. Safe at any time,
/// from any thread: each call reads the setting once, when it dispatches, and keeps that kernel set
/// to its end. `lnorm::set_isa(lnorm::isa::scalar);`
inline bool set_isa(isa i) noexcept {
  if (!isa_available(i)) return false;
  detail::isa_slot().store(static_cast<int>(i));
  return true;
}

/// The name of the kernel set in use: "scalar", "avx2", "avx512" or "neon".
/// `std::printf("%s\n", lnorm::active_isa());`
inline const char* active_isa() noexcept { return isa_name(current_isa()); }

}  // namespace lnorm
