#include <attnkit/modules/factory.h>

#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/eca.h>
#include <attnkit/modules/local_attention2d.h>
#include <attnkit/modules/self_attention2d.h>
#include <attnkit/modules/spatial_attention.h>
#include <attnkit/modules/squeeze_excite.h>
#include <torch/nn/modules/linear.h>

#include <functional>
#include <map>

namespace attnkit {
namespace {

using Builder = std::function<torch::nn::AnyModule(int64_t)>;

// Every builder takes the channel count and uses each block's defaults (those of the paper's
// official code, see each header); build the module directly for other options.
const std::map<std::string, Builder>& builders() {
  static const std::map<std::string, Builder> table = {
      {"", [](int64_t) { return torch::nn::AnyModule(torch::nn::Identity()); }},
      {"se", [](int64_t c) { return torch::nn::AnyModule(SqueezeExcite(SqueezeExciteOptions(c))); }},
      {"eca", [](int64_t c) { return torch::nn::AnyModule(ECA(ECAOptions(c))); }},
      {"cbam", [](int64_t c) { return torch::nn::AnyModule(CBAM(CBAMOptions(c))); }},
      {"channel", [](int64_t c) { return torch::nn::AnyModule(ChannelAttention(ChannelAttentionOptions(c))); }},
      {"spatial", [](int64_t) { return torch::nn::AnyModule(SpatialAttention(SpatialAttentionOptions())); }},
      {"self", [](int64_t c) { return torch::nn::AnyModule(SelfAttention2d(SelfAttention2dOptions(c))); }},
      {"nonlocal",
       [](int64_t c) {
         return torch::nn::AnyModule(
             SelfAttention2d(SelfAttention2dOptions(c).variant(SelfAttention2dVariant::NonLocal)));
       }},
      {"local", [](int64_t c) { return torch::nn::AnyModule(LocalAttention2d(LocalAttention2dOptions(c))); }},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& attention_names() {
  static const std::vector<std::string> names = {"", "se", "eca", "cbam", "channel", "spatial", "self", "nonlocal", "local"};
  return names;
}

torch::nn::AnyModule make_attention(const std::string& name, int64_t channels) {
  TORCH_CHECK(channels > 0, "make_attention: channels must be positive, got ", channels);
  const auto it = builders().find(name);
  if (it == builders().end()) {
    std::string valid;
    for (const auto& n : attention_names()) valid += (valid.empty() ? "\"" : ", \"") + n + "\"";
    TORCH_CHECK(false, "make_attention: unknown attention name \"", name, "\"; valid names: ", valid);
  }
  return it->second(channels);
}

}  // namespace attnkit
