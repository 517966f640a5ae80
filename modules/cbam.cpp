#include <attnkit/modules/cbam.h>
#include <attnkit/modules/fused_gates.h>
#include <attnkit/modules/squeeze_excite.h>  // detail::check_gate_input

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

CBAMImpl::CBAMImpl(const CBAMOptions& options_) : options(options_) { reset(); }

void CBAMImpl::reset() {
  // The children validate their own options; their messages name the child ("ChannelAttention: ...").
  channel = register_module("channel", ChannelAttention(options.channel_options()));
  spatial = nullptr;
  if (!options.no_spatial()) spatial = register_module("spatial", SpatialAttention(options.spatial_options()));
}

std::tuple<torch::Tensor, torch::Tensor> CBAMImpl::forward_with_attention(const torch::Tensor& x) {
  // Checked here too so the message names CBAM, the module the caller holds.
  detail::check_gate_input(x, options.channels(), "CBAM", channel->fc1->weight);
  auto result = channel->forward_with_attention(x);
  if (spatial) result = spatial->forward_with_attention(std::get<0>(result));
  if (recording()) record(std::get<1>(result));
  return result;
}

torch::Tensor CBAMImpl::forward(const torch::Tensor& x) { return run(x, torch::Tensor()); }

torch::Tensor CBAMImpl::forward_add_relu(const torch::Tensor& x, const torch::Tensor& shortcut) {
  return run(x, shortcut);
}

torch::Tensor CBAMImpl::run(const torch::Tensor& x, const torch::Tensor& shortcut) {
  detail::check_gate_input(x, options.channels(), "CBAM", channel->fc1->weight);
  const bool maps = recording() || channel->recording() || (spatial && spatial->recording());
  if (detail::use_fused(options.impl(), x, maps, "CBAM")) {
    ops::CbamWeights w{channel->fc1->weight, channel->fc1->bias, channel->fc2->weight, channel->fc2->bias};
    ops::CbamConfig cfg = detail::channel_gate_config(options.pool(), shortcut);
    if (!spatial || detail::add_spatial_gate(*spatial, w, cfg)) {
      auto y = ops::cbam(x, w, cfg, shortcut);
      if (spatial) detail::count_batch(*spatial, cfg);
      return y;
    }
    TORCH_CHECK(options.impl() != Implementation::Fused,
                "CBAM: impl=fused cannot run a spatial BatchNorm with cumulative-average momentum");
  }
  return detail::add_relu(std::get<0>(forward_with_attention(x)), shortcut);
}

void CBAMImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::CBAM(channels=" << options.channels() << ", reduction=" << options.reduction()
         << ", kernel_size=" << options.kernel_size() << ", no_spatial=" << (options.no_spatial() ? "true" : "false")
         << ")";
}

}  // namespace attnkit
