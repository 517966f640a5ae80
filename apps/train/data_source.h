// One entry point for every data format `attnkit train` and `attnkit eval` accept:
//   - an MNIST-style folder of IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]);
//   - a CSV of pixels (label,p0,p1,...);
//   - an ImageFolder tree (one sub-folder per class) or a CSV of path,label rows — these need an
//     image decoder, which the program supplies from OpenCV (vision/image_folder.h) when it has it.
// The training code itself never sees OpenCV: image formats arrive through ImageReaders.
#pragma once

#include "dataset.h"

#include <functional>
#include <string>

namespace attnkit::train {

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

/// The format `spec.format` resolves to for `spec.path` ("idx", "folder", "pixel-csv", "image-csv").
std::string resolve_format(const DataSpec& spec);

/// Reads the data set. Throws std::runtime_error with one readable line on any problem.
Dataset load_dataset(const DataSpec& spec, const ImageReaders& readers = {});

}  // namespace attnkit::train
