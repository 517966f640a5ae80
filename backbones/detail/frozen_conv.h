// FrozenConv: one convolution with its BatchNorm folded in, for InferenceModel.
//
// Folding (BatchNorm in eval mode is an affine map per output channel):
//   s = γ / √(σ² + ε),  W' = W · s (per output channel),  b' = β + (b − μ) · s
// computed in float64 and rounded once to the inference dtype. Where oneDNN serves the dtype on
// this device, W' is reordered once into oneDNN's blocked layout and the convolution runs as one
// mkldnn::_convolution_pointwise call with its epilogue (ReLU; residual add + ReLU) as oneDNN
// post-ops; otherwise it is ATen's conv2d on W' followed by the same epilogue as ATen ops.
#pragma once

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/types.h>

#include <vector>

namespace attnkit::detail {

class FrozenConv {
 public:
  /// `bn` may be null (no BatchNorm after the convolution). `input_size` (N, C, H, W) is the shape
  /// the blocked layout is chosen for; other shapes run correctly with the same weights.
  FrozenConv(const torch::nn::Conv2dImpl& conv, const torch::nn::BatchNorm2dImpl* bn, torch::ScalarType dtype,
             const torch::Device& device, bool prepack, const std::vector<int64_t>& input_size);

  /// conv(x) + b', then ReLU when `relu`.
  torch::Tensor forward(const torch::Tensor& x, bool relu) const;
  /// relu(conv(x) + b' + shortcut) into a new tensor.
  torch::Tensor forward_add_relu(const torch::Tensor& x, const torch::Tensor& shortcut) const;
  /// relu(conv(x) + b' + shortcut) written into `shortcut` (one buffer fewer; the caller owns it).
  torch::Tensor forward_add_relu_into(const torch::Tensor& x, torch::Tensor& shortcut) const;

  /// Output size of one spatial dimension for an input of `size`.
  int64_t output_size(int64_t size, int dim) const;
  int64_t out_channels() const { return out_channels_; }
  bool prepacked() const { return prepacked_; }

 private:
  torch::Tensor conv_plain(const torch::Tensor& x) const;

  torch::Tensor weight_;  // folded; opaque oneDNN tensor when prepacked_
  torch::Tensor bias_;    // folded, [out_channels]
  std::vector<int64_t> kernel_, padding_, stride_, dilation_;
  int64_t groups_ = 1;
  int64_t out_channels_ = 0;
  bool prepacked_ = false;
};

/// Whether FrozenConv prepacks for oneDNN on `device` in `dtype` (CPU float32; bfloat16 where oneDNN
/// has bfloat16 convolutions), given the user's prepack option.
bool can_prepack(const torch::Device& device, torch::ScalarType dtype, bool prepack);

}  // namespace attnkit::detail
