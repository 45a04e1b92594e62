// lnorm/kernels/vec_interface.inl: what simd_body.inl needs of an ISA, stated once and checked by the
// compiler. Each ISA header (avx2.hpp, avx512.hpp, neon.hpp) defines in its namespace
// `template <class E> struct vec` for E = float and double, then includes this file right before
// simd_body.inl: a missing or mistyped member fails one static_assert below, which names it, before
// any kernel is compiled. (C++17: detection by std::void_t, not concepts. Class and variable
// templates only, so nothing here is code compiled for the ISA's target.)
//
// vec<E>, E = float (float32 and 16-bit rows) or double (float64 rows), all members static:
//   reg                  the register type, `lanes` E values
//   lanes                std::int64_t constant, > 0, dividing kColumnTile (column tiles hold whole vectors)
//   zero(), set1(E)      -> reg
//   load(const X*)       -> reg: lanes elements of X, widened to E
//   load_n(const X*, n)  -> reg: the first n elements, zero past n (n may be <= 0 or >= lanes)
//   store(X*, reg), store_n(X*, reg, n)   the first lanes / n lanes, narrowed to X, round to nearest even
//   stream(X*, reg)      a non-temporal store of a full vector to an address aligned to lanes * sizeof(X)
//                        (a plain store where the ISA has none)
//   stream2(X*, a, b)    a then b, to an address aligned to 2 * lanes * sizeof(X), as full cache lines
//                        where it can
//   fence()              orders the streaming stores before it (nothing where they are plain stores)
//   add, sub, mul(reg, reg), fma(a, b, c) = a * b + c   -> reg
//   head(reg, n)         -> reg with lanes >= n zeroed
//   sum(reg)             -> E, the lanes added (pairwise where the ISA can)
// and for vec<float> only, the activations' extras (simd_channels.inl's SiLU and ReLU):
//   min(a, b), max(a, b) -> reg, b where either lane is NaN (so min(k, v) keeps v's NaN)
//   div(a, b), round(a) (to nearest even), scale2(a, n) = a * 2^n for integral n in [-126, 127]
// with X, the element types the body reads and writes through vec<E>:
//   vec<float>:  load, load_n  float, float16_t, bfloat16_t     vec<double>: load, load_n  double, float
//                store, store_n, stream, stream2  the same three               store, store_n, stream, stream2  double
// and for vec<float> the 16-bit extras (used for bfloat16 or any 16-bit rows on every ISA, so every
// ISA has them):
//   stream2_bits(X*, const X*)   X = float16_t, bfloat16_t: a non-temporal copy of the bits of
//                                2 * lanes elements, aligned as for stream2
//   load_split(const bfloat16_t*, reg& a, reg& b)   2 * lanes elements in split order: the even
//                                elements in a, the odd ones in b (see simd_body.inl's normalize_pair)
//   store_split(bfloat16_t*, a, b), stream_split(bfloat16_t*, a, b)   back in order, rounded to
//                                nearest even without a NaN guard (their NaNs came from bfloat16 data)
// buffered_tail.inl gives load_n and store_n from load, store and lanes, for ISAs without masked
// loads and stores.
// Optional (checked for its type where present; the body does without it otherwise):
//   vec<float>::load_halves(const float*)   -> reg: what load(const float*) gives, read as two
//                                loads of half the width (row_fetch::halves, kernels/pipeline.hpp)

// GCC reports a vector type passed as a template argument (__m256 in std::is_same) as losing its
// attributes (may_alias, alignment): these traits only compare types, whose vector size and element
// type do stay.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace vec_interface {

template <class V>
using reg_t = typename V::reg;

// Op<V> or Op<V, X> is a valid expression (`valid`), of type R (`gives`) or V::reg (`gives_reg`).
// False, not an error, where it is not: that is what lets each static_assert below name its member.
template <template <class> class Op, class V, class = void>
struct valid1 : std::false_type {};
template <template <class> class Op, class V>
struct valid1<Op, V, std::void_t<Op<V>>> : std::true_type {};
template <template <class, class> class Op, class V, class X, class = void>
struct valid2 : std::false_type {};
template <template <class, class> class Op, class V, class X>
struct valid2<Op, V, X, std::void_t<Op<V, X>>> : std::true_type {};
template <class R, template <class> class Op, class V, class = void>
struct gives1 : std::false_type {};
template <class R, template <class> class Op, class V>
struct gives1<R, Op, V, std::void_t<Op<V>>> : std::is_same<Op<V>, R> {};
template <template <class> class Op, class V, class = void>
struct gives_reg1 : std::false_type {};
template <template <class> class Op, class V>
struct gives_reg1<Op, V, std::void_t<reg_t<V>, Op<V>>> : std::is_same<Op<V>, reg_t<V>> {};
template <template <class, class> class Op, class V, class X, class = void>
struct gives_reg2 : std::false_type {};
template <template <class, class> class Op, class V, class X>
struct gives_reg2<Op, V, X, std::void_t<reg_t<V>, Op<V, X>>> : std::is_same<Op<V, X>, reg_t<V>> {};

// The calls as simd_body.inl makes them: registers as const lvalues (by value or const& both do),
// counts as std::int64_t.
template <class V>
using cref = const reg_t<V>&;
template <class V>
using complete_t = decltype(sizeof(V));
template <class V>
using lanes_t = std::enable_if_t<std::is_same_v<decltype(V::lanes), const std::int64_t>>;
template <class V>
using zero_t = decltype(V::zero());
template <class V, class E>
using set1_t = decltype(V::set1(std::declval<E>()));
template <class V, class X>
using load_t = decltype(V::load(std::declval<const X*>()));
template <class V, class X>
using load_n_t = decltype(V::load_n(std::declval<const X*>(), std::int64_t{}));
template <class V, class X>
using store_t = decltype(V::store(std::declval<X*>(), std::declval<cref<V>>()));
template <class V, class X>
using store_n_t = decltype(V::store_n(std::declval<X*>(), std::declval<cref<V>>(), std::int64_t{}));
template <class V, class X>
using stream_t = decltype(V::stream(std::declval<X*>(), std::declval<cref<V>>()));
template <class V, class X>
using stream2_t = decltype(V::stream2(std::declval<X*>(), std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using fence_t = decltype(V::fence());
template <class V>
using add_t = decltype(V::add(std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using sub_t = decltype(V::sub(std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using mul_t = decltype(V::mul(std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using fma_t = decltype(V::fma(std::declval<cref<V>>(), std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using head_t = decltype(V::head(std::declval<cref<V>>(), std::int64_t{}));
template <class V>
using min_t = decltype(V::min(std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using max_t = decltype(V::max(std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using div_t = decltype(V::div(std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using round_t = decltype(V::round(std::declval<cref<V>>()));
template <class V>
using scale2_t = decltype(V::scale2(std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V>
using sum_t = decltype(V::sum(std::declval<cref<V>>()));
template <class V, class X>
using stream2_bits_t = decltype(V::stream2_bits(std::declval<X*>(), std::declval<const X*>()));
template <class V, class X>
using load_split_t = decltype(V::load_split(std::declval<const X*>(), std::declval<reg_t<V>&>(), std::declval<reg_t<V>&>()));
template <class V>
using load_halves_t = decltype(V::load_halves(std::declval<const float*>()));
template <class V, class X>
using store_split_t = decltype(V::store_split(std::declval<X*>(), std::declval<cref<V>>(), std::declval<cref<V>>()));
template <class V, class X>
using stream_split_t = decltype(V::stream_split(std::declval<X*>(), std::declval<cref<V>>(), std::declval<cref<V>>()));

template <class V, bool = valid1<lanes_t, V>::value>
struct lanes_fit : std::false_type {};
template <class V>
struct lanes_fit<V, true> : std::bool_constant<(V::lanes > 0 && kColumnTile % V::lanes == 0)> {};

// The requirements, one per member and element type.
template <class V>
inline constexpr bool complete = valid1<complete_t, V>::value;
template <class V>
inline constexpr bool has_reg = valid1<reg_t, V>::value;
template <class V>
inline constexpr bool has_lanes = lanes_fit<V>::value;
template <class V>
inline constexpr bool has_zero = gives_reg1<zero_t, V>::value;
template <class V, class E>
inline constexpr bool has_set1 = gives_reg2<set1_t, V, E>::value;
template <class V, class X>
inline constexpr bool has_load = gives_reg2<load_t, V, X>::value;
template <class V, class X>
inline constexpr bool has_load_n = gives_reg2<load_n_t, V, X>::value;
template <class V, class X>
inline constexpr bool has_store = valid2<store_t, V, X>::value;
template <class V, class X>
inline constexpr bool has_store_n = valid2<store_n_t, V, X>::value;
template <class V, class X>
inline constexpr bool has_stream = valid2<stream_t, V, X>::value;
template <class V, class X>
inline constexpr bool has_stream2 = valid2<stream2_t, V, X>::value;
template <class V>
inline constexpr bool has_fence = valid1<fence_t, V>::value;
template <class V>
inline constexpr bool has_add = gives_reg1<add_t, V>::value;
template <class V>
inline constexpr bool has_sub = gives_reg1<sub_t, V>::value;
template <class V>
inline constexpr bool has_mul = gives_reg1<mul_t, V>::value;
template <class V>
inline constexpr bool has_fma = gives_reg1<fma_t, V>::value;
template <class V>
inline constexpr bool has_head = gives_reg1<head_t, V>::value;
template <class V>
inline constexpr bool has_min = gives_reg1<min_t, V>::value;
template <class V>
inline constexpr bool has_max = gives_reg1<max_t, V>::value;
template <class V>
inline constexpr bool has_div = gives_reg1<div_t, V>::value;
template <class V>
inline constexpr bool has_round = gives_reg1<round_t, V>::value;
template <class V>
inline constexpr bool has_scale2 = gives_reg1<scale2_t, V>::value;
template <class V, class E>
inline constexpr bool has_sum = gives1<E, sum_t, V>::value;
template <class V, class X>
inline constexpr bool has_stream2_bits = valid2<stream2_bits_t, V, X>::value;
template <class V, class X>
inline constexpr bool has_load_split = valid2<load_split_t, V, X>::value;
// Optional: whether V has load_halves at all, and, where it has, that it gives a register.
template <class V>
inline constexpr bool has_load_halves = valid1<load_halves_t, V>::value;
template <class V>
inline constexpr bool load_halves_ok = !has_load_halves<V> || gives_reg1<load_halves_t, V>::value;
template <class V, class X>
inline constexpr bool has_store_split = valid2<store_split_t, V, X>::value;
template <class V, class X>
inline constexpr bool has_stream_split = valid2<stream_split_t, V, X>::value;

// ---- vec<float>: float32 rows, and 16-bit rows widened to float ---------------------------------------

using F = vec<float>;
static_assert(complete<F>, "vec<float> is not defined (template <> struct vec<float> { ... })");
static_assert(has_reg<F>, "vec<float>::reg (the register type) is missing");
static_assert(has_lanes<F>, "vec<float>::lanes wants a static constexpr std::int64_t > 0 dividing kColumnTile");
static_assert(has_zero<F>, "vec<float>::zero() -> reg is missing");
static_assert(load_halves_ok<F>, "vec<float>::load_halves(const float*) must return reg");
static_assert(has_set1<F, float>, "vec<float>::set1(float) -> reg is missing");
static_assert(has_load<F, float>, "vec<float>::load(const float*) -> reg is missing");
static_assert(has_load<F, float16_t>, "vec<float>::load(const float16_t*) -> reg is missing");
static_assert(has_load<F, bfloat16_t>, "vec<float>::load(const bfloat16_t*) -> reg is missing");
static_assert(has_load_n<F, float>, "vec<float>::load_n(const float*, std::int64_t) -> reg is missing");
static_assert(has_load_n<F, float16_t>, "vec<float>::load_n(const float16_t*, std::int64_t) -> reg is missing");
static_assert(has_load_n<F, bfloat16_t>, "vec<float>::load_n(const bfloat16_t*, std::int64_t) -> reg is missing");
static_assert(has_store<F, float>, "vec<float>::store(float*, reg) is missing");
static_assert(has_store<F, float16_t>, "vec<float>::store(float16_t*, reg) is missing");
static_assert(has_store<F, bfloat16_t>, "vec<float>::store(bfloat16_t*, reg) is missing");
static_assert(has_store_n<F, float>, "vec<float>::store_n(float*, reg, std::int64_t) is missing");
static_assert(has_store_n<F, float16_t>, "vec<float>::store_n(float16_t*, reg, std::int64_t) is missing");
static_assert(has_store_n<F, bfloat16_t>, "vec<float>::store_n(bfloat16_t*, reg, std::int64_t) is missing");
static_assert(has_stream<F, float>, "vec<float>::stream(float*, reg) is missing");
static_assert(has_stream<F, float16_t>, "vec<float>::stream(float16_t*, reg) is missing");
static_assert(has_stream<F, bfloat16_t>, "vec<float>::stream(bfloat16_t*, reg) is missing");
static_assert(has_stream2<F, float>, "vec<float>::stream2(float*, reg, reg) is missing");
static_assert(has_stream2<F, float16_t>, "vec<float>::stream2(float16_t*, reg, reg) is missing");
static_assert(has_stream2<F, bfloat16_t>, "vec<float>::stream2(bfloat16_t*, reg, reg) is missing");
static_assert(has_fence<F>, "vec<float>::fence() is missing");
static_assert(has_add<F>, "vec<float>::add(reg, reg) -> reg is missing");
static_assert(has_sub<F>, "vec<float>::sub(reg, reg) -> reg is missing");
static_assert(has_mul<F>, "vec<float>::mul(reg, reg) -> reg is missing");
static_assert(has_fma<F>, "vec<float>::fma(reg, reg, reg) -> reg is missing");
static_assert(has_head<F>, "vec<float>::head(reg, std::int64_t) -> reg is missing");
static_assert(has_min<F>, "vec<float>::min(reg, reg) -> reg is missing (b where either is NaN)");
static_assert(has_max<F>, "vec<float>::max(reg, reg) -> reg is missing (b where either is NaN)");
static_assert(has_div<F>, "vec<float>::div(reg, reg) -> reg is missing");
static_assert(has_round<F>, "vec<float>::round(reg) -> reg is missing (to nearest even)");
static_assert(has_scale2<F>, "vec<float>::scale2(reg a, reg n) -> reg is missing (a * 2^n, n integral in [-126, 127])");
static_assert(has_sum<F, float>, "vec<float>::sum(reg) -> float is missing");
static_assert(has_stream2_bits<F, float16_t>, "vec<float>::stream2_bits(float16_t*, const float16_t*) is missing");
static_assert(has_stream2_bits<F, bfloat16_t>, "vec<float>::stream2_bits(bfloat16_t*, const bfloat16_t*) is missing");
static_assert(has_load_split<F, bfloat16_t>, "vec<float>::load_split(const bfloat16_t*, reg&, reg&) is missing");
static_assert(has_store_split<F, bfloat16_t>, "vec<float>::store_split(bfloat16_t*, reg, reg) is missing");
static_assert(has_stream_split<F, bfloat16_t>, "vec<float>::stream_split(bfloat16_t*, reg, reg) is missing");

// ---- vec<double>: float64 rows (whose weights may be float) ------------------------------------------

using D = vec<double>;
static_assert(complete<D>, "vec<double> is not defined (template <> struct vec<double> { ... })");
static_assert(has_reg<D>, "vec<double>::reg (the register type) is missing");
static_assert(has_lanes<D>, "vec<double>::lanes wants a static constexpr std::int64_t > 0 dividing kColumnTile");
static_assert(has_zero<D>, "vec<double>::zero() -> reg is missing");
static_assert(has_set1<D, double>, "vec<double>::set1(double) -> reg is missing");
static_assert(has_load<D, double>, "vec<double>::load(const double*) -> reg is missing");
static_assert(has_load<D, float>, "vec<double>::load(const float*) -> reg is missing");
static_assert(has_load_n<D, double>, "vec<double>::load_n(const double*, std::int64_t) -> reg is missing");
static_assert(has_load_n<D, float>, "vec<double>::load_n(const float*, std::int64_t) -> reg is missing");
static_assert(has_store<D, double>, "vec<double>::store(double*, reg) is missing");
static_assert(has_store_n<D, double>, "vec<double>::store_n(double*, reg, std::int64_t) is missing");
static_assert(has_stream<D, double>, "vec<double>::stream(double*, reg) is missing");
static_assert(has_stream2<D, double>, "vec<double>::stream2(double*, reg, reg) is missing");
static_assert(has_fence<D>, "vec<double>::fence() is missing");
static_assert(has_add<D>, "vec<double>::add(reg, reg) -> reg is missing");
static_assert(has_sub<D>, "vec<double>::sub(reg, reg) -> reg is missing");
static_assert(has_mul<D>, "vec<double>::mul(reg, reg) -> reg is missing");
static_assert(has_fma<D>, "vec<double>::fma(reg, reg, reg) -> reg is missing");
static_assert(has_head<D>, "vec<double>::head(reg, std::int64_t) -> reg is missing");
static_assert(has_sum<D, double>, "vec<double>::sum(reg) -> double is missing");

}  // namespace vec_interface

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
