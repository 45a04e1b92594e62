// lnorm/cuda/device.cuh: what every lnorm CUDA kernel is built from. Element types and their compute
// type, aligned vector packs with masked partial packs, row moments merged with Chan's formula,
// reductions over the threads of one row, and, on the host side, device properties, occupancy and
// the launch helper. Built with LNORM_CUDA_EMULATE, the same code runs on the CPU under
// lnorm/cuda/testing/emulator.hpp (tests without a GPU).
#pragma once

#if defined(LNORM_CUDA_EMULATE)
#include <lnorm/cuda/testing/emulator.hpp>
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <type_traits>

// The emulator checks the alignment of every vector access; on a GPU a misaligned one would fault.
#if !defined(LNORM_CUDA_CHECK_ALIGNED)
#define LNORM_CUDA_CHECK_ALIGNED(ptr, align) ((void)0)
#endif

namespace lnorm {
namespace cuda {

/// The type of the statistics (mean, rstd), of the dweight/dbias partial sums and of all arithmetic
/// for element type T: double for double; float for float, __half and __nv_bfloat16.
template <class T>
using stat_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// What a call returns: cudaSuccess, or the error and a static message saying what was wrong.
struct status {
  cudaError_t error = cudaSuccess;
  const char* message = nullptr;
  explicit operator bool() const noexcept { return error == cudaSuccess; }
};

namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

/// Built with LNORM_CUDA_SASS_COMMON_PATH (by bench/cuda_sass.py --common-path, for analysis only: such
/// kernels are wrong for partial packs, long or overflowing rows), the kernels keep only the path most
/// rows take: whole vectors, rows held in registers, statistics that need no second, scaled pass.
/// Their row loop then counts about the instructions one row executes.
#if defined(LNORM_CUDA_SASS_COMMON_PATH)
constexpr bool kCommonPathOnly = true;
#else
constexpr bool kCommonPathOnly = false;
#endif

// ---- element types ----------------------------------------------------------------------------

/// T, in a context that does not deduce it: the public calls' weights are `const identity_t<W>*`,
/// so that W is T unless given (as in lnorm.hpp) and nullptr works for any of them.
template <class T>
struct identity {
  using type = T;
};
template <class T>
using identity_t = typename identity<T>::type;

template <class T>
inline constexpr bool is_element_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                     std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

/// Elements per 16-byte vector access.
template <class T>
inline constexpr int max_vec_v = static_cast<int>(16 / sizeof(T));

__host__ __device__ __forceinline__ float widen(float v) { return v; }
__host__ __device__ __forceinline__ double widen(double v) { return v; }
__host__ __device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

/// v rounded to T (round to nearest even).
template <class T, class C>
__host__ __device__ __forceinline__ T narrow(C v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

/// False for NaN and +-Inf (no isfinite: the same test compiles for the emulator and needs no libm).
template <class C>
__device__ __forceinline__ bool finite(C v) {
  return v - v == C(0);
}

/// 1/sqrt(v): the hardware's reciprocal square root on a GPU (rsqrtf: 2 ulp at most); correctly
/// rounded under the emulator.
template <class C>
__device__ __forceinline__ C inv_sqrt(C v) {
#if defined(LNORM_CUDA_EMULATE)
  return C(1) / std::sqrt(v);
#else
  if constexpr (std::is_same_v<C, float>) {
    return rsqrtf(v);
  } else {
    return rsqrt(v);
  }
#endif
}

/// a*b + c rounded once (the emulator computes the same bits as the GPU's fused multiply-add).
template <class C>
__device__ __forceinline__ C fma(C a, C b, C c) {
#if defined(LNORM_CUDA_EMULATE)
  return std::fma(a, b, c);
#else
  if constexpr (std::is_same_v<C, float>) {
    return fmaf(a, b, c);
  } else {
    return ::fma(a, b, c);
  }
#endif
}

/// Rows whose squares overflow the compute type are redone on values scaled by this power of two
/// (then (x*s - mean*s)^2 summed over 2^40 elements stays finite): exact, and only on that path.
template <class C>
__device__ __forceinline__ C overflow_scale() {
  if constexpr (std::is_same_v<C, double>) {
    return 0x1p-540;
  } else {
    return 0x1p-90f;
  }
}

/// 1 / scale for the two scales statistics are taken at (a constant: no division).
template <class C>
__device__ __forceinline__ C unscale(C scale) {
  if constexpr (std::is_same_v<C, double>) {
    return scale == C(1) ? C(1) : 0x1p540;
  } else {
    return scale == C(1) ? C(1) : 0x1p90f;
  }
}

// ---- vector packs -----------------------------------------------------------------------------

/// N consecutive elements, aligned for one vector access (at most 16 bytes: wider packs of float
/// weights next to 8 half elements are two 16-byte accesses).
template <class T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) pack {
  T v[N];
};

/// Pack at p holding n valid elements (n >= N: one vector load; 0 < n < N: element loads, the rest
/// zero; n <= 0: all zero, nothing read).
template <int N, class T>
__device__ __forceinline__ pack<T, N> load_pack(const T* p, int n) {
  pack<T, N> r;
  if (kCommonPathOnly || n >= N) {
    LNORM_CUDA_CHECK_ALIGNED(p, alignof(pack<T, N>));
    r = *reinterpret_cast<const pack<T, N>*>(p);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) r.v[e] = e < n ? p[e] : narrow<T>(0.0f);
  }
  return r;
}

/// Stores the first n elements of v at p (all N in one vector store when n >= N).
template <int N, class T>
__device__ __forceinline__ void store_pack(T* p, const pack<T, N>& v, int n) {
  if (kCommonPathOnly || n >= N) {
    LNORM_CUDA_CHECK_ALIGNED(p, alignof(pack<T, N>));
    *reinterpret_cast<pack<T, N>*>(p) = v;
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) {
      if (e < n) p[e] = v.v[e];
    }
  }
}

/// The pack of a parameter (weight, bias, bias_in) for columns [first, first + N) as compute type C:
/// the parameter is T, or float when w_float; without one (null) all `fallback`.
template <int N, class T, class C>
__device__ __forceinline__ void load_param(const void* w, bool w_float, int first, int n, C fallback, C (&out)[N]) {
  if (w == nullptr) {
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = fallback;
    return;
  }
  if constexpr (!std::is_same_v<T, float>) {
    if (!w_float) {
      const pack<T, N> v = load_pack<N>(static_cast<const T*>(w) + first, n);
#pragma unroll
      for (int e = 0; e < N; ++e) out[e] = static_cast<C>(widen(v.v[e]));
      return;
    }
  }
  const pack<float, N> v = load_pack<N>(static_cast<const float*>(w) + first, n);
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = static_cast<C>(v.v[e]);
}

/// Number of a pack's N elements before column `cols`, for the pack starting at column `first`.
__device__ __forceinline__ int valid_in_pack(int cols, int first, int n_max) {
  const int n = cols - first;
  return n < 0 ? 0 : (n > n_max ? n_max : n);
}

// ---- statistics ------------------------------------------------------------------------------
//
// A row's statistics are the corrected two-pass formula over values held in registers (and shared
// memory): a first pass for a rough mean m0 = sum(x*s)/n, a second for the sums of d = x*s - m0 and
// d^2; the mean is the pair (m0, off = sum(d)/n) and M2 = sum(d^2) - sum(d)*off. Never
// E[x^2] - E[x]^2, no shift read back from memory, and nothing but plain sums crosses threads: no
// division per reduction level. A constant row has d exactly equal in every element, so off equals it
// exactly and d - off is exactly 0 (y is exactly the bias).

/// A thread's P*N register elements as compute type, widened once for all passes over them.
template <class C, int P, int N, class T>
__device__ __forceinline__ void widen_all(const pack<T, N> (&v)[P], C (&f)[P][N]) {
#pragma unroll
  for (int j = 0; j < P; ++j) {
#pragma unroll
    for (int e = 0; e < N; ++e) f[j][e] = static_cast<C>(widen(v[j].v[e]));
  }
}

/// Sum of f*s over widened register elements (padding elements are zero: nothing to mask).
template <class C, int P, int N>
__device__ __forceinline__ C thread_sum(const C (&f)[P][N], C s) {
  C acc = 0;
#pragma unroll
  for (int j = 0; j < P; ++j) {
#pragma unroll
    for (int e = 0; e < N; ++e) acc = fma(f[j][e], s, acc);
  }
  return acc;
}

/// Adds d = f*s - m0 and d^2 of the first `count` widened elements of one pack to d1 and d2.
template <class C, int N>
__device__ __forceinline__ void add_deviations(const C (&f)[N], int count, C s, C m0, C& d1, C& d2) {
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const C d = (kCommonPathOnly || count >= N || e < count) ? fma(f[e], s, -m0) : C(0);
    d1 += d;
    d2 = fma(d, d, d2);
  }
}

/// Sum of (f*s)^2 over widened register elements (RMSNorm; padding is zero).
template <class C, int P, int N>
__device__ __forceinline__ C thread_sum_squares(const C (&f)[P][N], C s) {
  C acc = 0;
#pragma unroll
  for (int j = 0; j < P; ++j) {
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const C d = f[j][e] * s;
      acc = fma(d, d, acc);
    }
  }
  return acc;
}

// The same on packs as loaded (the shared-memory part of a row, the split tier's chunks).

template <class C, int P, int N, class T>
__device__ __forceinline__ C thread_sum(const pack<T, N> (&v)[P], C s) {
  C f[P][N];
  widen_all(v, f);
  return thread_sum(f, s);
}

template <class C, int N, class T>
__device__ __forceinline__ void add_deviations(const pack<T, N>& v, int count, C s, C m0, C& d1, C& d2) {
  const pack<T, N> one[1] = {v};
  C f[1][N];
  widen_all(one, f);
  add_deviations(f[0], count, s, m0, d1, d2);
}

template <class C, int P, int N, class T>
__device__ __forceinline__ C thread_sum_squares(const pack<T, N> (&v)[P], C s) {
  C f[P][N];
  widen_all(v, f);
  return thread_sum_squares(f, s);
}

// ---- reductions over the threads of a row -----------------------------------------------------
//
// A row belongs to `tpr` threads: a power of two up to 32 (several rows per warp; shuffles only),
// or a multiple of 32 that is the whole block (one row per block; shuffles, one barrier, shuffles).
// Every thread of the row ends with the same bits, so the threads never disagree on a statistic.

/// Most warps in a block of lnorm's row kernels (blocks of at most kMaxBlock threads).
constexpr int kMaxBlock = 512;
constexpr int kMaxWarps = kMaxBlock / kWarp;

/// Sum over each aligned group of `width` lanes (a power of two <= 32; addition commutes exactly,
/// so both partners of every exchange compute the same bits).
template <class C>
__device__ __forceinline__ C warp_sum(C v, int width) {
#pragma unroll
  for (int offset = 1; offset < kWarp; offset <<= 1) {
    if (offset < width) v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

/// Sums of NV (1 or 2) values over a whole row, in every thread of it. `slots` holds kMaxWarps
/// entries of shared memory; consecutive calls alternate two sets, which makes one barrier per call
/// enough: a set is written again only after the next call's barrier, which every reader of its
/// previous values has reached. The cross-warp stage is a shuffle too: lane l of every warp takes
/// warp l's sum (0 past the last warp) and the whole warp adds them in one butterfly, the same in
/// every warp.
template <int NV, class C>
__device__ __forceinline__ void row_sums(C (&v)[NV], int tpr, C (*slots)[2]) {
  if (tpr < kWarp) {
#pragma unroll
    for (int k = 0; k < NV; ++k) v[k] = warp_sum(v[k], tpr);
    return;
  }
#pragma unroll
  for (int k = 0; k < NV; ++k) v[k] = warp_sum(v[k], kWarp);  // the whole warp: no test per level
  if (tpr == kWarp) return;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & (kWarp - 1);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < NV; ++k) slots[tid / kWarp][k] = v[k];
  }
  __syncthreads();
  const bool has = lane < (tpr >> 5);
#pragma unroll
  for (int k = 0; k < NV; ++k) v[k] = warp_sum(has ? slots[lane][k] : C(0), kWarp);
}

/// True in every thread of the warp when `pred` holds for any (tpr <= 32); the value itself
/// otherwise (then the row is the whole block and pred is already the same everywhere).
__device__ __forceinline__ bool row_uniform_any(bool pred, int tpr) {
  return tpr <= kWarp ? __any_sync(kFullMask, pred) : pred;
}

/// The kernel's dynamic shared memory (16-byte aligned).
__device__ __forceinline__ unsigned char* dynamic_smem() {
#if defined(LNORM_CUDA_EMULATE)
  return emulator::dynamic_smem();
#else
  extern __shared__ __align__(16) unsigned char lnorm_cuda_dynamic_smem[];
  return lnorm_cuda_dynamic_smem;
#endif
}

// ---- host side --------------------------------------------------------------------------------

/// What the planners need to know about a device.
struct device_info {
  int id = 0;
  int sms = 1;                      // streaming multiprocessors
  int max_threads_per_sm = 2048;
  int smem_per_block_optin = 48 * 1024;  // the most dynamic + static shared memory one block may use
};

/// The current device's properties, read once per device.
inline status current_device(device_info& info) noexcept {
  constexpr int kMaxDevices = 64;
  static std::mutex lock;
  static device_info cache[kMaxDevices];
  static bool known[kMaxDevices] = {};
  int id = 0;
  cudaError_t e = cudaGetDevice(&id);
  if (e != cudaSuccess) return {e, cudaGetErrorString(e)};
  if (id >= 0 && id < kMaxDevices) {
    std::lock_guard<std::mutex> hold(lock);
    if (known[id]) {
      info = cache[id];
      return {};
    }
  }
  device_info d;
  d.id = id;
  if ((e = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, id)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&d.max_threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, id)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&d.smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, id)) != cudaSuccess)
    return {e, cudaGetErrorString(e)};
  if (id >= 0 && id < kMaxDevices) {
    std::lock_guard<std::mutex> hold(lock);
    cache[id] = d;
    known[id] = true;
  }
  info = d;
  return {};
}

/// Static shared memory of a kernel on elements T, at most (the reduction slots: up to 1.3 KiB with
/// float statistics, 2.5 KiB with double; tests/test_cuda.py checks ptxas's figures against these).
/// The rest of a block's opt-in limit is what the planners may use as dynamic shared memory.
template <class T>
inline constexpr std::size_t static_smem_v = sizeof(stat_t<T>) == 8 ? 4096 : 2048;

template <class T>
std::size_t smem_limit(const device_info& dev) {
  const std::size_t optin = static_cast<std::size_t>(dev.smem_per_block_optin);
  return optin > static_smem_v<T> ? optin - static_smem_v<T> : 0;
}

/// Blocks of `kernel` that fit on one multiprocessor at once (cached per device, kernel and shape).
/// A kernel that asks for more than the default 48 KiB of dynamic shared memory is allowed `cap`
/// (its type's smem_limit), always the same value: a later call never lowers what an earlier needs.
inline status resident_blocks(const void* kernel, int block, std::size_t smem, std::size_t cap,
                              const device_info& dev, int& blocks) noexcept {
  struct entry {
    const void* kernel;
    int device, block;
    std::size_t smem;
    int blocks;
  };
  constexpr int kEntries = 512;
  static std::mutex lock;
  static entry cache[kEntries];
  static int used = 0, next = 0;
  {
    std::lock_guard<std::mutex> hold(lock);
    for (int i = 0; i < used; ++i) {
      const entry& c = cache[i];
      if (c.kernel == kernel && c.device == dev.id && c.block == block && c.smem == smem) {
        blocks = c.blocks;
        return {};
      }
    }
  }
  cudaError_t e = cudaSuccess;
  if (smem > 48 * 1024) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cap));
    if (e != cudaSuccess) return {e, cudaGetErrorString(e)};
  }
  int n = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, block, smem);
  if (e != cudaSuccess) return {e, cudaGetErrorString(e)};
  if (n < 1) return {cudaErrorInvalidConfiguration, "lnorm: a kernel does not fit on this device"};
  std::lock_guard<std::mutex> hold(lock);
  cache[next] = {kernel, dev.id, block, smem, n};
  next = (next + 1) % kEntries;
  if (used < kEntries) ++used;
  blocks = n;
  return {};
}

/// kernel<<<grid, block, smem, stream>>>(args...), or its emulation on the CPU.
template <class... Params, class... Args>
inline status launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                     Args... args) noexcept {
#if defined(LNORM_CUDA_EMULATE)
  const cudaError_t e = emulator::launch(kernel, grid, block, smem, stream, args...);
#else
  kernel<<<grid, block, smem, stream>>>(args...);
  const cudaError_t e = cudaGetLastError();
#endif
  if (e != cudaSuccess) return {e, cudaGetErrorString(e)};
  return {};
}

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

inline int round_up_pow2(std::int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

}  // namespace detail
}  // namespace cuda
}  // namespace lnorm
