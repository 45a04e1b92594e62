// lnorm/parallel.hpp: parallel_for over ranges of tasks (rows or column tiles). OpenMP when compiled
// with it, serial otherwise, or the engine's own thread pool when one is installed. Kernels never see
// threads: this is the only place that decides how ranges map to workers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define LNORM_HAVE_PTHREAD_ATFORK 1
#endif

namespace lnorm {

/// An engine's thread pool. `run(pool, n, task, ctx)` must call `task(ctx, i)` once for every i in
/// [0, n), on any threads, and return when all calls have returned. lnorm calls it with n <= the
/// thread count it was given, each task a contiguous block of rows.
///
///   void my_run(void* pool, std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
///     static_cast<MyPool*>(pool)->parallel(n, [&](std::int64_t i) { task(ctx, i); });
///   }
///   lnorm::set_thread_pool({&pool, my_run, pool.size()});
struct thread_pool {
  void* pool = nullptr;
  void (*run)(void* pool, std::int64_t n, void (*task)(void* ctx, std::int64_t i), void* ctx) = nullptr;
  int num_threads = 1;
};

namespace detail {

inline int env_threads(const char* name) noexcept {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return (end && *end == '\0' && n > 0 && n < 4096) ? static_cast<int>(n) : 0;
}

inline int default_threads() noexcept {
  if (int n = env_threads("LNORM_NUM_THREADS")) return n;
#if defined(_OPENMP)
  return std::max(1, omp_get_max_threads());  // honours OMP_NUM_THREADS
#else
  if (int n = env_threads("OMP_NUM_THREADS")) return n;
  return std::max(1u, std::thread::hardware_concurrency());
#endif
}

struct thread_state {
  std::atomic<int> threads{0};  // 0: not yet read from the environment
  std::atomic<bool> forked_child{false};
  thread_pool engine_pool{};
  std::atomic<bool> has_engine_pool{false};
};

inline thread_state& threads_state() noexcept {
  static thread_state s;
  return s;
}

#if defined(LNORM_HAVE_PTHREAD_ATFORK) && defined(_OPENMP)
// A child forked after OpenMP started its workers may hang in its first parallel region (the
// runtime's pool does not survive fork). Such a child runs lnorm on its calling thread.
inline void mark_forked_child() noexcept { threads_state().forked_child.store(true); }
inline bool install_fork_handler() noexcept {
  static const bool done = (pthread_atfork(nullptr, nullptr, &mark_forked_child) == 0);
  return done;
}
#else
inline bool install_fork_handler() noexcept { return true; }
#endif

}  // namespace detail

/// The thread count lnorm uses: set_num_threads(), else LNORM_NUM_THREADS, else OMP_NUM_THREADS or
/// the number of CPUs. `int n = lnorm::get_num_threads();`
inline int get_num_threads() noexcept {
  auto& s = detail::threads_state();
  int n = s.threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = detail::default_threads();
    s.threads.store(n, std::memory_order_relaxed);
  }
  return n;
}

/// `lnorm::set_num_threads(4);` Values below 1 are taken as 1.
inline void set_num_threads(int n) noexcept { detail::threads_state().threads.store(std::max(1, n)); }

/// Hand lnorm an engine's own pool (see thread_pool); lnorm then never starts threads of its own.
/// `lnorm::set_thread_pool({});` goes back to OpenMP (or serial).
inline void set_thread_pool(const thread_pool& pool) noexcept {
  auto& s = detail::threads_state();
  s.has_engine_pool.store(false);
  s.engine_pool = pool;
  s.has_engine_pool.store(pool.run != nullptr);
  if (pool.run) s.threads.store(std::max(1, pool.num_threads));
}

/// Whether OpenMP was compiled in.
inline bool openmp_enabled() noexcept {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

/// Split [0, n) into `workers` contiguous blocks, block w = [n*w/workers, n*(w+1)/workers), and run
/// f(begin, end, w) on each, on up to `workers` threads. The split depends only on n and workers.
template <class F>
void parallel_for(std::int64_t n, int workers, F&& f) noexcept {
  if (n <= 0) return;
  workers = static_cast<int>(std::min<std::int64_t>(std::max(1, workers), n));
  auto& s = detail::threads_state();
  detail::install_fork_handler();
  if (workers == 1 || s.forked_child.load(std::memory_order_relaxed)) {
    f(std::int64_t{0}, n, 0);
    return;
  }
  struct ctx_t {
    F* f;
    std::int64_t n;
    int workers;
  } ctx{&f, n, workers};
  auto block = [](void* p, std::int64_t w) {
    auto* c = static_cast<ctx_t*>(p);
    const std::int64_t b = c->n * w / c->workers, e = c->n * (w + 1) / c->workers;
    if (b < e) (*c->f)(b, e, static_cast<int>(w));
  };
  if (s.has_engine_pool.load(std::memory_order_acquire)) {
    s.engine_pool.run(s.engine_pool.pool, workers, block, &ctx);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for num_threads(workers) schedule(static, 1)
  for (int w = 0; w < workers; ++w) block(&ctx, w);
#else
  for (int w = 0; w < workers; ++w) block(&ctx, w);
#endif
}

}  // namespace lnorm
