#include <attnkit/modules/cbam.h>
#include <attnkit/modules/fused_gates.h>

namespace attnkit {

ChannelAttentionOptions CBAMOptions::channel_options() const {
  return ChannelAttentionOptions(channels())
      .reduction(reduction())
      .rd_channels(rd_channels())
      .rd_divisor(rd_divisor())
      .pool(pool())
      .bias(mlp_bias());
}

SpatialAttentionOptions CBAMOptions::spatial_options() const {
  return SpatialAttentionOptions()
      .kernel_size(kernel_size())
      .pool_order(pool_order())
      .batch_norm(batch_norm())
      .bn_eps(bn_eps())
      .bn_momentum(bn_momentum())
      .bn_zero_init(bn_zero_init());
}

CBAMImpl::CBAMImpl(const CBAMOptions& options_) : Gate("CBAM"), options(options_) { reset(); }

void CBAMImpl::reset() {
  channel = register_module("channel", ChannelAttention(options.channel_options()));
  spatial = nullptr;
  if (!options.no_spatial()) spatial = register_module("spatial", SpatialAttention(options.spatial_options()));
}

// Checked here too (the children check again) so the message names CBAM, the module the caller holds.
void CBAMImpl::check_input(const torch::Tensor& x) const {
  detail::check_gate_input(x, options.channels(), block_name(), channel->fc1->weight);
}

std::tuple<torch::Tensor, torch::Tensor> CBAMImpl::forward_composite(const torch::Tensor& x) {
  auto result = channel->forward_with_attention(x);
  if (spatial) result = spatial->forward_with_attention(std::get<0>(result));
  return result;
}

bool CBAMImpl::records_maps() const {
  return recording() || channel->recording() || (spatial && spatial->recording());
}

torch::Tensor CBAMImpl::forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) {
  ops::CbamWeights w{channel->fc1->weight, channel->fc1->bias, channel->fc2->weight, channel->fc2->bias};
  ops::CbamConfig cfg = detail::channel_gate_config(options.pool(), shortcut);
  if (spatial && !detail::add_spatial_gate(*spatial, w, cfg)) {
    TORCH_CHECK(options.impl() != Implementation::Fused,
                "CBAM: impl=fused cannot run a spatial BatchNorm with cumulative-average momentum or ",
                "synchronised statistics");
    return {};
  }
  auto y = detail::fused_op(x, w, cfg, shortcut, into_shortcut);
  if (spatial) detail::count_batch(*spatial, cfg);
  return y;
}

torch::Tensor CBAMImpl::spatial_map(const std::optional<Position2d>& /*query*/) const {
  return last_attention().squeeze(1);
}

void CBAMImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::CBAM(channels=" << options.channels() << ", reduction=" << options.reduction()
         << ", kernel_size=" << options.kernel_size() << ", no_spatial=" << (options.no_spatial() ? "true" : "false")
         << ")";
}

}  // namespace attnkit
