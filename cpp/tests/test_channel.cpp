// cpp/tests/test_channel.cpp: the channel norms (lnorm_channel_tests): try_group_norm_nd,
// try_instance_norm_nd, try_batch_norm_nd (training, with the running statistics' update, and eval)
// and their backward calls, for float32, float64, float16 and bfloat16 data with weights of the data's
// type and of float, on every kernel set this machine runs, against a float64 reference written here
// (independent of lnorm): NCHW (the planar path), NHWC with the channel axis 1 or -1 (the pixels
// path) and layouts that need the gather path (a stepped view with its spatial axes transposed, and
// x and y of different layouts); spatial sizes and channel counts around the vector widths, several
// group counts, with and without gamma/beta, the fused activations, eps 0 and 10, in place; data with
// a mean 1e4..1e5 times its spread, constant groups (exactly beta, eps = 0 included), a NaN poisoning
// only its own group; the same bits on 1, 2 and 3 threads and on an engine's pool; the workspace
// (the query's bytes: no allocation, global operator new counts as in test_api.cpp; one byte short:
// workspace_too_small and nothing written; null data: invalid_argument); every refused argument,
// with a message naming it and nothing written. Prints "N passed, M failed".
// The replaced global operator new/delete below pair malloc with free by design; GCC 12 at -O2 sees
// the pairing through std::allocator's inlined calls and calls it a mismatch.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
#include "suite.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "counting.hpp"

namespace lnorm_test {
namespace {

using lnorm::activation;
using lnorm::status_code;
using i64 = std::int64_t;

// ---- layouts: a logical (N, C, H, W) tensor in memory ------------------------------------------------

struct dims {
  i64 N = 1, C = 1, H = 1, W = 1;
  i64 count() const { return N * C * H * W; }
  i64 flat(i64 n, i64 c, i64 h, i64 w) const { return ((n * C + c) * H + h) * W + w; }
};

/// How one array lies in memory. nchw: contiguous NCHW. nhwc: contiguous NHWC. stepped: NCWH order
/// (spatial axes transposed), the innermost (H) every other element, padding after every line,
/// channel and sample: neither the channel nor any spatial stride is 1 (the gather path).
enum class mem { nchw, nhwc, stepped };

struct placement {
  i64 st[4] = {};  // logical (n, c, h, w) strides
  i64 size = 0;    // elements of the buffer
};

placement place(mem m, const dims& d) {
  placement p;
  if (m == mem::nchw) {
    p.st[3] = 1, p.st[2] = d.W, p.st[1] = d.H * d.W, p.st[0] = d.C * d.H * d.W;
    p.size = d.count();
  } else if (m == mem::nhwc) {
    p.st[1] = 1, p.st[3] = d.C, p.st[2] = d.W * d.C, p.st[0] = d.H * d.W * d.C;
    p.size = d.count();
  } else {
    p.st[2] = 2, p.st[3] = 2 * d.H + 1, p.st[1] = d.W * (2 * d.H + 1) + 3, p.st[0] = d.C * p.st[1] + 5;
    p.size = d.N * p.st[0];
  }
  return p;
}

/// A whole problem's layout: each array's placement, and whether the call sees the axes as NCHW
/// (channel_axis 1) or as NHWC (channel_axis -1: the API's shape and strides permuted).
enum class lay { planar, pixels, pixels_last, gather_stepped, gather_mixed };
constexpr lay kLays[] = {lay::planar, lay::pixels, lay::pixels_last, lay::gather_stepped, lay::gather_mixed};
const char* lay_name(lay l) {
  switch (l) {
    case lay::planar: return "nchw";
    case lay::pixels: return "nhwc";
    case lay::pixels_last: return "nhwc(axis -1)";
    case lay::gather_stepped: return "stepped";
    default: return "mixed";
  }
}
/// Array a's memory (forward: 0 x, 1 y; backward: 0 dy, 1 x, 2 dx).
mem mem_of(lay l, int a) {
  switch (l) {
    case lay::planar: return mem::nchw;
    case lay::pixels:
    case lay::pixels_last: return mem::nhwc;
    case lay::gather_stepped: return mem::stepped;
    default: return a == 0 ? mem::nchw : a == 1 ? mem::nhwc : mem::stepped;
  }
}

/// A buffer holding one array: every element outside the view a sentinel, to see stray writes.
template <class T>
struct buffer {
  dims d;
  placement p;
  std::vector<T> mem_;
  i64 api_st[4] = {};
  buffer() = default;
  buffer(const dims& dd, mem m, bool channels_last_api) : d(dd), p(place(m, dd)) {
    mem_.assign(static_cast<std::size_t>(p.size), sentinel());
    const int perm[4] = {0, channels_last_api ? 2 : 1, channels_last_api ? 3 : 2, channels_last_api ? 1 : 3};
    for (int i = 0; i < 4; ++i) api_st[i] = p.st[perm[i]];
  }
  static T sentinel() { return from_double<T>(1234.0); }
  i64 off(i64 n, i64 c, i64 h, i64 w) const { return n * p.st[0] + c * p.st[1] + h * p.st[2] + w * p.st[3]; }
  T& at(i64 n, i64 c, i64 h, i64 w) { return mem_[static_cast<std::size_t>(off(n, c, h, w))]; }
  double get(i64 n, i64 c, i64 h, i64 w) const { return to_double(mem_[static_cast<std::size_t>(off(n, c, h, w))]); }
  T* data() { return mem_.data(); }
  /// Fills the view from logical values (rounded to T).
  void fill(const std::vector<double>& v) {
    for (i64 n = 0; n < d.N; ++n)
      for (i64 c = 0; c < d.C; ++c)
        for (i64 h = 0; h < d.H; ++h)
          for (i64 w = 0; w < d.W; ++w) at(n, c, h, w) = from_double<T>(v[static_cast<std::size_t>(d.flat(n, c, h, w))]);
  }
  /// The view's values, logical order.
  std::vector<double> values() const {
    std::vector<double> v(static_cast<std::size_t>(d.count()));
    for (i64 n = 0; n < d.N; ++n)
      for (i64 c = 0; c < d.C; ++c)
        for (i64 h = 0; h < d.H; ++h)
          for (i64 w = 0; w < d.W; ++w) v[static_cast<std::size_t>(d.flat(n, c, h, w))] = get(n, c, h, w);
    return v;
  }
  /// Positions outside the view whose bits are not the sentinel's.
  i64 stray_writes() const {
    std::vector<char> in(mem_.size(), 0);
    for (i64 n = 0; n < d.N; ++n)
      for (i64 c = 0; c < d.C; ++c)
        for (i64 h = 0; h < d.H; ++h)
          for (i64 w = 0; w < d.W; ++w) in[static_cast<std::size_t>(off(n, c, h, w))] = 1;
    i64 bad = 0;
    for (std::size_t i = 0; i < mem_.size(); ++i)
      bad += !in[i] && bits_of(mem_[i]) != bits_of(sentinel());
    return bad;
  }
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (bits_of(a[i]) != bits_of(b[i])) return false;
  return true;
}

// ---- the problems ------------------------------------------------------------------------------------

enum class kind { group, instance, batch_train, batch_eval };
constexpr kind kKinds[] = {kind::group, kind::instance, kind::batch_train, kind::batch_eval};
const char* kind_name(kind k) {
  switch (k) {
    case kind::group: return "group_norm";
    case kind::instance: return "instance_norm";
    case kind::batch_train: return "batch_norm(train)";
    default: return "batch_norm(eval)";
  }
}
bool is_batch(kind k) { return k == kind::batch_train || k == kind::batch_eval; }

enum class data { random, large_mean, constant_group, nan_group, far_first };

struct spec {
  dims d;
  i64 G = 1;  // group: the groups; instance and batch: set from C
  kind k = kind::group;
  lay l = lay::planar;
  bool gamma = true, beta = true, in_place = false;
  activation act = activation::none;
  double eps = 1e-5, momentum = 0.1;
  data what = data::random;
  double ratio = 1e4;  // large_mean: mean / spread
  std::uint64_t seed = 1;

  i64 groups() const { return k == kind::group ? G : d.C; }
  i64 units() const { return is_batch(k) ? d.C : d.N * groups(); }
  i64 unit_of(i64 n, i64 c) const { return is_batch(k) ? c : n * groups() + c / (d.C / groups()); }
  i64 unit_count() const { return is_batch(k) ? d.N * d.H * d.W : (d.C / groups()) * d.H * d.W; }
  bool channels_last_api() const { return l == lay::pixels_last; }
  int channel_axis() const { return channels_last_api() ? -1 : 1; }
  void api_shape(i64* s) const {
    s[0] = d.N;
    if (channels_last_api()) s[1] = d.H, s[2] = d.W, s[3] = d.C;
    else s[1] = d.C, s[2] = d.H, s[3] = d.W;
  }
};

std::string describe(const spec& s, const char* type, const char* wtype, isa i, const char* what) {
  char buf[320];
  const char* acts[] = {"none", "silu", "relu"};
  const char* datas[] = {"random", "large-mean", "constant-group", "nan-group", "far-first-pixel"};
  std::snprintf(buf, sizeof buf, "%s %s/%s %s N%ld C%ld H%ld W%ld G%ld %s%s%s act=%s eps=%g %s%s [%s]", what, type, wtype,
                kind_name(s.k), static_cast<long>(s.d.N), static_cast<long>(s.d.C), static_cast<long>(s.d.H),
                static_cast<long>(s.d.W), static_cast<long>(s.groups()), lay_name(s.l), s.gamma ? " gamma" : "",
                s.beta ? " beta" : "", acts[static_cast<int>(s.act) % 3], s.eps, datas[static_cast<int>(s.what)],
                s.in_place ? " in-place" : "", lnorm::isa_name(i));
  return buf;
}

/// The logical x of a problem (before rounding to T).
std::vector<double> make_x(const spec& s) {
  rng g(s.seed);
  const dims& d = s.d;
  std::vector<double> x(static_cast<std::size_t>(d.count()));
  std::vector<double> off(static_cast<std::size_t>(d.C)), scale(off.size());
  for (i64 c = 0; c < d.C; ++c) {
    off[static_cast<std::size_t>(c)] = g.uniform(-2, 2);
    scale[static_cast<std::size_t>(c)] = g.uniform(0.5, 2);
  }
  const double big = s.ratio * g.uniform(1, 3);
  for (i64 n = 0; n < d.N; ++n)
    for (i64 c = 0; c < d.C; ++c)
      for (i64 h = 0; h < d.H; ++h)
        for (i64 w = 0; w < d.W; ++w) {
          double v = off[static_cast<std::size_t>(c)] + scale[static_cast<std::size_t>(c)] * g.normal();
          if (s.what == data::large_mean) v = big + g.normal();
          x[static_cast<std::size_t>(d.flat(n, c, h, w))] = v;
        }
  if (s.what == data::far_first) {
    // Channel 2's first pixel 1000 spreads out: the pixels path's shift (the first pixel) lies far
    // from the mean, and only its second pass, around the channel means, keeps float precision.
    const i64 c = std::min<i64>(2, d.C - 1);
    for (i64 n = 0; n < d.N; ++n)
      x[static_cast<std::size_t>(d.flat(n, c, 0, 0))] = off[static_cast<std::size_t>(c)] + 1000 * scale[static_cast<std::size_t>(c)];
  }
  if (s.what == data::constant_group || s.what == data::nan_group) {
    // Unit 1 (or 0 with one unit) constant, or with one NaN.
    const i64 u = s.units() > 1 ? 1 : 0;
    bool first = true;
    for (i64 n = 0; n < d.N; ++n)
      for (i64 c = 0; c < d.C; ++c)
        if (s.unit_of(n, c) == u)
          for (i64 h = 0; h < d.H; ++h)
            for (i64 w = 0; w < d.W; ++w) {
              double& v = x[static_cast<std::size_t>(d.flat(n, c, h, w))];
              if (s.what == data::constant_group) v = 7.25;
              else if (first && h == d.H / 2 && w == d.W - 1) v = std::numeric_limits<double>::quiet_NaN(), first = false;
            }
  }
  return x;
}

template <class W>
std::vector<W> make_weights(i64 C, std::uint64_t seed, double lo, double hi, bool sign) {
  rng g(seed);
  std::vector<W> v(static_cast<std::size_t>(C));
  for (W& w : v) w = from_double<W>((sign && (g.next() & 1) ? -1.0 : 1.0) * g.uniform(lo, hi));
  return v;
}

double act_ref(activation a, double v) {
  if (a == activation::silu) return v / (1.0 + std::exp(-v));
  if (a == activation::relu) return v > 0 || v != v ? v : 0.0;
  return v;
}

// ---- forward: the call, and the float64 reference ---------------------------------------------------

template <class T, class W>
struct forward_run {
  spec s;
  buffer<T> x, y;
  std::vector<W> gamma, beta;
  std::vector<stat_t<T>> rm, rv, mean, rstd;  // running statistics (in, and out in training), outputs
  lnorm::status st;

  explicit forward_run(const spec& sp) : s(sp) {
    x = buffer<T>(s.d, mem_of(s.l, 0), s.channels_last_api());
    x.fill(make_x(s));
    y = buffer<T>(s.d, mem_of(s.l, 1), s.channels_last_api());
    gamma = make_weights<W>(s.d.C, s.seed + 11, 0.5, 1.5, true);
    beta = make_weights<W>(s.d.C, s.seed + 12, -1, 1, true);
    rng g(s.seed + 13);
    rm.resize(static_cast<std::size_t>(s.d.C));
    rv.resize(rm.size());
    for (std::size_t c = 0; c < rm.size(); ++c) {
      rm[c] = static_cast<stat_t<T>>(g.uniform(-1, 1));
      rv[c] = static_cast<stat_t<T>>(g.uniform(0.5, 2));
    }
    mean.assign(static_cast<std::size_t>(s.units()), stat_t<T>(777));
    rstd.assign(mean.size(), stat_t<T>(777));
  }
  buffer<T>& out() { return s.in_place ? x : y; }

  lnorm::status call(const lnorm::workspace* ws = nullptr) {
    i64 shape[4];
    s.api_shape(shape);
    buffer<T>& o = out();
    const lnorm::strided xs{x.data(), x.api_st}, ys{o.data(), o.api_st};
    const W* g = s.gamma ? gamma.data() : nullptr;
    const W* b = s.beta ? beta.data() : nullptr;
    switch (s.k) {
      case kind::group:
        st = lnorm::try_group_norm_nd<T, W>(4, shape, s.channel_axis(), s.G, xs, ys, g, b, s.eps, s.act, mean.data(),
                                            rstd.data(), ws);
        break;
      case kind::instance:
        st = lnorm::try_instance_norm_nd<T, W>(4, shape, s.channel_axis(), xs, ys, g, b, s.eps, s.act, mean.data(),
                                               rstd.data(), ws);
        break;
      default:
        st = lnorm::try_batch_norm_nd<T, W>(4, shape, s.channel_axis(), xs, ys, g, b, s.eps, s.k == kind::batch_train,
                                            s.momentum, rm.data(), rv.data(), s.act, mean.data(), rstd.data(), ws);
    }
    return st;
  }
  std::size_t workspace_size(int threads) const {
    i64 shape[4];
    s.api_shape(shape);
    const buffer<T>& o = s.in_place ? x : y;
    return lnorm::channel_norm_workspace_size<T>(4, shape, s.channel_axis(), s.groups(), is_batch(s.k), x.api_st, o.api_st,
                                                 threads);
  }
};

/// What the reference expects of a forward call.
struct forward_ref {
  std::vector<double> y, mean, var, rstd, rm, rv;
  std::vector<double> xhat_abs, mean_err;  // |xhat| per element, and the mean's rounding (for the tolerance)
};

template <class T, class W>
forward_ref reference_forward(const spec& s, const std::vector<double>& x, const std::vector<W>& gamma,
                              const std::vector<W>& beta, const std::vector<stat_t<T>>& rm0,
                              const std::vector<stat_t<T>>& rv0) {
  const dims& d = s.d;
  const i64 U = s.units();
  forward_ref r;
  r.mean.assign(static_cast<std::size_t>(U), 0.0);
  r.var.assign(r.mean.size(), 0.0);
  std::vector<double> cnt(r.mean.size(), 0.0);
  auto each = [&](auto&& f) {
    for (i64 n = 0; n < d.N; ++n)
      for (i64 c = 0; c < d.C; ++c)
        for (i64 h = 0; h < d.H; ++h)
          for (i64 w = 0; w < d.W; ++w) f(n, c, static_cast<std::size_t>(d.flat(n, c, h, w)));
  };
  if (s.k == kind::batch_eval) {
    for (i64 c = 0; c < d.C; ++c) {
      r.mean[static_cast<std::size_t>(c)] = static_cast<double>(rm0[static_cast<std::size_t>(c)]);
      r.var[static_cast<std::size_t>(c)] = static_cast<double>(rv0[static_cast<std::size_t>(c)]);
    }
  } else {
    // Sums around each unit's first element (x - shift is exact for data far from zero).
    std::vector<double> shift(r.mean.size(), 0.0);
    each([&](i64 n, i64 c, std::size_t i) {
      const std::size_t u = static_cast<std::size_t>(s.unit_of(n, c));
      if (cnt[u] == 0) shift[u] = x[i];
      r.mean[u] += x[i] - shift[u];
      cnt[u] += 1;
    });
    for (std::size_t u = 0; u < r.mean.size(); ++u) r.mean[u] = shift[u] + r.mean[u] / cnt[u];
    each([&](i64 n, i64 c, std::size_t i) {
      const std::size_t u = static_cast<std::size_t>(s.unit_of(n, c));
      const double dd = x[i] - r.mean[u];
      r.var[u] += dd * dd;
    });
    for (std::size_t u = 0; u < r.var.size(); ++u) r.var[u] /= cnt[u];
  }
  r.rstd.resize(r.mean.size());
  for (std::size_t u = 0; u < r.mean.size(); ++u) r.rstd[u] = 1.0 / std::sqrt(r.var[u] + s.eps);
  r.y.assign(x.size(), 0.0);
  r.xhat_abs.assign(x.size(), 0.0);
  r.mean_err.assign(x.size(), 0.0);
  each([&](i64 n, i64 c, std::size_t i) {
    const std::size_t u = static_cast<std::size_t>(s.unit_of(n, c));
    const double ve = r.var[u] + s.eps;
    const double applied = ve > 0 ? 1.0 / std::sqrt(ve) : 0.0;  // constant, eps = 0: y = beta
    const double g = s.gamma ? to_double(gamma[static_cast<std::size_t>(c)]) : 1.0;
    const double b = s.beta ? to_double(beta[static_cast<std::size_t>(c)]) : 0.0;
    const double xh = (x[i] - r.mean[u]) * applied;
    r.xhat_abs[i] = std::fabs(xh);
    // What the rounding of means to float64 can move y by: the mean itself, and the variance that a
    // merge of partial means (Chan's, around the means' difference) gets from it, relatively
    // about |mean| / sd times the float64 unit roundoff (1e-11 for a mean 1e5 times the spread).
    const double sd = std::sqrt(r.var[u]);
    r.mean_err[i] = 8 * 0x1p-53 * std::fabs(r.mean[u]) * (applied + (sd > 0 ? std::fabs(xh) / sd : 0.0)) * std::fabs(g);
    r.y[i] = act_ref(s.act, xh * g + b);
  });
  if (s.k == kind::batch_train) {
    const double n = static_cast<double>(s.unit_count());
    r.rm.resize(static_cast<std::size_t>(d.C));
    r.rv.resize(r.rm.size());
    for (std::size_t c = 0; c < r.rm.size(); ++c) {
      r.rm[c] = (1 - s.momentum) * static_cast<double>(rm0[c]) + s.momentum * r.mean[c];
      r.rv[c] = (1 - s.momentum) * static_cast<double>(rv0[c]) + s.momentum * r.var[c] * n / (n - 1);
    }
  }
  return r;
}

/// Whether got matches want within tol (NaN only for NaN, infinities exactly).
bool close(double got, double want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::fabs(got - want) <= tol;
}

template <class T, class W>
void check_forward(test_case& t, forward_run<T, W>& run, const forward_ref& r, const std::vector<double>& x) {
  const spec& s = run.s;
  LNORM_CHECK(t, run.st, "refused: %s", run.st.message);
  if (!run.st) return;
  const double uT = type_facts<T>::unit_roundoff, uC = calc_roundoff<T>(), uS = calc_roundoff<T>();
  const double floor = 4 * type_facts<T>::abs_floor + 1e-300;
  const double grow = growth(s.unit_count());
  const std::vector<double> y = run.out().values();
  long bad = 0;
  for (i64 n = 0; n < s.d.N; ++n)
    for (i64 c = 0; c < s.d.C; ++c) {
      const double g = s.gamma ? std::fabs(to_double(run.gamma[static_cast<std::size_t>(c)])) : 1.0;
      const double b = s.beta ? std::fabs(to_double(run.beta[static_cast<std::size_t>(c)])) : 0.0;
      for (i64 h = 0; h < s.d.H; ++h)
        for (i64 w = 0; w < s.d.W; ++w) {
          const std::size_t i = static_cast<std::size_t>(s.d.flat(n, c, h, w));
          const double tol = 2 * uT * std::fabs(r.y[i]) + 16 * uC * grow * (g * (1 + r.xhat_abs[i]) + b) + r.mean_err[i] + floor;
          if (!close(y[i], r.y[i], tol) && ++bad <= 3)
            t.fail("y[n%ld c%ld h%ld w%ld] = %.17g, want %.17g (tol %.3g; x %.9g)", static_cast<long>(n), static_cast<long>(c),
                   static_cast<long>(h), static_cast<long>(w), y[i], r.y[i], tol, x[i]);
          else if (!std::isnan(r.y[i]) && tol > 0) note_ratio((std::string("channel forward y ") + type_facts<T>::name).c_str(), std::fabs(y[i] - r.y[i]) / tol);
        }
    }
  LNORM_CHECK(t, bad == 0, "%ld elements of y off", bad);
  LNORM_CHECK(t, run.out().stray_writes() == 0, "%ld elements outside y's view written", static_cast<long>(run.out().stray_writes()));
  for (std::size_t u = 0; u < r.mean.size(); ++u) {
    const double sd = std::sqrt(r.var[u]);
    const double m = static_cast<double>(run.mean[u]), rs = static_cast<double>(run.rstd[u]);
    const double mtol = 2 * uS * std::fabs(r.mean[u]) + 16 * uC * grow * sd + 1e-300;
    LNORM_CHECK(t, close(m, r.mean[u], mtol), "mean[%zu] = %.9g, want %.9g", u, m, r.mean[u]);
    const double merge = sd > 0 ? 8 * 0x1p-53 * std::fabs(r.mean[u]) / sd : 0.0;  // see reference_forward
    LNORM_CHECK(t, close(rs, r.rstd[u], (2 * uS + 16 * uC * grow + merge) * std::fabs(r.rstd[u])), "rstd[%zu] = %.17g, want %.17g",
                u, rs, r.rstd[u]);
  }
  if (s.k == kind::batch_train)
    for (std::size_t c = 0; c < r.rm.size(); ++c) {
      const double sd = std::sqrt(r.var[c]);
      const double gm = static_cast<double>(run.rm[c]), gv = static_cast<double>(run.rv[c]);
      const double merge = sd > 0 ? 8 * 0x1p-53 * std::fabs(r.mean[c]) / sd : 0.0;  // see reference_forward
      LNORM_CHECK(t, close(gm, r.rm[c], 2 * uS * std::fabs(r.rm[c]) + 16 * uC * grow * sd + merge * sd + 1e-300),
                  "running_mean[%zu] = %.17g, want %.17g", c, gm, r.rm[c]);
      LNORM_CHECK(t, close(gv, r.rv[c], (2 * uS + 16 * uC * grow + merge) * std::fabs(r.rv[c]) + 1e-300),
                  "running_var[%zu] = %.17g, want %.17g", c, gv, r.rv[c]);
    }
}

/// Runs one forward problem on every kernel set and checks it against the reference.
template <class T, class W>
void forward_case(const spec& s) {
  forward_run<T, W> proto(s);
  const std::vector<double> x = proto.x.values();
  const forward_ref r = reference_forward<T, W>(s, x, proto.gamma, proto.beta, proto.rm, proto.rv);
  for (isa i : tested_isas()) {
    use_isa(i);
    forward_run<T, W> run = proto;
    test_case t(describe(s, type_facts<T>::name, type_facts<W>::name, i, "forward"));
    run.call();
    check_forward(t, run, r, x);
    if (s.k == kind::batch_eval) {
      LNORM_CHECK(t, same_bits(run.rm, proto.rm) && same_bits(run.rv, proto.rv), "eval wrote the running statistics");
    }
    if (s.what == data::constant_group && s.act == activation::none && run.st) {
      // The constant unit gives exactly beta (0 without beta), eps = 0 included.
      const i64 u = s.units() > 1 ? 1 : 0;
      const std::vector<double> y = run.out().values();
      for (i64 n = 0; n < s.d.N; ++n)
        for (i64 c = 0; c < s.d.C; ++c)
          if (s.unit_of(n, c) == u) {
            const double want = s.beta ? to_double(from_double<T>(to_double(run.beta[static_cast<std::size_t>(c)]))) : 0.0;
            for (i64 h = 0; h < s.d.H; ++h)
              for (i64 w = 0; w < s.d.W; ++w) {
                const double got = y[static_cast<std::size_t>(s.d.flat(n, c, h, w))];
                LNORM_CHECK(t, got == want, "constant unit: y[n%ld c%ld] = %.9g, want beta %.9g exactly", static_cast<long>(n),
                            static_cast<long>(c), got, want);
              }
          }
    }
    if (s.what == data::nan_group && s.k != kind::batch_eval && run.st) {
      // NaN exactly in the poisoned unit's elements, its statistics NaN, every other unit finite.
      const i64 u = s.units() > 1 ? 1 : 0;
      const std::vector<double> y = run.out().values();
      long wrong = 0;
      for (i64 n = 0; n < s.d.N; ++n)
        for (i64 c = 0; c < s.d.C; ++c)
          for (i64 h = 0; h < s.d.H; ++h)
            for (i64 w = 0; w < s.d.W; ++w)
              wrong += std::isnan(y[static_cast<std::size_t>(s.d.flat(n, c, h, w))]) != (s.unit_of(n, c) == u);
      LNORM_CHECK(t, wrong == 0, "%ld elements NaN outside the poisoned unit or finite inside it", wrong);
      for (i64 v = 0; v < s.units(); ++v)
        LNORM_CHECK(t, std::isnan(static_cast<double>(run.mean[static_cast<std::size_t>(v)])) == (v == u),
                    "mean[%ld] = %g", static_cast<long>(v), static_cast<double>(run.mean[static_cast<std::size_t>(v)]));
    }
  }
}

// ---- backward ------------------------------------------------------------------------------------------

template <class T, class W>
struct backward_run {
  spec s;
  buffer<T> dy, x, dx;
  std::vector<W> gamma, dgamma, dbeta;
  std::vector<stat_t<T>> mean, rstd;
  bool want_dgamma = true, want_dbeta = true;
  lnorm::status st;

  explicit backward_run(const spec& sp) : s(sp) {
    dy = buffer<T>(s.d, mem_of(s.l, 0), s.channels_last_api());
    x = buffer<T>(s.d, mem_of(s.l, 1), s.channels_last_api());
    dx = buffer<T>(s.d, mem_of(s.l, 2), s.channels_last_api());
    x.fill(make_x(s));
    spec sd = s;
    sd.seed = s.seed * 31 + 7;
    sd.what = data::random;
    dy.fill(make_x(sd));
    gamma = make_weights<W>(s.d.C, s.seed + 21, 0.5, 1.5, true);
    dgamma.assign(static_cast<std::size_t>(s.d.C), from_double<W>(99.0));
    dbeta = dgamma;
    // The statistics: the float64 reference's, rounded as a forward call stores them.
    spec f = s;
    f.k = s.k == kind::batch_eval ? kind::batch_train : s.k;
    std::vector<stat_t<T>> r0(static_cast<std::size_t>(s.d.C), stat_t<T>(0));
    const forward_ref r = reference_forward<T, W>(f, x.values(), gamma, gamma, r0, r0);
    for (std::size_t u = 0; u < r.mean.size(); ++u) {
      mean.push_back(static_cast<stat_t<T>>(r.mean[u]));
      rstd.push_back(static_cast<stat_t<T>>(r.rstd[u]));
    }
  }

  lnorm::status call(const lnorm::workspace* ws = nullptr) {
    i64 shape[4];
    s.api_shape(shape);
    const lnorm::strided dys{dy.data(), dy.api_st}, xs{x.data(), x.api_st}, dxs{dx.data(), dx.api_st};
    const W* g = s.gamma ? gamma.data() : nullptr;
    W* dg = want_dgamma ? dgamma.data() : nullptr;
    W* db = want_dbeta ? dbeta.data() : nullptr;
    switch (s.k) {
      case kind::group:
        st = lnorm::try_group_norm_backward_nd<T, W>(4, shape, s.channel_axis(), s.G, dys, xs, mean.data(), rstd.data(), g,
                                                     dxs, dg, db, ws);
        break;
      case kind::instance:
        st = lnorm::try_instance_norm_backward_nd<T, W>(4, shape, s.channel_axis(), dys, xs, mean.data(), rstd.data(), g,
                                                        dxs, dg, db, ws);
        break;
      default:
        st = lnorm::try_batch_norm_backward_nd<T, W>(4, shape, s.channel_axis(), dys, xs, mean.data(), rstd.data(), g,
                                                     dxs, dg, db, ws);
    }
    return st;
  }
  std::size_t workspace_size(int threads) const {
    i64 shape[4];
    s.api_shape(shape);
    return lnorm::channel_norm_backward_workspace_size<T>(4, shape, s.channel_axis(), s.groups(), is_batch(s.k), dy.api_st,
                                                          x.api_st, dx.api_st, threads);
  }
};

struct backward_ref {
  std::vector<double> dx, dx_scale, dgamma, dbeta, dgamma_scale, dbeta_scale;
};

/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = gamma * dy, per unit; dgamma = sum(dy * xhat),
/// dbeta = sum(dy) per channel; with the given (stored) mean and rstd.
template <class T, class W>
backward_ref reference_backward(const backward_run<T, W>& b) {
  const spec& s = b.s;
  const dims& d = s.d;
  const std::vector<double> x = b.x.values(), dy = b.dy.values();
  const std::size_t U = static_cast<std::size_t>(s.units());
  std::vector<double> mg(U, 0), mgx(U, 0), ag(U, 0), agx(U, 0);
  backward_ref r;
  r.dx.assign(x.size(), 0);
  r.dx_scale.assign(x.size(), 0);
  r.dgamma.assign(static_cast<std::size_t>(d.C), 0);
  r.dbeta = r.dgamma;
  r.dgamma_scale = r.dgamma;
  r.dbeta_scale = r.dgamma;
  auto each = [&](auto&& f) {
    for (i64 n = 0; n < d.N; ++n)
      for (i64 c = 0; c < d.C; ++c)
        for (i64 h = 0; h < d.H; ++h)
          for (i64 w = 0; w < d.W; ++w) {
            const std::size_t u = static_cast<std::size_t>(s.unit_of(n, c));
            const std::size_t i = static_cast<std::size_t>(d.flat(n, c, h, w));
            const double gm = s.gamma ? to_double(b.gamma[static_cast<std::size_t>(c)]) : 1.0;
            const double xh = (x[i] - static_cast<double>(b.mean[u])) * static_cast<double>(b.rstd[u]);
            f(static_cast<std::size_t>(c), u, i, gm * dy[i], xh);
          }
  };
  const double cnt = static_cast<double>(s.unit_count());
  each([&](std::size_t c, std::size_t u, std::size_t i, double g, double xh) {
    mg[u] += g / cnt;
    mgx[u] += g * xh / cnt;
    ag[u] += std::fabs(g) / cnt;
    agx[u] += std::fabs(g * xh) / cnt;
    r.dgamma[c] += dy[i] * xh;
    r.dbeta[c] += dy[i];
    r.dgamma_scale[c] += std::fabs(dy[i] * xh);
    r.dbeta_scale[c] += std::fabs(dy[i]);
  });
  each([&](std::size_t, std::size_t u, std::size_t i, double g, double xh) {
    const double rs = static_cast<double>(b.rstd[u]);
    r.dx[i] = rs * (g - mg[u] - xh * mgx[u]);
    r.dx_scale[i] = rs * (std::fabs(g) + ag[u] + std::fabs(xh) * agx[u]);
  });
  return r;
}

template <class T, class W>
void check_backward(test_case& t, const backward_run<T, W>& b, const backward_ref& r) {
  const spec& s = b.s;
  LNORM_CHECK(t, b.st, "refused: %s", b.st.message);
  if (!b.st) return;
  const double uT = type_facts<T>::unit_roundoff, uW = type_facts<W>::unit_roundoff, uC = calc_roundoff<T>();
  const double floor = 4 * type_facts<T>::abs_floor + 1e-300;
  const std::vector<double> dx = b.dx.values();
  long bad = 0;
  const double grow = growth(s.unit_count());
  for (std::size_t i = 0; i < dx.size(); ++i) {
    const double tol = 2 * uT * std::fabs(r.dx[i]) + 16 * uC * grow * r.dx_scale[i] + floor;
    if (!close(dx[i], r.dx[i], tol) && ++bad <= 3) t.fail("dx[%zu] = %.9g, want %.9g (tol %.3g)", i, dx[i], r.dx[i], tol);
    else if (tol > 0 && !std::isnan(r.dx[i])) note_ratio((std::string("channel backward dx ") + type_facts<T>::name).c_str(), std::fabs(dx[i] - r.dx[i]) / tol);
  }
  LNORM_CHECK(t, bad == 0, "%ld elements of dx off", bad);
  LNORM_CHECK(t, b.dx.stray_writes() == 0, "elements outside dx's view written");
  const double cgrow = growth(s.d.N * s.d.H * s.d.W);
  for (std::size_t c = 0; c < r.dgamma.size(); ++c) {
    if (b.want_dgamma) {
      const double got = to_double(b.dgamma[c]);
      LNORM_CHECK(t, close(got, r.dgamma[c], 2 * uW * std::fabs(r.dgamma[c]) + 16 * uC * cgrow * r.dgamma_scale[c] + 1e-300),
                  "dgamma[%zu] = %.9g, want %.9g", c, got, r.dgamma[c]);
    }
    if (b.want_dbeta) {
      const double got = to_double(b.dbeta[c]);
      LNORM_CHECK(t, close(got, r.dbeta[c], 2 * uW * std::fabs(r.dbeta[c]) + 16 * uC * cgrow * r.dbeta_scale[c] + 1e-300),
                  "dbeta[%zu] = %.9g, want %.9g", c, got, r.dbeta[c]);
    }
  }
}

template <class T, class W>
void backward_case(const spec& s, bool want_dgamma, bool want_dbeta) {
  backward_run<T, W> proto(s);
  proto.want_dgamma = want_dgamma;
  proto.want_dbeta = want_dbeta;
  const backward_ref r = reference_backward(proto);
  for (isa i : tested_isas()) {
    use_isa(i);
    backward_run<T, W> b = proto;
    test_case t(describe(s, type_facts<T>::name, type_facts<W>::name, i, "backward"));
    b.call();
    check_backward(t, b, r);
    if (!want_dgamma) LNORM_CHECK(t, same_bits(b.dgamma, proto.dgamma), "dgamma written though null");
  }
}

// ---- the sweeps ----------------------------------------------------------------------------------------

struct shape_case {
  i64 N, C, H, W, G;
};
// Spatial sizes around the vector widths (1..65 pixels), channels 1, 3, 16, 17, 64, several groups.
constexpr shape_case kShapes[] = {
    {2, 1, 1, 1, 1},   {3, 3, 1, 7, 1},    {2, 3, 3, 5, 3},   {2, 16, 4, 4, 4},  {2, 16, 1, 17, 16}, {2, 17, 1, 31, 17},
    {1, 17, 33, 1, 1}, {2, 64, 1, 65, 8},  {2, 64, 3, 5, 32}, {2, 16, 1, 1, 2},  {1, 3, 15, 1, 3},   {2, 16, 2, 8, 1},
    {3, 17, 1, 3, 1},  {2, 64, 1, 16, 64}, {2, 3, 1, 33, 1},  {2, 16, 31, 1, 8},
};
constexpr double kEps[] = {1e-5, 0.0, 10.0, 1e-3};

template <class T, class W>
void sweep_forward() {
  std::uint64_t seed = 100;
  int idx = 0;
  for (const shape_case& sc : kShapes)
    for (kind k : kKinds)
      for (lay l : kLays) {
        spec s;
        s.d = {sc.N, sc.C, sc.H, sc.W};
        s.G = sc.G;
        s.k = k;
        s.l = l;
        s.seed = ++seed;
        s.act = static_cast<activation>(idx % 3);
        s.eps = kEps[(idx / 3) % 4];
        s.gamma = (idx / 2) % 4 == 1 || (idx / 2) % 4 == 3;
        s.beta = (idx / 2) % 4 >= 2;
        s.in_place = l != lay::gather_mixed && idx % 5 == 0;
        s.momentum = idx % 7 == 0 ? 1.0 : 0.1;
        ++idx;
        if (k == kind::batch_train && s.unit_count() < 2) continue;  // no unbiased variance
        forward_case<T, W>(s);
      }
}

/// Large means, constant groups, NaN groups: fewer shapes, every layout and norm.
template <class T, class W>
void sweep_special() {
  constexpr shape_case shapes[] = {{2, 16, 3, 7, 4}, {2, 17, 1, 33, 17}, {2, 64, 1, 65, 8}, {3, 3, 4, 4, 1}};
  std::uint64_t seed = 5000;
  int idx = 0;
  for (const shape_case& sc : shapes)
    for (kind k : kKinds)
      for (lay l : kLays)
        for (data what : {data::large_mean, data::constant_group, data::nan_group}) {
          spec s;
          s.d = {sc.N, sc.C, sc.H, sc.W};
          s.G = sc.G;
          s.k = k;
          s.l = l;
          s.seed = ++seed;
          s.what = what;
          s.gamma = true;
          s.beta = idx % 2 == 0;
          s.act = what == data::constant_group ? activation::none : static_cast<activation>(idx % 3);
          s.eps = what == data::constant_group ? (idx % 3 == 0 ? 1e-5 : 0.0) : kEps[idx % 3];
          s.ratio = idx % 2 ? 1e4 : 1e5;
          s.in_place = l == lay::planar && idx % 3 == 0;
          ++idx;
          if (what == data::large_mean && !(std::is_same_v<T, float> || std::is_same_v<T, double>)) continue;
          if (k == kind::batch_eval && what != data::nan_group) continue;  // its statistics are given
          forward_case<T, W>(s);
        }
}

/// A first pixel far out, on the pixels path with many pixels.
template <class T, class W>
void sweep_far_first() {
  std::uint64_t seed = 7000;
  for (kind k : {kind::group, kind::instance, kind::batch_train})
    for (lay l : {lay::pixels, lay::pixels_last}) {
      spec s;
      s.d = {2, 16, 40, 41};
      s.G = 4;
      s.k = k;
      s.l = l;
      s.seed = ++seed;
      s.what = data::far_first;
      forward_case<T, W>(s);
    }
}

template <class T, class W>
void sweep_backward() {
  std::uint64_t seed = 9000;
  int idx = 0;
  for (const shape_case& sc : kShapes)
    for (kind k : {kind::group, kind::instance, kind::batch_train})
      for (lay l : kLays) {
        spec s;
        s.d = {sc.N, sc.C, sc.H, sc.W};
        s.G = sc.G;
        s.k = k;
        s.l = l;
        s.seed = ++seed;
        s.eps = idx % 4 == 1 ? 10.0 : 1e-5;
        s.gamma = idx % 3 != 0;
        s.what = (std::is_same_v<T, float> || std::is_same_v<T, double>) && idx % 5 == 2 ? data::large_mean : data::random;
        ++idx;
        backward_case<T, W>(s, idx % 4 != 0, idx % 4 != 1);
      }
}

// ---- thread counts and the engine pool: the same bits -----------------------------------------------

template <class T, class W>
void check_threads() {
  const dims d{2, 32, 40, 40};  // 102400 elements: 3 workers on 3 threads
  engine_pool pool(3);
  for (isa i : tested_isas()) {
    use_isa(i);
    for (lay l : {lay::planar, lay::pixels, lay::gather_stepped, lay::gather_mixed})
      for (kind k : {kind::group, kind::batch_train, kind::batch_eval}) {
        spec s;
        s.d = d;
        s.G = 8;
        s.k = k;
        s.l = l;
        s.act = activation::silu;
        s.seed = 77 + static_cast<std::uint64_t>(l) * 5 + static_cast<std::uint64_t>(k);
        test_case t(describe(s, type_facts<T>::name, type_facts<W>::name, i, "threads 1/2/3/pool"));
        forward_run<T, W> base(s);
        backward_run<T, W> bbase(s);
        forward_run<T, W> one = base;
        backward_run<T, W> bone = bbase;
        lnorm::set_num_threads(1);
        one.call();
        if (k != kind::batch_eval) bone.call();
        LNORM_CHECK(t, one.st && (k == kind::batch_eval || bone.st), "refused: %s %s", one.st.message, bone.st.message);
        int most_workers = 0;
        for (int how = 2; how <= 4; ++how) {  // 2, 3 threads; 4: the engine pool of 3
          if (how == 4) lnorm::set_thread_pool({&pool, &engine_pool::run, pool.size()});
          else lnorm::set_num_threads(how);
          forward_run<T, W> f = base;
          f.call();
          most_workers = std::max(most_workers, lnorm::last_call().workers);
          LNORM_CHECK(t, same_bits(f.out().mem_, one.out().mem_) && same_bits(f.mean, one.mean) && same_bits(f.rstd, one.rstd) &&
                             same_bits(f.rm, one.rm) && same_bits(f.rv, one.rv),
                      "forward on %s differs from 1 thread", how == 4 ? "the pool" : how == 2 ? "2 threads" : "3 threads");
          if (k != kind::batch_eval) {
            backward_run<T, W> b = bbase;
            b.call();
            most_workers = std::max(most_workers, lnorm::last_call().workers);
            LNORM_CHECK(t, same_bits(b.dx.mem_, bone.dx.mem_) && same_bits(b.dgamma, bone.dgamma) && same_bits(b.dbeta, bone.dbeta),
                        "backward on %s differs from 1 thread", how == 4 ? "the pool" : how == 2 ? "2 threads" : "3 threads");
          }
          if (how == 4) lnorm::set_thread_pool({});
        }
        LNORM_CHECK(t, most_workers >= 2, "never ran on more than %d worker", most_workers);
      }
  }
  lnorm::set_thread_pool({});
  lnorm::set_num_threads(1);
}

// ---- workspace -------------------------------------------------------------------------------------------

template <class T, class W>
void check_workspace() {
  engine_pool pool(2);
  for (lay l : {lay::planar, lay::pixels, lay::pixels_last, lay::gather_stepped, lay::gather_mixed})
    for (kind k : kKinds)
      for (int how = 1; how <= 3; ++how) {  // 1, 2 threads, the engine pool of 2
        spec s;
        s.d = {2, 16, 40, 41};  // 2 workers; the pixels path's chunks
        s.G = 4;
        s.k = k;
        s.l = l;
        s.act = activation::relu;
        s.seed = 300 + static_cast<std::uint64_t>(how);
        if (how == 3) lnorm::set_thread_pool({&pool, &engine_pool::run, pool.size()});
        else lnorm::set_num_threads(how);
        test_case t(describe(s, type_facts<T>::name, type_facts<W>::name, lnorm::current_isa(),
                             how == 3 ? "workspace (pool)" : how == 2 ? "workspace (2 threads)" : "workspace (1 thread)"));
        // Forward.
        forward_run<T, W> proto(s);
        // One channel's first pixel far out: the pixels path's second pass around the channel means.
        proto.x.at(0, 3, 0, 0) = from_double<T>(40.0);
        forward_run<T, W> plain = proto, with = proto, short_ = proto, null_ = proto;
        const long allocating = allocations_during([&] { plain.call(); });
        LNORM_CHECK(t, plain.st, "refused: %s", plain.st.message);
        LNORM_CHECK(t, allocating > 0, "the call without a workspace allocated nothing: is the counter working?");
        const std::size_t bytes = proto.workspace_size(0);
        LNORM_CHECK(t, bytes > 0, "the query says 0 bytes");
        std::vector<unsigned char> arena(bytes + 1);
        const lnorm::workspace ws{arena.data() + 1, bytes};  // misaligned on purpose
        const long n = allocations_during([&] { with.call(&ws); });
        LNORM_CHECK(t, with.st, "refused with the workspace: %s", with.st.message);
        LNORM_CHECK(t, n == 0, "%ld allocations with a workspace of the query's %zu bytes", n, bytes);
        LNORM_CHECK(t, same_bits(with.out().mem_, plain.out().mem_) && same_bits(with.mean, plain.mean) &&
                           same_bits(with.rstd, plain.rstd) && same_bits(with.rm, plain.rm) && same_bits(with.rv, plain.rv),
                    "results with the workspace differ");
        const lnorm::workspace small{arena.data(), bytes - 1};
        short_.call(&small);
        LNORM_CHECK(t, short_.st.code == status_code::workspace_too_small && std::strncmp(short_.st.message, "workspace:", 10) == 0,
                    "a workspace one byte short: code %d, %s", static_cast<int>(short_.st.code), short_.st.message);
        LNORM_CHECK(t, same_bits(short_.out().mem_, proto.out().mem_) && same_bits(short_.mean, proto.mean) &&
                           same_bits(short_.rm, proto.rm) && same_bits(short_.rv, proto.rv),
                    "a workspace one byte short: something written");
        const lnorm::workspace nul{nullptr, bytes};
        null_.call(&nul);
        LNORM_CHECK(t, null_.st.code == status_code::invalid_argument && std::strncmp(null_.st.message, "workspace:", 10) == 0,
                    "null workspace data: code %d, %s", static_cast<int>(null_.st.code), null_.st.message);
        LNORM_CHECK(t, same_bits(null_.out().mem_, proto.out().mem_), "null workspace data: y written");
        // Backward.
        if (k != kind::batch_eval) {
          backward_run<T, W> bp(s);
          backward_run<T, W> bplain = bp, bwith = bp, bshort = bp;
          bplain.call();
          const std::size_t bb = bp.workspace_size(0);
          std::vector<unsigned char> barena(bb);
          const lnorm::workspace bws{barena.data(), bb};
          const long bn = allocations_during([&] { bwith.call(&bws); });
          LNORM_CHECK(t, bwith.st && bn == 0, "backward with the workspace: %ld allocations, %s", bn, bwith.st.message);
          LNORM_CHECK(t, same_bits(bwith.dx.mem_, bplain.dx.mem_) && same_bits(bwith.dgamma, bplain.dgamma) &&
                             same_bits(bwith.dbeta, bplain.dbeta),
                      "backward results with the workspace differ");
          const lnorm::workspace bsmall{barena.data(), bb - 1};
          bshort.call(&bsmall);
          LNORM_CHECK(t, bshort.st.code == status_code::workspace_too_small && same_bits(bshort.dx.mem_, bp.dx.mem_) &&
                             same_bits(bshort.dgamma, bp.dgamma) && same_bits(bshort.dbeta, bp.dbeta),
                      "backward, a workspace one byte short: code %d, or something written", static_cast<int>(bshort.st.code));
        }
        if (how == 3) lnorm::set_thread_pool({});
      }
  lnorm::set_thread_pool({});
  lnorm::set_num_threads(1);
}

// ---- refused arguments ----------------------------------------------------------------------------------

/// Expects invalid_argument with a message starting with `name` and nothing written.
template <class R>
void expect_refused(const char* what, const char* name, R& run, const R& proto) {
  test_case t(std::string("refused: ") + what);
  LNORM_CHECK(t, run.st.code == status_code::invalid_argument, "accepted or wrong code %d (%s)", static_cast<int>(run.st.code),
              run.st.message);
  const std::size_t n = std::strlen(name);
  LNORM_CHECK(t, std::strncmp(run.st.message, name, n) == 0 && run.st.message[n] == ':', "message \"%s\", want \"%s: ...\"",
              run.st.message, name);
  if constexpr (std::is_same_v<R, forward_run<float, float>>) {
    LNORM_CHECK(t, same_bits(run.x.mem_, proto.x.mem_) && same_bits(run.y.mem_, proto.y.mem_) && same_bits(run.mean, proto.mean) &&
                       same_bits(run.rstd, proto.rstd) && same_bits(run.rm, proto.rm) && same_bits(run.rv, proto.rv),
                "something written");
  } else {
    LNORM_CHECK(t, same_bits(run.dx.mem_, proto.dx.mem_) && same_bits(run.dy.mem_, proto.dy.mem_) &&
                       same_bits(run.dgamma, proto.dgamma) && same_bits(run.dbeta, proto.dbeta),
                "something written");
  }
}

void check_statuses() {
  using F = forward_run<float, float>;
  using B = backward_run<float, float>;
  spec base;
  base.d = {2, 16, 3, 5};
  base.G = 4;
  for (lay l : {lay::planar, lay::pixels}) {
    base.l = l;
    const std::string at = std::string(" (") + lay_name(l) + ")";
    auto forward = [&](const char* what, const char* name, auto&& change, kind k = kind::group) {
      spec s = base;
      s.k = k;
      F proto(s);
      F run = proto;
      change(run);
      expect_refused((what + at).c_str(), name, run, proto);
    };
    i64 shape[4];
    base.api_shape(shape);
    const auto group_call = [&](F& r, int ndim, int axis, i64 groups) {
      r.st = lnorm::try_group_norm_nd<float>(ndim, shape, axis, groups, {r.x.data(), r.x.api_st}, {r.y.data(), r.y.api_st},
                                             r.gamma.data(), r.beta.data(), 1e-5, activation::none, r.mean.data(), r.rstd.data());
    };
    forward("groups 0", "groups", [&](F& r) { group_call(r, 4, 1, 0); });
    forward("groups -2", "groups", [&](F& r) { group_call(r, 4, 1, -2); });
    forward("groups 5 of 16 channels", "groups", [&](F& r) { group_call(r, 4, 1, 5); });
    forward("groups 32 of 16 channels", "groups", [&](F& r) { group_call(r, 4, 1, 32); });
    forward("channel_axis 0", "channel_axis", [&](F& r) { group_call(r, 4, 0, 4); });
    forward("channel_axis 4", "channel_axis", [&](F& r) { group_call(r, 4, 4, 4); });
    forward("channel_axis -4", "channel_axis", [&](F& r) { group_call(r, 4, -4, 4); });
    forward("channel_axis -5", "channel_axis", [&](F& r) { group_call(r, 4, -5, 4); });
    forward("ndim 1", "shape", [&](F& r) { group_call(r, 1, 0, 1); });
    forward("ndim 0", "shape", [&](F& r) { group_call(r, 0, 1, 1); });
    forward("instance_norm ndim 1", "shape", [&](F& r) {
      r.st = lnorm::try_instance_norm_nd<float>(1, shape, 0, {r.x.data(), r.x.api_st}, {r.y.data(), r.y.api_st}, nullptr, nullptr, 1e-5);
    });
    forward("batch_norm channel_axis 0", "channel_axis", [&](F& r) {
      r.st = lnorm::try_batch_norm_nd<float>(4, shape, 0, {r.x.data(), r.x.api_st}, {r.y.data(), r.y.api_st}, nullptr, nullptr, 1e-5,
                                             true, 0.1, r.rm.data(), r.rv.data());
    });
    for (double eps : {-1.0, -1e-30, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()})
      for (kind k : kKinds) {
        spec s = base;
        s.k = k;
        s.eps = eps;
        F proto(s);
        F run = proto;
        run.call();
        char what[96];
        std::snprintf(what, sizeof what, "%s eps %g", kind_name(k), eps);
        expect_refused((what + at).c_str(), "eps", run, proto);
      }
    for (kind k : kKinds) {
      spec s = base;
      s.k = k;
      s.act = static_cast<activation>(7);
      F proto(s);
      F run = proto;
      run.call();
      expect_refused((std::string(kind_name(k)) + " activation 7" + at).c_str(), "activation", run, proto);
      s.act = static_cast<activation>(-1);
      F run2 = proto;
      run2.s.act = s.act;
      run2.call();
      expect_refused((std::string(kind_name(k)) + " activation -1" + at).c_str(), "activation", run2, proto);
    }
    for (double m : {std::numeric_limits<double>::quiet_NaN(), -0.5, 1.5}) {
      spec s = base;
      s.k = kind::batch_train;
      s.momentum = m;
      F proto(s);
      F run = proto;
      run.call();
      char what[64];
      std::snprintf(what, sizeof what, "batch_norm training momentum %g", m);
      expect_refused((what + at).c_str(), "momentum", run, proto);
    }
    for (int which = 0; which < 3; ++which) {
      spec s = base;
      s.k = kind::batch_eval;
      F proto(s);
      F run = proto;
      // which 0: no running_mean; 1: no running_var; 2: neither.
      run.st = lnorm::try_batch_norm_nd<float>(4, shape, s.channel_axis(), {run.x.data(), run.x.api_st}, {run.y.data(), run.y.api_st},
                                               nullptr, nullptr, 1e-5, false, 0.1, which != 1 ? nullptr : run.rm.data(),
                                               which != 0 ? nullptr : run.rv.data());
      expect_refused((std::string("batch_norm eval without running statistics ") + std::to_string(which) + at).c_str(),
                     "running_mean", run, proto);
    }
    // y partially overlapping x: x's buffer, one element on.
    for (kind k : {kind::group, kind::batch_train}) {
      spec s = base;
      s.k = k;
      F proto(s);
      F run = proto;
      run.y.mem_ = run.x.mem_;  // only to compare: y's buffer is not used
      i64 sh[4];
      s.api_shape(sh);
      const lnorm::strided xs{run.x.data(), run.x.api_st}, ys{run.x.data() + 1, run.x.api_st};
      if (k == kind::group)
        run.st = lnorm::try_group_norm_nd<float>(4, sh, 1, 4, xs, ys, nullptr, nullptr, 1e-5);
      else
        run.st = lnorm::try_batch_norm_nd<float>(4, sh, 1, xs, ys, nullptr, nullptr, 1e-5, true, 0.1, run.rm.data(), run.rv.data());
      F cmp = proto;
      cmp.y.mem_ = proto.x.mem_;
      expect_refused((std::string(kind_name(k)) + " y overlapping x one element on" + at).c_str(), "y", run, cmp);
    }
    // The backward: dx == dy, dx overlapping x, groups, channel_axis.
    for (kind k : {kind::group, kind::instance, kind::batch_train}) {
      spec s = base;
      s.k = k;
      B proto(s);
      auto backward = [&](const char* what, const char* name, auto&& change) {
        B run = proto;
        change(run);
        expect_refused((std::string(kind_name(k)) + " backward " + what + at).c_str(), name, run, proto);
      };
      backward("dx == dy", "dx", [&](B& r) {
        i64 sh[4];
        s.api_shape(sh);
        const lnorm::strided dys{r.dy.data(), r.dy.api_st}, xs{r.x.data(), r.x.api_st};
        r.st = lnorm::try_group_norm_backward_nd<float>(4, sh, s.channel_axis(), s.groups(), dys, xs, r.mean.data(), r.rstd.data(),
                                                        nullptr, dys, r.dgamma.data(), r.dbeta.data());
        if (is_batch(k))
          r.st = lnorm::try_batch_norm_backward_nd<float>(4, sh, s.channel_axis(), dys, xs, r.mean.data(), r.rstd.data(), nullptr,
                                                          dys, r.dgamma.data(), r.dbeta.data());
      });
      backward("dx overlapping x", "dx", [&](B& r) {
        i64 sh[4];
        s.api_shape(sh);
        const lnorm::strided dys{r.dy.data(), r.dy.api_st}, xs{r.x.data(), r.x.api_st}, dxs{r.x.data() + 2, r.x.api_st};
        r.st = lnorm::try_instance_norm_backward_nd<float>(4, sh, s.channel_axis(), dys, xs, r.mean.data(), r.rstd.data(),
                                                           nullptr, dxs, r.dgamma.data(), r.dbeta.data());
        if (!same_bits(r.x.mem_, proto.x.mem_)) r.dgamma.assign(1, 0);  // x written: fail
      });
      backward("groups 3", "groups", [&](B& r) {
        i64 sh[4];
        s.api_shape(sh);
        r.st = lnorm::try_group_norm_backward_nd<float>(4, sh, s.channel_axis(), 3, {r.dy.data(), r.dy.api_st}, {r.x.data(), r.x.api_st},
                                                        r.mean.data(), r.rstd.data(), nullptr, {r.dx.data(), r.dx.api_st},
                                                        r.dgamma.data(), r.dbeta.data());
      });
      backward("channel_axis 0", "channel_axis", [&](B& r) {
        i64 sh[4];
        s.api_shape(sh);
        r.st = lnorm::try_batch_norm_backward_nd<float>(4, sh, 0, {r.dy.data(), r.dy.api_st}, {r.x.data(), r.x.api_st}, r.mean.data(),
                                                        r.rstd.data(), nullptr, {r.dx.data(), r.dx.api_st}, r.dgamma.data(),
                                                        r.dbeta.data());
      });
    }
  }
  {
    // An empty tensor is accepted and writes nothing; the backward zeroes dgamma and dbeta.
    test_case t("empty tensor");
    const i64 shape[4] = {0, 4, 3, 3}, st[4] = {36, 9, 3, 1};
    float x = 5, y = 6, dgm[4] = {9, 9, 9, 9}, dbt[4] = {9, 9, 9, 9}, mean = 1, rstd = 1;
    const lnorm::status s = lnorm::try_group_norm_nd<float>(4, shape, 1, 2, {&x, st}, {&y, st}, nullptr, nullptr, 1e-5);
    LNORM_CHECK(t, s && y == 6, "empty forward: %s", s.message);
    const lnorm::status b = lnorm::try_group_norm_backward_nd<float>(4, shape, 1, 2, {&x, st}, {&x, st}, &mean, &rstd, nullptr,
                                                                     {&y, st}, dgm, dbt);
    LNORM_CHECK(t, b && y == 6 && dgm[3] == 0 && dbt[0] == 0, "empty backward: %s", b.message);
  }
}

// ---- the running statistics: momentum 0 keeps them, 1 replaces them; eval uses them -------------------

void check_running() {
  test_case t("batch_norm running statistics: momentum 0 and 1, then eval");
  spec s;
  s.d = {3, 5, 2, 7};
  s.k = kind::batch_train;
  s.momentum = 0.0;
  forward_run<float, float> keep(s);
  const auto rm0 = keep.rm, rv0 = keep.rv;
  keep.call();
  LNORM_CHECK(t, keep.st && keep.rm == rm0 && keep.rv == rv0, "momentum 0 changed the running statistics");
  s.momentum = 1.0;
  forward_run<float, float> take(s);
  take.call();
  const double n = 3 * 2 * 7;
  for (std::size_t c = 0; c < 5; ++c) {
    const double var = 1.0 / (static_cast<double>(take.rstd[c]) * static_cast<double>(take.rstd[c])) - s.eps;
    LNORM_CHECK(t, take.rm[c] == take.mean[c], "momentum 1: running_mean[%zu] %g is not the batch mean %g", c,
                static_cast<double>(take.rm[c]), static_cast<double>(take.mean[c]));
    LNORM_CHECK(t, std::fabs(take.rv[c] - var * n / (n - 1)) <= 1e-5 * var, "momentum 1: running_var[%zu] %g, want %g", c,
                static_cast<double>(take.rv[c]), var * n / (n - 1));
  }
  // Eval with the updated statistics of a training call normalizes as training did (same mean,
  // the biased variance given back as running_var).
  s.k = kind::batch_eval;
  forward_run<float, float> ev(s);
  for (std::size_t c = 0; c < 5; ++c) {
    ev.rm[c] = take.mean[c];
    ev.rv[c] = static_cast<float>(1.0 / (static_cast<double>(take.rstd[c]) * static_cast<double>(take.rstd[c])) - s.eps);
  }
  ev.call();
  LNORM_CHECK(t, ev.st, "eval refused: %s", ev.st.message);
  const auto a = ev.y.values(), b = take.y.values();
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!LNORM_CHECK(t, std::fabs(a[i] - b[i]) <= 1e-5 * (1 + std::fabs(b[i])), "eval y[%zu] = %g, training gave %g", i, a[i], b[i]))
      break;
}

template <class T, class W>
void all_for() {
  sweep_forward<T, W>();
  sweep_special<T, W>();
  sweep_far_first<T, W>();
  sweep_backward<T, W>();
  check_threads<T, W>();
  check_workspace<T, W>();
}

}  // namespace
}  // namespace lnorm_test

int main() {
  using namespace lnorm_test;
  const auto start = std::chrono::steady_clock::now();
  std::printf("lnorm %s channel tests: kernel sets", LNORM_VERSION_STRING);
  for (isa i : tested_isas()) std::printf(" %s", lnorm::isa_name(i));
  std::printf("; openmp %s\n", lnorm::openmp_enabled() ? "on" : "off");
  const isa initial = lnorm::current_isa();
  lnorm::set_num_threads(1);
  all_for<float, float>();
  all_for<double, double>();
  all_for<double, float>();
  all_for<lnorm::float16_t, lnorm::float16_t>();
  all_for<lnorm::float16_t, float>();
  all_for<lnorm::bfloat16_t, lnorm::bfloat16_t>();
  all_for<lnorm::bfloat16_t, float>();
  use_isa(initial);
  check_statuses();
  check_running();
  if (std::getenv("LNORM_TEST_VERBOSE"))
    for (const auto& w : results().worst) std::printf("  worst %-24s %.3f of its tolerance\n", w.first.c_str(), w.second);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%.1f s\n", secs);
  std::printf("%ld passed, %ld failed\n", results().passed, results().failed);
  return results().failed == 0 ? 0 : 1;
}
