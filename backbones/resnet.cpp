#include <attnkit/backbones/resnet.h>
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

// ---- ModelConfig -------------------------------------------------------------------------------

std::string ModelConfig::name() const {
  // The registry calls the CIFAR family "resnet<depth>" at its standard depths (20, 32, 44, 56,
  // 110), which the ImageNet family never uses; any other CIFAR depth is "cifar_resnet<depth>".
  const bool cifar_std = depth == 20 || depth == 32 || depth == 44 || depth == 56 || depth == 110;
  std::string out = (family == "cifar_resnet" && !cifar_std ? "cifar_resnet" : "resnet") + std::to_string(depth);
  bool same = true;
  for (const auto& a : attention) same = same && a == attention.front();
  if (attention.empty() || (same && attention.front().empty())) return out;
  if (same) return out + "-" + attention.front();
  out += "-[";
  for (size_t i = 0; i < attention.size(); ++i) out += (i ? "," : "") + attention[i];
  return out + "]";
}

bool ModelConfig::operator==(const ModelConfig& o) const {
  return family == o.family && depth == o.depth && attention == o.attention && num_classes == o.num_classes &&
         in_channels == o.in_channels && width == o.width && stem == o.stem && shortcut == o.shortcut;
}

// ---- helpers -----------------------------------------------------------------------------------

namespace {

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).bias(false));
}

void check_block_options(const ResidualBlockOptions& o, const char* who) {
  TORCH_CHECK(o.in_channels() > 0, who, ": in_channels must be positive, got ", o.in_channels());
  TORCH_CHECK(o.planes() > 0, who, ": planes must be positive, got ", o.planes());
  TORCH_CHECK(o.stride() >= 1, who, ": stride must be at least 1, got ", o.stride());
  TORCH_CHECK(o.shortcut() == "A" || o.shortcut() == "B", who, ": shortcut must be \"A\" or \"B\", got \"",
              o.shortcut(), "\"");
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
  if (o.shortcut() == "A") return torch::nn::Sequential(PadShortcut(out, o.stride()));
  return torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels(), out, 1).stride(o.stride()).bias(false)),
      torch::nn::BatchNorm2d(out));
}

void print_block(std::ostream& s, const char* name, const ResidualBlockOptions& o) {
  s << "attnkit::" << name << "(in_channels=" << o.in_channels() << ", planes=" << o.planes()
    << ", stride=" << o.stride();
  if (!o.attention().empty()) s << ", attention=\"" << o.attention() << "\"";
  if (o.shortcut() != "B") s << ", shortcut=" << o.shortcut();
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
  downsample = make_shortcut(options, p * expansion);
  if (downsample) register_module("downsample", downsample);
  attn = torch::nn::AnyModule();
  if (!options.attention().empty()) {
    attn = make_attention(options.attention(), p * expansion);
    register_module("attn", attn.ptr());
  }
  detail::init_backbone_weights(*this);
  if (options.zero_init_last_bn()) torch::nn::init::zeros_(bn2->weight);
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto y = F::relu(bn1(conv1(x)));
  y = bn2(conv2(y));
  return forward_add_relu(attn, y, downsample ? downsample->forward(x) : x);
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
  downsample = make_shortcut(options, p * expansion);
  if (downsample) register_module("downsample", downsample);
  attn = torch::nn::AnyModule();
  if (!options.attention().empty()) {
    attn = make_attention(options.attention(), p * expansion);
    register_module("attn", attn.ptr());
  }
  detail::init_backbone_weights(*this);
  if (options.zero_init_last_bn()) torch::nn::init::zeros_(bn3->weight);
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  auto y = F::relu(bn1(conv1(x)));
  y = F::relu(bn2(conv2(y)));
  y = bn3(conv3(y));
  return forward_add_relu(attn, y, downsample ? downsample->forward(x) : x);
}

void BottleneckImpl::pretty_print(std::ostream& s) const { print_block(s, "Bottleneck", options); }

// ---- detail ------------------------------------------------------------------------------------

namespace detail {

torch::nn::Sequential make_stage(bool bottleneck, int64_t& in_channels, int64_t planes, int64_t blocks,
                                 int64_t stride, const std::string& attention, bool zero_init_last_bn,
                                 const std::string& shortcut) {
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
    default: TORCH_CHECK(false, "ResNet: depth must be one of 18, 34, 50, 101, 152, got ", depth);
  }
}
int64_t base_width(double width) { return static_cast<int64_t>(std::lround(64 * width)); }
}  // namespace

ResNetImpl::ResNetImpl(const ResNetOptions& options_) : options(options_) { reset(); }

std::vector<std::string> ResNetImpl::stage_attention() const {
  if (!options.attention_per_stage().empty()) return options.attention_per_stage();
  return std::vector<std::string>(4, options.attention());
}

std::vector<int64_t> ResNetImpl::stage_channels() const {
  const auto spec = depth_spec(options.depth());
  const int64_t w = base_width(options.width()) * (spec.bottleneck ? 4 : 1);
  return {w, 2 * w, 4 * w, 8 * w};
}

void ResNetImpl::reset() {
  const auto spec = depth_spec(options.depth());
  TORCH_CHECK(options.num_classes() > 0, "ResNet: num_classes must be positive, got ", options.num_classes());
  TORCH_CHECK(options.in_channels() > 0, "ResNet: in_channels must be positive, got ", options.in_channels());
  TORCH_CHECK(options.width() > 0 && base_width(options.width()) >= 1,
              "ResNet: width must give at least 1 channel (width > 1/128), got ", options.width());
  TORCH_CHECK(options.stem() == "imagenet" || options.stem() == "small",
              "ResNet: stem must be \"imagenet\" or \"small\", got \"", options.stem(), "\"");
  TORCH_CHECK(options.attention_per_stage().empty() || options.attention_per_stage().size() == 4,
              "ResNet: attention_per_stage must have 4 names (one per stage) or none, got ",
              options.attention_per_stage().size());
  const auto attention = stage_attention();
  const int64_t w = base_width(options.width());
  const bool small = options.stem() == "small";
  conv1 = register_module("conv1", conv(options.in_channels(), w, small ? 3 : 7, small ? 1 : 2));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(w));
  int64_t in = w;
  torch::nn::Sequential* layers[] = {&layer1, &layer2, &layer3, &layer4};
  for (int i = 0; i < 4; ++i) {
    *layers[i] = register_module(
        "layer" + std::to_string(i + 1),
        detail::make_stage(spec.bottleneck, in, w << i, spec.blocks[i], i == 0 ? 1 : 2, attention[i],
                           options.zero_init_residual(), "B"));
  }
  fc = register_module("fc", torch::nn::Linear(in, options.num_classes()));
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_normal_(conv1->weight, 0, torch::kFanOut, torch::kReLU);
}

torch::Tensor ResNetImpl::forward_stem(const torch::Tensor& x) {
  detail::check_image_input(x, options.in_channels(), "ResNet");
  auto y = F::relu(bn1(conv1(x)));
  if (options.stem() == "imagenet") y = F::max_pool2d(y, F::MaxPool2dFuncOptions(3).stride(2).padding(1));
  return y;
}

std::vector<torch::Tensor> ResNetImpl::features(const torch::Tensor& x) {
  auto y = forward_stem(x);
  std::vector<torch::Tensor> out;
  for (auto* layer : {&layer1, &layer2, &layer3, &layer4}) {
    y = (*layer)->forward(y);
    out.push_back(y);
  }
  return out;
}

torch::Tensor ResNetImpl::forward_head(const std::vector<torch::Tensor>& features) {
  TORCH_CHECK(!features.empty(), "ResNet::forward_head: features is empty (expected the 4 stage outputs)");
  const auto& last = features.back();
  TORCH_CHECK(last.dim() == 4 && last.size(1) == fc->options.in_features(),
              "ResNet::forward_head: expected the last feature of shape [N, ", fc->options.in_features(),
              ", H, W], got ", last.sizes());
  return fc(last.mean({2, 3}));
}

torch::Tensor ResNetImpl::forward(const torch::Tensor& x) { return forward_head(features(x)); }

ModelConfig ResNetImpl::config() const {
  ModelConfig c;
  c.family = "resnet";
  c.depth = options.depth();
  c.attention = stage_attention();
  c.num_classes = options.num_classes();
  c.in_channels = options.in_channels();
  c.width = options.width();
  c.stem = options.stem();
  c.shortcut = "B";
  return c;
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
