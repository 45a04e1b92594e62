// lnorm/kernels/neon.hpp: the NEON kernel set (aarch64).
#pragma once
