// lnorm/kernels/simd_stats.inl: a row's statistics: the shifted sums (one read, corrected), the mean square,
// and whether float statistics can be trusted.
// Part of the SIMD kernel set: included by simd_body.inl inside `struct kernels`, once per ISA.

 private:
  // The sums a row's statistics come from, accumulated four vectors at a time in one fixed order
  // (4 accumulator pairs: FP add latency 4, 2 ports), whichever sweep drives it: a sweep of its own
  // (shifted_sums, row_mean_square) or the normalizing sweep of the row before (the pipelined row
  // path), so both give bit-identical sums. LayerNorm: d = x - shift and d^2; RMSNorm: x^2 only.
  template <class T, class N>
  struct row_sums {
    using E = calc_t<T>;
    using R = typename V<T>::reg;
    static constexpr std::int64_t L = V<T>::lanes;
    R vk, d0, d1, d2, d3, q0, q1, q2, q3;
    explicit row_sums(E shift) noexcept
        : vk(V<T>::set1(shift)), d0(V<T>::zero()), d1(V<T>::zero()), d2(V<T>::zero()), d3(V<T>::zero()),
          q0(V<T>::zero()), q1(V<T>::zero()), q2(V<T>::zero()), q3(V<T>::zero()) {}
    // Elements [0, 4 * lanes) of x; with Halves, float32 x is read in halves where the ISA has them
    // (row_fetch::halves: the same values).
    template <bool Halves = false>
    LNORM_VEC_INLINE void step(const T* x) noexcept {
      R a, b, c, e;
      if constexpr (std::is_same_v<T, bfloat16_t>) {  // split order (see normalize_pair): sums only
        V<T>::load_split(x, a, b);
        V<T>::load_split(x + 2 * L, c, e);
      } else {
        a = load_into<Halves, T>(x);
        b = load_into<Halves, T>(x + L);
        c = load_into<Halves, T>(x + 2 * L);
        e = load_into<Halves, T>(x + 3 * L);
      }
      if constexpr (N::centered) {
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
        if constexpr (N::centered) {
          a = V<T>::head(V<T>::sub(a, vk), k - i);
          d0 = V<T>::add(d0, a);
        }
        q0 = V<T>::fma(a, a, q0);
      }
    }
    LNORM_VEC_INLINE E sum_d() const noexcept { return V<T>::sum(V<T>::add(V<T>::add(d0, d1), V<T>::add(d2, d3))); }
    LNORM_VEC_INLINE E sum_q() const noexcept { return V<T>::sum(V<T>::add(V<T>::add(q0, q1), V<T>::add(q2, q3))); }
  };

  // A vector of X (x or a weight) for rows of T; with Halves, float32 into float registers through the
  // ISA's load_halves where it has one (row_fetch::halves), else V<T>::load.
  template <bool Halves, class T, class X>
  LNORM_VEC_INLINE static typename V<T>::reg load_into(const X* p) noexcept {
    if constexpr (Halves && std::is_same_v<X, float> && std::is_same_v<calc_t<T>, float> &&
                  vec_interface::has_load_halves<V<T>>)
      return V<T>::load_halves(p);
    else
      return V<T>::load(p);
  }

  // Calls fn(std::bool_constant<H>) with H whether rows of T are read in halves under f: only where
  // that changes the loads (float32 rows through a set that has load_halves), so no other row type
  // gets a second copy of its sweep.
  template <class T, class F>
  LNORM_VEC_INLINE static decltype(auto) with_halves(row_fetch f, F&& fn) noexcept {
    if constexpr (std::is_same_v<T, float> && vec_interface::has_load_halves<V<T>>) {
      if (f.halves) return fn(std::true_type{});
    }
    return fn(std::false_type{});
  }

  // A statistics sweep of its own over a row: acc steps over its full 4-vector blocks while the next
  // row's first half is prefetched, then takes the tail.
  template <class T, class N>
  static void sums_sweep(const T* x, std::int64_t n, row_sums<T, N>& sums, const T* next, row_fetch f) noexcept {
    constexpr std::int64_t L = V<T>::lanes;
    // A local copy stays in registers: the loads of x go through may-alias vector types, so where this
    // sweep is not inlined (-O2) sums' members were stored and reloaded every step (float16
    // layer_norm, 16 x 4096 from L2, AVX-512 at -O2: 0.21 ns per element against 0.19 with the copy).
    row_sums<T, N> acc = sums;
    const std::int64_t i = with_halves<T>(f, [&](auto halves) LNORM_LAMBDA_INLINE {
      std::int64_t j = 0;
      for (; j + 4 * L <= n; j += 4 * L) {
        prefetch_first_half(next, j, L, f);
        acc.template step<decltype(halves)::value>(x + j);
      }
      return j;
    });
    acc.tail(x + i, n - i);
    sums = acc;
  }

  // Sums of d = x - shift and d^2 over one row.
  template <class T>
  static void shifted_sums(const T* x, std::int64_t n, calc_t<T> shift, calc_t<T>& sum_d, calc_t<T>& sum_q,
                           const T* next = nullptr, row_fetch f = {}) noexcept {
    row_sums<T, layer_norm_kind> acc(shift);
    sums_sweep(x, n, acc, next, f);
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
                          const T* next = nullptr, row_fetch f = {}) noexcept {
    using E = calc_t<T>;
    m0 = row_shift(x, n);
    E sd, sq;
    shifted_sums(x, n, m0, sd, sq, next, f);
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
  static void row_mean_square(const T* x, std::int64_t n, calc_t<T>& ms, const T* next = nullptr,
                              row_fetch f = {}) noexcept {
    row_sums<T, rms_norm_kind> acc(calc_t<T>(0));
    sums_sweep(x, n, acc, next, f);
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
