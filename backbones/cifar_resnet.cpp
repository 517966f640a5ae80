#include <attnkit/backbones/cifar_resnet.h>

#include <torch/nn/functional/activation.h>
#include <torch/nn/init.h>

#include <cmath>

namespace attnkit {

namespace F = torch::nn::functional;

CifarResNetImpl::CifarResNetImpl(const CifarResNetOptions& options_) : options(options_) { reset(); }

std::vector<std::string> CifarResNetImpl::stage_attention() const {
  if (!options.attention_per_stage().empty()) return options.attention_per_stage();
  return std::vector<std::string>(3, options.attention());
}

void CifarResNetImpl::reset() {
  TORCH_CHECK(options.depth() >= 8 && (options.depth() - 2) % 6 == 0,
              "CifarResNet: depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got ", options.depth());
  TORCH_CHECK(options.num_classes() > 0, "CifarResNet: num_classes must be positive, got ", options.num_classes());
  TORCH_CHECK(options.in_channels() > 0, "CifarResNet: in_channels must be positive, got ", options.in_channels());
  const int64_t w = static_cast<int64_t>(std::lround(16 * options.width()));
  TORCH_CHECK(options.width() > 0 && w >= 1, "CifarResNet: width must give at least 1 channel (width > 1/32), got ",
              options.width());
  TORCH_CHECK(options.shortcut() == "A" || options.shortcut() == "B",
              "CifarResNet: shortcut must be \"A\" or \"B\", got \"", options.shortcut(), "\"");
  TORCH_CHECK(options.attention_per_stage().empty() || options.attention_per_stage().size() == 3,
              "CifarResNet: attention_per_stage must have 3 names (one per stage) or none, got ",
              options.attention_per_stage().size());
  const int64_t n = (options.depth() - 2) / 6;
  const auto attention = stage_attention();
  conv1 = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(options.in_channels(), w, 3).padding(1).bias(false)));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(w));
  int64_t in = w;
  torch::nn::Sequential* layers[] = {&layer1, &layer2, &layer3};
  for (int i = 0; i < 3; ++i)
    *layers[i] = register_module("layer" + std::to_string(i + 1),
                                 detail::make_stage(false, in, w << i, n, i == 0 ? 1 : 2, attention[i],
                                                    options.zero_init_residual(), options.shortcut()));
  fc = register_module("fc", torch::nn::Linear(in, options.num_classes()));
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_normal_(conv1->weight, 0, torch::kFanOut, torch::kReLU);
}

torch::Tensor CifarResNetImpl::forward_stem(const torch::Tensor& x) {
  detail::check_image_input(x, options.in_channels(), "CifarResNet");
  return F::relu(bn1(conv1(x)));
}

std::vector<torch::Tensor> CifarResNetImpl::features(const torch::Tensor& x) {
  auto y = forward_stem(x);
  std::vector<torch::Tensor> out;
  for (auto* layer : {&layer1, &layer2, &layer3}) {
    y = (*layer)->forward(y);
    out.push_back(y);
  }
  return out;
}

torch::Tensor CifarResNetImpl::forward_head(const std::vector<torch::Tensor>& features) {
  TORCH_CHECK(!features.empty(), "CifarResNet::forward_head: features is empty (expected the 3 stage outputs)");
  const auto& last = features.back();
  TORCH_CHECK(last.dim() == 4 && last.size(1) == fc->options.in_features(),
              "CifarResNet::forward_head: expected the last feature of shape [N, ", fc->options.in_features(),
              ", H, W], got ", last.sizes());
  return fc(last.mean({2, 3}));
}

torch::Tensor CifarResNetImpl::forward(const torch::Tensor& x) { return forward_head(features(x)); }

ModelConfig CifarResNetImpl::config() const {
  ModelConfig c;
  c.family = "cifar_resnet";
  c.depth = options.depth();
  c.attention = stage_attention();
  c.num_classes = options.num_classes();
  c.in_channels = options.in_channels();
  c.width = options.width();
  c.stem = "small";
  c.shortcut = options.shortcut();
  return c;
}

void CifarResNetImpl::pretty_print(std::ostream& s) const {
  s << "attnkit::CifarResNet(name=" << config().name() << ", num_classes=" << options.num_classes()
    << ", in_channels=" << options.in_channels() << ", width=" << options.width()
    << ", shortcut=" << options.shortcut() << ")";
}

CifarResNet resnet20(const std::string& a, int64_t n) { return CifarResNet(CifarResNetOptions(20).attention(a).num_classes(n)); }
CifarResNet resnet32(const std::string& a, int64_t n) { return CifarResNet(CifarResNetOptions(32).attention(a).num_classes(n)); }
CifarResNet resnet44(const std::string& a, int64_t n) { return CifarResNet(CifarResNetOptions(44).attention(a).num_classes(n)); }
CifarResNet resnet56(const std::string& a, int64_t n) { return CifarResNet(CifarResNetOptions(56).attention(a).num_classes(n)); }
CifarResNet resnet110(const std::string& a, int64_t n) { return CifarResNet(CifarResNetOptions(110).attention(a).num_classes(n)); }

}  // namespace attnkit
