#include <attnkit/backbones/resnet.h>
#include <attnkit/modules/batch_norm.h>
#include <attnkit/modules/factory.h>
#include <attnkit/modules/residual_epilogue.h>

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/init.h>

#include <cmath>
#include <sstream>

namespace attnkit {

namespace F = torch::nn::functional;

// ---- helpers -----------------------------------------------------------------------------------

namespace {

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).bias(false));
}

void check_block_options(const ResidualBlockOptions& o, const char* who) {
  TORCH_CHECK(o.in_channels() > 0, who, ": in_channels must be positive, got ", o.in_channels());
  TORCH_CHECK(o.planes() > 0, who, ": planes must be positive, got ", o.planes());
  TORCH_CHECK(o.stride() >= 1, who, ": stride must be at least 1, got ", o.stride());
}

/// Option A shortcut: x[:, :, ::stride, ::stride] padded with zero channels up to `out` channels.
/// No parameters, so a block with it has the CIFAR paper's parameter count.
class PadShortcutImpl : public torch::nn::Cloneable<PadShortcutImpl> {
 public:
  PadShortcutImpl(int64_t out_channels, int64_t stride) : out_(out_channels), stride_(stride) {}
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = stride_ > 1 ? x.slice(2, 0, c10::nullopt, stride_).slice(3, 0, c10::nullopt, stride_) : x;
    const int64_t extra = out_ - x.size(1);
    TORCH_CHECK(extra >= 0, "PadShortcut: cannot reduce ", x.size(1), " channels to ", out_);
    if (extra == 0) return y;
    // The zero channels go half before and half after, as in the paper's reference code (and
    // identically to putting them all after when `extra` is even, which it always is here).
    return F::pad(y, F::PadFuncOptions({0, 0, 0, 0, extra / 2, extra - extra / 2}));
  }
  void pretty_print(std::ostream& s) const override {
    s << "attnkit::PadShortcut(out_channels=" << out_ << ", stride=" << stride_ << ")";
  }

 private:
  int64_t out_, stride_;
};
TORCH_MODULE(PadShortcut);

torch::nn::Sequential make_shortcut(const ResidualBlockOptions& o, int64_t out) {
  if (o.stride() == 1 && o.in_channels() == out) return nullptr;
  if (o.shortcut() == Shortcut::A) return torch::nn::Sequential(PadShortcut(out, o.stride()));
  return torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels(), out, 1).stride(o.stride()).bias(false)),
      torch::nn::BatchNorm2d(out));
}

// The shortcut of x: itself, or the 1x1 conv and its BatchNorm (through batch_norm(), synchronised in
// data-parallel training like every other), or option A's zero padding.
torch::Tensor forward_shortcut(torch::nn::Sequential& downsample, const torch::Tensor& x) {
  if (!downsample) return x;
  if (downsample->size() == 2) {
    auto* conv = downsample[0]->as<torch::nn::Conv2d>();
    auto* bn = downsample[1]->as<torch::nn::BatchNorm2d>();
    if (conv && bn) return batch_norm(*bn, conv->forward(x));
  }
  return downsample->forward(x);
}

/// What every residual block does after its convolutions: registers its shortcut and its attention
/// (both on `out` channels), initialises its layers as torchvision does, and zeroes `last_bn`'s weight
/// with zero_init_last_bn.
void finish_block(torch::nn::Module& block, const ResidualBlockOptions& o, int64_t out,
                  torch::nn::BatchNorm2d& last_bn, torch::nn::Sequential& downsample, torch::nn::AnyModule& attn) {
  downsample = make_shortcut(o, out);
  if (downsample) block.register_module("downsample", downsample);
  attn = torch::nn::AnyModule();
  if (!o.attention().empty()) {
    attn = make_attention(o.attention(), out);
    block.register_module("attn", attn.ptr());
  }
  detail::init_backbone_weights(block);
  if (o.zero_init_last_bn()) torch::nn::init::zeros_(last_bn->weight);
}

void print_block(std::ostream& s, const char* name, const ResidualBlockOptions& o) {
  s << "attnkit::" << name << "(in_channels=" << o.in_channels() << ", planes=" << o.planes()
    << ", stride=" << o.stride();
  if (!o.attention().empty()) s << ", attention=\"" << o.attention() << "\"";
  if (o.shortcut() != Shortcut::B) s << ", shortcut=" << o.shortcut();
  s << ")";
}

}  // namespace

// ---- blocks ------------------------------------------------------------------------------------

BasicBlockImpl::BasicBlockImpl(const ResidualBlockOptions& options_) : options(options_) { reset(); }

void BasicBlockImpl::reset() {
  check_block_options(options, "BasicBlock");
  const int64_t p = options.planes();
  conv1 = register_module("conv1", conv(options.in_channels(), p, 3, options.stride()));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(p));
  conv2 = register_module("conv2", conv(p, p, 3, 1));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(p));
  finish_block(*this, options, p * expansion, bn2, downsample, attn);
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto y = F::relu(batch_norm(bn1, conv1(x)));
  y = batch_norm(bn2, conv2(y));
  return forward_add_relu(attn, y, forward_shortcut(downsample, x));
}

void BasicBlockImpl::pretty_print(std::ostream& s) const { print_block(s, "BasicBlock", options); }

BottleneckImpl::BottleneckImpl(const ResidualBlockOptions& options_) : options(options_) { reset(); }

void BottleneckImpl::reset() {
  check_block_options(options, "Bottleneck");
  const int64_t p = options.planes();
  conv1 = register_module("conv1", conv(options.in_channels(), p, 1, 1));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(p));
  conv2 = register_module("conv2", conv(p, p, 3, options.stride()));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(p));
  conv3 = register_module("conv3", conv(p, p * expansion, 1, 1));
  bn3 = register_module("bn3", torch::nn::BatchNorm2d(p * expansion));
  finish_block(*this, options, p * expansion, bn3, downsample, attn);
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  auto y = F::relu(batch_norm(bn1, conv1(x)));
  y = F::relu(batch_norm(bn2, conv2(y)));
  y = batch_norm(bn3, conv3(y));
  return forward_add_relu(attn, y, forward_shortcut(downsample, x));
}

void BottleneckImpl::pretty_print(std::ostream& s) const { print_block(s, "Bottleneck", options); }

std::optional<ResidualBlockParts> residual_block_parts(torch::nn::Module& module) {
  if (auto* basic = dynamic_cast<BasicBlockImpl*>(&module)) return ResidualBlockParts{basic->options, basic->attn, basic->bn2};
  if (auto* bottleneck = dynamic_cast<BottleneckImpl*>(&module))
    return ResidualBlockParts{bottleneck->options, bottleneck->attn, bottleneck->bn3};
  return std::nullopt;
}

// ---- detail ------------------------------------------------------------------------------------

namespace detail {

torch::nn::Sequential make_stage(bool bottleneck, int64_t& in_channels, int64_t planes, int64_t blocks,
                                 int64_t stride, const std::string& attention, bool zero_init_last_bn,
                                 Shortcut shortcut) {
  torch::nn::Sequential stage;
  for (int64_t i = 0; i < blocks; ++i) {
    auto o = ResidualBlockOptions(in_channels, planes)
                 .stride(i == 0 ? stride : 1)
                 .attention(attention)
                 .zero_init_last_bn(zero_init_last_bn)
                 .shortcut(shortcut);
    if (bottleneck) {
      stage->push_back(Bottleneck(o));
      in_channels = planes * BottleneckImpl::expansion;
    } else {
      stage->push_back(BasicBlock(o));
      in_channels = planes * BasicBlockImpl::expansion;
    }
  }
  return stage;
}

void init_backbone_weights(torch::nn::Module& root) {
  torch::NoGradGuard no_grad;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    // Attention blocks keep their own initialisation.
    const std::string& name = item.key();
    if (name == "attn" || name.rfind("attn.", 0) == 0 || name.find(".attn.") != std::string::npos ||
        (name.size() > 5 && name.compare(name.size() - 5, 5, ".attn") == 0))
      continue;
    auto* m = item.value().get();
    if (auto* c = dynamic_cast<torch::nn::Conv2dImpl*>(m)) {
      torch::nn::init::kaiming_normal_(c->weight, 0, torch::kFanOut, torch::kReLU);
    } else if (auto* b = dynamic_cast<torch::nn::BatchNorm2dImpl*>(m)) {
      torch::nn::init::ones_(b->weight);
      torch::nn::init::zeros_(b->bias);
    }
  }
}

void check_image_input(const torch::Tensor& x, int64_t channels, const char* who) {
  TORCH_CHECK(x.defined(), who, ": input is undefined");
  TORCH_CHECK(x.dim() == 4, who, ": expected input of shape [N, ", channels, ", H, W], got ", x.sizes());
  TORCH_CHECK(x.size(1) == channels, who, ": expected input of shape [N, ", channels, ", H, W], got ",
              x.sizes());
  TORCH_CHECK(x.is_floating_point(), who, ": expected a floating input, got ", x.scalar_type());
}

}  // namespace detail

// ---- ResNetCore -------------------------------------------------------------------------------

const std::vector<torch::nn::Sequential>& ResNetCore::build(const detail::ResNetLayout& layout) {
  const auto& l = layout;
  const int64_t stages = static_cast<int64_t>(l.blocks.size());
  TORCH_CHECK(l.num_classes > 0, who_, ": num_classes must be positive, got ", l.num_classes);
  TORCH_CHECK(l.in_channels > 0, who_, ": in_channels must be positive, got ", l.in_channels);
  const int64_t w = static_cast<int64_t>(std::lround(static_cast<double>(l.base_channels) * l.width));
  TORCH_CHECK(l.width > 0 && w >= 1, who_, ": width must give at least 1 channel (width > 1/", 2 * l.base_channels,
              "), got ", l.width);
  // Each block holds at least one 3×3 convolution at its stage's width. A depth or width far beyond
  // any ResNet (a damaged or crafted checkpoint config) is refused here, not by the allocator after
  // gigabytes.
  constexpr double kMaxWeights = double(int64_t{1} << 31);  // 8 GiB in float32
  double weights = 0;
  for (int64_t i = 0; i < stages; ++i) weights += double(l.blocks[i]) * 9.0 * std::pow(double(w) * std::pow(2.0, double(i)), 2.0);
  TORCH_CHECK(weights <= kMaxWeights, who_, ": depth and width ask for at least ", weights, " weights, more than the ",
              kMaxWeights, " this program builds");
  TORCH_CHECK(l.attention_per_stage.empty() || static_cast<int64_t>(l.attention_per_stage.size()) == stages, who_,
              ": attention_per_stage must have ", stages, " names (one per stage) or none, got ",
              l.attention_per_stage.size());
  layout_ = l;
  stage_attention_ = l.attention_per_stage.empty() ? std::vector<std::string>(stages, l.attention)
                                                   : l.attention_per_stage;
  torch::nn::Module& self = module();
  const bool small = l.stem == Stem::Small;
  conv1 = self.register_module("conv1", conv(l.in_channels, w, small ? 3 : 7, small ? 1 : 2));
  bn1 = self.register_module("bn1", torch::nn::BatchNorm2d(w));
  int64_t in = w;
  stages_.clear();
  for (int64_t i = 0; i < stages; ++i) {
    stages_.push_back(self.register_module(
        "layer" + std::to_string(i + 1),
        detail::make_stage(l.bottleneck, in, w << i, l.blocks[i], i == 0 ? 1 : 2, stage_attention_[i],
                           l.zero_init_residual, l.shortcut)));
  }
  fc = self.register_module("fc", torch::nn::Linear(in, l.num_classes));
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_normal_(conv1->weight, 0, torch::kFanOut, torch::kReLU);
  return stages_;
}

torch::Tensor ResNetCore::forward_stem(const torch::Tensor& x) {
  detail::check_image_input(x, layout_.in_channels, who_);
  auto y = F::relu(batch_norm(bn1, conv1(x)));
  if (layout_.stem == Stem::ImageNet) y = F::max_pool2d(y, F::MaxPool2dFuncOptions(3).stride(2).padding(1));
  return y;
}

std::vector<torch::Tensor> ResNetCore::features(const torch::Tensor& x) {
  auto y = forward_stem(x);
  std::vector<torch::Tensor> out;
  for (auto& stage : stages_) {
    y = stage->forward(y);
    out.push_back(y);
  }
  return out;
}

torch::Tensor ResNetCore::forward_head(const std::vector<torch::Tensor>& features) {
  TORCH_CHECK(!features.empty(), who_, "::forward_head: features is empty (expected the ", stages_.size(),
              " stage outputs)");
  const auto& last = features.back();
  TORCH_CHECK(last.dim() == 4 && last.size(1) == fc->options.in_features(), who_,
              "::forward_head: expected the last feature of shape [N, ", fc->options.in_features(), ", H, W], got ",
              last.sizes());
  return fc(last.mean({2, 3}));
}

torch::Tensor ResNetCore::forward(const torch::Tensor& x) { return forward_head(features(x)); }

ModelConfig ResNetCore::config() const {
  ModelConfig c;
  c.family = layout_.family;
  c.depth = layout_.depth;
  c.attention = stage_attention_;
  c.num_classes = layout_.num_classes;
  c.in_channels = layout_.in_channels;
  c.width = layout_.width;
  c.stem = layout_.stem;
  c.shortcut = layout_.shortcut;
  return c;
}

// ---- ResNet ------------------------------------------------------------------------------------

namespace {
struct DepthSpec {
  bool bottleneck;
  std::vector<int64_t> blocks;
};
DepthSpec depth_spec(int64_t depth) {
  switch (depth) {
    case 18: return {false, {2, 2, 2, 2}};
    case 34: return {false, {3, 4, 6, 3}};
    case 50: return {true, {3, 4, 6, 3}};
    case 101: return {true, {3, 4, 23, 3}};
    case 152: return {true, {3, 8, 36, 3}};
    default: break;
  }
  std::string valid;
  for (auto d : resnet_depths()) valid += (valid.empty() ? "" : ", ") + std::to_string(d);
  TORCH_CHECK(false, "ResNet: depth must be one of ", valid, ", got ", depth);
}
}  // namespace

ResNetImpl::ResNetImpl(const ResNetOptions& options_) : ResNetCore("ResNet"), options(options_) { reset(); }

std::vector<int64_t> ResNetImpl::stage_channels() const {
  const auto spec = depth_spec(options.depth());
  const int64_t w = static_cast<int64_t>(std::lround(64 * options.width())) * (spec.bottleneck ? 4 : 1);
  return {w, 2 * w, 4 * w, 8 * w};
}

void ResNetImpl::reset() {
  const auto spec = depth_spec(options.depth());
  auto l = detail::shared_layout(ModelFamily::ResNet, options);
  l.bottleneck = spec.bottleneck;
  l.blocks = spec.blocks;
  l.base_channels = 64;
  l.stem = options.stem();
  l.shortcut = Shortcut::B;
  const auto& stages = build(l);
  layer1 = stages[0], layer2 = stages[1], layer3 = stages[2], layer4 = stages[3];
}

void ResNetImpl::pretty_print(std::ostream& s) const {
  s << "attnkit::ResNet(name=" << config().name() << ", num_classes=" << options.num_classes()
    << ", in_channels=" << options.in_channels() << ", width=" << options.width() << ", stem=" << options.stem()
    << ")";
}

ResNet resnet18(const std::string& a, int64_t n) { return ResNet(ResNetOptions(18).attention(a).num_classes(n)); }
ResNet resnet34(const std::string& a, int64_t n) { return ResNet(ResNetOptions(34).attention(a).num_classes(n)); }
ResNet resnet50(const std::string& a, int64_t n) { return ResNet(ResNetOptions(50).attention(a).num_classes(n)); }
ResNet resnet101(const std::string& a, int64_t n) { return ResNet(ResNetOptions(101).attention(a).num_classes(n)); }
ResNet resnet152(const std::string& a, int64_t n) { return ResNet(ResNetOptions(152).attention(a).num_classes(n)); }

}  // namespace attnkit
