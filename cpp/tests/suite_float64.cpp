// cpp/tests/suite_float64.cpp: the checks of suite.hpp for float64 data, weights float64 or float32, on every kernel set.
#include "suite.hpp"

void lnorm_test::run_float64_suite(rng& g) {
  test_types<double, double>(g, true);
  test_types<double, float>(g, false);
}
