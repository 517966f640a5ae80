#include "checkpoint_eval.h"

#include "common/precision.h"

#include <cmath>
#include <stdexcept>

namespace attnkit::train {

std::vector<std::string> class_names_of(const Checkpoint& info) {
  auto classes = info.class_names;
  if (classes.empty()) {
    for (int64_t k = 0; k < info.config.num_classes; ++k) classes.push_back(std::to_string(k));
  }
  return classes;
}

DataSpec spec_for_checkpoint(DataSpec spec, const Checkpoint& info) {
  // Image folders and CSVs are read the way the checkpoint's model wants them.
  spec.known_classes = class_names_of(info);
  if (spec.image_size == 0) spec.image_size = info.preprocessing.input_height;
  if (spec.channels == 0) spec.channels = info.config.in_channels;
  return spec;
}

void check_data_fits(const Dataset& d, const Checkpoint& info, const std::string& data_path, const std::string& weights) {
  const auto& cfg = info.config;
  const auto& pre = info.preprocessing;
  const auto classes = static_cast<int64_t>(class_names_of(info).size());
  if (static_cast<int64_t>(d.classes.size()) != classes) {
    throw std::runtime_error(data_path + ": " + std::to_string(d.classes.size()) + " classes, the checkpoint has " +
                             std::to_string(classes));
  }
  if (d.channels() != cfg.in_channels || d.height() != pre.input_height || d.width() != pre.input_width) {
    throw std::runtime_error(data_path + ": images are " + std::to_string(d.channels()) + "x" + std::to_string(d.height()) +
                             "x" + std::to_string(d.width()) + ", the checkpoint expects " + std::to_string(cfg.in_channels) +
                             "x" + std::to_string(pre.input_height) + "x" + std::to_string(pre.input_width));
  }
  if (std::abs(pre.pixel_scale - 1.0 / 255.0) > 1e-12) {
    throw std::runtime_error(weights + ": pixel_scale " + std::to_string(pre.pixel_scale) + " is not 1/255, which the evaluation supports");
  }
}

CheckpointNetwork prepare_network(std::shared_ptr<Backbone> model, const torch::Device& device, c10::ScalarType dtype, bool eager) {
  CheckpointNetwork net;
  net.device = device;
  net.dtype = dtype;
  model->module().to(device, dtype);
  model->module().eval();
  net.frozen = common::inference_path(model, dtype, eager);
  net.model = std::move(model);
  return net;
}

EvalResult evaluate_network(const CheckpointNetwork& net, const Checkpoint& info, const Dataset& data, int64_t batch_size, bool tta,
                            const Distributed* dist) {
  const auto images = data.images.to(net.device), labels = data.labels.to(net.device);
  const auto forward = [&](const torch::Tensor& x) {
    const auto input = x.to(net.dtype);
    return net.frozen ? net.frozen->forward(input) : net.model->forward(input);
  };
  const auto& pre = info.preprocessing;
  return evaluate(forward, images, labels, static_cast<int64_t>(class_names_of(info).size()), {pre.mean, pre.std}, batch_size,
                  false, tta, dist);
}

}  // namespace attnkit::train
