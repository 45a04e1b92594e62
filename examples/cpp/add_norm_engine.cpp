// examples/cpp/add_norm_engine.cpp: the "add & norm" of a transformer block as an inference engine
// runs it with lnorm. The residual stream h (tokens x hidden) takes the block's output, h += out, and
// the next block reads norm(h): one fused call, lnorm::try_add_norm_nd, on the engine's own thread
// pool (handed to lnorm with set_thread_pool), with a workspace planned once so that a step never
// allocates. The same step is then run a second way, the engine's workers each calling
// lnorm::add_norm_rows on their own rows, and both are checked against a plain double-precision
// computation, for RMSNorm and LayerNorm, on a float32 and a bfloat16 residual stream.
//
//   add_norm_engine [--tokens N] [--hidden D] [--threads T] [--dtype float32|bfloat16]
//
// Prints the kernel set in use (lnorm::active_isa()) and one line per check; exits 1 if one fails.
#include <lnorm/lnorm.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// ---- the engine's thread pool --------------------------------------------------------------------

/// A small pool as an engine has one: size() - 1 threads wait for a batch of tasks; the thread that
/// submits a batch works on it too and returns when every task is done. Tasks are claimed through an
/// atomic counter. A batch allocates nothing, so a step that runs on this pool allocates nothing.
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

  /// Calls task(ctx, i) for every i in [0, n) on the pool's threads and this one; returns when all
  /// have returned. This is the signature lnorm::thread_pool wants for its `run`.
  static void run(void* self, std::int64_t n, void (*task)(void* ctx, std::int64_t i), void* ctx) {
    static_cast<engine_pool*>(self)->run_batch(n, task, ctx);
  }

  /// The engine's own use: f(begin, end) on size() contiguous blocks of [0, n).
  template <class F>
  void parallel_for(std::int64_t n, F&& f) {
    struct blocks {
      F* f;
      std::int64_t n, count;
    } b{&f, n, size()};
    run_batch(b.count, [](void* ctx, std::int64_t i) {
      const blocks& bl = *static_cast<const blocks*>(ctx);
      (*bl.f)(bl.n * i / bl.count, bl.n * (i + 1) / bl.count);
    }, &b);
  }

 private:
  void run_batch(std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = task;
      ctx_ = ctx;
      n_ = n;
      next_.store(0);
      busy_ = static_cast<int>(workers_.size());
      ++batch_;
    }
    wake_.notify_all();
    claim_tasks();
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [&] { return busy_ == 0; });
  }

  void claim_tasks() {
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
      claim_tasks();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) idle_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  void (*task_)(void*, std::int64_t) = nullptr;  // the batch: written under the mutex before batch_
  void* ctx_ = nullptr;                            // changes, read after a worker has seen it change
  std::int64_t n_ = 0;
  std::atomic<std::int64_t> next_{0};
  int busy_ = 0;  // workers still in the batch
  std::uint64_t batch_ = 0;
  bool stop_ = false;
};

// ---- one "add & norm" layer ------------------------------------------------------------------------

/// The weights of one block's norm, float32 as checkpoints keep them, for either residual dtype.
struct norm_layer {
  bool rms = true;                 // RMSNorm (Llama style) or LayerNorm (GPT-2 style)
  std::vector<float> gamma, beta;  // beta empty for RMSNorm
  double eps = 1e-6;
  const float* beta_or_null() const { return beta.empty() ? nullptr : beta.data(); }
};

/// The step on lnorm's N-d call, threaded on the pool given to lnorm::set_thread_pool:
/// h += block_out, normed = norm(h). h is both the residual input and the sum's output (in place).
template <class T>
lnorm::status add_and_norm(const norm_layer& layer, T* h, const T* block_out, T* normed, std::int64_t tokens,
                           std::int64_t hidden, const lnorm::workspace& ws) {
  const std::int64_t shape[2] = {tokens, hidden}, strides[2] = {hidden, 1};
  const bool normalized[2] = {false, true};
  return lnorm::try_add_norm_nd<T, float>(layer.rms, 2, shape, normalized, {block_out, strides}, {h, strides},
                                          /*bias_in=*/nullptr, /*s=*/{h, strides}, /*y=*/{normed, strides},
                                          layer.gamma.data(), layer.beta_or_null(), layer.eps, nullptr, nullptr, &ws);
}

/// The same step with the engine's workers each calling lnorm on its own rows (lnorm starts no thread
/// and allocates nothing in these calls).
template <class T>
lnorm::status add_and_norm_per_worker(engine_pool& pool, const norm_layer& layer, T* h, const T* block_out, T* normed,
                                      std::int64_t tokens, std::int64_t hidden) {
  std::atomic<int> failures{0};
  pool.parallel_for(tokens, [&](std::int64_t r0, std::int64_t r1) {
    const std::int64_t at = r0 * hidden;
    const lnorm::status s = lnorm::add_norm_rows<T, float>(layer.rms, block_out + at, hidden, h + at, hidden, nullptr,
                                                           h + at, hidden, normed + at, hidden, r1 - r0, hidden,
                                                           layer.gamma.data(), layer.beta_or_null(), layer.eps);
    if (!s) failures.fetch_add(1);
  });
  if (failures.load() != 0) return {lnorm::status_code::invalid_argument, "add_norm_rows failed"};
  return {};
}

// ---- the check, in double ----------------------------------------------------------------------------

double to_double(float v) { return v; }
double to_double(lnorm::bfloat16_t v) { return v.to_float(); }
template <class T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return T::from_float(v);
}

/// The step from its definition: s = x + r, added in float and rounded to T once (lnorm's contract
/// for the fused add), then y = norm(s) in double. Returns the largest error of `normed` relative to
/// 1 + |y|, or +inf if a sum differs from s.
template <class T>
double max_error(const norm_layer& layer, const std::vector<T>& h0, const std::vector<T>& out, const std::vector<T>& h,
                 const std::vector<T>& normed, std::int64_t tokens, std::int64_t hidden) {
  double worst = 0;
  std::vector<double> s(static_cast<std::size_t>(hidden));
  for (std::int64_t r = 0; r < tokens; ++r) {
    double mean = 0;
    for (std::int64_t j = 0; j < hidden; ++j) {
      const std::size_t at = static_cast<std::size_t>(r * hidden + j);
      const T sum = from_float<T>(static_cast<float>(to_double(out[at])) + static_cast<float>(to_double(h0[at])));
      if (std::memcmp(&sum, &h[at], sizeof(T)) != 0) return INFINITY;
      s[static_cast<std::size_t>(j)] = to_double(sum);
      mean += to_double(sum);
    }
    mean = layer.rms ? 0.0 : mean / static_cast<double>(hidden);
    double var = 0;
    for (double v : s) var += (v - mean) * (v - mean);
    const double rstd = 1.0 / std::sqrt(var / static_cast<double>(hidden) + layer.eps);
    for (std::int64_t j = 0; j < hidden; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j);
      double y = (s[jj] - mean) * rstd * layer.gamma[jj];
      if (!layer.beta.empty()) y += layer.beta[jj];
      const double got = to_double(normed[static_cast<std::size_t>(r * hidden + j)]);
      worst = std::max(worst, std::fabs(got - y) / (1.0 + std::fabs(y)));
    }
  }
  return worst;
}

// ---- the program ---------------------------------------------------------------------------------------

struct options {
  std::int64_t tokens = 256, hidden = 1024;
  int threads = 2;
  std::string dtype;  // empty: both
};

/// One dtype, one kind of norm: both ways of threading, checked. Returns whether every check passed.
template <class T>
bool run_layer(engine_pool& pool, const norm_layer& layer, const options& opt, const char* dtype, double tolerance,
               std::mt19937& gen) {
  const std::int64_t tokens = opt.tokens, hidden = opt.hidden;
  const std::size_t n = static_cast<std::size_t>(tokens * hidden);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<T> h0(n), out(n);
  for (std::size_t i = 0; i < n; ++i) {
    h0[i] = from_float<T>(4.0f * normal(gen));  // the residual stream grows from block to block
    out[i] = from_float<T>(normal(gen));
  }

  // Planned once per layer shape: how many bytes the fused call needs on the pool's threads (none for
  // contiguous rows that do not stream; a gathered layout, or outputs over 16 MiB, need some).
  const std::int64_t shape[2] = {tokens, hidden}, strides[2] = {hidden, 1};
  const bool normalized[2] = {false, true};
  std::vector<unsigned char> arena(
      lnorm::add_norm_workspace_size<T>(2, shape, normalized, strides, strides, strides, strides, pool.size()));
  const lnorm::workspace ws{arena.data(), arena.size()};

  // 1. lnorm's N-d call, threaded on the engine's pool.
  std::vector<T> h = h0, normed(n);
  lnorm::set_thread_pool({&pool, &engine_pool::run, pool.size()});
  const lnorm::status s1 = add_and_norm(layer, h.data(), out.data(), normed.data(), tokens, hidden, ws);
  lnorm::set_thread_pool({});
  // 2. The row-range call on each of the engine's workers.
  std::vector<T> h2 = h0, normed2(n);
  const lnorm::status s2 = add_and_norm_per_worker(pool, layer, h2.data(), out.data(), normed2.data(), tokens, hidden);
  if (!s1 || !s2) {
    std::printf("%s: lnorm refused the call: %s\n", dtype, !s1 ? s1.message : s2.message);
    return false;
  }

  const double err = max_error(layer, h0, out, h, normed, tokens, hidden);
  const bool same = std::memcmp(h.data(), h2.data(), n * sizeof(T)) == 0 &&
                    std::memcmp(normed.data(), normed2.data(), n * sizeof(T)) == 0;
  const bool ok = err <= tolerance && same;
  std::printf("%-8s %lld x %lld, h += out; %-10s max error %.2e (tolerance %.0e), workspace %zu bytes, "
              "per-worker rows %s: %s\n",
              dtype, static_cast<long long>(tokens), static_cast<long long>(hidden),
              layer.rms ? "rms_norm:" : "layer_norm:", err, tolerance, arena.size(), same ? "same bits" : "DIFFER",
              ok ? "ok" : "FAILED");
  return ok;
}

int main(int argc, char** argv) {
  options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (arg == "--tokens" && value) opt.tokens = std::atoll(argv[++i]);
    else if (arg == "--hidden" && value) opt.hidden = std::atoll(argv[++i]);
    else if (arg == "--threads" && value) opt.threads = std::atoi(argv[++i]);
    else if (arg == "--dtype" && value) opt.dtype = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--tokens N] [--hidden D] [--threads T] [--dtype float32|bfloat16]\n", argv[0]);
      return 2;
    }
  }
  if (opt.tokens < 1 || opt.hidden < 1 || opt.threads < 1 || (!opt.dtype.empty() && opt.dtype != "float32" && opt.dtype != "bfloat16")) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }

  engine_pool pool(opt.threads);
  std::printf("lnorm %s, kernel set %s, engine pool of %d threads\n", LNORM_VERSION_STRING, lnorm::active_isa(),
              pool.size());

  std::mt19937 gen(2024);
  std::uniform_real_distribution<float> around_one(0.5f, 1.5f), small(-0.1f, 0.1f);
  bool ok = true;
  for (bool rms : {true, false}) {
    norm_layer layer;
    layer.rms = rms;
    layer.eps = rms ? 1e-6 : 1e-5;
    for (std::int64_t j = 0; j < opt.hidden; ++j) {
      layer.gamma.push_back(around_one(gen));
      if (!rms) layer.beta.push_back(small(gen));
    }
    // float32: the error of float arithmetic over a row; bfloat16: the output's own rounding (8 bits).
    if (opt.dtype.empty() || opt.dtype == "float32") ok &= run_layer<float>(pool, layer, opt, "float32", 1e-5, gen);
    if (opt.dtype.empty() || opt.dtype == "bfloat16")
      ok &= run_layer<lnorm::bfloat16_t>(pool, layer, opt, "bfloat16", 1.0 / 128, gen);
  }
  std::printf("%s\n", ok ? "self-check passed" : "self-check FAILED");
  return ok ? 0 : 1;
}
