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

__device__ __forceinline__ float inv_sqrt(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double inv_sqrt(double v) { return 1.0 / sqrt(v); }

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
  if (n >= N) {
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
  if (n >= N) {
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

// ---- moments ----------------------------------------------------------------------------------

/// Count, mean and sum of squared deviations (M2) of a set of values.
template <class C>
struct moments {
  int n;
  C mean;
  C m2;
};

/// Chan, Golub and LeVeque's pairwise update: stable for any means (no E[x^2] - E[x]^2). Not
/// symmetric in its arguments, so callers always pass the lower-indexed part first.
template <class C>
__device__ __forceinline__ moments<C> merge(const moments<C>& a, const moments<C>& b) {
  if (b.n == 0) return a;
  if (a.n == 0) return b;
  const int n = a.n + b.n;
  const C wb = static_cast<C>(b.n) / static_cast<C>(n);
  const C delta = b.mean - a.mean;
  return {n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * static_cast<C>(a.n) * wb};
}

/// Moments of d = x*s - shift over the first n of a thread's P*N register elements (pack j, element
/// e in that order), by the corrected two-pass formula. `shift` is the row's first element times s,
/// the same in every thread: d is exact for elements near it, so a row whose mean is far larger than
/// its spread keeps float precision, and a constant row has mean exactly 0 and M2 exactly 0.
template <class C, int P, int N, class T>
__device__ __forceinline__ moments<C> thread_moments(const pack<T, N> (&v)[P], int n, C s, C shift) {
  if (n <= 0) return {0, C(0), C(0)};
  C d1 = 0;
#pragma unroll
  for (int j = 0; j < P; ++j) {
#pragma unroll
    for (int e = 0; e < N; ++e) d1 += j * N + e < n ? static_cast<C>(widen(v[j].v[e])) * s - shift : C(0);
  }
  const C mean = d1 / static_cast<C>(n);
  C c1 = 0, c2 = 0;
#pragma unroll
  for (int j = 0; j < P; ++j) {
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const C d = j * N + e < n ? (static_cast<C>(widen(v[j].v[e])) * s - shift) - mean : C(0);
      c1 += d;
      c2 += d * d;
    }
  }
  const C m2 = c2 - c1 * c1 / static_cast<C>(n);
  return {n, mean, m2 < C(0) ? C(0) : m2};  // not fmax: a NaN must stay NaN
}

/// Sum of squares of the first n of a thread's P*N register elements, each multiplied by s.
template <class C, int P, int N, class T>
__device__ __forceinline__ C thread_sum_squares(const pack<T, N> (&v)[P], int n, C s) {
  C acc = 0;
#pragma unroll
  for (int j = 0; j < P; ++j) {
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const C d = j * N + e < n ? static_cast<C>(widen(v[j].v[e])) * s : C(0);
      acc += d * d;
    }
  }
  return acc;
}

// ---- reductions over the threads of a row -----------------------------------------------------
//
// A row belongs to `tpr` threads: a power of two up to 32 (several rows per warp; shuffles only),
// or a multiple of 32 that is the whole block (one row per block; shuffles, then one barrier).
// Every thread of the row ends with the same bits, so the threads never disagree on a statistic.

template <class C>
__device__ __forceinline__ moments<C> shfl_xor(const moments<C>& m, int offset) {
  return {__shfl_xor_sync(kFullMask, m.n, offset), __shfl_xor_sync(kFullMask, m.mean, offset),
          __shfl_xor_sync(kFullMask, m.m2, offset)};
}

/// Butterfly over each aligned group of `width` lanes (a power of two <= 32). Both partners merge
/// (lower lane's part, upper lane's part), so they compute the same bits.
template <class C>
__device__ __forceinline__ moments<C> warp_merge(moments<C> m, int width) {
  const int lane = static_cast<int>(threadIdx.x) & (kWarp - 1);
  for (int offset = 1; offset < width; offset <<= 1) {
    const moments<C> other = shfl_xor(m, offset);
    const bool upper = (lane & offset) != 0;
    m = merge(upper ? other : m, upper ? m : other);
  }
  return m;
}

/// Sum over each aligned group of `width` lanes (addition commutes exactly: both partners agree).
template <class C>
__device__ __forceinline__ C warp_sum(C v, int width) {
  for (int offset = 1; offset < width; offset <<= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

/// Moments of a whole row from each thread's part. `slots` holds 32 entries of shared memory that
/// no other thread reads until the next barrier (callers alternate two sets between rows).
template <class C>
__device__ __forceinline__ moments<C> row_merge(moments<C> m, int tpr, moments<C>* slots) {
  m = warp_merge(m, tpr < kWarp ? tpr : kWarp);
  if (tpr <= kWarp) return m;
  const int tid = static_cast<int>(threadIdx.x);
  if ((tid & (kWarp - 1)) == 0) slots[tid / kWarp] = m;
  __syncthreads();
  moments<C> r = slots[0];
  for (int w = 1; w < tpr / kWarp; ++w) r = merge(r, slots[w]);  // one order for every thread
  return r;
}

/// Sums of two values over a whole row (slots: 32 entries, as for row_merge).
template <class C>
__device__ __forceinline__ void row_sum2(C& a, C& b, int tpr, C (*slots)[2]) {
  const int width = tpr < kWarp ? tpr : kWarp;
  a = warp_sum(a, width);
  b = warp_sum(b, width);
  if (tpr <= kWarp) return;
  const int tid = static_cast<int>(threadIdx.x);
  if ((tid & (kWarp - 1)) == 0) {
    slots[tid / kWarp][0] = a;
    slots[tid / kWarp][1] = b;
  }
  __syncthreads();
  a = slots[0][0];
  b = slots[0][1];
  for (int w = 1; w < tpr / kWarp; ++w) {
    a += slots[w][0];
    b += slots[w][1];
  }
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
