// Squeeze-and-Excitation: a channel gate computed from the global average of each channel.
//
//   s = sigmoid(fc2(relu(fc1(mean_hw(x)))))  (s is N×C),   y = x · s  (broadcast over H, W)
//
// Paper: J. Hu, L. Shen, G. Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (arXiv:1709.01507).
// Layout and defaults follow timm's `SEModule` (timm/layers/squeeze_excite.py) so that timm
// checkpoints (seresnet*, ...) load with no renaming:
//   fc1.weight [R, C, 1, 1], fc1.bias [R], fc2.weight [C, R, 1, 1], fc2.bias [C]
// (1×1 convolutions, as in timm; the forward applies them as the equivalent matrix products).
// Departures from the paper:
//   - the hidden width R is timm's make_divisible(C / reduction, rd_divisor = 8), i.e. rounded to
//     the nearest multiple of 8 and at least 8, not the paper's C / 16. Set `rd_divisor(0)` for the
//     paper's floor(C / reduction) (at least 1), or `rd_channels` to give R directly.
// The attention map (AttentionMapRecorder) is the N×C gate s.
#pragma once

#include <attnkit/modules/gate.h>
#include <attnkit/modules/implementation.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>
#include <tuple>

namespace attnkit {

/// Options of SqueezeExcite.
struct SqueezeExciteOptions {
  /* implicit */ SqueezeExciteOptions(int64_t channels) : channels_(channels) {}
  /// Channels C of the input feature map.
  TORCH_ARG(int64_t, channels);
  /// Reduction ratio r: the hidden width is about C / r (see rd_divisor, rd_channels).
  TORCH_ARG(int64_t, reduction) = 16;
  /// Explicit hidden width; 0 means "derive it from reduction and rd_divisor".
  TORCH_ARG(int64_t, rd_channels) = 0;
  /// Round the hidden width to a multiple of this (timm's default 8); 0 = floor(C / r), at least 1.
  TORCH_ARG(int64_t, rd_divisor) = 8;
  /// Whether fc1 and fc2 have biases (true in the paper and timm).
  TORCH_ARG(bool, bias) = true;
  /// fused: attnkit's fused kernels; composite: stock ATen ops; auto: fused where available for the
  /// input's device, composite where not or while recording the attention map.
  TORCH_ARG(Implementation, impl) = Implementation::Auto;
};

/// The SE gate; forward, forward_add_relu and forward_with_attention come from Gate (gate.h).
class SqueezeExciteImpl : public torch::nn::Cloneable<SqueezeExciteImpl>, public Gate {
 public:
  explicit SqueezeExciteImpl(const SqueezeExciteOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  Implementation implementation() const override { return options.impl(); }
  void set_implementation(Implementation impl) override { options.impl(impl); }

  /// The hidden width R actually used.
  int64_t hidden_channels() const { return hidden_; }

  SqueezeExciteOptions options;
  torch::nn::Conv2d fc1{nullptr};
  torch::nn::Conv2d fc2{nullptr};

 private:
  void check_input(const torch::Tensor& x) const override;
  std::tuple<torch::Tensor, torch::Tensor> forward_composite(const torch::Tensor& x) override;
  torch::Tensor forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) override;

  int64_t hidden_ = 0;
};

TORCH_MODULE(SqueezeExcite);

}  // namespace attnkit
