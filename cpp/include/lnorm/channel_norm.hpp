// lnorm/channel_norm.hpp: the channel norms, GroupNorm, InstanceNorm and BatchNorm, forward and
// backward, over N-d strided tensors with a batch axis 0 and a channel axis anywhere else (NCHW,
// NHWC, torch's channels_last as it is, any strides). Included by lnorm.hpp; use that header.
//
// One pattern serves all three: statistics per *unit* over some elements, then a per-channel affine.
//   GroupNorm(G)  unit (n, g): group g's C / G channels of sample n, over every axis but 0
//   InstanceNorm  GroupNorm with G = C
//   BatchNorm     unit c: channel c over every other axis, the batch axis included (a GroupNorm with
//                 G = C of one sample whose "pixels" are all the batch's)
// Inside, a problem becomes (outer, C, spatial...), spatial axes merged where every array allows,
// and runs one of three ways:
//   planar   the innermost spatial axis is contiguous in every array (NCHW): each unit's lines are
//            read for statistics and normalized right away, one worker per unit, while they are in
//            cache, so x comes from memory once;
//   pixels   the channel axis is contiguous in every array (NHWC): per-channel shifted sums over
//            fixed chunks of pixels (double partials, summed in chunk order), then the affine with
//            per-channel coefficients: two reads of x;
//   gather   anything else: each line copied to a buffer, then as planar.
// Results are bit-identical for any thread count: every reduction's order is fixed by the shape.
#pragma once

namespace lnorm {

/// The activation a channel norm applies after its affine, in the same pass (forward only).
enum class activation : int { none = 0, silu = 1, relu = 2 };

namespace detail {

enum class channel_mode { planar, pixels, gather };

// A channel norm's problem after canonicalization. Arrays: forward x | y; backward dy, x | dx.
struct channel_layout {
  int narrays = 0;
  std::int64_t outer = 1;                  // samples with statistics of their own (BatchNorm: 1)
  std::int64_t channels = 1, groups = 1;   // C, G (G divides C)
  std::int64_t ostride[kMaxArrays] = {}, cstride[kMaxArrays] = {};
  int ns = 0;                              // spatial dims, outer first
  std::int64_t sshape[kMaxDims] = {};
  std::int64_t sstride[kMaxArrays][kMaxDims] = {};
  std::int64_t pixels = 1;                 // product of sshape
  std::int64_t line = 1;                   // planar, gather: the innermost spatial extent (1 without one)
  std::int64_t lines = 1;                  // pixels / line
  channel_mode mode = channel_mode::gather;

  std::int64_t per_group() const noexcept { return channels / groups; }
  std::int64_t units() const noexcept { return outer * groups; }
};

// Builds the layout. `stats_per_sample`: GroupNorm and InstanceNorm (axis 0 outer); BatchNorm folds
// axis 0 into the spatial axes. `primary`: the array whose strides order the spatial axes (x).
inline void build_channel_layout(channel_layout& L, int ndim, const std::int64_t* shape, int channel_axis,
                                 std::int64_t groups, bool stats_per_sample, int narrays,
                                 const std::int64_t* const* strides, int primary) noexcept {
  L = channel_layout{};
  L.narrays = narrays;
  L.channels = shape[channel_axis];
  L.groups = groups;
  L.outer = stats_per_sample ? shape[0] : 1;
  for (int a = 0; a < narrays; ++a) {
    L.ostride[a] = stats_per_sample ? strides[a][0] : 0;
    L.cstride[a] = strides[a][channel_axis];
  }
  // Spatial dims of extent > 1, ordered by the primary array's stride, largest first (stable).
  int dims[kMaxDims];
  int nd = 0;
  for (int d = 0; d < ndim; ++d)
    if (d != channel_axis && (d != 0 || !stats_per_sample) && shape[d] > 1) dims[nd++] = d;
  auto mag = [&](int d) {
    const std::int64_t s = strides[primary][d];
    return s < 0 ? -s : s;
  };
  for (int i = 1; i < nd; ++i)
    for (int j = i; j > 0 && mag(dims[j - 1]) < mag(dims[j]); --j) std::swap(dims[j - 1], dims[j]);
  // Merge a dim into the one before it where every array steps over both as over one.
  for (int i = 0; i < nd; ++i) {
    const int d = dims[i];
    bool merges = L.ns > 0;
    for (int a = 0; merges && a < narrays; ++a)
      merges = L.sstride[a][L.ns - 1] == strides[a][d] * shape[d];
    if (merges) {
      L.sshape[L.ns - 1] *= shape[d];
      for (int a = 0; a < narrays; ++a) L.sstride[a][L.ns - 1] = strides[a][d];
    } else {
      L.sshape[L.ns] = shape[d];
      for (int a = 0; a < narrays; ++a) L.sstride[a][L.ns] = strides[a][d];
      ++L.ns;
    }
  }
  for (int i = 0; i < L.ns; ++i) L.pixels *= L.sshape[i];
  bool planar = L.ns > 0, interleaved = L.channels > 1;
  for (int a = 0; a < narrays; ++a) {
    planar = planar && L.sstride[a][L.ns - 1] == 1;
    interleaved = interleaved && L.cstride[a] == 1;
  }
  L.mode = planar ? channel_mode::planar : interleaved ? channel_mode::pixels : channel_mode::gather;
  if (L.mode != channel_mode::pixels && L.ns > 0) L.line = L.sshape[L.ns - 1];
  L.lines = L.pixels / L.line;
}

// An odometer over the first `nd` spatial dims: the offsets, per array, of index i, then of i + 1, ...
struct spatial_walk {
  const channel_layout& L;
  int nd;
  std::int64_t idx[kMaxDims];
  std::int64_t off[kMaxArrays];
  spatial_walk(const channel_layout& layout, int dims, std::int64_t start) noexcept : L(layout), nd(dims) {
    for (int a = 0; a < L.narrays; ++a) off[a] = 0;
    for (int d = nd - 1; d >= 0; --d) {
      idx[d] = start % L.sshape[d];
      start /= L.sshape[d];
      for (int a = 0; a < L.narrays; ++a) off[a] += idx[d] * L.sstride[a][d];
    }
  }
  // Moves on by k <= (the innermost dim's extent - its index) positions.
  void advance(std::int64_t k) noexcept {
    if (nd == 0) return;
    idx[nd - 1] += k - 1;
    for (int a = 0; a < L.narrays; ++a) off[a] += (k - 1) * L.sstride[a][nd - 1];
    next();
  }
  void next() noexcept {
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < L.sshape[d]) {
        for (int a = 0; a < L.narrays; ++a) off[a] += L.sstride[a][d];
        return;
      }
      for (int a = 0; a < L.narrays; ++a) off[a] -= (L.sshape[d] - 1) * L.sstride[a][d];
      idx[d] = 0;
    }
  }
};

// Chan's merge of (count, mean, m2) moments, in double.
struct moments {
  double count = 0, mean = 0, m2 = 0;
  void add(double n, double m, double q) noexcept {
    if (n == 0) return;
    if (count == 0) {
      count = n;
      mean = m;
      m2 = q;
      return;
    }
    const double total = count + n, delta = m - mean;
    mean += delta * (n / total);
    m2 += q + delta * delta * (count * n / total);
    count = total;
  }
  double var() const noexcept { return count > 0 ? (m2 < 0 ? 0.0 : m2 / count) : 0.0; }  // NaN stays NaN
};

inline double rstd_of(double var, double eps) noexcept { return 1.0 / std::sqrt(var + eps); }

// Pixels of one task of the pixels mode: fixed chunks of each sample's pixels, at most 64, none under
// about 32768 elements; the float sums inside a chunk are flushed to double every kPixelBlock pixels.
inline constexpr std::int64_t kPixelBlock = 256;
inline std::int64_t pixel_chunks(const channel_layout& L) noexcept {
  const std::int64_t per = L.pixels * L.channels;
  return std::max<std::int64_t>(1, std::min<std::int64_t>({64, L.pixels, (per + 32767) / 32768}));
}

// The scratch of a channel norm: gather buffers (T, per worker), coefficient arrays and float sums
// (compute type E), doubles (unit statistics, chunk partials, per-channel sums).
template <class T>
inline scratch_plan channel_plan(const channel_layout& L, int threads) noexcept {
  using E = calc_t<T>;
  scratch_plan p;
  const std::int64_t units = L.units(), oc = L.outer * L.channels;
  const std::int64_t workers = std::max(1, threads);
  std::int64_t doubles = 2 * units + 2 * oc;  // unit statistics; per-channel sums
  if (L.mode == channel_mode::gather) p.row_bytes = bytes_of(workers, L.narrays, L.line, sizeof(T));
  if (L.mode == channel_mode::pixels) {
    // Coefficients (m0, a, b, or m0, p, q, r) in channel order and in split order (the kernels'
    // pixel_split_table), per worker two float sum arrays and one shift copy, and the forward's flags
    // of the samples that need a second moment pass (one bool per E slot).
    p.partial_bytes = bytes_of(1, 8 * oc + 3 * workers * L.channels + L.outer, 1, sizeof(E));
    doubles += 2 * pixel_chunks(L) * oc;  // chunk partials
  }
  p.double_bytes = bytes_of(doubles, 1, 1, sizeof(double));
  return p;
}

// Whether two layouts of one problem walk x alike: same mode, same spatial dims, same x strides.
inline bool same_walk(const channel_layout& a, const channel_layout& b) noexcept {
  if (a.mode != b.mode || a.ns != b.ns || a.line != b.line || a.cstride[0] != b.cstride[0]) return false;
  for (int d = 0; d < a.ns; ++d)
    if (a.sshape[d] != b.sshape[d] || a.sstride[0][d] != b.sstride[0][d]) return false;
  return true;
}

// The forward's scratch: enough for the walk of x alone (statistics) and of x and y (the affine).
template <class T>
inline scratch_plan channel_forward_plan(const channel_layout& L, const channel_layout& Lx, int threads) noexcept {
  const scratch_plan a = channel_plan<T>(L, threads), b = channel_plan<T>(Lx, threads);
  scratch_plan p;
  p.row_bytes = std::max(a.row_bytes, b.row_bytes);
  p.partial_bytes = std::max(a.partial_bytes, b.partial_bytes);
  p.double_bytes = std::max(a.double_bytes, b.double_bytes);
  return p;
}

// The member of the norm family (kernels/family.hpp) these drivers compute.
using channel_kind = channel_norm_kind;
static_assert(channel_kind::centered && channel_kind::weights == weights_by::channel,
              "the channel norms subtract the mean and index gamma and beta per channel");

// ---- The work, over one kernel set K ----------------------------------------------------------------

template <class K, class T>
struct channel_work {
  using E = calc_t<T>;
  const channel_layout& L;
  T* base[kMaxArrays];
  T* buffers = nullptr;  // gather: per worker, narrays lines

  T* at(int a, std::int64_t o, std::int64_t c, const std::int64_t* off) const noexcept {
    return base[a] + o * L.ostride[a] + c * L.cstride[a] + off[a];
  }

  // Planar mode: asks for the first `bytes` of each line of unit u in array a, so that its first
  // elements (read at once for the line's shift) and the line's first cache lines, before the
  // hardware prefetchers have caught on, come in parallel rather than one miss at a time.
  void prefetch_unit(std::int64_t u, int a, std::int64_t bytes) const noexcept {
#if defined(__GNUC__) || defined(__clang__)
    const std::int64_t G = L.groups, cpg = L.per_group(), o = u / G, c0 = (u % G) * cpg;
    const std::int64_t lb = L.line * static_cast<std::int64_t>(sizeof(T));
    const std::int64_t span = bytes < lb ? bytes : lb;
    for (std::int64_t c = c0; c < c0 + cpg; ++c) {
      spatial_walk w(L, L.ns > 0 ? L.ns - 1 : 0, 0);
      for (std::int64_t l = 0; l < L.lines; ++l, w.next()) {
        const char* p = reinterpret_cast<const char*>(at(a, o, c, w.off));
        for (std::int64_t k = 0; k < span; k += 64) __builtin_prefetch(static_cast<const void*>(p + k), 0, 3);
      }
    }
#else
    (void)u;
    (void)a;
    (void)bytes;
#endif
  }

  // Planar mode: how far unit u + 1's data lies from unit u's in array a, in elements (every line of
  // a unit has its twin in the next at that distance).
  std::int64_t unit_delta(std::int64_t u, int a) const noexcept {
    const std::int64_t G = L.groups, cpg = L.per_group();
    const std::int64_t o = u / G, o1 = (u + 1) / G, c = (u % G) * cpg, c1 = ((u + 1) % G) * cpg;
    return (o1 - o) * L.ostride[a] + (c1 - c) * L.cstride[a];
  }

  // Calls f(ptrs) for each line of channel c of sample o: ptrs[a] the line of array a (contiguous: in
  // the gather mode, the worker's buffer, filled from the arrays < n_in before f and copied to the
  // arrays >= n_in after).
  template <class F>
  void for_lines(std::int64_t o, std::int64_t c, int worker, int n_in, bool write_back, F&& f) const noexcept {
    spatial_walk w(L, L.ns > 0 ? L.ns - 1 : 0, 0);
    for (std::int64_t l = 0; l < L.lines; ++l, w.next()) {
      T* p[kMaxArrays] = {};
      if (L.mode == channel_mode::planar) {
        for (int a = 0; a < L.narrays; ++a) p[a] = at(a, o, c, w.off);
        f(p);
        continue;
      }
      T* buf = buffers + static_cast<std::int64_t>(worker) * L.narrays * L.line;
      for (int a = 0; a < L.narrays; ++a) {
        p[a] = buf + a * L.line;
        if (a < n_in) {
          const T* src = at(a, o, c, w.off);
          const std::int64_t s = L.ns > 0 ? L.sstride[a][L.ns - 1] : 0;
          for (std::int64_t i = 0; i < L.line; ++i) p[a][i] = src[i * s];
        }
      }
      f(p);
      if (!write_back) continue;
      for (int a = n_in; a < L.narrays; ++a) {
        T* dst = at(a, o, c, w.off);
        const std::int64_t s = L.ns > 0 ? L.sstride[a][L.ns - 1] : 0;
        for (std::int64_t i = 0; i < L.line; ++i) dst[i * s] = p[a][i];
      }
    }
  }

  // Pixels mode: the kernels' split head (K::pixel_split_head) of array a's first pixel of sample o,
  // -1 where its runs have no split sweep. Every run whose pixels are contiguous starts so aligned
  // where they all are; the kernels check each run against it.
  std::int64_t split_head(std::int64_t o, int a) const noexcept {
    return K::pixel_split_head(base[a] + o * L.ostride[a], L.channels);
  }

  // Calls f(ptrs, lds, count) for each run of pixels in [p0, p1) of sample o (pixels mode): ptrs[a]
  // the run's first pixel's C channels in array a, lds[a] the elements from one pixel to the next.
  template <class F>
  void for_pixel_runs(std::int64_t o, std::int64_t p0, std::int64_t p1, F&& f) const noexcept {
    spatial_walk w(L, L.ns, p0);
    std::int64_t ld[kMaxArrays] = {};
    for (int a = 0; a < L.narrays; ++a) ld[a] = L.ns > 0 ? L.sstride[a][L.ns - 1] : 0;
    for (std::int64_t p = p0; p < p1;) {
      const std::int64_t inner = L.ns > 0 ? L.sshape[L.ns - 1] - w.idx[L.ns - 1] : 1;
      const std::int64_t count = std::min(inner, p1 - p);
      T* ptr[kMaxArrays] = {};  // (zeroed: GCC 12 -O2 cannot see narrays >= 2)
      for (int a = 0; a < L.narrays; ++a) ptr[a] = at(a, o, 0, w.off);
      f(ptr, ld, count);
      p += count;
      if (p < p1) w.advance(count);
    }
  }
};

// How much of each line's start the pipelined planar sweeps ask for ahead (prefetch_unit).
inline constexpr std::int64_t kLineStartBytes = 512;

// The store kind alone as the kernels' template argument: f(S), S::value whether streamed.
template <class F>
inline void with_stream(bool stream, F&& f) noexcept {
  if (stream) f(std::true_type{});
  else f(std::false_type{});
}

// The activation and the store kind as the kernels' template arguments: f(A, S), A::value the
// activation's number, S::value whether the output is streamed.
template <class F>
inline void with_activation(activation act, bool stream, F&& f) noexcept {
  auto go = [&](auto A) { with_stream(stream, [&](auto S) { f(A, S); }); };
  switch (act) {
    case activation::silu:
      return go(std::integral_constant<int, 1>{});
    case activation::relu:
      return go(std::integral_constant<int, 2>{});
    default:
      return go(std::integral_constant<int, 0>{});
  }
}

// Whether a channel norm's output is written with non-temporal stores: large (the CPU's policy, by
// element size), not in place, and written where it lies (not through the gather buffers).
template <class T>
inline bool channel_streams(const channel_layout& L, const void* out, const void* in) noexcept {
  const cpu_policy& p = policy();
  const std::int64_t bytes = L.outer * L.channels * L.pixels * static_cast<std::int64_t>(sizeof(T));
  return out != in && L.mode != channel_mode::gather && p.streams(sizeof(T)) && bytes >= p.stream_min_bytes;
}

template <class W>
inline double weight_or(const W* w, std::int64_t c, double none) noexcept {
  return w ? static_cast<double>(widen(w[c])) : none;
}

// Sample o's chunk partials (two sums per channel each) added in chunk order into sums[o].
inline void reduce_chunks(const channel_layout& L, std::int64_t o, const double* partials, double* sums) noexcept {
  const std::int64_t C = L.channels, chunks = pixel_chunks(L);
  double* s = sums + o * 2 * C;
  std::fill_n(s, 2 * C, 0.0);
  for (std::int64_t k = 0; k < chunks; ++k) {
    const double* part = partials + (o * chunks + k) * 2 * C;
    for (std::int64_t c = 0; c < 2 * C; ++c) s[c] += part[c];
  }
}

// The chunk partials of tasks [t0, t1) (task o * chunks + k: chunk k of sample o).
template <class K, class T>
inline void pixel_moment_range(const channel_work<K, T>& wk, const calc_t<T>* shift, double* partials,
                               calc_t<T>* worker_sums, const team& tm, std::int64_t t_begin,
                               std::int64_t t_end) noexcept {
  using E = calc_t<T>;
  const channel_layout& L = wk.L;
  const std::int64_t C = L.channels, chunks = pixel_chunks(L), tasks = t_end - t_begin;
  const int workers = workers_for(tasks * (L.pixels / chunks) * C, tasks, tm.threads);
  parallel_for_on(tm, tasks, workers, [&](std::int64_t a0, std::int64_t a1, int worker) {
    E* sd = worker_sums + static_cast<std::int64_t>(worker) * 3 * C;
    E* sq = sd + C;
    for (std::int64_t t = t_begin + a0; t < t_begin + a1; ++t) {
      const std::int64_t o = t / chunks, k = t % chunks;
      const std::int64_t p0 = L.pixels * k / chunks, p1 = L.pixels * (k + 1) / chunks;
      double* part = partials + t * 2 * C;
      std::fill_n(part, 2 * C, 0.0);
      for (std::int64_t b0 = p0; b0 < p1; b0 += kPixelBlock) {
        std::fill_n(sd, 2 * C, E(0));
        wk.for_pixel_runs(o, b0, std::min(p1, b0 + kPixelBlock), [&](T* const* p, const std::int64_t* ld, std::int64_t n) {
          K::pixel_sums(p[0], ld[0], n, C, shift + o * C, sd, sq);
        });
        for (std::int64_t c = 0; c < C; ++c) {
          part[c] += static_cast<double>(sd[c]);
          part[C + c] += static_cast<double>(sq[c]);
        }
      }
    }
  });
}

// Per-channel shifted sums of the pixels mode over samples with want[o] (all when null): sd, sq per
// (o, c) in `sums` (2 * outer * C doubles: sd then sq), around shift[o * C + c].
template <class K, class T>
inline void pixel_moment_pass(const channel_work<K, T>& wk, const calc_t<T>* shift, double* partials, double* sums,
                              calc_t<T>* worker_sums, const team& tm, const bool* want) noexcept {
  const channel_layout& L = wk.L;
  const std::int64_t chunks = pixel_chunks(L);
  if (want) {  // the wanted samples one at a time, each on every worker
    for (std::int64_t o = 0; o < L.outer; ++o)
      if (want[o]) pixel_moment_range(wk, shift, partials, worker_sums, tm, o * chunks, (o + 1) * chunks);
  } else {
    pixel_moment_range(wk, shift, partials, worker_sums, tm, 0, L.outer * chunks);
  }
  for (std::int64_t o = 0; o < L.outer; ++o)
    if (!want || want[o]) reduce_chunks(L, o, partials, sums);
}

// Forward statistics and affine of a channel norm: unit statistics into unit_mean/unit_var (double,
// outer * groups each), y = act((x - mean) * rstd * gamma + beta). Arrays x | y. With `given` (BatchNorm
// eval) the unit statistics are read from unit_mean/unit_var and not computed.
template <class K, class T, class W>
inline void channel_forward(const channel_layout& L, T* x, T* y, const W* gamma, const W* beta, double eps,
                            activation act, double* unit_mean, double* unit_var, bool given, bool apply,
                            const scratch& sc, const team& tm) noexcept {
  using E = calc_t<T>;
  channel_work<K, T> wk{L, {x, y}, static_cast<T*>(sc.rows)};
  const std::int64_t C = L.channels, G = L.groups, cpg = L.per_group();
  const bool stream = channel_streams<T>(L, y, x);
  // How far ahead the line sweeps prefetch what they read from memory (the CPU policy's distance):
  // at the start of each line the hardware prefetchers have not caught on, and a line's first
  // elements (its head, read at once) were demand misses. GroupNorm (8, 512, 64, 64) float32, Zen 3,
  // 1 thread: 0.70-0.73 of a copy without, 0.75-0.84 with; BatchNorm training 0.63-0.69 against 0.73-0.78.
  const std::int64_t ahead = policy().prefetch(sizeof(T));
  // The affine of channel c of sample o from its unit's statistics: m0 (a float near the mean), a, b.
  auto coefficients = [&](std::int64_t o, std::int64_t c, E& m0, E& a, E& b) {
    const std::int64_t u = o * G + c / cpg;
    // 0 where var + eps == 0, as the row kernels apply it: a constant input with eps = 0 gives beta.
    const double mean = unit_mean[u], r = scalar::detail::rstd_or_zero(unit_var[u] + eps);
    m0 = static_cast<E>(mean);
    const double ad = r * weight_or(gamma, c, 1.0);
    a = static_cast<E>(ad);
    b = static_cast<E>(weight_or(beta, c, 0.0) - (mean - static_cast<double>(m0)) * ad);
  };
  if (given && apply && L.mode == channel_mode::planar && L.lines > 1) {
    // Statistics given (BatchNorm eval): no unit needs its lines together, so they go in memory
    // order (NCHW: sample by sample, each sample's channels one after another) instead of unit by
    // unit, a channel's lines a sample apart. That walk jumped a whole sample at every line:
    // (8, 512, 64, 64) float32, Zen 3, 1 thread, 0.68-0.70 of a copy of the same bytes, against
    // 0.71-0.80 in memory order with the prefetch ahead (bfloat16 0.47-0.52 against 0.54-0.62).
    const std::int64_t C_lines = L.lines * C, tasks = L.outer * C_lines;
    const int workers = workers_for(tasks * L.line, tasks, tm.threads);
    with_activation(act, stream, [&](auto A, auto S) {
      constexpr int Act = decltype(A)::value;
      constexpr bool Stream = decltype(S)::value;
      parallel_for_on(tm, tasks, workers, [&](std::int64_t t0, std::int64_t t1, int) {
        for (std::int64_t t = t0; t < t1; ++t) {
          const std::int64_t o = t / C_lines, l = t % C_lines / C, c = t % C;
          const spatial_walk w(L, L.ns > 0 ? L.ns - 1 : 0, l);
          E m0, a, b;
          coefficients(o, c, m0, a, b);
          K::template line_affine<Act, Stream>(wk.at(0, o, c, w.off), wk.at(1, o, c, w.off), L.line, m0, a, b, ahead);
        }
        if (Stream) K::template stream_fence<T>();
      });
    });
    return;
  }
  if (L.mode != channel_mode::pixels) {
    const std::int64_t units = L.units();
    const int workers = workers_for(L.outer * C * L.pixels, units, tm.threads);
    // Planar units are pipelined, as rows are: the affine of unit u sweeps its lines from cache while
    // the statistics of unit u + 1 read its twin lines from memory (line_affine_sums), so memory
    // sees a read and a write at once, as in a copy. The first unit of a worker's block is read alone.
    const bool piped = !given && apply && L.mode == channel_mode::planar;
    parallel_for_on(tm, units, workers, [&](std::int64_t u0, std::int64_t u1, int worker) {
      for (std::int64_t u = u0; u < u1; ++u) {
        const std::int64_t o = u / G, c0 = (u % G) * cpg;
        if (!given && !(piped && u > u0)) {
          if (piped) wk.prefetch_unit(u, 0, kLineStartBytes);
          moments m;
          for (std::int64_t c = c0; c < c0 + cpg; ++c)
            wk.for_lines(o, c, worker, 1, false, [&](T* const* p) {
              double mean = 0, m2 = 0;
              K::line_moments(p[0], L.line, mean, m2);
              m.add(static_cast<double>(L.line), mean, m2);
            });
          unit_mean[u] = m.mean;
          unit_var[u] = m.var();
        }
        if (!apply) continue;
        const bool fuse = piped && u + 1 < u1;
        const std::int64_t delta = fuse ? wk.unit_delta(u, 0) : 0;
        if (fuse) wk.prefetch_unit(u + 1, 0, kLineStartBytes);
        moments next;
        for (std::int64_t c = c0; c < c0 + cpg; ++c) {
          E m0, a, b;
          coefficients(o, c, m0, a, b);
          with_activation(act, stream, [&](auto A, auto S) {
            constexpr int Act = decltype(A)::value;
            constexpr bool Stream = decltype(S)::value;
            wk.for_lines(o, c, worker, 1, true, [&](T* const* p) {
              if (!fuse) {
                K::template line_affine<Act, Stream>(p[0], p[1], L.line, m0, a, b, ahead);
                return;
              }
              const T* twin = p[0] + delta;
              const E shift = K::first_mean(twin, 1, L.line);
              E sd, sq;
              K::template line_affine_sums<Act, Stream>(p[0], p[1], L.line, m0, a, b, twin, shift, sd, sq, ahead);
              double mean = 0, m2 = 0;
              K::line_finish(twin, L.line, shift, sd, sq, mean, m2);
              next.add(static_cast<double>(L.line), mean, m2);
            });
          });
        }
        if (fuse) {
          unit_mean[u + 1] = next.mean;
          unit_var[u + 1] = next.var();
        }
      }
      if (stream) K::template stream_fence<T>();
    });
    return;
  }
  // Pixels: shifted sums per channel (shift: the sample's first pixel), then per-channel coefficients.
  const std::int64_t oc = L.outer * C;
  E* coef = static_cast<E*>(sc.partials);  // m0, a, b: oc each
  E* tables = coef + 4 * oc;               // their split tables: 3 * C per sample
  E* worker_sums = coef + 8 * oc;
  double* chan = sc.doubles + 2 * L.units();  // per (o, c): sd, sq (2 * C per sample)
  double* partials = chan + 2 * oc;
  const double P = static_cast<double>(L.pixels);
  const std::int64_t chunks = pixel_chunks(L), tasks = L.outer * chunks;
  const int workers = workers_for(oc * L.pixels, tasks, tm.threads);
  E* shift = coef;  // the m0 array: a sample's shifts until its coefficients replace them
  // Flags of the samples a moment pass covers; they live in the scratch (after the worker sums): a
  // call given a workspace never allocates.
  bool* want = reinterpret_cast<bool*>(worker_sums + 3 * static_cast<std::int64_t>(std::max(1, tm.threads)) * C);
  auto only = [&](std::int64_t o) {
    for (std::int64_t i = 0; i < L.outer; ++i) want[i] = i == o;
    return want;
  };
  // Sample o's statistics from its sums in chan: a second pass around the channel means where a
  // channel's shift lies far out (more than two spreads from its mean), then its units' moments.
  auto sample_stats = [&](std::int64_t o) {
    bool far = false;
    for (std::int64_t c = 0; c < C; ++c) {
      const double cm = chan[o * 2 * C + c] / P, var = chan[o * 2 * C + C + c] / P - cm * cm;
      far = far || (std::isfinite(cm) && std::isfinite(var) && !(cm * cm <= 4 * var));
    }
    if (far) {
      for (std::int64_t c = 0; c < C; ++c)
        shift[o * C + c] = static_cast<E>(static_cast<double>(shift[o * C + c]) + chan[o * 2 * C + c] / P);
      pixel_moment_pass(wk, shift, partials, chan, worker_sums, tm, only(o));
    }
    for (std::int64_t g = 0; g < G; ++g) {
      moments m;
      for (std::int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const double sd = chan[o * 2 * C + c], sq = chan[o * 2 * C + C + c];
        const double cm = sd / P;
        double m2 = sq - sd * cm;
        if (m2 < 0) m2 = 0;
        m.add(P, static_cast<double>(shift[o * C + c]) + cm, m2);
      }
      unit_mean[o * G + g] = m.mean;
      unit_var[o * G + g] = m.var();
    }
  };
  auto sample_coefficients = [&](std::int64_t o) {
    for (std::int64_t c = 0; c < C; ++c) coefficients(o, c, coef[o * C + c], coef[oc + o * C + c], coef[2 * oc + o * C + c]);
    const std::int64_t h = wk.split_head(o, 1);
    const E* v[3] = {coef + o * C, coef + oc + o * C, coef + 2 * oc + o * C};
    if (h >= 0) K::template pixel_split_table<T>(C, h, v, 3, tables + 3 * o * C);
  };
  if (!given)
    for (std::int64_t o = 0; o < L.outer; ++o)
      wk.for_pixel_runs(o, 0, 1, [&](T* const* p, const std::int64_t* ld, std::int64_t) {
        // The first pixels of the sample's first run (see first_mean: a constant input gives d == 0).
        const std::int64_t run = L.ns > 0 ? L.sshape[L.ns - 1] : 1;
        for (std::int64_t c = 0; c < C; ++c) shift[o * C + c] = K::first_mean(p[0] + c, ld[0], run);
      });
  // Samples are pipelined (several of them, statistics to compute, an output to write): the affine
  // of sample o reads x from memory and streams y out while the sums of sample o + 1 read its twin
  // pixels (pixel_affine_sums), so that the second read of x overlaps the first; sample 0 is summed
  // alone. Otherwise every sample is summed, then every sample normalized.
  const bool piped = !given && apply && L.outer > 1;
  if (!given) {
    pixel_moment_pass(wk, shift, partials, chan, worker_sums, tm, piped ? only(0) : nullptr);
    for (std::int64_t o = 0; o < (piped ? 1 : L.outer); ++o) sample_stats(o);
  }
  if (!apply) return;
  with_activation(act, stream, [&](auto A, auto S) {
    constexpr int Act = decltype(A)::value;
    constexpr bool Stream = decltype(S)::value;
    for (std::int64_t o0 = 0; o0 < L.outer; o0 += piped ? 1 : L.outer) {
      const std::int64_t o1 = piped ? o0 + 1 : L.outer;  // the samples this region normalizes
      for (std::int64_t o = o0; o < o1; ++o) sample_coefficients(o);
      const bool twin = piped && o1 < L.outer;           // and sums sample o1 meanwhile
      const std::int64_t t0 = o0 * chunks, t1 = o1 * chunks;
      parallel_for_on(tm, t1 - t0, std::min<int>(workers, static_cast<int>(t1 - t0)),
                      [&](std::int64_t a0, std::int64_t a1, int worker) {
        E* sd = worker_sums + static_cast<std::int64_t>(worker) * 3 * C;
        E* sq = sd + C;
        for (std::int64_t t = t0 + a0; t < t0 + a1; ++t) {
          const std::int64_t o = t / chunks, k = t % chunks;
          const E *m0 = coef + o * C, *a = coef + oc + o * C, *b = coef + 2 * oc + o * C;
          const std::int64_t h = wk.split_head(o, 1);
          const typename K::template split_coefs<T> split{h >= 0 ? tables + 3 * o * C : nullptr, h, ahead};
          const std::int64_t p0 = L.pixels * k / chunks, p1 = L.pixels * (k + 1) / chunks;
          if (!twin) {
            wk.for_pixel_runs(o, p0, p1, [&](T* const* p, const std::int64_t* ld, std::int64_t n) {
              K::template pixel_affine<Act, Stream>(p[0], ld[0], p[1], ld[1], n, C, m0, a, b, split);
            });
            continue;
          }
          // As pixel_moment_pass sums chunk k of sample o1: the same blocks, runs and spans.
          double* part = partials + (o1 * chunks + k) * 2 * C;
          std::fill_n(part, 2 * C, 0.0);
          const std::int64_t next = L.ostride[0];
          for (std::int64_t b0 = p0; b0 < p1; b0 += kPixelBlock) {
            std::fill_n(sd, 2 * C, E(0));
            wk.for_pixel_runs(o, b0, std::min(p1, b0 + kPixelBlock), [&](T* const* p, const std::int64_t* ld, std::int64_t n) {
              K::template pixel_affine_sums<Act, Stream>(p[0], ld[0], p[1], ld[1], n, C, m0, a, b, p[0] + next,
                                                         shift + o1 * C, sd, sq, split);
            });
            for (std::int64_t c = 0; c < C; ++c) {
              part[c] += static_cast<double>(sd[c]);
              part[C + c] += static_cast<double>(sq[c]);
            }
          }
        }
        if (Stream) K::template stream_fence<T>();
      });
      if (twin) {
        reduce_chunks(L, o1, partials, chan);
        sample_stats(o1);
      }
    }
  });
}

// Backward of a channel norm with its forward's unit statistics (mean, rstd: outer * groups). Arrays
// dy, x | dx. dgamma/dbeta (may be null) get the sums over samples, in sample order.
template <class K, class T, class W>
inline void channel_backward(const channel_layout& L, T* dy, T* x, T* dx, const stat_t<T>* mean,
                             const stat_t<T>* rstd, const W* gamma, W* dgamma, W* dbeta, const scratch& sc,
                             const team& tm) noexcept {
  using E = calc_t<T>;
  channel_work<K, T> wk{L, {dy, x, dx}, static_cast<T*>(sc.rows)};
  const std::int64_t C = L.channels, G = L.groups, cpg = L.per_group(), oc = L.outer * C;
  const bool stream = channel_streams<T>(L, dx, x);
  const std::int64_t ahead = policy().prefetch(sizeof(T));  // as channel_forward's
  const double count = static_cast<double>(cpg) * static_cast<double>(L.pixels);
  double* chan = sc.doubles + 2 * L.units();  // sum(dy * xhat) per (o, c), then sum(dy) per (o, c)
  // With g = gamma * dy and xhat = (x - mean) * rstd over a unit of `count` elements,
  //   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) = p_c * dy + q * (x - mean) + r,
  // p_c = rstd * gamma_c, q = -rstd^2 * k2 / count, r = -rstd * k1 / count, from the unit's channel
  // sums k1 = sum_c gamma_c * sum(dy), k2 = sum_c gamma_c * sum(dy * xhat).
  auto unit_terms = [&](std::int64_t u, double& q, double& r) {
    const std::int64_t o = u / G, c0 = (u % G) * cpg;
    const double rs = static_cast<double>(rstd[u]);
    double k1 = 0, k2 = 0;
    for (std::int64_t c = c0; c < c0 + cpg; ++c) {
      const double w = weight_or(gamma, c, 1.0);
      k1 += w * chan[oc + o * C + c];
      k2 += w * chan[o * C + c];
    }
    q = -rs * rs * (k2 / count);
    r = -rs * (k1 / count);
  };
  if (L.mode != channel_mode::pixels) {
    const std::int64_t units = L.units();
    const int workers = workers_for(oc * L.pixels, units, tm.threads);
    // Pipelined as the forward: the gradient of unit u streams out while unit u + 1's sums read its
    // twin lines from memory (line_grad_and_sums). The first unit of a worker's block is summed alone.
    const bool piped = L.mode == channel_mode::planar;
    parallel_for_on(tm, units, workers, [&](std::int64_t u0, std::int64_t u1, int worker) {
      for (std::int64_t u = u0; u < u1; ++u) {
        const std::int64_t o = u / G, c0 = (u % G) * cpg;
        const E m0 = static_cast<E>(mean[u]);
        const double rs = static_cast<double>(rstd[u]);
        if (!(piped && u > u0))
          for (std::int64_t c = c0; c < c0 + cpg; ++c) {
            double s1 = 0, s2 = 0;
            wk.for_lines(o, c, worker, 2, false, [&](T* const* p) {
              E a = 0, b = 0;
              K::line_grad_sums(p[0], p[1], L.line, m0, a, b);
              s1 += static_cast<double>(a);
              s2 += static_cast<double>(b);
            });
            chan[o * C + c] = rs * s2;
            chan[oc + o * C + c] = s1;
          }
        double q = 0, r = 0;
        unit_terms(u, q, r);
        const E qe = static_cast<E>(q), re = static_cast<E>(r);
        const bool fuse = piped && u + 1 < u1;
        const std::int64_t ddy = fuse ? wk.unit_delta(u, 0) : 0, dxd = fuse ? wk.unit_delta(u, 1) : 0;
        const E m1 = fuse ? static_cast<E>(mean[u + 1]) : E(0);
        const double rs1 = fuse ? static_cast<double>(rstd[u + 1]) : 0.0;
        const std::int64_t o1 = (u + 1) / G, shift_c = fuse ? ((u + 1) % G) * cpg - c0 : 0;
        for (std::int64_t c = c0; c < c0 + cpg; ++c) {
          const E pe = static_cast<E>(rs * weight_or(gamma, c, 1.0));
          double s1 = 0, s2 = 0;
          with_stream(stream, [&](auto S) {
            wk.for_lines(o, c, worker, 2, true, [&](T* const* p) {
              if (!fuse) {
                K::template line_grad<decltype(S)::value>(p[0], p[1], p[2], L.line, m0, pe, qe, re, ahead);
                return;
              }
              E a = 0, b = 0;
              K::template line_grad_and_sums<decltype(S)::value>(p[0], p[1], p[2], L.line, m0, pe, qe, re, p[0] + ddy,
                                                                 p[1] + dxd, m1, a, b, ahead);
              s1 += static_cast<double>(a);
              s2 += static_cast<double>(b);
            });
          });
          if (fuse) {  // channel c's twin in unit u + 1
            chan[o1 * C + c + shift_c] = rs1 * s2;
            chan[oc + o1 * C + c + shift_c] = s1;
          }
        }
      }
      if (stream) K::template stream_fence<T>();
    });
  } else {
    E* coef = static_cast<E*>(sc.partials);  // m0, p, q, r: oc each
    E* tables = coef + 4 * oc;               // their split tables: 4 * C per sample
    E* worker_sums = coef + 8 * oc;
    double* partials = chan + 2 * oc;
    const std::int64_t chunks = pixel_chunks(L), tasks = L.outer * chunks;
    const int workers = workers_for(oc * L.pixels, tasks, tm.threads);
    for (std::int64_t o = 0; o < L.outer; ++o)
      for (std::int64_t c = 0; c < C; ++c) coef[o * C + c] = static_cast<E>(mean[o * G + c / cpg]);
    parallel_for_on(tm, tasks, workers, [&](std::int64_t t0, std::int64_t t1, int worker) {
      E* s1 = worker_sums + static_cast<std::int64_t>(worker) * 3 * C;
      E* s2 = s1 + C;
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t o = t / chunks, k = t % chunks;
        const std::int64_t p0 = L.pixels * k / chunks, p1 = L.pixels * (k + 1) / chunks;
        double* part = partials + t * 2 * C;
        std::fill_n(part, 2 * C, 0.0);
        for (std::int64_t b0 = p0; b0 < p1; b0 += kPixelBlock) {
          std::fill_n(s1, 2 * C, E(0));
          wk.for_pixel_runs(o, b0, std::min(p1, b0 + kPixelBlock), [&](T* const* p, const std::int64_t* ld, std::int64_t n) {
            K::pixel_grad_sums(p[0], ld[0], p[1], ld[1], n, C, coef + o * C, s1, s2);
          });
          for (std::int64_t c = 0; c < C; ++c) {
            part[c] += static_cast<double>(s1[c]);
            part[C + c] += static_cast<double>(s2[c]);
          }
        }
      }
    });
    for (std::int64_t o = 0; o < L.outer; ++o)
      for (std::int64_t c = 0; c < C; ++c) {
        double s1 = 0, s2 = 0;
        for (std::int64_t k = 0; k < chunks; ++k) {
          const double* part = partials + (o * chunks + k) * 2 * C;
          s1 += part[c];
          s2 += part[C + c];
        }
        chan[o * C + c] = static_cast<double>(rstd[o * G + c / cpg]) * s2;
        chan[oc + o * C + c] = s1;
      }
    for (std::int64_t u = 0; u < L.units(); ++u) {
      const std::int64_t o = u / G, c0 = (u % G) * cpg;
      const double rs = static_cast<double>(rstd[u]);
      double q = 0, r = 0;
      unit_terms(u, q, r);
      for (std::int64_t c = c0; c < c0 + cpg; ++c) {
        coef[oc + o * C + c] = static_cast<E>(rs * weight_or(gamma, c, 1.0));
        coef[2 * oc + o * C + c] = static_cast<E>(q);
        coef[3 * oc + o * C + c] = static_cast<E>(r);
      }
    }
    for (std::int64_t o = 0; o < L.outer; ++o) {
      const E* v[4] = {coef + o * C, coef + oc + o * C, coef + 2 * oc + o * C, coef + 3 * oc + o * C};
      const std::int64_t h = wk.split_head(o, 2);
      if (h >= 0) K::template pixel_split_table<T>(C, h, v, 4, tables + 4 * o * C);
    }
    with_stream(stream, [&](auto S) {
      parallel_for_on(tm, tasks, workers, [&](std::int64_t t0, std::int64_t t1, int) {
        for (std::int64_t t = t0; t < t1; ++t) {
          const std::int64_t o = t / chunks, k = t % chunks;
          const E *m0 = coef + o * C, *p = coef + oc + o * C, *q = coef + 2 * oc + o * C, *r = coef + 3 * oc + o * C;
          const std::int64_t h = wk.split_head(o, 2);
          const typename K::template split_coefs<T> split{h >= 0 ? tables + 4 * o * C : nullptr, h, ahead};
          wk.for_pixel_runs(o, L.pixels * k / chunks, L.pixels * (k + 1) / chunks,
                            [&](T* const* a, const std::int64_t* ld, std::int64_t n) {
                              K::template pixel_grad<decltype(S)::value>(a[0], ld[0], a[1], ld[1], a[2], ld[2], n, C,
                                                                         m0, p, q, r, split);
                            });
        }
        if (decltype(S)::value) K::template stream_fence<T>();
      });
    });
  }
  for (std::int64_t c = 0; c < C; ++c) {
    double dg = 0, db = 0;
    for (std::int64_t o = 0; o < L.outer; ++o) {
      dg += chan[o * C + c];
      db += chan[oc + o * C + c];
    }
    if (dgamma) dgamma[c] = narrow<W>(dg);
    if (dbeta) dbeta[c] = narrow<W>(db);
  }
}

// ---- Checks ------------------------------------------------------------------------------------------

// The problem of a channel norm: ndim >= 2, channel_axis in [1, ndim) (negative from the end), groups
// dividing C. `elements` gets the element count (0 for an empty tensor).
inline status check_channel_problem(int ndim, const std::int64_t* shape, int& channel_axis, std::int64_t groups,
                                    std::int64_t& elements) noexcept {
  elements = 0;
  if (ndim < 2 || ndim > kMaxDims) return fail("shape: ndim must be between 2 and 64 (a batch axis and a channel axis)");
  if (!shape) return fail("shape: null pointer");
  if (channel_axis < 0) channel_axis += ndim;
  if (channel_axis < 1 || channel_axis >= ndim) return fail("channel_axis: must name an axis other than 0 (the batch axis)");
  std::int64_t count = 1;
  bool empty = false;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] < 0) return fail("shape: negative dimension");
    empty |= shape[d] == 0;
    if (shape[d] != 0 && !mul_fits(count, shape[d], count)) return fail("shape: the number of elements overflows int64");
  }
  const std::int64_t C = shape[channel_axis];
  if (C == 0) return fail("shape: the channel axis is empty");
  if (groups < 1) return fail("groups: must be >= 1");
  if (C % groups != 0) return fail("groups: must divide the number of channels");
  elements = empty ? 0 : count;
  return {};
}

// The channel count of a problem (InstanceNorm's and BatchNorm's groups), or 1 where the shape or the
// channel axis is one the checks will refuse.
inline std::int64_t channels_of(int ndim, const std::int64_t* shape, int channel_axis) noexcept {
  if (ndim < 2 || ndim > kMaxDims || !shape) return 1;
  const int c = channel_axis < 0 ? channel_axis + ndim : channel_axis;
  return c >= 1 && c < ndim && shape[c] > 0 ? shape[c] : 1;
}


inline status check_activation(activation act) noexcept {
  if (act != activation::none && act != activation::silu && act != activation::relu)
    return fail("activation: must be none, silu or relu");
  return {};
}

inline void channel_strides(const strided* arrays, int n, const std::int64_t** out) noexcept {
  for (int a = 0; a < n; ++a) out[a] = arrays[a].strides;
}

// The forward of GroupNorm (stats_per_sample) or BatchNorm: the one body of the public calls. With
// `given`, BatchNorm eval: running_mean/running_var are the statistics.
template <class T, class W>
inline status channel_norm_forward(int ndim, const std::int64_t* shape, int channel_axis, std::int64_t groups,
                                   bool stats_per_sample, strided x, strided y, const W* gamma, const W* beta,
                                   double eps, activation act, bool given, bool update, double momentum,
                                   stat_t<T>* running_mean, stat_t<T>* running_var, stat_t<T>* mean,
                                   stat_t<T>* rstd, const workspace* ws) noexcept {
  using rules::arg;
  begin_call();
  std::int64_t elements = 0;
  if (status s = check_channel_problem(ndim, shape, channel_axis, groups, elements); !s) return s;
  if (status s = check_eps(eps); !s) return s;
  if (status s = check_activation(act); !s) return s;
  if (update && !(momentum >= 0 && momentum <= 1)) return fail("momentum: must be a number in [0, 1]");
  if (given && (!running_mean || !running_var)) return fail("running_mean: eval mode needs the running statistics");
  const std::int64_t C = shape[channel_axis];
  const std::int64_t units = (stats_per_sample ? shape[0] : 1) * groups;
  rules::operands ops;
  ops.input(arg::x, nd_view<T>(x, ndim, shape));
  ops.output(arg::y, nd_view<T>(y, ndim, shape), rules::bit(arg::x));
  if (gamma) ops.vector(arg::gamma, gamma, C, sizeof(*gamma), false);
  if (beta) ops.vector(arg::beta, beta, C, sizeof(*beta), false);
  if (running_mean) ops.vector(arg::running_mean, running_mean, C, sizeof(*running_mean), update);
  if (running_var) ops.vector(arg::running_var, running_var, C, sizeof(*running_var), update);
  if (mean) ops.vector(arg::mean, mean, units, sizeof(*mean), true);
  if (rstd) ops.vector(arg::rstd, rstd, units, sizeof(*rstd), true);
  if (status s = check_arrays(ops); !s) return s;
  if (elements == 0) return {};
  // The statistics walk x's layout alone, so that their bits never depend on where y lies (out=
  // strided otherwise than x); where y's layout merges as x's does, one walk computes and applies.
  const std::int64_t* st[2] = {x.strides, y.strides};
  channel_layout L, Lx;
  build_channel_layout(L, ndim, shape, channel_axis, groups, stats_per_sample, 2, st, 0);
  build_channel_layout(Lx, ndim, shape, channel_axis, groups, stats_per_sample, 1, st, 0);
  const bool fused = same_walk(L, Lx);
  const team tm = current_team();
  scratch sc;
  if (status s = acquire(channel_forward_plan<T>(L, Lx, tm.threads), ws, sc); !s) return s;
  double* unit_mean = sc.doubles;
  double* unit_var = unit_mean + L.units();
  if (given)
    for (std::int64_t c = 0; c < C; ++c) {
      unit_mean[c] = static_cast<double>(running_mean[c]);
      unit_var[c] = static_cast<double>(running_var[c]);
    }
  T* xp = const_cast<T*>(static_cast<const T*>(x.data));
  T* yp = static_cast<T*>(const_cast<void*>(y.data));
  status result = with_kernels([&](auto k) -> status {
    using K = decltype(k);
    if (!fused && !given) channel_forward<K, T, W>(Lx, xp, xp, gamma, beta, eps, act, unit_mean, unit_var, false, false, sc, tm);
    channel_forward<K, T, W>(L, xp, yp, gamma, beta, eps, act, unit_mean, unit_var, given || !fused, true, sc, tm);
    return {};
  });
  if (!result) return result;
  for (std::int64_t u = 0; u < L.units(); ++u) {
    if (mean) mean[u] = static_cast<stat_t<T>>(unit_mean[u]);
    if (rstd) rstd[u] = static_cast<stat_t<T>>(rstd_of(unit_var[u], eps));
  }
  if (update) {
    const double n = static_cast<double>(L.pixels) * static_cast<double>(L.per_group());
    const double unbias = n > 1 ? n / (n - 1) : std::numeric_limits<double>::quiet_NaN();
    for (std::int64_t c = 0; c < C; ++c) {
      if (running_mean)
        running_mean[c] = static_cast<stat_t<T>>((1 - momentum) * static_cast<double>(running_mean[c]) + momentum * unit_mean[c]);
      if (running_var)
        running_var[c] =
            static_cast<stat_t<T>>((1 - momentum) * static_cast<double>(running_var[c]) + momentum * unit_var[c] * unbias);
    }
  }
  return {};
}

template <class T, class W>
inline status channel_norm_backward(int ndim, const std::int64_t* shape, int channel_axis, std::int64_t groups,
                                    bool stats_per_sample, strided dy, strided x, const stat_t<T>* mean,
                                    const stat_t<T>* rstd, const W* gamma, strided dx, W* dgamma, W* dbeta,
                                    const workspace* ws) noexcept {
  using rules::arg;
  begin_call();
  std::int64_t elements = 0;
  if (status s = check_channel_problem(ndim, shape, channel_axis, groups, elements); !s) return s;
  const std::int64_t C = shape[channel_axis];
  const std::int64_t units = (stats_per_sample ? shape[0] : 1) * groups;
  rules::operands ops;
  ops.input(arg::dy, nd_view<T>(dy, ndim, shape));
  ops.input(arg::x, nd_view<T>(x, ndim, shape));
  ops.vector(arg::mean, mean, units, sizeof(*mean), false);
  ops.vector(arg::rstd, rstd, units, sizeof(*rstd), false);
  if (gamma) ops.vector(arg::gamma, gamma, C, sizeof(*gamma), false);
  ops.output(arg::dx, nd_view<T>(dx, ndim, shape));
  if (dgamma) ops.vector(arg::dgamma, dgamma, C, sizeof(*dgamma), true);
  if (dbeta) ops.vector(arg::dbeta, dbeta, C, sizeof(*dbeta), true);
  if (status s = check_arrays(ops); !s) return s;
  if (elements == 0) {
    for (std::int64_t c = 0; c < C; ++c) {
      if (dgamma) dgamma[c] = narrow<W>(0.0);
      if (dbeta) dbeta[c] = narrow<W>(0.0);
    }
    return {};
  }
  const std::int64_t* st[3];
  const strided arrays[3] = {dy, x, dx};
  channel_strides(arrays, 3, st);
  channel_layout L;
  build_channel_layout(L, ndim, shape, channel_axis, groups, stats_per_sample, 3, st, 1);
  const team tm = current_team();
  scratch sc;
  if (status s = acquire(channel_plan<T>(L, tm.threads), ws, sc); !s) return s;
  T* p[3] = {const_cast<T*>(static_cast<const T*>(dy.data)), const_cast<T*>(static_cast<const T*>(x.data)),
             static_cast<T*>(const_cast<void*>(dx.data))};
  return with_kernels([&](auto k) -> status {
    channel_backward<decltype(k), T, W>(L, p[0], p[1], p[2], mean, rstd, gamma, dgamma, dbeta, sc, tm);
    return {};
  });
}

template <class T>
inline std::size_t channel_workspace(int ndim, const std::int64_t* shape, int channel_axis, std::int64_t groups,
                                     bool stats_per_sample, bool backward, int narrays,
                                     const std::int64_t* const* strides, int num_threads) noexcept {
  std::int64_t elements = 0;
  if (!check_channel_problem(ndim, shape, channel_axis, groups, elements) || elements == 0) return 0;
  for (int a = 0; a < narrays; ++a)
    if (!strides[a]) return 0;
  channel_layout L;
  build_channel_layout(L, ndim, shape, channel_axis, groups, stats_per_sample, narrays, strides, backward ? 1 : 0);
  const int threads = query_threads(num_threads);
  if (backward) return channel_plan<T>(L, threads).bytes();
  channel_layout Lx;
  build_channel_layout(Lx, ndim, shape, channel_axis, groups, stats_per_sample, 1, strides, 0);
  return channel_forward_plan<T>(L, Lx, threads).bytes();
}

}  // namespace detail

// ============================================================================================
// Channel norms: GroupNorm, InstanceNorm, BatchNorm over N-d strided tensors
// ============================================================================================
//
// x has a batch axis 0 and a channel axis `channel_axis` (1 for NCHW, -1 or ndim - 1 for NHWC; any axis
// but 0), ndim >= 2, any strides (in elements). gamma and beta: C contiguous values, per channel (may be
// null). Statistics are float (double for double data), the variance biased, from shifted sums (never
// E[x^2] - E[x]^2). mean and rstd (may be null) get one value per unit: (N, groups) row-major for
// GroupNorm and InstanceNorm (groups = C), C for BatchNorm. y may be x (in place); the aliasing rule is
// the other calls' (see the N-d calls above). `act` is applied after the affine, in the same pass.
// Results are the same bits for any thread count. A tensor with no elements is accepted and writes
// nothing (the backward's dgamma and dbeta are set to zeros).
//
//   // (8, 512, 64, 64) channels-last float32, 32 groups, SiLU fused
//   const std::int64_t shape[4] = {8, 512, 64, 64}, st[4] = {512 * 64 * 64, 1, 64 * 512, 512};
//   lnorm::try_group_norm_nd<float>(4, shape, 1, 32, {x, st}, {y, st}, g, b, 1e-5, lnorm::activation::silu);

/// GroupNorm: statistics per (n, group) over the group's C / groups channels and every axis but 0.
template <class T, class W = T>
status try_group_norm_nd(int ndim, const std::int64_t* shape, int channel_axis, std::int64_t groups, strided x,
                         strided y, const detail::identity_t<W>* gamma, const detail::identity_t<W>* beta, double eps,
                         activation act = activation::none, stat_t<T>* mean = nullptr, stat_t<T>* rstd = nullptr,
                         const workspace* ws = nullptr) noexcept {
  return detail::channel_norm_forward<T, W>(ndim, shape, channel_axis, groups, true, x, y, gamma, beta, eps, act,
                                            false, false, 0.0, nullptr, nullptr, mean, rstd, ws);
}

/// InstanceNorm: GroupNorm with one channel per group; mean and rstd are (N, C).
template <class T, class W = T>
status try_instance_norm_nd(int ndim, const std::int64_t* shape, int channel_axis, strided x, strided y,
                            const detail::identity_t<W>* gamma, const detail::identity_t<W>* beta, double eps,
                            activation act = activation::none, stat_t<T>* mean = nullptr, stat_t<T>* rstd = nullptr,
                            const workspace* ws = nullptr) noexcept {
  return try_group_norm_nd<T, W>(ndim, shape, channel_axis, detail::channels_of(ndim, shape, channel_axis), x, y, gamma,
                                 beta, eps, act, mean, rstd, ws);
}

/// BatchNorm. training: statistics per channel over every other axis (mean and rstd get them); a
/// non-null running_mean / running_var is updated in place as r = (1 - momentum) * r + momentum * batch
/// (the unbiased variance for running_var). Not training: running_mean and running_var (both
/// required) are the statistics, and mean / rstd get them (rstd = 1 / sqrt(running_var + eps)).
template <class T, class W = T>
status try_batch_norm_nd(int ndim, const std::int64_t* shape, int channel_axis, strided x, strided y,
                         const detail::identity_t<W>* gamma, const detail::identity_t<W>* beta, double eps,
                         bool training, double momentum, stat_t<T>* running_mean, stat_t<T>* running_var,
                         activation act = activation::none, stat_t<T>* mean = nullptr, stat_t<T>* rstd = nullptr,
                         const workspace* ws = nullptr) noexcept {
  const std::int64_t groups = detail::channels_of(ndim, shape, channel_axis);
  return detail::channel_norm_forward<T, W>(ndim, shape, channel_axis, groups, false, x, y, gamma, beta, eps, act,
                                            !training, training, momentum, running_mean, running_var, mean, rstd, ws);
}

/// Backward of try_group_norm_nd with its mean and rstd: dx, and dgamma / dbeta (may be null) summed
/// over the batch in a fixed order. dx may not overlap any other argument.
template <class T, class W = T>
status try_group_norm_backward_nd(int ndim, const std::int64_t* shape, int channel_axis, std::int64_t groups,
                                  strided dy, strided x, const stat_t<T>* mean, const stat_t<T>* rstd,
                                  const detail::identity_t<W>* gamma, strided dx, detail::identity_t<W>* dgamma,
                                  detail::identity_t<W>* dbeta, const workspace* ws = nullptr) noexcept {
  return detail::channel_norm_backward<T, W>(ndim, shape, channel_axis, groups, true, dy, x, mean, rstd, gamma, dx,
                                             dgamma, dbeta, ws);
}

/// Backward of try_instance_norm_nd.
template <class T, class W = T>
status try_instance_norm_backward_nd(int ndim, const std::int64_t* shape, int channel_axis, strided dy, strided x,
                                     const stat_t<T>* mean, const stat_t<T>* rstd, const detail::identity_t<W>* gamma,
                                     strided dx, detail::identity_t<W>* dgamma, detail::identity_t<W>* dbeta,
                                     const workspace* ws = nullptr) noexcept {
  const std::int64_t groups = detail::channels_of(ndim, shape, channel_axis);
  return detail::channel_norm_backward<T, W>(ndim, shape, channel_axis, groups, true, dy, x, mean, rstd, gamma, dx,
                                             dgamma, dbeta, ws);
}

/// Backward of try_batch_norm_nd in training mode (batch statistics: its mean and rstd).
template <class T, class W = T>
status try_batch_norm_backward_nd(int ndim, const std::int64_t* shape, int channel_axis, strided dy, strided x,
                                  const stat_t<T>* mean, const stat_t<T>* rstd, const detail::identity_t<W>* gamma,
                                  strided dx, detail::identity_t<W>* dgamma, detail::identity_t<W>* dbeta,
                                  const workspace* ws = nullptr) noexcept {
  const std::int64_t groups = detail::channels_of(ndim, shape, channel_axis);
  return detail::channel_norm_backward<T, W>(ndim, shape, channel_axis, groups, false, dy, x, mean, rstd, gamma, dx,
                                             dgamma, dbeta, ws);
}

/// Bytes of workspace the channel-norm forward calls need (GroupNorm; InstanceNorm with groups = C;
/// BatchNorm with batch_norm = true, groups ignored), on num_threads threads (0: get_num_threads()).
template <class T>
std::size_t channel_norm_workspace_size(int ndim, const std::int64_t* shape, int channel_axis, std::int64_t groups,
                                        bool batch_norm, const std::int64_t* x_strides, const std::int64_t* y_strides,
                                        int num_threads = 0) noexcept {
  if (batch_norm) groups = detail::channels_of(ndim, shape, channel_axis);
  const std::int64_t* st[2] = {x_strides, y_strides};
  return detail::channel_workspace<T>(ndim, shape, channel_axis, groups, !batch_norm, false, 2, st, num_threads);
}

/// Bytes of workspace the channel-norm backward calls need (as channel_norm_workspace_size).
template <class T>
std::size_t channel_norm_backward_workspace_size(int ndim, const std::int64_t* shape, int channel_axis,
                                                 std::int64_t groups, bool batch_norm, const std::int64_t* dy_strides,
                                                 const std::int64_t* x_strides, const std::int64_t* dx_strides,
                                                 int num_threads = 0) noexcept {
  if (batch_norm) groups = detail::channels_of(ndim, shape, channel_axis);
  const std::int64_t* st[3] = {dy_strides, x_strides, dx_strides};
  return detail::channel_workspace<T>(ndim, shape, channel_axis, groups, !batch_norm, true, 3, st, num_threads);
}

}  // namespace lnorm
