#include <attnkit/attnkit.h>

#include <torch/nn/modules/linear.h>

namespace attnkit {

const std::vector<std::string>& attention_names() {
  static const std::vector<std::string> names = {""};
  return names;
}

torch::nn::AnyModule make_attention(const std::string& name, int64_t channels) {
  TORCH_CHECK(channels > 0, "make_attention: channels must be positive, got ", channels);
  if (name.empty()) return torch::nn::AnyModule(torch::nn::Identity());
  std::string valid;
  for (const auto& n : attention_names()) valid += (valid.empty() ? "\"" : ", \"") + n + "\"";
  TORCH_CHECK(false, "make_attention: unknown attention name \"", name, "\"; valid names: ", valid);
}

}  // namespace attnkit
