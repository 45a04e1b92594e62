// cpp/tests/counting.hpp: what the workspace tests of lnorm_api_tests and lnorm_channel_tests share,
// included once by each program: global operator new replaced (malloc and free underneath) to count
// the allocations made while a call runs, on every thread (allocations_during), and a small engine
// pool (engine_pool) to run the calls through lnorm::set_thread_pool.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace lnorm_test {
namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};

void* counted_malloc(std::size_t n) noexcept {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
void* counted_aligned(std::size_t n, std::align_val_t a) noexcept {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t align = static_cast<std::size_t>(a);
  return std::aligned_alloc(align, (n + align - 1) / align * align + (n == 0 ? align : 0));
}
}  // namespace
}  // namespace lnorm_test

// ---- the replaced allocation functions: malloc and free underneath, counted ----------------------

void* operator new(std::size_t n) {
  if (void* p = lnorm_test::counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = lnorm_test::counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return lnorm_test::counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return lnorm_test::counted_malloc(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = lnorm_test::counted_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  if (void* p = lnorm_test::counted_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return lnorm_test::counted_aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return lnorm_test::counted_aligned(n, a);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace lnorm_test {
namespace {

/// Runs f and returns the allocations made meanwhile, on any thread.
template <class F>
long allocations_during(F&& f) {
  allocations.store(0);
  counting.store(true);
  f();
  counting.store(false);
  return allocations.load();
}

// ---- an engine's pool ------------------------------------------------------------------------------

/// A small pool as an engine has one: `size() - 1` threads wait for a batch; run() hands out the task
/// indices through an atomic counter, takes part itself, and returns when every worker is idle again.
/// A batch allocates nothing.
class engine_pool {
 public:
  explicit engine_pool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  engine_pool(const engine_pool&) = delete;
  engine_pool& operator=(const engine_pool&) = delete;
  ~engine_pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  /// Batches run so far.
  std::uint64_t batches() {
    std::lock_guard<std::mutex> lock(mutex_);
    return batch_;
  }

  /// lnorm::thread_pool's `run`.
  static void run(void* self, std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
    auto* pool = static_cast<engine_pool*>(self);
    {
      std::lock_guard<std::mutex> lock(pool->mutex_);
      pool->task_ = task;
      pool->ctx_ = ctx;
      pool->n_ = n;
      pool->next_.store(0);
      pool->busy_ = static_cast<int>(pool->workers_.size());
      ++pool->batch_;
    }
    pool->wake_.notify_all();
    pool->drain();
    std::unique_lock<std::mutex> lock(pool->mutex_);
    pool->idle_.wait(lock, [&] { return pool->busy_ == 0; });
  }

 private:
  void drain() {
    for (std::int64_t i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) task_(ctx_, i);
  }
  void work() {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || batch_ != seen; });
        if (stop_) return;
        seen = batch_;
      }
      drain();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) idle_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  void (*task_)(void*, std::int64_t) = nullptr;
  void* ctx_ = nullptr;
  std::int64_t n_ = 0;
  std::atomic<std::int64_t> next_{0};
  int busy_ = 0;
  std::uint64_t batch_ = 0;
  bool stop_ = false;
};
}  // namespace
}  // namespace lnorm_test
