// lnorm/kernels/family.hpp: the norm descriptor. Every norm lnorm computes is one pattern: statistics
// over some axes, then an affine map with weights indexed over others. What tells one member of the
// family from another, as far as a kernel is concerned, is a descriptor type, a template argument of
// the kernels (never a run-time flag):
//
//   centered  the mean is subtracted and the variance used (LayerNorm, and GroupNorm, InstanceNorm,
//             BatchNorm), or only the mean square (RMSNorm; no bias then);
//   weights   how gamma and beta are indexed: per normalized element (LayerNorm, RMSNorm) or per
//             channel (GroupNorm, InstanceNorm and BatchNorm's affine, a channel spanning many
//             normalized elements).
//
// The row kernels take per-element weights; the channel norms' kernels (kernels/channel_body.inl,
// driven by lnorm/channel_norm.hpp as channel_norm_kind) take per-channel weights, folded once per
// channel into the affine's coefficients.
#pragma once

namespace lnorm {
namespace detail {

enum class weights_by : int { element = 0, channel = 1 };

template <bool Centered, weights_by Weights = weights_by::element>
struct norm_kind {
  static constexpr bool centered = Centered;
  static constexpr weights_by weights = Weights;
  static constexpr bool has_bias = Centered;  // RMSNorm: gamma only
};

using layer_norm_kind = norm_kind<true>;
using rms_norm_kind = norm_kind<false>;
// GroupNorm, InstanceNorm and BatchNorm (lnorm/channel_norm.hpp): centered, weights per channel.
using channel_norm_kind = norm_kind<true, weights_by::channel>;

}  // namespace detail
}  // namespace lnorm
