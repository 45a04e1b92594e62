// lnorm/kernels/simd_backward.inl: the backward of a row: its two sweeps (sums, then dx), the second
// pipelined with the next row's first.
// Part of the SIMD kernel set: included by simd_body.inl inside `struct kernels`, once per ISA.

 private:
  // k elements (a full vector if k >= lanes) of the backward's first sweep: sg += g*dy,
  // sx += g*dy*xhat, and this row's share of the dgamma/dbeta partials.
  template <class N, class T, class W>
  LNORM_VEC_INLINE static void backward_chunk(const T* x, const T* dy, std::int64_t k, const W* gamma, typename V<T>::reg vm,
                            typename V<T>::reg vr, stat_t<T>* dg, stat_t<T>* db, typename V<T>::reg& sg,
                            typename V<T>::reg& sx) noexcept {
    using R = typename V<T>::reg;
    using VW = vec<calc_t<T>>;
    const bool full = k >= V<T>::lanes;
    const R xv = full ? V<T>::load(x) : V<T>::load_n(x, k);
    const R d = full ? V<T>::load(dy) : V<T>::load_n(dy, k);
    const R xh = V<T>::head(!N::centered ? V<T>::mul(xv, vr) : V<T>::mul(V<T>::sub(xv, vm), vr), k);
    const R gd = gamma ? V<T>::mul(d, full ? VW::load(gamma) : VW::load_n(gamma, k)) : d;
    if constexpr (N::centered) sg = V<T>::add(sg, gd);
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

  // Whether the backward's two sweeps share the prefetch of the next row (the first sweep its first
  // halves of x and dy, the second sweep the rest), as the forward's do; else the second sweep
  // prefetches it all. Float32 rows: memory idled through the first sweep (8192x1024 and 8192x4096, 1
  // thread, Zen 4: AVX-512 0.71-0.74 and 0.60-0.64 ns per element before, 0.62-0.65 and 0.52-0.54
  // after; AVX2 0.58-0.63 -> 0.53-0.56 at 1024, even at 4096). 16-bit rows were 5-10 % slower so.
  template <class T>
  static constexpr bool backward_split_fetch = sizeof(T) == 4;

  // First sweep of the backward: sg = sum(g*dy), sx = sum(g*dy*xhat); dg += dy*xhat; db += dy; the
  // next row's x and dy (may be null) prefetched as backward_split_fetch says.
  template <class N, class T, class W>
  static void backward_row_sums(const T* x, const T* dy, std::int64_t n, const W* gamma, double mean_d, double rstd_d,
                                stat_t<T>* dg, stat_t<T>* db, calc_t<T>& sg, calc_t<T>& sx,
                                const T* next_x = nullptr, const T* next_dy = nullptr, row_fetch f = {}) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(static_cast<E>(mean_d)), vr = V<T>::set1(static_cast<E>(rstd_d));
    R sg0 = V<T>::zero(), sg1 = V<T>::zero(), sx0 = V<T>::zero(), sx1 = V<T>::zero();
    std::int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      if constexpr (backward_split_fetch<T>) {
        prefetch_row(next_x, i / 2, f);
        prefetch_row(next_dy, i / 2, f);
      }
      backward_chunk<N>(x + i, dy + i, L, gamma ? gamma + i : gamma, vm, vr, dg ? dg + i : dg, db ? db + i : db, sg0, sx0);
      backward_chunk<N>(x + i + L, dy + i + L, L, gamma ? gamma + i + L : gamma, vm, vr, dg ? dg + i + L : dg,
                         db ? db + i + L : db, sg1, sx1);
    }
    for (; i < n; i += L)
      backward_chunk<N>(x + i, dy + i, n - i, gamma ? gamma + i : gamma, vm, vr, dg ? dg + i : dg, db ? db + i : db, sg0, sx0);
    sg = !N::centered ? E(0) : V<T>::sum(V<T>::add(sg0, sg1));
    sx = V<T>::sum(V<T>::add(sx0, sx1));
  }

  // dx = rstd * ((g*dy - c1) - xhat * c2) for k elements (a full vector if k >= lanes).
  template <class N, class T, class W>
  LNORM_VEC_INLINE static typename V<T>::reg backward_value(const T* x, const T* dy, std::int64_t k, const W* gamma,
                                           typename V<T>::reg vm, typename V<T>::reg vr, typename V<T>::reg c1,
                                           typename V<T>::reg c2) noexcept {
    using R = typename V<T>::reg;
    using VW = vec<calc_t<T>>;
    const bool full = k >= V<T>::lanes;
    const R xv = full ? V<T>::load(x) : V<T>::load_n(x, k);
    const R d = full ? V<T>::load(dy) : V<T>::load_n(dy, k);
    const R xh = !N::centered ? V<T>::mul(xv, vr) : V<T>::mul(V<T>::sub(xv, vm), vr);
    const R gd = gamma ? V<T>::mul(d, full ? VW::load(gamma) : VW::load_n(gamma, k)) : d;
    return V<T>::mul(vr, V<T>::sub(V<T>::sub(gd, c1), V<T>::mul(xh, c2)));
  }

  // k elements of the second sweep, stored (plainly: k < lanes, or not Stream) or streamed.
  template <class N, bool Stream = false, class T, class W>
  LNORM_VEC_INLINE static void backward_apply_chunk(const T* x, const T* dy, T* dx, std::int64_t k, const W* gamma,
                                   typename V<T>::reg vm, typename V<T>::reg vr, typename V<T>::reg c1,
                                   typename V<T>::reg c2) noexcept {
    const auto t = backward_value<N>(x, dy, k, gamma, vm, vr, c1, c2);
    if (k < V<T>::lanes) V<T>::store_n(dx, t, k);
    else if constexpr (Stream) V<T>::stream(dx, t);
    else V<T>::store(dx, t);
  }

  // Two full vectors of the second sweep, dx streamed as one pair (aligned to 2 * lanes * sizeof(T)).
  template <class N, class T, class W>
  LNORM_VEC_INLINE static void backward_apply_pair(const T* x, const T* dy, T* dx, const W* gamma, typename V<T>::reg vm,
                                  typename V<T>::reg vr, typename V<T>::reg c1, typename V<T>::reg c2) noexcept {
    constexpr std::int64_t L = V<T>::lanes;
    V<T>::stream2(dx, backward_value<N>(x, dy, L, gamma, vm, vr, c1, c2),
                  backward_value<N>(x + L, dy + L, L, gamma ? gamma + L : gamma, vm, vr, c1, c2));
  }

  template <class N, class T, class W>
  static void backward_row_apply(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean_d,
                                 double rstd_d, calc_t<T> c1_s, calc_t<T> c2_s, const T* next_x = nullptr,
                                 const T* next_dy = nullptr, row_fetch f = {}) noexcept {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(static_cast<E>(mean_d)), vr = V<T>::set1(static_cast<E>(rstd_d));
    const R c1 = V<T>::set1(c1_s), c2 = V<T>::set1(c2_s);
    for (std::int64_t i = 0; i < n; i += L) {
      const std::int64_t at = backward_split_fetch<T> ? n / 2 + i / 2 : i;  // the rest of the next row
      prefetch_row(next_x, at, f);
      prefetch_row(next_dy, at, f);
      backward_apply_chunk<N>(x + i, dy + i, dx + i, n - i, gamma ? gamma + i : gamma, vm, vr, c1, c2);
    }
  }


  template <class N, bool Stream, class T, class W>
  LNORM_VEC_INLINE static void apply_pair(const T* x, const T* dy, T* dx, const W* gamma, typename V<T>::reg vm, typename V<T>::reg vr,
                         typename V<T>::reg c1, typename V<T>::reg c2) noexcept {
    constexpr std::int64_t L = V<T>::lanes;
    if constexpr (Stream) {
      backward_apply_pair<N>(x, dy, dx, gamma, vm, vr, c1, c2);
    } else {
      backward_apply_chunk<N>(x, dy, dx, L, gamma, vm, vr, c1, c2);
      backward_apply_chunk<N>(x + L, dy + L, dx + L, L, gamma ? gamma + L : gamma, vm, vr, c1, c2);
    }
  }

  // The second sweep of this row, while the first sweep of the next row (nx, ndy, with its own mean
  // and rstd) runs along in backward_row_sums' order (bit-identical sums and dgamma/dbeta partials).
  template <class N, bool Stream, class T, class W>
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
    // The first sweep's step is 2 vectors (backward_row_sums' order): one pair of dx per step.
    sweep<1, L>(
        n, head,
        [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE {
          backward_apply_chunk<N>(x + j, dy + j, dx + j, k, gamma ? gamma + j : gamma, vm, vr, c1, c2);
        },
        [&](std::int64_t j) LNORM_LAMBDA_INLINE {
          apply_pair<N, Stream>(x + j, dy + j, dx + j, gamma ? gamma + j : gamma, vm, vr, c1, c2);
        },
        [&](std::int64_t i) LNORM_LAMBDA_INLINE {
          backward_chunk<N>(nx + i, ndy + i, L, gamma ? gamma + i : gamma, nvm, nvr, dg ? dg + i : dg,
                            db ? db + i : db, sg0, sx0);
          backward_chunk<N>(nx + i + L, ndy + i + L, L, gamma ? gamma + i + L : gamma, nvm, nvr,
                            dg ? dg + i + L : dg, db ? db + i + L : db, sg1, sx1);
        },
        [&](std::int64_t i0, std::int64_t k) LNORM_LAMBDA_INLINE {
          for (std::int64_t i = i0; i < i0 + k; i += L)
            backward_chunk<N>(nx + i, ndy + i, i0 + k - i, gamma ? gamma + i : gamma, nvm, nvr, dg ? dg + i : dg,
                              db ? db + i : db, sg0, sx0);
        });
    // No fence: the thread's last row fences for the chain (see layer_norm_row).
    nsg = !N::centered ? E(0) : V<T>::sum(V<T>::add(sg0, sg1));
    nsx = V<T>::sum(V<T>::add(sx0, sx1));
  }

  // dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat)); dg += dy*xhat; db += dy.
  // `piped` (the rows layout, next row's mean and rstd given) and a row of at least the pipeline's
  // carry_min_bytes: the next row's first sweep runs during this row's second, and its sums are
  // handed to the next call on this thread, so x and dy stream from memory once. Shorter rows take
  // both sweeps of their own while the next row is prefetched (as layer_norm_row's). With `stream`, dx
  // is stored non-temporally, fenced by the chain's last row.
  template <class N, class T, class W>
  static void backward_row(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean_d,
                           double rstd_d, stat_t<T>* dg, stat_t<T>* db, const T* next_x, const T* next_dy,
                           bool stream = false, pipeline<T>* pipe = nullptr, double next_mean = 0,
                           double next_rstd = 0) noexcept {
    using E = calc_t<T>;
    E sg, sx;
    typename pipeline<T>::sums cr;
    const bool piped = pipe != nullptr, chain = piped && next_x && next_dy;
    const bool carry = chain && pipe->carries(n);
    const row_fetch f = fetch_of<T>(n, pipe);
    if (piped && pipe->take(carried_sums::backward, x, dy, n, N::centered, cr)) {
      sg = cr.s1;
      sx = cr.s2;
    } else {
      backward_row_sums<N>(x, dy, n, gamma, mean_d, rstd_d, dg, db, sg, sx, next_x, next_dy, f);
    }
    const E c1 = sg / static_cast<E>(n), c2 = sx / static_cast<E>(n);
    if (!carry && !stream) {
      backward_row_apply<N>(x, dy, dx, n, gamma, mean_d, rstd_d, c1, c2, next_x, next_dy, f);
      return;
    }
    // Full vectors stored from a cache-line boundary on (see normalize_row_piped_any).
    const std::int64_t aligned_head = stream_head(dx);
    const bool lined = aligned_head >= 0 && n >= 4 * V<T>::lanes;
    const bool streamed = stream && lined;
    const std::int64_t head = lined ? aligned_head : 0;
    if (streamed) detail::fetch_tail_line(dx, n);
    if (carry) {
      E nsg, nsx;
      if (streamed)
        backward_row_piped<N, true>(x, dy, dx, n, gamma, mean_d, rstd_d, c1, c2, head, next_x, next_dy, next_mean,
                                      next_rstd, dg, db, nsg, nsx);
      else
        backward_row_piped<N, false>(x, dy, dx, n, gamma, mean_d, rstd_d, c1, c2, head, next_x, next_dy, next_mean,
                                       next_rstd, dg, db, nsg, nsx);
      pipe->leave({carried_sums::backward, next_x, next_dy, n, N::centered, 0, E(0), nsg, nsx});
      return;
    }
    // Streamed, not carried: the rest of the next row's x and dy (if any) prefetched, for the row
    // (backward_split_fetch) or two lines of each array per step.
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(static_cast<E>(mean_d)), vr = V<T>::set1(static_cast<E>(rstd_d));
    const R v1 = V<T>::set1(c1), v2 = V<T>::set1(c2);
    const auto part = [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE {
      backward_apply_chunk<N>(x + j, dy + j, dx + j, k, gamma ? gamma + j : gamma, vm, vr, v1, v2);
    };
    if (streamed)
      sweep<1, L>(
          n, head, part,
          [&](std::int64_t j) LNORM_LAMBDA_INLINE {
            backward_apply_pair<N>(x + j, dy + j, dx + j, gamma ? gamma + j : gamma, vm, vr, v1, v2);
          },
          [&](std::int64_t i) LNORM_LAMBDA_INLINE {
            if constexpr (backward_split_fetch<T>) {
              prefetch_row(next_x, n / 2 + i / 2, f);
              prefetch_row(next_dy, n / 2 + i / 2, f);
            } else {
              for (std::int64_t o = 0; o < 2 * L; o += L) {
                prefetch_row(next_x, i + o, f);
                prefetch_row(next_dy, i + o, f);
              }
            }
          },
          no_side{});
    else
      for (std::int64_t j = 0; j < n; j += L) part(j, n - j);
    if (!chain) V<T>::fence();  // this row's streaming stores, and those of the rows before it in the chain
  }
