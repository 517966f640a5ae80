// CBAM: CBAM's channel gate (ChannelAttention) followed by its spatial gate (SpatialAttention).
//
//   y = SpatialAttention(ChannelAttention(x))   (or ChannelAttention(x) alone with no_spatial)
//
// Paper: S. Woo, J. Park, J.-Y. Lee, I. S. Kweon, "CBAM: Convolutional Block Attention Module",
// ECCV 2018 (arXiv:1807.06521). Defaults follow the official code (github.com/Jongchan/
// attention-module, MODELS/cbam.py `CBAM` and the BatchNorm init of MODELS/model_resnet.py); the
// departures of each gate from the paper's text are listed in channel_attention.h and
// spatial_attention.h. CBAMOptions::timm_style(C) reproduces timm's CbamModule (timm/layers/cbam.py).
//
// Parameter names (submodules `channel` and `spatial`, as timm's CbamModule) and checkpoint mapping:
//   attnkit                    official CBAM (ChannelGate/SpatialGate)   timm CbamModule
//   channel.fc1.weight [R, C]  ChannelGate.mlp.1.weight                  channel.fc1.weight [R,C,1,1] → reshape
//   channel.fc1.bias   [R]     ChannelGate.mlp.1.bias                    — (mlp_bias=False)
//   channel.fc2.weight [C, R]  ChannelGate.mlp.3.weight                  channel.fc2.weight [C,R,1,1] → reshape
//   channel.fc2.bias   [C]     ChannelGate.mlp.3.bias                    —
//   spatial.conv.weight        SpatialGate.spatial.conv.weight           spatial.conv.conv.weight
//   spatial.bn.<x>             SpatialGate.spatial.bn.<x>                spatial.conv.bn.<x>
// with <x> in weight, bias, running_mean, running_var, num_batches_tracked. Load official weights
// with the default options and timm weights with timm_style() (the spatial conv's input order and
// the MLP bias differ; see spatial_attention.h to load one into the other).
//
// Attention map (AttentionMapRecorder): the spatial map, N×1×H×W (with no_spatial: the channel
// gate, N×C). For the channel map, turn recording on in channel() as well.
#pragma once

#include <attnkit/modules/attention_map.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/gate.h>
#include <attnkit/modules/implementation.h>
#include <attnkit/modules/spatial_attention.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>
#include <tuple>

namespace attnkit {

/// Options of CBAM: those of its channel gate and its spatial gate.
struct CBAMOptions {
  /* implicit */ CBAMOptions(int64_t channels) : channels_(channels) {}
  /// Channels C of the input feature map.
  TORCH_ARG(int64_t, channels);
  /// Reduction ratio r of the channel MLP (hidden width C // r, at least 1).
  TORCH_ARG(int64_t, reduction) = 16;
  /// Explicit hidden width of the channel MLP; 0 = from reduction and rd_divisor.
  TORCH_ARG(int64_t, rd_channels) = 0;
  /// Hidden-width rounding: 0 = floor (official), d > 0 = nearest multiple of d (timm: 1).
  TORCH_ARG(int64_t, rd_divisor) = 0;
  /// Pooled descriptors of the channel gate (official: avg and max).
  TORCH_ARG(ChannelPool, pool) = ChannelPool::AvgMax;
  /// Whether the channel MLP has biases (official: true; timm: false).
  TORCH_ARG(bool, mlp_bias) = true;
  /// Side k of the spatial gate's convolution (odd).
  TORCH_ARG(int64_t, kernel_size) = 7;
  /// Stacking order of the spatial gate's max and mean maps (official [max, mean]; timm [mean, max]).
  TORCH_ARG(PoolOrder, pool_order) = PoolOrder::MaxMean;
  /// Whether the spatial gate has its BatchNorm.
  TORCH_ARG(bool, batch_norm) = true;
  /// The spatial BatchNorm's eps.
  TORCH_ARG(double, bn_eps) = 1e-5;
  /// The spatial BatchNorm's momentum (official 0.01; timm 0.1).
  TORCH_ARG(double, bn_momentum) = 0.01;
  /// Whether the spatial BatchNorm weight starts at 0 (official) rather than 1 (timm).
  TORCH_ARG(bool, bn_zero_init) = true;
  /// Channel gate only (the official code's no_spatial).
  TORCH_ARG(bool, no_spatial) = false;
  /// fused: attnkit's fused kernels; composite: stock ATen ops; auto: fused where available for the
  /// input's device, composite where not or while recording the attention map.
  TORCH_ARG(Implementation, impl) = Implementation::Auto;

 public:
  /// timm's CbamModule: hidden width rounded to nearest, no MLP bias, [mean, max], BN as torch's.
  static CBAMOptions timm_style(int64_t channels) {
    return CBAMOptions(channels).rd_divisor(1).mlp_bias(false).pool_order(PoolOrder::MeanMax).bn_momentum(0.1).bn_zero_init(
        false);
  }
  ChannelAttentionOptions channel_options() const;
  SpatialAttentionOptions spatial_options() const;
};

/// CBAM; forward, forward_add_relu and forward_with_attention come from Gate (gate.h). The
/// children check their own options; their messages name the child ("ChannelAttention: ...").
class CBAMImpl : public torch::nn::Cloneable<CBAMImpl>, public Gate, public SpatialMapSource {
 public:
  explicit CBAMImpl(const CBAMOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  Implementation implementation() const override { return options.impl(); }
  void set_implementation(Implementation impl) override { options.impl(impl); }
  /// False with no_spatial (the recorded map is then the channel gate).
  bool has_spatial_map() const override { return !spatial.is_empty(); }
  /// The recorded spatial map as [N, H, W].
  torch::Tensor spatial_map(const std::optional<Position2d>& query) const override;

  CBAMOptions options;
  ChannelAttention channel{nullptr};
  /// Null with no_spatial.
  SpatialAttention spatial{nullptr};

 private:
  void check_input(const torch::Tensor& x) const override;
  std::tuple<torch::Tensor, torch::Tensor> forward_composite(const torch::Tensor& x) override;
  torch::Tensor forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) override;
  bool records_maps() const override;
};

TORCH_MODULE(CBAM);

}  // namespace attnkit
