// lnorm/cuda/testing/emulator.hpp: runs lnorm's CUDA kernels on the CPU, so that their logic is
// tested on machines without a GPU. A translation unit compiled by a host compiler (g++, clang++;
// the CUDA headers on the include path, no nvcc) with -DLNORM_CUDA_EMULATE includes this before
// lnorm/cuda/norm.cuh (device.cuh does it). Each CUDA thread of a block is a cooperative fiber;
// __syncthreads, warp shuffles and votes are rendezvous points, so a barrier or shuffle that not all
// threads reach is reported as a deadlock instead of passing silently. Vector accesses are checked
// for alignment, shared memory starts filled with garbage, and out-of-range launches are errors.
// It does not model timing, caches, memory ordering between blocks, or the GPU's float rounding of
// sqrt. It also defines the few CUDA runtime functions lnorm calls (memory is host memory), so
// include it in one translation unit of a program only.
//
// The schedule: a fiber runs until it waits (a barrier, a shuffle, a vote) or exits; the scheduler
// then sweeps the block's fibers again, and runs a launch's blocks one after the other. By default
// in a fixed order (fibers 0..n-1 each sweep, blocks in index order), which hides races: a thread
// that writes memory another thread of the block reads in the same barrier interval (or another
// block reads at all) may look right only because it happens to run first. A seeded schedule
// (set_schedule_seed, or the environment variable LNORM_EMULATOR_SEED, read once) runs the fibers
// runnable at the start of each sweep (each barrier interval) in a new random permutation and a
// launch's blocks in a random order, and lets half the threads (drawn per block) yield now and then
// at their vector loads and stores, so that threads interleave within an interval too; the same
// seed gives the same schedule. kReversedSchedule (or LNORM_EMULATOR_SEED=reversed) runs fibers and
// blocks in reverse order: a fixed adversarial schedule. Shared memory and global memory are one
// coherent memory here: a race shows as a result that depends on the order, never as a stale read.
//
// Emulated devices (cudaSetDevice): 0 has 3 multiprocessors and 227 KiB of shared memory per block
// (an H100's); 1 has 2 multiprocessors and 3 KiB, so that every long row takes the split path.
#pragma once

#if !defined(LNORM_CUDA_EMULATE)
#error "lnorm/cuda/testing/emulator.hpp replaces the CUDA runtime: compile with -DLNORM_CUDA_EMULATE"
#endif

// The execution-space keywords are empty for host code (defined before CUDA's headers, which then
// keep them); shared memory is static storage, shared by the fibers of the block that runs.
#define __host__
#define __device__
#define __global__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __forceinline__
#define __forceinline__ inline

#include <ucontext.h>

// swapcontext returns twice, which GCC's -Wclobbered cannot see is harmless here. (The kernels'
// "#pragma unroll" means nothing to a host compiler: build with -Wno-unknown-pragmas.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wclobbered"
#endif

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

using std::sqrt;

namespace lnorm {
namespace cuda {
namespace emulator {

struct device_model {
  int sms;
  int max_threads_per_sm;
  int smem_per_block_optin;
};

inline const device_model& model(int device) {
  static const device_model models[] = {{3, 2048, 227 * 1024}, {2, 2048, 3 * 1024}};
  return models[device == 1 ? 1 : 0];
}

inline int& current_device() {
  static int device = 0;
  return device;
}

// ---- the schedule ---------------------------------------------------------------------------------

/// The seed of the schedule that runs fibers and blocks in reverse order.
constexpr std::uint64_t kReversedSchedule = ~std::uint64_t(0);

/// splitmix64: a small, fast generator, the same sequence for a seed on every platform.
inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// "reversed" as kReversedSchedule, else a number (decimal, 0x hex); false if neither.
inline bool parse_schedule_seed(const char* text, std::uint64_t& seed) {
  if (text == nullptr || *text == '\0') return false;
  if (std::strcmp(text, "reversed") == 0) {
    seed = kReversedSchedule;
    return true;
  }
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 0);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-') return false;
  seed = v;
  return true;
}

struct schedule_state {
  std::uint64_t seed = 0;   // 0: fixed order; kReversedSchedule: reverse order; else random
  std::uint64_t state = 0;  // the generator's state, advanced by every random choice
};

inline void fail(const char* what);

/// The schedule, initialised from LNORM_EMULATOR_SEED on first use.
inline schedule_state& schedule() {
  static schedule_state s = [] {
    schedule_state init;
    const char* env = std::getenv("LNORM_EMULATOR_SEED");
    if (env != nullptr && *env != '\0' && !parse_schedule_seed(env, init.seed))
      fail("LNORM_EMULATOR_SEED: expected a number (0: fixed order) or \"reversed\"");
    init.state = init.seed;
    return init;
  }();
  return s;
}

/// Sets the schedule: 0 the fixed order, kReversedSchedule the reverse order, any other seed a
/// random order (the generator restarts: the same seed, the same schedule from here on).
inline void set_schedule_seed(std::uint64_t seed) {
  schedule().seed = seed;
  schedule().state = seed;
}

/// The seed last set (by set_schedule_seed or LNORM_EMULATOR_SEED).
inline std::uint64_t schedule_seed() { return schedule().seed; }

/// Puts `order` (any order of some items) in the schedule's order: as is for the fixed order,
/// reversed, or a uniformly random permutation (Fisher-Yates).
template <class V>
void schedule_order(V& order) {
  schedule_state& s = schedule();
  if (s.seed == 0) return;
  const std::size_t n = order.size();
  if (s.seed == kReversedSchedule) {
    for (std::size_t i = 0; i < n / 2; ++i) std::swap(order[i], order[n - 1 - i]);
    return;
  }
  for (std::size_t i = n; i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(splitmix64(s.state) % i);  // bias negligible for i <= 2^16
    std::swap(order[i - 1], order[j]);
  }
}

struct fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  uint3 thread;
  int linear = 0;  // x + y * blockDim.x: the lane is linear % 32, the warp linear / 32
  bool done = false;
  bool slow = false;  // yields at memory accesses now and then (maybe_yield)
  const unsigned long* wait_generation = nullptr;  // blocked until *wait_generation != wait_value
  unsigned long wait_value = 0;
  const char* waiting_at = "";
};

struct barrier {
  int size = 0;
  int arrived = 0;
  unsigned long generation = 0;
};

/// The block being run: its fibers, barriers, shuffle slots and shared memory.
struct block_run {
  std::vector<fiber> fibers;
  ucontext_t scheduler;
  int current = 0;
  uint3 block;
  dim3 block_dim, grid_dim;
  barrier block_barrier;
  std::vector<barrier> warp_barriers;
  std::vector<std::uint64_t> warp_slots;  // 32 per warp
  std::vector<unsigned char> smem;
  std::function<void()> body;
  bool failed = false;
};

inline block_run*& active() {
  static block_run* run = nullptr;
  return run;
}

inline fiber& self() { return active()->fibers[static_cast<std::size_t>(active()->current)]; }

inline void fail(const char* what) {
  std::fprintf(stderr, "lnorm CUDA emulator: %s\n", what);
  std::abort();
}

/// Blocks the running fiber until every member of `b` has arrived. The last to arrive goes on at
/// once in the fixed order; under another schedule it yields too, so that it does not always start
/// the next interval.
inline void wait(barrier& b, const char* where) {
  block_run& run = *active();
  fiber& f = self();
  const unsigned long generation = b.generation;
  if (++b.arrived == b.size) {
    b.arrived = 0;
    ++b.generation;
    if (schedule_seed() != 0) {
      f.wait_generation = nullptr;  // runnable: the next sweep runs it in its turn
      f.waiting_at = where;
      swapcontext(&f.context, &run.scheduler);
    }
    return;
  }
  f.wait_generation = &b.generation;
  f.wait_value = generation;
  f.waiting_at = where;
  swapcontext(&f.context, &run.scheduler);
}

inline int lane() { return self().linear & 31; }
inline int warp() { return self().linear / 32; }

/// Every lane of the warp publishes `bits`; returns read(slots of the warp, this lane).
template <class F>
std::uint64_t warp_exchange(unsigned mask, std::uint64_t bits, F read, const char* where) {
  block_run& run = *active();
  const std::size_t w = static_cast<std::size_t>(warp());
  if (mask != 0xffffffffu) fail("warp operation with a partial mask (lnorm uses full warps only)");
  if (run.warp_barriers[w].size != 32) fail("full-mask warp operation in a partial warp");
  std::uint64_t* slots = &run.warp_slots[w * 32];
  slots[lane()] = bits;
  wait(run.warp_barriers[w], where);
  const std::uint64_t got = read(slots, lane());
  wait(run.warp_barriers[w], where);  // nobody overwrites a slot before every lane has read
  return got;
}

/// A shuffle: every lane publishes v and gets the value of lane src(lane), its own where src
/// returns -1 (a source outside its segment of `width` lanes, a power of two up to 32).
template <class V, class Src>
V shuffle(unsigned mask, V v, int width, Src src, const char* where) {
  static_assert(sizeof(V) <= 8, "shuffles move at most 8 bytes");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("shuffle width not a power of two up to 32");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  bits = warp_exchange(
      mask, bits,
      [&](const std::uint64_t* slots, int lane) {
        const int from = src(lane);
        return slots[from < 0 ? lane : from];
      },
      where);
  V out;
  std::memcpy(&out, &bits, sizeof(V));
  return out;
}

// The warp's predicates as one bit per lane (full warps only, so all lanes vote): every vote reads it.
inline unsigned vote(unsigned mask, int predicate, const char* where) {
  return static_cast<unsigned>(warp_exchange(
      mask, predicate != 0,
      [](const std::uint64_t* slots, int) {
        std::uint64_t bits = 0;
        for (int i = 0; i < 32; ++i) bits |= slots[i] << i;
        return bits;
      },
      where));
}

inline void entry() {
  active()->body();
  self().done = true;
}

inline std::map<const void*, int>& smem_attributes() {
  static std::map<const void*, int> attributes;
  return attributes;
}

inline unsigned char* dynamic_smem() { return active()->smem.data(); }

/// Runs every block of a launch, one after the other (in the schedule's order), each as fibers until
/// all have finished.
template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t,
                   Args... args) {
  const device_model& dev = model(current_device());
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.y > 65535 || grid.z != 1)
    return cudaErrorInvalidConfiguration;
  if (block.z != 1) fail("lnorm's blocks are one- or two-dimensional");
  auto allowed = smem_attributes().find(reinterpret_cast<const void*>(kernel));
  const std::size_t limit = allowed == smem_attributes().end() ? 48 * 1024 : static_cast<std::size_t>(allowed->second);
  if (smem > limit || smem > static_cast<std::size_t>(dev.smem_per_block_optin))
    return cudaErrorInvalidValue;  // a GPU refuses the launch: more shared memory than allowed

  constexpr std::size_t kStack = 256 * 1024;
  block_run run;
  run.fibers.resize(threads);
  for (fiber& f : run.fibers) f.stack.reset(new char[kStack]);
  const unsigned warps = (threads + 31) / 32;
  run.warp_barriers.resize(warps);
  run.warp_slots.assign(static_cast<std::size_t>(warps) * 32, 0);
  run.block_dim = block;
  run.grid_dim = grid;
  run.body = [&] { kernel(args...); };
  active() = &run;
  std::vector<uint3> blocks;  // in the schedule's order
  blocks.reserve(static_cast<std::size_t>(grid.x) * grid.y);
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) blocks.push_back(uint3{bx, by, 0});
  schedule_order(blocks);
  const bool fixed = schedule_seed() == 0, random_schedule = !fixed && schedule_seed() != kReversedSchedule;
  std::vector<unsigned> order;  // a sweep's fibers
  order.reserve(threads);
  for (const uint3& b : blocks) {
    const unsigned bx = b.x, by = b.y;
    run.block = b;
    run.smem.assign(smem + 16, 0xCD);  // garbage, as a GPU's shared memory would hold
    run.block_barrier = barrier{static_cast<int>(threads), 0, 0};
    for (unsigned w = 0; w < warps; ++w) {
      const unsigned size = threads - 32 * w < 32 ? threads - 32 * w : 32;
      run.warp_barriers[w] = barrier{static_cast<int>(size), 0, 0};
    }
    for (unsigned i = 0; i < threads; ++i) {
      fiber& f = run.fibers[i];
      f.thread = uint3{i % block.x, i / block.x, 0};
      f.linear = static_cast<int>(i);
      f.done = false;
      f.slow = random_schedule && (splitmix64(schedule().state) & 1) != 0;
      f.wait_generation = nullptr;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = &run.scheduler;
      makecontext(&f.context, entry, 0);
    }
    auto runnable = [&](const fiber& f) {
      return !f.done && (f.wait_generation == nullptr || *f.wait_generation != f.wait_value);
    };
    unsigned finished = 0;
    while (finished < threads) {
      bool progress = false;
      // The fixed order: 0..n-1, each fiber run if runnable when its turn comes (so a fiber a
      // barrier released earlier in the sweep runs in the same sweep). Otherwise: the fibers
      // runnable at the start of the sweep, in the schedule's order.
      order.clear();
      for (unsigned i = 0; i < threads; ++i)
        if (fixed || runnable(run.fibers[i])) order.push_back(i);
      schedule_order(order);
      for (const unsigned i : order) {
        fiber& f = run.fibers[i];
        if (!runnable(f)) continue;
        f.wait_generation = nullptr;
        run.current = static_cast<int>(i);
        swapcontext(&run.scheduler, &f.context);
        progress = true;
        if (f.done) ++finished;
      }
      if (!progress) {
        std::fprintf(stderr, "lnorm CUDA emulator: deadlock in block (%u, %u), schedule seed %llu:", bx, by,
                     static_cast<unsigned long long>(schedule_seed()));
        for (unsigned i = 0; i < threads; ++i) {
          const fiber& f = run.fibers[i];
          if (i < 64 || !f.done) std::fprintf(stderr, " t%u:%s", i, f.done ? "exited" : f.waiting_at);
          if (i == 64) std::fprintf(stderr, " ...");
        }
        std::fprintf(stderr, "\n");
        active() = nullptr;
        return cudaErrorLaunchFailure;
      }
    }
  }
  active() = nullptr;
  return cudaSuccess;
}

// ---- memory: host memory, with stream-ordered pools ------------------------------------------------
//
// Device 0 supports memory pools (cudaDevAttrMemoryPoolsSupported 1), device 1 does not (0), so that
// a caller's path without pools runs too. A pool is a handle with its attributes and its bytes in
// use; every allocation is malloc'd and filled with garbage. Streams are synchronous.

struct mem_pool {
  int device = 0;
  bool destroyed = false;
  std::uint64_t release_threshold = 0;
  std::uint64_t used = 0, used_high = 0;
};

struct allocation {
  std::size_t size;
  mem_pool* pool;  // null: cudaMalloc
};

inline std::map<const void*, allocation>& allocations() {
  static std::map<const void*, allocation> live;
  return live;
}

inline bool pools_supported(int device) { return device == 0; }

/// The default pool of a device that supports pools (never freed).
inline mem_pool* default_pool(int device) {
  static mem_pool pools[1] = {mem_pool{0, false, 0, 0, 0}};
  return pools_supported(device) ? &pools[0] : nullptr;
}

inline mem_pool* pool_of(cudaMemPool_t handle) { return reinterpret_cast<mem_pool*>(handle); }
inline cudaMemPool_t handle_of(mem_pool* pool) { return reinterpret_cast<cudaMemPool_t>(pool); }

/// size bytes (at least one) of garbage, recorded as taken from `pool` (null: cudaMalloc).
inline cudaError_t allocate(void** ptr, std::size_t size, mem_pool* pool) {
  if (ptr == nullptr) return cudaErrorInvalidValue;
  *ptr = std::malloc(size ? size : 1);
  if (*ptr == nullptr) return cudaErrorMemoryAllocation;
  std::memset(*ptr, 0xAB, size);  // not zero: a kernel must not rely on it
  allocations()[*ptr] = allocation{size, pool};
  if (pool != nullptr) {
    pool->used += size;
    if (pool->used > pool->used_high) pool->used_high = pool->used;
  }
  return cudaSuccess;
}

/// Frees what allocate returned (null: nothing); an unknown pointer is an error, as on a GPU.
inline cudaError_t release(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  auto it = allocations().find(ptr);
  if (it == allocations().end()) return cudaErrorInvalidValue;
  if (it->second.pool != nullptr) it->second.pool->used -= it->second.size;
  allocations().erase(it);
  std::free(ptr);
  return cudaSuccess;
}

/// A point where other threads may run first: under a random schedule, a slow thread (half of
/// them, drawn per block) yields here one time in four and runs on in a later sweep, so that
/// threads also interleave within a barrier interval, not only between their waits, while the fast
/// ones still run their intervals at once. The vector loads and stores call it.
inline void maybe_yield(const char* where) {
  block_run* const run = active();
  if (run == nullptr || !self().slow) return;
  if ((splitmix64(schedule().state) & 3) != 0) return;
  fiber& f = self();
  f.wait_generation = nullptr;  // runnable
  f.waiting_at = where;
  swapcontext(&f.context, &run->scheduler);
}

/// Every vector access of the kernels: aligned, and a point where other threads may run first.
inline void check_aligned(const void* p, std::size_t align, const char* file, int line) {
  if (reinterpret_cast<std::uintptr_t>(p) % align != 0) {
    std::fprintf(stderr, "lnorm CUDA emulator: %zu-byte access at %p not aligned (%s:%d)\n", align, p, file, line);
    std::abort();
  }
  maybe_yield("a vector access");
}

inline const uint3& thread_idx() { return self().thread; }
inline const uint3& block_idx() { return active()->block; }
inline const dim3& block_dim() { return active()->block_dim; }
inline const dim3& grid_dim() { return active()->grid_dim; }

}  // namespace emulator
}  // namespace cuda
}  // namespace lnorm

#define LNORM_CUDA_CHECK_ALIGNED(ptr, align) \
  ::lnorm::cuda::emulator::check_aligned(ptr, align, __FILE__, __LINE__)
#define threadIdx (::lnorm::cuda::emulator::thread_idx())
#define blockIdx (::lnorm::cuda::emulator::block_idx())
#define blockDim (::lnorm::cuda::emulator::block_dim())
#define gridDim (::lnorm::cuda::emulator::grid_dim())

// ---- device intrinsics ----------------------------------------------------------------------------

inline void __syncthreads() {
  lnorm::cuda::emulator::wait(lnorm::cuda::emulator::active()->block_barrier, "__syncthreads");
}

// Shuffles: a lane's source outside its segment of `width` lanes gives the lane its own value.
template <class V>
V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
  return lnorm::cuda::emulator::shuffle(mask, v, width, [&](int lane) {
    const int src = lane ^ lane_mask;
    return (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : -1;
  }, "__shfl_xor_sync");
}

/// v of lane src_lane (modulo width) of this lane's segment.
template <class V>
V __shfl_sync(unsigned mask, V v, int src_lane, int width = 32) {
  return lnorm::cuda::emulator::shuffle(mask, v, width, [&](int lane) {
    return (lane & ~(width - 1)) + (src_lane & (width - 1));
  }, "__shfl_sync");
}

/// v of lane - delta of this lane's segment.
template <class V>
V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  return lnorm::cuda::emulator::shuffle(mask, v, width, [&](int lane) {
    const int src = lane - static_cast<int>(delta);
    return src >= (lane & ~(width - 1)) ? src : -1;
  }, "__shfl_up_sync");
}

/// v of lane + delta of this lane's segment.
template <class V>
V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  return lnorm::cuda::emulator::shuffle(mask, v, width, [&](int lane) {
    const int src = lane + static_cast<int>(delta);
    return src < (lane & ~(width - 1)) + width ? src : -1;
  }, "__shfl_down_sync");
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return lnorm::cuda::emulator::vote(mask, predicate, "__ballot_sync");
}
inline int __all_sync(unsigned mask, int predicate) {
  return lnorm::cuda::emulator::vote(mask, predicate, "__all_sync") == 0xffffffffu;
}
inline int __any_sync(unsigned mask, int predicate) {
  return lnorm::cuda::emulator::vote(mask, predicate, "__any_sync") != 0u;
}

// ---- the CUDA runtime functions lnorm calls ---------------------------------------------------

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 2;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = lnorm::cuda::emulator::current_device();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device > 1) return cudaErrorInvalidDevice;
  lnorm::cuda::emulator::current_device() = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (device < 0 || device > 1) return cudaErrorInvalidDevice;
  const lnorm::cuda::emulator::device_model& m = lnorm::cuda::emulator::model(device);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = m.sms; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = m.max_threads_per_sm; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = m.smem_per_block_optin; return cudaSuccess;
    case cudaDevAttrMemoryPoolsSupported: *value = lnorm::cuda::emulator::pools_supported(device); return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}
cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value > lnorm::cuda::emulator::model(lnorm::cuda::emulator::current_device()).smem_per_block_optin)
    return cudaErrorInvalidValue;
  lnorm::cuda::emulator::smem_attributes()[func] = value;
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* func, int block_size,
                                                          size_t smem) {
  const lnorm::cuda::emulator::device_model& m = lnorm::cuda::emulator::model(lnorm::cuda::emulator::current_device());
  auto allowed = lnorm::cuda::emulator::smem_attributes().find(func);
  if (smem > (allowed == lnorm::cuda::emulator::smem_attributes().end() ? 48 * 1024u : size_t(allowed->second))) {
    *blocks = 0;
    return cudaSuccess;
  }
  int n = m.max_threads_per_sm / block_size;
  if (smem > 0 && static_cast<int>(228 * 1024 / smem) < n) n = static_cast<int>(228 * 1024 / smem);
  *blocks = n < 32 ? n : 32;
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaPeekAtLastError(void) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulator: deadlock)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "emulated CUDA error";
  }
}
cudaError_t cudaMalloc(void** ptr, size_t size) { return lnorm::cuda::emulator::allocate(ptr, size, nullptr); }
cudaError_t cudaFree(void* ptr) { return lnorm::cuda::emulator::release(ptr); }
// Stream-ordered allocation: from the current device's default pool. (A GPU without pool support
// refuses cudaMallocAsync; here it works on device 1 too, from no pool, as lnorm's callers use it.)
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t) {
  return lnorm::cuda::emulator::allocate(ptr, size,
                                         lnorm::cuda::emulator::default_pool(lnorm::cuda::emulator::current_device()));
}
cudaError_t cudaMallocFromPoolAsync(void** ptr, size_t size, cudaMemPool_t memPool, cudaStream_t) {
  lnorm::cuda::emulator::mem_pool* pool = lnorm::cuda::emulator::pool_of(memPool);
  if (pool == nullptr || pool->destroyed) return cudaErrorInvalidValue;
  return lnorm::cuda::emulator::allocate(ptr, size, pool);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return lnorm::cuda::emulator::release(ptr); }
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* memPool, int device) {
  if (device < 0 || device > 1) return cudaErrorInvalidDevice;
  if (!lnorm::cuda::emulator::pools_supported(device)) return cudaErrorNotSupported;
  *memPool = lnorm::cuda::emulator::handle_of(lnorm::cuda::emulator::default_pool(device));
  return cudaSuccess;
}
cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* memPool, int device) { return cudaDeviceGetDefaultMemPool(memPool, device); }
cudaError_t cudaMemPoolCreate(cudaMemPool_t* memPool, const struct cudaMemPoolProps* poolProps) {
  if (memPool == nullptr || poolProps == nullptr || poolProps->allocType != cudaMemAllocationTypePinned ||
      poolProps->location.type != cudaMemLocationTypeDevice)
    return cudaErrorInvalidValue;
  const int device = poolProps->location.id;
  if (device < 0 || device > 1) return cudaErrorInvalidDevice;
  if (!lnorm::cuda::emulator::pools_supported(device)) return cudaErrorNotSupported;
  // Never freed: a destroyed pool's handle stays recognizably destroyed.
  *memPool = lnorm::cuda::emulator::handle_of(new lnorm::cuda::emulator::mem_pool{device, false, 0, 0, 0});
  return cudaSuccess;
}
cudaError_t cudaMemPoolDestroy(cudaMemPool_t memPool) {
  lnorm::cuda::emulator::mem_pool* pool = lnorm::cuda::emulator::pool_of(memPool);
  if (pool == nullptr || pool->destroyed || pool == lnorm::cuda::emulator::default_pool(pool->device))
    return cudaErrorInvalidValue;
  pool->destroyed = true;  // its live allocations stay valid until freed, as on a GPU
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr attr, void* value) {
  lnorm::cuda::emulator::mem_pool* pool = lnorm::cuda::emulator::pool_of(memPool);
  if (pool == nullptr || pool->destroyed || value == nullptr) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaMemPoolReuseFollowEventDependencies:
    case cudaMemPoolReuseAllowOpportunistic:
    case cudaMemPoolReuseAllowInternalDependencies:
      return cudaSuccess;  // (int) no reuse to steer here
    case cudaMemPoolAttrReleaseThreshold:
      std::memcpy(&pool->release_threshold, value, sizeof(std::uint64_t));
      return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
    case cudaMemPoolAttrUsedMemHigh: {  // may only be reset to zero
      std::uint64_t v = 0;
      std::memcpy(&v, value, sizeof v);
      if (v != 0) return cudaErrorInvalidValue;
      pool->used_high = pool->used;
      return cudaSuccess;
    }
    default:
      return cudaErrorInvalidValue;
  }
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr attr, void* value) {
  lnorm::cuda::emulator::mem_pool* pool = lnorm::cuda::emulator::pool_of(memPool);
  if (pool == nullptr || pool->destroyed || value == nullptr) return cudaErrorInvalidValue;
  std::uint64_t v = 0;
  switch (attr) {
    case cudaMemPoolReuseFollowEventDependencies:
    case cudaMemPoolReuseAllowOpportunistic:
    case cudaMemPoolReuseAllowInternalDependencies: {
      const int on = 1;
      std::memcpy(value, &on, sizeof on);
      return cudaSuccess;
    }
    case cudaMemPoolAttrReleaseThreshold: v = pool->release_threshold; break;
    case cudaMemPoolAttrReservedMemCurrent:  // nothing held beyond what is in use
    case cudaMemPoolAttrUsedMemCurrent: v = pool->used; break;
    case cudaMemPoolAttrReservedMemHigh:
    case cudaMemPoolAttrUsedMemHigh: v = pool->used_high; break;
    default: return cudaErrorInvalidValue;
  }
  std::memcpy(value, &v, sizeof v);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  std::memcpy(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

}  // extern "C"
