// lnorm/kernels/simd_rows.inl: the normalizing sweep of one row: the affine of a vector, pairs in split
// order, aligned and streamed stores, and the prefetch of the next row.
// Part of the SIMD kernel set: included by simd_body.inl inside `struct kernels`, once per ISA.

 private:
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

  // affine for k elements at x (k >= lanes: a full vector); with H, full float32 vectors are read in
  // halves where the ISA has them (row_fetch::halves).
  template <bool G, bool B, bool S, bool H = false, class T, class W>
  LNORM_VEC_INLINE static typename V<T>::reg normalized(const T* x, std::int64_t k, const W* gamma, const W* beta, typename V<T>::reg vm,
                                       typename V<T>::reg vc, typename V<T>::reg vr) noexcept {
    using R = typename V<T>::reg;
    using VW = vec<calc_t<T>>;
    const bool full = k >= V<T>::lanes;
    const R xv = full ? load_into<H, T>(x) : V<T>::load_n(x, k);
    R g = vr, b = vr;  // unused without G, B
    if constexpr (G) g = full ? load_into<H, T>(gamma) : VW::load_n(gamma, k);
    if constexpr (B) b = full ? load_into<H, T>(beta) : VW::load_n(beta, k);
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
  template <bool G, bool B, bool S, bool Stream, bool H = false, class T, class W>
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
      const R a = normalized<G, B, S, H>(x, L, gamma, beta, vm, vc, vr);
      const R b = normalized<G, B, S, H>(x + L, L, G ? gamma + L : gamma, B ? beta + L : beta, vm, vc, vr);
      if constexpr (Stream) {
        V<T>::stream2(y, a, b);
      } else {
        V<T>::store(y, a);
        V<T>::store(y + L, b);
      }
    }
  }

  // The head of a row to store before y + head is aligned for stream2 (-1: y is not even aligned to
  // its element size, and is not streamed).
  template <class T>
  LNORM_VEC_INLINE static std::int64_t stream_head(const T* y) noexcept {
    constexpr std::uintptr_t align = 2 * static_cast<std::uintptr_t>(V<T>::lanes) * sizeof(T);
    const auto a = reinterpret_cast<std::uintptr_t>(y);
    return a % sizeof(T) ? std::int64_t{-1} : static_cast<std::int64_t>(((align - a % align) % align) / sizeof(T));
  }

  // The one shape of the output sweeps of a row of n elements: part(j, k) for the elements before
  // `head` (they align the stores; k elements from j, a full vector if k >= lanes), then pair(j) for
  // pairs of full vectors, then part(j, k) again for what is left. A sweep may carry a side sweep over
  // the same n elements (the next row's statistics, the pipelined paths): side(i) for each step of
  // Pairs pairs (Pairs * 2 * lanes elements), side_tail(i, k) for the k < step elements past the last
  // one; the output sweep does up to Pairs pairs per step, so both stream at the same pace. Elements
  // are computed alike wherever they fall: only the stores' alignment depends on the split.
  template <std::int64_t Pairs, std::int64_t L, class Part, class Pair, class Side, class SideTail>
  LNORM_VEC_INLINE static void sweep(std::int64_t n, std::int64_t head, Part&& part, Pair&& pair, Side&& side,
                                     SideTail&& side_tail) noexcept {
    constexpr std::int64_t step = Pairs * 2 * L;
    std::int64_t j = 0, i = 0;
    for (; j < head; j += L) part(j, head - j);
    j = head;
    for (; i + step <= n; i += step) {
      side(i);
      for (std::int64_t u = 0; u < Pairs && j + 2 * L <= n; ++u, j += 2 * L) pair(j);
    }
    side_tail(i, n - i);
    for (; j + 2 * L <= n; j += 2 * L) pair(j);
    for (; j < n; j += L) part(j, n - j);
  }
  // A sweep without a side sweep.
  struct no_side {
    LNORM_VEC_INLINE void operator()(std::int64_t) const noexcept {}
    LNORM_VEC_INLINE void operator()(std::int64_t, std::int64_t) const noexcept {}
  };

  // The whole row; gamma/beta presence fixed at compile time. With `stream`, full vectors are stored
  // non-temporally (a large output then costs no read-for-ownership) after a head that aligns y; the
  // caller fences them (once for a chain of rows).
  //
  // `next` (may be null) is the row the caller handles next: its second half is prefetched (into L1
  // with f.l1, else L2) while this row, already in cache, is normalized, so that the next row's
  // read from memory overlaps this row's work.
  template <bool G, bool B, bool S, class T, class W>
  static void normalize_row(const T* x, T* y, std::int64_t n, const W* gamma, const W* beta, calc_t<T> m0,
                            calc_t<T> c, calc_t<T> r, bool stream, const T* next, row_fetch f) noexcept {
    using R = typename V<T>::reg;
    constexpr std::int64_t L = V<T>::lanes;
    const R vm = V<T>::set1(m0), vc = V<T>::set1(offset_term<S>(m0, c, r)), vr = V<T>::set1(r);
    auto part = [&](std::int64_t j, std::int64_t k) LNORM_LAMBDA_INLINE {
      normalize_chunk<G, B, S>(x + j, y + j, k, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
    };
    // One line of next's second half per step of 2 * lanes elements (for 16-bit rows, half a line).
    auto ahead = [&](std::int64_t i) LNORM_LAMBDA_INLINE { prefetch_row(next, n / 2 + i / 2, f); };
    const std::int64_t head = stream_head(y);
    if (stream && head >= 0 && n >= 4 * L) {
      detail::fetch_tail_line(y, n);
      with_halves<T>(f, [&](auto halves) LNORM_LAMBDA_INLINE {
        sweep<1, L>(n, head, part, [&](std::int64_t j) LNORM_LAMBDA_INLINE {
          normalize_pair<G, B, S, true, decltype(halves)::value>(x + j, y + j, G ? gamma + j : gamma,
                                                                 B ? beta + j : beta, vm, vc, vr);
        }, ahead, no_side{});
      });
    } else {
      sweep<1, L>(n, 0, part, [&](std::int64_t j) LNORM_LAMBDA_INLINE {
        normalize_pair<G, B, S, false>(x + j, y + j, G ? gamma + j : gamma, B ? beta + j : beta, vm, vc, vr);
      }, ahead, no_side{});
    }
  }

