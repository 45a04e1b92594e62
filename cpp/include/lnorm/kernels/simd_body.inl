// lnorm/kernels/simd_body.inl: the SIMD kernel set, written once over a small vector interface and
// included inside each ISA's namespace and target region (avx2.hpp, avx512.hpp, neon.hpp), so every
// function here is compiled separately, and under a distinct name, for each ISA (no ODR clash).
//
// Before including, the ISA header defines in its namespace `template <class E> struct vec` for
// E = float and double, with the members that vec_interface.inl lists (and checks: the header includes
// it just before this file), and the macro LNORM_SIMD_NAME, its isa_table name.
//
// Numerics (same as the scalar set, at vector speed): statistics in float for float32 and 16-bit data
// (double for float64) by the corrected two-pass scheme; the first pass's rough mean m0 is refined by
// c = mean(x - m0), which is exact enough because x - m0 is small next to x. A row whose sums are not
// finite (data near the float32 maximum, or Inf/NaN in the row) is redone by the scalar kernels,
// which accumulate in double and rescale: correct, and off the fast path.

struct kernels {
  static constexpr const char* name = LNORM_SIMD_NAME;
  // Next rows up to this size are prefetched into L1, longer ones into L2 (see prefetch_row).
  static constexpr std::int64_t kPrefetchL1Bytes = 16384;
  // 16-bit rows: in the pipelined sweep the next row is also prefetched (into L2) this far ahead of
  // its statistics, which keeps more of it in flight; measured faster for 16-bit rows, slower for
  // float32 ones (whose sweep is shorter per byte).
  static constexpr std::int64_t kPipedPrefetchBytes = 2048;

 private:
  template <class T>
  using V = vec<calc_t<T>>;

  // Whether normalize_pair (and add_row) work in split order: bfloat16 rows whose weights (or bias_in),
  // if any, are bfloat16.
  template <class T, class W, bool Weighted>
  static constexpr bool split_pairs = std::is_same_v<T, bfloat16_t> && (std::is_same_v<W, bfloat16_t> || !Weighted);

  // The sums a row's statistics come from, accumulated four vectors at a time in one fixed order
  // (4 accumulator pairs: FP add latency 4, 2 ports), whichever sweep drives it: a sweep of its own
  // (shifted_sums, row_mean_square) or the normalizing sweep of the row before (the pipelined row
  // path), so both give bit-identical sums. LayerNorm: d = x - shift and d^2; RMSNorm: x^2 only.
  template <class T, bool Rms>
  struct row_sums {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    static constexpr std::int64_t L = V<T>::lanes;
    R vk, d0, d1, d2, d3, q0, q1, q2, q3;
    explicit row_sums(E shift) noexcept
        : vk(V<T>::set1(shift)), d0(V<T>::zero()), d1(V<T>::zero()), d2(V<T>::zero()), d3(V<T>::zero()),
          q0(V<T>::zero()), q1(V<T>::zero()), q2(V<T>::zero()), q3(V<T>::zero()) {}
    // Elements [0, 4 * lanes) of x.
    LNORM_VEC_INLINE void step(const T* x) noexcept {
      R a, b, c, e;
      if constexpr (std::is_same_v<T, bfloat16_t>) {  // split order (see normalize_pair): sums only
        V<T>::load_split(x, a, b);
        V<T>::load_split(x + 2 * L, c, e);
      } else {
        a = V<T>::load(x);
        b = V<T>::load(x + L);
        c = V<T>::load(x + 2 * L);
        e = V<T>::load(x + 3 * L);
      }
      if constexpr (!Rms) {
        a = V<T>::sub(a, vk);
        b = V<T>::sub(b, vk);
        c = V<T>::sub(c, vk);
        e = V<T>::sub(e, vk);
        d0 = V<T>::add(d0, a);
        d1 = V<T>::add(d1, b);
        d2 = V<T>::add(d2, c);
        d3 = V<T>::add(d3, e);
      }
      q0 = V<T>::fma(a, a, q0);
      q1 = V<T>::fma(b, b, q1);
      q2 = V<T>::fma(c, c, q2);
      q3 = V<T>::fma(e, e, q3);
    }
    // The row's last k < 4 * lanes elements, a vector at a time.
    LNORM_VEC_INLINE void tail(const T* x, std::int64_t k) noexcept {
      for (std::int64_t i = 0; i < k; i += L) {
        R a = V<T>::load_n(x + i, k - i);
        if constexpr (!Rms) {
          a = V<T>::head(V<T>::sub(a, vk), k - i);
          d0 = V<T>::add(d0, a);
        }
        q0 = V<T>::fma(a, a, q0);
      }
    }
    LNORM_VEC_INLINE E sum_d() const noexcept { return V<T>::sum(V<T>::add(V<T>::add(d0, d1), V<T>::add(d2, d3))); }
    LNORM_VEC_INLINE E sum_q() const noexcept { return V<T>::sum(V<T>::add(V<T>::add(q0, q1), V<T>::add(q2, q3))); }
  };

  // Sums of d = x - shift and d^2 over one row.
  template <class T>
  static void shifted_sums(const T* x, std::int64_t n, calc_t<T> shift, calc_t<T>& sum_d, calc_t<T>& sum_q,
                           const T* next = nullptr) noexcept {
    constexpr std::int64_t L = V<T>::lanes;
    row_sums<T, false> acc(shift);
    std::int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      prefetch_first_half(next, i, L, n);
      acc.step(x + i);
    }
    acc.tail(x + i, n - i);
    sum_d = acc.sum_d();
    sum_q = acc.sum_q();
  }

  // The shift of a row's shifted sums: the mean of its first vector.
  template <class T>
  static calc_t<T> row_shift(const T* x, std::int64_t n) noexcept {
    const std::int64_t k0 = n < V<T>::lanes ? n : V<T>::lanes;
    return V<T>::sum(V<T>::load_n(x, k0)) / static_cast<calc_t<T>>(k0);
  }

  // Statistics of one row in one read: the shift m0 is the mean of the row's first vector, the sums
  // of d = x - m0 and d^2 give the correction c = mean(d) and var = mean(d^2) - c^2, which cancels
  // little while |c| is within a few spreads (so never E[x^2] - E[x]^2). A shift far from the mean
  // (an outlier at the row's start) costs one more pass, from cache, around m0 + c.
  template <class T>
  static void row_moments(const T* x, std::int64_t n, calc_t<T>& m0, calc_t<T>& c, calc_t<T>& var,
                          const T* next = nullptr) noexcept {
    using E = calc_t<T>;
    m0 = row_shift(x, n);
    E sd, sq;
    shifted_sums(x, n, m0, sd, sq, next);
    finish_moments(x, n, sd, sq, m0, c, var);
  }

  // c and var from the shifted sums around m0; a shift far from the mean costs one more pass.
  template <class T>
  static void finish_moments(const T* x, std::int64_t n, calc_t<T> sd, calc_t<T> sq, calc_t<T>& m0, calc_t<T>& c,
                             calc_t<T>& var) noexcept {
    using E = calc_t<T>;
    c = sd / static_cast<E>(n);
    var = sq / static_cast<E>(n) - c * c;
    if (!(c * c <= E(4) * var)) {
      m0 += c;
      shifted_sums(x, n, m0, sd, sq);
      c = sd / static_cast<E>(n);
      var = sq / static_cast<E>(n) - c * c;
    }
    if (var < 0) var = 0;
  }

  template <class T>
  static void row_mean_square(const T* x, std::int64_t n, calc_t<T>& ms, const T* next = nullptr) noexcept {
    constexpr std::int64_t L = V<T>::lanes;
    row_sums<T, true> acc(calc_t<T>(0));
    std::int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      prefetch_first_half(next, i, L, n);
      acc.step(x + i);
    }
    acc.tail(x + i, n - i);
    ms = acc.sum_q() / static_cast<calc_t<T>>(n);
  }

  // Whether float statistics are trustworthy: finite, and a variance (or mean square) that is not so
  // small that its squares lost bits to underflow while eps is too small to hide that. Otherwise the
  // scalar kernels, which work in double and rescale, redo the row (or lane).
  template <class E>
  static bool stats_ok(E m, E c, E var, double eps) noexcept {
    const E tiny = std::numeric_limits<E>::min() * E(1e15);
    return std::isfinite(m) && std::isfinite(c) && std::isfinite(var) && (var >= tiny || eps >= 1e-12);
  }

  static double rstd_apply(double var_plus_eps) noexcept {
    return var_plus_eps > 0 ? 1.0 / std::sqrt(var_plus_eps) : 0.0;
  }

  // y = ((x - m0) - c) * r * gamma + beta for one vector xv (g, b: gamma and beta, used with G, B):
  // with S (shifted), as (x - m0) * r + vc with vc = -c * r; without (RMSNorm), as x * r + vc (see
  // offset_term).
  template <bool G, bool B, bool S, class T, class R = typename V<T>::reg>
  LNORM_VEC_INLINE static R affine(R xv, R g, R b, R vm, R vc, R vr) noexcept {
    R t = S ? V<T>::fma(V<T>::sub(xv, vm), vr, vc) : V<T>::fma(xv, vr, vc);
    if constexpr (G && B) t = V<T>::fma(t, g, b);
    else if constexpr (G) t = V<T>::mul(t, g);
    else if constexpr (B) t = V<T>::add(t, b);
    return t;
  }

  // affine for k elements at x (k >= lanes: a full vector).
  template <bool G, bool B, bool S, class T, class W>
  LNORM_VEC_INLINE static typename V<T>::reg normalized(const T* x, std::int64_t k, const W* gamma, const W* beta, typename V<T>::reg vm,
                                       typename V<T>::reg vc, typename V<T>::reg vr) noexcept {
    using R = typename V<T>::reg;
    using VW = vec<calc_t<T>>;
    const bool full = k >= V<T>::lanes;
    const R xv = full ? V<T>::load(x) : V<T>::load_n(x, k);
    R g = vr, b = vr;  // unused without G, B
    if constexpr (G) g = full ? VW::load(gamma) : VW::load_n(gamma, k);
    if constexpr (B) b = full ? VW::load(beta) : VW::load_n(beta, k);
    return affine<G, B, S, T>(xv, g, b, vm, vc, vr);
  }

  template <bool G, bool B, bool S, bool Stream = false, class T, class W>
  LNORM_VEC_INLINE static void normalize_chunk(const T* x, T* y, std::int64_t k, const W* gamma, const W* beta,
                              typename V<T>::reg vm, typename V<T>::reg vc, typename V<T>::reg vr) noexcept {
    const auto t = normalized<G, B, S>(x, k, gamma, beta, vm, vc, vr);
    if (k < V<T>::lanes) V<T>::store_n(y, t, k);
    else if constexpr (Stream) V<T>::stream(y, t);
    else V<T>::store(y, t);
  }

  // Two full vectors (2 * lanes elements); with Stream, y is aligned to 2 * lanes * sizeof(T).
  //
  // bfloat16 rows with bfloat16 weights (or none) work in split order: a pair of vectors holds the
  // pair's even elements and its odd ones (V::load_split), each widened by one instruction from the
  // raw bits, and the store puts them back in order (V::store_split/stream_split). Every operand of
  // the pair (x, gamma, beta) is split alike, so the elementwise results are the same. Those stores
  // round without a NaN guard: every NaN y can hold came from bfloat16 data (a row with NaN in x takes
  // the scalar path; NaN weights propagate with the low 16 bits zero) or is the default NaN.
  template <bool G, bool B, bool S, bool Stream, class T, class W>
  LNORM_VEC_INLINE static void normalize_pair(const T* x, T* y, const W* gamma, const W* beta, typename V<T>::reg vm,
                             typename V<T>::reg vc, typename V<T>::reg vr) noexcept {
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    if constexpr (split_pairs<T, W, G || B>) {
      R xa, xb, ga = vr, gb = vr, ba = vr, bb = vr;
      V<T>::load_split(x, xa, xb);
      if constexpr (G) V<T>::load_split(gamma, ga, gb);
      if constexpr (B) V<T>::load_split(beta, ba, bb);
      const R a = affine<G, B, S, T>(xa, ga, ba, vm, vc, vr), b = affine<G, B, S, T>(xb, gb, bb, vm, vc, vr);
      if constexpr (Stream) V<T>::stream_split(y, a, b);
      else V<T>::store_split(y, a, b);
    } else {
      const R a = normalized<G, B, S>(x, L, gamma, beta, vm, vc, vr);
      const R b = normalized<G, B, S>(x + L, L, G ? gamma + L : gamma, B ? beta + L : beta, vm, vc, vr);
      if constexpr (Stream) {
        V<T>::stream2(y, a, b);
      } else {
        V<T>::store(y, a);
        V<T>::store(y + L, b);
      }
    }
  }

  // A streamed row stores the part of its last cache line that it owns (unless the row ends on a line
  // boundary) with plain stores, which must read the line first; that line is shared with the head
  // of the next row (rows of 4096 float16 that start 16 bytes past a line, as NumPy's large arrays
  // do). Fetched when the row's sweep starts, the read is done by the time the row's end is stored,
  // instead of holding up the streaming stores queued behind it.
  template <class T>
  LNORM_VEC_INLINE static void fetch_tail_line(const T* y, std::int64_t n) noexcept {
    const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(y + n);
    if (end % 64 != 0) __builtin_prefetch(reinterpret_cast<const void*>(end - 1), 1, 3);
  }

  // The head of a row to store before y + head is aligned for stream2 (-1: y is not even aligned to
  // its element size, and is not streamed).
  template <class T>
  LNORM_VEC_INLINE static std::int64_t stream_head(const T* y) noexcept {
    constexpr std::uintptr_t align = 2 * static_cast<std::uintptr_t>(V<T>::lanes) * sizeof(T);
    const auto a = reinterpret_cast<std::uintptr_t>(y);
    return a % sizeof(T) ? std::int64_t{-1} : static_cast<std::int64_t>(((align - a % align) % align) / sizeof(T));
  }

  // The whole row; gamma/beta presence fixed at compile time. With `stream`, full vectors are stored
  // non-temporally (a large output then costs no read-for-ownership) after a head that aligns y; the
  // caller fences them (once for a chain of rows).
  //
  // `next` (may be null) is the row the caller handles next: it is prefetched while this row, already
  // in cache, is normalized, so that the next row's read from memory overlaps this row's work.
  template <bool G, bool B, bool S, class T, class W>
  static void normalize_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                            calc_t<T> c, calc_t<T> r, bool stream, const T* next) noexcept {
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    constexpr std::uintptr_t align = static_cast<std::uintptr_t>(L) * sizeof(T);
    const R vm = V<T>::set1(m0), vc = V<T>::set1(offset_term<S>(m0, c, r)), vr = V<T>::set1(r);
    const std::uintptr_t addr = reinterpret_cast<std::uintptr_t>(y);
    std::int64_t i = 0;
    if (stream && addr % sizeof(T) == 0 && n >= 2 * L) {
      fetch_tail_line(y, n);
      const std::int64_t head = static_cast<std::int64_t>(((align - addr % align) % align) / sizeof(T));
      if (head > 0) normalize_chunk<G, B, S>(x, y, head, gamma, beta, vm, vc, vr);
      for (i = head; i + L <= n; i += L) {
        prefetch_row(next, n / 2 + i / 2, n);
        normalize_chunk<G, B, S, true>(x + i, y + i, L, G ? gamma + i : gamma, B ? beta + i : beta, vm, vc, vr);
      }
    } else {
      for (; i + L <= n; i += L) {
        prefetch_row(next, n / 2 + i / 2, n);
        normalize_chunk<G, B, S>(x + i, y + i, L, G ? gamma + i : gamma, B ? beta + i : beta, vm, vc, vr);
      }
    }
    if (i < n) normalize_chunk<G, B, S>(x + i, y + i, n - i, G ? gamma + i : gamma, B ? beta + i : beta, vm, vc, vr);
  }

  // normalize_row, while the row sums of nx (the next row, n elements, read from memory) accumulate
  // into acc in their fixed order: the next row's statistics sweep rides along with this row's
  // normalizing sweep, so memory streams through both at once (the pipelined row path).
  template <bool G, bool B, bool S, bool Stream, bool Rms, class T, class W>
  static void normalize_row_piped(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                                  calc_t<T> c, calc_t<T> r, std::int64_t head, const T* nx,
                                  row_sums<T, Rms>& sums) noexcept {
    using R = typename V<T>::reg;
    row_sums<T, Rms> acc = sums;  // a local copy stays in registers (the stores to y may alias sums)
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(m0), vc = V<T>::set1(offset_term<S>(m0, c, r)), vr = V<T>::set1(r);
    std::int64_t j = 0, i = 0;
    for (; j < head; j += L)
      normalize_chunk<G, B, S>(x + j, y + j, head - j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
    j = head;
    for (; i + 4 * L <= n; i += 4 * L) {
      prefetch_ahead(nx, i);
      acc.step(nx + i);
      for (int u = 0; u < 2 && j + 2 * L <= n; ++u, j += 2 * L)
        normalize_pair<G, B, S, Stream>(x + j, y + j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
    }
    acc.tail(nx + i, n - i);
    for (; j + 2 * L <= n; j += 2 * L)
      normalize_pair<G, B, S, Stream>(x + j, y + j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
    // No fence here: the chain's last row (called without a next row) fences for all of them. A fence
    // per row waits for that row's streaming stores to drain, and measured 5 % of 16-bit throughput.
    for (; j < n; j += L)
      normalize_chunk<G, B, S>(x + j, y + j, n - j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
    sums = acc;
  }

  template <bool Rms, class T, class W>
  static void normalize_row_piped_any(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                                      calc_t<T> c, calc_t<T> r, bool stream, const T* nx,
                                      row_sums<T, Rms>& acc) noexcept {
    // Full vectors are stored from a cache-line boundary on, streamed or not: a store split across
    // two lines costs as much as two.
    const std::int64_t aligned = stream_head(y);
    const bool lined = aligned >= 0 && n >= 4 * V<T>::lanes;
    const std::int64_t head = lined ? aligned : 0;
    if (stream && lined) fetch_tail_line(y, n);
    with_affine(gamma, beta, [&](auto g, auto b) {
      constexpr bool G = decltype(g)::value, B = decltype(b)::value, S = !Rms;
      if (stream && lined) normalize_row_piped<G, B, S, true>(x, y, n, gamma, beta, m0, c, r, head, nx, acc);
      else normalize_row_piped<G, B, S, false>(x, y, n, gamma, beta, m0, c, r, head, nx, acc);
    });
  }

  // The sums of the row a pipelined call normalizes next, left by the call before it on this thread
  // (consumed, and cleared, by the very next call: for_each_row hands a worker's rows in order).
  template <class T>
  struct carry {
    const T* row;
    std::int64_t n;
    bool rms;
    calc_t<T> m0, sd, sq;
  };
  template <class T>
  static carry<T>& carried() noexcept {
    static thread_local carry<T> c{};
    return c;
  }
  // Whether this thread's carry holds row x's sums (clears it either way).
  template <class T>
  static bool take_carry(const T* x, std::int64_t n, bool rms, carry<T>& out) noexcept {
    carry<T>& c = carried<T>();
    const bool hit = c.row == x && c.n == n && c.rms == rms;
    out = c;
    c.row = nullptr;
    return hit;
  }

  // Calls f(std::bool_constant<G>, std::bool_constant<B>) for which of gamma and beta are given.
  template <class W, class F>
  static void with_affine(const W* gamma, const W* beta, F&& f) noexcept {
    if (gamma && beta) f(std::true_type{}, std::true_type{});
    else if (gamma) f(std::true_type{}, std::false_type{});
    else if (beta) f(std::false_type{}, std::true_type{});
    else f(std::false_type{}, std::false_type{});
  }

  // The vc of normalized: -c * r with S, -(m0 + c) * r without (RMSNorm's rows, m0 = c = 0, are
  // formed without the shift: the same values, one operation per vector fewer).
  template <bool S, class E>
  LNORM_VEC_INLINE static E offset_term(E m0, E c, E r) noexcept {
    return S ? -(c * r) : -((m0 + c) * r);
  }

  template <bool Rms = false, class T, class W>
  static void normalize_row_any(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                                calc_t<T> c, calc_t<T> r, bool stream, const T* next = nullptr) noexcept {
    with_affine(gamma, beta, [&](auto g, auto b) {
      normalize_row<decltype(g)::value, decltype(b)::value, !Rms>(x, y, n, gamma, beta, m0, c, r, stream, next);
    });
  }

  // Prefetches the line of `next` at element i. The next row is fetched while this one is worked on:
  // its first half during the statistics sweep (prefetch_first_half), its second half during the
  // normalizing sweep, so that memory is busy in both. Rows up to 16 KiB go to L1, longer ones to L2
  // so as not to evict the row in hand. (Lines are hinted more than once: harmless.)
  // In a sweep of 4 vectors per step at element i: the matching part of next's first half.
  template <class T>
  LNORM_VEC_INLINE static void prefetch_first_half(const T* next, std::int64_t i, std::int64_t lanes, std::int64_t n) noexcept {
    prefetch_row(next, i / 2, n);
    prefetch_row(next, i / 2 + lanes, n);
  }

  // The pipelined sweep's prefetch (see kPipedPrefetchBytes) of the 4 vectors at i: 16-bit rows only.
  // Past the row's end it touches the row after, or nothing mapped: prefetches never fault.
  template <class T>
  LNORM_VEC_INLINE static void prefetch_ahead(const T* nx, std::int64_t i) noexcept {
    if constexpr (sizeof(T) == 2) {
      const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(nx + i) + kPipedPrefetchBytes;
      __builtin_prefetch(reinterpret_cast<const void*>(at), 0, 2);
      __builtin_prefetch(reinterpret_cast<const void*>(at + 64), 0, 2);
    }
  }

  template <class T>
  LNORM_VEC_INLINE static void prefetch_row(const T* next, std::int64_t i, std::int64_t n) noexcept {
    if (!next) return;
    if (n * static_cast<std::int64_t>(sizeof(T)) <= kPrefetchL1Bytes) __builtin_prefetch(next + i, 0, 3);
    else __builtin_prefetch(next + i, 0, 2);
  }

 public:
  // ---- rows ---------------------------------------------------------------------------------

  // `piped` (the rows layout of lnorm.hpp): the statistics of `next` are summed during this row's
  // normalizing sweep and handed to the call for `next` (see carry), so x is read from memory once,
  // in one continuous stream, and memory never idles between a row's two sweeps. The sums are the
  // ones a sweep of their own would give, bit for bit: results do not depend on where rows start.
  // A piped call with `next` leaves its streaming stores unfenced: the thread must go on to `next`,
  // and the chain's last call (no `next`) issues the one fence for all of them.
  template <class T, class W>
  static void layer_norm_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double eps,
                             stat_t<T>* mean, stat_t<T>* rstd, bool stream = false, const T* next = nullptr,
                             bool piped = false) noexcept {
    using E = calc_t<T>;
    E m0, c, var;
    carry<T> in;
    if (piped && take_carry(x, n, false, in)) {
      m0 = in.m0;
      finish_moments(x, n, in.sd, in.sq, m0, c, var);
    } else {
      row_moments(x, n, m0, c, var, next);
    }
    if (!stats_ok(m0, c, var, eps)) {
      scalar::kernels::layer_norm_row(x, y, n, gamma, beta, eps, mean, rstd);
      if (stream && !(piped && next)) V<T>::fence();
      return;
    }
    const double ve = static_cast<double>(var) + eps;
    const E r = static_cast<E>(rstd_apply(ve));
    if (piped && next) {
      const E shift = row_shift(next, n);
      row_sums<T, false> acc(shift);
      normalize_row_piped_any(x, y, n, gamma, beta, m0, c, r, stream, next, acc);
      carried<T>() = {next, n, false, shift, acc.sum_d(), acc.sum_q()};
    } else {
      normalize_row_any(x, y, n, gamma, beta, m0, c, r, stream, next);
      if (stream) V<T>::fence();  // the end of a piped chain
    }
    if (mean) *mean = static_cast<stat_t<T>>(static_cast<double>(m0) + static_cast<double>(c));
    if (rstd) *rstd = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
  }

  template <class T, class W>
  static void rms_norm_row(const T* x, T* y, std::int64_t n, const W* gamma, double eps, stat_t<T>* rstd,
                           bool stream = false, const T* next = nullptr, bool piped = false) noexcept {
    using E = calc_t<T>;
    E ms;
    carry<T> in;
    if (piped && take_carry(x, n, true, in)) ms = in.sq / static_cast<E>(n);
    else row_mean_square(x, n, ms, next);
    if (!stats_ok(E(0), E(0), ms, eps)) {
      scalar::kernels::rms_norm_row(x, y, n, gamma, eps, rstd);
      if (stream && !(piped && next)) V<T>::fence();
      return;
    }
    const double ve = static_cast<double>(ms) + eps;
    const E r = static_cast<E>(rstd_apply(ve));
    const W* no_beta = nullptr;
    if (piped && next) {
      row_sums<T, true> acc(E(0));
      normalize_row_piped_any(x, y, n, gamma, no_beta, E(0), E(0), r, stream, next, acc);
      carried<T>() = {next, n, true, E(0), E(0), acc.sum_q()};
    } else {
      normalize_row_any<true>(x, y, n, gamma, no_beta, E(0), E(0), r, stream, next);
      if (stream) V<T>::fence();  // the end of a piped chain
    }
    if (rstd) *rstd = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
  }

  // With `piped`, next_mean/next_rstd are the next row's statistics (see backward_row).
  template <class T, class W>
  static void layer_norm_backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma,
                                      double mean, double rstd, stat_t<T>* dg, stat_t<T>* db,
                                      const T* next_x = nullptr, const T* next_dy = nullptr, bool stream = false,
                                      bool piped = false, double next_mean = 0, double next_rstd = 0) noexcept {
    backward_row<false>(x, dy, dx, n, gamma, mean, rstd, dg, db, next_x, next_dy, stream, piped, next_mean, next_rstd);
  }

  template <class T, class W>
  static void rms_norm_backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double rstd,
                                    stat_t<T>* dg, const T* next_x = nullptr, const T* next_dy = nullptr,
                                    bool stream = false, bool piped = false, double next_rstd = 0) noexcept {
    backward_row<true>(x, dy, dx, n, gamma, 0.0, rstd, dg, static_cast<stat_t<T>*>(nullptr), next_x, next_dy, stream,
                       piped, 0.0, next_rstd);
  }

  /// dst = src over n elements; with `stream`, full vectors past an aligning head are stored
  /// non-temporally.
  template <class T>
  static void copy_row(const T* src, T* dst, std::int64_t n, bool stream, const T* next = nullptr) noexcept {
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    constexpr std::uintptr_t align = static_cast<std::uintptr_t>(L) * sizeof(T);
    const std::uintptr_t addr = reinterpret_cast<std::uintptr_t>(dst);
    if (!stream || addr % sizeof(T) != 0 || n < 2 * L) {
      std::memmove(static_cast<void*>(dst), static_cast<const void*>(src), static_cast<std::size_t>(n) * sizeof(T));
      return;
    }
    const std::int64_t head = static_cast<std::int64_t>(((align - addr % align) % align) / sizeof(T));
    std::memmove(static_cast<void*>(dst), static_cast<const void*>(src), static_cast<std::size_t>(head) * sizeof(T));
    std::int64_t i = head;
    // Through the compute type: exact for every T (a widening and a narrowing of the same value).
    for (; i + L <= n; i += L) {
      prefetch_row(next, i, n);
      const R v = V<T>::load(src + i);
      V<T>::stream(dst + i, v);
    }
    V<T>::fence();
    std::memmove(static_cast<void*>(dst + i), static_cast<const void*>(src + i), static_cast<std::size_t>(n - i) * sizeof(T));
  }

  template <class T, class W>
  static void add_row(const T* x, const T* residual, const W* bias_in, T* s, std::int64_t n) noexcept {
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    std::int64_t i = 0;
    if constexpr (std::is_same_v<T, bfloat16_t>) {
      // Pairs in split order (see normalize_pair) where every operand is bfloat16: any NaN of the sum
      // then has its low 16 bits zero, and store_split needs no NaN guard.
      if (split_pairs<T, W, true> || !bias_in) {
        const T* bias = split_pairs<T, W, true> ? reinterpret_cast<const T*>(bias_in) : nullptr;
        for (; i + 2 * L <= n; i += 2 * L) {
          R xa, xb, ra, rb;
          V<T>::load_split(x + i, xa, xb);
          if (bias) {
            V<T>::load_split(bias + i, ra, rb);
            xa = V<T>::add(xa, ra);
            xb = V<T>::add(xb, rb);
          }
          V<T>::load_split(residual + i, ra, rb);
          V<T>::store_split(s + i, V<T>::add(xa, ra), V<T>::add(xb, rb));
        }
      }
    }
    for (; i < n; i += L) {
      const std::int64_t k = n - i;
      const bool full = k >= L;
      R a = full ? V<T>::load(x + i) : V<T>::load_n(x + i, k);
      if (bias_in) a = V<T>::add(a, full ? V<T>::load(bias_in + i) : V<T>::load_n(bias_in + i, k));
      a = V<T>::add(a, full ? V<T>::load(residual + i) : V<T>::load_n(residual + i, k));
      if (full) V<T>::store(s + i, a);
      else V<T>::store_n(s + i, a, k);
    }
  }

  // The fused add & norm of one row for large outputs: s = x + bias_in + residual is built in a row
  // buffer (buf: two rows of n, this row's s and the next's), the norm of s streams to y and s itself
  // streams to `s`; memory sees two reads and two writes. With `next_x`/`next_res` (the rows layout's
  // next row, handled next by this thread), the next row's s is built, and its statistics summed,
  // during this row's output sweep, as the pipelined layer_norm_row does (bit-identical sums).
  template <bool Rms, class T, class W>
  static void add_norm_row(const T* x, const T* res, const W* bias_in, T* s, T* y, std::int64_t n, const W* gamma,
                           const W* beta, double eps, stat_t<T>* mean, stat_t<T>* rstd, const T* next_x,
                           const T* next_res, T* buf) noexcept {
    using E = calc_t<T>;
    add_carry<T>& cr = add_carried<T>();
    T* cur = buf;
    E m0 = E(0), c = E(0), var;
    if (cr.x == x && cr.res == res && cr.n == n && cr.rms == Rms && cr.buf == buf) {
      cur = buf + cr.half * n;
      if constexpr (Rms) {
        var = cr.sq / static_cast<E>(n);
      } else {
        m0 = cr.m0;
        finish_moments(cur, n, cr.sd, cr.sq, m0, c, var);
      }
    } else {
      add_row(x, res, bias_in, cur, n);
      if constexpr (Rms) row_mean_square(cur, n, var);
      else row_moments(cur, n, m0, c, var);
    }
    cr.x = nullptr;
    if (!stats_ok(m0, c, var, eps)) {
      if constexpr (Rms) scalar::kernels::rms_norm_row(cur, y, n, gamma, eps, rstd);
      else scalar::kernels::layer_norm_row(cur, y, n, gamma, beta, eps, mean, rstd);
      copy_row(cur, s, n, true);
      V<T>::fence();  // the rows before may have streamed, unfenced
      return;
    }
    const double ve = static_cast<double>(var) + eps;
    const E r = static_cast<E>(rstd_apply(ve));
    if (Rms) beta = nullptr;
    const std::int64_t head = stream_head(y);
    if (next_x && next_res && n >= 4 * V<T>::lanes && head >= 0 && head == stream_head(s)) {
      fetch_tail_line(y, n);
      fetch_tail_line(s, n);
      T* nxt = buf + (cur == buf ? n : 0);
      const E shift = Rms ? E(0) : added_shift(next_x, next_res, bias_in, n);
      row_sums<T, Rms> acc(shift);
      with_affine(gamma, beta, [&](auto g, auto b) {
        add_norm_piped<decltype(g)::value, decltype(b)::value, !Rms>(cur, s, y, n, gamma, beta, m0, c, r, head, next_x,
                                                                next_res, bias_in, nxt, acc);
      });
      cr = {next_x, next_res, buf, n, Rms, cur == buf ? std::int64_t{1} : std::int64_t{0}, shift, acc.sum_d(), acc.sum_q()};
    } else {
      normalize_row_any<Rms>(cur, y, n, gamma, beta, m0, c, r, true, next_x);
      copy_row(cur, s, n, true, next_res);
      V<T>::fence();  // the end of a piped chain
    }
    if (!Rms && mean) *mean = static_cast<stat_t<T>>(static_cast<double>(m0) + static_cast<double>(c));
    if (rstd) *rstd = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
  }

 private:
  template <class T>
  struct add_carry {
    const T* x;
    const T* res;
    const T* buf;
    std::int64_t n;
    bool rms;
    std::int64_t half;
    calc_t<T> m0, sd, sq;
  };
  template <class T>
  static add_carry<T>& add_carried() noexcept {
    static thread_local add_carry<T> c{};
    return c;
  }

  // The shift row_moments would take for the row s = x + bias_in + residual: the mean of its first
  // vector, rounded to T as s is.
  template <class T, class W>
  LNORM_VEC_INLINE static calc_t<T> added_shift(const T* x, const T* res, const W* bias_in, std::int64_t n) noexcept {
    T first[V<T>::lanes];
    const std::int64_t k0 = n < V<T>::lanes ? n : V<T>::lanes;
    add_row(x, res, bias_in, first, k0);
    return row_shift(static_cast<const T*>(first), k0);
  }

  // The output sweep of add_norm_row: y = norm(cur) and s = cur, both streamed past a common aligning
  // head, while the next row's s is built in nxt and its sums accumulate in row_sums order.
  template <bool G, bool B, bool S, bool Rms, class T, class W>
  static void add_norm_piped(const T* cur, T* s, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                             calc_t<T> c, calc_t<T> r, std::int64_t head, const T* nx, const T* nres,
                             const W* bias_in, T* nxt, row_sums<T, Rms>& sums) noexcept {
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    row_sums<T, Rms> acc = sums;  // in registers (the stores may alias sums)
    const R vm = V<T>::set1(m0), vc = V<T>::set1(offset_term<S>(m0, c, r)), vr = V<T>::set1(r);
    const auto out_plain = [&](std::int64_t j, std::int64_t k) {  // k elements at j, plain stores
      normalize_chunk<G, B, S>(cur + j, y + j, k, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
      if (k >= L) V<T>::store(s + j, V<T>::load(cur + j));
      else V<T>::store_n(s + j, V<T>::load_n(cur + j, k), k);
    };
    const auto out_pair = [&](std::int64_t j) {
      normalize_pair<G, B, S, true>(cur + j, y + j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
      // s = cur: 16-bit rows copy the bits (no widening and rounding back).
      if constexpr (sizeof(T) == 2) V<T>::stream2_bits(s + j, cur + j);
      else V<T>::stream2(s + j, V<T>::load(cur + j), V<T>::load(cur + j + L));
    };
    std::int64_t j = 0, i = 0;
    for (; j < head; j += L) out_plain(j, head - j < L ? head - j : L);
    j = head;
    for (; i + 4 * L <= n; i += 4 * L) {
      prefetch_ahead(nx, i);
      prefetch_ahead(nres, i);
      add_row(nx + i, nres + i, bias_in ? bias_in + i : bias_in, nxt + i, 4 * L);
      acc.step(nxt + i);
      for (int u = 0; u < 2 && j + 2 * L <= n; ++u, j += 2 * L) out_pair(j);
    }
    add_row(nx + i, nres + i, bias_in ? bias_in + i : bias_in, nxt + i, n - i);
    acc.tail(nxt + i, n - i);
    for (; j + 2 * L <= n; j += 2 * L) out_pair(j);
    // No fence: the thread's next call ends the chain or goes on with it (see layer_norm_row).
    for (; j < n; j += L) out_plain(j, n - j < L ? n - j : L);
    sums = acc;
  }

 private:
  // k elements (a full vector if k >= lanes) of the backward's first sweep: sg += g*dy,
  // sx += g*dy*xhat, and this row's share of the dgamma/dbeta partials.
  template <bool Rms, class T, class W>
  LNORM_VEC_INLINE static void backward_chunk(const T* x, const T* dy, std::int64_t k, const W* gamma, typename V<T>::reg vm,
                            typename V<T>::reg vr, stat_t<T>* dg, stat_t<T>* db, typename V<T>::reg& sg,
                            typename V<T>::reg& sx) noexcept {
    using R = typename V<T>::reg;
    using VW = vec<calc_t<T>>;
    const bool full = k >= V<T>::lanes;
    const R xv = full ? V<T>::load(x) : V<T>::load_n(x, k);
    const R d = full ? V<T>::load(dy) : V<T>::load_n(dy, k);
    const R xh = V<T>::head(Rms ? V<T>::mul(xv, vr) : V<T>::mul(V<T>::sub(xv, vm), vr), k);
    const R gd = gamma ? V<T>::mul(d, full ? VW::load(gamma) : VW::load_n(gamma, k)) : d;
    if (!Rms) sg = V<T>::add(sg, gd);
    sx = V<T>::fma(gd, xh, sx);
    if (dg) {
      const R p = V<T>::fma(d, xh, full ? VW::load(dg) : VW::load_n(dg, k));
      if (full) VW::store(dg, p);
      else VW::store_n(dg, p, k);
    }
    if (db) {
      const R p = V<T>::add(d, full ? VW::load(db) : VW::load_n(db, k));
      if (full) VW::store(db, p);
      else VW::store_n(db, p, k);
    }
  }

  // First sweep of the backward: sg = sum(g*dy), sx = sum(g*dy*xhat); dg += dy*xhat; db += dy.
  template <bool Rms, class T, class W>
  static void backward_row_sums(const T* x, const T* dy, std::int64_t n, const W* gamma, double mean_d, double rstd_d,
                                stat_t<T>* dg, stat_t<T>* db, calc_t<T>& sg, calc_t<T>& sx) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(static_cast<E>(mean_d)), vr = V<T>::set1(static_cast<E>(rstd_d));
    R sg0 = V<T>::zero(), sg1 = V<T>::zero(), sx0 = V<T>::zero(), sx1 = V<T>::zero();
    std::int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      backward_chunk<Rms>(x + i, dy + i, L, gamma ? gamma + i : gamma, vm, vr, dg ? dg + i : dg, db ? db + i : db, sg0, sx0);
      backward_chunk<Rms>(x + i + L, dy + i + L, L, gamma ? gamma + i + L : gamma, vm, vr, dg ? dg + i + L : dg,
                         db ? db + i + L : db, sg1, sx1);
    }
    for (; i < n; i += L)
      backward_chunk<Rms>(x + i, dy + i, n - i, gamma ? gamma + i : gamma, vm, vr, dg ? dg + i : dg, db ? db + i : db, sg0, sx0);
    sg = Rms ? E(0) : V<T>::sum(V<T>::add(sg0, sg1));
    sx = V<T>::sum(V<T>::add(sx0, sx1));
  }

  // dx = rstd * ((g*dy - c1) - xhat * c2) for k elements (a full vector if k >= lanes).
  template <bool Rms, class T, class W>
  LNORM_VEC_INLINE static typename V<T>::reg backward_value(const T* x, const T* dy, std::int64_t k, const W* gamma,
                                           typename V<T>::reg vm, typename V<T>::reg vr, typename V<T>::reg c1,
                                           typename V<T>::reg c2) noexcept {
    using R = typename V<T>::reg;
    using VW = vec<calc_t<T>>;
    const bool full = k >= V<T>::lanes;
    const R xv = full ? V<T>::load(x) : V<T>::load_n(x, k);
    const R d = full ? V<T>::load(dy) : V<T>::load_n(dy, k);
    const R xh = Rms ? V<T>::mul(xv, vr) : V<T>::mul(V<T>::sub(xv, vm), vr);
    const R gd = gamma ? V<T>::mul(d, full ? VW::load(gamma) : VW::load_n(gamma, k)) : d;
    return V<T>::mul(vr, V<T>::sub(V<T>::sub(gd, c1), V<T>::mul(xh, c2)));
  }

  // k elements of the second sweep, stored (plainly: k < lanes, or not Stream) or streamed.
  template <bool Rms, bool Stream = false, class T, class W>
  LNORM_VEC_INLINE static void backward_apply_chunk(const T* x, const T* dy, T* dx, std::int64_t k, const W* gamma,
                                   typename V<T>::reg vm, typename V<T>::reg vr, typename V<T>::reg c1,
                                   typename V<T>::reg c2) noexcept {
    const auto t = backward_value<Rms>(x, dy, k, gamma, vm, vr, c1, c2);
    if (k < V<T>::lanes) V<T>::store_n(dx, t, k);
    else if constexpr (Stream) V<T>::stream(dx, t);
    else V<T>::store(dx, t);
  }

  // Two full vectors of the second sweep, dx streamed as one pair (aligned to 2 * lanes * sizeof(T)).
  template <bool Rms, class T, class W>
  LNORM_VEC_INLINE static void backward_apply_pair(const T* x, const T* dy, T* dx, const W* gamma, typename V<T>::reg vm,
                                  typename V<T>::reg vr, typename V<T>::reg c1, typename V<T>::reg c2) noexcept {
    constexpr std::int64_t L = V<T>::lanes;
    V<T>::stream2(dx, backward_value<Rms>(x, dy, L, gamma, vm, vr, c1, c2),
                  backward_value<Rms>(x + L, dy + L, L, gamma ? gamma + L : gamma, vm, vr, c1, c2));
  }

  template <bool Rms, class T, class W>
  static void backward_row_apply(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean_d,
                                 double rstd_d, calc_t<T> c1_s, calc_t<T> c2_s, const T* next_x = nullptr,
                                 const T* next_dy = nullptr) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(static_cast<E>(mean_d)), vr = V<T>::set1(static_cast<E>(rstd_d));
    const R c1 = V<T>::set1(c1_s), c2 = V<T>::set1(c2_s);
    for (std::int64_t i = 0; i < n; i += L) {
      prefetch_row(next_x, i, n);
      prefetch_row(next_dy, i, n);
      backward_apply_chunk<Rms>(x + i, dy + i, dx + i, n - i, gamma ? gamma + i : gamma, vm, vr, c1, c2);
    }
  }

  // The backward's sums of the row a pipelined call handles next (see backward_row).
  template <class T>
  struct backward_carry {
    const T* x;
    const T* dy;
    std::int64_t n;
    bool rms;
    calc_t<T> sg, sx;
  };
  template <class T>
  static backward_carry<T>& backward_carried() noexcept {
    static thread_local backward_carry<T> c{};
    return c;
  }

  template <bool Rms, bool Stream, class T, class W>
  LNORM_VEC_INLINE static void apply_pair(const T* x, const T* dy, T* dx, const W* gamma, typename V<T>::reg vm, typename V<T>::reg vr,
                         typename V<T>::reg c1, typename V<T>::reg c2) noexcept {
    constexpr std::int64_t L = V<T>::lanes;
    if constexpr (Stream) {
      backward_apply_pair<Rms>(x, dy, dx, gamma, vm, vr, c1, c2);
    } else {
      backward_apply_chunk<Rms>(x, dy, dx, L, gamma, vm, vr, c1, c2);
      backward_apply_chunk<Rms>(x + L, dy + L, dx + L, L, gamma ? gamma + L : gamma, vm, vr, c1, c2);
    }
  }

  // The second sweep of this row, while the first sweep of the next row (nx, ndy, with its own mean
  // and rstd) runs along in backward_row_sums' order (bit-identical sums and dgamma/dbeta partials).
  template <bool Rms, bool Stream, class T, class W>
  static void backward_row_piped(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean_d,
                                 double rstd_d, calc_t<T> c1_s, calc_t<T> c2_s, std::int64_t head, const T* nx,
                                 const T* ndy, double nmean_d, double nrstd_d, stat_t<T>* dg, stat_t<T>* db,
                                 calc_t<T>& nsg, calc_t<T>& nsx) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(static_cast<E>(mean_d)), vr = V<T>::set1(static_cast<E>(rstd_d));
    const R c1 = V<T>::set1(c1_s), c2 = V<T>::set1(c2_s);
    const R nvm = V<T>::set1(static_cast<E>(nmean_d)), nvr = V<T>::set1(static_cast<E>(nrstd_d));
    R sg0 = V<T>::zero(), sg1 = V<T>::zero(), sx0 = V<T>::zero(), sx1 = V<T>::zero();
    std::int64_t j = 0, i = 0;
    for (; j < head; j += L)
      backward_apply_chunk<Rms>(x + j, dy + j, dx + j, head - j, gamma ? gamma + j : gamma, vm, vr, c1, c2);
    j = head;
    for (; i + 2 * L <= n; i += 2 * L) {
      backward_chunk<Rms>(nx + i, ndy + i, L, gamma ? gamma + i : gamma, nvm, nvr, dg ? dg + i : dg, db ? db + i : db,
                          sg0, sx0);
      backward_chunk<Rms>(nx + i + L, ndy + i + L, L, gamma ? gamma + i + L : gamma, nvm, nvr, dg ? dg + i + L : dg,
                          db ? db + i + L : db, sg1, sx1);
      if (j + 2 * L <= n) {
        apply_pair<Rms, Stream>(x + j, dy + j, dx + j, gamma ? gamma + j : gamma, vm, vr, c1, c2);
        j += 2 * L;
      }
    }
    for (; i < n; i += L)
      backward_chunk<Rms>(nx + i, ndy + i, n - i, gamma ? gamma + i : gamma, nvm, nvr, dg ? dg + i : dg,
                          db ? db + i : db, sg0, sx0);
    for (; j + 2 * L <= n; j += 2 * L)
      apply_pair<Rms, Stream>(x + j, dy + j, dx + j, gamma ? gamma + j : gamma, vm, vr, c1, c2);
    // No fence: the thread's last row fences for the chain (see layer_norm_row).
    for (; j < n; j += L)
      backward_apply_chunk<Rms>(x + j, dy + j, dx + j, n - j, gamma ? gamma + j : gamma, vm, vr, c1, c2);
    nsg = Rms ? E(0) : V<T>::sum(V<T>::add(sg0, sg1));
    nsx = V<T>::sum(V<T>::add(sx0, sx1));
  }

  // dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat)); dg += dy*xhat; db += dy.
  // `piped` (the rows layout, next row's mean and rstd given): the next row's first sweep runs during
  // this row's second, and its sums are handed to the next call on this thread, so x and dy stream
  // from memory once; with `stream`, dx is stored non-temporally.
  template <bool Rms, class T, class W>
  static void backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean_d,
                           double rstd_d, stat_t<T>* dg, stat_t<T>* db, const T* next_x, const T* next_dy,
                           bool stream = false, bool piped = false, double next_mean = 0,
                           double next_rstd = 0) noexcept {
    using E = calc_t<T>;
    E sg, sx;
    backward_carry<T>& cr = backward_carried<T>();
    if (piped && cr.x == x && cr.dy == dy && cr.n == n && cr.rms == Rms) {
      sg = cr.sg;
      sx = cr.sx;
    } else {
      backward_row_sums<Rms>(x, dy, n, gamma, mean_d, rstd_d, dg, db, sg, sx);
    }
    cr.x = nullptr;
    const E c1 = sg / static_cast<E>(n), c2 = sx / static_cast<E>(n);
    if (!(piped && next_x && next_dy)) {
      if (!stream) {
        backward_row_apply<Rms>(x, dy, dx, n, gamma, mean_d, rstd_d, c1, c2, next_x, next_dy);
        return;
      }
    }
    // Full vectors stored from a cache-line boundary on (see normalize_row_piped_any).
    const std::int64_t aligned_head = stream_head(dx);
    const bool lined = aligned_head >= 0 && n >= 4 * V<T>::lanes;
    const bool streamed = stream && lined;
    const std::int64_t head = lined ? aligned_head : 0;
    if (streamed) fetch_tail_line(dx, n);
    if (piped && next_x && next_dy) {
      E nsg, nsx;
      if (streamed)
        backward_row_piped<Rms, true>(x, dy, dx, n, gamma, mean_d, rstd_d, c1, c2, head, next_x, next_dy, next_mean,
                                      next_rstd, dg, db, nsg, nsx);
      else
        backward_row_piped<Rms, false>(x, dy, dx, n, gamma, mean_d, rstd_d, c1, c2, head, next_x, next_dy, next_mean,
                                       next_rstd, dg, db, nsg, nsx);
      cr = {next_x, next_dy, n, Rms, nsg, nsx};
      return;
    }
    // Streamed, not piped (the last row of a block).
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(static_cast<E>(mean_d)), vr = V<T>::set1(static_cast<E>(rstd_d));
    const R v1 = V<T>::set1(c1), v2 = V<T>::set1(c2);
    std::int64_t j = 0;
    if (streamed) {
      for (; j < head; j += L)
        backward_apply_chunk<Rms>(x + j, dy + j, dx + j, head - j, gamma ? gamma + j : gamma, vm, vr, v1, v2);
      for (j = head; j + 2 * L <= n; j += 2 * L)
        backward_apply_pair<Rms>(x + j, dy + j, dx + j, gamma ? gamma + j : gamma, vm, vr, v1, v2);
    }
    for (; j < n; j += L)
      backward_apply_chunk<Rms>(x + j, dy + j, dx + j, n - j, gamma ? gamma + j : gamma, vm, vr, v1, v2);
    V<T>::fence();  // this row's streaming stores, and those of the piped rows before it
  }

 public:
  // ---- pieces of a row (huge rows are cut into fixed chunks, merged in order by lnorm.hpp) ----

  template <class T>
  static void moments(const T* x, std::int64_t n, double& mean, double& m2) noexcept {
    calc_t<T> m0, c, var;
    row_moments(x, n, m0, c, var);
    mean = static_cast<double>(m0) + static_cast<double>(c);
    m2 = static_cast<double>(var) * static_cast<double>(n);
  }

  template <class T>
  static void sum_squares(const T* x, std::int64_t n, double& ss) noexcept {
    calc_t<T> ms;
    row_mean_square(x, n, ms);
    ss = static_cast<double>(ms) * static_cast<double>(n);
  }

  template <class T, class W>
  static void apply_norm(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double mean, double r,
                         bool stream) noexcept {
    using E = calc_t<T>;
    const E m0 = static_cast<E>(mean);
    normalize_row_any(x, y, n, gamma, beta, m0, static_cast<E>(mean - static_cast<double>(m0)), static_cast<E>(r), stream);
    if (stream) V<T>::fence();
  }

  template <class T, class W>
  static void backward_sums(bool rms, const T* x, const T* dy, std::int64_t n, const W* gamma, double mean, double rstd,
                            stat_t<T>* dg, stat_t<T>* db, double& sum_g, double& sum_gx) noexcept {
    calc_t<T> sg, sx;
    if (rms) backward_row_sums<true>(x, dy, n, gamma, mean, rstd, dg, db, sg, sx);
    else backward_row_sums<false>(x, dy, n, gamma, mean, rstd, dg, db, sg, sx);
    sum_g = sg;
    sum_gx = sx;
  }

  template <class T, class W>
  static void backward_apply(bool rms, const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean,
                             double rstd, double c1, double c2) noexcept {
    if (rms) backward_row_apply<true>(x, dy, dx, n, gamma, mean, rstd, static_cast<calc_t<T>>(c1), static_cast<calc_t<T>>(c2));
    else backward_row_apply<false>(x, dy, dx, n, gamma, mean, rstd, static_cast<calc_t<T>>(c1), static_cast<calc_t<T>>(c2));
  }

  // ---- column tiles (non-trailing axes): lanes are unit-stride, the normalized axis strides ------
  // A tile is kColumnTile lanes = kColumnTile / lanes registers per statistic, kept in arrays the
  // compiler keeps in registers where it can.

  template <class T, class W>
  static void layer_norm_cols(const T* x, std::int64_t xs, T* y, std::int64_t ys, std::int64_t n,
                              std::int64_t width, const W* gamma, const W* beta, double eps,
                              stat_t<T>* mean, stat_t<T>* rstd) noexcept {
    layer_norm_cols_impl<true>(x, xs, y, ys, n, width, gamma, beta, eps, mean, rstd);
  }

  template <class T, class W>
  static void rms_norm_cols(const T* x, std::int64_t xs, T* y, std::int64_t ys, std::int64_t n,
                            std::int64_t width, const W* gamma, double eps, stat_t<T>* rstd) noexcept {
    rms_norm_cols_impl<true>(x, xs, y, ys, n, width, gamma, eps, rstd);
  }

 private:
  // Lanes are independent and computed alike wherever they sit in a tile. When some lane's float
  // statistics are not good, the tile is redone as runs: good lanes by the SIMD code (Split = false,
  // bitwise the same results), the others by the scalar kernels. Nothing was written before, so this
  // is safe in place.
  template <bool Split, class T, class W>
  static void layer_norm_cols_impl(const T* x, std::int64_t xs, T* y, std::int64_t ys, std::int64_t n,
                                   std::int64_t width, const W* gamma, const W* beta, double eps,
                                   stat_t<T>* mean, stat_t<T>* rstd) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    using VW = vec<E>;
    constexpr std::int64_t L = V<T>::lanes, NR = kColumnTile / L;
    const std::int64_t nr = (width + L - 1) / L;
    R m[NR], d[NR], q[NR];
    for (std::int64_t j = 0; j < NR; ++j) m[j] = d[j] = q[j] = V<T>::zero();
    for (std::int64_t c = 0; c < n; ++c)
      for (std::int64_t j = 0; j < nr; ++j) m[j] = V<T>::add(m[j], V<T>::load_n(x + c * xs + j * L, width - j * L));
    const R inv_n = V<T>::set1(E(1) / static_cast<E>(n));
    for (std::int64_t j = 0; j < nr; ++j) m[j] = V<T>::mul(m[j], inv_n);
    for (std::int64_t c = 0; c < n; ++c)
      for (std::int64_t j = 0; j < nr; ++j) {
        const R a = V<T>::head(V<T>::sub(V<T>::load_n(x + c * xs + j * L, width - j * L), m[j]), width - j * L);
        d[j] = V<T>::add(d[j], a);
        q[j] = V<T>::fma(a, a, q[j]);
      }
    // Per lane: c = d/n, var = q/n - c^2, r = 1/sqrt(var + eps); done lane by lane in double, where
    // the scalar set's rules (constant lanes, non-finite lanes) apply exactly.
    alignas(64) E mv[kColumnTile], cv[kColumnTile], rv[kColumnTile], dv[kColumnTile], qv[kColumnTile];
    for (std::int64_t j = 0; j < nr; ++j) {
      V<T>::store(mv + j * L, m[j]);
      V<T>::store(dv + j * L, d[j]);
      V<T>::store(qv + j * L, q[j]);
    }
    bool good[kColumnTile], all_good = true;
    for (std::int64_t l = 0; l < width; ++l) {
      const E cl = dv[l] / static_cast<E>(n);
      E var = qv[l] / static_cast<E>(n) - cl * cl;
      if (var < 0) var = 0;
      good[l] = stats_ok(mv[l], cl, var, eps);
      all_good &= good[l];
      const double ve = static_cast<double>(var) + eps;
      cv[l] = cl;
      rv[l] = static_cast<E>(rstd_apply(ve));
      if (mean) mean[l] = static_cast<stat_t<T>>(static_cast<double>(mv[l]) + static_cast<double>(cl));
      if (rstd) rstd[l] = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
    }
    if (!all_good) {
      for (std::int64_t l0 = 0, l = 1; l <= width; ++l) {
        if (l < width && good[l] == good[l0]) continue;
        stat_t<T>* m_run = mean ? mean + l0 : nullptr;
        stat_t<T>* r_run = rstd ? rstd + l0 : nullptr;
        if (Split && good[l0]) layer_norm_cols_impl<false>(x + l0, xs, y + l0, ys, n, l - l0, gamma, beta, eps, m_run, r_run);
        else scalar::kernels::layer_norm_cols(x + l0, xs, y + l0, ys, n, l - l0, gamma, beta, eps, m_run, r_run);
        l0 = l;
      }
      return;
    }
    R cr[NR], rr[NR];
    for (std::int64_t j = 0; j < nr; ++j) {
      cr[j] = V<T>::load(cv + j * L);
      rr[j] = V<T>::load(rv + j * L);
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const R g = V<T>::set1(gamma ? static_cast<E>(widen(gamma[c])) : E(1));
      const R b = V<T>::set1(beta ? static_cast<E>(widen(beta[c])) : E(0));
      for (std::int64_t j = 0; j < nr; ++j) {
        const std::int64_t k = width - j * L;
        const R xv = V<T>::load_n(x + c * xs + j * L, k);
        const R t = VW::fma(V<T>::mul(V<T>::sub(V<T>::sub(xv, m[j]), cr[j]), rr[j]), g, b);
        if (k >= L) V<T>::store(y + c * ys + j * L, t);
        else V<T>::store_n(y + c * ys + j * L, t, k);
      }
    }
  }

  template <bool Split, class T, class W>
  static void rms_norm_cols_impl(const T* x, std::int64_t xs, T* y, std::int64_t ys, std::int64_t n,
                                 std::int64_t width, const W* gamma, double eps, stat_t<T>* rstd) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes, NR = kColumnTile / L;
    const std::int64_t nr = (width + L - 1) / L;
    R q[NR];
    for (std::int64_t j = 0; j < NR; ++j) q[j] = V<T>::zero();
    for (std::int64_t c = 0; c < n; ++c)
      for (std::int64_t j = 0; j < nr; ++j) {
        const R a = V<T>::load_n(x + c * xs + j * L, width - j * L);
        q[j] = V<T>::fma(a, a, q[j]);
      }
    alignas(64) E qv[kColumnTile], rv[kColumnTile];
    for (std::int64_t j = 0; j < nr; ++j) V<T>::store(qv + j * L, q[j]);
    bool good[kColumnTile], all_good = true;
    for (std::int64_t l = 0; l < width; ++l) {
      const E ms = qv[l] / static_cast<E>(n);
      good[l] = stats_ok(E(0), E(0), ms, eps);
      all_good &= good[l];
      const double ve = static_cast<double>(ms) + eps;
      rv[l] = static_cast<E>(rstd_apply(ve));
      if (rstd) rstd[l] = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
    }
    if (!all_good) {
      for (std::int64_t l0 = 0, l = 1; l <= width; ++l) {
        if (l < width && good[l] == good[l0]) continue;
        stat_t<T>* r_run = rstd ? rstd + l0 : nullptr;
        if (Split && good[l0]) rms_norm_cols_impl<false>(x + l0, xs, y + l0, ys, n, l - l0, gamma, eps, r_run);
        else scalar::kernels::rms_norm_cols(x + l0, xs, y + l0, ys, n, l - l0, gamma, eps, r_run);
        l0 = l;
      }
      return;
    }
    R rr[NR];
    for (std::int64_t j = 0; j < nr; ++j) rr[j] = V<T>::load(rv + j * L);
    for (std::int64_t c = 0; c < n; ++c) {
      const R g = V<T>::set1(gamma ? static_cast<E>(widen(gamma[c])) : E(1));
      for (std::int64_t j = 0; j < nr; ++j) {
        const std::int64_t k = width - j * L;
        const R t = V<T>::mul(V<T>::mul(V<T>::load_n(x + c * xs + j * L, k), rr[j]), g);
        if (k >= L) V<T>::store(y + c * ys + j * L, t);
        else V<T>::store_n(y + c * ys + j * L, t, k);
      }
    }
  }

 public:
  template <class T, class W>
  static void layer_norm_backward_cols(const T* x, std::int64_t xs, const T* dy, std::int64_t dys, T* dx,
                                       std::int64_t dxs, std::int64_t n, std::int64_t width, const W* gamma,
                                       const stat_t<T>* mean, const stat_t<T>* rstd, stat_t<T>* dg,
                                       stat_t<T>* db) noexcept {
    backward_cols<false>(x, xs, dy, dys, dx, dxs, n, width, gamma, mean, rstd, dg, db);
  }

  template <class T, class W>
  static void rms_norm_backward_cols(const T* x, std::int64_t xs, const T* dy, std::int64_t dys, T* dx,
                                     std::int64_t dxs, std::int64_t n, std::int64_t width, const W* gamma,
                                     const stat_t<T>* rstd, stat_t<T>* dg) noexcept {
    backward_cols<true>(x, xs, dy, dys, dx, dxs, n, width, gamma, static_cast<const stat_t<T>*>(nullptr), rstd, dg,
                        static_cast<stat_t<T>*>(nullptr));
  }

  template <class T, class W>
  static void add_cols(const T* x, std::int64_t xs, const T* residual, std::int64_t rs, const W* bias_in, T* s,
                       std::int64_t ss, std::int64_t n, std::int64_t width) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    for (std::int64_t c = 0; c < n; ++c) {
      const R b = V<T>::set1(bias_in ? static_cast<E>(widen(bias_in[c])) : E(0));
      for (std::int64_t j = 0; j * L < width; ++j) {
        const std::int64_t k = width - j * L;
        R a = V<T>::load_n(x + c * xs + j * L, k);
        if (bias_in) a = V<T>::add(a, b);
        a = V<T>::add(a, V<T>::load_n(residual + c * rs + j * L, k));
        if (k >= L) V<T>::store(s + c * ss + j * L, a);
        else V<T>::store_n(s + c * ss + j * L, a, k);
      }
    }
  }

 private:
  template <bool Rms, class T, class W>
  static void backward_cols(const T* x, std::int64_t xs, const T* dy, std::int64_t dys, T* dx, std::int64_t dxs,
                            std::int64_t n, std::int64_t width, const W* gamma, const stat_t<T>* mean,
                            const stat_t<T>* rstd, stat_t<T>* dg, stat_t<T>* db) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    using VS = vec<stat_t<T>>;
    constexpr std::int64_t L = V<T>::lanes, NR = kColumnTile / L;
    const std::int64_t nr = (width + L - 1) / L;
    R m[NR], r[NR], sg[NR], sx[NR];
    for (std::int64_t j = 0; j < NR; ++j) {
      m[j] = r[j] = sg[j] = sx[j] = V<T>::zero();
    }
    for (std::int64_t j = 0; j < nr; ++j) {
      if (!Rms) m[j] = VS::load_n(mean + j * L, width - j * L);
      r[j] = VS::load_n(rstd + j * L, width - j * L);
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const R g = V<T>::set1(gamma ? static_cast<E>(widen(gamma[c])) : E(1));
      R pg = V<T>::zero(), pb = V<T>::zero();
      for (std::int64_t j = 0; j < nr; ++j) {
        const std::int64_t k = width - j * L;
        const R xv = V<T>::load_n(x + c * xs + j * L, k), d = V<T>::load_n(dy + c * dys + j * L, k);
        const R xh = V<T>::head(Rms ? V<T>::mul(xv, r[j]) : V<T>::mul(V<T>::sub(xv, m[j]), r[j]), k);
        const R gd = V<T>::mul(d, g);
        if (!Rms) sg[j] = V<T>::add(sg[j], gd);
        sx[j] = V<T>::fma(gd, xh, sx[j]);
        pg = V<T>::fma(d, xh, pg);
        pb = V<T>::add(pb, d);
      }
      if (dg) dg[c] += static_cast<stat_t<T>>(V<T>::sum(pg));
      if (db) db[c] += static_cast<stat_t<T>>(V<T>::sum(pb));
    }
    const R inv_n = V<T>::set1(E(1) / static_cast<E>(n));
    for (std::int64_t j = 0; j < nr; ++j) {
      sg[j] = V<T>::mul(sg[j], inv_n);
      sx[j] = V<T>::mul(sx[j], inv_n);
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const R g = V<T>::set1(gamma ? static_cast<E>(widen(gamma[c])) : E(1));
      for (std::int64_t j = 0; j < nr; ++j) {
        const std::int64_t k = width - j * L;
        const R xv = V<T>::load_n(x + c * xs + j * L, k), d = V<T>::load_n(dy + c * dys + j * L, k);
        const R xh = Rms ? V<T>::mul(xv, r[j]) : V<T>::mul(V<T>::sub(xv, m[j]), r[j]);
        const R t = V<T>::mul(r[j], V<T>::sub(V<T>::sub(V<T>::mul(d, g), sg[j]), V<T>::mul(xh, sx[j])));
        if (k >= L) V<T>::store(dx + c * dxs + j * L, t);
        else V<T>::store_n(dx + c * dxs + j * L, t, k);
      }
    }
  }
};
