// lnorm/kernels/simd_chunks.inl: pieces of a huge row, cut into fixed chunks whose moments lnorm.hpp merges
// in order.
// Part of the SIMD kernel set: included by simd_body.inl inside `struct kernels`, once per ISA.

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

  template <class N, class T, class W>
  static void backward_sums(const T* x, const T* dy, std::int64_t n, const W* gamma, double mean, double rstd,
                            stat_t<T>* dg, stat_t<T>* db, double& sum_g, double& sum_gx) noexcept {
    calc_t<T> sg, sx;
    backward_row_sums<N>(x, dy, n, gamma, mean, rstd, dg, db, sg, sx);
    sum_g = sg;
    sum_gx = sx;
  }

  template <class N, class T, class W>
  static void backward_apply(const T* x, const T* dy, T* dx, std::int64_t n, const W* gamma, double mean,
                             double rstd, double c1, double c2) noexcept {
    backward_row_apply<N>(x, dy, dx, n, gamma, mean, rstd, static_cast<calc_t<T>>(c1), static_cast<calc_t<T>>(c2));
  }
