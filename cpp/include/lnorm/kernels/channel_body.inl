// lnorm/kernels/channel_body.inl: the kernels of the channel norms (GroupNorm, InstanceNorm, BatchNorm),
// written once over a vector interface `CV<T>` (vec<calc_t<T>>) and included inside every kernel
// set's `struct kernels`: the SIMD sets (simd_body.inl, CV = their vec) and the scalar set
// (reference.hpp, CV = the one-lane vec of kernels/scalar_vec.hpp). lnorm/channel_norm.hpp drives them.
//
// Two shapes of data, as a channel norm's layout gives them:
//   lines   contiguous runs of one channel's elements (NCHW: a channel's H*W pixels);
//   pixels  one pixel's C channels, contiguous (NHWC), with per-channel coefficient arrays.
// Every statistic comes from shifted sums: d = x - shift with the shift an element of the data (so a
// constant input gives d == 0 exactly) and refined once when it lies far from the mean: never
// E[x^2] - E[x]^2. The affine keeps the mean in two parts, y = act((x - m0) * a + b) with m0 a float
// near the mean and its remainder folded into b, so x - m0 is exact for data far from zero.

 public:
  // The activations a channel norm fuses after its affine (lnorm::activation's values).
  static constexpr int kActNone = 0, kActSilu = 1, kActRelu = 2;

  // ---- lines ---------------------------------------------------------------------------------------

  /// Moments of n contiguous elements: their mean and m2 = sum((x - mean)^2), in double.
  template <class T>
  static void line_moments(const T* x, std::int64_t n, double& mean, double& m2) noexcept {
    using E = calc_t<T>;
    const E m0 = first_mean(x, 1, n);
    E sd, sq;
    line_sums(x, n, m0, sd, sq);
    line_finish(x, n, m0, sd, sq, mean, m2);
  }

  /// The moments of a line from its shifted sums around m0 (line_sums' or line_affine_sums'): a shift
  /// far from the mean (more than two spreads) is redone around the rough mean, and sums that
  /// overflowed or squares that underflowed are redone in double.
  template <class T>
  static void line_finish(const T* x, std::int64_t n, calc_t<T> m0, calc_t<T> sd, calc_t<T> sq, double& mean,
                          double& m2) noexcept {
    using E = calc_t<T>;
    E c = sd / static_cast<E>(n), var = sq / static_cast<E>(n) - c * c;
    if (!(c * c <= E(4) * var)) {  // the shift lies far out: shift by the rough mean instead
      m0 += c;
      line_sums(x, n, m0, sd, sq);
      c = sd / static_cast<E>(n);
      var = sq / static_cast<E>(n) - c * c;
    }
    const E tiny = std::numeric_limits<E>::min() * E(1e15);
    if (!(std::isfinite(m0) && std::isfinite(c) && std::isfinite(var)) || (var != E(0) && var < tiny)) {
      // Sums that overflowed or squares that underflowed: double arithmetic over the line instead.
      double dm0 = 0, dc = 0, dvar = 0;
      scalar::detail::two_pass(x, 1, n, 1.0, dm0, dc, dvar);
      mean = dm0 + dc;
      m2 = dvar * static_cast<double>(n);
      return;
    }
    if (var < 0) var = 0;
    mean = static_cast<double>(m0) + static_cast<double>(c);
    m2 = static_cast<double>(var) * static_cast<double>(n);
  }

  /// line_affine of (x, y) and, in the same sweep, line_sums of `next` (n elements, around `shift`,
  /// the same bits as line_sums gives): the next unit's statistics read from memory while this unit's
  /// output, read from cache, streams out, as a copy reads and writes at once.
  template <int Act, bool Stream, class T>
  static void line_affine_sums(const T* x, T* y, std::int64_t n, calc_t<T> m0, calc_t<T> a, calc_t<T> b,
                               const T* next, calc_t<T> shift, calc_t<T>& sd, calc_t<T>& sq,
                               std::int64_t ahead = 0) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const auto vm = Vt::set1(split_safe<T>(m0)), va = Vt::set1(split_safe<T>(a)), vb = Vt::set1(split_safe<T>(b));
    auto f = [&](typename Vt::reg v) LNORM_LAMBDA_INLINE { return activate<Act, T>(Vt::fma(Vt::sub(v, vm), va, vb)); };
    auto one = [&](std::int64_t j) LNORM_LAMBDA_INLINE { put<Stream>(y + j, f(Vt::load(x + j))); };
    auto part = [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE { Vt::store_n(y + j, f(Vt::load_n(x + j, k)), k); };
    std::int64_t j = lead_in<Stream>(y, n, one, part);  // the affine's next element
    line_acc<T> acc(shift);
    std::int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {  // line_sums' step
      fetch_ahead<4 * L>(next + i, ahead);
      acc.add(next + i);
      if (j + 4 * L <= n) {
        affine_step<Stream>(x + j, y + j, f);
        affine_step<Stream>(x + j + 2 * L, y + j + 2 * L, f);
        j += 4 * L;
      }
    }
    for (; i < n; i += L) acc.add_n(next + i, n - i);  // line_sums' tail
    acc.result(sd, sq);
    for (; j + 2 * L <= n; j += 2 * L) affine_step<Stream>(x + j, y + j, f);
    lead_out<T>(j, n, one, part);
  }

  /// y = act((x - m0) * a + b) over n contiguous elements (y may be x). Stream: y's full vectors from
  /// its first aligned one are written with non-temporal stores (the caller fences). ahead: x is
  /// prefetched that many bytes ahead (0: not), past the line's end into what follows it in memory.
  template <int Act, bool Stream, class T>
  static void line_affine(const T* x, T* y, std::int64_t n, calc_t<T> m0, calc_t<T> a, calc_t<T> b,
                          std::int64_t ahead = 0) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const auto vm = Vt::set1(split_safe<T>(m0)), va = Vt::set1(split_safe<T>(a)), vb = Vt::set1(split_safe<T>(b));
    auto f = [&](typename Vt::reg v) LNORM_LAMBDA_INLINE { return activate<Act, T>(Vt::fma(Vt::sub(v, vm), va, vb)); };
    auto one = [&](std::int64_t i) LNORM_LAMBDA_INLINE { put<Stream>(y + i, f(Vt::load(x + i))); };
    auto part = [&](std::int64_t i, std::int64_t k) LNORM_LAMBDA_INLINE { Vt::store_n(y + i, f(Vt::load_n(x + i, k)), k); };
    std::int64_t i = lead_in<Stream>(y, n, one, part);
    for (; i + 2 * L <= n; i += 2 * L) {
      fetch_ahead<2 * L>(x + i, ahead);
      affine_step<Stream>(x + i, y + i, f);
    }
    lead_out<T>(i, n, one, part);
  }

  /// sdy += sum(dy), sdyx += sum(dy * (x - m0)) over n contiguous elements.
  template <class T>
  static void line_grad_sums(const T* dy, const T* x, std::int64_t n, calc_t<T> m0, calc_t<T>& sdy,
                             calc_t<T>& sdyx) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const auto vm = Vt::set1(m0);
    // Two accumulator pairs over two vectors a step: FP add latency 3-4, two ports.
    auto s0 = Vt::zero(), s1 = Vt::zero(), t0 = Vt::zero(), t1 = Vt::zero();
    std::int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {  // in pairs as load_pair gives them
      typename Vt::reg g0, g1, x0, x1;
      load_pair(dy + i, g0, g1);
      load_pair(x + i, x0, x1);
      s0 = Vt::add(s0, g0);
      s1 = Vt::add(s1, g1);
      t0 = Vt::fma(g0, Vt::sub(x0, vm), t0);
      t1 = Vt::fma(g1, Vt::sub(x1, vm), t1);
    }
    for (; i < n; i += L) {
      const auto g = Vt::load_n(dy + i, n - i);
      s0 = Vt::add(s0, g);
      t0 = Vt::fma(g, Vt::head(Vt::sub(Vt::load_n(x + i, n - i), vm), n - i), t0);
    }
    sdy = Vt::sum(Vt::add(s0, s1));
    sdyx = Vt::sum(Vt::add(t0, t1));
  }

  /// dx = p * dy + (q * (x - m0) + r) over n contiguous elements (Stream: as line_affine).
  template <bool Stream, class T>
  static void line_grad(const T* dy, const T* x, T* dx, std::int64_t n, calc_t<T> m0, calc_t<T> p, calc_t<T> q,
                        calc_t<T> r, std::int64_t ahead = 0) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const grad_terms<T> gt(m0, p, q, r);
    auto one = [&](std::int64_t i) LNORM_LAMBDA_INLINE { put<Stream>(dx + i, gt(Vt::load(dy + i), Vt::load(x + i))); };
    auto part = [&](std::int64_t i, std::int64_t k) LNORM_LAMBDA_INLINE {
      Vt::store_n(dx + i, gt(Vt::load_n(dy + i, k), Vt::load_n(x + i, k)), k);
    };
    std::int64_t i = lead_in<Stream>(dx, n, one, part);
    for (; i + 2 * L <= n; i += 2 * L) {
      fetch_ahead<2 * L>(dy + i, ahead);
      fetch_ahead<2 * L>(x + i, ahead);
      grad_step<Stream>(dy + i, x + i, dx + i, gt);
    }
    lead_out<T>(i, n, one, part);
  }

  /// line_grad of (dy, x, dx) and, in the same sweep, line_grad_sums of (next_dy, next_x) around
  /// next_m0 (the same bits as line_grad_sums gives): the pipelined backward, as line_affine_sums.
  template <bool Stream, class T>
  static void line_grad_and_sums(const T* dy, const T* x, T* dx, std::int64_t n, calc_t<T> m0, calc_t<T> p,
                                 calc_t<T> q, calc_t<T> r, const T* next_dy, const T* next_x, calc_t<T> next_m0,
                                 calc_t<T>& sdy, calc_t<T>& sdyx, std::int64_t ahead = 0) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const grad_terms<T> gt(m0, p, q, r);
    const auto vn = Vt::set1(next_m0);
    auto one = [&](std::int64_t j) LNORM_LAMBDA_INLINE { put<Stream>(dx + j, gt(Vt::load(dy + j), Vt::load(x + j))); };
    auto part = [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE {
      Vt::store_n(dx + j, gt(Vt::load_n(dy + j, k), Vt::load_n(x + j, k)), k);
    };
    std::int64_t j = lead_in<Stream>(dx, n, one, part);
    auto s0 = Vt::zero(), s1 = Vt::zero(), t0 = Vt::zero(), t1 = Vt::zero();
    std::int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {  // line_grad_sums' step
      fetch_ahead<2 * L>(next_dy + i, ahead);
      fetch_ahead<2 * L>(next_x + i, ahead);
      typename Vt::reg g0, g1, x0, x1;
      load_pair(next_dy + i, g0, g1);
      load_pair(next_x + i, x0, x1);
      s0 = Vt::add(s0, g0);
      s1 = Vt::add(s1, g1);
      t0 = Vt::fma(g0, Vt::sub(x0, vn), t0);
      t1 = Vt::fma(g1, Vt::sub(x1, vn), t1);
      if (j + 2 * L <= n) {
        grad_step<Stream>(dy + j, x + j, dx + j, gt);
        j += 2 * L;
      }
    }
    for (; i < n; i += L) {  // line_grad_sums' tail
      const auto g = Vt::load_n(next_dy + i, n - i);
      s0 = Vt::add(s0, g);
      t0 = Vt::fma(g, Vt::head(Vt::sub(Vt::load_n(next_x + i, n - i), vn), n - i), t0);
    }
    sdy = Vt::sum(Vt::add(s0, s1));
    sdyx = Vt::sum(Vt::add(t0, t1));
    for (; j + 2 * L <= n; j += 2 * L) grad_step<Stream>(dy + j, x + j, dx + j, gt);
    lead_out<T>(j, n, one, part);
  }

  // ---- pixels: runs of npix pixels `ld` elements apart, c contiguous channels each -----------------
  // The sums keep a slice of channels in registers over a span of kPixelSpan pixels, so the per-channel
  // arrays are read and written once a span with full-vector loads and stores (a masked store read back
  // at once stalls the load), and the walk stays within the span's consecutive pixels (measured on the
  // Zen 4: 1.4x the time of a contiguous read; the pixel-major walk with the arrays in memory, 2x). The
  // affine and the gradient go pixel by pixel: their stores stream to one row at a time (interleaving
  // rows costs the write-combining buffers 1.5x).
  static constexpr std::int64_t kPixelSpan = 16;

  /// A pixels sweep's coefficients in split order: pixel_split_table's table (null: none) for outputs
  /// whose head is h, and how far ahead of its reads the split sweep prefetches (bytes; 0: not).
  template <class T>
  struct split_coefs {
    const calc_t<T>* table = nullptr;
    std::int64_t h = -1, ahead = 0;
  };

  /// sd[k] += sum_p (x[p, k] - shift[k]), sq[k] += sum_p (x[p, k] - shift[k])^2 for k < c over the run,
  /// in a fixed order.
  template <class T>
  static void pixel_sums(const T* x, std::int64_t ld, std::int64_t npix, std::int64_t c, const calc_t<T>* shift,
                         calc_t<T>* sd, calc_t<T>* sq) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    for (std::int64_t p0 = 0; p0 < npix; p0 += kPixelSpan) {
      const std::int64_t np = npix - p0 < kPixelSpan ? npix - p0 : kPixelSpan;
      const T* xb = x + p0 * ld;
      std::int64_t k = 0;
      for (; k + kSlices<T> * L <= c; k += kSlices<T> * L) sum_slices<kSlices<T>>(xb + k, ld, np, shift + k, sd + k, sq + k);
      for (; k + L <= c; k += L) sum_slices<1>(xb + k, ld, np, shift + k, sd + k, sq + k);
      if (k < c) sum_slices<1, true>(xb + k, ld, np, shift + k, sd + k, sq + k, c - k);
    }
  }

  /// y[p, k] = act((x[p, k] - m0[k]) * a[k] + b[k]) for k < c over the run (y may be x; Stream: full
  /// vectors from each pixel's first aligned one are written non-temporally, see stream_from). `sp`:
  /// the same coefficients in split order (see pixel_split_table), if any.
  template <int Act, bool Stream, class T>
  static void pixel_affine(const T* x, std::int64_t ldx, T* y, std::int64_t ldy, std::int64_t npix, std::int64_t c,
                           const calc_t<T>* m0, const calc_t<T>* a, const calc_t<T>* b,
                           const split_coefs<T>& sp = {}) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const affine_split<Act, Stream, T> f{x, y, m0, a, b, sp.table, c, sp.ahead};
    if (split_run<T>::usable(sp, y, c, ldx == c && ldy == c)) {
      split_run<T>(npix * c, c, sp.h).sweep(f);
      return;
    }
    auto part = [&](const T* xp, T* yp, std::int64_t k, std::int64_t m) LNORM_LAMBDA_INLINE { f.part(xp, yp, k, m); };
    if (const std::int64_t h = Stream ? run_head(y, npix, c, ldx == c && ldy == c) : 0) {
      const auto vm = across_end<T>(m0, c, h), va = across_end<T>(a, c, h), vb = across_end<T>(b, c, h);
      part(x, y, 0, h);
      for (std::int64_t p = 0; p < npix; ++p) {
        const T* xp = x + p * c;
        T* yp = y + p * c;
        std::int64_t k = h;
        for (; k + L <= c; k += L)
          put<true>(yp + k, activate<Act, T>(Vt::fma(Vt::sub(Vt::load(xp + k), Vt::load(m0 + k)), Vt::load(a + k),
                                                     Vt::load(b + k))));
        if (p + 1 < npix) put<true>(yp + k, activate<Act, T>(Vt::fma(Vt::sub(Vt::load(xp + k), vm), va, vb)));
        else part(xp, yp, k, c - k);
      }
      return;
    }
    for (std::int64_t p = 0; p < npix; ++p) {
      const T* xp = x + p * ldx;
      T* yp = y + p * ldy;
      std::int64_t k = 0;
      const bool aligned = Stream && stream_from(yp, c, k);
      if (k > 0) part(xp, yp, 0, k);
      for (; k + L <= c; k += L) {
        const auto v = activate<Act, T>(Vt::fma(Vt::sub(Vt::load(xp + k), Vt::load(m0 + k)), Vt::load(a + k), Vt::load(b + k)));
        if (aligned) put<true>(yp + k, v);
        else Vt::store(yp + k, v);
      }
      if (k < c) part(xp, yp, k, c - k);
    }
  }

  /// pixel_affine of (x, y) and, span by span, pixel_sums of `next` (the same pixels of the next sample,
  /// `ldx` apart as x's): the same bits as pixel_sums over the run gives.
  template <int Act, bool Stream, class T>
  static void pixel_affine_sums(const T* x, std::int64_t ldx, T* y, std::int64_t ldy, std::int64_t npix,
                                std::int64_t c, const calc_t<T>* m0, const calc_t<T>* a, const calc_t<T>* b,
                                const T* next, const calc_t<T>* shift, calc_t<T>* sd, calc_t<T>* sq,
                                const split_coefs<T>& sp = {}) noexcept {
    if (split_run<T>::usable(sp, y, c, ldx == c && ldy == c)) {
      // One split sweep over the run (one plain head and tail), its blocks span by span.
      split_run<T> r(npix * c, c, sp.h);
      const affine_split<Act, Stream, T> f{x, y, m0, a, b, sp.table, c, sp.ahead};
      r.head(f);
      for (std::int64_t p0 = 0; p0 < npix; p0 += kPixelSpan) {
        const std::int64_t np = npix - p0 < kPixelSpan ? npix - p0 : kPixelSpan;
        r.to((p0 + np) * c, f);
        pixel_sums(next + p0 * ldx, ldx, np, c, shift, sd, sq);
      }
      r.tail(f);
      return;
    }
    for (std::int64_t p0 = 0; p0 < npix; p0 += kPixelSpan) {
      const std::int64_t np = npix - p0 < kPixelSpan ? npix - p0 : kPixelSpan;
      pixel_affine<Act, Stream>(x + p0 * ldx, ldx, y + p0 * ldy, ldy, np, c, m0, a, b);
      pixel_sums(next + p0 * ldx, ldx, np, c, shift, sd, sq);
    }
  }

  /// sdy[k] += sum_p dy[p, k], sdyx[k] += sum_p dy[p, k] * (x[p, k] - m0[k]) for k < c over the run, in a
  /// fixed order (walked as pixel_sums).
  template <class T>
  static void pixel_grad_sums(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx, std::int64_t npix,
                              std::int64_t c, const calc_t<T>* m0, calc_t<T>* sdy, calc_t<T>* sdyx) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    for (std::int64_t p0 = 0; p0 < npix; p0 += kPixelSpan) {
      const std::int64_t np = npix - p0 < kPixelSpan ? npix - p0 : kPixelSpan;
      const T* gb = dy + p0 * lddy;
      const T* xb = x + p0 * ldx;
      std::int64_t k = 0;
      for (; k + kSlices<T> * L <= c; k += kSlices<T> * L)
        grad_slices<kSlices<T>>(gb + k, lddy, xb + k, ldx, np, m0 + k, sdy + k, sdyx + k);
      for (; k + L <= c; k += L) grad_slices<1>(gb + k, lddy, xb + k, ldx, np, m0 + k, sdy + k, sdyx + k);
      if (k < c) grad_slices<1, true>(gb + k, lddy, xb + k, ldx, np, m0 + k, sdy + k, sdyx + k, c - k);
    }
  }

  /// dx[p, k] = p_[k] * dy[p, k] + (q[k] * (x[p, k] - m0[k]) + r[k]) for k < c over the run (Stream and
  /// split: as pixel_affine; the table holds m0, p_, q, r).
  template <bool Stream, class T>
  static void pixel_grad(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx, T* dx, std::int64_t lddx,
                         std::int64_t npix, std::int64_t c, const calc_t<T>* m0, const calc_t<T>* p_,
                         const calc_t<T>* q, const calc_t<T>* r, const split_coefs<T>& sp = {}) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const grad_split<Stream, T> f{dy, x, dx, m0, p_, q, r, sp.table, c, sp.ahead};
    if (split_run<T>::usable(sp, dx, c, lddy == c && ldx == c && lddx == c)) {
      split_run<T>(npix * c, c, sp.h).sweep(f);
      return;
    }
    auto part = [&](const T* g, const T* xp, T* out, std::int64_t k, std::int64_t m) LNORM_LAMBDA_INLINE {
      f.part(g, xp, out, k, m);
    };
    if (const std::int64_t h = Stream ? run_head(dx, npix, c, lddy == c && ldx == c && lddx == c) : 0) {
      const auto vm = across_end<T>(m0, c, h), vp = across_end<T>(p_, c, h), vq = across_end<T>(q, c, h),
                 vr = across_end<T>(r, c, h);
      part(dy, x, dx, 0, h);
      for (std::int64_t p = 0; p < npix; ++p) {
        const T* g = dy + p * c;
        const T* xp = x + p * c;
        T* out = dx + p * c;
        std::int64_t k = h;
        for (; k + L <= c; k += L)
          put<true>(out + k, Vt::fma(Vt::load(p_ + k), Vt::load(g + k),
                                     Vt::fma(Vt::load(q + k), Vt::sub(Vt::load(xp + k), Vt::load(m0 + k)), Vt::load(r + k))));
        if (p + 1 < npix) put<true>(out + k, Vt::fma(vp, Vt::load(g + k), Vt::fma(vq, Vt::sub(Vt::load(xp + k), vm), vr)));
        else part(g, xp, out, k, c - k);
      }
      return;
    }
    for (std::int64_t p = 0; p < npix; ++p) {
      const T* g = dy + p * lddy;
      const T* xp = x + p * ldx;
      T* out = dx + p * lddx;
      std::int64_t k = 0;
      const bool aligned = Stream && stream_from(out, c, k);
      if (k > 0) part(g, xp, out, 0, k);
      for (; k + L <= c; k += L) {
        const auto v = Vt::fma(Vt::load(p_ + k), Vt::load(g + k),
                               Vt::fma(Vt::load(q + k), Vt::sub(Vt::load(xp + k), Vt::load(m0 + k)), Vt::load(r + k)));
        if (aligned) put<true>(out + k, v);
        else Vt::store(out + k, v);
      }
      if (k < c) part(g, xp, out, k, c - k);
    }
  }

  /// The split order of a pixels sweep (bfloat16 on the SIMD sets, as the lines'; see split_lines): a
  /// run of contiguous pixels whose c is a multiple of 2 * lanes is one long line with periodic
  /// coefficients. Its 2 * lanes-element blocks from y's first address aligned for a split pair take
  /// the coefficients in split order, block j of the run entry j mod (c / (2 * lanes)) of a table
  /// rotated by h, the elements before that address (the same for every pixel of every such run of
  /// one array). Returns h for y (an element of such an array), or -1 where there is no split sweep:
  /// another type or kernel set, c not a multiple, y not aligned to its element size.
  template <class T>
  static std::int64_t pixel_split_head(const T* y, std::int64_t c) noexcept {
    constexpr std::int64_t P = 2 * CV<T>::lanes;
    if (!split_lines<T> || c % P != 0 || reinterpret_cast<std::uintptr_t>(y) % sizeof(T) != 0) return -1;
    return unaligned_head<T, P>(y, P);
  }

  /// The table of pixel_split_head's h for k coefficient arrays v[0..k) of c channels each: array i's
  /// entry j at table + i * c + j * 2 * lanes, the lanes channels (h + j * 2 * lanes + 2 * e) mod c
  /// (e < lanes) and then their odd neighbours, each split_safe.
  template <class T>
  static void pixel_split_table(std::int64_t c, std::int64_t h, const calc_t<T>* const* v, int k,
                                calc_t<T>* table) noexcept {
    constexpr std::int64_t L = CV<T>::lanes;
    for (int i = 0; i < k; ++i)
      for (std::int64_t j = 0; j < c / (2 * L); ++j)
        for (std::int64_t e = 0; e < L; ++e) {
          const std::int64_t ch = (h + j * 2 * L + 2 * e) % c;
          table[i * c + j * 2 * L + e] = split_safe<T>(v[i][ch]);
          table[i * c + j * 2 * L + L + e] = split_safe<T>(v[i][(ch + 1) % c]);
        }
  }

  /// Orders the non-temporal stores before it (nothing where there are none).
  template <class T>
  static void stream_fence() noexcept {
    CV<T>::fence();
  }

  /// The shift of a run's shifted sums: the mean of its first k elements (`stride` apart), k the largest
  /// power of two up to 16 and n, added as a pairwise tree: exact for a constant run (so its d is 0),
  /// and within a quarter spread of the mean for most data, so the shift is rarely redone.
  template <class T>
  static calc_t<T> first_mean(const T* x, std::int64_t stride, std::int64_t n) noexcept {
    using E = calc_t<T>;
    std::int64_t k = 1;
    while (k * 2 <= n && k < 16) k *= 2;
    E v[16];
    for (std::int64_t i = 0; i < k; ++i) v[i] = static_cast<E>(widen(x[i * stride]));
    for (std::int64_t w = k / 2; w >= 1; w /= 2)
      for (std::int64_t i = 0; i < w; ++i) v[i] = v[i] + v[i + w];
    return v[0] / static_cast<E>(k);
  }

 private:
  // Elements of y before its first address aligned for a store of E elements (a full vector by
  // default; at most n).
  template <class T, std::int64_t E = CV<T>::lanes>
  static std::int64_t unaligned_head(const T* y, std::int64_t n) noexcept {
    constexpr std::uintptr_t bytes = static_cast<std::uintptr_t>(E) * sizeof(T);
    const std::uintptr_t off = reinterpret_cast<std::uintptr_t>(y) % bytes;
    const std::int64_t k = off == 0 ? 0 : static_cast<std::int64_t>((bytes - off) / sizeof(T));
    return k < n ? k : n;
  }

  // ---- the line sweeps' steps ----------------------------------------------------------------------
  // bfloat16 lines of the SIMD sets go in split order (see simd_rows.inl's normalize_pair): a step
  // takes 2 * lanes elements as their even and odd halves (V::load_split: one instruction each from
  // the raw bits) and stores them back in order with one full-width store that rounds without a NaN
  // guard (V::store_split / stream_split), where the plain order widens each half with a zero-extend
  // and a shift and rounds with a NaN guard, a pack and a lane permute. Every element is computed as
  // in the plain order, and a NaN either came from bfloat16 data, is the default NaN, or comes from a
  // coefficient split_safe made so: the same bits. (8, 512, 64, 64) bfloat16 NCHW, Zen 3, 1 thread,
  // against a streaming copy of the same bytes: BatchNorm eval 0.44-0.59 in plain order, 0.76-0.96
  // split; BatchNorm training 0.52-0.58 against 0.72-0.85; GroupNorm 0.35-0.44 against 0.51-0.67.
  template <class T>
  static constexpr bool split_lines = std::is_same_v<T, bfloat16_t> && CV<T>::lanes > 1;

  // A coefficient of a split-order line: a NaN (a float32 weight or statistic carries any payload)
  // gets its quiet bit set and its low 16 bits cleared, which is what the NaN-guarded rounding keeps
  // of it anyway; so the unguarded rounding of the split stores gives the same bits.
  template <class T>
  static calc_t<T> split_safe(calc_t<T> v) noexcept {
    if constexpr (split_lines<T>) {
      if (v != v) {
        std::uint32_t u;
        std::memcpy(&u, &v, sizeof u);
        u = (u | 0x00400000u) & 0xffff0000u;
        std::memcpy(&v, &u, sizeof u);
      }
    }
    return v;
  }

  // The start of a line sweep's output y (n elements): with Stream, the cache line where y ends is
  // asked for (its plain tail stores come last), the elements before y's first vector-aligned address
  // are stored plain (part(i, k): k elements from i), and a split line streams one vector in order
  // (one(i)) where that leaves y a vector short of a pair's alignment. Returns the element the
  // sweep's full steps start from (0 without Stream). Every streaming store so covers whole aligned
  // vectors, and plain stores touch only the line's first and last cache lines.
  template <bool Stream, class T, class One, class Part>
  LNORM_VEC_INLINE static std::int64_t lead_in(T* y, std::int64_t n, One&& one, Part&& part) noexcept {
    constexpr std::int64_t L = CV<T>::lanes;
    if constexpr (!Stream) {
      return 0;
    } else {
      lnorm::detail::fetch_tail_line(y, n);
      std::int64_t i = unaligned_head(y, n);
      if (i > 0) part(std::int64_t{0}, i);
      if (split_lines<T> && i + L <= n && unaligned_head<T, 2 * L>(y + i, n - i) != 0) {
        one(i);
        i += L;
      }
      return i;
    }
  }

  // The end of a line sweep from element i: full vectors in order (one), then the rest (part).
  template <class T, class One, class Part>
  LNORM_VEC_INLINE static void lead_out(std::int64_t i, std::int64_t n, One&& one, Part&& part) noexcept {
    constexpr std::int64_t L = CV<T>::lanes;
    for (; i + L <= n; i += L) one(i);
    if (i < n) part(i, n - i);
  }

  // 2 * lanes elements: a split pair (V::load_split) or two vectors in order. The sums walk their
  // lines so too: which accumulator lane adds which element is fixed, the same in every sweep.
  template <class T, class R>
  LNORM_VEC_INLINE static void load_pair(const T* p, R& a, R& b) noexcept {
    if constexpr (split_lines<T>) {
      CV<T>::load_split(p, a, b);
    } else {
      a = CV<T>::load(p);
      b = CV<T>::load(p + CV<T>::lanes);
    }
  }

  // 2 * lanes elements of y = f(x), in load_pair's pairs.
  template <bool Stream, class T, class F>
  LNORM_VEC_INLINE static void affine_step(const T* x, T* y, F&& f) noexcept {
    typename CV<T>::reg xa, xb;
    load_pair(x, xa, xb);
    put_pair<Stream>(y, f(xa), f(xb));
  }

  // The backward's dx = p * dy + (q * (x - m0) + r) on registers, its coefficients split_safe.
  template <class T>
  struct grad_terms {
    using Vt = CV<T>;
    typename Vt::reg vm, vp, vq, vr;
    grad_terms(calc_t<T> m0, calc_t<T> p, calc_t<T> q, calc_t<T> r) noexcept
        : vm(Vt::set1(split_safe<T>(m0))), vp(Vt::set1(split_safe<T>(p))), vq(Vt::set1(split_safe<T>(q))),
          vr(Vt::set1(split_safe<T>(r))) {}
    template <class R>
    LNORM_VEC_INLINE R operator()(R g, R x) const noexcept {
      return Vt::fma(vp, g, Vt::fma(vq, Vt::sub(x, vm), vr));
    }
  };

  // 2 * lanes elements of dx from dy and x, in load_pair's pairs.
  template <bool Stream, class T>
  LNORM_VEC_INLINE static void grad_step(const T* dy, const T* x, T* dx, const grad_terms<T>& gt) noexcept {
    typename CV<T>::reg ga, gb, xa, xb;
    load_pair(dy, ga, gb);
    load_pair(x, xa, xb);
    put_pair<Stream>(dx, gt(ga, xa), gt(gb, xb));
  }

  // Whether a pixel's c channels at y are streamed: from element k (set here: the elements before y's
  // first address aligned for a full vector's streaming store, plain-stored by the caller) when that
  // leaves a full vector, and y is aligned to its element size. The cache line where the pixel ends is
  // asked for at once (fetch_tail_line). NumPy's large arrays start 16 bytes past a cache line, so
  // without the head a float32 NHWC output of AVX2 vectors would never stream (BatchNorm eval
  // (8, 64, 64, 512), Zen 3, 1 thread: 0.59-0.63 of a copy against 0.84-0.88 with aligned pixels).
  template <class T>
  static bool stream_from(T* y, std::int64_t c, std::int64_t& k) noexcept {
    k = 0;
    if (reinterpret_cast<std::uintptr_t>(y) % sizeof(T) != 0) return false;
    const std::int64_t h = unaligned_head(y, c);
    if (c - h < CV<T>::lanes) return false;
    lnorm::detail::fetch_tail_line(y, c);
    k = h;
    return true;
  }

  // A run of npix pixels, contiguous in every array, whose channels start h > 0 elements before an
  // address aligned for a full vector's streaming store (the same for every pixel: c is a multiple of
  // the vector): it streams as one run of aligned vectors, the vector across each pixel's end taking
  // the coefficients across_end gives, instead of a plain head and tail per pixel. Returns h, or 0
  // where the run does not stream so (the pixels then stream one by one, after stream_from's head).
  // Every element is computed as on the pixel-by-pixel path.
  template <class T>
  static std::int64_t run_head(T* y, std::int64_t npix, std::int64_t c, bool contiguous) noexcept {
    constexpr std::int64_t L = CV<T>::lanes;
    std::int64_t h = 0;
    if (L == 1 || npix < 2 || !contiguous || c % L != 0 || !stream_from(y, c, h)) return 0;
    return h;
  }

  // The pixel sums' slices: S vectors of channels summed over a span's np pixels at once, each channel
  // in pixel order as one slice alone would (the same bits). One slice is a chain of dependent adds,
  // an FMA's latency each; 16-bit elements, widened on the way, go four slices at a time, a pixel's
  // 4 * lanes channels read together. (8, 512, 64, 64) NHWC, Zen 3, 1 thread, against 1.5 streaming
  // copies: bfloat16 GroupNorm 0.34-0.37 one slice at a time, 0.46-0.47 four (two: 0.39; eight: 0.44);
  // BatchNorm training 0.36-0.39 against 0.47-0.51. float32 loses with more: GroupNorm 0.60-0.63 one
  // at a time, 0.57 two, 0.53-0.56 four. The 16-bit sums also ask for the same channels of the pixel
  // a span ahead (one hint a cache line): GroupNorm 0.41-0.44 without, 0.45-0.50 with; BatchNorm
  // training 0.45-0.48 against 0.53-0.54 (float32, and the backward's sums: no gain).
  template <class T>
  static constexpr int kSlices = sizeof(T) == 2 ? 4 : 1;

  // Part: one slice of m < lanes channels (a pixel's last), read and written with masked loads and
  // stores.
  template <int S, bool Part = false, class T>
  LNORM_VEC_INLINE static void sum_slices(const T* x, std::int64_t ld, std::int64_t np, const calc_t<T>* shift,
                                          calc_t<T>* sd, calc_t<T>* sq, std::int64_t m = 0) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    static_assert(!Part || S == 1, "a part is one slice");
    auto load = [&](const auto* p) LNORM_LAMBDA_INLINE { return Part ? Vt::load_n(p, m) : Vt::load(p); };
    auto add_to = [&](calc_t<T>* p, typename Vt::reg v) LNORM_LAMBDA_INLINE {
      if constexpr (Part) Vt::store_n(p, Vt::add(Vt::load_n(p, m), v), m);
      else Vt::store(p, Vt::add(Vt::load(p), v));
    };
    typename Vt::reg s0[S], a[S], q[S];
    for (int j = 0; j < S; ++j) {
      s0[j] = load(shift + j * L);
      a[j] = Vt::zero();
      q[j] = Vt::zero();
    }
    const std::int64_t ahead = sizeof(T) == 2 ? kPixelSpan * ld * static_cast<std::int64_t>(sizeof(T)) : 0;
    for (std::int64_t p = 0; p < np; ++p) {
      fetch_ahead<S * L>(x + p * ld, ahead);
      for (int j = 0; j < S; ++j) {
        const auto d = Vt::sub(load(x + p * ld + j * L), s0[j]);
        a[j] = Vt::add(a[j], d);
        q[j] = Vt::fma(d, d, q[j]);
      }
    }
    for (int j = 0; j < S; ++j) {
      add_to(sd + j * L, a[j]);
      add_to(sq + j * L, q[j]);
    }
  }

  // pixel_grad_sums' slices, as sum_slices.
  template <int S, bool Part = false, class T>
  LNORM_VEC_INLINE static void grad_slices(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx,
                                           std::int64_t np, const calc_t<T>* m0, calc_t<T>* sdy, calc_t<T>* sdyx,
                                           std::int64_t m = 0) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    static_assert(!Part || S == 1, "a part is one slice");
    auto load = [&](const auto* p) LNORM_LAMBDA_INLINE { return Part ? Vt::load_n(p, m) : Vt::load(p); };
    auto add_to = [&](calc_t<T>* p, typename Vt::reg v) LNORM_LAMBDA_INLINE {
      if constexpr (Part) Vt::store_n(p, Vt::add(Vt::load_n(p, m), v), m);
      else Vt::store(p, Vt::add(Vt::load(p), v));
    };
    typename Vt::reg vm[S], s[S], t[S];
    for (int j = 0; j < S; ++j) {
      vm[j] = load(m0 + j * L);
      s[j] = Vt::zero();
      t[j] = Vt::zero();
    }
    for (std::int64_t p = 0; p < np; ++p) {
      for (int j = 0; j < S; ++j) {
        const auto g = load(dy + p * lddy + j * L);
        s[j] = Vt::add(s[j], g);
        t[j] = Vt::fma(g, Vt::sub(load(x + p * ldx + j * L), vm[j]), t[j]);
      }
    }
    for (int j = 0; j < S; ++j) {
      add_to(sdy + j * L, s[j]);
      add_to(sdyx + j * L, t[j]);
    }
  }

  // The per-channel coefficients v of the vector across a pixel's end in such a run: the pixel's last
  // L - h channels, then the next pixel's first h.
  template <class T>
  static typename CV<T>::reg across_end(const calc_t<T>* v, std::int64_t c, std::int64_t h) noexcept {
    constexpr std::int64_t L = CV<T>::lanes;
    calc_t<T> w[L];
    for (std::int64_t e = 0; e < L; ++e) w[e] = v[e < L - h ? c - L + h + e : e - (L - h)];
    return CV<T>::load(w);
  }

  // The sweep of a run of n contiguous elements (whole pixels of c channels) in split order (see
  // pixel_split_head): a plain head of h elements, whole blocks of 2 * lanes from there up to the
  // ends to() is given, then the plain rest. The step f: f(i, m) the m <= lanes elements at i in
  // plain order, f.block(i, t) the block at i with table entry t (t the entry's offset in an array);
  // the blocks prefetch what they read the policy's distance ahead. (8, 512, 64, 64) bfloat16 NHWC,
  // Zen 3, 1 thread, against a streaming copy of the same bytes (1.5 copies where x is read twice):
  // BatchNorm eval 0.48-0.51 in plain order, 0.59-0.60 split, 0.64-0.69 split with the prefetch
  // (2 KiB); GroupNorm, with the sums' slices, 0.34-0.37, 0.46-0.49 and 0.44-0.55; BatchNorm training
  // 0.37-0.38, 0.51-0.54 and 0.55-0.56; GroupNorm backward 0.30-0.33, 0.32-0.34 and 0.31-0.34.
  template <class T>
  struct split_run {
    static constexpr std::int64_t L = CV<T>::lanes, P = 2 * L;
    std::int64_t n, c, h, i, t = 0;
    split_run(std::int64_t n_, std::int64_t c_, std::int64_t h_) noexcept : n(n_), c(c_), h(h_), i(h_) {}
    // Whether a run (contiguous in every array) with y among its outputs sweeps so with this table.
    static bool usable(const split_coefs<T>& sp, const T* y, std::int64_t c, bool contiguous) noexcept {
      return sp.table != nullptr && contiguous && sp.h >= 0 && pixel_split_head(y, c) == sp.h;
    }
    template <class F>
    LNORM_VEC_INLINE void head(const F& f) noexcept {
      if constexpr (F::stream) lnorm::detail::fetch_tail_line(f.out(), n);
      const std::int64_t e = std::min(h, n);
      for (std::int64_t k = 0; k < e; k += L) f(k, std::min(L, e - k));
    }
    template <class F>
    LNORM_VEC_INLINE void to(std::int64_t end, const F& f) noexcept {
      for (; i + P <= end; i += P) {
        f.block(i, t);
        t = t + P == c ? 0 : t + P;
      }
    }
    template <class F>
    LNORM_VEC_INLINE void tail(const F& f) noexcept {
      for (; i < n; i += L) f(i, std::min(L, n - i));
    }
    // The whole run.
    template <class F>
    LNORM_VEC_INLINE void sweep(const F& f) noexcept {
      head(f);
      to(n, f);
      tail(f);
    }
  };

  // pixel_affine's terms: part() the m <= lanes channels from k of one pixel in plain order, and the
  // steps of a split run over x and y (see split_run).
  template <int Act, bool Stream, class T>
  struct affine_split {
    using Vt = CV<T>;
    static constexpr bool stream = Stream;
    const T* x;
    T* y;
    const calc_t<T>*m0, *a, *b, *table;
    std::int64_t c, ahead;
    T* out() const noexcept { return y; }
    LNORM_VEC_INLINE void part(const T* xp, T* yp, std::int64_t k, std::int64_t m) const noexcept {
      Vt::store_n(yp + k,
                  activate<Act, T>(Vt::fma(Vt::sub(Vt::load_n(xp + k, m), Vt::load_n(m0 + k, m)), Vt::load_n(a + k, m),
                                           Vt::load_n(b + k, m))),
                  m);
    }
    LNORM_VEC_INLINE void operator()(std::int64_t i, std::int64_t m) const noexcept {
      const std::int64_t k = i % c;
      part(x + (i - k), y + (i - k), k, m);
    }
    LNORM_VEC_INLINE void block(std::int64_t i, std::int64_t t) const noexcept {
      constexpr std::int64_t L = Vt::lanes;
      const calc_t<T>* e = table + t;
      typename Vt::reg xa, xb;
      fetch_ahead<2 * L>(x + i, ahead);
      load_pair(x + i, xa, xb);
      put_pair<Stream>(y + i, activate<Act, T>(Vt::fma(Vt::sub(xa, Vt::load(e)), Vt::load(e + c), Vt::load(e + 2 * c))),
                       activate<Act, T>(Vt::fma(Vt::sub(xb, Vt::load(e + L)), Vt::load(e + c + L), Vt::load(e + 2 * c + L))));
    }
  };

  // pixel_grad's terms, as affine_split's.
  template <bool Stream, class T>
  struct grad_split {
    using Vt = CV<T>;
    static constexpr bool stream = Stream;
    const T *dy, *x;
    T* dx;
    const calc_t<T>*m0, *p, *q, *r, *table;
    std::int64_t c, ahead;
    T* out() const noexcept { return dx; }
    LNORM_VEC_INLINE void part(const T* g, const T* xp, T* out, std::int64_t k, std::int64_t m) const noexcept {
      Vt::store_n(out + k,
                  Vt::fma(Vt::load_n(p + k, m), Vt::load_n(g + k, m),
                          Vt::fma(Vt::load_n(q + k, m), Vt::sub(Vt::load_n(xp + k, m), Vt::load_n(m0 + k, m)),
                                  Vt::load_n(r + k, m))),
                  m);
    }
    LNORM_VEC_INLINE void operator()(std::int64_t i, std::int64_t m) const noexcept {
      const std::int64_t k = i % c;
      part(dy + (i - k), x + (i - k), dx + (i - k), k, m);
    }
    LNORM_VEC_INLINE void block(std::int64_t i, std::int64_t t) const noexcept {
      constexpr std::int64_t L = Vt::lanes;
      typename Vt::reg ga, gb, xa, xb;
      fetch_ahead<2 * L>(dy + i, ahead);
      fetch_ahead<2 * L>(x + i, ahead);
      load_pair(dy + i, ga, gb);
      load_pair(x + i, xa, xb);
      auto f = [&](std::int64_t o, auto g, auto v) LNORM_LAMBDA_INLINE {
        const calc_t<T>* e = table + t + o;
        return Vt::fma(Vt::load(e + c), g, Vt::fma(Vt::load(e + 2 * c), Vt::sub(v, Vt::load(e)), Vt::load(e + 3 * c)));
      };
      put_pair<Stream>(dx + i, f(0, ga, xa), f(L, gb, xb));
    }
  };

  // Prefetches the K elements at p + bytes (one hint per cache line; bytes 0: none).
  template <std::int64_t K, class T>
  LNORM_VEC_INLINE static void fetch_ahead(const T* p, std::int64_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    if (bytes <= 0) return;
    const char* q = reinterpret_cast<const char*>(p) + bytes;
    for (std::int64_t o = 0; o < K * static_cast<std::int64_t>(sizeof(T)); o += 64) __builtin_prefetch(q + o, 0, 3);
#else
    (void)p;
    (void)bytes;
#endif
  }

  template <bool Stream, class T, class R>
  LNORM_VEC_INLINE static void put(T* y, const R& v) noexcept {
    if constexpr (Stream) CV<T>::stream(y, v);
    else CV<T>::store(y, v);
  }

  // A pair as load_pair gives it back to y (2 * lanes elements; aligned so for Stream).
  template <bool Stream, class T, class R>
  LNORM_VEC_INLINE static void put_pair(T* y, const R& a, const R& b) noexcept {
    if constexpr (!split_lines<T>) {
      put<Stream>(y, a);
      put<Stream>(y + CV<T>::lanes, b);
    } else if constexpr (Stream) {
      CV<T>::stream_split(y, a, b);
    } else {
      CV<T>::store_split(y, a, b);
    }
  }

  // Sums of d = x - shift and d^2 over n contiguous elements, in one fixed order (line_acc's).
  template <class T>
  static void line_sums(const T* x, std::int64_t n, calc_t<T> shift, calc_t<T>& sd, calc_t<T>& sq) noexcept {
    constexpr std::int64_t L = CV<T>::lanes;
    line_acc<T> acc(shift);
    std::int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) acc.add(x + i);
    for (; i < n; i += L) acc.add_n(x + i, n - i);
    acc.result(sd, sq);
  }

  // The accumulators of a line's shifted sums, 4 * lanes elements a step (load_pair's pairs) and then
  // a vector at a time: four pairs (FP add latency 3-4, two ports); split bfloat16 lines two, which
  // with the split stores' constants leave the affine_sums sweep's registers unspilled on AVX2.
  template <class T>
  struct line_acc {
    using Vt = CV<T>;
    using R = typename Vt::reg;
    static constexpr bool two = split_lines<T>;
    R vk, d0 = Vt::zero(), d1 = Vt::zero(), d2 = Vt::zero(), d3 = Vt::zero();
    R q0 = Vt::zero(), q1 = Vt::zero(), q2 = Vt::zero(), q3 = Vt::zero();
    explicit line_acc(calc_t<T> shift) noexcept : vk(Vt::set1(shift)) {}
    LNORM_VEC_INLINE void add(const T* p) noexcept {
      R a, b, c, e;
      load_pair(p, a, b);
      load_pair(p + 2 * Vt::lanes, c, e);
      a = Vt::sub(a, vk);
      b = Vt::sub(b, vk);
      c = Vt::sub(c, vk);
      e = Vt::sub(e, vk);
      d0 = Vt::add(d0, a);
      d1 = Vt::add(d1, b);
      q0 = Vt::fma(a, a, q0);
      q1 = Vt::fma(b, b, q1);
      if constexpr (two) {
        d0 = Vt::add(d0, c);
        d1 = Vt::add(d1, e);
        q0 = Vt::fma(c, c, q0);
        q1 = Vt::fma(e, e, q1);
      } else {
        d2 = Vt::add(d2, c);
        d3 = Vt::add(d3, e);
        q2 = Vt::fma(c, c, q2);
        q3 = Vt::fma(e, e, q3);
      }
    }
    LNORM_VEC_INLINE void add_n(const T* p, std::int64_t k) noexcept {
      const R a = Vt::head(Vt::sub(Vt::load_n(p, k), vk), k);
      d0 = Vt::add(d0, a);
      q0 = Vt::fma(a, a, q0);
    }
    void result(calc_t<T>& sd, calc_t<T>& sq) const noexcept {
      sd = Vt::sum(Vt::add(Vt::add(d0, d1), Vt::add(d2, d3)));
      sq = Vt::sum(Vt::add(Vt::add(q0, q1), Vt::add(q2, q3)));
    }
  };

  // The fused activation of a register of T's compute type. float: SiLU as v / (1 + exp(-v)) with
  // exp by range reduction to |r| <= ln2 / 2 and a degree-7 polynomial (error about 1e-7 relative),
  // clamped so that 2^n stays a normal float; NaN stays NaN. double: lane by lane, std::exp.
  template <int Act, class T, class R>
  LNORM_VEC_INLINE static R activate(R v) noexcept {
    using Vt = CV<T>;
    if constexpr (Act == kActNone) {
      return v;
    } else if constexpr (Act == kActRelu) {
      if constexpr (std::is_same_v<calc_t<T>, double>) {
        return act_lanes<Act, Vt>(v);
      } else {
        return Vt::max(Vt::zero(), v);
      }
    } else if constexpr (std::is_same_v<calc_t<T>, double>) {
      return act_lanes<Act, Vt>(v);
    } else {
      auto t = Vt::min(Vt::set1(88.0f), Vt::max(Vt::set1(-87.0f), Vt::sub(Vt::zero(), v)));
      const auto n = Vt::round(Vt::mul(t, Vt::set1(1.44269504088896341f)));
      t = Vt::fma(n, Vt::set1(-0.693145751953125f), t);  // ln 2 in two parts: n * hi is exact
      t = Vt::fma(n, Vt::set1(-1.428606765330187045e-6f), t);
      auto p = Vt::set1(1.0f / 5040);
      p = Vt::fma(p, t, Vt::set1(1.0f / 720));
      p = Vt::fma(p, t, Vt::set1(1.0f / 120));
      p = Vt::fma(p, t, Vt::set1(1.0f / 24));
      p = Vt::fma(p, t, Vt::set1(1.0f / 6));
      p = Vt::fma(p, t, Vt::set1(0.5f));
      p = Vt::fma(p, t, Vt::set1(1.0f));
      p = Vt::fma(p, t, Vt::set1(1.0f));
      return Vt::div(v, Vt::add(Vt::set1(1.0f), Vt::scale2(p, n)));
    }
  }

  // Double registers: the activation lane by lane, through memory.
  template <int Act, class Vt, class R>
  static R act_lanes(R v) noexcept {
    double lane[Vt::lanes];
    Vt::store(lane, v);
    for (std::int64_t i = 0; i < Vt::lanes; ++i) {
      const double u = lane[i];
      lane[i] = Act == kActRelu ? (u > 0 || u != u ? u : 0.0) : u / (1.0 + std::exp(-u));
    }
    return Vt::load(lane);
  }
