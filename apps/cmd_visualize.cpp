// attnkit visualize: where a model looks in an image. The model's own attention maps (native) or the
// class-activation-map family (explain.h), overlaid on the picture at its full resolution, a labelled
// grid of every layer or method, and the raw maps (16-bit PNG or .npy). One forward pass per image
// (plus one backward for the gradient CAMs); every file is written atomically and never clobbered
// without --overwrite. Needs OpenCV (images in, pictures out).
#ifdef ATTNKIT_HAVE_OPENCV
#include "commands.h"
#include "validators.h"

#include "bundled.h"
#include "faithfulness_report.h"

#include "common/device.h"
#include "common/precision.h"
#include "common/files.h"
#include "train/calibration.h"
#include "vision/bar_chart.h"
#include "vision/heatmap.h"
#include "vision/preprocess.h"

#include <attnkit/backbones/calibration.h>
#include <attnkit/backbones/channel_gates.h>
#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/explain.h>
#include <attnkit/backbones/inference_model.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/nn/functional/upsampling.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>

namespace attnkit::app {
namespace {
namespace fs = std::filesystem;

struct VisualizeArgs {
  std::vector<std::string> images;
  std::string weights;
  std::string method = "auto";
  std::vector<std::string> layers;
  std::string target;
  std::string query;
  double alpha = 0.5;
  std::string colormap = "jet";
  std::string raw;
  std::string out = "attnkit-visualize";
  bool overwrite = false;
  bool no_grid = false;
  bool no_overlay = false;
  int display_size = 256;
  std::string device = "auto";
  std::string precision = "auto";
  bool eager = false;
  int threads = 0;
  bool aug_smooth = false, eigen_smooth = false, combine_layers = false;
  int top_k = 1;
  int cam_batch = 32;
  bool score = false;
  std::string format = "table";
};

/// A file to write: its path and its bytes (everything is encoded before anything is written).
struct Output {
  std::string path;
  std::string bytes;
};

/// NumPy's .npy format, version 1.0: magic, header length, a Python dict literal padded with spaces
/// to a multiple of 64 bytes and ending in '\n', then the float32 data (little-endian, C order).
std::string npy_float32(const torch::Tensor& map) {
  const auto m = map.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  std::string shape;
  for (const auto s : m.sizes()) shape += std::to_string(s) + ", ";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape.substr(0, shape.size() - 1) + "), }";
  const size_t preamble = 10;  // magic (6) + version (2) + header length (2)
  header.append(63 - (preamble + header.size()) % 64, ' ');
  header += '\n';
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  static_assert(sizeof(float) == 4);
  const uint16_t probe = 1;
  TORCH_CHECK(*reinterpret_cast<const uint8_t*>(&probe) == 1, "visualize: .npy output needs a little-endian machine");
  out.append(reinterpret_cast<const char*>(m.data_ptr<float>()), static_cast<size_t>(m.numel()) * sizeof(float));
  return out;
}

std::string png(const cv::Mat& image) {
  std::vector<uchar> buf;
  if (!cv::imencode(".png", image, buf)) throw std::runtime_error("cannot encode a PNG");
  return std::string(buf.begin(), buf.end());
}

/// [h, w] map in [0, 1] → 16-bit gray PNG, 0..65535.
std::string png16(const torch::Tensor& map) {
  const auto m = (map.detach().to(torch::kCPU, torch::kFloat32).clamp(0, 1) * 65535.0).round().to(torch::kInt32).contiguous();
  cv::Mat u16(static_cast<int>(m.size(0)), static_cast<int>(m.size(1)), CV_16U);
  const int32_t* p = m.data_ptr<int32_t>();
  for (int r = 0; r < u16.rows; ++r)
    for (int c = 0; c < u16.cols; ++c) u16.at<uint16_t>(r, c) = static_cast<uint16_t>(p[r * u16.cols + c]);
  return png(u16);
}

/// "--query 0.25,0.5" → (x, y), each in [0, 1].
std::pair<double, double> parse_query(const std::string& text) {
  const auto comma = text.find(',');
  try {
    if (comma != std::string::npos) {
      size_t used_x = 0, used_y = 0;
      const double x = std::stod(text.substr(0, comma), &used_x), y = std::stod(text.substr(comma + 1), &used_y);
      if (used_x == comma && used_y == text.size() - comma - 1 && x >= 0 && x <= 1 && y >= 0 && y <= 1) return {x, y};
    }
  } catch (const std::exception&) {
  }
  throw std::runtime_error("--query \"" + text + "\": expected X,Y with both in [0, 1] (fractions of the input's width and height)");
}

/// --target: a class index or a class name of the checkpoint.
int64_t parse_target(const std::string& text, const std::vector<std::string>& classes) {
  for (size_t k = 0; k < classes.size(); ++k)
    if (classes[k] == text) return static_cast<int64_t>(k);
  try {
    size_t used = 0;
    const long long k = std::stoll(text, &used);
    if (used == text.size() && k >= 0 && k < static_cast<long long>(classes.size())) return k;
  } catch (const std::exception&) {
  }
  std::string names;
  for (const auto& c : classes) names += (names.empty() ? "" : ", ") + c;
  throw std::runtime_error("--target \"" + text + "\": not a class index in [0, " + std::to_string(classes.size()) +
                           ") nor a class name (" + names + ")");
}

std::string percent(double p) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << 100 * p << "%";
  return s.str();
}

/// File-name-safe version of a class or method name ("gradcam++" stays, spaces become '-').
std::string file_part(std::string s) {
  for (auto& c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '_' || c == '.')) c = '-';
  return s;
}

class Visualizer {
 public:
  explicit Visualizer(VisualizeArgs& a) : a_(a), out_(a.format == "json" ? std::cerr : std::cout) {
    common::configure_threads(a.threads);
    const std::string device_name = common::resolve_device(a.device);
    common::configure_cuda_speed(device_name);
    a.weights = weights_or_bundled(a.weights);
    model_ = load_checkpoint(a.weights, &info_);
    model_->module().to(torch::Device(device_name));
    model_->module().eval();
    classes_ = info_.class_names;
    for (int64_t k = static_cast<int64_t>(classes_.size()); k < info_.config.num_classes; ++k) classes_.push_back(std::to_string(k));
    colormap_ = vision::colormap_from_name(a.colormap);
    choose_methods();
    const auto precision = common::resolve_precision(a.precision, torch::Device(device_name));
    const bool gradient_free =
        std::none_of(methods_.begin(), methods_.end(), [](ExplainMethod m) { return explain_needs_gradient(m); });
    // One forward pass serves every method: the inference path when none of them needs a gradient.
    frozen_ = common::inference_path(model_, precision.dtype, a.eager || !gradient_free);
    if (!a.target.empty()) options_.target = parse_target(a.target, classes_);
    if (!a.query.empty()) std::tie(options_.query_x, options_.query_y) = parse_query(a.query);
    options_.layers = a.layers;
    options_.aug_smooth = a.aug_smooth;
    options_.eigen_smooth = a.eigen_smooth;
    options_.combine_layers = a.combine_layers;
    options_.batch_size = a.cam_batch;
    if (a.top_k > static_cast<int>(classes_.size()))
      throw std::runtime_error("--top-k " + std::to_string(a.top_k) + ": the model has only " +
                               std::to_string(classes_.size()) + " classes");
    if (a.top_k > 1 && !a.target.empty()) throw std::runtime_error("--top-k and --target: give one or the other");
    options_.top_k = a.top_k;
    std::error_code ec;
    fs::create_directories(a.out, ec);
    if (!fs::is_directory(a.out)) throw std::runtime_error("--out \"" + a.out + "\": cannot create the folder");
    if (a.score) {
      FaithfulnessOptions scoring;
      scoring.batch_size = a.cam_batch;
      report_ = std::make_unique<FaithfulnessReport>(scoring);
    }
    out_ << "model: " << a.weights << " (" << info_.config.name() << ", " << classes_.size() << " classes) on "
         << device_name << ", " << (frozen_ ? "inference path, " + precision.description : "eager (autograd), float32")
         << ", probabilities " << train::calibration_note(info_) << "; methods:";
    for (auto m : methods_) out_ << " " << explain_method_name(m);
    if (charts_) out_ << " native (channel gates)";
    out_ << "\n";
  }

  /// Returns false (after printing one line) when the image could not be processed.
  bool run(const std::string& path) {
    try {
      process(path);
      return true;
    } catch (const c10::Error& e) {
      std::cerr << "attnkit: visualize: " << path << ": " << e.what_without_backtrace() << "\n";
    } catch (const std::exception& e) {
      std::cerr << "attnkit: visualize: " << e.what() << "\n";
    }
    return false;
  }

  /// After every image: --score's means (table) or the whole report (JSON, alone on stdout).
  void finish() const {
    if (!report_) return;
    if (a_.format == "json") std::cout << report_->json().dump(2) << "\n";
    else std::cout << report_->summary_table();
  }

 private:
  /// --method all → native where the model has spatial maps (and the layers allow it), then every
  /// CAM; the layers are checked here, once, with the list of valid ones.
  void choose_methods() {
    const bool spatial = has_spatial_attention(*model_);
    auto valid_for = [&](ExplainMethod m) {
      const auto valid = explainable_layers(*model_, m);
      for (const auto& l : a_.layers)
        if (std::find(valid.begin(), valid.end(), l) == valid.end()) return false;
      return !valid.empty();
    };
    if (a_.method == "native") {
      // Channel gates (SE, ECA, CBAM's channel gate) have no spatial map: native draws their weights.
      const auto gate_layers = channel_gate_layers(*model_);
      charts_ = !gate_layers.empty();
      for (const auto& l : charts_ ? a_.layers : std::vector<std::string>{})
        if (std::find(gate_layers.begin(), gate_layers.end(), l) == gate_layers.end())
          throw std::runtime_error("--layer \"" + l + "\": no channel gate there in " + info_.config.name() +
                                   "; layers with channel gates: " + join_names(gate_layers));
      if (charts_ && !spatial) return;  // charts alone
    }
    if (a_.method == "all") {
      if (spatial && valid_for(ExplainMethod::Native)) methods_.push_back(ExplainMethod::Native);
      for (auto m : cam_methods()) methods_.push_back(m);
    } else {
      auto m = explain_method_from_name(a_.method);
      if (m == ExplainMethod::Auto) m = spatial ? ExplainMethod::Native : ExplainMethod::GradCam;
      methods_.push_back(m);
    }
    for (auto m : methods_) {
      const auto valid = explainable_layers(*model_, m);
      std::string list;
      for (const auto& v : valid) list += (list.empty() ? "" : ", ") + v;
      if (valid.empty())
        throw std::runtime_error("--method " + explain_method_name(m) + ": model " + info_.config.name() +
                                 " has no spatial attention (cbam, spatial, self, nonlocal, local); use a CAM (--method gradcam, "
                                 "hirescam, gradcam++, xgradcam, layercam, eigencam, eigengradcam, scorecam or ablationcam)");
      for (const auto& l : a_.layers)
        if (std::find(valid.begin(), valid.end(), l) == valid.end())
          throw std::runtime_error("--layer \"" + l + "\": not a layer " + explain_method_name(m) + " can use on " +
                                   info_.config.name() + "; valid layers: " + list);
    }
  }

  static std::string join_names(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  }

  torch::Device model_device() const {
    for (const auto& param : model_->module().parameters()) return param.device();
    return torch::kCPU;
  }

  std::string out_path(const std::string& stem, const std::string& what, const std::string& ext) const {
    return (fs::path(a_.out) / (stem + "." + what + ext)).string();
  }

  /// One image's explanations and the prediction they go with.
  struct Prediction {
    std::vector<Explanation> explanations;
    int64_t top1 = 0, target = 0;
    /// "<class> 97.0%".
    std::string text;
    /// The gradient CAMs explain a class other than the top-1 (--target).
    bool other_target = false;
    std::string grid_title;
    double ms = 0;
  };

  Prediction predict(const vision::NetworkInput& input) const {
    Prediction p;
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor logits;
    if (methods_.empty()) {  // channel gate charts alone (render() draws them): just the prediction
      torch::NoGradGuard no_grad;
      const auto x = input.tensor.unsqueeze(0);
      logits = frozen_ ? frozen_->forward(x.to(model_device())) : model_->forward(x.to(model_device()));
    } else {
      p.explanations = frozen_ ? explain(*frozen_, input.tensor.unsqueeze(0), methods_, options_)
                               : explain(*model_, input.tensor.unsqueeze(0), methods_, options_);
      logits = p.explanations.front().logits;
    }
    const auto probs = calibrated_softmax(logits.to(torch::kCPU, torch::kDouble), info_.temperature())[0];
    p.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    p.top1 = probs.argmax().item<int64_t>();
    p.target = p.explanations.empty() ? p.top1 : p.explanations.front().targets[0].item<int64_t>();
    p.text = classes_[p.top1] + " " + percent(probs[p.top1].item<double>());
    // Native maps and Eigen-CAM do not depend on the class; the other CAMs explain `target`.
    const bool uses_target =
        std::any_of(methods_.begin(), methods_.end(), [](ExplainMethod m) { return explain_uses_target(m); });
    p.other_target = uses_target && p.target != p.top1;
    p.grid_title = p.text;
    if (p.other_target) p.grid_title += "\nmaps for " + classes_[p.target] + " " + percent(probs[p.target].item<double>());
    return p;
  }

  /// Every file of one image, drawn and encoded (nothing written yet): overlays, raw maps, the grid.
  std::vector<Output> render(const std::string& stem, const cv::Mat& image, const vision::NetworkInput& input,
                             const Prediction& p) const {
    const cv::Mat display = vision::upscale_for_display(image, a_.display_size);
    vision::InputWindow window = input.window;
    const double fx = static_cast<double>(display.cols) / image.cols, fy = static_cast<double>(display.rows) / image.rows;
    window.region = cv::Rect2d(window.region.x * fx, window.region.y * fy, window.region.width * fx, window.region.height * fy);
    std::vector<Output> outputs;
    std::vector<cv::Mat> tiles = {display};
    std::vector<std::string> labels = {p.grid_title};
    for (const auto& e : p.explanations) {
      // With --top-k each class's maps carry its name (the rank-0 class too, so the files sort together).
      const std::string cls = a_.top_k > 1 ? classes_[e.targets[0].item<int64_t>()] : "";
      const std::string method = explain_method_name(e.method) + (cls.empty() ? "" : "." + cls);
      for (const auto& lm : e.maps) {
        // A combined map is at the input's resolution, not the layer's: map_to_image places either.
        const auto map = lm.map[0];
        const cv::Mat picture = vision::overlay(display, vision::map_to_image(map, window, display.size()), a_.alpha, colormap_);
        const std::string base = file_part(method) + "." + file_part(lm.layer);
        if (!a_.no_overlay) outputs.push_back({out_path(stem, base, ".png"), png(picture)});
        if (a_.raw == "png16") outputs.push_back({out_path(stem, base, ".raw.png"), png16(map)});
        if (a_.raw == "npy") outputs.push_back({out_path(stem, base, ".npy"), npy_float32(map)});
        tiles.push_back(picture);
        labels.push_back((cls.empty() ? method : explain_method_name(e.method) + " " + cls) + " " + lm.layer);
      }
    }
    if (charts_) {
      // Channel gates: one bar chart per block (and the raw weights with --raw npy), not in the grid.
      for (const auto& g : channel_gate_weights(*model_, input.tensor.unsqueeze(0), a_.layers)) {
        const std::string base = "native." + file_part(g.layer) + ".channels";
        const auto title = g.layer + " " + g.gate + " channel gate";
        outputs.push_back({out_path(stem, base, ".png"), png(vision::channel_bar_chart(g.weights[0], title))});
        if (a_.raw == "npy") outputs.push_back({out_path(stem, base, ".npy"), npy_float32(g.weights[0])});
      }
    }
    if (!a_.no_grid && tiles.size() > 1) {
      const std::string what = a_.method == "all" ? std::string("all") : file_part(explain_method_name(methods_.front()));
      outputs.push_back({out_path(stem, what + ".grid", ".png"), png(vision::make_grid(tiles, labels))});
    }
    return outputs;
  }

  /// All or nothing per image: a clash with an earlier input or an existing file writes none of it.
  void check_outputs(const std::string& path, const std::vector<Output>& outputs) const {
    for (const auto& o : outputs) {
      if (written_.count(o.path))
        throw std::runtime_error(path + ": " + o.path + " was already written for another input with the same name");
      if (!a_.overwrite && fs::exists(o.path))
        throw std::runtime_error(path + ": " + o.path + " exists; pass --overwrite to replace it (nothing written for this image)");
    }
  }

  void process(const std::string& path) {
    const cv::Mat image = vision::read_image(path);
    const auto input = vision::prepare_input(image, info_.preprocessing);
    const Prediction p = predict(input);
    const auto outputs = render(fs::path(path).stem().string(), image, input, p);
    check_outputs(path, outputs);
    out_ << path << ": " << p.text << " (class " << p.top1 << ")";
    if (p.other_target) out_ << "; maps for " << classes_[p.target] << " (class " << p.target << ")";
    out_ << "; " << std::fixed << std::setprecision(1) << p.ms << " ms\n";
    for (const auto& o : outputs) {
      common::write_file_atomic(o.path, o.bytes);
      written_.insert(o.path);
      out_ << "  wrote " << o.path << "\n";
    }
    if (report_) {
      score(path, input, p);
      if (a_.format == "table") out_ << report_->image_table(path);
    }
  }

  /// --score: every map of the image, resized to the network input (bilinear, half-pixel centres, as
  /// pytorch-grad-cam's cv2.resize), scored on the network that drew it.
  void score(const std::string& path, const vision::NetworkInput& input, const Prediction& p) {
    namespace F = torch::nn::functional;
    const auto device = model_device();
    const auto x = input.tensor.unsqueeze(0).to(device);
    auto logits_of = [this](const torch::Tensor& batch) {
      return frozen_ ? frozen_->forward(batch) : model_->forward(batch);
    };
    FaithfulnessOptions scoring;  // pytorch-grad-cam's percentiles and noise
    scoring.batch_size = a_.cam_batch;
    for (const auto& e : p.explanations) {
      const int64_t target = e.targets[0].item<int64_t>();
      for (const auto& lm : e.maps) {
        const auto cam = F::interpolate(lm.map.slice(0, 0, 1).unsqueeze(1).to(device, torch::kFloat),
                                        F::InterpolateFuncOptions()
                                            .size(std::vector<int64_t>{x.size(2), x.size(3)})
                                            .mode(torch::kBilinear)
                                            .align_corners(false))
                             .squeeze(1);
        const auto s = faithfulness(logits_of, x, cam, e.targets.slice(0, 0, 1).to(device), scoring);
        report_->add(path, explain_method_name(e.method), lm.layer, classes_[target], s);
      }
    }
  }

  VisualizeArgs& a_;
  /// Progress and per-image lines: stdout, or stderr with --format json (stdout carries the JSON alone).
  std::ostream& out_;
  std::unique_ptr<FaithfulnessReport> report_;
  Checkpoint info_;
  std::shared_ptr<Backbone> model_;
  /// The frozen network when every method is gradient-free (native, eigencam, scorecam, ablationcam)
  /// and --eager is off.
  std::shared_ptr<InferenceModel> frozen_;
  std::vector<std::string> classes_;
  std::vector<ExplainMethod> methods_;
  /// --method native on a model with channel gates: their weights as bar charts.
  bool charts_ = false;
  ExplainOptions options_;
  int colormap_ = 0;
  std::set<std::string> written_;
};

int run_visualize(VisualizeArgs& a) {
  Visualizer v(a);
  int failed = 0;
  for (const auto& image : a.images) failed += v.run(image) ? 0 : 1;
  v.finish();
  if (failed) std::cerr << "attnkit: visualize: " << failed << " of " << a.images.size() << " images failed\n";
  return failed ? kFailure : kOk;
}

}  // namespace

Runner add_visualize_command(CLI::App& cli) {
  auto a = std::make_shared<VisualizeArgs>();
  auto* cmd = cli.add_subcommand("visualize", "Heatmaps of where a model looks: its attention maps or Grad-CAM & co., over the images");
  cmd->add_option("images", a->images, "Image files (PNG, JPEG, ... anything OpenCV reads); a missing or corrupt one is reported and skipped")
      ->required();
  cmd->add_option("--weights", a->weights, "attnkit checkpoint; default: the bundled Fashion-MNIST model (no attention blocks: auto → gradcam)")
      ->check(CLI::ExistingFile);
  std::vector<std::string> methods = explain_method_names();
  methods.push_back("all");
  cmd->add_option("--method", a->method,
                  "native: the attention blocks' own spatial maps (cbam, spatial, self, nonlocal, local); gradcam, hirescam, "
                  "gradcam++, xgradcam, layercam, eigencam, eigengradcam, scorecam, ablationcam: class activation maps as "
                  "pytorch-grad-cam computes them; auto: native when the model has spatial attention, else gradcam; "
                  "all: every method that applies, in one grid")
      ->check(CLI::IsMember(methods))->capture_default_str();
  cmd->add_flag("--aug-smooth", a->aug_smooth,
                "Test-time augmentation as pytorch-grad-cam: the image flipped and scaled by 0.9/1.0/1.1, six maps averaged");
  cmd->add_flag("--eigen-smooth", a->eigen_smooth,
                "First principal component of the weighted activations instead of their sum (pytorch-grad-cam's eigen_smooth)");
  cmd->add_flag("--combine-layers", a->combine_layers,
                "Average the --layer maps into one at the input's resolution (pytorch-grad-cam's aggregation) instead of one "
                "map per layer");
  cmd->add_option("--top-k", a->top_k, "Explain each image's K most probable classes, one map per class (files named "
                                       "IMAGE-STEM.METHOD.CLASS.LAYER.png)")
      ->check(CLI::Range(1, 1000))->capture_default_str();
  cmd->add_option("--cam-batch", a->cam_batch,
                  "scorecam / ablationcam (and --score): masked or perturbed forwards per pass (bounds their memory)")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_flag("--score", a->score,
                "Faithfulness of every map, as pytorch-grad-cam's metrics: the class's logit change when the image is "
                "multiplied by the map (change, drop, increase) and ROAD (MoRF, LeRF at 10..90% of the pixels imputed by "
                "noisy linear imputation, and (LeRF - MoRF) / 2); per image and the mean per method and layer");
  cmd->add_option("--format", a->format, "--score's report: table, or json (one object on stdout; other lines go to stderr)")
      ->check(CLI::IsMember({"table", "json"}))->capture_default_str();
  cmd->add_option("--layer", a->layers,
                  "Layer to explain, repeatable: a block (layer3.1: its output, or its attention for native), a stage (layer3: "
                  "its output; native: each of its blocks) or all (every stage; native: every block). Default: the last stage "
                  "(CAMs), every block with a spatial map (native)");
  cmd->add_option("--target", a->target, "Class to explain: an index or a class name of the checkpoint; default: each image's top-1");
  cmd->add_option("--query", a->query,
                  "X,Y in [0, 1]: for native self/local attention, show where this point of the input looks (fractions of the "
                  "input's width and height, 0,0 = top-left) instead of the attention each position receives on average");
  cmd->add_option("--alpha", a->alpha, "Opacity of the heatmap over the image, 0..1")->check(finite_number())->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--colormap", a->colormap, "Colour map of the heatmaps")->check(CLI::IsMember(vision::colormap_names()))->capture_default_str();
  cmd->add_option("--raw", a->raw,
                  "Also write each map at the layer's resolution: png16 (16-bit gray PNG, 0..65535 for 0..1) or npy (float32 "
                  "[h, w] in [0, 1], NumPy's format)")
      ->check(CLI::IsMember({"png16", "npy"}));
  cmd->add_option("--out", a->out, "Output folder (created); files are named IMAGE-STEM.METHOD.LAYER.png, "
                                   "IMAGE-STEM.METHOD.grid.png, IMAGE-STEM.METHOD.LAYER.raw.png / .npy")
      ->capture_default_str();
  cmd->add_flag("--overwrite", a->overwrite, "Replace existing output files (without it an existing file is an error and nothing is written for that image)");
  cmd->add_flag("--no-grid", a->no_grid, "Do not write the grid (the image with its prediction, then every map, labelled)");
  cmd->add_flag("--no-overlay", a->no_overlay, "Do not write one full-resolution overlay per map");
  cmd->add_option("--display-size", a->display_size, "Images whose shorter side is smaller are scaled up (nearest neighbour, integer factor) to at least this many pixels for drawing")
      ->check(CLI::Range(1, 8192))->capture_default_str();
  cmd->add_option("--device", a->device, "auto (CUDA when available), cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of LibTorch (0 = its default)")->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_option("--precision", a->precision, std::string(common::kPrecisionHelp) +
                  ". Applies to the inference path (gradient-free methods alone: native, eigencam, scorecam, ablationcam); "
                  "the gradient CAMs run in float32")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_flag("--eager", a->eager, std::string(common::kEagerHelp) + ". The gradient CAMs always run the module");
  cmd->footer(
      "Examples:\n"
      "  attnkit visualize weights/samples/0000-ankle-boot.png                    # bundled model, Grad-CAM\n"
      "  attnkit visualize img.jpg --weights m.attnkit --method all --layer all   # every method x every stage\n"
      "  attnkit visualize img.jpg --weights cbam.attnkit --method native --raw npy\n"
      "The probability shown with the prediction is calibrated when the checkpoint stores a temperature T\n"
      "(attnkit calibrate): softmax(logits / T); the model line says which.");
  return [cmd, a]() -> int { return cmd->parsed() ? run_visualize(*a) : -1; };
}

}  // namespace attnkit::app
#endif  // ATTNKIT_HAVE_OPENCV
