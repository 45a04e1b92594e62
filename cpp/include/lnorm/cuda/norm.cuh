// lnorm/cuda/norm.cuh: lnorm's CUDA backend, header-only. Layer norm and RMSNorm over rows on a GPU:
// forward (with statistics), backward (dx, dweight, dbias), and the fused residual add; elements
// float, double, __half or __nv_bfloat16, weights of the element type or float, statistics in
// float (double for double). Include it from a .cu file compiled by nvcc (C++17).
//
//   #include <lnorm/cuda/norm.cuh>
//   // rows of `cols` bf16 elements, ld elements apart; gamma/beta float; mean/rstd float, may be null
//   lnorm::cuda::status s = lnorm::cuda::layer_norm(x, ld, y, ld, rows, cols, gamma, beta, 1e-5,
//                                                     mean, rstd, stream);
//   if (!s) std::fprintf(stderr, "%s\n", s.message);
//
// Every call is asynchronous on `stream` (no device-wide synchronization, no allocation that
// synchronizes) and validates its arguments first. How rows map to threads (plan_forward /
// plan_backward):
//   - short rows: 1..32 threads per row (a power of two), several rows per block, shuffles only;
//   - longer rows: one row per block of up to 512 threads, each holding one to four 16-byte vectors
//     of the row in registers (forward; one or two of x and of dy in the backward);
//   - rows beyond that: the rest of the row in shared memory (x, and dy, still read once);
//   - rows too long for one block: chunks over several blocks, two kernels, x read twice.
// Each thread loads its part of its next row before this row's reductions (where it moves at most 32
// bytes of an array per row), and holds its columns' weights across rows (at most 8 per thread).
// Statistics: the corrected two-pass formula over the registers, plain sums across threads (no
// division per shuffle level, one barrier per reduction for whole-block rows), rsqrt. Every row
// kernel is compiled for 512 threads (up to 128 registers) and none spills (tests/test_cuda_static.py).
// Loads and stores are 16-byte vectors where every row of every array allows it, single elements
// where base pointers or row strides do not, with a masked last pack.
#pragma once

#include <lnorm/cuda/backward.cuh>
#include <lnorm/cuda/forward.cuh>
#include <lnorm/rules.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

namespace lnorm {
namespace cuda {
namespace detail {

constexpr int kRowsBlock = 256;               // block of the several-rows-per-warp tier
constexpr std::int64_t kMaxCols = std::int64_t(1) << 30;
constexpr std::int64_t kMaxGridY = 65535;
// Backward: a block handles at least this many row groups when rows are plentiful, so that its row
// of dgamma/dbeta partials (written once, read once) stays small next to the rows it read.
constexpr std::int64_t kMinRowsPerBlock = 32;

/// How one call maps rows to threads.
struct row_plan {
  int items = 8;          // elements per thread in registers (the kernel's ITEMS)
  int tpr = 1;            // threads per row
  int block = kRowsBlock; // threads per block
  std::size_t smem = 0;   // dynamic shared memory per block, bytes
  bool split = false;     // chunks of a row over several blocks (two passes)
};

/// Threads for a row of `cols` at `items` each: a power of two up to 32, else a multiple of 32.
inline int threads_per_row(std::int64_t cols, int items) {
  const std::int64_t need = ceil_div(cols, items);
  return need <= kWarp ? round_up_pow2(need) : static_cast<int>(ceil_div(need, kWarp) * kWarp);
}

inline std::int64_t round_up(std::int64_t v, std::int64_t m) { return ceil_div(v, m) * m; }

/// Bytes of a whole-block row's packs beyond the registers (`reg` elements), for any vector width.
template <class T>
std::size_t cache_bytes(std::int64_t cols, std::int64_t reg) {
  return static_cast<std::size_t>(round_up(round_up(cols, max_vec_v<T>) - reg, 16)) * sizeof(T);
}

/// The row tiers' shape for `items` elements per thread: rows of up to 32 threads share a block of
/// kRowsBlock; longer rows are one block each (at most kMaxBlock threads, so that every row kernel
/// is compiled for 512 threads and has up to 128 registers: none spills).
inline row_plan rows_plan(std::int64_t cols, int items) {
  const int tpr = threads_per_row(cols, items);
  return {items, tpr, tpr <= kWarp ? kRowsBlock : tpr, 0, false};
}

/// The forward's plan for rows of `cols` elements of T, with 16-byte vectors (`vectors`): one to four
/// vectors per thread in registers (the fewest that fit the row into 256 threads, else into
/// kMaxBlock: fewer threads per row spend fewer instructions per byte on the reductions); beyond
/// four, the rest of the row in shared memory; rows too long for that are split over blocks. Without
/// vectors (arrays that allow none), as many single elements per thread as one vector holds.
template <class T>
row_plan plan_forward(std::int64_t cols, const device_info& dev, bool vectors) {
  constexpr int m = max_vec_v<T>;
  const int widest = vectors ? 4 * m : m;
  for (int threads : {kMaxBlock / 2, kMaxBlock}) {  // more per thread before more threads per row
    for (int items = m; items <= widest; items *= 2) {
      const row_plan p = rows_plan(cols, items);
      if (p.tpr <= threads) return p;
    }
  }
  const std::size_t smem = cache_bytes<T>(cols, std::int64_t(kMaxBlock) * widest);
  if (smem <= smem_limit<T>(dev)) return {widest, kMaxBlock, kMaxBlock, smem, false};
  return {kSplitItems, kSplitBlock, kSplitBlock, 0, true};
}

/// Shared memory of the backward's accumulators: `nacc` sets of `per_thread` per thread.
template <class T>
std::size_t accumulator_bytes(int nacc, const row_plan& p, std::int64_t per_thread) {
  const std::int64_t groups = p.block / p.tpr;
  return static_cast<std::size_t>(nacc) * static_cast<std::size_t>(groups) *
         static_cast<std::size_t>(acc_group_stride(static_cast<int>(per_thread * p.tpr), p.tpr)) * sizeof(stat_t<T>);
}

/// The backward's plan; nacc is the number of partial sums wanted (dgamma, dbeta: 0 to 2). One or two
/// 16-byte vectors of x and of dy per thread (with the next row's loaded ahead, and gamma held), or
/// without vectors as many single elements as one vector holds.
template <class T>
row_plan plan_backward(std::int64_t cols, int nacc, const device_info& dev, bool vectors) {
  constexpr int m = max_vec_v<T>;
  const int widest = vectors ? 2 * m : m;
  const row_plan split{kSplitItems, kSplitBlock, kSplitBlock, 0, true};
  for (int threads : {kMaxBlock / 2, kMaxBlock}) {  // more per thread before more threads per row
    for (int items = m; items <= widest; items *= 2) {
      row_plan p = rows_plan(cols, items);
      if (p.tpr > threads) continue;
      p.smem = accumulator_bytes<T>(nacc, p, items);
      return p.smem <= smem_limit<T>(dev) ? p : split;
    }
  }
  // x and dy beyond the registers in shared memory, and accumulators for every column.
  row_plan p{widest, kMaxBlock, kMaxBlock, 0, false};
  p.smem = 2 * cache_bytes<T>(cols, std::int64_t(kMaxBlock) * p.items) +
           accumulator_bytes<T>(nacc, p, round_up(cols, std::int64_t(kMaxBlock) * m) / kMaxBlock);
  return p.smem <= smem_limit<T>(dev) ? p : split;
}

inline int split_chunks(std::int64_t cols) {
  return static_cast<int>(ceil_div(cols, std::int64_t(kSplitBlock) * kSplitItems));
}

/// Row parts (partial rows) of the backward's split tier: enough blocks to fill the device.
inline int split_row_parts(std::int64_t rows, std::int64_t cols, const device_info& dev) {
  const std::int64_t want = ceil_div(std::int64_t(dev.sms) * std::max(1, dev.max_threads_per_sm / kSplitBlock),
                                     split_chunks(cols));
  return static_cast<int>(std::max<std::int64_t>(1, std::min({want, rows, kMaxGridY})));
}

/// The backward's blocks for the row tiers: what is resident (`per_sm` blocks per multiprocessor),
/// no more than the rows need, and few enough that each block sees kMinRowsPerBlock row groups.
inline std::int64_t backward_blocks(const row_plan& p, std::int64_t rows, const device_info& dev, int per_sm) {
  const std::int64_t groups = p.block / p.tpr;
  const std::int64_t cap = std::max<std::int64_t>(dev.sms, ceil_div(rows, groups * kMinRowsPerBlock));
  return std::max<std::int64_t>(1, std::min({ceil_div(rows, groups), std::int64_t(dev.sms) * per_sm, cap}));
}

inline std::size_t round_up_256(std::size_t v) { return (v + 255) / 256 * 256; }

/// Workspace of one forward plan: the chunks' statistics of the split tier (none for the others).
template <class T>
std::size_t forward_workspace(const row_plan& p, std::int64_t rows, std::int64_t cols) {
  if (!p.split || rows == 0) return 0;
  return round_up_256(static_cast<std::size_t>(rows) * split_chunks(cols) * 4 * sizeof(stat_t<T>));
}

/// Workspace of one backward plan: an upper bound of what run_backward uses (a bound because it
/// cannot know the occupancy of the exact kernel).
template <class T>
std::size_t backward_workspace(const row_plan& p, std::int64_t rows, std::int64_t cols, int nacc,
                               const device_info& dev) {
  using C = stat_t<T>;
  if (rows == 0 || (nacc == 0 && !p.split)) return 0;
  if (p.split) {
    const std::size_t sums = static_cast<std::size_t>(rows) * split_chunks(cols) * 2;
    return round_up_256((sums + static_cast<std::size_t>(nacc) * split_row_parts(rows, cols, dev) * cols) * sizeof(C));
  }
  const std::int64_t blocks = backward_blocks(p, rows, dev, std::max(1, dev.max_threads_per_sm / p.block));
  return round_up_256(static_cast<std::size_t>(nacc) * blocks * cols * sizeof(C));
}

/// What *_workspace_size() reports: enough for the plan of either vector width (which the call's
/// pointers decide).
template <class T>
std::size_t forward_workspace_bound(std::int64_t rows, std::int64_t cols, const device_info& dev) {
  return std::max(forward_workspace<T>(plan_forward<T>(cols, dev, true), rows, cols),
                  forward_workspace<T>(plan_forward<T>(cols, dev, false), rows, cols));
}

template <class T>
std::size_t backward_workspace_bound(std::int64_t rows, std::int64_t cols, int nacc, const device_info& dev) {
  return std::max(backward_workspace<T>(plan_backward<T>(cols, nacc, dev, true), rows, cols, nacc, dev),
                  backward_workspace<T>(plan_backward<T>(cols, nacc, dev, false), rows, cols, nacc, dev));
}

/// The widest vector (elements of T, at most 16 bytes) every row of every array allows: each base
/// pointer aligned to it and each row stride a multiple of it. Parameters need their own width.
template <class T>
class vector_width {
 public:
  template <class U>
  void rows_of(const U* p, std::int64_t ld, std::int64_t rows) {
    if (p == nullptr) return;
    while (vec_ > 1 && !(aligned(p, vec_ * sizeof(U)) && (rows <= 1 || ld % vec_ == 0))) vec_ /= 2;
  }
  template <class U>
  void param(const U* p) {
    if (p == nullptr) return;
    while (vec_ > 1 && !aligned(p, std::min<std::size_t>(16, vec_ * sizeof(U)))) vec_ /= 2;
  }
  int get() const { return vec_; }

 private:
  static bool aligned(const void* p, std::size_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; }
  int vec_ = max_vec_v<T>;
};

/// f(std::integral_constant<int, VEC>{}) for the run-time vector width: 16-byte vectors where every
/// array allows them, single elements otherwise (two widths: half the kernels to compile).
template <class T, class F>
status with_vec(int vec, F&& f) {
  if (vec == max_vec_v<T>) return f(std::integral_constant<int, max_vec_v<T>>{});
  return f(std::integral_constant<int, 1>{});
}

/// f(std::integral_constant<int, ITEMS>{}) for a plan's elements per thread: 1, 2 or 4 vectors' worth
/// (up to kMaxVectors).
template <class T, int kMaxVectors, class F>
status with_items(int items, F&& f) {
  constexpr int m = max_vec_v<T>;
  if (items == m) return f(std::integral_constant<int, m>{});
  if constexpr (kMaxVectors >= 2) {
    if (items == 2 * m) return f(std::integral_constant<int, 2 * m>{});
  }
  if constexpr (kMaxVectors >= 4) {
    if (items == 4 * m) return f(std::integral_constant<int, 4 * m>{});
  }
  return {cudaErrorInvalidValue, "lnorm::cuda: internal error (items per thread)"};
}

/// Blocks for a row-tier forward kernel: what fits on the device, at most what the rows need.
template <class T, class K>
status rows_grid(K kernel, const row_plan& p, std::int64_t rows, const device_info& dev, std::int64_t& grid) {
  int per_sm = 0;
  const status s =
      resident_blocks(reinterpret_cast<const void*>(kernel), p.block, p.smem, smem_limit<T>(dev), dev, per_sm);
  if (!s) return s;
  grid = std::max<std::int64_t>(1, std::min(ceil_div(rows, p.block / p.tpr), std::int64_t(dev.sms) * per_sm));
  return {};
}

/// Bytes of workspace lnorm's pool keeps between calls (more is handed back to the device at the
/// next synchronization).
constexpr std::uint64_t kPoolKeep = std::uint64_t(64) << 20;

/// lnorm's stream-ordered memory pool on `device`, created at its first use and kept: allocations
/// from it neither synchronize nor hand memory back at every synchronization (the default pool's
/// release threshold is 0). Devices without memory pools have none: their calls take a workspace.
inline status workspace_pool(int device, cudaMemPool_t& pool) noexcept {
  constexpr int kMaxDevices = 64;
  static std::mutex lock;
  static cudaMemPool_t pools[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return {cudaErrorInvalidDevice, "workspace: device index out of range"};
  std::lock_guard<std::mutex> hold(lock);
  if (pools[device] != nullptr) {
    pool = pools[device];
    return {};
  }
  int supported = 0;
  cudaError_t e = cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device);
  if (e != cudaSuccess) return {e, cudaGetErrorString(e)};
  if (supported == 0) {
    return {cudaErrorNotSupported,
            "workspace: this device has no stream-ordered memory pools; pass a workspace of *_workspace_size() bytes"};
  }
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t created = nullptr;
  if ((e = cudaMemPoolCreate(&created, &props)) != cudaSuccess) return {e, cudaGetErrorString(e)};
  std::uint64_t keep = kPoolKeep;
  if ((e = cudaMemPoolSetAttribute(created, cudaMemPoolAttrReleaseThreshold, &keep)) != cudaSuccess) {
    cudaMemPoolDestroy(created);
    return {e, cudaGetErrorString(e)};
  }
  pools[device] = pool = created;
  return {};
}

/// The caller's workspace, or a stream-ordered allocation from lnorm's pool on the current device,
/// freed, stream-ordered, at scope end.
class scratch {
 public:
  explicit scratch(cudaStream_t stream) : stream_(stream) {}
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  ~scratch() {
    if (owned_) cudaFreeAsync(ptr_, stream_);
  }
  status acquire(void* given, std::size_t given_bytes, std::size_t need, int device) {
    if (need == 0) return {};
    // Null with no bytes: none given (allocated here); null with bytes claimed: a caller's mistake.
    if (given == nullptr && given_bytes > 0) return {cudaErrorInvalidValue, "workspace: data is null"};
    if (given != nullptr) {
      if (given_bytes < need) return {cudaErrorInvalidValue, "workspace: smaller than the *_workspace_size() it needs"};
      ptr_ = given;
      return {};
    }
    cudaMemPool_t pool = nullptr;
    const status s = workspace_pool(device, pool);
    if (!s) return s;
    const cudaError_t e = cudaMallocFromPoolAsync(&ptr_, need, pool, stream_);
    if (e != cudaSuccess) return {e, cudaGetErrorString(e)};
    owned_ = true;
    return {};
  }
  void* get() const { return ptr_; }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
  bool owned_ = false;
};

template <class T, class W>
constexpr void check_types() {
  static_assert(is_element_v<T>, "lnorm::cuda: the element type must be float, double, __half or __nv_bfloat16");
  static_assert(std::is_same_v<W, T> || std::is_same_v<W, float>, "lnorm::cuda: weights are T or float");
}

inline status check_shape(std::int64_t rows, std::int64_t cols) {
  if (rows < 0) return {cudaErrorInvalidValue, "rows: must be >= 0"};
  if (cols < 1) return {cudaErrorInvalidValue, "cols: must be >= 1"};
  if (cols > kMaxCols) return {cudaErrorInvalidValue, "cols: more than 2^30 elements in a row"};
  if (rows > std::numeric_limits<std::int64_t>::max() / cols) return {cudaErrorInvalidValue, "rows: rows * cols overflows int64"};
  return {};
}

/// The rules of lnorm/rules.hpp over a call's arrays (null pointers, spans, aliasing), as the CPU
/// calls apply them: no output overlaps itself or another array, except an output that is exactly an
/// input the call allows (in place).
inline status check_arrays(::lnorm::rules::operands& ops) {
  if (const char* m = ops.check()) return {cudaErrorInvalidValue, m};
  return {};
}

/// Shapes and strides of the row arguments ({rows, cols}, {ld, 1}), alive while a call checks them.
struct row_views {
  std::int64_t shape[2];
  std::int64_t strides[4][2];
  template <class U>
  ::lnorm::array_view view(int k, const U* p, std::int64_t ld) {
    strides[k][0] = ld;
    strides[k][1] = 1;
    return {p, 2, shape, strides[k], sizeof(U)};
  }
};

template <class T, class W>
status run_forward(forward_args<T> a, std::int64_t cols, double eps, cudaStream_t stream, void* workspace,
                   std::size_t workspace_bytes) noexcept {
  using ::lnorm::rules::arg;
  using ::lnorm::rules::bit;
  check_types<T, W>();
  status s = check_shape(a.rows, cols);
  if (!s) return s;
  if (const char* m = ::lnorm::rules::check_eps(eps)) return {cudaErrorInvalidValue, m};
  if (a.rows == 0) return {};
  const bool add = a.residual != nullptr;
  const unsigned inputs = bit(arg::x) | (add ? bit(arg::residual) : 0u);
  row_views rv{{a.rows, cols}, {}};
  ::lnorm::rules::operands ops;
  ops.input(arg::x, rv.view(0, a.x, a.ld_x));
  if (add) ops.input(arg::residual, rv.view(1, a.residual, a.ld_residual));
  if (add && a.bias_in) ops.vector(arg::bias_in, a.bias_in, cols, sizeof(W), false);
  if (add) ops.output(arg::s, rv.view(2, a.s, a.ld_s), inputs);
  ops.output(arg::y, rv.view(3, a.y, a.ld_y), inputs);
  if (a.gamma) ops.vector(arg::gamma, a.gamma, cols, sizeof(W), false);
  if (a.beta) ops.vector(arg::beta, a.beta, cols, sizeof(W), false);
  if (a.mean) ops.vector(arg::mean, a.mean, a.rows, sizeof(stat_t<T>), true);
  if (a.rstd) ops.vector(arg::rstd, a.rstd, a.rows, sizeof(stat_t<T>), true);
  if (!(s = check_arrays(ops))) return s;
  a.cols = static_cast<int>(cols);
  a.eps = static_cast<stat_t<T>>(eps);
  a.inv_cols = static_cast<stat_t<T>>(1.0 / static_cast<double>(cols));
  const std::int64_t chunk = std::int64_t(kSplitBlock) * kSplitItems, last = cols - (split_chunks(cols) - 1) * chunk;
  a.inv_chunk = static_cast<stat_t<T>>(1.0 / static_cast<double>(chunk));
  a.inv_last_chunk = static_cast<stat_t<T>>(1.0 / static_cast<double>(last));

  vector_width<T> vw;
  vw.rows_of(a.x, a.ld_x, a.rows);
  vw.rows_of(a.y, a.ld_y, a.rows);
  vw.rows_of(a.residual, a.ld_residual, a.rows);
  vw.rows_of(a.residual != nullptr ? a.s : nullptr, a.ld_s, a.rows);
  vw.param(static_cast<const W*>(a.gamma));
  vw.param(static_cast<const W*>(a.beta));
  vw.param(static_cast<const W*>(a.bias_in));
  device_info dev;
  if (!(s = current_device(dev))) return s;
  const row_plan plan = plan_forward<T>(cols, dev, vw.get() == max_vec_v<T>);
  scratch ws(stream);
  if (!(s = ws.acquire(workspace, workspace_bytes, forward_workspace<T>(plan, a.rows, cols), dev.id))) return s;

  return with_vec<T>(vw.get(), [&](auto vec) -> status {
    constexpr int VEC = decltype(vec)::value;
    auto* const w = static_cast<stat_t<T>*>(ws.get());
    if (plan.split) {
      const dim3 grid(split_chunks(cols), static_cast<unsigned>(std::min(a.rows, kMaxGridY)));
      const status first = launch(forward_chunk_stats_kernel<T, VEC, kSplitItems>, grid, dim3(kSplitBlock), 0,
                                  stream, a, w);
      if (!first) return first;
      return launch(forward_chunk_normalize_kernel<T, VEC, kSplitItems>, grid, dim3(kSplitBlock), 0, stream, a,
                    static_cast<const stat_t<T>*>(w));
    }
    return with_items<T, VEC == 1 ? 1 : 4>(plan.items, [&](auto items) -> status {
      constexpr int ITEMS = decltype(items)::value;
      auto run = [&](void (*kernel)(forward_args<T>, int)) -> status {
        std::int64_t grid = 0;
        const status g = rows_grid<T>(kernel, plan, a.rows, dev, grid);
        if (!g) return g;
        return launch(kernel, dim3(static_cast<unsigned>(grid)), dim3(plan.block), plan.smem, stream, a, plan.tpr);
      };
      if (a.rms) {
        return add ? run(forward_rows_kernel<T, VEC, ITEMS, kModeRms | kModeAdd>)
                   : run(forward_rows_kernel<T, VEC, ITEMS, kModeRms>);
      }
      return add ? run(forward_rows_kernel<T, VEC, ITEMS, kModeAdd>) : run(forward_rows_kernel<T, VEC, ITEMS, 0>);
    });
  });
}

template <class T, class W>
status run_backward(backward_args<T> a, std::int64_t cols, W* dgamma, W* dbeta, cudaStream_t stream,
                    void* workspace, std::size_t workspace_bytes) noexcept {
  using C = stat_t<T>;
  using ::lnorm::rules::arg;
  check_types<T, W>();
  status s = check_shape(a.rows, cols);
  if (!s) return s;
  const int nacc = (dgamma != nullptr) + (dbeta != nullptr);
  row_views rv{{a.rows, cols}, {}};
  ::lnorm::rules::operands ops;
  ops.input(arg::dy, rv.view(0, a.dy, a.ld_dy));
  ops.input(arg::x, rv.view(1, a.x, a.ld_x));
  if (!a.rms) ops.vector(arg::mean, a.mean, a.rows, sizeof(C), false);  // needed: a null one with rows is refused
  ops.vector(arg::rstd, a.rstd, a.rows, sizeof(C), false);
  if (a.gamma) ops.vector(arg::gamma, a.gamma, cols, sizeof(W), false);
  ops.output(arg::dx, rv.view(2, a.dx, a.ld_dx));  // dx may not be dy or x
  if (dgamma) ops.vector(arg::dgamma, dgamma, cols, sizeof(W), true);
  if (dbeta) ops.vector(arg::dbeta, dbeta, cols, sizeof(W), true);
  if (!(s = check_arrays(ops))) return s;
  if (a.rows == 0) {  // sums over no rows
    cudaError_t e = cudaSuccess;
    if (dgamma != nullptr) e = cudaMemsetAsync(dgamma, 0, static_cast<std::size_t>(cols) * sizeof(W), stream);
    if (e == cudaSuccess && dbeta != nullptr) e = cudaMemsetAsync(dbeta, 0, static_cast<std::size_t>(cols) * sizeof(W), stream);
    return e == cudaSuccess ? status{} : status{e, cudaGetErrorString(e)};
  }
  a.cols = static_cast<int>(cols);
  a.inv_cols = static_cast<C>(1.0 / static_cast<double>(cols));

  vector_width<T> vw;
  vw.rows_of(a.dy, a.ld_dy, a.rows);
  vw.rows_of(a.x, a.ld_x, a.rows);
  vw.rows_of(a.dx, a.ld_dx, a.rows);
  vw.param(static_cast<const W*>(a.gamma));
  device_info dev;
  if (!(s = current_device(dev))) return s;
  const row_plan plan = plan_backward<T>(cols, nacc, dev, vw.get() == max_vec_v<T>);
  scratch ws(stream);
  if (!(s = ws.acquire(workspace, workspace_bytes, backward_workspace<T>(plan, a.rows, cols, nacc, dev), dev.id)))
    return s;

  return with_vec<T>(vw.get(), [&](auto vec) -> status {
    constexpr int VEC = decltype(vec)::value;
    C* const w = static_cast<C*>(ws.get());
    std::int64_t partial_rows = 0;
    if (plan.split) {
      const int chunks = split_chunks(cols), parts = split_row_parts(a.rows, cols, dev);
      C* const partials = w + static_cast<std::size_t>(a.rows) * chunks * 2;
      a.dgamma_partial = dgamma != nullptr ? partials : nullptr;
      a.dbeta_partial = dbeta != nullptr ? partials + (dgamma != nullptr ? std::size_t(parts) * cols : 0) : nullptr;
      const status first = launch(backward_chunk_sums_kernel<T, VEC, kSplitItems>,
                                  dim3(chunks, static_cast<unsigned>(std::min(a.rows, kMaxGridY))), dim3(kSplitBlock),
                                  0, stream, a, w);
      if (!first) return first;
      const status second = launch(backward_chunk_kernel<T, VEC, kSplitItems>, dim3(chunks, parts),
                                   dim3(kSplitBlock), 0, stream, a, static_cast<const C*>(w));
      if (!second) return second;
      partial_rows = parts;
    } else {
      const status r = with_items<T, VEC == 1 ? 1 : 2>(plan.items, [&](auto items) -> status {
        void (*const kernel)(backward_args<T>, int) = backward_rows_kernel<T, VEC, decltype(items)::value>;
        int per_sm = 0;
        const status q = resident_blocks(reinterpret_cast<const void*>(kernel), plan.block, plan.smem,
                                         smem_limit<T>(dev), dev, per_sm);
        if (!q) return q;
        partial_rows = backward_blocks(plan, a.rows, dev, per_sm);
        a.dgamma_partial = dgamma != nullptr ? w : nullptr;
        a.dbeta_partial = dbeta != nullptr ? w + (dgamma != nullptr ? std::size_t(partial_rows) * cols : 0) : nullptr;
        return launch(kernel, dim3(static_cast<unsigned>(partial_rows)), dim3(plan.block), plan.smem, stream, a,
                      plan.tpr);
      });
      if (!r) return r;
    }
    if (dgamma == nullptr && dbeta == nullptr) return status{};
    return launch(reduce_partials_kernel<C, W>, dim3(static_cast<unsigned>(ceil_div(cols, kWarp))), dim3(kWarp, 8), 0,
                  stream, static_cast<const C*>(a.dgamma_partial), dgamma, static_cast<const C*>(a.dbeta_partial), dbeta,
                  static_cast<int>(partial_rows), a.cols);
  });
}

}  // namespace detail

// ---- the public calls -------------------------------------------------------------------------
//
// Rows are `ld` elements apart (any ld for inputs), columns contiguous. Arguments follow lnorm's
// rules (lnorm/rules.hpp, the same as the CPU calls'): rows == 0 accepts null pointers; eps is any
// finite number >= 0; no output overlaps itself (|ld| < cols with rows > 1, ld == 0) or any other
// argument, except that y may be x, and in the fused add s and y may each be x or residual but never
// overlap each other; the backward's dx overlaps nothing. A refused call's message starts with the
// argument's name ("y: overlaps gamma; ..."). T: float, double, __half, __nv_bfloat16. W, the weights' type: T (the default) or
// float, then given explicitly (layer_norm<__nv_bfloat16, float>(...)); weight pointers are not
// deduced, so nullptr works for any of them. Pointers to parameters and statistics may be null where
// noted (no weight: ones; no bias: zeros; no mean/rstd: not written). `workspace`: pass
// *_workspace_size() bytes (a null workspace with workspace_bytes > 0 is refused: "workspace: data
// is null"); or null, and a call that needs one (the backward with dweight/dbias; rows too long for
// one block) takes it stream-ordered from lnorm's memory pool on the device (cudaMallocFromPoolAsync;
// the pool keeps up to 64 MiB between calls instead of handing memory back at every synchronize).
// On a device without memory pools such a call is refused ("workspace: this device has no
// stream-ordered memory pools; ...") and needs the workspace.

/// A weight-shaped argument of the public calls: W, in a context that does not deduce it.
template <class W>
using param_t = detail::identity_t<W>;

/// y = (x - mean) / sqrt(var + eps) * gamma + beta over each row; mean and rstd per row if not null.
///
///   lnorm::cuda::layer_norm(x, cols, y, cols, rows, cols, gamma, beta, 1e-5, mean, rstd, stream);
template <class T, class W = T>
status layer_norm(const T* x, std::int64_t ld_x, T* y, std::int64_t ld_y, std::int64_t rows, std::int64_t cols,
                  const param_t<W>* gamma, const param_t<W>* beta, double eps, stat_t<T>* mean = nullptr,
                  stat_t<T>* rstd = nullptr, cudaStream_t stream = nullptr, void* workspace = nullptr,
                  std::size_t workspace_bytes = 0) noexcept {
  const detail::forward_args<T> a{x,    ld_x, nullptr, 0,   nullptr, nullptr, 0, y, ld_y, gamma, beta,
                                  std::is_same_v<W, float>, mean, rstd, rows, 0, 0, false};
  return detail::run_forward<T, W>(a, cols, eps, stream, workspace, workspace_bytes);
}

/// y = x / sqrt(mean(x^2) + eps) * gamma over each row; rstd per row if not null.
///
///   lnorm::cuda::rms_norm(x, cols, y, cols, rows, cols, gamma, 1e-6, nullptr, stream);
template <class T, class W = T>
status rms_norm(const T* x, std::int64_t ld_x, T* y, std::int64_t ld_y, std::int64_t rows, std::int64_t cols,
                const param_t<W>* gamma, double eps, stat_t<T>* rstd = nullptr, cudaStream_t stream = nullptr,
                void* workspace = nullptr, std::size_t workspace_bytes = 0) noexcept {
  const detail::forward_args<T> a{x,     ld_x,    nullptr, 0, nullptr, nullptr, 0, y, ld_y, gamma, nullptr,
                                  std::is_same_v<W, float>, nullptr, rstd, rows, 0, 0, true};
  return detail::run_forward<T, W>(a, cols, eps, stream, workspace, workspace_bytes);
}

/// The transformer block's add & norm: s = (x + bias_in) + residual rounded to T (bias_in may be
/// null), y = layer_norm(s). s and y may be x or residual themselves, not each other.
///
///   lnorm::cuda::add_layer_norm(h, d, attn, d, nullptr, h, d, normed, d, tokens, d, g, b, 1e-5);
template <class T, class W = T>
status add_layer_norm(const T* x, std::int64_t ld_x, const T* residual, std::int64_t ld_residual,
                      const param_t<W>* bias_in, T* s, std::int64_t ld_s, T* y, std::int64_t ld_y, std::int64_t rows,
                      std::int64_t cols, const param_t<W>* gamma, const param_t<W>* beta, double eps,
                      stat_t<T>* mean = nullptr, stat_t<T>* rstd = nullptr, cudaStream_t stream = nullptr,
                      void* workspace = nullptr, std::size_t workspace_bytes = 0) noexcept {
  if (residual == nullptr && rows > 0) return {cudaErrorInvalidValue, "residual: null pointer"};
  const detail::forward_args<T> a{x, ld_x, residual, ld_residual, bias_in, s, ld_s, y, ld_y, gamma, beta,
                                  std::is_same_v<W, float>, mean, rstd, rows, 0, 0, false};
  return detail::run_forward<T, W>(a, cols, eps, stream, workspace, workspace_bytes);
}

/// s = (x + bias_in) + residual rounded to T, y = rms_norm(s).
///
///   lnorm::cuda::add_rms_norm(h, d, attn, d, nullptr, h, d, normed, d, tokens, d, g, 1e-6);
template <class T, class W = T>
status add_rms_norm(const T* x, std::int64_t ld_x, const T* residual, std::int64_t ld_residual,
                    const param_t<W>* bias_in, T* s, std::int64_t ld_s, T* y, std::int64_t ld_y, std::int64_t rows,
                    std::int64_t cols, const param_t<W>* gamma, double eps, stat_t<T>* rstd = nullptr,
                    cudaStream_t stream = nullptr, void* workspace = nullptr,
                    std::size_t workspace_bytes = 0) noexcept {
  if (residual == nullptr && rows > 0) return {cudaErrorInvalidValue, "residual: null pointer"};
  const detail::forward_args<T> a{x, ld_x, residual, ld_residual, bias_in, s, ld_s, y, ld_y, gamma, nullptr,
                                  std::is_same_v<W, float>, nullptr, rstd, rows, 0, 0, true};
  return detail::run_forward<T, W>(a, cols, eps, stream, workspace, workspace_bytes);
}

/// dx of layer_norm, and dgamma = sum over rows of dy * xhat, dbeta = sum of dy (each may be null:
/// not computed). mean and rstd are the forward's.
///
///   lnorm::cuda::layer_norm_backward(dy, d, x, d, mean, rstd, g, dx, d, rows, d, dg, db, stream);
template <class T, class W = T>
status layer_norm_backward(const T* dy, std::int64_t ld_dy, const T* x, std::int64_t ld_x, const stat_t<T>* mean,
                           const stat_t<T>* rstd, const param_t<W>* gamma, T* dx, std::int64_t ld_dx,
                           std::int64_t rows, std::int64_t cols, param_t<W>* dgamma, param_t<W>* dbeta,
                           cudaStream_t stream = nullptr, void* workspace = nullptr,
                           std::size_t workspace_bytes = 0) noexcept {
  const detail::backward_args<T> a{dy,    ld_dy, x,       ld_x,    mean, rstd, gamma, std::is_same_v<W, float>,
                                   dx,    ld_dx, nullptr, nullptr, rows, 0,    false};
  return detail::run_backward<T, W>(a, cols, dgamma, dbeta, stream, workspace, workspace_bytes);
}

/// dx of rms_norm, and dgamma (may be null) = sum over rows of dy * x * rstd.
///
///   lnorm::cuda::rms_norm_backward(dy, d, x, d, rstd, g, dx, d, rows, d, dg, stream);
template <class T, class W = T>
status rms_norm_backward(const T* dy, std::int64_t ld_dy, const T* x, std::int64_t ld_x, const stat_t<T>* rstd,
                         const param_t<W>* gamma, T* dx, std::int64_t ld_dx, std::int64_t rows, std::int64_t cols,
                         param_t<W>* dgamma, cudaStream_t stream = nullptr, void* workspace = nullptr,
                         std::size_t workspace_bytes = 0) noexcept {
  const detail::backward_args<T> a{dy,    ld_dy, x,       ld_x,    nullptr, rstd, gamma, std::is_same_v<W, float>,
                                   dx,    ld_dx, nullptr, nullptr, rows,    0,    true};
  return detail::run_backward<T, W>(a, cols, dgamma, static_cast<W*>(nullptr), stream, workspace, workspace_bytes);
}

/// Bytes of workspace a forward call on the current device needs (0 for rows that fit one block).
template <class T>
status forward_workspace_size(std::int64_t rows, std::int64_t cols, std::size_t& bytes) noexcept {
  bytes = 0;
  status s = detail::check_shape(rows, cols);
  detail::device_info dev;
  if (!s || !(s = detail::current_device(dev))) return s;
  bytes = detail::forward_workspace_bound<T>(rows, cols, dev);
  return {};
}

/// Bytes of workspace a backward call on the current device needs, computing dgamma and/or dbeta.
template <class T>
status backward_workspace_size(std::int64_t rows, std::int64_t cols, bool dgamma, bool dbeta,
                               std::size_t& bytes) noexcept {
  bytes = 0;
  status s = detail::check_shape(rows, cols);
  detail::device_info dev;
  if (!s || !(s = detail::current_device(dev))) return s;
  const int nacc = int(dgamma) + int(dbeta);
  bytes = detail::backward_workspace_bound<T>(rows, cols, nacc, dev);
  return {};
}

}  // namespace cuda
}  // namespace lnorm
