// cpp/tests/test_api.cpp: the N-d calls' workspace and argument forms (lnorm_api_tests).
//
// Global operator new is replaced (counting.hpp) and counts, on every thread, while a call runs. Given a
// workspace of the size its *_workspace_size query says, each threaded N-d call (try_layer_norm_nd,
// try_rms_norm_nd, try_add_norm_nd, try_norm_backward_nd) makes no allocation, on 1 and 2 threads,
// through lnorm's own threads (OpenMP, or serial) and through an engine's pool (set_thread_pool), on
// every path that needs scratch memory: gathered rows, the fused add's streamed row buffer, the
// backward's dgamma/dbeta partials, huge rows cut into chunks. The results are bitwise those of the
// allocating calls (which must be seen to allocate: the counter works), for any thread count; a
// workspace one byte short is refused with workspace_too_small before anything is written. And
// nullptr weights need no template argument for W. Prints "N passed, M failed".
// The replaced global operator new/delete below pair malloc with free by design; GCC 12 at -O2 sees
// the pairing through std::allocator's inlined calls and calls it a mismatch.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
#include "suite.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "counting.hpp"

namespace lnorm_test {
namespace {

// ---- the calls, with or without a workspace ----------------------------------------------------------

enum class call { layer_norm, rms_norm, add_layer_norm, add_rms_norm, layer_norm_backward, rms_norm_backward };
constexpr call kCalls[] = {call::layer_norm, call::rms_norm, call::add_layer_norm, call::add_rms_norm,
                           call::layer_norm_backward, call::rms_norm_backward};

const char* call_name(call c) {
  switch (c) {
    case call::layer_norm: return "try_layer_norm_nd";
    case call::rms_norm: return "try_rms_norm_nd";
    case call::add_layer_norm: return "try_add_norm_nd (layer)";
    case call::add_rms_norm: return "try_add_norm_nd (rms)";
    case call::layer_norm_backward: return "try_norm_backward_nd (layer)";
    default: return "try_norm_backward_nd (rms)";
  }
}
bool is_rms_call(call c) { return c == call::rms_norm || c == call::add_rms_norm || c == call::rms_norm_backward; }

using P = problem<float, float>;

/// What a call's *_workspace_size query says (num_threads 0: the current count).
std::size_t workspace_size(const P& p, call c, int num_threads) {
  const geometry& g = p.geo;
  const std::int64_t *in = g.in_strides.data(), *out = g.out_strides.data();
  switch (c) {
    case call::layer_norm:
      return lnorm::layer_norm_workspace_size<float>(g.ndim(), g.shape.data(), g.normalized.data(), in, out, num_threads);
    case call::rms_norm:
      return lnorm::rms_norm_workspace_size<float>(g.ndim(), g.shape.data(), g.normalized.data(), in, out, num_threads);
    case call::add_layer_norm:
    case call::add_rms_norm:
      return lnorm::add_norm_workspace_size<float>(g.ndim(), g.shape.data(), g.normalized.data(), in, in, out, out,
                                                   num_threads);
    default:
      return lnorm::norm_backward_workspace_size<float>(is_rms_call(c), g.ndim(), g.shape.data(), g.normalized.data(), in,
                                                        in, out, num_threads);
  }
}

/// One call's outputs (pre-filled with fill_pattern) and the allocations it made.
struct outcome {
  lnorm::status status;
  long allocations = 0;
  std::vector<float> y, s, dx, mean, rstd, dgamma, dbeta;
};

/// Runs call c on p with `ws` (null: the allocating form); the backward gets the statistics `stats`.
outcome run_call(const P& p, call c, const result<float, float>& stats, const lnorm::workspace* ws) {
  const geometry& g = p.geo;
  outcome o;
  o.y = filled<float>(p.out_size());
  o.s = filled<float>(p.out_size());
  o.dx = filled<float>(p.out_size());
  o.mean = filled<float>(p.rows());
  o.rstd = filled<float>(p.rows());
  o.dgamma = filled<float>(p.cols());
  o.dbeta = filled<float>(p.cols());
  const lnorm::strided x{p.x.data() + g.in_base, g.in_strides.data()}, res{p.residual.data() + g.in_base, g.in_strides.data()};
  const lnorm::strided dy{p.dy.data() + g.in_base, g.in_strides.data()};
  const lnorm::strided y{o.y.data() + g.out_base, g.out_strides.data()}, s{o.s.data() + g.out_base, g.out_strides.data()};
  const lnorm::strided dx{o.dx.data() + g.out_base, g.out_strides.data()};
  const int nd = g.ndim();
  const std::int64_t* shape = g.shape.data();
  const bool* norm = g.normalized.data();
  o.allocations = allocations_during([&] {
    switch (c) {
      case call::layer_norm:
        o.status = lnorm::try_layer_norm_nd<float>(nd, shape, norm, x, y, p.gamma_ptr(), p.beta_ptr(), p.eps, o.mean.data(),
                                                   o.rstd.data(), ws);
        break;
      case call::rms_norm:
        o.status = lnorm::try_rms_norm_nd<float>(nd, shape, norm, x, y, p.gamma_ptr(), p.eps, o.rstd.data(), ws);
        break;
      case call::add_layer_norm:
      case call::add_rms_norm:
        o.status = lnorm::try_add_norm_nd<float>(is_rms_call(c), nd, shape, norm, x, res, p.bias_ptr(), s, y, p.gamma_ptr(),
                                                 p.beta_ptr(), p.eps, o.mean.data(), o.rstd.data(), ws);
        break;
      default:
        o.status = lnorm::try_norm_backward_nd<float>(is_rms_call(c), nd, shape, norm, dy, x, stats.mean.data(),
                                                      stats.rstd.data(), p.gamma_ptr(), dx, o.dgamma.data(),
                                                      p.beta.empty() ? nullptr : o.dbeta.data(), ws);
    }
  });
  return o;
}

bool same_bits(const outcome& a, const outcome& b) {
  auto eq = [](const std::vector<float>& u, const std::vector<float>& v) {
    return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * sizeof(float)) == 0;
  };
  return eq(a.y, b.y) && eq(a.s, b.s) && eq(a.dx, b.dx) && eq(a.mean, b.mean) && eq(a.rstd, b.rstd) &&
         eq(a.dgamma, b.dgamma) && eq(a.dbeta, b.dbeta);
}

/// LNORM_TEST_VERBOSE=1: print each case's workspace size.
bool verbose() {
  const char* v = std::getenv("LNORM_TEST_VERBOSE");
  return v && *v && *v != '0';
}

/// How the calls get their threads: lnorm's own (OpenMP, or serial without it) or the engine's pool.
enum class threading { own, engine_pool };

/// Every call on p, for each way of threading and 1 and 2 threads: see the file comment.
void check_workspace(const P& p, const std::vector<call>& calls) {
  const std::string shape = p.geo.name;
  use_isa(lnorm::best_isa());
  lnorm::set_num_threads(1);
  const result<float, float> stats = run_forward(p, op::layer_norm), rms_stats = run_forward(p, op::rms_norm);
  for (call c : calls) {
    const result<float, float>& st = c == call::rms_norm_backward ? rms_stats : stats;
    outcome first;  // the allocating call on one thread: every other run must give its bits
    bool have_first = false;
    for (threading how : {threading::own, threading::engine_pool}) {
      for (int threads : {1, 2}) {
        engine_pool pool(threads);
        if (how == threading::engine_pool) lnorm::set_thread_pool({&pool, &engine_pool::run, pool.size()});
        else lnorm::set_num_threads(threads);
        test_case t(std::string(call_name(c)) + " with a workspace, " + shape + ", " + std::to_string(threads) +
                    (how == threading::engine_pool ? " threads of an engine pool" : " threads"));
        const std::size_t bytes = workspace_size(p, c, 0);
        if (verbose()) std::printf("  %-70s %zu bytes\n", t.name().c_str(), bytes);
        LNORM_CHECK(t, bytes == workspace_size(p, c, threads), "the query for num_threads = 0 and = %d differ", threads);
        const outcome allocating = run_call(p, c, st, nullptr);
        LNORM_CHECK(t, allocating.status.code == lnorm::status_code::ok, "without a workspace: %s", allocating.status.message);
        // The counter sees lnorm's own allocations: the call without a workspace makes one exactly
        // when the query says it needs memory.
        LNORM_CHECK(t, (allocating.allocations > 0) == (bytes > 0), "without a workspace: %ld allocations, the query says %zu bytes",
                    allocating.allocations, bytes);
        if (!have_first) {
          first = allocating;
          have_first = true;
        }
        LNORM_CHECK(t, same_bits(allocating, first), "without a workspace: the results depend on the threads");
        // Exactly the bytes asked for, at an odd address: the call aligns what it carves.
        std::vector<unsigned char> arena(bytes + 1);
        const lnorm::workspace ws{arena.data() + 1, bytes};
        const outcome lent = run_call(p, c, st, &ws);
        LNORM_CHECK(t, lent.status.code == lnorm::status_code::ok, "with the workspace: %s", lent.status.message);
        LNORM_CHECK(t, lent.allocations == 0, "with a workspace of %zu bytes: %ld allocations", bytes, lent.allocations);
        LNORM_CHECK(t, same_bits(lent, first), "with the workspace: not the bits of the allocating call");
        if (bytes > 0) {
          const lnorm::workspace short_ws{arena.data() + 1, bytes - 1};
          const outcome refused = run_call(p, c, st, &short_ws);
          LNORM_CHECK(t, refused.status.code == lnorm::status_code::workspace_too_small, "one byte short: status %d (%s)",
                      static_cast<int>(refused.status.code), refused.status.message);
          LNORM_CHECK(t, refused.allocations == 0, "one byte short: %ld allocations", refused.allocations);
          outcome unwritten;  // the outputs as run_call fills them
          unwritten.y = unwritten.s = unwritten.dx = filled<float>(p.out_size());
          unwritten.mean = unwritten.rstd = filled<float>(p.rows());
          unwritten.dgamma = unwritten.dbeta = filled<float>(p.cols());
          LNORM_CHECK(t, same_bits(refused, unwritten), "one byte short: an output was written");
        }
        // Problems of 65536 elements and more are split between two threads: here, the pool's.
        if (how == threading::engine_pool && threads == 2 && p.rows() * p.cols() >= 65536)
          LNORM_CHECK(t, pool.batches() > 0, "the engine pool ran nothing");
        lnorm::set_thread_pool({});
      }
    }
  }
  lnorm::set_num_threads(2);
}

void check_workspaces(rng& g) {
  auto make = [&](const geometry& geo) { return make_problem<float, float>(geo, 1e-5, {true, true, true}, rows_kind::random, 0, g); };
  const std::vector<call> all(std::begin(kCalls), std::end(kCalls));
  // Contiguous rows: the forward calls need nothing, the backward its partials.
  check_workspace(make(trailing_rows(64, 768, 768, 768)), all);
  // Gathers (a strided normalized axis; two normalized axes around a batch axis), column tiles: each
  // large enough for two threads.
  check_workspace(make(strided_axis(300, 257, 2)), all);
  check_workspace(make(outer_axes(3, 40, 700)), all);
  check_workspace(make(middle_axis(4, 33, 700)), all);
  // Rows of 65536 and more, cut into chunks: the chunk statistics and partials.
  check_workspace(make(trailing_rows(3, 4 * 16384 + 5, 4 * 16384 + 5, 4 * 16384 + 5)), all);
  // A fused add whose outputs stream (32 MiB or more: over every CPU's threshold, lnorm/policy.hpp): s
  // is built in a row buffer per thread.
  check_workspace(make(trailing_rows(2100, 4099, 4099, 4099)), {call::add_layer_norm, call::add_rms_norm});
}

/// Queries: 0 for the forward calls on contiguous rows; per thread for gathers; 0 for a bad problem.
void check_queries() {
  test_case t("workspace queries");
  const std::int64_t shape[2] = {300, 257}, rows[2] = {257, 1}, gathered[2] = {2 * 257 + 1, 2};
  const bool norm[2] = {false, true}, none[2] = {false, false};
  LNORM_CHECK(t, lnorm::layer_norm_workspace_size<float>(2, shape, norm, rows, rows, 8) == 0, "rows forward: not 0");
  LNORM_CHECK(t, lnorm::add_norm_workspace_size<float>(2, shape, norm, rows, rows, rows, rows, 8) == 0, "rows add: not 0");
  const std::size_t one = lnorm::layer_norm_workspace_size<float>(2, shape, norm, gathered, gathered, 1);
  const std::size_t two = lnorm::layer_norm_workspace_size<float>(2, shape, norm, gathered, gathered, 2);
  LNORM_CHECK(t, one >= 2 * 257 * sizeof(float) && two > one, "gather: %zu bytes on 1 thread, %zu on 2", one, two);
  LNORM_CHECK(t, lnorm::layer_norm_workspace_size<float>(2, shape, none, rows, rows) == 0, "no normalized axis: not 0");
  LNORM_CHECK(t, lnorm::layer_norm_workspace_size<float>(2, shape, norm, nullptr, rows) == 0, "null strides: not 0");
  LNORM_CHECK(t, lnorm::norm_backward_workspace_size<double>(true, 2, shape, norm, rows, rows, rows, 1) >=
                     257 * sizeof(double), "rms backward: less than one set of partials");
}

/// nullptr for gamma, beta, bias_in, dgamma and dbeta with only T spelled: the weight parameters take
/// no part in template argument deduction (this file would not compile otherwise).
void check_nullptr_weights() {
  test_case t("nullptr weights without a template argument for W");
  float x[2 * 8], r[2 * 8], s[2 * 8], y[2 * 8], dy[2 * 8], dx[2 * 8], mean[2], rstd[2];
  for (int i = 0; i < 16; ++i) x[i] = r[i] = dy[i] = static_cast<float>(i % 5) - 1.5f;
  const std::int64_t shape[2] = {2, 8}, st[2] = {8, 1};
  const bool norm[2] = {false, true};
  const lnorm::status a = lnorm::try_layer_norm_nd<float>(2, shape, norm, {x, st}, {y, st}, nullptr, nullptr, 1e-5, mean, rstd);
  const lnorm::status b = lnorm::try_rms_norm_nd<float>(2, shape, norm, {x, st}, {y, st}, nullptr, 1e-6, rstd);
  const lnorm::status c = lnorm::try_add_norm_nd<float>(false, 2, shape, norm, {x, st}, {r, st}, nullptr, {s, st}, {y, st},
                                                        nullptr, nullptr, 1e-5, mean, rstd);
  const lnorm::status d = lnorm::try_norm_backward_nd<float>(false, 2, shape, norm, {dy, st}, {x, st}, mean, rstd, nullptr,
                                                             {dx, st}, nullptr, nullptr);
  // bfloat16 data with float32 weights: W spelled, nullptr still taken.
  lnorm::bfloat16_t xb[2 * 8], yb[2 * 8];
  for (int i = 0; i < 16; ++i) xb[i] = lnorm::bfloat16_t::from_float(x[i]);
  const float gamma[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const lnorm::status e =
      lnorm::try_layer_norm_nd<lnorm::bfloat16_t, float>(2, shape, norm, {xb, st}, {yb, st}, gamma, nullptr, 1e-5, nullptr, nullptr);
  LNORM_CHECK(t, a && b && c && d && e, "statuses %d %d %d %d %d", static_cast<int>(a.code), static_cast<int>(b.code),
              static_cast<int>(c.code), static_cast<int>(d.code), static_cast<int>(e.code));
}

/// RMSNorm's backward with a dbeta: zeros on every layout (rows, columns, rows cut into chunks, none).
void check_rms_dbeta() {
  test_case t("rms backward: a given dbeta is zeroed");
  struct shape2 {
    std::int64_t rows, cols;
    bool norm_last;  // normalize the last axis (rows), or the first (columns)
  };
  for (const shape2 c : {shape2{5, 300, true}, shape2{300, 5, false}, shape2{2, 4 * 16384 + 3, true}, shape2{0, 40, true}}) {
    const std::int64_t n = c.rows * c.cols, width = c.norm_last ? c.cols : c.rows;
    std::vector<float> x(static_cast<std::size_t>(n) + 1), dy(x.size()), dx(x.size()), rstd(static_cast<std::size_t>(n / (width ? width : 1) + 1), 1.0f);
    for (std::int64_t i = 0; i < n; ++i) {
      x[static_cast<std::size_t>(i)] = static_cast<float>(i % 7) - 3.0f;
      dy[static_cast<std::size_t>(i)] = static_cast<float>(i % 5) - 2.0f;
    }
    std::vector<float> dg(static_cast<std::size_t>(width), 7.0f), db(dg.size(), 7.0f);
    const std::int64_t shape[2] = {c.rows, c.cols}, st[2] = {c.cols, 1};
    const bool norm[2] = {!c.norm_last, c.norm_last};
    const lnorm::status s = lnorm::try_norm_backward_nd<float>(true, 2, shape, norm, {dy.data(), st}, {x.data(), st}, nullptr,
                                                               rstd.data(), nullptr, {dx.data(), st}, dg.data(), db.data());
    LNORM_CHECK(t, s, "%ldx%ld: %s", static_cast<long>(c.rows), static_cast<long>(c.cols), s.message);
    LNORM_CHECK(t, std::all_of(db.begin(), db.end(), [](float v) { return v == 0.0f; }), "%ldx%ld: dbeta not zeroed",
                static_cast<long>(c.rows), static_cast<long>(c.cols));
  }
}

}  // namespace
}  // namespace lnorm_test

int main() {
  using namespace lnorm_test;
  std::printf("lnorm %s api tests: kernel set %s; openmp %s\n", LNORM_VERSION_STRING, lnorm::active_isa(),
              lnorm::openmp_enabled() ? "on" : "off");
  rng g(4321);
  check_nullptr_weights();
  check_queries();
  check_rms_dbeta();
  check_workspaces(g);
  std::printf("%ld passed, %ld failed\n", results().passed, results().failed);
  return results().failed == 0 ? 0 : 1;
}
