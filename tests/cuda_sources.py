"""The CUDA sources that lnorm's CUDA tests and tools compile (shared by tests/test_cuda.py,
tests/test_cuda_static.py and bench/cuda_sass.py)."""

# Every public call of lnorm/cuda/norm.cuh instantiated for every (T, W): compiling this compiles
# every kernel. One `template void instantiate<T, W>();` line per pair (bench/cuda_sass.py --types
# keeps some of them).
INSTANTIATE_ALL = r"""
// Every public call of lnorm/cuda/norm.cuh for every element and weight type: every kernel.
#include <lnorm/cuda/norm.cuh>
namespace lc = lnorm::cuda;
template <class T, class W>
void instantiate() {
  using S = lc::stat_t<T>;
  const T* x = nullptr; T* y = nullptr; const W* g = nullptr; W* dg = nullptr; S* m = nullptr; std::size_t b = 0;
  (void)lc::layer_norm<T, W>(x, 1, y, 1, 1, 1, g, g, 1e-5, m, m);
  (void)lc::rms_norm<T, W>(x, 1, y, 1, 1, 1, g, 1e-5, m);
  (void)lc::add_layer_norm<T, W>(x, 1, x, 1, g, y, 1, y, 1, 1, 1, g, g, 1e-5, m, m);
  (void)lc::add_rms_norm<T, W>(x, 1, x, 1, g, y, 1, y, 1, 1, 1, g, 1e-5, m);
  (void)lc::layer_norm_backward<T, W>(x, 1, x, 1, m, m, g, y, 1, 1, 1, dg, dg);
  (void)lc::rms_norm_backward<T, W>(x, 1, x, 1, m, g, y, 1, 1, 1, dg);
  (void)lc::forward_workspace_size<T>(1, 1, b);
  (void)lc::backward_workspace_size<T>(1, 1, true, true, b);
}
template void instantiate<float, float>();
template void instantiate<double, double>();
template void instantiate<double, float>();
template void instantiate<__half, __half>();
template void instantiate<__half, float>();
template void instantiate<__nv_bfloat16, __nv_bfloat16>();
template void instantiate<__nv_bfloat16, float>();
"""
