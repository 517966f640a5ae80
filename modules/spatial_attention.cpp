#include <attnkit/modules/batch_norm.h>
#include <attnkit/modules/fused_gates.h>
#include <attnkit/modules/spatial_attention.h>

namespace attnkit {

namespace {

// The composite math of CBAM's spatial gate in one place: a fused kernel can replace this function
// alone. Returns (x · m, m) with m the N×1×H×W map. `bn` may be null (no BatchNorm).
std::tuple<torch::Tensor, torch::Tensor> spatial_gate_reference(const torch::Tensor& x, PoolOrder order,
                                                                const torch::Tensor& conv_weight,
                                                                torch::nn::BatchNorm2d& bn) {
  const int64_t k = conv_weight.size(-1);
  auto mx = x.amax(1, /*keepdim=*/true);
  auto mean = x.mean(1, /*keepdim=*/true);
  auto pooled = order == PoolOrder::MaxMean ? torch::cat({mx, mean}, 1) : torch::cat({mean, mx}, 1);
  auto m = torch::conv2d(pooled, conv_weight, {}, /*stride=*/1, /*padding=*/k / 2);
  if (bn) m = batch_norm(*bn, m);
  m = torch::sigmoid(m);
  return {x * m, m};
}

}  // namespace

SpatialAttentionImpl::SpatialAttentionImpl(const SpatialAttentionOptions& options_)
    : Gate("SpatialAttention"), options(options_) {
  reset();
}

void SpatialAttentionImpl::reset() {
  TORCH_CHECK(options.kernel_size() >= 1 && options.kernel_size() % 2 == 1,
              "SpatialAttention: kernel_size must be odd and positive, got ", options.kernel_size());
  TORCH_CHECK(options.bn_eps() > 0, "SpatialAttention: bn_eps must be > 0, got ", options.bn_eps());
  TORCH_CHECK(options.bn_momentum() >= 0 && options.bn_momentum() <= 1,
              "SpatialAttention: bn_momentum must be in [0, 1], got ", options.bn_momentum());
  const int64_t k = options.kernel_size();
  conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 1, k).padding(k / 2).bias(false)));
  bn = nullptr;
  if (options.batch_norm()) {
    bn = register_module("bn", torch::nn::BatchNorm2d(torch::nn::BatchNormOptions(1)
                                                          .eps(options.bn_eps())
                                                          .momentum(options.bn_momentum())
                                                          .affine(true)));
    if (options.bn_zero_init()) {
      torch::NoGradGuard no_grad;
      bn->weight.zero_();
    }
  }
}

void SpatialAttentionImpl::check_input(const torch::Tensor& x) const {
  detail::check_gate_input(x, -1, block_name(), conv->weight);
}

std::tuple<torch::Tensor, torch::Tensor> SpatialAttentionImpl::forward_composite(const torch::Tensor& x) {
  return spatial_gate_reference(x, options.pool_order(), conv->weight, bn);
}

torch::Tensor SpatialAttentionImpl::forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) {
  // The fused CBAM op with no channel gate (g = 1).
  ops::CbamWeights w;
  ops::CbamConfig cfg;
  cfg.relu = shortcut.defined();
  if (!detail::add_spatial_gate(*this, w, cfg)) {
    TORCH_CHECK(options.impl() != Implementation::Fused,
                "SpatialAttention: impl=fused cannot run a BatchNorm with cumulative-average momentum or ",
                "synchronised statistics");
    return {};
  }
  auto y = detail::fused_op(x, w, cfg, shortcut, into_shortcut);
  detail::count_batch(*this, cfg);
  return y;
}

torch::Tensor SpatialAttentionImpl::spatial_map(const std::optional<Position2d>& /*query*/) const {
  return last_attention().squeeze(1);
}

void SpatialAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::SpatialAttention(kernel_size=" << options.kernel_size()
         << ", pool_order=" << (options.pool_order() == PoolOrder::MaxMean ? "max,mean" : "mean,max")
         << ", batch_norm=" << (options.batch_norm() ? "true" : "false") << ")";
}

}  // namespace attnkit
