#include <attnkit/backbones/model_config.h>
#include <attnkit/backbones/named_enum.h>

#include <algorithm>

namespace attnkit {

namespace {

const detail::EnumName<ModelFamily> kFamilies[] = {{ModelFamily::ResNet, "resnet"},
                                                    {ModelFamily::CifarResNet, "cifar_resnet"}};
const detail::EnumName<Stem> kStems[] = {{Stem::ImageNet, "imagenet"}, {Stem::Small, "small"}};
const detail::EnumName<Shortcut> kShortcuts[] = {{Shortcut::A, "A"}, {Shortcut::B, "B"}};

}  // namespace

const char* to_string(ModelFamily family) { return detail::enum_name(family, kFamilies); }
const char* to_string(Stem stem) { return detail::enum_name(stem, kStems); }
const char* to_string(Shortcut shortcut) { return detail::enum_name(shortcut, kShortcuts); }

ModelFamily parse_model_family(const std::string& name, const std::string& field) {
  return detail::parse_enum(name, kFamilies, field);
}
Stem parse_stem(const std::string& name, const std::string& field) { return detail::parse_enum(name, kStems, field); }
Shortcut parse_shortcut(const std::string& name, const std::string& field) {
  return detail::parse_enum(name, kShortcuts, field);
}

const std::vector<int64_t>& resnet_depths() {
  static const std::vector<int64_t> depths = {18, 34, 50, 101, 152};
  return depths;
}

const std::vector<int64_t>& cifar_resnet_depths() {
  static const std::vector<int64_t> depths = {20, 32, 44, 56, 110};
  return depths;
}

std::string ModelConfig::name() const {
  const auto& paper = cifar_resnet_depths();
  const bool paper_depth = std::find(paper.begin(), paper.end(), depth) != paper.end();
  std::string out =
      (family == ModelFamily::CifarResNet && !paper_depth ? "cifar_resnet" : "resnet") + std::to_string(depth);
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

}  // namespace attnkit
