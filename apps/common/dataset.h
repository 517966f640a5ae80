// An in-memory image classification data set: uint8 images and int64 labels, with class names.
// Everything attnkit trains on (IDX, ImageFolder, CSV) is read into this one form, so the loader,
// augmentation and evaluation never care where the data came from. 8-bit images keep Fashion-MNIST's
// 70,000 images at 55 MB, small enough to live on the GPU for the whole run.
// It sits in common/ because both sides make one: train/ reads IDX and pixel CSVs, vision/ decodes
// image folders and path,label CSVs with OpenCV and hands them to train/ through ImageReaders.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace attnkit::common {

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

/// Where the data is and how to read it.
struct DataSpec {
  /// A folder (IDX or ImageFolder) or a .csv file.
  std::string path;
  /// "auto", "idx", "folder", "pixel-csv" or "image-csv".
  std::string format = "auto";
  /// "train" or "test": which split of an IDX folder; ignored by the other formats.
  std::string split = "train";
  /// Class names ("fashion-mnist", "mnist", or "a,b,c") for formats that carry only numbers (IDX,
  /// pixel CSV). Empty: fashion-mnist when the path mentions "fashion", else the digits.
  std::string class_names;
  /// Image size (height = width) images are resized to (ImageFolder/image CSV); 0 = the first
  /// image's size. For a pixel CSV: the side of the square images (0 = inferred).
  int64_t image_size = 0;
  /// Channels (1 or 3) images are converted to; 0 = 1 if the first image is grayscale, else 3.
  int64_t channels = 0;
  /// Class order an image CSV/ImageFolder must follow (e.g. a checkpoint's); empty = discover.
  std::vector<std::string> known_classes;
};

/// Decoders for the image formats, supplied by the program when it is built with OpenCV.
struct ImageReaders {
  std::function<Dataset(const DataSpec&)> folder;
  std::function<Dataset(const DataSpec&)> csv;
};

/// Fashion-MNIST's ten class names, in label order.
const std::vector<std::string>& fashion_mnist_classes();

/// Class names from a spec: "fashion-mnist", "mnist" (the digits), or a comma-separated list.
std::vector<std::string> parse_class_names(const std::string& spec);

}  // namespace attnkit::common
