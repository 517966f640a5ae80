#include <attnkit/modules/factory.h>

#include <attnkit/modules/cbam.h>
#include <attnkit/modules/channel_attention.h>
#include <attnkit/modules/eca.h>
#include <attnkit/modules/local_attention2d.h>
#include <attnkit/modules/self_attention2d.h>
#include <attnkit/modules/spatial_attention.h>
#include <attnkit/modules/squeeze_excite.h>
#include <torch/nn/modules/linear.h>

#include <string>
#include <vector>

namespace attnkit {
namespace {

using Builder = torch::nn::AnyModule (*)(int64_t channels);

struct AttentionEntry {
  const char* name;
  Builder build;
};

// The one list of attention names, in the order attention_names() gives them. Every builder takes
// the channel count and uses the block's defaults (those of the paper's official code, see each
// header); build the module directly for other options.
const std::vector<AttentionEntry>& table() {
  static const std::vector<AttentionEntry> entries = {
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
  return entries;
}

}  // namespace

const std::vector<std::string>& attention_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& e : table()) out.emplace_back(e.name);
    return out;
  }();
  return names;
}

torch::nn::AnyModule make_attention(const std::string& name, int64_t channels) {
  TORCH_CHECK(channels > 0, "make_attention: channels must be positive, got ", channels);
  for (const auto& e : table())
    if (name == e.name) return e.build(channels);
  std::string valid;
  for (const auto& n : attention_names()) valid += (valid.empty() ? "\"" : ", \"") + n + "\"";
  TORCH_CHECK(false, "make_attention: unknown attention name \"", name, "\"; valid names: ", valid);
}

}  // namespace attnkit
