// lnorm/kernels/simd_piped.inl: the pipelined rows: the next row's statistics summed during this row's
// normalizing sweep and handed on through the worker's pipeline (pipeline.hpp); the row calls lnorm.hpp
// makes.
// Part of the SIMD kernel set: included by simd_body.inl inside `struct kernels`, once per ISA.

 private:
  // normalize_row, while the row sums of nx (the next row, n elements, read from memory) accumulate
  // into acc in their fixed order: the next row's statistics sweep rides along with this row's
  // normalizing sweep, so memory streams through both at once (the pipelined row path).
  template <bool G, bool B, bool S, bool Stream, class N, class T, class W>
  static void normalize_row_piped(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                                  calc_t<T> c, calc_t<T> r, std::int64_t head, const T* nx,
                                  row_sums<T, N>& sums, ahead_fetch pf) noexcept {
    using R = typename V<T>::reg;
    row_sums<T, N> acc = sums;  // a local copy stays in registers (the stores to y may alias sums)
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(m0), vc = V<T>::set1(offset_term<S>(m0, c, r)), vr = V<T>::set1(r);
    // The row_sums step covers 4 vectors: two pairs of this row's output per step.
    sweep<2, L>(
        n, head,
        [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE {
          normalize_chunk<G, B, S>(x + j, y + j, k, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
        },
        [&](std::int64_t j) LNORM_LAMBDA_INLINE {
          normalize_pair<G, B, S, Stream>(x + j, y + j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
        },
        [&](std::int64_t i) LNORM_LAMBDA_INLINE {
          prefetch_ahead(nx + i, pf);
          acc.step(nx + i);
        },
        [&](std::int64_t i, std::int64_t k) LNORM_LAMBDA_INLINE { acc.tail(nx + i, k); });
    // No fence here: the chain's last row (called without a next row) fences for all of them. A fence
    // per row waits for that row's streaming stores to drain, and measured 5 % of 16-bit throughput.
    sums = acc;
  }

  template <class N, class T, class W>
  static void normalize_row_piped_any(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                                      calc_t<T> c, calc_t<T> r, bool stream, const T* nx,
                                      row_sums<T, N>& acc, ahead_fetch pf) noexcept {
    // Full vectors are stored from a cache-line boundary on, streamed or not: a store split across
    // two lines costs as much as two.
    const std::int64_t aligned = stream_head(y);
    const bool lined = aligned >= 0 && n >= 4 * V<T>::lanes;
    const std::int64_t head = lined ? aligned : 0;
    if (stream && lined) detail::fetch_tail_line(y, n);
    with_affine(gamma, beta, [&](auto g, auto b) {
      constexpr bool G = decltype(g)::value, B = decltype(b)::value, S = N::centered;
      if (stream && lined) normalize_row_piped<G, B, S, true>(x, y, n, gamma, beta, m0, c, r, head, nx, acc, pf);
      else normalize_row_piped<G, B, S, false>(x, y, n, gamma, beta, m0, c, r, head, nx, acc, pf);
    });
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

  template <class N = layer_norm_kind, class T, class W>
  static void normalize_row_any(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                                calc_t<T> c, calc_t<T> r, bool stream, const T* next = nullptr,
                                row_fetch f = {}) noexcept {
    with_affine(gamma, beta, [&](auto g, auto b) {
      normalize_row<decltype(g)::value, decltype(b)::value, N::centered>(x, y, n, gamma, beta, m0, c, r, stream, next,
                                                                         f);
    });
  }

  // Prefetches the line of `next` at element i. The next row is fetched while this one is worked on:
  // its first half during the statistics sweep (prefetch_first_half), its second half during the
  // normalizing sweep, so that memory is busy in both. With l1 into L1, else into L2 so as not to
  // evict the row in hand and the weights (row_pipeline::fetch). (Lines are hinted more than once:
  // harmless.)
  // In a sweep of 4 vectors per step at element i: the matching part of next's first half.
  template <class T>
  LNORM_VEC_INLINE static void prefetch_first_half(const T* next, std::int64_t i, std::int64_t lanes, row_fetch f) noexcept {
    prefetch_row(next, i / 2, f);
    prefetch_row(next, i / 2 + lanes, f);
  }

  // How rows of n elements are fetched (the worker's pipeline's choice, from the CPU policy; the
  // pipeline's default without one).
  template <class T>
  static row_fetch fetch_of(std::int64_t n, const pipeline<T>* pipe = nullptr) noexcept {
    return pipeline<T>::fetch(n, pipe);
  }

  // The pipelined sweep's prefetch (the pipeline's distance, pf.bytes; lnorm/policy.hpp) of the 4
  // vectors at p: the lines pf.bytes past them, into L2, each from both halves with pf.twice. More of the next row is then in flight than the
  // hardware prefetcher keeps. Past the row's end it touches the row after, or nothing mapped:
  // prefetches never fault.
  template <class T>
  LNORM_VEC_INLINE static void prefetch_ahead(const T* p, ahead_fetch pf) noexcept {
    if (pf.bytes <= 0) return;
    constexpr std::uintptr_t step = 4 * static_cast<std::uintptr_t>(V<T>::lanes) * sizeof(T);
    const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(pf.bytes);
    for (std::uintptr_t o = 0; o < step; o += 64) {
      __builtin_prefetch(reinterpret_cast<const void*>(at + o), 0, 2);
      if (pf.twice) __builtin_prefetch(reinterpret_cast<const void*>(at + o + 32), 0, 2);
    }
  }

  // With f.twice, the line is hinted again from 32 bytes on (the same line where next + i starts a
  // line's first half): on Zen 4 one prefetch per line leaves much of the next row to demand misses,
  // and the AVX2 set, which hints every line from both halves, streamed a third faster for it.
  template <class T>
  LNORM_VEC_INLINE static void prefetch_row(const T* next, std::int64_t i, row_fetch f) noexcept {
    if (!next) return;
    const char* p = reinterpret_cast<const char*>(next + i);
    if (f.l1) {
      __builtin_prefetch(p, 0, 3);
      if (f.twice) __builtin_prefetch(p + 32, 0, 3);
    } else {
      __builtin_prefetch(p, 0, 2);
      if (f.twice) __builtin_prefetch(p + 32, 0, 2);
    }
  }

 public:
  // ---- rows ---------------------------------------------------------------------------------

  // With a pipeline (the rows layout of lnorm.hpp; kernels/pipeline.hpp) and a row of at least the
  // pipeline's carry_min_bytes: the statistics of `next` are summed during this row's normalizing
  // sweep and left in the pipeline for the call for `next`, so x is read from memory once, in one
  // continuous stream, and memory never idles between a row's two sweeps. Shorter rows take their two
  // sweeps from L1 while the next row is prefetched (into L2 where the policy says so: it would evict
  // the row in hand and the weights). The sums are the ones a sweep of their own would give, bit for
  // bit: results do not depend on where rows start, nor on which way a row goes. A piped call with
  // `next` leaves its streaming stores unfenced: the worker must go on to `next`, and the chain's last
  // call (no `next`) issues the one fence for all (a fence per row waits for the row's streaming stores
  // to drain: a third of the float32 throughput of 4 KiB rows on Zen 4).
  template <class T, class W>
  static void layer_norm_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double eps,
                             stat_t<T>* mean, stat_t<T>* rstd, bool stream = false, const T* next = nullptr,
                             pipeline<T>* pipe = nullptr) noexcept {
    using E = calc_t<T>;
    E m0, c, var;
    typename pipeline<T>::sums in;
    const bool piped = pipe != nullptr, chain = piped && next;
    const row_fetch f = fetch_of<T>(n, pipe);
    if (piped && pipe->take(carried_sums::forward, x, nullptr, n, true, in)) {
      m0 = in.shift;
      finish_moments(x, n, in.s1, in.s2, m0, c, var);
    } else {
      row_moments(x, n, m0, c, var, next, f);
    }
    if (!stats_ok(m0, c, var, eps)) {
      scalar::kernels::layer_norm_row(x, y, n, gamma, beta, eps, mean, rstd);
      if (stream && !chain) V<T>::fence();
      return;
    }
    const double ve = static_cast<double>(var) + eps;
    const E r = static_cast<E>(rstd_apply(ve));
    if (chain && pipe->carries(n)) {
      const E shift = row_shift(next, n);
      row_sums<T, layer_norm_kind> acc(shift);
      normalize_row_piped_any(x, y, n, gamma, beta, m0, c, r, stream, next, acc, pipe->ahead());
      pipe->leave({carried_sums::forward, next, nullptr, n, true, 0, shift, acc.sum_d(), acc.sum_q()});
    } else {
      normalize_row_any(x, y, n, gamma, beta, m0, c, r, stream, next, f);
      if (stream && !chain) V<T>::fence();  // the end of a chain, or a row alone
    }
    if (mean) *mean = static_cast<stat_t<T>>(static_cast<double>(m0) + static_cast<double>(c));
    if (rstd) *rstd = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
  }

  template <class T, class W>
  static void rms_norm_row(const T* x, T* y, std::int64_t n, const W* gamma, double eps, stat_t<T>* rstd,
                           bool stream = false, const T* next = nullptr, pipeline<T>* pipe = nullptr) noexcept {
    using E = calc_t<T>;
    E ms;
    typename pipeline<T>::sums in;
    const bool piped = pipe != nullptr, chain = piped && next;
    const row_fetch f = fetch_of<T>(n, pipe);
    if (piped && pipe->take(carried_sums::forward, x, nullptr, n, false, in)) ms = in.s2 / static_cast<E>(n);
    else row_mean_square(x, n, ms, next, f);
    if (!stats_ok(E(0), E(0), ms, eps)) {
      scalar::kernels::rms_norm_row(x, y, n, gamma, eps, rstd);
      if (stream && !chain) V<T>::fence();
      return;
    }
    const double ve = static_cast<double>(ms) + eps;
    const E r = static_cast<E>(rstd_apply(ve));
    const W* no_beta = nullptr;
    if (chain && pipe->carries(n)) {
      row_sums<T, rms_norm_kind> acc(E(0));
      normalize_row_piped_any(x, y, n, gamma, no_beta, E(0), E(0), r, stream, next, acc, pipe->ahead());
      pipe->leave({carried_sums::forward, next, nullptr, n, false, 0, E(0), E(0), acc.sum_q()});
    } else {
      normalize_row_any<rms_norm_kind>(x, y, n, gamma, no_beta, E(0), E(0), r, stream, next, f);
      if (stream && !chain) V<T>::fence();  // the end of a chain, or a row alone
    }
    if (rstd) *rstd = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
  }

  // The row of norm N (family.hpp): what lnorm.hpp's ops call.
  template <class N, class T, class W>
  static void norm_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, double eps, stat_t<T>* mean,
                       stat_t<T>* rstd, bool stream, const T* next, pipeline<T>* pipe) noexcept {
    static_assert(N::weights == detail::weights_by::element, "row kernels index weights per element");
    if constexpr (N::centered) layer_norm_row<T, W>(x, y, n, gamma, beta, eps, mean, rstd, stream, next, pipe);
    else rms_norm_row<T, W>(x, y, n, gamma, eps, rstd, stream, next, pipe);
  }

  // The backward of norm N's row; with a pipeline, next_mean/next_rstd are the next row's statistics
  // (see backward_row). mean and db are unused when N is not centered.
  template <class N, class T, class W>
  static void norm_backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean,
                                double rstd, stat_t<T>* dg, stat_t<T>* db, const T* next_x, const T* next_dy,
                                bool stream, pipeline<T>* pipe, double next_mean, double next_rstd) noexcept {
    static_assert(N::weights == detail::weights_by::element, "row kernels index weights per element");
    backward_row<N>(x, dy, dx, n, gamma, N::centered ? mean : 0.0, rstd, dg, N::centered ? db : nullptr, next_x, next_dy,
                    stream, pipe, N::centered ? next_mean : 0.0, next_rstd);
  }

  /// dst = src widened to float32 over n elements, by the loads the row kernels use on weights of W
  /// (so the same values they would read).
  template <class W>
  static void widen_row(const W* src, float* dst, std::int64_t n) noexcept {
    using VF = vec<float>;
    constexpr std::int64_t L = VF::lanes;
    std::int64_t i = 0;
    for (; i + L <= n; i += L) VF::store(dst + i, VF::load(src + i));
    if (i < n) VF::store_n(dst + i, VF::load_n(src + i, n - i), n - i);
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
    const row_fetch f = fetch_of<T>(n);
    for (; i + L <= n; i += L) {
      prefetch_row(next, i, f);
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
