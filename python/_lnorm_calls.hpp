// python/_lnorm_calls.hpp: the typed kernel calls of the Python module, one function template per
// operation, instantiated for each (data type, weight type) pair in _lnorm_calls_*.cpp so that the
// kernel code compiles in several translation units at once.
#pragma once

#include <lnorm/lnorm.hpp>

namespace lnorm_py {

template <class T, class W>
lnorm::status norm_forward_call(bool rms, int ndim, const std::int64_t* shape, const bool* normalized, lnorm::strided x,
                                lnorm::strided y, const void* gamma, const void* beta, double eps, void* mean,
                                void* rstd) noexcept {
  using S = lnorm::stat_t<T>;
  if (rms)
    return lnorm::try_rms_norm_nd<T, W>(ndim, shape, normalized, x, y, static_cast<const W*>(gamma), eps,
                                        static_cast<S*>(rstd));
  return lnorm::try_layer_norm_nd<T, W>(ndim, shape, normalized, x, y, static_cast<const W*>(gamma),
                                        static_cast<const W*>(beta), eps, static_cast<S*>(mean), static_cast<S*>(rstd));
}

template <class T, class W>
lnorm::status add_norm_call(bool rms, int ndim, const std::int64_t* shape, const bool* normalized, lnorm::strided x,
                            lnorm::strided residual, const void* bias_in, lnorm::strided s, lnorm::strided y,
                            const void* gamma, const void* beta, double eps, void* mean, void* rstd) noexcept {
  using S = lnorm::stat_t<T>;
  return lnorm::try_add_norm_nd<T, W>(rms, ndim, shape, normalized, x, residual, static_cast<const W*>(bias_in), s, y,
                                      static_cast<const W*>(gamma), static_cast<const W*>(beta), eps,
                                      static_cast<S*>(mean), static_cast<S*>(rstd));
}

template <class T, class W>
lnorm::status norm_backward_call(bool rms, int ndim, const std::int64_t* shape, const bool* normalized,
                                 lnorm::strided dy, lnorm::strided x, const void* mean, const void* rstd,
                                 const void* gamma, lnorm::strided dx, void* dgamma, void* dbeta) noexcept {
  using S = lnorm::stat_t<T>;
  return lnorm::try_norm_backward_nd<T, W>(rms, ndim, shape, normalized, dy, x, static_cast<const S*>(mean),
                                           static_cast<const S*>(rstd), static_cast<const W*>(gamma), dx,
                                           static_cast<W*>(dgamma), static_cast<W*>(dbeta));
}

// GroupNorm (InstanceNorm: groups = C) or, with `batch`, BatchNorm (training or eval).
template <class T, class W>
lnorm::status channel_forward_call(bool batch, int ndim, const std::int64_t* shape, int channel_axis, std::int64_t groups,
                                   lnorm::strided x, lnorm::strided y, const void* gamma, const void* beta, double eps,
                                   int act, bool training, double momentum, void* running_mean, void* running_var,
                                   void* mean, void* rstd) noexcept {
  using S = lnorm::stat_t<T>;
  const auto a = static_cast<lnorm::activation>(act);
  if (batch)
    return lnorm::try_batch_norm_nd<T, W>(ndim, shape, channel_axis, x, y, static_cast<const W*>(gamma),
                                          static_cast<const W*>(beta), eps, training, momentum,
                                          static_cast<S*>(running_mean), static_cast<S*>(running_var), a,
                                          static_cast<S*>(mean), static_cast<S*>(rstd));
  return lnorm::try_group_norm_nd<T, W>(ndim, shape, channel_axis, groups, x, y, static_cast<const W*>(gamma),
                                        static_cast<const W*>(beta), eps, a, static_cast<S*>(mean), static_cast<S*>(rstd));
}

template <class T, class W>
lnorm::status channel_backward_call(bool batch, int ndim, const std::int64_t* shape, int channel_axis,
                                    std::int64_t groups, lnorm::strided dy, lnorm::strided x, const void* mean,
                                    const void* rstd, const void* gamma, lnorm::strided dx, void* dgamma,
                                    void* dbeta) noexcept {
  using S = lnorm::stat_t<T>;
  if (batch)
    return lnorm::try_batch_norm_backward_nd<T, W>(ndim, shape, channel_axis, dy, x, static_cast<const S*>(mean),
                                                   static_cast<const S*>(rstd), static_cast<const W*>(gamma), dx,
                                                   static_cast<W*>(dgamma), static_cast<W*>(dbeta));
  return lnorm::try_group_norm_backward_nd<T, W>(ndim, shape, channel_axis, groups, dy, x, static_cast<const S*>(mean),
                                                 static_cast<const S*>(rstd), static_cast<const W*>(gamma), dx,
                                                 static_cast<W*>(dgamma), static_cast<W*>(dbeta));
}

}  // namespace lnorm_py

// Declares (PREFIX = extern template) or instantiates (PREFIX = template) the calls for (T, W).
#define LNORM_PY_CALLS(PREFIX, T, W)                                                                              \
  PREFIX lnorm::status lnorm_py::norm_forward_call<T, W>(bool, int, const std::int64_t*, const bool*, lnorm::strided, \
                                                         lnorm::strided, const void*, const void*, double, void*,     \
                                                         void*) noexcept;                                             \
  PREFIX lnorm::status lnorm_py::add_norm_call<T, W>(bool, int, const std::int64_t*, const bool*, lnorm::strided,     \
                                                     lnorm::strided, const void*, lnorm::strided, lnorm::strided,     \
                                                     const void*, const void*, double, void*, void*) noexcept;        \
  PREFIX lnorm::status lnorm_py::norm_backward_call<T, W>(bool, int, const std::int64_t*, const bool*, lnorm::strided, \
                                                          lnorm::strided, const void*, const void*, const void*,      \
                                                          lnorm::strided, void*, void*) noexcept;            \
  PREFIX lnorm::status lnorm_py::channel_forward_call<T, W>(bool, int, const std::int64_t*, int, std::int64_t,      \
                                                            lnorm::strided, lnorm::strided, const void*, const void*, \
                                                            double, int, bool, double, void*, void*, void*,           \
                                                            void*) noexcept;                                          \
  PREFIX lnorm::status lnorm_py::channel_backward_call<T, W>(bool, int, const std::int64_t*, int, std::int64_t,     \
                                                             lnorm::strided, lnorm::strided, const void*, const void*, \
                                                             const void*, lnorm::strided, void*, void*) noexcept;

#define LNORM_PY_FLOAT_CALLS(PREFIX) \
  LNORM_PY_CALLS(PREFIX, float, float) \
  LNORM_PY_CALLS(PREFIX, double, double) \
  LNORM_PY_CALLS(PREFIX, double, float)

#define LNORM_PY_HALF_CALLS(PREFIX)                     \
  LNORM_PY_CALLS(PREFIX, lnorm::float16_t, lnorm::float16_t) \
  LNORM_PY_CALLS(PREFIX, lnorm::float16_t, float)            \
  LNORM_PY_CALLS(PREFIX, lnorm::bfloat16_t, lnorm::bfloat16_t) \
  LNORM_PY_CALLS(PREFIX, lnorm::bfloat16_t, float)

LNORM_PY_FLOAT_CALLS(extern template)
LNORM_PY_HALF_CALLS(extern template)
