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
};

/// The n valid elements of the pack at column `first` of a row's input: x, or for the fused add
/// s = (x + bias_in) + residual rounded to T (two roundings in the compute type, as the CPU
/// kernels do), which is also stored to s.
template <int N, class T>
__device__ __forceinline__ pack<T, N> load_input(const forward_args<T>& a, std::int64_t row, int first, int n) {
  using C = stat_t<T>;
  pack<T, N> v = load_pack<N>(a.x + row * a.ld_x + first, n);
  if (a.residual == nullptr || n <= 0) return v;
  const pack<T, N> r = load_pack<N>(a.residual + row * a.ld_residual + first, n);
  C bias[N];
  load_param<N, T>(a.bias_in, a.w_float, first, n, C(0), bias);
#pragma unroll
  for (int e = 0; e < N; ++e) {
    C xb = static_cast<C>(widen(v.v[e]));
    if (a.bias_in != nullptr) xb = xb + bias[e];  // no "+ 0" without bias_in: it would turn -0 into +0
    v.v[e] = narrow<T>(xb + static_cast<C>(widen(r.v[e])));
  }
  store_pack<N>(a.s + row * a.ld_s + first, v, n);
  return v;
}

/// The row's shift for its moments: its first input element (for the fused add, s's first element
/// computed as load_input does, without storing it), read by every thread of the row.
template <class T>
__device__ __forceinline__ stat_t<T> row_shift(const forward_args<T>& a, std::int64_t row) {
  using C = stat_t<T>;
  const T x0 = a.x[row * a.ld_x];
  if (a.residual == nullptr) return static_cast<C>(widen(x0));
  C xb = static_cast<C>(widen(x0));
  if (a.bias_in != nullptr) {
    C bias[1];
    load_param<1, T>(a.bias_in, a.w_float, 0, 1, C(0), bias);
    xb = xb + bias[0];
  }
  return static_cast<C>(widen(narrow<T>(xb + static_cast<C>(widen(a.residual[row * a.ld_residual])))));
}

/// y = ((x*scale - shift) - mean_s) * rstd_s * gamma + beta for the n valid elements of one pack
/// (shift: the row's shift times scale; mean_s: the mean of x*scale - shift).
template <int N, class T>
__device__ __forceinline__ void store_output(const forward_args<T>& a, std::int64_t row, int first, int n,
                                             const pack<T, N>& v, stat_t<T> scale, stat_t<T> shift,
                                             stat_t<T> mean_s, stat_t<T> rstd_s) {
  using C = stat_t<T>;
  C g[N], b[N];
  load_param<N, T>(a.gamma, a.w_float, first, n, C(1), g);
  load_param<N, T>(a.beta, a.w_float, first, n, C(0), b);
  pack<T, N> out;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const C xhat = ((static_cast<C>(widen(v.v[e])) * scale - shift) - mean_s) * rstd_s;
    out.v[e] = narrow<T>(xhat * g[e] + b[e]);
  }
  store_pack<N>(a.y + row * a.ld_y + first, out, n);
}

/// rstd at `scale` of a row from its M2 (layer norm).
template <class C>
__device__ __forceinline__ C rstd_from_m2(C m2, C inv_cols, C eps, C scale) {
  return inv_sqrt(m2 * inv_cols + eps * scale * scale);
}

/// rstd at `scale` of a row from its sum of squares (RMSNorm); NaN for a row with NaN or Inf.
template <class C>
__device__ __forceinline__ C rstd_from_sum_squares(C ss, C inv_cols, C eps, C scale) {
  const C ms = ss * inv_cols;
  return finite(ms) ? inv_sqrt(ms + eps * scale * scale) : ms - ms;
}

/// The row tiers: `tpr` threads per row (a power of two <= 32 with several rows per block, or the
/// whole block, a multiple of 32). Thread t of a row holds packs t, t + tpr, ... (ITEMS/VEC of them,
/// VEC elements each) in registers; a row longer than that keeps the rest in dynamic shared memory
/// (whole-block rows only; each thread reads back only what it wrote). Blocks stride over the rows.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(1024) forward_rows_kernel(const forward_args<T> a, const int tpr) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  __shared__ moments<C> merge_slots[2][kWarp];
  __shared__ C sum_slots[2][kWarp][2];
  pack<T, VEC>* const cache = reinterpret_cast<pack<T, VEC>*>(dynamic_smem());
  const int tid = static_cast<int>(threadIdx.x);
  const int groups = static_cast<int>(blockDim.x) / tpr;
  const int group = tid / tpr, t = tid - group * tpr;
  const int row_packs = (a.cols + VEC - 1) / VEC;
  const int reg_packs = P * tpr;  // packs of a row held in registers; the rest go to `cache`
  const C inv_cols = C(1) / static_cast<C>(a.cols);
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * groups;
  int parity = 0;  // alternates the reduction slots between rows: one barrier per row, not two
  for (std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * groups; row0 < a.rows; row0 += step) {
    const std::int64_t row = row0 + group;
    const int cols = row < a.rows ? a.cols : 0;  // a group past the last row sees an empty row
    pack<T, VEC> v[P];
    int n = 0;  // this thread's valid elements in registers: a prefix of (pack, element)
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      const int count = valid_in_pack(cols, first, VEC);
      v[j] = load_input<VEC>(a, row, first, count);
      n += count;
    }
    for (int p = reg_packs + t; p < row_packs; p += tpr) {
      cache[p - reg_packs] = load_input<VEC>(a, row, p * VEC, valid_in_pack(cols, p * VEC, VEC));
    }

    // The row's moments (sum of squares for RMSNorm) at scale 1. Where they overflowed, or the row
    // holds NaN/Inf, in any row of the warp (of the block for whole-block rows): once more on values
    // scaled by overflow_scale, kept by those rows only. A loop, so the code exists once.
    const C row_first = !a.rms && cols > 0 ? row_shift(a, row) : C(0);
    C scale = C(1), mean_s = C(0), sq = C(0);
    bool bad = false;
#pragma unroll 1
    for (int pass = 0; pass < 2; ++pass) {
      const C s = pass == 0 ? C(1) : overflow_scale<C>();
      C mean_p = C(0), sq_p;
      bool ok;
      if (!a.rms) {
        moments<C> m = thread_moments<C>(v, n, s, row_first * s);
        for (int p = reg_packs + t; p < row_packs; p += tpr) {
          const pack<T, VEC> one[1] = {cache[p - reg_packs]};
          m = merge(m, thread_moments<C>(one, valid_in_pack(cols, p * VEC, VEC), s, row_first * s));
        }
        m = row_merge(m, tpr, merge_slots[parity ^ pass]);
        mean_p = m.mean;
        sq_p = m.m2;
        ok = finite(m.mean) && finite(m.m2);
      } else {
        sq_p = thread_sum_squares<C>(v, n, s);
        for (int p = reg_packs + t; p < row_packs; p += tpr) {
          const pack<T, VEC> one[1] = {cache[p - reg_packs]};
          sq_p += thread_sum_squares<C>(one, valid_in_pack(cols, p * VEC, VEC), s);
        }
        C unused = C(0);
        row_sum2(sq_p, unused, tpr, sum_slots[parity ^ pass]);
        ok = finite(sq_p);
      }
      if (pass == 0) {
        mean_s = mean_p;
        sq = sq_p;
        bad = !ok;
        if (!row_uniform_any(bad, tpr)) break;
      } else {
        if (tpr > kWarp) __syncthreads();  // the other slots are free again for the next row
        if (bad) {
          mean_s = mean_p;
          sq = sq_p;
          scale = s;
        }
      }
    }
    const C rstd_s = a.rms ? rstd_from_sum_squares(sq, inv_cols, a.eps, scale) : rstd_from_m2(sq, inv_cols, a.eps, scale);

#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = (j * tpr + t) * VEC;
      const int count = valid_in_pack(cols, first, VEC);
      if (count > 0) store_output<VEC>(a, row, first, count, v[j], scale, row_first * scale, mean_s, rstd_s);
    }
    for (int p = reg_packs + t; p < row_packs; p += tpr) {
      store_output<VEC>(a, row, p * VEC, valid_in_pack(cols, p * VEC, VEC), cache[p - reg_packs], scale,
                        row_first * scale, mean_s, rstd_s);
    }
    if (t == 0 && cols > 0) {
      if (a.mean != nullptr) a.mean[row] = row_first + mean_s / scale;
      if (a.rstd != nullptr) a.rstd[row] = rstd_s * scale;
    }
    parity ^= 1;
  }
}

/// Split tier, first pass: the statistics of chunk blockIdx.x (kSplitBlock * ITEMS columns) of rows
/// blockIdx.y, blockIdx.y + gridDim.y, ... into ws[row][chunk][4]: count, mean (0 for RMSNorm), M2
/// (sum of squares for RMSNorm), and the scale they were taken at. The fused add also writes s here.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kSplitBlock) forward_chunk_stats_kernel(const forward_args<T> a,
                                                                          stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  __shared__ moments<C> merge_slots[2][kWarp];
  __shared__ C sum_slots[2][kWarp][2];
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_first = chunk * tpr * ITEMS;
  int parity = 0;
  for (std::int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    pack<T, VEC> v[P];
    int n = 0;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = chunk_first + (j * tpr + tid) * VEC;
      const int count = valid_in_pack(a.cols, first, VEC);
      v[j] = load_input<VEC>(a, row, first, count);
      n += count;
    }
    C* const out = ws + (row * chunks + chunk) * 4;
    if (!a.rms) {
      const C row_first = row_shift(a, row);
      moments<C> m = row_merge(thread_moments<C>(v, n, C(1), row_first), tpr, merge_slots[parity]);
      C scale = C(1);
      if (!(finite(m.mean) && finite(m.m2))) {  // the same in every thread: the row part is the block
        const C s = overflow_scale<C>();
        m = row_merge(thread_moments<C>(v, n, s, row_first * s), tpr, merge_slots[parity ^ 1]);
        __syncthreads();
        scale = overflow_scale<C>();
      }
      if (tid == 0) {
        out[0] = static_cast<C>(m.n);
        out[1] = m.mean;
        out[2] = m.m2;
        out[3] = scale;
      }
    } else {
      C ss = thread_sum_squares<C>(v, n, C(1)), unused = C(0);
      row_sum2(ss, unused, tpr, sum_slots[parity]);
      C scale = C(1);
      if (!finite(ss)) {
        ss = thread_sum_squares<C>(v, n, overflow_scale<C>());
        unused = C(0);
        row_sum2(ss, unused, tpr, sum_slots[parity ^ 1]);
        __syncthreads();
        scale = overflow_scale<C>();
      }
      if (tid == 0) {
        out[0] = static_cast<C>(valid_in_pack(a.cols, chunk_first, tpr * ITEMS));
        out[1] = C(0);
        out[2] = ss;
        out[3] = scale;
      }
    }
    parity ^= 1;
  }
}

/// Split tier, second pass: merges a row's chunk statistics (in chunk order, at one scale) and
/// normalizes chunk blockIdx.x, reading x (or the fused add's s) again.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kSplitBlock) forward_chunk_normalize_kernel(const forward_args<T> a,
                                                                              const stat_t<T>* const ws) {
  using C = stat_t<T>;
  constexpr int P = ITEMS / VEC;
  const int tid = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int chunk = static_cast<int>(blockIdx.x), chunks = static_cast<int>(gridDim.x);
  const int chunk_first = chunk * tpr * ITEMS;
  const T* const src = a.residual != nullptr ? a.s : a.x;
  const std::int64_t ld = a.residual != nullptr ? a.ld_s : a.ld_x;
  const C inv_cols = C(1) / static_cast<C>(a.cols);
  for (std::int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    const C* const st = ws + row * chunks * 4;
    bool any_scaled = false;
    for (int c = 0; c < chunks; ++c) any_scaled |= st[c * 4 + 3] != C(1);
    // Every thread merges the same values in the same order: the same bits, no barrier.
    auto merged = [&](C s) {
      moments<C> m{0, C(0), C(0)};
      for (int c = 0; c < chunks; ++c) {
        const C f = s / st[c * 4 + 3];  // 1, or the overflow scale for a chunk taken at scale 1
        m = merge(m, moments<C>{static_cast<int>(st[c * 4]), st[c * 4 + 1] * f, st[c * 4 + 2] * f * f});
      }
      return m;
    };
    C scale = any_scaled ? overflow_scale<C>() : C(1), mean_s = C(0), rstd_s;
    const C row_first = a.rms ? C(0) : static_cast<C>(widen(src[row * ld]));  // s's first element is written
    if (!a.rms) {
      moments<C> m = merged(scale);
      if (scale == C(1) && !(finite(m.mean) && finite(m.m2))) {
        scale = overflow_scale<C>();
        m = merged(scale);
      }
      mean_s = m.mean;
      rstd_s = rstd_from_m2(m.m2, inv_cols, a.eps, scale);
    } else {
      C ss = merged(scale).m2;
      if (scale == C(1) && !finite(ss)) {
        scale = overflow_scale<C>();
        ss = merged(scale).m2;
      }
      rstd_s = rstd_from_sum_squares(ss, inv_cols, a.eps, scale);
    }
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int first = chunk_first + (j * tpr + tid) * VEC;
      const int count = valid_in_pack(a.cols, first, VEC);
      if (count > 0) {
        store_output<VEC>(a, row, first, count, load_pack<VEC>(src + row * ld + first, count), scale,
                          row_first * scale, mean_s, rstd_s);
      }
    }
    if (chunk == 0 && tid == 0) {
      if (a.mean != nullptr) a.mean[row] = row_first + mean_s / scale;
      if (a.rstd != nullptr) a.rstd[row] = rstd_s * scale;
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace lnorm
