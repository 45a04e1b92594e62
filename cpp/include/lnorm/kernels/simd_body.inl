// lnorm/kernels/simd_body.inl: the SIMD kernel set, written once over a small vector interface and
// included inside each ISA's namespace and target region (avx2.hpp, avx512.hpp, neon.hpp), so every
// function here is compiled separately, and under a distinct name, for each ISA (no ODR clash).
//
// Before including, the ISA header defines in its namespace `template <class E> struct vec` for
// E = float and double, with the members that vec_interface.inl lists (and checks: the header includes
// it just before this file), and the macro LNORM_SIMD_NAME, its isa_table name.
//
// The body is cut by stage, each part included below inside the struct (so each is compiled per ISA
// with the rest): simd_stats.inl (a row's statistics), simd_rows.inl (the normalizing sweep of a
// row), simd_piped.inl (pipelined rows, and the row calls lnorm.hpp makes), simd_add_norm.inl (the
// fused add & norm), simd_backward.inl, simd_chunks.inl (pieces of a huge row) and simd_columns.inl
// (column tiles); channel_body.inl (the channel norms' lines and pixels, shared with the scalar set).
//
// Numerics (same as the scalar set, at vector speed): statistics in float for float32 and 16-bit data
// (double for float64) by the corrected two-pass scheme; the first pass's rough mean m0 is refined by
// c = mean(x - m0), which is exact enough because x - m0 is small next to x. A row whose sums are not
// finite (data near the float32 maximum, or Inf/NaN in the row) is redone by the scalar kernels,
// which accumulate in double and rescale: correct, and off the fast path.

struct kernels {
  static constexpr const char* name = LNORM_SIMD_NAME;
  // Row kernels take the worker's pipeline (kernels/pipeline.hpp), a store kind and the next row.
  static constexpr bool pipelined = true;

 private:
  template <class T>
  using V = vec<calc_t<T>>;
  template <class T>
  using pipeline = detail::row_pipeline<T>;
  using layer_norm_kind = detail::layer_norm_kind;
  using rms_norm_kind = detail::rms_norm_kind;
  using carried_sums = detail::carried_sums;
  using row_fetch = detail::row_fetch;
  using ahead_fetch = detail::ahead_fetch;

  // Whether normalize_pair (and add_row) work in split order: bfloat16 rows whose weights (or bias_in),
  // if any, are bfloat16.
  template <class T, class W, bool Weighted>
  static constexpr bool split_pairs = std::is_same_v<T, bfloat16_t> && (std::is_same_v<W, bfloat16_t> || !Weighted);

#include "simd_stats.inl"
#include "simd_rows.inl"
#include "simd_piped.inl"
#include "simd_add_norm.inl"
#include "simd_backward.inl"
#include "simd_chunks.inl"
#include "simd_columns.inl"

 private:
  template <class T>
  using CV = V<T>;  // the channel norms' kernels, written once for every set

#include "channel_body.inl"

};
