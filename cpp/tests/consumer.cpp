// cpp/tests/consumer.cpp: a consumer built with plain -O2 and no -m flags. It prints the kernel set it
// runs (lnorm::active_isa()): dispatch at run time must still pick the best one the CPU has (avx512 on
// an AVX-512 machine), and LNORM_ISA must be able to force another.
#include <lnorm/lnorm.hpp>

#include <cstdio>

int main() {
  float x[64], y[64];
  for (int i = 0; i < 64; ++i) x[i] = static_cast<float>(i % 7) - 2.5f;
  lnorm::layer_norm<float>(x, y, 2, 32, nullptr, nullptr, 1e-5f);  // runs the kernels: no SIGILL
  std::printf("%s\n", lnorm::active_isa());
  return y[0] < 0.f ? 0 : 1;
}
