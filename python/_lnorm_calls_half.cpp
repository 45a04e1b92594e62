// python/_lnorm_calls_half.cpp: the float16 and bfloat16 kernel calls of the Python module.
#include "_lnorm_calls.hpp"

LNORM_PY_HALF_CALLS(template)
