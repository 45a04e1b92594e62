// lnorm/lnorm.hpp: the public C++ API of lnorm, a header-only LayerNorm and RMSNorm library.
//
// Layers, top down: the public calls (validated once, never throwing in the `try_` forms) -> layout
// canonicalization of any strided tensor into rows, column tiles or gathered rows -> parallel_for
// over blocks of those tasks -> the kernel set chosen at run time (dispatch.hpp) -> row kernels.
//
//   #include <lnorm/lnorm.hpp>
//   lnorm::layer_norm(x, y, rows, cols, gamma, beta, 1e-5f);   // contiguous float rows
//   lnorm::rms_norm(x, y, rows, cols, gamma, 1e-6f);
//
// An engine with its own threads and memory either calls the row-range calls (layer_norm_rows,
// add_norm_rows, ...) on its workers, or hands lnorm its pool (set_thread_pool) and gives the N-d
// calls a `workspace` sized by their *_workspace_size queries: neither way allocates.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>

#include "dispatch.hpp"
#include "half.hpp"
#include "parallel.hpp"
#include "policy.hpp"
#include "reference.hpp"
#include "rules.hpp"
#include "kernels/family.hpp"
#include "kernels/pipeline.hpp"
// The kernel sets: one header each (a set this build does not carry is a not_built<isa> there), all
// listed once, in isa_table's order, in detail::kernel_set_list below.
#include "kernels/avx2.hpp"
#include "kernels/avx512.hpp"
#include "kernels/neon.hpp"

#define LNORM_VERSION_MAJOR 0
#define LNORM_VERSION_MINOR 1
#define LNORM_VERSION_PATCH 0
#define LNORM_VERSION_STRING "0.1.0"

namespace lnorm {

// ============================================================================================
// Errors without exceptions
// ============================================================================================

/// What a `try_` call returns: `ok` or the reason nothing was written. `workspace_too_small`: the
/// caller's workspace is smaller than the call needs (ask the matching *_workspace_size query).
enum class status_code : int { ok = 0, invalid_argument = 1, out_of_memory = 2, workspace_too_small = 3 };

/// A call's outcome. A refused call has written nothing. Its message is a static string that starts
/// with the C++ name of the argument at fault and a colon ("y: overlaps gamma; ...", "eps: ...",
/// "workspace: ..."): x, residual, bias_in, s, y, gamma, beta, mean, rstd, dy, dx, dgamma, dbeta,
/// rows, cols, shape, normalized, axis, eps, workspace.
///   lnorm::status s = lnorm::try_rms_norm(x, d, y, d, rows, d, g, 1e-6);
///   if (!s) std::fprintf(stderr, "%s\n", s.message);
struct status {
  status_code code = status_code::ok;
  const char* message = "";  // static string naming the argument at fault
  explicit operator bool() const noexcept { return code == status_code::ok; }
};

inline status fail(const char* message) noexcept { return {status_code::invalid_argument, message}; }

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
#define LNORM_HAS_EXCEPTIONS 1
/// Throws std::invalid_argument (or std::bad_alloc) for a failed status. (Not declared when
/// compiled with -fno-exceptions: use the `try_` calls, which return a status.)
inline void throw_if_failed(const status& s) {
  if (s.code == status_code::out_of_memory) throw std::bad_alloc();
  if (s.code != status_code::ok) throw std::invalid_argument(s.message);
}
#endif

// ============================================================================================
// Layout: any strided tensor, normalized over any set of axes, as rows, column tiles or gathers
// ============================================================================================

inline constexpr int kMaxArrays = 4;  // kMaxDims: rules.hpp

/// One array argument of an N-d call: its first element and its strides, in elements, per dimension.
struct strided {
  const void* data = nullptr;
  const std::int64_t* strides = nullptr;
};

/// Memory the caller lends an N-d call (try_layer_norm_nd, try_rms_norm_nd, try_add_norm_nd,
/// try_norm_backward_nd) for what it needs besides its arrays: the gather buffers of layouts no kernel
/// can walk, the fused add's row buffer, the backward's dgamma/dbeta partials, a huge row's chunk
/// statistics. Given one, a call never allocates; one smaller than the call needs is refused with
/// status_code::workspace_too_small, and one of enough bytes whose data is null with
/// invalid_argument ("workspace: data is null"), before anything is written. Any alignment. The matching query
/// (layer_norm_workspace_size, rms_norm_workspace_size, add_norm_workspace_size,
/// norm_backward_workspace_size) says how many bytes a problem needs on a given thread count; it is 0
/// for the common forward case (rows contiguous over the normalized axes, narrower than 65536).
///
///   // once, when the engine plans the layer (threads: the count the calls will run with):
///   const std::size_t bytes = lnorm::norm_backward_workspace_size<float>(false, 2, shape, norm, st, st, st);
///   std::vector<unsigned char> arena(bytes);
///   // every step, no allocation:
///   const lnorm::workspace ws{arena.data(), arena.size()};
///   lnorm::status s = lnorm::try_norm_backward_nd<float>(false, 2, shape, norm, {dy, st}, {x, st}, mean,
///                                                        rstd, g, {dx, st}, dg, db, &ws);
struct workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

namespace detail {

// Keeps a parameter out of template argument deduction: `const identity_t<W>* gamma` takes nullptr, or
// float weights for a float16 tensor, with W given by (or defaulted from) the template arguments.
template <class T>
struct identity {
  using type = T;
};
template <class T>
using identity_t = typename identity<T>::type;

enum class layout_kind { rows, columns, gather };

// The problem after dropping unit dimensions and merging adjacent dimensions that every array can walk
// as one. Batch dims (not normalized) come first in their original order, so the flat batch index is
// the row-major index over the original non-normalized axes: the index of mean/rstd. Only the first
// nb (nn) entries of the shape and stride arrays are set and read: the 5 KiB of them are not zeroed
// at every call.
struct layout {
  int narrays = 0;
  int nb = 0, nn = 0;
  std::int64_t bshape[kMaxDims], nshape[kMaxDims];
  std::int64_t bstride[kMaxArrays][kMaxDims], nstride[kMaxArrays][kMaxDims];
  std::int64_t rows = 1, cols = 1;
  layout_kind kind = layout_kind::rows;
};

inline void append_dim(int& count, std::int64_t* shape, std::int64_t (*stride)[kMaxDims], int narrays,
                       std::int64_t size, const std::int64_t* s) noexcept {
  if (count > 0) {
    bool mergeable = true;
    for (int a = 0; a < narrays; ++a) mergeable &= stride[a][count - 1] == s[a] * size;
    if (mergeable) {
      shape[count - 1] *= size;
      for (int a = 0; a < narrays; ++a) stride[a][count - 1] = s[a];
      return;
    }
  }
  shape[count] = size;
  for (int a = 0; a < narrays; ++a) stride[a][count] = s[a];
  ++count;
}

// Only for a checked, non-empty problem (check_problem: no zero batch dimension, no product overflows).
inline void build_layout(layout& L, int ndim, const std::int64_t* shape, const bool* normalized, int narrays,
                         const std::int64_t* const* strides) noexcept {
  L.narrays = narrays;
  for (int d = 0; d < ndim; ++d) {
    if (normalized[d]) L.cols *= shape[d];
    else L.rows *= shape[d];
    if (shape[d] == 1) continue;
    std::int64_t s[kMaxArrays];
    for (int a = 0; a < narrays; ++a) s[a] = strides[a][d];
    if (normalized[d]) append_dim(L.nn, L.nshape, L.nstride, narrays, shape[d], s);
    else append_dim(L.nb, L.bshape, L.bstride, narrays, shape[d], s);
  }
  bool unit_norm = L.nn <= 1, unit_inner = L.nb >= 1;
  for (int a = 0; a < narrays; ++a) {
    if (L.nn == 1) unit_norm &= L.nstride[a][0] == 1;
    if (L.nb >= 1) unit_inner &= L.bstride[a][L.nb - 1] == 1;
  }
  if (unit_norm) L.kind = layout_kind::rows;
  else if (L.nn == 1 && unit_inner) L.kind = layout_kind::columns;
  else L.kind = layout_kind::gather;
}

// Element offsets of each array for batch index r, over the first `nb` batch dims.
inline void batch_offsets(const layout& L, int nb, std::int64_t r, std::int64_t* off) noexcept {
  for (int a = 0; a < L.narrays; ++a) off[a] = 0;
  for (int d = nb - 1; d >= 0 && r > 0; --d) {
    const std::int64_t i = r % L.bshape[d];
    r /= L.bshape[d];
    for (int a = 0; a < L.narrays; ++a) off[a] += i * L.bstride[a][d];
  }
}

// Walks rows [r0, r1) with an odometer over the batch dims: one division per block, not per row.
// f(row, offsets, next) gets the offsets of the row and of the row after it (null for the last row
// of the range), for the kernels to prefetch.
template <class F>
inline void for_each_row(const layout& L, std::int64_t r0, std::int64_t r1, F&& f) noexcept {
  std::int64_t off[kMaxArrays], cur[kMaxArrays], idx[kMaxDims];
  batch_offsets(L, L.nb, r0, off);
  std::int64_t r = r0;
  for (int d = L.nb - 1; d >= 0; --d) {
    idx[d] = r % L.bshape[d];
    r /= L.bshape[d];
  }
  for (std::int64_t row = r0; row < r1; ++row) {
    for (int a = 0; a < L.narrays; ++a) cur[a] = off[a];
    for (int d = L.nb - 1; d >= 0; --d) {
      for (int a = 0; a < L.narrays; ++a) off[a] += L.bstride[a][d];
      if (++idx[d] < L.bshape[d]) break;
      for (int a = 0; a < L.narrays; ++a) off[a] -= L.bstride[a][d] * L.bshape[d];
      idx[d] = 0;
    }
    f(row, static_cast<const std::int64_t*>(cur), row + 1 < r1 ? static_cast<const std::int64_t*>(off) : nullptr);
  }
}

// Copies one row between an N-d strided position and a contiguous buffer (the gather layout).
template <class T>
inline void copy_row(const layout& L, int a, T* strided_base, T* buf, bool to_buf) noexcept {
  std::int64_t idx[kMaxDims] = {};
  std::int64_t off = 0;
  for (std::int64_t i = 0; i < L.cols; ++i) {
    if (to_buf) buf[i] = strided_base[off];
    else strided_base[off] = buf[i];
    for (int d = L.nn - 1; d >= 0; --d) {
      off += L.nstride[a][d];
      if (++idx[d] < L.nshape[d]) break;
      off -= L.nstride[a][d] * L.nshape[d];
      idx[d] = 0;
    }
  }
}

// Fewer elements than this per worker and the work stays on fewer threads (a lone 768-wide row never
// pays a fork/join).
inline constexpr std::int64_t kMinElementsPerThread = 32768;
// dgamma/dbeta partials: this many fixed chunks of tasks at most, whatever the thread count, so that
// the reduction order, and so the result, never depends on the number of threads.
inline constexpr std::int64_t kMaxPartialChunks = 64;

inline int workers_for(std::int64_t elements, std::int64_t tasks, int threads) noexcept {
  const std::int64_t by_size = std::max<std::int64_t>(1, elements / kMinElementsPerThread);
  return static_cast<int>(std::min<std::int64_t>({static_cast<std::int64_t>(std::max(1, threads)), by_size, tasks}));
}

// ---- Scratch: what a call needs besides its arrays, from the caller's workspace or one allocation ----

inline constexpr std::size_t kScratchAlign = 64;  // each region starts a cache line: no false sharing

inline std::size_t align_up(std::size_t n) noexcept { return (n + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }

inline constexpr std::size_t kNoBytes = static_cast<std::size_t>(-1);  // more than can be addressed

// a * b * c elements of `elem` bytes (all >= 0), or kNoBytes when that overflows: a plan that asks
// for kNoBytes is then refused (out of memory, or a workspace too small), never wrapped.
inline std::size_t bytes_of(std::int64_t a, std::int64_t b, std::int64_t c, std::size_t elem) noexcept {
  std::size_t n = elem;
  for (std::int64_t f : {a, b, c}) {
    const std::size_t u = static_cast<std::size_t>(f);
    if (u != 0 && n > (kNoBytes - kScratchAlign) / u) return kNoBytes;
    n *= u;
  }
  return n;
}

// The scratch of one call in three regions: row buffers of T (gathered rows, the fused add's s; per
// worker), dgamma/dbeta partials (zeroed before use) and doubles (a huge row's chunk statistics).
struct scratch_plan {
  std::size_t row_bytes = 0, partial_bytes = 0, double_bytes = 0;
  // The workspace bytes: each region rounded up to a cache line, and room to align the first.
  std::size_t bytes() const noexcept {
    if (row_bytes == kNoBytes || partial_bytes == kNoBytes || double_bytes == kNoBytes) return kNoBytes;
    const std::size_t regions = align_up(row_bytes) + align_up(partial_bytes) + align_up(double_bytes);
    return regions == 0 ? 0 : regions + kScratchAlign - 1;
  }
};

// The regions of a plan, carved from the caller's workspace or from `owned`.
struct scratch {
  void* rows = nullptr;
  void* partials = nullptr;
  double* doubles = nullptr;
  std::unique_ptr<unsigned char[]> owned;
};

// Carves the plan's regions from `ws`, which must be large enough (nothing is allocated), or, with ws
// null, from one allocation of the call's own.
inline status acquire(const scratch_plan& plan, const workspace* ws, scratch& out) noexcept {
  const std::size_t need = plan.bytes();
  if (need == 0) return {};
  unsigned char* base = nullptr;
  if (ws) {
    // Too small first: an empty workspace{} is one of 0 bytes; one that claims the bytes needs them.
    if (ws->bytes < need)
      return {status_code::workspace_too_small, "workspace: smaller than its *_workspace_size query says this call needs"};
    if (!ws->data) return fail("workspace: data is null");
    base = static_cast<unsigned char*>(ws->data);
  } else {
    if (need != kNoBytes) out.owned.reset(new (std::nothrow) unsigned char[need]);
    if (!out.owned) return {status_code::out_of_memory, "workspace: none given, and its scratch could not be allocated"};
    base = out.owned.get();
  }
  unsigned char* p = base + (kScratchAlign - reinterpret_cast<std::uintptr_t>(base) % kScratchAlign) % kScratchAlign;
  out.rows = p;
  p += align_up(plan.row_bytes);
  out.partials = p;
  p += align_up(plan.partial_bytes);
  out.doubles = reinterpret_cast<double*>(p);
  return {};
}

// How execute cuts a layout into tasks (rows, or tiles of up to kColumnTile columns) and workers.
struct task_split {
  std::int64_t tile_count = 1, tasks = 0;
  int workers = 1;
};

inline task_split split_tasks(const layout& L, int threads) noexcept {
  task_split ts;
  if (L.kind == layout_kind::columns) {
    ts.tile_count = (L.bshape[L.nb - 1] + kColumnTile - 1) / kColumnTile;
    ts.tasks = L.rows / L.bshape[L.nb - 1] * ts.tile_count;
  } else {
    ts.tasks = L.rows;
  }
  ts.workers = workers_for(L.rows * L.cols, ts.tasks, threads);
  return ts;
}

// The fixed chunks of tasks whose dgamma/dbeta partials are summed apart: at most 64, and none under
// kMinElementsPerThread elements (a partial costs as much as that many elements' work). Fixed by the
// shape alone, so the reduction order never depends on the number of threads.
inline std::int64_t partial_chunks(std::int64_t tasks, std::int64_t elements) noexcept {
  const std::int64_t by_size = std::max<std::int64_t>(1, elements / kMinElementsPerThread);
  return std::max<std::int64_t>(1, std::min({tasks, kMaxPartialChunks, by_size}));
}

// Row buffers per worker: the gathered rows, or what the op asks for in the rows layout.
template <class Op>
inline std::int64_t scratch_rows_of(const layout& L, const Op& op) noexcept {
  return L.kind == layout_kind::gather ? Op::n_arrays : L.kind == layout_kind::rows ? op.scratch_rows() : 0;
}

// The scratch execute(L, ..., op) needs on `threads` threads: the one formula for the call and its
// *_workspace_size query.
template <class T, class Op>
inline scratch_plan execute_plan(const layout& L, const Op& op, int threads) noexcept {
  const task_split ts = split_tasks(L, threads);
  scratch_plan plan;
  if (ts.tasks == 0) return plan;
  plan.row_bytes = bytes_of(scratch_rows_of(L, op), L.cols, ts.workers, sizeof(T));
  if (Op::partial_size != 0)
    plan.partial_bytes = bytes_of(partial_chunks(ts.tasks, L.rows * L.cols), op.partial_elements(L.cols), 1,
                                  sizeof(typename Op::partial_t));
  return plan;
}

// Runs op over the layout on up to `threads` threads, its scratch from `ws` (null: allocated here). Op
// provides: n_in (arrays read), n_arrays, partial_size (0 or the partial elements one chunk needs),
// scratch_rows() (row buffers a worker needs in the rows layout), row(ptrs, r, partial, scratch),
// cols(ptrs, strides, width, r0, partial) and, with partials, finish(partials, chunks).
template <class T, class Op>
inline status execute(const layout& L, T* const* base, const Op& op, const workspace* ws, const team& tm) noexcept {
  using partial_t = typename Op::partial_t;
  const int threads = tm.threads;
  const task_split ts = split_tasks(L, threads);
  const std::int64_t tile_count = ts.tile_count, tasks = ts.tasks;
  const int workers = ts.workers;
  const std::int64_t scratch_rows = scratch_rows_of(L, op);
  scratch sc;
  if (status s = acquire(execute_plan<T>(L, op, threads), ws, sc); !s) return s;
  T* const row_buffers = static_cast<T*>(sc.rows);
  // Runs tasks [t0, t1) in order; `slot` picks the worker's row buffers.
  auto run_tasks = [&](std::int64_t t0, std::int64_t t1, std::int64_t slot, partial_t* partial) {
    if (L.kind == layout_kind::rows) {
      T* buf = scratch_rows > 0 ? row_buffers + slot * scratch_rows * L.cols : nullptr;
      row_pipeline<T> pipe;  // this worker's, for this block of rows
      pipe.prefetch = policy().prefetch(sizeof(T));
      pipe.carry_min_bytes = policy().carry_min_bytes;
      pipe.add_carry_min_bytes = policy().add_carry_min_bytes;
      pipe.prefetch_l1_max = policy().prefetch_l1_max;
      pipe.prefetch_twice = policy().prefetch_twice;
      pipe.split_loads = policy().split_loads;
      for_each_row(L, t0, t1, [&](std::int64_t r, const std::int64_t* off, const std::int64_t* next_off) {
        T *p[kMaxArrays], *next[kMaxArrays];
        for (int a = 0; a < Op::n_arrays; ++a) {
          p[a] = base[a] + off[a];
          next[a] = next_off ? base[a] + next_off[a] : nullptr;
        }
        op.row(p, next, r, partial, buf, &pipe);
      });
    } else if (L.kind == layout_kind::columns) {
      const std::int64_t inner = L.bshape[L.nb - 1];
      std::int64_t nst[kMaxArrays];
      for (int a = 0; a < Op::n_arrays; ++a) nst[a] = L.nstride[a][0];
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t o = t / tile_count, lane0 = (t % tile_count) * kColumnTile;
        std::int64_t off[kMaxArrays];
        batch_offsets(L, L.nb - 1, o, off);
        T* p[kMaxArrays];
        for (int a = 0; a < Op::n_arrays; ++a) p[a] = base[a] + off[a] + lane0;
        op.cols(p, nst, std::min(kColumnTile, inner - lane0), o * inner + lane0, partial);
      }
    } else {
      T* buf = row_buffers + slot * Op::n_arrays * L.cols;
      for_each_row(L, t0, t1, [&](std::int64_t r, const std::int64_t* off, const std::int64_t*) {
        T *p[kMaxArrays], *next[kMaxArrays] = {};
        for (int a = 0; a < Op::n_arrays; ++a) {
          p[a] = buf + a * L.cols;
          if (a < Op::n_in) copy_row(L, a, base[a] + off[a], p[a], true);
        }
        op.row(p, next, r, partial, static_cast<T*>(nullptr), static_cast<row_pipeline<T>*>(nullptr));
        for (int a = Op::n_in; a < Op::n_arrays; ++a) copy_row(L, a, base[a] + off[a], p[a], false);
      });
    }
  };

  if (Op::partial_size == 0) {
    parallel_for_on(tm, tasks, workers, [&](std::int64_t t0, std::int64_t t1, int worker) { run_tasks(t0, t1, worker, nullptr); });
    return {};
  }
  // With partials: fixed chunks of tasks, each accumulating into its own partial block.
  const std::int64_t chunks = partial_chunks(tasks, L.rows * L.cols);
  const std::int64_t psize = op.partial_elements(L.cols);
  partial_t* const partials = static_cast<partial_t*>(sc.partials);
  const int chunk_workers = static_cast<int>(std::min<std::int64_t>(workers, chunks));
  parallel_for_on(tm, chunks, chunk_workers, [&](std::int64_t k0, std::int64_t k1, int worker) {
    for (std::int64_t k = k0; k < k1; ++k) {
      // Zeroed by the worker that fills it, just before: in its cache, not swept from memory first.
      std::fill_n(partials + k * psize, psize, partial_t(0));
      run_tasks(tasks * k / chunks, tasks * (k + 1) / chunks, worker, partials + k * psize);
    }
  });
  op.finish(partials, chunks, L.cols);
  return {};
}

// Reduces chunk partials in chunk order into out[c] (for c < n), as the weight type W: each column's
// sum in double, chunk 0 first. Columns go in blocks, every chunk's part of a block read along its
// row: a column at a time would walk the partials at their stride, a power of two for power-of-two
// widths, whose 64 lines share one cache set and all miss (the backward of 512x16384 float32, 1
// thread: 1.44-1.48 ns per element that way, 0.84-0.87 this way).
template <class W, class P>
inline void reduce_partials(const P* partials, std::int64_t chunks, std::int64_t stride, std::int64_t n,
                            W* out) noexcept {
  if (!out) return;
  constexpr std::int64_t kBlock = 512;
  double sums[kBlock];
  for (std::int64_t c0 = 0; c0 < n; c0 += kBlock) {
    const std::int64_t w = std::min(kBlock, n - c0);
    std::fill_n(sums, w, 0.0);
    for (std::int64_t k = 0; k < chunks; ++k) {
      const P* row = partials + k * stride + c0;
      for (std::int64_t c = 0; c < w; ++c) sums[c] += static_cast<double>(row[c]);
    }
    for (std::int64_t c = 0; c < w; ++c) out[c0 + c] = narrow<W>(sums[c]);
  }
}

// ---- The operations, written once over any kernel set K --------------------------------------

// The norm descriptor of the public calls' `rms` flag (kernels/family.hpp): f(layer_norm_kind{}) or
// f(rms_norm_kind{}). Past this point which norm runs is a type, not a flag.
template <class F>
inline status with_norm(bool rms, F&& f) noexcept {
  return rms ? f(rms_norm_kind{}) : f(layer_norm_kind{});
}

// A row of norm N on kernel set K: the SIMD sets' row kernels take the store kind, the next row and
// the worker's pipeline (null: the row alone); the scalar set's, the row alone.
template <class K, class N, class T, class W>
inline void norm_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double eps, stat_t<T>* mean,
                     stat_t<T>* rstd, bool stream, const T* next, row_pipeline<T>* pipe) noexcept {
  if constexpr (K::pipelined) K::template norm_row<N, T, W>(x, y, n, gamma, beta, eps, mean, rstd, stream, next, pipe);
  else K::template norm_row<N, T, W>(x, y, n, gamma, beta, eps, mean, rstd);
}

// The float32 copies of a block's float16 weights (kernels/pipeline.hpp's widened_weights), made at
// the block's second row of n <= max_n elements: false (use the weights as given) before that, for
// rows too long, and without a pipeline.
template <class K, class W>
inline bool widened(row_pipeline<float16_t>* pipe, const W* gamma, const W* beta, std::int64_t n, const float*& g,
                    const float*& b) noexcept {
  if (!pipe || n > widened_weights::max_n || (!gamma && !beta)) return false;
  widened_weights& w = pipe->wide;
  if (w.rows_seen < 2) {
    if (++w.rows_seen < 2) return false;
    if (gamma) K::widen_row(gamma, w.g, n);
    if (beta) K::widen_row(beta, w.b, n);
  }
  g = gamma ? w.g : nullptr;
  b = beta ? w.b : nullptr;
  return true;
}

// The norm N of x into y: arrays x | y. (RMSNorm: beta and mean null.)
template <class K, class T, class W, class N>
struct norm_op {
  using partial_t = stat_t<T>;  // dgamma/dbeta partial sums
  static constexpr int n_in = 1, n_arrays = 2;  // x | y
  static constexpr int partial_size = 0;
  const W *gamma, *beta;
  double eps;
  stat_t<T>*mean, *rstd;
  std::int64_t n;
  bool stream;
  std::int64_t scratch_rows() const noexcept { return 0; }
  void row(T* const* p, T* const* next, std::int64_t r, partial_t*, T*, row_pipeline<T>* pipe) const noexcept {
    stat_t<T>* m = mean ? mean + r : nullptr;
    stat_t<T>* s = rstd ? rstd + r : nullptr;
    if constexpr (K::pipelined && std::is_same_v<T, float16_t> && std::is_same_v<W, float16_t>) {
      const float *g, *b;
      if (widened<K>(pipe, gamma, beta, n, g, b)) return norm_row<K, N>(p[0], p[1], n, g, b, eps, m, s, stream, next[0], pipe);
    }
    norm_row<K, N>(p[0], p[1], n, gamma, beta, eps, m, s, stream, next[0], pipe);
  }
  void cols(T* const* p, const std::int64_t* s, std::int64_t w, std::int64_t r0, partial_t*) const noexcept {
    if constexpr (N::centered)
      K::template layer_norm_cols<T, W>(p[0], s[0], p[1], s[1], n, w, gamma, beta, eps, mean ? mean + r0 : nullptr,
                                        rstd ? rstd + r0 : nullptr);
    else K::template rms_norm_cols<T, W>(p[0], s[0], p[1], s[1], n, w, gamma, eps, rstd ? rstd + r0 : nullptr);
  }
  std::int64_t partial_elements(std::int64_t) const noexcept { return 0; }
  void finish(partial_t*, std::int64_t, std::int64_t) const noexcept {}
};

// s = x + bias_in + residual, then the norm of s: arrays x, residual | s, y. Large outputs: s is built
// in a worker's row buffers (two: this row's and the next's, which K::add_norm_row builds while this
// row's y and s stream out), so memory sees two reads and two writes, as a copy of the same bytes would.
template <class K, class T, class W, class N>
struct add_norm_op {
  using partial_t = stat_t<T>;  // dgamma/dbeta partial sums
  static constexpr int n_in = 2, n_arrays = 4;
  static constexpr int partial_size = 0;
  const W *bias_in, *gamma, *beta;
  double eps;
  stat_t<T>*mean, *rstd;
  std::int64_t n;
  bool stream;
  std::int64_t scratch_rows() const noexcept { return stream ? 2 : 0; }
  void row(T* const* p, T* const* next, std::int64_t r, partial_t*, T* buf, row_pipeline<T>* pipe) const noexcept {
    stat_t<T>* m = !N::centered || !mean ? nullptr : mean + r;
    if (stream && buf) {
      if constexpr (K::pipelined)
        K::template add_norm_row<N, T, W>(p[0], p[1], bias_in, p[2], p[3], n, gamma, beta, eps, m,
                                          rstd ? rstd + r : nullptr, next[0], next[1], buf, pipe);
      else
        K::template add_norm_row<N, T, W>(p[0], p[1], bias_in, p[2], p[3], n, gamma, beta, eps, m,
                                          rstd ? rstd + r : nullptr, buf);
      return;
    }
    // The norm of s into y, prefetching `next` (the next row's x) on the way.
    K::template add_row<T, W>(p[0], p[1], bias_in, p[2], n);
    norm_row<K, N>(p[2], p[3], n, gamma, beta, eps, m, rstd ? rstd + r : nullptr, false, next[0],
                   static_cast<row_pipeline<T>*>(nullptr));
  }
  void cols(T* const* p, const std::int64_t* s, std::int64_t w, std::int64_t r0, partial_t*) const noexcept {
    K::template add_cols<T, W>(p[0], s[0], p[1], s[1], bias_in, p[2], s[2], n, w);
    if constexpr (!N::centered)
      K::template rms_norm_cols<T, W>(p[2], s[2], p[3], s[3], n, w, gamma, eps, rstd ? rstd + r0 : nullptr);
    else
      K::template layer_norm_cols<T, W>(p[2], s[2], p[3], s[3], n, w, gamma, beta, eps,
                                        mean ? mean + r0 : nullptr, rstd ? rstd + r0 : nullptr);
  }
  std::int64_t partial_elements(std::int64_t) const noexcept { return 0; }
  void finish(partial_t*, std::int64_t, std::int64_t) const noexcept {}
};

// Backward: arrays x, dy | dx. Partials per chunk: dgamma then (LayerNorm) dbeta, n each.
template <class K, class T, class W, class N>
struct norm_backward_op {
  using partial_t = stat_t<T>;  // dgamma/dbeta partial sums
  static constexpr int n_in = 2, n_arrays = 3;
  static constexpr int partial_size = 1;
  const W* gamma;
  const stat_t<T>*mean, *rstd;
  W *dgamma, *dbeta;
  std::int64_t n;
  bool stream;  // dx streamed out (large outputs)
  std::int64_t scratch_rows() const noexcept { return 0; }
  // Pipelined: the next row (r + 1, handled next by this worker) starts during this one.
  void row(T* const* p, T* const* next, std::int64_t r, partial_t* part, T*, row_pipeline<T>* pipe) const noexcept {
    const bool more = next[0] != nullptr && pipe != nullptr;
    const double m = N::centered ? static_cast<double>(mean[r]) : 0.0;
    stat_t<T>* db = N::centered ? part + n : nullptr;
    if constexpr (K::pipelined) {
      const auto run = [&](const auto* g) {  // g: gamma, or its float32 copy
        K::template norm_backward_row<N>(p[0], p[1], p[2], n, g, m, rstd[r], part, db, next[0], next[1], stream, pipe,
                                         more && N::centered ? static_cast<double>(mean[r + 1]) : 0.0,
                                         more ? static_cast<double>(rstd[r + 1]) : 0.0);
      };
      if constexpr (std::is_same_v<T, float16_t> && std::is_same_v<W, float16_t>) {
        const float *g, *unused;
        if (widened<K>(pipe, gamma, static_cast<const W*>(nullptr), n, g, unused)) return run(g);
      }
      run(gamma);
    } else {
      K::template norm_backward_row<N, T, W>(p[0], p[1], p[2], n, gamma, m, rstd[r], part, db);
    }
  }
  void cols(T* const* p, const std::int64_t* s, std::int64_t w, std::int64_t r0, partial_t* part) const noexcept {
    if constexpr (!N::centered)
      K::template rms_norm_backward_cols<T, W>(p[0], s[0], p[1], s[1], p[2], s[2], n, w, gamma, rstd + r0, part);
    else
      K::template layer_norm_backward_cols<T, W>(p[0], s[0], p[1], s[1], p[2], s[2], n, w, gamma, mean + r0,
                                                 rstd + r0, part, part + n);
  }
  std::int64_t partial_elements(std::int64_t cols) const noexcept { return N::centered ? 2 * cols : cols; }
  void finish(partial_t* partials, std::int64_t chunks, std::int64_t cols) const noexcept {
    const std::int64_t stride = partial_elements(cols);
    reduce_partials(partials, chunks, stride, cols, dgamma);
    if constexpr (N::centered) reduce_partials(partials + cols, chunks, stride, cols, dbeta);
    else if (dbeta)  // RMSNorm has no beta: zero, as on every path (each path's own: a refused call writes nothing)
      for (std::int64_t c = 0; c < cols; ++c) dbeta[c] = narrow<W>(0.0);
  }
};

// ---- The kernel sets as types ---------------------------------------------------------------------

template <class... K>
struct kernel_sets {};

// Every kernel set's `kernels`, one per isa_table row and in its order (dispatch.hpp: adding a set).
using kernel_set_list = kernel_sets<scalar::kernels, avx2::kernels, avx512::kernels, neon::kernels>;

// The kernel set a kernels type is: its isa_table row, found by its `name`.
template <class K>
inline constexpr isa kernels_isa = isa_named(K::name);

template <class K>
inline constexpr bool is_not_built = false;
template <isa I>
inline constexpr bool is_not_built<not_built<I>> = true;

template <class... K>
constexpr bool matches_isa_table(kernel_sets<K...>) noexcept {
  const isa ids[] = {kernels_isa<K>...};
  const bool named[] = {detail::isa_row(K::name) >= 0 ...};
  const bool built[] = {!is_not_built<K>...};
  if (sizeof...(K) != sizeof isa_table / sizeof isa_table[0]) return false;
  for (std::size_t r = 0; r < sizeof...(K); ++r)
    if (!named[r] || ids[r] != isa_table[r].id || built[r] != isa_table[r].compiled) return false;
  return true;
}
static_assert(matches_isa_table(kernel_set_list{}),
              "kernel_set_list: one kernels type per isa_table row, in the same order, named as the row, and "
              "a not_built<isa> exactly where the row's `compiled` is false");

// Runs f on kernel set K, noting K in the calling thread's call_record (last_call).
template <class K, class F>
inline status run_on(F& f) noexcept {
  note_kernels<K>();
  return f(K{});
}

// Runs f on K if K is the kernel set `current` and this build carries it; says whether it did.
template <class K, class F>
inline bool run_if_current([[maybe_unused]] isa current, [[maybe_unused]] F& f, [[maybe_unused]] status& s) noexcept {
  if constexpr (!is_not_built<K>) {
    if (current != kernels_isa<K>) return false;
    s = run_on<K>(f);
    return true;
  } else {
    return false;
  }
}

template <class F, class... K>
inline status run_current(kernel_sets<K...>, F& f, unsigned use) noexcept {
  const int setting = isa_setting();  // read once: the set and whether it was forced agree
  isa current = isa_of(setting);
  // The policy's per-op choice: a chosen (not forced) AVX-512 set gives these ops to the AVX2 set.
  if ((use & policy().narrow_ops) != 0 && current == isa::avx512 && !forced_in(setting) && isa_available(isa::avx2))
    current = isa::avx2;
  status s;
  if (!(run_if_current<K>(current, f, s) || ...)) s = run_on<scalar::kernels>(f);  // not reached: current runs here
  return s;
}

// Calls f(K{}) with K the kernel set in use (read once), for every call: the kernel sets come from
// kernel_set_list, so f is compiled once per kernel set this build carries. `use` (op_use bits) says
// what the call does, for the policy's per-op choice of set.
template <class F>
inline status with_kernels(F&& f, unsigned use = use_other) noexcept {
  return run_current(kernel_set_list{}, f, use);
}

// The op_use of a LayerNorm/RMSNorm forward over T, fused add & norm included (every entry point and
// layout: the same set, so the same bits; add & norm's y is the norm of its s, bit for bit).
template <class T>
inline constexpr unsigned forward_use = std::is_same_v<T, float> ? use_forward_4byte : use_other;

// ---- Huge rows: fixed chunks of a row on several threads ----------------------------------------
//
// Rows of at least kSplitRowCols elements are cut into chunks of kSplitChunk; each chunk's moments
// are computed on their own and merged in chunk order (Chan et al.), so the numbers depend on the
// row width alone. Threads then go either across rows (many rows) or across the chunks of one row
// (a few rows): the same results either way, for any thread count.

inline constexpr std::int64_t kSplitChunk = 16384;
inline constexpr std::int64_t kSplitRowCols = 4 * kSplitChunk;

inline bool splits_rows(const layout& L) noexcept { return L.kind == layout_kind::rows && L.cols >= kSplitRowCols; }
inline std::int64_t split_chunks(const layout& L) noexcept { return (L.cols + kSplitChunk - 1) / kSplitChunk; }

// The forward's scratch: the chunk moments (mean, M2) of the row each worker has in hand.
inline scratch_plan split_forward_plan(const layout& L, int threads) noexcept {
  const std::int64_t chunks = split_chunks(L);
  scratch_plan plan;
  plan.double_bytes = bytes_of(2 * chunks, workers_for(L.rows * L.cols, L.rows * chunks, threads), 1, sizeof(double));
  return plan;
}

// The backward's scratch: dgamma/dbeta partials over the whole width, and the row sums of each chunk.
template <class T>
inline scratch_plan split_backward_plan(const layout& L) noexcept {
  scratch_plan plan;
  plan.partial_bytes = bytes_of(2, L.cols, 1, sizeof(stat_t<T>));
  plan.double_bytes = bytes_of(2, split_chunks(L), 1, sizeof(double));
  return plan;
}

// Merges chunk moments (count, mean, M2) in order; returns the row's mean and biased variance.
inline void merge_moments(const double* mean, const double* m2, std::int64_t chunks, std::int64_t cols,
                          double& row_mean, double& row_var) noexcept {
  double n = 0, m = 0, s = 0;
  for (std::int64_t k = 0; k < chunks; ++k) {
    const double nk = static_cast<double>(std::min(kSplitChunk, cols - k * kSplitChunk));
    const double delta = mean[k] - m, total = n + nk;
    m += delta * (nk / total);
    s += m2[k] + delta * delta * (n * nk / total);
    n = total;
  }
  row_mean = m;
  row_var = s / n;
}

// Whether merged float statistics can be applied (the same rule as the SIMD kernels' own).
inline bool split_stats_ok(double mean, double var, double eps) noexcept {
  return std::isfinite(mean) && std::isfinite(var) && (var >= 1e-23 || eps >= 1e-12);
}

template <class K, class T, class W, class N>
inline status split_rows_forward(const layout& L, T* x, T* y, const W* gamma, const W* beta, double eps,
                                 stat_t<T>* mean, stat_t<T>* rstd, bool stream, const workspace* ws,
                                 const team& tm) noexcept {
  const int threads = tm.threads;
  const std::int64_t cols = L.cols, chunks = split_chunks(L);
  const int workers = workers_for(L.rows * cols, L.rows * chunks, threads);
  scratch sc;
  if (status s = acquire(split_forward_plan(L, threads), ws, sc); !s) return s;
  double* const buf = sc.doubles;  // per worker: chunk means, then chunk M2s
  // One row: chunk moments [k0, k1) into its slice of buf.
  auto chunk_moments = [&](const T* xr, double* m, double* m2, std::int64_t k0, std::int64_t k1) {
    for (std::int64_t k = k0; k < k1; ++k) {
      const std::int64_t len = std::min(kSplitChunk, cols - k * kSplitChunk);
      if constexpr (!N::centered) {
        m[k] = 0;
        K::template sum_squares<T>(xr + k * kSplitChunk, len, m2[k]);
      } else {
        K::template moments<T>(xr + k * kSplitChunk, len, m[k], m2[k]);
      }
    }
  };
  // One row: merged statistics, then (if they can be trusted) chunks [k0, k1) normalized.
  auto row_stats = [&](std::int64_t r, double* m, double* m2, double& row_mean, double& r_apply) -> bool {
    double var = 0;
    if constexpr (!N::centered) {
      row_mean = 0;
      for (std::int64_t k = 0; k < chunks; ++k) var += m2[k];
      var /= static_cast<double>(cols);
    } else {
      merge_moments(m, m2, chunks, cols, row_mean, var);
    }
    if (!split_stats_ok(row_mean, var, eps)) return false;
    r_apply = var + eps > 0 ? 1.0 / std::sqrt(var + eps) : 0.0;
    if (mean) mean[r] = static_cast<stat_t<T>>(row_mean);
    if (rstd) rstd[r] = static_cast<stat_t<T>>(1.0 / std::sqrt(var + eps));
    return true;
  };
  auto apply = [&](const T* xr, T* yr, double row_mean, double r_apply, std::int64_t k0, std::int64_t k1) {
    for (std::int64_t k = k0; k < k1; ++k) {
      const std::int64_t o = k * kSplitChunk, len = std::min(kSplitChunk, cols - o);
      K::template apply_norm<T, W>(xr + o, yr + o, len, gamma ? gamma + o : gamma, beta ? beta + o : beta, row_mean,
                                   r_apply, stream);
    }
  };
  // Statistics the float chunks cannot give (overflow, Inf/NaN, underflow): the whole-row kernel.
  auto whole_row = [&](std::int64_t r, const T* xr, T* yr) {
    norm_row<K, N>(xr, yr, cols, gamma, beta, eps, mean ? mean + r : nullptr, rstd ? rstd + r : nullptr, stream,
                     static_cast<const T*>(nullptr), static_cast<row_pipeline<T>*>(nullptr));
  };
  if (L.rows >= workers) {
    parallel_for_on(tm, L.rows, workers, [&](std::int64_t r0, std::int64_t r1, int worker) {
      double* m = buf + 2 * chunks * worker;
      for_each_row(L, r0, r1, [&](std::int64_t r, const std::int64_t* off, const std::int64_t*) {
        chunk_moments(x + off[0], m, m + chunks, 0, chunks);
        double row_mean = 0, r_apply = 0;
        if (row_stats(r, m, m + chunks, row_mean, r_apply)) apply(x + off[0], y + off[1], row_mean, r_apply, 0, chunks);
        else whole_row(r, x + off[0], y + off[1]);
      });
    });
    return {};
  }
  // A few rows, one after another, each on every worker: one slice of chunk moments.
  double* m = buf;
  for_each_row(L, 0, L.rows, [&](std::int64_t r, const std::int64_t* off, const std::int64_t*) {
    parallel_for_on(tm, chunks, workers, [&](std::int64_t k0, std::int64_t k1, int) { chunk_moments(x + off[0], m, m + chunks, k0, k1); });
    double row_mean = 0, r_apply = 0;
    if (row_stats(r, m, m + chunks, row_mean, r_apply))
      parallel_for_on(tm, chunks, workers, [&](std::int64_t k0, std::int64_t k1, int) { apply(x + off[0], y + off[1], row_mean, r_apply, k0, k1); });
    else
      whole_row(r, x + off[0], y + off[1]);
  });
  return {};
}

template <class K, class T, class W, class N>
inline status split_rows_backward(const layout& L, T* x, T* dy, T* dx, const W* gamma, const stat_t<T>* mean,
                                  const stat_t<T>* rstd, W* dgamma, W* dbeta, const workspace* ws, const team& tm) noexcept {
  const std::int64_t cols = L.cols, chunks = split_chunks(L);
  const int workers = workers_for(L.rows * cols, chunks, tm.threads);
  // dgamma/dbeta partials: one set over the whole width, rows added in row order (chunks of columns
  // are disjoint, so threads never share an element); row sums per chunk, merged in chunk order.
  scratch sc;
  if (status s = acquire(split_backward_plan<T>(L), ws, sc); !s) return s;
  stat_t<T>* const partial = static_cast<stat_t<T>*>(sc.partials);
  double* const sums = sc.doubles;
  std::fill_n(partial, 2 * cols, stat_t<T>(0));
  stat_t<T>* dg = dgamma ? partial : nullptr;
  stat_t<T>* db = (dbeta && N::centered) ? partial + cols : nullptr;
  for_each_row(L, 0, L.rows, [&](std::int64_t r, const std::int64_t* off, const std::int64_t*) {
    const double m = N::centered ? static_cast<double>(mean[r]) : 0.0, rs = static_cast<double>(rstd[r]);
    parallel_for_on(tm, chunks, workers, [&](std::int64_t k0, std::int64_t k1, int) {
      for (std::int64_t k = k0; k < k1; ++k) {
        const std::int64_t o = k * kSplitChunk, len = std::min(kSplitChunk, cols - o);
        K::template backward_sums<N, T, W>(x + off[0] + o, dy + off[1] + o, len, gamma ? gamma + o : gamma, m, rs,
                                        dg ? dg + o : dg, db ? db + o : db, sums[2 * k], sums[2 * k + 1]);
      }
    });
    double sg = 0, sgx = 0;
    for (std::int64_t k = 0; k < chunks; ++k) sg += sums[2 * k], sgx += sums[2 * k + 1];
    const double c1 = N::centered ? sg / static_cast<double>(cols) : 0.0, c2 = sgx / static_cast<double>(cols);
    parallel_for_on(tm, chunks, workers, [&](std::int64_t k0, std::int64_t k1, int) {
      for (std::int64_t k = k0; k < k1; ++k) {
        const std::int64_t o = k * kSplitChunk, len = std::min(kSplitChunk, cols - o);
        K::template backward_apply<N, T, W>(x + off[0] + o, dy + off[1] + o, dx + off[2] + o, len,
                                         gamma ? gamma + o : gamma, m, rs, c1, c2);
      }
    });
  });
  for (std::int64_t c = 0; c < cols; ++c) {
    if (dgamma) dgamma[c] = narrow<W>(static_cast<double>(partial[c]));
    if (dbeta) dbeta[c] = N::centered ? narrow<W>(static_cast<double>(partial[cols + c])) : narrow<W>(0.0);
  }
  return {};
}

// Whether a row-layout output of this size is written with non-temporal stores (if not in place): as
// this CPU's policy says for the element size (lnorm/policy.hpp).
inline bool may_stream(const layout& L, std::size_t elem) noexcept {
  const cpu_policy& p = policy();
  return p.streams(elem) && L.kind == layout_kind::rows &&
         L.rows * L.cols * static_cast<std::int64_t>(elem) >= p.stream_min_bytes;
}

// Whether a row-layout output should be written with non-temporal stores: large, and not in place
// (in place, the lines were just read and sit in cache anyway).
inline bool streams(const layout& L, const void* out, const void* in, std::size_t elem) noexcept {
  return out != in && may_stream(L, elem);
}

// ---- Argument checks: every call's, in one place (the aliasing and eps rules: rules.hpp) ----------

inline constexpr std::int64_t kMaxInt64 = std::numeric_limits<std::int64_t>::max();

// a * b for a, b >= 0, or false when it overflows int64 (no division for factors under 2^31, the
// common case: a division costs more than the rest of a call's checks).
inline bool mul_fits(std::int64_t a, std::int64_t b, std::int64_t& out) noexcept {
  if (((a | b) >> 31) != 0 && a != 0 && b > kMaxInt64 / a) return false;
  out = a * b;
  return true;
}

// The problem of an N-d call: ndim, shape and the normalized axes; `rows` and `cols` get the number
// of rows (product of the other axes, 0 for an empty batch) and of normalized elements.
inline status check_problem(int ndim, const std::int64_t* shape, const bool* normalized, std::int64_t& rows,
                            std::int64_t& cols) noexcept {
  rows = 0;
  cols = 1;
  if (ndim < 1 || ndim > kMaxDims) return fail("shape: ndim must be between 1 and 64");
  if (!shape) return fail("shape: null pointer");
  if (!normalized) return fail("normalized: null pointer");
  bool any = false, empty = false;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] < 0) return fail("shape: negative dimension");
    empty |= shape[d] == 0 && !normalized[d];
    if (normalized[d]) {
      any = true;
      if (shape[d] == 0) return fail("axis: the normalized axes must not be empty");
    }
  }
  if (!any) return fail("axis: no axis to normalize over");
  std::int64_t count = 1, batch = 1;  // rows * cols and rows, over the nonzero dimensions
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] == 0) continue;
    if (!mul_fits(count, shape[d], count)) return fail("shape: the number of elements overflows int64");
    if (normalized[d]) cols *= shape[d];
    else batch *= shape[d];
  }
  rows = empty ? 0 : batch;
  return {};
}

// The rows and cols of a row-range call.
inline status check_rows(std::int64_t rows, std::int64_t cols) noexcept {
  if (rows < 0) return fail("rows: must be >= 0");
  if (cols < 1) return fail("cols: must be >= 1");
  std::int64_t count = 0;
  if (!mul_fits(rows, cols, count)) return fail("rows: rows * cols overflows int64");
  return {};
}

inline status check_eps(double eps) noexcept {
  if (const char* m = rules::check_eps(eps)) return fail(m);
  return {};
}

inline status check_arrays(rules::operands& ops) noexcept {
  if (const char* m = ops.check()) return fail(m);
  return {};
}

// Views of the arguments, for the aliasing rule: an N-d argument (shape of the call) and a row-range
// argument (rows x cols, `ld` apart). Vectors of n elements (weights, statistics): operands::vector.
template <class T>
inline array_view nd_view(const strided& a, int ndim, const std::int64_t* shape) noexcept {
  return {a.data, ndim, shape, a.strides, sizeof(T)};
}
// A row-range argument's shape {rows, cols} and strides {ld, 1}, kept alive for its view.
struct row_layout {
  std::int64_t shape[2];
  std::int64_t strides[2];
  template <class T>
  array_view view(const T* p) const noexcept {
    return {p, 2, shape, strides, sizeof(T)};
  }
};

// ---- The scratch of each N-d call, for its layout on `threads` threads: one formula for the call and
// ---- its *_workspace_size query, so that the two agree by construction.

template <class T, class N>
inline scratch_plan norm_plan(const layout& L, int threads) noexcept {
  if (L.rows == 0) return {};
  if (splits_rows(L)) return split_forward_plan(L, threads);
  return execute_plan<T>(L, norm_op<scalar::kernels, T, T, N>{}, threads);
}

// `stream`: whether the call streams its outputs (the query assumes it may, the larger need).
template <class T>
inline scratch_plan add_norm_plan(const layout& L, bool stream, int threads) noexcept {
  if (L.rows == 0) return {};
  add_norm_op<scalar::kernels, T, T, layer_norm_kind> op{};
  op.stream = stream;
  return execute_plan<T>(L, op, threads);
}

template <class T>
inline scratch_plan norm_backward_plan(bool rms, const layout& L, int threads) noexcept {
  if (L.rows == 0) return {};
  if (splits_rows(L)) return split_backward_plan<T>(L);
  if (rms) return execute_plan<T>(L, norm_backward_op<scalar::kernels, T, T, rms_norm_kind>{}, threads);
  return execute_plan<T>(L, norm_backward_op<scalar::kernels, T, T, layer_norm_kind>{}, threads);
}

// The layout of a query's problem; false for a problem the call would refuse for its shape or strides
// (whatever the data pointers), or that has no rows (it needs no workspace).
inline bool query_layout(layout& L, int ndim, const std::int64_t* shape, const bool* normalized, int narrays,
                         const std::int64_t* const* strides, std::size_t elem) noexcept {
  std::int64_t rows = 0, cols = 0;
  if (!check_problem(ndim, shape, normalized, rows, cols)) return false;
  for (int a = 0; a < narrays; ++a) {
    bool empty = false;
    std::uint64_t below = 0, above = 0;
    if (!strides[a] || !rules::reach_of({nullptr, ndim, shape, strides[a], elem}, empty, below, above)) return false;
  }
  if (rows == 0) return false;
  build_layout(L, ndim, shape, normalized, narrays, strides);
  return true;
}

inline int query_threads(int num_threads) noexcept {
  return num_threads > 0 ? clamp_threads(num_threads) : get_num_threads();
}

}  // namespace detail

// ============================================================================================
// N-d calls: any shape, any strides (in elements), any set of normalized axes
// ============================================================================================
//
// `normalized[d]` marks the axes normalized over. gamma, beta and bias_in are contiguous over the
// normalized axes (row-major in their original order); mean and rstd are contiguous over the others.
// Any of gamma, beta, bias_in, mean, rstd may be null (nullptr needs no template argument for W: the
// weight parameters take no part in deduction, and W defaults to T). A problem with no rows (a batch
// axis of size 0) is accepted with null data pointers and writes nothing (the backward's dgamma and
// dbeta, sums over no rows, are set to zeros).
//
// Arguments are checked before anything is written (a refused call returns invalid_argument and a
// message naming the argument: see `status`). Aliasing, the same rule in every call (rules.hpp): no
// output overlaps itself (zero strides, broadcast views), no output shares a byte with another
// argument, except that an output may be exactly its input, in place (same data pointer, same
// strides on every dimension of size > 1): y may be x; in the fused add s may be x or residual, and
// y may be x or residual but never overlaps s. The backward's dx may not overlap dy or x. Inputs may
// overlap each other freely. Disjoint views of one buffer (the two halves of each row, even and odd
// columns) are fine. eps: any finite number >= 0.
//
// The calls run on get_num_threads() threads (OpenMP, or the engine's pool: set_thread_pool), read
// once when the call starts. What they need besides their arrays (nothing, for contiguous rows
// narrower than 65536 in the forward calls) comes from `ws` when given, and the call then never
// allocates; with ws null, the call allocates it. See `workspace` and the *_workspace_size queries.
//
//   const std::int64_t shape[4] = {8, 96, 56, 56}, st[4] = {96 * 56 * 56, 56 * 56, 56, 1};
//   const bool norm[4] = {false, true, false, false};              // LayerNorm over channels of NCHW
//   lnorm::try_layer_norm_nd<float>(4, shape, norm, {x, st}, {y, st}, g, b, 1e-6, nullptr, nullptr);

namespace detail {
// Norm N (LayerNorm, or RMSNorm with beta and mean null) over an N-d strided tensor: the one body of
// try_layer_norm_nd and try_rms_norm_nd.
template <class T, class W, class N>
status norm_nd(int ndim, const std::int64_t* shape, const bool* normalized, strided x, strided y, const W* gamma,
               const W* beta, double eps, stat_t<T>* mean, stat_t<T>* rstd, const workspace* ws) noexcept {
  using rules::arg;
  begin_call();
  std::int64_t rows = 0, cols = 0;
  if (status s = check_problem(ndim, shape, normalized, rows, cols); !s) return s;
  if (status s = check_eps(eps); !s) return s;
  rules::operands ops;
  ops.input(arg::x, nd_view<T>(x, ndim, shape));
  ops.output(arg::y, nd_view<T>(y, ndim, shape), rules::bit(arg::x));
  if (gamma) ops.vector(arg::gamma, gamma, cols, sizeof(*gamma), false);
  if (beta) ops.vector(arg::beta, beta, cols, sizeof(*beta), false);
  if (mean) ops.vector(arg::mean, mean, rows, sizeof(*mean), true);
  if (rstd) ops.vector(arg::rstd, rstd, rows, sizeof(*rstd), true);
  if (status s = check_arrays(ops); !s) return s;
  if (rows == 0) return {};
  const std::int64_t* st[2] = {x.strides, y.strides};
  layout L;
  build_layout(L, ndim, shape, normalized, 2, st);
  T* base[2] = {const_cast<T*>(static_cast<const T*>(x.data)), static_cast<T*>(const_cast<void*>(y.data))};
  const bool stream = streams(L, y.data, x.data, sizeof(T));
  const team tm = current_team();
  return with_kernels([&](auto k) {
    using K = decltype(k);
    if (splits_rows(L)) return split_rows_forward<K, T, W, N>(L, base[0], base[1], gamma, beta, eps, mean, rstd, stream, ws, tm);
    return execute(L, base, norm_op<K, T, W, N>{gamma, beta, eps, mean, rstd, L.cols, stream}, ws, tm);
  }, forward_use<T>);
}
}  // namespace detail

/// LayerNorm over the normalized axes of an N-d strided tensor; returns a status. y may be x.
///   lnorm::status s = lnorm::try_layer_norm_nd<float>(4, shape, norm, {x, st}, {y, st}, g, b, 1e-5, mean, rstd);
template <class T, class W = T>
status try_layer_norm_nd(int ndim, const std::int64_t* shape, const bool* normalized, strided x, strided y,
                         const detail::identity_t<W>* gamma, const detail::identity_t<W>* beta, double eps,
                         stat_t<T>* mean, stat_t<T>* rstd, const workspace* ws = nullptr) noexcept {
  return detail::norm_nd<T, W, detail::layer_norm_kind>(ndim, shape, normalized, x, y, gamma, beta, eps, mean, rstd, ws);
}

/// RMSNorm over the normalized axes of an N-d strided tensor; returns a status. y may be x.
///   lnorm::status s = lnorm::try_rms_norm_nd<float>(3, shape, norm, {x, st}, {y, st}, g, 1e-6, rstd);
template <class T, class W = T>
status try_rms_norm_nd(int ndim, const std::int64_t* shape, const bool* normalized, strided x, strided y,
                       const detail::identity_t<W>* gamma, double eps, stat_t<T>* rstd,
                       const workspace* ws = nullptr) noexcept {
  return detail::norm_nd<T, W, detail::rms_norm_kind>(ndim, shape, normalized, x, y, gamma, static_cast<const W*>(nullptr),
                                                      eps, static_cast<stat_t<T>*>(nullptr), rstd, ws);
}

/// s = x + bias_in + residual (rounded to T), y = layer_norm(s) (rms_norm(s) with `rms`; beta and mean
/// are then ignored), in one call. s may be x or residual (in place), y may be x or residual, but y
/// never overlaps s.
///   // the residual stream h updated in place: h += attn; y = rms_norm(h)
///   lnorm::try_add_norm_nd<float>(true, 2, shape, norm, {attn, st}, {h, st}, nullptr, {h, st}, {y, st}, g,
///                                 nullptr, 1e-6, nullptr, nullptr);
template <class T, class W = T>
status try_add_norm_nd(bool rms, int ndim, const std::int64_t* shape, const bool* normalized, strided x,
                       strided residual, const detail::identity_t<W>* bias_in, strided s, strided y,
                       const detail::identity_t<W>* gamma, const detail::identity_t<W>* beta, double eps,
                       stat_t<T>* mean, stat_t<T>* rstd, const workspace* ws = nullptr) noexcept {
  using rules::arg;
  detail::begin_call();
  std::int64_t rows = 0, cols = 0;
  if (status st = detail::check_problem(ndim, shape, normalized, rows, cols); !st) return st;
  if (status st = detail::check_eps(eps); !st) return st;
  if (rms) beta = nullptr, mean = nullptr;  // ignored
  const unsigned inputs = rules::bit(arg::x) | rules::bit(arg::residual);
  rules::operands ops;
  ops.input(arg::x, detail::nd_view<T>(x, ndim, shape));
  ops.input(arg::residual, detail::nd_view<T>(residual, ndim, shape));
  if (bias_in) ops.vector(arg::bias_in, bias_in, cols, sizeof(*bias_in), false);
  ops.output(arg::s, detail::nd_view<T>(s, ndim, shape), inputs);
  ops.output(arg::y, detail::nd_view<T>(y, ndim, shape), inputs);
  if (gamma) ops.vector(arg::gamma, gamma, cols, sizeof(*gamma), false);
  if (beta) ops.vector(arg::beta, beta, cols, sizeof(*beta), false);
  if (mean) ops.vector(arg::mean, mean, rows, sizeof(*mean), true);
  if (rstd) ops.vector(arg::rstd, rstd, rows, sizeof(*rstd), true);
  if (status st = detail::check_arrays(ops); !st) return st;
  if (rows == 0) return {};
  const std::int64_t* st[4] = {x.strides, residual.strides, s.strides, y.strides};
  detail::layout L;
  detail::build_layout(L, ndim, shape, normalized, 4, st);
  T* base[4] = {const_cast<T*>(static_cast<const T*>(x.data)), const_cast<T*>(static_cast<const T*>(residual.data)),
                static_cast<T*>(const_cast<void*>(s.data)), static_cast<T*>(const_cast<void*>(y.data))};
  // Streamed only when neither output is an input (in place, the lines are in cache already).
  const bool stream = detail::streams(L, y.data, x.data, sizeof(T)) && y.data != residual.data &&
                      s.data != x.data && s.data != residual.data;
  const detail::team tm = detail::current_team();
  return detail::with_kernels([&](auto k) {
    using K = decltype(k);
    return detail::with_norm(rms, [&](auto kind) {
      using N = decltype(kind);
      return detail::execute(L, base, detail::add_norm_op<K, T, W, N>{bias_in, gamma, beta, eps, mean, rstd, L.cols, stream},
                             ws, tm);
    });
  }, detail::forward_use<T>);
}

/// Backward of layer_norm (rms_norm with `rms`; mean is then ignored): dx from dy, x and the forward's
/// statistics; dgamma and dbeta (if not null) summed over the batch in a fixed order, so the same
/// bits for any thread count. With `rms`, a non-null dbeta is set to zeros. dx may not overlap any
/// other argument (not even be dy: refused).
///   lnorm::try_norm_backward_nd<float>(false, 2, shape, norm, {dy, st}, {x, st}, mean, rstd, g, {dx, st}, dg, db);
template <class T, class W = T>
status try_norm_backward_nd(bool rms, int ndim, const std::int64_t* shape, const bool* normalized, strided dy,
                            strided x, const stat_t<T>* mean, const stat_t<T>* rstd, const detail::identity_t<W>* gamma,
                            strided dx, detail::identity_t<W>* dgamma, detail::identity_t<W>* dbeta,
                            const workspace* ws = nullptr) noexcept {
  using rules::arg;
  detail::begin_call();
  std::int64_t rows = 0, cols = 0;
  if (status s = detail::check_problem(ndim, shape, normalized, rows, cols); !s) return s;
  if (rms) mean = nullptr;  // ignored
  rules::operands ops;
  ops.input(arg::dy, detail::nd_view<T>(dy, ndim, shape));
  ops.input(arg::x, detail::nd_view<T>(x, ndim, shape));
  if (!rms) ops.vector(arg::mean, mean, rows, sizeof(*mean), false);  // needed: a null one with rows is refused
  ops.vector(arg::rstd, rstd, rows, sizeof(*rstd), false);
  if (gamma) ops.vector(arg::gamma, gamma, cols, sizeof(*gamma), false);
  ops.output(arg::dx, detail::nd_view<T>(dx, ndim, shape));
  if (dgamma) ops.vector(arg::dgamma, dgamma, cols, sizeof(*dgamma), true);
  if (dbeta) ops.vector(arg::dbeta, dbeta, cols, sizeof(*dbeta), true);
  if (status s = detail::check_arrays(ops); !s) return s;
  if (rows == 0) {
    for (std::int64_t c = 0; c < cols; ++c) {
      if (dgamma) dgamma[c] = narrow<W>(0.0);
      if (dbeta) dbeta[c] = narrow<W>(0.0);
    }
    return {};
  }
  const std::int64_t* st[3] = {x.strides, dy.strides, dx.strides};
  detail::layout L;
  detail::build_layout(L, ndim, shape, normalized, 3, st);
  T* base[3] = {const_cast<T*>(static_cast<const T*>(x.data)), const_cast<T*>(static_cast<const T*>(dy.data)),
                static_cast<T*>(const_cast<void*>(dx.data))};
  const detail::team tm = detail::current_team();
  const bool stream = detail::streams(L, dx.data, x.data, sizeof(T));
  return detail::with_kernels([&](auto k) {
    using K = decltype(k);
    return detail::with_norm(rms, [&](auto kind) {
      using N = decltype(kind);
      if (detail::splits_rows(L))
        return detail::split_rows_backward<K, T, W, N>(L, base[0], base[1], base[2], gamma, mean, rstd, dgamma, dbeta, ws,
                                                       tm);
      return detail::execute(L, base, detail::norm_backward_op<K, T, W, N>{gamma, mean, rstd, dgamma, dbeta, L.cols, stream},
                             ws, tm);
    });
  });
}

// ---- Workspace queries ---------------------------------------------------------------------------
//
// Each says how many bytes of `workspace` its N-d call needs for a problem (the same shape,
// normalized axes and strides, in elements, as the call gets) on `num_threads` threads (clamped to
// kMaxThreads); 0 (the default) means get_num_threads() now, which is what the call reads when it
// runs. A workspace sized for n threads serves any call on n threads or fewer; after set_num_threads
// or set_thread_pool with more, ask again. The answer is 0 when the call needs no workspace, and for
// a problem the call would refuse for its shape or strides (it then says why). The data pointers do
// not matter, only the layout.

/// Bytes of workspace try_layer_norm_nd needs.
///   std::vector<unsigned char> arena(lnorm::layer_norm_workspace_size<float>(4, shape, norm, st, st));
template <class T>
std::size_t layer_norm_workspace_size(int ndim, const std::int64_t* shape, const bool* normalized,
                                      const std::int64_t* x_strides, const std::int64_t* y_strides,
                                      int num_threads = 0) noexcept {
  const std::int64_t* st[2] = {x_strides, y_strides};
  detail::layout L;
  if (!detail::query_layout(L, ndim, shape, normalized, 2, st, sizeof(T))) return 0;
  return detail::norm_plan<T, detail::layer_norm_kind>(L, detail::query_threads(num_threads)).bytes();
}

/// Bytes of workspace try_rms_norm_nd needs.
///   std::vector<unsigned char> arena(lnorm::rms_norm_workspace_size<float>(2, shape, norm, st, st));
template <class T>
std::size_t rms_norm_workspace_size(int ndim, const std::int64_t* shape, const bool* normalized,
                                    const std::int64_t* x_strides, const std::int64_t* y_strides,
                                    int num_threads = 0) noexcept {
  const std::int64_t* st[2] = {x_strides, y_strides};
  detail::layout L;
  if (!detail::query_layout(L, ndim, shape, normalized, 2, st, sizeof(T))) return 0;
  return detail::norm_plan<T, detail::rms_norm_kind>(L, detail::query_threads(num_threads)).bytes();
}

/// Bytes of workspace try_add_norm_nd needs (LayerNorm or RMSNorm alike): a row buffer per thread when
/// its outputs are 16 MiB or more and not in place, gather buffers for layouts that need them.
///   const std::size_t bytes = lnorm::add_norm_workspace_size<float>(2, shape, norm, st, st, st, st);
template <class T>
std::size_t add_norm_workspace_size(int ndim, const std::int64_t* shape, const bool* normalized,
                                    const std::int64_t* x_strides, const std::int64_t* residual_strides,
                                    const std::int64_t* s_strides, const std::int64_t* y_strides,
                                    int num_threads = 0) noexcept {
  const std::int64_t* st[4] = {x_strides, residual_strides, s_strides, y_strides};
  detail::layout L;
  if (!detail::query_layout(L, ndim, shape, normalized, 4, st, sizeof(T))) return 0;
  return detail::add_norm_plan<T>(L, detail::may_stream(L, sizeof(T)), detail::query_threads(num_threads)).bytes();
}

/// Bytes of workspace try_norm_backward_nd needs: the dgamma/dbeta partials (up to 64 sets, summed in
/// a fixed order), and gather buffers for layouts that need them.
///   const std::size_t bytes = lnorm::norm_backward_workspace_size<float>(false, 2, shape, norm, st, st, st);
template <class T>
std::size_t norm_backward_workspace_size(bool rms, int ndim, const std::int64_t* shape, const bool* normalized,
                                         const std::int64_t* dy_strides, const std::int64_t* x_strides,
                                         const std::int64_t* dx_strides, int num_threads = 0) noexcept {
  const std::int64_t* st[3] = {x_strides, dy_strides, dx_strides};
  detail::layout L;
  if (!detail::query_layout(L, ndim, shape, normalized, 3, st, sizeof(T))) return 0;
  return detail::norm_backward_plan<T>(rms, L, detail::query_threads(num_threads)).bytes();
}

// ============================================================================================
// Contiguous rows: the calls an inference engine makes
// ============================================================================================

/// LayerNorm of `rows` rows of `cols` elements, row r at x + r*ld_x (y + r*ld_y); returns a status.
/// The arguments follow the N-d calls' rules (y may be x; rows == 0 accepts null pointers).
///   lnorm::status s = lnorm::try_layer_norm(x, cols, y, cols, rows, cols, gamma, beta, 1e-5, mean, rstd);
template <class T, class W = T>
status try_layer_norm(const T* x, std::int64_t ld_x, T* y, std::int64_t ld_y, std::int64_t rows, std::int64_t cols,
                      const detail::identity_t<W>* gamma, const detail::identity_t<W>* beta, double eps,
                      stat_t<T>* mean = nullptr, stat_t<T>* rstd = nullptr) noexcept {
  detail::begin_call();
  if (status s = detail::check_rows(rows, cols); !s) return s;
  const std::int64_t shape[2] = {rows, cols}, sx[2] = {ld_x, 1}, sy[2] = {ld_y, 1};
  const bool norm[2] = {false, true};
  return try_layer_norm_nd<T, W>(2, shape, norm, {x, sx}, {y, sy}, gamma, beta, eps, mean, rstd);
}

/// RMSNorm of `rows` rows of `cols` elements with row strides; returns a status.
///   lnorm::status s = lnorm::try_rms_norm(x, cols, y, cols, rows, cols, gamma, 1e-6, rstd);
template <class T, class W = T>
status try_rms_norm(const T* x, std::int64_t ld_x, T* y, std::int64_t ld_y, std::int64_t rows, std::int64_t cols,
                    const detail::identity_t<W>* gamma, double eps, stat_t<T>* rstd = nullptr) noexcept {
  detail::begin_call();
  if (status s = detail::check_rows(rows, cols); !s) return s;
  const std::int64_t shape[2] = {rows, cols}, sx[2] = {ld_x, 1}, sy[2] = {ld_y, 1};
  const bool norm[2] = {false, true};
  return try_rms_norm_nd<T, W>(2, shape, norm, {x, sx}, {y, sy}, gamma, eps, rstd);
}

// ============================================================================================
// Row ranges on the calling thread: for engines with their own threads. These never allocate and
// never start threads; an engine splits its rows among its workers and calls these per range. Their
// arguments follow the N-d calls' rules: row r of an array at p + r*ld_p; outputs' rows must not
// overlap one another (|ld| >= cols) nor any other argument, except where a call allows in place;
// rows == 0 accepts null pointers and writes nothing.
// ============================================================================================

/// LayerNorm of rows [0, rows) on the calling thread: row r at x + r*ld_x, written to y + r*ld_y
/// (y may be x). mean/rstd (may be null) get one value per row. No allocation, no threads.
///   // in an engine's worker w of W:
///   const std::int64_t r0 = rows * w / W, r1 = rows * (w + 1) / W;
///   lnorm::layer_norm_rows(x + r0 * cols, cols, y + r0 * cols, cols, r1 - r0, cols, g, b, 1e-5);
template <class T, class W = T>
status layer_norm_rows(const T* x, std::int64_t ld_x, T* y, std::int64_t ld_y, std::int64_t rows, std::int64_t cols,
                       const detail::identity_t<W>* gamma, const detail::identity_t<W>* beta, double eps,
                       stat_t<T>* mean = nullptr, stat_t<T>* rstd = nullptr) noexcept {
  using rules::arg;
  detail::begin_call();
  if (status s = detail::check_rows(rows, cols); !s) return s;
  if (status s = detail::check_eps(eps); !s) return s;
  const detail::row_layout lx{{rows, cols}, {ld_x, 1}}, ly{{rows, cols}, {ld_y, 1}};
  rules::operands ops;
  ops.input(arg::x, lx.view(x));
  ops.output(arg::y, ly.view(y), rules::bit(arg::x));
  if (gamma) ops.vector(arg::gamma, gamma, cols, sizeof(*gamma), false);
  if (beta) ops.vector(arg::beta, beta, cols, sizeof(*beta), false);
  if (mean) ops.vector(arg::mean, mean, rows, sizeof(*mean), true);
  if (rstd) ops.vector(arg::rstd, rstd, rows, sizeof(*rstd), true);
  if (status s = detail::check_arrays(ops); !s) return s;
  if (rows == 0) return {};
  return detail::with_kernels([&](auto k) {
    using K = decltype(k);
    for (std::int64_t r = 0; r < rows; ++r)
      detail::norm_row<K, detail::layer_norm_kind>(x + r * ld_x, y + r * ld_y, cols, gamma, beta, eps, mean ? mean + r : nullptr,
                                 rstd ? rstd + r : nullptr, false, static_cast<const T*>(nullptr),
                                 static_cast<detail::row_pipeline<T>*>(nullptr));
    detail::note_region(1, 1);
    return status{};
  }, detail::forward_use<T>);
}

/// RMSNorm of rows [0, rows) on the calling thread (see layer_norm_rows; y may be x).
///   lnorm::rms_norm_rows(x, cols, y, cols, rows, cols, g, 1e-6);
template <class T, class W = T>
status rms_norm_rows(const T* x, std::int64_t ld_x, T* y, std::int64_t ld_y, std::int64_t rows, std::int64_t cols,
                     const detail::identity_t<W>* gamma, double eps, stat_t<T>* rstd = nullptr) noexcept {
  using rules::arg;
  detail::begin_call();
  if (status s = detail::check_rows(rows, cols); !s) return s;
  if (status s = detail::check_eps(eps); !s) return s;
  const detail::row_layout lx{{rows, cols}, {ld_x, 1}}, ly{{rows, cols}, {ld_y, 1}};
  rules::operands ops;
  ops.input(arg::x, lx.view(x));
  ops.output(arg::y, ly.view(y), rules::bit(arg::x));
  if (gamma) ops.vector(arg::gamma, gamma, cols, sizeof(*gamma), false);
  if (rstd) ops.vector(arg::rstd, rstd, rows, sizeof(*rstd), true);
  if (status s = detail::check_arrays(ops); !s) return s;
  if (rows == 0) return {};
  return detail::with_kernels([&](auto k) {
    using K = decltype(k);
    for (std::int64_t r = 0; r < rows; ++r)
      detail::norm_row<K, detail::rms_norm_kind>(x + r * ld_x, y + r * ld_y, cols, gamma, static_cast<const W*>(nullptr), eps,
                                static_cast<stat_t<T>*>(nullptr), rstd ? rstd + r : nullptr, false,
                                static_cast<const T*>(nullptr), static_cast<detail::row_pipeline<T>*>(nullptr));
    detail::note_region(1, 1);
    return status{};
  }, detail::forward_use<T>);
}

/// The transformer block's "add & norm" on rows [0, rows), calling thread:
/// s = x + bias_in + residual (rounded to T), y = layer_norm(s), or rms_norm(s) with `rms` (beta and
/// mean are then ignored). bias_in, gamma, beta may be null; s may be x or residual (the residual
/// stream updated in place); y may be x or residual, but never overlaps s.
///   lnorm::add_norm_rows(false, h, d, attn_out, d, nullptr, h, d, normed, d, tokens, d, g, b, 1e-5);
template <class T, class W = T>
status add_norm_rows(bool rms, const T* x, std::int64_t ld_x, const T* residual, std::int64_t ld_r,
                     const detail::identity_t<W>* bias_in, T* s, std::int64_t ld_s, T* y, std::int64_t ld_y,
                     std::int64_t rows, std::int64_t cols, const detail::identity_t<W>* gamma,
                     const detail::identity_t<W>* beta, double eps, stat_t<T>* mean = nullptr,
                     stat_t<T>* rstd = nullptr) noexcept {
  using rules::arg;
  detail::begin_call();
  if (status st = detail::check_rows(rows, cols); !st) return st;
  if (status st = detail::check_eps(eps); !st) return st;
  if (rms) beta = nullptr, mean = nullptr;  // ignored
  const detail::row_layout lx{{rows, cols}, {ld_x, 1}}, lr{{rows, cols}, {ld_r, 1}}, ls{{rows, cols}, {ld_s, 1}},
      ly{{rows, cols}, {ld_y, 1}};
  const unsigned inputs = rules::bit(arg::x) | rules::bit(arg::residual);
  rules::operands ops;
  ops.input(arg::x, lx.view(x));
  ops.input(arg::residual, lr.view(residual));
  if (bias_in) ops.vector(arg::bias_in, bias_in, cols, sizeof(*bias_in), false);
  ops.output(arg::s, ls.view(s), inputs);
  ops.output(arg::y, ly.view(y), inputs);
  if (gamma) ops.vector(arg::gamma, gamma, cols, sizeof(*gamma), false);
  if (beta) ops.vector(arg::beta, beta, cols, sizeof(*beta), false);
  if (mean) ops.vector(arg::mean, mean, rows, sizeof(*mean), true);
  if (rstd) ops.vector(arg::rstd, rstd, rows, sizeof(*rstd), true);
  if (status st = detail::check_arrays(ops); !st) return st;
  if (rows == 0) return {};
  return detail::with_kernels([&](auto k) {
    using K = decltype(k);
    return detail::with_norm(rms, [&](auto kind) {
      using N = decltype(kind);
      for (std::int64_t r = 0; r < rows; ++r) {
        T* sr = s + r * ld_s;
        K::template add_row<T, W>(x + r * ld_x, residual + r * ld_r, bias_in, sr, cols);
        detail::norm_row<K, N>(sr, y + r * ld_y, cols, gamma, beta, eps, mean ? mean + r : nullptr,
                               rstd ? rstd + r : nullptr, false, static_cast<const T*>(nullptr),
                               static_cast<detail::row_pipeline<T>*>(nullptr));
      }
      detail::note_region(1, 1);
      return status{};
    });
  }, detail::forward_use<T>);
}

/// Backward of layer_norm (rms_norm with `rms`; mean and dbeta are then ignored) on rows [0, rows),
/// calling thread: dx from dy, x and the forward's statistics; dgamma and dbeta (cols values each,
/// may be null) are accumulators, ADDED to, so an engine gives each worker its own and sums them at
/// the end. dx may not overlap any other argument (not even be dy).
///   std::vector<float> dg(cols), db(cols);   // zeroed, per worker
///   lnorm::norm_backward_rows(false, dy, cols, x, cols, mean, rstd, g, dx, cols, rows, cols, dg.data(), db.data());
template <class T, class W = T>
status norm_backward_rows(bool rms, const T* dy, std::int64_t ld_dy, const T* x, std::int64_t ld_x,
                          const stat_t<T>* mean, const stat_t<T>* rstd, const detail::identity_t<W>* gamma, T* dx,
                          std::int64_t ld_dx, std::int64_t rows, std::int64_t cols, stat_t<T>* dgamma,
                          stat_t<T>* dbeta) noexcept {
  using rules::arg;
  detail::begin_call();
  if (status st = detail::check_rows(rows, cols); !st) return st;
  if (rms) mean = nullptr, dbeta = nullptr;  // ignored
  const detail::row_layout ldy{{rows, cols}, {ld_dy, 1}}, lx{{rows, cols}, {ld_x, 1}}, ldx{{rows, cols}, {ld_dx, 1}};
  rules::operands ops;
  ops.input(arg::dy, ldy.view(dy));
  ops.input(arg::x, lx.view(x));
  if (!rms) ops.vector(arg::mean, mean, rows, sizeof(*mean), false);  // needed: a null one with rows is refused
  ops.vector(arg::rstd, rstd, rows, sizeof(*rstd), false);
  if (gamma) ops.vector(arg::gamma, gamma, cols, sizeof(*gamma), false);
  ops.output(arg::dx, ldx.view(dx));
  if (dgamma) ops.vector(arg::dgamma, dgamma, cols, sizeof(*dgamma), true);
  if (dbeta) ops.vector(arg::dbeta, dbeta, cols, sizeof(*dbeta), true);
  if (status st = detail::check_arrays(ops); !st) return st;
  if (rows == 0) return {};
  return detail::with_kernels([&](auto k) {
    using K = decltype(k);
    return detail::with_norm(rms, [&](auto kind) {
      using N = decltype(kind);
      for (std::int64_t r = 0; r < rows; ++r) {
        const double m = N::centered ? static_cast<double>(mean[r]) : 0.0;
        if constexpr (K::pipelined)
          K::template norm_backward_row<N, T, W>(x + r * ld_x, dy + r * ld_dy, dx + r * ld_dx, cols, gamma, m, rstd[r],
                                                 dgamma, dbeta, static_cast<const T*>(nullptr),
                                                 static_cast<const T*>(nullptr), false,
                                                 static_cast<detail::row_pipeline<T>*>(nullptr), 0.0, 0.0);
        else
          K::template norm_backward_row<N, T, W>(x + r * ld_x, dy + r * ld_dy, dx + r * ld_dx, cols, gamma, m, rstd[r],
                                                 dgamma, dbeta);
      }
      detail::note_region(1, 1);
      return status{};
    });
  });
}

#if defined(LNORM_HAS_EXCEPTIONS)
/// LayerNorm over contiguous rows; throws std::invalid_argument on bad arguments.
///   lnorm::layer_norm(x, y, rows, cols, gamma, beta, 1e-5f);   // gamma, beta may be nullptr
template <class T, class W = T>
void layer_norm(const T* x, T* y, std::int64_t rows, std::int64_t cols, const detail::identity_t<W>* gamma,
                const detail::identity_t<W>* beta, double eps) {
  throw_if_failed(try_layer_norm<T, W>(x, cols, y, cols, rows, cols, gamma, beta, eps));
}

/// RMSNorm over contiguous rows; throws std::invalid_argument on bad arguments.
///   lnorm::rms_norm(x, y, rows, cols, gamma, 1e-6f);   // gamma may be nullptr
template <class T, class W = T>
void rms_norm(const T* x, T* y, std::int64_t rows, std::int64_t cols, const detail::identity_t<W>* gamma,
              double eps) {
  throw_if_failed(try_rms_norm<T, W>(x, cols, y, cols, rows, cols, gamma, eps));
}

#endif  // LNORM_HAS_EXCEPTIONS

}  // namespace lnorm

#include "channel_norm.hpp"  // GroupNorm, InstanceNorm, BatchNorm

