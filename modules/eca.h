// Efficient Channel Attention: a channel gate from a 1-D convolution across the channel axis of
// the globally averaged feature map (no dimensionality reduction, k·1 weights in all).
//
//   s = sigmoid(conv1d_k(mean_hw(x)))  (s is N×C, zero padding (k-1)/2 at both ends),  y = x · s
//
// Paper: Q. Wang, B. Wu, P. Zhu, P. Li, W. Zuo, Q. Hu, "ECA-Net: Efficient Channel Attention for
// Deep Convolutional Neural Networks", CVPR 2020 (arXiv:1910.03151), eq. 12: the kernel size k is
// chosen from C as t = int(|log2(C) + b| / γ), k = t if t is odd else t + 1 (γ = 2, b = 1).
// Layout follows timm's `EcaModule` (timm/layers/eca.py): one parameter conv.weight [1, 1, k]
// (Conv1d(1, 1, k, bias=False)), so timm ecaresnet* checkpoints load with no renaming.
// Departures:
//   - timm additionally clamps k to at least 3 (k = max(k, 3)), which changes k only for C < 16
//     (where the paper's formula gives 1). The default follows the paper; `min_kernel_size(3)`
//     reproduces timm for every C.
//   - an explicit kernel_size overrides the formula (must be odd).
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

/// The ECA paper's kernel size for C channels: t = int(|log2(C) + beta| / gamma), odd-rounded up,
/// then at least `min_kernel_size`.
int64_t eca_kernel_size(int64_t channels, double gamma = 2.0, double beta = 1.0, int64_t min_kernel_size = 1);

/// Options of ECA.
struct ECAOptions {
  /* implicit */ ECAOptions(int64_t channels) : channels_(channels) {}
  /// Channels C of the input feature map.
  TORCH_ARG(int64_t, channels);
  /// Explicit (odd) kernel size; 0 means "from C by the paper's formula".
  TORCH_ARG(int64_t, kernel_size) = 0;
  /// γ of the kernel-size formula.
  TORCH_ARG(double, gamma) = 2.0;
  /// b of the kernel-size formula.
  TORCH_ARG(double, beta) = 1.0;
  /// Lower bound on the derived kernel size: 1 as the paper, 3 as timm.
  TORCH_ARG(int64_t, min_kernel_size) = 1;
  /// fused: attnkit's fused kernels; composite: stock ATen ops; auto: fused where available for the
  /// input's device, composite where not or while recording the attention map.
  TORCH_ARG(Implementation, impl) = Implementation::Auto;
};

/// The ECA gate; forward, forward_add_relu and forward_with_attention come from Gate (gate.h).
class ECAImpl : public torch::nn::Cloneable<ECAImpl>, public Gate {
 public:
  explicit ECAImpl(const ECAOptions& options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  Implementation implementation() const override { return options.impl(); }
  void set_implementation(Implementation impl) override { options.impl(impl); }

  /// The kernel size k actually used.
  int64_t kernel_size() const { return kernel_size_; }

  ECAOptions options;
  torch::nn::Conv1d conv{nullptr};

 private:
  void check_input(const torch::Tensor& x) const override;
  std::tuple<torch::Tensor, torch::Tensor> forward_composite(const torch::Tensor& x) override;
  torch::Tensor forward_fused(const torch::Tensor& x, const torch::Tensor& shortcut, bool into_shortcut) override;

  int64_t kernel_size_ = 0;
};

TORCH_MODULE(ECA);

}  // namespace attnkit
