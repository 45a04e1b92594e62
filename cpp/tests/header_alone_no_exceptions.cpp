// cpp/tests/header_alone_no_exceptions.cpp: <lnorm/lnorm.hpp> alone in a -fno-exceptions build (as
// many inference engines are), using only the try_ calls, which report errors as a status, and the
// N-d call with a workspace from the caller's own memory.
#include <lnorm/lnorm.hpp>

int main() {
  const float x[6] = {1.f, 2.f, 4.f, -1.f, 0.5f, 3.f};
  float y[6] = {};
  float rstd[2] = {};
  const lnorm::status ok = lnorm::try_layer_norm<float>(x, 3, y, 3, 2, 3, nullptr, nullptr, 1e-5);
  const lnorm::status also_ok = lnorm::try_rms_norm<float>(x, 3, y, 3, 2, 3, nullptr, 1e-6, rstd);
  const lnorm::status bad = lnorm::try_layer_norm<float>(x, 3, y, 3, 2, 0, nullptr, nullptr, 1e-5);  // cols = 0
  // Two rows of 3 elements 2 apart, rows 7 apart: a gathered layout, whose row buffers the workspace holds.
  const float xs[12] = {1.f, 0.f, 2.f, 0.f, 4.f, 0.f, 0.f, -1.f, 0.f, 0.5f, 0.f, 3.f};
  float ys[12] = {};
  const std::int64_t shape[2] = {2, 3}, strides[2] = {7, 2};
  const bool norm[2] = {false, true};
  unsigned char arena[1024];
  const lnorm::workspace ws{arena, lnorm::layer_norm_workspace_size<float>(2, shape, norm, strides, strides)};
  const lnorm::status lent = ws.bytes <= sizeof arena
                                 ? lnorm::try_layer_norm_nd<float>(2, shape, norm, {xs, strides}, {ys, strides}, nullptr,
                                                                   nullptr, 1e-5, nullptr, rstd, &ws)
                                 : lnorm::status{lnorm::status_code::workspace_too_small, "arena"};
  const lnorm::workspace none{};
  const lnorm::status refused = lnorm::try_layer_norm_nd<float>(2, shape, norm, {xs, strides}, {ys, strides}, nullptr,
                                                                nullptr, 1e-5, nullptr, rstd, &none);
  return ok && also_ok && !bad && bad.code == lnorm::status_code::invalid_argument && lent && ws.bytes > 0 &&
                 refused.code == lnorm::status_code::workspace_too_small
             ? 0
             : 1;
}
