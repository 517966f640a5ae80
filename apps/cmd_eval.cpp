// attnkit eval: accuracy, per-class accuracy and the confusion matrix of a checkpoint on any data
// format `attnkit train` reads (IDX test split by default), as text, JSON (--json) and, with OpenCV,
// a PNG picture of the confusion matrix.
#include "commands.h"
#include "image_readers.h"

#include "bundled.h"

#include "common/device.h"
#include "common/precision.h"
#include "train/data_source.h"
#include "train/metrics.h"
#ifdef ATTNKIT_HAVE_OPENCV
#include "vision/plot.h"
#endif

#include <attnkit/backbones/inference_model.h>
#include <attnkit/backbones/checkpoint.h>

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
  std::string precision = "float32";
  bool eager = false;
  bool tta = false;
  bool json = false;
  std::string png;
};

// ---- plan: the checkpoint and data that fits it, every mismatch an error before the evaluation ----

struct EvalPlan {
  torch::Device device = torch::kCPU;
  std::string weights;
  Checkpoint info;
  std::shared_ptr<Backbone> model;
  common::Precision precision;
  /// The inference path frozen from `model`; null with --eager.
  std::shared_ptr<InferenceModel> frozen;
  /// The checkpoint's class names ("0", "1", ... where it has none).
  std::vector<std::string> classes;
  train::DataSpec data;
  train::Dataset dataset;
};

/// The data must have the checkpoint's classes, image size and channels, and be scaled as eval does.
void check_data_fits(const EvalPlan& p) {
  const auto& cfg = p.info.config;
  const auto& pre = p.info.preprocessing;
  const auto& d = p.dataset;
  if (d.classes.size() != p.classes.size()) {
    throw std::runtime_error(p.data.path + ": " + std::to_string(d.classes.size()) + " classes, the checkpoint has " +
                             std::to_string(p.classes.size()));
  }
  if (d.channels() != cfg.in_channels || d.height() != pre.input_height || d.width() != pre.input_width) {
    throw std::runtime_error(p.data.path + ": images are " + std::to_string(d.channels()) + "x" + std::to_string(d.height()) +
                             "x" + std::to_string(d.width()) + ", the checkpoint expects " + std::to_string(cfg.in_channels) +
                             "x" + std::to_string(pre.input_height) + "x" + std::to_string(pre.input_width));
  }
  if (std::abs(pre.pixel_scale - 1.0 / 255.0) > 1e-12) {
    throw std::runtime_error(p.weights + ": pixel_scale " + std::to_string(pre.pixel_scale) + " is not 1/255, which eval supports");
  }
}

EvalPlan plan_eval(const EvalArgs& a) {
  EvalPlan p;
  common::configure_threads(a.threads);
  const std::string device_name = common::resolve_device(a.device);
  common::configure_cuda_speed(device_name);
  p.device = torch::Device(device_name);
#ifndef ATTNKIT_HAVE_OPENCV
  if (!a.png.empty()) throw std::runtime_error("--png: this attnkit was built without OpenCV and cannot draw pictures");
#endif
  p.weights = weights_or_bundled(a.weights);
  p.model = load_checkpoint(p.weights, &p.info);
  p.classes = p.info.class_names;
  if (p.classes.empty()) {
    for (int64_t k = 0; k < p.info.config.num_classes; ++k) p.classes.push_back(std::to_string(k));
  }
  // Image folders and CSVs are read the way the checkpoint's model wants them.
  p.data = a.data;
  p.data.known_classes = p.classes;
  if (p.data.image_size == 0) p.data.image_size = p.info.preprocessing.input_height;
  if (p.data.channels == 0) p.data.channels = p.info.config.in_channels;
  p.dataset = train::load_dataset(p.data, image_readers());
  check_data_fits(p);
  return p;
}

// ---- run ------------------------------------------------------------------------------------------

train::EvalResult run_evaluation(const EvalArgs& a, EvalPlan& p) {
  p.precision = common::resolve_precision(a.precision, p.device);
  p.model->module().to(p.device, p.precision.dtype);
  p.model->module().eval();
  p.frozen = common::inference_path(p.model, p.precision.dtype, a.eager);
  std::cerr << "eval: " << p.info.config.name() << " on " << p.device.str() << ", " << p.precision.description << ", "
            << (p.frozen ? "inference path" : "eager") << "\n";
  const auto images = p.dataset.images.to(p.device), labels = p.dataset.labels.to(p.device);
  const auto forward = [&](const torch::Tensor& x) {
    const auto input = x.to(p.precision.dtype);
    return p.frozen ? p.frozen->forward(input) : p.model->forward(input);
  };
  const auto& pre = p.info.preprocessing;
  return train::evaluate(forward, images, labels, static_cast<int64_t>(p.classes.size()), {pre.mean, pre.std}, a.batch_size,
                         false, a.tta);
}

// ---- report ---------------------------------------------------------------------------------------

/// The split's name for IDX data, "" for the formats that have none.
std::string split_of(const train::DataSpec& data) { return train::resolve_format(data) == "idx" ? data.split : ""; }

nlohmann::json confusion_rows(const torch::Tensor& confusion) {
  auto rows = nlohmann::json::array();
  for (int64_t i = 0; i < confusion.size(0); ++i) {
    std::vector<int64_t> row(confusion.size(1));
    for (int64_t jx = 0; jx < confusion.size(1); ++jx) row[jx] = confusion[i][jx].item<int64_t>();
    rows.push_back(row);
  }
  return rows;
}

void print_json_report(const EvalPlan& p, const train::EvalResult& r) {
  const auto acc = train::accuracy_from_confusion(r.confusion);
  const auto per_class_count = r.confusion.sum(1);
  nlohmann::json j;
  j["checkpoint"] = p.weights;
  j["model"] = p.info.config.name();
  j["data"] = p.data.path;
  j["split"] = split_of(p.data);
  j["images"] = r.count;
  j["correct"] = r.confusion.diagonal().sum().item<int64_t>();
  j["accuracy"] = acc.overall;
  j["loss"] = r.loss;
  j["classes"] = p.classes;
  j["per_class"] = nlohmann::json::array();
  for (size_t k = 0; k < p.classes.size(); ++k) {
    const auto accuracy = std::isfinite(acc.per_class[k]) ? nlohmann::json(acc.per_class[k]) : nlohmann::json();
    j["per_class"].push_back({{"class", p.classes[k]}, {"count", per_class_count[k].item<int64_t>()}, {"accuracy", accuracy}});
  }
  j["confusion"] = confusion_rows(r.confusion);
  std::cout << j.dump(2) << "\n";
}

void print_text_report(const EvalPlan& p, const train::EvalResult& r) {
  const auto acc = train::accuracy_from_confusion(r.confusion);
  const auto per_class_count = r.confusion.sum(1);
  const int64_t correct = r.confusion.diagonal().sum().item<int64_t>();
  const std::string split = split_of(p.data);
  std::cout << "checkpoint: " << p.weights << " (" << p.info.config.name() << ", " << p.classes.size() << " classes)\n"
            << "data: " << p.data.path << " (" << r.count << " images" << (split.empty() ? "" : ", " + split + " split") << ")\n"
            << std::fixed << std::setprecision(2) << "accuracy: " << 100 * acc.overall << "% (" << correct << "/" << r.count
            << "), loss " << std::setprecision(4) << r.loss << "\n\nper-class accuracy:\n";
  size_t w = 5;
  for (const auto& c : p.classes) w = std::max(w, c.size());
  for (size_t k = 0; k < p.classes.size(); ++k) {
    std::cout << "  " << std::left << std::setw(static_cast<int>(w)) << p.classes[k] << std::right << std::setw(9);
    if (std::isfinite(acc.per_class[k])) std::cout << std::setprecision(2) << 100 * acc.per_class[k] << "%";
    else std::cout << "-" << " ";
    std::cout << "  (" << per_class_count[k].item<int64_t>() << ")\n";
  }
  std::cout << "\nconfusion matrix (rows: true class, columns: predicted class):\n" << train::format_confusion(r.confusion, p.classes);
}

void report_eval(const EvalArgs& a, const EvalPlan& p, const train::EvalResult& r) {
  if (a.json) print_json_report(p, r);
  else print_text_report(p, r);
#ifdef ATTNKIT_HAVE_OPENCV
  if (!a.png.empty()) {
    vision::plot_confusion(r.confusion, p.classes, a.png);
    if (!a.json) std::cout << "confusion matrix picture: " << a.png << "\n";
  }
#endif
}

int run_eval(const EvalArgs& a) {
  EvalPlan plan = plan_eval(a);
  const auto result = run_evaluation(a, plan);
  report_eval(a, plan, result);
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
  cmd->add_option("--precision", a->precision, std::string(common::kPrecisionHelp) +
                  ". Default float32: eval measures accuracy, and bfloat16 may move it by a few hundredths of a point")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_flag("--eager", a->eager, common::kEagerHelp);
  cmd->add_flag("--tta", a->tta, "Average the logits of each image and its mirror");
  cmd->add_flag("--json", a->json, "Print the results as one JSON document");
  cmd->add_option("--png", a->png, "Also draw the confusion matrix into this PNG file (needs OpenCV)");
  return [cmd, a]() -> int { return cmd->parsed() ? run_eval(*a) : -1; };
}

}  // namespace attnkit::app
