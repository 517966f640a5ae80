// attnkit classify: the top-k classes of image files (files, folders, glob patterns, list files) with
// a checkpoint, as a table, JSON lines or CSV. Images are decoded by a background thread while the
// model runs on the previous batch; every image is preprocessed as its checkpoint says. A file that
// cannot be read gives one error line and the others go on (exit code 1 at the end).
// Needs OpenCV (decoding); without it the command is not compiled.
#ifdef ATTNKIT_HAVE_OPENCV
#include "commands.h"

#include "bundled.h"

#include "common/device.h"
#include "common/precision.h"
#include "common/files.h"
#include "common/progress.h"
#include "train/calibration.h"
#include "vision/image_list.h"
#include "vision/prefetch.h"

#include <attnkit/backbones/calibration.h>
#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/inference_model.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include <unistd.h>

namespace attnkit::app {
namespace {

struct ClassifyArgs {
  std::vector<std::string> paths;
  std::string list;
  bool recursive = false;
  std::string weights;
  int64_t top_k = 5;
  int64_t batch_size = 32;
  std::string device = "auto";
  std::string precision = "auto";
  bool eager = false;
  int threads = 0;
  std::string format = "table";
  std::string output;
  bool overwrite = false;
};

/// Files at least this many show a progress bar (on a terminal).
constexpr size_t kProgressMinFiles = 100;

struct Guess {
  std::string label;
  int64_t index;
  double prob;
};

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos && (s.empty() || (s.front() != ' ' && s.back() != ' '))) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

/// Writes results in one of the three formats, one image at a time.
class ResultWriter {
 public:
  ResultWriter(std::ostream& out, std::string format, size_t path_width)
      : out_(out), format_(std::move(format)), path_width_(path_width) {
    if (format_ == "csv") out_ << "path,rank,label,index,prob,error\n";
  }

  void result(const std::string& path, const std::vector<Guess>& top) {
    if (format_ == "json") {
      auto list = nlohmann::ordered_json::array();
      for (const auto& g : top) list.push_back({{"label", g.label}, {"index", g.index}, {"prob", g.prob}});
      line(nlohmann::ordered_json{{"path", path}, {"top", list}});
    } else if (format_ == "csv") {
      for (size_t r = 0; r < top.size(); ++r) {
        char prob[32];
        std::snprintf(prob, sizeof prob, "%.6g", top[r].prob);
        out_ << csv_field(path) << "," << r + 1 << "," << csv_field(top[r].label) << "," << top[r].index << "," << prob << ",\n";
      }
    } else {
      out_ << padded(path);
      for (size_t r = 0; r < top.size(); ++r) {
        char pct[32];
        std::snprintf(pct, sizeof pct, " (%.2f%%)", 100 * top[r].prob);
        out_ << (r ? ", " : "  ") << top[r].label << pct;
      }
      out_ << "\n";
    }
  }

  void error(const std::string& path, const std::string& message) {
    if (format_ == "json") line(nlohmann::ordered_json{{"path", path}, {"error", message}});
    else if (format_ == "csv") out_ << csv_field(path) << ",,,,," << csv_field(message) << "\n";
    else out_ << path << ": error: " << message << "\n";
  }

 private:
  void line(const nlohmann::ordered_json& j) {
    // Paths need not be UTF-8; replace what is not rather than failing.
    out_ << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  std::string padded(const std::string& path) const {
    return path.size() >= path_width_ ? path : path + std::string(path_width_ - path.size(), ' ');
  }

  std::ostream& out_;
  const std::string format_;
  const size_t path_width_;
};

int usage_error(const std::string& message) {
  std::cerr << "attnkit classify: " << message << "\nRun 'attnkit classify --help' for usage.\n";
  return kUsage;
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// ---- plan: the files and the model, every error before the first image -----------------------------

/// A problem with the command line found while planning: exit code 2, not 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ClassifyPlan {
  std::vector<std::string> files;
  /// Inputs that could not be expanded (folders that cannot be listed): reported as failures.
  std::vector<std::pair<std::string, std::string>> input_errors;
  std::string device_name;
  torch::Device device = torch::kCPU;
  Checkpoint info;
  std::shared_ptr<Backbone> model;
  common::Precision precision;
  /// The inference path frozen from `model`; null with --eager (or float16, which it does not run).
  std::shared_ptr<InferenceModel> frozen;
  /// The checkpoint's class names, padded with indices ("7") where it has fewer.
  std::vector<std::string> classes;
  /// Classes shown per image: --top-k, at most the model's class count.
  int64_t k = 1;
};

void check_output_file(const ClassifyArgs& a) {
  namespace fs = std::filesystem;
  if (a.output.empty() || !fs::exists(a.output)) return;
  // The file is replaced by a rename: never do that to a device such as /dev/null, or a folder.
  if (!fs::is_regular_file(a.output)) throw std::runtime_error("classify: --output \"" + a.output + "\" is not a regular file");
  if (!a.overwrite) throw std::runtime_error("classify: \"" + a.output + "\" exists; pass --overwrite to replace it");
}

vision::ImageList image_files(const ClassifyArgs& a) {
  std::vector<std::string> inputs = a.paths;
  if (!a.list.empty()) {
    const auto listed = vision::read_list_file(a.list);
    inputs.insert(inputs.end(), listed.begin(), listed.end());
  }
  const vision::ImageList found = vision::expand_inputs(inputs, {a.recursive});
  for (const auto& w : found.warnings) std::cerr << "attnkit classify: warning: " << w << "\n";
  if (found.files.empty() && found.errors.empty()) throw UsageError("no image files found in the inputs");
  return found;
}

void plan_model(const ClassifyArgs& a, ClassifyPlan& p) {
  common::configure_threads(a.threads);
  p.device_name = common::resolve_device(a.device);
  common::configure_cuda_speed(p.device_name);
  p.device = torch::Device(p.device_name);
  p.model = load_checkpoint(weights_or_bundled(a.weights), &p.info);
  p.precision = common::resolve_precision(a.precision, p.device);
  p.model->module().to(p.device, p.precision.dtype);
  p.model->module().eval();
  p.frozen = common::inference_path(p.model, p.precision.dtype, a.eager);
  const int64_t num_classes = p.info.config.num_classes;
  p.classes = p.info.class_names;
  for (auto k = static_cast<int64_t>(p.classes.size()); k < num_classes; ++k) p.classes.push_back(std::to_string(k));
  p.k = std::min(a.top_k, num_classes);
}

ClassifyPlan plan_classify(const ClassifyArgs& a) {
  check_output_file(a);
  ClassifyPlan p;
  vision::ImageList found = image_files(a);
  p.files = std::move(found.files);
  p.input_errors = std::move(found.errors);
  plan_model(a, p);
  return p;
}

// ---- run: batches of decoded images through the model, results in file order ----------------------

struct ClassifyCounts {
  size_t done = 0, failed = 0;
  /// Includes the warm-up of the first forward pass.
  double first_batch_s = 0;
};

/// Collects decoded images (and decoding errors, which keep their place in the file order) into
/// batches of --batch-size images and writes each batch's results as soon as it is classified.
class BatchClassifier {
 public:
  BatchClassifier(const ClassifyPlan& plan, int64_t batch_size, ResultWriter& writer, std::ostream& out, common::ProgressBar* bar)
      : plan_(plan), batch_size_(batch_size), writer_(writer), out_(out), bar_(bar) {}

  void add(vision::PreparedImage item) {
    if (item.error.empty()) ++batch_images_;
    pending_.push_back(std::move(item));
    if (batch_images_ == batch_size_) flush();
  }
  void flush() {
    if (pending_.empty()) return;
    const auto [probs, indices] = classify_pending();
    write_pending(probs, indices);
    out_.flush();
    if (counts_.done == 0) counts_.first_batch_s = seconds_since(start_);
    counts_.done += pending_.size();
    pending_.clear();
    batch_images_ = 0;
    show_progress();
  }
  const ClassifyCounts& counts() const { return counts_; }
  Clock::time_point start() const { return start_; }

 private:
  /// Top-k probabilities (float64) and class indices of the pending images that decoded, on the CPU.
  std::pair<torch::Tensor, torch::Tensor> classify_pending() const {
    std::vector<torch::Tensor> inputs;
    for (const auto& p : pending_)
      if (p.error.empty()) inputs.push_back(p.input.tensor);
    if (inputs.empty()) return {torch::empty({0, plan_.k}, torch::kFloat64), torch::empty({0, plan_.k}, torch::kLong)};
    const auto batch = torch::stack(inputs).to(plan_.device, plan_.precision.dtype);
    const auto logits = plan_.frozen ? plan_.frozen->forward(batch) : plan_.model->forward(batch);
    // Divided by the checkpoint's temperature first: calibrated probabilities, the same order.
    auto [p, i] = calibrated_softmax(logits.to(torch::kFloat32), plan_.info.temperature()).topk(plan_.k, 1);
    return {p.to(torch::kCPU, torch::kFloat64).contiguous(), i.to(torch::kCPU).contiguous()};
  }
  void write_pending(const torch::Tensor& probs, const torch::Tensor& indices) {
    const auto prob_at = probs.accessor<double, 2>();
    const auto index_at = indices.accessor<int64_t, 2>();
    int64_t row = 0;
    for (const auto& p : pending_) {
      if (!p.error.empty()) {
        writer_.error(p.path, p.error);
        ++counts_.failed;
        continue;
      }
      std::vector<Guess> top;
      for (int64_t r = 0; r < plan_.k; ++r) {
        const int64_t c = index_at[row][r];
        top.push_back({plan_.classes[static_cast<size_t>(c)], c, prob_at[row][r]});
      }
      writer_.result(p.path, top);
      ++row;
    }
  }
  void show_progress() {
    if (!bar_ || !bar_->due()) return;
    char detail[64];
    std::snprintf(detail, sizeof detail, "%zu failed %.0f img/s", counts_.failed, static_cast<double>(counts_.done) / seconds_since(start_));
    bar_->update(static_cast<int64_t>(counts_.done), detail);
  }

  const ClassifyPlan& plan_;
  const int64_t batch_size_;
  ResultWriter& writer_;
  std::ostream& out_;
  common::ProgressBar* bar_;
  const Clock::time_point start_ = Clock::now();
  std::vector<vision::PreparedImage> pending_;
  int64_t batch_images_ = 0;
  ClassifyCounts counts_;
};

// ---- report ---------------------------------------------------------------------------------------

std::string summary_line(const ClassifyArgs& a, const ClassifyPlan& plan, const ClassifyCounts& c, double seconds) {
  char summary[448];
  std::snprintf(summary, sizeof summary, "classify: %zu image%s, %zu failed, %.1f images/s, %.2f ms per image (%s, %s, %s, batch %lld, first batch %.2f s; %s)",
                c.done, c.done == 1 ? "" : "s", c.failed, static_cast<double>(c.done) / seconds, 1000.0 * seconds / static_cast<double>(c.done),
                plan.device_name.c_str(), plan.precision.description.c_str(), plan.frozen ? "inference path" : "eager",
                static_cast<long long>(a.batch_size), c.first_batch_s, train::calibration_note(plan.info).c_str());
  return summary + (a.output.empty() ? std::string() : "; results in " + a.output);
}

int run_classify(const ClassifyArgs& a, const CLI::App& cmd) {
  if (a.paths.empty() && a.list.empty()) {
    std::cerr << cmd.help();
    return usage_error("give at least one PATH or --list FILE");
  }
  ClassifyPlan plan;
  try {
    plan = plan_classify(a);
  } catch (const UsageError& e) {
    return usage_error(e.what());
  }
  // Results go to stdout as they come, or to --output at the end (atomically, so never half a file).
  std::ostringstream buffered;
  std::ostream& out = a.output.empty() ? std::cout : buffered;
  size_t path_width = 0;
  for (const auto& f : plan.files) path_width = std::max(path_width, f.size());
  ResultWriter writer(out, a.format, std::min<size_t>(path_width, 60));
  // A bar only when it does not mix with results printed on the same terminal.
  const bool bar_wanted = plan.files.size() >= kProgressMinFiles && (!a.output.empty() || ::isatty(1) != 1);
  common::ProgressBar bar("classify", static_cast<int64_t>(plan.files.size()), true);

  c10::InferenceMode inference;
  BatchClassifier classifier(plan, a.batch_size, writer, out, bar_wanted ? &bar : nullptr);
  vision::ImagePrefetcher images(plan.files, plan.info.preprocessing, static_cast<size_t>(2 * a.batch_size));
  for (const auto& [path, error] : plan.input_errors) {  // one error row each, like unreadable files
    vision::PreparedImage failed;
    failed.path = path;
    failed.error = error;
    classifier.add(std::move(failed));
  }
  while (auto item = images.next()) classifier.add(std::move(*item));
  classifier.flush();
  const double seconds = seconds_since(classifier.start());

  if (!a.output.empty()) common::write_file_atomic(a.output, buffered.str());
  bar.finish(summary_line(a, plan, classifier.counts(), seconds));
  return classifier.counts().failed ? kFailure : kOk;
}

}  // namespace

Runner add_classify_command(CLI::App& cli) {
  auto a = std::make_shared<ClassifyArgs>();
  auto* cmd = cli.add_subcommand("classify", "Top-k classes of image files with a checkpoint (table, JSON lines or CSV)");
  cmd->footer(
      "Each PATH is an image file, a folder (its images, sorted; --recursive for subfolders) or a glob\n"
      "pattern (quote it to let attnkit expand it). Files are preprocessed as the checkpoint says.\n"
      "Probabilities are calibrated when the checkpoint stores a temperature T (attnkit calibrate):\n"
      "softmax(logits / T); the summary says which. The top-k classes are the same either way.\n"
      "Output: table (path, then \"label (prob%)\"), json (one object per line: {\"path\", \"top\": [{\"label\",\n"
      "\"index\", \"prob\"}]} or {\"path\", \"error\"}) or csv (path,rank,label,index,prob,error).\n"
      "A summary goes to stderr: images, failures, images/s and ms per image (from the first decode to\n"
      "the last result; model loading excluded, warm-up included) and the first batch's time. A progress\n"
      "bar too, for 100+ files, when stderr is a terminal and the results do not go to the same one.\n"
      "Exit code: 0 all classified, 1 some file failed (one error line each, the rest go on), 2 usage\n"
      "error (bad option, no image found).");
  cmd->add_option("PATH", a->paths, "Image files, folders or glob patterns");
  cmd->add_option("--list", a->list,
                  "Text file of inputs, one per line ('#' starts a comment line; relative paths are relative to the file's folder)")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--recursive,-r", a->recursive, "Also take the images in the subfolders of folder inputs");
  cmd->add_option("--weights", a->weights, "attnkit checkpoint; default: the bundled Fashion-MNIST model (" + std::string(kBundledModelName) + ")")
      ->check(CLI::ExistingFile);
  cmd->add_option("--top-k,-k", a->top_k, "Classes shown per image, most probable first (at most the model's class count)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}))->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "Images per forward pass")->check(CLI::Range(int64_t{1}, int64_t{4096}))->capture_default_str();
  cmd->add_option("--device", a->device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of LibTorch (0 = its default)")->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_option("--precision", a->precision, common::kPrecisionHelp)
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_flag("--eager", a->eager, common::kEagerHelp);
  cmd->add_option("--format", a->format, "Output format: table, json (JSON lines) or csv")
      ->check(CLI::IsMember({"table", "json", "csv"}))->capture_default_str();
  cmd->add_option("--output,-o", a->output, "Write the results to this regular file (atomically, at the end) instead of stdout");
  cmd->add_flag("--overwrite", a->overwrite, "Replace --output if it exists");
  return [cmd, a]() -> int { return cmd->parsed() ? run_classify(*a, *cmd) : -1; };
}

}  // namespace attnkit::app
#endif  // ATTNKIT_HAVE_OPENCV
