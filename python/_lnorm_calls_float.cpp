// python/_lnorm_calls_float.cpp: the float32 and float64 kernel calls of the Python module.
#include "_lnorm_calls.hpp"

LNORM_PY_FLOAT_CALLS(template)
