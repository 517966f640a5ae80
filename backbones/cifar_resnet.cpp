#include <attnkit/backbones/cifar_resnet.h>

#include <string>

namespace attnkit {

CifarResNetImpl::CifarResNetImpl(const CifarResNetOptions& options_) : ResNetCore("CifarResNet"), options(options_) {
  reset();
}

void CifarResNetImpl::reset() {
  if (options.depth() < 8 || (options.depth() - 2) % 6 != 0) {
    std::string paper;
    for (auto d : cifar_resnet_depths()) paper += std::to_string(d) + ", ";
    TORCH_CHECK(false, "CifarResNet: depth must be 6n+2 with n >= 1 (", paper, "...), got ", options.depth());
  }
  auto l = detail::shared_layout(ModelFamily::CifarResNet, options);
  l.bottleneck = false;
  l.blocks.assign(3, (options.depth() - 2) / 6);
  l.base_channels = 16;
  l.stem = Stem::Small;
  l.shortcut = options.shortcut();
  const auto& stages = build(l);
  layer1 = stages[0], layer2 = stages[1], layer3 = stages[2];
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
