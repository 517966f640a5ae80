#include <attnkit/backbones/registry.h>
#include <attnkit/modules/factory.h>

#include <algorithm>
#include <cctype>

namespace attnkit {

namespace {

std::string quoted_list(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "\"" : ", \"") + n + "\"";
  return out;
}

void check_attention_name(const std::string& name, const std::string& model) {
  const auto& valid = attention_names();
  TORCH_CHECK(std::find(valid.begin(), valid.end(), name) != valid.end(), "make_model: unknown attention \"", name,
              "\" in \"", model, "\"; valid attention names: ", quoted_list(valid));
}

bool contains(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

/// The family's options with the fields every family has set from `c`.
template <typename FamilyOptions>
FamilyOptions shared_options(const ModelConfig& c) {
  return FamilyOptions(c.depth)
      .num_classes(c.num_classes)
      .in_channels(c.in_channels)
      .width(c.width)
      .attention_per_stage(c.attention);
}

}  // namespace

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (auto d : resnet_depths()) n.push_back("resnet" + std::to_string(d));
    for (auto d : cifar_resnet_depths()) n.push_back("resnet" + std::to_string(d));
    return n;
  }();
  return names;
}

ModelConfig parse_model_name(const std::string& name) {
  const auto dash = name.find('-');
  const std::string arch = name.substr(0, dash);
  const std::string attn = dash == std::string::npos ? "" : name.substr(dash + 1);
  auto fail = [&] {
    TORCH_CHECK(false, "make_model: unknown model \"", name, "\"; valid names: ", quoted_list(model_names()),
                ", or cifar_resnet<6n+2>, each optionally followed by -<attention>");
  };
  ModelConfig c;
  std::string digits;
  if (arch.rfind("cifar_resnet", 0) == 0) {
    c.family = ModelFamily::CifarResNet;
    digits = arch.substr(12);
  } else if (arch.rfind("resnet", 0) == 0) {
    digits = arch.substr(6);
  } else {
    fail();
  }
  if (digits.empty() || digits.size() > 4 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) fail();
  c.depth = std::stoll(digits);
  if (c.family == ModelFamily::ResNet) {
    if (contains(cifar_resnet_depths(), c.depth)) c.family = ModelFamily::CifarResNet;
    else if (!contains(resnet_depths(), c.depth)) fail();
  } else if (c.depth < 8 || (c.depth - 2) % 6 != 0) {
    fail();
  }
  const size_t stages = c.family == ModelFamily::ResNet ? 4 : 3;
  if (c.family == ModelFamily::CifarResNet) {
    c.num_classes = 10;
    c.stem = Stem::Small;
  }
  if (dash != std::string::npos && attn.empty()) fail();
  if (!attn.empty() && attn.front() == '[') {
    TORCH_CHECK(attn.back() == ']', "make_model: unterminated attention list in \"", name, "\"");
    const std::string body = attn.substr(1, attn.size() - 2);
    size_t start = 0;
    while (true) {
      const auto comma = body.find(',', start);
      c.attention.push_back(body.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    TORCH_CHECK(c.attention.size() == stages, "make_model: \"", name, "\" lists ", c.attention.size(),
                " attention names; ", arch, " has ", stages, " stages");
  } else {
    c.attention.assign(stages, attn);
  }
  for (const auto& a : c.attention) check_attention_name(a, name);
  return c;
}

std::shared_ptr<Backbone> build_model(const ModelConfig& c) {
  switch (c.family) {
    case ModelFamily::ResNet: return ResNet(shared_options<ResNetOptions>(c).stem(c.stem)).ptr();
    case ModelFamily::CifarResNet: return CifarResNet(shared_options<CifarResNetOptions>(c).shortcut(c.shortcut)).ptr();
  }
  TORCH_CHECK(false, "build_model: unknown family ", static_cast<int>(c.family));
}

std::shared_ptr<Backbone> make_model(const std::string& name, int64_t num_classes, int64_t in_channels) {
  auto c = parse_model_name(name);
  if (num_classes > 0) c.num_classes = num_classes;
  if (in_channels > 0) c.in_channels = in_channels;
  return build_model(c);
}

}  // namespace attnkit
