// CBAM's spatial gate: a k×k convolution over the channel-wise max and mean of the feature map.
//
//   m = sigmoid(bn(conv_k([max_c(x), mean_c(x)])))  (m is N×1×H×W, zero padding k // 2),  y = x · m
//
// Paper: S. Woo, J. Park, J.-Y. Lee, I. S. Kweon, "CBAM: Convolutional Block Attention Module",
// ECCV 2018 (arXiv:1807.06521), section 3, eq. 3 (which writes [avg, max] and no BatchNorm).
// Defaults follow the official code (github.com/Jongchan/attention-module, MODELS/cbam.py,
// `SpatialGate`), which departs from the paper's text as follows, and so do we by default:
//   - the two maps are stacked [max, mean] (channel 0 = max);
//   - a BatchNorm2d(1) (eps 1e-5, momentum 0.01, affine) follows the bias-free conv, and its
//     weight is initialised to 0 (MODELS/model_resnet.py zeroes every "SpatialGate ... bn" weight),
//     so a fresh gate is a constant 0.5 that learns to depart from it.
// timm's `SpatialAttn` (timm/layers/cbam.py) stacks [mean, max] and uses ConvNormAct (bias-free
// conv, BatchNorm2d with torch's defaults: momentum 0.1, weight initialised to 1):
// SpatialAttentionOptions::timm_style() gives those settings.
//
// Parameters and buffers, and where checkpoints map from:
//   attnkit             official SpatialGate              timm SpatialAttn (CbamModule.spatial)
//   conv.weight [1,2,k,k]  spatial.conv.weight           conv.conv.weight
//   bn.{weight, bias, running_mean, running_var, num_batches_tracked}
//                          spatial.bn.*                  conv.bn.*
// The weights load as they are if pool_order matches the source (MaxMean for official, MeanMax for
// timm); to load into the other order, swap conv.weight's two input channels.
// The attention map (AttentionMapRecorder) is m, N×1×H×W.
#pragma once

#include <attnkit/modules/attention_map.h>
#include <attnkit/modules/gate.h>
#include <attnkit/modules/implementation.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>
#include <tuple>

namespace attnkit {

/// Order in which the channel-wise max and mean maps are stacked as the conv's two inputs.
enum class PoolOrder {
  MaxMean,  ///< [max, mean]: the official CBAM code
  MeanMax,  ///< [mean, max]: timm and the paper's equation
};

/// Options of SpatialAttention.
struct SpatialAttentionOptions {
  /// Side k of the square convolution (odd; padding k // 2 keeps H and W).
  TORCH_ARG(int64_t, kernel_size) = 7;
  /// Stacking order of the max and mean maps.
  TORCH_ARG(PoolOrder, pool_order) = PoolOrder::MaxMean;
  /// Whether a BatchNorm2d(1) follows the conv (official and timm: yes).
  TORCH_ARG(bool, batch_norm) = true;
  /// BatchNorm eps.
  TORCH_ARG(double, bn_eps) = 1e-5;
  /// BatchNorm momentum of the running statistics (official 0.01, torch/timm 0.1).
  TORCH_ARG(double, bn_momentum) = 0.01;
  /// Whether reset() sets the BatchNorm weight to 0, as the official ResNet init (timm: no, 1).
  TORCH_ARG(bool, bn_zero_init) = true;
  /// fused: attnkit's fused kernels; composite: stock ATen ops; auto: fused where available for the
  /// input's device, composite where not or while recording the attention map.
  TORCH_ARG(Implementation, impl) = Implementation::Auto;

 public:
  /// timm's SpatialAttn: [mean, max], BatchNorm momentum 0.1, weight initialised to 1.
  static SpatialAttentionOptions timm_style() {
    return SpatialAttentionOptions().pool_order(PoolOrder::MeanMax).bn_momentum(0.1).bn_zero_init(false);
  }
};

/// CBAM's spatial gate; forward, forward_add_relu and forward_with_attention come from Gate
/// (gate.h). In training mode the BatchNorm uses batch statistics and updates its running ones.
class SpatialAttentionImpl : public torch::nn::Cloneable<SpatialAttentionImpl>,
                             public Gate,
                             public SpatialMapSource {
 public:
  explicit SpatialAttentionImpl(const SpatialAttentionOptions& options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  Implementation implementation() const override { return options.impl(); }
  void set_implementation(Implementation impl) override { options.impl(impl); }
  /// The recorded map m as [N, H, W].
  torch::Tensor spatial_map(const std::optional<Position2d>& query) const override;

  SpatialAttentionOptions options;
  torch::nn::Conv2d conv{nullptr};
  /// Null when options.batch_norm() is false.
  torch::nn::BatchNorm2d bn{nullptr};

 private:
  void check_input(const torch::Tensor& x) const override;
  std::tuple<torch::Tensor, torch::Tensor> forward_composite(const torch::Tensor& x) override;
  torch::Tensor forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) override;
};

TORCH_MODULE(SpatialAttention);

}  // namespace attnkit
