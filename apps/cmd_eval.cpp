// attnkit eval: accuracy, per-class accuracy, the confusion matrix and calibration (15-bin ECE and
// NLL at T = 1 and at the checkpoint's temperature) of a checkpoint on any data format `attnkit train`
// reads (IDX test split by default), as text, JSON (--json) and, with OpenCV, PNG pictures of the
// confusion matrix and of the reliability diagram.
#include "commands.h"
#include "image_readers.h"

#include "bundled.h"

#include "common/device.h"
#include "common/precision.h"
#include "train/calibration.h"
#include "train/checkpoint_eval.h"
#include "train/distributed.h"
#ifdef ATTNKIT_HAVE_OPENCV
#include "vision/plot.h"
#endif

#include <attnkit/backbones/calibration.h>
#include <attnkit/backbones/checkpoint.h>

#include <attnkit/backbones/multiply_adds.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
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
  /// Under torchrun: the batches shared among the processes (train/distributed.h).
  std::string dist_backend = "auto";
  double dist_timeout_s = 300;
};

// ---- plan: the checkpoint and data that fits it, every mismatch an error before the evaluation ----

struct EvalPlan {
  torch::Device device = torch::kCPU;
  std::string weights;
  Checkpoint info;
  std::shared_ptr<Backbone> model;
  common::Precision precision;
  /// The checkpoint's class names ("0", "1", ... where it has none).
  std::vector<std::string> classes;
  train::DataSpec data;
  train::Dataset dataset;
  /// The process group under torchrun; null with one process.
  std::shared_ptr<train::Distributed> dist;
  bool main_process() const { return !dist || dist->is_main(); }
};

EvalPlan plan_eval(const EvalArgs& a) {
  EvalPlan p;
  common::configure_threads(a.threads);
  const std::string device_name = common::resolve_device(a.device);
  common::configure_cuda_speed(device_name);
  p.device = torch::Device(device_name);
  if (const auto launch = train::launch_environment()) {
    if (p.device.is_cuda()) p.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(launch->local_rank));
    train::DistributedOptions d;
    d.backend = a.dist_backend;
    d.timeout = std::chrono::milliseconds(std::llround(a.dist_timeout_s * 1000));
    p.dist = train::Distributed::join(*launch, p.device.str(), d);
  }
#ifndef ATTNKIT_HAVE_OPENCV
  if (!a.png.empty()) throw std::runtime_error("--png: this attnkit was built without OpenCV and cannot draw pictures");
#endif
  p.weights = weights_or_bundled(a.weights);
  p.model = load_checkpoint(p.weights, &p.info);
  p.classes = train::class_names_of(p.info);
  p.data = train::spec_for_checkpoint(a.data, p.info);
  p.dataset = train::load_dataset(p.data, image_readers());
  train::check_data_fits(p.dataset, p.info, p.data.path, p.weights);
  return p;
}

// ---- run ------------------------------------------------------------------------------------------

/// What eval measures: accuracy and loss, and calibration at T = 1 and at the checkpoint's temperature.
struct EvalOutcome {
  train::EvalResult result;
  int64_t parameters = 0, multiply_adds_per_image = 0;
  /// Wall time of the forward passes over the data set, and images per second.
  double seconds = 0, images_per_s = 0;
  ReliabilityDiagram before, after;
  double nll_before = 0, nll_after = 0;
};

EvalOutcome run_evaluation(const EvalArgs& a, EvalPlan& p) {
  EvalOutcome o;
  // Counted on the model as loaded (CPU, float32), before it is moved or frozen.
  o.parameters = count_parameters(*p.model);
  o.multiply_adds_per_image = count_multiply_adds(
      *p.model, torch::zeros({1, p.dataset.channels(), p.dataset.height(), p.dataset.width()}));
  p.precision = common::resolve_precision(a.precision, p.device);
  const auto net = train::prepare_network(p.model, p.device, p.precision.dtype, a.eager);
  if (p.main_process()) {
    std::cerr << "eval: " << p.info.config.name() << " on " << p.device.str() << ", " << p.precision.description << ", "
              << (net.frozen ? "inference path" : "eager") << ", " << train::calibration_note(p.info) << "\n";
    if (p.dist) std::cerr << "data-parallel: " << p.dist->describe() << "; each process runs a share of the batches\n";
  }
  const auto start = std::chrono::steady_clock::now();
  o.result = train::evaluate_network(net, p.info, p.dataset, a.batch_size, a.tta, p.dist.get());
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  o.images_per_s = o.seconds > 0 ? static_cast<double>(o.result.count) / o.seconds : 0;
  // A measurement, not a result: on stderr, so that stdout is the same for any threads or processes.
  if (p.main_process()) {
    char line[160];
    std::snprintf(line, sizeof line, "eval: %lld images in %.1f s (%.0f images/s, %d thread(s)%s)\n",
                  static_cast<long long>(o.result.count), o.seconds, o.images_per_s, at::get_num_threads(),
                  p.dist ? " per process" : "");
    std::cerr << line;
  }
  const auto& logits = o.result.logits;
  const auto& labels = p.dataset.labels;
  const double t = p.info.temperature();
  o.before = reliability_diagram(logits, labels, 1.0, train::kCalibrationBins);
  o.after = reliability_diagram(logits, labels, t, train::kCalibrationBins);
  o.nll_before = negative_log_likelihood(logits, labels);
  o.nll_after = negative_log_likelihood(logits, labels, t);
  return o;
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

/// A number for JSON; null for NaN (an empty bin).
nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

nlohmann::json calibration_json(const ReliabilityDiagram& d, double temperature, double nll) {
  auto bins = nlohmann::json::array();
  for (int64_t b = 0; b < d.bins(); ++b) {
    bins.push_back({{"count", d.count[b]}, {"confidence", number_or_null(d.confidence[b])}, {"accuracy", number_or_null(d.accuracy[b])}});
  }
  return {{"temperature", temperature}, {"ece", d.ece}, {"nll", nll}, {"reliability", bins}};
}

void print_json_report(const EvalPlan& p, const EvalOutcome& o) {
  const auto& r = o.result;
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
  j["parameters"] = o.parameters;
  j["multiply_adds_per_image"] = o.multiply_adds_per_image;
  j["classes"] = p.classes;
  j["per_class"] = nlohmann::json::array();
  for (size_t k = 0; k < p.classes.size(); ++k) {
    const auto accuracy = std::isfinite(acc.per_class[k]) ? nlohmann::json(acc.per_class[k]) : nlohmann::json();
    j["per_class"].push_back({{"class", p.classes[k]}, {"count", per_class_count[k].item<int64_t>()}, {"accuracy", accuracy}});
  }
  j["confusion"] = confusion_rows(r.confusion);
  // before: T = 1; after: the checkpoint's temperature (the same numbers when it has none).
  j["calibration"] = {{"calibrated", p.info.calibration.has_value()},
                      {"fitted_on", p.info.calibration ? nlohmann::json(p.info.calibration->split) : nlohmann::json()},
                      {"bins", train::kCalibrationBins},
                      {"before", calibration_json(o.before, 1.0, o.nll_before)},
                      {"after", calibration_json(o.after, p.info.temperature(), o.nll_after)}};
  std::cout << j.dump(2) << "\n";
}

/// ECE and NLL at T = 1 and at the checkpoint's temperature, as a small table.
void print_calibration(const EvalPlan& p, const EvalOutcome& o) {
  const auto row = [](const std::string& name, double ece, double nll) {
    std::cout << "  " << std::left << std::setw(32) << name << std::right << std::setw(7) << std::setprecision(2) << 100 * ece
              << "%" << std::setw(9) << std::setprecision(4) << nll << "\n";
  };
  const std::string title = "calibration (" + std::to_string(train::kCalibrationBins) + " confidence bins):";
  std::cout << "\n" << std::left << std::setw(34) << title << std::right << std::setw(7) << "ECE" << " " << std::setw(9) << "NLL" << "\n";
  row("uncalibrated (T = 1)", o.before.ece, o.nll_before);
  if (!p.info.calibration) {
    std::cout << "  the checkpoint has no temperature; attnkit calibrate --weights " << p.weights << " fits one\n";
    return;
  }
  char t[64];
  std::snprintf(t, sizeof t, "calibrated (T = %.4g)", p.info.temperature());
  row(t, o.after.ece, o.nll_after);
  const auto& split = p.info.calibration->split;
  std::cout << "  temperature fitted on " << (split.empty() ? "data the checkpoint does not name" : split) << "\n";
}

/// 4326602 -> "4.33 M", 495000000 -> "495 M", 4.09e9 -> "4.09 G".
std::string in_millions(double n) {
  char text[32];
  if (n >= 1e9) std::snprintf(text, sizeof text, "%.3g G", n / 1e9);
  else std::snprintf(text, sizeof text, "%.3g M", n / 1e6);
  return text;
}

void print_text_report(const EvalPlan& p, const EvalOutcome& o) {
  const auto& r = o.result;
  const auto acc = train::accuracy_from_confusion(r.confusion);
  const auto per_class_count = r.confusion.sum(1);
  const int64_t correct = r.confusion.diagonal().sum().item<int64_t>();
  const std::string split = split_of(p.data);
  std::cout << "checkpoint: " << p.weights << " (" << p.info.config.name() << ", " << p.classes.size() << " classes, "
            << in_millions(static_cast<double>(o.parameters)) << " parameters, "
            << in_millions(static_cast<double>(o.multiply_adds_per_image)) << " multiply-adds per image)\n"
            << "data: " << p.data.path << " (" << r.count << " images" << (split.empty() ? "" : ", " + split + " split") << ")\n"
            << std::fixed << std::setprecision(2) << "accuracy: " << 100 * acc.overall << "% (" << correct << "/" << r.count
            << "), loss " << std::setprecision(4) << r.loss << "\n";
  print_calibration(p, o);
  std::cout << "\nper-class accuracy:\n";
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

/// The reliability diagram's file beside the confusion matrix's: confusion.png -> confusion.reliability.png.
std::string reliability_png(const std::string& confusion_png) {
  std::filesystem::path path(confusion_png);
  return (path.parent_path() / (path.stem().string() + ".reliability.png")).string();
}

void report_eval(const EvalArgs& a, const EvalPlan& p, const EvalOutcome& o) {
  if (a.json) print_json_report(p, o);
  else print_text_report(p, o);
#ifdef ATTNKIT_HAVE_OPENCV
  if (!a.png.empty()) {
    vision::plot_confusion(o.result.confusion, p.classes, a.png);
    const std::string reliability = reliability_png(a.png);
    std::vector<std::pair<std::string, ReliabilityDiagram>> panels = {{"uncalibrated (T = 1)", o.before}};
    if (p.info.calibration) panels.emplace_back(train::calibration_note(p.info), o.after);
    vision::plot_reliability(panels, reliability);
    if (!a.json) std::cout << "confusion matrix picture: " << a.png << "\nreliability diagram: " << reliability << "\n";
  }
#endif
}

int run_eval(const EvalArgs& a) {
  EvalPlan plan = plan_eval(a);
  const auto outcome = run_evaluation(a, plan);
  if (plan.main_process()) report_eval(a, plan, outcome);
  return kOk;
}

}  // namespace

Runner add_eval_command(CLI::App& cli) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = cli.add_subcommand("eval", "Accuracy, per-class accuracy, confusion matrix and calibration (ECE, NLL) of a checkpoint");
  cmd->footer(
      "Calibration: expected calibration error over 15 equal-width confidence bins and the mean negative\n"
      "log-likelihood, at T = 1 and at the temperature the checkpoint stores (attnkit calibrate fits one);\n"
      "the accuracy is the same at any temperature.");
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
  cmd->add_option("--dist-backend", a->dist_backend,
                  "Under torchrun (torchrun --nproc-per-node N --no-python attnkit eval ...): auto (gloo on CPU, nccl on "
                  "CUDA), gloo or nccl (not in this build yet; on CUDA pass gloo); rank 0 prints the numbers of the whole data set")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}))->capture_default_str();
  cmd->add_option("--dist-timeout", a->dist_timeout_s, "Under torchrun: seconds a process waits for the others before it fails")
      ->check(CLI::Range(1.0, 86400.0))->capture_default_str();
  cmd->add_flag("--eager", a->eager, common::kEagerHelp);
  cmd->add_flag("--tta", a->tta, "Average the logits of each image and its mirror");
  cmd->add_flag("--json", a->json, "Print the results as one JSON document");
  cmd->add_option("--png", a->png,
                  "Also draw the confusion matrix into this PNG file, and the reliability diagram (accuracy per confidence "
                  "bin, before and after calibration) beside it as NAME.reliability.png (needs OpenCV)");
  return [cmd, a]() -> int { return cmd->parsed() ? run_eval(*a) : -1; };
}

}  // namespace attnkit::app
