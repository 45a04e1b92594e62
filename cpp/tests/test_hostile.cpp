// cpp/tests/test_hostile.cpp: every C++ entry point of lnorm against hostile arguments
// (lnorm_hostile_tests). Null pointers (refused with rows, accepted without), negative and overflowing
// sizes and strides, outputs that overlap themselves (ld_y < cols, zero strides), every overlapping
// pair of an output with an input or another output (refused, naming the output, nothing written),
// the exact aliasings a call allows (bit for bit the out-of-place result, on every layout), disjoint
// interleaved views of one buffer (accepted and right), workspace{nullptr, n}, eps of every kind
// (huge finite eps gives its limit), the thread bound, what last_call() says ran (every kernel set
// of this CPU, and two threads where two workers were planned), and set_thread_pool swapped while
// another thread runs calls. The overlap test itself is checked against brute force.
//
// Prints one line per section and "N passed, M failed" (LNORM_HOSTILE_SECTIONS picks sections by the
// start of their names). With LNORM_HOSTILE_FORK=1 each section runs in a child process, so that a
// crash fails its section instead of ending the program: how the program is run against older
// headers, built with -DLNORM_HOSTILE_OLD_API, which leaves out the checks of API they lack.
#include "harness.hpp"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <limits>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/wait.h>
#include <unistd.h>
#define LNORM_HOSTILE_CAN_FORK 1
#endif

namespace lnorm_test {
namespace {

using lnorm::isa;
using lnorm::stat_t;
using lnorm::status;
using lnorm::status_code;

#if defined(LNORM_HOSTILE_OLD_API)
constexpr int kMaxThreads = 1024;
#else
constexpr int kMaxThreads = lnorm::kMaxThreads;
#endif

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr std::int64_t kMaxI64 = std::numeric_limits<std::int64_t>::max();

// ---- the names status messages may start with ------------------------------------------------------

const char* const kNames[] = {"x",  "residual", "bias_in", "s",     "y",     "gamma", "beta",       "mean",
                              "rstd", "dy",     "dx",      "dgamma", "dbeta", "rows",  "cols",       "shape",
                              "normalized", "axis", "eps", "workspace"};

std::set<std::string>& messages_seen() {
  static std::set<std::string> seen;
  return seen;
}

/// Whether `message` starts with "<name>:" for `name` (or any known name, for name null).
bool names(const char* message, const char* name = nullptr) {
  if (!message) return false;
  messages_seen().insert(message);
  const std::string m = message;
  if (name) return m.rfind(std::string(name) + ":", 0) == 0;
  for (const char* n : kNames)
    if (m.rfind(std::string(n) + ":", 0) == 0) return true;
  return false;
}

bool refused(const status& s, const char* name) {
  return s.code == status_code::invalid_argument && names(s.message, name);
}

const char* message_of(const status& s) { return s.message ? s.message : "(null)"; }

// ---- one 2-d problem, through any entry point ---------------------------------------------------------

/// The C++ entry points that take arrays: the N-d calls, the row-strided calls over them, the
/// row-range calls, and the throwing wrappers.
enum class entry {
  nd_layer, nd_rms, nd_add_layer, nd_add_rms, nd_back_layer, nd_back_rms,
  try_layer, try_rms,
  rows_layer, rows_rms, rows_add_layer, rows_add_rms, rows_back_layer, rows_back_rms,
  throw_layer, throw_rms,
};
constexpr entry kEntries[] = {entry::nd_layer,       entry::nd_rms,       entry::nd_add_layer,  entry::nd_add_rms,
                              entry::nd_back_layer,  entry::nd_back_rms,  entry::try_layer,     entry::try_rms,
                              entry::rows_layer,     entry::rows_rms,     entry::rows_add_layer, entry::rows_add_rms,
                              entry::rows_back_layer, entry::rows_back_rms, entry::throw_layer,  entry::throw_rms};

const char* entry_name(entry e) {
  switch (e) {
    case entry::nd_layer: return "try_layer_norm_nd";
    case entry::nd_rms: return "try_rms_norm_nd";
    case entry::nd_add_layer: return "try_add_norm_nd(layer)";
    case entry::nd_add_rms: return "try_add_norm_nd(rms)";
    case entry::nd_back_layer: return "try_norm_backward_nd(layer)";
    case entry::nd_back_rms: return "try_norm_backward_nd(rms)";
    case entry::try_layer: return "try_layer_norm";
    case entry::try_rms: return "try_rms_norm";
    case entry::rows_layer: return "layer_norm_rows";
    case entry::rows_rms: return "rms_norm_rows";
    case entry::rows_add_layer: return "add_norm_rows(layer)";
    case entry::rows_add_rms: return "add_norm_rows(rms)";
    case entry::rows_back_layer: return "norm_backward_rows(layer)";
    case entry::rows_back_rms: return "norm_backward_rows(rms)";
    case entry::throw_layer: return "layer_norm";
    default: return "rms_norm";
  }
}

bool is_nd(entry e) { return e <= entry::nd_back_rms; }
bool is_rows_call(entry e) { return e >= entry::rows_layer && e <= entry::rows_back_rms; }
bool is_throwing(entry e) { return e == entry::throw_layer || e == entry::throw_rms; }
bool is_rms_entry(entry e) {
  return e == entry::nd_rms || e == entry::nd_add_rms || e == entry::nd_back_rms || e == entry::try_rms ||
         e == entry::rows_rms || e == entry::rows_add_rms || e == entry::rows_back_rms || e == entry::throw_rms;
}
bool is_add_entry(entry e) {
  return e == entry::nd_add_layer || e == entry::nd_add_rms || e == entry::rows_add_layer || e == entry::rows_add_rms;
}
bool is_back_entry(entry e) {
  return e == entry::nd_back_layer || e == entry::nd_back_rms || e == entry::rows_back_layer || e == entry::rows_back_rms;
}
// The throwing wrappers take contiguous rows (ld = cols) and no statistics.
bool takes_ld(entry e) { return !is_throwing(e); }
bool takes_stats(entry e) { return !is_throwing(e); }

/// The arrays of the calls, in the order of the C++ parameters.
enum class arr { x, residual, bias_in, s, y, gamma, beta, mean, rstd, dy, dx, dgamma, dbeta };
const char* arr_name(arr a) {
  static const char* const n[] = {"x", "residual", "bias_in", "s", "y", "gamma", "beta", "mean", "rstd", "dy", "dx", "dgamma", "dbeta"};
  return n[static_cast<int>(a)];
}
enum class shape_kind { matrix, cols_vector, rows_vector };

struct array_role {
  arr name;
  bool output;
  shape_kind kind;
};

/// The arrays entry e reads and writes (those it ignores left out), in parameter order.
std::vector<array_role> roles_of(entry e) {
  using k = shape_kind;
  const bool stats = takes_stats(e);
  if (is_back_entry(e)) {
    std::vector<array_role> r = {{arr::dy, false, k::matrix}, {arr::x, false, k::matrix}};
    if (!is_rms_entry(e)) r.push_back({arr::mean, false, k::rows_vector});
    r.push_back({arr::rstd, false, k::rows_vector});
    r.push_back({arr::gamma, false, k::cols_vector});
    r.push_back({arr::dx, true, k::matrix});
    r.push_back({arr::dgamma, true, k::cols_vector});
    // The RMS row-range backward ignores its dbeta accumulator; the N-d one zeroes dbeta.
    if (!(is_rms_entry(e) && is_rows_call(e))) r.push_back({arr::dbeta, true, k::cols_vector});
    return r;
  }
  std::vector<array_role> r = {{arr::x, false, k::matrix}};
  if (is_add_entry(e)) {
    r.push_back({arr::residual, false, k::matrix});
    r.push_back({arr::bias_in, false, k::cols_vector});
    r.push_back({arr::s, true, k::matrix});
  }
  r.push_back({arr::y, true, k::matrix});
  r.push_back({arr::gamma, false, k::cols_vector});
  if (!is_rms_entry(e)) r.push_back({arr::beta, false, k::cols_vector});
  if (stats && !is_rms_entry(e)) r.push_back({arr::mean, true, k::rows_vector});
  if (stats) r.push_back({arr::rstd, true, k::rows_vector});
  return r;
}

/// Whether output o may be exactly input i in entry e (in place).
bool may_alias(entry e, arr o, arr i) {
  if (is_back_entry(e)) return false;
  if (o == arr::y && i == arr::x) return true;
  if (is_add_entry(e) && (o == arr::s || o == arr::y) && (i == arr::x || i == arr::residual)) return true;
  return false;
}

/// A matrix argument: first element, row stride, column stride (the row-range calls take 1 only).
template <class T>
struct mat {
  T* p = nullptr;
  std::int64_t ld = 0, cs = 1;
};

/// Every array any call takes, for one (rows x cols) problem of T (weights T, statistics stat_t<T>).
template <class T>
struct args {
  using S = stat_t<T>;
  std::int64_t rows = 0, cols = 0;
  mat<T> x, residual, s, y, dy, dx;
  T *gamma = nullptr, *beta = nullptr, *bias_in = nullptr, *dgamma = nullptr, *dbeta = nullptr;
  S *mean = nullptr, *rstd = nullptr;
  S *dgamma_acc = nullptr, *dbeta_acc = nullptr;  // the row-range backward's accumulators
  double eps = 1e-5;
  const lnorm::workspace* ws = nullptr;
};

/// Calls entry e on a; a throwing wrapper's exception becomes a status with its message.
template <class T>
status invoke(entry e, const args<T>& a) {
  const std::int64_t shape[2] = {a.rows, a.cols};
  const bool norm[2] = {false, true};
  const std::int64_t sx[2] = {a.x.ld, a.x.cs}, sr[2] = {a.residual.ld, a.residual.cs}, ss[2] = {a.s.ld, a.s.cs},
                     sy[2] = {a.y.ld, a.y.cs}, sdy[2] = {a.dy.ld, a.dy.cs}, sdx[2] = {a.dx.ld, a.dx.cs};
  const bool rms = is_rms_entry(e);
  switch (e) {
    case entry::nd_layer:
      return lnorm::try_layer_norm_nd<T>(2, shape, norm, {a.x.p, sx}, {a.y.p, sy}, a.gamma, a.beta, a.eps, a.mean, a.rstd,
                                         a.ws);
    case entry::nd_rms:
      return lnorm::try_rms_norm_nd<T>(2, shape, norm, {a.x.p, sx}, {a.y.p, sy}, a.gamma, a.eps, a.rstd, a.ws);
    case entry::nd_add_layer:
    case entry::nd_add_rms:
      return lnorm::try_add_norm_nd<T>(rms, 2, shape, norm, {a.x.p, sx}, {a.residual.p, sr}, a.bias_in, {a.s.p, ss},
                                       {a.y.p, sy}, a.gamma, a.beta, a.eps, a.mean, a.rstd, a.ws);
    case entry::nd_back_layer:
    case entry::nd_back_rms:
      return lnorm::try_norm_backward_nd<T>(rms, 2, shape, norm, {a.dy.p, sdy}, {a.x.p, sx}, a.mean, a.rstd, a.gamma,
                                            {a.dx.p, sdx}, a.dgamma, a.dbeta, a.ws);
    case entry::try_layer:
      return lnorm::try_layer_norm<T>(a.x.p, a.x.ld, a.y.p, a.y.ld, a.rows, a.cols, a.gamma, a.beta, a.eps, a.mean, a.rstd);
    case entry::try_rms:
      return lnorm::try_rms_norm<T>(a.x.p, a.x.ld, a.y.p, a.y.ld, a.rows, a.cols, a.gamma, a.eps, a.rstd);
    case entry::rows_layer:
      return lnorm::layer_norm_rows<T>(a.x.p, a.x.ld, a.y.p, a.y.ld, a.rows, a.cols, a.gamma, a.beta, a.eps, a.mean, a.rstd);
    case entry::rows_rms:
      return lnorm::rms_norm_rows<T>(a.x.p, a.x.ld, a.y.p, a.y.ld, a.rows, a.cols, a.gamma, a.eps, a.rstd);
    case entry::rows_add_layer:
    case entry::rows_add_rms:
      return lnorm::add_norm_rows<T>(rms, a.x.p, a.x.ld, a.residual.p, a.residual.ld, a.bias_in, a.s.p, a.s.ld, a.y.p,
                                     a.y.ld, a.rows, a.cols, a.gamma, a.beta, a.eps, a.mean, a.rstd);
    case entry::rows_back_layer:
    case entry::rows_back_rms:
      return lnorm::norm_backward_rows<T>(rms, a.dy.p, a.dy.ld, a.x.p, a.x.ld, a.mean, a.rstd, a.gamma, a.dx.p, a.dx.ld,
                                          a.rows, a.cols, a.dgamma_acc, a.dbeta_acc);
    case entry::throw_layer:
    case entry::throw_rms:
      try {
        if (e == entry::throw_layer) lnorm::layer_norm<T>(a.x.p, a.y.p, a.rows, a.cols, a.gamma, a.beta, a.eps);
        else lnorm::rms_norm<T>(a.x.p, a.y.p, a.rows, a.cols, a.gamma, a.eps);
      } catch (const std::invalid_argument& ex) {
        static thread_local std::string what;
        what = ex.what();
        return {status_code::invalid_argument, what.c_str()};
      } catch (const std::bad_alloc&) {
        return {status_code::out_of_memory, "workspace: out of memory"};
      }
      return {};
  }
  return {};
}

// ---- an arena: every array in its own region, everything compared byte for byte ----------------------

/// One float buffer holding every array of a problem, each in a region of its own (room for any
/// matrix moved onto it), filled with a pattern so that a refused call can be seen to write nothing.
struct arena {
  std::int64_t rows, cols, region;
  std::vector<float> mem;
  arena(std::int64_t r, std::int64_t c) : rows(r), cols(c), region(2 * r * c + 4 * c + 64) {
    mem.resize(static_cast<std::size_t>(region * 13 + 64));
    rng g(static_cast<std::uint64_t>(r * 7919 + c));
    for (float& v : mem) v = static_cast<float>(g.normal());
  }
  float* at(arr a) { return mem.data() + 32 + static_cast<std::int64_t>(a) * region; }

  /// The clean arguments of a problem: every array in its region, rows contiguous, rstd positive.
  args<float> clean() {
    args<float> a;
    a.rows = rows;
    a.cols = cols;
    for (arr m : {arr::x, arr::residual, arr::s, arr::y, arr::dy, arr::dx}) set_mat(a, m, at(m), cols);
    a.gamma = at(arr::gamma);
    a.beta = at(arr::beta);
    a.bias_in = at(arr::bias_in);
    a.mean = at(arr::mean);
    a.rstd = at(arr::rstd);
    a.dgamma = a.dgamma_acc = at(arr::dgamma);
    a.dbeta = a.dbeta_acc = at(arr::dbeta);
    for (std::int64_t i = 0; i < rows; ++i) a.rstd[i] = std::fabs(a.rstd[i]) + 0.5f;
    return a;
  }
  static void set_mat(args<float>& a, arr m, float* p, std::int64_t ld, std::int64_t cs = 1) {
    mat<float>* t = m == arr::x ? &a.x : m == arr::residual ? &a.residual : m == arr::s ? &a.s : m == arr::y ? &a.y
                  : m == arr::dy ? &a.dy : &a.dx;
    t->p = p;
    t->ld = ld;
    t->cs = cs;
  }
};

/// Where array m of `a` starts.
void* where(const args<float>& a, arr m) {
  switch (m) {
    case arr::x: return a.x.p;
    case arr::residual: return a.residual.p;
    case arr::s: return a.s.p;
    case arr::y: return a.y.p;
    case arr::dy: return a.dy.p;
    case arr::dx: return a.dx.p;
    case arr::gamma: return a.gamma;
    case arr::beta: return a.beta;
    case arr::bias_in: return a.bias_in;
    case arr::mean: return a.mean;
    case arr::rstd: return a.rstd;
    case arr::dgamma: return a.dgamma;
    default: return a.dbeta;
  }
}

/// Puts array m of `a` at p (a matrix keeps its strides).
void place(args<float>& a, arr m, float* p) {
  switch (m) {
    case arr::x: a.x.p = p; break;
    case arr::residual: a.residual.p = p; break;
    case arr::s: a.s.p = p; break;
    case arr::y: a.y.p = p; break;
    case arr::dy: a.dy.p = p; break;
    case arr::dx: a.dx.p = p; break;
    case arr::gamma: a.gamma = p; break;
    case arr::beta: a.beta = p; break;
    case arr::bias_in: a.bias_in = p; break;
    case arr::mean: a.mean = p; break;
    case arr::rstd: a.rstd = p; break;
    case arr::dgamma: a.dgamma = a.dgamma_acc = p; break;
    default: a.dbeta = a.dbeta_acc = p; break;
  }
}

/// Array m set to null.
void drop(args<float>& a, arr m) { place(a, m, nullptr); }

// ---- sections ------------------------------------------------------------------------------------------

// Null pointers: refused with rows (naming the array), accepted without (an empty std::vector's data()).
void check_nulls(entry e) {
  {
    arena ar(5, 24);
    for (const array_role& r : roles_of(e)) {
      // Optional arrays (weights, statistics of the forward, dgamma, dbeta) may be null: not tested here.
      const bool required = r.kind == shape_kind::matrix || (is_back_entry(e) && (r.name == arr::mean || r.name == arr::rstd));
      if (!required) continue;
      test_case t(std::string(entry_name(e)) + ": null " + arr_name(r.name) + " with 5 rows");
      args<float> a = ar.clean();
      drop(a, r.name);
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, a);
      LNORM_CHECK(t, refused(s, arr_name(r.name)), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
    test_case t(std::string(entry_name(e)) + ": every pointer null, rows = 0");
    args<float> a;
    a.rows = 0;
    a.cols = 24;
    a.x.ld = a.residual.ld = a.s.ld = a.y.ld = a.dy.ld = a.dx.ld = 24;
    const status s = invoke(e, a);
    LNORM_CHECK(t, s.code == status_code::ok, "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
  }
}

// Negative rows, cols, dimensions; ndim out of range; null shape, normalized, strides.
void check_negative() {
  for (entry e : kEntries) {
    arena ar(5, 24);
    for (int which = 0; which < 3; ++which) {
      args<float> a = ar.clean();
      const char* name = which == 0 ? "rows" : "cols";
      if (which == 0) a.rows = -1;
      else if (which == 1) a.cols = -3;
      else a.cols = 0, name = "cols";
      test_case t(std::string(entry_name(e)) + (which == 0 ? ": rows -1" : which == 1 ? ": cols -3" : ": cols 0"));
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, a);
      // The N-d calls see a 2-d shape: a negative dimension is "shape", an empty normalized axis "axis".
      const char* want = is_nd(e) ? (which == 0 || which == 1 ? "shape" : "axis") : name;
      LNORM_CHECK(t, refused(s, want), "status %d, message '%s' (want '%s:')", static_cast<int>(s.code), message_of(s), want);
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
  }
  test_case t("N-d calls: ndim, shape, normalized, strides");
  float x[64] = {}, y[64] = {};
  const std::int64_t shape[2] = {4, 8}, st[2] = {8, 1}, neg[2] = {4, -8};
  const bool norm[2] = {false, true};
  struct expectation {
    status s;
    const char* name;
  };
  const expectation cases[] = {
      {lnorm::try_layer_norm_nd<float>(0, shape, norm, {x, st}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr), "shape"},
      {lnorm::try_layer_norm_nd<float>(65, shape, norm, {x, st}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr), "shape"},
      {lnorm::try_layer_norm_nd<float>(-2, shape, norm, {x, st}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr), "shape"},
      {lnorm::try_layer_norm_nd<float>(2, nullptr, norm, {x, st}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr), "shape"},
      {lnorm::try_layer_norm_nd<float>(2, neg, norm, {x, st}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr), "shape"},
      {lnorm::try_layer_norm_nd<float>(2, shape, nullptr, {x, st}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr), "normalized"},
      {lnorm::try_layer_norm_nd<float>(2, shape, norm, {x, nullptr}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr), "x"},
      {lnorm::try_rms_norm_nd<float>(2, shape, norm, {x, st}, {y, nullptr}, nullptr, 1e-5, nullptr), "y"},
      {lnorm::try_add_norm_nd<float>(false, 2, shape, norm, {x, st}, {x, nullptr}, nullptr, {y, st}, {y + 32, st}, nullptr,
                                     nullptr, 1e-5, nullptr, nullptr), "residual"},
      {lnorm::try_add_norm_nd<float>(false, 2, shape, norm, {x, st}, {x, st}, nullptr, {y, nullptr}, {y + 32, st}, nullptr,
                                     nullptr, 1e-5, nullptr, nullptr), "s"},
      {lnorm::try_norm_backward_nd<float>(false, 2, shape, norm, {x, nullptr}, {x, st}, x, x, nullptr, {y, st}, nullptr, nullptr),
       "dy"},
      {lnorm::try_norm_backward_nd<float>(true, 2, shape, norm, {x, st}, {x, st}, nullptr, x, nullptr, {y, nullptr}, nullptr,
                                          nullptr), "dx"},
  };
  int k = 0;
  for (const expectation& c : cases) {
    LNORM_CHECK(t, refused(c.s, c.name), "case %d: status %d, message '%s' (want '%s:')", k, static_cast<int>(c.s.code),
                message_of(c.s), c.name);
    ++k;
  }
  for (float v : y) LNORM_CHECK(t, v == 0.0f, "a refused call wrote y");
}

// rows * cols and byte extents that overflow: a status, no UB.
void check_overflow(entry e) {
  {
    arena ar(4, 16);
    {
      test_case t(std::string(entry_name(e)) + ": rows * cols overflows");
      args<float> a = ar.clean();
      a.rows = std::int64_t{1} << 40;
      a.cols = std::int64_t{1} << 40;
      a.x.ld = a.residual.ld = a.s.ld = a.y.ld = a.dy.ld = a.dx.ld = a.cols;
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, a);
      LNORM_CHECK(t, s.code == status_code::invalid_argument && names(s.message), "status %d, message '%s'",
                  static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
    if (!takes_ld(e)) return;
    for (const array_role& r : roles_of(e)) {
      if (r.kind != shape_kind::matrix) continue;
      for (std::int64_t ld : {std::int64_t{1} << 62, kMaxI64, -(std::int64_t{1} << 62), std::numeric_limits<std::int64_t>::min() + 1}) {
        test_case t(std::string(entry_name(e)) + ": " + arr_name(r.name) + " with a row stride of " + std::to_string(ld));
        args<float> a = ar.clean();
        mat<float>* m = r.name == arr::x ? &a.x : r.name == arr::residual ? &a.residual : r.name == arr::s ? &a.s
                      : r.name == arr::y ? &a.y : r.name == arr::dy ? &a.dy : &a.dx;
        m->ld = ld;
        const std::vector<float> before = ar.mem;
        const status s = invoke(e, a);
        LNORM_CHECK(t, refused(s, arr_name(r.name)), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
        LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
      }
    }
  }
}

void check_overflow_nd() {
  test_case t("N-d: a shape whose element count overflows, and the workspace queries");
  float x[16] = {}, y[16] = {};
  const std::int64_t big[3] = {std::int64_t{1} << 32, std::int64_t{1} << 32, 2}, st[3] = {0, 0, 1};
  const std::int64_t empty_big[3] = {std::int64_t{1} << 40, std::int64_t{1} << 40, 0}, st0[3] = {1, 1, 1};
  const bool norm3[3] = {false, false, true}, norm_first[3] = {true, true, false};
  const status s = lnorm::try_layer_norm_nd<float>(3, big, norm3, {x, st}, {y, st}, nullptr, nullptr, 1e-5, nullptr, nullptr);
  LNORM_CHECK(t, refused(s, "shape"), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
  const status n = lnorm::try_layer_norm_nd<float>(3, empty_big, norm_first, {x, st0}, {y, st0}, nullptr, nullptr, 1e-5,
                                                   nullptr, nullptr);
  LNORM_CHECK(t, refused(n, "shape"), "normalized axes of 2^80 elements: status %d, message '%s'", static_cast<int>(n.code),
              message_of(n));
  LNORM_CHECK(t, lnorm::layer_norm_workspace_size<float>(3, big, norm3, st, st) == 0, "query of an overflowing shape");
  LNORM_CHECK(t, lnorm::norm_backward_workspace_size<float>(false, 3, empty_big, norm_first, st0, st0, st0) == 0,
              "query of an overflowing shape");
  const std::int64_t shape2[2] = {4, 4}, huge_st[2] = {kMaxI64 / 2, 1};
  const bool norm2[2] = {false, true};
  LNORM_CHECK(t, lnorm::add_norm_workspace_size<float>(2, shape2, norm2, huge_st, huge_st, huge_st, huge_st) == 0,
              "query of an overflowing stride");
  // A gathered problem big enough for 2048 workers: a query for 2^30 threads is one for kMaxThreads.
  const std::int64_t many[2] = {65536, 1024}, gathered[2] = {2049, 2};
  LNORM_CHECK(t, lnorm::layer_norm_workspace_size<float>(2, many, norm2, gathered, gathered, 1 << 30) ==
                     lnorm::layer_norm_workspace_size<float>(2, many, norm2, gathered, gathered, kMaxThreads),
              "a query for 2^30 threads is not one for kMaxThreads");
  for (float v : y) LNORM_CHECK(t, v == 0.0f, "a refused call wrote y");
}

// Outputs that overlap themselves: rows closer than a row (ld < cols), zero strides, broadcast rows.
void check_self_overlap() {
  for (entry e : kEntries) {
    if (!takes_ld(e)) continue;
    for (const array_role& r : roles_of(e)) {
      if (!r.output || r.kind != shape_kind::matrix) continue;
      for (std::int64_t ld : {std::int64_t{15}, std::int64_t{1}, std::int64_t{0}, std::int64_t{-8}}) {
        test_case t(std::string(entry_name(e)) + ": " + arr_name(r.name) + " rows " + std::to_string(ld) + " apart, 16 wide");
        arena ar(4, 16);
        args<float> a = ar.clean();
        mat<float>* m = r.name == arr::s ? &a.s : r.name == arr::y ? &a.y : &a.dx;
        m->ld = ld;
        m->p += 64;  // negative strides stay inside the region
        const std::vector<float> before = ar.mem;
        const status s = invoke(e, a);
        LNORM_CHECK(t, refused(s, arr_name(r.name)), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
        LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
      }
    }
    {
      // An input may be a broadcast view: x with row stride 0 (every row the same) is fine.
      test_case t(std::string(entry_name(e)) + ": x with row stride 0 is a fine input");
      arena ar(4, 16);
      args<float> a = ar.clean();
      a.x.ld = 0;
      const status s = invoke(e, a);
      LNORM_CHECK(t, s.code == status_code::ok, "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
    }
    if (!is_nd(e)) continue;
    // A broadcast view as the output: the column stride 0 (np.broadcast_to of a row).
    for (const array_role& r : roles_of(e)) {
      if (!r.output || r.kind != shape_kind::matrix) continue;
      test_case t(std::string(entry_name(e)) + ": " + arr_name(r.name) + " with column stride 0");
      arena ar(4, 16);
      args<float> a = ar.clean();
      mat<float>* m = r.name == arr::s ? &a.s : r.name == arr::y ? &a.y : &a.dx;
      m->cs = 0;
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, a);
      LNORM_CHECK(t, refused(s, arr_name(r.name)), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
  }
}

// Every pair of an output with another array, overlapping partly (and exactly, where the call does not
// allow it): refused, naming the output at fault, nothing written.
void check_pairs() {
  for (entry e : kEntries) {
    const std::vector<array_role> roles = roles_of(e);
    for (std::size_t i = 0; i < roles.size(); ++i) {
      const array_role& o = roles[i];
      if (!o.output) continue;
      for (std::size_t j = 0; j < roles.size(); ++j) {
        if (j == i) continue;
        const array_role& p = roles[j];
        // The throwing wrappers take contiguous rows only: a matrix moved by one element still is one.
        for (int how = 0; how < 2; ++how) {  // 0: partly, 1: exactly (same pointer)
          const bool same_kind = o.kind == p.kind;
          if (how == 1 && (!same_kind || may_alias(e, o.name, p.name))) continue;
          arena ar(5, 24);
          args<float> a = ar.clean();
          float* target = static_cast<float*>(where(a, p.name));
          float* moved = target;
          if (how == 0) {
            if (o.kind == shape_kind::matrix && p.kind == shape_kind::matrix) moved = target + 1;
            else if (o.kind == shape_kind::matrix) moved = target - 3;           // its first row over the vector
            else if (p.kind == shape_kind::matrix) moved = target + ar.cols / 2;  // inside the first row
            else moved = target + 1;                                              // vectors, shifted by one
          }
          place(a, o.name, moved);
          // The one at fault: the output, or of two outputs the first in parameter order.
          const char* fault = (!p.output || i < j) ? arr_name(o.name) : arr_name(p.name);
          test_case t(std::string(entry_name(e)) + ": " + arr_name(o.name) + (how == 0 ? " partly over " : " exactly ") +
                      arr_name(p.name));
          const std::vector<float> before = ar.mem;
          const status s = invoke(e, a);
          LNORM_CHECK(t, refused(s, fault), "status %d, message '%s' (want '%s:')", static_cast<int>(s.code), message_of(s),
                      fault);
          LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
        }
      }
    }
  }
  // The cases named in the issue, one by one: y == s, and y = x + 8 elements with the same strides.
  for (bool rms : {false, true}) {
    arena ar(6, 32);
    args<float> a = ar.clean();
    const entry e = rms ? entry::nd_add_rms : entry::nd_add_layer;
    {
      test_case t(std::string(entry_name(e)) + ": y == s (y would be lost)");
      args<float> b = a;
      b.y = b.s;
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, b);
      LNORM_CHECK(t, refused(s, "s"), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
    {
      test_case t(std::string(entry_name(e)) + ": y = x + 8 elements, same strides");
      args<float> b = a;
      b.y.p = b.x.p + 8;
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, b);
      LNORM_CHECK(t, refused(s, "y"), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
    {
      test_case t(std::string(entry_name(e)) + ": y == x and s == x (y and s the same)");
      args<float> b = a;
      b.y = b.x;
      b.s = b.x;
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, b);
      LNORM_CHECK(t, refused(s, "s"), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
    {
      test_case t(std::string(entry_name(e)) + ": gamma is the output's last row");
      args<float> b = a;
      b.gamma = b.y.p + (b.rows - 1) * b.y.ld;
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, b);
      LNORM_CHECK(t, refused(s, "y"), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
  }
}

// ---- exact aliasing allowed: bit for bit the out-of-place call -------------------------------------------

/// One N-d layout: shape, normalized axes, strides (the same for every array) and the buffer size.
struct nd_layout {
  std::string name;
  std::vector<std::int64_t> shape, strides;
  std::vector<bool> norm;
  std::int64_t span = 0;  // elements from the first one to past the last
  std::int64_t rows() const {
    std::int64_t r = 1;
    for (std::size_t d = 0; d < shape.size(); ++d)
      if (!norm[d]) r *= shape[d];
    return r;
  }
  std::int64_t cols() const {
    std::int64_t c = 1;
    for (std::size_t d = 0; d < shape.size(); ++d)
      if (norm[d]) c *= shape[d];
    return c;
  }
  /// Element offsets of every element, in row-major index order.
  std::vector<std::int64_t> offsets() const {
    std::vector<std::int64_t> out(1, 0);
    for (std::size_t d = 0; d < shape.size(); ++d) {
      std::vector<std::int64_t> next;
      for (std::int64_t o : out)
        for (std::int64_t i = 0; i < shape[d]; ++i) next.push_back(o + i * strides[d]);
      out.swap(next);
    }
    return out;
  }
};

nd_layout make_layout(std::string name, std::vector<std::int64_t> shape, std::vector<bool> norm, std::vector<std::int64_t> strides) {
  nd_layout L{std::move(name), std::move(shape), std::move(strides), std::move(norm), 0};
  std::int64_t reach = 1;
  for (std::size_t d = 0; d < L.shape.size(); ++d) reach += (L.shape[d] - 1) * L.strides[d];
  L.span = reach;
  return L;
}

std::vector<nd_layout> in_place_layouts(bool large) {
  std::vector<nd_layout> v;
  v.push_back(make_layout("rows 37x300", {37, 300}, {false, true}, {300, 1}));
  v.push_back(make_layout("rows 37x300, ld 311", {37, 300}, {false, true}, {311, 1}));
  v.push_back(make_layout("columns 300x70 (axis 0)", {300, 70}, {true, false}, {70, 1}));
  v.push_back(make_layout("gather 40x129, column stride 2", {40, 129}, {false, true}, {2 * 129 + 3, 2}));
  v.push_back(make_layout("threaded rows 1024x256", {1024, 256}, {false, true}, {256, 1}));
  v.push_back(make_layout("huge rows 3x65541", {3, 65541}, {false, true}, {65541, 1}));
  v.push_back(make_layout("one huge row 1x200000", {1, 200000}, {false, true}, {200000, 1}));
  if (large) v.push_back(make_layout("rows 2048x4099 (outputs over 32 MiB)", {2048, 4099}, {false, true}, {4099, 1}));
  return v;
}

template <class T>
T value_of(double v) {
  return from_double<T>(v);
}

/// Buffers for every array of a forward N-d call on layout L (T data, T weights), filled with a
/// cheap pattern of spread values (the large layouts fill tens of millions).
template <class T>
struct nd_buffers {
  using S = stat_t<T>;
  std::vector<T> x, residual, s, y, gamma, beta, bias_in;
  std::vector<S> mean, rstd;
  nd_buffers(const nd_layout& L, std::uint64_t seed) {
    auto fill = [&](std::vector<T>& v, std::int64_t n, double scale, double offset) {
      v.resize(static_cast<std::size_t>(n));
      std::uint64_t h = seed++ * 0x9e3779b97f4a7c15ull;
      for (T& e : v) {
        h = h * 6364136223846793005ull + 1442695040888963407ull;
        e = value_of<T>(offset + scale * (static_cast<double>(h >> 40) * 0x1p-24 - 0.5));
      }
    };
    fill(x, L.span, 4.0, 0.5);
    fill(residual, L.span, 2.0, -0.25);
    fill(s, L.span, 2.0, 0.0);
    fill(y, L.span, 2.0, 0.0);
    fill(gamma, L.cols(), 1.0, 1.0);
    fill(beta, L.cols(), 1.0, 0.0);
    fill(bias_in, L.cols(), 1.0, 0.0);
    mean.assign(static_cast<std::size_t>(L.rows()), S(0));
    rstd.assign(static_cast<std::size_t>(L.rows()), S(0));
  }
};

/// Which arrays are the same in an in-place call (outputs onto inputs).
struct aliasing {
  const char* name;
  bool y_on_x, y_on_residual, s_on_x, s_on_residual;
};

/// Runs the forward (or fused add) on layout L with outputs aliased as `al`; returns the outputs: y, s
/// (the fused add), mean, rstd, as bytes. The out-of-place run has al all false.
template <class T>
std::vector<unsigned char> run_nd(entry e, const nd_layout& L, const std::vector<std::int64_t>& offsets, const aliasing& al,
                                  status& st) {
  using S = stat_t<T>;
  nd_buffers<T> b(L, 99);
  const bool add = is_add_entry(e), rms = is_rms_entry(e);
  T* x = b.x.data();
  T* res = b.residual.data();
  T* y = al.y_on_x ? x : al.y_on_residual ? res : b.y.data();
  T* s = al.s_on_x ? x : al.s_on_residual ? res : b.s.data();
  std::vector<bool> norm_copy(L.norm);
  bool norm[lnorm::kMaxDims];
  for (std::size_t d = 0; d < L.norm.size(); ++d) norm[d] = norm_copy[d];
  const int nd = static_cast<int>(L.shape.size());
  const std::int64_t* sh = L.shape.data();
  const std::int64_t* st_ = L.strides.data();
  S* mean = rms ? nullptr : b.mean.data();
  if (e == entry::nd_layer)
    st = lnorm::try_layer_norm_nd<T>(nd, sh, norm, {x, st_}, {y, st_}, b.gamma.data(), b.beta.data(), 1e-5, mean, b.rstd.data());
  else if (e == entry::nd_rms)
    st = lnorm::try_rms_norm_nd<T>(nd, sh, norm, {x, st_}, {y, st_}, b.gamma.data(), 1e-5, b.rstd.data());
  else
    st = lnorm::try_add_norm_nd<T>(rms, nd, sh, norm, {x, st_}, {res, st_}, b.bias_in.data(), {s, st_}, {y, st_},
                                   b.gamma.data(), rms ? nullptr : b.beta.data(), 1e-5, mean, b.rstd.data());
  std::vector<unsigned char> out;
  auto take = [&](const void* p, std::size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    out.insert(out.end(), c, c + n);
  };
  for (std::int64_t o : offsets) {
    take(y + o, sizeof(T));
    if (add) take(s + o, sizeof(T));
  }
  take(b.mean.data(), b.mean.size() * sizeof(S));
  take(b.rstd.data(), b.rstd.size() * sizeof(S));
  return out;
}

template <class T>
void check_in_place_type(const char* type) {
  const char* large_env = std::getenv("LNORM_TEST_LARGE");
  const bool large = !(large_env && std::string(large_env) == "0") && sizeof(T) == 2;
  const aliasing none{"out of place", false, false, false, false};
  const aliasing forward_cases[] = {{"y == x", true, false, false, false}};
  const aliasing add_cases[] = {{"s == x", false, false, true, false},           {"s == residual", false, false, false, true},
                                {"y == x", true, false, false, false},           {"y == residual", false, true, false, false},
                                {"s == x, y == residual", false, true, true, false}, {"s == residual, y == x", true, false, false, true}};
  for (const nd_layout& L : in_place_layouts(large)) {
    const std::vector<std::int64_t> offsets = L.offsets();
    for (int threads : {1, 2}) {
      lnorm::set_num_threads(threads);
      for (entry e : {entry::nd_layer, entry::nd_rms, entry::nd_add_layer, entry::nd_add_rms}) {
        status ref_status;
        const std::vector<unsigned char> ref = run_nd<T>(e, L, offsets, none, ref_status);
        const bool add = is_add_entry(e);
        const aliasing* cases = add ? add_cases : forward_cases;
        const std::size_t n = add ? std::size(add_cases) : std::size(forward_cases);
        for (std::size_t k = 0; k < n; ++k) {
          test_case t(std::string(entry_name(e)) + " " + type + ", " + L.name + ", " + std::to_string(threads) + " threads: " +
                      cases[k].name);
          status st;
          const std::vector<unsigned char> got = run_nd<T>(e, L, offsets, cases[k], st);
          LNORM_CHECK(t, ref_status.code == status_code::ok, "out of place: %s", message_of(ref_status));
          LNORM_CHECK(t, st.code == status_code::ok, "in place: %s", message_of(st));
          LNORM_CHECK(t, got == ref, "in place differs from out of place");
        }
      }
    }
  }
  lnorm::set_num_threads(2);
}

// The row-range calls in place: y == x; the fused add's s == residual, s == x, y == x, y == residual.
void check_in_place_rows() {
  const std::int64_t rows = 9, cols = 333, ld = 341;
  for (entry e : {entry::rows_layer, entry::rows_rms, entry::rows_add_layer, entry::rows_add_rms}) {
    const bool add = is_add_entry(e);
    const aliasing forward_cases[] = {{"y == x", true, false, false, false}};
    const aliasing add_cases[] = {{"s == x", false, false, true, false},          {"s == residual", false, false, false, true},
                                  {"y == x", true, false, false, false},          {"y == residual", false, true, false, false},
                                  {"s == x, y == residual", false, true, true, false}, {"s == residual, y == x", true, false, false, true}};
    const aliasing* cases = add ? add_cases : forward_cases;
    const std::size_t n = add ? std::size(add_cases) : std::size(forward_cases);
    auto run = [&](const aliasing& al, status& st) {
      arena ar(rows, ld);
      args<float> a = ar.clean();
      a.cols = cols;
      a.x.ld = a.residual.ld = a.s.ld = a.y.ld = ld;
      if (al.y_on_x) a.y = a.x;
      if (al.y_on_residual) a.y = a.residual;
      if (al.s_on_x) a.s = a.x;
      if (al.s_on_residual) a.s = a.residual;
      st = invoke(e, a);
      std::vector<float> out;
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
          out.push_back(a.y.p[r * ld + c]);
          if (add) out.push_back(a.s.p[r * ld + c]);
        }
      out.insert(out.end(), a.rstd, a.rstd + rows);
      if (!is_rms_entry(e)) out.insert(out.end(), a.mean, a.mean + rows);
      return out;
    };
    status ref_status;
    const std::vector<float> ref = run({"", false, false, false, false}, ref_status);
    for (std::size_t k = 0; k < n; ++k) {
      test_case t(std::string(entry_name(e)) + ": " + cases[k].name);
      status st;
      const std::vector<float> got = run(cases[k], st);
      LNORM_CHECK(t, ref_status.code == status_code::ok && st.code == status_code::ok, "statuses '%s', '%s'",
                  message_of(ref_status), message_of(st));
      LNORM_CHECK(t, got.size() == ref.size() && std::memcmp(got.data(), ref.data(), got.size() * sizeof(float)) == 0,
                  "in place differs from out of place");
    }
  }
}

void check_in_place() {
  check_in_place_type<float>("float32");
  check_in_place_type<lnorm::bfloat16_t>("bfloat16");
  check_in_place_rows();
}

// ---- disjoint interleaved views of one buffer: accepted, and the same as contiguous arrays ---------------

/// Runs entry e (an N-d call) with every matrix a view into one buffer `a` of (rows, 2 * cols) floats:
/// the halves of each row (split) or the even and odd columns (strided), inputs in one part and the
/// outputs in the other(s); compares with the same call on separate contiguous arrays.
void check_interleaved_case(entry e, std::int64_t rows, std::int64_t cols, bool strided_cols, int threads) {
  lnorm::set_num_threads(threads);
  const bool add = is_add_entry(e), back = is_back_entry(e), rms = is_rms_entry(e);
  // Up to four matrices share a buffer: each takes one of 4 parts (quarters of a row, or columns mod 4).
  const std::int64_t parts = 4, width = parts * cols;
  std::vector<float> buf(static_cast<std::size_t>(rows * width));
  rng g(static_cast<std::uint64_t>(rows + cols));
  for (float& v : buf) v = static_cast<float>(g.normal());
  std::vector<float> gamma(static_cast<std::size_t>(cols)), beta(gamma.size()), bias(gamma.size());
  for (std::size_t c = 0; c < gamma.size(); ++c) gamma[c] = 1.0f + 0.25f * static_cast<float>(g.normal()), beta[c] = 0.5f * static_cast<float>(g.normal()), bias[c] = 0.1f * static_cast<float>(g.normal());
  std::vector<float> mean(static_cast<std::size_t>(rows)), rstd(mean.size());
  for (std::size_t r = 0; r < rstd.size(); ++r) mean[r] = 0.1f * static_cast<float>(g.normal()), rstd[r] = 1.0f + 0.1f * static_cast<float>(r % 5);
  auto part = [&](int k) { return buf.data() + (strided_cols ? k : k * cols); };
  const std::int64_t st_view[2] = {width, strided_cols ? parts : 1};
  // The same matrices, copied to contiguous arrays.
  auto copy_out = [&](const float* p) {
    std::vector<float> m(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) m[static_cast<std::size_t>(r * cols + c)] = p[r * st_view[0] + c * st_view[1]];
    return m;
  };
  std::vector<float> in0 = copy_out(part(0)), in1 = copy_out(part(1));
  std::vector<float> out2(static_cast<std::size_t>(rows * cols)), out3(out2.size());
  const std::int64_t shape[2] = {rows, cols}, st_c[2] = {cols, 1};
  const bool norm[2] = {false, true};
  std::vector<float> m_ref(mean), r_ref(rstd), m_got(mean), r_got(rstd), dg_ref(gamma.size()), db_ref(gamma.size()),
      dg_got(gamma.size()), db_got(gamma.size());
  status ref, got;
  if (back) {
    ref = lnorm::try_norm_backward_nd<float>(rms, 2, shape, norm, {in0.data(), st_c}, {in1.data(), st_c}, mean.data(), rstd.data(),
                                             gamma.data(), {out2.data(), st_c}, dg_ref.data(), db_ref.data());
    got = lnorm::try_norm_backward_nd<float>(rms, 2, shape, norm, {part(0), st_view}, {part(1), st_view}, mean.data(),
                                             rstd.data(), gamma.data(), {part(2), st_view}, dg_got.data(), db_got.data());
  } else if (add) {
    ref = lnorm::try_add_norm_nd<float>(rms, 2, shape, norm, {in0.data(), st_c}, {in1.data(), st_c}, bias.data(), {out2.data(), st_c},
                                        {out3.data(), st_c}, gamma.data(), beta.data(), 1e-5, m_ref.data(), r_ref.data());
    got = lnorm::try_add_norm_nd<float>(rms, 2, shape, norm, {part(0), st_view}, {part(1), st_view}, bias.data(),
                                        {part(2), st_view}, {part(3), st_view}, gamma.data(), beta.data(), 1e-5, m_got.data(),
                                        r_got.data());
  } else if (rms) {
    ref = lnorm::try_rms_norm_nd<float>(2, shape, norm, {in0.data(), st_c}, {out2.data(), st_c}, gamma.data(), 1e-5, r_ref.data());
    got = lnorm::try_rms_norm_nd<float>(2, shape, norm, {part(0), st_view}, {part(2), st_view}, gamma.data(), 1e-5, r_got.data());
  } else {
    ref = lnorm::try_layer_norm_nd<float>(2, shape, norm, {in0.data(), st_c}, {out2.data(), st_c}, gamma.data(), beta.data(), 1e-5,
                                          m_ref.data(), r_ref.data());
    got = lnorm::try_layer_norm_nd<float>(2, shape, norm, {part(0), st_view}, {part(2), st_view}, gamma.data(), beta.data(),
                                          1e-5, m_got.data(), r_got.data());
  }
  test_case t(std::string(entry_name(e)) + ": interleaved " + (strided_cols ? "columns (a[:, k::4])" : "row quarters") + " " +
              std::to_string(rows) + "x" + std::to_string(cols) + ", " + std::to_string(threads) + " threads");
  LNORM_CHECK(t, ref.code == status_code::ok, "contiguous: %s", message_of(ref));
  LNORM_CHECK(t, got.code == status_code::ok, "interleaved: status %d, message '%s'", static_cast<int>(got.code), message_of(got));
  if (got.code != status_code::ok) return;
  LNORM_CHECK(t, copy_out(part(0)) == in0 && copy_out(part(1)) == in1, "an input was changed");
  LNORM_CHECK(t, copy_out(part(2)) == out2, "the first output differs from the contiguous call's");
  if (add) LNORM_CHECK(t, copy_out(part(3)) == out3, "the second output differs from the contiguous call's");
  LNORM_CHECK(t, m_got == m_ref && r_got == r_ref && dg_got == dg_ref && db_got == db_ref, "statistics or dgamma/dbeta differ");
}

void check_interleaved() {
  for (entry e : {entry::nd_layer, entry::nd_rms, entry::nd_add_layer, entry::nd_add_rms, entry::nd_back_layer, entry::nd_back_rms})
    for (bool strided_cols : {false, true})
      for (int threads : {1, 2}) {
        check_interleaved_case(e, 37, 129, strided_cols, threads);
        check_interleaved_case(e, 512, 256, strided_cols, threads);
      }
  // Rows long enough to be cut into chunks.
  for (entry e : {entry::nd_layer, entry::nd_back_layer}) check_interleaved_case(e, 2, 70000, false, 2);
  // The example of the issue: out = columns [D, 2D) and x = columns [0, D) of an (N, 2D) array.
  test_case t("arrays of the issue: out = a[:, D:], x = a[:, :D]; out = a[:, 1::2], x = a[:, ::2]");
  const std::int64_t N = 8, D = 16;
  std::vector<float> a(static_cast<std::size_t>(N * 2 * D), 1.0f);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7);
  const std::int64_t shape[2] = {N, D}, st_half[2] = {2 * D, 1}, st_even[2] = {2 * D, 2};
  const bool norm[2] = {false, true};
  const status halves = lnorm::try_layer_norm_nd<float>(2, shape, norm, {a.data(), st_half}, {a.data() + D, st_half}, nullptr,
                                                        nullptr, 1e-5, nullptr, nullptr);
  const status evens = lnorm::try_layer_norm_nd<float>(2, shape, norm, {a.data(), st_even}, {a.data() + 1, st_even}, nullptr,
                                                       nullptr, 1e-5, nullptr, nullptr);
  LNORM_CHECK(t, halves.code == status_code::ok && evens.code == status_code::ok, "'%s', '%s'", message_of(halves),
              message_of(evens));
#if !defined(LNORM_HOSTILE_OLD_API)
  const lnorm::array_view x_half{a.data(), 2, shape, st_half, 4}, y_half{a.data() + D, 2, shape, st_half, 4};
  const lnorm::array_view x_even{a.data(), 2, shape, st_even, 4}, y_odd{a.data() + 1, 2, shape, st_even, 4};
  LNORM_CHECK(t, !lnorm::arrays_overlap(x_half, y_half) && !lnorm::arrays_overlap(x_even, y_odd), "arrays_overlap says yes");
#endif
}

// ---- the workspace -------------------------------------------------------------------------------------

void check_workspace() {
  // A gathered layout needs row buffers: its call with workspace{nullptr, n} says so.
  const std::int64_t shape[2] = {64, 300}, st[2] = {2 * 300 + 1, 2};
  const bool norm[2] = {false, true};
  std::vector<float> x(static_cast<std::size_t>(64 * 601 + 8), 1.5f), y(x.size(), 0.0f), r(x.size(), 0.5f), s(x.size(), 0.0f),
      dx(x.size(), 0.0f);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 13);
  std::vector<float> stats(64, 1.0f), dg(300), db(300);
  const std::size_t need = lnorm::layer_norm_workspace_size<float>(2, shape, norm, st, st);
  std::vector<unsigned char> arena_(need + 1024);
  for (entry e : {entry::nd_layer, entry::nd_rms, entry::nd_add_layer, entry::nd_back_layer}) {
    for (int how = 0; how < 2; ++how) {  // 0: data null, 1: one byte short
      test_case t(std::string(entry_name(e)) + (how == 0 ? ": workspace{nullptr, n}" : ": workspace one byte short"));
      std::size_t bytes = 0;
      if (e == entry::nd_layer) bytes = lnorm::layer_norm_workspace_size<float>(2, shape, norm, st, st);
      else if (e == entry::nd_rms) bytes = lnorm::rms_norm_workspace_size<float>(2, shape, norm, st, st);
      else if (e == entry::nd_add_layer) bytes = lnorm::add_norm_workspace_size<float>(2, shape, norm, st, st, st, st);
      else bytes = lnorm::norm_backward_workspace_size<float>(false, 2, shape, norm, st, st, st);
      LNORM_CHECK(t, bytes > 0, "the gathered layout needs no workspace?");
      const lnorm::workspace ws = how == 0 ? lnorm::workspace{nullptr, bytes + 4096} : lnorm::workspace{arena_.data(), bytes - 1};
      const std::vector<float> y0 = y, s0 = s, dx0 = dx;
      status got;
      if (e == entry::nd_layer)
        got = lnorm::try_layer_norm_nd<float>(2, shape, norm, {x.data(), st}, {y.data(), st}, nullptr, nullptr, 1e-5, nullptr, nullptr, &ws);
      else if (e == entry::nd_rms)
        got = lnorm::try_rms_norm_nd<float>(2, shape, norm, {x.data(), st}, {y.data(), st}, nullptr, 1e-5, nullptr, &ws);
      else if (e == entry::nd_add_layer)
        got = lnorm::try_add_norm_nd<float>(false, 2, shape, norm, {x.data(), st}, {r.data(), st}, nullptr, {s.data(), st},
                                            {y.data(), st}, nullptr, nullptr, 1e-5, nullptr, nullptr, &ws);
      else
        got = lnorm::try_norm_backward_nd<float>(false, 2, shape, norm, {x.data(), st}, {r.data(), st}, stats.data(), stats.data(),
                                                 nullptr, {dx.data(), st}, dg.data(), db.data(), &ws);
      if (how == 0) {
        LNORM_CHECK(t, got.code == status_code::invalid_argument && got.message &&
                           std::string(got.message) == "workspace: data is null",
                    "status %d, message '%s'", static_cast<int>(got.code), message_of(got));
      } else {
        LNORM_CHECK(t, got.code == status_code::workspace_too_small && names(got.message, "workspace"), "status %d, message '%s'",
                    static_cast<int>(got.code), message_of(got));
      }
      LNORM_CHECK(t, y == y0 && s == s0 && dx == dx0, "a refused call wrote");
    }
  }
}

// ---- eps: one rule everywhere; a huge finite eps gives its limit ------------------------------------

template <class T>
void check_huge_eps_type(const char* type) {
  using S = stat_t<T>;
  const bool exact = !std::is_same_v<T, double>;  // rstd underflows to 0 in float statistics
  struct shape2 {
    std::int64_t rows, cols;
    bool columns;  // normalize axis 0 (the columns layout)
  };
  for (const lnorm::isa_info& k : lnorm::isa_table) {
    const isa i = k.id;
    if (!lnorm::set_isa(i)) continue;
    for (const shape2 sh : {shape2{7, 300, false}, shape2{300, 40, true}, shape2{2, 65541, false}}) {
      for (double eps : {1e300, DBL_MAX}) {
        for (entry e : {entry::nd_layer, entry::nd_rms, entry::nd_add_layer, entry::nd_add_rms, entry::rows_layer,
                        entry::rows_rms, entry::rows_add_layer, entry::rows_add_rms}) {
          if (sh.columns && !is_nd(e)) continue;
          const bool rms = is_rms_entry(e);
          const std::int64_t n = sh.rows * sh.cols;
          const std::int64_t batch = sh.columns ? sh.cols : sh.rows, width = sh.columns ? sh.rows : sh.cols;
          rng g(static_cast<std::uint64_t>(n));
          std::vector<T> x(static_cast<std::size_t>(n)), r(x.size()), s(x.size()), y(x.size()), gamma(static_cast<std::size_t>(width)),
              beta(gamma.size());
          for (auto& v : x) v = from_double<T>(3.0 + 20.0 * g.normal());
          for (auto& v : r) v = from_double<T>(g.normal());
          for (auto& v : gamma) v = from_double<T>(1.0 + g.normal());
          for (auto& v : beta) v = from_double<T>(g.normal());
          std::vector<S> mean(static_cast<std::size_t>(batch), S(-1)), rstd(mean.size(), S(-1));
          const std::int64_t shape[2] = {sh.rows, sh.cols}, st[2] = {sh.cols, 1};
          const bool norm[2] = {sh.columns, !sh.columns};
          status st_;
          T* gp = gamma.data();
          T* bp = rms ? nullptr : beta.data();
          S* mp = rms ? nullptr : mean.data();
          switch (e) {
            case entry::nd_layer:
              st_ = lnorm::try_layer_norm_nd<T>(2, shape, norm, {x.data(), st}, {y.data(), st}, gp, bp, eps, mp, rstd.data());
              break;
            case entry::nd_rms:
              st_ = lnorm::try_rms_norm_nd<T>(2, shape, norm, {x.data(), st}, {y.data(), st}, gp, eps, rstd.data());
              break;
            case entry::nd_add_layer:
            case entry::nd_add_rms:
              st_ = lnorm::try_add_norm_nd<T>(rms, 2, shape, norm, {x.data(), st}, {r.data(), st}, nullptr, {s.data(), st},
                                              {y.data(), st}, gp, bp, eps, mp, rstd.data());
              break;
            case entry::rows_layer:
              st_ = lnorm::layer_norm_rows<T>(x.data(), sh.cols, y.data(), sh.cols, sh.rows, sh.cols, gp, bp, eps, mp, rstd.data());
              break;
            case entry::rows_rms:
              st_ = lnorm::rms_norm_rows<T>(x.data(), sh.cols, y.data(), sh.cols, sh.rows, sh.cols, gp, eps, rstd.data());
              break;
            default:
              st_ = lnorm::add_norm_rows<T>(rms, x.data(), sh.cols, r.data(), sh.cols, nullptr, s.data(), sh.cols, y.data(),
                                            sh.cols, sh.rows, sh.cols, gp, bp, eps, mp, rstd.data());
          }
          test_case t(std::string(entry_name(e)) + " " + type + " " + lnorm::isa_name(i) + " " + std::to_string(sh.rows) + "x" +
                      std::to_string(sh.cols) + (sh.columns ? " (columns)" : "") + ", eps " + (eps == DBL_MAX ? "DBL_MAX" : "1e300"));
          LNORM_CHECK(t, st_.code == status_code::ok, "refused: '%s'", message_of(st_));
          if (st_.code != status_code::ok) continue;
          for (std::int64_t b = 0; b < batch; ++b) {
            const double rs = static_cast<double>(rstd[static_cast<std::size_t>(b)]);
            const double want_rs = 1.0 / std::sqrt(eps);  // the variance is nothing next to eps
            if (exact) LNORM_CHECK(t, rs == 0.0, "rstd[%ld] = %g, not 0", static_cast<long>(b), rs);
            else LNORM_CHECK(t, std::fabs(rs - want_rs) <= 1e-12 * want_rs, "rstd[%ld] = %g, want %g", static_cast<long>(b), rs, want_rs);
          }
          for (std::int64_t k = 0; k < n; ++k) {
            const std::int64_t c = sh.columns ? k / sh.cols : k % sh.cols;
            const double got = to_double(y[static_cast<std::size_t>(k)]);
            const double want = rms ? 0.0 : to_double(beta[static_cast<std::size_t>(c)]);
            if (exact) {
              if (!LNORM_CHECK(t, got == want, "y[%ld] = %g, want beta = %g", static_cast<long>(k), got, want)) break;
            } else if (!LNORM_CHECK(t, std::isfinite(got) && std::fabs(got - want) <= 1e-140, "y[%ld] = %g, want %g + tiny",
                                    static_cast<long>(k), got, want)) {
              break;
            }
          }
        }
      }
    }
  }
  lnorm::set_isa(lnorm::best_isa());
}

void check_eps() {
  for (entry e : kEntries) {
    if (is_back_entry(e)) continue;  // the backward takes no eps
    for (double eps : {kNaN, -1.0, -0.0 - 1e-300, kInf, -kInf}) {
      test_case t(std::string(entry_name(e)) + ": eps " + std::to_string(eps));
      arena ar(3, 20);
      args<float> a = ar.clean();
      a.eps = eps;
      const std::vector<float> before = ar.mem;
      const status s = invoke(e, a);
      LNORM_CHECK(t, refused(s, "eps"), "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
      LNORM_CHECK(t, ar.mem == before, "a refused call wrote");
    }
    for (double eps : {0.0, 1e300, DBL_MAX}) {
      test_case t(std::string(entry_name(e)) + ": eps " + std::to_string(eps) + " accepted");
      arena ar(3, 20);
      args<float> a = ar.clean();
      a.eps = eps;
      const status s = invoke(e, a);
      LNORM_CHECK(t, s.code == status_code::ok, "status %d, message '%s'", static_cast<int>(s.code), message_of(s));
    }
  }
  check_huge_eps_type<float>("float32");
  check_huge_eps_type<double>("float64");
  check_huge_eps_type<lnorm::float16_t>("float16");
  check_huge_eps_type<lnorm::bfloat16_t>("bfloat16");
}

// ---- threads: one bound ------------------------------------------------------------------------------

void check_thread_bound() {
  test_case t("set_num_threads, thread_pool.num_threads and the environment: clamped to [1, kMaxThreads]");
  lnorm::set_num_threads(1 << 30);
  LNORM_CHECK(t, lnorm::get_num_threads() == kMaxThreads, "set_num_threads(2^30): %d", lnorm::get_num_threads());
  lnorm::set_num_threads(std::numeric_limits<int>::max());
  LNORM_CHECK(t, lnorm::get_num_threads() == kMaxThreads, "set_num_threads(INT_MAX): %d", lnorm::get_num_threads());
  lnorm::set_num_threads(0);
  LNORM_CHECK(t, lnorm::get_num_threads() == 1, "set_num_threads(0): %d", lnorm::get_num_threads());
  lnorm::set_num_threads(-5);
  LNORM_CHECK(t, lnorm::get_num_threads() == 1, "set_num_threads(-5): %d", lnorm::get_num_threads());
  lnorm::set_num_threads(kMaxThreads);
  LNORM_CHECK(t, lnorm::get_num_threads() == kMaxThreads, "set_num_threads(kMaxThreads): %d", lnorm::get_num_threads());
  // A call on the bound's thread count, enough rows for many workers: runs and is right.
  {
    const std::int64_t rows = 64, cols = 1024;
    std::vector<float> x(static_cast<std::size_t>(rows * cols)), y(x.size()), y1(x.size());
    for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>((k * 7) % 23) - 11.0f;
    const status a = lnorm::try_layer_norm<float>(x.data(), cols, y.data(), cols, rows, cols, nullptr, nullptr, 1e-5);
    lnorm::set_num_threads(1);
    const status b = lnorm::try_layer_norm<float>(x.data(), cols, y1.data(), cols, rows, cols, nullptr, nullptr, 1e-5);
    LNORM_CHECK(t, a.code == status_code::ok && b.code == status_code::ok && y == y1, "kMaxThreads threads: not the 1-thread result");
  }
  // An engine pool claiming 2^30 threads: the count is clamped too.
  struct serial {
    static void run(void*, std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
      for (std::int64_t i = 0; i < n; ++i) task(ctx, i);
    }
  };
  lnorm::set_thread_pool({nullptr, &serial::run, 1 << 30});
  LNORM_CHECK(t, lnorm::get_num_threads() == kMaxThreads, "a pool of 2^30 threads: %d", lnorm::get_num_threads());
  lnorm::set_thread_pool({nullptr, &serial::run, -3});
  LNORM_CHECK(t, lnorm::get_num_threads() == 1, "a pool of -3 threads: %d", lnorm::get_num_threads());
  lnorm::set_thread_pool({});
#if !defined(LNORM_HOSTILE_OLD_API) && defined(LNORM_HOSTILE_CAN_FORK)
  // The environment, parsed with the same bound (the variable is read through lnorm's own parser): a
  // value outside [1, kMaxThreads] is ignored (0: the default is used), as Python's warning says.
  setenv("LNORM_HOSTILE_THREADS", "5000", 1);
  LNORM_CHECK(t, lnorm::detail::env_threads("LNORM_HOSTILE_THREADS") == 0, "\"5000\": %d",
              lnorm::detail::env_threads("LNORM_HOSTILE_THREADS"));
  setenv("LNORM_HOSTILE_THREADS", "99999999999999999999", 1);
  LNORM_CHECK(t, lnorm::detail::env_threads("LNORM_HOSTILE_THREADS") == 0, "\"99999999999999999999\": %d",
              lnorm::detail::env_threads("LNORM_HOSTILE_THREADS"));
  setenv("LNORM_HOSTILE_THREADS", "1024", 1);
  LNORM_CHECK(t, lnorm::detail::env_threads("LNORM_HOSTILE_THREADS") == kMaxThreads, "\"1024\"");
  setenv("LNORM_HOSTILE_THREADS", "3", 1);
  LNORM_CHECK(t, lnorm::detail::env_threads("LNORM_HOSTILE_THREADS") == 3, "\"3\"");
  unsetenv("LNORM_HOSTILE_THREADS");
#endif
  lnorm::set_num_threads(2);
}

// ---- what ran: last_call() ---------------------------------------------------------------------------

/// A pool that runs task i on its worker i (the caller runs task 0): n tasks on n distinct threads.
class pinned_pool {
 public:
  explicit pinned_pool(int threads) : magic_(kMagic) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
  }
  pinned_pool(const pinned_pool&) = delete;
  pinned_pool& operator=(const pinned_pool&) = delete;
  ~pinned_pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
    magic_ = 0;
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  lnorm::thread_pool handle() { return {this, &pinned_pool::run, size()}; }
  std::atomic<long> batches{0};
  static std::atomic<long>& torn() {  // runs handed a pointer that is not a live pinned_pool
    static std::atomic<long> n{0};
    return n;
  }

  static void run(void* self, std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
    auto* pool = static_cast<pinned_pool*>(self);
    if (pool == nullptr || pool->magic_ != kMagic) {
      for (std::int64_t i = 0; i < n; ++i) task(ctx, i);
      torn().fetch_add(1);
      return;
    }
    pool->batches.fetch_add(1);
    std::unique_lock<std::mutex> lock(pool->mutex_);
    pool->task_ = task;
    pool->ctx_ = ctx;
    pool->n_ = n;
    pool->done_ = 1;
    ++pool->batch_;
    lock.unlock();
    pool->wake_.notify_all();
    task(ctx, 0);
    lock.lock();
    pool->idle_.wait(lock, [&] { return pool->done_ == static_cast<int>(std::min<std::int64_t>(n, pool->size())); });
    for (std::int64_t i = pool->size(); i < n; ++i) task(ctx, i);  // more tasks than threads: the caller's
  }

 private:
  static constexpr unsigned kMagic = 0x5ca1ab1e;
  void work(int index) {
    std::uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || batch_ != seen; });
      if (stop_) return;
      seen = batch_;
      const bool mine = index < n_;
      lock.unlock();
      if (mine) task_(ctx_, index);
      lock.lock();
      if (mine && ++done_ == static_cast<int>(std::min<std::int64_t>(n_, size()))) idle_.notify_all();
    }
  }
  volatile unsigned magic_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  void (*task_)(void*, std::int64_t) = nullptr;
  void* ctx_ = nullptr;
  std::int64_t n_ = 0;
  int done_ = 0;
  std::uint64_t batch_ = 0;
  bool stop_ = false;
};

#if !defined(LNORM_HOSTILE_OLD_API)
void check_last_call() {
  const std::int64_t rows = 1024, cols = 256;  // 8 workers' worth of elements
  std::vector<float> x(static_cast<std::size_t>(rows * cols)), y(x.size()), r(x.size()), s(x.size()), dx(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>((k * 13) % 31) - 15.0f, r[k] = 0.5f;
  std::vector<float> mean(static_cast<std::size_t>(rows)), rstd(mean.size()), dg(static_cast<std::size_t>(cols)), db(dg.size());
  const std::int64_t shape[2] = {rows, cols}, st[2] = {cols, 1};
  const bool norm[2] = {false, true};
  auto run = [&](entry e) -> status {
    switch (e) {
      case entry::nd_layer:
        return lnorm::try_layer_norm_nd<float>(2, shape, norm, {x.data(), st}, {y.data(), st}, nullptr, nullptr, 1e-5, mean.data(), rstd.data());
      case entry::nd_rms: return lnorm::try_rms_norm_nd<float>(2, shape, norm, {x.data(), st}, {y.data(), st}, nullptr, 1e-5, rstd.data());
      case entry::nd_add_layer:
        return lnorm::try_add_norm_nd<float>(false, 2, shape, norm, {x.data(), st}, {r.data(), st}, nullptr, {s.data(), st},
                                             {y.data(), st}, nullptr, nullptr, 1e-5, mean.data(), rstd.data());
      case entry::nd_back_layer:
        return lnorm::try_norm_backward_nd<float>(false, 2, shape, norm, {x.data(), st}, {r.data(), st}, mean.data(), rstd.data(),
                                                  nullptr, {dx.data(), st}, dg.data(), db.data());
      case entry::try_layer: return lnorm::try_layer_norm<float>(x.data(), cols, y.data(), cols, rows, cols, nullptr, nullptr, 1e-5);
      case entry::rows_layer: return lnorm::layer_norm_rows<float>(x.data(), cols, y.data(), cols, rows, cols, nullptr, nullptr, 1e-5);
      case entry::rows_add_rms:
        return lnorm::add_norm_rows<float>(true, x.data(), cols, r.data(), cols, nullptr, s.data(), cols, y.data(), cols, rows, cols,
                                           nullptr, nullptr, 1e-5);
      default:
        return lnorm::norm_backward_rows<float>(false, x.data(), cols, r.data(), cols, mean.data(), rstd.data(), nullptr, dx.data(),
                                                cols, rows, cols, dg.data(), db.data());
    }
  };
  const entry calls[] = {entry::nd_layer, entry::nd_rms, entry::nd_add_layer, entry::nd_back_layer, entry::try_layer,
                         entry::rows_layer, entry::rows_add_rms, entry::rows_back_layer};
  // First a layer norm, for the statistics the backward reads.
  lnorm::set_num_threads(1);
  (void)run(entry::nd_layer);
  for (const lnorm::isa_info& k : lnorm::isa_table) {
    const isa i = k.id;
    if (!lnorm::isa_available(i)) continue;
    {
      test_case t(std::string("set_isa(") + lnorm::isa_name(i) + ")");
      LNORM_CHECK(t, lnorm::set_isa(i), "refused");
    }
    for (entry e : calls) {
      test_case t(std::string(entry_name(e)) + ": last_call() after set_isa(" + lnorm::isa_name(i) + ")");
      const status st_ = run(e);
      const lnorm::call_record rec = lnorm::last_call();
      LNORM_CHECK(t, st_.code == status_code::ok, "%s", message_of(st_));
      LNORM_CHECK(t, rec.kernels == i, "ran %s", lnorm::isa_name(rec.kernels));
      LNORM_CHECK(t, rec.workers == 1 && rec.threads == 1, "1 thread set: %d workers, %d threads", rec.workers, rec.threads);
    }
  }
  lnorm::set_isa(lnorm::best_isa());
  // Two workers planned: two distinct threads ran them (OpenMP, or an engine's pool); a refused
  // call reports nothing ran.
  for (int how = 0; how < 2; ++how) {
    if (how == 0 && !lnorm::openmp_enabled()) continue;
    pinned_pool pool(2);
    if (how == 1) lnorm::set_thread_pool(pool.handle());
    else lnorm::set_num_threads(2);
    for (entry e : {entry::nd_layer, entry::nd_rms, entry::nd_add_layer, entry::nd_back_layer, entry::try_layer}) {
      test_case t(std::string(entry_name(e)) + ": two workers on " + (how == 0 ? "OpenMP" : "an engine's pool"));
      const status st_ = run(e);
      const lnorm::call_record rec = lnorm::last_call();
      LNORM_CHECK(t, st_.code == status_code::ok, "%s", message_of(st_));
      LNORM_CHECK(t, rec.workers == 2 && rec.threads == 2, "%d workers planned, %d threads ran", rec.workers, rec.threads);
      LNORM_CHECK(t, rec.kernels == lnorm::best_isa(), "ran %s", lnorm::isa_name(rec.kernels));
    }
    test_case t(std::string("a refused call after one that ran, ") + (how == 0 ? "OpenMP" : "engine pool"));
    (void)run(entry::nd_layer);
    const status bad = lnorm::try_layer_norm_nd<float>(2, shape, norm, {x.data(), st}, {y.data(), st}, nullptr, nullptr, kNaN,
                                                       nullptr, nullptr);
    const lnorm::call_record rec = lnorm::last_call();
    LNORM_CHECK(t, !bad && rec.workers == 0 && rec.threads == 0, "%d workers, %d threads", rec.workers, rec.threads);
    lnorm::set_thread_pool({});
  }
  lnorm::set_num_threads(2);
}
#endif

// ---- set_thread_pool while another thread runs calls -----------------------------------------------------

/// One thread runs calls (the backward of rows cut into chunks: six parallel regions per call)
/// while this one swaps the pool: two engine pools and none (OpenMP). Every call's results must be
/// right, no call may run on a torn pool (a pool pointer with another pool's run function), and every
/// region of one call must run on the pool the call started with.
thread_local int current_call = -1;

struct pool_log {
  std::mutex mutex;
  std::vector<std::pair<int, const void*>> regions;  // (call, pool) for every region run on a pool
};
pool_log& log_of_pools() {
  static pool_log l;
  return l;
}

template <int Which>
void logged_run(void* self, std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
  {
    std::lock_guard<std::mutex> lock(log_of_pools().mutex);
    log_of_pools().regions.emplace_back(current_call, self);
  }
  pinned_pool::run(self, n, task, ctx);
}

void check_pool_swap() {
  pinned_pool a(2), b(2);
  const lnorm::thread_pool pa{&a, &logged_run<0>, 2}, pb{&b, &logged_run<1>, 2};
  pinned_pool::torn().store(0);
  lnorm::set_num_threads(2);
  // The backward of rows cut into chunks: two parallel regions per row, each row's on the calling thread.
  const std::int64_t rows = 3, cols = 4 * 16384 + 7;
  const std::int64_t shape[2] = {rows, cols}, st[2] = {cols, 1};
  const bool norm[2] = {false, true};
  std::vector<float> x(static_cast<std::size_t>(rows * cols)), dy(x.size()), ref(x.size()), mean(3), rstd(3);
  for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>((k * 11) % 37) - 18.0f, dy[k] = static_cast<float>(k % 5) - 2.0f;
  lnorm::set_thread_pool({});
  (void)lnorm::try_layer_norm<float>(x.data(), cols, ref.data(), cols, rows, cols, nullptr, nullptr, 1e-5, mean.data(), rstd.data());
  auto backward = [&](std::vector<float>& dx) {
    return lnorm::try_norm_backward_nd<float>(false, 2, shape, norm, {dy.data(), st}, {x.data(), st}, mean.data(), rstd.data(),
                                              nullptr, {dx.data(), st}, nullptr, nullptr);
  };
  (void)backward(ref);
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, failed{0}, calls{0};
  std::thread worker([&] {
    std::vector<float> y(x.size());
    for (int c = 0; !stop.load() || c < 20; ++c) {
      current_call = c;
      const status s = backward(y);
      current_call = -1;
      if (!s) failed.fetch_add(1);
      else if (y != ref) wrong.fetch_add(1);
      calls.fetch_add(1);
      if (c > 400) break;
    }
  });
  long swaps = 0;
  while (calls.load() < 200 && swaps < 2000000) {
    switch (swaps++ % 3) {
      case 0: lnorm::set_thread_pool(pa); break;
      case 1: lnorm::set_thread_pool(pb); break;
      default: lnorm::set_thread_pool({}); break;
    }
    if (swaps % 4 == 0) std::this_thread::yield();
  }
  stop.store(true);
  worker.join();
  lnorm::set_thread_pool({});
  test_case t("set_thread_pool swapped " + std::to_string(swaps) + " times during " + std::to_string(calls.load()) + " calls");
  LNORM_CHECK(t, failed.load() == 0 && wrong.load() == 0, "%d calls refused, %d wrong", failed.load(), wrong.load());
  LNORM_CHECK(t, pinned_pool::torn().load() == 0, "%ld regions ran on a torn pool", pinned_pool::torn().load());
  // Every region of a call on one pool (or none): a call keeps the settings it started with.
  std::vector<std::pair<int, const void*>> regions;
  {
    std::lock_guard<std::mutex> lock(log_of_pools().mutex);
    regions = log_of_pools().regions;
  }
  int mixed = 0;
  for (std::size_t k = 1; k < regions.size(); ++k)
    if (regions[k].first == regions[k - 1].first && regions[k].first >= 0 && regions[k].second != regions[k - 1].second) ++mixed;
  LNORM_CHECK(t, mixed == 0, "%d times a call's regions ran on two pools", mixed);
  LNORM_CHECK(t, !regions.empty(), "no region ran on an engine pool");
  lnorm::set_num_threads(2);
}

// ---- fork while another thread writes the settings ------------------------------------------------------

#if defined(LNORM_HOSTILE_CAN_FORK)
// A child forked while another thread is inside set_num_threads (its settings write half done) must
// still run calls: the write never finishes in the child, and a reader that waited for it would hang.
void check_fork_during_settings_write() {
  test_case t("fork while another thread writes the settings: the child's calls run");
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int n = 0; !stop.load(std::memory_order_relaxed); ++n) lnorm::set_num_threads(1 + (n & 1));
  });
  int hung = 0, wrong = 0;
  for (int k = 0; k < 64; ++k) {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(5);  // a hang ends the child with SIGALRM
      std::vector<float> x(64), y(64);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
      const status s = lnorm::try_layer_norm<float>(x.data(), 8, y.data(), 8, 8, 8, nullptr, nullptr, 1e-5);
      _exit(s && lnorm::get_num_threads() >= 1 ? 0 : 3);
    }
    int wstatus = 0;
    waitpid(pid, &wstatus, 0);
    if (WIFSIGNALED(wstatus)) ++hung;
    else if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) ++wrong;
    if (hung) break;  // one is enough (with the settings write left half done, most children hang)
  }
  stop.store(true);
  writer.join();
  lnorm::set_num_threads(2);
  LNORM_CHECK(t, hung == 0 && wrong == 0, "%d child hung, %d failed", hung, wrong);
}
#endif

// ---- the overlap test against brute force ---------------------------------------------------------------

#if !defined(LNORM_HOSTILE_OLD_API)
std::vector<long> bytes_of(const lnorm::array_view& v, long base) {
  std::vector<long> out;
  long n = 1;
  for (int d = 0; d < v.ndim; ++d) n *= v.shape[d];
  for (long i = 0; i < n; ++i) {
    long rest = i, off = 0;
    for (int d = v.ndim - 1; d >= 0; --d) {
      off += (rest % v.shape[d]) * v.strides[d];
      rest /= v.shape[d];
    }
    for (long b = 0; b < static_cast<long>(v.elem_bytes); ++b) out.push_back(base + off * static_cast<long>(v.elem_bytes) + b);
  }
  return out;
}

void check_overlap_rules() {
  static unsigned char mem[1 << 16];
  rng g(2024);
  test_case t("arrays_overlap, has_internal_overlap, same_view against brute force (random arrays up to 3-d)");
  for (int it = 0; it < 30000; ++it) {
    std::int64_t sh[2][3], st[2][3];
    long base[2];
    lnorm::array_view v[2];
    const std::size_t e0 = 1 + static_cast<std::size_t>(g.below(4));
    for (int a = 0; a < 2; ++a) {
      const int nd = 1 + static_cast<int>(g.below(3));
      for (int d = 0; d < nd; ++d) {
        sh[a][d] = g.below(6);
        if (g.below(4) != 0 && sh[a][d] == 0) sh[a][d] = 1;
        st[a][d] = g.below(15) - 7;
      }
      base[a] = 20000 + static_cast<long>(g.below(64));
      v[a] = {mem + base[a], nd, sh[a], st[a], a == 0 || g.below(2) ? e0 : 1 + static_cast<std::size_t>(g.below(4))};
    }
    const std::vector<long> A = bytes_of(v[0], base[0]), B = bytes_of(v[1], base[1]);
    const std::set<long> sa(A.begin(), A.end());
    bool want = false;
    for (long x : B) want |= sa.count(x) > 0;
    if (!LNORM_CHECK(t, lnorm::arrays_overlap(v[0], v[1]) == want, "case %d: arrays_overlap says %d", it, !want)) break;
    const bool internal = sa.size() != A.size();
    if (!LNORM_CHECK(t, lnorm::has_internal_overlap(v[0]) == internal, "case %d: has_internal_overlap says %d", it, !internal))
      break;
    LNORM_CHECK(t, lnorm::same_view(v[0], v[0]), "case %d: not its own view", it);
    // The calls' own path (rules::operands, with its fast span for checked shapes): v[0] an output,
    // v[1] an input it may not be; refused exactly when some byte is shared (or v[0] meets itself).
    lnorm::rules::operands ops;
    ops.input(lnorm::rules::arg::x, v[1]);
    ops.output(lnorm::rules::arg::y, v[0]);
    const char* m = ops.check();
    const bool empty0 = A.empty();
    if (!LNORM_CHECK(t, (m != nullptr) == (!empty0 && (internal || want)), "case %d: operands say '%s'", it, m ? m : "ok"))
      break;
  }
  test_case u("arrays_overlap: larger and degenerate cases");
  static float big[4096];
  const std::int64_t N = 64, D = 16;
  const std::int64_t s_rows[2] = {N, D}, st_half[2] = {2 * D, 1}, st_even[2] = {2 * D, 2}, st_shift[2] = {2 * D, 1};
  const lnorm::array_view left{big, 2, s_rows, st_half, 4}, right{big + D, 2, s_rows, st_half, 4};
  const lnorm::array_view even{big, 2, s_rows, st_even, 4}, odd{big + 1, 2, s_rows, st_even, 4};
  const lnorm::array_view shifted{big + 1, 2, s_rows, st_shift, 4}, plus8{big + 8, 2, s_rows, st_half, 4};
  LNORM_CHECK(u, !lnorm::arrays_overlap(left, right), "halves of rows overlap?");
  LNORM_CHECK(u, !lnorm::arrays_overlap(even, odd), "even and odd columns overlap?");
  LNORM_CHECK(u, lnorm::arrays_overlap(left, shifted) && lnorm::arrays_overlap(left, plus8), "shifted views do not overlap?");
  const std::int64_t one_row[1] = {D}, unit[1] = {1};
  const lnorm::array_view last_row{big + (N - 1) * 2 * D, 1, one_row, unit, 4};
  LNORM_CHECK(u, lnorm::arrays_overlap(left, last_row), "the last row of an array does not overlap it?");
  const std::int64_t zero_shape[2] = {0, D};
  const lnorm::array_view empty{big, 2, zero_shape, st_half, 4};
  LNORM_CHECK(u, !lnorm::arrays_overlap(left, empty) && !lnorm::has_internal_overlap(empty), "an empty array overlaps?");
  const std::int64_t huge_st[2] = {std::int64_t{1} << 62, 1};
  const lnorm::array_view huge{big, 2, s_rows, huge_st, 4};
  LNORM_CHECK(u, lnorm::arrays_overlap(left, huge) && lnorm::has_internal_overlap(huge), "a span past 2^61 bytes is not conservative");
  const std::int64_t zero_st[2] = {0, 1};
  LNORM_CHECK(u, lnorm::has_internal_overlap({big, 2, s_rows, zero_st, 4}), "zero stride: no internal overlap?");
  // In-place views: the same elements whatever the strides of dimensions of size 1.
  const std::int64_t s1[2] = {1, D}, st_a[2] = {99, 1}, st_b[2] = {-5, 1};
  LNORM_CHECK(u, lnorm::same_view({big, 2, s1, st_a, 4}, {big, 2, s1, st_b, 4}), "size-1 dimension strides matter?");
  LNORM_CHECK(u, !lnorm::same_view(left, shifted) && !lnorm::same_view(left, {big, 2, s_rows, st_half, 2}), "not the same view");
  // A search past its work cap answers "overlap": a pair of many-dimension views over one buffer.
  std::int64_t many_shape[12], many_st_a[12], many_st_b[12];
  for (int d = 0; d < 12; ++d) many_shape[d] = 3, many_st_a[d] = 7 + 2 * d, many_st_b[d] = 5 + 3 * d;
  const lnorm::array_view ma{big, 12, many_shape, many_st_a, 1}, mb{big + 1, 12, many_shape, many_st_b, 1};
  (void)lnorm::arrays_overlap(ma, mb);  // either answer is allowed; it must return (and stay within its cap)
}
#endif

// ---- every message starts with a name --------------------------------------------------------------------

void check_messages() {
  test_case t("every status message seen starts with an argument's name and a colon");
  for (const std::string& m : messages_seen()) {
    bool ok = false;
    for (const char* n : kNames) ok |= m.rfind(std::string(n) + ":", 0) == 0;
    LNORM_CHECK(t, ok, "'%s'", m.c_str());
  }
  LNORM_CHECK(t, messages_seen().size() > 20, "only %zu distinct messages seen", messages_seen().size());
  if (std::getenv("LNORM_TEST_VERBOSE"))
    for (const std::string& m : messages_seen()) std::printf("  message: %s\n", m.c_str());
}

// ---- sections, optionally each in a child process --------------------------------------------------------

bool fork_sections() {
  const char* v = std::getenv("LNORM_HOSTILE_FORK");
  return v && *v == '1';
}

/// Whether section `name` runs: all, or those whose names start with one of LNORM_HOSTILE_SECTIONS
/// (comma-separated; e.g. "pool_swap,last_call" under ThreadSanitizer).
bool selected(const std::string& name) {
  const char* only = std::getenv("LNORM_HOSTILE_SECTIONS");
  if (!only || !*only) return true;
  const std::string list = std::string(only) + ",";
  for (std::size_t at = 0, next = 0; (next = list.find(',', at)) != std::string::npos; at = next + 1)
    if (next > at && name.rfind(list.substr(at, next - at), 0) == 0) return true;
  return false;
}

void section(const std::string& name, const std::function<void()>& fn) {
  if (!selected(name)) return;
  const long p0 = results().passed, f0 = results().failed;
#if defined(LNORM_HOSTILE_CAN_FORK)
  if (fork_sections()) {
    std::fflush(stdout);
    int fds[2];
    if (pipe(fds) == 0) {
      const pid_t pid = fork();
      if (pid == 0) {
        close(fds[0]);
        fn();
        std::fflush(stdout);
        const long counts[2] = {results().passed - p0, results().failed - f0};
        const ssize_t w = write(fds[1], counts, sizeof counts);
        (void)w;
        _exit(0);
      }
      close(fds[1]);
      long counts[2] = {0, 0};
      const ssize_t got = read(fds[0], counts, sizeof counts);
      close(fds[0]);
      int wstatus = 0;
      waitpid(pid, &wstatus, 0);
      const bool crashed = got != static_cast<ssize_t>(sizeof counts) || !WIFEXITED(wstatus);
      results().passed += counts[0];
      results().failed += counts[1] + (crashed ? 1 : 0);
      std::printf("section %-40s %5ld passed, %5ld failed%s\n", name.c_str(), counts[0], counts[1] + (crashed ? 1 : 0),
                  crashed ? " (crashed)" : "");
      return;
    }
  }
#endif
  fn();
  std::printf("section %-40s %5ld passed, %5ld failed\n", name.c_str(), results().passed - p0, results().failed - f0);
}

}  // namespace
}  // namespace lnorm_test

int main() {
  using namespace lnorm_test;
  std::printf("lnorm %s hostile-argument tests: kernel set %s; openmp %s\n", LNORM_VERSION_STRING, lnorm::active_isa(),
              lnorm::openmp_enabled() ? "on" : "off");
  lnorm::set_num_threads(2);
#if !defined(LNORM_HOSTILE_OLD_API)
  section("overlap_rules", check_overlap_rules);
#endif
  for (entry e : kEntries) section(std::string("nulls, ") + entry_name(e), [e] { check_nulls(e); });
  section("negative", check_negative);
  for (entry e : kEntries) section(std::string("overflow, ") + entry_name(e), [e] { check_overflow(e); });
  section("overflow, N-d shapes and queries", check_overflow_nd);
  section("self_overlap", check_self_overlap);
  section("pairs", check_pairs);
  section("in_place", check_in_place);
  section("interleaved", check_interleaved);
  section("workspace", check_workspace);
  section("eps", check_eps);
  section("thread_bound", check_thread_bound);
#if !defined(LNORM_HOSTILE_OLD_API)
  section("last_call", check_last_call);
#endif
  section("pool_swap", check_pool_swap);
#if defined(LNORM_HOSTILE_CAN_FORK)
  section("fork_during_settings_write", check_fork_during_settings_write);
#endif
  if (!fork_sections()) section("messages", check_messages);
  std::printf("%ld passed, %ld failed\n", results().passed, results().failed);
  return results().failed == 0 ? 0 : 1;
}
