// CBAM's channel gate: average- and max-pooled channel descriptors through one shared MLP.
//
//   s = sigmoid(mlp(avg_hw(x)) + mlp(max_hw(x))),  mlp(v) = fc2(relu(fc1(v))),  y = x · s
//
// s is N×C, broadcast over H and W. Paper: S. Woo, J. Park, J.-Y. Lee, I. S. Kweon, "CBAM:
// Convolutional Block Attention Module", ECCV 2018 (arXiv:1807.06521), section 3, eq. 2.
// Defaults follow the official code (github.com/Jongchan/attention-module, MODELS/cbam.py,
// `ChannelGate`): both pools, hidden width C // r, Linear layers with biases.
// Departures:
//   - the hidden width is at least 1 (the official C // r builds an empty layer when C < r);
//   - only the avg and max pools (the official code also has 'lp' and 'lse', unused by its models).
//
// Parameters (Linear layout, weight [out, in]) and where checkpoints map from:
//   attnkit            official ChannelGate      timm ChannelAttn (CbamModule.channel)
//   fc1.weight [R, C]  mlp.1.weight [R, C]       fc1.weight [R, C, 1, 1]  (reshape to [R, C])
//   fc1.bias   [R]     mlp.1.bias                — (timm's mlp_bias=False: use bias(false))
//   fc2.weight [C, R]  mlp.3.weight [C, R]       fc2.weight [C, R, 1, 1]  (reshape to [C, R])
//   fc2.bias   [C]     mlp.3.bias                —
// timm rounds the hidden width to nearest (make_divisible(C/r, 1)) where the official code floors:
// `rd_divisor(1)` gives timm's width, the default 0 the official one.
// The attention map (AttentionMapRecorder) is the N×C gate s.
#pragma once

#include <attnkit/modules/gate.h>
#include <attnkit/modules/implementation.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>
#include <tuple>

namespace attnkit {

/// Which global poolings feed CBAM's channel MLP (their MLP outputs are summed).
enum class ChannelPool { Avg, Max, AvgMax };

/// Options of ChannelAttention.
struct ChannelAttentionOptions {
  /* implicit */ ChannelAttentionOptions(int64_t channels) : channels_(channels) {}
  /// Channels C of the input feature map.
  TORCH_ARG(int64_t, channels);
  /// Reduction ratio r of the MLP: hidden width C / r (see rd_divisor, rd_channels).
  TORCH_ARG(int64_t, reduction) = 16;
  /// Explicit hidden width; 0 means "derive it from reduction and rd_divisor".
  TORCH_ARG(int64_t, rd_channels) = 0;
  /// 0 = floor(C / r), at least 1 (official CBAM); d > 0 = nearest multiple of d, at least d (timm: 1).
  TORCH_ARG(int64_t, rd_divisor) = 0;
  /// Pooled descriptors fed to the shared MLP: avg, max, or both (official default: both).
  TORCH_ARG(ChannelPool, pool) = ChannelPool::AvgMax;
  /// Whether fc1 and fc2 have biases (official: true; timm's CbamModule: false).
  TORCH_ARG(bool, bias) = true;
  /// fused: attnkit's fused kernels; composite: stock ATen ops; auto: fused where available for the
  /// input's device, composite where not or while recording the attention map.
  TORCH_ARG(Implementation, impl) = Implementation::Auto;
};

/// CBAM's channel gate; forward, forward_add_relu and forward_with_attention come from Gate (gate.h).
class ChannelAttentionImpl : public torch::nn::Cloneable<ChannelAttentionImpl>, public Gate {
 public:
  explicit ChannelAttentionImpl(const ChannelAttentionOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  Implementation implementation() const override { return options.impl(); }
  void set_implementation(Implementation impl) override { options.impl(impl); }

  /// The hidden width R actually used.
  int64_t hidden_channels() const { return hidden_; }

  ChannelAttentionOptions options;
  torch::nn::Linear fc1{nullptr};
  torch::nn::Linear fc2{nullptr};

 private:
  void check_input(const torch::Tensor& x) const override;
  std::tuple<torch::Tensor, torch::Tensor> forward_composite(const torch::Tensor& x) override;
  torch::Tensor forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) override;

  int64_t hidden_ = 0;
};

TORCH_MODULE(ChannelAttention);

}  // namespace attnkit
