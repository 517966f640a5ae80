// CIFAR-style ResNet-20/32/44/56/110 (depth 6n+2) with attention plugged into every residual block.
//
// Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
// section 4.2: a 3×3 conv with 16 filters, then 3 stages of n BasicBlocks with 16, 32, 64 filters
// (strides 1, 2, 2), global average pooling and a fully connected layer. 6n+2 weighted layers.
//
// Names follow the ImageNet ResNet (conv1, bn1, layer1..layer3, layerX.Y.conv1, ..., fc), attention
// is `layerX.Y.attn` as in ResNet (after the last BN, before the residual add).
// Shortcut: the paper uses option A (stride-subsampled identity padded with zero channels, no
// parameters: ResNet-20 has 269,722 parameters for 10 classes). attnkit defaults to option B
// (1×1 conv + BN projection, `downsample.0/1`, +2,752 parameters on ResNet-20) because it is what
// the ImageNet family uses, what most CIFAR checkpoints in the wild use, and it lets the stage
// widths change freely; pick `shortcut("A")` to reproduce the paper.
// Departures: `width` scales the three stage widths (16, 32, 64)·width.
#pragma once

#include <attnkit/backbones/resnet.h>

namespace attnkit {

/// Options of CifarResNet.
struct CifarResNetOptions {
  /* implicit */ CifarResNetOptions(int64_t depth) : depth_(depth) {}
  /// 6n+2 with n ≥ 1 (the paper's are cifar_resnet_depths()).
  TORCH_ARG(int64_t, depth);
  /// Classes of the fc head.
  TORCH_ARG(int64_t, num_classes) = 10;
  /// Channels of the input image.
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Width multiplier: stage widths are round(16·width)·{1, 2, 4}.
  TORCH_ARG(double, width) = 1.0;
  /// B (1×1 conv + BN projection, default) or A (zero-padded identity, the paper's CIFAR choice).
  TORCH_ARG(Shortcut, shortcut) = Shortcut::B;
  /// Attention of every block ("" = none); see attention_per_stage.
  TORCH_ARG(std::string, attention) = "";
  /// Attention per stage (exactly 3 names), overriding `attention` when not empty.
  TORCH_ARG(std::vector<std::string>, attention_per_stage) = {};
  /// Zero-initialise the last BatchNorm of every block.
  TORCH_ARG(bool, zero_init_residual) = false;
};

/// The CIFAR family; features, forward_head, forward and config come from ResNetCore.
class CifarResNetImpl : public torch::nn::Cloneable<CifarResNetImpl>, public ResNetCore {
 public:
  explicit CifarResNetImpl(const CifarResNetOptions& options);
  void reset() override;
  torch::nn::Module& module() override { return *this; }
  void pretty_print(std::ostream& stream) const override;

  CifarResNetOptions options;
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr};
};
TORCH_MODULE(CifarResNet);

/// One-line presets at the paper's depths: resnet20("se"), resnet56("eca"), ...
CifarResNet resnet20(const std::string& attention = "", int64_t num_classes = 10);
CifarResNet resnet32(const std::string& attention = "", int64_t num_classes = 10);
CifarResNet resnet44(const std::string& attention = "", int64_t num_classes = 10);
CifarResNet resnet56(const std::string& attention = "", int64_t num_classes = 10);
CifarResNet resnet110(const std::string& attention = "", int64_t num_classes = 10);

}  // namespace attnkit
