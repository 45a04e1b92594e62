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
    E m0 = widen(x[0]), sd, sq;
    line_sums(x, n, m0, sd, sq);
    E c = sd / static_cast<E>(n), var = sq / static_cast<E>(n) - c * c;
    if (!(c * c <= E(4) * var)) {  // the first element lies far out: shift by the rough mean instead
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

  /// y = act((x - m0) * a + b) over n contiguous elements (y may be x).
  template <int Act, class T>
  static void line_affine(const T* x, T* y, std::int64_t n, calc_t<T> m0, calc_t<T> a, calc_t<T> b) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const auto vm = Vt::set1(m0), va = Vt::set1(a), vb = Vt::set1(b);
    std::int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const auto u = activate<Act, T>(Vt::fma(Vt::sub(Vt::load(x + i), vm), va, vb));
      const auto v = activate<Act, T>(Vt::fma(Vt::sub(Vt::load(x + i + L), vm), va, vb));
      Vt::store(y + i, u);
      Vt::store(y + i + L, v);
    }
    for (; i < n; i += L)
      Vt::store_n(y + i, activate<Act, T>(Vt::fma(Vt::sub(Vt::load_n(x + i, n - i), vm), va, vb)), n - i);
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
    for (; i + 2 * L <= n; i += 2 * L) {
      const auto g0 = Vt::load(dy + i), g1 = Vt::load(dy + i + L);
      s0 = Vt::add(s0, g0);
      s1 = Vt::add(s1, g1);
      t0 = Vt::fma(g0, Vt::sub(Vt::load(x + i), vm), t0);
      t1 = Vt::fma(g1, Vt::sub(Vt::load(x + i + L), vm), t1);
    }
    for (; i < n; i += L) {
      const auto g = Vt::load_n(dy + i, n - i);
      s0 = Vt::add(s0, g);
      t0 = Vt::fma(g, Vt::head(Vt::sub(Vt::load_n(x + i, n - i), vm), n - i), t0);
    }
    sdy = Vt::sum(Vt::add(s0, s1));
    sdyx = Vt::sum(Vt::add(t0, t1));
  }

  /// dx = p * dy + (q * (x - m0) + r) over n contiguous elements.
  template <class T>
  static void line_grad(const T* dy, const T* x, T* dx, std::int64_t n, calc_t<T> m0, calc_t<T> p, calc_t<T> q,
                        calc_t<T> r) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const auto vm = Vt::set1(m0), vp = Vt::set1(p), vq = Vt::set1(q), vr = Vt::set1(r);
    std::int64_t i = 0;
    for (; i + L <= n; i += L)
      Vt::store(dx + i, Vt::fma(vp, Vt::load(dy + i), Vt::fma(vq, Vt::sub(Vt::load(x + i), vm), vr)));
    if (i < n)
      Vt::store_n(dx + i,
                  Vt::fma(vp, Vt::load_n(dy + i, n - i), Vt::fma(vq, Vt::sub(Vt::load_n(x + i, n - i), vm), vr)),
                  n - i);
  }

  // ---- pixels: c contiguous channels, per-channel coefficients -------------------------------------

  /// sd[k] += x[k] - shift[k], sq[k] += (x[k] - shift[k])^2 for k < c.
  template <class T>
  static void pixel_sums(const T* x, std::int64_t c, const calc_t<T>* shift, calc_t<T>* sd, calc_t<T>* sq) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    std::int64_t k = 0;
    for (; k + L <= c; k += L) {
      const auto d = Vt::sub(Vt::load(x + k), Vt::load(shift + k));
      Vt::store(sd + k, Vt::add(Vt::load(sd + k), d));
      Vt::store(sq + k, Vt::fma(d, d, Vt::load(sq + k)));
    }
    if (k < c) {
      const auto d = Vt::sub(Vt::load_n(x + k, c - k), Vt::load_n(shift + k, c - k));
      Vt::store_n(sd + k, Vt::add(Vt::load_n(sd + k, c - k), d), c - k);
      Vt::store_n(sq + k, Vt::fma(d, d, Vt::load_n(sq + k, c - k)), c - k);
    }
  }

  /// y[k] = act((x[k] - m0[k]) * a[k] + b[k]) for k < c (y may be x).
  template <int Act, class T>
  static void pixel_affine(const T* x, T* y, std::int64_t c, const calc_t<T>* m0, const calc_t<T>* a,
                           const calc_t<T>* b) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    std::int64_t k = 0;
    for (; k + L <= c; k += L)
      Vt::store(y + k, activate<Act, T>(Vt::fma(Vt::sub(Vt::load(x + k), Vt::load(m0 + k)), Vt::load(a + k), Vt::load(b + k))));
    if (k < c) {
      const std::int64_t m = c - k;
      Vt::store_n(y + k,
                  activate<Act, T>(Vt::fma(Vt::sub(Vt::load_n(x + k, m), Vt::load_n(m0 + k, m)), Vt::load_n(a + k, m),
                                           Vt::load_n(b + k, m))),
                  m);
    }
  }

  /// sdy[k] += dy[k], sdyx[k] += dy[k] * (x[k] - m0[k]) for k < c.
  template <class T>
  static void pixel_grad_sums(const T* dy, const T* x, std::int64_t c, const calc_t<T>* m0, calc_t<T>* sdy,
                              calc_t<T>* sdyx) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    for (std::int64_t k = 0; k < c; k += L) {
      const std::int64_t m = c - k;
      const auto g = Vt::load_n(dy + k, m), d = Vt::sub(Vt::load_n(x + k, m), Vt::load_n(m0 + k, m));
      Vt::store_n(sdy + k, Vt::add(Vt::load_n(sdy + k, m), g), m);
      Vt::store_n(sdyx + k, Vt::fma(g, d, Vt::load_n(sdyx + k, m)), m);
    }
  }

  /// dx[k] = p[k] * dy[k] + (q[k] * (x[k] - m0[k]) + r[k]) for k < c.
  template <class T>
  static void pixel_grad(const T* dy, const T* x, T* dx, std::int64_t c, const calc_t<T>* m0, const calc_t<T>* p,
                         const calc_t<T>* q, const calc_t<T>* r) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    for (std::int64_t k = 0; k < c; k += L) {
      const std::int64_t m = c - k;
      const auto d = Vt::sub(Vt::load_n(x + k, m), Vt::load_n(m0 + k, m));
      Vt::store_n(dx + k, Vt::fma(Vt::load_n(p + k, m), Vt::load_n(dy + k, m), Vt::fma(Vt::load_n(q + k, m), d, Vt::load_n(r + k, m))),
                  m);
    }
  }

 private:
  // Sums of d = x - shift and d^2 over n contiguous elements, four accumulator pairs (FP add latency
  // 3-4, two ports), in one fixed order.
  template <class T>
  static void line_sums(const T* x, std::int64_t n, calc_t<T> shift, calc_t<T>& sd, calc_t<T>& sq) noexcept {
    using Vt = CV<T>;
    constexpr std::int64_t L = Vt::lanes;
    const auto vk = Vt::set1(shift);
    auto d0 = Vt::zero(), d1 = Vt::zero(), d2 = Vt::zero(), d3 = Vt::zero();
    auto q0 = Vt::zero(), q1 = Vt::zero(), q2 = Vt::zero(), q3 = Vt::zero();
    std::int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      const auto a = Vt::sub(Vt::load(x + i), vk), b = Vt::sub(Vt::load(x + i + L), vk);
      const auto c = Vt::sub(Vt::load(x + i + 2 * L), vk), e = Vt::sub(Vt::load(x + i + 3 * L), vk);
      d0 = Vt::add(d0, a);
      d1 = Vt::add(d1, b);
      d2 = Vt::add(d2, c);
      d3 = Vt::add(d3, e);
      q0 = Vt::fma(a, a, q0);
      q1 = Vt::fma(b, b, q1);
      q2 = Vt::fma(c, c, q2);
      q3 = Vt::fma(e, e, q3);
    }
    for (; i < n; i += L) {
      const auto a = Vt::head(Vt::sub(Vt::load_n(x + i, n - i), vk), n - i);
      d0 = Vt::add(d0, a);
      q0 = Vt::fma(a, a, q0);
    }
    sd = Vt::sum(Vt::add(Vt::add(d0, d1), Vt::add(d2, d3)));
    sq = Vt::sum(Vt::add(Vt::add(q0, q1), Vt::add(q2, q3)));
  }

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
