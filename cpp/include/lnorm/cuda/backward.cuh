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
  stat_t<T> inv_cols = 0;  // 1/cols, set by the planner (no division in any kernel)
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

/// xhat = (x - mean) * rstd and dy of one pack as compute type.
template <int VEC, class T>
__device__ __forceinline__ void normalized(const pack<T, VEC>& xv, const pack<T, VEC>& dv, stat_t<T> mu, stat_t<T> rs,
                                           stat_t<T> (&xhat)[VEC], stat_t<T> (&d)[VEC]) {
  using C = stat_t<T>;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    xhat[e] = (static_cast<C>(widen(xv.v[e])) - mu) * rs;
    d[e] = static_cast<C>(widen(dv.v[e]));
  }
}

/// Adds one pack's part of a row's sums: g = dy * gamma, sum_g += g, sum_gx += g * xhat (w: the
/// pack's gamma as compute type).
template <int VEC, class C>
__device__ __forceinline__ void add_row_sums(int count, const C (&xhat)[VEC], const C (&d)[VEC], const C (&w)[VEC],
                                             C& sum_g, C& sum_gx) {
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    if (kCommonPathOnly || e < count) {
      const C gd = d[e] * w[e];
      sum_g += gd;
      sum_gx = fma(gd, xhat[e], sum_gx);
    }
  }
}

/// Stores one pack of dx = rstd * (g - c1 - xhat * c2) and adds dy * xhat and dy to the pack's
/// accumulators, element e at acc_dg[e * stride] and acc_db[e * stride] (either may be null).
template <int VEC, class T>
__device__ __forceinline__ void store_dx(const backward_args<T>& a, std::int64_t row, int first, int count,
                                         const stat_t<T> (&xhat)[VEC], const stat_t<T> (&d)[VEC],
                                         const stat_t<T> (&w)[VEC], stat_t<T> rs, stat_t<T> c1, stat_t<T> c2,
                                         stat_t<T>* acc_dg, stat_t<T>* acc_db, int stride) {
  pack<T, VEC> out;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    out.v[e] = narrow<T>(rs * (fma(d[e], w[e], -c1) - xhat[e] * c2));
    if (kCommonPathOnly || e < count) {
      if (acc_dg != nullptr) acc_dg[e * stride] = fma(d[e], xhat[e], acc_dg[e * stride]);
      if (acc_db != nullptr) acc_db[e * stride] += d[e];
    }
  }
  store_pack<VEC>(a.dx + row * a.ld_dx + first, out, count);
}

/// gamma of a pack as compute type (ones without gamma).
template <int VEC, class T>
__device__ __forceinline__ void load_gamma(const backward_args<T>& a, int first, int count, stat_t<T> (&w)[VEC]) {
  load_param<VEC, T>(a.gamma, a.w_float, first, count, stat_t<T>(1), w);
}

/// Elements of shared memory between the accumulators of consecutive row groups of a block, for
/// `per_group` = slots * tpr accumulators per group: with tpr < 32 a warp holds 32 / tpr groups,
/// and a stride that is tpr more than a multiple of 32 puts their accesses in 32 different banks.
__host__ __device__ __forceinline__ int acc_group_stride(int per_group, int tpr) {
  return tpr < kWarp ? (per_group + kWarp - 1) / kWarp * kWarp + tpr : per_group;
}

/// The row tiers (as forward_rows_kernel: `tpr` threads per row, packs t, t + tpr, ... of a row in
/// thread t's registers, the rest of a whole-block row in dynamic shared memory). Per row:
/// g = dy * gamma, xhat = (x - mean) * rstd, the row sums of g and g * xhat, then
/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (RMSNorm: no mean(g) term). Each thread adds
/// dy * xhat and dy to accumulators in dynamic shared memory laid out acc[dgamma|dbeta][group]
/// [slot][t] (slot j*VEC + e of the thread's pack j; t fastest, groups acc_group_stride apart: no
/// bank conflicts); at the end the block adds its groups, in group order, into its row of the
/// partials. gamma of the register packs is held in registers across rows; the next row's
/// registers are loaded before this row's reduction.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kMaxBlock, 1) backward_rows_kernel(const backward_args<T> a, const int tpr) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  constexpr bool kAhead = loads_ahead_v<T, VEC, ITEMS>, kHeld = ITEMS <= 8;
  __shared__ C slots[2][kMaxWarps][2];
  const int tid = static_cast<int>(threadIdx.x);
  const int block = static_cast<int>(blockDim.x);
  const int groups = block / tpr;
  const int group = tid / tpr, t = tid - group * tpr;
  const int reg_packs = P * tpr;
  const int row_packs = kCommonPathOnly ? reg_packs : (a.cols + VEC - 1) / VEC;
  const int extra_packs = row_packs > reg_packs ? row_packs - reg_packs : 0;  // whole-block rows only
  const int packs_per_thread = (row_packs + tpr - 1) / tpr;
  const int slots_per_thread = (packs_per_thread > P ? packs_per_thread : P) * VEC;  // accumulators
  const bool want_dg = a.dgamma_partial != nullptr, want_db = a.dbeta_partial != nullptr;

  // Dynamic shared memory: x and dy beyond the registers, then (16-byte aligned) the accumulators.
  pack<T, VEC>* const x_cache = reinterpret_cast<pack<T, VEC>*>(dynamic_smem());
  pack<T, VEC>* const dy_cache = x_cache + extra_packs;
  const std::size_t cache_bytes = (2 * static_cast<std::size_t>(extra_packs) * sizeof(pack<T, VEC>) + 15) / 16 * 16;
  C* const acc = reinterpret_cast<C*>(dynamic_smem() + cache_bytes);
  const int stride = acc_group_stride(slots_per_thread * tpr, tpr);
  const std::size_t set = static_cast<std::size_t>(groups) * stride;  // one accumulator set
  C* const acc_dg = want_dg ? acc + static_cast<std::size_t>(group) * stride + t : nullptr;
  C* const acc_db = want_db ? acc + (want_dg ? set : 0) + static_cast<std::size_t>(group) * stride + t : nullptr;
  for (int i = 0; i < slots_per_thread; ++i) {  // each thread owns its accumulators: no barrier needed
    if (want_dg) acc_dg[i * tpr] = C(0);
    if (want_db) acc_db[i * tpr] = C(0);
  }
  C w[kHeld ? P : 1][VEC];  // gamma of the register packs, held across rows where registers allow
#pragma unroll
  for (int j = 0; j < (kHeld ? P : 0); ++j) {
    const int first = (j * tpr + t) * VEC;
    load_gamma<VEC>(a, first, valid_in_pack(a.cols, first, VEC), w[j]);
  }
  const C inv_cols = a.inv_cols;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * groups;

  pack<T, VEC> x_next[P], dy_next[P];
  C mean_next = C(0), rstd_next = C(0);
  std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * groups;
  if (kAhead && row0 < a.rows) load_rows(a, row0 + group, tpr, t, x_next, dy_next, mean_next, rstd_next);
  int parity = 0;
  for (; row0 < a.rows; row0 += step) {
    const std::int64_t row = row0 + group;
    const int cols = row < a.rows ? a.cols : 0;
    if (!kAhead) load_rows(a, row, tpr, t, x_next, dy_next, mean_next, rstd_next);
    pack<T, VEC> xv[P], dv[P];
#pragma unroll
    for (int j = 0; j < P; ++j) {
      xv[j] = x_next[j];
      dv[j] = dy_next[j];
    }
    const C mu = mean_next, rs = rstd_next;
    for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
      const int count = valid_in_pack(cols, p * VEC, VEC);
      x_cache[p - reg_packs] = load_pack<VEC>(a.x + row * a.ld_x + p * VEC, count);
      dy_cache[p - reg_packs] = load_pack<VEC>(a.dy + row * a.ld_dy + p * VEC, count);
    }
    if (kAhead && row0 + step < a.rows) load_rows(a, row0 + step + group, tpr, t, x_next, dy_next, mean_next, rstd_next);

    C xh[P][VEC], dd[P][VEC];  // xhat and dy of the register packs, computed once for both passes
#pragma unroll
    for (int j = 0; j < P; ++j) normalized<VEC>(xv[j], dv[j], mu, rs, xh[j], dd[j]);
    C sums[2] = {C(0), C(0)};  // sum of g, of g * xhat
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC, count = valid_in_pack(cols, first, VEC);
      if (kHeld) {
        add_row_sums<VEC>(count, xh[j], dd[j], w[kHeld ? j : 0], sums[0], sums[1]);
      } else {
        C wp[VEC];
        load_gamma<VEC>(a, first, count, wp);
        add_row_sums<VEC>(count, xh[j], dd[j], wp, sums[0], sums[1]);
      }
    }
    for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
      const int count = valid_in_pack(cols, p * VEC, VEC);
      C wp[VEC], xp[VEC], dp[VEC];
      load_gamma<VEC>(a, p * VEC, count, wp);
      normalized<VEC>(x_cache[p - reg_packs], dy_cache[p - reg_packs], mu, rs, xp, dp);
      add_row_sums<VEC>(count, xp, dp, wp, sums[0], sums[1]);
    }
    row_sums(sums, tpr, slots[parity]);
    const C c1 = a.rms ? C(0) : sums[0] * inv_cols, c2 = sums[1] * inv_cols;

#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      const int count = valid_in_pack(cols, first, VEC);
      if (count > 0) {
        C wp[VEC];
        if (!kHeld) load_gamma<VEC>(a, first, count, wp);
        store_dx<VEC>(a, row, first, count, xh[j], dd[j], kHeld ? w[kHeld ? j : 0] : wp, rs, c1, c2,
                      want_dg ? acc_dg + j * VEC * tpr : nullptr, want_db ? acc_db + j * VEC * tpr : nullptr, tpr);
      }
    }
    for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
      const std::size_t at = static_cast<std::size_t>(p / tpr) * VEC * tpr;  // slot (p / tpr) * VEC
      const int count = valid_in_pack(cols, p * VEC, VEC);
      C wp[VEC], xp[VEC], dp[VEC];
      load_gamma<VEC>(a, p * VEC, count, wp);
      normalized<VEC>(x_cache[p - reg_packs], dy_cache[p - reg_packs], mu, rs, xp, dp);
      store_dx<VEC>(a, row, p * VEC, count, xp, dp, wp, rs, c1, c2, want_dg ? acc_dg + at : nullptr,
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
      const std::size_t at = static_cast<std::size_t>(g) * stride + static_cast<std::size_t>(i) * tpr + tt;
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
__global__ void __launch_bounds__(kSplitBlock, 1) backward_chunk_sums_kernel(const backward_args<T> a,
                                                                          stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  __shared__ C slots[2][kMaxWarps][2];
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_first = chunk * tpr * ITEMS;
  C w[P][VEC];
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int first = chunk_first + (j * tpr + tid) * VEC;
    load_gamma<VEC>(a, first, valid_in_pack(a.cols, first, VEC), w[j]);
  }
  int parity = 0;
  for (std::int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    const C mu = a.rms ? C(0) : a.mean[row], rs = a.rstd[row];
    C sums[2] = {C(0), C(0)};
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = chunk_first + (j * tpr + tid) * VEC;
      const int count = valid_in_pack(a.cols, first, VEC);
      C xp[VEC], dp[VEC];
      normalized<VEC>(load_pack<VEC>(a.x + row * a.ld_x + first, count),
                      load_pack<VEC>(a.dy + row * a.ld_dy + first, count), mu, rs, xp, dp);
      add_row_sums<VEC>(count, xp, dp, w[j], sums[0], sums[1]);
    }
    row_sums(sums, tpr, slots[parity]);
    if (tid == 0) {
      ws[(row * chunks + chunk) * 2] = sums[0];
      ws[(row * chunks + chunk) * 2 + 1] = sums[1];
    }
    parity ^= 1;
  }
}

/// Split tier, second pass: block (chunk, part) computes dx of its chunk for rows part,
/// part + gridDim.y, ... (adding the row's chunk sums in chunk order), and its row of dgamma/dbeta
/// partials for the chunk's columns, accumulated in registers.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kSplitBlock, 1) backward_chunk_kernel(const backward_args<T> a,
                                                                     const stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_first = chunk * tpr * ITEMS;
  const bool want_dg = a.dgamma_partial != nullptr, want_db = a.dbeta_partial != nullptr;
  const C inv_cols = a.inv_cols;
  C acc_dg[ITEMS], acc_db[ITEMS], w[P][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) acc_dg[i] = acc_db[i] = C(0);
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int first = chunk_first + (j * tpr + tid) * VEC;
    load_gamma<VEC>(a, first, valid_in_pack(a.cols, first, VEC), w[j]);
  }
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
      C xp[VEC], dp[VEC];
      normalized<VEC>(xv, dv, mu, rs, xp, dp);
      store_dx<VEC>(a, row, first, count, xp, dp, w[j], rs, c1, c2, acc_dg + j * VEC, acc_db + j * VEC, 1);
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
/// 8th partial row, then thread row 0 adds the 8 sums in order), rounded to W once; for dgamma and
/// dbeta in one launch (either may be null).
template <class C, class W>
__global__ void __launch_bounds__(256) reduce_partials_kernel(const C* const dg_partial, W* const dg,
                                                              const C* const db_partial, W* const db,
                                                              const int partial_rows, const int cols) {
  constexpr int kRowsPerBlock = 8;
  __shared__ C tile[2][kRowsPerBlock][kWarp];  // row-wise writes and reads: no bank conflict, no padding
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int c = static_cast<int>(blockIdx.x) * kWarp + tx;
  C s[2] = {C(0), C(0)};
  if (c < cols) {
    for (int r = ty; r < partial_rows; r += kRowsPerBlock) {
      const std::size_t at = static_cast<std::size_t>(r) * cols + c;
      if (dg != nullptr) s[0] += dg_partial[at];
      if (db != nullptr) s[1] += db_partial[at];
    }
  }
  tile[0][ty][tx] = s[0];
  tile[1][ty][tx] = s[1];
  __syncthreads();
  if (ty == 0 && c < cols) {
    C total[2] = {tile[0][0][tx], tile[1][0][tx]};
    for (int k = 1; k < kRowsPerBlock; ++k) {
      total[0] += tile[0][k][tx];
      total[1] += tile[1][k][tx];
    }
    if (dg != nullptr) dg[c] = narrow<W>(total[0]);
    if (db != nullptr) db[c] = narrow<W>(total[1]);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace lnorm
