// cpp/tests/test_kernels.cpp: the C++ test program. Checks dispatch (set_isa really switches, refuses
// what cannot run), then runs the suites (suite_<type>.cpp) on every kernel set this machine can run:
// each against a reference in double (reference_nd.hpp) and the scalar oracle. Prints "N passed,
// M failed" and exits non-zero on any failure.
//
// Environment: LNORM_TEST_SEED (default 1234) changes the data; LNORM_TEST_SUITES (e.g. "float32,float16")
// runs only those suites, LNORM_TEST_ISAS (e.g. "neon") tests only those kernel sets, LNORM_TEST_LARGE=0
// leaves out the cases over 16 MiB; LNORM_TEST_VERBOSE=1 prints each suite's time and, per check
// family, the worst error / tolerance ratio seen.

#include "suite.hpp"

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace lnorm_test {
namespace {

// ---- dispatch ----------------------------------------------------------------------------------

/// The kernel set that with_kernels (the one switch every call goes through) really calls.
const char* dispatched_kernels() {
  const char* name = "";
  (void)lnorm::detail::with_kernels([&](auto k) {
    name = decltype(k)::name;
    return lnorm::status{};
  });
  return name;
}

void check_dispatch(isa initial) {
  {
    test_case t("default kernel set");
    const char* forced = std::getenv("LNORM_ISA");
    isa want = lnorm::best_isa();
    isa parsed;
    if (forced && lnorm::parse_isa(forced, parsed) && lnorm::isa_available(parsed)) want = parsed;
    LNORM_CHECK(t, initial == want, "the initial kernel set is %s, want %s", lnorm::isa_name(initial), lnorm::isa_name(want));
#if defined(__aarch64__)
    LNORM_CHECK(t, lnorm::isa_available(isa::neon), "neon is not available on aarch64");
    if (!forced) LNORM_CHECK(t, initial == isa::neon, "the default on aarch64 is %s, want neon", lnorm::isa_name(initial));
#endif
  }
  {
    // What the CPU has, asked independently of dispatch.hpp (the compiler's own CPUID reader).
    test_case t("kernel sets the CPU cannot run are not offered");
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    LNORM_CHECK(t, avx2 || !lnorm::isa_available(isa::avx2), "avx2 offered on a CPU without AVX2");
    LNORM_CHECK(t, avx512 || !lnorm::isa_available(isa::avx512), "avx512 offered on a CPU without AVX-512");
    LNORM_CHECK(t, !avx512 || lnorm::isa_available(isa::avx512), "avx512 not offered on an AVX-512 CPU");
    LNORM_CHECK(t, !lnorm::isa_available(isa::neon), "neon offered on x86-64");
#elif defined(__aarch64__)
    LNORM_CHECK(t, !lnorm::isa_available(isa::avx2) && !lnorm::isa_available(isa::avx512), "x86 kernels offered on aarch64");
#endif
  }
  {
    // The table every list of kernel sets comes from, read back through the calls that use it.
    test_case t("isa_table");
    isa last_available = isa::scalar;
    for (const lnorm::isa_info& k : lnorm::isa_table) {
      isa parsed = isa::scalar;
      LNORM_CHECK(t, std::strcmp(lnorm::isa_name(k.id), k.name) == 0, "isa_name of the %s row is %s", k.name, lnorm::isa_name(k.id));
      LNORM_CHECK(t, lnorm::parse_isa(k.name, parsed) && parsed == k.id, "parse_isa(\"%s\") misses its row", k.name);
      LNORM_CHECK(t, lnorm::isa_named(k.name) == k.id, "isa_named(\"%s\") misses its row", k.name);
      LNORM_CHECK(t, lnorm::isa_compiled(k.id) == k.compiled, "isa_compiled(%s) is not the row's", k.name);
      LNORM_CHECK(t, lnorm::cpu_supports(k.id) == ((lnorm::cpu_features() & k.cpu_needs) == k.cpu_needs),
                  "cpu_supports(%s) is not what the row needs of this CPU", k.name);
      if (lnorm::isa_available(k.id)) last_available = k.id;
    }
    LNORM_CHECK(t, lnorm::best_isa() == last_available, "best_isa() is %s, the last available row %s",
                lnorm::isa_name(lnorm::best_isa()), lnorm::isa_name(last_available));
  }
  for (const lnorm::isa_info& k : lnorm::isa_table) {
    const isa i = k.id;
    test_case t(std::string("set_isa(") + lnorm::isa_name(i) + ")");
    const isa before = lnorm::current_isa();
    const bool taken = lnorm::set_isa(i);
    if (lnorm::isa_available(i)) {
      LNORM_CHECK(t, taken, "refused although available");
      LNORM_CHECK(t, std::strcmp(lnorm::active_isa(), lnorm::isa_name(i)) == 0, "active_isa() = %s", lnorm::active_isa());
      LNORM_CHECK(t, std::strcmp(dispatched_kernels(), lnorm::isa_name(i)) == 0, "the calls run the %s kernels", dispatched_kernels());
    } else {
      LNORM_CHECK(t, !taken, "accepted although this build or CPU cannot run it");
      LNORM_CHECK(t, lnorm::current_isa() == before, "a refused set_isa changed the kernel set to %s", lnorm::active_isa());
    }
  }
  {
    test_case t("parse_isa");
    isa out = isa::avx2;
    LNORM_CHECK(t, !lnorm::parse_isa("sse2", out) && !lnorm::parse_isa(nullptr, out) && out == isa::avx2, "accepted a bad name");
    LNORM_CHECK(t, lnorm::parse_isa("neon", out) && out == isa::neon, "rejected neon");
  }
  // A SIMD set computes float32 statistics in float, the scalar set in double: on a long row some
  // outputs differ in the last bit, which shows that a different kernel really ran.
  rng g(99);
  const problem<float, float> p = make_problem<float, float>(trailing_rows(1, 4099, 4099, 4099), 1e-5, {}, rows_kind::random, 0, g);
  use_isa(isa::scalar);
  const result<float, float> oracle = run_forward(p, op::layer_norm);
  for (isa i : tested_isas()) {
    if (i == isa::scalar) continue;
    use_isa(i);
    test_case t(std::string("the ") + lnorm::isa_name(i) + " kernels compute differently from the scalar ones");
    const result<float, float> got = run_forward(p, op::layer_norm);
    LNORM_CHECK(t, std::memcmp(got.y.data(), oracle.y.data(), got.y.size() * sizeof(float)) != 0, "bitwise the scalar result");
  }
}

/// The throwing calls of API.md: same results as the try_ calls, std::invalid_argument on bad input.
void check_throwing_api() {
  rng g(7);
  std::vector<float> x(5 * 33), gamma(33), beta(33), y1(x.size()), y2(x.size());
  for (float& v : x) v = static_cast<float>(g.normal());
  for (float& v : gamma) v = static_cast<float>(g.magnitude(-1, 1));
  for (float& v : beta) v = static_cast<float>(g.normal());
  for (isa i : tested_isas()) {
    use_isa(i);
    test_case t(std::string("lnorm::layer_norm / rms_norm [") + lnorm::isa_name(i) + "]");
    lnorm::layer_norm(x.data(), y1.data(), 5, 33, gamma.data(), beta.data(), 1e-5f);
    (void)lnorm::try_layer_norm<float>(x.data(), 33, y2.data(), 33, 5, 33, gamma.data(), beta.data(), 1e-5f);
    LNORM_CHECK(t, y1 == y2, "layer_norm differs from try_layer_norm");
    lnorm::rms_norm(x.data(), y1.data(), 5, 33, gamma.data(), 1e-6f);
    (void)lnorm::try_rms_norm<float>(x.data(), 33, y2.data(), 33, 5, 33, gamma.data(), 1e-6f);
    LNORM_CHECK(t, y1 == y2, "rms_norm differs from try_rms_norm");
    bool threw = false;
    try {
      lnorm::layer_norm<float>(x.data(), y1.data(), 5, 0, nullptr, nullptr, 1e-5f);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    LNORM_CHECK(t, threw, "cols = 0 did not throw std::invalid_argument");
  }
}

}  // namespace
}  // namespace lnorm_test

int main() {
  using namespace lnorm_test;
  const isa initial = lnorm::current_isa();  // before any set_isa: the default
  const char* seed_env = std::getenv("LNORM_TEST_SEED");
  const std::uint64_t seed = seed_env ? std::strtoull(seed_env, nullptr, 10) : 1234;
  std::string names;
  for (isa i : tested_isas()) names += std::string(" ") + lnorm::isa_name(i);
  std::printf("lnorm %s: default kernel set %s; testing%s; seed %llu\n", LNORM_VERSION_STRING, lnorm::isa_name(initial),
              names.c_str(), static_cast<unsigned long long>(seed));
  std::fflush(stdout);

  check_dispatch(initial);
  check_throwing_api();
  const char* verbose = std::getenv("LNORM_TEST_VERBOSE");
  const bool chatty = verbose && *verbose && *verbose != '0';
  const char* only = std::getenv("LNORM_TEST_SUITES");  // e.g. "float32,float16"; all when unset
  // A build may leave suites out to save compile time (CMake's LNORM_TEST_SUITE_TYPES; the sanitizer
  // build does): LNORM_TEST_WITHOUT_<TYPE>.
  const std::vector<std::pair<const char*, void (*)(rng&)>> suites = {
#if !defined(LNORM_TEST_WITHOUT_FLOAT32)
      {"float32", run_float32_suite},
#endif
#if !defined(LNORM_TEST_WITHOUT_FLOAT64)
      {"float64", run_float64_suite},
#endif
#if !defined(LNORM_TEST_WITHOUT_FLOAT16)
      {"float16", run_float16_suite},
#endif
#if !defined(LNORM_TEST_WITHOUT_BFLOAT16)
      {"bfloat16", run_bfloat16_suite},
#endif
  };
  rng g(seed);
  for (const auto& [name, run] : suites) {
    if (only && !listed(only, name)) continue;
    const auto start = std::chrono::steady_clock::now();
    run(g);
    if (chatty)
      std::printf("%s suite: %.2f s\n", name,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }

  if (chatty) {
    std::printf("worst error / tolerance per check:\n");
    for (const auto& [family, ratio] : results().worst) std::printf("  %-34s %.3f\n", family.c_str(), ratio);
  }
  std::printf("%ld passed, %ld failed\n", results().passed, results().failed);
  return results().failed == 0 ? 0 : 1;
}
