// cpp/tests/header_alone.cpp: <lnorm/lnorm.hpp> compiles on its own, first and only include, with
// -Wall -Wextra -Wpedantic -Werror, and the calls of API.md work as written there.
#include <lnorm/lnorm.hpp>

int main() {
  const float x[6] = {1.f, 2.f, 4.f, -1.f, 0.5f, 3.f};
  const float gamma[3] = {1.f, 2.f, 0.5f}, beta[3] = {0.f, 1.f, -1.f};
  float y[6] = {};
  lnorm::layer_norm(x, y, 2, 3, gamma, beta, 1e-5f);
  lnorm::rms_norm(x, y, 2, 3, gamma, 1e-6f);
  lnorm::layer_norm<float>(x, y, 2, 3, nullptr, nullptr, 1e-5f);
  const char* isa = lnorm::active_isa();
  return isa && isa[0] != '\0' && y[0] < 0.f ? 0 : 1;
}
