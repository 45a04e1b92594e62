// cpp/tests/header_alone_no_exceptions.cpp: <lnorm/lnorm.hpp> alone in a -fno-exceptions build (as
// many inference engines are), using only the try_ calls, which report errors as a status.
#include <lnorm/lnorm.hpp>

int main() {
  const float x[6] = {1.f, 2.f, 4.f, -1.f, 0.5f, 3.f};
  float y[6] = {};
  float rstd[2] = {};
  const lnorm::status ok = lnorm::try_layer_norm<float>(x, 3, y, 3, 2, 3, nullptr, nullptr, 1e-5);
  const lnorm::status also_ok = lnorm::try_rms_norm<float>(x, 3, y, 3, 2, 3, nullptr, 1e-6, rstd);
  const lnorm::status bad = lnorm::try_layer_norm<float>(x, 3, y, 3, 2, 0, nullptr, nullptr, 1e-5);  // cols = 0
  return ok && also_ok && !bad && bad.code == lnorm::status_code::invalid_argument ? 0 : 1;
}
