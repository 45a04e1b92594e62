// cpp/tests/suite_bfloat16.cpp: the checks of suite.hpp for bfloat16 data, weights bfloat16 or float32, on every kernel set.
#include "suite.hpp"

void lnorm_test::run_bfloat16_suite(rng& g) {
  test_types<lnorm::bfloat16_t, lnorm::bfloat16_t>(g, true);
  test_types<lnorm::bfloat16_t, float>(g, false);
}
