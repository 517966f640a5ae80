// An in-memory image classification data set: uint8 images and int64 labels, with class names.
// Everything attnkit trains on (IDX, ImageFolder, CSV) is read into this one form, so the loader,
// augmentation and evaluation never care where the data came from. 8-bit images keep Fashion-MNIST's
// 70,000 images at 55 MB, small enough to live on the GPU for the whole run.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace attnkit::train {

struct Dataset {
  /// uint8 [N, C, H, W], contiguous.
  torch::Tensor images;
  /// int64 [N], each in [0, classes.size()).
  torch::Tensor labels;
  /// Class names, index = label.
  std::vector<std::string> classes;

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }
  /// Checks the invariants above; `what` names the data in the error message.
  void validate(const std::string& what) const;
};

/// The rows `indices` (int64, 1-D) of `data`.
Dataset subset(const Dataset& data, const torch::Tensor& indices);

/// Splits `data` into (train, validation) with `val_size` images drawn at random (fixed `seed`),
/// stratified so every class keeps its share. val_size = 0 gives (data, empty).
std::pair<Dataset, Dataset> split_train_val(const Dataset& data, int64_t val_size, uint64_t seed);

/// Per-channel mean and standard deviation of the images scaled to [0, 1].
std::pair<std::vector<double>, std::vector<double>> channel_stats(const Dataset& data);

/// Fashion-MNIST's ten class names, in label order.
const std::vector<std::string>& fashion_mnist_classes();

/// Class names from a spec: "fashion-mnist", "mnist" (the digits), or a comma-separated list.
std::vector<std::string> parse_class_names(const std::string& spec);

}  // namespace attnkit::train
