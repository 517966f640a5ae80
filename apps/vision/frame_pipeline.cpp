#include "frame_pipeline.h"

#include "common/precision.h"
#include "heatmap.h"

#include <attnkit/backbones/calibration.h>

#include <ATen/cpu/Utils.h>
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

bool reduced_precision_is_fast(const torch::Device& device, torch::ScalarType dtype) {
  if (device.is_cuda()) return dtype == torch::kBFloat16 || dtype == torch::kFloat16;
  return dtype == torch::kBFloat16 && bfloat16_is_fast(device);
}

FrameAnalyzer::FrameAnalyzer(std::shared_ptr<Backbone> model, const Checkpoint& info, const torch::Device& device,
                             torch::ScalarType dtype, bool inference_path)
    : model_(std::move(model)), info_(info), device_(device), dtype_(dtype) {
  model_->module().to(device_, dtype_);
  model_->module().eval();
  frozen_ = common::inference_path(model_, dtype_, !inference_path);
  if (has_spatial_attention(*model_)) methods_.push_back(ExplainMethod::Native);
  for (ExplainMethod m : cam_methods()) methods_.push_back(m);
  // Listed once here: the keys ask from the drawing thread while explain() runs on the model.
  for (ExplainMethod m : methods_) {
    auto& list = layers_[m];
    list.push_back("");
    for (auto& l : explainable_layers(*model_, m)) list.push_back(std::move(l));
  }
}

bool FrameAnalyzer::inference_path(ExplainMethod method) const {
  method = resolve(method);
  return frozen_ && !explain_needs_gradient(method);
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

std::vector<Analysis> FrameAnalyzer::analyze(std::vector<Frame> frames, const ViewChoice& view) {
  using Clock = std::chrono::steady_clock;
  std::vector<Analysis> out(frames.size());
  if (frames.empty()) return out;
  const auto start = Clock::now();
  std::vector<torch::Tensor> inputs;
  for (size_t i = 0; i < frames.size(); ++i) {
    auto input = prepare_input(frames[i].image, info_.preprocessing);
    inputs.push_back(std::move(input.tensor));
    out[i].window = input.window;
    out[i].frame = std::move(frames[i]);
    out[i].view = view;
  }
  // Channels-last: oneDNN's (and cuDNN's) fastest convolution layout; the network keeps it throughout.
  const auto batch = torch::stack(inputs).to(device_, dtype_).contiguous(at::MemoryFormat::ChannelsLast);
  const double preprocess_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();

  ExplainOptions opts = options_;
  opts.method = view.method;
  if (!view.layer.empty()) opts.layers = {view.layer};
  const auto e = inference_path(view.method) ? explain(*frozen_, batch, opts) : explain(*model_, batch, opts);
  std::vector<torch::Tensor> maps;
  for (const auto& lm : e.maps) maps.push_back(lm.map);
  const auto map = maps.empty() ? torch::Tensor() : combine_maps(maps).to(torch::kCPU, torch::kFloat32).contiguous();
  // Calibrated: divided by the checkpoint's temperature (1 where it has none) before the softmax.
  const auto probs = calibrated_softmax(e.logits.detach().to(torch::kCPU, torch::kFloat32), info_.temperature());
  const auto labels = e.targets.to(torch::kCPU);
  const double per_frame = std::chrono::duration<double, std::milli>(Clock::now() - start).count() / out.size();
  for (size_t i = 0; i < out.size(); ++i) {
    auto& a = out[i];
    if (map.defined()) a.map = map[static_cast<int64_t>(i)];
    a.label = labels[static_cast<int64_t>(i)].item<int64_t>();
    a.probability = probs[static_cast<int64_t>(i)][a.label].item<double>();
    a.inference_ms = per_frame;
    a.preprocess_ms = preprocess_ms / out.size();
  }
  return out;
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
