// ResidualEpilogue: blocks that can finish a residual unit themselves.
//
// A ResNet block ends with relu(attn(y) + shortcut). The gates that run on the fused CBAM op (CBAM,
// SE, ECA, the channel and the spatial gate) add the shortcut and apply the ReLU in the op's last
// pass, the one that writes their output anyway: per block, two passes over the feature map and one
// intermediate tensor fewer, which is what lets attention ride in a ResNet-50 at a few percent of its
// time (attnkit bench --op resnet50). The backbones call forward_add_relu(); blocks without an
// epilogue get the plain composition, with the same result.
#pragma once

#include <torch/nn/modules/container/any.h>
#include <torch/types.h>

namespace attnkit {

class ResidualEpilogue {
 public:
  virtual ~ResidualEpilogue() = default;
  /// relu(forward(x) + shortcut), where shortcut has the output's shape, dtype and device.
  virtual torch::Tensor forward_add_relu(const torch::Tensor& x, const torch::Tensor& shortcut) = 0;
  /// forward_add_relu, written into `shortcut` where the block can (its fused op, no gradient
  /// wanted): no new tensor, and the output's memory is the shortcut's, already in cache. Returns
  /// the result, which is then `shortcut` itself; otherwise a new tensor, `shortcut` untouched. For
  /// callers that own the shortcut (InferenceModel). By default: forward_add_relu.
  virtual torch::Tensor forward_add_relu_into(const torch::Tensor& x, torch::Tensor& shortcut) {
    return forward_add_relu(x, shortcut);
  }
};

/// relu(block(x) + shortcut), through the block's ResidualEpilogue when it has one; an empty block is
/// the identity. An error names the shapes if shortcut does not match the block's output.
torch::Tensor forward_add_relu(torch::nn::AnyModule& block, const torch::Tensor& x, const torch::Tensor& shortcut);

namespace detail {
/// relu(y + shortcut), or y itself when shortcut is undefined: the epilogue of the composite paths.
torch::Tensor add_relu(const torch::Tensor& y, const torch::Tensor& shortcut);
}  // namespace detail

}  // namespace attnkit
