// lnorm/kernels/simd_columns.inl: column tiles (a non-trailing normalized axis): up to kColumnTile unit-
// stride lanes, each normalized over a strided axis.
// Part of the SIMD kernel set: included by simd_body.inl inside `struct kernels`, once per ISA.

 public:
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
    backward_cols<layer_norm_kind>(x, xs, dy, dys, dx, dxs, n, width, gamma, mean, rstd, dg, db);
  }

  template <class T, class W>
  static void rms_norm_backward_cols(const T* x, std::int64_t xs, const T* dy, std::int64_t dys, T* dx,
                                     std::int64_t dxs, std::int64_t n, std::int64_t width, const W* gamma,
                                     const stat_t<T>* rstd, stat_t<T>* dg) noexcept {
    backward_cols<rms_norm_kind>(x, xs, dy, dys, dx, dxs, n, width, gamma, static_cast<const stat_t<T>*>(nullptr), rstd, dg,
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
  template <class N, class T, class W>
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
      if constexpr (N::centered) m[j] = VS::load_n(mean + j * L, width - j * L);
      r[j] = VS::load_n(rstd + j * L, width - j * L);
    }
    for (std::int64_t c = 0; c < n; ++c) {
      const R g = V<T>::set1(gamma ? static_cast<E>(widen(gamma[c])) : E(1));
      R pg = V<T>::zero(), pb = V<T>::zero();
      for (std::int64_t j = 0; j < nr; ++j) {
        const std::int64_t k = width - j * L;
        const R xv = V<T>::load_n(x + c * xs + j * L, k), d = V<T>::load_n(dy + c * dys + j * L, k);
        const R xh = V<T>::head(!N::centered ? V<T>::mul(xv, r[j]) : V<T>::mul(V<T>::sub(xv, m[j]), r[j]), k);
        const R gd = V<T>::mul(d, g);
        if constexpr (N::centered) sg[j] = V<T>::add(sg[j], gd);
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
        const R xh = !N::centered ? V<T>::mul(xv, r[j]) : V<T>::mul(V<T>::sub(xv, m[j]), r[j]);
        const R t = V<T>::mul(r[j], V<T>::sub(V<T>::sub(V<T>::mul(d, g), sg[j]), V<T>::mul(xh, sx[j])));
        if (k >= L) V<T>::store(dx + c * dxs + j * L, t);
        else V<T>::store_n(dx + c * dxs + j * L, t, k);
      }
    }
  }
