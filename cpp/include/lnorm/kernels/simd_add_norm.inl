// lnorm/kernels/simd_add_norm.inl: the fused add & norm: s = x + bias_in + residual built in a row buffer,
// normalized, and streamed out with the next row's s built and summed on the way.
// Part of the SIMD kernel set: included by simd_body.inl inside `struct kernels`, once per ISA.

 public:
  // The fused add & norm of one row for large outputs: s = x + bias_in + residual is built in a row
  // buffer (buf: two rows of n, this row's s and the next's), the norm of s streams to y and s itself
  // streams to `s`; memory sees two reads and two writes. With `next_x`/`next_res` (the rows layout's
  // next row, handled next by this worker, and a pipeline), the next row's s is built in the other
  // half of buf, and its statistics summed, during this row's output sweep, as the pipelined
  // layer_norm_row does (bit-identical sums); the pipeline tells the next call which half holds it.
  // Rows the pipeline does not carry (carries_add) take the add and its statistics into the buffer,
  // then two passes over it: y (prefetching the next row's x), then s (prefetching its residual).
  template <class N, class T, class W>
  static void add_norm_row(const T* x, const T* res, const W* bias_in, T* s, T* y, std::int64_t n, const W* gamma,
                           const W* beta, double eps, stat_t<T>* mean, stat_t<T>* rstd, const T* next_x,
                           const T* next_res, T* buf, pipeline<T>* pipe = nullptr) noexcept {
    using E = calc_t<T>;
    typename pipeline<T>::sums cr;
    T* cur = buf;
    E m0 = E(0), c = E(0), var;
    if (pipe && pipe->take(carried_sums::add, x, res, n, N::centered, cr)) {
      cur = buf + cr.half * n;
      if constexpr (!N::centered) {
        var = cr.s2 / static_cast<E>(n);
      } else {
        m0 = cr.shift;
        finish_moments(cur, n, cr.s1, cr.s2, m0, c, var);
      }
    } else {
      add_row(x, res, bias_in, cur, n);
      if constexpr (!N::centered) row_mean_square(cur, n, var);
      else row_moments(cur, n, m0, c, var);
    }
    if (!stats_ok(m0, c, var, eps)) {
      if constexpr (!N::centered) scalar::kernels::rms_norm_row(cur, y, n, gamma, eps, rstd);
      else scalar::kernels::layer_norm_row(cur, y, n, gamma, beta, eps, mean, rstd);
      copy_row(cur, s, n, true);
      V<T>::fence();  // the rows before may have streamed, unfenced
      return;
    }
    const double ve = static_cast<double>(var) + eps;
    const E r = static_cast<E>(rstd_apply(ve));
    if constexpr (!N::centered) beta = nullptr;
    const std::int64_t head = stream_head(y);
    if (pipe && pipe->carries_add(n) && next_x && next_res && n >= 4 * V<T>::lanes && head >= 0 &&
        head == stream_head(s)) {
      detail::fetch_tail_line(y, n);
      detail::fetch_tail_line(s, n);
      T* nxt = buf + (cur == buf ? n : 0);
      const E shift = !N::centered ? E(0) : added_shift(next_x, next_res, bias_in, n);
      row_sums<T, N> acc(shift);
      with_affine(gamma, beta, [&](auto g, auto b) {
        add_norm_piped<decltype(g)::value, decltype(b)::value, N::centered>(cur, s, y, n, gamma, beta, m0, c, r, head, next_x,
                                                                next_res, bias_in, nxt, acc, pipe->ahead());
      });
      pipe->leave({carried_sums::add, next_x, next_res, n, N::centered, cur == buf ? std::int64_t{1} : std::int64_t{0}, shift,
                   acc.sum_d(), acc.sum_q()});
    } else {
      normalize_row_any<N>(cur, y, n, gamma, beta, m0, c, r, true, next_x, fetch_of<T>(n));
      copy_row(cur, s, n, true, next_res);
      V<T>::fence();  // the end of a piped chain
    }
    if (N::centered && mean) *mean = static_cast<stat_t<T>>(static_cast<double>(m0) + static_cast<double>(c));
    if (rstd) *rstd = static_cast<stat_t<T>>(1.0 / std::sqrt(ve));
  }

 private:

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
  template <bool G, bool B, bool S, class N, class T, class W>
  static void add_norm_piped(const T* cur, T* s, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                             calc_t<T> c, calc_t<T> r, std::int64_t head, const T* nx, const T* nres,
                             const W* bias_in, T* nxt, row_sums<T, N>& sums, ahead_fetch pf) noexcept {
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    row_sums<T, N> acc = sums;  // in registers (the stores may alias sums)
    const R vm = V<T>::set1(m0), vc = V<T>::set1(offset_term<S>(m0, c, r)), vr = V<T>::set1(r);
    const auto out_plain = [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE {  // k elements at j, plain stores
      normalize_chunk<G, B, S>(cur + j, y + j, k, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
      if (k >= L) V<T>::store(s + j, V<T>::load(cur + j));
      else V<T>::store_n(s + j, V<T>::load_n(cur + j, k), k);
    };
    const auto out_pair = [&](std::int64_t j) LNORM_LAMBDA_INLINE {
      normalize_pair<G, B, S, true>(cur + j, y + j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
      // s = cur: 16-bit rows copy the bits (no widening and rounding back).
      if constexpr (sizeof(T) == 2) V<T>::stream2_bits(s + j, cur + j);
      else V<T>::stream2(s + j, V<T>::load(cur + j), V<T>::load(cur + j + L));
    };
    sweep<2, L>(
        n, head, [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE { out_plain(j, k < L ? k : L); }, out_pair,
        [&](std::int64_t i) LNORM_LAMBDA_INLINE {
          prefetch_ahead(nx + i, pf);
          prefetch_ahead(nres + i, pf);
          add_row(nx + i, nres + i, bias_in ? bias_in + i : bias_in, nxt + i, 4 * L);
          acc.step(nxt + i);
        },
        [&](std::int64_t i, std::int64_t k) LNORM_LAMBDA_INLINE {
          add_row(nx + i, nres + i, bias_in ? bias_in + i : bias_in, nxt + i, k);
          acc.tail(nxt + i, k);
        });
    // No fence: the thread's next call ends the chain or goes on with it (see layer_norm_row).
    sums = acc;
  }
