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
//
// This header also holds the two helpers every gate of attnkit shares (hidden-width rounding and
// input validation), so the channel gates agree on both.
#pragma once

#include <attnkit/modules/attention_map.h>
#include <attnkit/modules/implementation.h>
#include <attnkit/modules/residual_epilogue.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>
#include <string>
#include <tuple>

namespace attnkit {

/// Hidden width of a gate's bottleneck MLP for `channels` inputs and a reduction ratio.
///  - `rd_divisor` > 0: timm's make_divisible(channels / reduction, rd_divisor, round_limit=0):
///    round to the nearest multiple of rd_divisor, at least rd_divisor.
///  - `rd_divisor` == 0: floor(channels / reduction) as the official SE and CBAM code (C // r),
///    but at least 1 (the official code would build an empty layer for C < r).
int64_t reduced_channels(int64_t channels, int64_t reduction, int64_t rd_divisor);

namespace detail {
/// Checks that `x` is a floating [N, channels, H, W] tensor (channels < 0: any count ≥ 1) with
/// H, W ≥ 1, and, when `like` is defined, that it has the device and dtype of `like` (a parameter).
/// Errors name the block, e.g. "CBAM: expected input of shape [N, 256, H, W], got [2, 128, 7, 7]".
void check_gate_input(const torch::Tensor& x, int64_t channels, const char* block,
                      const torch::Tensor& like = {});
}  // namespace detail

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

class SqueezeExciteImpl : public torch::nn::Cloneable<SqueezeExciteImpl>,
                          public AttentionMapRecorder,
                          public ResidualEpilogue {
 public:
  explicit SqueezeExciteImpl(const SqueezeExciteOptions& options);
  void reset() override;
  /// x: [N, C, H, W] floating, on the parameters' device and dtype. Returns x · gate, same shape.
  torch::Tensor forward(const torch::Tensor& x);
  /// relu(forward(x) + shortcut), the end of a residual block, in the fused op's last pass when
  /// forward runs fused (see residual_epilogue.h).
  torch::Tensor forward_add_relu(const torch::Tensor& x, const torch::Tensor& shortcut) override;
  /// forward(x) and the N×C gate; records the gate when recording() is on.
  std::tuple<torch::Tensor, torch::Tensor> forward_with_attention(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  /// The hidden width R actually used.
  int64_t hidden_channels() const { return hidden_; }

  SqueezeExciteOptions options;
  torch::nn::Conv2d fc1{nullptr};
  torch::nn::Conv2d fc2{nullptr};

 private:
  int64_t hidden_ = 0;
  /// forward (shortcut undefined) or forward_add_relu.
  torch::Tensor run(const torch::Tensor& x, const torch::Tensor& shortcut);
};

TORCH_MODULE(SqueezeExcite);

}  // namespace attnkit
