// lnorm/cuda/forward.cuh: the forward kernels. Layer norm and RMSNorm of rows, optionally of
// s = (x + bias_in) + residual (the fused add), with each row held in registers (and, for rows too
// long for registers, in shared memory) from its statistics to its normalization: x is read from
// global memory once. Rows too long for one block are cut into chunks over several blocks (two
// kernels, x read twice).
#pragma once

#include <lnorm/cuda/device.cuh>

namespace lnorm {
namespace cuda {
namespace detail {

/// Threads per block of the split kernels; with kSplitItems elements each, one chunk of a row.
constexpr int kSplitBlock = 512;
constexpr int kSplitItems = 8;

/// Everything one forward call reads and writes. Rows are `ld` elements apart, columns contiguous.
/// The parameters (gamma, beta, bias_in) are all T, or all float when w_float.
template <class T>
struct forward_args {
  const T* x;
  std::int64_t ld_x;
  const T* residual;  // not null: the fused add, normalizing s = (x + bias_in) + residual
  std::int64_t ld_residual;
  const void* bias_in;  // may be null
  T* s;                 // the fused add's sum (residual_out)
  std::int64_t ld_s;
  T* y;
  std::int64_t ld_y;
  const void* gamma;  // may be null (all ones)
  const void* beta;   // may be null (all zeros); null for RMSNorm
  bool w_float;
  stat_t<T>* mean;    // may be null; null for RMSNorm
  stat_t<T>* rstd;    // may be null
  std::int64_t rows;
  int cols;
  stat_t<T> eps;
  bool rms;
  // Set by the planner: 1/cols, and 1/n for the split tier's full chunks and its last chunk (no
  // division in any kernel).
  stat_t<T> inv_cols = 0, inv_chunk = 0, inv_last_chunk = 0;
};

/// s = (x + bias_in) + residual rounded to T for the n valid elements of one pack at column `first`
/// (two roundings in the compute type, as the CPU kernels do), stored to s. Each thread stores only
/// the elements it read itself, so s may be x or residual.
template <int N, class T>
__device__ __forceinline__ pack<T, N> fuse_add(const forward_args<T>& a, std::int64_t row, int first, int n,
                                               pack<T, N> x, const pack<T, N>& r) {
  using C = stat_t<T>;
  if (n <= 0) return x;
  C bias[N];
  load_param<N, T>(a.bias_in, a.w_float, first, n, C(0), bias);
#pragma unroll
  for (int e = 0; e < N; ++e) {
    C xb = static_cast<C>(widen(x.v[e]));
    if (a.bias_in != nullptr) xb = xb + bias[e];  // no "+ 0" without bias_in: it would turn -0 into +0
    x.v[e] = narrow<T>(xb + static_cast<C>(widen(r.v[e])));
  }
  store_pack<N>(a.s + row * a.ld_s + first, x, n);
  return x;
}

/// The n valid elements of the pack at column `first` of a row's input: x, or for the fused add s.
template <int N, class T>
__device__ __forceinline__ pack<T, N> load_input(const forward_args<T>& a, bool add, std::int64_t row, int first,
                                                 int n) {
  const pack<T, N> v = load_pack<N>(a.x + row * a.ld_x + first, n);
  if (!add) return v;
  return fuse_add<N>(a, row, first, n, v, load_pack<N>(a.residual + row * a.ld_residual + first, n));
}

/// What a row kernel is compiled for (its MODE): RMSNorm or layer norm, with the fused add or not.
constexpr int kModeRms = 1, kModeAdd = 2;

/// A row's statistics at `scale` (1, or overflow_scale for rows whose sums overflowed): the mean is
/// (m0 + off) / scale, m0 and off kept apart; rstd is what is reported (scaled back by `scale`),
/// apply what multiplies: rstd, or 0 where var + eps is exactly 0 (a constant row with eps = 0 then
/// gives exactly the bias, as on the CPU).
template <class C>
struct row_stats {
  C scale, m0, off, rstd, apply;
};

/// A row's statistics at `scale` from its mean (m0 + off) and variance; `ok` is false where they
/// overflowed or the row holds NaN/Inf.
template <class C>
__device__ __forceinline__ row_stats<C> make_stats(bool rms, C m0, C off, C var, C eps, C scale, bool& ok) {
  row_stats<C> st{scale, m0, off, C(0), C(0)};
  if (!rms) {
    ok = finite(m0) && finite(var);
  } else {
    ok = finite(var);
    if (!ok) var = var - var;  // NaN, not rstd 0, for a row holding Inf
  }
  const C ve = var + eps * scale * scale;
  st.rstd = inv_sqrt(ve);
  st.apply = ve == C(0) ? C(0) : st.rstd;
  return st;
}

/// The row's statistics from its sums at `scale`: for layer norm the two passes' sums (sum of x*s;
/// of d and d^2), for RMSNorm the sum of squares alone (m0 = off = 0).
template <class C>
__device__ __forceinline__ row_stats<C> finish_stats(bool rms, C m0, C sum_d, C sum_d2, C inv_cols, C eps, C scale,
                                                     bool& ok) {
  if (rms) return make_stats(true, C(0), C(0), sum_d2 * inv_cols, eps, scale, ok);
  const C off = sum_d * inv_cols, m2 = sum_d2 - sum_d * off;
  return make_stats(false, m0, off, (m2 < C(0) ? C(0) : m2) * inv_cols, eps, scale, ok);  // not fmax: NaN stays
}

/// y = ((x*scale - m0) - off) * apply * gamma + beta for the n valid elements of one pack, from its
/// widened values f (g, b: the pack's weights as compute type).
template <int N, class T>
__device__ __forceinline__ void store_output(const forward_args<T>& a, std::int64_t row, int first, int n,
                                             const stat_t<T> (&f)[N], const row_stats<stat_t<T>>& st,
                                             const stat_t<T> (&g)[N], const stat_t<T> (&b)[N]) {
  using C = stat_t<T>;
  pack<T, N> out;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const C xhat = (fma(f[e], st.scale, -st.m0) - st.off) * st.apply;
    out.v[e] = narrow<T>(fma(xhat, g[e], b[e]));
  }
  store_pack<N>(a.y + row * a.ld_y + first, out, n);
}

/// The same, loading the pack's weights.
template <int N, class T>
__device__ __forceinline__ void store_output(const forward_args<T>& a, std::int64_t row, int first, int n,
                                             const stat_t<T> (&f)[N], const row_stats<stat_t<T>>& st) {
  using C = stat_t<T>;
  C g[N], b[N];
  load_param<N, T>(a.gamma, a.w_float, first, n, C(1), g);
  load_param<N, T>(a.beta, a.w_float, first, n, C(0), b);
  store_output<N>(a, row, first, n, f, st, g, b);
}

/// The same from a pack as loaded (the shared-memory part of a row, the split tier).
template <int N, class T>
__device__ __forceinline__ void store_output(const forward_args<T>& a, std::int64_t row, int first, int n,
                                             const pack<T, N>& v, const row_stats<stat_t<T>>& st) {
  const pack<T, N> one[1] = {v};
  stat_t<T> f[1][N];
  widen_all(one, f);
  store_output<N>(a, row, first, n, f[0], st);
}

/// The row's mean and rstd, where asked for (by one thread of the row).
template <class T>
__device__ __forceinline__ void store_stats(const forward_args<T>& a, std::int64_t row, const row_stats<stat_t<T>>& st) {
  if (a.mean != nullptr) a.mean[row] = (st.m0 + st.off) * unscale(st.scale);
  if (a.rstd != nullptr) a.rstd[row] = st.rstd * st.scale;
}

/// gamma and beta of a thread's register packs, loaded once and held across rows (the thread's
/// columns are the same in every row), as compute type; or, for more than 8 elements per thread,
/// where registers are short, loaded with each row instead (from L1).
template <class T, int VEC, int P, bool kHeld = (P * VEC <= 8)>
struct row_weights {
  using C = stat_t<T>;
  C g[P][VEC], b[P][VEC];
  __device__ __forceinline__ void init(const forward_args<T>& a, int tpr, int t) {
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      const int count = valid_in_pack(a.cols, first, VEC);
      load_param<VEC, T>(a.gamma, a.w_float, first, count, C(1), g[j]);
      load_param<VEC, T>(a.beta, a.w_float, first, count, C(0), b[j]);
    }
  }
  __device__ __forceinline__ void store(const forward_args<T>& a, int j, std::int64_t row, int first, int n,
                                        const C (&f)[VEC], const row_stats<C>& st) const {
    store_output<VEC>(a, row, first, n, f, st, g[j], b[j]);
  }
};

template <class T, int VEC, int P>
struct row_weights<T, VEC, P, false> {
  __device__ __forceinline__ void init(const forward_args<T>&, int, int) {}
  __device__ __forceinline__ void store(const forward_args<T>& a, int, std::int64_t row, int first, int n,
                                        const stat_t<T> (&f)[VEC], const row_stats<stat_t<T>>& st) const {
    store_output<VEC>(a, row, first, n, f, st);
  }
};

/// Whether a row kernel loads its next row while it works on this one: where a thread moves at most
/// 32 bytes of an array per row (beyond that its own loads are plenty in flight, and the registers
/// are better spent), in at most 8 packs.
template <class T, int VEC, int ITEMS>
inline constexpr bool loads_ahead_v = ITEMS * sizeof(T) <= 32 && ITEMS / VEC <= 8;

/// The row tiers: `tpr` threads per row (a power of two <= 32 with several rows per block, or the
/// whole block, a multiple of 32). Thread t of a row holds packs t, t + tpr, ... (ITEMS/VEC of them,
/// VEC elements each) in registers; a row longer than that keeps the rest in dynamic shared memory
/// (whole-block rows only; each thread reads back only what it wrote). Blocks stride over the rows,
/// and each thread loads its packs of its next row before this row's reductions (loads_ahead_v). Every thread reads
/// and writes only its own elements, and y is stored after the row's reductions: y, s may be x or
/// residual as the API allows. MODE (kModeRms, kModeAdd) compiles out the other norm and the add.
template <class T, int VEC, int ITEMS, int MODE>
__global__ void __launch_bounds__(kMaxBlock, 1) forward_rows_kernel(const forward_args<T> a, const int tpr) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  constexpr bool kAhead = loads_ahead_v<T, VEC, ITEMS>;
  constexpr bool kRms = (MODE & kModeRms) != 0, add = (MODE & kModeAdd) != 0;
  __shared__ C slots[2][kMaxWarps][2];
  pack<T, VEC>* const cache = reinterpret_cast<pack<T, VEC>*>(dynamic_smem());
  const int tid = static_cast<int>(threadIdx.x);
  const int groups = static_cast<int>(blockDim.x) / tpr;
  const int group = tid / tpr, t = tid - group * tpr;
  const int reg_packs = P * tpr;  // packs of a row held in registers; the rest go to `cache`
  const int row_packs = kCommonPathOnly ? reg_packs : (a.cols + VEC - 1) / VEC;
  const C inv_cols = a.inv_cols;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * groups;
  row_weights<T, VEC, P> w;
  w.init(a, tpr, t);

  pack<T, VEC> x_next[P], r_next[P];
  auto load_next = [&](std::int64_t row) {
    const int cols = row < a.rows ? a.cols : 0;  // a group past the last row sees an empty row
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      const int count = valid_in_pack(cols, first, VEC);
      x_next[j] = load_pack<VEC>(a.x + row * a.ld_x + first, count);
      if (add) r_next[j] = load_pack<VEC>(a.residual + row * a.ld_residual + first, count);
    }
  };
  std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * groups;
  if (kAhead && row0 < a.rows) load_next(row0 + group);
  int parity = 0;  // alternates the reduction slots: one barrier per reduction
  for (; row0 < a.rows; row0 += step) {
    const std::int64_t row = row0 + group;
    const int cols = row < a.rows ? a.cols : 0;
    pack<T, VEC> v[P];
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC, count = valid_in_pack(cols, first, VEC);
      if (!kAhead) {
        v[j] = load_input<VEC>(a, add, row, first, count);
      } else {
        v[j] = add ? fuse_add<VEC>(a, row, first, count, x_next[j], r_next[j]) : x_next[j];
      }
    }
    for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
      cache[p - reg_packs] = load_input<VEC>(a, add, row, p * VEC, valid_in_pack(cols, p * VEC, VEC));
    }
    if (kAhead && row0 + step < a.rows) load_next(row0 + step + group);
    C f[P][VEC];  // the register elements, widened once for the sums and the output
    widen_all(v, f);

    // The statistics at scale 1. Where they overflowed, or the row holds NaN/Inf, in any row of the
    // warp (of the block for whole-block rows): once more on values scaled by overflow_scale, kept
    // by those rows only. A loop, so the code exists once.
    row_stats<C> st{};
    bool bad = false;
#pragma unroll 1
    for (int pass = 0; pass < 2; ++pass) {
      const C s = pass == 0 ? C(1) : overflow_scale<C>();
      C m0 = C(0), sums[2] = {C(0), C(0)};
      if (!kRms) {
        C total[1] = {thread_sum<C>(f, s)};
        for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
          const pack<T, VEC> one[1] = {cache[p - reg_packs]};
          total[0] += thread_sum<C>(one, s);
        }
        row_sums(total, tpr, slots[parity]);
        parity ^= 1;
        m0 = total[0] * inv_cols;
#pragma unroll
        for (int j = 0; j < P; ++j) {
          add_deviations<C>(f[j], valid_in_pack(cols, (j * tpr + t) * VEC, VEC), s, m0, sums[0], sums[1]);
        }
        for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
          add_deviations<C>(cache[p - reg_packs], valid_in_pack(cols, p * VEC, VEC), s, m0, sums[0], sums[1]);
        }
        row_sums(sums, tpr, slots[parity]);
      } else {
        C total[1] = {thread_sum_squares<C>(f, s)};
        for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
          const pack<T, VEC> one[1] = {cache[p - reg_packs]};
          total[0] += thread_sum_squares<C>(one, s);
        }
        row_sums(total, tpr, slots[parity]);
        sums[1] = total[0];
      }
      parity ^= 1;
      bool ok = true;
      const row_stats<C> now = finish_stats(kRms, m0, sums[0], sums[1], inv_cols, a.eps, s, ok);
      if (pass == 0) {
        st = now;
        bad = !ok;
        if (kCommonPathOnly || !row_uniform_any(bad, tpr)) break;
      } else if (bad) {
        st = now;
      }
    }

#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      const int count = valid_in_pack(cols, first, VEC);
      if (count > 0) w.store(a, j, row, first, count, f[j], st);
    }
    for (int p = reg_packs + t; !kCommonPathOnly && p < row_packs; p += tpr) {
      store_output<VEC>(a, row, p * VEC, valid_in_pack(cols, p * VEC, VEC), cache[p - reg_packs], st);
    }
    if (t == 0 && cols > 0) store_stats(a, row, st);
  }
}

/// Split tier, first pass: the statistics of chunk blockIdx.x (kSplitBlock * ITEMS columns) of rows
/// blockIdx.y, blockIdx.y + gridDim.y, ... into ws[row][chunk][4]: the chunk's rough mean m0, its
/// offset off (mean = m0 + off), its M2 (0, 0 and the sum of squares for RMSNorm), and the scale
/// they were taken at. The fused add also writes s here. Nothing is read but the chunk itself.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kSplitBlock, 1) forward_chunk_stats_kernel(const forward_args<T> a,
                                                                          stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  __shared__ C slots[2][kMaxWarps][2];
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_first = chunk * tpr * ITEMS;
  const C inv_n = chunk + 1 < static_cast<int>(gridDim.x) ? a.inv_chunk : a.inv_last_chunk;
  for (std::int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    pack<T, VEC> v[P];
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = chunk_first + (j * tpr + tid) * VEC;
      v[j] = load_input<VEC>(a, a.residual != nullptr, row, first, valid_in_pack(a.cols, first, VEC));
    }
    C out[3] = {C(0), C(0), C(0)}, scale = C(1);
#pragma unroll 1
    for (int pass = 0; pass < 2; ++pass) {  // the block is the chunk: every decision is block-uniform
      const C s = pass == 0 ? C(1) : overflow_scale<C>();
      bool ok;
      if (!a.rms) {
        C total[1] = {thread_sum<C>(v, s)}, sums[2] = {C(0), C(0)};
        row_sums(total, tpr, slots[0]);
        const C m0 = total[0] * inv_n;
#pragma unroll
        for (int j = 0; j < P; ++j) {
          add_deviations<C>(v[j], valid_in_pack(a.cols, chunk_first + (j * tpr + tid) * VEC, VEC), s, m0, sums[0],
                            sums[1]);
        }
        row_sums(sums, tpr, slots[1]);
        const C off = sums[0] * inv_n, m2 = sums[1] - sums[0] * off;
        out[0] = m0;
        out[1] = off;
        out[2] = m2 < C(0) ? C(0) : m2;
        ok = finite(m0) && finite(out[2]);
      } else {
        C total[1] = {thread_sum_squares<C>(v, s)};
        row_sums(total, tpr, slots[0]);
        out[2] = total[0];
        ok = finite(total[0]);
      }
      __syncthreads();  // both slot sets are free again (the second pass, the next row)
      scale = s;
      if (ok) break;
    }
    if (tid == 0) {
      C* const o = ws + (row * chunks + chunk) * 4;
      o[0] = out[0];
      o[1] = out[1];
      o[2] = out[2];
      o[3] = scale;
    }
  }
}

/// Split tier, second pass: merges a row's chunk statistics (in chunk order, at one scale, around
/// chunk 0's rough mean) and normalizes chunk blockIdx.x, reading x (or the fused add's s) again.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kSplitBlock, 1) forward_chunk_normalize_kernel(const forward_args<T> a,
                                                                              const stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_size = tpr * ITEMS, chunk_first = chunk * chunk_size;
  const T* const src = a.residual != nullptr ? a.s : a.x;
  const std::int64_t ld = a.residual != nullptr ? a.ld_s : a.ld_x;
  const C inv_cols = a.inv_cols;
  for (std::int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    const C* const st = ws + row * chunks * 4;
    bool any_scaled = false;
    for (int c = 0; c < chunks; ++c) any_scaled |= st[c * 4 + 3] != C(1);
    // Every thread merges the same values in the same order: the same bits, no barrier. Chunk c's
    // mean relative to chunk 0's rough mean is (m0_c - m0_0) + off_c, the first difference exact
    // for nearby means; then the exact merge of counts, means and M2s.
    auto merged = [&](C s, C& m0, C& off, C& m2_out) {  // RMSNorm: m0 = off = 0, M2 the sum of squares
      auto f = [&](int c) { return st[c * 4 + 3] == s ? C(1) : overflow_scale<C>(); };  // s = overflow_scale, chunk at 1
      m0 = st[0] * f(0);
      C weighted = C(0), m2 = C(0);
      for (int c = 0; c < chunks; ++c) {
        const C n = static_cast<C>(valid_in_pack(a.cols, c * chunk_size, chunk_size));
        weighted += n * ((st[c * 4] * f(c) - m0) + st[c * 4 + 1] * f(c));
        m2 += st[c * 4 + 2] * f(c) * f(c);
      }
      off = weighted * inv_cols;
      if (!a.rms) {
        for (int c = 0; c < chunks; ++c) {
          const C n = static_cast<C>(valid_in_pack(a.cols, c * chunk_size, chunk_size));
          const C d = ((st[c * 4] * f(c) - m0) + st[c * 4 + 1] * f(c)) - off;
          m2 = fma(n * d, d, m2);
        }
      }
      m2_out = m2;
    };
    C s = any_scaled ? overflow_scale<C>() : C(1), m0, off, m2;
    merged(s, m0, off, m2);
    bool ok = true;
    row_stats<C> rs = make_stats(a.rms, m0, off, m2 * inv_cols, a.eps, s, ok);
    if (!ok && s == C(1)) {
      s = overflow_scale<C>();
      merged(s, m0, off, m2);
      rs = make_stats(a.rms, m0, off, m2 * inv_cols, a.eps, s, ok);
    }
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = chunk_first + (j * tpr + tid) * VEC;
      const int count = valid_in_pack(a.cols, first, VEC);
      if (count > 0) store_output<VEC>(a, row, first, count, load_pack<VEC>(src + row * ld + first, count), rs);
    }
    if (chunk == 0 && tid == 0) store_stats(a, row, rs);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace lnorm
