// lnorm/parallel.hpp: parallel_for over ranges of tasks (rows or column tiles). OpenMP when compiled
// with it, serial otherwise, or the engine's own thread pool when one is installed. Kernels never see
// threads: this is the only place that decides how ranges map to workers. Also the thread settings
// (set_num_threads, set_thread_pool: safe to change while calls run elsewhere) and the record of
// what the last call on a thread ran (last_call).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <utility>

#include "dispatch.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define LNORM_HAVE_PTHREAD_ATFORK 1
#endif

namespace lnorm {

/// The most threads lnorm uses: set_num_threads, LNORM_NUM_THREADS, OMP_NUM_THREADS and a
/// thread_pool's num_threads are clamped to [1, kMaxThreads].
inline constexpr int kMaxThreads = 1024;

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

/// What the last public call made on the calling thread ran (see last_call).
struct call_record {
  isa kernels = isa::scalar;  // the kernel set the call dispatched to (scalar if it ran none)
  int workers = 0;            // workers its parallel_for planned (0: ran nothing)
  int threads = 0;            // distinct threads that ran its blocks
};

namespace detail {

inline int clamp_threads(long long n) noexcept {
  return static_cast<int>(std::min<long long>(std::max<long long>(n, 1), kMaxThreads));
}

// A thread count from the environment: an integer in [1, kMaxThreads], else 0 (ignored, as the
// Python package's warning says: one rule for every value that cannot be used).
inline int env_threads(const char* name) noexcept {
  return static_cast<int>(env_integer(name, 1, kMaxThreads, 0));
}

inline int default_threads() noexcept {
  if (int n = env_threads("LNORM_NUM_THREADS")) return n;
#if defined(_OPENMP)
  return clamp_threads(omp_get_max_threads());  // honours OMP_NUM_THREADS
#else
  if (int n = env_threads("OMP_NUM_THREADS")) return n;
  return clamp_threads(std::thread::hardware_concurrency());
#endif
}

using pool_run_fn = void (*)(void*, std::int64_t, void (*)(void*, std::int64_t), void*);

// The thread settings, written by set_num_threads / set_thread_pool and read by every call as one
// consistent snapshot (a sequence lock: a writer makes `seq` odd while it writes; a reader retries
// if `seq` changed under it). Every field is atomic, so a reader racing a writer reads no torn value,
// and nothing is allocated: a pool's fields are copied in. Fields are stored with release and loaded
// with acquire: a reader that sees a field a writer stored then sees that writer's odd `seq` on its
// second look, and retries (no fences, which ThreadSanitizer does not follow).
struct thread_state {
  std::atomic<unsigned> seq{0};
  std::atomic<int> threads{0};  // 0: not yet read from the environment
  std::atomic<void*> pool{nullptr};
  std::atomic<pool_run_fn> run{nullptr};
  std::atomic<bool> forked_child{false};
};

inline thread_state& threads_state() noexcept {
  static thread_state s;
  return s;
}

#if defined(LNORM_HAVE_PTHREAD_ATFORK)
// In a forked child, only the forking thread exists. A settings write another thread had begun never
// ends there: `seq` is made even again, or every call would wait for it forever. And a child forked
// after OpenMP started its workers may hang in its first parallel region (the runtime's pool does not
// survive fork): such a child runs lnorm on its calling thread.
inline void after_fork_in_child() noexcept {
  thread_state& s = threads_state();
  const unsigned seq = s.seq.load(std::memory_order_relaxed);
  if (seq & 1u) s.seq.store(seq + 1, std::memory_order_relaxed);
#if defined(_OPENMP)
  s.forked_child.store(true);
#endif
}
inline bool install_fork_handler() noexcept {
  static const bool done = (pthread_atfork(nullptr, nullptr, &after_fork_in_child) == 0);
  return done;
}
#else
inline bool install_fork_handler() noexcept { return true; }
#endif

/// The settings one call runs with, read once when it starts.
struct team {
  int threads = 1;
  thread_pool pool{};  // pool.run null: OpenMP (or serial)
};

// Applies f(state) as one write of the settings (writers take turns).
template <class F>
inline void write_settings(F&& f) noexcept {
  install_fork_handler();
  thread_state& s = threads_state();
  unsigned seq = s.seq.load(std::memory_order_relaxed);
  for (;;) {
    if ((seq & 1u) == 0 && s.seq.compare_exchange_weak(seq, seq + 1, std::memory_order_acquire, std::memory_order_relaxed))
      break;
    std::this_thread::yield();
    seq = s.seq.load(std::memory_order_relaxed);
  }
  f(s);  // stores with memory_order_release
  s.seq.store(seq + 2, std::memory_order_release);
}

// The settings now, as one consistent snapshot.
inline team current_team() noexcept {
  install_fork_handler();
  thread_state& s = threads_state();
  team t;
  for (;;) {
    const unsigned before = s.seq.load(std::memory_order_acquire);
    if ((before & 1u) == 0) {
      t.threads = s.threads.load(std::memory_order_acquire);
      t.pool.pool = s.pool.load(std::memory_order_acquire);
      t.pool.run = s.run.load(std::memory_order_acquire);
      if (s.seq.load(std::memory_order_relaxed) == before) break;
    }
    std::this_thread::yield();
  }
  if (t.threads == 0) {  // first use: the environment's count, stored unless a setter came first
    t.threads = default_threads();
    write_settings([&](thread_state& st) {
      if (st.threads.load(std::memory_order_relaxed) == 0) st.threads.store(t.threads, std::memory_order_release);
      else t.threads = st.threads.load(std::memory_order_relaxed);
    });
  }
  t.pool.num_threads = t.threads;
  return t;
}

// ---- the record of the last call on this thread ----

inline call_record& this_thread_record() noexcept {
  thread_local call_record r;
  return r;
}

// A public call starts: its record starts empty.
inline void begin_call() noexcept { this_thread_record() = call_record{}; }

// The kernel set K a call dispatched to, from K's own name (not from the current setting).
template <class K>
inline void note_kernels() noexcept {
  constexpr isa ran = isa_named(K::name);
  this_thread_record().kernels = ran;
}

// One region's planned workers and the threads that ran its blocks (a call with several regions,
// such as huge rows cut into chunks, keeps the largest of each).
inline void note_region(int workers, int threads) noexcept {
  call_record& r = this_thread_record();
  r.workers = std::max(r.workers, workers);
  r.threads = std::max(r.threads, threads);
}

// A number per thread for the threads-seen mask: first come, first numbered, modulo kMaxThreads.
inline int thread_number() noexcept {
  static std::atomic<unsigned> next{0};
  thread_local const int mine = static_cast<int>(next.fetch_add(1, std::memory_order_relaxed) % kMaxThreads);
  return mine;
}

// The threads that ran a region's blocks, one bit each.
struct thread_mask {
  static constexpr int kWords = kMaxThreads / 64;
  std::atomic<std::uint64_t> words[kWords] = {};
  void mark(int thread) noexcept {
    words[thread / 64].fetch_or(std::uint64_t{1} << (thread % 64), std::memory_order_relaxed);
  }
  int count() const noexcept {
    int n = 0;
    for (const auto& w : words)
      for (std::uint64_t v = w.load(std::memory_order_relaxed); v != 0; v &= v - 1) ++n;
    return n;
  }
};

}  // namespace detail

/// What the last public call made on the calling thread ran: the kernel set it dispatched to (taken
/// from the kernels themselves), the workers its parallel_for planned and the distinct threads that
/// actually ran them (OpenMP thread numbers, or for an engine's pool a number per thread). A call
/// with several parallel regions (rows of 65536 and more are cut into chunks, one region per row)
/// reports the largest of each; the row-range calls report 1 worker, 1 thread; a refused call, or one
/// with nothing to do, 0 and 0. Costs one thread-local store per call and one relaxed atomic OR per
/// block. Tests use it to see that a forced kernel set is the one that ran, and that work was shared.
///
///   lnorm::set_isa(lnorm::isa::avx2);
///   lnorm::layer_norm(x, y, rows, cols, g, b, 1e-5f);
///   assert(lnorm::last_call().kernels == lnorm::isa::avx2);
inline call_record last_call() noexcept { return detail::this_thread_record(); }

/// The thread count lnorm uses: set_num_threads(), else LNORM_NUM_THREADS, else OMP_NUM_THREADS or
/// the number of CPUs, at most kMaxThreads. `int n = lnorm::get_num_threads();`
inline int get_num_threads() noexcept { return detail::current_team().threads; }

/// `lnorm::set_num_threads(4);` Clamped to [1, kMaxThreads]. Safe at any time, from any thread: a
/// call already running keeps the count it started with (each call reads its settings once).
inline void set_num_threads(int n) noexcept {
  const int clamped = detail::clamp_threads(n);
  detail::write_settings([&](detail::thread_state& s) { s.threads.store(clamped, std::memory_order_release); });
}

/// Hand lnorm an engine's own pool (see thread_pool); lnorm then never starts threads of its own, and
/// runs on pool.num_threads threads (clamped to [1, kMaxThreads]). `lnorm::set_thread_pool({});` goes
/// back to OpenMP (or serial). Safe at any time, from any thread: each call reads the pool once, as
/// one consistent copy (pool, run and count together), and a call already running finishes on the
/// pool it started with (which must stay alive until then).
inline void set_thread_pool(const thread_pool& pool) noexcept {
  const int threads = detail::clamp_threads(pool.num_threads);
  detail::write_settings([&](detail::thread_state& s) {
    s.pool.store(pool.run ? pool.pool : nullptr, std::memory_order_release);
    s.run.store(pool.run, std::memory_order_release);
    if (pool.run) s.threads.store(threads, std::memory_order_release);
  });
}

/// Whether OpenMP was compiled in.
inline bool openmp_enabled() noexcept {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

namespace detail {

/// parallel_for on a call's settings snapshot `t` (see the public parallel_for).
template <class F>
void parallel_for_on(const team& t, std::int64_t n, int workers, F&& f) noexcept {
  if (n <= 0) return;
  workers = static_cast<int>(std::min<std::int64_t>(std::max(1, workers), n));
  install_fork_handler();
  if (workers == 1 || threads_state().forked_child.load(std::memory_order_relaxed)) {
    f(std::int64_t{0}, n, 0);
    note_region(workers, 1);
    return;
  }
  struct ctx_t {
    F* f;
    std::int64_t n;
    int workers;
    bool omp;
    thread_mask seen;
  } ctx{&f, n, workers, t.pool.run == nullptr, {}};
  auto block = [](void* p, std::int64_t w) {
    auto* c = static_cast<ctx_t*>(p);
    const std::int64_t b = c->n * w / c->workers, e = c->n * (w + 1) / c->workers;
#if defined(_OPENMP)
    c->seen.mark(c->omp ? omp_get_thread_num() % kMaxThreads : thread_number());
#else
    c->seen.mark(thread_number());
#endif
    if (b < e) (*c->f)(b, e, static_cast<int>(w));
  };
  if (t.pool.run) {
    t.pool.run(t.pool.pool, workers, block, &ctx);
  } else {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(workers) schedule(static, 1)
    for (int w = 0; w < workers; ++w) block(&ctx, w);
#else
    for (int w = 0; w < workers; ++w) block(&ctx, w);
#endif
  }
  note_region(workers, ctx.seen.count());
}

}  // namespace detail

/// Split [0, n) into `workers` contiguous blocks, block w = [n*w/workers, n*(w+1)/workers), and run
/// f(begin, end, w) on each, on up to `workers` threads (the engine's pool if one is set, else
/// OpenMP, else serially). The split depends only on n and workers. Reads the thread settings once.
///
///   lnorm::parallel_for(rows, 4, [&](std::int64_t r0, std::int64_t r1, int) { work(r0, r1); });
template <class F>
void parallel_for(std::int64_t n, int workers, F&& f) noexcept {
  detail::parallel_for_on(detail::current_team(), n, workers, std::forward<F>(f));
}

}  // namespace lnorm
