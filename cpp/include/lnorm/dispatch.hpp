// lnorm/dispatch.hpp: which kernel set runs. The one table of kernel sets (isa_table: name, whether
// this build carries it, what it needs of the CPU, in priority order), CPU feature detection (with
// the OS check that AVX state is saved), and the LNORM_ISA override.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define LNORM_X86 1
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define LNORM_ARM64 1
#endif

// Which kernel sets this build carries: each where its header compiles (its architecture and
// compiler), unless LNORM_DISABLE_<ISA>. LNORM_HAVE_<ISA>_KERNELS guards the header; isa_table's
// `compiled` column reads the same macro (LNORM_IS_SET).
#if defined(LNORM_X86) && !defined(LNORM_DISABLE_AVX2)
#define LNORM_HAVE_AVX2_KERNELS 1
#endif
#if defined(LNORM_X86) && !defined(LNORM_DISABLE_AVX512)
#define LNORM_HAVE_AVX512_KERNELS 1
#endif
#if defined(LNORM_ARM64) && (defined(__GNUC__) || defined(__clang__)) && !defined(LNORM_DISABLE_NEON)
#define LNORM_HAVE_NEON_KERNELS 1
#endif

// An #if fact as a constexpr bool: true where `macro` is defined as 1. (A macro that is not defined
// stringizes to its own name, one defined as 1 to "1".)
#define LNORM_IS_SET(macro) (::lnorm::detail::same_text(LNORM_TEXT_OF(macro), "1"))
#define LNORM_TEXT_OF(macro) LNORM_TEXT_OF_(macro)
#define LNORM_TEXT_OF_(macro) #macro

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

/// The kernel sets. The values are fixed (a program may store or compare them); a new kernel set
/// takes the next free value and a row of isa_table, which is what orders them.
enum class isa : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

/// What a kernel set needs of the CPU, one bit each: an instruction-set extension, and for the AVX
/// ones the OS saving the registers' state on a context switch. cpu_features() has this CPU's.
enum cpu_feature : std::uint32_t {
  cpu_avx = 1u << 0,       // with the OS saving XMM and YMM state (OSXSAVE, XCR0 bits 1 and 2)
  cpu_avx2 = 1u << 1,
  cpu_fma = 1u << 2,
  cpu_f16c = 1u << 3,
  cpu_bmi2 = 1u << 4,
  cpu_avx512f = 1u << 5,   // with the OS saving opmask and ZMM state as well (XCR0 bits 5 to 7)
  cpu_avx512dq = 1u << 6,
  cpu_avx512bw = 1u << 7,
  cpu_avx512vl = 1u << 8,
  cpu_asimd = 1u << 9,     // aarch64 Advanced SIMD (with the float16 conversions): every aarch64 CPU
};

/// One kernel set: a row of isa_table.
struct isa_info {
  isa id;
  const char* name;         // as LNORM_ISA, set_isa and active_isa spell it; its kernels struct's `name`
  bool compiled;            // this build carries its kernels (see LNORM_HAVE_<ISA>_KERNELS above)
  std::uint32_t cpu_needs;  // cpu_feature bits the CPU must have: its header's target region
};

namespace detail {
constexpr bool same_text(const char* a, const char* b) noexcept {
  for (; *a != '\0' && *a == *b; ++a, ++b) {
  }
  return *a == *b;
}
}  // namespace detail

/// Every kernel set, worst first: the one list that names them. best_isa() takes the last row this
/// build and CPU can run (rows of different architectures never compete: only one can run). Adding a
/// kernel set: its header in kernels/ (see avx2.hpp: a vec<float> and vec<double> as
/// kernels/vec_interface.inl states, then simd_body.inl; in the #else branch, `using kernels =
/// not_built<isa::...>`), an `isa` value, a LNORM_HAVE_<ISA>_KERNELS condition above, a row here at
/// its rank, and its kernels in lnorm.hpp's detail::kernel_set_list (same order as these rows; a
/// static_assert there says so). Python reads the names from here (_lnorm.isa_names()).
///   for (const lnorm::isa_info& k : lnorm::isa_table) std::printf("%s %d\n", k.name, lnorm::isa_available(k.id));
inline constexpr isa_info isa_table[] = {
    // id, name, compiled in (its LNORM_HAVE_<ISA>_KERNELS), CPU needs (its header's target region)
    {isa::scalar, "scalar", true, 0},
    {isa::avx2, "avx2", LNORM_IS_SET(LNORM_HAVE_AVX2_KERNELS), cpu_avx | cpu_avx2 | cpu_fma | cpu_f16c | cpu_bmi2},
    {isa::avx512, "avx512", LNORM_IS_SET(LNORM_HAVE_AVX512_KERNELS),
     cpu_avx | cpu_avx2 | cpu_fma | cpu_f16c | cpu_bmi2 | cpu_avx512f | cpu_avx512dq | cpu_avx512bw | cpu_avx512vl},
    {isa::neon, "neon", LNORM_IS_SET(LNORM_HAVE_NEON_KERNELS), cpu_asimd},
};

namespace detail {
// The index of a kernel set's isa_table row, by id or by name; -1 for none. (Indices, not pointers:
// GCC's UndefinedBehaviorSanitizer build rejects a test of a pointer into the table in a constant
// expression.)
inline constexpr int kIsaRows = static_cast<int>(sizeof isa_table / sizeof isa_table[0]);
constexpr int isa_row(isa i) noexcept {
  for (int k = 0; k < kIsaRows; ++k)
    if (isa_table[k].id == i) return k;
  return -1;
}
constexpr int isa_row(const char* name) noexcept {
  for (int k = 0; k < kIsaRows; ++k)
    if (same_text(name, isa_table[k].name)) return k;
  return -1;
}
constexpr bool isa_rows_distinct() noexcept {
  for (int k = 0; k < kIsaRows; ++k)
    if (isa_row(isa_table[k].id) != k || isa_row(isa_table[k].name) != k) return false;
  return true;
}
}  // namespace detail

static_assert(isa_table[0].id == isa::scalar && isa_table[0].compiled && isa_table[0].cpu_needs == 0,
              "isa_table: the first row is the scalar set, in every build, on every CPU");
static_assert(detail::isa_rows_distinct(), "isa_table: each kernel set has one row and a name of its own");

/// The name of a kernel set: "scalar", "avx2", "avx512" or "neon" (its isa_table row's).
constexpr const char* isa_name(isa i) noexcept {
  const int k = detail::isa_row(i);
  return k >= 0 ? isa_table[k].name : "scalar";
}

/// The kernel set a kernels struct names itself (its `name` member), at compile time; scalar for an
/// unknown name. `static_assert(lnorm::isa_named("avx2") == lnorm::isa::avx2);`
constexpr isa isa_named(const char* name) noexcept {
  const int k = detail::isa_row(name);
  return k >= 0 ? isa_table[k].id : isa::scalar;
}

/// Parses a kernel set's name ("scalar", "avx2", "avx512" or "neon"); false for anything else.
inline bool parse_isa(const char* s, isa& out) noexcept {
  if (!s) return false;
  const int k = detail::isa_row(s);
  if (k < 0) return false;
  out = isa_table[k].id;
  return true;
}

/// Whether this build carries the kernel set (scalar always; the others where their headers compile).
constexpr bool isa_compiled(isa i) noexcept {
  const int k = detail::isa_row(i);
  return k >= 0 && isa_table[k].compiled;
}

namespace detail {
inline std::uint32_t detect_cpu_features() noexcept {
  std::uint32_t f = 0;
#if defined(LNORM_X86)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  if (osxsave) __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool os_avx = osxsave && (xcr0_lo & 0x6) == 0x6;        // XMM and YMM state
  const bool os_avx512 = osxsave && (xcr0_lo & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  if (avx && os_avx) f |= cpu_avx;
  if ((c >> 12) & 1) f |= cpu_fma;
  if ((c >> 29) & 1) f |= cpu_f16c;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    if ((b >> 5) & 1) f |= cpu_avx2;
    if ((b >> 8) & 1) f |= cpu_bmi2;
    if (os_avx512) {
      if ((b >> 16) & 1) f |= cpu_avx512f;
      if ((b >> 17) & 1) f |= cpu_avx512dq;
      if ((b >> 30) & 1) f |= cpu_avx512bw;
      if ((b >> 31) & 1) f |= cpu_avx512vl;
    }
  }
#elif defined(LNORM_ARM64)
  f |= cpu_asimd;
#endif
  return f;
}
}  // namespace detail

/// This CPU's cpu_feature bits (read once). `bool fma = lnorm::cpu_features() & lnorm::cpu_fma;`
inline std::uint32_t cpu_features() noexcept {
  static const std::uint32_t features = detail::detect_cpu_features();
  return features;
}

/// Whether the CPU (and the OS, for AVX register state) can run the kernel set: has every feature its
/// isa_table row needs.
inline bool cpu_supports(isa i) noexcept {
  const int k = detail::isa_row(i);
  return k >= 0 && (cpu_features() & isa_table[k].cpu_needs) == isa_table[k].cpu_needs;
}

/// Whether `i` can run here: compiled in and supported by this CPU.
inline bool isa_available(isa i) noexcept { return isa_compiled(i) && cpu_supports(i); }

/// The best kernel set this build and CPU allow: the last such row of isa_table.
inline isa best_isa() noexcept {
  isa best = isa::scalar;
  for (const isa_info& row : isa_table)
    if (isa_available(row.id)) best = row.id;
  return best;
}

/// What a kernel set's header defines, in namespace lnorm::<isa>, where this build does not carry it:
/// `using kernels = not_built<isa::avx2>;`. It names the set and has no kernels: lnorm.hpp's
/// kernel_set_list can then list every kernel set on every build, and dispatches to the compiled ones.
template <isa I>
struct not_built {
  static constexpr const char* name = isa_name(I);
};

namespace detail {
// An integer environment variable in [low, high], else `fallback` (unset, empty, not an integer or out
// of range: ignored, as the Python package's warning says; one rule for every LNORM_* number).
inline long long env_integer(const char* name, long long low, long long high, long long fallback) noexcept {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  return (end && *end == '\0' && n >= low && n <= high) ? n : fallback;
}

// The setting: an isa value, plus kIsaForced where LNORM_ISA or set_isa chose it (-1: not read yet).
inline constexpr int kIsaForced = 0x100;
inline std::atomic<int>& isa_slot() noexcept {
  static std::atomic<int> slot{-1};
  return slot;
}
inline int initial_isa() noexcept {
  isa forced;
  if (parse_isa(std::getenv("LNORM_ISA"), forced) && isa_available(forced)) return static_cast<int>(forced) | kIsaForced;
  return static_cast<int>(best_isa());
}
inline int isa_setting() noexcept {
  int v = isa_slot().load(std::memory_order_relaxed);
  if (v < 0) {
    v = initial_isa();
    isa_slot().store(v, std::memory_order_relaxed);
  }
  return v;
}
}  // namespace detail

namespace detail {
// The kernel set and whether it was forced, from one read of the setting (a call dispatches on one).
inline isa isa_of(int setting) noexcept { return static_cast<isa>(setting & ~kIsaForced); }
inline bool forced_in(int setting) noexcept { return (setting & kIsaForced) != 0; }
}  // namespace detail

/// The kernel set in use: LNORM_ISA if set to one this build and CPU can run, else the best.
inline isa current_isa() noexcept { return detail::isa_of(detail::isa_setting()); }

/// Whether the kernel set in use was forced (LNORM_ISA, set_isa) rather than chosen as the best this
/// CPU runs. Only a chosen one gives way to the CPU policy's per-op choice (policy.hpp's narrow_ops).
inline bool isa_forced() noexcept { return detail::forced_in(detail::isa_setting()); }

/// Forces a kernel set; returns false (and changes nothing) if it cannot run here. Safe at any time,
/// from any thread: each call reads the setting once, when it dispatches, and keeps that kernel set
/// to its end. `lnorm::set_isa(lnorm::isa::scalar);`
inline bool set_isa(isa i) noexcept {
  if (!isa_available(i)) return false;
  detail::isa_slot().store(static_cast<int>(i) | detail::kIsaForced);
  return true;
}

/// Back to the CPU's choice after set_isa (or LNORM_ISA): the best set this build and CPU run, with the
/// CPU policy's per-op choice (policy.hpp). `lnorm::choose_isa();`
inline void choose_isa() noexcept { detail::isa_slot().store(static_cast<int>(best_isa())); }

/// The name of the kernel set in use: "scalar", "avx2", "avx512" or "neon".
/// `std::printf("%s\n", lnorm::active_isa());`
inline const char* active_isa() noexcept { return isa_name(current_isa()); }

}  // namespace lnorm
