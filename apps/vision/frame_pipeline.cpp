#include "frame_pipeline.h"

#include "heatmap.h"

#include <torch/nn/functional.h>

#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <stdexcept>

namespace attnkit::vision {

torch::Tensor combine_maps(const std::vector<torch::Tensor>& maps) {
  TORCH_CHECK(!maps.empty(), "combine_maps: no maps");
  if (maps.size() == 1) return maps.front();
  int64_t h = 0, w = 0;
  for (const auto& m : maps) {
    h = std::max(h, m.size(1));
    w = std::max(w, m.size(2));
  }
  namespace F = torch::nn::functional;
  auto sum = torch::zeros({maps.front().size(0), h, w}, maps.front().options());
  for (const auto& m : maps) {
    sum += F::interpolate(m.unsqueeze(1), F::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kBilinear).align_corners(false))
               .squeeze(1);
  }
  const auto flat = sum.flatten(1);
  const auto lo = std::get<0>(flat.min(1)).view({-1, 1, 1}), hi = std::get<0>(flat.max(1)).view({-1, 1, 1});
  return torch::where(hi > lo, (sum - lo) / (hi - lo).clamp_min(1e-12), torch::zeros_like(sum));
}

FrameAnalyzer::FrameAnalyzer(std::shared_ptr<Backbone> model, const Checkpoint& info, const torch::Device& device)
    : model_(std::move(model)), info_(info), device_(device) {
  model_->module().to(device_);
  model_->module().eval();
  for (ExplainMethod m : {ExplainMethod::Native, ExplainMethod::GradCam, ExplainMethod::GradCamPlusPlus, ExplainMethod::LayerCam,
                          ExplainMethod::EigenCam}) {
    if (m != ExplainMethod::Native || has_spatial_attention(*model_)) methods_.push_back(m);
  }
  // Listed once here: the keys ask from the drawing thread while explain() runs on the model.
  for (ExplainMethod m : methods_) {
    auto& list = layers_[m];
    list.push_back("");
    for (auto& l : explainable_layers(*model_, m)) list.push_back(std::move(l));
  }
}

ExplainMethod FrameAnalyzer::resolve(ExplainMethod requested) const {
  if (requested == ExplainMethod::Auto) return methods_.front();
  if (std::find(methods_.begin(), methods_.end(), requested) == methods_.end()) {
    std::string valid;
    for (auto m : methods_) valid += (valid.empty() ? "" : ", ") + explain_method_name(m);
    throw std::runtime_error("--method " + explain_method_name(requested) + ": " + info_.config.name() +
                             " has no spatial attention maps (valid for this model: " + valid + ")");
  }
  return requested;
}

const std::vector<std::string>& FrameAnalyzer::layers(ExplainMethod method) const {
  static const std::vector<std::string> none = {""};
  const auto it = layers_.find(method);
  return it == layers_.end() ? none : it->second;
}

std::string FrameAnalyzer::class_name(int64_t label) const {
  if (label >= 0 && label < static_cast<int64_t>(info_.class_names.size())) return info_.class_names[label];
  return "class " + std::to_string(label);
}

Analysis FrameAnalyzer::analyze(Frame frame, const ViewChoice& view) {
  const auto start = std::chrono::steady_clock::now();
  Analysis a;
  auto input = prepare_input(frame.image, info_.preprocessing);
  a.preprocess_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  a.window = input.window;
  a.frame = std::move(frame);
  a.view = view;

  ExplainOptions opts;
  opts.method = view.method;
  if (!view.layer.empty()) opts.layers = {view.layer};
  const auto e = explain(*model_, input.tensor.unsqueeze(0).to(device_), opts);
  std::vector<torch::Tensor> maps;
  for (const auto& lm : e.maps) maps.push_back(lm.map);
  if (!maps.empty()) a.map = combine_maps(maps)[0].to(torch::kCPU, torch::kFloat32).contiguous();
  const auto probs = torch::softmax(e.logits.detach()[0].to(torch::kCPU, torch::kFloat32), 0);
  a.label = e.targets[0].item<int64_t>();
  a.probability = probs[a.label].item<double>();
  a.inference_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return a;
}

cv::Mat HeatmapRenderer::render(const Analysis& a, const std::string& class_name, double fps) {
  cv::Mat out;
  if (a.map.defined()) {
    torch::Tensor map = a.map;
    std::ostringstream key;
    key << explain_method_name(a.view.method) << "|" << a.view.layer << "|" << map.sizes();
    if (options_.smooth > 0 && smoothed_.defined() && smoothed_key_ == key.str()) {
      smoothed_.mul_(options_.smooth).add_(map, 1.0 - options_.smooth);
    } else {
      smoothed_ = map.clone();
      smoothed_key_ = key.str();
    }
    const cv::Mat m = map_to_image(options_.smooth > 0 ? smoothed_ : map, a.window, a.frame.image.size());
    out = overlay(a.frame.image, m, options_.alpha, options_.colormap);
  } else {
    out = a.frame.image.clone();
  }
  std::ostringstream label;
  label << class_name << " " << std::fixed << std::setprecision(0) << 100 * a.probability << "%\n"
        << explain_method_name(a.view.method) << " " << (a.view.layer.empty() ? "default layers" : a.view.layer) << "  "
        << std::setprecision(1) << fps << " FPS";
  draw_label(out, label.str());
  return out;
}

}  // namespace attnkit::vision
