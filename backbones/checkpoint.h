// attnkit checkpoints: architecture, class names, input preprocessing and weights in ONE file, so
// that `attnkit classify --weights FILE` needs nothing else.
//
// Format (version 1). The file is what torch::pickle_save writes (PyTorch's zip serialization, so
// Python reads it with `torch.load(FILE)`), holding one dict:
//   "format"   : "attnkit-checkpoint"
//   "version"  : 1                         (int; a reader refuses versions it does not know)
//   "config"   : str, a JSON document:
//       {"model": {"name": "resnet50-cbam", "family": "resnet" | "cifar_resnet", "depth": 50,
//                  "attention": ["cbam", "cbam", "cbam", "cbam"], "num_classes": 1000,
//                  "in_channels": 3, "width": 1.0, "stem": "imagenet" | "small", "shortcut": "B"},
//        "class_names": ["tench", ...],     (empty, or exactly num_classes names)
//        "preprocessing": {"input_height": 224, "input_width": 224, "resize": "shorter_side",
//                          "resize_size": 256, "crop": "center", "color_order": "RGB",
//                          "pixel_scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406],
//                          "std": [0.229, 0.224, 0.225]},
//        "metadata": {"key": "value", ...},  (free-form strings: source, dataset, ...)
//        "calibration": {"temperature": 0.87, (optional; see Calibration below)
//                        "split": "5000 images held out of ... by attnkit train (seed 0)",
//                        "images": 5000, "bins": 15,
//                        "nll_before": 0.31, "nll_after": 0.19, "ece_before": 0.081, "ece_after": 0.009}}
//   "state"    : dict str → Tensor, the model's parameters and buffers by attnkit name (CPU)
//   "checksum" : str, 16 hex digits: 64-bit FNV-1a over the config string and, in name order, every
//                tensor's name, dtype, shape and bytes. A mismatch means the file was altered.
// "calibration" is temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
// the probabilities a program shows are softmax(logits / temperature). Only "temperature" is required
// (a finite number > 0; anything else is refused naming the field); the rest say how it was fitted and
// what it did on the data it was fitted on (NLL and 15-bin ECE at T = 1 and at T; a field that is
// absent or null is unknown). A file without "calibration" is uncalibrated, T = 1: so are all files
// written before it existed, and readers older than it ignore it (they show uncalibrated
// probabilities; the top-1 class is the same either way). Like the rest of the config it is covered
// by the checksum.
// Writing is atomic: a temporary file in the same folder, fsync, rename over the target, fsync of
// the folder, so a crash leaves either the old file or the new one. Reading validates everything
// (format tag, version, JSON fields, checksum, class count, and, when building the model, every
// weight's name and shape) and reports problems as c10::Error naming the file and the problem.
#pragma once

#include <attnkit/backbones/registry.h>
#include <attnkit/backbones/resnet.h>
#include <attnkit/backbones/state_dict_import.h>

#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace attnkit {

/// How an image is scaled before the crop.
enum class Resize {
  ShorterSide,  ///< "shorter_side": scale so the shorter side is resize_size, keeping the aspect ratio.
  Stretch,      ///< "stretch": scale to exactly input_height × input_width.
  None,         ///< "none".
};

/// How the resized image is cut to the input size.
enum class Crop {
  Center,  ///< "center": input_height × input_width from the middle.
  None,    ///< "none": the resized image must already have the input size.
};

/// The channel order the network expects.
enum class ColorOrder {
  RGB,   ///< "RGB"
  BGR,   ///< "BGR"
  Gray,  ///< "GRAY": one channel.
};

/// "shorter_side", "stretch" or "none".
const char* to_string(Resize resize);
/// "center" or "none".
const char* to_string(Crop crop);
/// "RGB", "BGR" or "GRAY".
const char* to_string(ColorOrder order);
/// Parse the names to_string gives; any other name is an error naming `field` and listing the
/// valid names.
Resize parse_resize(const std::string& name, const std::string& field = "resize");
Crop parse_crop(const std::string& name, const std::string& field = "crop");
ColorOrder parse_color_order(const std::string& name, const std::string& field = "color_order");

inline std::ostream& operator<<(std::ostream& os, Resize v) { return os << to_string(v); }
inline std::ostream& operator<<(std::ostream& os, Crop v) { return os << to_string(v); }
inline std::ostream& operator<<(std::ostream& os, ColorOrder v) { return os << to_string(v); }

/// Writes `bytes` to `path` so that a crash or a failure at any moment leaves either the previous
/// file or the new one, never a torn one: the bytes go to a temporary file in the same folder
/// (".NAME.tmp-PID-XXXXXX"), which is fsynced (mode 0644), renamed over `path`, and the folder
/// fsynced. On any failure the temporary file is removed, and on SIGINT/SIGTERM too when the program's
/// handler calls remove_unfinished_files() (unfinished_file.h); one left by a killed writer is removed
/// by the next write to `path`. On failure `path` is untouched and c10::Error is thrown with a
/// message naming the file ("cannot create a temporary file for PATH: ..."). Used by
/// save_checkpoint and by the apps for everything they write.
void write_file_atomically(const std::string& path, std::string_view bytes);

/// How an image becomes the model's input tensor (applied by the apps, stored in checkpoints).
struct Preprocessing {
  /// Size of the network input (after resize and crop).
  int64_t input_height = 224;
  int64_t input_width = 224;
  Resize resize = Resize::ShorterSide;
  /// Target of the shorter side for Resize::ShorterSide.
  int64_t resize_size = 256;
  Crop crop = Crop::Center;
  ColorOrder color_order = ColorOrder::RGB;
  /// Factor from stored pixel values (0..255) to the range mean/std refer to (1/255 → [0, 1]).
  double pixel_scale = 1.0 / 255.0;
  /// Per-channel normalisation: (pixel · pixel_scale − mean) / std; one entry per input channel.
  std::vector<double> mean = {0.485, 0.456, 0.406};
  std::vector<double> std = {0.229, 0.224, 0.225};

  /// torchvision/timm ImageNet models: RGB, shorter side 256, centre crop 224, ImageNet mean/std.
  static Preprocessing imagenet();
  /// Small inputs (CIFAR-like): stretch to size × size, no crop, the given mean/std.
  static Preprocessing small(int64_t size, std::vector<double> mean, std::vector<double> std);
  /// Throws c10::Error naming the first invalid field; `channels` is the model's input channels.
  void validate(int64_t channels) const;
  bool operator==(const Preprocessing& other) const;
};

/// Temperature scaling of a checkpoint's probabilities: softmax(logits / temperature), with the
/// temperature fitted on held-out data (calibration.h: fit_temperature). Dividing the logits by one
/// positive number never changes their order, so the top-1 class stays what it was.
struct Calibration {
  /// Finite and > 0; < 1 sharpens the probabilities, > 1 softens them.
  double temperature = 1.0;
  /// What it was fitted on, in words (which data, which split, which seed); "" = not said.
  std::string split;
  /// Images it was fitted on (0 = not said).
  int64_t images = 0;
  /// Confidence bins of the ECEs below.
  int64_t bins = 15;
  /// Mean negative log-likelihood and expected calibration error on those images, at T = 1 (before)
  /// and at `temperature` (after); NaN = not recorded.
  double nll_before = std::numeric_limits<double>::quiet_NaN();
  double nll_after = std::numeric_limits<double>::quiet_NaN();
  double ece_before = std::numeric_limits<double>::quiet_NaN();
  double ece_after = std::numeric_limits<double>::quiet_NaN();

  /// Throws c10::Error when the temperature is not a finite number > 0 (or bins < 1).
  void validate() const;
};

/// Everything a checkpoint holds.
struct Checkpoint {
  ModelConfig config;
  std::vector<std::string> class_names;
  Preprocessing preprocessing;
  std::map<std::string, std::string> metadata;
  /// Temperature scaling of the probabilities; empty = uncalibrated (T = 1).
  std::optional<Calibration> calibration;
  /// Parameters and buffers by attnkit name.
  StateDict state;

  /// The temperature to divide the logits by before softmax: the calibration's, else 1.
  double temperature() const { return calibration ? calibration->temperature : 1.0; }
};

/// Current format version written by save_checkpoint.
constexpr int64_t kCheckpointVersion = 1;

/// Writes `checkpoint` to `path` atomically (see the format above).
void save_checkpoint(const Checkpoint& checkpoint, const std::string& path);

/// Snapshot of `model` (config and weights, copied to the CPU) plus the given descriptions.
Checkpoint make_checkpoint(Backbone& model, std::vector<std::string> class_names = {},
                           Preprocessing preprocessing = Preprocessing::imagenet(),
                           std::map<std::string, std::string> metadata = {});

/// Reads and validates a checkpoint file (weights stay on the CPU).
Checkpoint read_checkpoint(const std::string& path);

namespace detail {
/// The "checksum" entry save_checkpoint stores for a config string and the state (see the format
/// above): what a tool that edits a checkpoint's config in place must store again.
std::string checkpoint_checksum(const std::string& config, const StateDict& state);
}  // namespace detail

/// The model a checkpoint describes, with its weights (build_model + strict weight loading), for a
/// checkpoint already read: a tool that reads a file once, runs its model and writes the file back.
std::shared_ptr<Backbone> load_model(const Checkpoint& checkpoint);

/// read_checkpoint + load_model. `info`, when given, receives the rest (class names, preprocessing,
/// calibration, ...) without the weights.
std::shared_ptr<Backbone> load_checkpoint(const std::string& path, Checkpoint* info = nullptr);

}  // namespace attnkit
