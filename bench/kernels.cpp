// bench/kernels.cpp: each kernel's cost per element, per kernel set, against the copies of the same
// bytes (lnorm/copy.hpp: memcpy and streaming stores, same thread count, same split of rows).
//
//   cmake -S . -B build/bench -DLNORM_BENCH=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build/bench
//   build/bench/lnorm_bench_kernels                      # in cache: 16 x 4096, repeated, 1 thread
//   build/bench/lnorm_bench_kernels 8192 1024 2          # rows cols threads: out of cache
//   build/bench/lnorm_bench_kernels 8192 1024 1 7 avx512 # rounds, and only these kernel sets
//
// A kernel's bytes: LayerNorm and RMSNorm read x and write y (a copy of x); add & norm reads x and
// residual and writes s and y (a copy of twice the bytes); the backward reads x and dy and writes dx
// (a copy of 1.5 times the bytes). "vs copy" is the faster copy's time over the kernel's: 1.0 means
// the kernel runs at the copy's speed. Times are medians of interleaved rounds.
#include <lnorm/copy.hpp>
#include <lnorm/lnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

template <class T>
T from(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return T::from_float(v);
}

template <class T>
std::vector<T> random_rows(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.5f, 2.0f);
  std::vector<T> v(n);
  for (auto& e : v) e = from<T>(d(gen));
  return v;
}

struct bench_case {
  std::string op, dtype;
  double copy_factor;  // the copy of this many times x's bytes moves what the kernel moves
  std::function<void()> run;
  std::vector<double> ns;  // per element, one per round
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Seconds per call of f, f repeated until the timing covers at least `min_s`.
double time_call(const std::function<void()>& f, double min_s) {
  f();  // warm: caches, pages, threads
  int reps = 1;
  for (;;) {
    const auto t0 = clock_type::now();
    for (int i = 0; i < reps; ++i) f();
    const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (s >= min_s) return s / reps;
    reps = s <= 0 ? reps * 10 : std::max(reps + 1, static_cast<int>(reps * min_s * 1.3 / s));
  }
}

template <class T>
struct buffers {
  std::int64_t rows, cols;
  std::vector<T> x, r, y, s, dy, dx, gamma, beta;
  std::vector<lnorm::stat_t<T>> mean, rstd;
  std::vector<T> dg, db;
  buffers(std::int64_t rows_, std::int64_t cols_) : rows(rows_), cols(cols_) {
    const std::size_t n = static_cast<std::size_t>(rows * cols);
    x = random_rows<T>(n, 1);
    r = random_rows<T>(n, 2);
    dy = random_rows<T>(n, 3);
    y.resize(n);
    s.resize(n);
    dx.resize(n);
    gamma = random_rows<T>(static_cast<std::size_t>(cols), 4);
    beta = random_rows<T>(static_cast<std::size_t>(cols), 5);
    mean.resize(static_cast<std::size_t>(rows));
    rstd.resize(static_cast<std::size_t>(rows));
    dg.resize(static_cast<std::size_t>(cols));
    db.resize(static_cast<std::size_t>(cols));
    // The forward's statistics, for the backward.
    lnorm::try_layer_norm<T, T>(x.data(), cols, y.data(), cols, rows, cols, gamma.data(), beta.data(), 1e-5, mean.data(),
                                rstd.data());
  }
};

void check(lnorm::status s, const char* what) {
  if (!s) {
    std::fprintf(stderr, "%s failed: %s\n", what, s.message);
    std::exit(1);
  }
}

template <class T>
void add_cases(std::vector<bench_case>& cases, buffers<T>& b, const char* dtype) {
  const std::int64_t R = b.rows, C = b.cols;
  cases.push_back({"layer_norm", dtype, 1.0, [&b, R, C] {
                     check(lnorm::try_layer_norm<T, T>(b.x.data(), C, b.y.data(), C, R, C, b.gamma.data(), b.beta.data(),
                                                       1e-5),
                           "layer_norm");
                   }, {}});
  cases.push_back({"rms_norm", dtype, 1.0, [&b, R, C] {
                     check(lnorm::try_rms_norm<T, T>(b.x.data(), C, b.y.data(), C, R, C, b.gamma.data(), 1e-6), "rms_norm");
                   }, {}});
  cases.push_back({"add_layer_norm", dtype, 2.0, [&b, R, C] {
                     const std::int64_t shape[2] = {R, C}, st[2] = {C, 1};
                     const bool norm[2] = {false, true};
                     check(lnorm::try_add_norm_nd<T, T>(false, 2, shape, norm, {b.x.data(), st}, {b.r.data(), st}, nullptr,
                                                        {b.s.data(), st}, {b.y.data(), st}, b.gamma.data(), b.beta.data(),
                                                        1e-5, nullptr, nullptr),
                           "add_norm");
                   }, {}});
  cases.push_back({"layer_norm_backward", dtype, 1.5, [&b, R, C] {
                     const std::int64_t shape[2] = {R, C}, st[2] = {C, 1};
                     const bool norm[2] = {false, true};
                     check(lnorm::try_norm_backward_nd<T, T>(false, 2, shape, norm, {b.dy.data(), st}, {b.x.data(), st},
                                                             b.mean.data(), b.rstd.data(), b.gamma.data(),
                                                             {b.dx.data(), st}, b.dg.data(), b.db.data()),
                           "backward");
                   }, {}});
}

std::string cpu_model() {
  if (FILE* f = std::fopen("/proc/cpuinfo", "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
      if (std::strncmp(line, "model name", 10) == 0) {
        std::fclose(f);
        std::string s = std::strchr(line, ':') ? std::strchr(line, ':') + 2 : line;
        if (!s.empty() && s.back() == '\n') s.pop_back();
        return s;
      }
    }
    std::fclose(f);
  }
  return "unknown CPU";
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t rows = argc > 1 ? std::atoll(argv[1]) : 16;
  const std::int64_t cols = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 7;
  if (rows <= 0 || cols <= 0 || threads <= 0 || rounds <= 0) {
    std::fprintf(stderr, "usage: %s [rows cols threads rounds isa,isa,...]\n", argv[0]);
    return 2;
  }
  lnorm::set_num_threads(threads);
  const double min_s = 0.02;

  buffers<float> bf(rows, cols);
  buffers<lnorm::float16_t> bh(rows, cols);
  buffers<lnorm::bfloat16_t> bb(rows, cols);
  std::vector<bench_case> cases;
  add_cases(cases, bf, "float32");
  add_cases(cases, bh, "float16");
  add_cases(cases, bb, "bfloat16");

  // The copies: x's bytes times 1, 1.5 and 2, for each element size.
  const std::size_t n = static_cast<std::size_t>(rows * cols);
  std::vector<char> src(4 * n * 2 + 64), dst(4 * n * 2 + 64);
  std::memset(src.data(), 1, src.size());
  std::memset(dst.data(), 2, dst.size());
  struct copy_case {
    std::size_t elem;
    double factor;
    lnorm::store_kind kind;
    std::vector<double> ns;
  };
  std::vector<copy_case> copies;
  for (std::size_t elem : {4, 2})
    for (double f : {1.0, 1.5, 2.0})
      for (auto k : {lnorm::store_kind::plain, lnorm::store_kind::streaming, lnorm::store_kind::memcpy})
        copies.push_back({elem, f, k, {}});
  auto run_copy = [&](const copy_case& c) {
    const std::int64_t crows = static_cast<std::int64_t>(static_cast<double>(rows) * c.factor + 0.5);
    const std::int64_t row_bytes = cols * static_cast<std::int64_t>(c.elem);
    lnorm::copy_rows(src.data(), row_bytes, dst.data(), row_bytes, crows, row_bytes, c.kind);
  };

  std::vector<lnorm::isa> isas;
  const std::string only = argc > 5 ? argv[5] : "";  // a comma-separated list of kernel sets, else all
  for (const lnorm::isa_info& k : lnorm::isa_table)
    if (lnorm::isa_available(k.id) && (only.empty() || ("," + only + ",").find(std::string(",") + k.name + ",") != std::string::npos))
      isas.push_back(k.id);
  // results[isa][case]
  std::vector<std::vector<std::vector<double>>> results(isas.size(), std::vector<std::vector<double>>(cases.size()));
  for (int round = 0; round < rounds; ++round) {
    for (auto& c : copies) c.ns.push_back(time_call([&] { run_copy(c); }, min_s) * 1e9 / static_cast<double>(n));
    for (std::size_t i = 0; i < isas.size(); ++i) {
      lnorm::set_isa(isas[i]);
      for (std::size_t k = 0; k < cases.size(); ++k)
        results[i][k].push_back(time_call(cases[k].run, min_s) * 1e9 / static_cast<double>(n));
    }
  }

  std::printf("lnorm kernels: %s, %lld x %lld, %d thread(s), medians of %d interleaved rounds\n", cpu_model().c_str(),
              static_cast<long long>(rows), static_cast<long long>(cols), threads, rounds);
  std::printf("ns per element (of x); copy = the same bytes with plain / streaming vector stores / memcpy; vs copy = faster copy / kernel\n\n");
  std::printf("%-20s %-9s %-7s %9s %9s %9s %9s %8s\n", "op", "dtype", "isa", "ns/elem", "plain", "stream", "memcpy",
              "vs copy");
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const std::size_t elem = cases[k].dtype == "float32" ? 4 : 2;
    double t_copy[3] = {0, 0, 0};
    for (auto& c : copies)
      if (c.elem == elem && c.factor == cases[k].copy_factor) t_copy[static_cast<int>(c.kind)] = median(c.ns);
    const double best = std::min({t_copy[0], t_copy[1], t_copy[2]});
    for (std::size_t i = 0; i < isas.size(); ++i) {
      const double t = median(results[i][k]);
      std::printf("%-20s %-9s %-7s %9.4f %9.4f %9.4f %9.4f %8.2f\n", cases[k].op.c_str(), cases[k].dtype.c_str(),
                  lnorm::isa_name(isas[i]), t, t_copy[0], t_copy[1], t_copy[2], best / t);
    }
  }
  return 0;
}
