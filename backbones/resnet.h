// ResNet (ImageNet family: ResNet-18/34/50/101/152) with attention plugged into every residual block.
//
// Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
// (arXiv:1512.03385), in torchvision's "ResNet v1.5" form (the stride of a downsampling Bottleneck
// sits on its 3×3 convolution, not on the first 1×1).
//
// Parameter names are torchvision's exactly (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0/1,
// ..., fc), so a torchvision state dict loads with no renaming. A block's attention is the module
// `attn` (layerX.Y.attn.*), built by make_attention(name, channels) and run after the block's last
// BatchNorm and before the residual add, where the CBAM paper and timm put it:
//
//   y = relu(attn(bn_last(conv_last(...))) + shortcut(x))
//
// (the add and ReLU inside attn's last pass for the gates that have a ResidualEpilogue).
//
// Departures from torchvision:
//   - `width` scales every stage (64·width, 128·width, ...) and the stem;
//   - stem "small" (3×3/1 conv, no max-pool) for 28–64 px inputs;
//   - features(x) returns every stage's output and forward_head() is the classifier alone.
// Initialisation follows torchvision for the backbone's own layers (Kaiming-normal fan_out for
// convolutions, BatchNorm weight 1 and bias 0, nn.Linear's default for fc); attention blocks keep
// the initialisation their own reset() gives them (their authors chose it).
#pragma once

#include <attnkit/backbones/model_config.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace attnkit {

/// What the backbones of attnkit offer, whatever their family.
class Backbone {
 public:
  virtual ~Backbone() = default;
  /// Every stage's output, first to last (4 for ResNet, 3 for CifarResNet).
  virtual std::vector<torch::Tensor> features(const torch::Tensor& x) = 0;
  /// Classifier head on features(): global average pool of the last stage, then fc → [N, classes].
  virtual torch::Tensor forward_head(const std::vector<torch::Tensor>& features) = 0;
  /// forward_head(features(x)).
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  /// Everything before the first stage (conv1, bn1, ReLU and, for the ImageNet stem, the max-pool).
  virtual torch::Tensor forward_stem(const torch::Tensor& x) = 0;
  /// The stages, first to last (layer1, layer2, ...), each a Sequential of residual blocks:
  /// features(x) runs them in turn on forward_stem(x). For running block by block (explain.h).
  virtual std::vector<torch::nn::Sequential> stages() = 0;
  /// The architecture, for checkpoints.
  virtual ModelConfig config() const = 0;
  /// The module itself (parameters, train/eval, to(device), ...).
  virtual torch::nn::Module& module() = 0;
};

// ---- residual blocks ---------------------------------------------------------------------------

/// Options of BasicBlock and Bottleneck.
struct ResidualBlockOptions {
  ResidualBlockOptions(int64_t in_channels, int64_t planes) : in_channels_(in_channels), planes_(planes) {}
  /// Channels of the block's input.
  TORCH_ARG(int64_t, in_channels);
  /// Width of the block's 3×3 convolutions; the output has planes · expansion channels
  /// (expansion 1 for BasicBlock, 4 for Bottleneck).
  TORCH_ARG(int64_t, planes);
  /// Stride of the block (on its 3×3 convolution).
  TORCH_ARG(int64_t, stride) = 1;
  /// Attention run after the last BatchNorm, before the residual add; "" = none.
  TORCH_ARG(std::string, attention) = "";
  /// Start the last BatchNorm's weight at 0, so the block starts as its shortcut (Goyal et al. 2017).
  TORCH_ARG(bool, zero_init_last_bn) = false;
  /// Shortcut when the shape changes: B = 1×1 conv + BN (`downsample.0/1`, torchvision);
  /// A = stride-subsampled identity padded with zero channels (He et al. 2016 CIFAR, no parameters).
  TORCH_ARG(Shortcut, shortcut) = Shortcut::B;
};

/// Two 3×3 convolutions (ResNet-18/34 and the CIFAR family).
class BasicBlockImpl : public torch::nn::Cloneable<BasicBlockImpl> {
 public:
  static constexpr int64_t expansion = 1;
  explicit BasicBlockImpl(const ResidualBlockOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  ResidualBlockOptions options;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  /// Empty when the shortcut is the identity.
  torch::nn::Sequential downsample{nullptr};
  /// Empty when options.attention is "".
  torch::nn::AnyModule attn;
};
TORCH_MODULE(BasicBlock);

/// 1×1 reduce, 3×3, 1×1 expand ×4 (ResNet-50/101/152).
class BottleneckImpl : public torch::nn::Cloneable<BottleneckImpl> {
 public:
  static constexpr int64_t expansion = 4;
  explicit BottleneckImpl(const ResidualBlockOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  ResidualBlockOptions options;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};
  torch::nn::AnyModule attn;
};
TORCH_MODULE(Bottleneck);

/// What every residual block has, whichever kind (BasicBlock or Bottleneck): its options, its attention
/// (empty AnyModule when none) and the BatchNorm whose output the attention gates. For code that walks
/// a model's blocks (explain, channel gates, warm starts) without knowing their kinds.
struct ResidualBlockParts {
  const ResidualBlockOptions& options;
  torch::nn::AnyModule& attn;
  torch::nn::BatchNorm2d& last_bn;
};

/// The parts of `module` when it is a residual block; nullopt for any other module.
std::optional<ResidualBlockParts> residual_block_parts(torch::nn::Module& module);

namespace detail {
/// A stage of `blocks` residual blocks (Sequential named 0, 1, ...), the first with `stride`.
/// `bottleneck` picks Bottleneck over BasicBlock; `in_channels` is updated to the stage's output.
torch::nn::Sequential make_stage(bool bottleneck, int64_t& in_channels, int64_t planes, int64_t blocks,
                                 int64_t stride, const std::string& attention, bool zero_init_last_bn,
                                 Shortcut shortcut);
/// torchvision's initialisation of convolutions and BatchNorms, skipping anything under `attn`.
void init_backbone_weights(torch::nn::Module& root);
/// Checks that `x` is a floating [N, C, H, W] tensor with C == channels; `who` names the caller.
void check_image_input(const torch::Tensor& x, int64_t channels, const char* who);
}  // namespace detail

// ---- what both families share ------------------------------------------------------------------

namespace detail {
/// What ResNetCore builds: everything in which ResNet and CifarResNet differ, from their options.
struct ResNetLayout {
  ModelFamily family = ModelFamily::ResNet;
  int64_t depth = 0;
  /// Bottleneck blocks (else BasicBlock).
  bool bottleneck = false;
  /// Residual blocks per stage; its size is the number of stages.
  std::vector<int64_t> blocks;
  /// Channels of the stem and the first stage at width 1 (64 for ResNet, 16 for CifarResNet).
  int64_t base_channels = 64;
  Stem stem = Stem::ImageNet;
  Shortcut shortcut = Shortcut::B;
  int64_t num_classes = 0;
  int64_t in_channels = 0;
  double width = 1.0;
  /// Attention of every block, unless attention_per_stage (one name per stage) is given.
  std::string attention;
  std::vector<std::string> attention_per_stage;
  bool zero_init_residual = false;
};

/// A layout with the options every family has (ResNetOptions, CifarResNetOptions) filled in.
template <typename FamilyOptions>
ResNetLayout shared_layout(ModelFamily family, const FamilyOptions& o) {
  ResNetLayout l;
  l.family = family;
  l.depth = o.depth();
  l.num_classes = o.num_classes();
  l.in_channels = o.in_channels();
  l.width = o.width();
  l.attention = o.attention();
  l.attention_per_stage = o.attention_per_stage();
  l.zero_init_residual = o.zero_init_residual();
  return l;
}
}  // namespace detail

/// The network both ResNet families are: stem (conv1, bn1, ReLU and, for Stem::ImageNet, a 3×3/2
/// max-pool), residual stages layer1, layer2, ..., global average pool and fc. ResNet and
/// CifarResNet check their own options and describe their layout; this builds and runs it.
class ResNetCore : public Backbone {
 public:
  /// x: [N, in_channels, H, W] floating. Returns every stage's output.
  std::vector<torch::Tensor> features(const torch::Tensor& x) override;
  torch::Tensor forward_head(const std::vector<torch::Tensor>& features) override;
  /// Logits [N, num_classes].
  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward_stem(const torch::Tensor& x) override;
  std::vector<torch::nn::Sequential> stages() override { return stages_; }
  ModelConfig config() const override;

  /// Attention name of each stage after resolving `attention` / `attention_per_stage`.
  std::vector<std::string> stage_attention() const { return stage_attention_; }

  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Linear fc{nullptr};

 protected:
  /// `who` names the family in error messages ("ResNet"); a string literal.
  explicit ResNetCore(const char* who) : who_(who) {}
  /// Checks the layout's shared options and registers conv1, bn1, layer1.. and fc on module(),
  /// initialised as torchvision does. Returns the stages, for the family's layerN members.
  const std::vector<torch::nn::Sequential>& build(const detail::ResNetLayout& layout);
  /// The layout of the last build().
  const detail::ResNetLayout& layout() const { return layout_; }

 private:
  const char* who_;
  detail::ResNetLayout layout_;
  std::vector<std::string> stage_attention_;
  std::vector<torch::nn::Sequential> stages_;
};

// ---- ResNet ------------------------------------------------------------------------------------

/// Options of ResNet.
struct ResNetOptions {
  /* implicit */ ResNetOptions(int64_t depth) : depth_(depth) {}
  /// 18 or 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
  TORCH_ARG(int64_t, depth);
  /// Classes of the fc head.
  TORCH_ARG(int64_t, num_classes) = 1000;
  /// Channels of the input image.
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Width multiplier: stage widths are round(64·width)·{1, 2, 4, 8}.
  TORCH_ARG(double, width) = 1.0;
  /// ImageNet (7×7/2 conv + 3×3/2 max-pool, 224 px inputs) or Small (3×3/1 conv, no pool,
  /// for 28–64 px inputs).
  TORCH_ARG(Stem, stem) = Stem::ImageNet;
  /// Attention of every block ("" = none); see attention_per_stage.
  TORCH_ARG(std::string, attention) = "";
  /// Attention per stage (exactly 4 names), overriding `attention` when not empty, e.g.
  /// {"", "", "", "self"} for a BoTNet-like network.
  TORCH_ARG(std::vector<std::string>, attention_per_stage) = {};
  /// Zero-initialise the last BatchNorm of every block (torchvision's zero_init_residual).
  TORCH_ARG(bool, zero_init_residual) = false;
};

/// The ImageNet family; features, forward_head, forward and config come from ResNetCore.
class ResNetImpl : public torch::nn::Cloneable<ResNetImpl>, public ResNetCore {
 public:
  explicit ResNetImpl(const ResNetOptions& options);
  void reset() override;
  torch::nn::Module& module() override { return *this; }
  void pretty_print(std::ostream& stream) const override;

  /// Channels of each stage's output.
  std::vector<int64_t> stage_channels() const;

  ResNetOptions options;
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
};
TORCH_MODULE(ResNet);

/// One-line presets: resnet50("cbam"), resnet18("se"), ...; `num_classes` for the head.
ResNet resnet18(const std::string& attention = "", int64_t num_classes = 1000);
ResNet resnet34(const std::string& attention = "", int64_t num_classes = 1000);
ResNet resnet50(const std::string& attention = "", int64_t num_classes = 1000);
ResNet resnet101(const std::string& attention = "", int64_t num_classes = 1000);
ResNet resnet152(const std::string& attention = "", int64_t num_classes = 1000);

}  // namespace attnkit
