// lnorm/cuda/backward.cuh: the backward kernels. dx of layer norm and RMSNorm row by row, with x and
// dy held in registers between the row's two sums and dx, and the next row's loads issued before
// this row's reductions; dweight and dbias as float32 (double for double) partial sums, one row of
// partials per block, added up in a fixed order by reduce_partials_kernel: deterministic, no atomics.
#pragma once

#include <lnorm/cuda/forward.cuh>

namespace lnorm {
namespace cuda {
namespace detail {

/// Everything one backward call reads and writes. Rows are `ld` elements apart, columns contiguous.
template <class T>
struct backward_args {
  const T* dy;
  std::int64_t ld_dy;
  const T* x;
  std::int64_t ld_x;
  const stat_t<T>* mean;  // layer norm only
  const stat_t<T>* rstd;
  const void* gamma;      // T, or float when w_float; may be null (all ones)
  bool w_float;
  T* dx;
  std::int64_t ld_dx;
  stat_t<T>* dgamma_partial;  // [partial rows][cols]; null when dgamma is not wanted
  stat_t<T>* dbeta_partial;   // [partial rows][cols]; null when dbeta is not wanted
  std::int64_t rows;
  int cols;
  bool rms;
};

/// Thread t's packs of x and dy of row `row` (nothing past the last row), and the row's statistics.
template <class T, int VEC, int P>
__device__ __forceinline__ void load_rows(const backward_args<T>& a, std::int64_t row, int tpr, int t,
                                          pack<T, VEC> (&x)[P], pack<T, VEC> (&dy)[P], stat_t<T>& mean,
                                          stat_t<T>& rstd) {
  using C = stat_t<T>;
  const int cols = row < a.rows ? a.cols : 0;
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int first = (j * tpr + t) * VEC;
    const int count = valid_in_pack(cols, first, VEC);
    x[j] = load_pack<VEC>(a.x + row * a.ld_x + first, count);
    dy[j] = load_pack<VEC>(a.dy + row * a.ld_dy + first, count);
  }
  mean = cols > 0 && !a.rms ? a.mean[row] : C(0);
  rstd = cols > 0 ? a.rstd[row] : C(0);
}

/// Adds one pack's part of a row's sums: g = dy * gamma, sum_g += g, sum_gx += g * xhat.
template <int VEC, class T>
__device__ __forceinline__ void add_row_sums(const backward_args<T>& a, int first, int count, const pack<T, VEC>& xv,
                                             const pack<T, VEC>& dv, stat_t<T> mu, stat_t<T> rs, stat_t<T>& sum_g,
                                             stat_t<T>& sum_gx) {
  using C = stat_t<T>;
  C g[VEC];
  load_param<VEC, T>(a.gamma, a.w_float, first, count, C(1), g);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    if (e < count) {
      const C xhat = (static_cast<C>(widen(xv.v[e])) - mu) * rs;
      const C gd = static_cast<C>(widen(dv.v[e])) * g[e];
      sum_g += gd;
      sum_gx += gd * xhat;
    }
  }
}

/// Stores one pack of dx = rstd * (g - c1 - xhat * c2) and adds dy * xhat and dy to the pack's
/// accumulators, element e at acc_dg[e * stride] and acc_db[e * stride] (either may be null).
template <int VEC, class T>
__device__ __forceinline__ void store_dx(const backward_args<T>& a, std::int64_t row, int first, int count,
                                         const pack<T, VEC>& xv, const pack<T, VEC>& dv, stat_t<T> mu, stat_t<T> rs,
                                         stat_t<T> c1, stat_t<T> c2, stat_t<T>* acc_dg, stat_t<T>* acc_db,
                                         int stride) {
  using C = stat_t<T>;
  C g[VEC];
  load_param<VEC, T>(a.gamma, a.w_float, first, count, C(1), g);
  pack<T, VEC> out;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const C xhat = (static_cast<C>(widen(xv.v[e])) - mu) * rs;
    const C d = static_cast<C>(widen(dv.v[e]));
    out.v[e] = narrow<T>(rs * (d * g[e] - c1 - xhat * c2));
    if (e < count) {
      if (acc_dg != nullptr) acc_dg[e * stride] += d * xhat;
      if (acc_db != nullptr) acc_db[e * stride] += d;
    }
  }
  store_pack<VEC>(a.dx + row * a.ld_dx + first, out, count);
}

/// The row tiers (as forward_rows_kernel: `tpr` threads per row, packs t, t + tpr, ... of a row in
/// thread t's registers, the rest of a whole-block row in dynamic shared memory). Per row:
/// g = dy * gamma, xhat = (x - mean) * rstd, the row sums of g and g * xhat, then
/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (RMSNorm: no mean(g) term). Each thread adds
/// dy * xhat and dy to accumulators in dynamic shared memory laid out acc[dgamma|dbeta][group]
/// [slot][t] (slot j*VEC + e of the thread's pack j; t fastest: no bank conflicts); at the end the
/// block adds its groups, in group order, into its row of the partials. The next row's registers
/// are loaded before this row's reduction.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(1024) backward_rows_kernel(const backward_args<T> a, const int tpr) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  __shared__ C sum_slots[2][kWarp][2];
  const int tid = static_cast<int>(threadIdx.x);
  const int block = static_cast<int>(blockDim.x);
  const int groups = block / tpr;
  const int group = tid / tpr, t = tid - group * tpr;
  const int row_packs = (a.cols + VEC - 1) / VEC;
  const int reg_packs = P * tpr;
  const int extra_packs = row_packs > reg_packs ? row_packs - reg_packs : 0;  // whole-block rows only
  const int packs_per_thread = (row_packs + tpr - 1) / tpr;
  const int slots = (packs_per_thread > P ? packs_per_thread : P) * VEC;  // accumulators per thread
  const bool want_dg = a.dgamma_partial != nullptr, want_db = a.dbeta_partial != nullptr;

  // Dynamic shared memory: x and dy beyond the registers, then (16-byte aligned) the accumulators.
  pack<T, VEC>* const x_cache = reinterpret_cast<pack<T, VEC>*>(dynamic_smem());
  pack<T, VEC>* const dy_cache = x_cache + extra_packs;
  const std::size_t cache_bytes = (2 * static_cast<std::size_t>(extra_packs) * sizeof(pack<T, VEC>) + 15) / 16 * 16;
  C* const acc = reinterpret_cast<C*>(dynamic_smem() + cache_bytes);
  const std::size_t set = static_cast<std::size_t>(groups) * slots * tpr;  // one accumulator set
  C* const acc_dg = want_dg ? acc + static_cast<std::size_t>(group) * slots * tpr + t : nullptr;
  C* const acc_db = want_db ? acc + (want_dg ? set : 0) + static_cast<std::size_t>(group) * slots * tpr + t : nullptr;
  for (int i = 0; i < slots; ++i) {  // each thread owns its accumulators: no barrier needed
    if (want_dg) acc_dg[i * tpr] = C(0);
    if (want_db) acc_db[i * tpr] = C(0);
  }
  const C inv_cols = C(1) / static_cast<C>(a.cols);
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * groups;

  pack<T, VEC> x_next[P], dy_next[P];
  C mean_next = C(0), rstd_next = C(0);
  std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * groups;
  if (row0 < a.rows) load_rows(a, row0 + group, tpr, t, x_next, dy_next, mean_next, rstd_next);
  int parity = 0;
  for (; row0 < a.rows; row0 += step) {
    const std::int64_t row = row0 + group;
    const int cols = row < a.rows ? a.cols : 0;
    pack<T, VEC> xv[P], dv[P];
#pragma unroll
    for (int j = 0; j < P; ++j) {
      xv[j] = x_next[j];
      dv[j] = dy_next[j];
    }
    const C mu = mean_next, rs = rstd_next;
    for (int p = reg_packs + t; p < row_packs; p += tpr) {
      const int count = valid_in_pack(cols, p * VEC, VEC);
      x_cache[p - reg_packs] = load_pack<VEC>(a.x + row * a.ld_x + p * VEC, count);
      dy_cache[p - reg_packs] = load_pack<VEC>(a.dy + row * a.ld_dy + p * VEC, count);
    }
    if (row0 + step < a.rows) load_rows(a, row0 + step + group, tpr, t, x_next, dy_next, mean_next, rstd_next);

    C sum_g = C(0), sum_gx = C(0);
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      add_row_sums<VEC>(a, first, valid_in_pack(cols, first, VEC), xv[j], dv[j], mu, rs, sum_g, sum_gx);
    }
    for (int p = reg_packs + t; p < row_packs; p += tpr) {
      add_row_sums<VEC>(a, p * VEC, valid_in_pack(cols, p * VEC, VEC), x_cache[p - reg_packs],
                        dy_cache[p - reg_packs], mu, rs, sum_g, sum_gx);
    }
    row_sum2(sum_g, sum_gx, tpr, sum_slots[parity]);
    const C c1 = a.rms ? C(0) : sum_g * inv_cols, c2 = sum_gx * inv_cols;

#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      const int count = valid_in_pack(cols, first, VEC);
      if (count > 0) {
        store_dx<VEC>(a, row, first, count, xv[j], dv[j], mu, rs, c1, c2, want_dg ? acc_dg + j * VEC * tpr : nullptr,
                      want_db ? acc_db + j * VEC * tpr : nullptr, tpr);
      }
    }
    for (int p = reg_packs + t; p < row_packs; p += tpr) {
      const std::size_t at = static_cast<std::size_t>(p / tpr) * VEC * tpr;  // slot (p / tpr) * VEC
      store_dx<VEC>(a, row, p * VEC, valid_in_pack(cols, p * VEC, VEC), x_cache[p - reg_packs],
                    dy_cache[p - reg_packs], mu, rs, c1, c2, want_dg ? acc_dg + at : nullptr,
                    want_db ? acc_db + at : nullptr, tpr);
    }
    parity ^= 1;
  }

  if (!want_dg && !want_db) return;
  __syncthreads();
  for (int c = tid; c < a.cols; c += block) {
    const int p = c / VEC, e = c - p * VEC, tt = p % tpr;
    const int i = (p / tpr) * VEC + e;
    C dg = C(0), db = C(0);
    for (int g = 0; g < groups; ++g) {  // group order: the same sum on every run
      const std::size_t at = (static_cast<std::size_t>(g) * slots + i) * tpr + tt;
      if (want_dg) dg += acc[at];
      if (want_db) db += acc[(want_dg ? set : 0) + at];
    }
    const std::size_t out = static_cast<std::size_t>(blockIdx.x) * a.cols + c;
    if (want_dg) a.dgamma_partial[out] = dg;
    if (want_db) a.dbeta_partial[out] = db;
  }
}

/// Split tier, first pass: the sums of g and g * xhat over chunk blockIdx.x of rows blockIdx.y,
/// blockIdx.y + gridDim.y, ... into ws[row][chunk][2].
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kSplitBlock) backward_chunk_sums_kernel(const backward_args<T> a,
                                                                          stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  __shared__ C sum_slots[2][kWarp][2];
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_first = chunk * tpr * ITEMS;
  int parity = 0;
  for (std::int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    const C mu = a.rms ? C(0) : a.mean[row], rs = a.rstd[row];
    C sum_g = C(0), sum_gx = C(0);
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = chunk_first + (j * tpr + tid) * VEC;
      const int count = valid_in_pack(a.cols, first, VEC);
      add_row_sums<VEC>(a, first, count, load_pack<VEC>(a.x + row * a.ld_x + first, count),
                        load_pack<VEC>(a.dy + row * a.ld_dy + first, count), mu, rs, sum_g, sum_gx);
    }
    row_sum2(sum_g, sum_gx, tpr, sum_slots[parity]);
    if (tid == 0) {
      ws[(row * chunks + chunk) * 2] = sum_g;
      ws[(row * chunks + chunk) * 2 + 1] = sum_gx;
    }
    parity ^= 1;
  }
}

/// Split tier, second pass: block (chunk, part) computes dx of its chunk for rows part,
/// part + gridDim.y, ... (adding the row's chunk sums in chunk order), and its row of dgamma/dbeta
/// partials for the chunk's columns, accumulated in registers.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kSplitBlock) backward_chunk_kernel(const backward_args<T> a,
                                                                     const stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_first = chunk * tpr * ITEMS;
  const bool want_dg = a.dgamma_partial != nullptr, want_db = a.dbeta_partial != nullptr;
  const C inv_cols = C(1) / static_cast<C>(a.cols);
  C acc_dg[ITEMS], acc_db[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) acc_dg[i] = acc_db[i] = C(0);
  for (std::int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    const C mu = a.rms ? C(0) : a.mean[row], rs = a.rstd[row];
    C sum_g = C(0), sum_gx = C(0);
    for (int c = 0; c < chunks; ++c) {
      sum_g += ws[(row * chunks + c) * 2];
      sum_gx += ws[(row * chunks + c) * 2 + 1];
    }
    const C c1 = a.rms ? C(0) : sum_g * inv_cols, c2 = sum_gx * inv_cols;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = chunk_first + (j * tpr + tid) * VEC;
      const int count = valid_in_pack(a.cols, first, VEC);
      if (count <= 0) continue;
      const pack<T, VEC> xv = load_pack<VEC>(a.x + row * a.ld_x + first, count);
      const pack<T, VEC> dv = load_pack<VEC>(a.dy + row * a.ld_dy + first, count);
      store_dx<VEC>(a, row, first, count, xv, dv, mu, rs, c1, c2, acc_dg + j * VEC, acc_db + j * VEC, 1);
    }
  }
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int first = chunk_first + (j * tpr + tid) * VEC;
    const int count = valid_in_pack(a.cols, first, VEC);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if (e < count) {
        const std::size_t out = static_cast<std::size_t>(blockIdx.y) * a.cols + first + e;
        if (want_dg) a.dgamma_partial[out] = acc_dg[j * VEC + e];
        if (want_db) a.dbeta_partial[out] = acc_db[j * VEC + e];
      }
    }
  }
}

/// out[c] = sum over r of partial[r][c], r in a fixed order (each of 8 thread rows takes every
/// 8th partial row, then thread row 0 adds the 8 sums in order), rounded to W once.
template <class C, class W>
__global__ void __launch_bounds__(256) reduce_partials_kernel(const C* const partial, const int partial_rows,
                                                              const int cols, W* const out) {
  constexpr int kRowsPerBlock = 8;
  __shared__ C tile[kRowsPerBlock][kWarp + 1];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int c = static_cast<int>(blockIdx.x) * kWarp + tx;
  C s = C(0);
  if (c < cols) {
    for (int r = ty; r < partial_rows; r += kRowsPerBlock) s += partial[static_cast<std::size_t>(r) * cols + c];
  }
  tile[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < cols) {
    C total = tile[0][tx];
    for (int k = 1; k < kRowsPerBlock; ++k) total += tile[k][tx];
    out[c] = narrow<W>(total);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace lnorm
