// TEMPORARY stand-in for backbones/explain.cpp until wt/visualize lands (delete on merge).
// Grad-CAM on a stage output is real; every other method is the channel mean of the stage output,
// which costs what a forward-only native map costs (for timing), and looks roughly alike.
#include <attnkit/backbones/explain.h>

#include <stdexcept>

namespace attnkit {

const std::vector<std::string>& explain_method_names() {
  static const std::vector<std::string> n = {"auto", "native", "gradcam", "gradcam++", "layercam", "eigencam"};
  return n;
}

ExplainMethod explain_method_from_name(const std::string& name) {
  const auto& n = explain_method_names();
  for (size_t i = 0; i < n.size(); ++i)
    if (n[i] == name) return static_cast<ExplainMethod>(i);
  throw std::invalid_argument("unknown explain method \"" + name + "\"");
}

std::string explain_method_name(ExplainMethod method) { return explain_method_names().at(static_cast<size_t>(method)); }

std::vector<std::string> explainable_layers(Backbone& model, ExplainMethod method) {
  const auto cfg = model.config();
  std::vector<std::string> out;
  const bool attention = !cfg.attention.empty() && cfg.attention.back() == "cbam";
  if (method == ExplainMethod::Native && !attention) return out;
  for (size_t i = 0; i < cfg.attention.size(); ++i) out.push_back("layer" + std::to_string(i + 1));
  return out;
}

Explanation explain(Backbone& model, const torch::Tensor& input, const ExplainOptions& options) {
  Explanation e;
  e.method = options.method == ExplainMethod::Auto
                 ? (explainable_layers(model, ExplainMethod::Native).empty() ? ExplainMethod::GradCam : ExplainMethod::Native)
                 : options.method;
  const auto names = explainable_layers(model, ExplainMethod::GradCam);
  size_t stage = names.size() - 1;
  if (!options.layers.empty()) stage = std::find(names.begin(), names.end(), options.layers[0]) - names.begin();
  TORCH_CHECK(stage < names.size(), "unknown layer");
  if (e.method != ExplainMethod::GradCam) {
    torch::NoGradGuard no_grad;
    auto f = model.features(input);
    e.logits = model.forward_head(f);
    e.targets = e.logits.argmax(1);
    auto m = f[stage].mean(1);
    auto flat = m.flatten(1);
    auto lo = std::get<0>(flat.min(1)).view({-1, 1, 1}), hi = std::get<0>(flat.max(1)).view({-1, 1, 1});
    e.maps.push_back({names[stage], ((m - lo) / (hi - lo).clamp_min(1e-12)).to(torch::kFloat32)});
    return e;
  }
  auto f = model.features(input);
  f[stage].retain_grad();
  e.logits = model.forward_head(f);
  e.targets = e.logits.argmax(1);
  e.logits.gather(1, e.targets.unsqueeze(1)).sum().backward();
  const auto a = f[stage].detach(), g = f[stage].grad();
  auto m = torch::relu((g.mean({2, 3}, true) * a).sum(1));
  auto flat = m.flatten(1);
  auto hi = std::get<0>(flat.max(1)).view({-1, 1, 1});
  e.maps.push_back({names[stage], (m / hi.clamp_min(1e-12)).to(torch::kFloat32)});
  e.logits = e.logits.detach();
  return e;
}

}  // namespace attnkit
