// cpp/tests/suite_float32.cpp: the checks of suite.hpp for float32 data (weights float32), on every kernel set.
#include "suite.hpp"

void lnorm_test::run_float32_suite(rng& g) {
  test_types<float, float>(g, true);
}
