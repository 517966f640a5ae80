// attnkit eval: accuracy, per-class accuracy and the confusion matrix of a checkpoint on any data
// format `attnkit train` reads (IDX test split by default), as text, JSON (--json) and, with OpenCV,
// a PNG picture of the confusion matrix.
#include "commands.h"
#include "image_readers.h"

#include "bundled.h"

#include "common/device.h"
#include "train/data_source.h"
#include "train/metrics.h"
#ifdef ATTNKIT_HAVE_OPENCV
#include "vision/plot.h"
#endif

#include <attnkit/backbones/checkpoint.h>

#include <ATen/autocast_mode.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <iomanip>
#include <iostream>

namespace attnkit::app {
namespace {

struct EvalArgs {
  std::string weights;
  train::DataSpec data;
  int64_t batch_size = 1024;
  std::string device = "auto";
  int threads = 0;
  bool bf16 = false;
  bool tta = false;
  bool json = false;
  std::string png;
};

int run_eval(EvalArgs& a) {
  common::configure_threads(a.threads);
  const std::string device_name = common::resolve_device(a.device);
  common::configure_cuda_speed(device_name);
  const torch::Device device(device_name);
#ifndef ATTNKIT_HAVE_OPENCV
  if (!a.png.empty()) throw std::runtime_error("--png: this attnkit was built without OpenCV and cannot draw pictures");
#endif

  a.weights = weights_or_bundled(a.weights);
  Checkpoint info;
  auto model = load_checkpoint(a.weights, &info);
  const auto& cfg = info.config;
  const auto& pre = info.preprocessing;
  std::vector<std::string> classes = info.class_names;
  if (classes.empty()) {
    for (int64_t k = 0; k < cfg.num_classes; ++k) classes.push_back(std::to_string(k));
  }
  a.data.known_classes = classes;
  if (a.data.image_size == 0) a.data.image_size = pre.input_height;
  if (a.data.channels == 0) a.data.channels = cfg.in_channels;
  auto data = train::load_dataset(a.data, image_readers());
  if (data.classes.size() != classes.size()) {
    throw std::runtime_error(a.data.path + ": " + std::to_string(data.classes.size()) + " classes, the checkpoint has " +
                             std::to_string(classes.size()));
  }
  if (data.channels() != cfg.in_channels || data.height() != pre.input_height || data.width() != pre.input_width) {
    throw std::runtime_error(a.data.path + ": images are " + std::to_string(data.channels()) + "x" + std::to_string(data.height()) +
                             "x" + std::to_string(data.width()) + ", the checkpoint expects " + std::to_string(cfg.in_channels) +
                             "x" + std::to_string(pre.input_height) + "x" + std::to_string(pre.input_width));
  }
  if (std::abs(pre.pixel_scale - 1.0 / 255.0) > 1e-12) {
    throw std::runtime_error(a.weights + ": pixel_scale " + std::to_string(pre.pixel_scale) + " is not 1/255, which eval supports");
  }

  model->module().to(device);
  model->module().eval();
  const auto images = data.images.to(device), labels = data.labels.to(device);
  const auto forward = [&](const torch::Tensor& x) {
    const bool amp = a.bf16;
    if (amp) {
      at::autocast::set_autocast_enabled(device.type(), true);
      at::autocast::set_autocast_dtype(device.type(), at::kBFloat16);
      at::autocast::increment_nesting();
    }
    auto y = model->forward(x);
    if (amp) {
      if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
      at::autocast::set_autocast_enabled(device.type(), false);
    }
    return y;
  };
  const auto r = train::evaluate(forward, images, labels, static_cast<int64_t>(classes.size()), {pre.mean, pre.std},
                                 a.batch_size, false, a.tta);
  const auto acc = train::accuracy_from_confusion(r.confusion);
  const auto per_class_count = r.confusion.sum(1);
  const int64_t correct = r.confusion.diagonal().sum().item<int64_t>();

  if (a.json) {
    nlohmann::json j;
    j["checkpoint"] = a.weights;
    j["model"] = cfg.name();
    j["data"] = a.data.path;
    j["split"] = train::resolve_format(a.data) == "idx" ? a.data.split : "";
    j["images"] = r.count;
    j["correct"] = correct;
    j["accuracy"] = acc.overall;
    j["loss"] = r.loss;
    j["classes"] = classes;
    j["per_class"] = nlohmann::json::array();
    for (size_t k = 0; k < classes.size(); ++k) {
      j["per_class"].push_back({{"class", classes[k]},
                                {"count", per_class_count[k].item<int64_t>()},
                                {"accuracy", std::isfinite(acc.per_class[k]) ? nlohmann::json(acc.per_class[k]) : nlohmann::json()}});
    }
    auto rows = nlohmann::json::array();
    for (int64_t i = 0; i < r.confusion.size(0); ++i) {
      std::vector<int64_t> row(r.confusion.size(1));
      for (int64_t jx = 0; jx < r.confusion.size(1); ++jx) row[jx] = r.confusion[i][jx].item<int64_t>();
      rows.push_back(row);
    }
    j["confusion"] = rows;
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "checkpoint: " << a.weights << " (" << cfg.name() << ", " << classes.size() << " classes)\n"
              << "data: " << a.data.path << " (" << r.count << " images" << (train::resolve_format(a.data) == "idx" ? ", " + a.data.split + " split" : "")
              << ")\n"
              << std::fixed << std::setprecision(2) << "accuracy: " << 100 * acc.overall << "% (" << correct << "/" << r.count
              << "), loss " << std::setprecision(4) << r.loss << "\n\nper-class accuracy:\n";
    size_t w = 5;
    for (const auto& c : classes) w = std::max(w, c.size());
    for (size_t k = 0; k < classes.size(); ++k) {
      std::cout << "  " << std::left << std::setw(static_cast<int>(w)) << classes[k] << std::right << std::setw(9);
      if (std::isfinite(acc.per_class[k])) std::cout << std::setprecision(2) << 100 * acc.per_class[k] << "%";
      else std::cout << "-" << " ";
      std::cout << "  (" << per_class_count[k].item<int64_t>() << ")\n";
    }
    std::cout << "\nconfusion matrix (rows: true class, columns: predicted class):\n"
              << train::format_confusion(r.confusion, classes);
  }
#ifdef ATTNKIT_HAVE_OPENCV
  if (!a.png.empty()) {
    vision::plot_confusion(r.confusion, classes, a.png);
    if (!a.json) std::cout << "confusion matrix picture: " << a.png << "\n";
  }
#endif
  return kOk;
}

}  // namespace

Runner add_eval_command(CLI::App& cli) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = cli.add_subcommand("eval", "Accuracy, per-class accuracy and confusion matrix of a checkpoint");
  cmd->add_option("--weights", a->weights, "attnkit checkpoint (best.pt/last.pt of attnkit train); default: the bundled Fashion-MNIST model")
      ->check(CLI::ExistingFile);
  a->data.path = "/usr/share/datasets/fashion-mnist";
  a->data.split = "test";
  cmd->add_option("--data", a->data.path, "Data: an MNIST-style IDX folder, an image folder, a CSV of label,pixels or of path,label")
      ->capture_default_str();
  cmd->add_option("--format", a->data.format, "Data format")
      ->check(CLI::IsMember({"auto", "idx", "folder", "pixel-csv", "image-csv"}))->capture_default_str();
  cmd->add_option("--split", a->data.split, "Split of an IDX folder: test (t10k) or train")
      ->check(CLI::IsMember({"test", "train"}))->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "Images per batch")->check(CLI::Range(int64_t{1}, int64_t{65536}))->capture_default_str();
  cmd->add_option("--device", a->device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of LibTorch (0 = its default)")->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_flag("--bf16", a->bf16, "Run the model under bf16 autocast");
  cmd->add_flag("--tta", a->tta, "Average the logits of each image and its mirror");
  cmd->add_flag("--json", a->json, "Print the results as one JSON document");
  cmd->add_option("--png", a->png, "Also draw the confusion matrix into this PNG file (needs OpenCV)");
  return [cmd, a]() -> int { return cmd->parsed() ? run_eval(*a) : -1; };
}

}  // namespace attnkit::app
