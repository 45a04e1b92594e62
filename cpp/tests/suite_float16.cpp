// cpp/tests/suite_float16.cpp: the checks of suite.hpp for float16 data, weights float16 or float32, on every kernel set.
#include "suite.hpp"

void lnorm_test::run_float16_suite(rng& g) {
  test_types<lnorm::float16_t, lnorm::float16_t>(g, true);
  test_types<lnorm::float16_t, float>(g, false);
}
